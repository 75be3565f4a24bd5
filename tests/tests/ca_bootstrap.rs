//! End-to-end: agents join a real master on loopback.

use std::time::Duration;
use troupe_tests::{Master, has_mode, run, wait_until};

#[test]
fn bootstrap_with_good_psk() {
    let m = Master::start();
    let psk = m.psk("web1");
    assert_eq!(psk.len(), 64, "the PSK is the only line on stdout");
    let out = m.bootstrap("web1", Some(&psk));
    out.assert_success();
    assert!(out.stderr.contains("bootstrapped web1"), "{out:?}");
    let st = m.agent_state("web1");
    assert!(has_mode(&st, 0o700));
    assert!(has_mode(&st.join("key.pem"), 0o600));
    for f in ["cert.pem", "ca.pem", "crl.pem"] {
        assert!(st.join(f).exists(), "{f}");
    }
    let id = troupe_identity::Identity::load(&st).unwrap();
    assert_eq!(id.name, "web1");
    assert_eq!(id.ca_der, m.ca_der());
    let list = m.list_all();
    let entries = list.as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["host"] == "web1"
            && e["state"] == "signed"
            && e["id"] == id.serial.as_str())
    );
    assert!(
        entries
            .iter()
            .any(|e| e["host"] == "web1" && e["state"] == "psk-used")
    );
    // The PSK never reaches the master's files or log.
    let audit = std::fs::read_to_string(m.data.join("ca/audit.log")).unwrap();
    assert!(audit.contains("\"autosign\""));
    assert!(!audit.contains(&psk));
    assert!(!m.log().contains(&psk));
}

#[test]
fn wrong_fingerprint_is_never_trusted() {
    let m = Master::start();
    let psk = m.psk("web1");
    let cmd = m.bootstrap_command("web1", Some(&psk));
    // Replace the fingerprint argument with another CA's.
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut cmd2 = std::process::Command::new(cmd.get_program());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        cmd2.arg(a);
        if a == "--ca-fingerprint" {
            it.next();
            cmd2.arg("AA".repeat(32));
        }
    }
    let out = run(&mut cmd2);
    out.assert_failure_containing("pinned fingerprint");
    assert!(!m.agent_state("web1").join("ca.pem").exists());
    // The PSK was not consumed: the real bootstrap still works.
    m.bootstrap("web1", Some(&psk)).assert_success();
}

#[test]
fn pending_then_signed_by_operator() {
    let m = Master::start();
    let child = m
        .bootstrap_command("web2", None)
        .env("TROUPE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let child = troupe_tests::Proc(child);
    wait_until(Duration::from_secs(20), "the pending request", || {
        m.ca_ok(&["list", "--pending"]).contains("web2")
    });
    let key_pem = std::fs::read_to_string(m.agent_state("web2").join("key.pem")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    use sha2::Digest;
    let fp = hex::encode(sha2::Sha256::digest(
        rcgen::PublicKeyData::subject_public_key_info(&key),
    ));
    assert!(m.ca_ok(&["list", "--pending"]).contains(&fp));
    // Not signed yet: no certificate on the agent side.
    assert!(!m.agent_state("web2").join("cert.pem").exists());
    let signed = m.ca_ok(&["sign", "web2"]);
    assert!(signed.contains("signed web2"));
    let mut child = child;
    let status = {
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "agent did not finish"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut err = String::new();
    use std::io::Read;
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("pending"), "{err}");
    // The agent showed the key fingerprint the operator saw.
    assert!(err.contains(&fp), "{err}");
    assert!(err.contains("bootstrapped web2"), "{err}");
    let id = troupe_identity::Identity::load(&m.agent_state("web2")).unwrap();
    assert_eq!(id.name, "web2");
    assert!(m.ca_ok(&["list", "--pending"]).contains("(nothing)"));
}

#[test]
fn pending_then_rejected_ends_with_clear_message() {
    let m = Master::start();
    let child = m
        .bootstrap_command("web3", None)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(20), "the pending request", || {
        m.ca_ok(&["list", "--pending"]).contains("web3")
    });
    m.ca_ok(&["reject", "web3"]);
    let out: troupe_tests::Out = child.wait_with_output().unwrap().into();
    out.assert_failure_containing("rejected by an operator");
    assert!(!m.agent_state("web3").join("cert.pem").exists());
    // Signing a rejected request is refused.
    m.ca(&["sign", "web3"])
        .assert_failure_containing("no pending certificate request");
}

#[test]
fn pending_wait_limit_gives_up_clearly() {
    let m = Master::start();
    let out = run(m.bootstrap_command("web4", None).args(["--wait", "1s"]));
    out.assert_failure_containing("gave up");
    assert!(out.stderr.contains("troupe ca sign web4"), "{out:?}");
    // Running again resumes with the same key: still the same pending request.
    let out2 = run(m.bootstrap_command("web4", None).args(["--wait", "1s"]));
    out2.assert_failure_containing("gave up");
    assert_eq!(m.ca_ok(&["list", "--pending"]).matches("web4").count(), 1);
}

#[test]
fn renewal_over_mtls_replaces_the_certificate() {
    let m = Master::start();
    let psk = m.psk("web5");
    m.bootstrap("web5", Some(&psk)).assert_success();
    let st = m.agent_state("web5");
    let before = troupe_identity::Identity::load(&st).unwrap();
    // Not due: a fresh certificate is kept.
    let out = m.agent_cmd("web5", "renew", &[]);
    out.assert_success();
    assert!(out.stderr.contains("not due"), "{out:?}");
    let out = m.agent_cmd("web5", "renew", &["--force"]);
    out.assert_success();
    let after = troupe_identity::Identity::load(&st).unwrap();
    assert_ne!(after.serial, before.serial);
    assert!(has_mode(&st.join("key.pem"), 0o600));
    // The superseded certificate is revoked; the new one works.
    let list = m.list_all();
    let entries = list.as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["id"] == before.serial.as_str() && e["state"] == "revoked")
    );
    assert!(
        entries
            .iter()
            .any(|e| e["id"] == after.serial.as_str() && e["state"] == "signed")
    );
    m.agent_cmd("web5", "renew", &["--force"]).assert_success();
}

#[test]
fn renewal_is_due_with_short_lived_certificates() {
    // Certificates valid 3 minutes: with less than a third left... a fresh
    // one has all of it, so check the threshold logic on the real identity.
    let m = Master::start_with(troupe_tests::MasterOptions {
        extra_args: vec!["--cert-ttl".into(), "90s".into()],
        ..Default::default()
    });
    let psk = m.psk("web6");
    m.bootstrap("web6", Some(&psk)).assert_success();
    let id = troupe_identity::Identity::load(&m.agent_state("web6")).unwrap();
    // not_before is backdated 5 minutes, so a 90 s certificate is due now.
    assert!(id.renewal_due(troupe_pki::util::now()));
    let out = m.agent_cmd("web6", "renew", &[]);
    out.assert_success();
    assert!(out.stderr.contains("renewed"), "{out:?}");
}

#[test]
fn ca_survives_restart_and_cli_works_offline() {
    let mut m = Master::start();
    let fp = m.fingerprint();
    let psk = m.psk("web7");
    m.bootstrap("web7", Some(&psk)).assert_success();
    m.stop();
    // With no master running, `troupe ca` works on the CA directly.
    let offline_psk = m.psk("web8");
    assert!(m.ca_ok(&["list"]).contains("web7"));
    m.resume(&Default::default());
    // Same CA, same records; the agent still authenticates.
    assert_eq!(m.fingerprint(), fp);
    m.agent_cmd("web7", "renew", &[]).assert_success();
    m.bootstrap("web8", Some(&offline_psk)).assert_success();
    // A second master on the same data directory is refused clearly.
    let out = troupe_tests::run(
        std::process::Command::new(troupe_tests::troupe_bin())
            .args(["master", "--listen", "127.0.0.1:0", "--data"])
            .arg(&m.data),
    );
    assert!(!out.success());
    assert!(out.stderr.contains("another master"), "{out:?}");
}
