//! Hostile situation: a host whose certificate is revoked (or cleaned)
//! while its orchestration stream is open. The master cuts that stream at
//! once (at the CRL change, before any command), re-checks every target's
//! certificate before relaying a command, and the host cannot attach
//! again; the other hosts keep answering.

use std::time::Duration;
use troupe_command::TargetFilter;
use troupe_tests::orch::{AgentSpec, Fleet};
use troupe_tests::{tally, wait_until};

#[test]
fn revoke_and_clean_cut_open_command_streams_at_once() {
    let f = Fleet::start(&[
        AgentSpec::new("web1"),
        AgentSpec::new("web2"),
        AgentSpec::new("web3"),
    ]);
    let ping = || f.sign(&f.alice, "ping", &[], TargetFilter::default(), 60);
    let (t, r, _) = f.submit(ping());
    assert_eq!(t, ["web1", "web2", "web3"]);
    assert_eq!(r.len(), 3, "{r:?}");

    for (how, host) in [("revoke", "web1"), ("clean", "web2")] {
        let cuts = f.master.log().matches("command stream cut").count();
        f.master.ca_ok(&[how, host]);
        // Cut at the CRL change, before any command is sent.
        wait_until(Duration::from_secs(5), "the stream is cut", || {
            f.master.log().matches("command stream cut").count() > cuts
        });
        let (t, r, _) = f.submit(ping());
        assert!(!t.iter().any(|n| n == host), "{how}: {t:?}");
        assert!(!r.contains_key(host), "{how}: {r:?}");
        assert!(r.contains_key("web3"), "{how}: {r:?}");
        tally::hostile(
            "revocation",
            &format!("ca {how} of a host with an open command stream"),
            true,
        );
    }
    // Neither comes back (their handshakes are refused), web3 still answers.
    std::thread::sleep(Duration::from_secs(2));
    let (t, r, _) = f.submit(ping());
    assert_eq!(t, ["web3"]);
    assert_eq!(r.len(), 1);
}
