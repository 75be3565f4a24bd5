//! The `demo` environment (what `scripts/demo.sh` converges into sandbox
//! roots) must stay sandbox-safe: files, directories and links only, so a
//! `--root` run never needs packages, services, users or host commands.

mod common;

use troupe_catalog::Kind;

#[test]
fn demo_catalogs_are_sandbox_safe_and_zone_aware() {
    let tree = common::shipped();
    for distro in ["debian12", "ubuntu2404", "rocky9"] {
        let facts = common::facts(distro);
        for (host, role) in [
            ("web1.demo", "web"),
            ("web2.demo", "web"),
            ("db3.demo", "db"),
            ("app7.demo", "base"),
        ] {
            let cat = tree
                .compile(host, &facts, &common::opts())
                .unwrap_or_else(|e| panic!("{host}/{distro}: {}", e.render()));
            assert_eq!(cat.environment, "demo", "{host}");
            for r in &cat.resources {
                assert!(
                    matches!(
                        r.kind,
                        Kind::File { .. } | Kind::Directory { .. } | Kind::Symlink { .. }
                    ),
                    "{host}: {} is not sandbox-safe",
                    r.id
                );
            }
            let motd = cat
                .contents
                .values()
                .map(|b| String::from_utf8(b.bytes().unwrap()).unwrap())
                .find(|t| t.contains("Welcome"))
                .unwrap();
            assert!(motd.contains(&format!("role {role}")), "{motd}");
        }
    }
    // web2 is in zone 2: db2 is its primary backend, the others backups.
    let cat = tree
        .compile("web2.demo", &common::facts("debian12"), &common::opts())
        .unwrap();
    let conf = cat
        .contents
        .values()
        .map(|b| String::from_utf8(b.bytes().unwrap()).unwrap())
        .find(|t| t.contains("backend"))
        .unwrap();
    assert!(conf.contains("backend db2.demo\n"), "{conf}");
    assert!(conf.contains("backend db1.demo backup\n"), "{conf}");
    assert!(conf.contains("backend db3.demo backup\n"), "{conf}");
}
