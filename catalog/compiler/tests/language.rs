//! The language's features, each checked on a small tree.

mod common;

use common::{facts, opts, write};
use troupe_catalog::{Catalog, Ensure, Kind, PackageEnsure, ServiceState};
use troupe_compiler::ModuleTree;

fn tree_with(profiles: &[(&str, &str)], data: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(
        r,
        "site.toml",
        "zones = 3\n[[node]]\nmatch = \"*\"\nrole = \"r\"\n",
    );
    let e = "environments/production";
    write(
        r,
        &format!("{e}/hierarchy.toml"),
        "[[level]]\nname = \"zone\"\npath = \"zone{{ node.zone }}.toml\"\n[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    );
    write(r, &format!("{e}/data/common.toml"), data);
    write(
        r,
        &format!("{e}/data/zone1.toml"),
        "[app]\nlisten = \"zone-one\"\n",
    );
    write(
        r,
        &format!("{e}/templates/backends.j2"),
        "{% for b in params.backends %}\nserver {{ b }}{{ ' backup' if b | zone(node.zones) != node.zone else '' }}\n{% endfor %}\n",
    );
    // The role includes the first profile; it may include the others.
    write(
        r,
        &format!("{e}/roles/r.toml"),
        &format!("include = [\"{}\"]\n", profiles[0].0),
    );
    for (n, body) in profiles {
        write(r, &format!("{e}/profiles/{n}.toml"), body);
    }
    d
}

fn compile(d: &tempfile::TempDir, host: &str) -> Catalog {
    let t = ModuleTree::load(d.path()).unwrap_or_else(|e| panic!("{}", e.render()));
    t.compile(host, &facts("debian12"), &opts())
        .unwrap_or_else(|e| panic!("{}", e.render()))
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

#[test]
fn zones_place_other_hosts_and_data_levels() {
    let d = tree_with(
        &[(
            "app",
            "[params]\nbackends = []\nlisten = \"x\"\n[file.\"/etc/haproxy.cfg\"]\ntemplate = \"backends.j2\"\n[file.\"/etc/listen\"]\ncontent = \"{{ params.listen }}\"\n",
        )],
        "[app]\nbackends = [\"app1.example.com\", \"app2.example.com\", \"app4.example.com\"]\nlisten = \"common\"\n",
    );
    let c = compile(&d, "web4.example.com"); // zone 1
    assert_eq!(
        body(&c, "file[/etc/haproxy.cfg]"),
        "server app1.example.com\nserver app2.example.com backup\nserver app4.example.com\n"
    );
    assert_eq!(body(&c, "file[/etc/listen]"), "zone-one");
    let c = compile(&d, "web5.example.com"); // zone 2: no zone file
    assert_eq!(body(&c, "file[/etc/listen]"), "common");
    assert_eq!(
        body(&c, "file[/etc/haproxy.cfg]"),
        "server app1.example.com backup\nserver app2.example.com\nserver app4.example.com backup\n"
    );
}

#[test]
fn conditionals_iteration_and_typed_expressions() {
    let d = tree_with(
        &[(
            "p",
            r#"[params]
users = ["ann", "bob"]
ports = { default = { http = 80, https = 443 } }
debian = "{{ facts.os.family == 'Debian' }}"

[user."{{ item }}"]
for_each = "params.users"
uid = "{{ 3000 + index }}"
groups = "{{ ['staff'] }}"

[file."/etc/port-{{ key }}"]
for_each = "params.ports"
content = "{{ value }}\n"
when = "value > 100"

[package.apt-only]
when = "params.debian"
ensure = "1.2-3"

[package.rh-only]
when = "facts.os.family == 'RedHat'"

[service.svc]
ensure = "stopped"
enable = false

[symlink."/etc/link"]
target = "/etc/port-https"
"#,
        )],
        "",
    );
    let c = compile(&d, "h.example.com");
    let ids: Vec<&str> = c.resources.iter().map(|r| r.id.0.as_str()).collect();
    assert!(
        ids.contains(&"user[ann]") && ids.contains(&"user[bob]"),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"file[/etc/port-https]") && !ids.contains(&"file[/etc/port-http]"),
        "{ids:?}"
    );
    assert!(ids.contains(&"package[apt-only]") && !ids.contains(&"package[rh-only]"));
    for r in &c.resources {
        match &r.kind {
            Kind::User {
                name, uid, groups, ..
            } => {
                assert_eq!(*uid, Some(if name == "ann" { 3000 } else { 3001 }));
                assert_eq!(groups, &vec!["staff".to_owned()]);
            }
            Kind::Package { name, ensure } if name == "apt-only" => {
                assert_eq!(ensure, &PackageEnsure::Version("1.2-3".into()))
            }
            Kind::Service { ensure, enable, .. } => {
                assert_eq!(
                    (*ensure, *enable),
                    (Some(ServiceState::Stopped), Some(false))
                )
            }
            Kind::Symlink { target, ensure, .. } => {
                assert_eq!(
                    (target.as_str(), *ensure),
                    ("/etc/port-https", Ensure::Present)
                )
            }
            _ => {}
        }
    }
}

#[test]
fn includes_with_params_and_relationships() {
    let d = tree_with(
        &[
            (
                "top",
                "include = [{ profile = \"lib\", params = { name = \"custom\" } }, { profile = \"never\", when = \"false\" }]\n[exec.after]\ncommand = [\"/bin/true\"]\nsubscribe = \"file[/etc/custom]\"\nrefreshonly = true\nuser = \"svc\"\n[user.svc]\n",
            ),
            (
                "lib",
                "[params]\nname = \"default\"\n[file.\"/etc/{{ params.name }}\"]\ncontent = \"x\"\nbefore = \"cron[c]\"\n[cron.c]\ncommand = \"/bin/true\"\nminute = \"*/5\"\n",
            ),
            ("never", "[package.never]\n"),
        ],
        "",
    );
    let c = compile(&d, "h.example.com");
    let pos = |id: &str| {
        c.resources
            .iter()
            .position(|r| r.id.0 == id)
            .unwrap_or_else(|| panic!("{id}"))
    };
    assert!(c.resources.iter().all(|r| r.id.0 != "package[never]"));
    let f = &c.resources[pos("file[/etc/custom]")];
    assert_eq!(f.notify[0].0, "exec[after]");
    assert!(pos("file[/etc/custom]") < pos("cron[c]"));
    let e = &c.resources[pos("exec[after]")];
    let reqs: Vec<&str> = e.requires.iter().map(|r| r.0.as_str()).collect();
    assert!(
        reqs.contains(&"user[svc]") && reqs.contains(&"file[/etc/custom]"),
        "{reqs:?}"
    );
    assert!(matches!(
        &e.kind,
        Kind::Exec {
            refreshonly: true,
            ..
        }
    ));
    assert_eq!(f.tags, ["r", "lib"]);
}

/// A profile named like its role gives its resources that tag once, with
/// or without tags of their own.
#[test]
fn a_profile_named_like_its_role_is_one_tag() {
    let d = tree_with(
        &[
            ("top", "include = [\"r\"]\n"),
            ("r", "[package.x]\n[package.y]\ntags = [\"own\", \"r\"]\n"),
        ],
        "",
    );
    let c = compile(&d, "h.example.com");
    let tags = |id: &str| {
        c.resources
            .iter()
            .find(|r| r.id.0 == id)
            .unwrap_or_else(|| panic!("{id}"))
            .tags
            .to_vec()
    };
    assert_eq!(tags("package[x]"), ["r"]);
    assert_eq!(tags("package[y]"), ["r", "own"]);
}

/// Resources declared in a row in one profile without tags of their own
/// share one tag list; their sources name the file once and read as
/// `FILE:LINE:COLUMN`; the catalog decodes to itself.
#[test]
fn tag_lists_and_source_names_are_shared() {
    let d = tree_with(
        &[
            (
                "top",
                "include = [\"lib\"]\n[package.a]\n[package.b]\n[package.c]\ntags = [\"own\"]\n",
            ),
            ("lib", "[package.d]\n[package.e]\n"),
        ],
        "",
    );
    let c = compile(&d, "h.example.com");
    let r = |id: &str| {
        c.resources
            .iter()
            .find(|r| r.id.0 == id)
            .unwrap_or_else(|| panic!("{id}"))
    };
    let (a, b, own, d1, e) = (
        r("package[a]"),
        r("package[b]"),
        r("package[c]"),
        r("package[d]"),
        r("package[e]"),
    );
    assert_eq!(a.tags, ["r", "top"]);
    assert!(a.tags.ptr_eq(&b.tags), "{:?} {:?}", a.tags, b.tags);
    assert_eq!(own.tags, ["r", "top", "own"]);
    assert_eq!(d1.tags, ["r", "lib"]);
    assert!(d1.tags.ptr_eq(&e.tags));
    assert!(!d1.tags.ptr_eq(&a.tags));
    let src = |x: &troupe_catalog::Resource| x.source.as_ref().unwrap().to_string();
    assert_eq!(src(a), "environments/production/profiles/top.toml:2:10");
    assert_eq!(src(b), "environments/production/profiles/top.toml:3:10");
    assert_eq!(src(e), "environments/production/profiles/lib.toml:2:10");
    let json = c.to_canonical_json();
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(
        text.contains("\"source\":\"environments/production/profiles/top.toml:2:10\""),
        "{text}"
    );
    assert!(text.contains("\"tags\":[\"r\",\"top\",\"own\"]"), "{text}");
    let back = Catalog::from_json(&json).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.to_canonical_json(), json);
}
