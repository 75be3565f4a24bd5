//! The on-disk replay cache: every accepted command id is kept, in a redb
//! file, until its validity window (expiry + clock-skew allowance) has
//! passed, and pruned after. Because the time check refuses any command
//! past that point, "never seen an id that could still pass the time check"
//! is exactly "never seen it". Commits are durable (fsync), so a replay is
//! refused after a process restart too.
//!
//! Only the [`crate::verify::Verifier`] writes here, and only for commands
//! whose signature and time window already verified: a forged command cannot
//! fill the cache or pre-empt a real id.
//!
//! Limit: the cache trusts the local clock. If the clock jumps back by more
//! than the skew allowance after an id was pruned, that id could pass again
//! until its expiry; keep hosts on NTP.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::envelope::CommandId;

const IDS: TableDefinition<[u8; 16], i64> = TableDefinition::new("replay_ids");
const BY_EXPIRY: TableDefinition<(i64, [u8; 16]), ()> = TableDefinition::new("replay_by_expiry");

/// Errors of the replay store itself (I/O, corrupt file).
#[derive(Debug, thiserror::Error)]
#[error("replay cache {op}: {msg}")]
pub struct ReplayStoreError {
    op: &'static str,
    msg: String,
    previous_io: bool,
}

impl ReplayStoreError {
    /// True when redb refused because an earlier write failed (its
    /// `PreviousIo`): the cache must be opened again.
    pub fn is_previous_io(&self) -> bool {
        self.previous_io
    }
}

fn err<E: std::fmt::Display + Into<redb::Error>>(
    op: &'static str,
) -> impl FnOnce(E) -> ReplayStoreError {
    move |e| ReplayStoreError {
        op,
        msg: e.to_string(),
        previous_io: matches!(e.into(), redb::Error::PreviousIo),
    }
}

/// What happened to an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// First time seen; now recorded.
    New,
    /// Seen before, still inside its window.
    Replayed,
}

/// A persistent replay cache.
pub struct ReplayCache {
    db: Database,
}

impl std::fmt::Debug for ReplayCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayCache").finish_non_exhaustive()
    }
}

impl ReplayCache {
    /// Opens (or creates) the cache file.
    pub fn open(path: &Path) -> Result<Self, ReplayStoreError> {
        let db = troupe_base::redb_file::create_db(path).map_err(err("open"))?;
        let tx = db.begin_write().map_err(err("open"))?;
        tx.open_table(IDS).map_err(err("open"))?;
        tx.open_table(BY_EXPIRY).map_err(err("open"))?;
        tx.commit().map_err(err("open"))?;
        Ok(Self { db })
    }

    /// Atomically: prunes ids whose window ended before `now`, then records
    /// `id` (kept until `keep_until`) unless it is already there.
    pub fn check_and_record(
        &self,
        id: &CommandId,
        keep_until: i64,
        now: i64,
    ) -> Result<Recorded, ReplayStoreError> {
        let tx = self.db.begin_write().map_err(err("write"))?;
        let nothing_pruned: bool;
        let outcome = {
            let mut ids = tx.open_table(IDS).map_err(err("write"))?;
            let mut by_exp = tx.open_table(BY_EXPIRY).map_err(err("write"))?;
            let mut expired: Vec<[u8; 16]> = Vec::new();
            {
                let gone = by_exp
                    .extract_from_if(..(now, [0u8; 16]), |_, _| true)
                    .map_err(err("prune"))?;
                for item in gone {
                    let (k, _) = item.map_err(err("prune"))?;
                    expired.push(k.value().1);
                }
            }
            nothing_pruned = expired.is_empty();
            for old in &expired {
                ids.remove(old).map_err(err("prune"))?;
            }
            if ids.get(&id.0).map_err(err("read"))?.is_some() {
                Recorded::Replayed
            } else {
                ids.insert(&id.0, &keep_until).map_err(err("write"))?;
                by_exp
                    .insert(&(keep_until, id.0), &())
                    .map_err(err("write"))?;
                Recorded::New
            }
        };
        if outcome == Recorded::Replayed && nothing_pruned {
            // Nothing changed: skip the durable commit.
            tx.abort().map_err(err("abort"))?;
        } else {
            tx.commit().map_err(err("commit"))?;
        }
        Ok(outcome)
    }

    /// Whether `id` is currently recorded (read-only).
    pub fn contains(&self, id: &CommandId) -> Result<bool, ReplayStoreError> {
        let tx = self.db.begin_read().map_err(err("read"))?;
        let ids = tx.open_table(IDS).map_err(err("read"))?;
        Ok(ids.get(&id.0).map_err(err("read"))?.is_some())
    }

    /// Number of ids recorded.
    pub fn len(&self) -> Result<u64, ReplayStoreError> {
        let tx = self.db.begin_read().map_err(err("read"))?;
        let ids = tx.open_table(IDS).map_err(err("read"))?;
        ids.len().map_err(err("read"))
    }

    /// Whether no id is recorded.
    pub fn is_empty(&self) -> Result<bool, ReplayStoreError> {
        Ok(self.len()? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_refuses_replays_prunes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.redb");
        let a = CommandId([1; 16]);
        let b = CommandId([2; 16]);
        {
            let c = ReplayCache::open(&path).unwrap();
            assert_eq!(c.check_and_record(&a, 1000, 900).unwrap(), Recorded::New);
            assert_eq!(
                c.check_and_record(&a, 1000, 950).unwrap(),
                Recorded::Replayed
            );
            assert_eq!(c.check_and_record(&b, 2000, 950).unwrap(), Recorded::New);
            assert_eq!(c.len().unwrap(), 2);
        }
        // After a restart the ids are still there.
        let c = ReplayCache::open(&path).unwrap();
        assert_eq!(
            c.check_and_record(&a, 1000, 1000).unwrap(),
            Recorded::Replayed
        );
        // Past a's window it is pruned (b stays).
        let z = CommandId([9; 16]);
        assert_eq!(c.check_and_record(&z, 3000, 1001).unwrap(), Recorded::New);
        assert!(!c.contains(&a).unwrap());
        assert!(c.contains(&b).unwrap());
        assert_eq!(c.len().unwrap(), 2);
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        assert!(ReplayCache::open(&path).is_err());
    }
}
