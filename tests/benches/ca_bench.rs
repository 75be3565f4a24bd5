//! CA throughput and bootstrap latency, printed as figures.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! cargo bench -p troupe-tests --bench ca_bench      # N=500 by default
//! TROUPE_BENCH_N=2000 cargo bench -p troupe-tests --bench ca_bench
//! ```
//!
//! Reference: puppetserver signed ~500 CSRs in ~5 s (~100/s) in its own
//! bulk-sign test.

use std::time::{Duration, Instant};
use troupe_proto::v1::SubmitCsrRequest;
use troupe_proto::v1::certificate_status::State;
use troupe_tests::{Master, make_csr};

fn n() -> usize {
    std::env::var("TROUPE_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

fn pct(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    troupe_pki::tls::install_crypto_provider();
    let n = n();
    println!("troupe CA benchmark (N = {n})");

    // 1. In-process: the CA's own signing path (CSR checks, PSK check,
    //    redb commit, audit log fsync), one CSR at a time.
    {
        let d = tempfile::tempdir().unwrap();
        let ca = troupe_pki::Authority::open(&d.path().join("ca"), Default::default()).unwrap();
        let reqs: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let host = format!("node{i}");
                let psk = ca.new_psk(&host, 3600).unwrap();
                let (_, csr) = make_csr(&host, Some(&psk));
                (host, csr)
            })
            .collect();
        let t = Instant::now();
        for (host, csr) in &reqs {
            match ca.submit_csr(host, csr, "bench").unwrap() {
                troupe_pki::SubmitOutcome::Signed(_) => {}
                other => panic!("{other:?}"),
            }
        }
        let e = t.elapsed();
        println!(
            "in-process autosign:      {n} CSRs in {:.2} s = {:.0} CSRs/s",
            e.as_secs_f64(),
            n as f64 / e.as_secs_f64()
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    // 2. Over gRPC/TLS against a real master process, 16 in flight.
    {
        let m = Master::start();
        let reqs: Vec<(String, Vec<u8>)> = (0..n)
            .map(|i| {
                let host = format!("grpc{i}");
                let psk = m.psk_fast(&host);
                let (_, csr) = make_csr(&host, Some(&psk));
                (host, csr)
            })
            .collect();
        let e = rt.block_on(async {
            let client = m.ca_client().await;
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
            let t = Instant::now();
            let mut tasks = Vec::new();
            for (host, csr) in reqs {
                let mut c = client.clone();
                let permit = sem.clone().acquire_owned().await.unwrap();
                tasks.push(tokio::spawn(async move {
                    let r = c
                        .submit_csr(SubmitCsrRequest { name: host, csr })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(r.state, State::Signed as i32);
                    drop(permit);
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            t.elapsed()
        });
        println!(
            "master over gRPC/TLS:     {n} CSRs in {:.2} s = {:.0} CSRs/s (puppetserver: ~500 in ~5 s = ~100/s)",
            e.as_secs_f64(),
            n as f64 / e.as_secs_f64()
        );
    }

    // 3. Bootstrap round trip, in process: pinned TLS connect, CA + CRL
    //    fetch, key generation, CSR, autosign, checks, files written.
    {
        let m = Master::start();
        let fp = m.fingerprint();
        let k = 50.min(n);
        let mut times = Vec::new();
        for i in 0..k {
            let host = format!("boot{i}");
            let psk = m.psk_fast(&host);
            let args = troupe_agent::bootstrap::Args {
                server: m.url.clone(),
                name: host.clone(),
                psk: Some(psk),
                ca_fingerprint: fp.clone(),
                state: m.agent_state(&host),
                poll_initial: "1s".parse().unwrap(),
                poll_max: "1s".parse().unwrap(),
                wait: None,
                retry_for: "5m".parse().unwrap(),
            };
            let t = Instant::now();
            rt.block_on(troupe_agent::bootstrap::bootstrap(&args))
                .unwrap();
            times.push(t.elapsed());
        }
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        println!(
            "bootstrap (in process):   {k} hosts, mean {:.1} ms, p50 {:.1} ms, p95 {:.1} ms",
            mean.as_secs_f64() * 1e3,
            pct(times.clone(), 0.5).as_secs_f64() * 1e3,
            pct(times, 0.95).as_secs_f64() * 1e3
        );

        // 4. The same with the real `troupe-agent bootstrap` process.
        let k = 20.min(n);
        let mut times = Vec::new();
        for i in 0..k {
            let host = format!("proc{i}");
            let psk = m.psk_fast(&host);
            let mut cmd = m.bootstrap_command(&host, Some(&psk));
            let t = Instant::now();
            let out = troupe_tests::run(&mut cmd);
            times.push(t.elapsed());
            out.assert_success();
        }
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        println!(
            "bootstrap (agent binary): {k} hosts, mean {:.1} ms, p50 {:.1} ms, p95 {:.1} ms",
            mean.as_secs_f64() * 1e3,
            pct(times.clone(), 0.5).as_secs_f64() * 1e3,
            pct(times, 0.95).as_secs_f64() * 1e3
        );
    }
}
