//! Fan-out benchmark: one real `troupe master` process, N simulated agents
//! in this process (each with its own CA-issued certificate and its own
//! mutual-TLS connection and command stream), one bastion. Measures the
//! time from submitting a signed `ping` to the summary with every reply in.
//!
//! ```sh
//! cargo build --release -p troupe-master -p troupe-agent
//! cargo bench -p troupe-tests --bench orch_bench                    # 1,000 and 10,000
//! TROUPE_BENCH_AGENTS=2000 cargo bench -p troupe-tests --bench orch_bench
//! ```
//!
//! Each submission includes the master's durable write of the command id
//! to its relay-once cache (one redb commit with fsync, a constant cost per
//! command, not per agent).
//! Simulated agents keep no replay cache or audit log (on a real fleet
//! each host pays that on its own disk, in parallel). Two figures per size:
//! agents that only decode the envelope (the master's fan-out and the
//! transport), and agents that also check the ed25519 signature — here all
//! 10,000 checks share this machine's cores with the master, where a real
//! fleet does them in parallel on 10,000 hosts.
//! Anchor: Choria's Go client pings ~51,000 nodes in under 3.5 s
//! (published). Target here: 10,000 agents in under 1 s.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use troupe_bastion::FileSigner;
use troupe_command::{Command, SignedCommand, Signer, TargetFilter};
use troupe_proto::v1::orchestration_client::OrchestrationClient;
use troupe_proto::v1::{AgentHello, AgentMessage, CommandResult, agent_message};
use troupe_tests::{Master, make_csr};

type Ident = (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn issue(ca: &troupe_pki::Authority, host: &str) -> Ident {
    let psk = ca.new_psk(host, 3600).expect("psk");
    let (key, csr) = make_csr(host, Some(&psk));
    let cert = match ca.submit_csr(host, &csr, "bench").expect("submit") {
        troupe_pki::SubmitOutcome::Signed(c) => c,
        other => panic!("{other:?}"),
    };
    (
        host.to_string(),
        vec![CertificateDer::from(cert.der)],
        PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
    )
}

async fn sim_agent(
    ch: tonic::transport::Channel,
    key: ed25519_dalek::VerifyingKey,
    verify: Arc<AtomicBool>,
    attached: mpsc::Sender<()>,
) {
    let (tx, rx) = mpsc::channel::<AgentMessage>(16);
    let _ = tx
        .send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(AgentHello::default())),
        })
        .await;
    let Ok(resp) = OrchestrationClient::new(ch)
        .attach(ReceiverStream::new(rx))
        .await
    else {
        return;
    };
    let _ = attached.send(()).await;
    let mut inbound = resp.into_inner();
    while let Some(Ok(d)) = inbound.next().await {
        let Ok(sc) = SignedCommand::from_wire(&d.envelope) else {
            continue;
        };
        let ok = !verify.load(Ordering::Relaxed)
            || key.verify_strict(sc.body(), &sc.signature()).is_ok();
        let _ = tx
            .send(AgentMessage {
                msg: Some(agent_message::Msg::Result(CommandResult {
                    command_id: sc.command().id.0.to_vec(),
                    status: if ok { "ok" } else { "bad_signature" }.into(),
                    message: "pong".into(),
                    ..Default::default()
                })),
            })
            .await;
    }
}

fn main() {
    troupe_pki::tls::install_crypto_provider();
    let sizes: Vec<usize> = std::env::var("TROUPE_BENCH_AGENTS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 10_000]);
    let max = sizes.iter().copied().max().unwrap_or(0);
    println!("troupe orchestration fan-out benchmark (agents: {sizes:?})");

    // Certificates from the master's own CA (offline, then start it).
    let mut m = Master::start();
    m.stop();
    let t = Instant::now();
    let (bastion, idents) = {
        let ca = troupe_pki::Authority::open(&m.data.join("ca"), Default::default()).expect("CA");
        let b = issue(&ca, "bastion");
        let v: Vec<Ident> = (0..max)
            .map(|i| issue(&ca, &format!("sim{i:05}")))
            .collect();
        (b, v)
    };
    println!(
        "issued {} certificates in {:.1} s (setup, not measured)",
        max + 1,
        t.elapsed().as_secs_f64()
    );
    let signer = FileSigner::generate().expect("key");
    std::fs::write(
        m.data.join("signers.toml"),
        format!(
            "[[signer]]\nname = \"bench\"\nkey = \"{}\"\n",
            signer.key_id()
        ),
    )
    .expect("signers");
    m.resume(&Default::default());
    let ca_der = m.ca_der();
    let url = m.url.clone();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let cfg = |id: &Ident| {
            troupe_pki::tls::client_config(&ca_der, vec![], Some((id.1.clone(), id.2.clone_key())))
                .expect("tls config")
        };
        let bastion_ch = troupe_identity::connect_with(cfg(&bastion), &url)
            .await
            .expect("bastion connect");
        let key = signer.verifying_key();
        let signer = Arc::new(std::sync::Mutex::new(signer));
        let mut connected = 0usize;
        let verify = Arc::new(AtomicBool::new(false));
        let slots = Arc::new(tokio::sync::Semaphore::new(128));
        for &n in &sizes {
            // Connect agents up to n.
            let t = Instant::now();
            let (att_tx, mut att_rx) = mpsc::channel(1024);
            let mut set = tokio::task::JoinSet::new();
            for id in &idents[connected..n] {
                let c = cfg(id);
                let url = url.clone();
                let att = att_tx.clone();
                let verify = verify.clone();
                let slots = slots.clone();
                set.spawn(async move {
                    let permit = slots.acquire_owned().await.expect("semaphore");
                    let ch = troupe_identity::connect_with(c, &url).await;
                    drop(permit);
                    if let Ok(ch) = ch {
                        tokio::spawn(sim_agent(ch, key, verify, att));
                    }
                });
            }
            drop(att_tx);
            while set.join_next().await.is_some() {}
            let want = n - connected;
            let mut got = 0;
            while got < want {
                match tokio::time::timeout(Duration::from_secs(60), att_rx.recv()).await {
                    Ok(Some(())) => got += 1,
                    _ => break,
                }
            }
            connected += got;
            println!(
                "{connected} agents attached ({got} new in {:.1} s, setup)",
                t.elapsed().as_secs_f64()
            );
            // Let the master register the last hellos.
            tokio::time::sleep(Duration::from_millis(300)).await;
            for checking in [false, true] {
            verify.store(checking, Ordering::Relaxed);
            let mut times = Vec::new();
            for _ in 0..5 {
                let wire = {
                    let mut s = signer.lock().expect("signer");
                    let cmd = Command::new(
                        s.key_id().clone(),
                        "ping",
                        Default::default(),
                        TargetFilter::default(),
                        troupe_command::verify::unix_now(),
                        60,
                    )
                    .expect("command");
                    cmd.sign(&mut *s as &mut dyn Signer).expect("sign").to_wire()
                };
                let mut oks = 0usize;
                let t = Instant::now();
                let (targets, summary) = troupe_bastion::run_cli::submit(
                    bastion_ch.clone(),
                    wire,
                    Duration::from_secs(60),
                    false,
                    |r| {
                        if r.status == "ok" {
                            oks += 1
                        }
                    },
                )
                .await
                .expect("submit");
                let e = t.elapsed();
                assert_eq!(targets.len(), connected, "every agent targeted");
                assert_eq!(oks, connected, "every agent answered ok: {summary:?}");
                times.push(e);
            }
            times.sort();
            println!(
                "ping fan-out to {connected:>6} agents ({}), all replies in: min {:.3} s, median {:.3} s, max {:.3} s ({} runs)",
                if checking { "agents check signatures" } else { "agents decode only" },
                times[0].as_secs_f64(),
                times[times.len() / 2].as_secs_f64(),
                times[times.len() - 1].as_secs_f64(),
                times.len()
            );
            }
        }
    });
    drop(m);
}
