//! Release logs of `troupe deploy`: one file per release,
//! `DATA/deploys/ID.jsonl`, one stored record a line
//! (`{"seq":N,"by":"CALLER","received":"TIME","record":{...}}`, the record
//! as [`troupe_bastion::deploy_record::DeployRecord`]).
//!
//! Appends are one `write` of a whole line on a file opened for appending,
//! then `fdatasync`, under one lock; a line torn by a crash is ignored by
//! readers and cut off by the next append. A release opens with `started`
//! (seq 0) and takes no record after its end (`finished`/`aborted`);
//! records at or below the last stored seq are dropped (a resend). At most
//! [`KEEP_RELEASES`] logs are kept (the oldest are deleted when a release
//! starts).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use troupe_bastion::deploy_record::{DeployRecord, valid_release_id};

pub use troupe_bastion::deploy_log::{DeployEntry, DeployLog, DeploySummary, fold};

pub use troupe_bastion::deploy_record;

/// The directory of release logs, in the data directory.
pub const DEPLOYS_DIR: &str = "deploys";
/// Release logs kept.
pub const KEEP_RELEASES: usize = 500;
/// Largest release log (bytes); records beyond it are refused.
pub const MAX_LOG_BYTES: u64 = 64 << 20;

/// Why a record was not stored.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0:?} is not a release id (1 to 64 of [0-9A-Za-z-])")]
    BadId(String),
    #[error("release {0} does not exist (it must begin with a `started` record, seq 0)")]
    Unknown(String),
    #[error("release {0} already exists")]
    Exists(String),
    #[error("release {0} has ended; it takes no more records")]
    Ended(String),
    #[error("a `started` record must have seq 0")]
    StartSeq,
    #[error("release {0}'s log is full ({MAX_LOG_BYTES} bytes)")]
    Full(String),
    #[error("release log {path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

/// What the store remembers of an open release.
#[derive(Debug, Clone)]
struct Open {
    last_seq: u64,
    ended: bool,
    title: String,
    environment: Option<String>,
}

fn meta_of(r: &DeployRecord) -> Option<(String, Option<String>)> {
    match r {
        DeployRecord::Started {
            title, environment, ..
        } => Some((title.clone(), environment.clone())),
        _ => None,
    }
}

/// The release logs (see the module documentation).
pub struct DeployStore {
    dir: PathBuf,
    open: Mutex<HashMap<String, Open>>,
}

impl DeployStore {
    pub fn new(dir: PathBuf) -> DeployStore {
        DeployStore {
            dir,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// `DATA/deploys`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.jsonl"))
    }

    /// Stores record `seq` of release `id` sent by `by`. Ok(false): a
    /// resend (seq not above the last stored one), not stored again.
    pub fn append(
        &self,
        id: &str,
        seq: u64,
        by: &str,
        record: &DeployRecord,
    ) -> Result<bool, DeployError> {
        if !valid_release_id(id) {
            return Err(DeployError::BadId(id.to_string()));
        }
        let path = self.path(id);
        let io = |err| DeployError::Io {
            path: path.clone(),
            err,
        };
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let starting = matches!(record, DeployRecord::Started { .. });
        if starting && seq != 0 {
            return Err(DeployError::StartSeq);
        }
        let state = match open.get(id) {
            Some(s) => Some(s.clone()),
            None => match std::fs::metadata(&path) {
                Ok(_) => {
                    let entries = read_entries(&path).map_err(io)?;
                    let (title, environment) = entries
                        .first()
                        .and_then(|e| meta_of(&e.record))
                        .unwrap_or_default();
                    let s = Open {
                        last_seq: entries.last().map_or(0, |e| e.seq),
                        ended: entries.iter().any(|e| e.record.is_end()),
                        title,
                        environment,
                    };
                    open.insert(id.to_string(), s.clone());
                    Some(s)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io(e)),
            },
        };
        match &state {
            None if !starting => return Err(DeployError::Unknown(id.to_string())),
            Some(_) if starting => {
                // A resent `started` (seq 0) changes nothing.
                return Ok(false);
            }
            Some(s) if seq <= s.last_seq => return Ok(false),
            Some(s) if s.ended => return Err(DeployError::Ended(id.to_string())),
            _ => {}
        }
        if starting {
            troupe_pki::util::ensure_private_dir(&self.dir, 0o700)
                .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            self.prune(KEEP_RELEASES.saturating_sub(1));
        }
        let entry = DeployEntry {
            seq,
            by: by.to_string(),
            received: super::now_rfc3339(),
            record: record.clone(),
        };
        let mut line = serde_json::to_vec(&entry).map_err(|e| io(std::io::Error::other(e)))?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new();
        f.append(true);
        if starting {
            use std::os::unix::fs::OpenOptionsExt;
            f.create_new(true).mode(0o640);
        }
        let mut file = f.open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                DeployError::Exists(id.to_string())
            } else {
                io(e)
            }
        })?;
        let len = file.metadata().map_err(io)?.len();
        if len + line.len() as u64 > MAX_LOG_BYTES {
            return Err(DeployError::Full(id.to_string()));
        }
        if len > 0 {
            cut_torn_tail(&path, &mut file).map_err(io)?;
        }
        file.write_all(&line).map_err(io)?;
        file.sync_data().map_err(io)?;
        let (title, environment) = match (meta_of(record), &state) {
            (Some(m), _) => m,
            (None, Some(s)) => (s.title.clone(), s.environment.clone()),
            (None, None) => Default::default(),
        };
        open.insert(
            id.to_string(),
            Open {
                last_seq: seq,
                ended: record.is_end(),
                title,
                environment,
            },
        );
        Ok(true)
    }

    /// A release's title and environment (from memory once it was
    /// written or read by this store).
    pub fn meta(&self, id: &str) -> Option<(String, Option<String>)> {
        if let Some(s) = self.open.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Some((s.title.clone(), s.environment.clone()));
        }
        self.read(id)
            .ok()
            .flatten()
            .map(|l| (l.title, l.environment))
    }

    /// Deletes the oldest logs beyond `keep` (ids sort by start time).
    fn prune(&self, keep: usize) {
        let mut ids = self.ids().unwrap_or_default();
        if ids.len() <= keep {
            return;
        }
        let excess = ids.len() - keep;
        for id in ids.drain(..excess) {
            let _ = std::fs::remove_file(self.path(&id));
            self.open
                .try_lock()
                .map(|mut o| o.remove(&id))
                .ok()
                .flatten();
        }
    }

    /// Every stored release id, oldest first.
    pub fn ids(&self) -> std::io::Result<Vec<String>> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut ids = Vec::new();
        for e in rd {
            let name = e?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".jsonl")) else {
                continue;
            };
            if valid_release_id(id) {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Release `id`'s log; `None` when there is none.
    pub fn read(&self, id: &str) -> Result<Option<DeployLog>, DeployError> {
        if !valid_release_id(id) {
            return Err(DeployError::BadId(id.to_string()));
        }
        let path = self.path(id);
        match read_entries(&path) {
            Ok(entries) => Ok(fold(id, entries)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(DeployError::Io { path, err }),
        }
    }

    /// Every stored release, newest first.
    pub fn list(&self) -> Result<Vec<DeploySummary>, DeployError> {
        let ids = self.ids().map_err(|err| DeployError::Io {
            path: self.dir.clone(),
            err,
        })?;
        let mut out = Vec::new();
        for id in ids.iter().rev() {
            if let Some(log) = self.read(id)? {
                out.push(log.summary());
            }
        }
        out.sort_by(|a, b| newest_first((&a.started, &a.id), (&b.started, &b.id)));
        Ok(out)
    }
}

/// Release order, newest first, from `(started, id)` pairs. Ids carry the
/// start to the second only: two releases started in the same second are
/// ordered by their recorded start (ms); a start that does not read goes
/// after those that do.
pub fn newest_first(a: (&str, &str), b: (&str, &str)) -> std::cmp::Ordering {
    let at = |s: &str| humantime::parse_rfc3339_weak(s).ok();
    at(b.0).cmp(&at(a.0)).then_with(|| b.1.cmp(a.1))
}

/// The whole lines of a log; a torn last line (no newline, or not JSON)
/// is skipped.
fn read_entries(path: &Path) -> std::io::Result<Vec<DeployEntry>> {
    let text = std::fs::read(path)?;
    let mut out = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<DeployEntry>(line) {
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!(
                "{}: skipping a line that does not read: {e}",
                path.display()
            ),
        }
    }
    Ok(out)
}

/// Cuts a partial last line (left by a crash mid-append).
fn cut_torn_tail(path: &Path, file: &mut std::fs::File) -> std::io::Result<()> {
    let text = std::fs::read(path)?;
    if text.last() == Some(&b'\n') {
        return Ok(());
    }
    let keep = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    file.set_len(keep as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_bastion::deploy_record::PlannedPackage;

    fn started() -> DeployRecord {
        DeployRecord::Started {
            title: "nginx 1.24".into(),
            environment: Some("dr".into()),
            packages: vec![PlannedPackage {
                name: "nginx".into(),
                version: "1.24.0-1".into(),
                batches: vec![vec!["web1".into()], vec!["web2".into()]],
            }],
            not_connected: vec![],
            time: "2026-12-06T21:00:00.000Z".into(),
        }
    }

    fn step(host: &str, result: &str) -> DeployRecord {
        DeployRecord::Step {
            host: host.into(),
            package: "nginx".into(),
            step: "stop nginx".into(),
            attempt: 1,
            result: result.into(),
            message: if result == "ok" {
                String::new()
            } else {
                "boom".into()
            },
            started: "2026-12-06T21:00:01.000Z".into(),
            duration_ms: 12,
        }
    }

    #[test]
    fn releases_started_in_the_same_second_list_newest_first() {
        let d = tempfile::tempdir().unwrap();
        let s = DeployStore::new(d.path().join(DEPLOYS_DIR));
        let at = |ms: &str| DeployRecord::Started {
            title: format!("release at {ms}"),
            environment: None,
            packages: vec![],
            not_connected: vec![],
            time: format!("2026-12-06T21:00:00.{ms}Z"),
        };
        // The later release drew the smaller random suffix.
        s.append("20261206T210000Z-ffffff", 0, "bastion", &at("100"))
            .unwrap();
        s.append("20261206T210000Z-000000", 0, "bastion", &at("900"))
            .unwrap();
        s.append("20261206T205959Z-aaaaaa", 0, "bastion", &at("000"))
            .unwrap();
        let ids: Vec<String> = s.list().unwrap().into_iter().map(|l| l.id).collect();
        assert_eq!(
            ids,
            [
                "20261206T210000Z-000000",
                "20261206T210000Z-ffffff",
                "20261206T205959Z-aaaaaa"
            ]
        );
    }

    #[test]
    fn a_release_log_is_stored_in_order_listed_and_read() {
        let d = tempfile::tempdir().unwrap();
        let s = DeployStore::new(d.path().join(DEPLOYS_DIR));
        let id = "20261206T210000Z-abcdef";
        assert!(matches!(
            s.append(id, 1, "bastion", &step("web1", "ok")),
            Err(DeployError::Unknown(_))
        ));
        assert!(matches!(
            s.append(id, 3, "bastion", &started()),
            Err(DeployError::StartSeq)
        ));
        assert!(s.append(id, 0, "bastion", &started()).unwrap());
        assert!(
            !s.append(id, 0, "bastion", &started()).unwrap(),
            "resent start"
        );
        assert!(s.append(id, 1, "bastion", &step("web1", "ok")).unwrap());
        assert!(
            !s.append(id, 1, "bastion", &step("web1", "ok")).unwrap(),
            "resend"
        );
        assert!(s.append(id, 2, "bastion", &step("web2", "failed")).unwrap());
        // A crash left half a line: readers skip it, the next append cuts it.
        {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(s.path(id))
                .unwrap();
            f.write_all(b"{\"seq\":3,\"by\":").unwrap();
        }
        assert_eq!(s.read(id).unwrap().unwrap().entries.len(), 3);
        let fresh = DeployStore::new(d.path().join(DEPLOYS_DIR));
        assert!(
            fresh
                .append(
                    id,
                    3,
                    "bastion",
                    &DeployRecord::Aborted {
                        reason: "1 host failed".into(),
                        completed: 1,
                        failed_hosts: 1,
                        time: "2026-12-06T21:00:03.000Z".into(),
                    },
                )
                .unwrap()
        );
        assert!(matches!(
            fresh.append(id, 4, "bastion", &step("web2", "ok")),
            Err(DeployError::Ended(_))
        ));
        let log = fresh.read(id).unwrap().unwrap();
        assert_eq!(log.status, "aborted");
        assert_eq!(log.entries.len(), 4);
        assert_eq!(log.by, "bastion");
        let text = log.to_text();
        assert!(
            text.contains("web2: stop nginx: failed in 12 ms: boom"),
            "{text}"
        );
        assert!(text.contains("ABORTED: 1 host failed"), "{text}");
        assert!(text.contains("batch 2: web2"), "{text}");
        let list = fresh.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].steps, list[0].failed_steps, list[0].hosts),
            (2, 1, 2)
        );
        assert!(matches!(fresh.read("../etc"), Err(DeployError::BadId(_))));
        assert!(fresh.read("20990101T000000Z-000000").unwrap().is_none());
    }
}
