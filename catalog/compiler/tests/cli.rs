//! The CLI functions behind `troupe catalog compile|diff`, `troupe lookup
//! --explain` and `troupe secret keygen|encrypt`, driven through their clap
//! definitions.

mod common;

use clap::Parser;
use std::path::Path;
use troupe_compiler::cli::{self, CatalogCmd, LookupArgs, SecretCmd};

#[derive(Parser)]
struct Catalog {
    #[command(subcommand)]
    cmd: CatalogCmd,
}
#[derive(Parser)]
struct Lookup {
    #[command(flatten)]
    args: LookupArgs,
}
#[derive(Parser)]
struct Secret {
    #[command(subcommand)]
    cmd: SecretCmd,
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}

/// A data dir holding the example keys, mode 0600.
fn data_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("secrets")).unwrap();
    for env in ["production", "development"] {
        let to = d.path().join(format!("secrets/{env}.key"));
        std::fs::copy(common::tests_dir().join(format!("keys/{env}.key")), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    d
}

fn facts_file(name: &str) -> String {
    s(&common::tests_dir().join(format!("facts/{name}.json")))
}

fn run_catalog(args: &[&str]) -> (u8, String) {
    let mut argv = vec!["catalog"];
    argv.extend(args);
    let c = Catalog::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    let code = cli::catalog_to(c.cmd, &mut out).unwrap();
    (code, String::from_utf8(out).unwrap())
}

#[test]
fn catalog_compile_human_and_json() {
    let data = data_dir();
    let m = s(&common::modules());
    let d = s(data.path());
    let f = facts_file("rocky9");
    let (code, text) = run_catalog(&[
        "compile",
        "db1.example.com",
        "--facts",
        &f,
        "--modules",
        &m,
        "--data",
        &d,
    ]);
    assert_eq!(code, 0);
    assert!(
        text.starts_with("# catalog for db1.example.com (environment production"),
        "{text}"
    );
    assert!(
        text.contains("service[sshd] ensure=\"running\" enable=true"),
        "{text}"
    );
    assert!(
        text.contains("file[/etc/troupe-postgresql/app.sql]"),
        "{text}"
    );
    assert!(text.contains("[sensitive]"), "{text}");
    assert!(
        !text.contains("example-db-password"),
        "secret leaked: {text}"
    );

    // --json: redacted by default, exact with --show-secrets.
    let (_, json) = run_catalog(&[
        "compile",
        "db1.example.com",
        "--facts",
        &f,
        "--modules",
        &m,
        "--data",
        &d,
        "--json",
    ]);
    assert!(!json.contains("example-db-password"));
    let (_, exact) = run_catalog(&[
        "compile",
        "db1.example.com",
        "--facts",
        &f,
        "--modules",
        &m,
        "--data",
        &d,
        "--json",
        "--show-secrets",
    ]);
    let cat = troupe_catalog::Catalog::from_json(exact.as_bytes()).unwrap();
    assert_eq!(cat.node, "db1.example.com");
    assert!(exact.contains("example-db-password-prod"));
    // The human header shows the real catalog's hash.
    assert!(text.contains(&cat.hash()), "{text}");

    // A broken tree is a clear error, not a crash.
    let tree = common::scratch_tree();
    common::write(tree.path(), "site.toml", "zones = \"three\"\n");
    let c = Catalog::try_parse_from([
        "catalog",
        "compile",
        "web4.example.com",
        "--facts",
        &f,
        "--modules",
        &s(tree.path()),
        "--data",
        &d,
    ])
    .unwrap();
    let err = cli::catalog_to(c.cmd, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("site.toml:1:9"), "{err}");
    assert!(err.contains("expected a positive integer"), "{err}");
}

#[test]
fn catalog_diff_between_trees_and_environments() {
    let data = data_dir();
    let d = s(data.path());
    let f = facts_file("debian12");
    let old = s(&common::modules());
    let new_tree = common::scratch_tree();
    common::write(
        new_tree.path(),
        "environments/production/data/nodes/web4.example.com.toml",
        "[banner]\nmotd = \"Maintenance tonight.\"\n[nginx]\nworker_processes = 8\n",
    );
    let new = s(new_tree.path());
    let (code, text) = run_catalog(&[
        "diff",
        "web4.example.com",
        "--facts",
        &f,
        "--from",
        &old,
        "--to",
        &new,
        "--data",
        &d,
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("~ file[/etc/motd]"), "{text}");
    assert!(text.contains("+Maintenance tonight."), "{text}");
    assert!(text.contains("-This host is managed by Troupe."), "{text}");
    assert!(text.contains("~ file[/etc/nginx/nginx.conf]"), "{text}");
    assert!(text.contains("+worker_processes 8;"), "{text}");
    assert!(text.contains("0 added, 0 removed, 2 changed"), "{text}");

    // Same tree: no changes, exit 0.
    let (code, text) = run_catalog(&[
        "diff",
        "web4.example.com",
        "--facts",
        &f,
        "--from",
        &old,
        "--to",
        &old,
        "--data",
        &d,
    ]);
    assert_eq!(code, 0);
    assert!(text.contains("no changes"), "{text}");

    // Between environments, for a host with secrets: values stay redacted.
    let (code, text) = run_catalog(&[
        "diff",
        "db1.example.com",
        "--facts",
        &f,
        "--modules",
        &old,
        "--from-env",
        "production",
        "--to-env",
        "development",
        "--data",
        &d,
    ]);
    assert_eq!(code, 2);
    assert!(
        text.contains("- file[/etc/troupe-postgresql/app.sql]"),
        "{text}"
    );
    assert!(text.contains("+ file[/etc/dbdev.conf]"), "{text}");
    assert!(
        !text.contains("example-db-password"),
        "secret leaked: {text}"
    );
}

#[test]
fn lookup_explain_shows_every_level() {
    let m = s(&common::modules());
    let f = facts_file("debian12");
    let l = Lookup::try_parse_from([
        "lookup",
        "nginx.worker_processes",
        "--node",
        "web1.example.com",
        "--facts",
        &f,
        "--modules",
        &m,
        "--explain",
    ])
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(cli::lookup_to(l.args, &mut out).unwrap(), 0);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("1. node       data/nodes/web1.example.com.toml: found at environments/production/data/nodes/web1.example.com.toml:3:20: 4"), "{text}");
    assert!(
        text.contains("3. role       data/roles/web.toml: key not found"),
        "{text}"
    );
    assert!(
        text.contains("4. zone       data/zones/zone1.toml: key not found"),
        "{text}"
    );
    assert!(
        text.contains("5. os release data/os/Debian-12.toml: key not found"),
        "{text}"
    );
    assert!(
        text.contains("data/os/Debian.toml: key not found"),
        "{text}"
    );
    assert!(
        text.contains("7. common     data/common.toml: key not found"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("result: 4"), "{text}");

    // Deep merge across levels, and a secret is shown redacted.
    let l = Lookup::try_parse_from([
        "lookup",
        "base.packages",
        "--node",
        "web4.example.com",
        "--facts",
        &f,
        "--modules",
        &m,
        "--merge",
        "deep",
    ])
    .unwrap();
    let mut out = Vec::new();
    cli::lookup_to(l.args, &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        r#"["logrotate","vim","ca-certificates","curl"]"#
    );
    let l = Lookup::try_parse_from([
        "lookup",
        "postgresql",
        "--node",
        "db1.example.com",
        "--facts",
        &f,
        "--modules",
        &m,
        "--explain",
    ])
    .unwrap();
    let mut out = Vec::new();
    cli::lookup_to(l.args, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\"app_password\":\"<secret>\""), "{text}");
    // A host without a number skips the zone level and says why.
    let l = Lookup::try_parse_from([
        "lookup",
        "time.servers",
        "--node",
        "bastion.example.com",
        "--facts",
        &f,
        "--modules",
        &m,
        "--explain",
    ])
    .unwrap();
    let mut out = Vec::new();
    assert_eq!(cli::lookup_to(l.args, &mut out).unwrap(), 1);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("4. zone       skipped:"), "{text}");
    assert!(
        text.contains("`time.servers` is not found at any level"),
        "{text}"
    );
}

#[test]
fn secret_keygen_encrypt_and_compile() {
    let data = tempfile::tempdir().unwrap();
    let tree = common::scratch_tree();
    let (d, m) = (s(data.path()), s(tree.path()));
    // A fresh key for production, public key written into the tree.
    let c = Secret::try_parse_from([
        "secret",
        "keygen",
        "--env",
        "production",
        "--data",
        &d,
        "--modules",
        &m,
        "--write-pub",
    ])
    .unwrap();
    let mut out = Vec::new();
    cli::secret_to(c.cmd, &mut &b""[..], &mut out).unwrap();
    let public = String::from_utf8(out).unwrap();
    assert!(public.starts_with("age1"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.path().join("secrets/production.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Never overwritten.
    let c = Secret::try_parse_from([
        "secret",
        "keygen",
        "--env",
        "production",
        "--data",
        &d,
        "--modules",
        &m,
    ])
    .unwrap();
    assert!(
        cli::secret_to(c.cmd, &mut &b""[..], &mut Vec::new())
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );

    // The value comes from stdin, never from argv.
    assert!(
        Secret::try_parse_from(["secret", "encrypt", "--env", "production", "hunter2"]).is_err()
    );
    let c = Secret::try_parse_from(["secret", "encrypt", "--env", "production", "--modules", &m])
        .unwrap();
    let mut out = Vec::new();
    cli::secret_to(c.cmd, &mut &b"n3w-s3cret\n"[..], &mut out).unwrap();
    let snippet = String::from_utf8(out).unwrap();
    assert!(
        snippet.starts_with("{ env = \"production\", secret = \""),
        "{snippet}"
    );
    assert!(!snippet.contains("n3w-s3cret"));
    common::write(
        tree.path(),
        "environments/production/data/roles/db.toml",
        &format!("[postgresql]\napp_password = {snippet}"),
    );
    let (code, json) = run_catalog(&[
        "compile",
        "db1.example.com",
        "--facts",
        &facts_file("debian12"),
        "--modules",
        &m,
        "--data",
        &d,
        "--json",
        "--show-secrets",
    ]);
    assert_eq!(code, 0);
    assert!(
        json.contains("PASSWORD 'n3w-s3cret';"),
        "trailing newline stripped, value decrypted"
    );
    // Key files readable by others are refused.
    std::fs::set_permissions(
        data.path().join("secrets/production.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let c = Catalog::try_parse_from([
        "catalog",
        "compile",
        "db1.example.com",
        "--facts",
        &facts_file("debian12"),
        "--modules",
        &m,
        "--data",
        &d,
    ])
    .unwrap();
    let e = cli::catalog_to(c.cmd, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(e.contains("readable by group or others"), "{e}");
}

/// Rewrites `file` in `tree` with `from` replaced by `to` (which must occur).
fn edit(tree: &Path, file: &str, from: &str, to: &str) {
    let p = tree.join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} has no `{from}`");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

fn diff_args<'a>(from: &'a str, to: &'a str, f: &'a str, d: &'a str) -> Vec<&'a str> {
    vec![
        "diff",
        "db1.example.com",
        "--facts",
        f,
        "--from",
        from,
        "--to",
        to,
        "--data",
        d,
    ]
}

/// Issue 16 item 1: a sensitive resource that changed (a new secret, a new
/// mode, or becoming sensitive) is shown and counted as changed, with names
/// and content hashes but never values; and a diff needs no private key.
#[test]
fn catalog_diff_counts_sensitive_changes_without_showing_them() {
    let data = data_dir();
    let d = s(data.path());
    let f = facts_file("debian12");
    let old = s(&common::modules());
    let tree = common::scratch_tree();
    let new = s(tree.path());
    // A new secret value for the application role.
    let recipient = troupe_compiler::secrets::parse_recipient(
        &std::fs::read_to_string(tree.path().join("environments/production/secrets.pub")).unwrap(),
    )
    .unwrap();
    let snippet = troupe_compiler::secrets::encrypt_to_toml(
        &recipient,
        "production",
        b"example-db-password-rotated",
    )
    .unwrap();
    let db = tree
        .path()
        .join("environments/production/data/roles/db.toml");
    let text = std::fs::read_to_string(&db).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("app_password"))
        .unwrap()
        .to_owned();
    std::fs::write(
        &db,
        text.replace(&line, &format!("app_password = {snippet}")),
    )
    .unwrap();

    let (code, text) = run_catalog(&diff_args(&old, &new, &f, &d));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("~ file[/etc/troupe-postgresql/app.sql] [sensitive]"),
        "{text}"
    );
    assert!(text.contains("    content: \"sha256:"), "{text}");
    assert!(text.contains("0 added, 0 removed, 1 changed"), "{text}");
    assert!(
        !text.contains("example-db-password"),
        "secret leaked: {text}"
    );
    assert!(!text.contains("note:"), "{text}");

    // Two changes, one of them in a sensitive resource's visible attribute,
    // the other a resource becoming sensitive: three resources counted.
    edit(
        tree.path(),
        "environments/production/profiles/postgresql.toml",
        "[file.\"/etc/troupe-postgresql/app.sql\"]\ntemplate = \"postgresql/app.sql.j2\"\nmode = \"0600\"",
        "[file.\"/etc/troupe-postgresql/app.sql\"]\ntemplate = \"postgresql/app.sql.j2\"\nmode = \"0400\"",
    );
    edit(
        tree.path(),
        "environments/production/profiles/banner.toml",
        "[file.\"/etc/motd\"]\n",
        "[file.\"/etc/motd\"]\nsensitive = true\n",
    );
    let (code, text) = run_catalog(&diff_args(&old, &new, &f, &d));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("~ file[/etc/motd] [sensitive]"), "{text}");
    assert!(text.contains("    sensitive: false -> true"), "{text}");
    assert!(text.contains("    mode: <sensitive> changed"), "{text}");
    assert!(text.contains("0 added, 0 removed, 2 changed"), "{text}");
    assert!(
        !text.contains("example-db-password"),
        "secret leaked: {text}"
    );

    // --json: one document with the same counts, values redacted.
    let mut args = diff_args(&old, &new, &f, &d);
    args.push("--json");
    let (code, json) = run_catalog(&args);
    assert_eq!(code, 2);
    assert!(
        !json.contains("example-db-password"),
        "secret leaked: {json}"
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["host"], "db1.example.com");
    assert_eq!(v["changed"], 2);
    assert_eq!(v["added"], 0);
    assert_eq!(v["removed"], 0);
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    let app = changes
        .iter()
        .find(|c| c["id"] == "file[/etc/troupe-postgresql/app.sql]")
        .unwrap();
    assert_eq!(app["action"], "changed");
    assert_eq!(app["sensitive"], true);
    let names: Vec<&str> = app["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["content", "mode"]);
    let content = &app["attributes"][0];
    assert!(content["old"].as_str().unwrap().starts_with("sha256:"));
    assert_ne!(content["old"], content["new"]);
    assert_eq!(app["attributes"][1]["new"], "<sensitive>");
    assert!(v["secrets_by_ciphertext"].as_array().unwrap().is_empty());

    // Without the private key: same ciphertext, no change; another
    // ciphertext, a change; and the output says how it compared.
    let no_keys = tempfile::tempdir().unwrap();
    let nk = s(no_keys.path());
    let (code, text) = run_catalog(&diff_args(&old, &old, &f, &nk));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no changes for db1.example.com"), "{text}");
    assert!(
        text.contains("the key of environment `production` is not loaded"),
        "{text}"
    );
    let (code, text) = run_catalog(&diff_args(&old, &new, &f, &nk));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("~ file[/etc/troupe-postgresql/app.sql] [sensitive]"),
        "{text}"
    );
    assert!(text.contains("0 added, 0 removed, 2 changed"), "{text}");
    assert!(!text.contains("<secret ciphertext"), "{text}");
}

fn run_lookup(args: &[&str]) -> (u8, String) {
    let mut argv = vec!["lookup"];
    argv.extend(args);
    let l = Lookup::try_parse_from(argv).unwrap();
    let mut out = Vec::new();
    let code = cli::lookup_to(l.args, &mut out).unwrap();
    (code, String::from_utf8(out).unwrap())
}

/// Issue 16 item 6: lookup uses the merge the tree declares for the key
/// (profile base's `packages` is `merge = "deep"`), as a compile does,
/// unless --merge overrides it, and says which it used.
#[test]
fn lookup_uses_the_declared_merge() {
    let m = s(&common::modules());
    let f = facts_file("debian12");
    let base = [
        "base.packages",
        "--node",
        "web4.example.com",
        "--facts",
        &f,
        "--modules",
        &m,
    ];
    let (code, text) = run_lookup(&base);
    assert_eq!(code, 0);
    assert_eq!(
        text.trim(),
        r#"["logrotate","vim","ca-certificates","curl"]"#
    );
    // What the compiled catalog installs agrees.
    let cat = common::shipped()
        .compile(
            "web4.example.com",
            &common::facts("debian12"),
            &common::opts(),
        )
        .unwrap();
    for p in ["logrotate", "vim", "ca-certificates", "curl"] {
        assert!(
            cat.resources
                .iter()
                .any(|r| r.id.0 == format!("package[{p}]")),
            "package[{p}] not in the catalog"
        );
    }
    // --merge first overrides: the most specific level only.
    let mut first = base.to_vec();
    first.extend(["--merge", "first"]);
    let (_, text) = run_lookup(&first);
    assert_ne!(
        text.trim(),
        r#"["logrotate","vim","ca-certificates","curl"]"#
    );
    // --explain and --json say which merge was used and why.
    let mut explain = base.to_vec();
    explain.push("--explain");
    let (_, text) = run_lookup(&explain);
    assert!(
        text.contains("merge deep: declared by parameter `packages` of profile `base`"),
        "{text}"
    );
    let mut json = explain.clone();
    json.push("--json");
    let (code, text) = run_lookup(&json);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["merge"], "deep");
    assert_eq!(v["found"], true);
    assert_eq!(v["value"].as_array().unwrap().len(), 4);
    assert_eq!(v["node"], "web4.example.com");
    let levels = v["levels"].as_array().unwrap();
    assert!(levels.iter().any(|l| l["outcome"] == "found"));
    assert!(levels.iter().all(|l| l["level"].is_string()));
    // A key no parameter declares: `first`, said as the default.
    let (code, text) = run_lookup(&[
        "nginx.worker_processes",
        "--node",
        "web1.example.com",
        "--facts",
        &f,
        "--modules",
        &m,
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["value"], 4);
    assert_eq!(v["merge"], "first");
}

/// `catalog compile --fleet FILE` (issue 19 item 6): the snapshot feeds
/// fleet(); a bad file is refused with the reason; `catalog diff --fleet`
/// compiles both sides with it.
#[test]
fn catalog_compile_with_a_fleet_snapshot() {
    let data = data_dir();
    let d = s(data.path());
    let f = facts_file("debian12");
    let m = s(&common::modules());
    let fleet = s(&common::tests_dir().join("fleet.json"));
    let (code, text) = run_catalog(&[
        "compile",
        "web4.example.com",
        "--facts",
        &f,
        "--modules",
        &m,
        "--data",
        &d,
        "--json",
        "--fleet",
        &fleet,
    ]);
    assert_eq!(code, 0);
    let cat = troupe_catalog::Catalog::from_json(text.as_bytes()).unwrap();
    let cfg = cat
        .contents
        .values()
        .filter_map(|b| b.bytes())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .find(|t| t.contains("listen postgresql"))
        .unwrap();
    assert!(
        cfg.contains("server db1.example.com db1.example.com:5432 check\n"),
        "{cfg}"
    );
    assert!(cfg.contains("server db3.example.com db3.example.com:5432 check backup\n"));

    let bad = common::tests_dir().join("facts/debian12.json");
    let mut argv = vec!["catalog", "compile", "web4.example.com", "--facts", &f];
    let bad = s(&bad);
    argv.extend(["--modules", &m, "--data", &d, "--fleet", &bad]);
    let c = Catalog::try_parse_from(argv).unwrap();
    let e = cli::catalog_to(c.cmd, &mut Vec::new()).unwrap_err();
    assert!(
        format!("{e:#}").contains("is not a fleet snapshot"),
        "{e:#}"
    );

    let (code, text) = run_catalog(&[
        "diff",
        "web4.example.com",
        "--facts",
        &f,
        "--from",
        &m,
        "--to",
        &m,
        "--data",
        &d,
        "--fleet",
        &fleet,
    ]);
    assert_eq!(code, 0, "{text}");
}
