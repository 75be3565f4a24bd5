//! `troupe-agent resource TYPE [NAME]`: the state of real files, accounts,
//! crontabs and packages, printed as the module language declares them;
//! what a run converged reads back as the catalog declared it.

mod common;
use common::*;
use std::process::Command;
use troupe_catalog::{Ensure, Kind};

fn resource(env: &Env, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("resource")
        .args(args)
        .args(["--root", env.root().to_str().unwrap()])
        .output()
        .unwrap()
}

fn json(env: &Env, args: &[&str]) -> Vec<Kind> {
    let o = resource(env, &[args, &["--json"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn text(env: &Env, args: &[&str]) -> String {
    let o = resource(env, args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn converged_resources_read_back_as_declared() {
    let env = Env::new();
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::write(
        env.p("/etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:4321:4322:App \"svc\":/srv/app:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(
        env.p("/etc/group"),
        "root:x:0:\ncrontab:x:107:\napp:x:4322:\nweb:x:4400:app\n",
    )
    .unwrap();
    let mut c = new_catalog();
    c.resources.push(dir("/etc/app", 0o750));
    let mut f = file(&mut c, "/etc/app/app.conf", b"port = 1\n", 0o640);
    if let Kind::File { owner, group, .. } = &mut f.kind {
        *owner = Some("app".into());
        *group = Some("web".into());
    }
    c.resources.push(f);
    c.resources
        .push(link("/etc/app/current", "/etc/app/app.conf"));
    let cron = Kind::Cron {
        name: "backup nightly".into(),
        ensure: Ensure::Present,
        command: "/usr/local/bin/backup --quick".into(),
        user: "root".into(),
        minute: "15".into(),
        hour: "3".into(),
        monthday: "*".into(),
        month: "*".into(),
        weekday: "1-5".into(),
        environment: [("MAILTO".to_owned(), "ops@example.com".to_owned())].into(),
    };
    c.resources.push(res(cron.clone()));
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");

    // The converged file: as the catalog declared it (content as its hash).
    let got = json(&env, &["file", "/etc/app/app.conf"]);
    assert_eq!(got, [c.resources[1].kind.clone()]);
    let t = text(&env, &["file", "/etc/app/app.conf"]);
    let v: toml::Table = toml::from_str(&t).unwrap();
    let f = &v["file"]["/etc/app/app.conf"];
    assert_eq!(f["mode"].as_str(), Some("0640"));
    assert_eq!(f["owner"].as_str(), Some("app"));
    assert_eq!(f["group"].as_str(), Some("web"));
    let sha = troupe_catalog::sha256_hex(b"port = 1\n");
    assert!(
        t.contains(&format!("# content: sha256 {sha}, 9 bytes")),
        "{t}"
    );
    assert!(
        !t.contains("port = 1"),
        "file bodies are never printed: {t}"
    );
    // A directory and a link are printed as such.
    assert_eq!(
        json(&env, &["file", "/etc/app"]),
        [Kind::Directory {
            path: "/etc/app".into(),
            ensure: Ensure::Present,
            mode: Some(0o750),
            owner: Some("root".into()),
            group: Some("root".into()),
            purge: false,
        }]
    );
    assert!(text(&env, &["file", "/etc/app/current"]).contains(
        "[symlink.\"/etc/app/current\"]\nensure = \"present\"\ntarget = \"/etc/app/app.conf\"\n"
    ));
    assert!(text(&env, &["file", "/nope"]).contains("ensure = \"absent\""));

    // The cron entry: exactly the catalog's.
    assert_eq!(json(&env, &["cron"]), std::slice::from_ref(&cron));
    assert_eq!(json(&env, &["cron", "backup nightly"]), [cron]);
    let t = text(&env, &["cron"]);
    let v: toml::Table = toml::from_str(&t).unwrap();
    let e = &v["cron"]["backup nightly"];
    assert_eq!(e["weekday"].as_str(), Some("1-5"));
    assert!(e.get("monthday").is_none(), "`*` is the default: {t}");
    assert_eq!(e["environment"]["MAILTO"].as_str(), Some("ops@example.com"));
    assert!(text(&env, &["cron", "other"]).contains("ensure = \"absent\""));

    // Users and groups from the root's files (not the host's).
    let t = text(&env, &["user", "app"]);
    let v: toml::Table = toml::from_str(&t).unwrap();
    let u = &v["user"]["app"];
    assert_eq!(u["uid"].as_integer(), Some(4321));
    assert_eq!(u["group"].as_str(), Some("app"));
    assert_eq!(u["groups"].as_array().unwrap()[0].as_str(), Some("web"));
    assert_eq!(u["comment"].as_str(), Some("App \"svc\""));
    assert_eq!(u["shell"].as_str(), Some("/usr/sbin/nologin"));
    let all = json(&env, &["user"]);
    let names: Vec<&str> = all.iter().map(|k| k.title()).collect();
    assert_eq!(names, ["root", "app"]);
    let g = json(&env, &["group"]);
    assert_eq!(g.len(), 4);
    assert_eq!(
        json(&env, &["group", "web"]),
        [Kind::Group {
            name: "web".into(),
            ensure: Ensure::Present,
            gid: Some(4400),
            system: false,
        }]
    );
    assert!(text(&env, &["user", "ghost"]).contains("[user.\"ghost\"]\nensure = \"absent\"\n"));
}

#[test]
fn packages_services_and_refusals() {
    let env = Env::new();
    // Packages: the host's dpkg database (a Debian host runs the tests).
    if std::path::Path::new("/var/lib/dpkg/status").exists() {
        let host = Command::new(BIN)
            .args(["resource", "package", "dpkg", "--json"])
            .output()
            .unwrap();
        assert!(host.status.success());
        let got: Vec<Kind> = serde_json::from_slice(&host.stdout).unwrap();
        let want = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", "dpkg"])
            .output()
            .unwrap();
        let want = String::from_utf8(want.stdout).unwrap();
        assert_eq!(
            got,
            [Kind::Package {
                name: "dpkg".into(),
                ensure: troupe_catalog::PackageEnsure::Version(want),
            }]
        );
        let absent = Command::new(BIN)
            .args(["resource", "package", "no-such-package-troupe"])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&absent.stdout),
            "[package.\"no-such-package-troupe\"]\nensure = \"absent\"\n"
        );
        let list = Command::new(BIN)
            .args(["resource", "package"])
            .output()
            .unwrap();
        let list = String::from_utf8(list.stdout).unwrap();
        let v: toml::Table = toml::from_str(&list).unwrap();
        assert!(v["package"].as_table().unwrap().len() > 10);
        assert!(v["package"].get("dpkg").is_some());
    }
    // Services are not inspected under --root.
    let o = resource(&env, &["service", "ssh"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("services are not managed under --root"));
    // A file needs a path; an unknown type is a usage error.
    let o = resource(&env, &["file"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("give the file's absolute path"));
    let o = resource(&env, &["file", "etc/passwd"]);
    assert_eq!(o.status.code(), Some(1));
    let o = resource(&env, &["exec"]);
    assert_eq!(o.status.code(), Some(64));
    // A bad package name is refused, not passed to the tools.
    let o = Command::new(BIN)
        .args(["resource", "package", "-rf"])
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
}
