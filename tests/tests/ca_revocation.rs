//! End-to-end: revoked hosts and foreign certificates are refused at the
//! TLS handshake; authenticated calls need a client certificate.

use troupe_proto::v1::RenewRequest;
use troupe_proto::v1::ca_client::CaClient;
use troupe_tests::{Master, make_csr, tally};

#[test]
fn revoked_host_is_refused_at_handshake() {
    let m = Master::start();
    let psk = m.psk("web1");
    m.bootstrap("web1", Some(&psk)).assert_success();
    m.agent_cmd("web1", "renew", &[]).assert_success();
    let out = m.ca_ok(&["revoke", "web1"]);
    assert!(out.contains("revoked web1"));
    let out = m.agent_cmd("web1", "renew", &["--force"]);
    out.assert_failure_containing("closed the TLS connection");
    // The master refused the handshake because of the CRL.
    troupe_tests::wait_until(
        std::time::Duration::from_secs(5),
        "the handshake log",
        || m.log().contains("TLS handshake refused"),
    );
    assert!(m.log().contains("Revoked"), "{}", m.log());
    tally::hostile("tls", "revoked certificate at the handshake", true);
    // A revoked host cannot simply bootstrap again.
    let psk2 = m.psk("web1");
    let out = troupe_tests::run(&mut m.bootstrap_command_in(
        "web1",
        Some(&psk2),
        &m.root.path().join("again"),
    ));
    out.assert_failure_containing("troupe ca clean web1");
    tally::hostile("csr", "revoked host joining again without clean", true);
    // After clean it can.
    m.ca_ok(&["clean", "web1"]);
    std::fs::remove_dir_all(m.agent_state("web1")).unwrap();
    let psk3 = m.psk("web1");
    m.bootstrap("web1", Some(&psk3)).assert_success();
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_also_ends_calls_on_open_connections() {
    let m = Master::start();
    let psk = m.psk("web2");
    m.bootstrap("web2", Some(&psk)).assert_success();
    let ch = m.agent_channel("web2").await.unwrap();
    let mut c = CaClient::new(ch);
    // The connection is up and authenticated.
    let (_, csr) = make_csr("web2", None);
    // (renew on this channel would supersede; first revoke out of band)
    m.ca_ok(&["revoke", "web2"]);
    let s = c.renew(RenewRequest { csr }).await.unwrap_err();
    assert!(
        matches!(
            s.code(),
            tonic::Code::Unauthenticated | tonic::Code::Unavailable | tonic::Code::Unknown
        ),
        "{s:?}"
    );
    tally::hostile("tls", "revoked certificate on an open connection", true);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_from_another_ca_is_refused() {
    troupe_pki::tls::install_crypto_provider();
    let m = Master::start();
    // Another CA issues a certificate for a name the real master knows.
    let psk = m.psk("web3");
    m.bootstrap("web3", Some(&psk)).assert_success();
    let rogue_dir = m.root.path().join("rogue-ca");
    let rogue = troupe_pki::Authority::open(&rogue_dir, Default::default()).unwrap();
    let rogue_psk = rogue.new_psk("web3", 60).unwrap();
    let (key, csr) = make_csr("web3", Some(&rogue_psk));
    let troupe_pki::SubmitOutcome::Signed(cert) = rogue.submit_csr("web3", &csr, "test").unwrap()
    else {
        panic!("rogue CA did not sign")
    };
    let identity = (
        vec![rustls::pki_types::CertificateDer::from(cert.der.clone())],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    );
    let cfg = troupe_pki::tls::client_config(&m.ca_der(), vec![], Some(identity)).unwrap();
    let result = async {
        let ch = troupe_identity::connect_with(cfg, &m.url).await?;
        let (_, csr) = make_csr("web3", None);
        CaClient::new(ch)
            .renew(RenewRequest { csr })
            .await
            .map_err(|s| anyhow::anyhow!("{s:?}"))
    }
    .await;
    assert!(result.is_err(), "a foreign certificate was accepted");
    troupe_tests::wait_until(
        std::time::Duration::from_secs(5),
        "the handshake log",
        || m.log().contains("TLS handshake refused"),
    );
    assert!(
        m.log().contains("UnknownIssuer") || m.log().contains("BadSignature"),
        "{}",
        m.log()
    );
    tally::hostile("tls", "client certificate from another CA", true);
}

#[tokio::test(flavor = "multi_thread")]
async fn renew_without_client_certificate_is_unauthenticated() {
    let m = Master::start();
    let (_, csr) = make_csr("web4", None);
    let mut c = m.ca_client().await;
    let s = c.renew(RenewRequest { csr }).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    assert!(s.message().contains("requires a client certificate"));
    tally::hostile("tls", "renewal without a client certificate", true);
}
