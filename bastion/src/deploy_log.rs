//! A release's log as records stored in order ([`DeployEntry`]), read
//! back whole ([`DeployLog`], [`fold`]) and as text ([`DeployLog::to_text`]:
//! `troupe deploy log ID` on the master, and the email at the end of a
//! release, from the master's sinks or the bastion's); and the event each
//! record raises ([`event_of`], the same on the master and the bastion).

use crate::deploy_record::{DeployRecord, PlannedPackage};
use serde::{Deserialize, Serialize};
use troupe_base::error_code::ErrorCode;
use troupe_events::{Event, EventKind, status_code};

/// One stored line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployEntry {
    pub seq: u64,
    /// The certificate name of the bastion that sent it.
    pub by: String,
    /// When the master stored it (RFC 3339).
    pub received: String,
    pub record: DeployRecord,
}

/// A release's whole log (`troupe deploy log ID --json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeployLog {
    pub id: String,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub by: String,
    pub started: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// `running` (no end recorded yet), `complete`, `failed` (finished with
    /// failures within --max-failures) or `aborted`.
    pub status: String,
    pub packages: Vec<PlannedPackage>,
    /// Host-package updates that completed.
    pub completed: usize,
    pub failed_hosts: usize,
    /// Every record in order.
    pub entries: Vec<DeployEntry>,
}

/// One line of `troupe deploy log --list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploySummary {
    pub id: String,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    pub by: String,
    pub started: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    pub status: String,
    pub packages: usize,
    pub hosts: usize,
    pub steps: usize,
    pub failed_steps: usize,
    pub failed_hosts: usize,
}

/// A release's log from its stored lines (`None`: they do not begin with
/// `started`): status, counts and end from the records.
pub fn fold(id: &str, entries: Vec<DeployEntry>) -> Option<DeployLog> {
    let first = entries.first()?;
    let DeployRecord::Started {
        title,
        environment,
        packages,
        time,
        ..
    } = &first.record
    else {
        return None;
    };
    let mut log = DeployLog {
        id: id.to_string(),
        title: title.clone(),
        environment: environment.clone(),
        by: first.by.clone(),
        started: time.clone(),
        ended: None,
        status: "running".into(),
        packages: packages.clone(),
        completed: 0,
        failed_hosts: 0,
        entries: Vec::new(),
    };
    let mut done = std::collections::HashSet::new();
    for e in &entries {
        match &e.record {
            DeployRecord::Finished {
                status,
                completed,
                failed_hosts,
                time,
            } => {
                log.status = status.clone();
                log.completed = *completed;
                log.failed_hosts = *failed_hosts;
                log.ended = Some(time.clone());
            }
            DeployRecord::Aborted {
                completed,
                failed_hosts,
                time,
                ..
            } => {
                log.status = "aborted".into();
                log.completed = *completed;
                log.failed_hosts = *failed_hosts;
                log.ended = Some(time.clone());
            }
            DeployRecord::HostDone { host, package, .. }
                if log.ended.is_none() && done.insert((package.as_str(), host.as_str())) =>
            {
                log.completed += 1;
            }
            // Hosts a host_done did not count yet (logs of bastions that
            // send none).
            DeployRecord::PackageDone { ok, package, .. } if log.ended.is_none() => {
                for h in ok {
                    if done.insert((package.as_str(), h.as_str())) {
                        log.completed += 1;
                    }
                }
            }
            DeployRecord::HostFailed { .. } if log.ended.is_none() => log.failed_hosts += 1,
            _ => {}
        }
    }
    log.entries = entries;
    Some(log)
}

impl DeployLog {
    pub fn summary(&self) -> DeploySummary {
        let steps = self
            .entries
            .iter()
            .filter(|e| matches!(e.record, DeployRecord::Step { .. }));
        let failed_steps = steps
            .clone()
            .filter(|e| matches!(&e.record, DeployRecord::Step { result, .. } if result != "ok"))
            .count();
        let mut hosts: Vec<&String> = self
            .packages
            .iter()
            .flat_map(|p| p.batches.iter().flatten())
            .collect();
        hosts.sort();
        hosts.dedup();
        DeploySummary {
            id: self.id.clone(),
            title: self.title.clone(),
            environment: self.environment.clone(),
            by: self.by.clone(),
            started: self.started.clone(),
            ended: self.ended.clone(),
            status: self.status.clone(),
            packages: self.packages.len(),
            hosts: hosts.len(),
            steps: steps.count(),
            failed_steps,
            failed_hosts: self.failed_hosts,
        }
    }

    /// The log as text (`troupe deploy log ID`, the email at the end): a
    /// header, the plan, then every record, one line each.
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let _ = writeln!(s, "release {}: {}", self.id, self.title);
        if let Some(e) = &self.environment {
            let _ = writeln!(s, "environment: {e}");
        }
        let _ = writeln!(s, "by: {}", self.by);
        let _ = writeln!(s, "started: {}", self.started);
        if let Some(t) = &self.ended {
            let _ = writeln!(s, "ended: {t}");
        }
        let _ = writeln!(
            s,
            "status: {} ({} update(s) completed, {} host(s) failed)",
            self.status, self.completed, self.failed_hosts
        );
        let _ = writeln!(s, "plan:");
        for p in &self.packages {
            let _ = writeln!(s, "  {} {}", p.name, p.version);
            for (i, b) in p.batches.iter().enumerate() {
                let _ = writeln!(s, "    batch {}: {}", i + 1, b.join(" "));
            }
        }
        let _ = writeln!(s, "log:");
        for e in &self.entries {
            let line = match &e.record {
                DeployRecord::Started {
                    time,
                    not_connected,
                    ..
                } => {
                    if not_connected.is_empty() {
                        format!("{time} started")
                    } else {
                        format!(
                            "{time} started (not connected: {})",
                            not_connected.join(" ")
                        )
                    }
                }
                DeployRecord::PackageStarted {
                    package,
                    version,
                    hosts,
                    time,
                } => format!("{time} package {package} {version}: {hosts} host(s)"),
                DeployRecord::Step {
                    host,
                    step,
                    attempt,
                    result,
                    message,
                    started,
                    duration_ms,
                    ..
                } => {
                    let mut l = format!("{started} {host}: {step}");
                    if *attempt > 1 {
                        let _ = write!(l, " (attempt {attempt})");
                    }
                    let _ = write!(l, ": {result} in {duration_ms} ms");
                    if !message.is_empty() {
                        let _ = write!(l, ": {message}");
                    }
                    l
                }
                DeployRecord::HostFailed {
                    host,
                    package,
                    step,
                    error,
                    left,
                    undo,
                    time,
                } => {
                    let mut l = format!("{time} {host} FAILED ({package}) at {step}: {error}");
                    if !left.is_empty() {
                        let _ = write!(l, "; left {}", left.join(", "));
                    }
                    for u in undo {
                        let _ = write!(l, "\n    undo: {u}");
                    }
                    l
                }
                DeployRecord::HostDone {
                    host,
                    package,
                    time,
                } => format!("{time} {host}: {package} done"),
                DeployRecord::PackageDone {
                    package,
                    version,
                    ok,
                    failed,
                    time,
                } => format!(
                    "{time} package {package} {version} done: {} ok, {} failed{}",
                    ok.len(),
                    failed.len(),
                    if failed.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", failed.join(" "))
                    }
                ),
                DeployRecord::Finished { status, time, .. } => format!("{time} finished: {status}"),
                DeployRecord::Aborted { reason, time, .. } => format!("{time} ABORTED: {reason}"),
            };
            let _ = writeln!(s, "  {line}");
        }
        s
    }
}

/// The event a record of release `id` raises (`by`: who sent it; `title`,
/// `environment`: the release's, from its `started` record). A failure
/// carries its typed error code (ADR 0008); for `host_failed`, that of
/// the failing step's result, which `failed_step(host, step)` finds in the
/// release's earlier records (called for that record only).
pub fn event_of(
    id: &str,
    by: &str,
    title: &str,
    environment: Option<&str>,
    r: &DeployRecord,
    failed_step: impl FnOnce(&str, &str) -> Option<String>,
) -> Event {
    let (kind, text, node, data) = match r {
        DeployRecord::Started {
            packages,
            not_connected,
            ..
        } => {
            let mut hosts: Vec<&String> = packages
                .iter()
                .flat_map(|p| p.batches.iter().flatten())
                .collect();
            hosts.sort();
            hosts.dedup();
            let pk: Vec<String> = packages
                .iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect();
            (
                EventKind::DeployStarted,
                format!(
                    "release {title} started by {by}: {} on {} host(s)",
                    pk.join(", "),
                    hosts.len()
                ),
                None,
                serde_json::json!({ "by": by, "title": title, "packages": packages, "not_connected": not_connected }),
            )
        }
        DeployRecord::PackageStarted {
            package,
            version,
            hosts,
            ..
        } => (
            EventKind::DeployPackageStarted,
            format!("release {title}: {package} {version} on {hosts} host(s)"),
            None,
            serde_json::json!({ "package": package, "version": version, "hosts": hosts }),
        ),
        DeployRecord::Step {
            host,
            package,
            step,
            attempt,
            result,
            message,
            duration_ms,
            ..
        } => (
            EventKind::DeployStep,
            format!("release {title}: {host}: {step}: {result}"),
            Some(host.clone()),
            serde_json::json!({ "package": package, "step": step, "attempt": attempt,
                "result": result, "message": message, "duration_ms": duration_ms }),
        ),
        DeployRecord::HostFailed {
            host,
            package,
            step,
            error,
            left,
            undo,
            ..
        } => (
            EventKind::DeployHostFailed,
            format!("release {title}: {host} FAILED ({package}) at {step}: {error}"),
            Some(host.clone()),
            serde_json::json!({ "package": package, "step": step, "error": error,
                "left": left, "undo": undo }),
        ),
        // Progress, counted as a step (sinks take it only when named).
        DeployRecord::HostDone { host, package, .. } => (
            EventKind::DeployStep,
            format!("release {title}: {host}: {package} done"),
            Some(host.clone()),
            serde_json::json!({ "package": package, "step": "done", "result": "ok" }),
        ),
        DeployRecord::PackageDone {
            package,
            version,
            ok,
            failed,
            ..
        } => (
            EventKind::DeployPackageDone,
            format!(
                "release {title}: {package} {version} done on {} host(s), {} failed",
                ok.len(),
                failed.len()
            ),
            None,
            serde_json::json!({ "package": package, "version": version, "ok": ok, "failed": failed }),
        ),
        DeployRecord::Finished {
            status,
            completed,
            failed_hosts,
            ..
        } => (
            EventKind::DeployFinished,
            format!(
                "release {title} finished: {status} ({completed} update(s), {failed_hosts} host(s) failed)"
            ),
            None,
            serde_json::json!({ "status": status, "completed": completed, "failed_hosts": failed_hosts }),
        ),
        DeployRecord::Aborted {
            reason,
            completed,
            failed_hosts,
            ..
        } => (
            EventKind::DeployAborted,
            format!("release {title} ABORTED: {reason} ({completed} update(s) done)"),
            None,
            serde_json::json!({ "reason": reason, "completed": completed, "failed_hosts": failed_hosts }),
        ),
    };
    let code = match r {
        DeployRecord::Step { result, .. } => status_code(result),
        DeployRecord::HostFailed { host, step, .. } => Some(
            failed_step(host, step)
                .and_then(|res| status_code(&res))
                .unwrap_or(ErrorCode::Failed),
        ),
        DeployRecord::Finished { status, .. } if status != "complete" => Some(ErrorCode::Failed),
        DeployRecord::Aborted { .. } => Some(ErrorCode::Failed),
        _ => None,
    };
    let mut e = Event::new(kind, text).release(id).data(data);
    if let Some(c) = code {
        e = e.code(c);
    }
    if let Some(n) = node {
        e = e.node(n);
    }
    if let Some(env) = environment {
        e = e.environment(env);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, record: DeployRecord) -> DeployEntry {
        DeployEntry {
            seq,
            by: "bastion".into(),
            received: "2026-12-07T01:00:00.000Z".into(),
            record,
        }
    }

    /// Progress moves as each host finishes (host_done), counted once
    /// when the package's end repeats it; logs without host_done count
    /// at the package's end.
    #[test]
    fn hosts_count_as_they_finish_and_once() {
        let t = || "2026-12-07T01:00:00.000Z".to_string();
        let started = entry(
            0,
            DeployRecord::Started {
                title: "nginx".into(),
                environment: None,
                packages: vec![PlannedPackage {
                    name: "nginx".into(),
                    version: "1".into(),
                    batches: vec![vec!["web1".into()], vec!["web2".into()]],
                }],
                not_connected: vec![],
                time: t(),
            },
        );
        let done = |seq, h: &str| {
            entry(
                seq,
                DeployRecord::HostDone {
                    host: h.into(),
                    package: "nginx".into(),
                    time: t(),
                },
            )
        };
        let pkg_done = |seq| {
            entry(
                seq,
                DeployRecord::PackageDone {
                    package: "nginx".into(),
                    version: "1".into(),
                    ok: vec!["web1".into(), "web2".into()],
                    failed: vec![],
                    time: t(),
                },
            )
        };
        let log = fold("r", vec![started.clone(), done(1, "web1")]).unwrap();
        assert_eq!((log.status.as_str(), log.completed), ("running", 1));
        let log = fold(
            "r",
            vec![
                started.clone(),
                done(1, "web1"),
                done(2, "web2"),
                pkg_done(3),
            ],
        )
        .unwrap();
        assert_eq!(log.completed, 2);
        assert!(
            log.to_text().contains("web2: nginx done"),
            "{}",
            log.to_text()
        );
        let log = fold("r", vec![started, pkg_done(1)]).unwrap();
        assert_eq!(log.completed, 2);
    }
}
