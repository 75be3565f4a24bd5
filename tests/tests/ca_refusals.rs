//! End-to-end: every bad request is refused with a clear error, changes
//! nothing in the CA, and is written to the audit log.

use tonic::Code;
use troupe_proto::v1::SubmitCsrRequest;
use troupe_tests::{Master, make_csr, tally};

/// A master that writes every refused request to the CA audit log (these
/// tests count one `refuse` record per refusal; by default repeats from one
/// address are aggregated, see hostile_ca_audit.rs).
fn master() -> Master {
    Master::start_with(troupe_tests::MasterOptions {
        extra_args: vec!["--ca-audit-refusal-window".into(), "0s".into()],
        ..Default::default()
    })
}

fn refusals_in_audit(m: &Master) -> usize {
    std::fs::read_to_string(m.data.join("ca/audit.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"refuse\""))
        .count()
}

/// Bootstraps `name` with `psk` and expects refusal mentioning `needle`,
/// with the CA's state unchanged.
fn refused_bootstrap(m: &Master, name: &str, psk: &str, needle: &str) {
    let before = m.list_all();
    let audits = refusals_in_audit(m);
    let out = m.bootstrap(name, Some(psk));
    out.assert_failure_containing(needle);
    assert!(out.stderr.contains("refused"), "{out:?}");
    assert!(!m.agent_state(name).join("cert.pem").exists());
    assert_eq!(m.list_all(), before, "a refusal changed the CA's state");
    assert_eq!(refusals_in_audit(m), audits + 1);
    tally::hostile("psk", &format!("bootstrap refused: {needle}"), true);
}

#[test]
fn wrong_reused_expired_and_other_host_psks_are_refused() {
    let m = master();
    let good = m.psk("web1");
    let other = m.psk("web2");
    refused_bootstrap(&m, "web1", &"0".repeat(64), "pre-shared key is wrong");
    refused_bootstrap(&m, "web1", &other, "issued for another host");
    refused_bootstrap(&m, "web9", &good, "issued for another host");

    let short = m
        .ca_ok(&["psk", "new", "web3", "--ttl", "1s"])
        .trim()
        .to_string();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    refused_bootstrap(&m, "web3", &short, "expired");

    // Used once, then replayed after the host was cleaned.
    m.bootstrap("web1", Some(&good)).assert_success();
    m.ca_ok(&["clean", "web1"]);
    std::fs::remove_dir_all(m.agent_state("web1")).unwrap();
    refused_bootstrap(&m, "web1", &good, "already been used");
}

#[test]
fn second_csr_for_a_certified_name_is_refused() {
    let m = master();
    let psk = m.psk("web1");
    m.bootstrap("web1", Some(&psk)).assert_success();
    // Another machine claiming web1, even with a fresh PSK.
    let psk2 = m.psk("web1");
    let before = m.list_all();
    let out = troupe_tests::run(&mut m.bootstrap_command_in(
        "web1",
        Some(&psk2),
        &m.root.path().join("impostor"),
    ));
    out.assert_failure_containing("already has a valid certificate");
    assert_eq!(m.list_all(), before);
    tally::hostile("csr", "second machine claiming a certified name", true);
}

async fn submit(m: &Master, name: &str, csr: Vec<u8>) -> tonic::Status {
    let mut c = m.ca_client().await;
    match c
        .submit_csr(SubmitCsrRequest {
            name: name.into(),
            csr,
        })
        .await
    {
        Ok(r) => panic!("accepted: {:?}", r.into_inner()),
        Err(s) => s,
    }
}

async fn refused(m: &Master, name: &str, csr: Vec<u8>, code: Code, needle: &str) {
    let before = m.list_all();
    let s = submit(m, name, csr).await;
    assert_eq!(s.code(), code, "{s:?}");
    assert!(
        s.message().contains(needle),
        "{needle:?} not in {:?}",
        s.message()
    );
    assert_eq!(m.list_all(), before, "a refusal changed the CA's state");
    tally::hostile("csr", needle, true);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_hostile_csrs_are_refused() {
    let m = master();
    let psk = m.psk("web1");

    // Signature that does not verify.
    let (_, mut der) = make_csr("web1", Some(&psk));
    let last = der.len() - 1;
    der[last] ^= 0x01;
    refused(
        &m,
        "web1",
        der,
        Code::InvalidArgument,
        "signature does not verify",
    )
    .await;

    // Subject differing from the requested name.
    let (_, der) = make_csr("web1", Some(&psk));
    refused(
        &m,
        "web2",
        der,
        Code::InvalidArgument,
        "differs from the requested name",
    )
    .await;

    // Bad names (the CSR subject matches, the name itself is bad).
    for (bad, needle) in [
        ("Web1", "upper-case"),
        ("*.example.com", "wildcard"),
        ("a..b", "empty label"),
        ("web_1", "only a-z"),
        ("", "empty"),
    ] {
        let csr = if bad.is_empty() {
            make_csr("web1", None).1
        } else {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(rcgen::DnType::CommonName, bad);
            p.serialize_request(&key).unwrap().der().to_vec()
        };
        refused(&m, bad, csr, Code::InvalidArgument, needle).await;
    }

    // Extensions other than the allowed ones.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, "web1");
    p.custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            troupe_pki::csr::PP_PRESHARED_KEY_ARCS,
            troupe_pki::csr::encode_psk_extension_value(&psk),
        ));
    p.custom_extensions
        .push(rcgen::CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 99999, 1],
            vec![5, 0],
        ));
    let der = p.serialize_request(&key).unwrap().der().to_vec();
    refused(
        &m,
        "web1",
        der,
        Code::InvalidArgument,
        "1.3.6.1.4.1.99999.1, which is not allowed",
    )
    .await;

    // A request for a CA certificate.
    let mut p = rcgen::CertificateParams::new(vec!["web1".to_string()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, "web1");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let der = p.serialize_request(&key).unwrap().der().to_vec();
    refused(
        &m,
        "web1",
        der,
        Code::InvalidArgument,
        "may not request a CA certificate",
    )
    .await;

    // Garbage.
    refused(
        &m,
        "web1",
        b"not a csr".to_vec(),
        Code::InvalidArgument,
        "not valid PEM or DER",
    )
    .await;

    // Absurdly large: over the CSR limit but under the gRPC limit ...
    refused(
        &m,
        "web1",
        vec![0x30; 20_000],
        Code::ResourceExhausted,
        "at most 16384",
    )
    .await;
    // ... and far over the gRPC message limit.
    let s = submit(&m, "web1", vec![0u8; 4 * 1024 * 1024]).await;
    assert!(
        matches!(
            s.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::Internal
        ),
        "{s:?}"
    );
    assert!(
        s.message().to_lowercase().contains("too large") || s.message().contains("length"),
        "{s:?}"
    );
    tally::hostile("oversized", "4 MiB CSR far over the gRPC limit", true);

    // After all that, the good PSK is still unused and works.
    let (_, der) = make_csr("web1", Some(&psk));
    let mut c = m.ca_client().await;
    let r = c
        .submit_csr(SubmitCsrRequest {
            name: "web1".into(),
            csr: der,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.state,
        troupe_proto::v1::certificate_status::State::Signed as i32
    );
}

#[test]
fn operator_commands_refuse_unknown_and_bad_names() {
    let m = master();
    m.ca(&["sign", "ghost"])
        .assert_failure_containing("no pending certificate request");
    m.ca(&["revoke", "ghost"])
        .assert_failure_containing("has no valid certificate");
    m.ca(&["clean", "ghost"])
        .assert_failure_containing("nothing is known");
    m.ca(&["psk", "new", "Bad"])
        .assert_failure_containing("upper-case");
    m.ca(&["psk", "new", "*"])
        .assert_failure_containing("wildcard");
    for what in ["sign", "revoke", "clean"] {
        tally::hostile("admin", &format!("ca {what} of an unknown host"), true);
    }
    tally::hostile("admin", "psk for an upper-case name", true);
    tally::hostile("admin", "psk for a wildcard name", true);
}

#[test]
fn admin_socket_is_for_the_data_directory_owner_only() {
    let m = master();
    let sock = m.data.join("admin.sock");
    assert!(troupe_tests::has_mode(&sock, 0o600));
    assert!(troupe_tests::has_mode(&m.data, 0o700));
    // As another user (when the tests run as root, as in CI).
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false);
    if !is_root
        || std::process::Command::new("runuser")
            .arg("--help")
            .output()
            .is_err()
    {
        eprintln!("not root or no runuser: skipping the other-user check");
        return;
    }
    // Let `nobody` traverse the temp root, as a careless operator might.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(m.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = troupe_tests::run(
        std::process::Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(troupe_tests::troupe_bin())
            .args(["ca", "psk", "new", "web1", "--data"])
            .arg(&m.data),
    );
    assert!(!out.success(), "{out:?}");
    assert!(
        out.stderr.contains("admin.sock")
            || out.stderr.contains("ca_key.pem")
            || out.stderr.contains("failed to execute"),
        "{out:?}"
    );
    assert!(out.stdout.trim().is_empty(), "a key was printed: {out:?}");
    assert!(!m.ca_ok(&["list", "--all"]).contains("web1"));
    tally::hostile("admin", "admin socket used by another user", true);
}
