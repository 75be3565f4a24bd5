//! An append-only, hash-chained audit log, generic over the entry type (the
//! command path logs `troupe_command::verify::CommandAudit`; the certificate
//! authority can log its own entries the same way).
//!
//! # Format
//! One JSON object per line (JSON Lines), exactly:
//!
//! ```text
//! {"record":{"seq":N,"time_ms":T,"prev":"<hex>","entry":{...}},"hash":"<hex>"}\n
//! ```
//!
//! `hash` = SHA-256(`"troupe-audit-v1\n"` ‖ the exact bytes of `record`);
//! `prev` is the previous line's `hash` (64 zeros for the first); `seq`
//! counts from 1. Every append is written with `O_APPEND` under an exclusive
//! `flock`, then fsync'd; then the **head file** `FILE.head`
//! (`{"seq":N,"hash":"<hex>"}`) is replaced atomically (temp, fsync,
//! rename).
//!
//! # What [`verify`] detects
//! - an edit of any byte of a line (hash mismatch, or the line is not in
//!   its exact canonical form);
//! - reordering or deletion of lines in the middle (`seq`/`prev` break);
//! - deletion of lines at the tail (fewer records than the head says, or a
//!   head hash that is not the last record's);
//! - a missing head file next to a non-empty log.
//!
//! # Limits
//! A hash chain without a secret proves order and integrity against
//! someone who edits part of the log; someone with write access to both the
//! log and its head can rewrite everything from some point on and recompute
//! the chain. Anchor the head elsewhere (ship [`Head`] to the master, print
//! it in reports) to detect that. A crash between the log fsync and the head
//! replacement leaves the head one record behind: `verify` accepts that
//! (reported as `head_lagging`) and [`AuditLog::open`] repairs it; a torn
//! last line that the head never covered is cut off by `open`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::fs::{Atomic, write_atomic};

const DOMAIN: &[u8] = b"troupe-audit-v1\n";
/// Longest accepted line.
pub const MAX_LINE: usize = 1 << 20;

/// The position of the chain's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl Head {
    const GENESIS: Head = Head {
        seq: 0,
        hash: [0u8; 32],
    };

    /// The hash as hex.
    pub fn hash_hex(&self) -> String {
        hex::encode(self.hash)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadFile {
    seq: u64,
    hash: String,
}

/// Audit log errors.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path} is locked by another writer")]
    Locked { path: PathBuf },
    #[error("audit log tampered or corrupt at line {line}: {reason}")]
    Corrupt { line: u64, reason: String },
    #[error(
        "audit log truncated: the head file records {head} entries but the log holds {records}"
    )]
    Truncated { head: u64, records: u64 },
    #[error("audit head mismatch: {0}")]
    HeadMismatch(String),
    #[error("audit head file {0} is missing although the log is not empty")]
    HeadMissing(PathBuf),
    #[error("cannot encode audit entry: {0}")]
    Encode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The head file of a log: `FILE.head`.
pub fn head_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".head");
    PathBuf::from(s)
}

/// The result of a successful [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Complete records in the log.
    pub records: u64,
    /// The last record.
    pub head: Head,
    /// The head file is one record behind (crash between append and head
    /// update); not tampering.
    pub head_lagging: bool,
    /// Bytes of an incomplete last line (crash mid-append), not counted.
    pub torn_tail: u64,
}

#[derive(serde::Serialize)]
struct RecordOut<'a, T: serde::Serialize> {
    seq: u64,
    time_ms: u64,
    prev: String,
    entry: &'a T,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordIn<'a> {
    seq: u64,
    #[allow(dead_code)]
    time_ms: u64,
    prev: &'a str,
    #[serde(borrow)]
    #[allow(dead_code)]
    entry: &'a RawValue,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LineIn<'a> {
    #[serde(borrow)]
    record: &'a RawValue,
    hash: &'a str,
}

fn record_hash(raw: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(raw.as_bytes());
    h.finalize().into()
}

fn make_line(raw: &str, hash: &[u8; 32]) -> String {
    format!("{{\"record\":{raw},\"hash\":\"{}\"}}\n", hex::encode(hash))
}

/// Checks one complete line (without its newline) against the chain so far.
fn check_line(line: &str, lineno: u64, prev: &Head) -> Result<Head, AuditError> {
    let bad = |reason: String| AuditError::Corrupt {
        line: lineno,
        reason,
    };
    let parsed: LineIn<'_> =
        serde_json::from_str(line).map_err(|e| bad(format!("not a valid record: {e}")))?;
    let raw = parsed.record.get();
    let rec: RecordIn<'_> =
        serde_json::from_str(raw).map_err(|e| bad(format!("not a valid record: {e}")))?;
    let hash = record_hash(raw);
    if parsed.hash != hex::encode(hash) {
        return Err(bad("hash does not match the record (edited)".into()));
    }
    if make_line(raw, &hash).trim_end_matches('\n') != line {
        return Err(bad("line is not in canonical form (edited)".into()));
    }
    if rec.seq != prev.seq + 1 {
        return Err(bad(format!(
            "sequence {} where {} was expected (reordered or deleted)",
            rec.seq,
            prev.seq + 1
        )));
    }
    if rec.prev != hex::encode(prev.hash) {
        return Err(bad(
            "previous-hash link broken (reordered, inserted or deleted)".into(),
        ));
    }
    Ok(Head { seq: rec.seq, hash })
}

/// Walks the log; returns the last head and the byte length of the complete
/// lines (anything after is a torn tail).
fn scan(path: &Path, file: &mut File) -> Result<(Head, u64, u64), AuditError> {
    file.seek(SeekFrom::Start(0)).map_err(io(path))?;
    let mut reader = BufReader::new(&mut *file);
    let mut head = Head::GENESIS;
    let mut good_len = 0u64;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(io(path))?;
        if n == 0 {
            return Ok((head, good_len, 0));
        }
        if buf.last() != Some(&b'\n') {
            if n > MAX_LINE {
                return Err(AuditError::Corrupt {
                    line: head.seq + 1,
                    reason: "line too long".into(),
                });
            }
            // Incomplete last line: a torn write, or a tail cut mid-line.
            return Ok((head, good_len, n as u64));
        }
        let text = std::str::from_utf8(&buf[..n - 1]).map_err(|_| AuditError::Corrupt {
            line: head.seq + 1,
            reason: "not UTF-8".into(),
        })?;
        head = check_line(text, head.seq + 1, &head)?;
        good_len += n as u64;
    }
}

fn read_head(path: &Path) -> Result<Option<Head>, AuditError> {
    let hp = head_path(path);
    let text = match std::fs::read_to_string(&hp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&hp)(e)),
    };
    let h: HeadFile = serde_json::from_str(text.trim_end())
        .map_err(|e| AuditError::HeadMismatch(format!("head file unreadable: {e}")))?;
    let raw = hex::decode(&h.hash)
        .map_err(|_| AuditError::HeadMismatch("head hash is not hex".into()))?;
    let hash: [u8; 32] = raw
        .try_into()
        .map_err(|_| AuditError::HeadMismatch("head hash has the wrong length".into()))?;
    Ok(Some(Head { seq: h.seq, hash }))
}

fn write_head(path: &Path, head: &Head) -> Result<(), AuditError> {
    let hp = head_path(path);
    let text = serde_json::to_string(&HeadFile {
        seq: head.seq,
        hash: head.hash_hex(),
    })
    .map_err(|e| AuditError::Encode(e.to_string()))?;
    write_atomic(&hp, format!("{text}\n").as_bytes(), Atomic::durable(0o640)).map_err(io(&hp))
}

/// Compares the chain's end with the stored head.
fn check_head(path: &Path, last: &Head, prev_of_last: Option<&Head>) -> Result<bool, AuditError> {
    let stored = read_head(path)?;
    let Some(stored) = stored else {
        if last.seq == 0 {
            return Ok(false);
        }
        return Err(AuditError::HeadMissing(head_path(path)));
    };
    if stored.seq > last.seq {
        return Err(AuditError::Truncated {
            head: stored.seq,
            records: last.seq,
        });
    }
    if stored == *last {
        return Ok(false);
    }
    if stored.seq + 1 == last.seq && prev_of_last == Some(&stored) {
        return Ok(true);
    }
    if stored.seq == last.seq {
        return Err(AuditError::HeadMismatch(format!(
            "record {} differs from the one the head recorded",
            last.seq
        )));
    }
    Err(AuditError::HeadMismatch(format!(
        "head records {} entries but the log holds {} (records appended without the writer?)",
        stored.seq, last.seq
    )))
}

/// Scans with tracking of the record before the last.
fn scan_with_prev(
    path: &Path,
    file: &mut File,
) -> Result<(Head, Option<Head>, u64, u64), AuditError> {
    // Second pass is cheap relative to I/O; keep the scanner simple.
    let (last, good_len, torn) = scan(path, file)?;
    if last.seq <= 1 {
        let prev = if last.seq == 1 {
            Some(Head::GENESIS)
        } else {
            None
        };
        return Ok((last, prev, good_len, torn));
    }
    // Find the hash of record seq-1: it is the `prev` of the last record.
    file.seek(SeekFrom::Start(0)).map_err(io(path))?;
    let reader = BufReader::new(&mut *file);
    let mut prev_hash = None;
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io(path))?;
        if i as u64 + 1 == last.seq {
            let parsed: LineIn<'_> =
                serde_json::from_str(&line).map_err(|e| AuditError::Corrupt {
                    line: last.seq,
                    reason: e.to_string(),
                })?;
            let rec: RecordIn<'_> =
                serde_json::from_str(parsed.record.get()).map_err(|e| AuditError::Corrupt {
                    line: last.seq,
                    reason: e.to_string(),
                })?;
            let raw = hex::decode(rec.prev)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok());
            prev_hash = raw;
            break;
        }
    }
    Ok((
        last,
        prev_hash.map(|hash| Head {
            seq: last.seq - 1,
            hash,
        }),
        good_len,
        torn,
    ))
}

/// Verifies a log file and its head (read-only).
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let mut f = File::open(path).map_err(io(path))?;
    let (last, prev, _good, torn) = scan_with_prev(path, &mut f)?;
    let head_lagging = check_head(path, &last, prev.as_ref())?;
    Ok(VerifyReport {
        records: last.seq,
        head: last,
        head_lagging,
        torn_tail: torn,
    })
}

/// An open audit log (single writer, enforced with `flock`).
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Flock<File>,
    head: Head,
}

impl AuditLog {
    /// Opens or creates the log, verifies the whole chain, repairs a crash
    /// (lagging head, torn unacknowledged last line) and refuses a tampered
    /// log.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .map_err(io(path))?;
        let mut file =
            Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| AuditError::Locked {
                path: path.to_path_buf(),
            })?;
        let (last, prev, good_len, torn) = scan_with_prev(path, &mut file)?;
        let lagging = check_head(path, &last, prev.as_ref())?;
        if torn > 0 {
            tracing::warn!(path = %path.display(), bytes = torn, "audit log: cutting an incomplete last line (crash during append)");
            file.set_len(good_len).map_err(io(path))?;
            file.sync_all().map_err(io(path))?;
        }
        if lagging || (last.seq == 0 && read_head(path)?.is_none()) {
            write_head(path, &last)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            head: last,
        })
    }

    /// The current head (to anchor elsewhere).
    pub fn head(&self) -> Head {
        self.head
    }

    /// Appends one entry (time = now), fsyncs it, then updates the head.
    pub fn append<T: serde::Serialize>(&mut self, entry: &T) -> Result<Head, AuditError> {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.append_at(entry, time_ms)
    }

    /// Appends one entry with an explicit time (milliseconds since the epoch).
    pub fn append_at<T: serde::Serialize>(
        &mut self,
        entry: &T,
        time_ms: u64,
    ) -> Result<Head, AuditError> {
        self.append_many_at(std::slice::from_ref(entry), time_ms)
    }

    /// Appends several entries with one fsync and one head update (e.g. the
    /// per-host results of a fan-out). All or nothing: if an entry cannot be
    /// encoded, nothing is written.
    pub fn append_many<T: serde::Serialize>(&mut self, entries: &[T]) -> Result<Head, AuditError> {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.append_many_at(entries, time_ms)
    }

    /// [`AuditLog::append_many`] with an explicit time.
    pub fn append_many_at<T: serde::Serialize>(
        &mut self,
        entries: &[T],
        time_ms: u64,
    ) -> Result<Head, AuditError> {
        let mut head = self.head;
        let mut buf = String::new();
        for entry in entries {
            let rec = RecordOut {
                seq: head.seq + 1,
                time_ms,
                prev: head.hash_hex(),
                entry,
            };
            let raw = serde_json::to_string(&rec).map_err(|e| AuditError::Encode(e.to_string()))?;
            if raw.contains('\n') || raw.len() + 100 > MAX_LINE {
                return Err(AuditError::Encode("entry too large".into()));
            }
            let hash = record_hash(&raw);
            buf.push_str(&make_line(&raw, &hash));
            head = Head { seq: rec.seq, hash };
        }
        if buf.is_empty() {
            return Ok(head);
        }
        // A failed append (a full disk) must leave no torn bytes: a later
        // append would land after them, and the line they make together
        // reads as tampering at the next open. Cut back to where it began.
        let before = self.file.metadata().map_err(io(&self.path))?.len();
        let written = self
            .file
            .write_all(buf.as_bytes())
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            if let Err(cut) = self
                .file
                .set_len(before)
                .and_then(|()| self.file.sync_data())
            {
                tracing::error!(path = %self.path.display(), "audit log: cannot cut a failed append back: {cut}");
            }
            return Err(io(&self.path)(e));
        }
        self.head = head;
        write_head(&self.path, &head)?;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct E<'a> {
        action: &'a str,
        n: u32,
    }

    fn log_with(n: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = AuditLog::open(&path).unwrap();
        for i in 0..n {
            log.append_at(
                &E {
                    action: "service.restart",
                    n: i,
                },
                1_700_000_000_000 + u64::from(i),
            )
            .unwrap();
        }
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(path: &Path, l: &[String]) {
        let mut s = l.join("\n");
        if !l.is_empty() {
            s.push('\n');
        }
        std::fs::write(path, s).unwrap();
    }

    #[test]
    fn clean_log_verifies_and_reopens() {
        let (_d, path) = log_with(5);
        let r = verify(&path).unwrap();
        assert_eq!(r.records, 5);
        assert!(!r.head_lagging);
        let mut log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head().seq, 5);
        log.append(&E {
            action: "ping",
            n: 9,
        })
        .unwrap();
        assert_eq!(verify(&path).unwrap().records, 6);
    }

    #[test]
    fn empty_log_verifies() {
        let (_d, path) = log_with(0);
        assert_eq!(verify(&path).unwrap().records, 0);
    }

    #[test]
    fn edit_is_detected() {
        let (_d, path) = log_with(4);
        let mut l = lines(&path);
        l[1] = l[1].replace("service.restart", "service.restarx");
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path),
            Err(AuditError::Corrupt { line: 2, .. })
        ));
    }

    #[test]
    fn edit_with_recomputed_hash_breaks_the_chain() {
        let (_d, path) = log_with(4);
        let mut l = lines(&path);
        // Recompute the edited record's own hash: the next record's `prev`
        // no longer matches.
        let parsed: serde_json::Value = serde_json::from_str(&l[1]).unwrap();
        let raw = serde_json::to_string(&parsed["record"])
            .unwrap()
            .replace("\"n\":1", "\"n\":7");
        l[1] = make_line(&raw, &record_hash(&raw)).trim_end().to_string();
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path),
            Err(AuditError::Corrupt { line: 3, .. })
        ));
    }

    #[test]
    fn whitespace_edit_is_detected() {
        let (_d, path) = log_with(2);
        let mut l = lines(&path);
        l[0] = l[0].replacen("{\"record\":", "{\"record\": ", 1);
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path),
            Err(AuditError::Corrupt { line: 1, .. })
        ));
    }

    #[test]
    fn reorder_is_detected() {
        let (_d, path) = log_with(4);
        let mut l = lines(&path);
        l.swap(1, 2);
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path),
            Err(AuditError::Corrupt { line: 2, .. })
        ));
    }

    #[test]
    fn middle_deletion_is_detected() {
        let (_d, path) = log_with(4);
        let mut l = lines(&path);
        l.remove(1);
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path),
            Err(AuditError::Corrupt { line: 2, .. })
        ));
    }

    #[test]
    fn tail_deletion_is_detected() {
        let (_d, path) = log_with(4);
        let mut l = lines(&path);
        l.truncate(2);
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path),
            Err(AuditError::Truncated {
                head: 4,
                records: 2
            })
        ));
        // Removing everything is detected too.
        write_lines(&path, &[]);
        assert!(matches!(
            verify(&path),
            Err(AuditError::Truncated {
                head: 4,
                records: 0
            })
        ));
        // A tampered log refuses to be opened for appending.
        assert!(AuditLog::open(&path).is_err());
    }

    #[test]
    fn missing_or_edited_head_is_detected() {
        let (_d, path) = log_with(3);
        let good = std::fs::read(head_path(&path)).unwrap();
        std::fs::remove_file(head_path(&path)).unwrap();
        assert!(matches!(verify(&path), Err(AuditError::HeadMissing(_))));
        std::fs::write(
            head_path(&path),
            String::from_utf8(good)
                .unwrap()
                .replace("\"seq\":3", "\"seq\":2"),
        )
        .unwrap();
        assert!(matches!(verify(&path), Err(AuditError::HeadMismatch(_))));
    }

    #[test]
    fn crash_between_append_and_head_is_repaired() {
        let (_d, path) = log_with(3);
        let head3 = std::fs::read(head_path(&path)).unwrap();
        {
            let mut log = AuditLog::open(&path).unwrap();
            log.append_at(
                &E {
                    action: "ping",
                    n: 3,
                },
                1,
            )
            .unwrap();
        }
        // Simulate the crash: the head still says 3.
        std::fs::write(head_path(&path), &head3).unwrap();
        let r = verify(&path).unwrap();
        assert!(r.head_lagging);
        assert_eq!(r.records, 4);
        // A torn, never-acknowledged line after that.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"record\":{\"seq\":5,").unwrap();
        drop(f);
        assert_eq!(verify(&path).unwrap().torn_tail, 19);
        let log = AuditLog::open(&path).unwrap();
        assert_eq!(log.head().seq, 4);
        drop(log);
        let r = verify(&path).unwrap();
        assert!(!r.head_lagging);
        assert_eq!(r.torn_tail, 0);
    }

    #[test]
    fn batch_append_chains_like_single_appends() {
        let (_d, path) = log_with(2);
        let mut log = AuditLog::open(&path).unwrap();
        let batch: Vec<E<'_>> = (0..50).map(|n| E { action: "ping", n }).collect();
        let head = log.append_many(&batch).unwrap();
        assert_eq!(head.seq, 52);
        assert_eq!(log.append_many::<E<'_>>(&[]).unwrap().seq, 52);
        log.append(&E {
            action: "facts",
            n: 0,
        })
        .unwrap();
        drop(log);
        let r = verify(&path).unwrap();
        assert_eq!(r.records, 53);
        let mut l = lines(&path);
        l.remove(30);
        write_lines(&path, &l);
        assert!(matches!(
            verify(&path),
            Err(AuditError::Corrupt { line: 31, .. })
        ));
    }

    #[test]
    fn second_writer_is_refused() {
        let (_d, path) = log_with(1);
        let _a = AuditLog::open(&path).unwrap();
        assert!(matches!(
            AuditLog::open(&path),
            Err(AuditError::Locked { .. })
        ));
    }
}
