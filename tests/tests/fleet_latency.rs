//! Latency between one host and the master, on a fleet of hosts in their
//! own network namespaces (tests/src/netns.rs): bootstrap, a converge run
//! and its report all still work over a slow link, and the run's time shows
//! the latency is really there. The latency is tc netem where the kernel
//! has it, else the harness's delaying TCP relay (the test says which).

use std::process::Stdio;
use std::time::{Duration, Instant};
use troupe_bastion::FileSigner;
use troupe_master::admin::AdminRequest;
use troupe_tests::netns::{Agent, LatencyMethod, Net, NetMaster, spawn_logged, write_tree};
use troupe_tests::orch::{PASSPHRASE, POLICY};
use troupe_tests::{MasterOptions, Out, agent_bin, run, tally, troupe_bin};

/// Delay added in each direction between the slow host and the master.
const ONE_WAY: Duration = Duration::from_millis(150);

fn master(net: &Net) -> (NetMaster, tempfile::TempDir) {
    let tree = tempfile::tempdir().unwrap();
    let modules = tree.path().join("modules");
    write_tree(&modules, "Welcome", 3, 1);
    let host = net.add_host("master");
    let m = NetMaster::start(
        net,
        &host,
        MasterOptions {
            modules: Some(modules),
            extra_args: vec![],
        },
    );
    (m, tree)
}

/// Run ids of `runs` the master does not hold for `node`.
fn missing_on_master(m: &NetMaster, node: &str, runs: &[String]) -> Vec<String> {
    runs.iter()
        .filter(|id| {
            m.admin(&AdminRequest::Report {
                host: node.into(),
                run: Some((*id).clone()),
            })
            .map_or(true, |r| r["report"]["run_id"] != id.as_str())
        })
        .cloned()
        .collect()
}

/// A host 150 ms away from the master (each way) bootstraps with its
/// one-time key, converges, and its reports reach the master; each run
/// takes at least two round trips (a TLS connection and a request), so the
/// delay is really on the path. A host without latency on the same switch
/// is not slowed down by it, and clearing the latency restores direct
/// access.
#[test]
fn host_with_latency_bootstraps_converges_and_reports() {
    let Some(net) = Net::require() else { return };
    let (m, _tree) = master(&net);
    let fp = m.fingerprint();
    let slow_host = net.add_host("web1");
    let slow = Agent::new(&slow_host, "web1");
    let fast_host = net.add_host("web2");
    let fast = Agent::new(&fast_host, "web2");

    let lat = net
        .delay_host(&slow_host, &m, ONE_WAY)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", lat.describe());
    assert_eq!(lat.rtt(), ONE_WAY * 2);
    match &lat.method {
        LatencyMethod::Relay { addr, .. } => {
            // Same address as the master (its certificate names it), another port.
            assert_eq!(addr.ip(), std::net::IpAddr::V4(m.host.ip));
            assert_ne!(addr.port(), troupe_tests::netns::MASTER_PORT);
            assert_eq!(net.server_url(&slow_host, &m), format!("https://{addr}"));
        }
        LatencyMethod::Netem => assert_eq!(net.server_url(&slow_host, &m), m.url),
    }
    assert_eq!(net.server_url(&fast_host, &m), m.url);

    // Bootstrap with a one-time key over the slow link.
    let psk = m.psk("web1");
    let t = Instant::now();
    run(&mut slow.bootstrap_command(&net, &m, &fp, Some(&psk))).assert_success();
    let boot = t.elapsed();
    assert!(
        m.signed().iter().any(|(h, _)| h == "web1"),
        "web1 has no certificate"
    );
    assert!(
        boot >= lat.rtt() * 2,
        "bootstrap took {boot:?}, less than two round trips of {:?}: the latency is not on the path",
        lat.rtt()
    );

    // A converge run: it changes things, from a fresh catalog.
    let t = Instant::now();
    let (out, rep) = slow.run_once(&net, &m);
    let first = t.elapsed();
    assert_eq!(out.code, Some(2), "{out:?}");
    let rep = rep.expect("run report");
    assert_eq!(rep["from_cache"], false, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(slow.root.join("etc/motd")).unwrap(),
        "Welcome (web1)\n"
    );
    assert!(
        first >= lat.rtt() * 2,
        "a run took {first:?}, less than two round trips of {:?}: the latency is not on the path",
        lat.rtt()
    );
    // And the next one changes nothing.
    let t = Instant::now();
    let (out, rep) = slow.run_once(&net, &m);
    let second = t.elapsed();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(rep.expect("run report")["from_cache"], false, "{out:?}");
    assert!(second >= lat.rtt() * 2, "second run took {second:?}");

    // Every report reached the master; nothing is queued.
    let (local, unsent) = slow.local_runs();
    assert_eq!(local.len(), 2, "{local:?}");
    assert!(unsent.is_empty(), "reports still queued: {unsent:?}");
    let missing = missing_on_master(&m, "web1", &local);
    assert!(missing.is_empty(), "reports not on the master: {missing:?}");
    if let Some(b) = lat.relayed_bytes() {
        assert!(b > 1000, "the relay carried only {b} bytes");
    }

    // A signed orchestration ping to the slow host, its `listen` stream
    // going over the slow link, is answered.
    let keys = net.tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let alice = FileSigner::generate().unwrap();
    let key = keys.join("alice.key");
    alice.write_encrypted(&key, PASSPHRASE).unwrap();
    let pass = keys.join("alice.pass");
    std::fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    std::fs::write(
        m.data.join("signers.toml"),
        format!(
            "[[signer]]\nname = \"alice\"\nkey = \"{}\"\n",
            alice.key_id()
        ),
    )
    .unwrap();
    std::fs::write(
        slow.state.join("orchestration.toml"),
        format!(
            "converge_root = \"{}\"\n\n[[signer]]\nname = \"alice\"\nkey = \"{}\"\n{POLICY}\n",
            slow.root.display(),
            alice.key_id()
        ),
    )
    .unwrap();
    let bastion = Agent::new(&m.host, "bastion");
    let psk = m.psk("bastion");
    run(&mut bastion.bootstrap_command(&net, &m, &fp, Some(&psk))).assert_success();
    let mut listen = net.command(&slow_host, &agent_bin());
    listen
        .arg("listen")
        .arg("--server")
        .arg(net.server_url(&slow_host, &m))
        .arg("--state")
        .arg(&slow.state)
        .args(["--backoff-max", "1s"])
        .env("TROUPE_LOG", "info")
        .stdin(Stdio::null());
    let listen_log = slow_host.dir.join("listen.log");
    let _listener = spawn_logged(&mut listen, &listen_log);
    let ping = || -> (Out, Duration) {
        let mut c = net.command(&m.host, &troupe_bin());
        c.args(["run", "ping", "--name", "web1", "--server", &m.url])
            .arg("--identity")
            .arg(&bastion.state)
            .arg("--key")
            .arg(&key)
            .arg("--passphrase-file")
            .arg(&pass);
        let t = Instant::now();
        let out = run(&mut c);
        (out, t.elapsed())
    };
    let start = Instant::now();
    let (out, ping_time) = loop {
        let (out, took) = ping();
        if out.success() && out.stdout.contains("1 matched, 1 ok") {
            break (out, took);
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "no answer to a signed ping over the slow link: {out:?}\n{}",
            troupe_tests::netns::read_log(&listen_log)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.stdout.contains("web1"), "{out:?}");
    // The ping crosses the slow link once each way at least.
    assert!(
        ping_time >= lat.rtt(),
        "a ping took {ping_time:?}, less than the {:?} round trip",
        lat.rtt()
    );

    // The host without latency is not behind the relay and works as usual.
    let psk = m.psk("web2");
    run(&mut fast.bootstrap_command(&net, &m, &fp, Some(&psk))).assert_success();
    let t = Instant::now();
    let (out, _) = fast.run_once(&net, &m);
    let control = t.elapsed();
    assert_eq!(out.code, Some(2), "{out:?}");
    eprintln!(
        "bootstrap {boot:?}, runs {first:?} and {second:?}, ping {ping_time:?} with {:?} round trip; a run without latency {control:?}",
        lat.rtt()
    );

    // Cleared: the slow host dials the master directly again.
    net.clear_latency(&slow_host);
    assert_eq!(net.server_url(&slow_host, &m), m.url);
    let (out, rep) = slow.run_once(&net, &m);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(rep.expect("run report")["from_cache"], false);
    let (local, unsent) = slow.local_runs();
    assert!(unsent.is_empty(), "reports still queued: {unsent:?}");
    let missing = missing_on_master(&m, "web1", &local);
    assert!(missing.is_empty(), "reports not on the master: {missing:?}");

    let how = match lat.method {
        LatencyMethod::Netem => "netem",
        LatencyMethod::Relay { .. } => "relay",
    };
    tally::fault(
        "latency",
        &format!(
            "{} ms each way on one host ({how}): bootstrap, 2 runs, reports delivered, signed ping answered",
            ONE_WAY.as_millis()
        ),
        missing.len() as u64,
    );
}
