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
//! At the end the peer's memory is measured in the same run,
//! `bench/peers/puppetserver_rss.sh` (puppetserver 7.9 on 127.0.0.1, as
//! root; `TROUPE_BENCH_PUPPETSERVER=0` skips it, `=install` installs the
//! Debian package), and both are printed side by side.
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

// Unchanged check-ins per second and the master's CPU per check-in
// (issue 20 item 1b).
mod checkin_rate;

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

/// One simulated node of the fleet phase, enrolled: its TLS identity,
/// facts and the hash of the catalog it holds.
struct FleetNode {
    tls: rustls::ClientConfig,
    facts_json: Vec<u8>,
    have: String,
}

/// One check-in of `node` on its own short-lived connection (closed after,
/// so the master keeps only its per-node state): returns whether the reply
/// was "unchanged" and how long the check-in took (without the connect).
async fn fleet_checkin(
    url: &str,
    node: &mut FleetNode,
    host: &str,
) -> Result<(bool, Duration), String> {
    let ch = troupe_identity::connect_with(node.tls.clone(), url)
        .await
        .map_err(|e| format!("{host}: connect: {e}"))?;
    let mut client =
        CatalogClient::new(ch).max_decoding_message_size(troupe_catalog::MAX_CATALOG_BYTES);
    let t = Instant::now();
    let r = client
        .get_catalog(CatalogRequest {
            facts_json: node.facts_json.clone(),
            have_hash: node.have.clone(),
            environment: String::new(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("{host}: check-in: {e}"))?
        .into_inner();
    let took = t.elapsed();
    if !r.unchanged && r.catalog_json.is_empty() {
        return Err(format!("{host}: a changed catalog came without its JSON"));
    }
    node.have = r.catalog_hash;
    Ok((r.unchanged, took))
}

/// Enrols one node (one-time key, CSR, certificate) and checks it in once
/// (a compile).
async fn fleet_enrol(
    ca: troupe_proto::v1::ca_client::CaClient<tonic::transport::Channel>,
    ca_der: Arc<Vec<u8>>,
    url: Arc<String>,
    host: String,
    psk: String,
    facts: serde_json::Value,
) -> Result<FleetNode, String> {
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
    let tls = troupe_pki::tls::client_config(&ca_der, vec![], Some((vec![cert], key)))
        .map_err(|e| format!("{host}: tls: {e}"))?;
    let mut node = FleetNode {
        tls,
        facts_json: serde_json::to_vec(&facts).unwrap(),
        have: String::new(),
    };
    let (unchanged, _) = fleet_checkin(&url, &mut node, &host).await?;
    if unchanged {
        return Err(format!("{host}: the first check-in was \"unchanged\""));
    }
    Ok(node)
}

/// One node's check-in in a fleet pass: the node back, with what it measured.
type NodeFuture<T> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(String, FleetNode, T), String>> + Send>,
>;

/// Runs `f` over every node, 16 at a time; returns the results in order.
fn fleet_pass<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    m: &Master,
    nodes: &mut Vec<(String, FleetNode)>,
    f: fn(Arc<String>, String, FleetNode) -> NodeFuture<T>,
) -> Vec<T> {
    let url = Arc::new(m.url.clone());
    let todo: Vec<(String, FleetNode)> = std::mem::take(nodes);
    let out: Vec<(String, FleetNode, T)> = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        let mut out = Vec::with_capacity(todo.len());
        for (i, (host, node)) in todo.into_iter().enumerate() {
            if set.len() >= 16 {
                out.push(set.join_next().await.unwrap().unwrap());
            }
            let fut = f(url.clone(), host, node);
            set.spawn(async move { fut.await.map(|r| (i, r)) });
        }
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        let mut out: Vec<(usize, (String, FleetNode, T))> = out
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{e}\n{}", m.log())))
            .collect();
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    });
    let mut results = Vec::with_capacity(out.len());
    for (host, node, t) in out {
        nodes.push((host, node));
        results.push(t);
    }
    results
}

/// A check-in pass over the enrolled nodes: (unchanged, time) per node.
fn checkin_pass(
    url: Arc<String>,
    host: String,
    mut node: FleetNode,
) -> NodeFuture<(bool, Duration)> {
    Box::pin(async move {
        let r = fleet_checkin(&url, &mut node, &host).await?;
        Ok((host, node, r))
    })
}

/// What the fleet phase measured.
struct FleetFigures {
    nodes: usize,
    kib_per_node: f64,
    /// The master's whole RSS after the fleet, KiB.
    after_kib: f64,
    unchanged_per_s: f64,
}

/// The fleet phase: `nodes` more nodes enrol and check in (a compile);
/// a second pass lets those whose catalog changed meanwhile (`fleet()`:
/// load balancers list the web nodes that enrolled after them) take the
/// new one; a third pass must be "unchanged" for every node. Prints the
/// master's resident memory per node (connections closed).
fn fleet_phase(
    rt: &tokio::runtime::Runtime,
    m: &Master,
    facts: &serde_json::Value,
    nodes: usize,
) -> FleetFigures {
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
    let mut fleet: Vec<(String, FleetNode)> = rt.block_on(async {
        let ca = m.ca_client().await;
        let mut set = tokio::task::JoinSet::new();
        let mut out = Vec::with_capacity(nodes);
        for (i, (host, psk)) in hosts.into_iter().zip(psks).enumerate() {
            if set.len() >= 16 {
                out.push(set.join_next().await.unwrap().unwrap());
            }
            let mut f = facts.clone();
            f["hostname"] = serde_json::json!(host.split('.').next().unwrap());
            f["fqdn"] = serde_json::json!(host);
            let enrol = fleet_enrol(
                ca.clone(),
                ca_der.clone(),
                url.clone(),
                host.clone(),
                psk,
                f,
            );
            set.spawn(async move { enrol.await.map(|n| (i, host, n)) });
        }
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap());
        }
        let mut out: Vec<(usize, String, FleetNode)> = out
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{e}\n{}", m.log())))
            .collect();
        out.sort_by_key(|(i, _, _)| *i);
        out.into_iter().map(|(_, h, n)| (h, n)).collect()
    });
    println!(
        "fleet: {nodes} more nodes enrolled and compiled in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let second = fleet_pass(rt, m, &mut fleet, checkin_pass);
    let changed = second.iter().filter(|(u, _)| !u).count();
    println!(
        "fleet: second check-in of each in {:.1} s: {changed} took a new catalog \
         (fleet() data changed since their first), {} unchanged",
        t.elapsed().as_secs_f64(),
        nodes - changed
    );
    let master = master_proc(&m.data);
    let cpu0 = master.as_deref().map_or(0.0, checkin_rate::cpu_secs);
    let t = Instant::now();
    let third = fleet_pass(rt, m, &mut fleet, checkin_pass);
    let took = t.elapsed().as_secs_f64();
    let cpu = master.as_deref().map_or(0.0, checkin_rate::cpu_secs) - cpu0;
    let not = third.iter().filter(|(u, _)| !u).count();
    assert_eq!(
        not,
        0,
        "{not} nodes' third check-in was not \"unchanged\"\n{}",
        m.log()
    );
    let mut lat: Vec<Duration> = third.iter().map(|(_, d)| *d).collect();
    let unchanged_per_s = nodes as f64 / took;
    println!(
        "fleet: third check-in of each (all unchanged, each on a new TLS connection) in {took:.1} s \
         = {unchanged_per_s:.0}/s, p50 {:.2} ms, p99 {:.2} ms; master CPU {:.0} us per check-in",
        pct(&mut lat, 0.5).as_secs_f64() * 1e3,
        pct(&mut lat, 0.99).as_secs_f64() * 1e3,
        cpu / nodes as f64 * 1e6,
    );
    // One check-in flush (a second) so pending check-ins are in the store.
    std::thread::sleep(Duration::from_millis(1500));
    let after = master_rss_kib(&m.data).unwrap_or(0.0);
    let peak = master_peak_rss_mb(&m.data).unwrap_or(0.0);
    let kib_per_node = (after - before) / nodes as f64;
    println!(
        "fleet: master RSS {:.1} MB before, {:.1} MB after (peak {peak:.1} MB): \
         {kib_per_node:.1} KB resident per node (goal <= 16 KB)",
        before / 1024.0,
        after / 1024.0,
    );
    fleet_unread_change(rt, m, fleet);
    FleetFigures {
        nodes,
        kib_per_node,
        after_kib: after,
        unchanged_per_s,
    }
}

/// A fact no `fleet()` query reads changes on every db node; then every lb
/// node (whose haproxy.cfg lists the web nodes: `fleet(role=web)`) checks
/// in. Its catalog cannot have changed: prints the lb pass's time, the
/// master's CPU for it (a recompile of an lb walks the whole fleet) and how
/// many got a new catalog (must be 0).
fn fleet_unread_change(rt: &tokio::runtime::Runtime, m: &Master, fleet: Vec<(String, FleetNode)>) {
    let (mut dbs, rest): (Vec<_>, Vec<_>) =
        fleet.into_iter().partition(|(h, _)| h.starts_with("db"));
    let (mut lbs, _rest): (Vec<_>, Vec<_>) =
        rest.into_iter().partition(|(h, _)| h.starts_with("lb"));
    if dbs.is_empty() || lbs.is_empty() {
        return;
    }
    for (_, n) in dbs.iter_mut() {
        let mut f: serde_json::Value = serde_json::from_slice(&n.facts_json).unwrap();
        f["external"] = serde_json::json!({"bench_rack": "r2"});
        n.facts_json = serde_json::to_vec(&f).unwrap();
    }
    let t = Instant::now();
    fleet_pass(rt, m, &mut dbs, checkin_pass);
    let db_s = t.elapsed().as_secs_f64();
    let proc_dir = master_proc(&m.data);
    let cpu = || proc_dir.as_deref().map_or(0.0, checkin_rate::cpu_secs);
    let (c0, t) = (cpu(), Instant::now());
    let r = fleet_pass(rt, m, &mut lbs, checkin_pass);
    let (lb_s, lb_cpu) = (t.elapsed().as_secs_f64(), cpu() - c0);
    let new = r.iter().filter(|(u, _)| !u).count();
    println!(
        "fleet: {} db nodes changed a fact no fleet() query reads ({db_s:.1} s); then {} lb \
         check-ins in {lb_s:.1} s, master CPU {lb_cpu:.2} s ({:.0} us each): {new} new catalogs \
         (must be 0)",
        dbs.len(),
        lbs.len(),
        lb_cpu / lbs.len() as f64 * 1e6,
    );
    assert_eq!(new, 0, "an lb catalog changed for a fact it does not read");
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

    // The master's data directory on a tmpfs unless told otherwise: every
    // enrolment commits the CA's database and fsyncs its audit log, ~20 ms
    // each on this machine's loaded disk (200 s for 10,000 nodes); memory
    // and check-in figures do not depend on it (redb reads and writes the
    // file, it does not map it, so the tmpfs pages are not the master's RSS).
    let tmp = std::env::var("TROUPE_BENCH_TMP").unwrap_or_else(|_| "/dev/shm".into());
    let opts = MasterOptions {
        modules: Some(modules),
        extra_args: vec![],
    };
    let m = if !tmp.is_empty() && std::path::Path::new(&tmp).is_dir() {
        println!("master data directory under {tmp} (TROUPE_BENCH_TMP= for the default temp dir)");
        Master::start_in(std::path::Path::new(&tmp), opts)
    } else {
        Master::start_with(opts)
    };
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
    let figures = (nodes > 0).then(|| fleet_phase(&rt, &m, &facts, nodes));
    {
        // Catalogs that list other nodes (fleet()) changed while the fleet
        // (or, without it, the later agents) enrolled: the agents take
        // their current one before the phases that expect "unchanged".
        rt.block_on(async {
            for a in agents.iter_mut() {
                let r = a
                    .client
                    .get_catalog(CatalogRequest {
                        facts_json: serde_json::to_vec(&a.facts).unwrap(),
                        have_hash: a.have.clone(),
                        environment: String::new(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|e| panic!("check-in failed: {e}\n{}", m.log()))
                    .into_inner();
                a.have = r.catalog_hash;
            }
        });
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
    if let Some(f) = &figures {
        println!(
            "unchanged check-ins with {} nodes cached: {:.0}/s each on a new TLS connection \
             (fleet pass), see `unchanged` above for persistent connections (goal >= 10,000/s)",
            f.nodes, f.unchanged_per_s
        );
    }
    checkin_rate::rate_phase(&rt, &m, master_proc(&m.data), &facts);
    if let Some(f) = figures {
        // The peer, measured now that the master is idle (one after the
        // other: the two never share the cores).
        let peer = puppetserver_rss(&repo);
        print_memory_comparison(&f, peer.as_ref());
    }
}

/// What `bench/peers/puppetserver_rss.sh` measured: puppetserver 7.9's
/// resident memory idle, after `warm` nodes and after `warm + k` nodes.
struct PeerRss {
    heap: String,
    warm: u64,
    k: u64,
    idle_kib: f64,
    after_kib: f64,
    slope_kib: f64,
    resources: u64,
}

/// Parses the script's summary line (`puppetserver_rss key=value ...`).
fn parse_peer_rss(line: &str) -> Option<PeerRss> {
    let rest = line.strip_prefix("puppetserver_rss ")?;
    let kv: std::collections::HashMap<&str, &str> = rest
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let num = |k: &str| kv.get(k)?.parse::<f64>().ok();
    Some(PeerRss {
        heap: kv.get("heap")?.to_string(),
        warm: num("warm")? as u64,
        k: num("k")? as u64,
        idle_kib: num("idle_kib")?,
        after_kib: num("after_kib")?,
        slope_kib: num("slope_kib_per_node")?,
        resources: num("resources")? as u64,
    })
}

/// Runs `bench/peers/puppetserver_rss.sh` (puppetserver on 127.0.0.1, as
/// root; `TROUPE_BENCH_PUPPETSERVER=0` skips it, `=install` lets it install
/// the Debian package), echoing its output; `None` when it could not run.
fn puppetserver_rss(repo: &std::path::Path) -> Option<PeerRss> {
    let mode = std::env::var("TROUPE_BENCH_PUPPETSERVER").unwrap_or_default();
    if mode == "0" {
        println!("puppetserver: not measured (TROUPE_BENCH_PUPPETSERVER=0)");
        return None;
    }
    let script = repo.join("bench/peers/puppetserver_rss.sh");
    println!(
        "puppetserver: measuring its memory in this run ({}; ~5-10 min)",
        script.display()
    );
    let out = std::process::Command::new("bash")
        .arg(&script)
        .env("INSTALL", if mode == "install" { "1" } else { "0" })
        .stderr(std::process::Stdio::inherit())
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            println!("puppetserver: {} did not run: {e}", script.display());
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = None;
    for line in text.lines() {
        println!("{line}");
        if let Some(p) = parse_peer_rss(line) {
            found = Some(p);
        }
    }
    if found.is_none() {
        println!(
            "puppetserver: not measured ({} exited {})",
            script.display(),
            out.status
        );
    }
    found
}

/// The memory figure beside the peer's: from this run when the peer ran,
/// else the 2026-11-22 figure, labelled so.
fn print_memory_comparison(f: &FleetFigures, peer: Option<&PeerRss>) {
    let total_kib = f.after_kib / f.nodes as f64;
    match peer {
        Some(p) => {
            // puppetserver keeps no per-node data in memory (no PuppetDB:
            // facts and catalogs go to its yaml cache on disk): its
            // resident memory serving N nodes is its RSS, whatever N; the
            // slope says how flat it is.
            let p_total = p.after_kib / f.nodes as f64;
            println!(
                "memory per node at {n} nodes, same run: troupe master {:.1} KB per node \
                 (RSS after minus before; goal <= 16 KB), {total_kib:.1} KB whole RSS / {n}; \
                 puppetserver 7.9 ({heap}, {res}-resource catalogs, RSS {:.0} MB idle, {:.0} MB \
                 after {m} distinct nodes, {:+.2} KB per node over the last {k}) {p_total:.1} KB \
                 whole RSS / {n}: troupe's growth {:.3}x puppetserver's whole RSS per node, \
                 whole RSS against whole RSS {:.3}x",
                f.kib_per_node,
                p.idle_kib / 1024.0,
                p.after_kib / 1024.0,
                p.slope_kib,
                f.kib_per_node / p_total,
                total_kib / p_total,
                n = f.nodes,
                heap = p.heap,
                res = p.resources,
                m = p.warm + p.k,
                k = p.k,
            );
        }
        None => {
            // Not measured here: the 2026-11-22 run of ../shared/bench/peers
            // (`run.sh server`, heap 2 GiB): 1,950 MB whatever the node count.
            let puppet_kib = 1950.0 * 1024.0 / f.nodes as f64;
            println!(
                "memory per node at {} nodes: troupe master {:.1} KB (goal <= 16 KB), \
                 {total_kib:.1} KB whole RSS / nodes; puppetserver 7.9 NOT MEASURED IN THIS RUN: \
                 {:.0} KB from its 2026-11-22 run (1,950 MB RSS, 2 GiB heap, \
                 ../shared/bench/peers) = {:.3}x",
                f.nodes,
                f.kib_per_node,
                puppet_kib,
                f.kib_per_node / puppet_kib
            );
        }
    }
}
