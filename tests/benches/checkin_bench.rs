//! Master load: many simulated agents (each with its own certificate and
//! mutual-TLS connection, all in this one process) checking in against one
//! real `troupe master` serving the shipped module tree.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! TROUPE_BIN_DIR=target/release cargo bench -p troupe-tests --bench checkin_bench
//! TROUPE_BENCH_AGENTS=500 TROUPE_BENCH_SECS=10 ...    # knobs
//! TROUPE_BENCH_NODES=0 ...                             # skip the fleet phase
//! ```
//!
//! The fleet phase (`TROUPE_BENCH_NODES`, default 10,000) enrols that many
//! more nodes, each checking in twice (a compile, then "unchanged") on its
//! own short-lived connection, and prints the master's resident memory per
//! node (VmRSS after minus before, connections closed). The throughput
//! phases then run with all of them in the master's catalog cache. Goal:
//! <= 16 KB per node at 10,000 nodes, unchanged >= 10,000/s on 2 cores.
//!
//! Prints check-ins per second with unchanged catalogs (the agent holds the
//! current one: the reply is "unchanged") and with a recompile on every
//! request (facts change each time), p50/p99 latency, and the master's peak
//! RSS. Anchor: one puppetserver serves ~2,000 nodes on 4 cores at a
//! 30-minute interval (about 1 check-in per second). Target on 2 cores:
//! ~60/s with recompiles (100,000 nodes at that interval) and 1,000/s
//! unchanged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use troupe_proto::v1::catalog_client::CatalogClient;
use troupe_proto::v1::{CatalogRequest, SubmitCsrRequest};
use troupe_tests::{Master, MasterOptions, make_csr};

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The `troupe master` process serving `data`, as its /proc directory.
fn master_proc(data: &std::path::Path) -> Option<std::path::PathBuf> {
    let needle = data.to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("master") && cmd.contains(&needle) {
            return Some(e.path());
        }
    }
    None
}

/// A `/proc/PID/status` line in KiB (`VmRSS`, `VmHWM`).
fn status_kib(proc_dir: &std::path::Path, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(proc_dir.join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak RSS (VmHWM) of the `troupe master` process serving `data`.
fn master_peak_rss_mb(data: &std::path::Path) -> Option<f64> {
    Some(status_kib(&master_proc(data)?, "VmHWM:")? / 1024.0)
}

/// Resident set (VmRSS) of the `troupe master` process serving `data`.
fn master_rss_kib(data: &std::path::Path) -> Option<f64> {
    status_kib(&master_proc(data)?, "VmRSS:")
}

struct Agent {
    client: CatalogClient<tonic::transport::Channel>,
    facts: serde_json::Value,
    have: String,
}

async fn phase(agents: &mut [Agent], secs: u64, recompile: bool) -> (u64, Vec<Duration>, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, a) in agents.iter_mut().enumerate() {
        let mut client = a.client.clone();
        let facts = a.facts.clone();
        let have = a.have.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut f = facts.clone();
                if recompile {
                    seq += 1;
                    f["external"] = serde_json::json!({"bench_seq": seq, "agent": i});
                }
                let req = CatalogRequest {
                    facts_json: serde_json::to_vec(&f).unwrap(),
                    have_hash: if recompile {
                        String::new()
                    } else {
                        have.clone()
                    },
                    environment: String::new(),
                    ..Default::default()
                };
                let t = Instant::now();
                match client.get_catalog(req).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        assert!(recompile || r.unchanged, "expected unchanged");
                        lat.push(t.elapsed());
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    (all.len() as u64, all, errors)
}

/// One simulated node of the fleet phase: enrols, connects, checks in
/// (compile), checks in again holding the catalog (must be "unchanged"),
/// and disconnects, so the master keeps only its per-node state.
async fn fleet_node(
    ca: troupe_proto::v1::ca_client::CaClient<tonic::transport::Channel>,
    ca_der: Arc<Vec<u8>>,
    url: Arc<String>,
    host: String,
    psk: String,
    facts: serde_json::Value,
) -> Result<Duration, String> {
    use rustls::pki_types::pem::PemObject;
    let (key, csr) = make_csr(&host, Some(&psk));
    let st = ca
        .clone()
        .submit_csr(SubmitCsrRequest {
            name: host.clone(),
            csr,
        })
        .await
        .map_err(|e| format!("{host}: csr: {e}"))?
        .into_inner();
    let cert = rustls::pki_types::CertificateDer::from_pem_slice(st.certificate_pem.as_bytes())
        .map_err(|e| format!("{host}: cert: {e}"))?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| format!("{host}: key: {e}"))?;
    let cfg = troupe_pki::tls::client_config(&ca_der, vec![], Some((vec![cert], key)))
        .map_err(|e| format!("{host}: tls: {e}"))?;
    let ch = troupe_identity::connect_with(cfg, &url)
        .await
        .map_err(|e| format!("{host}: connect: {e}"))?;
    let mut client =
        CatalogClient::new(ch).max_decoding_message_size(troupe_catalog::MAX_CATALOG_BYTES);
    let facts_json = serde_json::to_vec(&facts).unwrap();
    let r = client
        .get_catalog(CatalogRequest {
            facts_json: facts_json.clone(),
            have_hash: String::new(),
            environment: String::new(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("{host}: first check-in: {e}"))?
        .into_inner();
    if r.catalog_json.is_empty() {
        return Err(format!("{host}: the first check-in sent no catalog"));
    }
    let t = Instant::now();
    let again = client
        .get_catalog(CatalogRequest {
            facts_json,
            have_hash: r.catalog_hash.clone(),
            environment: String::new(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("{host}: second check-in: {e}"))?
        .into_inner();
    if !again.unchanged || again.catalog_hash != r.catalog_hash {
        return Err(format!("{host}: the second check-in was not \"unchanged\""));
    }
    Ok(t.elapsed())
}

/// The fleet phase: `nodes` more nodes each check in twice (see
/// [`fleet_node`]); prints the master's resident memory per node.
fn fleet_phase(rt: &tokio::runtime::Runtime, m: &Master, facts: &serde_json::Value, nodes: usize) {
    let roles = ["web", "db", "lb", "bastion"];
    let hosts: Vec<String> = (0..nodes)
        .map(|i| format!("{}{i}.fleet.example.com", roles[i % roles.len()]))
        .collect();
    let t = Instant::now();
    let psks: Vec<String> = hosts.iter().map(|h| m.psk_fast(h)).collect();
    println!(
        "fleet: {nodes} one-time keys in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Let the check-ins of the earlier phase reach the store first.
    std::thread::sleep(Duration::from_millis(1500));
    let before = master_rss_kib(&m.data).unwrap_or(0.0);
    let ca_der = Arc::new(m.ca_der());
    let url = Arc::new(m.url.clone());
    let t = Instant::now();
    let mut second: Vec<Duration> = rt.block_on(async {
        let ca = m.ca_client().await;
        let mut set = tokio::task::JoinSet::new();
        let mut out = Vec::with_capacity(nodes);
        for (host, psk) in hosts.into_iter().zip(psks) {
            if set.len() >= 16 {
                out.push(set.join_next().await.unwrap().unwrap());
            }
            let mut f = facts.clone();
            f["hostname"] = serde_json::json!(host.split('.').next().unwrap());
            f["fqdn"] = serde_json::json!(host);
            set.spawn(fleet_node(
                ca.clone(),
                ca_der.clone(),
                url.clone(),
                host,
                psk,
                f,
            ));
        }
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{e}\n{}", m.log())))
            .collect()
    });
    let took = t.elapsed().as_secs_f64();
    // One check-in flush (a second) so pending check-ins are in the store.
    std::thread::sleep(Duration::from_millis(1500));
    let after = master_rss_kib(&m.data).unwrap_or(0.0);
    let peak = master_peak_rss_mb(&m.data).unwrap_or(0.0);
    println!(
        "fleet: {nodes} more nodes enrolled, compiled and checked in twice in {took:.1} s \
         (second check-in p50 {:.2} ms, p99 {:.2} ms)",
        pct(&mut second, 0.5).as_secs_f64() * 1e3,
        pct(&mut second, 0.99).as_secs_f64() * 1e3,
    );
    println!(
        "fleet: master RSS {:.1} MB before, {:.1} MB after (peak {peak:.1} MB): \
         {:.1} KB resident per node (goal <= 16 KB)",
        before / 1024.0,
        after / 1024.0,
        (after - before) / nodes as f64,
    );
}

fn main() {
    troupe_pki::tls::install_crypto_provider();
    let n = env_num("TROUPE_BENCH_AGENTS", 200) as usize;
    let secs = env_num("TROUPE_BENCH_SECS", 5);
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let modules = repo.join("modules");
    let facts: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo.join("catalog/compiler/tests/facts/debian12.json")).unwrap(),
    )
    .unwrap();

    let m = Master::start_with(MasterOptions {
        modules: Some(modules),
        extra_args: vec![],
    });
    // The example environments' secret keys (TEST ONLY), so db catalogs
    // with secrets compile; the master loads keys at start, so restart.
    let secrets = m.data.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    for env in ["production", "development"] {
        let dst = secrets.join(format!("{env}.key"));
        std::fs::copy(
            repo.join(format!("catalog/compiler/tests/keys/{env}.key")),
            &dst,
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let mut m = m;
    m.restart(&MasterOptions {
        modules: Some(repo.join("modules")),
        extra_args: vec![],
    });
    println!("troupe master check-in benchmark: {n} simulated agents, {secs} s per phase");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca_der = m.ca_der();
    let roles = ["web", "db", "lb", "bastion"];
    let mut agents: Vec<Agent> = rt.block_on(async {
        let ca = m.ca_client().await;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let host = format!("{}{}.example.com", roles[i % roles.len()], i);
            let psk = m.psk_fast(&host);
            let (key, csr) = make_csr(&host, Some(&psk));
            let st = ca
                .clone()
                .submit_csr(SubmitCsrRequest {
                    name: host.clone(),
                    csr,
                })
                .await
                .unwrap()
                .into_inner();
            let cert =
                rustls::pki_types::CertificateDer::from_pem_slice(st.certificate_pem.as_bytes())
                    .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            let cfg =
                troupe_pki::tls::client_config(&ca_der, vec![], Some((vec![cert], key))).unwrap();
            let ch = troupe_identity::connect_with(cfg, &m.url).await.unwrap();
            let mut f = facts.clone();
            f["hostname"] = serde_json::json!(host.split('.').next().unwrap());
            f["fqdn"] = serde_json::json!(host);
            out.push(Agent {
                client: CatalogClient::new(ch)
                    .max_decoding_message_size(troupe_catalog::MAX_CATALOG_BYTES),
                facts: f,
                have: String::new(),
            });
        }
        out
    });
    use rustls::pki_types::pem::PemObject;

    // First check-in of every node: one compile each.
    let t = Instant::now();
    let mut first = Vec::new();
    let mut size = 0usize;
    rt.block_on(async {
        for a in agents.iter_mut() {
            let t1 = Instant::now();
            let r = a
                .client
                .get_catalog(CatalogRequest {
                    facts_json: serde_json::to_vec(&a.facts).unwrap(),
                    have_hash: String::new(),
                    environment: String::new(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("first check-in failed: {e}\n{}", m.log()))
                .into_inner();
            first.push(t1.elapsed());
            size = size.max(r.catalog_json.len());
            a.have = r.catalog_hash;
        }
    });
    let e = t.elapsed();
    println!(
        "first check-in (compile), sequential: {n} in {:.2} s = {:.0}/s, p50 {:.1} ms, p99 {:.1} ms (largest catalog {} KiB)",
        e.as_secs_f64(),
        n as f64 / e.as_secs_f64(),
        pct(&mut first, 0.5).as_secs_f64() * 1e3,
        pct(&mut first, 0.99).as_secs_f64() * 1e3,
        size / 1024
    );

    let nodes = env_num("TROUPE_BENCH_NODES", 10_000) as usize;
    if nodes > 0 {
        fleet_phase(&rt, &m, &facts, nodes);
    }
    let cached = n + nodes;
    for (name, recompile) in [("unchanged", false), ("recompile", true)] {
        let (count, mut lat, errors) = rt.block_on(phase(&mut agents, secs, recompile));
        println!(
            "{name:<10} {count} check-ins in {secs} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, errors {errors} ({cached} nodes cached)",
            count as f64 / secs as f64,
            pct(&mut lat, 0.5).as_secs_f64() * 1e3,
            pct(&mut lat, 0.99).as_secs_f64() * 1e3,
        );
    }
    match master_peak_rss_mb(&m.data) {
        Some(mb) => println!("master peak RSS: {mb:.1} MB"),
        None => println!("master peak RSS: (not found)"),
    }
    println!("targets (2 cores): recompile >= 60/s (100,000 nodes / 30 min), unchanged >= 1,000/s");
}
