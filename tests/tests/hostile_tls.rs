//! Hostile input, end to end: client certificates that chain to the real
//! CA but must not get in: expired, not yet valid, for server use only,
//! and one the CA never issued (e.g. a CA restored from an old backup, or a
//! forgery with a stolen key): `ca_revocation.rs` covers revoked
//! certificates and another CA's. The first three are refused at the TLS
//! handshake (logged with the reason); the last passes TLS but is refused
//! by the re-check of its serial against the CA's records. The CA's state
//! is unchanged and nothing is served.

mod hostile_common;

use hostile_common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::time::Duration;
use tonic::Code;
use troupe_tests::{Master, tally, wait_until};

/// A certificate for `name` signed with the master's own CA key, with
/// `tweak` applied to the usual client-certificate parameters.
fn signed_by_the_real_ca(
    m: &Master,
    name: &str,
    tweak: impl FnOnce(&mut rcgen::CertificateParams),
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let (key, cert) = m.sign_with_ca_key(name, tweak);
    (
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
}

/// Calls GetCatalog with `identity`; returns the error (the call must
/// fail, at the handshake or after it).
async fn call_with(
    m: &Master,
    identity: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> anyhow::Error {
    troupe_pki::tls::install_crypto_provider();
    let cfg = troupe_pki::tls::client_config(&m.ca_der(), vec![], Some(identity)).unwrap();
    let r = async {
        let ch = troupe_identity::connect_with(cfg, &m.url).await?;
        get_catalog(&ch, &facts("web1"))
            .await
            .map_err(|s| anyhow::anyhow!("{s:?}"))
    }
    .await;
    match r {
        Ok(c) => panic!("served a catalog to a hostile certificate: {}", c.node),
        Err(e) => e,
    }
}

fn handshake_refusals(m: &Master) -> usize {
    m.log().matches("TLS handshake refused").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_from_the_real_ca_that_must_not_get_in_are_refused() {
    let (m, _modules, _tree) = master_with_tree(&["web1"]);
    let before = m.list_all();
    let fleet_before = fleet(&m);

    type Tweak = Box<dyn FnOnce(&mut rcgen::CertificateParams)>;
    let cases: Vec<(&str, Tweak, &[&str])> = vec![
        (
            "expired client certificate",
            Box::new(|p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }),
            &["xpired"],
        ),
        (
            "client certificate not valid yet",
            Box::new(|p| {
                p.not_before = rcgen::date_time_ymd(2090, 1, 1);
                p.not_after = rcgen::date_time_ymd(2091, 1, 1);
            }),
            &["NotValidYet", "not valid yet", "not valid before"],
        ),
        (
            "certificate for server use only",
            Box::new(|p| {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            }),
            &["extended key usage for client authentication"],
        ),
    ];
    for (what, tweak, reasons) in cases {
        let n = handshake_refusals(&m);
        let id = signed_by_the_real_ca(&m, "web1", tweak);
        let e = call_with(&m, id).await;
        wait_until(Duration::from_secs(5), "the handshake refusal", || {
            handshake_refusals(&m) > n
        });
        let log = m.log();
        let line = log
            .lines()
            .rfind(|l| l.contains("TLS handshake refused"))
            .unwrap();
        assert!(
            reasons.iter().any(|r| line.contains(r)),
            "{what}: no reason {reasons:?} in {line:?} (client saw {e:#})"
        );
        assert_eq!(m.list_all(), before, "{what} changed the CA");
        tally::hostile("tls", what, true);
    }

    // Valid dates and use, signed by the CA key, but never issued by the
    // CA: the TLS layer accepts it; the records check refuses every call.
    let id = signed_by_the_real_ca(&m, "web1", |_| {});
    let e = call_with(&m, id).await;
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&format!("{:?}", Code::Unauthenticated)),
        "{msg}"
    );
    tally::hostile(
        "tls",
        "certificate the CA never issued (unknown serial)",
        true,
    );
    // The same for a name the CA has never heard of.
    let id = signed_by_the_real_ca(&m, "ghost", |_| {});
    let e = call_with(&m, id).await;
    assert!(format!("{e:#}").contains("Unauthenticated"), "{e:#}");
    tally::hostile("tls", "certificate for a host the CA does not know", true);

    assert_eq!(m.list_all(), before);
    assert_eq!(fleet(&m), fleet_before, "a hostile certificate checked in");
    // The real web1 still gets in.
    let ch = m.agent_channel("web1").await.unwrap();
    assert_eq!(get_catalog(&ch, &facts("web1")).await.unwrap().node, "web1");
}
