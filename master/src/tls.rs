//! The master's TLS listener and caller identity.
//!
//! tonic's own TLS config has no CRL hook, so the master terminates TLS
//! itself: a rustls `ServerConfig` from `troupe_pki::tls::server_config`
//! (client certificates verified against the CA and its CRL, optional so
//! bootstrap works), handshakes done by `tokio_rustls`, and each resulting
//! stream served as HTTP/2 by `hyper` with `tonic`'s routes on the task that
//! did its handshake ([`serve`]). The config is swapped atomically when the
//! CRL changes. Both layers write into a buffer that the connection's task
//! sends each time its poll ends ([`Wire`]): one `write` per wake-up.

use anyhow::{Context, Result};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
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
    let mut refusals = crate::admission::RefusalLog::new("");
    // A connection's local address is the listener's unless it listens on
    // a wildcard address (then it is not recorded: nothing reads it).
    let local = listener
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
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
                refusals.refused(addr, why, &admission);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (wire, io) = Wire::new(tcp, addr, local);
        let acceptor = TlsAcceptor::from(tls.current());
        let metrics = metrics.clone();
        let routes = routes.clone();
        let http2 = http2.clone();
        let mut closing = closing.clone();
        tokio::spawn(send_held_after_each_poll(wire, async move {
            let timeout = slot.timeout;
            let accepted = tokio::time::timeout(timeout, acceptor.accept(io)).await;
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
        }));
    }
}

/// Most bytes a connection holds back before a write goes to the socket
/// at once (and waits for room there).
const HOLD_MAX: usize = 64 * 1024;

/// The TCP socket of one master connection, shared by its I/O
/// ([`Coalesce`], under TLS) and its task ([`send_held_after_each_poll`]).
///
/// Why: each layer flushes on its own. rustls flushes its handshake flight
/// and then the session ticket, HTTP/2 its SETTINGS, the SETTINGS ACK and
/// each response: 5 `writev` per resumed connection with one check-in,
/// each a trip through the kernel's TCP stack (on loopback also the
/// receiver's). Here a flush only leaves the bytes due; the connection's
/// task sends all that is due in one `write` each time its poll ends, i.e.
/// before it sleeps. So nothing is delayed past the moment the task would
/// wait (for the peer, a timer or a response), and every layer's writes of
/// one wake-up leave together: the ticket, SETTINGS and ACK in one call.
/// (Session 9's attempt sent held bytes only when a read would wait; h2
/// writes a response after its last read of a poll, so the response was
/// never sent: the stall.)
struct Wire {
    /// The peer's address, from `accept` (no `getpeername` per connection).
    peer: SocketAddr,
    /// The listener's address when it is not a wildcard.
    local: Option<SocketAddr>,
    out: Mutex<Held>,
}

struct Held {
    /// Taken out only by `Drop` (see there).
    wr: Option<OwnedWriteHalf>,
    bytes: Vec<u8>,
    /// A failed send: every later write, flush or shutdown fails with it.
    failed: Option<std::io::ErrorKind>,
}

impl Wire {
    /// The connection's write side and its reads ([`Coalesce`]).
    fn new(tcp: TcpStream, peer: SocketAddr, local: Option<SocketAddr>) -> (Arc<Wire>, Coalesce) {
        // tokio's halves: its reads skip the `recv` that would only say
        // EAGAIN after a short read.
        let (rd, wr) = tcp.into_split();
        let wire = Arc::new(Wire {
            peer,
            local,
            out: Mutex::new(Held {
                wr: Some(wr),
                bytes: Vec::new(),
                failed: None,
            }),
        });
        (wire.clone(), Coalesce { rd, wire })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // Nothing panics while holding it; a poisoned lock's data is whole.
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        // The socket closes when both halves are gone; the write half would
        // first call `shutdown`, which `poll_shutdown` did already or which
        // fails (the peer closed first): one syscall less per connection.
        if let Some(wr) = self.held().wr.take() {
            wr.forget();
        }
    }
}

impl Held {
    /// Sends everything held: `Pending` (write interest registered with
    /// `cx`) while the socket is full. A failure is kept.
    fn poll_send(&mut self, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        if let Some(kind) = self.failed {
            return Poll::Ready(Err(kind.into()));
        }
        let Some(wr) = self.wr.as_mut() else {
            return Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()));
        };
        let mut sent = 0;
        let r = loop {
            if sent == self.bytes.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut *wr).poll_write(cx, &self.bytes[sent..]) {
                Poll::Pending => break Poll::Pending,
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => break Poll::Ready(Err(e)),
            }
        };
        if sent == self.bytes.len() {
            // An idle connection (an agent's command stream) keeps no
            // buffer.
            self.bytes = Vec::new();
        } else {
            self.bytes.drain(..sent);
        }
        if let Poll::Ready(Err(e)) = &r {
            self.failed = Some(e.kind());
            self.bytes = Vec::new();
        }
        r
    }
}

/// Runs `conn` (a connection's handshake and HTTP/2) and, each time a poll
/// of it ends, sends what its layers wrote meanwhile ([`Wire`]). When it
/// returns, what is still held (a refused handshake's alert) gets one
/// non-blocking try before the socket closes.
async fn send_held_after_each_poll(wire: Arc<Wire>, conn: impl Future<Output = ()>) {
    let mut conn = std::pin::pin!(conn);
    let mut done = false;
    std::future::poll_fn(|cx| {
        if !done {
            done = conn.as_mut().poll(cx).is_ready();
        }
        match wire.held().poll_send(cx) {
            // Finished: nothing more is written; or a send failed (the
            // layers see it on their next write; the socket's error or
            // end shows on their next read, which this poll registered).
            _ if done => Poll::Ready(()),
            _ => Poll::Pending,
        }
    })
    .await;
    let held = wire.held();
    if let (Some(wr), false, None) = (&held.wr, held.bytes.is_empty(), held.failed) {
        let _ = wr.try_write(&held.bytes);
    }
}

/// The I/O that TLS runs on: reads from the socket, writes held in the
/// connection's [`Wire`] until its task's poll ends.
struct Coalesce {
    rd: OwnedReadHalf,
    wire: Arc<Wire>,
}

impl AsyncRead for Coalesce {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.rd).poll_read(cx, buf)
    }
}

impl AsyncWrite for Coalesce {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let mut held = self.wire.held();
        if let Some(kind) = held.failed {
            return Poll::Ready(Err(kind.into()));
        }
        if held.bytes.len() >= HOLD_MAX {
            std::task::ready!(held.poll_send(cx))?;
        }
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        held.bytes.reserve(n);
        for b in bufs {
            held.bytes.extend_from_slice(b);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        // Due, sent when the task's poll ends (see `Wire`).
        match self.wire.held().failed {
            Some(kind) => Poll::Ready(Err(kind.into())),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        let mut held = self.wire.held();
        std::task::ready!(held.poll_send(cx))?;
        match held.wr.as_mut() {
            Some(wr) => Pin::new(wr).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Connected for Coalesce {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    /// The addresses `accept` gave: what the CA's audit log records as a
    /// request's source (`Request::remote_addr`).
    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.wire.local,
            remote_addr: Some(self.wire.peer),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server connection on 127.0.0.1 and its client.
    async fn pair() -> (Arc<Wire>, Coalesce, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = l.local_addr().ok();
        let client = TcpStream::connect(local.unwrap()).await.unwrap();
        let (tcp, peer) = l.accept().await.unwrap();
        let (wire, io) = Wire::new(tcp, peer, local);
        (wire, io, client)
    }

    /// Reads exactly `n` bytes, failing instead of hanging on a stall.
    async fn read_n(c: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut b))
            .await
            .expect("the server's bytes never came (held and not sent)")
            .unwrap();
        b
    }

    #[tokio::test]
    async fn bytes_written_after_the_last_read_of_a_poll_are_sent() {
        // HTTP/2's order: in one poll the connection reads until it would
        // wait, then writes and flushes a response, then sleeps until the
        // peer sends more, which the peer does only after that response.
        let (wire, io, mut client) = pair().await;
        let server = tokio::spawn(send_held_after_each_poll(wire, async move {
            let (mut rd, mut wr) = tokio::io::split(io);
            let mut buf = [0u8; 1];
            let mut answered = false;
            std::future::poll_fn(|cx| {
                let r = Pin::new(&mut rd).poll_read(cx, &mut tokio::io::ReadBuf::new(&mut buf));
                if !answered {
                    for part in [&b"tick"[..], b"et", b"+answer"] {
                        assert!(Pin::new(&mut wr).poll_write(cx, part).is_ready());
                        assert!(Pin::new(&mut wr).poll_flush(cx).is_ready());
                    }
                    answered = true;
                }
                r
            })
            .await
            .unwrap();
            assert_eq!(&buf, b"!");
            wr.write_all(b"bye").await.unwrap();
            wr.shutdown().await.unwrap();
        }));
        assert_eq!(read_n(&mut client, 13).await, b"ticket+answer");
        client.write_all(b"!").await.unwrap();
        assert_eq!(read_n(&mut client, 3).await, b"bye");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "shutdown ends the stream");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn bytes_held_when_the_connection_ends_are_sent() {
        // A refused handshake writes its alert and the task ends without a
        // flush or shutdown.
        let (wire, mut io, mut client) = pair().await;
        send_held_after_each_poll(wire, async move {
            io.write_all(b"alert").await.unwrap();
        })
        .await;
        assert_eq!(read_n(&mut client, 5).await, b"alert");
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the socket is closed after");
    }

    #[tokio::test]
    async fn a_large_write_goes_out_while_the_peer_reads() {
        // More than HOLD_MAX and more than the socket buffers: the writer
        // waits for room and everything arrives in order.
        let (wire, mut io, mut client) = pair().await;
        let body: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        let expect = body.clone();
        let server = tokio::spawn(send_held_after_each_poll(wire, async move {
            io.write_all(&body).await.unwrap();
            io.shutdown().await.unwrap();
        }));
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), client.read_to_end(&mut got))
            .await
            .expect("stalled")
            .unwrap();
        assert!(
            got == expect,
            "{} bytes arrived of {}",
            got.len(),
            expect.len()
        );
        server.await.unwrap();
    }

    #[tokio::test]
    async fn the_peer_address_comes_from_accept() {
        // What the CA's audit log records as a request's source.
        let (_wire, io, client) = pair().await;
        let info = io.connect_info();
        assert_eq!(info.remote_addr, Some(client.local_addr().unwrap()));
        assert_eq!(info.local_addr, Some(client.peer_addr().unwrap()));
    }
}
