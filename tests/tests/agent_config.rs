//! The daemons start from their config files alone (issue 13), and the
//! shipped `troupe_agent` profile's agent.toml makes the agent daemon pull
//! from the master on its timer: a blank state dir joins with the key from
//! `psk_file` (deleted after the join), converges, and picks up a change to
//! the module tree at the next interval.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use troupe_tests::{Master, MasterOptions, Proc, run, wait_until};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

/// The tree the test master serves: a motd naming the node.
fn write_tree(dir: &Path, banner: &str) {
    let env = dir.join("environments/production");
    for d in ["roles", "profiles", "data", "templates"] {
        std::fs::create_dir_all(env.join(d)).unwrap();
    }
    std::fs::write(
        dir.join("site.toml"),
        "default_environment = \"production\"\n[[node]]\nmatch = \"*\"\nrole = \"base\"\n",
    )
    .unwrap();
    std::fs::write(
        env.join("hierarchy.toml"),
        "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
    )
    .unwrap();
    write_banner(dir, banner);
    std::fs::write(env.join("roles/base.toml"), "include = [\"motd\"]\n").unwrap();
    std::fs::write(
        env.join("profiles/motd.toml"),
        "[params]\nbanner = \"unset\"\n[file.\"/etc/motd\"]\ntemplate = \"motd.j2\"\nmode = \"0644\"\n",
    )
    .unwrap();
    std::fs::write(
        env.join("templates/motd.j2"),
        "{{ params.banner }} ({{ node.certname }})\n",
    )
    .unwrap();
}

fn write_banner(dir: &Path, banner: &str) {
    let p = dir.join("environments/production/data/common.toml");
    std::fs::write(&p, format!("[motd]\nbanner = \"{banner}\"\n")).unwrap();
    // Later mtime, so the master's poll sees the change within one tick.
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// /etc/troupe/agent.toml as the shipped tree's `troupe_agent` profile
/// renders it for a Debian web host, with this test's master, state dir,
/// CA fingerprint and a short interval set through the data (as a site
/// would), compiled by `troupe catalog compile`.
fn rendered_agent_toml(tmp: &Path, master_url: &str, state: &Path, fingerprint: &str) -> String {
    let tree = tmp.join("shipped");
    copy_dir(&workspace().join("modules"), &tree);
    let common = tree.join("environments/production/data/common.toml");
    let text = std::fs::read_to_string(&common).unwrap();
    let old = "[troupe_agent]\nmaster = \"https://troupe.example.com:8140\"\ninterval = 1800\nsplay = 300\n";
    assert!(
        text.contains(old),
        "the shipped data changed: update this test"
    );
    std::fs::write(
        &common,
        text.replace(
            old,
            &format!(
                "[troupe_agent]\nmaster = \"{master_url}\"\ninterval = 2\nsplay = 0\n\
                 state_dir = \"{}\"\nca_fingerprint = \"{fingerprint}\"\n",
                state.display()
            ),
        ),
    )
    .unwrap();
    let out = run(Command::new(troupe_tests::troupe_bin())
        .args([
            "catalog",
            "compile",
            "web1.example.com",
            "--json",
            "--facts",
        ])
        .arg(workspace().join("catalog/compiler/tests/facts/debian12.json"))
        .arg("--modules")
        .arg(&tree)
        .arg("--data")
        .arg(tmp.join("no-data")));
    out.assert_success();
    let cat: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let res = cat["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "file[/etc/troupe/agent.toml]")
        .expect("the profile manages /etc/troupe/agent.toml");
    let sha = res["content"]["sha256"].as_str().unwrap();
    let body = cat["contents"][sha]["data"].as_str().unwrap().to_owned();
    // The package owns the units now.
    assert!(
        cat["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/etc/systemd/system/")))
            .all(|r| r["ensure"] == "absent"),
        "the profile writes no unit files"
    );
    body
}

#[test]
fn the_shipped_profiles_agent_toml_joins_and_pulls_on_the_timer() {
    let tree = tempfile::tempdir().unwrap();
    let modules = tree.path().join("modules");
    write_tree(&modules, "Welcome");
    let m = Master::start_with(MasterOptions {
        modules: Some(modules.clone()),
        extra_args: vec!["--code-poll".into(), "200ms".into()],
    });
    let tmp = m.root.path().join("agent-config");
    std::fs::create_dir_all(&tmp).unwrap();
    let state = tmp.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let rendered = rendered_agent_toml(&tmp, &m.url, &state, &m.fingerprint());
    assert!(
        rendered.contains(&format!("server = \"{}\"", m.url)),
        "{rendered}"
    );

    // The host's own additions for the first join: its name and the key.
    let psk_file = tmp.join("psk");
    std::fs::write(&psk_file, m.psk("web1")).unwrap();
    std::fs::set_permissions(
        &psk_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = tmp.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "{rendered}name = \"web1\"\npsk_file = \"{}\"\n",
            psk_file.display()
        ),
    )
    .unwrap();

    // --print-config says where each value came from.
    let pc = run(Command::new(troupe_tests::agent_bin())
        .arg("--config")
        .arg(&config)
        .args(["--print-config", "--json"]));
    pc.assert_success();
    let v: serde_json::Value = serde_json::from_str(&pc.stdout).unwrap();
    assert_eq!(v["settings"]["server"]["value"], m.url.as_str());
    assert_eq!(
        v["settings"]["interval"]["source"],
        format!("file {}", config.display())
    );
    assert_eq!(v["settings"]["interval"]["value"], 2);

    let root = tmp.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let _daemon = Proc(
        Command::new(troupe_tests::agent_bin())
            .arg("--config")
            .arg(&config)
            .args(["run", "--output", "quiet", "--root"])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let motd = root.join("etc/motd");
    wait_until(
        Duration::from_secs(60),
        "the daemon to join and converge",
        || std::fs::read_to_string(&motd).is_ok_and(|s| s == "Welcome (web1)\n"),
    );
    assert!(state.join("cert.pem").exists());
    assert!(!psk_file.exists(), "the used key is deleted after the join");

    // A change to the module tree reaches the host at a later interval,
    // with no restart and no command.
    write_banner(&modules, "Changed");
    wait_until(
        Duration::from_secs(30),
        "the next interval to pick it up",
        || std::fs::read_to_string(&motd).is_ok_and(|s| s == "Changed (web1)\n"),
    );
}

#[test]
fn the_master_starts_from_its_config_file_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let modules = tmp.path().join("modules");
    write_tree(&modules, "Hi");
    let config = tmp.path().join("master.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nmodules = \"{}\"\ncode_poll = \"1s\"\n\
             run_interval = \"10m\"\nreports_keep = 5\nserver_names = [\"localhost\"]\n",
            data.display(),
            modules.display()
        ),
    )
    .unwrap();
    let master = |args: &[&str]| {
        let mut c = Command::new(troupe_tests::troupe_bin());
        c.args(["master", "--config"]).arg(&config).args(args);
        c
    };
    let pc = run(&mut master(&[
        "--print-config",
        "--json",
        "--reports-keep",
        "9",
    ]));
    pc.assert_success();
    let v: serde_json::Value = serde_json::from_str(&pc.stdout).unwrap();
    assert_eq!(v["settings"]["reports_keep"]["value"], 9);
    assert_eq!(v["settings"]["reports_keep"]["source"], "flag");
    assert_eq!(v["settings"]["run_interval"]["value"], "10m");
    assert_eq!(v["settings"]["metrics_listen"]["source"], "default");
    // The environment beats the file, the flag beats the environment.
    let env = run(master(&["--print-config", "--json"]).env("TROUPE_RUN_INTERVAL", "5m"));
    let v: serde_json::Value = serde_json::from_str(&env.stdout).unwrap();
    assert_eq!(v["settings"]["run_interval"]["value"], "5m");
    assert_eq!(
        v["settings"]["run_interval"]["source"],
        "env TROUPE_RUN_INTERVAL"
    );

    let _m = Proc(
        master(&[])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(30), "the master to listen", || {
        data.join("listen.addr").exists()
    });
    assert!(data.join("ca").is_dir());

    // Unknown keys and files others may write are refused, naming the
    // key and the file; nothing is created.
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "data_dir = \"/nonexistent-troupe\"\nport = 8140\n").unwrap();
    let out = run(Command::new(troupe_tests::troupe_bin())
        .args(["master", "--config"])
        .arg(&bad));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("unknown key `port`") && out.stderr.contains("bad.toml"),
        "{out:?}"
    );
    std::fs::write(&bad, "listen = \"127.0.0.1:0\"\n").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = run(Command::new(troupe_tests::agent_bin())
        .arg("--config")
        .arg(&bad)
        .arg("--print-config"));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("chmod go-w"), "{out:?}");
}
