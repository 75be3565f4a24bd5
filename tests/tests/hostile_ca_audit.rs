//! Hostile input, end to end: a flood of refused, unauthenticated CSRs
//! cannot grow the CA's audit log (`DATA/ca/audit.log`) without bound.
//! Repeats from one address are counted into one `refuse_repeated` record;
//! the log rotates at `--ca-audit-max-bytes` keeping `--ca-audit-keep`
//! files; every file is hash-chained and passes `troupe audit verify`, and
//! a tampered line fails it.

use std::path::Path;
use troupe_proto::v1::SubmitCsrRequest;
use troupe_tests::{Master, MasterOptions, Out, run, tally, troupe_bin};

fn master(args: &[&str]) -> Master {
    Master::start_with(MasterOptions {
        extra_args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

/// The entries (`record.entry`) of a chained log.
fn entries(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["record"]["entry"].clone()
        })
        .collect()
}

fn verify(path: &Path) -> Out {
    run(std::process::Command::new(troupe_bin())
        .args(["audit", "verify"])
        .arg(path))
}

/// Sends `n` garbage CSRs for web1 over one anonymous connection; each is
/// refused.
async fn flood(m: &Master, n: usize) {
    let mut c = m.ca_client().await;
    for i in 0..n {
        let e = c
            .submit_csr(SubmitCsrRequest {
                name: "web1".into(),
                csr: format!("not a CSR {i}").into_bytes(),
            })
            .await
            .expect_err("garbage CSR accepted");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refusal_flood_from_one_source_is_counted_in_one_record() {
    let m = master(&["--ca-audit-refusal-window", "2s"]);
    let log = m.data.join("ca/audit.log");
    let before_len = std::fs::metadata(&log).unwrap().len();
    let before = entries(&log).len();
    let start = std::time::Instant::now();
    flood(&m, 300).await;
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "the flood outlasted the window; the counts below assume it did not"
    );
    // One record for 300 refusals, a few hundred bytes.
    let after = entries(&log);
    assert_eq!(after.len(), before + 1, "{after:#?}");
    assert_eq!(after[before]["event"], "refuse");
    assert_eq!(
        after[before]["detail"]["source"]
            .as_str()
            .map(|s| s.starts_with("127.0.0.1:")),
        Some(true)
    );
    let grown = std::fs::metadata(&log).unwrap().len() - before_len;
    assert!(grown < 1024, "300 refusals grew the log by {grown} bytes");
    tally::hostile(
        "ca-audit",
        "300 refused CSRs from one address: one record",
        true,
    );

    // The window closes: the next refusal writes the count of the 299
    // repeats, then itself.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    flood(&m, 1).await;
    let after = entries(&log);
    assert_eq!(after.len(), before + 3, "{after:#?}");
    let counted = &after[before + 1];
    assert_eq!(counted["event"], "refuse_repeated");
    assert_eq!(counted["detail"]["count"], 299);
    assert_eq!(counted["detail"]["source"], "127.0.0.1");
    assert_eq!(counted["host"], "web1");
    assert_eq!(after[before + 2]["event"], "refuse");
    tally::hostile(
        "ca-audit",
        "repeated refusals written as one exact count",
        true,
    );

    // The chain verifies; a tampered copy does not.
    verify(&log).assert_success();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("\"count\":299"));
    std::fs::write(&copy, text.replace("\"count\":299", "\"count\":298")).unwrap();
    std::fs::copy(
        m.data.join("ca/audit.log.head"),
        dir.path().join("audit.log.head"),
    )
    .unwrap();
    let bad = verify(&copy);
    assert!(
        bad.code != Some(0),
        "a tampered CA audit log verified: {bad:?}"
    );
    assert!(bad.stderr.contains("tampered"), "{bad:?}");
    tally::hostile("ca-audit", "tampered count in the CA audit log", true);

    // Repeats still counted when the master stops are written at shutdown.
    let n = entries(&log).len();
    flood(&m, 5).await;
    assert_eq!(
        entries(&log).len(),
        n,
        "repeats inside the window were written"
    );
    let mut m = m;
    assert_eq!(m.terminate(), Some(0), "{}", m.log());
    let after = entries(&log);
    assert_eq!(after.len(), n + 1, "{after:#?}");
    assert_eq!(after[n]["event"], "refuse_repeated");
    assert_eq!(after[n]["detail"]["count"], 5);
    verify(&log).assert_success();
    tally::hostile("ca-audit", "counted refusals written at shutdown", true);
}

#[tokio::test(flavor = "multi_thread")]
async fn ca_audit_log_rotates_at_its_limit_and_each_file_verifies() {
    // Window 0: every refusal is written, so the log must rotate.
    let m = master(&[
        "--ca-audit-refusal-window",
        "0s",
        "--ca-audit-max-bytes",
        "4096",
        "--ca-audit-keep",
        "2",
    ]);
    flood(&m, 120).await;
    let log = m.data.join("ca/audit.log");
    let files = [
        log.clone(),
        m.data.join("ca/audit.log.1"),
        m.data.join("ca/audit.log.2"),
    ];
    assert!(
        !m.data.join("ca/audit.log.3").exists(),
        "more files kept than --ca-audit-keep"
    );
    let mut total = 0;
    for f in &files {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len < 4096 + 1024, "{} holds {len} bytes", f.display());
        total += len;
        verify(f).assert_success();
    }
    assert!(total < 3 * (4096 + 1024));
    // The new chain names the last hash of the previous file.
    let first = &entries(&log)[0];
    assert_eq!(first["event"], "rotated", "{first:#}");
    let prev_head: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(m.data.join("ca/audit.log.1.head")).unwrap())
            .unwrap();
    assert_eq!(first["detail"]["previous"], "audit.log.1");
    assert_eq!(first["detail"]["previous_hash"], prev_head["hash"]);
    assert_eq!(first["detail"]["previous_seq"], prev_head["seq"]);
    tally::hostile(
        "ca-audit",
        "120 logged refusals: rotated, bounded, each file verifies",
        true,
    );
}
