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

use super::config::{EmailConfig, EventsConfig, KindFilter, SmtpTls, WebhookConfig};
use super::deploys::DeployStore;
use super::{Event, EventKind};
use crate::metrics::Metrics;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The longest wait between two attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

struct Handle {
    name: String,
    kinds: KindFilter,
    tx: mpsc::Sender<Event>,
}

/// The configured sinks (see the module documentation).
#[derive(Default)]
pub struct Sinks {
    handles: Vec<Handle>,
    metrics: Option<Arc<Metrics>>,
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
    metrics: Arc<Metrics>,
}

impl Sinks {
    /// No sinks.
    pub fn none() -> Sinks {
        Sinks::default()
    }

    /// Starts one worker per configured sink (on the current tokio
    /// runtime). Fails, naming the sink, when a sink cannot be set up (a
    /// CA or password file that does not read).
    pub fn start(
        cfg: &EventsConfig,
        data_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Result<Sinks, String> {
        cfg.check()?;
        let deploys_dir = data_dir.join(super::deploys::DEPLOYS_DIR);
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
                },
            ));
        }
        for (i, m) in cfg.email.iter().enumerate() {
            let name = m.name.clone().unwrap_or_else(|| format!("email-{}", i + 1));
            let target = Email::new(m, deploys_dir.clone())
                .map_err(|e| format!("events.email[{i}]: {e}"))?;
            workers.push((
                m.kinds.clone(),
                Worker {
                    name,
                    target: Target::Email(Box::new(target)),
                    timeout: m.timeout.0,
                    retries: m.retries,
                    retry_delay: m.retry_delay.0,
                    metrics: metrics.clone(),
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
                },
            ));
        }
        let mut handles = Vec::new();
        for (kinds, w) in workers {
            let (tx, rx) = mpsc::channel(cfg.queue);
            handles.push(Handle {
                name: w.name.clone(),
                kinds,
                tx,
            });
            tokio::spawn(w.run(rx));
        }
        Ok(Sinks {
            handles,
            metrics: Some(metrics),
        })
    }

    /// The sinks' names, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.handles.iter().map(|h| h.name.clone()).collect()
    }

    /// Queues `event` for every sink that takes it; never blocks.
    pub fn offer(&self, event: &Event, _deploys: &DeployStore) {
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
            Target::Webhook(w) => w.post(ev).await,
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

    async fn post(&self, ev: &Event) -> Result<(), String> {
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
            .header(hyper::header::USER_AGENT, "troupe-master")
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
    deploys: DeployStore,
}

impl Email {
    fn new(c: &EmailConfig, deploys_dir: PathBuf) -> Result<Email, String> {
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
            deploys: DeployStore::new(deploys_dir),
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
            match self.deploys.read(id) {
                Ok(Some(log)) => {
                    body.push_str("\nThe release's full log (troupe deploy log ");
                    body.push_str(id);
                    body.push_str("):\n\n");
                    body.push_str(&log.to_text());
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
    //! Every event kind delivered to real local receivers: an HTTP server
    //! (axum), a shell hook, and aiosmtpd speaking SMTP with STARTTLS
    //! required (Debian's python3-aiosmtpd).
    use super::*;
    use crate::events::{Events, config::Dur};
    use std::sync::Mutex;
    use std::time::Instant;

    type Got = Arc<Mutex<Vec<serde_json::Value>>>;

    /// POST /hook records the body; POST /flaky answers 500 twice, then
    /// records like /hook.
    async fn receiver() -> (String, Got, Arc<Mutex<u32>>) {
        let got: Got = Arc::default();
        let flaky = Arc::new(Mutex::new(0u32));
        let (g1, g2, f) = (got.clone(), got.clone(), flaky.clone());
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(move |body: String| async move {
                    g1.lock()
                        .unwrap()
                        .push(serde_json::from_str(&body).unwrap());
                    "ok"
                }),
            )
            .route(
                "/flaky",
                axum::routing::post(move |body: String| async move {
                    let n = {
                        let mut n = f.lock().unwrap();
                        *n += 1;
                        *n
                    };
                    if n <= 2 {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down");
                    }
                    let mut v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    v["via"] = "flaky".into();
                    g2.lock().unwrap().push(v);
                    (axum::http::StatusCode::OK, "ok")
                }),
            );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        (url, got, flaky)
    }

    /// A server that accepts connections and never answers.
    async fn dead() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        url
    }

    /// aiosmtpd on a free port with STARTTLS required, a CA-signed
    /// certificate for localhost, and a maildir.
    fn smtp_server(dir: &Path) -> (std::process::Child, u16, PathBuf) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_p.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_p, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let maildir = dir.join("mail");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tlscert")
            .arg(dir.join("cert.pem"))
            .arg("--tlskey")
            .arg(dir.join("key.pem"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (apt-get install python3-aiosmtpd)");
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "aiosmtpd did not start (apt-get install python3-aiosmtpd)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (child, port, maildir)
    }

    fn mails(maildir: &Path) -> Vec<String> {
        std::fs::read_dir(maildir.join("new"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn wait(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
        let t = Instant::now();
        while !ok() {
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_kind_reaches_a_real_webhook_hook_and_mailbox_and_dead_sinks_block_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (url, got, flaky) = receiver().await;
        let dead_url = dead().await;
        let (mut smtp, port, maildir) = smtp_server(d.path());
        let hook_out = d.path().join("hook.jsonl");
        let toml = format!(
            r#"
            [[webhook]]
            name = "chat"
            url = "{url}/hook"
            kinds = ["*"]
            [[webhook]]
            name = "flaky"
            url = "{url}/flaky"
            kinds = ["run_failed"]
            retry_delay = "50ms"
            [[webhook]]
            name = "dead"
            url = "{dead_url}"
            timeout = "200ms"
            retries = 1
            retry_delay = "50ms"
            [[exec]]
            name = "hook"
            argv = ["/bin/sh", "-c", "cat >> {out}; echo \"$TROUPE_EVENT_KIND\" >> {out}.kinds"]
            kinds = ["*"]
            [[email]]
            name = "mail"
            server = "localhost"
            port = {port}
            from = "troupe@example.com"
            to = ["ops@example.com"]
            ca_file = "{ca}"
            kinds = ["deploy_finished", "deploy_aborted"]
            "#,
            out = hook_out.display(),
            ca = d.path().join("ca.pem").display(),
        );
        let cfg: EventsConfig = toml::from_str(&toml).unwrap();
        let metrics = Arc::new(Metrics::new());
        let sinks = Sinks::start(&cfg, d.path(), metrics.clone()).unwrap();
        assert_eq!(sinks.names(), ["chat", "flaky", "dead", "mail", "hook"]);
        let bus = Events::with_sinks(d.path(), sinks);
        // A release log for the mail at its end.
        use troupe_bastion::deploy_record::{DeployRecord, PlannedPackage};
        let id = "20261206T210000Z-0a0b0c";
        bus.deploys
            .append(
                id,
                0,
                "bastion",
                &DeployRecord::Started {
                    title: "nginx 1.24".into(),
                    environment: None,
                    packages: vec![PlannedPackage {
                        name: "nginx".into(),
                        version: "1.24.0-1".into(),
                        batches: vec![vec!["web1".into(), "web2".into()]],
                    }],
                    not_connected: vec![],
                    time: "2026-12-06T21:00:00.000Z".into(),
                },
            )
            .unwrap();
        bus.deploys
            .append(
                id,
                1,
                "bastion",
                &DeployRecord::HostFailed {
                    host: "web2".into(),
                    package: "nginx".into(),
                    step: "update nginx to 1.24.0-1".into(),
                    error: "failed: E: Unable to fetch".into(),
                    left: vec!["in maintenance".into()],
                    undo: vec!["troupe run maintenance.off --name web2".into()],
                    time: "2026-12-06T21:00:02.000Z".into(),
                },
            )
            .unwrap();

        let t = Instant::now();
        for k in EventKind::ALL {
            let mut e = Event::new(k, format!("{k} happened")).node("web1");
            if k.as_str().starts_with("deploy_") {
                e = e.release(id);
            }
            bus.emit(e);
        }
        // The dead webhook (and the slow ones) delay nothing.
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );

        wait("every kind at the webhook", 20, || {
            got.lock()
                .unwrap()
                .iter()
                .filter(|v| v["via"].is_null())
                .count()
                == EventKind::ALL.len()
        })
        .await;
        let seen = got.lock().unwrap().clone();
        for k in EventKind::ALL {
            let v = seen
                .iter()
                .find(|v| v["kind"] == k.as_str() && v["via"].is_null())
                .unwrap_or_else(|| panic!("{k} not delivered: {seen:?}"));
            assert_eq!(v["text"], format!("{k} happened"));
            assert_eq!(v["node"], "web1");
            assert!(v["seq"].as_u64().unwrap() >= 1);
        }
        // Retried until the flaky receiver took it: two failed attempts.
        wait("the flaky webhook", 20, || seen_via(&got, "flaky")).await;
        assert_eq!(*flaky.lock().unwrap(), 3);
        // The exec hook got each event as JSON on stdin.
        wait("every kind at the exec hook", 20, || {
            std::fs::read_to_string(&hook_out).map_or(0, |s| s.lines().count())
                == EventKind::ALL.len()
        })
        .await;
        let lines = std::fs::read_to_string(&hook_out).unwrap();
        for (line, k) in lines.lines().zip(EventKind::ALL) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["kind"], k.as_str());
        }
        let kinds = std::fs::read_to_string(format!("{}.kinds", hook_out.display())).unwrap();
        assert_eq!(kinds.lines().next(), Some("run_failed"));
        // Mail over STARTTLS: the end of the release carries its full log.
        wait("two mails", 30, || mails(&maildir).len() == 2).await;
        // Undo quoted-printable soft line breaks, if the mail used them.
        let all = mails(&maildir)
            .join("\n----\n")
            .replace("=\r\n", "")
            .replace("=\n", "");
        assert!(
            all.contains("Subject: [troupe] deploy_aborted happened"),
            "{all}"
        );
        assert!(
            all.contains("Subject: [troupe] deploy_finished happened"),
            "{all}"
        );
        assert!(
            all.contains("web2 FAILED (nginx) at update nginx to 1.24.0-1"),
            "{all}"
        );
        assert!(
            all.contains("undo: troupe run maintenance.off --name web2"),
            "{all}"
        );
        assert!(all.contains("To: ops@example.com"), "{all}");
        // The dead webhook: each event tried twice, then given up; counted.
        wait("the dead webhook to give up", 30, || {
            metrics.encode().contains(&format!(
                "troupe_event_sink_events_total{{sink=\"dead\",outcome=\"failed\"}} {}",
                EventKind::ALL.len() - 1
            ))
        })
        .await;
        let text = metrics.encode();
        for needle in [
            format!(
                "troupe_event_sink_attempt_failures_total{{sink=\"dead\"}} {}",
                2 * (EventKind::ALL.len() - 1)
            ),
            "troupe_event_sink_attempt_failures_total{sink=\"flaky\"} 2".to_string(),
            "troupe_event_sink_events_total{sink=\"flaky\",outcome=\"delivered\"} 1".to_string(),
            "troupe_event_sink_events_total{sink=\"mail\",outcome=\"delivered\"} 2".to_string(),
            format!(
                "troupe_event_sink_events_total{{sink=\"chat\",outcome=\"delivered\"}} {}",
                EventKind::ALL.len()
            ),
            "troupe_events_total{kind=\"node_stale\"} 1".to_string(),
        ] {
            assert!(text.contains(&needle), "missing {needle:?} in:\n{text}");
        }
        let _ = smtp.kill();
        let _ = smtp.wait();
    }

    fn seen_via(got: &Got, via: &str) -> bool {
        got.lock().unwrap().iter().any(|v| v["via"] == via)
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting() {
        let d = tempfile::tempdir().unwrap();
        let cfg = EventsConfig {
            queue: 1,
            webhook: vec![WebhookConfig {
                name: Some("dead".into()),
                url: dead().await,
                kinds: KindFilter::default(),
                timeout: Dur(Duration::from_secs(30)),
                retries: 0,
                retry_delay: Dur(Duration::from_millis(10)),
                ca_file: None,
            }],
            ..Default::default()
        };
        let metrics = Arc::new(Metrics::new());
        let bus = Events::with_sinks(
            d.path(),
            Sinks::start(&cfg, d.path(), metrics.clone()).unwrap(),
        );
        let t = Instant::now();
        for i in 0..50 {
            bus.emit(Event::new(EventKind::RunFailed, format!("{i}")));
            tokio::task::yield_now().await;
        }
        assert!(t.elapsed() < Duration::from_millis(500));
        let text = metrics.encode();
        // One being delivered, one queued, the rest dropped.
        let dropped = text
            .lines()
            .find(|l| {
                l.starts_with("troupe_event_sink_events_total{sink=\"dead\",outcome=\"dropped\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!((48..=49).contains(&dropped), "{text}");
    }
}
