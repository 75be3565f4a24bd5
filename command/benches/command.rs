//! Throughput of the command path's local work: signing, verifying (with the
//! durable replay-cache commit), refusing forgeries, and audit appends.
//! Prints figures; asserts nothing about speed.
//!
//! `cargo bench -p troupe-command --bench command` (add `--profile dev` for
//! a quick build; dependencies are optimised in dev too).

use std::collections::BTreeMap;
use std::time::Instant;

use troupe_base::audit::AuditLog;
use troupe_bastion::FileSigner;
use troupe_command::envelope::{ArgValue, Command, TargetFilter};
use troupe_command::keys::Signer;
use troupe_command::verify::{CommandAudit, HostContext, TrustedSigners, Verifier};
use troupe_command::{Policy, Registry};

const NOW: i64 = 1_800_000_000;

fn report(name: &str, n: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<44} {n:>6} ops  {:>10.1} µs/op  {:>10.0} ops/s",
        secs * 1e6 / n as f64,
        n as f64 / secs
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut alice = FileSigner::generate().expect("key");
    let mut mallory = FileSigner::generate().expect("key");
    let mut trusted = TrustedSigners::default();
    trusted.add("alice", alice.key_id().clone()).expect("trust");
    let policy = Policy::from_toml(
        "[[rule]]\neffect = \"allow\"\nsigners = [\"alice\"]\nactions = [\"*\"]\n",
    )
    .expect("policy");
    let host = HostContext {
        name: "web-01".into(),
        role: Some("web".into()),
        facts: BTreeMap::new(),
    };
    let verifier = Verifier::new(
        trusted,
        Registry::builtin(),
        policy,
        &dir.path().join("replay.redb"),
        host,
    )
    .expect("verifier");
    let args: BTreeMap<String, ArgValue> = [
        ("name".to_string(), ArgValue::Str("nginx".into())),
        ("version".to_string(), ArgValue::Str("1.24.0-1".into())),
    ]
    .into();

    let n = 2000;
    let start = Instant::now();
    let mut wires = Vec::with_capacity(n);
    for _ in 0..n {
        let c = Command::new(
            alice.key_id().clone(),
            "package.install",
            args.clone(),
            TargetFilter::default(),
            NOW,
            60,
        )
        .expect("cmd");
        wires.push(c.sign(&mut alice).expect("sign").to_wire());
    }
    report("build + sign (key file)", n, start);

    let start = Instant::now();
    for w in &wires {
        verifier.verify_wire(w, NOW).expect("verify");
    }
    report("verify accepted (incl. durable replay commit)", n, start);

    let start = Instant::now();
    for w in &wires {
        assert!(verifier.verify_wire(w, NOW).is_err());
    }
    report("verify replayed (refused)", n, start);

    let forged: Vec<Vec<u8>> = wires
        .iter()
        .map(|w| {
            let mut f = w.clone();
            let body_len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
            let sig = mallory.sign(&f[4..4 + body_len]).expect("sign").to_bytes();
            let l = f.len();
            f[l - 64..].copy_from_slice(&sig);
            f
        })
        .collect();
    let start = Instant::now();
    for w in &forged {
        assert!(verifier.verify_wire(w, NOW).is_err());
    }
    report("verify forged (refused, no disk write)", n, start);

    let mut log = AuditLog::open(&dir.path().join("audit.log")).expect("audit");
    let registry = Registry::builtin();
    let c = Command::new(
        alice.key_id().clone(),
        "package.install",
        args,
        TargetFilter::default(),
        NOW,
        60,
    )
    .expect("cmd");
    let entry = CommandAudit::new(Some(&c), &registry, "allowed", "rule #1");
    let m = 500;
    let start = Instant::now();
    for _ in 0..m {
        log.append(&entry).expect("append");
    }
    report("audit append (fsync + head replace)", m, start);
    let batch = vec![entry.clone(); 1000];
    let start = Instant::now();
    for _ in 0..10 {
        log.append_many(&batch).expect("append");
    }
    report(
        "audit append_many (1000 per fsync)",
        10 * batch.len(),
        start,
    );
    let start = Instant::now();
    let r = troupe_base::audit::verify(&dir.path().join("audit.log")).expect("verify");
    report("audit verify (per record)", r.records as usize, start);
}
