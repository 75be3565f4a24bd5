//! The master's event sinks: [`troupe_events::sinks`] (webhook, email,
//! exec; bounded queues, retries, timeouts) counted in the master's
//! Prometheus metrics (`troupe_event_sink_events_total{sink,outcome}`,
//! `troupe_event_sink_attempt_failures_total{sink}`,
//! `troupe_events_total{kind}`), with the release logs of
//! `DATA/deploys/` for the email at the end of a release.

use super::Event;
use super::config::EventsConfig;
use super::deploys::DeployStore;
use crate::metrics::Metrics;
use std::path::Path;
use std::sync::Arc;

impl troupe_events::sinks::Counters for Metrics {
    fn event(&self, kind: &str) {
        Metrics::event(self, kind)
    }
    fn sink(&self, sink: &str, outcome: &str) {
        Metrics::sink(self, sink, outcome)
    }
    fn sink_attempt_failed(&self, sink: &str) {
        Metrics::sink_attempt_failed(self, sink)
    }
}

impl troupe_events::sinks::ReleaseLogs for DeployStore {
    fn full_log(&self, id: &str) -> Result<Option<String>, String> {
        self.read(id)
            .map(|l| l.map(|l| l.to_text()))
            .map_err(|e| e.to_string())
    }
}

/// The configured sinks (see the module documentation).
#[derive(Default)]
pub struct Sinks(troupe_events::sinks::Sinks);

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
        let logs = Arc::new(DeployStore::new(data_dir.join(super::deploys::DEPLOYS_DIR)));
        troupe_events::sinks::Sinks::start(cfg, logs, metrics, "troupe-master").map(Sinks)
    }

    /// The sinks' names, in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.0.names()
    }

    /// Queues `event` for every sink that takes it; never blocks.
    pub fn offer(&self, event: &Event, _deploys: &DeployStore) {
        self.0.offer(event)
    }
}

#[cfg(test)]
mod tests {
    //! Every event kind delivered to real local receivers: an HTTP server
    //! (axum), a shell hook, and aiosmtpd speaking SMTP with STARTTLS
    //! required (Debian's python3-aiosmtpd).
    use super::*;
    use crate::events::{
        EventKind, Events,
        config::{Dur, KindFilter, WebhookConfig},
    };
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::Duration;
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
