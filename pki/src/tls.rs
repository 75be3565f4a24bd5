//! rustls configurations for Troupe's mutual TLS (ring provider only).
//!
//! - [`server_config`]: the master. Client certificates are verified against
//!   the CA with the current CRL; unauthenticated clients are admitted to the
//!   handshake only so they can reach the bootstrap calls; every other call
//!   must check the verified peer certificate itself.
//! - [`client_config`]: an agent with a certificate (or none), verifying the
//!   master against the CA and the CRL.
//! - [`pinned_client_config`]: the first contact of a bootstrapping agent:
//!   the server must present, in its chain, a CA certificate whose SHA-256
//!   fingerprint equals the pinned one, and its leaf must verify under it.
//!   No blind trust on first use.
//!
//! Both client configurations accept only the master's own certificate as
//! the server: host certificates are valid for serverAuth too (a host serves
//! TLS with its own certificate), so a leaf that carries clientAuth, which
//! every host certificate does and the master's never does, is refused
//! ([`MasterOnly`]) even though the CA signed it and its name matches.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// ALPN for gRPC: without it tonic clients fail with `H2NotNegotiated`.
pub const ALPN_H2: &[u8] = b"h2";

/// The one crypto provider of the whole tree: ring's, with TLS 1.3's
/// AES-128-GCM-SHA256 preferred (clients offer it first; servers follow the
/// client's order). A handshake's key schedule is some 30 HMACs over the
/// suite's hash: SHA-256 runs on the CPU's SHA extensions where SHA-384 (of
/// ring's first choice, AES-256-GCM-SHA384) does not, and it was 11 % of
/// the master's CPU per new connection (issue 20). AES-128 is TLS 1.3's
/// mandatory suite; nothing else changes.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// Installs ring as the process-wide provider. Call first thing in `main`;
/// calling it twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>, rustls::Error> {
    let mut r = RootCertStore::empty();
    r.add(CertificateDer::from(ca_der.to_vec()))?;
    Ok(Arc::new(r))
}

fn verr(e: impl std::fmt::Display) -> rustls::Error {
    rustls::Error::General(e.to_string())
}

/// The master's server config: chain = (leaf, CA), client certificates
/// optional but, when present, verified with `crls`.
pub fn server_config(
    ca_der: &[u8],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<ServerConfig, rustls::Error> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, p.clone())
        .with_crls(crls)
        .allow_unauthenticated()
        .build()
        .map_err(verr)?;
    let mut cfg = ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // TLS 1.3 session tickets, encrypted with a key that lives only in
    // this config: a client coming back (the agent's next run) resumes
    // with a fresh ECDHE instead of a full handshake, and the master keeps
    // nothing per session. Resumption restores the client certificate the
    // full handshake verified without checking it again, so a new CRL
    // means a new config and so a new ticket key: no session made before a
    // revocation resumes after it (callers also check the serial on every
    // call). The ticket key rotates every 6 hours (sessions last 12 at most).
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    // One ticket per connection (rustls sends 2 by default): an agent run
    // is one connection, and the next run takes the ticket this one got.
    cfg.send_tls13_tickets = 1;
    // Our order (`provider`) decides, also for agents built before it.
    cfg.ignore_client_order = true;
    Ok(cfg)
}

/// A client config trusting only `ca_der` (with `crls` applied to the
/// server's certificate), presenting `identity` if given.
pub fn client_config(
    ca_der: &[u8],
    crls: Vec<CertificateRevocationListDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<ClientConfig, rustls::Error> {
    let p = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_der)?, p.clone())
        .with_crls(crls)
        .build()
        .map_err(verr)?;
    let b = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MasterOnly(verifier)));
    let mut cfg = match identity {
        Some((chain, key)) => b.with_client_auth_cert(chain, key)?,
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

/// The verifier's refusal when the server shows no CA with the pinned
/// fingerprint (`rustls::Error::General` carries only text: clients compare
/// with this constant to tell the case, see `troupe_identity::ConnectError`).
pub const PIN_MISMATCH: &str =
    "the server did not present a CA certificate with the pinned fingerprint";

/// The refusal of a server leaf that is a host certificate (clientAuth).
pub const HOST_CERT_AS_SERVER: &str = "the server presented a host certificate (extended key usage clientAuth), \
     not the master's: refused";

/// Verifies the server against a CA known only by its SHA-256 fingerprint.
#[derive(Debug)]
struct PinnedCaVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pin)
            .ok_or_else(|| rustls::Error::General(PIN_MISMATCH.into()))?;
        let inner = WebPkiServerVerifier::builder_with_provider(roots(ca)?, self.provider.clone())
            .build()
            .map_err(verr)?;
        MasterOnly(inner).verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// True when the certificate's extended key usage names clientAuth (every
/// host certificate); an unparsable certificate counts as one.
pub fn is_client_cert(der: &[u8]) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return true;
    };
    match cert.extended_key_usage() {
        Ok(Some(eku)) => eku.value.client_auth,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// The CA's verdict on a server certificate (`0`), then: refused when the
/// leaf is a host certificate (clientAuth), which may be valid for
/// serverAuth but is never the master's.
#[derive(Debug)]
struct MasterOnly<V>(Arc<V>);

impl<V: ServerCertVerifier> ServerCertVerifier for MasterOnly<V> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if is_client_cert(end_entity.as_ref()) {
            return Err(rustls::Error::General(HOST_CERT_AS_SERVER.into()));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Client config for the first contact: trusts the server only if it
/// presents the CA with fingerprint `pin` and a leaf signed by it.
pub fn pinned_client_config(pin: [u8; 32]) -> Result<ClientConfig, rustls::Error> {
    let p = provider();
    let mut cfg = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier { pin, provider: p }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod provider_tests {
    use super::*;

    #[test]
    fn aes128_sha256_is_offered_first_and_no_suite_is_lost() {
        let p = provider();
        let ours: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut ring: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        let mut sorted = ours.clone();
        ring.sort_by_key(|s| u16::from(*s));
        sorted.sort_by_key(|s| u16::from(*s));
        assert_eq!(sorted, ring);
    }
}
