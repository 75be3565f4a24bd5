//! Issue 19 items 4 and 6 end to end with a real master and agents:
//! fleet data in templates (`fleet()`: a web node lists the db nodes that
//! checked in, a new one appears at the next run, a revoked one leaves),
//! and the fleet-wide diff before a promotion (`troupe env diff`,
//! `troupe env promote` asking for `yes` on a terminal, refusing without
//! one unless --yes).

use std::path::{Path, PathBuf};
use std::time::Duration;
use troupe_tests::{Master, MasterOptions, Out};

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    // Past the master's poll's clock tick.
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
}

/// web nodes list the db nodes (name and address) in /etc/backends; every
/// node gets a motd.
fn write_tree(dir: &Path, motd: &str) {
    let e = "environments/production";
    write(
        dir,
        "site.toml",
        "default_environment = \"production\"\n[[node]]\nmatch = \"web*\"\nrole = \"web\"\n[[node]]\nmatch = \"db*\"\nrole = \"db\"\n",
    );
    write(
        dir,
        &format!("{e}/hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    );
    write(dir, &format!("{e}/data/common.toml"), "");
    write(dir, &format!("{e}/roles/db.toml"), "include = [\"motd\"]\n");
    write(
        dir,
        &format!("{e}/roles/web.toml"),
        "include = [\"motd\", \"backends\"]\n",
    );
    write(
        dir,
        &format!("{e}/profiles/motd.toml"),
        &format!("[file.\"/etc/motd\"]\ncontent = \"{motd}\\n\"\nmode = \"0644\"\n"),
    );
    write(
        dir,
        &format!("{e}/profiles/backends.toml"),
        "[file.\"/etc/backends\"]\ntemplate = \"backends.j2\"\nmode = \"0644\"\n",
    );
    write(
        dir,
        &format!("{e}/templates/backends.j2"),
        "{% for h in fleet(role=\"db\", facts=[\"networking.ip\", \"kernel.name\"]) %}\n{{ h.name }} {{ h.facts['kernel.name'] }} {{ h.facts | length }}\n{% endfor %}\n",
    );
}

struct Fleet {
    m: Master,
    modules: PathBuf,
    _tree: tempfile::TempDir,
}

impl Fleet {
    fn root(&self, host: &str) -> PathBuf {
        let r = self.m.root.path().join("roots").join(host);
        std::fs::create_dir_all(r.join("etc")).unwrap();
        r
    }

    fn join(&self, host: &str) {
        let psk = self.m.psk(host);
        self.m.bootstrap(host, Some(&psk)).assert_success();
    }

    fn converge(&self, host: &str) -> Out {
        let root = self.root(host);
        let out = self
            .m
            .agent_cmd(host, "run", &["--once", "--root", root.to_str().unwrap()]);
        assert!(
            matches!(out.code, Some(0) | Some(2)),
            "{host}: {out:#?}\nmaster log:\n{}",
            self.m.log()
        );
        out
    }

    fn backends(&self, host: &str) -> String {
        std::fs::read_to_string(self.root(host).join("etc/backends")).unwrap()
    }

    fn troupe(&self, args: &[&str]) -> Out {
        troupe_tests::run(
            std::process::Command::new(troupe_tests::troupe_bin())
                .args(args)
                .arg("--data")
                .arg(&self.m.data),
        )
    }
}

#[test]
fn fleet_data_and_env_diff_with_a_master() {
    let tree = tempfile::tempdir().unwrap();
    let modules = tree.path().join("modules");
    write_tree(&modules, "v1");
    let m = Master::start_with(MasterOptions {
        modules: Some(modules.clone()),
        extra_args: ["--code-poll", "200ms", "--hold", "production"]
            .map(String::from)
            .to_vec(),
    });
    let f = Fleet {
        m,
        modules,
        _tree: tree,
    };
    for h in ["db2", "db1", "web1"] {
        f.join(h);
    }

    // 1. Fleet data: web1 lists the db nodes that checked in, sorted, with
    //    the two facts it named only.
    f.converge("db2");
    f.converge("db1");
    f.converge("web1");
    assert_eq!(f.backends("web1"), "db1 Linux 2\ndb2 Linux 2\n");
    // A new db node: web1's cached catalog depended on the fleet data, so
    // its next run lists db3.
    f.join("db3");
    f.converge("db3");
    f.converge("web1");
    assert_eq!(
        f.backends("web1"),
        "db1 Linux 2\ndb2 Linux 2\ndb3 Linux 2\n"
    );
    // A revoked node leaves the fleet data.
    f.m.ca_ok(&["revoke", "db2"]);
    f.converge("web1");
    assert_eq!(f.backends("web1"), "db1 Linux 2\ndb3 Linux 2\n");

    // 2. The fleet-wide diff. Nothing staged: the tree on disk is what
    //    serves, so nothing changes (exit 0).
    let same = f.troupe(&["env", "diff", "production"]);
    assert_eq!(same.code, Some(0), "{same:#?}");
    assert!(
        same.stdout
            .contains("environment production: 0 of 3 nodes change"),
        "{}",
        same.stdout
    );

    // New code for the held environment: a new motd everywhere, and a new
    // file on web nodes.
    write_tree(&f.modules, "v2");
    write(
        &f.modules,
        "environments/production/profiles/backends.toml",
        "[file.\"/etc/backends\"]\ntemplate = \"backends.j2\"\nmode = \"0644\"\n\n[file.\"/etc/web-extra\"]\ncontent = \"x\\n\"\n",
    );
    troupe_tests::wait_until(Duration::from_secs(20), "staged code", || {
        let s = f.troupe(&["env", "status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&s.stdout)
            .is_ok_and(|v| v["staged"]["production"].is_string())
    });
    let d = f.troupe(&["env", "diff", "production", "--staged"]);
    assert_eq!(d.code, Some(2), "{d:#?}");
    let text = &d.stdout;
    assert!(
        text.contains("== web1: 1 added, 0 removed, 1 changed"),
        "{text}"
    );
    assert!(text.contains("+ file[/etc/web-extra]"), "{text}");
    assert!(
        text.contains("== db1: 0 added, 0 removed, 1 changed"),
        "{text}"
    );
    assert!(text.contains("+v2"), "{text}");
    // db2 was revoked: not a node of the environment any more.
    assert!(!text.contains("db2"), "{text}");
    assert!(
        text.contains(
            "environment production: 3 of 3 nodes change: 1 resource added, 0 removed, 3 modified"
        ),
        "{text}"
    );
    let j = f.troupe(&["env", "diff", "production", "--staged", "--json"]);
    assert_eq!(j.code, Some(2));
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(
        v["summary"],
        serde_json::json!({"nodes": 3, "nodes_changed": 3, "nodes_failing": 0,
                           "added": 1, "removed": 0, "modified": 3})
    );
    let names: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db1", "db3", "web1"]);

    // --to another tree: the serving code against it.
    let other = tempfile::tempdir().unwrap();
    write_tree(other.path(), "v1");
    let d = f.troupe(&[
        "env",
        "diff",
        "production",
        "--to",
        other.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(d.code, Some(0), "{d:#?}");
    let bad = f.troupe(&["env", "diff", "nosuch"]);
    assert_eq!(bad.code, Some(1));
    assert!(
        bad.stderr.contains("environment `nosuch` does not exist"),
        "{bad:#?}"
    );
    let both = f.troupe(&["env", "diff", "production", "--staged", "--to", "/tmp"]);
    assert_eq!(both.code, Some(64), "{both:#?}");

    // 3. Promote: no terminal and no --yes: refused, nothing promoted.
    let p = f.troupe(&["env", "promote", "production"]);
    assert_eq!(p.code, Some(1), "{p:#?}");
    assert!(p.stderr.contains("--yes"), "{p:#?}");
    let s = f.troupe(&["env", "status", "--json"]);
    assert!(
        s.stdout.contains("\"staged\": {\n    \"production\""),
        "{}",
        s.stdout
    );
    // On a terminal: the summary, then a question; anything but `yes`
    // promotes nothing.
    let on_tty = |answer: &str| {
        let cmd = format!(
            "printf '{answer}\\n' | script -qec '{} env promote production --data {}' /dev/null",
            troupe_tests::troupe_bin().display(),
            f.m.data.display()
        );
        troupe_tests::run(std::process::Command::new("sh").args(["-c", &cmd]))
    };
    let no = on_tty("no");
    assert!(
        no.stdout
            .contains("environment production: 3 of 3 nodes change"),
        "{no:#?}"
    );
    assert!(no.stdout.contains("type yes to go on"), "{no:#?}");
    assert!(no.stdout.contains("not promoted"), "{no:#?}");
    let yes = on_tty("yes");
    assert!(yes.stdout.contains("production: now serving"), "{yes:#?}");
    f.converge("web1");
    assert_eq!(
        std::fs::read_to_string(f.root("web1").join("etc/motd")).unwrap(),
        "v2\n"
    );
    // Nothing staged any more: --staged says so; --yes on nothing staged
    // is an error too.
    let d = f.troupe(&["env", "diff", "production", "--staged"]);
    assert_eq!(d.code, Some(1));
    assert!(d.stderr.contains("nothing is staged"), "{d:#?}");
    let p = f.troupe(&["env", "promote", "production", "--yes"]);
    assert_eq!(p.code, Some(1));
    assert!(p.stderr.contains("nothing is staged"), "{p:#?}");
}
