//! Defined types (`types/NAME.toml`, instantiated any number of times with
//! different titles and parameters) and tags, on small trees.

mod common;

use common::{facts, opts, write};
use troupe_catalog::{Catalog, Kind};
use troupe_compiler::{Error, ModuleTree};

const VHOST: &str = r#"
description = "one nginx virtual host"
tags = ["www"]
[params]
server_name = { doc = "required" }
port = 80
tls = false
root = "/var/www/{{ title }}"

[directory."{{ params.root }}"]
mode = "0755"

[file."/etc/nginx/conf.d/{{ title }}.conf"]
content = "server { listen {{ params.port }}{{ ' ssl' if params.tls else '' }}; server_name {{ params.server_name }}; root {{ params.root }}; }\n"
notify = "service[nginx]"
"#;

fn tree(profile: &str, types: &[(&str, &str)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "site.toml", "[[node]]\nmatch = \"*\"\nrole = \"web\"\n");
    let e = "environments/production";
    write(
        r,
        &format!("{e}/hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    );
    write(
        r,
        &format!("{e}/data/common.toml"),
        "[web.vhosts.shop]\nserver_name = \"shop.example.com\"\ntls = true\n[web.vhosts.blog]\nserver_name = \"blog.example.com\"\nport = 8080\n",
    );
    write(r, &format!("{e}/roles/web.toml"), "include = [\"web\"]\n");
    write(r, &format!("{e}/profiles/web.toml"), profile);
    for (path, body) in types {
        write(r, &format!("{e}/types/{path}"), body);
    }
    d
}

fn load(d: &tempfile::TempDir) -> Result<ModuleTree, Error> {
    ModuleTree::load(d.path())
}

fn compile(d: &tempfile::TempDir) -> Result<Catalog, Error> {
    load(d)?.compile("web1.example.com", &facts("debian12"), &opts())
}

fn body(c: &Catalog, id: &str) -> String {
    let r = c
        .resources
        .iter()
        .find(|r| r.id.0 == id)
        .unwrap_or_else(|| panic!("no {id}"));
    let Kind::File {
        content: Some(cr), ..
    } = &r.kind
    else {
        panic!("{id} has no content")
    };
    String::from_utf8(c.contents[&cr.sha256].bytes().unwrap()).unwrap()
}

fn res<'a>(c: &'a Catalog, id: &str) -> &'a troupe_catalog::Resource {
    c.resources
        .iter()
        .find(|r| r.id.0 == id)
        .unwrap_or_else(|| panic!("no {id} in {:?}", ids(c)))
}

fn ids(c: &Catalog) -> Vec<&str> {
    c.resources.iter().map(|r| r.id.0.as_str()).collect()
}

const HEAD: &str =
    "[params]\nvhosts = { default = {} }\n[package.nginx]\n[service.nginx]\nensure = \"running\"\n";

#[test]
fn instances_with_titles_params_loops_and_tags() {
    let profile = format!(
        "{HEAD}\n[\"nginx::vhost\".\"{{{{ key }}}}\"]\nfor_each = \"params.vhosts\"\nparams = \"{{{{ value }}}}\"\ntags = \"vhost-{{{{ key }}}}\"\n\n[\"nginx::vhost\".default]\nserver_name = \"_\"\nroot = \"/srv/default\"\nrequire = \"package[nginx]\"\n"
    );
    let d = tree(&profile, &[("nginx/vhost.toml", VHOST)]);
    let c = compile(&d).unwrap_or_else(|e| panic!("{}", e.render()));
    // Three instances, each with its own title and parameters.
    assert_eq!(
        body(&c, "file[/etc/nginx/conf.d/shop.conf]"),
        "server { listen 80 ssl; server_name shop.example.com; root /var/www/shop; }\n"
    );
    assert_eq!(
        body(&c, "file[/etc/nginx/conf.d/blog.conf]"),
        "server { listen 8080; server_name blog.example.com; root /var/www/blog; }\n"
    );
    assert_eq!(
        body(&c, "file[/etc/nginx/conf.d/default.conf]"),
        "server { listen 80; server_name _; root /srv/default; }\n"
    );
    assert!(ids(&c).contains(&"directory[/srv/default]"));
    // Tags: role, profile, the type's own tags and name, the instance's.
    let shop = res(&c, "file[/etc/nginx/conf.d/shop.conf]");
    assert_eq!(shop.tags, ["web", "www", "nginx::vhost", "vhost-shop"]);
    assert!(
        shop.source
            .as_ref()
            .unwrap()
            .to_string()
            .starts_with("environments/production/types/nginx/vhost.toml:"),
        "{:?}",
        shop.source
    );
    // The instance's require reaches every resource it declares; notify
    // inside the body reaches the service.
    let def = res(&c, "directory[/srv/default]");
    assert!(def.requires.iter().any(|r| r.0 == "package[nginx]"));
    assert!(
        res(&c, "file[/etc/nginx/conf.d/default.conf]")
            .notify
            .iter()
            .any(|r| r.0 == "service[nginx]")
    );
    // Deterministic.
    assert_eq!(
        compile(&d).unwrap().to_canonical_json(),
        c.to_canonical_json()
    );
}

#[test]
fn relationships_to_an_instance_mean_all_its_resources() {
    let profile = format!(
        "{HEAD}\n[\"nginx::vhost\".a]\nserver_name = \"a\"\n\n[exec.reload]\ncommand = [\"/bin/true\"]\nrequire = \"nginx::vhost[a]\"\n"
    );
    let d = tree(&profile, &[("nginx/vhost.toml", VHOST)]);
    let c = compile(&d).unwrap_or_else(|e| panic!("{}", e.render()));
    let reqs: Vec<&str> = res(&c, "exec[reload]")
        .requires
        .iter()
        .map(|r| r.0.as_str())
        .collect();
    assert!(reqs.contains(&"directory[/var/www/a]"), "{reqs:?}");
    assert!(reqs.contains(&"file[/etc/nginx/conf.d/a.conf]"), "{reqs:?}");
    // A reference to an instance that is not declared is an error.
    let profile = format!(
        "{HEAD}\n[exec.reload]\ncommand = [\"/bin/true\"]\nrequire = \"nginx::vhost[nope]\"\n"
    );
    let d = tree(&profile, &[("nginx/vhost.toml", VHOST)]);
    let e = compile(&d).unwrap_err();
    assert!(
        e.message()
            .contains("nginx::vhost[nope], which is not declared"),
        "{e}"
    );
}

#[test]
fn nested_instances_and_includes() {
    let site = "[params]\nname = { doc = \"x\" }\n[\"nginx::vhost\".\"{{ params.name }}\"]\nserver_name = \"{{ params.name }}.example.com\"\n[file.\"/etc/sites/{{ title }}\"]\ncontent = \"{{ params.name }}\"\n";
    let profile = format!(
        "{HEAD}\n[\"app::site\".one]\nname = \"alpha\"\n[\"app::site\".two]\nname = \"beta\"\n"
    );
    let d = tree(
        &profile,
        &[("nginx/vhost.toml", VHOST), ("app/site.toml", site)],
    );
    let c = compile(&d).unwrap_or_else(|e| panic!("{}", e.render()));
    assert!(body(&c, "file[/etc/nginx/conf.d/alpha.conf]").contains("alpha.example.com"));
    assert!(body(&c, "file[/etc/nginx/conf.d/beta.conf]").contains("beta.example.com"));
    assert_eq!(body(&c, "file[/etc/sites/two]"), "beta");
    let tags = &res(&c, "file[/etc/nginx/conf.d/beta.conf]").tags;
    assert!(
        tags.contains(&"app::site".to_string()) && tags.contains(&"nginx::vhost".to_string()),
        "{tags:?}"
    );
    // A type that declares itself stops with a clear error.
    let selfish = "[\"app::loop\".\"x{{ title }}\"]\n";
    let profile = format!("{HEAD}\n[\"app::loop\".a]\n");
    let d = tree(&profile, &[("app/loop.toml", selfish)]);
    let e = compile(&d).unwrap_err();
    assert!(e.message().contains("nest more than 16 deep"), "{e}");
}

#[test]
fn errors_name_the_instance_and_the_place() {
    // Same title twice: both places.
    let profile = format!(
        "{HEAD}\n[\"nginx::vhost\".a]\nserver_name = \"a\"\n[\"nginx::vhost\".\"{{{{ 'a' }}}}\"]\nserver_name = \"b\"\n"
    );
    let d = tree(&profile, &[("nginx/vhost.toml", VHOST)]);
    let e = compile(&d).unwrap_err();
    let m = e.to_string();
    assert!(m.contains("nginx::vhost[a] is declared twice: first at environments/production/profiles/web.toml:7:"), "{m}");
    assert!(
        m.contains("again at environments/production/profiles/web.toml:9:"),
        "{m}"
    );

    // A required parameter not given.
    let profile = format!("{HEAD}\n[\"nginx::vhost\".a]\nport = 81\n");
    let d = tree(&profile, &[("nginx/vhost.toml", VHOST)]);
    let e = compile(&d).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("environments/production/profiles/web.toml:7:"),
        "{e}"
    );
    assert!(
        e.message()
            .contains("nginx::vhost[a] needs parameter `server_name`"),
        "{e}"
    );

    // An unknown parameter: refused at load, listing the real ones.
    let profile = format!("{HEAD}\n[\"nginx::vhost\".a]\nserver_name = \"a\"\nprot = 81\n");
    let d = tree(&profile, &[("nginx/vhost.toml", VHOST)]);
    let e = load(&d).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("environments/production/profiles/web.toml:9:1"),
        "{e}"
    );
    assert!(
        e.to_string().contains("has no parameter `prot`")
            && e.to_string().contains("server_name, port, tls, root"),
        "{e}"
    );

    // Two instances declaring the same resource: the instance is named.
    let fixed = "[params]\nx = 1\n[file.\"/etc/same\"]\ncontent = \"x\"\n";
    let profile = format!("{HEAD}\n[\"app::fixed\".a]\n[\"app::fixed\".b]\n");
    let d = tree(&profile, &[("app/fixed.toml", fixed)]);
    let e = compile(&d).unwrap_err();
    assert!(
        e.message().contains("file[/etc/same] is declared twice"),
        "{e}"
    );
    assert!(
        e.message().contains(
            "(in app::fixed[b], declared at environments/production/profiles/web.toml:8:"
        ),
        "{e}"
    );

    // An error inside the body names the instance.
    let bad = "[params]\nx = 1\n[file.\"/etc/{{ params.nope }}\"]\ncontent = \"x\"\n";
    let profile = format!("{HEAD}\n[\"app::bad\".a]\n");
    let d = tree(&profile, &[("app/bad.toml", bad)]);
    let e = compile(&d).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("environments/production/types/app/bad.toml:3:"),
        "{e}"
    );
    assert!(e.message().contains("(in app::bad[a], declared at"), "{e}");

    // Bad names: a type named after a built-in, a parameter named title, a
    // bad tag.
    let d = tree(HEAD, &[("file.toml", "")]);
    assert!(
        load(&d)
            .unwrap_err()
            .to_string()
            .contains("built-in resource type")
    );
    let d = tree(HEAD, &[("App/x.toml", "")]);
    assert!(
        load(&d)
            .unwrap_err()
            .to_string()
            .contains("cannot be part of a defined type's name")
    );
    let d = tree(HEAD, &[("a/b.toml", "[params]\ntitle = 1\n")]);
    assert!(
        load(&d)
            .unwrap_err()
            .to_string()
            .contains("cannot have a parameter named `title`")
    );
    let d = tree(&format!("tags = [\"Bad Tag\"]\n{HEAD}"), &[]);
    assert!(
        load(&d)
            .unwrap_err()
            .to_string()
            .contains("tag \"Bad Tag\" is not valid")
    );
    let d = tree(
        &format!("{HEAD}[file.\"/x\"]\ncontent = \"\"\ntags = \"{{{{ 'UP' }}}}\"\n"),
        &[],
    );
    assert!(
        compile(&d)
            .unwrap_err()
            .to_string()
            .contains("tag \"UP\" is not valid")
    );
}

#[test]
fn profile_tags_reach_its_resources_only() {
    let d = tree(
        "tags = [\"frontend\"]\ninclude = [\"other\"]\n[package.nginx]\n",
        &[],
    );
    write(
        d.path(),
        "environments/production/profiles/other.toml",
        "[package.curl]\ntags = [\"tools\"]\n",
    );
    let c = compile(&d).unwrap_or_else(|e| panic!("{}", e.render()));
    assert_eq!(res(&c, "package[nginx]").tags, ["web", "frontend"]);
    assert_eq!(res(&c, "package[curl]").tags, ["web", "other", "tools"]);
}

#[test]
fn noop_on_a_resource_or_an_instance() {
    let profile = format!(
        "{HEAD}[file.\"/etc/motd\"]\ncontent = \"x\"\nnoop = true\n[\"nginx::vhost\".a]\nserver_name = \"a\"\nnoop = true\n"
    );
    let d = tree(&profile, &[("nginx/vhost.toml", VHOST)]);
    let c = compile(&d).unwrap_or_else(|e| panic!("{}", e.render()));
    assert!(res(&c, "file[/etc/motd]").noop);
    assert!(res(&c, "file[/etc/nginx/conf.d/a.conf]").noop);
    assert!(!res(&c, "package[nginx]").noop);
    // Only noop resources carry the field: other catalogs keep their bytes.
    let text = String::from_utf8(c.to_canonical_json()).unwrap();
    assert_eq!(text.matches("\"noop\":true").count(), 3, "{text}");
    assert!(!text.contains("\"noop\":false"));
    let d = tree(
        &format!("{HEAD}[file.\"/etc/motd\"]\ncontent = \"x\"\nnoop = \"yes\"\n"),
        &[],
    );
    let e = load(&d).unwrap_err();
    assert!(
        e.to_string()
            .contains("noop: expected true or false, found a string"),
        "{e}"
    );
}
