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
        // (The master may still list it as a known host that does not
        // answer; it is never sent the command.)
        let (_, r, _) = f.submit(ping());
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
    let (_, r, _) = f.submit(ping());
    assert_eq!(r.keys().collect::<Vec<_>>(), ["web3"]);
}

/// The bastion's own long-lived call: a Submit waiting for a host that
/// does not answer ends as soon as the bastion's certificate is revoked,
/// not at the command's timeout.
#[test]
fn revoking_the_caller_cuts_its_result_stream() {
    use troupe_proto::v1::orchestration_client::OrchestrationClient;
    use troupe_proto::v1::{AgentHello, AgentMessage, agent_message};
    let f = Fleet::start(&[AgentSpec::new("web1")]);
    // "mute1" attaches with a real certificate but never answers.
    let psk = f.master.psk("mute1");
    f.master.bootstrap("mute1", Some(&psk)).assert_success();
    let (tx, rx) = tokio::sync::mpsc::channel::<AgentMessage>(4);
    let _held = f.block_on(async {
        let ch = f.master.agent_channel("mute1").await.unwrap();
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(AgentHello::default())),
        })
        .await
        .unwrap();
        OrchestrationClient::new(ch)
            .attach(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner()
    });
    f.wait_attached(2);
    let wire = f.sign(&f.alice, "ping", &[], TargetFilter::default(), 60);
    let (took, r) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let t = std::time::Instant::now();
            let r = f.try_submit(wire, false);
            (t.elapsed(), r)
        });
        std::thread::sleep(Duration::from_millis(1500));
        f.master.ca_ok(&["revoke", "bastion"]);
        h.join().unwrap()
    });
    // The submission waits up to 10 s for mute1; the cut comes first.
    let e = format!("{:#}", r.expect_err("the result stream kept going"));
    assert!(e.contains("revoked or replaced"), "{e}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    tally::hostile(
        "revocation",
        "ca revoke of the bastion while its Submit waits for results",
        true,
    );
}
