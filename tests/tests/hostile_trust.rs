//! Hostile input, files that grant trust: an orchestration configuration
//! (its signers and policy decide who may command the host) that someone
//! other than root or the agent's user could have written is refused, at
//! the default place and through `--orchestration`, as is one in a
//! directory others may write; the agent does not start listening with it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use troupe_tests::{Master, agent_bin, tally};

/// A valid configuration (what it says does not matter: who could have
/// written it does).
const CONFIG: &str = "role = \"web\"\n";

/// Runs `troupe-agent listen` for web1 with `extra` args; returns how it
/// exited (None: still running after `wait`, then killed) and its stderr.
fn listen(
    m: &Master,
    extra: &[&str],
    wait: Duration,
) -> (Option<std::process::ExitStatus>, String) {
    let mut child = std::process::Command::new(agent_bin())
        .arg("listen")
        .arg("--server")
        .arg(&m.url)
        .arg("--state")
        .arg(m.agent_state("web1"))
        .args(["--facts-dir", "/nonexistent", "--backoff-max", "1s"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > wait {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn orchestration_config_others_could_write_is_refused() {
    let m = Master::start();
    let psk = m.psk("web1");
    m.bootstrap("web1", Some(&psk)).assert_success();
    let st = m.agent_state("web1");
    let default = st.join("orchestration.toml");
    let elsewhere = m.root.path().join("conf");
    std::fs::create_dir_all(&elsewhere).unwrap();
    chmod(&elsewhere, 0o755);
    let given = elsewhere.join("orch.toml");

    // (what, file, mode, owner, dir to loosen, args, expected message)
    type Case<'a> = (
        &'a str,
        &'a Path,
        u32,
        Option<u32>,
        Option<(&'a Path, u32)>,
        Vec<String>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "default orchestration.toml writable by others",
            &default,
            0o646,
            None,
            None,
            vec![],
            "writable by group or others",
        ),
        (
            "default orchestration.toml writable by its group",
            &default,
            0o664,
            None,
            None,
            vec![],
            "writable by group or others",
        ),
        (
            "--orchestration file writable by others",
            &given,
            0o666,
            None,
            None,
            vec!["--orchestration".into(), given.display().to_string()],
            "writable by group or others",
        ),
        (
            "--orchestration file owned by another user",
            &given,
            0o644,
            Some(54321),
            None,
            vec!["--orchestration".into(), given.display().to_string()],
            "owned by uid 54321",
        ),
        (
            "--orchestration file in a directory others can write",
            &given,
            0o644,
            None,
            Some((&elsewhere, 0o777)),
            vec!["--orchestration".into(), given.display().to_string()],
            "the directory holding the orchestration configuration",
        ),
    ];
    for (what, file, mode, owner, loosen, args, expect) in cases {
        std::fs::write(file, CONFIG).unwrap();
        chmod(file, mode);
        if let Some(uid) = owner {
            std::os::unix::fs::chown(file, Some(uid), None).unwrap();
        }
        if let Some((d, m)) = loosen {
            chmod(d, m);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, err) = listen(&m, &args, Duration::from_secs(10));
        let status = status.unwrap_or_else(|| panic!("{what}: the agent kept running"));
        assert!(!status.success(), "{what}: {err}");
        assert!(err.contains(expect), "{what}: {err}");
        tally::hostile("trust-files", what, true);
        // Put things back.
        std::fs::remove_file(file).unwrap();
        if let Some((d, _)) = loosen {
            chmod(d, 0o755);
        }
    }

    // The same file, owned by root and 0644 in a 0755 directory, is used:
    // the agent starts and stays up.
    std::fs::write(&given, CONFIG).unwrap();
    chmod(&given, 0o644);
    let (status, err) = listen(
        &m,
        &["--orchestration", given.to_str().unwrap()],
        Duration::from_secs(2),
    );
    assert!(status.is_none(), "a sound config was refused: {err}");
}

/// The master's signer list decides whose commands it relays: made
/// writable by others, every submission is refused until it is fixed.
#[test]
fn master_signer_list_others_could_write_is_refused() {
    use troupe_command::TargetFilter;
    use troupe_tests::orch::{AgentSpec, Fleet};
    let f = Fleet::start(&[AgentSpec::new("web1")]);
    let signers = f.master.data.join("signers.toml");
    for mode in [0o666, 0o664] {
        chmod(&signers, mode);
        let wire = f.sign(&f.alice, "ping", &[], TargetFilter::default(), 60);
        let e = f
            .try_submit(wire, false)
            .expect_err("a command was relayed on a signer list others can write");
        let e = format!("{e:#}");
        assert!(e.contains("writable by group or others"), "{e}");
        tally::hostile(
            "trust-files",
            &format!("master signers.toml with mode {mode:04o}"),
            true,
        );
    }
    chmod(&signers, 0o644);
    let wire = f.sign(&f.alice, "ping", &[], TargetFilter::default(), 60);
    let (t, _, _) = f.try_submit(wire, false).expect("sound signer list");
    assert_eq!(t, ["web1"]);
}

/// The daemons' own config files (agent.toml, master.toml) say which master
/// and CA to trust: the same rule applies to them and to every directory
/// above them, and nothing is started with a refused one.
#[test]
fn daemon_config_files_others_could_write_are_refused() {
    let t = tempfile::tempdir().unwrap();
    chmod(t.path(), 0o755);
    let dir = t.path().join("etc-troupe");
    std::fs::create_dir(&dir).unwrap();
    for (bin, file, body) in [
        (
            agent_bin(),
            "agent.toml",
            "server = \"https://master.example:8140\"\n",
        ),
        (
            troupe_tests::troupe_bin(),
            "master.toml",
            "listen = \"127.0.0.1:0\"\n",
        ),
    ] {
        let p = dir.join(file);
        std::fs::write(&p, body).unwrap();
        // (what, file mode, dir mode, owner, expected words)
        let cases: [(&str, u32, u32, Option<u32>, &str); 4] = [
            ("group-writable", 0o664, 0o755, None, "chmod go-w"),
            ("world-writable", 0o646, 0o755, None, "chmod go-w"),
            (
                "in a world-writable directory",
                0o600,
                0o777,
                None,
                "directory holding",
            ),
            (
                "owned by another user",
                0o600,
                0o755,
                Some(12345),
                "owned by uid 12345",
            ),
        ];
        for (what, mode, dmode, owner, words) in cases {
            chmod(&p, mode);
            chmod(&dir, dmode);
            std::os::unix::fs::chown(&p, Some(owner.unwrap_or(0)), None).unwrap();
            let mut cmd = std::process::Command::new(&bin);
            if file == "master.toml" {
                cmd.arg("master");
            }
            let out = cmd
                .arg("--config")
                .arg(&p)
                .arg("--print-config")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            let refused = out.status.code() == Some(1) && err.contains(words);
            tally::hostile("trust-files", &format!("{file} {what}"), refused);
            assert!(refused, "{file} {what}: {out:?}");
            assert!(out.stdout.is_empty(), "{file} {what}: printed a config");
        }
        // The same file, root's and 0600 in a 0755 directory: accepted.
        chmod(&p, 0o600);
        chmod(&dir, 0o755);
        std::os::unix::fs::chown(&p, Some(0), None).unwrap();
        let mut cmd = std::process::Command::new(&bin);
        if file == "master.toml" {
            cmd.arg("master");
        }
        let out = cmd
            .arg("--config")
            .arg(&p)
            .arg("--print-config")
            .output()
            .unwrap();
        assert!(out.status.success(), "{file}: {out:?}");
    }
}
