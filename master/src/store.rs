//! The master's fleet store: per-node check-in record, last facts, and run
//! reports with a retention limit, in one redb file (`nodes.redb` in the data
//! directory). Everything written here was received from an agent, so it is
//! stored under the name taken from the agent's verified certificate (the
//! caller passes it; nothing here reads a name out of a request body).
//!
//! After a write failed (e.g. a full disk), redb refuses every later
//! transaction on the open file; the store then drops it, opens it again
//! and retries the transaction once ([`troupe_base::reopen`]), so the master
//! recovers by itself once space is freed.

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use troupe_base::reopen::{Reopening, ReopeningDb, is_previous_io};
use troupe_catalog::report::Report;

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const FACTS: TableDefinition<&str, &[u8]> = TableDefinition::new("facts");
/// (node, sequence number) -> report JSON.
const REPORTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("reports");

/// Default bound of the store's page cache (`node_store_cache_bytes`):
/// 8 MiB. redb's own default (1 GiB) lets the master's memory grow with
/// every node's facts and reports it ever read or wrote, and every page a
/// commit writes enters the cache: a bound of 32 MiB may hold 3.3 KB per
/// node of the master's memory at 10,000 nodes. The branch pages and
/// the recently written leaves stay cached; a leaf not cached costs a
/// read from the kernel's page cache, once per node per check-in batch.
pub const DEFAULT_CACHE_BYTES: u64 = 8 << 20;

/// Reports kept per node unless configured otherwise.
pub const DEFAULT_REPORTS_PER_NODE: usize = 50;

/// What the master knows about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeRecord {
    pub name: String,
    /// Unix seconds of the last catalog request.
    pub last_checkin: u64,
    pub environment: String,
    pub role: String,
    /// Hash of the catalog last served.
    pub catalog_hash: String,
    pub last_report: Option<ReportSummary>,
    /// Next report sequence number.
    pub report_seq: u64,
    /// Runs are disabled on the node (`troupe-agent disable`), as its last
    /// check-in said; cleared by its next ordinary check-in or report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<DisabledMark>,
}

/// Why and since when a node's runs are disabled (its agent's words).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisabledMark {
    pub reason: String,
    /// RFC 3339, the agent's clock.
    pub since: String,
}

/// The parts of a report `troupe nodes` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSummary {
    pub run_id: String,
    pub started: String,
    /// Unix seconds when the master received it.
    pub received: u64,
    pub changed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub noop: bool,
    pub from_cache: bool,
    pub duration_ms: u64,
    pub exit_code: i32,
}

impl ReportSummary {
    fn of(r: &Report, received: u64) -> ReportSummary {
        let (_, changed, failed, skipped) = r.counts();
        ReportSummary {
            run_id: r.run_id.clone(),
            started: r.started.clone(),
            received,
            changed,
            failed,
            skipped,
            noop: r.noop,
            from_cache: r.from_cache,
            duration_ms: r.duration_ms,
            exit_code: r.exit_code(),
        }
    }

    /// `ok`, `changed`, `failed` (failures win).
    pub fn status(&self) -> &'static str {
        if self.failed + self.skipped > 0 {
            "failed"
        } else if self.changed > 0 {
            "changed"
        } else {
            "ok"
        }
    }
}

/// One line of a node's run history (`troupe report HOST --list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEntry {
    pub run_id: String,
    /// When the run started (the agent's clock, RFC 3339).
    pub started: String,
    /// `ok`, `changed` or `failed`, as `troupe nodes` says it.
    pub status: String,
    pub changed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub catalog_hash: String,
    pub environment: String,
    pub code_version: String,
    pub from_cache: bool,
    pub noop: bool,
    pub duration_ms: u64,
}

impl RunEntry {
    pub fn of(r: &Report) -> RunEntry {
        let s = ReportSummary::of(r, 0);
        RunEntry {
            run_id: r.run_id.clone(),
            started: r.started.clone(),
            status: s.status().to_owned(),
            changed: s.changed,
            failed: s.failed,
            skipped: s.skipped,
            catalog_hash: r.catalog_hash.clone(),
            environment: r.environment.clone(),
            code_version: r.code_version.clone(),
            from_cache: r.from_cache,
            noop: r.noop,
            duration_ms: r.duration_ms,
        }
    }
}

/// A `--where` condition, the same one `troupe run --where` uses
/// ([`troupe_base::facts`]: flattened facts, exact match).
pub use troupe_base::facts::FactMatch as FactFilter;

/// A check-in waiting to be written.
pub struct Checkin {
    pub node: String,
    /// The facts, a JSON object as the agent sent it (stored as is: no
    /// parsed copy lives until the batch is written, none is serialized
    /// again).
    pub facts: Vec<u8>,
    pub environment: String,
    pub role: String,
    pub catalog_hash: String,
    pub at: u64,
    /// A check-in of a host whose runs are disabled: only `at` and this
    /// are recorded (facts, classification and catalog stay as they were).
    pub disabled: Option<DisabledMark>,
}

/// The fleet store.
pub struct NodeStore {
    db: ReopeningDb,
    reports_per_node: usize,
}

/// The store's handle is stopped by an earlier I/O error.
fn stopped(e: &anyhow::Error) -> bool {
    e.chain().any(is_previous_io)
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).with_context(|| format!("corrupt {what} record in the store"))
}

impl NodeStore {
    /// Opens (or creates) the store at `path`, its page cache bounded to
    /// [`DEFAULT_CACHE_BYTES`].
    pub fn open(path: &Path, reports_per_node: usize) -> Result<NodeStore> {
        NodeStore::open_with_cache(path, reports_per_node, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store at `path`; redb keeps at most
    /// `cache_bytes` of its pages in memory (`node_store_cache_bytes`).
    pub fn open_with_cache(
        path: &Path,
        reports_per_node: usize,
        cache_bytes: u64,
    ) -> Result<NodeStore> {
        let cache = usize::try_from(cache_bytes).unwrap_or(usize::MAX);
        let db = Reopening::open(path, move |p: &Path| {
            troupe_base::redb_file::create_db_with_cache(p, cache)
        })
        .with_context(|| format!("cannot open the node store {}", path.display()))?;
        let store = NodeStore {
            db,
            reports_per_node: reports_per_node.max(1),
        };
        // Create the tables so readers never see "table does not exist".
        store.with(|db| {
            let tx = db.begin_write()?;
            tx.open_table(NODES)?;
            tx.open_table(FACTS)?;
            tx.open_table(REPORTS)?;
            tx.commit()?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Runs one transaction; when redb is stopped by an earlier I/O error
    /// (a full disk), opens the file again and runs it once more. `op` must
    /// not call `with`.
    fn with<R>(&self, op: impl FnMut(&Database) -> Result<R>) -> Result<R> {
        self.db.run(op, stopped, |m| {
            anyhow::anyhow!(
                "cannot open the node store {} again after an earlier write failed \
                 (disk full? free space: the master retries by itself on the next \
                 request): {m}",
                self.db.path().display()
            )
        })
    }

    /// How many times the store's file was opened (each recovery after an
    /// I/O error adds one).
    pub fn generation(&self) -> u64 {
        self.db.generation()
    }

    /// Records a catalog request: facts, classification and the catalog
    /// served. `node` is the verified certificate name.
    pub fn record_checkin(
        &self,
        node: &str,
        facts: &serde_json::Value,
        environment: &str,
        role: &str,
        catalog_hash: &str,
        now: u64,
    ) -> Result<()> {
        self.record_checkins(&[Checkin {
            node: node.to_owned(),
            facts: serde_json::to_vec(facts)?,
            environment: environment.to_owned(),
            role: role.to_owned(),
            catalog_hash: catalog_hash.to_owned(),
            at: now,
            disabled: None,
        }])
    }

    /// Records many check-ins in one transaction.
    pub fn record_checkins(&self, batch: &[Checkin]) -> Result<()> {
        self.with(|db| Self::checkins_in(db, batch))
    }

    fn checkins_in(db: &Database, batch: &[Checkin]) -> Result<()> {
        let tx = db.begin_write()?;
        {
            let mut nodes = tx.open_table(NODES)?;
            let mut f = tx.open_table(FACTS)?;
            for c in batch {
                let mut rec: NodeRecord = match nodes.get(c.node.as_str())? {
                    Some(v) => decode(v.value(), "node")?,
                    None => NodeRecord {
                        name: c.node.clone(),
                        ..Default::default()
                    },
                };
                rec.last_checkin = c.at;
                rec.disabled = c.disabled.clone();
                if c.disabled.is_some() {
                    nodes.insert(c.node.as_str(), serde_json::to_vec(&rec)?.as_slice())?;
                    continue;
                }
                rec.environment = c.environment.clone();
                rec.role = c.role.clone();
                rec.catalog_hash = c.catalog_hash.clone();
                nodes.insert(c.node.as_str(), serde_json::to_vec(&rec)?.as_slice())?;
                f.insert(c.node.as_str(), c.facts.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Stores a report under `node` (the verified certificate name; a report
    /// whose own `node` field differs is refused) and prunes the oldest
    /// beyond the retention limit. A report whose run id is already stored
    /// for that node is accepted once only (agents resend queued reports).
    /// Returns false for such a duplicate.
    pub fn add_report(&self, node: &str, report: &Report, now: u64) -> Result<bool> {
        if report.node != node {
            anyhow::bail!(
                "report names node {:?} but was sent by {node:?}",
                report.node
            );
        }
        self.with(|db| self.add_report_in(db, node, report, now))
    }

    fn add_report_in(&self, db: &Database, node: &str, report: &Report, now: u64) -> Result<bool> {
        let tx = db.begin_write()?;
        let fresh;
        {
            let mut nodes = tx.open_table(NODES)?;
            let mut rec: NodeRecord = match nodes.get(node)? {
                Some(v) => decode(v.value(), "node")?,
                None => NodeRecord {
                    name: node.to_owned(),
                    ..Default::default()
                },
            };
            let mut reports = tx.open_table(REPORTS)?;
            let mut seen = false;
            let mut keys = Vec::new();
            for item in reports.range((node, 0u64)..=(node, u64::MAX))? {
                let (k, v) = item?;
                let r: Report = decode(v.value(), "report")?;
                seen |= r.run_id == report.run_id;
                keys.push(k.value().1);
            }
            fresh = !seen;
            if fresh {
                let seq = rec.report_seq;
                rec.report_seq += 1;
                reports.insert((node, seq), serde_json::to_vec(report)?.as_slice())?;
                keys.push(seq);
                let newer = rec
                    .last_report
                    .as_ref()
                    .is_none_or(|l| l.started <= report.started);
                if newer {
                    rec.last_report = Some(ReportSummary::of(report, now));
                    // A run happened: runs are not disabled (any more).
                    rec.disabled = None;
                }
                let excess = keys.len().saturating_sub(self.reports_per_node);
                for seq in keys.iter().take(excess) {
                    reports.remove((node, *seq))?;
                }
                nodes.insert(node, serde_json::to_vec(&rec)?.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(fresh)
    }

    /// Every node, sorted by name.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>> {
        self.with(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(NODES)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (_, v) = item?;
                out.push(decode(v.value(), "node")?);
            }
            Ok(out)
        })
    }

    /// Nodes whose facts match every filter and whose role is `role` (when
    /// given).
    pub fn query(&self, filters: &[FactFilter], role: Option<&str>) -> Result<Vec<NodeRecord>> {
        let mut out = Vec::new();
        for n in self.nodes()? {
            if role.is_some_and(|r| r != n.role) {
                continue;
            }
            if !filters.is_empty() {
                let facts = self.facts(&n.name)?.unwrap_or(serde_json::Value::Null);
                let flat = troupe_base::facts::flatten(&facts);
                if !filters.iter().all(|f| f.matches(&flat)) {
                    continue;
                }
            }
            out.push(n);
        }
        Ok(out)
    }

    /// The node's last facts.
    pub fn facts(&self, node: &str) -> Result<Option<serde_json::Value>> {
        self.with(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(FACTS)?;
            match t.get(node)? {
                Some(v) => Ok(Some(decode(v.value(), "facts")?)),
                None => Ok(None),
            }
        })
    }

    /// The node's reports, oldest first.
    pub fn reports(&self, node: &str) -> Result<Vec<Report>> {
        self.with(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(REPORTS)?;
            let mut out = Vec::new();
            for item in t.range((node, 0u64)..=(node, u64::MAX))? {
                let (_, v) = item?;
                out.push(decode(v.value(), "report")?);
            }
            Ok(out)
        })
    }

    /// The node's run history, oldest first: one [`RunEntry`] per stored
    /// report (`troupe report HOST --list`).
    pub fn runs(&self, node: &str) -> Result<Vec<RunEntry>> {
        Ok(self.reports(node)?.iter().map(RunEntry::of).collect())
    }

    /// One report by run id, or the latest when `run_id` is `None`.
    pub fn report(&self, node: &str, run_id: Option<&str>) -> Result<Option<Report>> {
        let all = self.reports(node)?;
        Ok(match run_id {
            Some(id) => all.into_iter().find(|r| r.run_id == id),
            None => all.into_iter().last(),
        })
    }

    /// Removes everything known about a node (after `troupe ca clean`).
    pub fn forget(&self, node: &str) -> Result<()> {
        self.with(|db| {
            let tx = db.begin_write()?;
            {
                tx.open_table(NODES)?.remove(node)?;
                tx.open_table(FACTS)?.remove(node)?;
                let mut reports = tx.open_table(REPORTS)?;
                reports.retain_in((node, 0u64)..=(node, u64::MAX), |_, _| false)?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}

/// True when a node missed `intervals` check-in intervals.
pub fn is_stale(rec: &NodeRecord, now: u64, interval_secs: u64, intervals: u64) -> bool {
    now.saturating_sub(rec.last_checkin) > interval_secs.saturating_mul(intervals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_catalog::ResourceId;
    use troupe_catalog::report::{ResourceReport, Status};

    fn report(node: &str, run: &str, started: &str, status: Status) -> Report {
        Report {
            run_id: run.into(),
            node: node.into(),
            started: started.into(),
            duration_ms: 12,
            noop: false,
            catalog_hash: "sha256:x".into(),
            environment: "production".into(),
            code_version: "v1".into(),
            from_cache: false,
            tags: vec![],
            resources: vec![ResourceReport {
                id: ResourceId::new("file", "/etc/motd"),
                status,
                events: vec![],
                diff: None,
                refreshed: false,
                duration_ms: 1,
            }],
        }
    }

    fn store(dir: &tempfile::TempDir, keep: usize) -> NodeStore {
        NodeStore::open(&dir.path().join("nodes.redb"), keep).unwrap()
    }

    #[test]
    fn checkin_then_query_by_fact_and_role() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d, 5);
        let deb = serde_json::json!({"os": {"family": "Debian", "release": {"major": "12"}}});
        let rh = serde_json::json!({"os": {"family": "RedHat"}});
        s.record_checkin("web1", &deb, "production", "web", "h1", 100)
            .unwrap();
        s.record_checkin("db1", &rh, "production", "db", "h2", 100)
            .unwrap();
        s.record_checkin("web2", &rh, "production", "web", "h3", 100)
            .unwrap();
        let f: FactFilter = "os.family=Debian".parse().unwrap();
        let names = |v: Vec<NodeRecord>| v.into_iter().map(|n| n.name).collect::<Vec<_>>();
        assert_eq!(
            names(s.query(std::slice::from_ref(&f), None).unwrap()),
            ["web1"]
        );
        assert_eq!(names(s.query(&[], Some("web")).unwrap()), ["web1", "web2"]);
        let major: FactFilter = "os.release.major=12".parse().unwrap();
        assert_eq!(names(s.query(&[major], Some("web")).unwrap()), ["web1"]);
        assert!(s.query(&[f], Some("db")).unwrap().is_empty());
        assert!("novalue".parse::<FactFilter>().is_err());
    }

    #[test]
    fn reports_are_retained_deduplicated_and_survive_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = store(&d, 3);
            for i in 0..5 {
                let r = report(
                    "web1",
                    &format!("run{i}"),
                    &format!("2026-01-0{}", i + 1),
                    Status::Changed,
                );
                assert!(s.add_report("web1", &r, 10 + i).unwrap());
            }
            // A resent report is stored once.
            let again = report("web1", "run4", "2026-01-05", Status::Changed);
            assert!(!s.add_report("web1", &again, 99).unwrap());
        }
        let s = store(&d, 3);
        let runs: Vec<String> = s
            .reports("web1")
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(runs, ["run2", "run3", "run4"]);
        assert_eq!(s.report("web1", None).unwrap().unwrap().run_id, "run4");
        assert_eq!(
            s.report("web1", Some("run3")).unwrap().unwrap().run_id,
            "run3"
        );
        assert!(s.report("web1", Some("run0")).unwrap().is_none());
        let rec = &s.nodes().unwrap()[0];
        let last = rec.last_report.as_ref().unwrap();
        assert_eq!((last.run_id.as_str(), last.status()), ("run4", "changed"));
    }

    #[test]
    fn a_queued_older_report_does_not_hide_the_latest() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d, 10);
        s.add_report(
            "web1",
            &report("web1", "new", "2026-01-02", Status::Unchanged),
            5,
        )
        .unwrap();
        s.add_report(
            "web1",
            &report("web1", "old", "2026-01-01", Status::Failed),
            6,
        )
        .unwrap();
        let rec = &s.nodes().unwrap()[0];
        assert_eq!(rec.last_report.as_ref().unwrap().run_id, "new");
    }

    #[test]
    fn report_for_another_node_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d, 10);
        let r = report("db1", "run1", "2026-01-01", Status::Changed);
        let err = s.add_report("web1", &r, 1).unwrap_err().to_string();
        assert!(err.contains("sent by \"web1\""), "{err}");
        assert!(s.reports("db1").unwrap().is_empty());
        assert!(s.nodes().unwrap().is_empty());
    }

    #[test]
    fn forget_removes_only_that_node() {
        let d = tempfile::tempdir().unwrap();
        let s = store(&d, 10);
        for n in ["web1", "web10"] {
            s.record_checkin(n, &serde_json::json!({}), "e", "r", "h", 1)
                .unwrap();
            s.add_report(n, &report(n, "r1", "t", Status::Unchanged), 1)
                .unwrap();
        }
        s.forget("web1").unwrap();
        assert!(s.facts("web1").unwrap().is_none());
        assert!(s.reports("web1").unwrap().is_empty());
        assert_eq!(s.reports("web10").unwrap().len(), 1);
        assert_eq!(s.nodes().unwrap().len(), 1);
    }

    /// On a full disk reports are refused with the cause named; once space
    /// is freed the same store (no restart) takes them again, with what was
    /// stored before intact and nothing of the refused ones.
    #[test]
    fn the_store_recovers_by_itself_once_a_full_disk_has_space_again() {
        let Some(fs) = troupe_base::test_fs::mount_or_skip("8m") else {
            return;
        };
        let mnt = fs.path.clone();
        let s = NodeStore::open(&mnt.join("nodes.redb"), 100).unwrap();
        s.add_report("web1", &report("web1", "before", "t1", Status::Changed), 1)
            .unwrap();
        let filler = fs.fill();
        let mut errors = Vec::new();
        for i in 0..4 {
            let mut r = report("web1", &format!("full{i}"), "t2", Status::Changed);
            // Big enough to need new pages.
            r.resources[0].diff = Some("x".repeat(512 * 1024));
            match s.add_report("web1", &r, 2) {
                Ok(_) => panic!("stored on a full disk (attempt {i})"),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        assert!(
            errors.iter().all(|e| e.contains("No space left")),
            "{errors:#?}"
        );
        assert!(s.generation() > 1, "the store tried to reopen its file");
        std::fs::remove_file(&filler).unwrap();
        assert!(
            s.add_report("web1", &report("web1", "after", "t3", Status::Changed), 3)
                .unwrap()
        );
        let runs: Vec<String> = s
            .reports("web1")
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(runs, ["before", "after"]);
        drop(s);
        let again = NodeStore::open(&mnt.join("nodes.redb"), 100).unwrap();
        assert_eq!(again.reports("web1").unwrap().len(), 2);
        assert_eq!(
            again.nodes().unwrap()[0]
                .last_report
                .as_ref()
                .unwrap()
                .run_id,
            "after"
        );
    }

    #[test]
    fn staleness() {
        let rec = NodeRecord {
            last_checkin: 1000,
            ..Default::default()
        };
        assert!(!is_stale(&rec, 1000 + 3 * 1800, 1800, 3));
        assert!(is_stale(&rec, 1001 + 3 * 1800, 1800, 3));
    }
}
