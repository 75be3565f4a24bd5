//! Faults on the agents' side, on a fleet of hosts in their own network
//! namespaces (tests/src/netns.rs): a host cut off from the master for
//! several run intervals, an agent killed in the middle of a converge.

use std::path::Path;
use std::time::Duration;
use troupe_tests::netns::{Agent, Net, NetMaster, write_tree};
use troupe_tests::{MasterOptions, Proc, run, tally, wait_until};

fn master(net: &Net, files: usize) -> (NetMaster, tempfile::TempDir) {
    let tree = tempfile::tempdir().unwrap();
    let modules = tree.path().join("modules");
    write_tree(&modules, "Welcome", files, 1);
    let host = net.add_host("master");
    let m = NetMaster::start(
        net,
        &host,
        MasterOptions {
            modules: Some(modules),
            extra_args: vec!["--code-poll".into(), "200ms".into()],
        },
    );
    (m, tree)
}

fn bootstrap(net: &Net, m: &NetMaster, a: &Agent) {
    let psk = m.psk(&a.name);
    run(&mut a.bootstrap_command(net, m, &m.fingerprint(), Some(&psk))).assert_success();
}

/// The harness itself: hosts reach each other by their own addresses, the
/// root namespace has no route into the test's network, and a cut-off host
/// cannot reach the master until it is reconnected.
#[test]
fn harness_hosts_are_isolated_and_can_be_cut_off() {
    let Some(net) = Net::require() else { return };
    let (m, _tree) = master(&net, 1);
    let h = net.add_host("web1");
    let a = Agent::new(&h, "web1");
    bootstrap(&net, &m, &a);
    // The root namespace has no address on the test network, and a host
    // has no route anywhere but the test network.
    let addrs = run(std::process::Command::new("ip").args(["-o", "addr", "show"]));
    assert!(!addrs.stdout.contains("10.77."), "{addrs:?}");
    let out =
        run(std::process::Command::new("ip").args(["-n", &h.ns, "route", "get", "192.0.2.1"]));
    assert!(
        !out.success() && out.stderr.contains("unreachable"),
        "a test host must not reach outside addresses: {out:?}"
    );
    let (out, rep) = a.run_once(&net, &m);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(rep.unwrap()["from_cache"], false);

    net.cut_off(&h);
    let (out, rep) = a.run_once(&net, &m);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(rep.unwrap()["from_cache"], true, "{out:?}");
    net.reconnect(&h);
    let (out, rep) = a.run_once(&net, &m);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(rep.unwrap()["from_cache"], false, "{out:?}");

    // Latency needs sch_netem; a kernel without it gets a clear message.
    match net.add_latency(&h, Duration::from_millis(20)) {
        Ok(()) => {
            let (out, rep) = a.run_once(&net, &m);
            assert_eq!(out.code, Some(0), "{out:?}");
            assert_eq!(rep.unwrap()["from_cache"], false);
            net.clear_shaping(&h);
        }
        Err(e) => {
            assert!(e.contains("sch_netem"), "{e}");
            eprintln!("note: {e}");
        }
    }
}

fn count_fleet_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("etc/fleet"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

/// A host cut off for several run intervals keeps converging from its
/// cached catalog (it even repairs drift), queues its reports and delivers
/// every one of them once it is back.
#[test]
fn host_cut_off_for_several_intervals_converges_from_cache_and_delivers_every_report() {
    let Some(net) = Net::require() else { return };
    let (mut m, _tree) = master(&net, 3);
    let h = net.add_host("web1");
    let a = Agent::new(&h, "web1");
    bootstrap(&net, &m, &a);
    let (out, _) = a.run_once(&net, &m);
    assert_eq!(out.code, Some(2), "{out:?}");

    // The daemon: one run a second.
    let log = h.dir.join("daemon.log");
    let logf = std::fs::File::create(&log).unwrap();
    let mut cmd = a.run_command(
        &net,
        &m,
        &["--interval", "1", "--no-listen", "--output", "quiet"],
    );
    cmd.env("TROUPE_LOG", "info")
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    let mut daemon = Proc(cmd.spawn().unwrap());
    let runs = |from_cache: bool| {
        let needle = format!("from_cache={from_cache}");
        troupe_tests::netns::read_log(&log)
            .lines()
            .filter(|l| l.contains("run finished") && l.contains(&needle))
            .count()
    };
    wait_until(Duration::from_secs(20), "a daemon run online", || {
        runs(false) >= 1
    });

    net.cut_off(&h);
    // Drift while cut off: the cached catalog repairs it.
    let motd = a.root.join("etc/motd");
    wait_until(Duration::from_secs(20), "a run from the cache", || {
        runs(true) >= 1
    });
    std::fs::remove_file(&motd).unwrap();
    wait_until(Duration::from_secs(30), "more runs from the cache", || {
        runs(true) >= 3
    });
    assert_eq!(
        std::fs::read_to_string(&motd).unwrap(),
        "Welcome (web1)\n",
        "the cached catalog repaired the drift while cut off"
    );
    let offline = runs(true);

    net.reconnect(&h);
    let online_before = runs(false);
    wait_until(Duration::from_secs(30), "a run online again", || {
        runs(false) > online_before
    });
    daemon.0.kill().unwrap();
    daemon.0.wait().unwrap();

    // Every run the agent made is on the master, once; nothing is queued.
    let (local, unsent) = a.local_runs();
    assert!(unsent.is_empty(), "reports still queued: {unsent:?}");
    m.kill9();
    let stored = m.stored_run_ids("web1");
    let mut missing = 0u64;
    for id in &local {
        let n = stored.iter().filter(|s| *s == id).count();
        assert!(n <= 1, "report {id} stored {n} times");
        missing += (n == 0) as u64;
    }
    assert_eq!(
        missing,
        0,
        "reports lost: agent has {local:?}, master has {stored:?}\n{}",
        troupe_tests::netns::read_log(&log)
    );
    assert!(
        local.len() >= offline + 2,
        "agent ran {} times, {offline} offline",
        local.len()
    );
    // The offline reports say so.
    m.resume(&net);
    let mut cached = 0;
    for id in &local {
        let r = m
            .admin(&troupe_master::admin::AdminRequest::Report {
                host: "web1".into(),
                run: Some(id.clone()),
            })
            .unwrap();
        cached += (r["report"]["from_cache"] == true) as usize;
    }
    assert!(
        cached >= offline,
        "{cached} reports from the cache on the master, {offline} offline runs"
    );
    tally::fault(
        "network",
        &format!("host cut off for {offline} run intervals, then back"),
        missing,
    );
}

/// An agent killed (SIGKILL) in the middle of a converge leaves no partial
/// file; its next run converges everything and the one after changes
/// nothing.
#[test]
fn agent_killed_mid_converge_leaves_no_partial_file_and_recovers() {
    let Some(net) = Net::require() else { return };
    const FILES: usize = 3000;
    let (m, _tree) = master(&net, FILES);
    let h = net.add_host("web1");
    let a = Agent::new(&h, "web1");
    bootstrap(&net, &m, &a);

    let mut child = Proc(
        a.run_command(&net, &m, &["--once", "--output", "quiet"])
            .spawn()
            .unwrap(),
    );
    let t0 = std::time::Instant::now();
    while count_fleet_files(&a.root) < 5 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the converge did not start"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    let written = count_fleet_files(&a.root);
    assert!(
        status.code().is_none() && written < FILES,
        "the agent was not killed mid-converge ({status}, {written} files)"
    );
    // Every file there is complete.
    let expect = |_: usize| "web1 0\n".to_string();
    let mut partial = 0u64;
    for i in 0..FILES {
        let p = a.root.join(format!("etc/fleet/f{i}"));
        if let Ok(s) = std::fs::read_to_string(&p)
            && s != expect(i)
        {
            partial += 1;
        }
    }
    assert_eq!(partial, 0, "partial files after the kill");

    let (out, rep) = a.run_once(&net, &m);
    assert_eq!(out.code, Some(2), "{out:?}");
    let rep = rep.unwrap();
    assert_eq!(rep["from_cache"], false);
    assert_eq!(count_fleet_files(&a.root), FILES);
    for i in 0..FILES {
        assert_eq!(
            std::fs::read_to_string(a.root.join(format!("etc/fleet/f{i}"))).unwrap(),
            expect(i)
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(a.root.join("etc/fleet"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".troupe-new"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
    let (out, _) = a.run_once(&net, &m);
    assert_eq!(out.code, Some(0), "converged: {out:?}");
    tally::fault(
        "agent-kill",
        "agent killed mid-converge (netns fleet)",
        partial,
    );
}
