//! The agent's bootstrap and run, and the master daemon, used wrongly the
//! way sysadmins do (the companion of `cli_errors.rs`): every mistake is
//! refused at once with one line that names what is wrong and what to do,
//! and a refused command leaves the state it found.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use troupe_tests::cli::{clean, refused, usage};
use troupe_tests::{Master, MasterOptions, Out, Proc, agent_bin, run, tally, troupe_bin};

fn agent(args: &[&str]) -> Out {
    run(Command::new(agent_bin()).args(args))
}

/// Every file under `dir` (relative path, contents), sorted; empty when
/// `dir` does not exist.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push((
                    format!("{}/", p.strip_prefix(base).unwrap().display()),
                    vec![],
                ));
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// `troupe-agent bootstrap` for `name` into `state`, polling fast, with
/// the given fingerprint and key.
fn boot(m: &Master, name: &str, fp: &str, psk: Option<&str>, state: &Path, extra: &[&str]) -> Out {
    let mut c = Command::new(agent_bin());
    c.args(["bootstrap", "--server", &m.url, "--name", name])
        .args(["--ca-fingerprint", fp, "--state"])
        .arg(state)
        .args(["--poll-initial", "100ms", "--poll-max", "300ms"])
        .args(extra);
    if let Some(p) = psk {
        c.args(["--psk", p]);
    }
    run(&mut c)
}

/// A fingerprint that is not the master's: its first byte changed.
fn other_fingerprint(fp: &str) -> String {
    let first = if fp.starts_with("00") { "11" } else { "00" };
    format!("{first}{}", &fp[2..])
}

#[test]
fn a_wrong_ca_fingerprint_is_final_at_once_and_shows_both() {
    let m = Master::start();
    let fp = m.fingerprint();
    let wrong = other_fingerprint(&fp);
    let psk = m.psk("web1");
    let before = m.list_all();
    let state = m.root.path().join("agent");
    // The default --retry-for is minutes: a refusal must not wait for it.
    let t = Instant::now();
    let out = boot(&m, "web1", &wrong, Some(&psk), &state, &[]);
    assert!(t.elapsed() < Duration::from_secs(20), "{out:#?}");
    refused(
        &out,
        "troupe-agent",
        &[
            "the master's CA fingerprint differs from the one given",
            &fp,
            &wrong,
            "`troupe ca fingerprint` on the master",
        ],
    );
    assert!(!out.stderr.contains("retrying"), "{out:#?}");
    assert!(!state.exists(), "a refused bootstrap created {state:?}");
    assert_eq!(m.list_all(), before, "the refused bootstrap reached the CA");
    // The key is still unused: the right fingerprint joins with it.
    boot(&m, "web1", &fp, Some(&psk), &state, &[]).assert_success();
    tally::hostile("cli", "bootstrap with a wrong --ca-fingerprint", true);
}

#[test]
fn a_refused_bootstrap_leaves_the_state_dir_as_it_found_it() {
    let m = Master::start();
    let fp = m.fingerprint();
    let root = m.root.path();

    // A wrong key, into a state directory that did not exist: none after.
    let fresh = root.join("fresh");
    refused(
        &boot(&m, "web1", &fp, Some("not-the-key"), &fresh, &[]),
        "troupe-agent",
        &["the master refused the certificate request for web1"],
    );
    assert!(!fresh.exists(), "{:?}", snapshot(&fresh));

    // Into an existing directory holding the converge work: untouched.
    let lived = root.join("lived");
    std::fs::create_dir_all(&lived).unwrap();
    std::fs::write(lived.join("last_run_summary.json"), "{}\n").unwrap();
    let before = snapshot(&lived);
    refused(
        &boot(&m, "web1", &fp, Some("not-the-key"), &lived, &[]),
        "troupe-agent",
        &["the master refused the certificate request for web1"],
    );
    assert_eq!(snapshot(&lived), before);

    // A used key: the first host joins, a second one with the same key is
    // refused and keeps nothing.
    let psk = m.psk("web2");
    boot(&m, "web2", &fp, Some(&psk), &root.join("web2-a"), &[]).assert_success();
    let b = root.join("web2-b");
    let out = boot(&m, "web2", &fp, Some(&psk), &b, &[]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(!b.exists(), "{:?}", snapshot(&b));

    // Not a URL the agent speaks: refused before anything is made.
    let http = root.join("http");
    let out = agent(&[
        "bootstrap",
        "--server",
        &m.url.replace("https", "http"),
        "--name",
        "web1",
        "--ca-fingerprint",
        &fp,
        "--state",
        http.to_str().unwrap(),
    ]);
    refused(&out, "troupe-agent", &["only https:// URLs are supported"]);
    assert!(!http.exists());

    // After the refusals, a new key joins in the same directories.
    let psk = m.psk("web1");
    boot(&m, "web1", &fp, Some(&psk), &lived, &[]).assert_success();
    for f in [
        "key.pem",
        "cert.pem",
        "ca.pem",
        "crl.pem",
        "last_run_summary.json",
    ] {
        assert!(lived.join(f).exists(), "{f}");
    }
    tally::hostile(
        "cli",
        "refused bootstraps (wrong, used key) leave the state dir as found",
        true,
    );
}

#[test]
fn a_pending_request_keeps_its_key_and_says_so_and_resumes() {
    let m = Master::start();
    let fp = m.fingerprint();
    let state = m.root.path().join("web4");
    let out = boot(&m, "web4", &fp, None, &state, &["--wait", "1s"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    let last = out.stderr.lines().last().unwrap_or("");
    assert!(last.contains("gave up after"), "{out:#?}");
    assert!(
        last.contains("key.pem is kept") && last.contains("running bootstrap again resumes"),
        "{out:#?}"
    );
    clean(&out);
    assert!(state.join("key.pem").exists());
    assert!(!state.join("cert.pem").exists());
    assert!(
        !state.join("ca.pem").exists(),
        "ca.pem before a certificate"
    );
    m.ca_ok(&["sign", "web4"]);
    boot(&m, "web4", &fp, None, &state, &[]).assert_success();
    assert!(state.join("cert.pem").exists());
    tally::hostile("cli", "pending bootstrap given up, then resumed", true);
}

#[test]
fn bootstrap_against_a_master_that_is_down_says_what_it_waits_for() {
    let m = Master::start();
    let fp = m.fingerprint();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let state = m.root.path().join("agent");
    let cmd = |retry: &str| {
        let mut c = Command::new(agent_bin());
        c.args(["bootstrap", "--server", &url, "--name", "web1"])
            .args(["--ca-fingerprint", &fp, "--psk", "x", "--state"])
            .arg(&state)
            .args(["--poll-initial", "100ms", "--poll-max", "200ms"])
            .args(["--retry-for", retry]);
        c
    };
    let out = run(&mut cmd("1s"));
    assert_eq!(out.code, Some(1), "{out:#?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(lines.len() >= 2, "{out:#?}");
    for l in &lines[..lines.len() - 1] {
        for n in [
            "WARN",
            "nothing listens there",
            "retrying in",
            "(--retry-for 1s)",
            "Ctrl-C stops",
        ] {
            assert!(l.contains(n), "{n:?} not in {l:?}");
        }
    }
    let last = lines[lines.len() - 1];
    for n in [
        "troupe-agent: error: gave up after",
        "--retry-for 1s",
        "`--retry-for forever` waits until the master answers",
        "Connection refused",
    ] {
        assert!(last.contains(n), "{n:?} not in {last:?}");
    }
    assert!(!state.exists(), "{:?}", snapshot(&state));

    // forever: still waiting after a while, saying so.
    let log = m.root.path().join("forever.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut c = cmd("forever");
    c.env("TROUPE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(f);
    let mut p = Proc(c.spawn().unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(p.0.try_wait().unwrap().is_none(), "gave up");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("waiting until it answers (--retry-for forever); Ctrl-C stops"),
        "{text}"
    );
    drop(p);

    usage(&run(&mut cmd("soon")), "--retry-for");
    let help = agent(&["bootstrap", "--help"]);
    for n in [
        "--retry-for <DURATION|forever>",
        "`forever` waits",
        "[default: 5m]",
    ] {
        assert!(help.stdout.contains(n), "{n:?}: {}", help.stdout);
    }
    tally::fault("master-down", "bootstrap retries say what they wait for", 0);
}

#[test]
fn agent_run_before_bootstrap_fails_at_once() {
    let m = Master::start();
    let state = m.root.path().join("agent");
    let s = state.to_str().unwrap();
    let out = agent(&["run", "--once", "--server", &m.url, "--state", s]);
    refused(
        &out,
        "troupe-agent",
        &[
            "holds no identity for the master",
            "troupe-agent bootstrap",
            "first",
        ],
    );
    assert!(!state.exists(), "run created {state:?}");

    // A bootstrap that never finished: resume it.
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("key.pem"), "x").unwrap();
    let before = snapshot(&state);
    let out = agent(&["run", "--once", "--server", &m.url, "--state", s]);
    refused(
        &out,
        "troupe-agent",
        &["has not finished", "run `troupe-agent bootstrap` again"],
    );
    assert_eq!(snapshot(&state), before);
    tally::hostile("cli", "agent run before bootstrap", true);
}

#[test]
fn disable_and_enable_refuse_a_state_dir_that_does_not_exist() {
    let root = tempfile::tempdir().unwrap();
    let typo = root.path().join("typo");
    let t = typo.to_str().unwrap();
    for args in [
        &["disable", "--state", t, "x"][..],
        &["enable", "--state", t][..],
    ] {
        refused(
            &agent(args),
            "troupe-agent",
            &["--state", "no such directory", "/var/lib/troupe-agent"],
        );
        assert!(!typo.exists(), "{args:?} created {typo:?}");
    }
    // An existing one works.
    let real = root.path().join("real");
    std::fs::create_dir_all(&real).unwrap();
    let r = real.to_str().unwrap();
    let out = agent(&["disable", "--state", r, "maintenance"]);
    out.assert_success();
    assert!(real.join("disabled").exists());
    agent(&["enable", "--state", r]).assert_success();
    assert!(!real.join("disabled").exists());
    tally::hostile("cli", "disable/enable with a missing --state", true);
}

/// Runs `troupe master ARGS` that must exit on its own (a refusal): fails
/// the test if it is still running after 30 s.
fn master_refused(args: &[&str], env: &[(&str, &str)]) -> Out {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    let mut c = Command::new(troupe_bin());
    c.arg("master").args(args).env("TROUPE_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null())
        .stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap());
    let mut p = Proc(c.spawn().unwrap());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "troupe master {args:?} kept running:\n{}",
            std::fs::read_to_string(&e).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    Out {
        code: status.code(),
        stdout: std::fs::read_to_string(&o).unwrap(),
        stderr: std::fs::read_to_string(&e).unwrap(),
    }
}

#[test]
fn the_master_refuses_a_missing_module_dir_and_starts_without_a_broken_tree() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let d = data.to_str().unwrap();
    let listen = ["--listen", "127.0.0.1:0", "--data", d];

    let out = master_refused(&[&listen[..], &["--modules", "/nonexistent"]].concat(), &[]);
    refused(
        &out,
        "troupe",
        &["--modules /nonexistent", "No such file or directory"],
    );
    assert!(!out.stderr.contains("keeps serving"), "{out:#?}");
    assert!(!data.exists(), "a refused master created {data:?}");

    // A tree with a broken site file: the master starts without it (the CA
    // works, catalogs wait for a good tree), says so once, and serves the
    // tree as soon as it is fixed.
    let tree = root.path().join("modules");
    troupe_tests::netns::write_tree(&tree, "hello", 1, 1);
    let site = std::fs::read_to_string(tree.join("site.toml")).unwrap();
    std::fs::write(tree.join("site.toml"), "[[node]\n").unwrap();
    let t = tree.to_str().unwrap();
    {
        let m = Master::start_with(MasterOptions {
            modules: Some(tree.clone()),
            extra_args: vec!["--code-poll".into(), "200ms".into()],
        });
        m.ca(&["list"]).assert_success();
        let log = m.log();
        assert!(
            log.contains("the module tree does not load; the master starts without it")
                && log.contains("site.toml"),
            "{log}"
        );
        std::fs::write(tree.join("site.toml"), &site).unwrap();
        let t0 = std::time::Instant::now();
        while !m.log().contains("new module code is live") {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(20),
                "the fixed tree was not served: {}",
                m.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!m.log().contains("keeps serving"), "{}", m.log());
    }

    // --hold: an environment the tree does not have, or no tree at all.
    let out = master_refused(
        &[&listen[..], &["--modules", t, "--hold", "prodution"]].concat(),
        &[],
    );
    refused(
        &out,
        "troupe",
        &[
            "--hold prodution",
            "has no environment \"prodution\"",
            "it has: production",
        ],
    );
    assert!(!data.exists());
    let out = master_refused(&[&listen[..], &["--hold", "production"]].concat(), &[]);
    refused(&out, "troupe", &["--hold production", "give --modules DIR"]);
    assert!(!data.exists());

    // --listen without a port, or with a name: a usage error with an example.
    for bad in ["127.0.0.1", "localhost:8140", "8140"] {
        let out = master_refused(&["--listen", bad, "--data", d], &[]);
        usage(&out, "expected IP:PORT, e.g. 127.0.0.1:8140");
        assert!(out.stderr.contains(&format!("'{bad}'")), "{out:#?}");
    }
    assert!(!data.exists());

    // The good tree, held: the master serves (and logs no load error).
    let m = Master::start_with(MasterOptions {
        modules: Some(tree.clone()),
        extra_args: vec!["--hold".into(), "production".into()],
    });
    let st = m.ca(&["list"]);
    st.assert_success();
    assert!(m.log().contains("module tree loaded"), "{}", m.log());
    tally::hostile(
        "cli",
        "master started with a bad --modules/--hold/--listen",
        true,
    );
}

#[test]
fn the_master_uses_the_same_data_default_as_the_client_commands() {
    let help = run(Command::new(troupe_bin()).args(["master", "--help"]));
    // Wrapped to the terminal's width: compare words.
    let words = help.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    for n in [
        "[env: TROUPE_DATA=]",
        "[default: /var/lib/troupe]",
        "--listen <IP:PORT>",
    ] {
        assert!(words.contains(n), "{n:?}: {}", help.stdout);
    }
    // TROUPE_DATA alone places the master, and the client commands find it.
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let mut c = Command::new(troupe_bin());
    c.args(["master", "--listen", "127.0.0.1:0"])
        .env("TROUPE_DATA", &data)
        .env("TROUPE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _p = Proc(c.spawn().unwrap());
    troupe_tests::wait_until(Duration::from_secs(30), "listen.addr", || {
        data.join("listen.addr").exists()
    });
    let fp = run(Command::new(troupe_bin())
        .args(["ca", "fingerprint"])
        .env("TROUPE_DATA", &data));
    fp.assert_success();
    assert_eq!(fp.stdout.trim().len(), 95, "{fp:#?}");
}

#[test]
fn an_agent_with_an_expired_certificate_is_told_at_once() {
    let m = Master::start();
    let state = m.root.path().join("old");
    m.write_expired_identity("web-old", &state);
    let s = state.to_str().unwrap();
    let before = snapshot(&state);
    for sub in ["run", "renew"] {
        let mut args = vec![sub, "--server", &m.url, "--state", s];
        if sub == "run" {
            args.push("--once");
        }
        let out = agent(&args);
        refused(
            &out,
            "troupe-agent",
            &[
                "has expired",
                "cannot be renewed",
                "troupe ca clean web-old",
                "troupe-agent bootstrap",
            ],
        );
        assert_eq!(snapshot(&state), before, "{sub} changed the state dir");
    }
    tally::hostile("cli", "agent run/renew with an expired certificate", true);
}

#[test]
fn an_agent_run_against_a_master_that_is_down_says_what_to_check() {
    let mut m = Master::start();
    let psk = m.psk("web1");
    m.bootstrap("web1", Some(&psk)).assert_success();
    m.stop();
    let out = m.agent_cmd("web1", "run", &["--once"]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    let last = out.stderr.lines().last().unwrap_or("");
    for n in [
        "troupe-agent: error: no catalog",
        "Connection refused",
        "nothing listens there: is the master running, and is the port in --server right?",
    ] {
        assert!(last.contains(n), "{n:?} not in {last:?}");
    }
    // The WARN lines before it repeat the cause (one per try); the error
    // line says each once.
    clean(&Out {
        code: out.code,
        stdout: String::new(),
        stderr: last.to_string(),
    });
    tally::fault("master-down", "agent run --once with the master down", 0);
}
