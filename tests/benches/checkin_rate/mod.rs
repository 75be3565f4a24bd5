//! The rate phase of `checkin_bench` (issue 20 item 1b): unchanged
//! check-ins per second, and what each costs the master in CPU time.
//!
//! The simulated agents live in the bench process and share the machine's
//! cores with the master, so the wall-clock rate depends on them and on
//! whatever else runs; the master's own CPU time per check-in (utime +
//! stime of its process, from /proc) does not: 200 us of master CPU per
//! check-in is 10,000 check-ins/s on 2 cores. Three ways of checking in:
//!
//! - `persistent`: each agent keeps one HTTP/2 connection and asks again on
//!   it (what a client holding its channel does);
//! - `new conn, resumed`: a new TCP + TLS connection per check-in, the
//!   agent's TLS client config (and so its session cache) kept between
//!   them, as the agent daemon does between runs: the handshake resumes
//!   the last session (TLS 1.3 PSK with a fresh ECDHE) when the master
//!   allows it, else it is a full one;
//! - `new conn, full`: the same with resumption off on the client, so every
//!   check-in is a full mutual-TLS handshake (certificate verify and CRL
//!   check both ways);
//! - `run, 1 conn`: what one agent run asks of the master, on one new
//!   (resumed) connection as the agent now does: the CRL, the catalog
//!   ("unchanged") and the run's report;
//! - `run, 3 conns`: the same three calls, each on a new (resumed)
//!   connection, as the agent did before session 8 (certificate upkeep,
//!   catalog source and report sink each opened their own). These two
//!   print the master's CPU per run.
//!
//! Knobs: `TROUPE_BENCH_RATE_AGENTS` (200), `TROUPE_BENCH_RATE_SECS` (5),
//! `TROUPE_BENCH_RATE_CONC` (32 check-ins in flight),
//! `TROUPE_BENCH_RATE_MODES` (all: `persistent,resumed,full,run1,run3`),
//! `TROUPE_BENCH_RATE=0` skips the phase.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use troupe_proto::v1::catalog_client::CatalogClient;
use troupe_proto::v1::{CatalogRequest, ReportRequest, SubmitCsrRequest};
use troupe_tests::{Master, make_csr};

/// CPU time (user + system, seconds) of the process whose /proc
/// directory is `proc_dir`, threads that ended included.
pub(super) fn cpu_secs(proc_dir: &Path) -> f64 {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count from its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after ')'.
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // Clock ticks are 1/100 s on Linux (`getconf CLK_TCK`).
    (ticks(11) + ticks(12)) / 100.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Persistent,
    Resumed,
    Full,
    RunOne,
    RunThree,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent",
            Mode::Resumed => "new conn, resumed",
            Mode::Full => "new conn, full",
            Mode::RunOne => "run, 1 conn",
            Mode::RunThree => "run, 3 conns",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent",
            Mode::Resumed => "resumed",
            Mode::Full => "full",
            Mode::RunOne => "run1",
            Mode::RunThree => "run3",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Mode::RunOne | Mode::RunThree => "run",
            _ => "check-in",
        }
    }
}

/// One agent run's calls (CRL, catalog "unchanged", report) on `conns` new
/// resumed connections (1: all on one; 3: one each).
async fn agent_run(url: &str, a: &RateAgent, conns: usize) -> Result<(), tonic::Status> {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut chans = Vec::with_capacity(conns);
    let connect = || async {
        troupe_identity::connect_with((*a.tls).clone(), url)
            .await
            .map_err(|e| tonic::Status::unavailable(format!("{e:#}")))
    };
    chans.push(connect().await?);
    troupe_proto::v1::ca_client::CaClient::new(chans[0].clone())
        .get_crl(troupe_proto::v1::Empty {})
        .await?;
    if conns > 1 {
        chans.push(connect().await?);
    }
    unchanged_checkin(&mut CatalogClient::new(chans[chans.len() - 1].clone()), a).await?;
    if conns > 2 {
        chans.push(connect().await?);
    }
    let n = RUNS.fetch_add(1, Ordering::Relaxed);
    let report = serde_json::json!({
        "run_id": format!("20261207T000000.000000Z-{n:08x}"),
        "node": a.host,
        "started": "2026-12-07T00:00:00Z",
        "duration_ms": 1,
        "noop": false,
        "catalog_hash": a.have,
        "environment": "production",
        "code_version": "",
        "from_cache": false,
        "resources": [],
    });
    troupe_proto::v1::reports_client::ReportsClient::new(chans[chans.len() - 1].clone())
        .submit_report(ReportRequest {
            report_json: serde_json::to_vec(&report).unwrap(),
        })
        .await?;
    Ok(())
}

struct RateAgent {
    host: String,
    tls: Arc<rustls::ClientConfig>,
    /// The same identity with client-side resumption off.
    tls_full: Arc<rustls::ClientConfig>,
    facts_json: Vec<u8>,
    have: String,
}

async fn channel(url: &str, tls: &rustls::ClientConfig) -> tonic::transport::Channel {
    troupe_identity::connect_with(tls.clone(), url)
        .await
        .unwrap_or_else(|e| panic!("connect: {e:#}"))
}

/// Checks in once on `client`; panics unless the answer is "unchanged".
async fn unchanged_checkin(
    client: &mut CatalogClient<tonic::transport::Channel>,
    a: &RateAgent,
) -> Result<(), tonic::Status> {
    let r = client
        .get_catalog(CatalogRequest {
            facts_json: a.facts_json.clone(),
            have_hash: a.have.clone(),
            environment: String::new(),
            ..Default::default()
        })
        .await?
        .into_inner();
    if !r.unchanged {
        return Err(tonic::Status::data_loss(format!(
            "{}: not \"unchanged\"",
            a.host
        )));
    }
    Ok(())
}

/// `conc` workers check in for `secs` seconds, each taking the next agent
/// in turn; returns (check-ins, errors).
async fn run_mode(
    url: Arc<String>,
    agents: Arc<Vec<RateAgent>>,
    persistent: Arc<Vec<CatalogClient<tonic::transport::Channel>>>,
    mode: Mode,
    conc: usize,
    secs: u64,
) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (stop, next, agents, url, persistent) = (
            stop.clone(),
            next.clone(),
            agents.clone(),
            url.clone(),
            persistent.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed) % agents.len();
                let a = &agents[i];
                let r = match mode {
                    Mode::Persistent => {
                        let mut c = persistent[i].clone();
                        unchanged_checkin(&mut c, a).await
                    }
                    Mode::RunOne => agent_run(&url, a, 1).await,
                    Mode::RunThree => agent_run(&url, a, 3).await,
                    Mode::Resumed | Mode::Full => {
                        let cfg = if mode == Mode::Resumed {
                            &a.tls
                        } else {
                            &a.tls_full
                        };
                        match troupe_identity::connect_with((**cfg).clone(), &url).await {
                            Ok(ch) => unchanged_checkin(&mut CatalogClient::new(ch), a).await,
                            Err(e) => Err(tonic::Status::unavailable(format!("{e:#}"))),
                        }
                    }
                };
                match r {
                    Ok(()) => ok += 1,
                    Err(_) => errors += 1,
                }
            }
            (ok, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await.unwrap();
        ok += o;
        errors += e;
    }
    (ok, errors)
}

/// Whether a second TLS connection with `tls` resumes the first's session
/// (the master issues tickets and accepts them).
async fn resumes(url: &str, tls: &Arc<rustls::ClientConfig>) -> bool {
    let addr = troupe_identity::parse_server(url).unwrap();
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(&addr.authority)
            .await
            .unwrap();
        let c = tokio_rustls::TlsConnector::from(tls.clone());
        let mut s = c.connect(addr.server_name.clone(), tcp).await.unwrap();
        // Tickets come after the handshake: read until the server's
        // HTTP/2 settings arrive so they are taken in.
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
        kinds.push(s.get_ref().1.handshake_kind());
    }
    kinds[1] == Some(rustls::HandshakeKind::Resumed)
}

/// The rate phase: enrols `n` more agents (each with its first check-in,
/// a compile, and a second that must be "unchanged"), then runs each mode
/// for `secs` seconds and prints the rate and the master's CPU time per
/// check-in beside the load average.
pub fn rate_phase(
    rt: &tokio::runtime::Runtime,
    m: &Master,
    master_proc: Option<PathBuf>,
    facts: &serde_json::Value,
) {
    let n = super::env_num("TROUPE_BENCH_RATE_AGENTS", 200) as usize;
    let secs = super::env_num("TROUPE_BENCH_RATE_SECS", 5);
    let conc = super::env_num("TROUPE_BENCH_RATE_CONC", 32) as usize;
    if super::env_num("TROUPE_BENCH_RATE", 1) == 0 || n == 0 {
        return;
    }
    let Some(proc_dir) = master_proc else {
        println!("rate: the master's process was not found; phase skipped");
        return;
    };
    use rustls::pki_types::pem::PemObject;
    let ca_der = m.ca_der();
    let url = Arc::new(m.url.clone());
    let agents: Vec<RateAgent> = rt.block_on(async {
        let ca = m.ca_client().await;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let roles = ["web", "db", "lb", "bastion"];
            let host = format!("{}{i}.rate.example.com", roles[i % roles.len()]);
            let psk = m.psk_fast(&host);
            let (key, csr) = make_csr(&host, Some(&psk));
            let st = ca
                .clone()
                .submit_csr(SubmitCsrRequest {
                    name: host.clone(),
                    csr,
                })
                .await
                .unwrap_or_else(|e| panic!("{host}: csr: {e}\n{}", m.log()))
                .into_inner();
            let cert =
                rustls::pki_types::CertificateDer::from_pem_slice(st.certificate_pem.as_bytes())
                    .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            let tls = troupe_pki::tls::client_config(
                &ca_der,
                vec![],
                Some((vec![cert], key.clone_key())),
            )
            .unwrap();
            let mut tls_full = tls.clone();
            tls_full.resumption = rustls::client::Resumption::disabled();
            let mut f = facts.clone();
            f["hostname"] = serde_json::json!(host.split('.').next().unwrap());
            f["fqdn"] = serde_json::json!(host);
            out.push(RateAgent {
                host,
                tls: Arc::new(tls),
                tls_full: Arc::new(tls_full),
                facts_json: serde_json::to_vec(&f).unwrap(),
                have: String::new(),
            });
        }
        out
    });
    // After every enrolment (catalogs using fleet() change while others
    // enrol): check in until "unchanged".
    let agents = {
        let mut agents = agents;
        // Passes until one is all "unchanged": a node's first check-in
        // changes the fleet() catalogs of those before it.
        for _ in 0..4 {
            let changed = rt.block_on(async {
                let mut changed = 0;
                for a in agents.iter_mut() {
                    let mut c = CatalogClient::new(channel(&url, &a.tls).await)
                        .max_decoding_message_size(troupe_catalog::MAX_CATALOG_BYTES);
                    for _ in 0..3 {
                        let r = c
                            .get_catalog(CatalogRequest {
                                facts_json: a.facts_json.clone(),
                                have_hash: a.have.clone(),
                                environment: String::new(),
                                ..Default::default()
                            })
                            .await
                            .unwrap_or_else(|e| panic!("{}: check-in: {e}\n{}", a.host, m.log()))
                            .into_inner();
                        a.have = r.catalog_hash;
                        if r.unchanged {
                            break;
                        }
                        changed += 1;
                    }
                }
                changed
            });
            if changed == 0 {
                break;
            }
        }
        Arc::new(agents)
    };
    let resumed = rt.block_on(resumes(&url, &agents[0].tls));
    println!(
        "rate: {n} more agents, {conc} check-ins in flight, {secs} s per mode; \
         a second connection {} the first's TLS session",
        if resumed {
            "resumes"
        } else {
            "does NOT resume"
        }
    );
    let me = PathBuf::from("/proc/self");
    let chosen = std::env::var("TROUPE_BENCH_RATE_MODES").unwrap_or_default();
    for mode in [
        Mode::Persistent,
        Mode::Resumed,
        Mode::Full,
        Mode::RunOne,
        Mode::RunThree,
    ] {
        if !chosen.is_empty() && !chosen.split(',').any(|k| k.trim() == mode.key()) {
            continue;
        }
        // Persistent: one channel per agent, opened before the clock starts.
        let persistent = Arc::new(if mode == Mode::Persistent {
            rt.block_on(async {
                let mut v = Vec::with_capacity(agents.len());
                for a in agents.iter() {
                    v.push(CatalogClient::new(channel(&url, &a.tls).await));
                }
                v
            })
        } else {
            Vec::new()
        });
        let load0 = loadavg();
        let (s0, c0) = (cpu_secs(&proc_dir), cpu_secs(&me));
        let t = Instant::now();
        let (ok, errors) = rt.block_on(run_mode(
            url.clone(),
            agents.clone(),
            persistent,
            mode,
            conc,
            secs,
        ));
        let wall = t.elapsed().as_secs_f64();
        let (s1, c1) = (cpu_secs(&proc_dir), cpu_secs(&me));
        let per = |d: f64| if ok > 0 { d / ok as f64 * 1e6 } else { 0.0 };
        let server_us = per(s1 - s0);
        println!(
            "rate {:<18} {ok} unchanged in {wall:.1} s = {:.0}/s wall, errors {errors}; \
             master CPU {server_us:.0} us per {} (= {:.0}/s on 2 cores), \
             bench-side agents {:.0} us; load {load0} -> {}",
            mode.name(),
            ok as f64 / wall,
            mode.unit(),
            if server_us > 0.0 {
                2e6 / server_us
            } else {
                0.0
            },
            per(c1 - c0),
            loadavg(),
        );
    }
}
