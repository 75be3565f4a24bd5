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

/// One TLS handshake with `cfg`, then a read so the session tickets (sent
/// after the handshake) are taken in: the kind of handshake, or why the
/// master closed the connection.
async fn tls_handshake(
    addr: &troupe_identity::ServerAddr,
    cfg: rustls::ClientConfig,
) -> Result<rustls::HandshakeKind, String> {
    use tokio::io::AsyncReadExt;
    let tcp = tokio::net::TcpStream::connect(&addr.authority)
        .await
        .map_err(|e| e.to_string())?;
    let mut s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(addr.server_name.clone(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let kind = s.get_ref().1.handshake_kind();
    // The master speaks first on a connection it accepted (HTTP/2 settings).
    let mut buf = [0u8; 256];
    match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => kind.ok_or_else(|| "no handshake kind".into()),
        Ok(Ok(_)) => Err("closed by the master".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("nothing from the master in 5 s".into()),
    }
}

/// An authenticated call: this master has no module tree, so a caller
/// whose certificate passed gets FailedPrecondition, never Unauthenticated.
async fn catalog_call(cfg: rustls::ClientConfig, url: &str) -> Result<tonic::Code, String> {
    let ch = troupe_identity::connect_with(cfg, url)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let r = troupe_proto::v1::catalog_client::CatalogClient::new(ch)
        .get_catalog(troupe_proto::v1::CatalogRequest {
            facts_json: b"{}".to_vec(),
            ..Default::default()
        })
        .await;
    Ok(match r {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_sessions_resume_across_runs_but_not_past_a_revocation() {
    use rustls::HandshakeKind::{Full, Resumed};
    use troupe_identity::Identity;
    troupe_pki::tls::install_crypto_provider();
    let m = Master::start();
    for host in ["web6", "web7"] {
        let psk = m.psk(host);
        m.bootstrap(host, Some(&psk)).assert_success();
    }
    let addr = troupe_identity::parse_server(&m.url).unwrap();
    // Each run of the agent daemon loads its identity again: the second
    // load's connection resumes the first's session.
    let config = |host: &str| {
        Identity::load(&m.agent_state(host))
            .unwrap()
            .client_config()
            .unwrap()
    };
    assert_eq!(tls_handshake(&addr, config("web6")).await, Ok(Full));
    assert_eq!(tls_handshake(&addr, config("web6")).await, Ok(Resumed));
    // The resumed session is still web6's: its calls pass the identity
    // check.
    assert_eq!(
        catalog_call(config("web6"), &m.url).await,
        Ok(tonic::Code::FailedPrecondition)
    );
    // Another host's identity does not ride web6's sessions.
    assert_eq!(tls_handshake(&addr, config("web7")).await, Ok(Full));
    // After the revocation the session that was just resumable is not:
    // a full handshake, refused on the CRL, and the call fails.
    m.ca_ok(&["revoke", "web6"]);
    let after = tls_handshake(&addr, config("web6")).await;
    assert!(after.is_err(), "a revoked host's handshake gave {after:?}");
    troupe_tests::wait_until(
        std::time::Duration::from_secs(5),
        "the handshake log",
        || m.log().contains("Revoked"),
    );
    // (The master closes the connection after the client's half of the
    // TLS 1.3 handshake: the call ends Cancelled/Unavailable, never past
    // the identity check to FailedPrecondition.)
    let call = catalog_call(config("web6"), &m.url).await;
    assert!(
        !matches!(call, Ok(tonic::Code::Ok | tonic::Code::FailedPrecondition)),
        "a revoked host's call gave {call:?}"
    );
    tally::hostile("tls", "revoked certificate on a resumed TLS session", true);
    // The new CRL made the master forget every session (a new ticket
    // key): web7's next handshake is a full one, the one after resumes.
    assert_eq!(tls_handshake(&addr, config("web7")).await, Ok(Full));
    assert_eq!(tls_handshake(&addr, config("web7")).await, Ok(Resumed));
}
