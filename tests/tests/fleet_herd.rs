//! A thundering herd: 200 hosts bootstrap with their one-time keys at the
//! same moment, from 8 network namespaces (tests/src/netns.rs). Every one
//! gets a certificate, none gets two, and the CA's records, audit log and
//! the agents' files agree.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use troupe_tests::netns::{Agent, Net, NetMaster, read_log, spawn_logged, wait_all, write_tree};
use troupe_tests::{MasterOptions, Proc, tally};

const HOSTS: usize = 8;
const PER_HOST: usize = 25;

#[test]
fn two_hundred_hosts_bootstrap_at_once_and_each_gets_exactly_one_certificate() {
    let Some(net) = Net::require() else { return };
    let tree = tempfile::tempdir().unwrap();
    let modules = tree.path().join("modules");
    write_tree(&modules, "Welcome", 1, 1);
    let mh = net.add_host("master");
    let m = NetMaster::start(
        &net,
        &mh,
        MasterOptions {
            modules: Some(modules),
            extra_args: vec![],
        },
    );
    let mut fleet = Vec::new();
    for h in 0..HOSTS {
        let host = net.add_host(&format!("h{h}"));
        for i in 0..PER_HOST {
            fleet.push(Agent::new(&host, &format!("node{h}-{i}")));
        }
    }
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
    let codes = wait_all(&mut procs, Duration::from_secs(90));
    let took = t0.elapsed();
    let failed: Vec<String> = fleet
        .iter()
        .zip(&codes)
        .filter(|(_, c)| **c != Some(0))
        .map(|(a, c)| format!("{} ({c:?}): {}", a.name, read_log(&logs.join(&a.name))))
        .collect();
    assert!(
        failed.is_empty(),
        "bootstraps failed:\n{}",
        failed.join("\n")
    );

    // The CA: one valid certificate per host, all serials distinct.
    let signed = m.signed();
    let mut by_host: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (h, s) in &signed {
        by_host.entry(h).or_default().push(s);
    }
    let serials: BTreeSet<&String> = signed.iter().map(|(_, s)| s).collect();
    assert_eq!(serials.len(), signed.len(), "a serial was issued twice");
    assert_eq!(signed.len(), fleet.len(), "one certificate per host");
    let mut wrong = 0u64;
    for a in &fleet {
        let certs = by_host.get(a.name.as_str()).cloned().unwrap_or_default();
        assert_eq!(certs.len(), 1, "{}: {certs:?}", a.name);
        let id = troupe_identity::Identity::load(&a.state).unwrap();
        wrong += (id.serial != certs[0]) as u64;
    }
    assert_eq!(
        wrong, 0,
        "agents holding a certificate the CA does not list"
    );
    // Every key was used exactly once, and the audit log says so.
    let audit = std::fs::read_to_string(m.data.join("ca/audit.log")).unwrap();
    let autosigned: Vec<String> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["record"]["entry"].clone())
        .filter(|v| v["event"] == "autosign")
        .map(|v| v["host"].as_str().unwrap_or_default().to_string())
        .collect();
    let distinct: BTreeSet<&String> = autosigned.iter().collect();
    assert_eq!(autosigned.len(), fleet.len(), "autosign records");
    assert_eq!(distinct.len(), fleet.len(), "a host autosigned twice");
    assert!(
        m.ca_entries().iter().all(|e| e.state != "pending"),
        "nothing left pending"
    );
    // A second bootstrap of a signed host is refused (no second
    // certificate), and the CA is unchanged.
    let mut twin = fleet[0].clone();
    twin.state = net.tmp.path().join("twin-state");
    let again = troupe_tests::run(&mut twin.bootstrap_command(&net, &m, &fp, Some(&psks[0])));
    assert!(
        !again.success() && again.stderr.contains("refused"),
        "{again:?}"
    );
    assert_eq!(m.signed().len(), fleet.len());
    eprintln!("{} hosts bootstrapped at once in {took:?}", fleet.len());
    tally::fault(
        "herd",
        &format!("{} hosts bootstrapping at once", fleet.len()),
        wrong,
    );
}
