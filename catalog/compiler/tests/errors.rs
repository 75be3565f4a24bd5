//! One test per error class: each names the file, line and column (where
//! there is one) and says what was expected.

mod common;

use common::{facts, opts, scratch_tree, write};
use troupe_compiler::{CompileOptions, Error, ErrorKind, ModuleTree, SecretKeys};

const P: &str = "environments/production";

fn load(dir: &std::path::Path) -> Result<ModuleTree, Error> {
    ModuleTree::load(dir)
}

/// Adds `profile` to the base role of production.
fn with_profile(dir: &std::path::Path, name: &str, body: &str) {
    write(dir, &format!("{P}/profiles/{name}.toml"), body);
    write(
        dir,
        &format!("{P}/roles/base.toml"),
        &format!("include = [\"base\", \"{name}\"]\n"),
    );
}

fn compile_err(dir: &std::path::Path) -> Error {
    let tree = load(dir).unwrap_or_else(|e| panic!("load failed: {e}"));
    tree.compile("mon2.example.com", &facts("debian12"), &opts())
        .expect_err("compile should fail")
}

#[test]
fn malformed_toml_names_line_and_column() {
    let d = scratch_tree();
    with_profile(
        d.path(),
        "bad",
        "[package.nginx]\nensure = \"present\"\nmode = [1, 2\n",
    );
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Syntax);
    let loc = e.location().unwrap();
    assert!(
        loc.starts_with(&format!("{P}/profiles/bad.toml:3:")),
        "{loc}"
    );
    assert!(e.to_string().contains("invalid TOML"), "{e}");
    // The rendered diagnostic quotes the source.
    assert!(e.render().contains("mode = [1, 2"), "{}", e.render());
}

#[test]
fn unknown_attribute_lists_what_is_expected() {
    let d = scratch_tree();
    with_profile(
        d.path(),
        "bad",
        "[file.\"/etc/x\"]\nmode = \"0644\"\n  colour = \"red\"\n",
    );
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Schema);
    assert_eq!(e.location().unwrap(), format!("{P}/profiles/bad.toml:3:3"));
    let s = e.to_string();
    assert!(
        s.contains("unknown attribute `colour` for a file resource"),
        "{s}"
    );
    assert!(
        s.contains("expected one of: ensure, content, template"),
        "{s}"
    );
}

#[test]
fn unknown_top_level_key_and_bad_value_type() {
    let d = scratch_tree();
    with_profile(d.path(), "bad", "[pakage.nginx]\n");
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Schema);
    assert!(e.to_string().contains("unknown key `pakage`"), "{e}");
    assert!(e.to_string().contains("package"), "{e}");

    let d = scratch_tree();
    with_profile(d.path(), "bad", "[file.\"/etc/x\"]\nmode = 644\n");
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::Schema);
    assert_eq!(e.location().unwrap(), format!("{P}/profiles/bad.toml:2:8"));
    assert!(e.to_string().contains("octal digits like \"0644\""), "{e}");
}

#[test]
fn duplicate_declaration_names_both_places() {
    let d = scratch_tree();
    with_profile(
        d.path(),
        "dup",
        "\n\n[file.\"/etc/motd\"]\ncontent = \"again\\n\"\n",
    );
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::Duplicate);
    let s = e.to_string();
    assert!(s.contains("file[/etc/motd] is declared twice"), "{s}");
    assert!(s.contains(&format!("{P}/profiles/banner.toml:19:")), "{s}");
    assert!(s.contains(&format!("{P}/profiles/dup.toml:3:")), "{s}");
}

#[test]
fn cycle_prints_the_whole_cycle() {
    let d = scratch_tree();
    with_profile(
        d.path(),
        "cyc",
        r#"[exec.a]
command = ["/bin/true"]
require = "exec[c]"

[exec.b]
command = ["/bin/true"]
require = "exec[a]"

[exec.c]
command = ["/bin/true"]
require = "exec[b]"

[exec.d]
command = ["/bin/true"]
require = "exec[a]"
"#,
    );
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::Cycle);
    let s = e.to_string();
    assert!(
        s.contains("exec[a] -> exec[c] -> exec[b] -> exec[a]"),
        "{s}"
    );
    assert!(!s.contains("exec[d] ->"), "d is not in the cycle: {s}");
    assert!(s.contains(&format!("{P}/profiles/cyc.toml:9:")), "{s}");
}

#[test]
fn unknown_reference_is_an_error() {
    let d = scratch_tree();
    with_profile(d.path(), "r", "[service.x]\nrequire = \"package[nope]\"\n");
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::Reference);
    assert!(
        e.to_string()
            .contains("service[x] refers to package[nope], which is not declared"),
        "{e}"
    );
    assert_eq!(e.location().unwrap(), format!("{P}/profiles/r.toml:2:11"));
}

/// Files, directories and symlinks are found by path: a reference must
/// still name the type that is at that path, and a second resource of
/// another type at a path is refused as the same path.
#[test]
fn path_resources_are_found_by_type_and_path() {
    let d = scratch_tree();
    with_profile(
        d.path(),
        "r",
        "[directory.\"/srv/app\"]\n\n[service.x]\nrequire = \"file[/srv/app]\"\n",
    );
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::Reference);
    assert!(
        e.to_string()
            .contains("service[x] refers to file[/srv/app], which is not declared"),
        "{e}"
    );
    // The right type at that path resolves, and the edge is kept.
    with_profile(
        d.path(),
        "r",
        "[directory.\"/srv/app\"]\n\n[service.x]\nrequire = \"directory[/srv/app]\"\n",
    );
    let tree = load(d.path()).unwrap();
    let c = tree
        .compile("mon2.example.com", &facts("debian12"), &opts())
        .unwrap();
    let x = c.resources.iter().find(|r| r.id.0 == "service[x]").unwrap();
    assert!(
        x.requires.iter().any(|r| r.0 == "directory[/srv/app]"),
        "{:?}",
        x.requires
    );
    // Another type at the same path is the same path, not a new id.
    with_profile(
        d.path(),
        "r",
        "[directory.\"/srv/app\"]\n\n[symlink.\"/srv/app\"]\ntarget = \"/tmp\"\n",
    );
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::Duplicate);
    assert!(
        e.to_string()
            .contains("symlink[/srv/app] manages the same path as directory[/srv/app]"),
        "{e}"
    );
}

#[test]
fn missing_template_at_load_and_at_compile() {
    let d = scratch_tree();
    with_profile(d.path(), "t", "[file.\"/etc/x\"]\ntemplate = \"nope.j2\"\n");
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::MissingFile);
    assert_eq!(e.location().unwrap(), format!("{P}/profiles/t.toml:2:12"));
    assert!(
        e.to_string().contains("template `nope.j2` does not exist"),
        "{e}"
    );
    assert!(
        e.to_string().contains("motd.j2"),
        "lists the templates there: {e}"
    );

    // A computed name is checked when compiled.
    let d = scratch_tree();
    with_profile(
        d.path(),
        "t",
        "[file.\"/etc/x\"]\ntemplate = \"{{ node.hostname }}.j2\"\n",
    );
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::MissingFile);
    assert!(
        e.to_string().contains("template `mon2.j2` does not exist"),
        "{e}"
    );
}

#[test]
fn template_errors_syntax_and_render() {
    let d = scratch_tree();
    write(
        d.path(),
        &format!("{P}/templates/broken.j2"),
        "line one\n{% for x in %}\n",
    );
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Template);
    assert!(
        e.location()
            .unwrap()
            .starts_with(&format!("{P}/templates/broken.j2:2:")),
        "{e}"
    );

    let d = scratch_tree();
    write(
        d.path(),
        &format!("{P}/templates/undef.j2"),
        "value: {{ facts.no_such_fact }}\n",
    );
    with_profile(
        d.path(),
        "t",
        "[file.\"/etc/x\"]\ntemplate = \"undef.j2\"\n",
    );
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::Template);
    assert_eq!(e.location().unwrap(), format!("{P}/profiles/t.toml:2:12"));
    assert!(e.to_string().contains("undefined"), "{e}");

    // An inline expression with bad syntax is caught at load.
    let d = scratch_tree();
    with_profile(
        d.path(),
        "t",
        "[file.\"/etc/x\"]\ncontent = \"{{ 1 + }}\"\n",
    );
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Template);
    assert_eq!(e.location().unwrap(), format!("{P}/profiles/t.toml:2:11"));
}

#[test]
fn templates_cannot_read_files_or_run_commands() {
    let d = scratch_tree();
    write(
        d.path(),
        &format!("{P}/templates/evil.j2"),
        "{% include '/etc/passwd' %}\n",
    );
    with_profile(d.path(), "t", "[file.\"/etc/x\"]\ntemplate = \"evil.j2\"\n");
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::Template);
    assert!(!e.to_string().contains("root:x:0"), "{e}");
}

#[test]
fn path_traversal_is_refused() {
    for (attr, name) in [
        ("template", "../../../../etc/shadow"),
        ("source", "../secrets.pub"),
        ("source", "/etc/passwd"),
    ] {
        let d = scratch_tree();
        with_profile(
            d.path(),
            "t",
            &format!("[file.\"/etc/x\"]\n{attr} = \"{name}\"\n"),
        );
        let e = load(d.path()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PathTraversal, "{attr}={name}: {e}");
        assert_eq!(
            e.location().unwrap(),
            format!("{P}/profiles/t.toml:2:{}", attr.len() + 4)
        );
    }
    // Computed at compile time from a fact.
    let d = scratch_tree();
    with_profile(
        d.path(),
        "t",
        "[file.\"/etc/x\"]\nsource = \"{{ facts.external.path }}\"\n",
    );
    let tree = load(d.path()).unwrap();
    let mut f = facts("debian12");
    f["external"]["path"] = "../../../etc/shadow".into();
    let e = tree.compile("mon2.example.com", &f, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PathTraversal, "{e}");
    // A symlink leading out of the tree.
    let d = scratch_tree();
    std::os::unix::fs::symlink("/etc/passwd", d.path().join(format!("{P}/files/passwd"))).unwrap();
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PathTraversal, "{e}");
    assert!(
        e.to_string().contains("leads outside the module tree"),
        "{e}"
    );
    // A symlinked hierarchy file leading out of the tree.
    let d = scratch_tree();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("h.toml"),
        "[[level]]\nname = \"x\"\npath = \"x.toml\"\n",
    )
    .unwrap();
    let h = d.path().join(format!("{P}/hierarchy.toml"));
    std::fs::remove_file(&h).unwrap();
    std::os::unix::fs::symlink(outside.path().join("h.toml"), &h).unwrap();
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PathTraversal, "{e}");
    // A data level built from a forged fact.
    let tree = common::shipped();
    let mut f = facts("debian12");
    f["os"]["family"] = "../../../etc/x".into();
    let e = tree.compile("mon2.example.com", &f, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PathTraversal, "{e}");
}

#[test]
fn missing_data_key() {
    let d = scratch_tree();
    with_profile(
        d.path(),
        "m",
        "[params]\nneeded = { doc = \"x\" }\n\n[file.\"/etc/x\"]\ncontent = \"{{ params.needed }}\"\n",
    );
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::MissingData);
    let s = e.to_string();
    assert!(s.contains("profile `m` needs parameter `needed`"), "{s}");
    assert!(s.contains("no data level has key `m.needed`"), "{s}");
    assert!(
        s.contains("common (data/common.toml)"),
        "lists the levels: {s}"
    );

    let d = scratch_tree();
    with_profile(
        d.path(),
        "m",
        "[file.\"/etc/x\"]\ncontent = \"{{ lookup('no.such.key') }}\"\n",
    );
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::MissingData);
    assert!(
        e.to_string()
            .contains("data key `no.such.key` is not found"),
        "{e}"
    );
    assert_eq!(e.location().unwrap(), format!("{P}/profiles/m.toml:2:11"));

    // With a default it is fine.
    let d = scratch_tree();
    with_profile(
        d.path(),
        "m",
        "[file.\"/etc/x\"]\ncontent = \"{{ lookup('no.such.key', 'dflt') }}\"\n",
    );
    let tree = load(d.path()).unwrap();
    tree.compile("mon2.example.com", &facts("debian12"), &opts())
        .unwrap();
}

#[test]
fn secret_for_the_wrong_environment_is_refused_at_load() {
    let d = scratch_tree();
    let prod = std::fs::read_to_string(d.path().join(format!("{P}/data/roles/db.toml"))).unwrap();
    write(
        d.path(),
        "environments/development/data/roles/db.toml",
        &prod,
    );
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Secret);
    assert!(
        e.location()
            .unwrap()
            .starts_with("environments/development/data/roles/db.toml:3:"),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains("encrypted for environment `production` but is in environment `development`"),
        "{e}"
    );
}

#[test]
fn secret_needs_the_right_key() {
    let tree = common::shipped();
    // No key at all.
    let e = tree
        .compile(
            "db1.example.com",
            &facts("rocky9"),
            &CompileOptions::default(),
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Secret);
    assert!(
        e.to_string()
            .contains("needs the private key of environment `production`"),
        "{e}"
    );
    assert!(
        e.location()
            .unwrap()
            .starts_with(&format!("{P}/data/roles/db.toml:3:")),
        "{e}"
    );
    // The development key cannot open a production secret.
    let mut keys = SecretKeys::new();
    let dev = std::fs::read_to_string(common::tests_dir().join("keys/development.key")).unwrap();
    keys.insert_str("production", &dev).unwrap();
    let o = CompileOptions {
        secrets: keys,
        ..Default::default()
    };
    let e = tree
        .compile("db1.example.com", &facts("rocky9"), &o)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Secret);
    assert!(e.to_string().contains("cannot decrypt"), "{e}");
    // A host that uses no secret compiles without any key.
    tree.compile(
        "web4.example.com",
        &facts("rocky9"),
        &CompileOptions::default(),
    )
    .unwrap();
}

#[test]
fn bad_classification() {
    // No rule matches.
    let d = scratch_tree();
    write(
        d.path(),
        "site.toml",
        "[[node]]\nmatch = \"web*\"\nrole = \"web\"\n",
    );
    let tree = load(d.path()).unwrap();
    let e = tree
        .compile("mon2.example.com", &facts("debian12"), &opts())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Classification);
    assert!(
        e.to_string()
            .contains("no rule in site.toml gives `mon2.example.com` a role"),
        "{e}"
    );
    // A role the environment does not define.
    let tree = common::shipped();
    let mut ext = std::collections::BTreeMap::new();
    ext.insert("pp_role".to_owned(), "nosuchrole".to_owned());
    let e = tree
        .classify("web4.example.com", &ext, &facts("debian12"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Classification);
    assert!(
        e.to_string()
            .contains("role `nosuchrole` (from certificate extension pp_role)"),
        "{e}"
    );
    // An environment that does not exist.
    let mut ext = std::collections::BTreeMap::new();
    ext.insert("pp_environment".to_owned(), "staging".to_owned());
    let e = tree
        .classify("web4.example.com", &ext, &facts("debian12"))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("environment `staging`, which does not exist"),
        "{e}"
    );
    // Not a certname.
    let e = tree
        .classify("../etc", &Default::default(), &facts("debian12"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Classification);
    // A rule with neither match nor regex is a load error with its place.
    let d = scratch_tree();
    write(d.path(), "site.toml", "[[node]]\nrole = \"web\"\n");
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Schema);
    assert_eq!(e.location().unwrap(), "site.toml:1:1");
}

#[test]
fn classification_derives_number_and_zone() {
    let tree = common::shipped();
    let c = tree
        .classify("web4.example.com", &Default::default(), &facts("debian12"))
        .unwrap();
    assert_eq!(
        (c.role.as_str(), c.number, c.zone, c.zones),
        ("web", Some(4), Some(1), 3)
    );
    assert_eq!(c.environment, "production");
    let c = tree
        .classify(
            "bastion.example.com",
            &Default::default(),
            &facts("debian12"),
        )
        .unwrap();
    assert_eq!((c.role.as_str(), c.number, c.zone), ("bastion", None, None));
    let c = tree
        .classify(
            "db12.dev.example.com",
            &Default::default(),
            &facts("debian12"),
        )
        .unwrap();
    assert_eq!(
        (c.role.as_str(), c.environment.as_str(), c.zone),
        ("db", "development", Some(0))
    );
    // The certificate extension wins over the rules.
    let mut ext = std::collections::BTreeMap::new();
    ext.insert("pp_role".to_owned(), "db".to_owned());
    let c = tree
        .classify("web4.example.com", &ext, &facts("debian12"))
        .unwrap();
    assert_eq!(c.role, "db");
}

#[test]
fn including_a_profile_twice_or_itself_is_a_no_op() {
    let d = scratch_tree();
    with_profile(
        d.path(),
        "m",
        "include = [\"m\", \"base\", \"ssh\"]\n[file.\"/etc/m\"]\n",
    );
    let tree = load(d.path()).unwrap();
    let cat = tree
        .compile("mon2.example.com", &facts("debian12"), &opts())
        .unwrap();
    assert_eq!(
        cat.resources
            .iter()
            .filter(|r| r.id.0 == "file[/etc/m]")
            .count(),
        1
    );
    // Different explicit parameters are a conflict naming both places.
    with_profile(
        d.path(),
        "m",
        "include = [{ profile = \"ssh\", params = { port = 2222 } }]\n",
    );
    let tree = load(d.path()).unwrap();
    let e = tree
        .compile("mon2.example.com", &facts("debian12"), &opts())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Duplicate, "{e}");
}

#[test]
fn bad_module_never_panics_on_odd_values() {
    for body in [
        "[file.\"relative/path\"]\n",
        "[exec.x]\ncommand = \"/bin/sh -c 'rm -rf /'\"\n",
        "[exec.x]\ncommand = []\n",
        "[package.x]\nensure = \"\"\n",
        "[service.x]\nensure = \"sometimes\"\n",
        "[user.x]\nuid = -1\n",
        "[cron.x]\ncommand = \"x\"\nminute = \"; rm\"\n",
        "[file.\"/x\"]\nfor_each = \"42\"\n",
        "[file.\"/x\"]\nwhen = \"undefined_thing.x\"\n",
        "[file.\"/x\"]\ncontent = \"{% for i in range(100000000) %}x{% endfor %}\"\n",
        "[symlink.\"/x\"]\n",
    ] {
        let d = scratch_tree();
        with_profile(d.path(), "m", body);
        let r =
            load(d.path()).and_then(|t| t.compile("mon2.example.com", &facts("debian12"), &opts()));
        let e = r.expect_err(body);
        assert!(e.location().is_some(), "{body}: {e}");
    }
}

#[test]
fn errors_at_the_end_of_a_file_render() {
    let d = scratch_tree();
    with_profile(
        d.path(),
        "eof",
        "[file.\"/etc/x\"]\ncontent = \"unterminated",
    );
    let e = load(d.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Syntax);
    assert!(
        e.location()
            .unwrap()
            .starts_with(&format!("{P}/profiles/eof.toml:2:")),
        "{e}"
    );
    let r = e.render();
    assert!(r.contains("eof.toml"), "{r}");
}

#[test]
fn errors_never_quote_a_secret() {
    let d = scratch_tree();
    common::write(
        d.path(),
        &format!("{P}/profiles/leak.toml"),
        "[params]\npw = { doc = \"x\" }\n[file.\"/etc/leak\"]\nmode = \"{{ params.pw }}\"\n",
    );
    let db = std::fs::read_to_string(d.path().join(format!("{P}/data/roles/db.toml"))).unwrap();
    common::write(
        d.path(),
        &format!("{P}/data/roles/db.toml"),
        &format!(
            "{db}\n[leak]\npw = {}\n",
            db.lines()
                .find(|l| l.starts_with("app_password = "))
                .unwrap()
                .split_once("= ")
                .unwrap()
                .1
        ),
    );
    common::write(
        d.path(),
        &format!("{P}/roles/db.toml"),
        "include = [\"base\", \"postgresql\", \"leak\"]\n",
    );
    let tree = load(d.path()).unwrap();
    let e = tree
        .compile("db1.example.com", &facts("rocky9"), &opts())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Schema);
    let s = format!("{e} {}", e.render());
    assert!(!s.contains("example-db-password"), "{s}");
    assert!(s.contains("<sensitive>"), "{s}");
}

#[test]
fn user_membership_is_minimum_or_inclusive() {
    let d = scratch_tree();
    with_profile(
        d.path(),
        "bad",
        "[user.ann]\ngroups = [\"staff\"]\nmembership = \"exact\"\n",
    );
    let e = compile_err(d.path());
    assert_eq!(e.kind(), ErrorKind::Schema);
    assert_eq!(e.location().unwrap(), format!("{P}/profiles/bad.toml:3:14"));
    assert!(
        e.to_string().contains("\"minimum\" or \"inclusive\""),
        "{e}"
    );

    for (given, want) in [
        ("", troupe_catalog::Membership::Minimum),
        (
            "membership = \"minimum\"\n",
            troupe_catalog::Membership::Minimum,
        ),
        (
            "membership = \"inclusive\"\n",
            troupe_catalog::Membership::Inclusive,
        ),
    ] {
        let d = scratch_tree();
        with_profile(
            d.path(),
            "ok",
            &format!("[user.ann]\ngroups = [\"staff\"]\n{given}"),
        );
        let c = load(d.path())
            .unwrap()
            .compile("mon2.example.com", &facts("debian12"), &opts())
            .unwrap();
        let m = c.resources.iter().find_map(|r| match &r.kind {
            troupe_catalog::Kind::User {
                name, membership, ..
            } if name == "ann" => Some(*membership),
            _ => None,
        });
        assert_eq!(m, Some(want), "{given}");
    }
}

/// Issue 16: a template error names the undefined variable, and an error
/// in a `for_each` resource names the loop key or item it happened at.
#[test]
fn undefined_names_the_variable_and_the_loop_key() {
    let d = scratch_tree();
    write(
        d.path(),
        &format!("{P}/templates/undef.j2"),
        "a\n{% for k, v in params.items|items %}value: {{ v.port }} {{ facts.no_such_fact }}\n{% endfor %}",
    );
    with_profile(
        d.path(),
        "t",
        "[params]\nitems = { default = { a = { port = 1 } } }\n[file.\"/etc/x\"]\ntemplate = \"undef.j2\"\n",
    );
    let e = compile_err(d.path());
    assert!(
        e.to_string().contains("`facts.no_such_fact` is undefined"),
        "{e}"
    );
    assert!(e.to_string().contains("undef.j2:2"), "{e}");

    let d = scratch_tree();
    with_profile(
        d.path(),
        "t",
        "[params]\nusers = { default = { alice = { uid = 1 }, bob = { } } }\n[file.\"/etc/u-{{ key }}\"]\nfor_each = \"params.users\"\ncontent = \"uid={{ value.uid }}\"\n",
    );
    let e = compile_err(d.path());
    assert!(e.to_string().contains("`value.uid` is undefined"), "{e}");
    assert!(e.to_string().contains("for_each key \"bob\""), "{e}");

    let d = scratch_tree();
    with_profile(
        d.path(),
        "t",
        "[file.\"/etc/y-{{ item }}\"]\nfor_each = [\"a\", \"b\"]\ncontent = \"{{ item.nope }}\"\n",
    );
    let e = compile_err(d.path());
    assert!(e.to_string().contains("`item.nope` is undefined"), "{e}");
    assert!(e.to_string().contains("for_each item 0: \"a\""), "{e}");
}
