//! Golden catalogs: the shipped roles compiled for Debian 12, Ubuntu 22.04,
//! Ubuntu 24.04 and Rocky 9. Regenerate after a reviewed change with
//! `TROUPE_BLESS=1 cargo test -p troupe-compiler --test golden`.

mod common;

use troupe_catalog::{Catalog, Kind};

const DISTROS: &[&str] = &["debian12", "ubuntu2204", "ubuntu2404", "rocky9"];

fn check(role: &str, host: &str, distro: &str) -> Catalog {
    let tree = common::shipped();
    let facts = common::facts(distro);
    let cat = tree
        .compile(host, &facts, &common::opts())
        .unwrap_or_else(|e| panic!("{role}/{distro}: {}", e.render()));
    assert_eq!(cat.environment, "production");
    assert!(
        cat.resources
            .iter()
            .all(|r| r.tags.first().map(String::as_str) == Some(role))
    );
    // What an agent would do with it: decode and validate.
    let back = Catalog::from_json(&cat.to_canonical_json()).unwrap();
    assert_eq!(back, cat);
    let path = common::tests_dir()
        .join("golden")
        .join(format!("{role}-{distro}.json"));
    let text = cat.to_pretty_json() + "\n";
    if std::env::var_os("TROUPE_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    } else {
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with TROUPE_BLESS=1 to create)",
                path.display()
            )
        });
        if want != text {
            let d = similar::TextDiff::from_lines(&want, &text);
            panic!(
                "{role}/{distro} differs from {}:\n{}",
                path.display(),
                d.unified_diff().context_radius(3)
            );
        }
    }
    cat
}

fn res<'a>(cat: &'a Catalog, id: &str) -> &'a troupe_catalog::Resource {
    cat.resources
        .iter()
        .find(|r| r.id.0 == id)
        .unwrap_or_else(|| panic!("{id} not in catalog"))
}

fn pos(cat: &Catalog, id: &str) -> usize {
    cat.resources.iter().position(|r| r.id.0 == id).unwrap()
}

#[test]
fn golden_base() {
    for d in DISTROS {
        let cat = check("base", "mon2.example.com", d);
        // SSH hardening is there, validated, and restarts the right service.
        let sshd = res(&cat, "file[/etc/ssh/sshd_config]");
        let svc = if *d == "rocky9" {
            "service[sshd]"
        } else {
            "service[ssh]"
        };
        assert_eq!(sshd.notify[0].0, svc);
        assert!(
            matches!(&sshd.kind, Kind::File { validate: Some(v), mode: Some(0o600), .. } if v[0] == "/usr/sbin/sshd")
        );
        assert!(pos(&cat, svc) > pos(&cat, "file[/etc/ssh/sshd_config]"));
        // Zone data: mon2 is in zone 2.
        let chrony = if *d == "rocky9" {
            "file[/etc/chrony.conf]"
        } else {
            "file[/etc/chrony/chrony.conf]"
        };
        let c = res(&cat, chrony);
        let Kind::File {
            content: Some(cr), ..
        } = &c.kind
        else {
            panic!()
        };
        let body = cat.contents[&cr.sha256].bytes().unwrap();
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains("pool ntp2.example.com iburst")
        );
        assert!(cat.resources.iter().all(|r| !r.sensitive));
    }
}

#[test]
fn golden_web() {
    for d in DISTROS {
        let cat = check("web", "web4.example.com", d);
        res(&cat, "file[/etc/nginx/conf.d/www.conf]");
        res(&cat, "file[/etc/nginx/conf.d/status.conf]");
        // The vhost config comes after its directory's package and before the restart.
        assert!(pos(&cat, "package[nginx]") < pos(&cat, "directory[/etc/nginx/conf.d]"));
        assert!(pos(&cat, "file[/etc/nginx/conf.d/www.conf]") < pos(&cat, "service[nginx]"));
        let pkgs: Vec<&str> = cat
            .resources
            .iter()
            .filter(|r| r.id.kind() == "package")
            .map(|r| r.id.title())
            .collect();
        assert!(
            pkgs.contains(&"logrotate"),
            "role-level data merged deep: {pkgs:?}"
        );
        assert!(pkgs.contains(&"curl"));
    }
}

#[test]
fn golden_db_with_secret() {
    for d in DISTROS {
        let cat = check("db", "db1.example.com", d);
        let sql = res(&cat, "file[/etc/troupe-postgresql/app.sql]");
        assert!(sql.sensitive, "the file holding the password is sensitive");
        let Kind::File {
            content: Some(cr), ..
        } = &sql.kind
        else {
            panic!()
        };
        let body = String::from_utf8(cat.contents[&cr.sha256].bytes().unwrap()).unwrap();
        assert!(body.contains("PASSWORD 'example-db-password-prod'"));
        // Only resources that hold the secret are sensitive.
        assert_eq!(cat.sensitive_ids().len(), 1);
        let initdb = cat
            .resources
            .iter()
            .any(|r| r.id.0 == "exec[postgresql-initdb]");
        assert_eq!(initdb, *d == "rocky9");
    }
}

#[test]
fn development_environment_uses_its_own_tree_and_key() {
    let tree = common::shipped();
    let cat = tree
        .compile(
            "db3.dev.example.com",
            &common::facts("debian12"),
            &common::opts(),
        )
        .unwrap_or_else(|e| panic!("{}", e.render()));
    assert_eq!(cat.environment, "development");
    let f = res(&cat, "file[/etc/dbdev.conf]");
    assert!(f.sensitive);
    assert_ne!(
        tree.env_code_version("development"),
        tree.env_code_version("production")
    );
    assert_eq!(
        cat.code_version,
        tree.env_code_version("development").unwrap()
    );
}
