//! Hostile input, end to end: CSRs with garbage, huge, duplicate or
//! conflicting extensions sent to a real master's `SubmitCsr` (the cases
//! `ca_refusals.rs` does not already cover). Each is refused with a
//! specific error, written to the CA's audit log, and changes nothing
//! else: the CA's state is the same and the host's one-time key is still
//! unused (it works at the end).

mod hostile_common;

use hostile_common::*;
use tonic::Code;
use troupe_pki::csr::{PP_PRESHARED_KEY_ARCS, encode_psk_extension_value};
use troupe_proto::v1::SubmitCsrRequest;
use troupe_tests::{Master, tally};

/// A master that writes every refused request to the CA audit log (these
/// tests count one `refuse` record per refusal; by default repeats from one
/// address are aggregated, see hostile_ca_audit.rs).
fn master() -> Master {
    Master::start_with(troupe_tests::MasterOptions {
        extra_args: vec!["--ca-audit-refusal-window".into(), "0s".into()],
        ..Default::default()
    })
}

/// A CSR for `web1` with exactly these extensions (OID arcs, DER value).
fn csr_with(exts: &[(&[u64], Vec<u8>)]) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, "web1");
    for (oid, value) in exts {
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(oid, value.clone()));
    }
    p.serialize_request(&key).unwrap().der().to_vec()
}

fn refusals(m: &Master) -> usize {
    ca_audit(m)
        .lines()
        .filter(|l| l.contains("\"refuse\""))
        .count()
}

/// Submits `csr` for web1 and asserts a refusal with `needle`, audited,
/// with the CA's state unchanged.
async fn refused(m: &Master, what: &str, csr: Vec<u8>, needle: &str) {
    let before = m.list_all();
    let audited = refusals(m);
    let mut c = m.ca_client().await;
    let s = c
        .submit_csr(SubmitCsrRequest {
            name: "web1".into(),
            csr,
        })
        .await
        .expect_err(what);
    assert_status(&s, Code::InvalidArgument, needle, what);
    assert_eq!(m.list_all(), before, "{what} changed the CA's state");
    assert_eq!(refusals(m), audited + 1, "{what} was not audited");
    let last = ca_audit(m).lines().last().unwrap_or_default().to_string();
    assert!(last.contains("web1"), "{what}: {last}");
    tally::hostile("csr", what, true);
}

const SAN: &[u64] = &[2, 5, 29, 17];
const KEY_USAGE: &[u64] = &[2, 5, 29, 15];
const BASIC_CONSTRAINTS: &[u64] = &[2, 5, 29, 19];

/// DER SEQUENCE of dNSName entries.
fn san(names: &[&str]) -> Vec<u8> {
    let mut inner = Vec::new();
    for n in names {
        inner.push(0x82);
        der_len(&mut inner, n.len());
        inner.extend_from_slice(n.as_bytes());
    }
    let mut out = vec![0x30];
    der_len(&mut out, inner.len());
    out.extend_from_slice(&inner);
    out
}

fn der_len(out: &mut Vec<u8>, n: usize) {
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn csrs_with_garbage_huge_duplicate_and_conflicting_extensions_are_refused() {
    let m = master();
    let psk = m.psk("web1");
    let good = || encode_psk_extension_value(&psk);

    // Duplicates.
    refused(
        &m,
        "the PSK extension twice, same value",
        csr_with(&[
            (PP_PRESHARED_KEY_ARCS, good()),
            (PP_PRESHARED_KEY_ARCS, good()),
        ]),
        "repeats extension 1.3.6.1.4.1.34380.1.1.4",
    )
    .await;
    refused(
        &m,
        "the PSK extension twice, a guess beside the real key",
        csr_with(&[
            (PP_PRESHARED_KEY_ARCS, encode_psk_extension_value("guess")),
            (PP_PRESHARED_KEY_ARCS, good()),
        ]),
        "repeats extension",
    )
    .await;
    refused(
        &m,
        "subjectAltName twice",
        csr_with(&[
            (PP_PRESHARED_KEY_ARCS, good()),
            (SAN, san(&["web1"])),
            (SAN, san(&["web1"])),
        ]),
        "repeats extension 2.5.29.17",
    )
    .await;

    // Garbage values in allowed extensions.
    let mut with_trailing = good();
    with_trailing.push(0);
    for (what, value) in [
        (
            "PSK extension holding an OCTET STRING",
            vec![0x04, 0x03, 1, 2, 3],
        ),
        (
            "PSK extension with a truncated UTF8String",
            vec![0x0c, 0x40, b'a'],
        ),
        ("PSK extension with trailing bytes", with_trailing),
        ("PSK extension that is empty", vec![]),
        (
            "PSK extension with invalid UTF-8",
            vec![0x0c, 0x02, 0xc3, 0x28],
        ),
    ] {
        refused(
            &m,
            what,
            csr_with(&[(PP_PRESHARED_KEY_ARCS, value)]),
            "pp_preshared_key must be one DER UTF8String",
        )
        .await;
    }
    refused(
        &m,
        "subjectAltName of garbage",
        csr_with(&[(SAN, vec![0xff, 0x00, 0x13])]),
        "unparsable subjectAltName",
    )
    .await;
    refused(
        &m,
        "basicConstraints of garbage",
        csr_with(&[(BASIC_CONSTRAINTS, vec![0x30, 0x05, 0x01])]),
        "unparsable basicConstraints",
    )
    .await;
    refused(
        &m,
        "keyUsage of garbage",
        csr_with(&[(KEY_USAGE, vec![0x03, 0x09, 0xff])]),
        "2.5.29.15 is invalid: unparsable",
    )
    .await;
    refused(
        &m,
        "subjectAltName naming other hosts",
        csr_with(&[
            (PP_PRESHARED_KEY_ARCS, good()),
            (SAN, san(&["web1", "master.example.com", "*.example.com"])),
        ]),
        "subjectAltName may only name the requested host",
    )
    .await;

    // Huge values, under the CSR size limit.
    refused(
        &m,
        "PSK extension of 12 KiB",
        csr_with(&[(
            PP_PRESHARED_KEY_ARCS,
            encode_psk_extension_value(&"k".repeat(12 * 1024)),
        )]),
        "pre-shared key longer than 256 bytes",
    )
    .await;
    let many: Vec<String> = (0..600).map(|i| format!("h{i}.example.com")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let big_san = san(&many);
    assert!(big_san.len() > 8 * 1024, "{}", big_san.len());
    refused(
        &m,
        "subjectAltName with 600 names",
        csr_with(&[(PP_PRESHARED_KEY_ARCS, good()), (SAN, big_san)]),
        "subjectAltName may only name the requested host",
    )
    .await;

    // Conflicting keys: challengePassword says one thing, the extension
    // another (made with openssl, which can write both).
    if let Some(csr) = openssl_csr_with_two_keys(&m, &psk) {
        refused(
            &m,
            "challengePassword and PSK extension disagree",
            csr,
            "two different pre-shared keys",
        )
        .await;
    } else {
        eprintln!("openssl not available: skipping the conflicting-keys CSR");
    }

    // The key policy comes before the signature: a key the CA would never
    // certify is refused for what it is (ring cannot even verify these
    // signatures, which used to read "the signature does not verify").
    for (what, newkey, pkeyopt, needle) in [
        (
            "a valid RSA-1024 CSR",
            "rsa:1024",
            None,
            "RSA key of 1024 bits; RSA keys need at least 2048 bits",
        ),
        (
            "a valid RSA-1536 CSR",
            "rsa:1536",
            None,
            "RSA key of 1536 bits; RSA keys need at least 2048 bits",
        ),
        (
            "a valid secp256k1 ECDSA CSR",
            "ec",
            Some("ec_paramgen_curve:secp256k1"),
            "unsupported algorithm",
        ),
    ] {
        let csr = openssl_csr_with_key(&m, &psk, newkey, pkeyopt)
            .expect("openssl is required for this test (apt-get install openssl)");
        refused(&m, what, csr, needle).await;
    }

    // The one-time key was never consumed: the host joins with it.
    m.bootstrap("web1", Some(&psk)).assert_success();
}

/// A valid CSR for web1 with its PSK, made by openssl with `-newkey
/// newkey` (and `-pkeyopt`).
fn openssl_csr_with_key(
    m: &Master,
    psk: &str,
    newkey: &str,
    pkeyopt: Option<&str>,
) -> Option<Vec<u8>> {
    let dir = m
        .root
        .path()
        .join(format!("openssl-{}", newkey.replace(':', "-")));
    std::fs::create_dir_all(&dir).ok()?;
    let cnf = dir.join("req.cnf");
    std::fs::write(
        &cnf,
        format!(
            "[req]\nprompt = no\ndistinguished_name = dn\nreq_extensions = ext\n\
             [dn]\nCN = web1\n\
             [ext]\n1.3.6.1.4.1.34380.1.1.4 = ASN1:UTF8String:{psk}\n"
        ),
    )
    .ok()?;
    let mut cmd = std::process::Command::new("openssl");
    cmd.args(["req", "-new", "-newkey", newkey]);
    if let Some(o) = pkeyopt {
        cmd.args(["-pkeyopt", o]);
    }
    let out = cmd
        .args(["-nodes", "-outform", "DER"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("req.der"))
        .arg("-config")
        .arg(&cnf)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    std::fs::read(dir.join("req.der")).ok()
}

/// A CSR for web1 whose challengePassword is `psk` and whose
/// pp_preshared_key extension holds another value.
fn openssl_csr_with_two_keys(m: &Master, psk: &str) -> Option<Vec<u8>> {
    let dir = m.root.path().join("openssl");
    std::fs::create_dir_all(&dir).ok()?;
    let cnf = dir.join("req.cnf");
    std::fs::write(
        &cnf,
        format!(
            "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\nreq_extensions = ext\n\
             [dn]\nCN = web1\n[attrs]\nchallengePassword = {psk}\n\
             [ext]\n1.3.6.1.4.1.34380.1.1.4 = ASN1:UTF8String:not-the-same-key\n"
        ),
    )
    .ok()?;
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-outform",
            "DER",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("req.der"))
        .arg("-config")
        .arg(&cnf)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    std::fs::read(dir.join("req.der")).ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn polls_with_hostile_names_or_keys_are_refused_or_learn_nothing() {
    use troupe_proto::v1::PollCertificateRequest;
    use troupe_proto::v1::certificate_status::State;
    let m = master();
    let before = m.list_all();
    let mut c = m.ca_client().await;
    let long = "a".repeat(300);
    for (what, name) in [
        ("an empty name", ""),
        ("an upper-case name", "WEB1"),
        ("a path", "../ca/ca_key"),
        ("a 300-byte name", long.as_str()),
        ("a name with a newline", "web1\nweb2"),
        ("a NUL", "web1\0"),
    ] {
        let s = c
            .poll_certificate(PollCertificateRequest {
                name: name.into(),
                public_key_sha256: vec![0; 32],
            })
            .await
            .expect_err(what);
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(s.message().contains("name"), "{what}: {s:?}");
        tally::hostile("csr", &format!("certificate poll with {what}"), true);
    }
    // Another host's request, asked for with the wrong key (or a key hash
    // of the wrong length): "unknown", and no certificate.
    let pending = m.root.path().join("pending");
    let _ = troupe_tests::run(
        m.bootstrap_command_in("web2", None, &pending)
            .args(["--wait", "1s"]),
    );
    for key in [vec![0u8; 32], vec![0u8; 0], vec![0xffu8; 10_000]] {
        let r = c
            .poll_certificate(PollCertificateRequest {
                name: "web2".into(),
                public_key_sha256: key.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.state, State::Unknown as i32, "{r:?}");
        assert!(r.certificate_pem.is_empty());
        tally::hostile(
            "csr",
            &format!(
                "poll for another host's request with a {}-byte key hash",
                key.len()
            ),
            true,
        );
    }
    // Nothing changed but web2's own pending request.
    let list = m.ca_ok(&["list", "--all"]);
    assert!(before.as_array().is_none_or(|a| a.is_empty()), "{before}");
    assert_eq!(
        list.lines().filter(|l| l.contains("web")).count(),
        1,
        "{list}"
    );
    assert!(list.contains("web2"), "{list}");
}
