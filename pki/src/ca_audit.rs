//! The CA's audit log, `DATA/ca/audit.log`: hash-chained through
//! [`troupe_base::audit`] (so `troupe audit verify` covers it), with
//! refusals aggregated per source address and size-based rotation, so
//! unauthenticated requests cannot grow it without bound.
//!
//! - **Aggregation.** The first refusal from a network source (an
//!   `IP:port` or IP; the port is dropped) in a window of
//!   [`CaAuditLimits::refusal_window_secs`] is written as usual (`refuse`).
//!   Later refusals from that address inside the window are only counted;
//!   the count is written as one `refuse_repeated` record (`count`,
//!   `first`, `last`, `last_reason`) at the first audit write after the
//!   window closed, when more than [`MAX_TRACKED_SOURCES`] addresses are
//!   tracked, and when the CA is dropped ([`CaAudit::flush`]). Refusals of
//!   operators and other non-network sources are always written.
//! - **Rotation.** When `audit.log` has reached
//!   [`CaAuditLimits::max_bytes`], it becomes `audit.log.1` (with its head
//!   `audit.log.1.head`; older ones shift to `.2` … up to
//!   [`CaAuditLimits::keep`], the oldest is deleted). Each file is its own
//!   chain and verifies alone; the new `audit.log` starts a new chain whose
//!   first record (`rotated`) names the previous file and its last `seq`
//!   and hash, so the files link up.

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use troupe_base::audit::{AuditError, AuditLog, head_path};

/// Most source addresses whose repeated refusals are counted at once; past
/// this, all counts are written out and counting starts afresh.
pub const MAX_TRACKED_SOURCES: usize = 4096;

/// Limits of the CA audit log.
#[derive(Debug, Clone, Copy)]
pub struct CaAuditLimits {
    /// Rotate `audit.log` once it holds this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` … `audit.log.KEEP`), at least 1.
    pub keep: u32,
    /// Repeated refusals from one address within this many seconds are
    /// written as one counted record. 0 writes every refusal.
    pub refusal_window_secs: u64,
}

impl Default for CaAuditLimits {
    fn default() -> Self {
        CaAuditLimits {
            max_bytes: 16 << 20,
            keep: 4,
            refusal_window_secs: 60,
        }
    }
}

struct Counted {
    window_start: u64,
    count: u64,
    first: u64,
    last: u64,
    last_host: String,
    last_reason: String,
}

/// The open CA audit log.
pub struct CaAudit {
    path: PathBuf,
    log: Option<AuditLog>,
    limits: CaAuditLimits,
    counted: HashMap<IpAddr, Counted>,
}

fn source_ip(source: &str) -> Option<IpAddr> {
    source
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .or_else(|_| source.parse::<IpAddr>())
        .ok()
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

fn rename_if_exists(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

impl CaAudit {
    /// Opens (creating) the log at `path`, verifying its chain. Finishes a
    /// rotation that a crash interrupted between moving the log and its
    /// head.
    pub fn open(path: &Path, limits: CaAuditLimits) -> Result<CaAudit, AuditError> {
        let head = head_path(path);
        let prev = rotated(path, 1);
        if !path.exists() && head.exists() && prev.exists() && !head_path(&prev).exists() {
            std::fs::rename(&head, head_path(&prev)).map_err(|source| AuditError::Io {
                path: head.clone(),
                source,
            })?;
        }
        let legacy = Self::move_legacy(path)?;
        let mut log = AuditLog::open(path)?;
        if let Some(old) = legacy {
            log.append(&serde_json::json!({
                "ts": crate::util::fmt_time(crate::util::now()),
                "event": "legacy-log-moved",
                "host": "",
                "detail": {"previous": old},
            }))?;
        }
        Ok(CaAudit {
            path: path.to_path_buf(),
            log: Some(log),
            limits: CaAuditLimits {
                keep: limits.keep.max(1),
                ..limits
            },
            counted: HashMap::new(),
        })
    }

    /// A CA audit log from before the chain (plain JSON lines, no head
    /// file) is moved aside to `audit.log.plain-UNIXTIME`, unchanged, and
    /// its name returned: the new chain's first record names it.
    fn move_legacy(path: &Path) -> Result<Option<String>, AuditError> {
        use std::io::BufRead;
        if head_path(path).exists() {
            return Ok(None);
        }
        let Ok(f) = std::fs::File::open(path) else {
            return Ok(None);
        };
        let mut first = String::new();
        let _ = std::io::BufReader::new(f)
            .take(1 << 20)
            .read_line(&mut first);
        let plain = matches!(
            serde_json::from_str::<serde_json::Value>(first.trim_end()),
            Ok(serde_json::Value::Object(o)) if !o.contains_key("record") && o.contains_key("event")
        );
        if !plain {
            return Ok(None);
        }
        let mut to = path.as_os_str().to_owned();
        to.push(format!(".plain-{}", crate::util::now()));
        let to = PathBuf::from(to);
        std::fs::rename(path, &to).map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        tracing::warn!(from = %path.display(), to = %to.display(), "moved the CA's old plain audit log aside; a hash-chained log starts now");
        Ok(to.file_name().map(|n| n.to_string_lossy().into_owned()))
    }

    /// Records one event. A refusal (`event == "refuse"`) from a network
    /// source may only be counted (see the module docs). Returns whether a
    /// record for this event itself was written now.
    pub fn record(
        &mut self,
        now: u64,
        event: &str,
        host: &str,
        detail: serde_json::Value,
    ) -> Result<bool, AuditError> {
        self.flush_expired(now)?;
        if event == "refuse" && self.limits.refusal_window_secs > 0 {
            let ip = detail
                .get("source")
                .and_then(|s| s.as_str())
                .and_then(source_ip);
            if let Some(ip) = ip {
                if let Some(c) = self.counted.get_mut(&ip) {
                    c.count += 1;
                    if c.count == 1 {
                        c.first = now;
                    }
                    c.last = now;
                    c.last_host = host.to_string();
                    c.last_reason = detail
                        .get("reason")
                        .and_then(|r| r.as_str())
                        .unwrap_or_default()
                        .to_string();
                    return Ok(false);
                }
                if self.counted.len() >= MAX_TRACKED_SOURCES {
                    self.flush()?;
                }
                self.counted.insert(
                    ip,
                    Counted {
                        window_start: now,
                        count: 0,
                        first: now,
                        last: now,
                        last_host: String::new(),
                        last_reason: String::new(),
                    },
                );
            }
        }
        self.write(now, event, host, detail)?;
        Ok(true)
    }

    /// Writes every pending count (e.g. at shutdown).
    pub fn flush(&mut self) -> Result<(), AuditError> {
        let all: Vec<(IpAddr, Counted)> = self.counted.drain().collect();
        self.write_counts(all)
    }

    fn flush_expired(&mut self, now: u64) -> Result<(), AuditError> {
        let w = self.limits.refusal_window_secs;
        let closed: Vec<IpAddr> = self
            .counted
            .iter()
            .filter(|(_, c)| now >= c.window_start.saturating_add(w))
            .map(|(ip, _)| *ip)
            .collect();
        let mut out = Vec::new();
        for ip in closed {
            if let Some(c) = self.counted.remove(&ip) {
                out.push((ip, c));
            }
        }
        self.write_counts(out)
    }

    fn write_counts(&mut self, mut all: Vec<(IpAddr, Counted)>) -> Result<(), AuditError> {
        all.retain(|(_, c)| c.count > 0);
        all.sort_by_key(|(_, c)| c.first);
        let mut err = None;
        for (ip, c) in all {
            let detail = serde_json::json!({
                "source": ip.to_string(),
                "count": c.count,
                "first": crate::util::fmt_time(c.first),
                "last": crate::util::fmt_time(c.last),
                "window_secs": self.limits.refusal_window_secs,
                "last_reason": c.last_reason,
            });
            if let Err(e) = self.write(c.last, "refuse_repeated", &c.last_host, detail) {
                tracing::error!(source = %ip, count = c.count, "could not write a count of repeated CA refusals: {e}");
                err = Some(e);
            }
        }
        err.map_or(Ok(()), Err)
    }

    fn write(
        &mut self,
        now: u64,
        event: &str,
        host: &str,
        detail: serde_json::Value,
    ) -> Result<(), AuditError> {
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        if size >= self.limits.max_bytes {
            self.rotate(now)?;
        }
        let log = self.log.as_mut().ok_or_else(|| AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("the log could not be reopened after rotation"),
        })?;
        log.append(&serde_json::json!({
            "ts": crate::util::fmt_time(now),
            "event": event,
            "host": host,
            "detail": detail,
        }))?;
        Ok(())
    }

    fn rotate(&mut self, now: u64) -> Result<(), AuditError> {
        let Some(log) = self.log.take() else {
            self.log = Some(AuditLog::open(&self.path)?);
            return Ok(());
        };
        let last = log.head();
        drop(log); // releases the flock
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| AuditError::Io { path: p, source }
        };
        let keep = self.limits.keep;
        let oldest = rotated(&self.path, keep);
        for p in [oldest.clone(), head_path(&oldest)] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&p)(e)),
                _ => {}
            }
        }
        for n in (1..keep).rev() {
            let (from, to) = (rotated(&self.path, n), rotated(&self.path, n + 1));
            rename_if_exists(&from, &to).map_err(io(&from))?;
            rename_if_exists(&head_path(&from), &head_path(&to)).map_err(io(&from))?;
        }
        let prev = rotated(&self.path, 1);
        std::fs::rename(&self.path, &prev).map_err(io(&self.path))?;
        std::fs::rename(head_path(&self.path), head_path(&prev)).map_err(io(&self.path))?;
        self.log = Some(AuditLog::open(&self.path)?);
        let name = prev
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.log.as_mut().map_or(Ok(()), |l| {
            l.append(&serde_json::json!({
                "ts": crate::util::fmt_time(now),
                "event": "rotated",
                "host": "",
                "detail": {
                    "previous": name,
                    "previous_seq": last.seq,
                    "previous_hash": last.hash_hex(),
                    "max_bytes": self.limits.max_bytes,
                },
            }))
            .map(|_| ())
        })
    }
}

impl Drop for CaAudit {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!("CA audit log: counts of repeated refusals lost at shutdown: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_base::audit::verify;

    fn lines(p: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["record"]["entry"].clone()
            })
            .collect()
    }

    #[test]
    fn repeated_refusals_are_counted_once_per_window() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let lim = CaAuditLimits {
            max_bytes: 1 << 20,
            keep: 2,
            refusal_window_secs: 10,
        };
        let mut a = CaAudit::open(&p, lim).unwrap();
        let r = |src: &str| serde_json::json!({"reason": "bad", "source": src});
        assert!(a.record(100, "refuse", "x", r("10.0.0.1:1000")).unwrap());
        for i in 0..500 {
            assert!(
                !a.record(101, "refuse", "x", r(&format!("10.0.0.1:{i}")))
                    .unwrap()
            );
        }
        // Another source and operator refusals are not held back.
        assert!(a.record(101, "refuse", "y", r("10.0.0.2:5")).unwrap());
        assert!(a.record(101, "refuse", "y", r("operator")).unwrap());
        assert!(a.record(101, "refuse", "y", r("operator")).unwrap());
        assert_eq!(lines(&p).len(), 4);
        // The window closed: the next write emits the count first.
        assert!(a.record(111, "refuse", "x", r("10.0.0.1:9")).unwrap());
        let l = lines(&p);
        assert_eq!(l.len(), 6);
        assert_eq!(l[4]["event"], "refuse_repeated");
        assert_eq!(l[4]["detail"]["count"], 500);
        assert_eq!(l[4]["detail"]["source"], "10.0.0.1");
        assert_eq!(l[5]["event"], "refuse");
        a.record(112, "refuse", "x", r("10.0.0.1:9")).unwrap();
        drop(a); // shutdown writes the pending count
        let l = lines(&p);
        assert_eq!(l.last().unwrap()["detail"]["count"], 1);
        assert_eq!(verify(&p).unwrap().records, 7);
    }

    #[test]
    fn an_old_plain_log_is_moved_aside_and_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let old = "{\"ts\":\"x\",\"event\":\"sign\",\"host\":\"web1\",\"detail\":{}}\n";
        std::fs::write(&p, old).unwrap();
        CaAudit::open(&p, CaAuditLimits::default()).unwrap();
        let l = lines(&p);
        assert_eq!(l[0]["event"], "legacy-log-moved");
        let moved = d.path().join(l[0]["detail"]["previous"].as_str().unwrap());
        assert_eq!(std::fs::read_to_string(moved).unwrap(), old);
        verify(&p).unwrap();
        // A tampered chained log is not mistaken for a plain one.
        let t = std::fs::read_to_string(&p)
            .unwrap()
            .replace("legacy", "LEGACY");
        std::fs::write(&p, t).unwrap();
        assert!(CaAudit::open(&p, CaAuditLimits::default()).is_err());
    }

    #[test]
    fn rotation_keeps_files_bounded_and_each_verifies() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let lim = CaAuditLimits {
            max_bytes: 2000,
            keep: 2,
            refusal_window_secs: 0,
        };
        let mut a = CaAudit::open(&p, lim).unwrap();
        for i in 0..200u64 {
            let src = format!("10.0.{}.{}:1", i / 256, i % 256);
            a.record(
                i,
                "refuse",
                "h",
                serde_json::json!({"reason": "r", "source": src}),
            )
            .unwrap();
        }
        drop(a);
        assert!(!rotated(&p, 3).exists());
        let mut total = 0;
        for f in [p.clone(), rotated(&p, 1), rotated(&p, 2)] {
            let len = std::fs::metadata(&f).unwrap().len();
            assert!(len < 2000 + 1000, "{} is {len} bytes", f.display());
            total += len;
            verify(&f).unwrap();
        }
        assert!(total < 3 * 3000);
        // The new chain names the previous file's last hash.
        let first = &lines(&p)[0];
        assert_eq!(first["event"], "rotated");
        let prev = verify(&rotated(&p, 1)).unwrap();
        assert_eq!(first["detail"]["previous_hash"], prev.head.hash_hex());
        assert_eq!(first["detail"]["previous_seq"], prev.head.seq);
        // Reopening verifies and continues.
        CaAudit::open(&p, lim).unwrap();
    }
}
