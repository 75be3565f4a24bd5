//! The master killed (SIGKILL) in the middle of its work, on a fleet of
//! hosts in their own network namespaces (tests/src/netns.rs): during a
//! herd of CSRs, during catalog compiles, during report uploads. After the
//! restart the CA, the certificates and the reports are intact, the agents
//! retry with backoff and finish, and no report is lost or stored twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};
use troupe_tests::netns::{Agent, Net, NetMaster, spawn_logged, wait_all, write_tree};
use troupe_tests::{MasterOptions, Proc, run, tally, wait_until};

fn tree(files: usize, work: usize) -> (tempfile::TempDir, MasterOptions) {
    let tree = tempfile::tempdir().unwrap();
    let modules = tree.path().join("modules");
    write_tree(&modules, "Welcome", files, work);
    let opts = MasterOptions {
        modules: Some(modules),
        extra_args: vec![
            "--code-poll".into(),
            "1s".into(),
            "--reports-keep".into(),
            "1000".into(),
        ],
    };
    (tree, opts)
}

/// `hosts` namespaces with `per_host` agents each, named `nH-I`.
fn agents(net: &Net, hosts: usize, per_host: usize) -> Vec<Agent> {
    let mut out = Vec::new();
    for h in 0..hosts {
        let host = net.add_host(&format!("h{h}"));
        for i in 0..per_host {
            out.push(Agent::new(&host, &format!("n{h}-{i}")));
        }
    }
    out
}

fn bootstrap_all(net: &Net, m: &NetMaster, agents: &[Agent]) {
    let fp = m.fingerprint();
    for a in agents {
        let psk = m.psk(&a.name);
        run(&mut a.bootstrap_command(net, m, &fp, Some(&psk))).assert_success();
    }
}

fn read(p: &Path) -> String {
    troupe_tests::netns::read_log(p)
}

/// Every agent's runs are on the (stopped) master exactly once and none is
/// still queued. Returns the number of reports lost.
fn assert_reports_complete(m: &NetMaster, agents: &[Agent]) -> u64 {
    let mut lost = 0u64;
    let mut total = 0usize;
    for a in agents {
        let (local, unsent) = a.local_runs();
        assert!(
            unsent.is_empty(),
            "{}: reports still queued: {unsent:?}",
            a.name
        );
        let stored = m.stored_run_ids(&a.name);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &stored {
            *counts.entry(s.as_str()).or_default() += 1;
        }
        assert!(
            counts.values().all(|n| *n == 1),
            "{}: a report stored twice: {stored:?}",
            a.name
        );
        for id in &local {
            if !counts.contains_key(id.as_str()) {
                lost += 1;
            }
        }
        assert_eq!(
            stored.len(),
            local.len(),
            "{}: the master has reports the agent never made, or lost some: agent {local:?}, master {stored:?}",
            a.name
        );
        total += local.len();
    }
    assert_eq!(lost, 0, "reports lost");
    assert!(total >= agents.len(), "every agent made a run");
    lost
}

/// A herd of PSK bootstraps with the master killed as the first
/// certificates are signed: every agent retries and gets exactly one
/// certificate, the one the CA recorded for it.
#[test]
fn master_killed_during_a_csr_herd() {
    let Some(net) = Net::require() else { return };
    let (_tree, opts) = tree(1, 1);
    let mh = net.add_host("master");
    let mut m = NetMaster::start(&net, &mh, opts);
    let fleet = agents(&net, 4, 20);
    let fp = m.fingerprint();
    let psks: Vec<String> = fleet.iter().map(|a| m.psk(&a.name)).collect();
    let logs = net.tmp.path().join("boot-logs");
    std::fs::create_dir_all(&logs).unwrap();

    let t0 = Instant::now();
    let mut procs: Vec<Proc> = fleet
        .iter()
        .zip(&psks)
        .map(|(a, psk)| {
            spawn_logged(
                &mut a.bootstrap_command(&net, &m, &fp, Some(psk)),
                &logs.join(&a.name),
            )
        })
        .collect();
    // Kill as soon as the first certificates are out.
    while m.signed_count_fast().is_none_or(|n| n < 1) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no certificate signed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    m.kill9();
    let at_kill = m.signed().len();
    std::thread::sleep(Duration::from_millis(300));
    m.resume(&net);
    let codes = wait_all(&mut procs, Duration::from_secs(60));
    let took = t0.elapsed();
    for (a, c) in fleet.iter().zip(&codes) {
        assert_eq!(
            *c,
            Some(0),
            "{} did not finish its bootstrap:\n{}",
            a.name,
            read(&logs.join(&a.name))
        );
    }
    assert!(
        at_kill < fleet.len(),
        "the master was killed after the herd, not during it ({at_kill} signed)"
    );
    let retried = fleet
        .iter()
        .filter(|a| read(&logs.join(&a.name)).contains("retrying in"))
        .count();
    assert!(retried > 0, "no agent had to retry");

    // One certificate per host, serials unique, and each agent holds the
    // one the CA recorded.
    let signed = m.signed();
    let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (h, s) in &signed {
        by_host.entry(h.clone()).or_default().push(s.clone());
    }
    let serials: BTreeSet<&String> = signed.iter().map(|(_, s)| s).collect();
    assert_eq!(serials.len(), signed.len(), "duplicate serials");
    let mut lost = 0u64;
    for a in &fleet {
        let certs = by_host.get(&a.name).cloned().unwrap_or_default();
        assert_eq!(certs.len(), 1, "{}: certificates {certs:?}", a.name);
        let id = troupe_identity::Identity::load(&a.state).unwrap();
        if id.serial != certs[0] {
            lost += 1;
        }
        assert_eq!(id.serial, certs[0], "{} holds another certificate", a.name);
    }
    // The certificates work against the restarted master.
    for a in fleet.iter().step_by(14) {
        let (out, rep) = a.run_once(&net, &m);
        assert_eq!(out.code, Some(2), "{out:?}");
        assert_eq!(rep.unwrap()["from_cache"], false);
    }
    eprintln!(
        "{} bootstraps, {at_kill} signed when the master was killed, {retried} retried, all done in {took:?}",
        fleet.len()
    );
    tally::fault(
        "master-kill",
        &format!(
            "master killed during a herd of {} CSRs ({at_kill} signed)",
            fleet.len()
        ),
        lost,
    );
}

/// Agents ask for catalogs that take a while to compile; the master is
/// killed while it compiles them. The agents retry, fall back or fail
/// cleanly; their next runs converge, and every report reaches the master
/// once.
#[test]
fn master_killed_during_compiles() {
    let Some(net) = Net::require() else { return };
    // ~0.4 s per compile in a debug build, one at a time.
    let (_tree, mut opts) = tree(100, 15000);
    opts.extra_args
        .extend(["--compile-threads".into(), "1".into()]);
    let mh = net.add_host("master");
    let mut m = NetMaster::start(&net, &mh, opts);
    let fleet = agents(&net, 2, 3);
    bootstrap_all(&net, &m, &fleet);
    let logs = net.tmp.path().join("run-logs");
    std::fs::create_dir_all(&logs).unwrap();

    let mut procs: Vec<Proc> = fleet
        .iter()
        .map(|a| {
            let mut c = a.run_command(&net, &m, &["--once", "--output", "summary"]);
            c.env("TROUPE_LOG", "warn,troupe_agent=debug");
            spawn_logged(&mut c, &logs.join(&a.name))
        })
        .collect();
    // Wait until some agent is waiting for its catalog (its facts went
    // out), then give the compiles a moment.
    wait_until(
        Duration::from_secs(30),
        "agents asking for catalogs",
        || {
            fleet
                .iter()
                .any(|a| read(&logs.join(&a.name)).contains("facts gathered"))
        },
    );
    std::thread::sleep(Duration::from_millis(400));
    m.kill9();
    let killed_at = Instant::now();
    m.resume(&net);
    let restart = killed_at.elapsed();
    let codes = wait_all(&mut procs, Duration::from_secs(90));
    let cut = fleet
        .iter()
        .filter(|a| read(&logs.join(&a.name)).contains("the catalog failed (try"))
        .count();
    assert!(
        cut > 0,
        "no catalog request was cut by the kill: {codes:?}\n{}",
        m.log()
    );
    // A run either converged (2), or — for an agent with no cached catalog
    // whose retries ran out — did not happen (1). Nothing else.
    for (a, c) in fleet.iter().zip(&codes) {
        assert!(
            matches!(c, Some(1) | Some(2)),
            "{}: exit {c:?}\n{}",
            a.name,
            read(&logs.join(&a.name))
        );
    }
    let finished_first = codes.iter().filter(|c| **c == Some(2)).count();
    // Retrying with backoff carried at least one cut request through to a
    // finished run (the master is back within the retry window).
    let cut_and_finished = fleet
        .iter()
        .zip(&codes)
        .filter(|(a, c)| {
            **c == Some(2) && read(&logs.join(&a.name)).contains("the catalog failed (try")
        })
        .count();
    assert!(
        cut_and_finished > 0,
        "no agent finished its run after its request was cut: {codes:?}"
    );
    // The next run of every agent converges from the master; the one after
    // changes nothing.
    for a in &fleet {
        let (out, rep) = a.run_once(&net, &m);
        let rep = rep.unwrap_or_else(|| panic!("{}: no report: {out:?}", a.name));
        assert_eq!(rep["from_cache"], false, "{out:?}");
        assert!(matches!(out.code, Some(0) | Some(2)), "{out:?}");
        let f = std::fs::read_to_string(a.root.join("etc/fleet/f99")).unwrap();
        assert_eq!(f, format!("{} {}\n", a.name, 15000 * 14999 / 2));
    }
    for a in &fleet {
        let (out, _) = a.run_once(&net, &m);
        assert_eq!(out.code, Some(0), "converged: {out:?}");
    }
    // The CA is intact.
    assert_eq!(m.signed().len(), fleet.len());
    m.kill9();
    let lost = assert_reports_complete(&m, &fleet);
    eprintln!(
        "{cut} catalog requests cut, {finished_first}/{} first runs finished anyway, master back in {restart:?}",
        fleet.len()
    );
    tally::fault(
        "master-kill",
        &format!("master killed during {cut} catalog compiles"),
        lost,
    );
}

/// Agents upload their reports (slowly: their links are throttled when the
/// kernel can) and the master is killed during the uploads. Each report
/// ends up on the master exactly once.
#[test]
fn master_killed_during_report_uploads() {
    let Some(net) = Net::require() else { return };
    let (_tree, opts) = tree(300, 1);
    let mh = net.add_host("master");
    let mut m = NetMaster::start(&net, &mh, opts);
    let fleet = agents(&net, 2, 2);
    bootstrap_all(&net, &m, &fleet);
    let mut throttled = true;
    let mut seen = BTreeSet::new();
    for a in &fleet {
        if seen.insert(a.host.ns.clone())
            && let Err(e) = net.throttle(&a.host, 160)
        {
            eprintln!("note: uploads are not slowed down: {e}");
            throttled = false;
        }
    }
    let logs = net.tmp.path().join("run-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut procs: Vec<Proc> = fleet
        .iter()
        .map(|a| {
            let mut c = a.run_command(&net, &m, &["--once", "--output", "summary"]);
            c.env("TROUPE_LOG", "warn,troupe_agent=debug");
            spawn_logged(&mut c, &logs.join(&a.name))
        })
        .collect();
    // The report is stored locally just before it is sent.
    wait_until(Duration::from_secs(60), "a report being sent", || {
        fleet
            .iter()
            .any(|a| read(&logs.join(&a.name)).contains("report stored"))
    });
    std::thread::sleep(Duration::from_millis(100));
    m.kill9();
    std::thread::sleep(Duration::from_millis(200));
    m.resume(&net);
    let codes = wait_all(&mut procs, Duration::from_secs(90));
    for (a, c) in fleet.iter().zip(&codes) {
        assert_eq!(*c, Some(2), "{}:\n{}", a.name, read(&logs.join(&a.name)));
    }
    let cut = fleet
        .iter()
        .filter(|a| {
            let l = read(&logs.join(&a.name));
            l.contains("the report failed (try") || l.contains("kept queued")
        })
        .count();
    if throttled {
        assert!(cut > 0, "no upload was cut by the kill");
    }
    eprintln!(
        "{cut} of {} agents had a report upload cut by the kill",
        fleet.len()
    );
    for a in &fleet {
        net.clear_shaping(&a.host);
    }
    // The next run delivers whatever is still queued.
    for a in &fleet {
        let (out, _) = a.run_once(&net, &m);
        assert_eq!(out.code, Some(0), "{out:?}");
    }
    // What the operator sees: every node and its latest report.
    let nodes = run(std::process::Command::new(troupe_tests::troupe_bin())
        .args(["nodes", "--json", "--data"])
        .arg(&m.data));
    nodes.assert_success();
    for a in &fleet {
        assert!(nodes.stdout.contains(&a.name), "{nodes:?}");
        let rep = run(std::process::Command::new(troupe_tests::troupe_bin())
            .args(["report", &a.name, "--json", "--data"])
            .arg(&m.data));
        rep.assert_success();
        assert!(rep.stdout.contains("run_id"), "{rep:?}");
    }
    m.kill9();
    let lost = assert_reports_complete(&m, &fleet);
    // The CA is intact too.
    assert_eq!(m.signed().len(), fleet.len());
    tally::fault(
        "master-kill",
        &format!("master killed during report uploads ({cut} cut)"),
        lost,
    );
}

/// A host that bootstraps while the master is down waits for it (backoff)
/// and joins once it is back; with a short --retry-for it gives up with a
/// clear message instead.
#[test]
fn bootstrap_waits_for_a_master_that_is_down() {
    let Some(net) = Net::require() else { return };
    let (_tree, opts) = tree(1, 1);
    let mh = net.add_host("master");
    let mut m = NetMaster::start(&net, &mh, opts);
    let fleet = agents(&net, 1, 2);
    let fp = m.fingerprint();
    let psks: Vec<String> = fleet.iter().map(|a| m.psk(&a.name)).collect();
    m.kill9();

    let out = run(fleet[1]
        .bootstrap_command(&net, &m, &fp, Some(&psks[1]))
        .args(["--retry-for", "1s"]));
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("gave up after") && out.stderr.contains("Connection refused"),
        "{out:?}"
    );

    let log = net.tmp.path().join("boot.log");
    let mut p = vec![spawn_logged(
        &mut fleet[0].bootstrap_command(&net, &m, &fp, Some(&psks[0])),
        &log,
    )];
    std::thread::sleep(Duration::from_millis(1500));
    assert!(p[0].0.try_wait().unwrap().is_none(), "{}", read(&log));
    m.resume(&net);
    let codes = wait_all(&mut p, Duration::from_secs(30));
    assert_eq!(codes, vec![Some(0)], "{}", read(&log));
    assert!(read(&log).contains("retrying in"), "{}", read(&log));
    // The key of the one that gave up is still unused: it can join now.
    run(&mut fleet[1].bootstrap_command(&net, &m, &fp, Some(&psks[1]))).assert_success();
    assert_eq!(m.signed().len(), 2);
    tally::fault(
        "master-down",
        "host bootstrapping while the master is down",
        0,
    );
}
