//! Hostile load: one client holding thousands of idle TCP connections
//! that never start TLS (a pre-handshake exhaustion attempt). The master
//! closes what is over its per-source bound at once and keeps a reserve,
//! so a legitimate client's new connection (TLS + one CA call) and an
//! established agent's call still complete quickly during the flood.

use std::time::{Duration, Instant};
use troupe_proto::v1::Empty;
use troupe_proto::v1::ca_client::CaClient;
use troupe_tests::{Master, tally};

/// Idle connections the flood holds open (all from 127.0.0.2).
const FLOOD: usize = 3000;
/// What a legitimate new connection + call may take during the flood.
const BOUND: Duration = Duration::from_secs(3);

fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = (FLOOD as u64 + 1024).min(hard);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
}

/// A new TLS connection and one CA call; its latency (or BOUND * 5 when
/// it did not complete in that long).
async fn legit_call(m: &Master) -> Duration {
    let t = Instant::now();
    let r = tokio::time::timeout(BOUND * 5, async {
        let cfg = troupe_pki::tls::client_config(&m.ca_der(), vec![], None).expect("tls config");
        let Ok(ch) = troupe_agent::identity::connect_with(cfg, &m.url).await else {
            return false;
        };
        CaClient::new(ch).get_ca_certificate(Empty {}).await.is_ok()
    })
    .await;
    match r {
        Ok(true) => t.elapsed(),
        _ => BOUND * 5,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_flood_does_not_lock_out_legitimate_clients() {
    raise_nofile(); // before the master starts: it inherits the limit
    let m = Master::start();
    let psk = m.psk("web1");
    m.bootstrap("web1", Some(&psk)).assert_success();
    // An agent connected before the flood.
    let ch = m.agent_channel("web1").await.unwrap();
    let mut established = CaClient::new(ch);
    established.get_crl(Empty {}).await.unwrap();
    let baseline = legit_call(&m).await;

    // The flood: FLOOD connections from one source, never a byte sent.
    let target = m.addr;
    let mut held = Vec::with_capacity(FLOOD);
    let t = Instant::now();
    for _ in 0..FLOOD {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        match tokio::time::timeout(Duration::from_secs(2), s.connect(target)).await {
            Ok(Ok(c)) => held.push(c),
            _ => break,
        }
    }
    // (Without the bounds, the master's backlog fills after ~1100 and
    // further connects time out: the flood then holds what it has.)
    let opened = held.len();
    assert!(opened >= 1000, "only {opened} flood connections opened");

    // During the flood: new legitimate connections and the established
    // agent are answered within the bound.
    let mut worst = Duration::ZERO;
    for _ in 0..3 {
        worst = worst.max(legit_call(&m).await);
        let e = Instant::now();
        tokio::time::timeout(BOUND, established.get_crl(Empty {}))
            .await
            .expect("the established agent's call timed out")
            .unwrap();
        worst = worst.max(e.elapsed());
    }
    eprintln!(
        "flood: {opened} idle connections opened in {:.2?}; legitimate call {baseline:.2?} before, worst {worst:.2?} during",
        t.elapsed()
    );
    assert!(
        worst < BOUND,
        "legitimate calls took {worst:?} during the flood"
    );
    drop(held);
    tally::hostile(
        "connection-flood",
        &format!("{opened} idle pre-handshake connections from one source"),
        true,
    );
}
