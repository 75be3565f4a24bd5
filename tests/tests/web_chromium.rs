//! The dashboard in a real headless Chromium (Debian's `chromium`), with a
//! master and real agents (issue 17): every page loads, a failed node's
//! page shows its failing resource, and the live parts follow an agent
//! run without a reload. Screenshots are kept in
//! `target/dashboard-screenshots/`.

use serde_json::json;
use std::time::{Duration, Instant};
use troupe_tests::web::{
    Browser, FAILING, SECRET, WebFleet, append_deploy_records, dump_dom, screenshot,
};

#[test]
fn pages_load_in_chromium_and_live_parts_update_without_reload() {
    let t0 = Instant::now();
    let f = WebFleet::start("127.0.0.1:0", &[], &["web1", "web2", "db1"]);
    assert_eq!(f.converge("web1").code, Some(2));
    assert_eq!(f.converge("web2").code, Some(2));
    assert_eq!(f.converge("db1").code, Some(6));
    let u = f.url();

    // Chromium's own command line: --dump-dom and --screenshot. The
    // failing resource is in db1's failing row, with its message.
    let dom = dump_dom(&format!("{u}/nodes/db1"));
    let row = dom
        .split("<tr")
        .find(|r| r.contains(FAILING))
        .expect("a row for the failing resource");
    assert!(
        row.contains("res-failed")
            && row.contains("status failed")
            && row.contains("does not exist"),
        "{row}"
    );
    screenshot(&format!("{u}/"), "overview.png");

    // Every page loads in one browser (DevTools protocol), its script runs
    // and its live stream connects.
    let mut b = Browser::open(&format!("{u}/"));
    for (path, needles) in [
        ("/", vec!["Fleet overview", "id=\"count-failed\"", FAILING]),
        ("/nodes", vec!["data-node=\"web1\"", "data-node=\"db1\""]),
        (
            "/nodes?role=web&sort=name&order=desc",
            vec!["data-node=\"web2\""],
        ),
        ("/nodes/db1", vec![FAILING, "res-failed", "days left"]),
        ("/csrs", vec!["No request is waiting"]),
        (
            "/environments",
            vec!["production", "The newest tree on disk loaded"],
        ),
        ("/orchestration", vec!["Orchestration history"]),
        ("/audit", vec!["chain-intact"]),
    ] {
        let dom = b.goto(&format!("{u}{path}"));
        for n in needles {
            assert!(dom.contains(n), "{path} lacks {n:?}:\n{dom}");
        }
        assert!(!dom.contains(SECRET), "{path} shows the secret");
        if path == "/nodes" {
            b.screenshot("nodes.png");
        }
        if path == "/nodes/db1" {
            b.screenshot("node-db1-failed.png");
        }
    }
    // The role filter really filters in the browser's view.
    let dom = b.goto(&format!("{u}/nodes?role=db"));
    assert!(dom.contains("data-node=\"db1\"") && !dom.contains("data-node=\"web1\""));
    // A fact from the form, sorting by a column, a bad query explained.
    let dom = b.goto(&format!("{u}/nodes?fact=kernel.name%3DLinux&role=web"));
    assert!(dom.contains("data-node=\"web2\"") && !dom.contains("data-node=\"db1\""));
    let dom = b.goto(&format!("{u}/nodes?sort=status&order=desc"));
    let (db, web) = (
        dom.find("data-node=\"db1\""),
        dom.find("data-node=\"web1\""),
    );
    assert!(
        db.is_some() && db < web,
        "failed sorts after changed, descending"
    );
    let dom = b.goto(&format!("{u}/nodes?query=colour%3Dred"));
    assert!(
        dom.contains("id=\"query-error\"") && dom.contains("unknown field"),
        "{dom}"
    );
    let t_pages = t0.elapsed();

    // Live: the overview and web2's page follow web2's next run (a
    // failure) without a reload.
    let t_live = Instant::now();
    b.goto(&format!("{u}/"));
    b.wait_for(
        "document.body.getAttribute('data-live') === 'connected' && \
         Number(document.body.getAttribute('data-live-updates')) >= 1",
        Duration::from_secs(20),
    );
    assert_eq!(
        b.eval("document.getElementById('count-failed').textContent"),
        "1"
    );
    // The recent events list has no run_failed of web2 yet (its first run
    // changed things and failed nothing).
    assert_eq!(
        b.eval("document.getElementById('recent-events').textContent.indexOf('web2: run failed')"),
        -1
    );
    b.eval("window.__sameDocument = 'yes'");
    let mut p = Browser::open(&format!("{u}/nodes/web2"));
    p.wait_for(
        "document.body.getAttribute('data-live') === 'connected'",
        Duration::from_secs(20),
    );
    p.eval("window.__sameDocument = 'yes'");
    // web2's root loses /srv: its document root now fails.
    std::fs::remove_dir_all(f.root("web2").join("srv")).unwrap();
    let root = f.m.root.path().join("roots/web2");
    let out =
        f.m.agent_cmd("web2", "run", &["--once", "--root", root.to_str().unwrap()]);
    assert_eq!(out.code.map(|c| c & 4), Some(4), "{}", out.stderr);
    b.wait_for(
        "document.getElementById('count-failed').textContent === '2'",
        Duration::from_secs(15),
    );
    // ... and its recent events list gains web2's run_failed, on top.
    b.wait_for(
        "(function () { var tr = document.querySelector('#recent-events tbody tr.live'); \
         return !!tr && tr.textContent.indexOf('run_failed') >= 0 && \
         tr.textContent.indexOf('web2: run failed') >= 0; })()",
        Duration::from_secs(15),
    );
    assert_eq!(
        b.eval("window.__sameDocument"),
        "yes",
        "the page was reloaded"
    );
    assert_eq!(
        b.eval("document.getElementById('count-failed').getAttribute('data-initial')"),
        "1",
        "the server-rendered count was 1"
    );
    p.wait_for(
        "document.querySelector('[data-node-status=\"web2\"]').textContent === 'failed'",
        Duration::from_secs(15),
    );
    assert_eq!(p.eval("window.__sameDocument"), "yes");
    let hint = p.eval("document.querySelector('[data-node-run]').textContent");
    assert!(
        hint.as_str()
            .unwrap()
            .contains("new since this page loaded"),
        "{hint}"
    );
    b.screenshot("overview-after-failure.png");
    drop(p);

    // Live deploy progress: a running release's page follows the records
    // the master stores, without a reload.
    let id = "20261206T220000Z-0a1b2c";
    let t = "2026-12-06T22:00:00.000Z";
    let step = |host: &str| {
        json!({"record": "step", "host": host, "package": "nginx", "step": "package.install",
               "attempt": 1, "result": "ok", "started": t, "duration_ms": 120})
    };
    append_deploy_records(
        &f.m.data,
        id,
        0,
        &[
            json!({"record": "started", "title": "nginx 1.24 everywhere", "environment": "production",
                   "packages": [{"name": "nginx", "version": "1.24", "batches": [["web1"], ["web2"]]}],
                   "not_connected": [], "time": t}),
            json!({"record": "package_started", "package": "nginx", "version": "1.24", "hosts": 2, "time": t}),
            step("web1"),
        ],
    );
    let dom = b.goto(&format!("{u}/deploys"));
    assert!(
        dom.contains(id) && dom.contains("nginx 1.24 everywhere"),
        "{dom}"
    );
    let dom = b.goto(&format!("{u}/deploys/{id}"));
    assert!(dom.contains("data-deploy-status=\"{id}\"".replace("{id}", id).as_str()));
    assert_eq!(
        b.eval(&format!(
            "document.querySelector('[data-deploy-status=\"{id}\"]').textContent"
        )),
        "running"
    );
    assert_eq!(
        b.eval("document.querySelectorAll('#deploy-log tbody tr').length"),
        3
    );
    b.eval("window.__sameDocument = 'deploy'");
    append_deploy_records(
        &f.m.data,
        id,
        3,
        &[
            step("web2"),
            json!({"record": "package_done", "package": "nginx", "version": "1.24",
                   "ok": ["web1", "web2"], "failed": [], "time": t}),
            json!({"record": "finished", "status": "complete", "completed": 2, "failed_hosts": 0, "time": t}),
        ],
    );
    b.wait_for(
        &format!(
            "document.querySelector('[data-deploy-status=\"{id}\"]').textContent === 'complete' && \
             document.querySelectorAll('#deploy-log tbody tr').length === 6"
        ),
        Duration::from_secs(15),
    );
    assert_eq!(
        b.eval("window.__sameDocument"),
        "deploy",
        "the page was reloaded"
    );
    assert_eq!(
        b.eval("document.getElementById('deploy-progress').value"),
        2
    );
    b.screenshot("deploy-complete.png");
    drop(b);
    eprintln!(
        "chromium: pages {:.1}s, live {:.1}s, total {:.1}s",
        t_pages.as_secs_f64(),
        t_live.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
