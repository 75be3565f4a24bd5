//! The dashboard's JSON API over plain HTTP (issue 17): a real master with
//! `--web-listen`, real agents (one failing), filters, the query language,
//! status codes, read-only, no secret anywhere; and the access rules of a
//! non-loopback dashboard (HTTPS, client certificates named in `viewers`).

use std::time::Duration;
use troupe_tests::web::{FAILING, SECRET, WebFleet, append_deploy_records, curl, get};
use troupe_tests::{run, troupe_bin, wait_until};

fn names(v: &serde_json::Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {v}"))
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Percent-encodes a query parameter value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn api_filters_queries_status_codes_and_no_secret() {
    let f = WebFleet::start("127.0.0.1:0", &[], &["web1", "web2", "db1"]);
    for h in ["web1", "web2"] {
        let out = f.converge(h);
        assert_eq!(out.code, Some(2), "{h}: {}", out.stderr);
    }
    let out = f.converge("db1");
    assert_eq!(out.code, Some(6), "db1 fails one resource: {}", out.stderr);
    // The secret really reached web1 (so its absence below means something).
    let token = std::fs::read_to_string(f.root("web1").join("etc/app.token")).unwrap();
    assert_eq!(token, format!("token={SECRET}\n"));
    let u = f.url();
    let nodes = |q: &str| {
        let a = get(&format!("{u}/api/v1/nodes{q}"));
        assert_eq!(a.status, 200, "{q}: {}", a.body);
        assert!(a.content_type.starts_with("application/json"), "{q}");
        names(&a.json())
    };

    // Plain filters, and-ed.
    assert_eq!(nodes(""), ["db1", "web1", "web2"]);
    assert_eq!(nodes("?role=web"), ["web1", "web2"]);
    assert_eq!(nodes("?status=failed"), ["db1"]);
    assert_eq!(nodes("?status=changed&role=web"), ["web1", "web2"]);
    assert_eq!(nodes("?environment=production&role=db"), ["db1"]);
    let facts = get(&format!("{u}/api/v1/nodes/web1")).json()["facts"].clone();
    let family = facts["os"]["family"].as_str().unwrap().to_owned();
    assert_eq!(
        nodes(&format!("?role=web&fact.os.family={}", enc(&family))),
        ["web1", "web2"]
    );
    assert!(nodes("?fact.os.family=Plan9").is_empty());
    assert_eq!(nodes("?sort=status&order=desc")[0], "db1");

    // The query language: every operator, and/or/not, JSON AST.
    for (q, want) in [
        (
            "name ~ \"^web\" and report.changed > 0",
            vec!["web1", "web2"],
        ),
        ("role != web", vec!["db1"]),
        ("report.failed < 1", vec!["web1", "web2"]),
        ("report.failed > 0 or name = web2", vec!["db1", "web2"]),
        ("not (role = web)", vec!["db1"]),
        ("fact.kernel.name = Linux and status = failed", vec!["db1"]),
        ("fact.no.such.fact = x", vec![]),
        (
            r#"["or", ["=", "name", "web1"], ["~", "name", "^db"]]"#,
            vec!["db1", "web1"],
        ),
    ] {
        assert_eq!(nodes(&format!("?query={}", enc(q))), want, "query {q}");
    }

    // Clear 400s for bad input; 404s; read-only.
    for (path, needle) in [
        ("/api/v1/nodes?query=role%20%3D", "a value after `role`"),
        (
            "/api/v1/nodes?query=colour%3Dred",
            "unknown field \"colour\"",
        ),
        ("/api/v1/nodes?colour=red", "unknown field"),
        (
            "/api/v1/nodes?query=name%20~%20%27%28%27",
            "not a valid regular expression",
        ),
        ("/api/v1/nodes?limit=0", "limit=0"),
        ("/api/v1/nodes?sort=size", "sort=size"),
        ("/api/v1/events?latest=maybe", "expected true or false"),
        ("/api/v1/reports?query=fact.x%3D1", "unknown field"),
        ("/api/v1/fleet-events?kind=nope", "not an event kind"),
        ("/api/v1/fleet-events?colour=red", "unknown parameter"),
        ("/api/v1/fleet-events?since=soon", "sequence number"),
    ] {
        let a = get(&format!("{u}{path}"));
        assert_eq!(a.status, 400, "{path}: {}", a.body);
        let e = a.json()["error"].as_str().unwrap().to_owned();
        assert!(e.contains(needle), "{path}: {e}");
        // The typed error code (docs/json.md "Error codes") beside it.
        assert_eq!(a.json()["code"], "invalid_argument", "{path}: {}", a.body);
    }
    let a = get(&format!("{u}/api/v1/nodes/nope"));
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].as_str().unwrap().contains("nope"));
    assert_eq!(a.json()["code"], "not_found", "{}", a.body);
    let a = get(&format!("{u}/api/v1/deploys/20990101T000000Z-000000"));
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (404, Some("not_found")),
        "{}",
        a.body
    );
    assert_eq!(
        get(&format!("{u}/api/v1/nodes/db1/reports/nope")).status,
        404
    );
    assert_eq!(get(&format!("{u}/api/v2/whatever")).status, 404);
    for m in ["POST", "PUT", "DELETE"] {
        let a = curl(&format!("{u}/api/v1/nodes"), &["-X", m]).unwrap();
        assert_eq!(a.status, 405, "{m}");
        assert!(a.body.contains("read-only"), "{}", a.body);
        assert_eq!(a.json()["code"], "invalid_argument", "{}", a.body);
    }

    // A node: its failing resource, run history, certificate.
    let db1 = get(&format!("{u}/api/v1/nodes/db1")).json();
    assert_eq!(db1["node"]["status"], "failed");
    let res = db1["last_report"]["resources"].as_array().unwrap();
    let bad = res.iter().find(|r| r["id"] == FAILING).expect(FAILING);
    assert_eq!(bad["status"], "failed");
    assert!(!bad["events"].as_array().unwrap().is_empty(), "{bad}");
    assert_eq!(db1["runs"].as_array().unwrap().len(), 1);
    assert_eq!(db1["certificate"]["state"], "signed");
    assert!(db1["certificate"]["days_left"].as_i64().unwrap() > 300);

    // Reports and events.
    let r = get(&format!("{u}/api/v1/reports")).json();
    assert_eq!(r["reports"].as_array().unwrap().len(), 3, "{r}");
    let r = get(&format!("{u}/api/v1/reports?status=failed")).json();
    assert_eq!(r["reports"][0]["node"], "db1");
    let run_id = r["reports"][0]["run_id"].as_str().unwrap().to_owned();
    let one = get(&format!("{u}/api/v1/nodes/db1/reports/{run_id}"));
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["status"], "failed");
    let r = get(&format!("{u}/api/v1/nodes/web1/reports")).json();
    assert_eq!(r["reports"].as_array().unwrap().len(), 1);
    assert_eq!(r["reports"][0]["node"], "web1");
    let ev = get(&format!("{u}/api/v1/events?status=failed")).json();
    let ev = ev["events"].as_array().unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0]["node"].as_str(), ev[0]["resource"].as_str()),
        (Some("db1"), Some(FAILING))
    );
    let ev = get(&format!(
        "{u}/api/v1/events?query={}&latest=true",
        enc("type = file and node ~ ^web")
    ))
    .json();
    assert!(
        ev["events"].as_array().unwrap().len() >= 6,
        "3 files and a directory changed on each web host: {ev}"
    );

    // Deploy history from the master's release logs.
    let t = "2026-12-06T22:00:00.000Z";
    append_deploy_records(
        &f.m.data,
        "20261206T220000Z-aaaaaa",
        0,
        &[
            serde_json::json!({"record": "started", "title": "openssl", "packages":
                [{"name": "openssl", "version": "3.0.15", "batches": [["web1", "web2"]]}],
                "not_connected": [], "time": t}),
            serde_json::json!({"record": "host_failed", "host": "web2", "package": "openssl",
                "step": "package.install", "error": "failed: held", "left": [], "undo": [], "time": t}),
            serde_json::json!({"record": "aborted", "reason": "web2 failed", "completed": 1,
                "failed_hosts": 1, "time": t}),
        ],
    );
    let d = get(&format!("{u}/api/v1/deploys")).json();
    let d0 = &d["deploys"][0];
    assert_eq!(
        (
            d0["id"].as_str(),
            d0["status"].as_str(),
            d0["planned"].as_u64()
        ),
        (Some("20261206T220000Z-aaaaaa"), Some("aborted"), Some(2)),
        "{d}"
    );
    let one = get(&format!("{u}/api/v1/deploys/20261206T220000Z-aaaaaa")).json();
    assert_eq!(one["entries"].as_array().unwrap().len(), 3);
    assert_eq!(one["failed_hosts"], 1);
    assert_eq!(get(&format!("{u}/api/v1/deploys/nope")).status, 404);
    assert_eq!(get(&format!("{u}/api/v1/deploys/..%2Fx")).status, 400);
    let page = get(&format!("{u}/deploys/20261206T220000Z-aaaaaa"));
    assert!(page.body.contains("failed: held"), "{}", page.body);

    // A pending certificate request shows on the API and the page.
    let waiting = troupe_tests::Proc(
        f.m.bootstrap_command("web9", None)
            .env("TROUPE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(20), "the pending request", || {
        get(&format!("{u}/api/v1/csrs")).json()["pending"]
            .as_array()
            .is_some_and(|p| p.iter().any(|c| c["host"] == "web9"))
    });
    assert!(get(&format!("{u}/csrs")).body.contains("web9"));
    assert_eq!(
        get(&format!("{u}/api/v1/overview")).json()["csrs_pending"],
        1
    );
    drop(waiting);

    // Overview counts are exact.
    let o = get(&format!("{u}/api/v1/overview")).json();
    assert_eq!(o["nodes"]["total"], 3);
    assert_eq!(o["nodes"]["failed"], 1);
    assert_eq!(o["nodes"]["changed"], 2);
    assert_eq!(o["nodes"]["unchanged"], 0);
    assert_eq!(o["by_role"]["web"]["changed"], 2);
    assert_eq!(o["by_environment"]["production"]["total"], 3);

    // A second run on web1 changes nothing; the counts follow.
    assert_eq!(f.converge("web1").code, Some(0));
    let o = get(&format!("{u}/api/v1/overview")).json();
    assert_eq!(
        (
            o["nodes"]["changed"].clone(),
            o["nodes"]["unchanged"].clone()
        ),
        (1.into(), 1.into())
    );
    // The web1 change of the first run had a diff on the sensitive file:
    // redacted by the agent, never the value.
    let ev = get(&format!(
        "{u}/api/v1/events?query={}",
        enc("resource = \"file[/etc/app.token]\"")
    ))
    .json();
    assert_eq!(ev["events"].as_array().unwrap().len(), 2, "{ev}");

    // The secret is on no page and in no API answer.
    let reports = get(&format!("{u}/api/v1/reports")).json();
    let mut paths: Vec<String> = [
        "/",
        "/nodes",
        "/nodes?role=web",
        "/nodes/web1",
        "/nodes/web2",
        "/nodes/db1",
        "/csrs",
        "/environments",
        "/orchestration",
        "/audit",
        "/deploys",
        "/api/v1",
        "/api/v1/overview",
        "/api/v1/nodes",
        "/api/v1/nodes/web1",
        "/api/v1/nodes/web1/reports",
        "/api/v1/reports",
        "/api/v1/events",
        "/api/v1/csrs",
        "/api/v1/environments",
        "/api/v1/orchestration",
        "/api/v1/audit",
        "/api/v1/deploys",
        "/api/v1/fleet-events",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for r in reports["reports"].as_array().unwrap() {
        let (n, id) = (r["node"].as_str().unwrap(), r["run_id"].as_str().unwrap());
        paths.push(format!("/nodes/{n}/reports/{id}"));
        paths.push(format!("/api/v1/nodes/{n}/reports/{id}"));
    }
    for p in &paths {
        let a = get(&format!("{u}{p}"));
        assert_eq!(a.status, 200, "{p}: {}", a.body);
        assert!(!a.body.contains(SECRET), "{p} shows the secret");
    }
    // The stream's first event too.
    let body = run(std::process::Command::new("curl")
        .args(["-sN", "--max-time", "2"])
        .arg(format!("{u}/api/v1/stream")))
    .stdout;
    assert!(body.contains("event: fleet"), "{body}");
    assert!(!body.contains(SECRET));

    // Audit logs with their chain status: intact, then a tampered record
    // shows as broken.
    let chain = |name: &str| {
        let a = get(&format!("{u}/api/v1/audit")).json();
        a["logs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no {name} log in {a}"))
            .clone()
    };
    let ca = chain("ca");
    assert_eq!(ca["chain"], "intact", "{ca}");
    assert!(ca["verify"]["records"].as_u64().unwrap() >= 6, "{ca}");
    let newest = &ca["recent"][0];
    assert!(newest["seq"].as_u64().unwrap() >= 6, "{ca}");
    assert!(newest["time"].as_str().unwrap().starts_with("20"), "{ca}");
    assert!(newest["entry"].is_object(), "{ca}");
    let log = f.m.data.join("ca/audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"web2\""));
    std::fs::write(&log, text.replacen("\"web2\"", "\"web9\"", 1)).unwrap();
    let ca = chain("ca");
    assert_eq!(ca["chain"], "broken", "{ca}");
    let page = get(&format!("{u}/audit")).body;
    assert!(page.contains("chain-broken"), "{page}");
}

#[test]
fn a_non_loopback_dashboard_needs_https_and_a_viewer_certificate() {
    // Refused at start without viewers, with what to do.
    let d = tempfile::tempdir().unwrap();
    let out = run(std::process::Command::new(troupe_bin()).args([
        "master",
        "--data",
        d.path().join("m").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--web-listen",
        "0.0.0.0:0",
    ]));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("viewers") && out.stderr.contains("0.0.0.0:0"),
        "{}",
        out.stderr
    );
    assert!(
        !d.path().join("m").exists(),
        "nothing is created by a refused start"
    );

    let f = WebFleet::start("0.0.0.0:0", &["--viewer", "alice"], &["alice", "bob"]);
    let port = f.web_addr().rsplit_once(':').unwrap().1.to_owned();
    let url = format!("https://127.0.0.1:{port}/api/v1/nodes");
    let st = |n: &str| f.m.agent_state(n);
    let cacert = st("alice").join("ca.pem");
    let ca = cacert.to_str().unwrap();
    let with_cert = |who: &str| {
        let s = st(who);
        curl(
            &url,
            &[
                "--cacert",
                ca,
                "--cert",
                s.join("cert.pem").to_str().unwrap(),
                "--key",
                s.join("key.pem").to_str().unwrap(),
            ],
        )
    };
    // Plain HTTP is not served there.
    let plain = curl(&format!("http://127.0.0.1:{port}/api/v1/nodes"), &[]);
    assert!(
        plain.as_ref().map_or(true, |a| a.status != 200),
        "plain HTTP answered"
    );
    // No client certificate: 403 with the reason.
    let a = curl(&url, &["--cacert", ca]).unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("client certificate"), "{}", a.body);
    assert_eq!(a.json()["code"], "permission_denied", "{}", a.body);
    // A certificate from this CA, not in viewers: 403.
    let a = with_cert("bob").unwrap();
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("\\\"bob\\\" is not a viewer"), "{}", a.body);
    assert_eq!(a.json()["code"], "permission_denied", "{}", a.body);
    // A viewer: 200, with the data.
    let a = with_cert("alice").unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.json()["nodes"].is_array());
    // One client holding many idle connections that never start TLS
    // does not lock a viewer out: past its per-source bound they are
    // closed at once (crate::admission), so the viewer's handshake is
    // taken at once instead of waiting in the backlog behind the flood.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for _ in 0..600 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            match tokio::time::timeout(Duration::from_secs(2), s.connect(target)).await {
                Ok(Ok(c)) => held.push(c),
                _ => break,
            }
        }
        held
    });
    assert!(held.len() >= 300, "only {} flood connections", held.len());
    let during = curl(
        &url,
        &[
            "--max-time",
            "5",
            "--cacert",
            ca,
            "--cert",
            st("alice").join("cert.pem").to_str().unwrap(),
            "--key",
            st("alice").join("key.pem").to_str().unwrap(),
        ],
    )
    .unwrap_or_else(|e| panic!("a viewer during a flood of {}: {e}", held.len()));
    assert_eq!(during.status, 200, "{}", during.body);
    rt.block_on(async { drop(held) });
    // Read-only over HTTPS too.
    let s = st("alice");
    let a = curl(
        &url,
        &[
            "-X",
            "POST",
            "--cacert",
            ca,
            "--cert",
            s.join("cert.pem").to_str().unwrap(),
            "--key",
            s.join("key.pem").to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(a.status, 405);
    // A certificate from another CA is refused at the handshake.
    let other = WebFleet::start("127.0.0.1:0", &[], &["alice"]);
    let so = other.m.agent_state("alice");
    let foreign = curl(
        &url,
        &[
            "--cacert",
            ca,
            "--cert",
            so.join("cert.pem").to_str().unwrap(),
            "--key",
            so.join("key.pem").to_str().unwrap(),
        ],
    );
    assert!(
        foreign.as_ref().map_or(true, |a| a.status != 200),
        "a foreign certificate was served"
    );
    // Revoking the viewer's certificate closes the dashboard to it.
    f.m.ca_ok(&["revoke", "alice"]);
    wait_until(Duration::from_secs(10), "the revocation to apply", || {
        with_cert("alice").map_or(true, |a| a.status != 200)
    });
}

/// Issue 17: "disabled" on the overview and in the API. An agent whose
/// runs are disabled (`troupe-agent disable REASON`) checks in saying so
/// instead of running; the master counts it as disabled (not stale, not
/// its last run's status) with the reason, until a run happens again.
#[test]
fn a_disabled_agent_is_counted_disabled_until_it_runs_again() {
    let f = WebFleet::start("127.0.0.1:0", &[], &["web1", "web2"]);
    for h in ["web1", "web2"] {
        let out = f.converge(h);
        assert_eq!(out.code, Some(2), "{h}: {}", out.stderr);
    }
    let u = f.url();
    let overview = || get(&format!("{u}/api/v1/overview")).json();
    assert_eq!(overview()["nodes"]["changed"], 2);
    assert_eq!(overview()["nodes"]["disabled"], 0);

    let state = f.m.agent_state("web1");
    run(std::process::Command::new(troupe_tests::agent_bin())
        .args(["disable", "kernel upgrade tonight (CHG-42)", "--state"])
        .arg(&state))
    .assert_success();
    // Disabling alone tells nobody; the next (refused) run checks in.
    assert_eq!(overview()["nodes"]["disabled"], 0);
    let out = f.converge("web1");
    assert_ne!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.contains("runs are disabled"), "{out:?}");

    let o = overview();
    assert_eq!(o["nodes"]["disabled"], 1, "{o}");
    assert_eq!(o["nodes"]["changed"], 1, "{o}");
    assert_eq!(o["nodes"]["stale"], 0, "{o}");
    assert_eq!(o["nodes"]["total"], 2, "{o}");
    assert_eq!(o["by_role"]["web"]["disabled"], 1, "{o}");
    let nodes = get(&format!("{u}/api/v1/nodes?status=disabled")).json();
    assert_eq!(names(&nodes), ["web1"]);
    let n = get(&format!("{u}/api/v1/nodes/web1")).json();
    let row = if n["node"].is_object() {
        &n["node"]
    } else {
        &n
    };
    assert_eq!(row["status"], "disabled", "{n}");
    assert_eq!(row["disabled"]["reason"], "kernel upgrade tonight (CHG-42)");
    assert!(row["disabled"]["since"].as_str().unwrap().ends_with('Z'));
    // Its last report is still the one of its last run.
    assert!(row["last_report"]["changed"].as_u64().unwrap() > 0, "{n}");
    let q = get(&format!(
        "{u}/api/v1/nodes?query={}",
        enc("disabled = true")
    ))
    .json();
    assert_eq!(names(&q), ["web1"]);
    // The overview page and the node page say so.
    let page = get(&format!("{u}/")).body;
    assert!(
        page.contains(r#"id="count-disabled" data-count="nodes.disabled" data-initial="1""#),
        "{page}"
    );
    let page = get(&format!("{u}/nodes/web1")).body;
    assert!(page.contains("Runs are disabled on this node"), "{page}");
    assert!(page.contains("kernel upgrade tonight (CHG-42)"), "{page}");

    // Enabled again: the next run clears it.
    run(std::process::Command::new(troupe_tests::agent_bin())
        .args(["enable", "--state"])
        .arg(&state))
    .assert_success();
    let out = f.converge("web1");
    assert_eq!(out.code, Some(0), "{out:?}");
    let o = overview();
    assert_eq!(o["nodes"]["disabled"], 0, "{o}");
    assert_eq!(o["nodes"]["unchanged"], 1, "{o}");
    assert!(
        get(&format!("{u}/api/v1/nodes?status=disabled")).json()["nodes"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
