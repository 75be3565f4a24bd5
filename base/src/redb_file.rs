//! Creating a redb file so that a crash never leaves one that cannot open.
//!
//! `redb::Database::create` initialises a new database in place: it grows
//! the file, writes the header without its magic number, syncs, and only
//! then writes the magic number. A process killed in between (a `kill -9`
//! during an agent's very first run) leaves a non-empty file without the
//! magic number, and every later `create` refuses it ("Not a redb database:
//! magic number mismatch"): the program is stuck until someone deletes the
//! file by hand.
//!
//! [`create_db`] never lets an unfinished database appear under its real
//! name: a new file is initialised under a temporary name in the same
//! directory (`.NAME.creating-PID-RANDOM`), synced, and linked into place
//! (a hard link, which refuses to replace a file another process created
//! meanwhile), then the directory is synced. A killed creation leaves only
//! the temporary file; the next [`create_db`] for that name removes the ones
//! whose process is gone.
//!
//! A file at the real name left by an older build's killed creation (empty,
//! or no magic number and nothing but zeros past the header page) holds no
//! data at all; it is removed and created again, with a warning. Any other
//! file without the magic number is a database damaged later, which may
//! hold data: it is never touched, and the error says what to do.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use redb::{Database, DatabaseError, StorageError};

/// redb's magic number: the first bytes of every completed redb file.
const MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// redb's header (with the magic number) fits in the first page; a file
/// that holds any data has some non-zero byte past it.
const HEADER_PAGE: usize = 4096;

/// A never-completed creation is a freshly grown file of a few MiB at most;
/// a larger file without the magic number is not one.
const MAX_UNFINISHED_LEN: u64 = 64 << 20;

const CREATING: &str = ".creating-";

/// Opens the redb database at `path`, creating it crash-safely when it does
/// not exist (see the module documentation). A drop-in replacement for
/// `redb::Database::create`.
pub fn create_db(path: &Path) -> Result<Database, DatabaseError> {
    create_db_with(path, &Database::builder())
}

/// [`create_db`] with redb's cache bounded to `cache_bytes` (redb's
/// default is 1 GiB, which a long-running process fills with every page it
/// ever read or wrote).
pub fn create_db_with_cache(path: &Path, cache_bytes: usize) -> Result<Database, DatabaseError> {
    let mut b = Database::builder();
    b.set_cache_size(cache_bytes);
    create_db_with(path, &b)
}

fn create_db_with(path: &Path, builder: &redb::Builder) -> Result<Database, DatabaseError> {
    let (dir, name) = split(path).map_err(storage)?;
    remove_stale_creations(&dir, &name);
    match fs::symlink_metadata(path) {
        Ok(_) => {
            if check_existing(path).map_err(storage)? == Existing::Unfinished {
                tracing::warn!(
                    path = %path.display(),
                    "removing a database file whose creation never completed \
                     (the process creating it was killed); it held no data"
                );
                fs::remove_file(path).map_err(storage)?;
                sync_dir(&dir).map_err(storage)?;
                create_new(path, &dir, &name)?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_new(path, &dir, &name)?,
        Err(e) => return Err(storage(e)),
    }
    builder.create(path)
}

fn storage(e: io::Error) -> DatabaseError {
    DatabaseError::Storage(StorageError::Io(e))
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let name = path
        .file_name()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no file name", path.display()),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes `.NAME.creating-PID-*` files whose process no longer runs (a
/// creation killed before it finished). Best effort: a file it cannot judge
/// or remove stays.
fn remove_stale_creations(dir: &Path, name: &str) {
    let prefix = format!(".{name}{CREATING}");
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    // Without /proc there is no telling whether a creator is alive.
    if !Path::new("/proc/self").exists() {
        return;
    }
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // This process's own creations clean up after themselves.
        if pid == std::process::id() || Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        match fs::remove_file(e.path()) {
            Ok(()) => tracing::info!(
                path = %e.path().display(),
                "removed the leftover of a database creation that was killed"
            ),
            Err(err) => tracing::debug!(path = %e.path().display(), "cannot remove: {err}"),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Existing {
    /// A redb file (or at least one whose magic number is there: redb judges
    /// the rest).
    Database,
    /// Left by a creation that never completed: empty, or no magic number
    /// and nothing but zeros past the header page. Holds no data.
    Unfinished,
}

fn check_existing(path: &Path) -> io::Result<Existing> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.is_file() {
        // Let redb report what it finds.
        return Ok(Existing::Database);
    }
    if meta.len() == 0 {
        return Ok(Existing::Unfinished);
    }
    let mut f = File::open(path)?;
    let mut head = [0u8; MAGIC.len()];
    let n = read_full(&mut f, &mut head)?;
    if n == MAGIC.len() && head == MAGIC {
        return Ok(Existing::Database);
    }
    // redb's creation writes the magic number last, over a zeroed one.
    if head[..n].iter().all(|&b| b == 0) && meta.len() <= MAX_UNFINISHED_LEN {
        let mut rest = Vec::new();
        f.read_to_end(&mut rest)?;
        let past_header = rest.get(HEADER_PAGE - n.min(HEADER_PAGE)..).unwrap_or(&[]);
        if past_header.iter().all(|&b| b == 0) {
            return Ok(Existing::Unfinished);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{p} is not a redb database (it does not start with redb's magic number) \
             and may hold data, so it is left as it is; if it is not needed, move it \
             aside (mv {p} {p}.damaged) and start again with an empty one, otherwise \
             restore it from a backup",
            p = path.display()
        ),
    ))
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Initialises a database under a temporary name and links it into place.
fn create_new(path: &Path, dir: &Path, name: &str) -> Result<(), DatabaseError> {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).map_err(|e| storage(io::Error::other(format!("random: {e}"))))?;
    let tmp = dir.join(format!(
        ".{name}{CREATING}{}-{}",
        std::process::id(),
        hex::encode(rnd)
    ));
    let result = (|| {
        drop(Database::create(&tmp)?);
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(storage)?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => {}
            // Another process created it meanwhile: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            // A filesystem without hard links: rename, unless the file
            // appeared meanwhile.
            Err(_) if fs::symlink_metadata(path).is_err() => {
                fs::rename(&tmp, path).map_err(storage)?
            }
            Err(_) => {}
        }
        sync_dir(dir).map_err(storage)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<&str, u64> = TableDefinition::new("t");

    fn put(db: &Database, k: &str, v: u64) {
        let w = db.begin_write().unwrap();
        w.open_table(T).unwrap().insert(k, v).unwrap();
        w.commit().unwrap();
    }

    fn get(db: &Database, k: &str) -> Option<u64> {
        let r = db.begin_read().unwrap();
        let t = r.open_table(T).unwrap();
        t.get(k).unwrap().map(|v| v.value())
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// What `redb::Database::create` leaves when killed after growing the
    /// file and syncing the header, before writing the magic number: the
    /// length of a new database, its header bytes without the magic number,
    /// zeros after.
    fn killed_creation(path: &Path) {
        let scratch = tempfile::tempdir().unwrap();
        let real = scratch.path().join("real.redb");
        drop(Database::create(&real).unwrap());
        let whole = fs::read(&real).unwrap();
        let mut left = vec![0u8; whole.len()];
        left[MAGIC.len()..512].copy_from_slice(&whole[MAGIC.len()..512]);
        assert!(left[MAGIC.len()..512].iter().any(|&b| b != 0));
        fs::write(path, left).unwrap();
    }

    #[test]
    fn a_creation_killed_before_the_magic_number_is_created_again() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.redb");
        killed_creation(&p);
        // What every start did before: stuck.
        let e = Database::create(&p)
            .expect_err("redb refuses it")
            .to_string();
        assert!(e.contains("magic number mismatch"), "{e}");
        let db = create_db(&p).unwrap();
        put(&db, "k", 7);
        drop(db);
        assert_eq!(get(&create_db(&p).unwrap(), "k"), Some(7));
        assert_eq!(names(d.path()), ["agent.redb"]);
    }

    #[test]
    fn a_creation_killed_right_after_growing_the_file_is_created_again() {
        for len in [0u64, 5, 4096, 1 << 20] {
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("s.redb");
            File::create(&p).unwrap().set_len(len).unwrap();
            let db = create_db(&p).unwrap_or_else(|e| panic!("len {len}: {e}"));
            put(&db, "k", len);
            assert_eq!(get(&db, "k"), Some(len));
        }
    }

    #[test]
    fn a_damaged_database_that_may_hold_data_is_an_error_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nodes.redb");
        let db = create_db(&p).unwrap();
        put(&db, "precious", 1);
        drop(db);
        // Damage the magic number, two ways.
        for head in [[0u8; 9], *b"garbage!!"] {
            let mut bytes = fs::read(&p).unwrap();
            bytes[..9].copy_from_slice(&head);
            fs::write(&p, &bytes).unwrap();
            let e = create_db(&p).expect_err("refused").to_string();
            assert!(e.contains("is not a redb database"), "{e}");
            assert!(e.contains("move it aside"), "{e}");
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert_eq!(fs::read(&p).unwrap(), bytes, "the file was changed");
        }
        assert_eq!(names(d.path()), ["nodes.redb"]);
    }

    #[test]
    fn an_existing_database_is_opened_with_its_data() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ca.redb");
        let db = create_db(&p).unwrap();
        put(&db, "a", 1);
        drop(db);
        let db = create_db(&p).unwrap();
        assert_eq!(get(&db, "a"), Some(1));
    }

    #[test]
    fn a_killed_creation_leaves_a_temp_file_the_next_open_removes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("orchestration-replay.redb");
        // A process that is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = d
            .path()
            .join(format!(".orchestration-replay.redb.creating-{dead}-00"));
        killed_creation(&stale);
        // A creation still running (this process) is left alone, and so
        // are other files.
        let mine = d.path().join(format!(
            ".orchestration-replay.redb.creating-{}-11",
            std::process::id()
        ));
        fs::write(&mine, b"").unwrap();
        fs::write(d.path().join("other"), b"x").unwrap();
        let db = create_db(&p).unwrap();
        put(&db, "k", 1);
        let mut left = names(d.path());
        left.sort();
        let mine_name = mine.file_name().unwrap().to_string_lossy().into_owned();
        let mut want = vec![
            mine_name,
            "orchestration-replay.redb".into(),
            "other".into(),
        ];
        want.sort();
        assert_eq!(left, want);
    }
}
