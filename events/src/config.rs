//! The `[events]` table of master.toml: when events are raised and where
//! they go (README "Chat and email notifications", docs/json.md "Events").
//!
//! ```toml
//! [events]
//! cert_expiry_days = 14     # cert_expiring when a certificate expires sooner
//! scan_interval = "5m"      # how often stale nodes and certificates are checked
//! queue = 256               # events waiting per sink; more are dropped and counted
//!
//! [[events.webhook]]        # JSON POST; `text` is what chat tools show
//! url = "https://chat.example.com/hooks/xyz"
//! kinds = ["run_failed", "deploy_*"]   # default: every kind but deploy_step
//!
//! [[events.email]]          # SMTP with STARTTLS
//! server = "smtp.example.com"
//! from = "troupe@example.com"
//! to = ["ops@example.com"]
//!
//! [[events.exec]]           # argv, the event as JSON on stdin
//! argv = ["/usr/local/bin/page-oncall", "--team", "ops"]
//! ```
//!
//! Secrets stay out of the file and out of `--print-config`: the SMTP
//! password comes from `password_file`, and webhook URLs (which carry a
//! token in Slack and Mattermost) are shown with their path and query
//! replaced by `…`.

use super::EventKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// A duration: `"30s"` (humantime) or whole seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dur(pub Duration);

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Dur(Duration::from_secs(n))),
            Raw::Text(t) => humantime::parse_duration(&t).map(Dur).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a duration ({e}); e.g. \"30s\", \"5m\" or a number of seconds"
                ))
            }),
        }
    }
}

/// Which kinds a sink takes: names (`run_failed`) or a prefix with `*`
/// (`deploy_*`, `*`). Empty: every kind but `deploy_step`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KindFilter(pub Vec<String>);

impl KindFilter {
    /// Checks every pattern names at least one kind.
    pub fn check(&self) -> Result<(), String> {
        for p in &self.0 {
            if !EventKind::ALL.iter().any(|k| pattern_matches(p, *k)) {
                let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                return Err(format!(
                    "kinds: {p:?} names no event kind (kinds: {}; a trailing * matches a prefix)",
                    names.join(", ")
                ));
            }
        }
        Ok(())
    }

    pub fn takes(&self, kind: EventKind) -> bool {
        if self.0.is_empty() {
            return kind != EventKind::DeployStep;
        }
        self.0.iter().any(|p| pattern_matches(p, kind))
    }
}

fn pattern_matches(p: &str, kind: EventKind) -> bool {
    match p.strip_suffix('*') {
        Some(prefix) => kind.as_str().starts_with(prefix),
        None => p == kind.as_str(),
    }
}

/// `[[events.webhook]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// A name for logs and metrics (default `webhook-N`).
    #[serde(default)]
    pub name: Option<String>,
    /// `https://...` (or `http://...`).
    pub url: String,
    #[serde(default)]
    pub kinds: KindFilter,
    /// Per attempt (connect, TLS, request, answer).
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Dur,
    /// Extra attempts after a failure (connection error, timeout, a status
    /// other than 2xx).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Wait before the first retry; doubled before each next one (at most
    /// 60s).
    #[serde(default = "default_retry_delay")]
    pub retry_delay: Dur,
    /// A PEM file of CA certificates trusted besides the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How an email sink talks to its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (required; port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only to a server on a loopback address.
    None,
}

/// `[[events.email]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// The SMTP server's host name (checked against its certificate).
    pub server: String,
    /// Default 587 (465 with `tls = "tls"`, 25 with `tls = "none"`).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    pub from: String,
    pub to: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (first line), read at start; owned by
    /// root or the master's user and not readable by others.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub kinds: KindFilter,
    #[serde(default = "default_email_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_retry_delay")]
    pub retry_delay: Dur,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// `[[events.exec]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// The program (absolute path) and its arguments; no shell.
    pub argv: Vec<String>,
    #[serde(default)]
    pub kinds: KindFilter,
    /// The program is killed after this long.
    #[serde(default = "default_exec_timeout")]
    pub timeout: Dur,
    #[serde(default)]
    pub retries: u32,
    #[serde(default = "default_retry_delay")]
    pub retry_delay: Dur,
}

/// The whole `[events]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    #[serde(default = "default_expiry_days")]
    pub cert_expiry_days: u32,
    #[serde(default = "default_scan_interval")]
    pub scan_interval: Dur,
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
    #[serde(default)]
    pub email: Vec<EmailConfig>,
    #[serde(default)]
    pub exec: Vec<ExecConfig>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            cert_expiry_days: default_expiry_days(),
            scan_interval: default_scan_interval(),
            queue: default_queue(),
            webhook: Vec::new(),
            email: Vec::new(),
            exec: Vec::new(),
        }
    }
}

fn default_expiry_days() -> u32 {
    14
}
fn default_scan_interval() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_queue() -> usize {
    256
}
fn default_webhook_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_email_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_exec_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_retries() -> u32 {
    3
}
fn default_retry_delay() -> Dur {
    Dur(Duration::from_secs(2))
}

/// A URL with its path and query hidden (they carry the token).
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?']).next().unwrap_or("");
            if host.len() < rest.len() {
                format!("{scheme}://{host}/…")
            } else {
                format!("{scheme}://{host}")
            }
        }
        None => "…".into(),
    }
}

impl EventsConfig {
    /// Checks what serde cannot: names, filters, argv, addresses.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=365).contains(&self.cert_expiry_days) {
            return Err("events.cert_expiry_days: between 1 and 365".into());
        }
        if self.scan_interval.0 < Duration::from_secs(1) {
            return Err("events.scan_interval: at least 1s".into());
        }
        if !(1..=100_000).contains(&self.queue) {
            return Err("events.queue: between 1 and 100000".into());
        }
        for (i, w) in self.webhook.iter().enumerate() {
            let at = format!("events.webhook[{i}]");
            w.kinds.check().map_err(|e| format!("{at}.{e}"))?;
            let uri: hyper::Uri = w
                .url
                .parse()
                .map_err(|e| format!("{at}.url: not a URL ({e})"))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(format!(
                    "{at}.url: {} is not an http:// or https:// URL with a host",
                    redact_url(&w.url)
                ));
            }
            check_timing(&at, w.timeout, w.retries)?;
        }
        for (i, m) in self.email.iter().enumerate() {
            let at = format!("events.email[{i}]");
            m.kinds.check().map_err(|e| format!("{at}.{e}"))?;
            if m.to.is_empty() {
                return Err(format!("{at}.to: give at least one address"));
            }
            for a in m.to.iter().chain([&m.from]) {
                a.parse::<lettre::Address>()
                    .map_err(|e| format!("{at}: {a:?} is not an email address ({e})"))?;
            }
            if m.tls == SmtpTls::None && !is_loopback(&m.server) {
                return Err(format!(
                    "{at}.tls = \"none\": only for a server on a loopback address, not {}; \
                     use \"starttls\" (the default) or \"tls\"",
                    m.server
                ));
            }
            if m.username.is_some() != m.password_file.is_some() {
                return Err(format!(
                    "{at}: give username and password_file together, or neither"
                ));
            }
            check_timing(&at, m.timeout, m.retries)?;
        }
        for (i, x) in self.exec.iter().enumerate() {
            let at = format!("events.exec[{i}]");
            x.kinds.check().map_err(|e| format!("{at}.{e}"))?;
            match x.argv.first() {
                Some(p) if p.starts_with('/') => {}
                _ => {
                    return Err(format!(
                        "{at}.argv: the first item must be the program's absolute path"
                    ));
                }
            }
            check_timing(&at, x.timeout, x.retries)?;
        }
        Ok(())
    }

    /// The table as `--print-config` shows it (secrets hidden).
    pub fn to_json(&self) -> serde_json::Value {
        let kinds = |k: &KindFilter| serde_json::to_value(k).unwrap_or_default();
        serde_json::json!({
            "cert_expiry_days": self.cert_expiry_days,
            "scan_interval": self.scan_interval,
            "queue": self.queue,
            "webhook": self.webhook.iter().map(|w| serde_json::json!({
                "name": w.name, "url": redact_url(&w.url), "kinds": kinds(&w.kinds),
                "timeout": w.timeout, "retries": w.retries, "retry_delay": w.retry_delay,
                "ca_file": w.ca_file,
            })).collect::<Vec<_>>(),
            "email": self.email.iter().map(|m| serde_json::json!({
                "name": m.name, "server": m.server, "port": m.port, "tls": m.tls,
                "from": m.from, "to": m.to, "username": m.username,
                "password_file": m.password_file, "kinds": kinds(&m.kinds),
                "timeout": m.timeout, "retries": m.retries, "retry_delay": m.retry_delay,
                "ca_file": m.ca_file,
            })).collect::<Vec<_>>(),
            "exec": self.exec.iter().map(|x| serde_json::json!({
                "name": x.name, "argv": x.argv, "kinds": kinds(&x.kinds),
                "timeout": x.timeout, "retries": x.retries, "retry_delay": x.retry_delay,
            })).collect::<Vec<_>>(),
        })
    }
}

impl Serialize for EventsConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

fn check_timing(at: &str, timeout: Dur, retries: u32) -> Result<(), String> {
    if timeout.0 < Duration::from_millis(100) || timeout.0 > Duration::from_secs(600) {
        return Err(format!("{at}.timeout: between 100ms and 10m"));
    }
    if retries > 20 {
        return Err(format!("{at}.retries: at most 20"));
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<EventsConfig, String> {
        let c: EventsConfig = toml::from_str(t).map_err(|e| e.to_string())?;
        c.check()?;
        Ok(c)
    }

    #[test]
    fn sinks_parse_filters_match_and_secrets_stay_hidden() {
        let c = parse(
            r#"
            cert_expiry_days = 7
            scan_interval = "30s"
            [[webhook]]
            url = "https://chat.example.com/hooks/s3cr3t-token"
            kinds = ["run_failed", "deploy_*"]
            [[email]]
            server = "smtp.example.com"
            from = "troupe@example.com"
            to = ["ops@example.com"]
            [[exec]]
            argv = ["/bin/cat"]
            timeout = 5
            "#,
        )
        .unwrap();
        assert_eq!(c.scan_interval.0, Duration::from_secs(30));
        assert_eq!(c.exec[0].timeout.0, Duration::from_secs(5));
        let f = &c.webhook[0].kinds;
        assert!(f.takes(EventKind::RunFailed) && f.takes(EventKind::DeployAborted));
        assert!(!f.takes(EventKind::NodeStale));
        assert!(KindFilter::default().takes(EventKind::NodeStale));
        assert!(!KindFilter::default().takes(EventKind::DeployStep));
        let shown = c.to_json().to_string();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("https://chat.example.com/…"), "{shown}");

        for (bad, says) in [
            ("[[webhook]]\nurl = \"ftp://x/y\"", "not an http"),
            (
                "[[webhook]]\nurl = \"https://x/\"\nkinds = [\"run-failed\"]",
                "names no event kind",
            ),
            ("[[exec]]\nargv = [\"notify\"]", "absolute path"),
            ("[[exec]]\nargv = []", "absolute path"),
            (
                "[[email]]\nserver = \"smtp.example.com\"\ntls = \"none\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]",
                "loopback",
            ),
            (
                "[[email]]\nserver = \"s\"\nfrom = \"nope\"\nto = [\"d@e.f\"]",
                "not an email address",
            ),
            (
                "[[webhook]]\nurl = \"https://x/\"\ntimeout = \"soon\"",
                "not a duration",
            ),
            (
                "[[webhook]]\nurl = \"https://x/\"\nverb = \"PUT\"",
                "unknown field",
            ),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
