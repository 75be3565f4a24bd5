//! The master's TLS listener and caller identity.
//!
//! tonic's own TLS config has no CRL hook, so the master terminates TLS
//! itself: a rustls `ServerConfig` from `troupe_pki::tls::server_config`
//! (client certificates verified against the CA and its CRL, optional so
//! bootstrap works), handshakes done by `tokio_rustls`, and each resulting
//! stream served as HTTP/2 by `hyper` with `tonic`'s routes on the task that
//! did its handshake ([`serve`]). The config is swapped atomically when the
//! CRL changes.

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;
use tonic::{Request, Status};
use tower::ServiceExt;
use troupe_pki::{Authority, util};

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the backlog.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 1024;

/// The master's server certificate and the live rustls config.
pub struct ServerTls {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    config: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Issues a fresh server certificate for `names` from the CA, writes it
    /// to `DATA/server/{cert,key}.pem` (key 0600) and builds the config.
    pub fn new(ca: &Authority, names: &[String], data_dir: &Path) -> Result<ServerTls> {
        let (chain, key) = ca
            .issue_server_cert(names)
            .context("issuing the master's TLS certificate")?;
        let dir = data_dir.join("server");
        util::ensure_private_dir(&dir, 0o700)?;
        let key_pem = util::pem_encode("PRIVATE KEY", key.secret_der());
        util::write_atomic(&dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
        let chain_pem: String = chain
            .iter()
            .map(|c| util::pem_encode("CERTIFICATE", c))
            .collect();
        util::write_atomic(&dir.join("cert.pem"), chain_pem.as_bytes(), 0o644)?;
        let cfg =
            troupe_pki::tls::server_config(ca.ca_der(), chain.clone(), key.clone_key(), ca.crls())
                .context("building the TLS server configuration")?;
        Ok(ServerTls {
            chain,
            key,
            config: RwLock::new(Arc::new(cfg)),
        })
    }

    /// Rebuilds the config with the CA's current CRL.
    pub fn reload(&self, ca: &Authority) -> Result<()> {
        let cfg = troupe_pki::tls::server_config(
            ca.ca_der(),
            self.chain.clone(),
            self.key.clone_key(),
            ca.crls(),
        )?;
        let mut cur = self
            .config
            .write()
            .map_err(|_| anyhow::anyhow!("TLS config lock poisoned"))?;
        *cur = Arc::new(cfg);
        Ok(())
    }

    /// The config new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// The HTTP/2 settings of every connection: the ones `tonic`'s `Server`
/// used when it served the master (its defaults, keep-alive pings every
/// 30 s, 20 s to answer), so nothing changes for agents or tools.
fn http2_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .initial_connection_window_size(None)
        .initial_stream_window_size(None)
        .max_concurrent_streams(None)
        .keep_alive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .adaptive_window(false)
        .max_pending_accept_reset_streams(None)
        .max_local_error_reset_streams(None)
        .max_frame_size(None);
    b
}

/// Keep-alive pings on idle connections (an agent's command stream).
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a ping may go unanswered before the connection is closed.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Serves gRPC (`routes`) on `listener` until `stop` completes, then
/// closes the listener, asks every open connection to finish (HTTP/2
/// GOAWAY: requests in flight complete) and returns when all are closed.
///
/// Each accepted TCP connection gets one task that does the TLS handshake
/// with the current config (bounded by [`HANDSHAKE_TIMEOUT`] and
/// [`crate::admission`]) and then serves HTTP/2 on the same task. Refused
/// handshakes (unknown CA, revoked certificate, ...) are logged and
/// dropped. The handshake used to hand each stream through a channel to
/// `tonic`'s accept loop, which ran on the main thread and spawned the
/// connection's task: two cross-thread wake-ups and a task per connection
/// that a new connection per agent run pays (issue 20). Every request sees
/// the connection's `tonic` TLS info (`Request::peer_certs`), as before.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    metrics: Arc<crate::metrics::Metrics>,
    routes: tonic::service::Routes,
    stop: impl std::future::Future<Output = ()>,
) {
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let accepting = tokio::spawn(accept_loop(listener, tls, metrics, routes, closing));
    stop.await;
    // Aborting the loop drops the listener: no new connection is taken.
    accepting.abort();
    let _ = accepting.await;
    let _ = closing_tx.send(true);
    // Every connection (and handshake) task holds a receiver.
    closing_tx.closed().await;
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    metrics: Arc<crate::metrics::Metrics>,
    routes: tonic::service::Routes,
    closing: tokio::sync::watch::Receiver<bool>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    let admission = crate::admission::Admission::new(MAX_CONCURRENT_HANDSHAKES);
    let http2 = Arc::new(http2_builder());
    let mut refused_logged = std::time::Instant::now() - Duration::from_secs(60);
    let mut refused_since = 0u64;
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            break;
        };
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Bounded per source, a reserve, shorter timeouts under
        // pressure (crate::admission); a refused connection is closed
        // at once (logged at most every 10 s, with a count).
        let slot = match admission.admit(addr.ip(), HANDSHAKE_TIMEOUT) {
            Ok(s) => s,
            Err(why) => {
                drop(tcp);
                refused_since += 1;
                if refused_logged.elapsed() >= Duration::from_secs(10) {
                    tracing::warn!(
                        peer = %addr,
                        refused = refused_since,
                        in_progress = admission.in_progress(),
                        "connections closed before their TLS handshake ({why:?}): too many in progress"
                    );
                    refused_logged = std::time::Instant::now();
                    refused_since = 0;
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(tls.current());
        let metrics = metrics.clone();
        let routes = routes.clone();
        let http2 = http2.clone();
        let mut closing = closing.clone();
        tokio::spawn(async move {
            let timeout = slot.timeout;
            let accepted = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
            drop(slot);
            drop(permit);
            let stream = match accepted {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::info!(peer = %addr, "TLS handshake refused: {e}");
                    return;
                }
                Err(_) => {
                    tracing::info!(peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            let resumed =
                stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
            metrics.tls_connection(resumed);
            // What `Request::peer_certs` reads: the verified chain.
            let info = stream.connect_info();
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(info.clone());
                routes.clone().oneshot(req)
            });
            let conn = http2.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let mut asked = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(peer = %addr, "connection ended: {e}");
                        }
                        break;
                    }
                    changed = closing.changed(), if !asked => {
                        // Shutting down (or the server is gone): finish
                        // the requests in flight, take no new ones.
                        let _ = changed;
                        asked = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
}

/// The caller of an authenticated call, from its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Host name (certificate CN).
    pub name: String,
    /// Certificate serial, lower-case hex.
    pub serial: String,
}

/// The identity of the caller, taken ONLY from the client certificate that
/// the TLS layer verified against the CA and CRL, and re-checked against
/// the CA's records (so a revocation also ends calls on connections opened
/// before it). Every call other than the bootstrap ones must start here.
#[allow(clippy::result_large_err)]
pub fn peer_identity<T>(ca: &Authority, req: &Request<T>) -> Result<Peer, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("this call requires a client certificate"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("this call requires a client certificate"))?;
    let facts = util::cert_facts(leaf)
        .map_err(|e| Status::unauthenticated(format!("unreadable client certificate: {e}")))?;
    ca.check_peer(&facts.cn, &facts.serial).map_err(|e| {
        let code = e.code();
        troupe_proto::error_code::with_code(Status::unauthenticated(e.to_string()), code)
    })?;
    Ok(Peer {
        name: facts.cn,
        serial: facts.serial,
    })
}
