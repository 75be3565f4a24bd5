//! What the dashboard shows, as JSON: one function per API answer, used by
//! the `/api/v1/...` handlers and by the HTML pages alike, so both always
//! show the same data. Everything comes from what the master already
//! stores (fleet store, CA, code manager, audit logs); nothing here
//! decrypts or reads catalogs, and reports are shown as the agents sent
//! them (sensitive values already redacted by the agent's converge).

use super::query::{Fields, Query, Schema};
use crate::state::MasterState;
use crate::store::{NodeRecord, RunEntry};
use anyhow::Result;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use troupe_catalog::report::{Report, Status};

/// Fields of `/api/v1/nodes` queries.
pub static NODE_SCHEMA: Schema = Schema {
    fields: &[
        "name",
        "certname",
        "role",
        "environment",
        "status",
        "stale",
        "from_cache",
        "disabled",
        "last_checkin",
        "catalog_hash",
        "report.run_id",
        "report.started",
        "report.changed",
        "report.failed",
        "report.skipped",
        "report.noop",
        "report.duration_ms",
        "report.exit_code",
        "report.from_cache",
    ],
    prefixes: &["fact.", "facts."],
};

/// Fields of `/api/v1/reports` queries.
pub static REPORT_SCHEMA: Schema = Schema {
    fields: &[
        "node",
        "run_id",
        "started",
        "status",
        "changed",
        "failed",
        "skipped",
        "environment",
        "code_version",
        "catalog_hash",
        "from_cache",
        "noop",
        "duration_ms",
    ],
    prefixes: &[],
};

/// Fields of `/api/v1/events` queries.
pub static EVENT_SCHEMA: Schema = Schema {
    fields: &[
        "node", "run_id", "started", "resource", "type", "title", "status", "message",
    ],
    prefixes: &[],
};

/// Unix seconds now.
pub fn now() -> u64 {
    troupe_pki::util::now()
}

/// One row of the nodes table, with what queries look at.
pub struct NodeRow {
    pub rec: NodeRecord,
    pub stale: bool,
    pub facts: BTreeMap<String, String>,
}

impl NodeRow {
    /// `disabled` when the node's last check-in said its runs are
    /// disabled; else `failed`, `changed`, `unchanged` from the last
    /// report, or `unreported` when the master has none.
    pub fn status(&self) -> &'static str {
        if self.rec.disabled.is_some() {
            return "disabled";
        }
        match &self.rec.last_report {
            None => "unreported",
            Some(r) => match r.status() {
                "ok" => "unchanged",
                s => s,
            },
        }
    }

    fn is_from_cache(&self) -> bool {
        self.rec.last_report.as_ref().is_some_and(|r| r.from_cache)
    }

    /// The row as the API shows it.
    pub fn json(&self) -> Value {
        let r = &self.rec;
        json!({
            "name": r.name,
            "role": r.role,
            "environment": r.environment,
            "status": self.status(),
            "stale": self.stale,
            "from_cache": self.is_from_cache(),
            "disabled": r.disabled.as_ref().map(|d| json!({"reason": d.reason, "since": d.since})),
            "last_checkin": r.last_checkin,
            "last_checkin_time": troupe_pki::util::fmt_time(r.last_checkin),
            "catalog_hash": r.catalog_hash,
            "last_report": r.last_report.as_ref().map(|l| json!({
                "run_id": l.run_id,
                "started": l.started,
                "received": l.received,
                "changed": l.changed,
                "failed": l.failed,
                "skipped": l.skipped,
                "noop": l.noop,
                "from_cache": l.from_cache,
                "duration_ms": l.duration_ms,
                "exit_code": l.exit_code,
            })),
        })
    }
}

impl Fields for NodeRow {
    fn field(&self, name: &str) -> Option<Value> {
        let r = &self.rec;
        if let Some(f) = name
            .strip_prefix("fact.")
            .or_else(|| name.strip_prefix("facts."))
        {
            return self.facts.get(f).map(|v| Value::from(v.as_str()));
        }
        if let Some(k) = name.strip_prefix("report.") {
            let l = r.last_report.as_ref()?;
            return Some(match k {
                "run_id" => l.run_id.clone().into(),
                "started" => l.started.clone().into(),
                "changed" => l.changed.into(),
                "failed" => l.failed.into(),
                "skipped" => l.skipped.into(),
                "noop" => l.noop.into(),
                "duration_ms" => l.duration_ms.into(),
                "exit_code" => l.exit_code.into(),
                "from_cache" => l.from_cache.into(),
                _ => return None,
            });
        }
        Some(match name {
            "name" | "certname" => r.name.clone().into(),
            "role" => r.role.clone().into(),
            "environment" => r.environment.clone().into(),
            "status" => self.status().into(),
            "stale" => self.stale.into(),
            "from_cache" => self.is_from_cache().into(),
            "disabled" => r.disabled.is_some().into(),
            "last_checkin" => r.last_checkin.into(),
            "catalog_hash" => r.catalog_hash.clone().into(),
            _ => return None,
        })
    }
}

/// Every node, sorted by name, with its flattened facts when `facts`.
pub fn node_rows(st: &MasterState, facts: bool) -> Result<Vec<NodeRow>> {
    crate::catalog_service::flush_checkins(st);
    let now = now();
    let mut out = Vec::new();
    for rec in st.store.nodes()? {
        let stale = crate::store::is_stale(&rec, now, st.run_interval_secs, 3);
        let facts = if facts {
            st.store
                .facts(&rec.name)?
                .map(|f| troupe_base::facts::flatten(&f))
                .unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        out.push(NodeRow { rec, stale, facts });
    }
    Ok(out)
}

/// Whether a query needs facts (so they are read only then).
pub fn needs_facts(q: &Query) -> bool {
    match q {
        Query::All => false,
        Query::And(v) | Query::Or(v) => v.iter().any(needs_facts),
        Query::Not(q) => needs_facts(q),
        Query::Cmp { field, .. } => field.starts_with("fact"),
    }
}

/// The nodes matching `q`.
pub fn nodes(st: &MasterState, q: &Query) -> Result<Vec<NodeRow>> {
    Ok(node_rows(st, needs_facts(q))?
        .into_iter()
        .filter(|n| q.matches(n))
        .collect())
}

/// Sorts rows by a column (`name`, `role`, `environment`, `status`,
/// `last_checkin`, `changed`, `failed`); unknown columns sort by name.
pub fn sort_nodes(rows: &mut [NodeRow], by: &str, desc: bool) {
    rows.sort_by(|a, b| {
        let key = |n: &NodeRow| -> (String, u64) {
            match by {
                "role" => (n.rec.role.clone(), 0),
                "environment" => (n.rec.environment.clone(), 0),
                "status" => (n.status().to_owned(), 0),
                "last_checkin" => (String::new(), n.rec.last_checkin),
                "changed" => (
                    String::new(),
                    n.rec.last_report.as_ref().map_or(0, |r| r.changed as u64),
                ),
                "failed" => (
                    String::new(),
                    n.rec
                        .last_report
                        .as_ref()
                        .map_or(0, |r| (r.failed + r.skipped) as u64),
                ),
                _ => (String::new(), 0),
            }
        };
        key(a)
            .cmp(&key(b))
            .then_with(|| a.rec.name.cmp(&b.rec.name))
    });
    if desc {
        rows.reverse();
    }
}

/// Counts for the fleet overview: by status, by environment, by role.
pub fn overview(st: &MasterState) -> Result<Value> {
    let rows = node_rows(st, false)?;
    let mut total = Counts::default();
    let mut by_env: BTreeMap<String, Counts> = BTreeMap::new();
    let mut by_role: BTreeMap<String, Counts> = BTreeMap::new();
    for n in &rows {
        total.add(n);
        by_env.entry(n.rec.environment.clone()).or_default().add(n);
        by_role.entry(n.rec.role.clone()).or_default().add(n);
    }
    let pending = st
        .ca
        .list(troupe_pki::ListFilter::Pending)
        .map(|v| v.len())
        .unwrap_or(0);
    Ok(json!({
        "nodes": total,
        "by_environment": by_env,
        "by_role": by_role,
        "csrs_pending": pending,
        "run_interval_secs": st.run_interval_secs,
        "now": now(),
    }))
}

/// Node counts by status. `disabled` (runs disabled on the node, as its
/// last check-in said), then `changed`, `failed`, `unchanged` and
/// `unreported` by the last report split the nodes; `stale` and
/// `from_cache` are counted besides (a stale node is also in one of
/// those five).
#[derive(Debug, Default, serde::Serialize)]
pub struct Counts {
    pub total: usize,
    pub changed: usize,
    pub failed: usize,
    pub unchanged: usize,
    pub unreported: usize,
    pub disabled: usize,
    pub stale: usize,
    pub from_cache: usize,
}

impl Counts {
    fn add(&mut self, n: &NodeRow) {
        self.total += 1;
        match n.status() {
            "changed" => self.changed += 1,
            "failed" => self.failed += 1,
            "unchanged" => self.unchanged += 1,
            "disabled" => self.disabled += 1,
            _ => self.unreported += 1,
        }
        self.stale += usize::from(n.stale);
        self.from_cache += usize::from(n.is_from_cache());
    }
}

/// One node: its row, facts, last report, run history and certificate.
pub fn node(st: &MasterState, host: &str) -> Result<Option<Value>> {
    let Some(row) = node_rows(st, false)?
        .into_iter()
        .find(|n| n.rec.name == host)
    else {
        return Ok(None);
    };
    let facts = st.store.facts(host)?.unwrap_or(Value::Null);
    let reports = st.store.reports(host)?;
    let last = reports
        .iter()
        .rfind(|r| {
            row.rec
                .last_report
                .as_ref()
                .is_none_or(|l| l.run_id == r.run_id)
        })
        .or(reports.last());
    let mut runs: Vec<RunEntry> = reports.iter().map(RunEntry::of).collect();
    runs.reverse();
    Ok(Some(json!({
        "node": row.json(),
        "facts": facts,
        "facts_flat": troupe_base::facts::flatten(&facts),
        "last_report": last.map(report_json),
        "runs": runs,
        "certificate": certificate(st, host),
    })))
}

/// A report with its counts and the per-resource outcomes (events and
/// diffs as the agent redacted them).
pub fn report_json(r: &Report) -> Value {
    let e = RunEntry::of(r);
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert(
            "status".into(),
            Value::from(if e.status == "ok" {
                "unchanged"
            } else {
                e.status.as_str()
            }),
        );
        m.insert(
            "counts".into(),
            json!({"changed": e.changed, "failed": e.failed, "skipped": e.skipped,
                   "unchanged": r.counts().0, "noop": r.noop_pending()}),
        );
    }
    v
}

/// The node's current certificate: serial, expiry, days left (or why
/// there is none).
fn certificate(st: &MasterState, host: &str) -> Value {
    let entries = match st.ca.list(troupe_pki::ListFilter::All) {
        Ok(e) => e,
        Err(e) => return json!({"error": e.to_string()}),
    };
    let mine: Vec<_> = entries.into_iter().filter(|e| e.host == host).collect();
    let signed = mine.iter().find(|e| e.state == "signed");
    match signed {
        Some(c) => {
            let left = parse_time(&c.time).map(|t| (t as i64 - now() as i64) / 86_400);
            json!({"state": "signed", "serial": c.id, "expires": c.time, "days_left": left})
        }
        None => json!({
            "state": mine.first().map(|e| e.state.clone()).unwrap_or_else(|| "none".into()),
            "serial": mine.first().map(|e| e.id.clone()),
            "expires": mine.first().map(|e| e.time.clone()),
            "days_left": null,
        }),
    }
}

/// RFC 3339 (`YYYY-MM-DDTHH:MM:SSZ`) to unix seconds.
fn parse_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, se) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()
}

/// One stored report, for `/api/v1/reports`.
struct ReportRow<'a> {
    node: &'a str,
    e: RunEntry,
}

impl Fields for ReportRow<'_> {
    fn field(&self, name: &str) -> Option<Value> {
        let e = &self.e;
        Some(match name {
            "node" => self.node.into(),
            "run_id" => e.run_id.clone().into(),
            "started" => e.started.clone().into(),
            "status" => (if e.status == "ok" {
                "unchanged"
            } else {
                e.status.as_str()
            })
            .into(),
            "changed" => e.changed.into(),
            "failed" => e.failed.into(),
            "skipped" => e.skipped.into(),
            "environment" => e.environment.clone().into(),
            "code_version" => e.code_version.clone().into(),
            "catalog_hash" => e.catalog_hash.clone().into(),
            "from_cache" => e.from_cache.into(),
            "noop" => e.noop.into(),
            "duration_ms" => e.duration_ms.into(),
            _ => return None,
        })
    }
}

fn report_row_json(r: &ReportRow) -> Value {
    let mut v = serde_json::to_value(&r.e).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("node".into(), r.node.into());
        if r.e.status == "ok" {
            m.insert("status".into(), "unchanged".into());
        }
    }
    v
}

/// Stored reports (summaries) matching `q`, newest first, of one node or
/// of every node; at most `limit`.
pub fn reports(
    st: &MasterState,
    host: Option<&str>,
    q: &Query,
    limit: usize,
) -> Result<Vec<Value>> {
    let names: Vec<String> = match host {
        Some(h) => vec![h.to_owned()],
        None => st.store.nodes()?.into_iter().map(|n| n.name).collect(),
    };
    let mut rows = Vec::new();
    for n in &names {
        for r in st.store.reports(n)? {
            let row = ReportRow {
                node: n,
                e: RunEntry::of(&r),
            };
            if q.matches(&row) {
                rows.push(report_row_json(&row));
            }
        }
    }
    rows.sort_by(|a, b| {
        b["started"]
            .as_str()
            .cmp(&a["started"].as_str())
            .then_with(|| a["node"].as_str().cmp(&b["node"].as_str()))
    });
    rows.truncate(limit);
    Ok(rows)
}

/// One report of a node by run id.
pub fn report(st: &MasterState, host: &str, run: &str) -> Result<Option<Value>> {
    Ok(st.store.report(host, Some(run))?.as_ref().map(report_json))
}

struct EventRow {
    v: Value,
}

impl Fields for EventRow {
    fn field(&self, name: &str) -> Option<Value> {
        self.v.get(name).cloned()
    }
}

/// Resource events (PuppetDB's sense: every resource of a report that
/// changed, failed, was skipped or is pending in noop), newest first.
/// `latest`: only from each node's latest report.
pub fn events(st: &MasterState, q: &Query, latest: bool, limit: usize) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for n in st.store.nodes()? {
        let mut reports = st.store.reports(&n.name)?;
        if latest {
            let keep = n.last_report.as_ref().map(|l| l.run_id.clone());
            reports.retain(|r| keep.as_deref() == Some(r.run_id.as_str()));
        }
        for r in &reports {
            for res in &r.resources {
                if res.status == Status::Unchanged {
                    continue;
                }
                let status = serde_json::to_value(res.status).unwrap_or(Value::Null);
                let row = EventRow {
                    v: json!({
                        "node": n.name,
                        "run_id": r.run_id,
                        "started": r.started,
                        "resource": res.id.to_string(),
                        "type": res.id.kind(),
                        "title": res.id.title(),
                        "status": status,
                        "message": res.events.join("; "),
                        "events": res.events,
                        "diff": res.diff,
                    }),
                };
                if q.matches(&row) {
                    out.push(row.v);
                }
            }
        }
    }
    out.sort_by(|a, b| {
        b["started"]
            .as_str()
            .cmp(&a["started"].as_str())
            .then_with(|| a["node"].as_str().cmp(&b["node"].as_str()))
    });
    out.truncate(limit);
    Ok(out)
}

/// Pending certificate requests, and certificates expiring within 30
/// days.
pub fn csrs(st: &MasterState) -> Result<Value> {
    let pending = st.ca.list(troupe_pki::ListFilter::Pending)?;
    let all = st.ca.list(troupe_pki::ListFilter::All)?;
    let soon = now() + 30 * 86_400;
    let expiring: Vec<_> = all
        .into_iter()
        .filter(|e| e.state == "signed" && parse_time(&e.time).is_some_and(|t| t <= soon))
        .collect();
    Ok(json!({"pending": pending, "expiring_within_30_days": expiring}))
}

/// Serving and staged code per environment and the last load error.
pub fn environments(st: &MasterState) -> Value {
    match &st.code {
        None => json!({"modules": null, "environments": [],
                       "note": "this master serves no module tree (started without --modules)"}),
        Some(c) => {
            let s = c.status();
            let envs: Vec<Value> = s
                .environments
                .iter()
                .map(|(env, v)| {
                    json!({
                        "name": env,
                        "serving": v,
                        "staged": s.staged.get(env),
                        "held": s.hold.contains(env),
                        // Git-backed environments: the commits.
                        "commit": s.commits.get(env),
                        "staged_commit": s.staged_commits.get(env),
                    })
                })
                .collect();
            json!({
                "modules": s.dir,
                "live_version": s.live_version,
                "generation": s.generation,
                "last_error": s.last_error,
                "environments": envs,
            })
        }
    }
}

/// The audit logs the master keeps, each verified.
fn audit_logs(st: &MasterState) -> Vec<(&'static str, PathBuf)> {
    let d = &st.data_dir;
    let mut v = vec![
        ("ca", d.join("ca/audit.log")),
        ("access", d.join("access-audit.log")),
        ("orchestration", d.join(crate::orchestra::AUDIT_FILE)),
    ];
    for i in 1..=1000 {
        let p = d.join(format!("ca/audit.log.{i}"));
        if !p.exists() {
            break;
        }
        v.push(("ca (rotated)", p));
    }
    v
}

/// The last `n` records of a log (newest first), as JSON.
fn tail(path: &std::path::Path, n: usize) -> Vec<Value> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    // Read at most the last 1 MiB: enough for the records shown.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(1 << 20);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return Vec::new();
    }
    let mut buf = String::new();
    if f.read_to_string(&mut buf).is_err() {
        let mut bytes = Vec::new();
        let _ = f.seek(SeekFrom::Start(start));
        let _ = f.read_to_end(&mut bytes);
        buf = String::from_utf8_lossy(&bytes).into_owned();
    }
    let mut lines: Vec<&str> = buf.lines().collect();
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    lines
        .iter()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .take(n)
        .map(|line| {
            // A line is {"record": {"seq","time_ms","prev","entry"}, "hash"}.
            let mut v = match line {
                Value::Object(mut m) if m.contains_key("record") => {
                    m.remove("record").unwrap_or(Value::Null)
                }
                other => other,
            };
            if let Some(ms) = v.get("time_ms").and_then(Value::as_u64) {
                v["time"] = troupe_pki::util::fmt_time(ms / 1000).into();
            }
            v
        })
        .collect()
}

/// Every audit log with its chain status and its latest records.
pub fn audit(st: &MasterState, records: usize) -> Value {
    let logs: Vec<Value> = audit_logs(st)
        .into_iter()
        .map(|(name, path)| {
            let (status, detail) = if !path.exists() {
                ("missing", Value::Null)
            } else {
                match troupe_base::audit::verify(&path) {
                    Ok(r) => (
                        "intact",
                        json!({"records": r.records, "head_hash": r.head.hash_hex(),
                               "head_lagging": r.head_lagging, "torn_tail_bytes": r.torn_tail}),
                    ),
                    Err(e) => ("broken", json!({"error": e.to_string()})),
                }
            };
            json!({
                "name": name,
                "path": path,
                "chain": status,
                "verify": detail,
                "recent": tail(&path, records),
            })
        })
        .collect();
    json!({"logs": logs})
}

/// Orchestration history from `DATA/orchestration-audit.log`: commands
/// (newest first) with their fan-out and results grouped by command id.
pub fn orchestration(st: &MasterState, limit: usize) -> Value {
    orchestration_from(&st.data_dir.join(crate::orchestra::AUDIT_FILE), limit)
}

fn orchestration_from(path: &std::path::Path, limit: usize) -> Value {
    let records = tail(path, 5000);
    let mut order: Vec<String> = Vec::new();
    let mut by_id: HashMap<String, Value> = HashMap::new();
    // Oldest first, so the first record of a command opens it.
    for r in records.iter().rev() {
        let e = &r["entry"];
        // A command that could not be decoded has no id: its own group.
        let id = match &e["id"] {
            Value::Null => format!("record-{}", r["seq"]),
            v => v.to_string(),
        };
        let entry = by_id.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            json!({
                "id": e["id"],
                "time": r["time"],
                "caller": e["caller"],
                "signer": e["signer"],
                "action": e["action"],
                "args": e["args"],
                "target": e["target"],
                "records": [],
            })
        });
        if let Some(list) = entry["records"].as_array_mut() {
            let nodes = match (&e["node"], &e["nodes"]) {
                (Value::String(n), _) => vec![Value::from(n.as_str())],
                (_, Value::Array(v)) => v.clone(),
                _ => vec![],
            };
            list.push(json!({
                "time": r["time"],
                "outcome": e["outcome"],
                "detail": e["detail"],
                "nodes": nodes,
            }));
        }
    }
    let commands: Vec<Value> = order
        .iter()
        .rev()
        .take(limit)
        .filter_map(|id| by_id.remove(id))
        .collect();
    json!({"commands": commands})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orchestration_history_groups_records_by_command() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("orchestration-audit.log");
        let mut log = troupe_base::audit::AuditLog::open(&path).unwrap();
        let cmd = |id: Value, outcome: &str, nodes: Vec<&str>| {
            json!({"kind": "command", "id": id, "signer": "alice", "action": "service.restart",
                   "args": {"name": "nginx"}, "outcome": outcome, "detail": "",
                   "caller": "bastion1", "nodes": nodes})
        };
        log.append(&cmd(json!("aa"), "relayed", vec!["web1", "web2"]))
            .unwrap();
        log.append(&cmd(json!(null), "bad_signature", vec![]))
            .unwrap();
        log.append(&cmd(json!("bb"), "relayed", vec!["db1"]))
            .unwrap();
        log.append(&cmd(json!("aa"), "ok", vec!["web1"])).unwrap();
        log.append(&cmd(json!("aa"), "no_answer", vec!["web2"]))
            .unwrap();
        drop(log);
        let h = orchestration_from(&path, 10);
        let c = h["commands"].as_array().unwrap();
        let ids: Vec<&Value> = c.iter().map(|c| &c["id"]).collect();
        // Newest command first; the undecodable one stands alone.
        assert_eq!(ids, [&json!("bb"), &Value::Null, &json!("aa")], "{h}");
        let outcomes: Vec<&str> = c[2]["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["outcome"].as_str().unwrap())
            .collect();
        assert_eq!(outcomes, ["relayed", "ok", "no_answer"]);
        assert_eq!(c[2]["records"][2]["nodes"], json!(["web2"]));
        assert_eq!(c[2]["caller"], "bastion1");
        assert_eq!(
            orchestration_from(&path, 1)["commands"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            orchestration_from(&d.path().join("none"), 5),
            json!({"commands": []})
        );
    }

    #[test]
    fn rfc3339_to_unix() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2026-12-06T21:03:33Z"), Some(1_796_591_013));
        assert_eq!(
            parse_time(&troupe_pki::util::fmt_time(1_800_000_000)),
            Some(1_800_000_000)
        );
        assert_eq!(parse_time("soon"), None);
    }
}
