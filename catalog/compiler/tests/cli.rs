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
