//! `troupe deploy`'s own deploy events, delivered from the bastion through
//! sinks configured on the bastion: the `[events]` table of the bastion's
//! configuration file ([`DEFAULT_CONFIG`], `/etc/troupe/bastion.toml`;
//! `--config FILE` or `TROUPE_BASTION_CONFIG` for another), with the same
//! syntax as master.toml's (webhook, email, exec; kind filters, retries,
//! timeouts):
//!
//! ```toml
//! [events]
//! [[events.webhook]]          # chat: JSON POST with a `text` field
//! url = "https://chat.example.com/hooks/xyz"   # every kind but deploy_step
//! [[events.email]]            # the full log at the end of each release
//! server = "smtp.example.com"
//! from = "troupe@example.com"
//! to = ["ops@example.com"]
//! kinds = ["deploy_finished", "deploy_aborted"]
//! ```
//!
//! Each record the release sends to the master is also kept here and
//! turned into the same event the master raises from it
//! ([`crate::deploy_log::event_of`]): deploy started, package started,
//! host failed, package done, finished, aborted (and deploy_step for a
//! sink that names it). The email at the end (success or abort) carries
//! the release's full log, built from the records this bastion sent (the
//! same text as `troupe deploy log ID` on the master). Sinks run beside
//! the release and never block or fail it; at the end `troupe deploy`
//! waits at most [`FINISH_WAIT`] for what is still queued, then says
//! which sink did not take which events (exit status unchanged).
//!
//! The master's own `[events]` sinks still get the deploy events from the
//! records it stores: configure deploy sinks on one side, or give each
//! side its own `kinds`.

use crate::deploy_log::{DeployEntry, event_of, fold};
use crate::deploy_record::{DeployRecord, now_rfc3339};
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use troupe_events::config::EventsConfig;
use troupe_events::sinks::{ReleaseLogs, Sinks, Tally};

/// The bastion's configuration file, read when present.
pub const DEFAULT_CONFIG: &str = "/etc/troupe/bastion.toml";
/// The longest `troupe deploy` waits at its end for its sinks.
pub const FINISH_WAIT: Duration = Duration::from_secs(30);

/// The bastion's configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BastionConfig {
    /// Where `troupe deploy`'s events go (the syntax of master.toml's
    /// `[events]`; `cert_expiry_days` and `scan_interval` mean nothing
    /// here).
    #[serde(default)]
    pub events: Option<EventsConfig>,
}

impl BastionConfig {
    /// Reads `path`, or [`DEFAULT_CONFIG`] when none is given (then a
    /// missing file is an empty configuration; a named one must exist).
    /// The file can name programs to run (exec sinks), so it is refused
    /// when someone but root or this user could have changed it.
    pub fn load(path: Option<&Path>) -> Result<BastionConfig> {
        let (path, named) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG), false),
        };
        let text = troupe_base::trust::read_trusted_file(&path, "bastion configuration")?;
        let Some(text) = text else {
            if named {
                bail!(
                    "bastion configuration {}: no such file (give an existing file, or leave \
                     --config out to read {DEFAULT_CONFIG} when it exists)",
                    path.display()
                );
            }
            return Ok(BastionConfig::default());
        };
        let cfg: BastionConfig =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if let Some(e) = &cfg.events {
            e.check()
                .map_err(|m| anyhow::anyhow!("{}: {m}", path.display()))?;
        }
        Ok(cfg)
    }
}

/// The records of this release, for the email at its end.
#[derive(Default)]
struct Kept {
    entries: Mutex<Vec<DeployEntry>>,
}

impl ReleaseLogs for Kept {
    fn full_log(&self, id: &str) -> Result<Option<String>, String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Ok(fold(id, entries.clone()).map(|l| l.to_text()))
    }
}

/// One release's events on the bastion's sinks.
pub struct LocalEvents {
    sinks: Sinks,
    tally: Arc<Tally>,
    kept: Arc<Kept>,
    id: String,
    by: String,
    title: String,
    environment: Option<String>,
}

impl LocalEvents {
    /// Starts the sinks of `cfg` for release `id` sent by `by` (this
    /// bastion's certificate name). `None` when no sink is configured.
    /// Must run inside a tokio runtime.
    pub fn start(cfg: &EventsConfig, id: &str, by: &str) -> Result<Option<LocalEvents>> {
        if cfg.webhook.is_empty() && cfg.email.is_empty() && cfg.exec.is_empty() {
            return Ok(None);
        }
        let tally = Arc::new(Tally::default());
        let kept = Arc::new(Kept::default());
        let sinks = Sinks::start(cfg, kept.clone(), tally.clone(), "troupe-deploy")
            .map_err(|e| anyhow::anyhow!("bastion configuration: {e}"))?;
        Ok(Some(LocalEvents {
            sinks,
            tally,
            kept,
            id: id.to_string(),
            by: by.to_string(),
            title: String::new(),
            environment: None,
        }))
    }

    /// Keeps record `seq` and offers its event to the sinks; never blocks.
    pub fn record(&mut self, seq: u64, record: &DeployRecord) {
        if let DeployRecord::Started {
            title, environment, ..
        } = record
        {
            self.title = title.clone();
            self.environment = environment.clone();
        }
        self.kept
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(DeployEntry {
                seq,
                by: self.by.clone(),
                received: now_rfc3339(),
                record: record.clone(),
            });
        let kept = self.kept.clone();
        let mut ev = event_of(
            &self.id,
            &self.by,
            &self.title,
            self.environment.as_deref(),
            record,
            |host, step| {
                let entries = kept.entries.lock().unwrap_or_else(|p| p.into_inner());
                entries.iter().rev().find_map(|e| match &e.record {
                    DeployRecord::Step {
                        host: h,
                        step: s,
                        result,
                        ..
                    } if h == host && s == step && result != "ok" => Some(result.clone()),
                    _ => None,
                })
            },
        );
        ev.seq = seq + 1;
        self.sinks.offer(&ev);
    }

    /// Waits (at most `limit`) for the sinks to deliver what is queued;
    /// returns one line per sink that did not take every event, for a
    /// warning.
    pub async fn finish(self, limit: Duration) -> Vec<String> {
        let names = self.sinks.names();
        let done = self.sinks.finish(limit).await;
        let mut out = Vec::new();
        for n in names {
            let failed = self.tally.get(&n, "failed");
            let dropped = self.tally.get(&n, "dropped");
            if failed + dropped > 0 {
                out.push(format!(
                    "event sink {n}: {failed} event(s) not delivered after every retry, \
                     {dropped} dropped (queue full)"
                ));
            }
        }
        if !done {
            out.push(format!(
                "event sinks: still delivering after {}; the rest was abandoned",
                humantime::format_duration(limit)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_config_file_is_checked_and_trusted_only_when_safe() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("bastion.toml");
        std::fs::write(
            &f,
            "[events]\n[[events.webhook]]\nurl = \"https://chat.example.com/hooks/x\"\nkinds = [\"deploy_*\"]\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = BastionConfig::load(Some(&f)).unwrap();
        assert_eq!(c.events.unwrap().webhook.len(), 1);

        for (bad, says) in [
            ("[event]\n", "unknown field"),
            (
                "[events]\n[[events.exec]]\nargv = [\"notify\"]\n",
                "absolute path",
            ),
            (
                "[events]\n[[events.webhook]]\nurl = \"https://x/\"\nkinds = [\"deploy\"]\n",
                "names no event kind",
            ),
        ] {
            std::fs::write(&f, bad).unwrap();
            let e = format!("{:#}", BastionConfig::load(Some(&f)).unwrap_err());
            assert!(e.contains(says), "{bad}: {e}");
        }
        std::fs::write(&f, "").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = format!("{:#}", BastionConfig::load(Some(&f)).unwrap_err());
        assert!(e.contains("writable by group or others"), "{e}");
        let e = format!(
            "{:#}",
            BastionConfig::load(Some(&d.path().join("none.toml"))).unwrap_err()
        );
        assert!(e.contains("no such file"), "{e}");
    }
}
