//! `troupe deploy`: rolling releases over real agents: one that fails on
//! the second host and stops there, one whose health check fails on the
//! second host (a real HTTP endpoint on 127.0.0.1), and the same release
//! file run against the disaster-recovery environment first and
//! production second. The agents' package and service tools are stand-in
//! scripts in the test's temporary directory (configured with `[tools]`),
//! and HAProxy's runtime socket is a stand-in unix socket, so nothing on
//! this machine is installed, restarted or reconfigured.

use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use troupe_command::{ArgValue, TargetFilter};
use troupe_tests::orch::{AgentSpec, AptGet, Fleet, stand_in_package_tools};
use troupe_tests::tally;

/// Stand-in package tools (calls logged to STATE/fake/calls.log): web2
/// of role web fails to fetch.
fn tools(spec: &AgentSpec, state: &Path) -> String {
    let apt = if spec.name == "web2" && spec.role.as_deref() == Some("web") {
        AptGet::Fails
    } else {
        AptGet::Installs
    };
    stand_in_package_tools(
        state,
        apt,
        r#"["package.*", "service.*", "lb.*", "health.*"]"#,
    )
}

#[test]
fn a_release_that_fails_on_the_second_host_stops_there() {
    let f = Fleet::start_with(
        &[
            AgentSpec::new("web1").role("web"),
            AgentSpec::new("web2").role("web"),
            AgentSpec::new("web3").role("web"),
        ],
        tools,
    );
    let rel = f.master.root.path().join("release.toml");
    std::fs::write(
        &rel,
        r#"
title = "nginx 1.24"
[[package]]
name = "nginx"
version = "1.24.0-1"
"#,
    )
    .unwrap();
    let rel = rel.to_string_lossy().into_owned();

    // The plan only.
    let out = f.troupe("deploy", &[&rel, "--role", "web", "--dry-run"]);
    out.assert_success();
    assert!(out.stdout.contains("update nginx to 1.24.0-1"), "{out:?}");
    let calls =
        |h: &str| std::fs::read_to_string(f.state(h).join("fake/calls.log")).unwrap_or_default();
    assert_eq!(calls("web1"), "", "a dry run runs nothing");

    let out = f.troupe("deploy", &[&rel, "--yes", "--role", "web"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.contains("release STOPPED"), "{out:?}");
    assert!(
        out.stdout
            .contains("web2 (nginx): failed at step update nginx to 1.24.0-1"),
        "{out:?}"
    );
    assert!(out.stdout.contains("Unable to fetch"), "{out:?}");

    // web1: updated, services restarted, out of maintenance.
    let v1 = std::fs::read_to_string(f.state("web1").join("fake/version")).unwrap();
    assert_eq!(v1, "1.24.0-1");
    let c1 = calls("web1");
    assert!(
        c1.contains("systemctl stop -- nginx") && c1.contains("systemctl start -- nginx"),
        "{c1}"
    );
    assert!(!f.state("web1").join("maintenance").exists());
    // web2: failed at the update, left stopped and in maintenance.
    assert_eq!(
        std::fs::read_to_string(f.state("web2").join("fake/version")).unwrap(),
        "1.22.1-9"
    );
    let c2 = calls("web2");
    assert!(
        c2.contains("systemctl stop -- nginx") && !c2.contains("systemctl start"),
        "{c2}"
    );
    assert!(f.state("web2").join("maintenance").exists());
    // web3: never touched.
    assert_eq!(calls("web3"), "");
    assert!(!f.state("web3").join("maintenance").exists());
    // The failure says what web2 was left with, and how to undo it.
    assert!(
        out.stdout.contains("left in maintenance, nginx stopped"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("undo: troupe run service.start name=nginx --name web2"),
        "{out:?}"
    );
    assert!(
        out.stdout
            .contains("undo: troupe run maintenance.off --name web2"),
        "{out:?}"
    );

    // Issue 16 item 2: with failures tolerated (--max-failures), a release
    // in which a host failed still exits 2 and names it; --json streams
    // one event a line.
    let out = f.troupe(
        "deploy",
        &[
            &rel,
            "--yes",
            "--role",
            "web",
            "--max-failures",
            "5",
            "--json",
        ],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(events[0]["event"], "matched");
    assert_eq!(
        events[0]["hosts"],
        serde_json::json!(["web1", "web2", "web3"])
    );
    let ok: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "host_ok")
        .map(|e| e["host"].as_str().unwrap())
        .collect();
    assert_eq!(ok, ["web1", "web3"], "{out:?}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "step_failed" && e["host"] == "web2" && e["final"] == true)
    );
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["status"], "failed");
    assert_eq!(done["completed"], 2);
    assert_eq!(done["failures"][0]["host"], "web2");
    assert_eq!(done["failures"][0]["step"], "update nginx to 1.24.0-1");
    assert_eq!(
        done["failures"][0]["left"],
        serde_json::json!(["in maintenance", "nginx stopped"])
    );
    tally::fault(
        "deploy",
        "package update failed on host 2: release stopped there, host left in maintenance",
        0,
    );
}

/// A stand-in for HAProxy's runtime API on STATE/haproxy.sock: records
/// every line, answers like HAProxy (an empty line is success).
fn fake_haproxy(sock: &Path) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = std::os::unix::net::UnixListener::bind(sock).unwrap();
    let rec = lines.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let mut line = String::new();
            if std::io::BufReader::new(&s).read_line(&mut line).is_ok() {
                rec.lock().unwrap().push(line.trim().to_string());
                let _ = (&s).write_all(b"\n");
            }
        }
    });
    lines
}

/// An HTTP endpoint on 127.0.0.1: the first request gets 200, every later
/// one 500 (with batches of one, web1 is checked first). Returns the port
/// and the number of requests served.
fn health_endpoint() -> (u16, Arc<Mutex<u32>>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let served = Arc::new(Mutex::new(0u32));
    let n = served.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let mut n = n.lock().unwrap();
            *n += 1;
            let status = if *n == 1 {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (port, served)
}

#[test]
fn a_failed_health_check_stops_the_release_and_leaves_the_host_drained() {
    let f = Fleet::start_with(
        &[
            AgentSpec::new("web1").role("app"),
            AgentSpec::new("web2").role("app"),
            AgentSpec::new("web3").role("app"),
        ],
        |spec, state| {
            format!(
                "haproxy_socket = \"{}\"\n{}",
                state.join("haproxy.sock").display(),
                tools(spec, state)
            )
        },
    );
    let lb: Vec<_> = ["web1", "web2", "web3"]
        .iter()
        .map(|h| fake_haproxy(&f.state(h).join("haproxy.sock")))
        .collect();
    let (port, served) = health_endpoint();
    let rel = f.master.root.path().join("release.toml");
    std::fs::write(
        &rel,
        format!(
            r#"
title = "app 2.0"
[lb]
backend = "be_app"
[[package]]
name = "nginx"
version = "1.24.0-1"
[package.health]
http = "http://127.0.0.1:{port}/healthz"
expect_status = 200
timeout_secs = 2
retries = 2
interval_secs = 1
"#
        ),
    )
    .unwrap();
    let rel = rel.to_string_lossy().into_owned();
    let out = f.troupe("deploy", &[&rel, "--yes", "--role", "app"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.contains("release STOPPED"), "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "web2 (nginx): failed at step check health (GET http://127.0.0.1:{port}/healthz expecting 200): 3 attempts failed"
        )),
        "{out:?}"
    );
    assert!(out.stdout.contains("answered 500, expected 200"), "{out:?}");
    assert!(out.stdout.contains("attempt 2/3 failed"), "{out:?}");
    // One request from web1, three attempts from web2.
    assert_eq!(*served.lock().unwrap(), 4);
    let lines = |i: usize| lb[i].lock().unwrap().clone();
    // web1: healthy, so restored and out of maintenance.
    assert_eq!(
        lines(0),
        [
            "set server be_app/web1 state drain",
            "set server be_app/web1 state ready"
        ]
    );
    assert!(!f.state("web1").join("maintenance").exists());
    // web2: updated and started, but unhealthy: left drained and in
    // maintenance.
    assert_eq!(lines(1), ["set server be_app/web2 state drain"]);
    assert!(f.state("web2").join("maintenance").exists());
    let v2 = std::fs::read_to_string(f.state("web2").join("fake/version")).unwrap();
    assert_eq!(v2, "1.24.0-1");
    // web3: never touched.
    assert!(lines(2).is_empty());
    assert!(!f.state("web3").join("maintenance").exists());
    tally::fault(
        "deploy",
        "health check failed on host 2: release stopped there, host left drained",
        0,
    );
    // A health check cannot be pointed at another host: refused by the
    // agent before anything runs (and by the manifest parser).
    let wire = f.sign(
        &f.alice,
        "health.http",
        &[("url", ArgValue::Str("http://192.0.2.7/".into()))],
        TargetFilter {
            name: Some("web1".into()),
            ..Default::default()
        },
        60,
    );
    let (_, results, _) = f.submit(wire);
    assert_eq!(results["web1"].status, "bad_argument");
    tally::hostile("command", "health check aimed at another host", true);
    std::fs::write(
        &rel,
        "title = \"t\"\n[health]\nhttp = \"http://10.0.0.1/\"\n[[package]]\nname = \"nginx\"\nversion = \"1\"\n",
    )
    .unwrap();
    let out = f.troupe("deploy", &[&rel, "--yes", "--role", "app"]);
    assert!(
        !out.success() && out.stderr.contains("health.http"),
        "{out:?}"
    );
}

#[test]
fn the_same_release_goes_to_dr_first_then_production() {
    let f = Fleet::start_with(
        &[
            AgentSpec::new("dr1").role("web").environment("dr"),
            AgentSpec::new("dr2").role("web").environment("dr"),
            AgentSpec::new("prod1")
                .role("web")
                .environment("production"),
            AgentSpec::new("prod2")
                .role("web")
                .environment("production"),
        ],
        tools,
    );
    let rel = f.master.root.path().join("release.toml");
    std::fs::write(
        &rel,
        "title = \"nginx 1.24\"\n[[package]]\nname = \"nginx\"\nversion = \"1.24.0-1\"\n",
    )
    .unwrap();
    let rel = rel.to_string_lossy().into_owned();
    let version =
        |h: &str| std::fs::read_to_string(f.state(h).join("fake/version")).unwrap_or_default();
    let out = f.troupe_run(&["ping", "--environment", "dr", "--dry-run"]);
    out.assert_success();
    assert!(out.stdout.contains("matched 2 host(s): dr1 dr2"), "{out:?}");

    let out = f.troupe("deploy", &[&rel, "--yes", "--environment", "dr"]);
    out.assert_success();
    assert!(out.stdout.contains("environment: dr"), "{out:?}");
    assert!(out.stdout.contains("matched 2 host(s): dr1 dr2"), "{out:?}");
    assert_eq!(version("dr1"), "1.24.0-1");
    assert_eq!(version("dr2"), "1.24.0-1");
    assert_eq!(version("prod1"), "1.22.1-9", "production untouched");
    assert_eq!(version("prod2"), "1.22.1-9", "production untouched");
    assert_eq!(f.agent_audit("prod1"), "", "production received nothing");

    let out = f.troupe("deploy", &[&rel, "--yes", "--environment", "production"]);
    out.assert_success();
    assert!(
        out.stdout.contains("matched 2 host(s): prod1 prod2"),
        "{out:?}"
    );
    assert!(out.stdout.contains("release complete: 2"), "{out:?}");
    assert_eq!(version("prod1"), "1.24.0-1");
    assert_eq!(version("prod2"), "1.24.0-1");

    // A command for production never goes to a DR host, even one named
    // explicitly (and each agent checks the target's facts again).
    let mut facts = std::collections::BTreeMap::new();
    facts.insert("environment".to_string(), "production".to_string());
    let wire = f.sign(
        &f.alice,
        "ping",
        &[],
        TargetFilter {
            facts,
            name: Some("dr1".into()),
            ..Default::default()
        },
        60,
    );
    let (targets, _, _) = f.submit(wire);
    assert!(
        targets.is_empty(),
        "the master does not send it: {targets:?}"
    );
    let out = f.troupe_run(&["ping", "--environment", "Prod DR"]);
    assert!(
        !out.success() && out.stderr.contains("--environment"),
        "{out:?}"
    );
}
