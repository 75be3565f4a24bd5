//! A small tmpfs for the tests that fill a disk (needs root: `mount`):
//! troupe-base's own tests and, through the `test-fs` feature (a dev-dependency
//! feature only), the CA's, the master's store and relay-cache tests.

use std::path::PathBuf;

/// A small tmpfs, unmounted on drop.
pub struct Tmpfs {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(&path)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { _dir: dir, path })
    }

    /// Fills the file system; returns the filler (remove it to free).
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let p = self.path.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
        while f.write(&chunk[..512]).is_ok_and(|n| n > 0) {}
        let _ = f.sync_all();
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Mounts one, or says why the test is skipped (and fails under CI).
pub fn mount_or_skip(size: &str) -> Option<Tmpfs> {
    match Tmpfs::mount(size) {
        Ok(fs) => Some(fs),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("cannot mount a tmpfs: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs (needs root): {e}");
            None
        }
    }
}
