//! # troupe-identity
//!
//! Owns a client's identity on disk (key, certificate, pinned CA, CRL in a
//! state directory) and its mutual TLS channel to the master, for both
//! clients: the agent and the bastion (`troupe run`/`deploy`).
//!
//! Files live in the state directory (layout documented in the agent's
//! `bootstrap` module). [`Identity::load`] checks that they belong
//! together (the key matches the certificate, the certificate was issued by
//! the stored CA) and completes a renewal that was interrupted between its
//! two renames. [`Identity::connect`] opens a tonic [`Channel`] over mutual
//! TLS: the master is verified against the stored CA and CRL, the client
//! presents its certificate. [`status_message`] turns a gRPC status into
//! the line an operator reads.
//!
//! It must never: create or change an identity (bootstrap and renewal are
//! the agent's); trust a master that the pinned CA did not certify; log a
//! private key; converge, sign or compile anything.

#![forbid(unsafe_code)]

use anyhow::{Context, Result, anyhow, bail};
use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use troupe_pki::util;

/// Private key, PKCS#8 PEM, mode 0600.
pub const KEY_FILE: &str = "key.pem";
/// The agent's certificate, PEM.
pub const CERT_FILE: &str = "cert.pem";
/// The pinned CA certificate, PEM.
pub const CA_FILE: &str = "ca.pem";
/// The CA's latest CRL, PEM.
pub const CRL_FILE: &str = "crl.pem";
/// Renewal in progress: the new key and certificate before their renames.
pub const KEY_NEXT: &str = "key.pem.next";
pub const CERT_NEXT: &str = "cert.pem.next";

/// Default master port.
pub const DEFAULT_PORT: u16 = 8140;

/// A master address parsed from `--server`.
#[derive(Debug, Clone)]
pub struct ServerAddr {
    /// `host:port` to connect to.
    pub authority: String,
    /// The name the master's certificate must carry.
    pub server_name: ServerName<'static>,
}

/// Parses `https://HOST[:PORT]` or `HOST[:PORT]` (port 8140 by default).
pub fn parse_server(url: &str) -> Result<ServerAddr> {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if url.contains("://") {
        bail!("--server {url:?}: only https:// URLs are supported");
    } else {
        url
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        bail!("--server {url:?}: expected https://HOST[:PORT]");
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, p) = v6
            .split_once(']')
            .ok_or_else(|| anyhow!("--server {url:?}: unterminated IPv6 address"))?;
        (h.to_string(), p.strip_prefix(':').unwrap_or(""))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p),
            None => (rest.to_string(), ""),
        }
    };
    let port: u16 = if port.is_empty() {
        DEFAULT_PORT
    } else {
        port.parse()
            .map_err(|_| anyhow!("--server {url:?}: invalid port {port:?}"))?
    };
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| anyhow!("--server {url:?}: invalid host name {host:?}"))?;
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(ServerAddr {
        authority,
        server_name,
    })
}

/// Why a connection to the master failed before any answer, classified
/// from the typed io and rustls errors where the connector meets them (so
/// callers branch on this, never on the error text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// `--server` is not a usable address.
    BadAddress,
    /// Nothing listens there (TCP connection refused).
    Refused,
    /// The network failed: unreachable, reset, closed during the handshake.
    Network,
    /// What answers does not speak TLS.
    NotTls,
    /// The server's certificate does not verify under the trusted CA.
    UntrustedServer,
    /// The server did not present the CA with the pinned fingerprint.
    PinMismatch,
    /// The server presented a host certificate, not the master's.
    NotMaster,
    /// The server ended the handshake with an alert (it refused this
    /// client's certificate, or the protocol).
    AlertReceived,
    /// Another TLS failure (no common protocol, a bad signature...).
    Tls,
    /// Anything else (e.g. the connect timeout).
    Other,
}

impl ConnectFailure {
    fn of_tcp(e: &std::io::Error) -> ConnectFailure {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            ConnectFailure::Refused
        } else {
            ConnectFailure::Network
        }
    }

    fn of_tls(e: &std::io::Error) -> ConnectFailure {
        let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
            return ConnectFailure::Network;
        };
        match tls {
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. } => ConnectFailure::NotTls,
            rustls::Error::InvalidCertificate(_) => ConnectFailure::UntrustedServer,
            rustls::Error::AlertReceived(_) => ConnectFailure::AlertReceived,
            rustls::Error::General(m) if m == troupe_pki::tls::PIN_MISMATCH => {
                ConnectFailure::PinMismatch
            }
            rustls::Error::General(m) if m == troupe_pki::tls::HOST_CERT_AS_SERVER => {
                ConnectFailure::NotMaster
            }
            _ => ConnectFailure::Tls,
        }
    }

    /// True when trying again later may succeed (a down master, a broken
    /// network), false for a verdict (a wrong certificate or address).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ConnectFailure::Refused
                | ConnectFailure::Network
                | ConnectFailure::NotTls
                | ConnectFailure::Other
        )
    }

    /// What to check, for the failures an operator can act on.
    pub fn hint(self) -> Option<&'static str> {
        match self {
            ConnectFailure::Refused => Some(
                "nothing listens there: is the master running, and is the port in --server right?",
            ),
            ConnectFailure::NotTls => Some(
                "what answers there does not speak TLS: give the master's gRPC port \
                 (`troupe master --listen`, 8140 by default)",
            ),
            ConnectFailure::UntrustedServer => Some(
                "the server's certificate is not from the CA this identity trusts: \
                 is --server this identity's master?",
            ),
            _ => None,
        }
    }
}

/// A connection to the master that failed: the message an operator reads
/// (unchanged from before the classification) and its [`ConnectFailure`].
#[derive(Debug)]
pub struct ConnectError {
    pub failure: ConnectFailure,
    message: String,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectError {}

/// The [`ConnectFailure`] of the first [`ConnectError`] in `e`'s chain.
pub fn connect_failure(e: &anyhow::Error) -> Option<ConnectFailure> {
    e.chain()
        .find_map(|c| c.downcast_ref::<ConnectError>())
        .map(|c| c.failure)
}

/// Opens a gRPC channel to `server` over TLS with the given rustls config.
/// (tonic's own TLS settings cannot carry a CRL or a pinned-CA verifier, so
/// the TLS handshake happens in this connector.) A failure is an `anyhow`
/// error holding a [`ConnectError`] ([`connect_failure`] reads its kind).
pub async fn connect_with(config: ClientConfig, server: &str) -> Result<Channel> {
    let addr = parse_server(server).map_err(|e| {
        anyhow::Error::new(ConnectError {
            failure: ConnectFailure::BadAddress,
            message: format!("{e:#}"),
        })
    })?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let target = addr.authority.clone();
    let name = addr.server_name.clone();
    // The connector's last failure, classified from the typed errors it
    // meets (tonic passes them on only as text).
    let failure = Arc::new(std::sync::Mutex::new(None::<ConnectFailure>));
    let seen = failure.clone();
    let service = tower::service_fn(move |_uri: tonic::codegen::http::Uri| {
        let connector = connector.clone();
        let target = target.clone();
        let name = name.clone();
        let seen = seen.clone();
        async move {
            let note = |f: ConnectFailure| {
                if let Ok(mut g) = seen.lock() {
                    *g = Some(f);
                }
            };
            let tcp = tokio::net::TcpStream::connect(&target)
                .await
                .inspect_err(|e| {
                    note(ConnectFailure::of_tcp(e));
                })?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await.inspect_err(|e| {
                note(ConnectFailure::of_tls(e));
            })?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    // The scheme is http:// because TLS is done by the connector above.
    let endpoint = Endpoint::from_shared(format!("http://{}", addr.authority))
        .context("building the endpoint")?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        // While a call or stream is open, ping the master so a dead peer (a
        // cut network, a killed master) is noticed in seconds, not when the
        // call's deadline expires.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10));
    endpoint.connect_with_connector(service).await.map_err(|e| {
        let kind = failure.lock().ok().and_then(|g| *g);
        anyhow::Error::new(ConnectError {
            failure: kind.unwrap_or(ConnectFailure::Other),
            message: format!("cannot reach the master at {server}: {}", error_chain(&e)),
        })
    })
}

/// Flattens an error and its sources into one line (tonic's transport
/// errors hide the TLS reason in their sources).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// True when a call failed because the connection was closed under it
/// (during or right after the TLS handshake: how a master refuses a
/// revoked, expired or foreign client certificate), not by an answer.
///
/// A status that carries a Troupe error code is an answer, never this.
/// The cause sits in the status' source chain as hyper and io errors that
/// tonic passes on boxed; io error kinds and rustls alerts are read by
/// type, hyper's "connection closed" / "operation was canceled" only as
/// text (hyper's error type is not reachable from here).
pub fn closed_by_master(s: &tonic::Status) -> bool {
    if troupe_proto::error_code::code_of(s).is_some()
        || !matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        )
    {
        return false;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(s);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(io.kind(), BrokenPipe | ConnectionReset | UnexpectedEof) {
                return true;
            }
            if io
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|t| matches!(t, rustls::Error::AlertReceived(_)))
            {
                return true;
            }
        }
        if let Some(rustls::Error::AlertReceived(_)) = e.downcast_ref::<rustls::Error>() {
            return true;
        }
        cur = e.source();
    }
    let mut text = s.message().to_lowercase();
    if let Some(src) = std::error::Error::source(s) {
        text.push(' ');
        text.push_str(&error_chain(src).to_lowercase());
    }
    [
        "broken pipe",
        "connection reset",
        "connection closed",
        "operation was canceled",
        "alert",
        "unexpected eof",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// A gRPC call that failed, kept typed: the gRPC code and the Troupe
/// error code, with the line an operator reads (`WHAT: status message`).
#[derive(Debug)]
pub struct CallError {
    pub grpc: tonic::Code,
    pub code: Option<troupe_proto::error_code::ErrorCode>,
    message: String,
}

impl CallError {
    /// The error for a failed call doing `what` (e.g. "fetching the CRL").
    pub fn new(what: &str, s: &tonic::Status) -> CallError {
        CallError {
            grpc: s.code(),
            code: troupe_proto::error_code::code_of(s),
            message: format!("{what}: {}", status_message(s)),
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CallError {}

/// Explains a failed gRPC call, including transport-level causes.
pub fn status_message(s: &tonic::Status) -> String {
    let mut msg = s.message().to_string();
    if let Some(src) = std::error::Error::source(s) {
        msg.push_str(&format!(" ({})", error_chain(src)));
    }
    if msg.trim().is_empty() {
        msg = format!("{:?}", s.code());
    }
    if closed_by_master(s) {
        msg.push_str(
            "; the master closed the TLS connection: this host's certificate may be \
             revoked, expired or not issued by the master's CA",
        );
    }
    msg
}

fn read_pem_cert(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let der = CertificateDer::from_pem_slice(&bytes)
        .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
    Ok(der.as_ref().to_vec())
}

/// Completes (or discards) a renewal interrupted between writing the new
/// files and renaming them into place. Safe to call at any time.
pub fn recover_renewal(state_dir: &Path) -> Result<()> {
    let key_next = state_dir.join(KEY_NEXT);
    let cert_next = state_dir.join(CERT_NEXT);
    match (key_next.exists(), cert_next.exists()) {
        // Both written: roll forward.
        (true, true) => {
            std::fs::rename(&key_next, state_dir.join(KEY_FILE))?;
            std::fs::rename(&cert_next, state_dir.join(CERT_FILE))?;
        }
        // Key already renamed: finish with the certificate.
        (false, true) => std::fs::rename(&cert_next, state_dir.join(CERT_FILE))?,
        // The certificate never arrived: the old pair is intact.
        (true, false) => std::fs::remove_file(&key_next)?,
        (false, false) => {}
    }
    Ok(())
}

/// The agent's credentials, checked for consistency.
pub struct Identity {
    pub state_dir: PathBuf,
    /// Host name (certificate CN).
    pub name: String,
    /// Certificate serial, lower-case hex.
    pub serial: String,
    pub not_before: u64,
    pub not_after: u64,
    pub ca_der: Vec<u8>,
    pub cert_der: Vec<u8>,
    key_der: PrivateKeyDer<'static>,
    crl_der: Option<Vec<u8>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// True when the state directory holds a certificate.
    pub fn exists(state_dir: &Path) -> bool {
        state_dir.join(CERT_FILE).exists() || state_dir.join(CERT_NEXT).exists()
    }

    /// Loads and cross-checks key, certificate, CA and (optional) CRL.
    pub fn load(state_dir: &Path) -> Result<Identity> {
        recover_renewal(state_dir).context("completing an interrupted renewal")?;
        let key_path = state_dir.join(KEY_FILE);
        let key_pem = std::fs::read_to_string(&key_path).with_context(|| {
            format!(
                "reading {} (has `troupe-agent bootstrap` run?)",
                key_path.display()
            )
        })?;
        let key = rcgen::KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a usable private key", key_path.display()))?;
        let cert_der = read_pem_cert(&state_dir.join(CERT_FILE))
            .context("no certificate yet (has `troupe-agent bootstrap` finished?)")?;
        let ca_der = read_pem_cert(&state_dir.join(CA_FILE))?;
        let facts = util::cert_facts(&cert_der).map_err(|e| anyhow!("{CERT_FILE}: {e}"))?;
        let key_spki = sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key));
        if key_spki.as_slice() != facts.spki_sha256 {
            bail!(
                "{KEY_FILE} does not match {CERT_FILE} in {}",
                state_dir.display()
            );
        }
        util::verify_issued_by(&cert_der, &ca_der).map_err(|e| anyhow!("{CERT_FILE}: {e}"))?;
        let crl_path = state_dir.join(CRL_FILE);
        let crl_der = if crl_path.exists() {
            let bytes = std::fs::read(&crl_path)?;
            let der = CertificateRevocationListDer::from_pem_slice(&bytes)
                .with_context(|| format!("{} is not a PEM CRL", crl_path.display()))?;
            util::verify_crl(der.as_ref(), &ca_der).map_err(|e| anyhow!("{CRL_FILE}: {e}"))?;
            Some(der.as_ref().to_vec())
        } else {
            None
        };
        let key_der =
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| anyhow!("{KEY_FILE}: {e}"))?;
        Ok(Identity {
            state_dir: state_dir.to_path_buf(),
            name: facts.cn,
            serial: facts.serial,
            not_before: facts.not_before,
            not_after: facts.not_after,
            ca_der,
            cert_der,
            key_der,
            crl_der,
        })
    }

    /// The rustls config: trust only the pinned CA (with the CRL), present
    /// our certificate.
    ///
    /// Built once per process for the same certificate, key, CA and CRL
    /// ([`shared_config`]) and cloned after: the clones share one TLS
    /// session cache, and rustls resumes a session only with the very
    /// certificate verifier and client certificate it was made with, so
    /// the agent daemon's next run resumes the last run's session (no
    /// certificate signatures to make or verify on either side) instead of
    /// a full handshake; a new certificate or CRL starts afresh.
    pub fn client_config(&self) -> Result<ClientConfig> {
        let mut h = sha2::Sha256::new();
        let none = Vec::new();
        for part in [
            &self.cert_der,
            self.key_der.secret_der(),
            &self.ca_der,
            self.crl_der.as_ref().unwrap_or(&none),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        shared_config(h.finalize().into(), || {
            let crls = self
                .crl_der
                .iter()
                .map(|c| CertificateRevocationListDer::from(c.clone()))
                .collect();
            troupe_pki::tls::client_config(
                &self.ca_der,
                crls,
                Some((
                    vec![CertificateDer::from(self.cert_der.clone())],
                    self.key_der.clone_key(),
                )),
            )
            .context("building the TLS client configuration")
        })
    }

    /// Refuses a certificate past its end: the master would close the
    /// connection without saying why, and it cannot be renewed.
    pub fn check_not_expired(&self) -> Result<()> {
        if util::now() > self.not_after {
            bail!(
                "the certificate in {} ({}, serial {}) has expired ({}); an expired \
                 certificate cannot be renewed: have the operator run `troupe ca clean {}`, \
                 then run `troupe-agent bootstrap` again",
                self.state_dir.display(),
                self.name,
                self.serial,
                util::fmt_time(self.not_after),
                self.name
            );
        }
        Ok(())
    }

    /// A mutual-TLS channel to the master (refused at once when the
    /// certificate has expired).
    pub async fn connect(&self, server: &str) -> Result<Channel> {
        self.check_not_expired()?;
        connect_with(self.client_config()?, server).await
    }

    /// True when less than a third of the certificate's lifetime is left.
    pub fn renewal_due(&self, now: u64) -> bool {
        let life = self.not_after.saturating_sub(self.not_before);
        now.saturating_add(life / 3) >= self.not_after
    }
}

use sha2::Digest as _;

/// The client TLS config of one identity (the SHA-256 of its certificate,
/// key, CA and CRL), built once per process and cloned for each connection:
/// the clones share its session cache, verifier and certificate, which is
/// what lets rustls resume a session.
///
/// Resuming skips the certificate checks of a full handshake on both
/// sides, so a session is only ever offered with the very identity and
/// trust it was made with: another certificate (a renewal) or another CRL
/// gets a config of its own. The master, for its part, forgets every
/// session when its CRL changes (a new ticket key with each TLS config)
/// and checks the caller's certificate serial against the CA on every call.
/// At most 16 identities are kept (a process has one or two); past that
/// the cache starts over.
fn shared_config(
    key: [u8; 32],
    build: impl FnOnce() -> Result<ClientConfig>,
) -> Result<ClientConfig> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CONFIGS: OnceLock<Mutex<HashMap<[u8; 32], ClientConfig>>> = OnceLock::new();
    let configs = CONFIGS.get_or_init(Default::default);
    let lock = || configs.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = lock().get(&key) {
        return Ok(c.clone());
    }
    let mut cfg = build()?;
    // Tickets for up to 4 masters (rustls keeps up to 8 per server name).
    cfg.resumption = rustls::client::Resumption::in_memory_sessions(32);
    let mut g = lock();
    if g.len() >= 16 && !g.contains_key(&key) {
        g.clear();
    }
    Ok(g.entry(key).or_insert(cfg).clone())
}

/// Fetches the CA's CRL over `channel`, checks it is signed by `ca_der`
/// and stores it as `crl.pem`.
pub async fn refresh_crl(channel: Channel, ca_der: &[u8], state_dir: &Path) -> Result<()> {
    let pem = fetch_crl(channel, ca_der).await?;
    util::write_atomic(&state_dir.join(CRL_FILE), pem.as_bytes(), 0o644)?;
    Ok(())
}

/// Fetches the CA's CRL over `channel` and checks it is signed by
/// `ca_der`; returns its PEM (stored by the caller).
pub async fn fetch_crl(channel: Channel, ca_der: &[u8]) -> Result<String> {
    let mut client = troupe_proto::v1::ca_client::CaClient::new(channel);
    let resp = client
        .get_crl(troupe_proto::v1::Empty {})
        .await
        .map_err(|s| anyhow::Error::new(CallError::new("fetching the CRL", &s)))?
        .into_inner();
    let der = CertificateRevocationListDer::from_pem_slice(resp.pem.as_bytes())
        .context("the master sent an unreadable CRL")?;
    util::verify_crl(der.as_ref(), ca_der).map_err(|e| anyhow!("the master's CRL: {e}"))?;
    Ok(resp.pem)
}

/// What to check when a connection to the master failed before any
/// answer, from the [`ConnectError`] in `e`'s chain: nothing listening,
/// something that is not TLS, a server not from the trusted CA. `None` for
/// other errors.
pub fn connect_hint(e: &anyhow::Error) -> Option<&'static str> {
    connect_failure(e).and_then(ConnectFailure::hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connect failure's kind comes from the typed io/rustls errors the
    /// connector met; the message an operator reads is unchanged.
    #[tokio::test]
    async fn connect_failures_are_classified_by_type() {
        troupe_pki::tls::install_crypto_provider();
        let cfg = || troupe_pki::tls::pinned_client_config([7; 32]).unwrap();
        // Nothing listens: bind a port, then free it.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = connect_with(cfg(), &format!("127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert_eq!(connect_failure(&e), Some(ConnectFailure::Refused), "{e:#}");
        assert!(
            e.to_string()
                .starts_with("cannot reach the master at 127.0.0.1:"),
            "{e}"
        );
        assert!(
            connect_hint(&e)
                .unwrap()
                .starts_with("nothing listens there")
        );
        // Something that answers in plain HTTP, not TLS.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let e = connect_with(cfg(), &addr.to_string()).await.unwrap_err();
        assert_eq!(connect_failure(&e), Some(ConnectFailure::NotTls), "{e:#}");
        assert!(ConnectFailure::NotTls.is_transient());
        // A bad --server is a verdict, not worth a retry.
        let e = connect_with(cfg(), "http://x").await.unwrap_err();
        assert_eq!(connect_failure(&e), Some(ConnectFailure::BadAddress));
        assert!(!ConnectFailure::BadAddress.is_transient());
        assert!(!ConnectFailure::PinMismatch.is_transient());
        // Errors not from the connector carry no kind and no hint.
        assert_eq!(connect_hint(&anyhow!("connection refused")), None);
    }

    #[test]
    fn server_urls() {
        let a = parse_server("https://127.0.0.1:9000").unwrap();
        assert_eq!(a.authority, "127.0.0.1:9000");
        let a = parse_server("master.example.com").unwrap();
        assert_eq!(a.authority, "master.example.com:8140");
        let a = parse_server("https://[::1]:81/").unwrap();
        assert_eq!(a.authority, "[::1]:81");
        assert!(parse_server("http://x").is_err());
        assert!(parse_server("https://x:notaport").is_err());
        assert!(parse_server("https://x/path").is_err());
        assert!(parse_server("").is_err());
    }

    #[test]
    fn interrupted_renewal_is_completed_or_discarded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::write(p.join(KEY_FILE), "old-key").unwrap();
        std::fs::write(p.join(CERT_FILE), "old-cert").unwrap();
        std::fs::write(p.join(KEY_NEXT), "new-key").unwrap();
        recover_renewal(p).unwrap();
        assert_eq!(
            std::fs::read_to_string(p.join(KEY_FILE)).unwrap(),
            "old-key"
        );
        assert!(!p.join(KEY_NEXT).exists());

        std::fs::write(p.join(KEY_NEXT), "new-key").unwrap();
        std::fs::write(p.join(CERT_NEXT), "new-cert").unwrap();
        recover_renewal(p).unwrap();
        assert_eq!(
            std::fs::read_to_string(p.join(KEY_FILE)).unwrap(),
            "new-key"
        );
        assert_eq!(
            std::fs::read_to_string(p.join(CERT_FILE)).unwrap(),
            "new-cert"
        );

        std::fs::write(p.join(CERT_NEXT), "newer-cert").unwrap();
        recover_renewal(p).unwrap();
        assert_eq!(
            std::fs::read_to_string(p.join(CERT_FILE)).unwrap(),
            "newer-cert"
        );
        assert!(!p.join(CERT_NEXT).exists());
    }
}
