//! Host certificates serve TLS (serverAuth) and authenticate to the master
//! (clientAuth); an agent still never accepts one as the master's.

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use troupe_pki::authority::{Authority, CaPolicy, SubmitOutcome};
use troupe_pki::{build_csr, tls};

fn host_cert(a: &Authority, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let secret = a.new_psk(name, 3600).unwrap();
    let k = rcgen::KeyPair::generate().unwrap();
    let der = build_csr(name, &k, Some(&secret)).unwrap();
    let SubmitOutcome::Signed(cert) = a.submit_csr(name, &der, "test").unwrap() else {
        panic!("expected autosign")
    };
    let key = PrivateKeyDer::try_from(k.serialize_der()).unwrap();
    (
        vec![
            CertificateDer::from(cert.der.clone()),
            CertificateDer::from(a.ca_der().to_vec()),
        ],
        key,
    )
}

/// Serves one TLS handshake with `chain`/`key` on loopback and connects to
/// it as `name` with `client`; returns the client's handshake result.
fn handshake(
    a: &Authority,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client: rustls::ClientConfig,
    name: &str,
) -> Result<(), String> {
    let server = tls::server_config(a.ca_der(), chain, key, vec![]).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let conn = rustls::ServerConnection::new(Arc::new(server)).unwrap();
        let mut st = rustls::StreamOwned::new(conn, s);
        let mut b = [0u8; 1];
        let _ = st.read(&mut b);
    });
    let s = std::net::TcpStream::connect(addr).unwrap();
    let conn = rustls::ClientConnection::new(
        Arc::new(client),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    let mut st = rustls::StreamOwned::new(conn, s);
    let r = st
        .write_all(b"x")
        .and_then(|_| st.flush())
        .map_err(|e| e.to_string());
    let r = r.and_then(|_| {
        // Drive the handshake to its end.
        while st.conn.is_handshaking() {
            st.conn
                .complete_io(&mut st.sock)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    });
    drop(st);
    let _ = t.join();
    r
}

#[test]
fn host_certificates_serve_tls_but_are_never_taken_for_the_master() {
    tls::install_crypto_provider();
    let d = tempfile::tempdir().unwrap();
    let a = Authority::open(&d.path().join("ca"), CaPolicy::default()).unwrap();
    let (chain, key) = host_cert(&a, "web1.example.com");

    // Both purposes in the certificate.
    let (_, x) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth, "{eku:?}");
    assert!(tls::is_client_cert(chain[0].as_ref()));

    // A plain TLS client trusting the Troupe CA (as curl --cacert does)
    // accepts the host serving its own certificate.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(a.ca_der().to_vec()))
        .unwrap();
    let plain = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    handshake(
        &a,
        chain.clone(),
        key.clone_key(),
        plain,
        "web1.example.com",
    )
    .expect("a host certificate is valid for serverAuth");

    // An agent refuses it as the master, by the CA path and by the pinned
    // first contact alike, even though the name matches.
    let agent = tls::client_config(a.ca_der(), vec![], None).unwrap();
    let e = handshake(
        &a,
        chain.clone(),
        key.clone_key(),
        agent,
        "web1.example.com",
    )
    .unwrap_err();
    assert!(e.contains("host certificate"), "{e}");
    let pin: [u8; 32] =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(a.ca_der())).into();
    let pinned = tls::pinned_client_config(pin).unwrap();
    let e = handshake(&a, chain, key, pinned, "web1.example.com").unwrap_err();
    assert!(e.contains("host certificate"), "{e}");

    // The master's own certificate is accepted by both.
    let (mchain, mkey) = a.issue_server_cert(&["puppet.example.com".into()]).unwrap();
    assert!(!tls::is_client_cert(mchain[0].as_ref()));
    let agent = tls::client_config(a.ca_der(), vec![], None).unwrap();
    handshake(
        &a,
        mchain.clone(),
        mkey.clone_key(),
        agent,
        "puppet.example.com",
    )
    .unwrap();
    let pinned = tls::pinned_client_config(pin).unwrap();
    handshake(&a, mchain, mkey, pinned, "puppet.example.com").unwrap();
}
