//! The agent's state directory (`--state DIR`):
//!
//! ```text
//! DIR/agent.redb            the cached catalog's hash, the stored runs (each run id names
//!                           its report and rollback journal files), how many journals
//!                           refer to each bucket blob, unsent-report queue
//! DIR/runs/ID.NONCE.report.json   a run's report (JSON)
//! DIR/runs/ID.NONCE.journal.json  its rollback journal (JSON; only when it changed files)
//! DIR/catalog.json          the last good catalog (canonical JSON; written atomically)
//! DIR/agent.lock            flock held during a run (released by the kernel on a crash)
//! DIR/stage/run-ID/        new files' temp files during a run (providers::stage; emptied after it, kept 180 s)
//! DIR/disabled              present = runs are disabled; JSON {reason, since}
//! DIR/last_run_summary.json small summary of the last run, for monitoring
//! DIR/bucket/ab/<sha256>    file bucket: old contents of changed files (rollback)
//! ```
//!
//! Reports and journals are files, not database values: redb holds a value
//! in one page rounded up to a power of two (a 1.5 MB report of 10,000
//! resources took a 2 MB page, plus a copy of the leaf of the previous one),
//! where a file is streamed through a 64 KB buffer. A run's files get new
//! names (a random nonce) and are synced before the one database commit
//! that names them, so the commit is the switch: a crash before it leaves
//! the stored runs as they were (and unnamed files, swept), a crash after it
//! leaves only the pruned runs' files behind (swept too). The journal is
//! streamed to its file while the run converges (one change at a time,
//! nothing held in memory); a run killed before its commit loses its own
//! journal (never named, swept with the old contents it saved in the
//! bucket), never another run's. Values written by
//! agents before `runs/` (the JSON itself, inline) are still read, and age
//! out with retention.

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use troupe_catalog::LazyCatalog;
use troupe_catalog::report::Report;

const CATALOG: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");
const REPORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("reports");
const CHANGES: TableDefinition<&str, &[u8]> = TableDefinition::new("changes");
const UNSENT: TableDefinition<&str, ()> = TableDefinition::new("unsent");
/// Bucket blob (sha256) -> how many retained rollback journals refer to it.
/// Kept in the same transactions as CHANGES, so pruning a journal knows at
/// once which blobs nothing needs any more, without reading the others.
const BLOB_REFS: TableDefinition<&str, u64> = TableDefinition::new("blob_refs");

/// The cached catalog, in the state directory.
pub const CATALOG_FILE: &str = "catalog.json";

/// Reports and rollback journals, one file each, in the state directory.
pub const RUNS_DIR: &str = "runs";

/// redb's page cache for `agent.redb`: what it holds now (hashes, run ids
/// and file names, blob counts) is small; redb's default (1 GiB) would
/// keep every page a run read, e.g. the inline reports of older agents.
const DB_CACHE_BYTES: usize = 4 << 20;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/troupe-agent";

/// What a file looked like before a run changed it (rollback journal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "was", rename_all = "lowercase")]
pub enum Before {
    /// Nothing was there: rollback removes what the run created.
    Absent,
    /// A regular file; its bytes are in the bucket under `sha256`.
    File {
        sha256: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        target: String,
    },
    Directory {
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// One file-system object a run changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Host path (already joined with `--root`).
    pub path: PathBuf,
    pub before: Before,
    /// The `--root` of the run (absent for `/`): rollback resolves `path`
    /// inside it again and refuses to act when a parent now leads elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
}

/// The state directory, opened.
pub struct State {
    pub dir: PathBuf,
    db: Database,
}

fn db_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("state database: {e}")
}

impl State {
    /// Opens (creating 0700) the state directory and its database.
    pub fn open(dir: &Path) -> anyhow::Result<State> {
        create_private_dir(dir)?;
        let path = dir.join("agent.redb");
        let fresh = !path.exists();
        let db = troupe_base::redb_file::create_db_with_cache(&path, DB_CACHE_BYTES)
            .map_err(db_err)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if !fresh && Self::has_tables(&db) {
            return Ok(State {
                dir: dir.to_owned(),
                db,
            });
        }
        let tx = db.begin_write().map_err(db_err)?;
        {
            tx.open_table(CATALOG).map_err(db_err)?;
            tx.open_table(REPORTS).map_err(db_err)?;
            let chg = tx.open_table(CHANGES).map_err(db_err)?;
            tx.open_table(UNSENT).map_err(db_err)?;
            let mut refs = tx.open_table(BLOB_REFS).map_err(db_err)?;
            // A state directory from before BLOB_REFS (or one whose table
            // was lost): count the retained journals' blobs once.
            if refs.is_empty().map_err(db_err)? {
                let runs = dir.join(RUNS_DIR);
                for e in chg.iter().map_err(db_err)? {
                    let (_, v) = e.map_err(db_err)?;
                    add_refs(&mut refs, blobs_of(&runs, v.value()).into_iter())?;
                }
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(State {
            dir: dir.to_owned(),
            db,
        })
    }

    fn has_tables(db: &Database) -> bool {
        let Ok(tx) = db.begin_read() else {
            return false;
        };
        tx.open_table(CATALOG).is_ok()
            && tx.open_table(REPORTS).is_ok()
            && tx.open_table(CHANGES).is_ok()
            && tx.open_table(UNSENT).is_ok()
            && tx.open_table(BLOB_REFS).is_ok()
    }

    /// The file bucket (its directory is created 0700 on first use).
    pub fn bucket(&self) -> Bucket {
        Bucket {
            dir: self.dir.join("bucket"),
        }
    }

    /// The hash of the cached catalog, if any.
    pub fn cached_hash(&self) -> anyhow::Result<Option<String>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CATALOG).map_err(db_err)?;
        Ok(t.get("last_hash")
            .map_err(db_err)?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    /// Where the cached catalog is kept.
    pub fn catalog_path(&self) -> PathBuf {
        self.dir.join(CATALOG_FILE)
    }

    /// The cached catalog's bytes, if any: `catalog.json`, or where agents
    /// before it kept them (in the database).
    #[cfg(test)]
    pub fn cached_catalog(&self) -> anyhow::Result<Option<Vec<u8>>> {
        let path = self.catalog_path();
        match std::fs::read(&path) {
            Ok(b) => return Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(CATALOG).map_err(db_err)?;
        Ok(t.get("last").map_err(db_err)?.map(|v| v.value().to_vec()))
    }

    /// The cached catalog, validated and kept in a [`spill`] file of the
    /// state directory (read from `catalog.json` as a stream), if any.
    pub fn load_cached_catalog(&self) -> anyhow::Result<Option<LazyCatalog>> {
        let path = self.catalog_path();
        let cat = match File::open(&path) {
            Ok(mut f) => LazyCatalog::from_file(&mut f, spill(&self.dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tx = self.db.begin_read().map_err(db_err)?;
                let t = tx.open_table(CATALOG).map_err(db_err)?;
                let Some(v) = t.get("last").map_err(db_err)? else {
                    return Ok(None);
                };
                LazyCatalog::from_slice(v.value(), spill(&self.dir))
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        cat.map(Some).context("the cached catalog is invalid")
    }

    /// Stores `cat` (its canonical JSON) as the last good catalog unless it
    /// is already the cached one. Streamed to `catalog.json` (temp file,
    /// fsync, rename, fsync of the directory), then its hash recorded: the
    /// catalog is never held twice in memory, nor written into the database
    /// (whose pages for one big value take twice its size while written).
    pub fn cache_catalog(&self, cat: &LazyCatalog) -> anyhow::Result<()> {
        let hash = cat.hash();
        if self.cached_hash()?.as_deref() == Some(hash) {
            return Ok(());
        }
        let path = self.catalog_path();
        troupe_base::fs::write_atomic_with(
            &path,
            troupe_base::fs::Atomic::durable(0o600).fixed_temp(),
            |f| {
                let mut w = std::io::BufWriter::with_capacity(64 << 10, f);
                cat.write_canonical(&mut w)?;
                w.flush()
            },
        )
        .with_context(|| format!("cannot write {}", path.display()))?;
        // A crash here leaves the new file with the old hash: a run told
        // "unchanged" for the old hash finds they differ and fetches again.
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(CATALOG).map_err(db_err)?;
            t.insert("last_hash", hash.as_bytes()).map_err(db_err)?;
            t.remove("last").map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// Where reports and journals are kept.
    pub fn runs_dir(&self) -> PathBuf {
        self.dir.join(RUNS_DIR)
    }

    /// Stores a report and its rollback journal; queues it for sending when
    /// `queue` is set; drops the oldest beyond `keep` (and bucket blobs no
    /// retained run refers to).
    ///
    /// The report and journal are streamed to new files in `runs/` and
    /// synced, then one database transaction names them (replacing what
    /// this run id named before) and prunes; the files nothing names any
    /// more are removed after the commit.
    pub fn save_run(
        &self,
        report: &Report,
        changes: &[FileChange],
        queue: bool,
        keep: usize,
    ) -> anyhow::Result<()> {
        let base = self.new_run_base(&report.run_id)?;
        self.store_run(report, &base, Journal::Changes(changes), queue, keep)
    }

    /// The start of the names of a run's files in `runs/` (`ID.NONCE`, a new
    /// random nonce), the directory created; refuses a run id that cannot
    /// name a file.
    pub fn new_run_base(&self, id: &str) -> anyhow::Result<String> {
        anyhow::ensure!(
            is_run_id(id),
            "run id {id:?} cannot name a file (letters, digits, '.', '_', '-')"
        );
        create_private_dir(&self.runs_dir())?;
        Ok(format!("{id}.{:016x}", fastrand::u64(..)))
    }

    /// Where the rollback journal of the run whose files start with `base`
    /// ([`State::new_run_base`]) is streamed during the run.
    pub fn journal_path(&self, base: &str) -> PathBuf {
        self.runs_dir().join(format!("{base}{JOURNAL_SUFFIX}"))
    }

    /// The changes in the journal file `runs/NAME` (streamed by this run).
    pub fn journal_file_changes(&self, name: &str) -> anyhow::Result<Vec<FileChange>> {
        let path = self.runs_dir().join(name);
        let f = File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_reader(std::io::BufReader::with_capacity(64 << 10, f))
            .with_context(|| format!("rollback journal {} is corrupt", path.display()))
    }

    /// [`State::save_run`] for a run whose files start with `base`, its
    /// journal given in memory or already streamed (and synced) to its file.
    pub fn store_run(
        &self,
        report: &Report,
        base: &str,
        journal: Journal,
        queue: bool,
        keep: usize,
    ) -> anyhow::Result<()> {
        let runs = self.runs_dir();
        let report_file = format!("{base}{REPORT_SUFFIX}");
        let mut written: Vec<PathBuf> = Vec::new();
        let (journal_file, changes) = match journal {
            Journal::Changes(c) => (
                (!c.is_empty()).then(|| format!("{base}{JOURNAL_SUFFIX}")),
                c,
            ),
            Journal::File(n) => {
                if let Some(n) = n {
                    written.push(runs.join(n));
                }
                (n.map(str::to_owned), &[][..])
            }
        };
        let res = (|| -> anyhow::Result<Vec<String>> {
            let id = report.run_id.as_str();
            anyhow::ensure!(
                run_file_id(&report_file) == Some((id, true))
                    && journal_file
                        .as_deref()
                        .is_none_or(|j| run_file_id(j) == Some((id, false))),
                "the files of run {id:?} are misnamed ({base})"
            );
            write_new_json(&runs, &report_file, report, &mut written)?;
            let blobs = match (&journal_file, changes.is_empty()) {
                (Some(j), false) => {
                    write_new_json(&runs, j, changes, &mut written)?;
                    blob_names(changes).collect()
                }
                (Some(j), true) => read_blobs(&runs.join(j))?,
                (None, _) => Vec::new(),
            };
            File::open(&runs)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("cannot sync {}", runs.display()))?;
            Ok(blobs)
        })()
        .and_then(|blobs| self.commit_run(report, blobs, &report_file, &journal_file, queue, keep));
        let orphans = match res {
            Ok(o) => o,
            Err(e) => {
                for p in written {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        };
        // After the commit: a crash before this point leaves the blobs (the
        // post-crash sweep removes them), never a journal without its blob.
        let bucket = self.bucket();
        for sha in orphans {
            if let Ok(p) = bucket.path(&sha) {
                let _ = std::fs::remove_file(p);
            }
        }
        // The pruned (or replaced) runs' files, and any a killed run left.
        self.sweep_runs()?;
        Ok(())
    }

    /// The transaction of [`State::save_run`]: names the new files, prunes.
    /// Returns the blobs no retained journal refers to any more.
    fn commit_run(
        &self,
        report: &Report,
        blobs: Vec<String>,
        report_file: &str,
        journal_file: &Option<String>,
        queue: bool,
        keep: usize,
    ) -> anyhow::Result<Vec<String>> {
        let id = report.run_id.as_str();
        let runs = self.runs_dir();
        let tx = self.db.begin_write().map_err(db_err)?;
        // Blobs whose last retained journal was pruned (or replaced) here.
        let mut orphans: Vec<String> = Vec::new();
        {
            let mut reports = tx.open_table(REPORTS).map_err(db_err)?;
            let mut chg = tx.open_table(CHANGES).map_err(db_err)?;
            let mut unsent = tx.open_table(UNSENT).map_err(db_err)?;
            let mut refs = tx.open_table(BLOB_REFS).map_err(db_err)?;
            reports.insert(id, report_file.as_bytes()).map_err(db_err)?;
            if let Some(j) = journal_file {
                let replaced = chg
                    .remove(id)
                    .map_err(db_err)?
                    .map(|v| blobs_of(&runs, v.value()));
                if let Some(old) = replaced {
                    orphans.extend(unref(&mut refs, old)?);
                }
                chg.insert(id, j.as_bytes()).map_err(db_err)?;
                add_refs(&mut refs, blobs.into_iter())?;
            }
            if queue {
                unsent.insert(id, ()).map_err(db_err)?;
            }
            let keep = keep.max(1) as u64;
            while reports.len().map_err(db_err)? > keep {
                let oldest = match reports.first().map_err(db_err)? {
                    Some((k, _)) => k.value().to_owned(),
                    None => break,
                };
                reports.remove(oldest.as_str()).map_err(db_err)?;
                let pruned = chg
                    .remove(oldest.as_str())
                    .map_err(db_err)?
                    .map(|v| blobs_of(&runs, v.value()));
                if let Some(blobs) = pruned {
                    orphans.extend(unref(&mut refs, blobs)?);
                }
                unsent.remove(oldest.as_str()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)?;
        Ok(orphans)
    }

    /// Removes the files of `runs/` no stored run names: those of pruned or
    /// replaced runs, and those a killed run wrote before its commit. Files
    /// of other names are left alone. Returns how many were removed.
    pub fn sweep_runs(&self) -> anyhow::Result<usize> {
        let runs = self.runs_dir();
        let rd = match std::fs::read_dir(&runs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", runs.display())),
        };
        let tx = self.db.begin_read().map_err(db_err)?;
        let reports = tx.open_table(REPORTS).map_err(db_err)?;
        let chg = tx.open_table(CHANGES).map_err(db_err)?;
        let mut removed = 0;
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((id, table)) = run_file_id(name)
                .map(|(id, is_report)| (id, if is_report { &reports } else { &chg }))
            else {
                continue;
            };
            let named = table
                .get(id)
                .map_err(db_err)?
                .is_some_and(|v| v.value() == name.as_bytes());
            if !named && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The stored value of `run_id` in `table`, decoded: inline JSON (older
    /// agents), or the file it names. A file pruned by a run that committed
    /// after this read began is looked up again.
    fn load<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        run_id: &str,
        what: &str,
    ) -> anyhow::Result<Option<T>> {
        for _ in 0..3 {
            let name = {
                let tx = self.db.begin_read().map_err(db_err)?;
                let t = tx.open_table(table).map_err(db_err)?;
                let Some(v) = t.get(run_id).map_err(db_err)? else {
                    return Ok(None);
                };
                match stored(v.value()) {
                    Stored::Inline(b) => {
                        return serde_json::from_slice(b)
                            .map(Some)
                            .with_context(|| format!("stored {what} of run {run_id} is corrupt"));
                    }
                    Stored::File(Some(name)) => name.to_owned(),
                    Stored::File(None) => anyhow::bail!(
                        "stored {what} of run {run_id} names no valid file in {}",
                        self.runs_dir().display()
                    ),
                }
            };
            let path = self.runs_dir().join(&name);
            match File::open(&path) {
                Ok(f) => {
                    return serde_json::from_reader(std::io::BufReader::with_capacity(64 << 10, f))
                        .map(Some)
                        .with_context(|| format!("stored {what} {} is corrupt", path.display()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        }
        anyhow::bail!(
            "the stored {what} of run {run_id} is missing from {}",
            self.runs_dir().display()
        )
    }

    pub fn report(&self, run_id: &str) -> anyhow::Result<Option<Report>> {
        self.load(REPORTS, run_id, "report")
    }

    /// Run ids of stored reports, oldest first.
    pub fn run_ids(&self) -> anyhow::Result<Vec<String>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(REPORTS).map_err(db_err)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(db_err)? {
            let (k, _) = e.map_err(db_err)?;
            out.push(k.value().to_owned());
        }
        Ok(out)
    }

    /// The rollback journal of a run (`None`: unknown run).
    pub fn changes(&self, run_id: &str) -> anyhow::Result<Option<Vec<FileChange>>> {
        {
            let tx = self.db.begin_read().map_err(db_err)?;
            let reports = tx.open_table(REPORTS).map_err(db_err)?;
            if reports.get(run_id).map_err(db_err)?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(
            self.load(CHANGES, run_id, "rollback journal")?
                .unwrap_or_default(),
        ))
    }

    /// Run ids of reports not yet delivered to the master, oldest first.
    pub fn unsent(&self) -> anyhow::Result<Vec<String>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(UNSENT).map_err(db_err)?;
        let mut out = Vec::new();
        for e in t.iter().map_err(db_err)? {
            let (k, _) = e.map_err(db_err)?;
            out.push(k.value().to_owned());
        }
        Ok(out)
    }

    pub fn mark_sent(&self, run_id: &str) -> anyhow::Result<()> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut t = tx.open_table(UNSENT).map_err(db_err)?;
            t.remove(run_id).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(())
    }

    /// Removes every bucket blob no retained journal refers to (after a
    /// killed run, whose saved old contents were never journaled).
    pub fn sweep_bucket(&self) -> anyhow::Result<usize> {
        let keep = self.journaled_blobs()?;
        let mut removed = 0;
        let Ok(rd) = std::fs::read_dir(self.bucket().dir) else {
            return Ok(0);
        };
        for sub in rd.flatten() {
            if let Ok(files) = std::fs::read_dir(sub.path()) {
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if !keep.contains(&name) && std::fs::remove_file(f.path()).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Every bucket blob some retained rollback journal refers to.
    fn journaled_blobs(&self) -> anyhow::Result<std::collections::HashSet<String>> {
        let mut keep = std::collections::HashSet::new();
        let tx = self.db.begin_read().map_err(db_err)?;
        let t = tx.open_table(BLOB_REFS).map_err(db_err)?;
        for e in t.iter().map_err(db_err)? {
            let (k, _) = e.map_err(db_err)?;
            keep.insert(k.value().to_owned());
        }
        Ok(keep)
    }
}

const REPORT_SUFFIX: &str = ".report.json";
const JOURNAL_SUFFIX: &str = ".journal.json";

/// A run id that can start a file name (every id [`new_run_id`] makes).
fn is_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `ID.NONCE.report.json` / `ID.NONCE.journal.json`: the run id, and
/// whether it is a report (else a journal). `None` for other names.
fn run_file_id(name: &str) -> Option<(&str, bool)> {
    let (stem, is_report) = match name.strip_suffix(REPORT_SUFFIX) {
        Some(s) => (s, true),
        None => (name.strip_suffix(JOURNAL_SUFFIX)?, false),
    };
    let (id, nonce) = stem.rsplit_once('.')?;
    (nonce.len() == 16 && nonce.bytes().all(|b| b.is_ascii_hexdigit()) && is_run_id(id))
        .then_some((id, is_report))
}

/// Where a stored report or journal is.
enum Stored<'a> {
    /// The JSON itself (how agents before `runs/` stored it).
    Inline(&'a [u8]),
    /// The name of its file in `runs/` (`None`: not a valid one).
    File(Option<&'a str>),
}

fn stored(v: &[u8]) -> Stored<'_> {
    match v.first() {
        // A report is a JSON object, a journal a JSON array; a file name
        // starts with a run id.
        Some(b'{' | b'[') => Stored::Inline(v),
        _ => Stored::File(
            std::str::from_utf8(v)
                .ok()
                .filter(|n| run_file_id(n).is_some()),
        ),
    }
}

/// Streams `value` as JSON into the new file `dir/name` (0600) and syncs
/// it; its path is pushed on `written` once it exists.
fn write_new_json<T: Serialize + ?Sized>(
    dir: &Path,
    name: &str,
    value: &T,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let path = dir.join(name);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    written.push(path.clone());
    let res = (|| -> std::io::Result<()> {
        let mut w = std::io::BufWriter::with_capacity(64 << 10, f);
        serde_json::to_writer(&mut w, value)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_data()
    })();
    res.with_context(|| format!("cannot write {}", path.display()))
}

type RefTable<'t> = redb::Table<'t, &'static str, u64>;

/// Counts one more journal referring to each distinct blob.
fn add_refs(refs: &mut RefTable, blobs: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let distinct: std::collections::BTreeSet<String> = blobs.collect();
    for sha in distinct {
        let n = refs
            .get(sha.as_str())
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        refs.insert(sha.as_str(), n + 1).map_err(db_err)?;
    }
    Ok(())
}

/// Counts one journal fewer for each distinct blob; returns the blobs no
/// journal refers to any more.
fn unref(refs: &mut RefTable, blobs: Vec<String>) -> anyhow::Result<Vec<String>> {
    let distinct: std::collections::BTreeSet<String> = blobs.into_iter().collect();
    let mut free = Vec::new();
    for sha in distinct {
        let n = refs
            .get(sha.as_str())
            .map_err(db_err)?
            .map_or(0, |g| g.value());
        if n <= 1 {
            refs.remove(sha.as_str()).map_err(db_err)?;
            free.push(sha);
        } else {
            refs.insert(sha.as_str(), n - 1).map_err(db_err)?;
        }
    }
    Ok(free)
}

/// A run's rollback journal, for [`State::store_run`].
pub enum Journal<'a> {
    /// In memory: written to its file when stored.
    Changes(&'a [FileChange]),
    /// Already streamed to `runs/NAME` and synced (`None`: no changes).
    File(Option<&'a str>),
}

/// The bucket blobs the journal file `path` refers to; an error when it
/// cannot be read (its blobs must be counted before it is named).
fn read_blobs(path: &Path) -> anyhow::Result<Vec<String>> {
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let b: Blobs = serde_json::from_reader(std::io::BufReader::with_capacity(64 << 10, f))
        .with_context(|| format!("rollback journal {} is corrupt", path.display()))?;
    Ok(b.0)
}

/// Local content-addressed store of old file contents.
pub struct Bucket {
    pub dir: PathBuf,
}

/// The bucket blobs a rollback journal refers to.
fn blob_names(changes: &[FileChange]) -> impl Iterator<Item = String> + '_ {
    changes.iter().filter_map(|c| match &c.before {
        Before::File { sha256, .. } => Some(sha256.clone()),
        _ => None,
    })
}

/// The bucket blobs a stored rollback journal refers to (its database
/// value: inline JSON, or the name of its file in `runs`). Read as a
/// stream keeping only the hashes; a journal that cannot be read names
/// none (its blobs stay counted: kept, never lost).
fn blobs_of(runs: &Path, stored_value: &[u8]) -> Vec<String> {
    let blobs: Result<Blobs, _> = match stored(stored_value) {
        Stored::Inline(b) => serde_json::from_slice(b).map_err(|_| ()),
        Stored::File(Some(name)) => File::open(runs.join(name)).map_err(|_| ()).and_then(|f| {
            serde_json::from_reader(std::io::BufReader::with_capacity(64 << 10, f)).map_err(|_| ())
        }),
        Stored::File(None) => Err(()),
    };
    blobs.map(|b| b.0).unwrap_or_default()
}

/// A journal's blob hashes, decoded without the rest of each change.
struct Blobs(Vec<String>);

impl<'de> Deserialize<'de> for Blobs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Change {
            before: BeforeHash,
        }
        #[derive(Deserialize)]
        struct BeforeHash {
            #[serde(default)]
            sha256: Option<String>,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a rollback journal (array of changes)")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vec<String>, A::Error> {
                let mut out = Vec::new();
                while let Some(c) = seq.next_element::<Change>()? {
                    out.extend(c.before.sha256);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V).map(Blobs)
    }
}

impl Bucket {
    fn path(&self, sha256: &str) -> anyhow::Result<PathBuf> {
        anyhow::ensure!(
            sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit()),
            "invalid content hash {sha256:?}"
        );
        Ok(self.dir.join(&sha256[..2]).join(sha256))
    }

    /// Stores `bytes` (no-op when present). Durability comes from the run's
    /// final sync of every file system it touched.
    pub fn put(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let sha = troupe_catalog::sha256_hex(bytes);
        let p = self.path(&sha)?;
        if p.exists() {
            return Ok(sha);
        }
        let dir = p.parent().context("bucket path")?;
        if !self.dir.exists() {
            create_private_dir(&self.dir)?;
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create bucket dir {}", dir.display()))?;
        let tmp = dir.join(format!(".{sha}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write bucket file {}", tmp.display()))?;
        f.write_all(bytes)?;
        drop(f);
        std::fs::rename(&tmp, &p)?;
        Ok(sha)
    }

    /// The bytes stored under `sha256`, checked against it.
    pub fn get(&self, sha256: &str) -> anyhow::Result<Vec<u8>> {
        let p = self.path(sha256)?;
        let b = std::fs::read(&p)
            .with_context(|| format!("bucket has no content {sha256} ({})", p.display()))?;
        anyhow::ensure!(
            troupe_catalog::sha256_hex(&b) == sha256,
            "bucket file {} is corrupt",
            p.display()
        );
        Ok(b)
    }
}

/// Where a catalog read in this run keeps its canonical JSON: a new
/// unnamed file (`O_TMPFILE`, 0600) in the state directory `dir`, so the
/// catalog's bytes are the kernel's page cache rather than the agent's
/// heap, nobody else can open it, and nothing is left behind when the run
/// ends or is killed. Memory when no such file can be made there.
pub fn spill(dir: &Path) -> troupe_catalog::Spill {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
    match nix::fcntl::open(dir, flags, Mode::from_bits_truncate(0o600)) {
        Ok(fd) => troupe_catalog::Spill::File(File::from(fd)),
        Err(e) => {
            tracing::debug!(
                "no unnamed file in {} ({e}): the catalog is kept in memory",
                dir.display()
            );
            troupe_catalog::Spill::Memory
        }
    }
}

/// Creates `dir` (and parents) and makes it mode 0700.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create state dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot set mode 0700 on {}", dir.display()))?;
    Ok(())
}

/// The run lock: an exclusive `flock` on `DIR/agent.lock`. The kernel drops
/// it when the process dies, so a crash never leaves a stale lock.
pub struct RunLock {
    lock: Flock<File>,
    /// The previous holder died without releasing it cleanly (its pid was
    /// still in the file): a run was killed.
    pub previous_crashed: bool,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // An empty lock file marks a clean end.
        let _ = self.lock.set_len(0);
    }
}

impl RunLock {
    /// Takes the lock or says which process holds it.
    pub fn acquire(state_dir: &Path) -> anyhow::Result<RunLock> {
        let path = state_dir.join("agent.lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                let mut before = String::new();
                let _ = std::io::Read::read_to_string(&mut *lock, &mut before);
                let _ = lock.set_len(0);
                let _ = std::io::Seek::rewind(&mut *lock);
                let _ = writeln!(&mut *lock, "{}", std::process::id());
                Ok(RunLock {
                    lock,
                    previous_crashed: !before.trim().is_empty(),
                })
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "another run is in progress (pid {}); lock {}",
                    holder.trim(),
                    path.display()
                )
            }
            Err((_, e)) => Err(anyhow::anyhow!("cannot lock {}: {e}", path.display())),
        }
    }
}

/// Why runs are disabled, if they are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disabled {
    pub reason: String,
    pub since: String,
}

pub fn disabled(state_dir: &Path) -> Option<Disabled> {
    let b = std::fs::read(state_dir.join("disabled")).ok()?;
    Some(serde_json::from_slice(&b).unwrap_or(Disabled {
        reason: String::from_utf8_lossy(&b).trim().to_owned(),
        since: String::new(),
    }))
}

/// Writes `bytes` to `path` atomically (temp + rename), without forcing it
/// to disk: for files that must never be partial but may be lost on a power
/// cut (the monitoring summary).
pub fn write_replace(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    write_file(path, bytes, mode, false)
}

/// Writes `bytes` to `path` atomically and durably (temp + fsync + rename +
/// fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    write_file(path, bytes, mode, true)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> anyhow::Result<()> {
    use troupe_base::fs::Atomic;
    // Fixed temp names (`.NAME.troupe-new`): the run lock makes the agent
    // the only writer, and a killed run's leftover is replaced next time.
    let how = if durable {
        Atomic::durable(mode)
    } else {
        Atomic::fast(mode)
    };
    troupe_base::fs::write_atomic(path, bytes, how.fixed_temp())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// RFC 3339 UTC time of now.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A new run id: sortable by time, unique enough
/// (`20261122T085200.123456Z-1a2b3c4d`).
pub fn new_run_id() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:06}Z-{:08x}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond(),
        fastrand::u32(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str) -> Report {
        Report {
            run_id: id.into(),
            node: "n".into(),
            started: String::new(),
            duration_ms: 0,
            noop: false,
            catalog_hash: String::new(),
            environment: "production".into(),
            code_version: String::new(),
            from_cache: false,
            tags: vec![],
            resources: vec![],
        }
    }

    fn kept(sha: &str) -> FileChange {
        FileChange {
            path: PathBuf::from("/x"),
            root: None,
            before: Before::File {
                sha256: sha.into(),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        }
    }

    fn catalog(node: &str) -> troupe_catalog::Catalog {
        let mut c = troupe_catalog::Catalog::new(node, "production", "v1");
        let body = c.add_content(b"hello\n");
        let kind = troupe_catalog::Kind::File {
            path: "/etc/motd".into(),
            ensure: troupe_catalog::Ensure::Present,
            content: Some(body),
            mode: Some(0o644),
            owner: None,
            group: None,
            validate: None,
        };
        c.resources.push(troupe_catalog::Resource {
            id: kind.id(),
            kind,
            requires: Default::default(),
            notify: vec![],
            sensitive: false,
            source: None,
            tags: Default::default(),
            noop: false,
        });
        c
    }

    #[test]
    fn the_cached_catalog_moves_from_the_database_to_canonical_catalog_json() {
        let d = tempfile::tempdir().unwrap();
        let st = State::open(d.path()).unwrap();
        assert_eq!(st.cached_catalog().unwrap(), None);
        // What an agent before catalog.json left: the catalog in redb.
        let old = catalog("old.example");
        {
            let tx = st.db.begin_write().unwrap();
            {
                let mut t = tx.open_table(CATALOG).unwrap();
                t.insert("last", old.to_canonical_json().as_slice())
                    .unwrap();
                t.insert("last_hash", old.hash().as_bytes()).unwrap();
            }
            tx.commit().unwrap();
        }
        assert_eq!(st.cached_catalog().unwrap(), Some(old.to_canonical_json()));
        // A new catalog given as pretty JSON is cached canonical.
        let new = catalog("new.example");
        let lazy = LazyCatalog::from_json(new.to_pretty_json().into_bytes()).unwrap();
        st.cache_catalog(&lazy).unwrap();
        let file = std::fs::read(d.path().join(CATALOG_FILE)).unwrap();
        assert_eq!(file, new.to_canonical_json());
        assert_eq!(st.cached_hash().unwrap(), Some(new.hash()));
        assert_eq!(st.cached_catalog().unwrap(), Some(file));
        let tx = st.db.begin_read().unwrap();
        let t = tx.open_table(CATALOG).unwrap();
        assert!(t.get("last").unwrap().is_none(), "the old copy is dropped");
        assert!(!d.path().join(".catalog.json.troupe-new").exists());
    }

    #[test]
    fn pruning_removes_exactly_the_blobs_no_retained_journal_needs() {
        let d = tempfile::tempdir().unwrap();
        let st = State::open(d.path()).unwrap();
        let b = st.bucket();
        let a = b.put(b"old a").unwrap();
        let bb = b.put(b"old b").unwrap();
        st.save_run(&report("r1"), &[kept(&a)], false, 2).unwrap();
        st.save_run(&report("r2"), &[kept(&a), kept(&bb)], false, 2)
            .unwrap();
        // r1 pruned: its blob is still r2's.
        st.save_run(&report("r3"), &[], false, 2).unwrap();
        assert!(b.path(&a).unwrap().exists());
        assert!(b.path(&bb).unwrap().exists());
        // r2 pruned: nothing refers to either any more.
        st.save_run(&report("r4"), &[], false, 2).unwrap();
        assert!(!b.path(&a).unwrap().exists());
        assert!(!b.path(&bb).unwrap().exists());
        assert_eq!(st.run_ids().unwrap(), ["r3", "r4"]);
    }

    #[test]
    fn a_blob_two_files_of_one_run_shared_is_counted_once() {
        let d = tempfile::tempdir().unwrap();
        let st = State::open(d.path()).unwrap();
        let b = st.bucket();
        let a = b.put(b"same old content").unwrap();
        st.save_run(&report("r1"), &[kept(&a), kept(&a)], false, 1)
            .unwrap();
        st.save_run(&report("r2"), &[kept(&a)], false, 1).unwrap();
        // r1 pruned; r2 still needs the blob.
        assert!(b.path(&a).unwrap().exists());
        st.save_run(&report("r3"), &[], false, 1).unwrap();
        assert!(!b.path(&a).unwrap().exists());
        assert!(st.journaled_blobs().unwrap().is_empty());
    }

    #[test]
    fn a_state_dir_from_before_blob_counts_is_counted_on_open() {
        let d = tempfile::tempdir().unwrap();
        let b;
        let (a, c);
        {
            let st = State::open(d.path()).unwrap();
            b = st.bucket();
            a = b.put(b"old a").unwrap();
            c = b.put(b"old c").unwrap();
            st.save_run(&report("r1"), &[kept(&a)], false, 2).unwrap();
            // r2 names `a` twice (two files had the same old content).
            st.save_run(&report("r2"), &[kept(&a), kept(&c), kept(&a)], false, 2)
                .unwrap();
            // What an older agent left: no count table.
            let tx = st.db.begin_write().unwrap();
            assert!(tx.delete_table(BLOB_REFS).unwrap());
            tx.commit().unwrap();
        }
        let st = State::open(d.path()).unwrap();
        assert_eq!(
            st.journaled_blobs().unwrap(),
            [a.clone(), c.clone()].into_iter().collect()
        );
        st.save_run(&report("r3"), &[], false, 2).unwrap();
        assert!(b.path(&a).unwrap().exists(), "r2 still refers to it");
        st.save_run(&report("r4"), &[], false, 2).unwrap();
        assert!(!b.path(&a).unwrap().exists());
        assert!(!b.path(&c).unwrap().exists());
    }

    fn run_files(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d.join(RUNS_DIR))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn with_resource(id: &str) -> Report {
        let mut r = report(id);
        r.resources.push(troupe_catalog::report::ResourceReport {
            id: troupe_catalog::ResourceId::new("file", "/etc/motd"),
            status: troupe_catalog::report::Status::Changed,
            events: vec!["content changed".into()],
            diff: None,
            refreshed: false,
            duration_ms: 3,
        });
        r
    }

    #[test]
    fn reports_and_journals_are_files_the_database_names() {
        let d = tempfile::tempdir().unwrap();
        let st = State::open(d.path()).unwrap();
        let a = st.bucket().put(b"old a").unwrap();
        let r1 = with_resource("r1");
        st.save_run(&r1, &[kept(&a)], true, 2).unwrap();
        st.save_run(&report("r2"), &[], false, 2).unwrap();
        let files = run_files(d.path());
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(
            files
                .iter()
                .all(|f| f.starts_with("r1.") || f.starts_with("r2."))
        );
        assert_eq!(st.report("r1").unwrap(), Some(r1));
        assert_eq!(st.changes("r1").unwrap(), Some(vec![kept(&a)]));
        assert_eq!(st.changes("r2").unwrap(), Some(vec![]));
        assert_eq!(st.report("r9").unwrap(), None);
        assert_eq!(st.changes("r9").unwrap(), None);
        assert_eq!(st.unsent().unwrap(), ["r1"]);
        // Each file is what the database names, and private.
        let tx = st.db.begin_read().unwrap();
        let t = tx.open_table(REPORTS).unwrap();
        let name = String::from_utf8(t.get("r1").unwrap().unwrap().value().to_vec()).unwrap();
        drop((t, tx));
        assert!(files.contains(&name), "{name} in {files:?}");
        let meta = std::fs::metadata(d.path().join(RUNS_DIR).join(&name)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        // Pruning r1 removes its two files and its blob.
        st.save_run(&report("r3"), &[], false, 2).unwrap();
        assert_eq!(st.run_ids().unwrap(), ["r2", "r3"]);
        let files = run_files(d.path());
        assert_eq!(files.len(), 2, "{files:?}");
        assert!(!files.iter().any(|f| f.starts_with("r1.")));
        assert!(!st.bucket().path(&a).unwrap().exists());
        assert!(st.unsent().unwrap().is_empty());
        // A run id that cannot name a file is refused, and nothing is stored.
        assert!(st.save_run(&report("../x"), &[], false, 2).is_err());
        assert_eq!(st.run_ids().unwrap(), ["r2", "r3"]);
        assert_eq!(run_files(d.path()).len(), 2);
    }

    #[test]
    fn a_crash_on_either_side_of_the_commit_keeps_the_stored_runs_whole() {
        let d = tempfile::tempdir().unwrap();
        let st = State::open(d.path()).unwrap();
        let a = st.bucket().put(b"old a").unwrap();
        let r1 = with_resource("r1");
        st.save_run(&r1, &[kept(&a)], false, 1).unwrap();
        let before = run_files(d.path());
        // Killed after writing r2's files, before the commit: r1 is still
        // the stored run, whole, and r2's files are swept.
        let runs = st.runs_dir();
        let mut written = Vec::new();
        let r2 = with_resource("r2");
        write_new_json(&runs, "r2.00000000000000aa.report.json", &r2, &mut written).unwrap();
        write_new_json(
            &runs,
            "r2.00000000000000aa.journal.json",
            &[kept(&a)],
            &mut written,
        )
        .unwrap();
        // A half-written file (killed mid-write) is swept too.
        std::fs::write(runs.join("r2.00000000000000bb.report.json"), "{\"run_id\":").unwrap();
        // Files of other names are not the agent's to remove.
        std::fs::write(runs.join("notes.txt"), "mine").unwrap();
        drop(st);
        let st = State::open(d.path()).unwrap();
        assert_eq!(st.run_ids().unwrap(), ["r1"]);
        assert_eq!(st.report("r1").unwrap(), Some(r1.clone()));
        assert_eq!(st.changes("r1").unwrap(), Some(vec![kept(&a)]));
        assert_eq!(st.report("r2").unwrap(), None);
        assert_eq!(st.sweep_runs().unwrap(), 3);
        let mut expect = before.clone();
        expect.push("notes.txt".into());
        expect.sort();
        assert_eq!(run_files(d.path()), expect);
        // Killed after the commit that pruned r1, before its files were
        // removed: r2 is whole, r1 is gone, and its files are swept.
        let (rf, jf) = (
            "r2.00000000000000cc.report.json",
            "r2.00000000000000cc.journal.json",
        );
        let mut written = Vec::new();
        write_new_json(&runs, rf, &r2, &mut written).unwrap();
        write_new_json(&runs, jf, &[kept(&a)], &mut written).unwrap();
        let orphans = st
            .commit_run(&r2, vec![a.clone()], rf, &Some(jf.into()), false, 1)
            .unwrap();
        assert!(orphans.is_empty(), "r2 still refers to the blob");
        assert_eq!(st.run_ids().unwrap(), ["r2"]);
        assert_eq!(st.report("r2").unwrap(), Some(r2));
        assert_eq!(st.report("r1").unwrap(), None);
        assert_eq!(st.sweep_runs().unwrap(), 2);
        let mut expect = vec![rf.to_string(), jf.to_string(), "notes.txt".into()];
        expect.sort();
        assert_eq!(run_files(d.path()), expect);
        assert!(st.bucket().path(&a).unwrap().exists());
    }

    #[test]
    fn runs_stored_inline_by_an_older_agent_are_read_and_age_out() {
        let d = tempfile::tempdir().unwrap();
        let st = State::open(d.path()).unwrap();
        let b = st.bucket();
        let a = b.put(b"old a").unwrap();
        let c = b.put(b"old c").unwrap();
        let old = with_resource("20261101T000000.000000Z-00000001");
        let journal = vec![kept(&a), kept(&c)];
        // What the previous agent's save_run left: the JSON as the value.
        {
            let tx = st.db.begin_write().unwrap();
            {
                let mut r = tx.open_table(REPORTS).unwrap();
                let mut j = tx.open_table(CHANGES).unwrap();
                let mut refs = tx.open_table(BLOB_REFS).unwrap();
                let id = old.run_id.as_str();
                r.insert(id, serde_json::to_vec(&old).unwrap().as_slice())
                    .unwrap();
                j.insert(id, serde_json::to_vec(&journal).unwrap().as_slice())
                    .unwrap();
                add_refs(&mut refs, blob_names(&journal)).unwrap();
            }
            tx.commit().unwrap();
        }
        drop(st);
        let st = State::open(d.path()).unwrap();
        assert_eq!(st.report(&old.run_id).unwrap(), Some(old.clone()));
        assert_eq!(st.changes(&old.run_id).unwrap(), Some(journal.clone()));
        // A new run next to it: a file; the old one is read as before.
        let new = with_resource("20261102T000000.000000Z-00000002");
        st.save_run(&new, &[kept(&c)], false, 2).unwrap();
        assert_eq!(
            st.run_ids().unwrap(),
            [old.run_id.clone(), new.run_id.clone()]
        );
        assert_eq!(st.report(&old.run_id).unwrap(), Some(old));
        assert_eq!(st.changes(&new.run_id).unwrap(), Some(vec![kept(&c)]));
        // Pruning the inline run frees the blob only it referred to.
        st.save_run(&report("20261103T000000.000000Z-00000003"), &[], false, 2)
            .unwrap();
        assert!(!b.path(&a).unwrap().exists());
        assert!(b.path(&c).unwrap().exists());
        // A value naming no valid file is an error, never a path.
        {
            let tx = st.db.begin_write().unwrap();
            tx.open_table(REPORTS)
                .unwrap()
                .insert("bad", b"../../etc/passwd".as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let e = st.report("bad").unwrap_err().to_string();
        assert!(e.contains("names no valid file"), "{e}");
    }

    #[test]
    fn a_killed_run_is_noticed_and_its_unjournaled_blobs_swept() {
        let d = tempfile::tempdir().unwrap();
        {
            let l = RunLock::acquire(d.path()).unwrap();
            assert!(!l.previous_crashed);
        }
        {
            // A clean end leaves the lock file empty.
            let l = RunLock::acquire(d.path()).unwrap();
            assert!(!l.previous_crashed);
        }
        // A killed run leaves its pid behind.
        std::fs::write(d.path().join("agent.lock"), "4242\n").unwrap();
        let l = RunLock::acquire(d.path()).unwrap();
        assert!(l.previous_crashed);
        drop(l);
        let st = State::open(d.path()).unwrap();
        let b = st.bucket();
        let journaled = b.put(b"journaled").unwrap();
        let stray = b.put(b"saved by the killed run").unwrap();
        st.save_run(&report("r1"), &[kept(&journaled)], false, 5)
            .unwrap();
        assert_eq!(st.sweep_bucket().unwrap(), 1);
        assert!(b.path(&journaled).unwrap().exists());
        assert!(!b.path(&stray).unwrap().exists());
    }
}
