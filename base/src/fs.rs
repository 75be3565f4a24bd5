//! Atomic file writes: the one implementation every crate uses.
//!
//! A write goes to a temp file in the same directory, created with the
//! final mode from the start (so a private key is never readable by others,
//! even briefly), then is renamed (or hard-linked, for
//! [`Atomic::no_replace`]) over the target: a reader sees the old file or
//! the new one, never a part. [`Atomic::durable`] also fsyncs the file before
//! the rename and the directory after it, so the new content survives a
//! power cut; [`Atomic::fast`] skips both (for files that must never be
//! partial but may be lost, like a monitoring summary).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// How [`write_atomic`] writes. Start from [`Atomic::durable`] or
/// [`Atomic::fast`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Atomic {
    mode: u32,
    durable: bool,
    replace: bool,
    exact_mode: bool,
    fixed_temp: bool,
}

impl Atomic {
    /// fsync the file and its directory; replace an existing file; temp
    /// file named `.NAME.tmp-RANDOM`; created with `mode` (less the umask).
    pub const fn durable(mode: u32) -> Self {
        Self {
            mode,
            durable: true,
            replace: true,
            exact_mode: false,
            fixed_temp: false,
        }
    }

    /// Like [`Atomic::durable`] without the fsyncs.
    pub const fn fast(mode: u32) -> Self {
        Self {
            durable: false,
            ..Self::durable(mode)
        }
    }

    /// Refuse to replace an existing file (`AlreadyExists`), also when
    /// another writer creates it at the same moment (the temp file is
    /// hard-linked into place, which fails if the target exists).
    pub const fn no_replace(self) -> Self {
        Self {
            replace: false,
            ..self
        }
    }

    /// Set exactly `mode` on the file, whatever the umask.
    pub const fn exact_mode(self) -> Self {
        Self {
            exact_mode: true,
            ..self
        }
    }

    /// Name the temp file `.NAME.troupe-new` instead of a random name: a
    /// leftover from a killed writer is replaced by the next write, so
    /// crashes never pile up temp files. Only for files one process writes
    /// at a time (the caller holds a lock).
    pub const fn fixed_temp(self) -> Self {
        Self {
            fixed_temp: true,
            ..self
        }
    }
}

/// Writes `data` to `path` atomically, as `how` says.
pub fn write_atomic(path: &Path, data: &[u8], how: Atomic) -> io::Result<()> {
    write_atomic_with(path, how, |f| f.write_all(data))
}

/// Like [`write_atomic`], with the content written by `fill` into the temp
/// file (a value streamed out without building its bytes first); an error
/// from `fill` leaves `path` as it was and no temp file.
pub fn write_atomic_with(
    path: &Path,
    how: Atomic,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    if !how.replace && fs::symlink_metadata(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists (refusing to overwrite)", path.display()),
        ));
    }
    let tmp = if how.fixed_temp {
        let tmp = dir.join(format!(".{}.troupe-new", name.to_string_lossy()));
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        tmp
    } else {
        let mut rnd = [0u8; 8];
        getrandom::fill(&mut rnd).map_err(|e| io::Error::other(format!("random: {e}")))?;
        dir.join(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            hex::encode(rnd)
        ))
    };
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(how.mode)
            .open(&tmp)?;
        if how.exact_mode {
            f.set_permissions(fs::Permissions::from_mode(how.mode))?;
        }
        fill(&mut f)?;
        if how.durable {
            f.sync_all()?;
        }
        drop(f);
        if how.replace {
            fs::rename(&tmp, path)?;
        } else {
            // hard_link fails if the target exists: no race with another writer.
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)?;
        }
        if how.durable {
            File::open(&dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect()
    }

    #[test]
    fn replaces_with_the_mode_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        for how in [
            Atomic::durable(0o600),
            Atomic::fast(0o600),
            Atomic::durable(0o600).fixed_temp(),
            Atomic::durable(0o600).exact_mode(),
        ] {
            write_atomic(&p, b"one", how).unwrap();
            write_atomic(&p, b"two", how).unwrap();
            assert_eq!(fs::read(&p).unwrap(), b"two", "{how:?}");
            assert_eq!(mode(&p), 0o600, "{how:?}");
            assert!(leftovers(d.path()).is_empty(), "{how:?}");
            fs::remove_file(&p).unwrap();
        }
    }

    #[test]
    fn no_replace_refuses_an_existing_file_and_keeps_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        write_atomic(&p, b"first", Atomic::durable(0o600).no_replace()).unwrap();
        let e = write_atomic(&p, b"second", Atomic::durable(0o600).no_replace()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn exact_mode_ignores_the_umask_plain_mode_does_not() {
        // Both files are made by this process, so compare against the
        // umask-reduced mode rather than changing the process's umask.
        let d = tempfile::tempdir().unwrap();
        let exact = d.path().join("exact");
        write_atomic(&exact, b"x", Atomic::durable(0o666).exact_mode()).unwrap();
        assert_eq!(mode(&exact), 0o666);
        let plain = d.path().join("plain");
        write_atomic(&plain, b"x", Atomic::durable(0o666)).unwrap();
        let umask = 0o666 & !mode(&plain);
        assert_eq!(mode(&plain), 0o666 & !umask);
    }

    #[test]
    fn a_fixed_temp_leftover_from_a_killed_writer_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let tmp = d.path().join(".state.json.troupe-new");
        fs::write(&tmp, b"half-writ").unwrap();
        write_atomic(&p, b"whole", Atomic::durable(0o644).fixed_temp()).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"whole");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("missing-dir").join("f");
        assert!(write_atomic(&p, b"x", Atomic::durable(0o600)).is_err());
        assert!(!p.exists());
        assert!(write_atomic(Path::new("/"), b"x", Atomic::durable(0o600)).is_err());
    }
}
