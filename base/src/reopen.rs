//! A store handle that heals itself after redb was stopped by an I/O error.
//!
//! Once a write to a redb file fails (typically `ENOSPC` on a full disk),
//! redb refuses every later transaction on that `Database` with
//! `PreviousIo`, however much space is freed afterwards: the only way back is
//! to drop the handle and open the file again (redb then recovers the file
//! from its last committed state). [`Reopening`] does that: it runs each
//! operation on the open handle and, when the operation fails because the
//! handle is poisoned, drops it, opens the same file again and runs the
//! operation once more. Nothing is half-written by this: redb's commits are
//! atomic, a failed one leaves the last committed state, and the retried
//! operation is a new transaction.
//!
//! redb refuses to open a file twice in one process, so the old handle must
//! be gone before the new open: operations hold a read lock on the slot for
//! their whole duration (no transaction outlives it) and a reopen takes the
//! write lock. A generation counter makes concurrent callers that saw the
//! same poisoned handle reopen it only once. An operation must never start
//! another operation on the same [`Reopening`] (the nested read lock could
//! wait behind a reopen that waits for the outer one).
//!
//! The CA (`ca.redb`), the master's fleet store (`nodes.redb`) and its
//! orchestration relay-once cache (`orchestration-relayed.redb`) use it.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

type OpenFn<T> = Box<dyn Fn(&Path) -> Result<T, String> + Send + Sync>;

struct Slot<T> {
    handle: Option<T>,
    /// Bumped on every (re)open attempt.
    generation: u64,
}

/// A handle (a `redb::Database`, or a type owning one) that is dropped and
/// opened again from the same file when an operation finds it poisoned.
pub struct Reopening<T> {
    path: PathBuf,
    open: OpenFn<T>,
    slot: RwLock<Slot<T>>,
}

impl<T> std::fmt::Debug for Reopening<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopening")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// True when `e`, or an error in its `source()` chain, is redb's "an earlier
/// I/O error stopped this database" (`PreviousIo`), in any of redb's error
/// types. Matches the variant, never the message.
pub fn is_previous_io(e: &(dyn StdError + 'static)) -> bool {
    use redb::StorageError as S;
    let mut cur = Some(e);
    while let Some(e) = cur {
        let hit = if let Some(x) = e.downcast_ref::<redb::Error>() {
            matches!(x, redb::Error::PreviousIo)
        } else if let Some(x) = e.downcast_ref::<S>() {
            matches!(x, S::PreviousIo)
        } else if let Some(x) = e.downcast_ref::<redb::TransactionError>() {
            matches!(x, redb::TransactionError::Storage(S::PreviousIo))
        } else if let Some(x) = e.downcast_ref::<redb::TableError>() {
            matches!(x, redb::TableError::Storage(S::PreviousIo))
        } else if let Some(x) = e.downcast_ref::<redb::CommitError>() {
            matches!(x, redb::CommitError::Storage(S::PreviousIo))
        } else if let Some(x) = e.downcast_ref::<redb::DatabaseError>() {
            matches!(x, redb::DatabaseError::Storage(S::PreviousIo))
        } else {
            false
        };
        if hit {
            return true;
        }
        cur = e.source();
    }
    false
}

impl<T> Reopening<T> {
    /// Opens the handle now with `open` (its error is returned as is, e.g.
    /// at startup); later reopens use the same function on the same path.
    pub fn open<E: std::fmt::Display>(
        path: &Path,
        open: impl Fn(&Path) -> Result<T, E> + Send + Sync + 'static,
    ) -> Result<Self, E> {
        let handle = open(path)?;
        let r = Self::closed(path, open);
        {
            let mut slot = r.write();
            slot.handle = Some(handle);
            slot.generation = 1;
        }
        Ok(r)
    }

    /// Does not open anything yet: the first operation opens the handle
    /// (and an open that fails is tried again by the next operation).
    pub fn closed<E: std::fmt::Display>(
        path: &Path,
        open: impl Fn(&Path) -> Result<T, E> + Send + Sync + 'static,
    ) -> Self {
        Reopening {
            path: path.to_path_buf(),
            open: Box::new(move |p| open(p).map_err(|e| e.to_string())),
            slot: RwLock::new(Slot {
                handle: None,
                generation: 0,
            }),
        }
    }

    /// The file this handle is opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many times the handle was opened or an open was tried (1 after
    /// [`Reopening::open`]; each recovery adds one).
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    fn read(&self) -> RwLockReadGuard<'_, Slot<T>> {
        self.slot.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Slot<T>> {
        self.slot.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `op` on the handle. When it fails and `poisoned` says the
    /// handle is stopped by an earlier I/O error (or the handle is not open:
    /// an earlier open failed), the handle is dropped, opened again from the
    /// same file and `op` runs once more; its second result is returned as
    /// is. An open that fails is turned into the caller's error by
    /// `open_failed` (given the open's message), and the next call tries
    /// again.
    pub fn run<R, E>(
        &self,
        mut op: impl FnMut(&T) -> Result<R, E>,
        poisoned: impl Fn(&E) -> bool,
        open_failed: impl Fn(String) -> E,
    ) -> Result<R, E> {
        let seen = {
            let slot = self.read();
            match &slot.handle {
                Some(h) => match op(h) {
                    Err(e) if poisoned(&e) => slot.generation,
                    other => return other,
                },
                None => slot.generation,
            }
        };
        self.reopen(seen).map_err(&open_failed)?;
        let slot = self.read();
        match &slot.handle {
            Some(h) => op(h),
            // Another caller's reopen failed in between.
            None => Err(open_failed(format!(
                "{} is not open (an open just failed)",
                self.path.display()
            ))),
        }
    }

    /// Drops the handle of generation `seen` and opens the file again,
    /// unless another caller already did.
    fn reopen(&self, seen: u64) -> Result<(), String> {
        let mut slot = self.write();
        if slot.generation != seen && slot.handle.is_some() {
            return Ok(());
        }
        let recovering = slot.generation > 0;
        // Close the old handle first: redb refuses a second open of a file
        // this process still has open.
        drop(slot.handle.take());
        slot.generation += 1;
        match (self.open)(&self.path) {
            Ok(h) => {
                slot.handle = Some(h);
                if recovering {
                    tracing::warn!(
                        path = %self.path.display(),
                        "opened the store again after an earlier error (e.g. a full disk)"
                    );
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), "cannot open the store: {e}");
                Err(e)
            }
        }
    }
}

/// A self-healing redb database.
pub type ReopeningDb = Reopening<redb::Database>;

/// Opens (or creates) a redb file as a [`ReopeningDb`].
pub fn open_db(path: &Path) -> Result<ReopeningDb, redb::DatabaseError> {
    Reopening::open(path, crate::redb_file::create_db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    const T: TableDefinition<&str, &[u8]> = TableDefinition::new("t");

    /// A stand-in handle: poisoned until reopened, like a redb Database
    /// after a failed write.
    struct Fake {
        poisoned: Arc<AtomicBool>,
    }

    #[derive(Debug, PartialEq)]
    enum FakeErr {
        Poisoned,
        Other,
        Open(String),
    }

    fn fake(
        opens: Arc<AtomicUsize>,
        poisoned: Arc<AtomicBool>,
        fail_open: Arc<AtomicBool>,
    ) -> Reopening<Fake> {
        Reopening::closed(Path::new("/nonexistent/fake"), move |_| {
            opens.fetch_add(1, Ordering::SeqCst);
            if fail_open.load(Ordering::SeqCst) {
                return Err("No space left on device".to_string());
            }
            // A fresh handle is healthy.
            poisoned.store(false, Ordering::SeqCst);
            Ok(Fake {
                poisoned: poisoned.clone(),
            })
        })
    }

    fn op(f: &Fake) -> Result<u32, FakeErr> {
        if f.poisoned.load(Ordering::SeqCst) {
            Err(FakeErr::Poisoned)
        } else {
            Ok(7)
        }
    }

    #[test]
    fn a_poisoned_handle_is_reopened_once_and_the_operation_retried() {
        let opens = Arc::new(AtomicUsize::new(0));
        let poisoned = Arc::new(AtomicBool::new(false));
        let fail_open = Arc::new(AtomicBool::new(false));
        let r = fake(opens.clone(), poisoned.clone(), fail_open.clone());
        let is_p = |e: &FakeErr| *e == FakeErr::Poisoned;
        // First use opens.
        assert_eq!(r.run(op, is_p, FakeErr::Open), Ok(7));
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        // A healthy handle is not reopened, and other errors pass through.
        assert_eq!(
            r.run(|_| Err::<u32, _>(FakeErr::Other), is_p, FakeErr::Open),
            Err(FakeErr::Other)
        );
        assert_eq!(opens.load(Ordering::SeqCst), 1);
        // Poisoned, and the open fails (disk still full): the open's error.
        poisoned.store(true, Ordering::SeqCst);
        fail_open.store(true, Ordering::SeqCst);
        let e = r.run(op, is_p, FakeErr::Open).unwrap_err();
        assert_eq!(e, FakeErr::Open("No space left on device".into()));
        // The next call opens again and succeeds once it can.
        fail_open.store(false, Ordering::SeqCst);
        assert_eq!(r.run(op, is_p, FakeErr::Open), Ok(7));
        assert_eq!(opens.load(Ordering::SeqCst), 3);
        assert_eq!(r.generation(), 3);
        // A retry that fails again returns that error (no loop).
        let tries = AtomicUsize::new(0);
        let e = r.run(
            |_| {
                tries.fetch_add(1, Ordering::SeqCst);
                Err::<u32, _>(FakeErr::Poisoned)
            },
            is_p,
            FakeErr::Open,
        );
        assert_eq!(e, Err(FakeErr::Poisoned));
        assert_eq!(tries.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn concurrent_callers_reopen_a_poisoned_handle_once() {
        let opens = Arc::new(AtomicUsize::new(0));
        let poisoned = Arc::new(AtomicBool::new(false));
        let r = Arc::new(fake(
            opens.clone(),
            poisoned.clone(),
            Arc::new(AtomicBool::new(false)),
        ));
        let is_p = |e: &FakeErr| *e == FakeErr::Poisoned;
        assert_eq!(r.run(op, is_p, FakeErr::Open), Ok(7));
        poisoned.store(true, Ordering::SeqCst);
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let r = r.clone();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    r.run(op, is_p, FakeErr::Open)
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), Ok(7));
        }
        assert_eq!(
            opens.load(Ordering::SeqCst),
            2,
            "one first open, one reopen"
        );
    }

    fn put(db: &redb::Database, key: &str, len: usize) -> Result<(), redb::Error> {
        let w = db.begin_write()?;
        w.open_table(T)?.insert(key, vec![7u8; len].as_slice())?;
        w.commit()?;
        Ok(())
    }

    fn get(db: &redb::Database, key: &str) -> Result<Option<usize>, redb::Error> {
        let r = db.begin_read()?;
        let t = r.open_table(T)?;
        Ok(t.get(key)?.map(|v| v.value().len()))
    }

    /// The real thing: redb on a full tmpfs is stopped by the failed write
    /// (`PreviousIo` afterwards); once space is freed the same handle
    /// heals by itself, with what was committed before intact and nothing
    /// of the failed writes.
    #[test]
    fn redb_on_a_full_disk_heals_once_space_is_freed() {
        let Some(fs) = crate::test_fs::mount_or_skip("4m") else {
            return;
        };
        let db = open_db(&fs.path.join("s.redb")).unwrap();
        let saw_previous_io = AtomicUsize::new(0);
        let poisoned = |e: &redb::Error| {
            let p = is_previous_io(e);
            if p {
                saw_previous_io.fetch_add(1, Ordering::SeqCst);
            }
            p
        };
        let failed = |m: String| redb::Error::Io(std::io::Error::other(m));
        db.run(|d| put(d, "kept", 1000), poisoned, failed).unwrap();
        let filler = fs.fill();
        // Write until the full disk refuses.
        let mut refusals = Vec::new();
        for i in 0..20 {
            if let Err(e) = db.run(
                |d| put(d, &format!("lost{i}"), 256 * 1024),
                poisoned,
                failed,
            ) {
                refusals.push(e.to_string());
            }
        }
        assert!(refusals.len() >= 19, "writes on a full disk: {refusals:?}");
        assert!(
            refusals.iter().any(|e| e.contains("No space left")),
            "{refusals:?}"
        );
        assert!(
            saw_previous_io.load(Ordering::SeqCst) > 0,
            "redb should have been stopped by the failed write: {refusals:?}"
        );
        std::fs::remove_file(&filler).unwrap();
        let before = db.generation();
        // No restart: the next operation works.
        db.run(|d| put(d, "after", 1000), poisoned, failed).unwrap();
        assert_eq!(
            db.run(|d| get(d, "kept"), poisoned, failed).unwrap(),
            Some(1000)
        );
        assert_eq!(
            db.run(|d| get(d, "after"), poisoned, failed).unwrap(),
            Some(1000)
        );
        let last_lost = refusals.len() - 1;
        assert_eq!(
            db.run(|d| get(d, &format!("lost{last_lost}")), poisoned, failed)
                .unwrap(),
            None
        );
        assert!(db.generation() >= before);
        // And the file reads back whole from a fresh open.
        drop(db);
        let again = redb::Database::create(fs.path.join("s.redb")).unwrap();
        assert_eq!(get(&again, "kept").unwrap(), Some(1000));
        assert_eq!(get(&again, "after").unwrap(), Some(1000));
    }

    #[test]
    fn previous_io_is_matched_in_every_redb_error_type() {
        use redb::StorageError as S;
        assert!(is_previous_io(&S::PreviousIo));
        assert!(is_previous_io(&redb::Error::PreviousIo));
        assert!(is_previous_io(&redb::TransactionError::Storage(
            S::PreviousIo
        )));
        assert!(is_previous_io(&redb::TableError::Storage(S::PreviousIo)));
        assert!(is_previous_io(&redb::CommitError::Storage(S::PreviousIo)));
        assert!(is_previous_io(&redb::DatabaseError::Storage(S::PreviousIo)));
        assert!(!is_previous_io(&S::Io(std::io::Error::other("x"))));
        assert!(!is_previous_io(&redb::DatabaseError::DatabaseAlreadyOpen));
        // Found through a wrapper's source chain too.
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped")]
        struct W(#[source] redb::Error);
        assert!(is_previous_io(&W(redb::Error::PreviousIo)));
        assert!(!is_previous_io(&W(redb::Error::Corrupted("x".into()))));
    }
}
