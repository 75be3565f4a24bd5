//! Where events go besides the bus: webhooks (JSON POST), email (SMTP with
//! STARTTLS, through lettre) and exec hooks (argv, the event as JSON on
//! stdin), as configured in master.toml's `[events]` table
//! ([`super::config`]).
//!
//! Each sink has its own worker task and a bounded queue
//! (`events.queue`): [`Sinks::offer`] never waits; an event that finds the
//! queue full is dropped, logged and counted
//! (`troupe_event_sink_events_total{outcome="dropped"}`). A worker tries
//! each event `1 + retries` times, each attempt bounded by the sink's
//! `timeout`, waiting `retry_delay` (doubled each time, at most 60s)
//! between attempts; each failed attempt is logged and counted
//! (`troupe_event_sink_attempt_failures_total`), an event given up on too
//! (`outcome="failed"`). So a dead sink delays nothing but its own queue.
//!
//! The counting goes through [`Counters`] (the master's Prometheus
//! metrics; [`Tally`] for a short-lived process like `troupe deploy`), and
//! the full log an email carries at the end of a release comes from
//! [`ReleaseLogs`] (the master's stored logs; the bastion's own records).
//! A short-lived process calls [`Sinks::finish`] before it exits: it lets
//! the workers deliver what is queued, for at most a given time.

use crate::config::{EmailConfig, EventsConfig, KindFilter, SmtpTls, WebhookConfig};
use crate::{Event, EventKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The longest wait between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Where a sink's outcomes are counted.
pub trait Counters: Send + Sync + 'static {
    /// An event was offered to the sinks.
    fn event(&self, kind: &str);
    /// What became of one event at one sink: `delivered`, `failed` (every
    /// attempt failed) or `dropped` (its queue was full).
    fn sink(&self, sink: &str, outcome: &str);
    /// One delivery attempt failed.
    fn sink_attempt_failed(&self, sink: &str);
}

/// The text of a release's full log, for the email at its end
/// (`deploy_finished`, `deploy_aborted`). `Ok(None)`: no such release.
pub trait ReleaseLogs: Send + Sync + 'static {
    fn full_log(&self, id: &str) -> Result<Option<String>, String>;
}

/// No release logs (every email says the log was not found).
pub struct NoLogs;

impl ReleaseLogs for NoLogs {
    fn full_log(&self, _id: &str) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// Outcomes counted in memory: `(sink, outcome) -> n`.
#[derive(Default)]
pub struct Tally {
    counts: std::sync::Mutex<std::collections::BTreeMap<(String, String), u64>>,
}

impl Tally {
    /// How many events reached `outcome` at `sink`.
    pub fn get(&self, sink: &str, outcome: &str) -> u64 {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.get(&(sink.to_string(), outcome.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every `(sink, outcome, n)` counted, in name order.
    pub fn all(&self) -> Vec<(String, String, u64)> {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.iter()
            .map(|((s, o), n)| (s.clone(), o.clone(), *n))
            .collect()
    }

    fn add(&self, sink: &str, outcome: &str) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        *c.entry((sink.to_string(), outcome.to_string()))
            .or_default() += 1;
    }
}

impl Counters for Tally {
    fn event(&self, _kind: &str) {}
    fn sink(&self, sink: &str, outcome: &str) {
        self.add(sink, outcome);
    }
    fn sink_attempt_failed(&self, sink: &str) {
        self.add(sink, "attempt_failed");
    }
}

struct Handle {
    name: String,
    kinds: KindFilter,
    tx: mpsc::Sender<Event>,
}

/// The configured sinks (see the module documentation).
#[derive(Default)]
pub struct Sinks {
    handles: Vec<Handle>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    metrics: Option<Arc<dyn Counters>>,
}

/// How one sink delivers.
enum Target {
    Webhook(Webhook),
    Email(Box<Email>),
    Exec(Exec),
}

struct Worker {
    name: String,
    target: Target,
    timeout: Duration,
    retries: u32,
    retry_delay: Duration,
    metrics: Arc<dyn Counters>,
    /// Who sends (the webhook's User-Agent).
    agent: &'static str,
}

impl Sinks {
    /// No sinks.
    pub fn none() -> Sinks {
        Sinks::default()
    }

    /// Starts one worker per configured sink (on the current tokio
    /// runtime). Fails, naming the sink, when a sink cannot be set up (a
    /// CA or password file that does not read). `agent` names the sender
    /// (`troupe-master`, `troupe-deploy`).
    pub fn start(
        cfg: &EventsConfig,
        logs: Arc<dyn ReleaseLogs>,
        metrics: Arc<dyn Counters>,
        agent: &'static str,
    ) -> Result<Sinks, String> {
        cfg.check()?;
        let mut workers = Vec::new();
        for (i, w) in cfg.webhook.iter().enumerate() {
            let name = w
                .name
                .clone()
                .unwrap_or_else(|| format!("webhook-{}", i + 1));
            let target = Webhook::new(w).map_err(|e| format!("events.webhook[{i}]: {e}"))?;
            workers.push((
                w.kinds.clone(),
                Worker {
                    name,
                    target: Target::Webhook(target),
                    timeout: w.timeout.0,
                    retries: w.retries,
                    retry_delay: w.retry_delay.0,
                    metrics: metrics.clone(),
                    agent,
                },
            ));
        }
        for (i, m) in cfg.email.iter().enumerate() {
            let name = m.name.clone().unwrap_or_else(|| format!("email-{}", i + 1));
            let target =
                Email::new(m, logs.clone()).map_err(|e| format!("events.email[{i}]: {e}"))?;
            workers.push((
                m.kinds.clone(),
                Worker {
                    name,
                    target: Target::Email(Box::new(target)),
                    timeout: m.timeout.0,
                    retries: m.retries,
                    retry_delay: m.retry_delay.0,
                    metrics: metrics.clone(),
                    agent,
                },
            ));
        }
        for (i, x) in cfg.exec.iter().enumerate() {
            let name = x.name.clone().unwrap_or_else(|| format!("exec-{}", i + 1));
            workers.push((
                x.kinds.clone(),
                Worker {
                    name,
                    target: Target::Exec(Exec {
                        argv: x.argv.clone(),
                    }),
                    timeout: x.timeout.0,
                    retries: x.retries,
                    retry_delay: x.retry_delay.0,
                    metrics: metrics.clone(),
                    agent,
                },
            ));
        }
        let mut handles = Vec::new();
        let mut tasks = Vec::new();
        for (kinds, w) in workers {
            let (tx, rx) = mpsc::channel(cfg.queue);
            handles.push(Handle {
                name: w.name.clone(),
                kinds,
                tx,
            });
            tasks.push(tokio::spawn(w.run(rx)));
        }
        Ok(Sinks {
            handles,
            workers: tasks,
            metrics: Some(metrics),
        })
    }

    /// The sinks' names, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.handles.iter().map(|h| h.name.clone()).collect()
    }

    /// Queues `event` for every sink that takes it; never blocks.
    pub fn offer(&self, event: &Event) {
        if let Some(m) = &self.metrics {
            m.event(event.kind.as_str());
        }
        for h in &self.handles {
            if !h.kinds.takes(event.kind) {
                continue;
            }
            if let Err(e) = h.tx.try_send(event.clone()) {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "its queue is full",
                    mpsc::error::TrySendError::Closed(_) => "its worker stopped",
                };
                tracing::warn!(sink = %h.name, kind = %event.kind, seq = event.seq, "event dropped: {why}");
                if let Some(m) = &self.metrics {
                    m.sink(&h.name, "dropped");
                }
            }
        }
    }
}

impl Sinks {
    /// Whether no sink is configured.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Takes no more events and waits for the workers to deliver what is
    /// queued (retries included), for at most `limit`; what is left then
    /// is abandoned. Returns whether everything queued was dealt with
    /// (delivered or given up on) in time.
    pub async fn finish(self, limit: Duration) -> bool {
        let Sinks {
            handles, workers, ..
        } = self;
        drop(handles);
        let all = async {
            for w in workers {
                let _ = w.await;
            }
        };
        tokio::time::timeout(limit, all).await.is_ok()
    }
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Event>) {
        while let Some(ev) = rx.recv().await {
            let mut delay = self.retry_delay;
            for attempt in 0..=self.retries {
                let r = match tokio::time::timeout(self.timeout, self.deliver(&ev)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("timed out after {:?}", self.timeout)),
                };
                match r {
                    Ok(()) => {
                        self.metrics.sink(&self.name, "delivered");
                        break;
                    }
                    Err(e) => {
                        self.metrics.sink_attempt_failed(&self.name);
                        let last = attempt == self.retries;
                        tracing::warn!(
                            sink = %self.name, kind = %ev.kind, seq = ev.seq,
                            attempt = attempt + 1, of = self.retries + 1,
                            "event not delivered{}: {e}",
                            if last { ", giving up" } else { "" }
                        );
                        if last {
                            self.metrics.sink(&self.name, "failed");
                        } else {
                            tokio::time::sleep(delay).await;
                            delay = (delay * 2).min(MAX_RETRY_DELAY);
                        }
                    }
                }
            }
        }
    }

    async fn deliver(&self, ev: &Event) -> Result<(), String> {
        match &self.target {
            Target::Webhook(w) => w.post(ev, self.agent).await,
            Target::Email(m) => m.send(ev).await,
            Target::Exec(x) => x.run(ev).await,
        }
    }
}

/// Trusted roots: the public ones, plus the certificates of `ca_file`.
fn root_store(ca_file: Option<&PathBuf>) -> Result<rustls::RootCertStore, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(f) = ca_file {
        let mut n = 0;
        for c in
            CertificateDer::pem_file_iter(f).map_err(|e| format!("ca_file {}: {e}", f.display()))?
        {
            let c = c.map_err(|e| format!("ca_file {}: {e}", f.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("ca_file {}: {e}", f.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!("ca_file {}: no certificate in it", f.display()));
        }
    }
    Ok(roots)
}

/// A webhook: one JSON POST per event (the event itself, whose `text`
/// chat tools show).
struct Webhook {
    uri: hyper::Uri,
    host: String,
    port: u16,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Webhook {
    fn new(c: &WebhookConfig) -> Result<Webhook, String> {
        let uri: hyper::Uri = c.url.parse().map_err(|e| format!("url: {e}"))?;
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let roots = root_store(c.ca_file.as_ref())?;
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| format!("url: host {host:?}: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name))
        } else {
            None
        };
        Ok(Webhook {
            uri,
            host,
            port,
            tls,
        })
    }

    async fn post(&self, ev: &Event, agent: &str) -> Result<(), String> {
        let body = serde_json::to_vec(ev).map_err(|e| e.to_string())?;
        let path = self
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        let authority = self
            .uri
            .authority()
            .map_or(self.host.clone(), |a| a.to_string());
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, agent)
            .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
        let status = match &self.tls {
            Some((connector, name)) => {
                let s = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", self.host))?;
                exchange(hyper_util::rt::TokioIo::new(s), req).await?
            }
            None => exchange(hyper_util::rt::TokioIo::new(tcp), req).await?,
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the webhook answered HTTP {status}"))
        }
    }
}

async fn exchange<T>(
    io: T,
    req: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
) -> Result<hyper::StatusCode, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let r = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"));
    conn.abort();
    Ok(r?.status())
}

/// An email sink: one message per event; at the end of a release
/// (`deploy_finished`, `deploy_aborted`) the body holds its whole log.
struct Email {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
    to: Vec<lettre::message::Mailbox>,
    logs: Arc<dyn ReleaseLogs>,
}

impl Email {
    fn new(c: &EmailConfig, logs: Arc<dyn ReleaseLogs>) -> Result<Email, String> {
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        let port = c.port.unwrap_or(match c.tls {
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
            SmtpTls::None => 25,
        });
        let mut b = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous(
            c.server.as_str(),
        )
        .port(port)
        .timeout(Some(c.timeout.0));
        if c.tls != SmtpTls::None {
            let mut p = TlsParameters::builder(c.server.clone());
            if let Some(f) = &c.ca_file {
                let pem = std::fs::read(f).map_err(|e| format!("ca_file {}: {e}", f.display()))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| format!("ca_file {}: {e}", f.display()))?;
                p = p.add_root_certificate(cert);
            }
            let p = p.build_rustls().map_err(|e| format!("TLS: {e}"))?;
            b = b.tls(if c.tls == SmtpTls::Starttls {
                Tls::Required(p)
            } else {
                Tls::Wrapper(p)
            });
        }
        if let (Some(user), Some(file)) = (&c.username, &c.password_file) {
            let text = troupe_base::trust::read_trusted_file(file, "SMTP password file")
                .map_err(|e| format!("password_file: {}", troupe_base::cli::one_line(&e)))?
                .ok_or_else(|| format!("password_file {}: no such file", file.display()))?;
            let pass = text.lines().next().unwrap_or("").to_string();
            b = b.credentials(lettre::transport::smtp::authentication::Credentials::new(
                user.clone(),
                pass,
            ));
        }
        let mailbox = |a: &String| {
            a.parse::<lettre::message::Mailbox>()
                .map_err(|e| format!("{a:?}: {e}"))
        };
        Ok(Email {
            transport: b.build(),
            from: mailbox(&c.from)?,
            to: c.to.iter().map(mailbox).collect::<Result<_, _>>()?,
            logs,
        })
    }

    async fn send(&self, ev: &Event) -> Result<(), String> {
        use lettre::AsyncTransport;
        let mut subject = format!("[troupe] {}", ev.text);
        if subject.chars().count() > 160 {
            subject = subject.chars().take(159).collect::<String>() + "…";
        }
        let mut body = mail_body(ev);
        if matches!(
            ev.kind,
            EventKind::DeployFinished | EventKind::DeployAborted
        ) && let Some(id) = &ev.release
        {
            match self.logs.full_log(id) {
                Ok(Some(log)) => {
                    body.push_str("\nThe release's full log (troupe deploy log ");
                    body.push_str(id);
                    body.push_str("):\n\n");
                    body.push_str(&log);
                }
                Ok(None) => body.push_str("\n(the release's log was not found)\n"),
                Err(e) => body.push_str(&format!("\n(the release's log does not read: {e})\n")),
            }
        }
        let mut m = lettre::Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(lettre::message::header::ContentType::TEXT_PLAIN);
        for t in &self.to {
            m = m.to(t.clone());
        }
        let msg = m
            .body(body)
            .map_err(|e| format!("building the message: {e}"))?;
        self.transport
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}

/// The text of an event's email.
fn mail_body(ev: &Event) -> String {
    let mut b = format!("{}\n\nkind: {}\ntime: {}\n", ev.text, ev.kind, ev.time);
    for (k, v) in [
        ("node", &ev.node),
        ("release", &ev.release),
        ("environment", &ev.environment),
    ] {
        if let Some(v) = v {
            b.push_str(&format!("{k}: {v}\n"));
        }
    }
    // The typed error code (ADR 0008), as webhooks and exec hooks get it.
    if let Some(c) = ev.code {
        b.push_str(&format!("code: {c}\n"));
    }
    if ev.data.as_object().is_some_and(|o| !o.is_empty()) {
        b.push_str("data: ");
        b.push_str(&serde_json::to_string_pretty(&ev.data).unwrap_or_default());
        b.push('\n');
    }
    b
}

/// An exec hook: the program with its argv (no shell), the event as one
/// JSON line on stdin, `TROUPE_EVENT_KIND` in its environment; exit 0 is
/// delivered. Killed at the sink's timeout.
struct Exec {
    argv: Vec<String>,
}

impl Exec {
    async fn run(&self, ev: &Event) -> Result<(), String> {
        use tokio::io::AsyncWriteExt;
        let mut line = serde_json::to_vec(ev).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let mut child = tokio::process::Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .env("TROUPE_EVENT_KIND", ev.kind.as_str())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.argv[0]))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A hook that does not read its input is its business.
            let _ = stdin.write_all(&line).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("{}: {e}", self.argv[0]))?;
        if out.status.success() {
            Ok(())
        } else {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect::<String>();
            Err(format!(
                "{} {}{}",
                self.argv[0],
                out.status,
                if err.is_empty() {
                    String::new()
                } else {
                    format!(": {err}")
                }
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_base::error_code::ErrorCode;

    #[test]
    fn a_mail_carries_the_events_typed_code() {
        let mut ev =
            Event::new(EventKind::CommandRefused, "web1: service.restart refused").node("web1");
        ev.code = Some(ErrorCode::PermissionDenied);
        let body = mail_body(&ev);
        assert!(body.contains("\nnode: web1\n"), "{body}");
        assert!(body.contains("\ncode: permission_denied\n"), "{body}");
        ev.code = None;
        assert!(!mail_body(&ev).contains("code:"));
    }
}
