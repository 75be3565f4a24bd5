//! The CA's decisions against a real redb store in a temp directory.

use troupe_pki::authority::{Authority, CaError, CaPolicy, ListFilter, PollOutcome, SubmitOutcome};
use troupe_pki::psk::PskError;
use troupe_pki::{build_csr, util};

fn ca() -> (tempfile::TempDir, Authority) {
    let d = tempfile::tempdir().unwrap();
    let a = Authority::open(&d.path().join("ca"), CaPolicy::default()).unwrap();
    (d, a)
}

fn csr(name: &str, psk: Option<&str>) -> (rcgen::KeyPair, Vec<u8>) {
    let k = rcgen::KeyPair::generate().unwrap();
    let der = build_csr(name, &k, psk).unwrap();
    (k, der)
}

fn spki_hash(k: &rcgen::KeyPair) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(k)).to_vec()
}

#[test]
fn ca_files_are_private_and_reopen_with_same_identity() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("ca");
    let fp = Authority::open(&dir, CaPolicy::default())
        .unwrap()
        .fingerprint();
    let mode = std::fs::metadata(dir.join("ca_key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = Authority::open(&dir, CaPolicy::default()).unwrap();
    assert_eq!(again.fingerprint(), fp);
    assert_eq!(util::fingerprint_sha256(again.ca_der()), fp);
}

#[test]
fn autosign_with_psk_then_every_reuse_is_refused() {
    let (_d, a) = ca();
    let secret = a.new_psk("web1", 3600).unwrap();
    let (k, der) = csr("web1", Some(&secret));
    let SubmitOutcome::Signed(cert) = a.submit_csr("web1", &der, "test").unwrap() else {
        panic!("expected autosign")
    };
    let facts = util::cert_facts(&cert.der).unwrap();
    assert_eq!(facts.cn, "web1");
    assert_eq!(facts.serial, cert.serial);
    util::verify_issued_by(&cert.der, a.ca_der()).unwrap();
    assert!(matches!(
        a.poll("web1", &spki_hash(&k)).unwrap(),
        PollOutcome::Signed(_)
    ));
    // A second CSR for the same name while the certificate is valid.
    let (_, der2) = csr("web1", Some(&secret));
    assert!(matches!(
        a.submit_csr("web1", &der2, "test"),
        Err(CaError::AlreadyCertified { .. })
    ));
    // After clean, the used key is still refused, as used.
    a.clean("web1").unwrap();
    let (_, der3) = csr("web1", Some(&secret));
    assert!(matches!(
        a.submit_csr("web1", &der3, "test"),
        Err(CaError::Psk(PskError::AlreadyUsed(_)))
    ));
}

#[test]
fn refusals_change_nothing() {
    let (_d, a) = ca();
    let s1 = a.new_psk("web1", 3600).unwrap();
    let _s2 = a.new_psk("web2", 3600).unwrap();
    let before = a.list(ListFilter::All).unwrap();
    let (_, wrong) = csr("web1", Some(&"0".repeat(64)));
    assert!(matches!(
        a.submit_csr("web1", &wrong, "t"),
        Err(CaError::Psk(PskError::Wrong(_)))
    ));
    let (_, other) = csr("web2", Some(&s1));
    assert!(matches!(
        a.submit_csr("web2", &other, "t"),
        Err(CaError::Psk(PskError::OtherHost { .. }))
    ));
    let (_, mismatch) = csr("web1", Some(&s1));
    assert!(matches!(
        a.submit_csr("web3", &mismatch, "t"),
        Err(CaError::Csr(_))
    ));
    assert_eq!(a.list(ListFilter::All).unwrap(), before);
    // The good key still works afterwards.
    let (_, good) = csr("web1", Some(&s1));
    assert!(matches!(
        a.submit_csr("web1", &good, "t").unwrap(),
        SubmitOutcome::Signed(_)
    ));
}

#[test]
fn expired_psk_refused() {
    let (_d, a) = ca();
    let s = a.new_psk("web1", 1).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, der) = csr("web1", Some(&s));
    assert!(matches!(
        a.submit_csr("web1", &der, "t"),
        Err(CaError::Psk(PskError::Expired(_)))
    ));
}

#[test]
fn pending_sign_reject_and_conflicts() {
    let (_d, a) = ca();
    let (k, der) = csr("web1", None);
    assert!(matches!(
        a.submit_csr("web1", &der, "t").unwrap(),
        SubmitOutcome::Pending
    ));
    // Same key again: still pending, not a conflict.
    let again = build_csr("web1", &k, None).unwrap();
    assert!(matches!(
        a.submit_csr("web1", &again, "t").unwrap(),
        SubmitOutcome::Pending
    ));
    let (_, other_key) = csr("web1", None);
    assert!(matches!(
        a.submit_csr("web1", &other_key, "t"),
        Err(CaError::PendingConflict(_))
    ));
    assert_eq!(a.list(ListFilter::Pending).unwrap().len(), 1);
    assert!(matches!(
        a.poll("web1", &spki_hash(&k)).unwrap(),
        PollOutcome::Pending
    ));
    let cert = a.sign("web1").unwrap();
    assert_eq!(util::cert_facts(&cert.der).unwrap().cn, "web1");
    assert!(matches!(
        a.poll("web1", &spki_hash(&k)).unwrap(),
        PollOutcome::Signed(_)
    ));
    assert!(matches!(a.sign("web1"), Err(CaError::NoPending(_))));

    let (k2, der2) = csr("web2", None);
    a.submit_csr("web2", &der2, "t").unwrap();
    a.reject("web2").unwrap();
    assert!(matches!(
        a.poll("web2", &spki_hash(&k2)).unwrap(),
        PollOutcome::Rejected
    ));
    assert!(matches!(a.sign("web2"), Err(CaError::NoPending(_))));
}

#[test]
fn revoke_puts_serial_on_crl_and_blocks_rejoin_until_clean() {
    let (d, a) = ca();
    let s = a.new_psk("web1", 3600).unwrap();
    let (_, der) = csr("web1", Some(&s));
    let SubmitOutcome::Signed(cert) = a.submit_csr("web1", &der, "t").unwrap() else {
        panic!()
    };
    a.check_peer("web1", &cert.serial).unwrap();
    let crl_before = a.crl_der();
    assert_eq!(a.revoke("web1").unwrap(), vec![cert.serial.clone()]);
    assert!(a.check_peer("web1", &cert.serial).is_err());
    let crl = a.crl_der();
    assert_ne!(crl, crl_before);
    let (_, parsed) = x509_parser::parse_x509_crl(&crl).unwrap();
    let serials: Vec<String> = parsed
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    assert_eq!(serials, vec![cert.serial.clone()]);
    assert!(matches!(a.revoke("web1"), Err(CaError::NoValidCert(_))));
    let s2 = a.new_psk("web1", 3600).unwrap();
    let (_, der2) = csr("web1", Some(&s2));
    assert!(matches!(
        a.submit_csr("web1", &der2, "t"),
        Err(CaError::RevokedHost(_))
    ));
    a.clean("web1").unwrap();
    let s3 = a.new_psk("web1", 3600).unwrap();
    let (_, der3) = csr("web1", Some(&s3));
    assert!(matches!(
        a.submit_csr("web1", &der3, "t").unwrap(),
        SubmitOutcome::Signed(_)
    ));
    // The revoked serial stays on the CRL after clean.
    let pem = std::fs::read(d.path().join("ca/crl.pem")).unwrap();
    let der = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateRevocationListDer::from_pem_slice(&pem).unwrap()
    };
    let (_, parsed) = x509_parser::parse_x509_crl(der.as_ref()).unwrap();
    assert_eq!(parsed.iter_revoked_certificates().count(), 1);
    assert!(matches!(a.clean("nobody"), Err(CaError::UnknownHost(_))));
}

#[test]
fn renew_issues_new_cert_and_supersedes_old() {
    let (_d, a) = ca();
    let s = a.new_psk("web1", 3600).unwrap();
    let (_, der) = csr("web1", Some(&s));
    let SubmitOutcome::Signed(old) = a.submit_csr("web1", &der, "t").unwrap() else {
        panic!()
    };
    let (_, renew_csr) = csr("web1", None);
    let new = a.renew("web1", &old.serial, &renew_csr, "t").unwrap();
    assert_ne!(new.serial, old.serial);
    assert!(a.check_peer("web1", &old.serial).is_err());
    a.check_peer("web1", &new.serial).unwrap();
    // A CSR for another name cannot be renewed with web1's certificate.
    let (_, other) = csr("web2", None);
    assert!(a.renew("web1", &new.serial, &other, "t").is_err());
    assert!(a.renew("web1", &old.serial, &renew_csr, "t").is_err());
}

#[test]
fn audit_log_records_decisions_without_secrets() {
    let (d, a) = ca();
    let s = a.new_psk("web1", 3600).unwrap();
    let (_, bad) = csr("web1", Some("nope"));
    let _ = a.submit_csr("web1", &bad, "t");
    let (_, der) = csr("web1", Some(&s));
    a.submit_csr("web1", &der, "t").unwrap();
    a.revoke("web1").unwrap();
    let log = std::fs::read_to_string(d.path().join("ca/audit.log")).unwrap();
    let events: Vec<String> = log
        .lines()
        .map(|l| {
            // Hash-chained lines (troupe_base::audit): the event is the entry.
            serde_json::from_str::<serde_json::Value>(l).unwrap()["record"]["entry"]["event"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(events, ["psk-new", "refuse", "autosign", "revoke"]);
    let v = troupe_base::audit::verify(&d.path().join("ca/audit.log")).unwrap();
    assert_eq!(v.records, 4);
    assert!(!log.contains(&s));
}

#[test]
fn pending_requests_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    let policy = CaPolicy {
        max_pending: 2,
        ..CaPolicy::default()
    };
    let a = Authority::open(&d.path().join("ca"), policy).unwrap();
    for h in ["a1", "a2"] {
        let (_, der) = csr(h, None);
        assert!(matches!(
            a.submit_csr(h, &der, "t").unwrap(),
            SubmitOutcome::Pending
        ));
    }
    let (_, der) = csr("a3", None);
    assert!(matches!(
        a.submit_csr("a3", &der, "t"),
        Err(CaError::TooManyPending(2))
    ));
    // A host with a valid PSK still gets in.
    let s = a.new_psk("a4", 60).unwrap();
    let (_, der) = csr("a4", Some(&s));
    assert!(matches!(
        a.submit_csr("a4", &der, "t").unwrap(),
        SubmitOutcome::Signed(_)
    ));
}
