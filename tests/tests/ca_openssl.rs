//! A CSR made by `openssl req` (not our code) is autosigned with its PSK,
//! in either form the CA accepts, and the result verifies with openssl.

use std::process::Command;
use troupe_proto::v1::SubmitCsrRequest;
use troupe_proto::v1::certificate_status::State;
use troupe_tests::Master;

fn openssl_available() -> bool {
    Command::new("openssl").arg("version").output().is_ok()
}

fn openssl(args: &[&str], dir: &std::path::Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn submit_and_verify(m: &Master, name: &str, csr: Vec<u8>, dir: &std::path::Path) {
    let mut c = m.ca_client().await;
    let r = c
        .submit_csr(SubmitCsrRequest {
            name: name.into(),
            csr,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.state, State::Signed as i32, "{}", r.message);
    std::fs::write(dir.join("cert.pem"), &r.certificate_pem).unwrap();
    std::fs::copy(m.data.join("ca/ca_crt.pem"), dir.join("ca.pem")).unwrap();
    std::fs::copy(m.data.join("ca/crl.pem"), dir.join("crl.pem")).unwrap();
    openssl(
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-crl_check",
            "-CRLfile",
            "crl.pem",
            "cert.pem",
        ],
        dir,
    );
    // The certificate is for openssl's key.
    let a = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in", "cert.pem"])
        .current_dir(dir)
        .output()
        .unwrap();
    let b = Command::new("openssl")
        .args(["pkey", "-pubout", "-in", "key.pem"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert_eq!(a.stdout, b.stdout);
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_req_with_pp_preshared_key_extension_is_autosigned() {
    if !openssl_available() {
        panic!("openssl is required for this test (apt-get install openssl)");
    }
    let m = Master::start();
    let psk = m.psk("legacy1");
    let dir = m.root.path().join("openssl-ext");
    std::fs::create_dir_all(&dir).unwrap();
    let ext = format!("1.3.6.1.4.1.34380.1.1.4=ASN1:UTF8String:{psk}");
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "key.pem",
            "-subj",
            "/CN=legacy1",
            "-addext",
            &ext,
            "-outform",
            "DER",
            "-out",
            "csr.der",
        ],
        &dir,
    );
    let csr = std::fs::read(dir.join("csr.der")).unwrap();
    submit_and_verify(&m, "legacy1", csr, &dir).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_req_with_challenge_password_is_autosigned() {
    let m = Master::start();
    let psk = m.psk("legacy2");
    let dir = m.root.path().join("openssl-cp");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("req.cnf"),
        format!(
            "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\n\
             [dn]\nCN = legacy2\n[attrs]\nchallengePassword = {psk}\n"
        ),
    )
    .unwrap();
    openssl(
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-config",
            "req.cnf", "-out", "csr.pem",
        ],
        &dir,
    );
    // PEM is accepted too.
    let csr = std::fs::read(dir.join("csr.pem")).unwrap();
    submit_and_verify(&m, "legacy2", csr, &dir).await;
}
