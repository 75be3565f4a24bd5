//! The staging directory for new files' temp files (docs/adr/0014).
//!
//! On ext4 without a journal every inode allocation walks past the inodes
//! freed in the last minute in its block group (`find_inode_bit` ->
//! `recently_deleted`, restarting at the group's first inode each time),
//! and a regular file's inode comes from its parent directory's flex
//! group. Right after `rm -rf` of a tree, recreating its files in place
//! pays that walk once per file: 2.1-2.6 s of kernel CPU at 10,000 files
//! (bench/README.md). An inode comes from the group of the directory it is
//! created in, and rename(2) does not move it: so a batch's temp files are
//! created in a per-run directory under `STATE/stage` (flagged
//! `FS_TOPDIR_FL`, so ext4's Orlov allocator spreads the per-run
//! directories over the flex groups instead of keeping them by their
//! parent) and renamed into place from there. A new directory whose parent
//! existed before the run is made there too and renamed into place
//! (`RENAME_NOREPLACE`): ext4 then places its subdirectories and files near
//! it, away from the deleted tree's groups, with nothing more to stage.
//!
//! A file is staged only where that changes nothing about it: the target
//! directory on the stage's device, with no default ACL, no setgid bit, no
//! `security.*` attribute (an LSM label derived from the directory), no
//! inode flag a new file would inherit, and its group the stage's unless
//! the file's group is set. Every error on the stage path falls back to
//! the temp file next to the target ([`super::Ctx::commit_batch`]).
//! `STATE/stage` must belong to the agent's user and be writable by no one
//! else; left-overs of a killed run are removed by the next one.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where the temp files of new content are created (`stage_writes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StageWrites {
    /// In `STATE/stage` when its file system is ext4 without a journal
    /// (the only one where it helps), else next to the target.
    Auto,
    /// In `STATE/stage` wherever the target allows it.
    Always,
    /// Always next to the target.
    Never,
}

impl StageWrites {
    pub fn name(self) -> &'static str {
        match self {
            StageWrites::Auto => "auto",
            StageWrites::Always => "always",
            StageWrites::Never => "never",
        }
    }
}

/// Inode flags a new file does not inherit from its directory (ext4's
/// extents, hashed index, inline data, huge file, and `TOPDIR`, which only
/// steers where subdirectories go). A directory with any other flag
/// (`nodump`, `noatime`, `sync`, project inherit, encryption, casefold,
/// nocow, ...) keeps its files in place, so they inherit what they would.
const NOT_INHERITED: u32 = 0x0008_0000 | 0x0000_1000 | 0x1000_0000 | 0x0004_0000 | 0x0002_0000;

/// Name prefix of the per-run directories.
const RUN_PREFIX: &str = "run-";

/// How long a run's (emptied) directory is kept: ext4 avoids inodes freed
/// in the last 60 s, and a tree made from a run's directory is typically
/// deleted soon after the run, if ever.
const KEEP_FOR: std::time::Duration = std::time::Duration::from_secs(180);

/// Most run directories kept (the newest).
const KEEP_RUNS: usize = 16;

/// Thread CPU time of a create above which a run directory's block group
/// is taken for one where ext4 walks past recently freed inodes: an
/// uncontended mkdir costs 7-20 us of CPU here; the walk adds ~35 ns per
/// inode freed in the last minute (bench/README.md), so this lets through
/// groups with at most ~800 of them (~30 us per create: ~35 ms over a
/// 1,000-file tree) and catches the trees of thousands that cost seconds.
const SLOW_CREATE: std::time::Duration = std::time::Duration::from_micros(40);

/// Most run directories tried per run ([`Stage::make_run_dir`]).
const TRIES: usize = 3;

/// The stage of one run.
#[derive(Debug)]
pub struct Stage {
    /// `STATE/stage/run-ID`, created at the first staged file.
    run: PathBuf,
    /// The stage's file system and mount.
    place: Place,
    gid: u32,
    made: bool,
    /// Creating `run` failed: nothing more is staged this run.
    broken: bool,
    next: u64,
    /// A run directory whose creates cost more thread CPU than this is
    /// given up for another ([`Stage::make_run_dir`]).
    slow: std::time::Duration,
}

impl Stage {
    /// Opens (creating) `STATE/stage` for the run `run_id` and removes the
    /// left-overs of killed runs (the caller holds the run lock). None when
    /// `mode` or the file system says not to stage, or the stage cannot be
    /// used (logged).
    pub fn open(state: &Path, run_id: &str, mode: StageWrites) -> Option<Stage> {
        if mode == StageWrites::Never {
            return None;
        }
        let root = state.join("stage");
        match Self::open_root(&root, mode) {
            Ok(Some((place, gid))) => Some(Stage {
                run: root.join(format!("{RUN_PREFIX}{run_id}")),
                place,
                gid,
                made: false,
                broken: false,
                next: 0,
                slow: SLOW_CREATE,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(
                    "not staging new files in {} (they are written next to their targets): {e:#}",
                    root.display()
                );
                None
            }
        }
    }

    fn open_root(root: &Path, mode: StageWrites) -> anyhow::Result<Option<(Place, u32)>> {
        use anyhow::Context;
        if mode == StageWrites::Auto && !ext4_without_journal(root.parent().unwrap_or(root)) {
            return Ok(None);
        }
        match fs::DirBuilder::new().mode(0o700).create(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).context("cannot create it"),
        }
        let m = fs::symlink_metadata(root).context("cannot stat it")?;
        anyhow::ensure!(m.is_dir(), "it is not a directory");
        let euid = nix::unistd::geteuid().as_raw();
        anyhow::ensure!(
            m.uid() == euid,
            "it belongs to uid {}, not to the agent's {euid}",
            m.uid()
        );
        anyhow::ensure!(
            m.mode() & 0o022 == 0,
            "others may write it (mode {:o}; chmod 700 it)",
            m.mode() & 0o7777
        );
        anyhow::ensure!(
            m.mode() & 0o2000 == 0,
            "it has the setgid bit (chmod 700 it)"
        );
        anyhow::ensure!(
            !DirFacts::new(root).labelled(),
            "it has a default ACL or a security label (its files would inherit them)"
        );
        let dir = rustix::fs::open(
            root,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .context("cannot open it")?;
        match rustix::fs::ioctl_getflags(&dir) {
            Ok(f) => {
                anyhow::ensure!(
                    f.bits() & !NOT_INHERITED == 0,
                    "it has inode flags {:#x} its files would inherit (chattr them off)",
                    f.bits() & !NOT_INHERITED
                );
                // Spread the per-run directories over the flex groups. On a
                // file system without the flag the stage still works, only
                // without the spreading.
                if !f.contains(rustix::fs::IFlags::TOPDIR)
                    && let Err(e) = rustix::fs::ioctl_setflags(&dir, f | rustix::fs::IFlags::TOPDIR)
                {
                    tracing::debug!("cannot flag {} TOPDIR: {e}", root.display());
                }
            }
            Err(e) => tracing::debug!("no inode flags on {}: {e}", root.display()),
        }
        // The last runs' directories stay a while, emptied: they keep
        // their flex groups' directory counts up, so ext4 puts the next
        // run's directory elsewhere than where those runs' trees were
        // made (and may just have been deleted). Older ones go.
        let mut runs = Vec::new();
        for e in fs::read_dir(root).context("cannot list it")? {
            let e = e.context("cannot list it")?;
            if !e.file_name().to_string_lossy().starts_with(RUN_PREFIX) {
                continue;
            }
            let m = e.metadata().context("cannot stat an entry")?;
            let age = m.modified().ok().and_then(|t| t.elapsed().ok());
            runs.push((age, m.is_dir(), e.path()));
        }
        runs.sort_by_key(|r| r.0);
        for (k, (age, is_dir, p)) in runs.into_iter().enumerate() {
            let keep = is_dir && k < KEEP_RUNS && age.is_some_and(|a| a < KEEP_FOR);
            let res = if keep {
                clear_run(&p).map(|n| {
                    if n > 0 {
                        tracing::info!(
                            "removed {n} temp file(s) left in {} by a killed run",
                            p.display()
                        );
                    }
                })
            } else if is_dir {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            res.with_context(|| format!("cannot remove the left-overs in {}", p.display()))?;
        }
        let x = stat_of(root).context("cannot stat it")?;
        Ok(Some((x.place, x.gid)))
    }

    /// Whether a new file in the directory of `dir` (`gid_set`: its group
    /// is set explicitly) may have its temp file in the stage; makes the
    /// run's directories at the first yes.
    pub fn allows(&mut self, dir: &mut DirFacts, gid_set: bool) -> bool {
        if self.broken {
            return false;
        }
        let ok = match dir.stage_ok {
            Some(ok) => ok,
            None => {
                let ok = self.dir_allows(dir);
                dir.stage_ok = Some(ok);
                ok
            }
        };
        // Without a setgid parent a new file's group is the creator's, or
        // the parent's under the `grpid` mount option: the same wherever
        // it is created only when both parents have the same group.
        if !ok || !(gid_set || dir.stat().is_some_and(|x| x.gid == self.gid)) {
            return false;
        }
        if !self.made {
            if let Err(e) = self.make_run_dir() {
                tracing::warn!(
                    "cannot create {} (new files are written next to their targets): {e}",
                    self.run.display()
                );
                let _ = fs::remove_dir_all(&self.run);
                self.broken = true;
                return false;
            }
            self.made = true;
        }
        true
    }

    /// Makes the run's directory and one per writer thread (threads
    /// creating in one directory would wait on its lock), and checks what
    /// creating there costs: the writer directories' inodes come from the
    /// block group every staged inode of the run will come from, and where
    /// ext4 walks past recently freed inodes (the kernel chose a group a
    /// tree was just deleted from) each create costs far more CPU. The
    /// cheapest of the four creates is the probe (the first create in a
    /// group not read for a while costs more, once); above `slow`, another
    /// run directory is made (its name hashes elsewhere, and the slow one,
    /// kept and empty, counts against its group), [`TRIES`] in all, and
    /// the cheapest is used.
    fn make_run_dir(&mut self) -> std::io::Result<()> {
        let base = self.run.clone();
        let mut best: Option<(std::time::Duration, PathBuf)> = None;
        for t in 0..TRIES {
            let run = if t == 0 {
                base.clone()
            } else {
                let mut name = base.clone().into_os_string();
                name.push(format!(".{t}"));
                PathBuf::from(name)
            };
            let cost = match make_probed(&run) {
                Ok(c) => c,
                // A later try failing leaves the ones made so far.
                Err(e) if best.is_none() => return Err(e),
                Err(e) => {
                    tracing::debug!("cannot create {}: {e}", run.display());
                    break;
                }
            };
            tracing::debug!(
                dir = %run.display(),
                create_us = cost.as_secs_f64() * 1e6,
                "stage directory probed"
            );
            let fast = cost <= self.slow;
            if best.as_ref().is_none_or(|b| cost < b.0) {
                best = Some((cost, run));
            }
            if fast {
                break;
            }
        }
        if let Some((cost, run)) = best {
            if cost > self.slow {
                tracing::debug!(
                    create_us = cost.as_secs_f64() * 1e6,
                    "every stage directory tried is slow to create in; using the cheapest"
                );
            }
            self.run = run;
        }
        Ok(())
    }

    /// A temp path in the stage for a new directory in `dir` (`gid_set`:
    /// its group is set explicitly), or None to make it in place.
    pub fn temp_for(&mut self, dir: &mut DirFacts, gid_set: bool) -> Option<PathBuf> {
        if !self.allows(dir, gid_set) {
            return None;
        }
        self.next += 1;
        Some(self.run.join(format!("d{:x}", self.next)))
    }

    /// The temp path of file `i` of a batch, written by writer `lane`:
    /// `RUN/LANE/I` (chosen at commit, so a batch holds no stage paths).
    pub fn file_temp(&self, lane: usize, i: usize) -> PathBuf {
        let lane = lane.min(super::WRITE_THREADS - 1);
        let name = format!("{lane}/{i:x}");
        let run = self.run.as_os_str();
        let mut p = std::ffi::OsString::with_capacity(run.len() + 1 + name.len());
        p.push(run);
        p.push("/");
        p.push(&name);
        PathBuf::from(p)
    }

    /// Whether a file created in `dir` would come out the same as one
    /// created in the stage (group aside).
    fn dir_allows(&self, dir: &mut DirFacts) -> bool {
        let Some(x) = dir.stat() else {
            return false;
        };
        // Another mount of the same file system (a bind mount) would fail
        // the rename with EXDEV.
        x.place == self.place && x.mode & 0o2000 == 0 && !dir.labelled() && {
            match rustix::fs::open(
                &dir.path,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            ) {
                Ok(fd) => match rustix::fs::ioctl_getflags(&fd) {
                    Ok(f) => f.bits() & !NOT_INHERITED == 0,
                    // No inode flags on this file system: none to inherit.
                    Err(rustix::io::Errno::NOTTY | rustix::io::Errno::OPNOTSUPP) => true,
                    Err(_) => false,
                },
                Err(_) => false,
            }
        }
    }

    /// The per-run directory, once created.
    pub fn run_dir(&self) -> Option<&Path> {
        self.made.then_some(self.run.as_path())
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // Empty unless a temp file could not be removed; the directories
        // stay for the next runs (`KEEP_FOR`), which remove what is left.
        if self.made
            && let Err(e) = clear_run(&self.run)
        {
            tracing::debug!("cannot empty {}: {e}", self.run.display());
        }
    }
}

/// Makes `run` and its writer directories; returns the least thread CPU
/// time one writer directory's mkdir took.
fn make_probed(run: &Path) -> std::io::Result<std::time::Duration> {
    let mkdir = |d: &Path| fs::DirBuilder::new().mode(0o700).create(d);
    mkdir(run)?;
    let mut least = std::time::Duration::MAX;
    for l in 0..super::WRITE_THREADS {
        let t = thread_cpu();
        mkdir(&run.join(l.to_string()))?;
        least = least.min(thread_cpu().saturating_sub(t));
    }
    Ok(least)
}

/// This thread's CPU time (zero if the clock cannot be read: every probe
/// then passes). glibc's clock_gettime, not rustix's own vDSO lookup,
/// which crashes under valgrind (scripts/agent-order.sh runs the agent
/// under callgrind).
fn thread_cpu() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(std::time::Duration::from)
        .unwrap_or_default()
}

/// Removes everything in a run's directory but its writer directories,
/// and everything in those; returns how many entries it removed.
fn clear_run(run: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for e in fs::read_dir(run)? {
        let e = e?;
        let lane = e
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<usize>().ok())
            .is_some_and(|l| l < super::WRITE_THREADS);
        let is_dir = e.file_type()?.is_dir();
        if lane && is_dir {
            for f in fs::read_dir(e.path())? {
                let f = f?;
                if f.file_type()?.is_dir() {
                    fs::remove_dir_all(f.path())?;
                } else {
                    fs::remove_file(f.path())?;
                }
                n += 1;
            }
        } else {
            if is_dir {
                fs::remove_dir_all(e.path())?;
            } else {
                fs::remove_file(e.path())?;
            }
            n += 1;
        }
    }
    Ok(n)
}

/// A file system and the mount it is seen through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Place {
    dev: (u32, u32),
    /// None where statx(2) does not tell (before Linux 5.8): then a bind
    /// mount is found by the rename's EXDEV, and the file written in place.
    mnt_id: Option<u64>,
}

/// A directory's place, mode and group.
#[derive(Debug, Clone, Copy)]
pub struct DirStat {
    place: Place,
    pub mode: u32,
    pub gid: u32,
}

/// `path`'s place, mode and group (following a last link, as creating a
/// file in it would).
fn stat_of(path: &Path) -> std::io::Result<DirStat> {
    use rustix::fs::{AtFlags, CWD, StatxFlags};
    let x = rustix::fs::statx(
        CWD,
        path,
        AtFlags::empty(),
        StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
    )?;
    let mnt_id = (x.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(x.stx_mnt_id);
    Ok(DirStat {
        place: Place {
            dev: (x.stx_dev_major, x.stx_dev_minor),
            mnt_id,
        },
        mode: u32::from(x.stx_mode),
        gid: x.stx_gid,
    })
}

/// What a run knows of a directory it creates files or directories in,
/// each part asked once (the run's files come directory by directory, so
/// [`super::Ctx`] keeps the last directory's): whether a file created in
/// it comes out as asked ([`super::file::created_as_asked`]: default ACL,
/// setgid) and whether it may be staged ([`Stage::allows`]).
#[derive(Debug)]
pub struct DirFacts {
    path: PathBuf,
    /// (default ACL, default ACL or `security.*` attribute), each true
    /// when it cannot be told.
    xattrs: Option<(bool, bool)>,
    /// None: not asked yet; Some(None): cannot be stat'ed.
    stat: Option<Option<DirStat>>,
    /// [`Stage::dir_allows`], once asked.
    stage_ok: Option<bool>,
}

impl DirFacts {
    pub fn new(dir: &Path) -> DirFacts {
        DirFacts {
            path: dir.to_owned(),
            xattrs: None,
            stat: None,
            stage_ok: None,
        }
    }

    /// The facts of `dir` in `slot` (the last directory asked about),
    /// replacing another directory's.
    pub fn of<'a>(slot: &'a mut Option<DirFacts>, dir: &Path) -> &'a mut DirFacts {
        if slot.as_ref().is_some_and(|f| f.path != dir) {
            *slot = None;
        }
        slot.get_or_insert_with(|| DirFacts::new(dir))
    }

    /// Its place, mode and group (None when it cannot be stat'ed).
    pub fn stat(&mut self) -> Option<DirStat> {
        *self.stat.get_or_insert_with(|| stat_of(&self.path).ok())
    }

    /// Whether it has a default ACL (or it cannot be told): a file created
    /// in it gets an ACL from it, and the umask is not applied.
    pub fn default_acl(&mut self) -> bool {
        self.xattrs().0
    }

    /// Whether it has a default ACL or any `security.*` attribute (or its
    /// attributes cannot be listed): a file created in it may get an ACL
    /// or a label from it.
    pub fn labelled(&mut self) -> bool {
        self.xattrs().1
    }

    fn xattrs(&mut self) -> (bool, bool) {
        *self.xattrs.get_or_insert_with(|| xattrs_of(&self.path))
    }
}

/// (default ACL, default ACL or `security.*` attribute) of `dir`, from one
/// listxattr(2); (true, true) when its attributes cannot be listed.
fn xattrs_of(dir: &Path) -> (bool, bool) {
    use rustix::io::Errno;
    let mut buf = [0u8; 1024];
    let mut big = Vec::new();
    let names = match rustix::fs::listxattr(dir, &mut buf[..]) {
        Ok(n) => buf.get(..n).unwrap_or_default(),
        // More names than fit: ask their size, then read them all.
        Err(Errno::RANGE) => match rustix::fs::listxattr(dir, &mut [0u8; 0][..]) {
            Ok(size) => {
                big.resize(size, 0);
                match rustix::fs::listxattr(dir, &mut big[..]) {
                    Ok(n) => big.get(..n).unwrap_or_default(),
                    Err(_) => return (true, true),
                }
            }
            Err(_) => return (true, true),
        },
        Err(Errno::OPNOTSUPP) => return (false, false),
        Err(_) => return (true, true),
    };
    let mut acl = false;
    let mut label = false;
    for name in names.split(|b| *b == 0) {
        acl |= name == b"system.posix_acl_default";
        label |= name.starts_with(b"security.");
    }
    (acl, acl || label)
}

/// Whether `dir` is on an ext4 file system without a journal (where
/// creating an inode walks past the ones freed in the last minute): the
/// file system's `/sys/fs/ext4/DEV/journal_task` says `<none>`.
fn ext4_without_journal(dir: &Path) -> bool {
    let Ok(m) = fs::metadata(dir) else {
        return false;
    };
    let (major, minor) = (rustix::fs::major(m.dev()), rustix::fs::minor(m.dev()));
    let Ok(uevent) = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")) else {
        return false;
    };
    let Some(name) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) else {
        return false;
    };
    if name.contains('/') || name.is_empty() {
        return false;
    }
    fs::read_to_string(format!("/sys/fs/ext4/{name}/journal_task"))
        .is_ok_and(|s| s.trim() == "<none>")
}

/// Shared with the integration tests (`tests/common/acl.rs`).
#[cfg(test)]
#[path = "../../tests/common/acl.rs"]
mod acl_test;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_opens_nothing() {
        let d = tempfile::tempdir().unwrap();
        assert!(Stage::open(d.path(), "x", StageWrites::Never).is_none());
        assert!(!d.path().join("stage").exists());
    }

    #[test]
    fn always_stages_in_a_private_run_dir_and_removes_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let left = d.path().join("stage/run-old");
        fs::create_dir_all(&left).unwrap();
        fs::write(left.join("1"), "x").unwrap();
        let mut s = Stage::open(d.path(), "new", StageWrites::Always).expect("stage");
        // The first run directory is used whatever its mkdirs cost here
        // (the probe has its own test below).
        s.slow = std::time::Duration::MAX;
        assert!(
            !left.join("1").exists(),
            "a killed run's temp files are removed"
        );
        let target = tempfile::tempdir_in(d.path()).unwrap();
        let t = s
            .temp_for(&mut DirFacts::new(target.path()), false)
            .expect("staged");
        assert!(t.starts_with(d.path().join("stage/run-new")));
        assert_eq!(s.file_temp(1, 26), d.path().join("stage/run-new/1/1a"));
        assert!(d.path().join("stage/run-new/3").is_dir());
        let m = fs::metadata(d.path().join("stage/run-new")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        let run = s.run_dir().unwrap().to_owned();
        fs::write(s.file_temp(2, 7), "x").unwrap();
        fs::create_dir(run.join("d9")).unwrap();
        drop(s);
        let left: Vec<_> = fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), crate::providers::WRITE_THREADS, "{left:?}");
        assert!(fs::read_dir(run.join("2")).unwrap().next().is_none());
        // The next run keeps it (young) and empties it; an old one goes.
        fs::write(run.join("1/5"), "x").unwrap();
        let old = d.path().join("stage/run-old2");
        fs::create_dir(&old).unwrap();
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
        fs::File::open(&old).unwrap().set_modified(t).unwrap();
        let s2 = Stage::open(d.path(), "third", StageWrites::Always).expect("stage");
        assert!(run.is_dir());
        assert!(
            !run.join("1/5").exists(),
            "a killed run's temp file is removed"
        );
        assert!(!old.exists(), "an old run directory is removed");
        drop(s2);
    }

    #[test]
    fn a_stage_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("stage")).unwrap();
        fs::set_permissions(d.path().join("stage"), fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Stage::open(d.path(), "x", StageWrites::Always).is_none());
    }

    #[test]
    fn setgid_and_other_group_dirs_stay_in_place() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let mut s = Stage::open(d.path(), "x", StageWrites::Always).expect("stage");
        let sgid = d.path().join("sgid");
        fs::create_dir(&sgid).unwrap();
        fs::set_permissions(&sgid, fs::Permissions::from_mode(0o2755)).unwrap();
        assert!(s.temp_for(&mut DirFacts::new(&sgid), true).is_none());
        let other = d.path().join("other");
        fs::create_dir(&other).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&other, None, Some(s.gid + 1)).unwrap();
            assert!(
                s.temp_for(&mut DirFacts::new(&other), false).is_none(),
                "group would differ"
            );
            assert!(
                s.temp_for(&mut DirFacts::new(&other), true).is_some(),
                "the file's group is set"
            );
        }
        let plain = d.path().join("plain");
        fs::create_dir(&plain).unwrap();
        assert!(s.temp_for(&mut DirFacts::new(&plain), false).is_some());
    }

    #[test]
    fn default_acl_and_other_file_system_dirs_stay_in_place() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Stage::open(d.path(), "x", StageWrites::Always).expect("stage");
        let acl = d.path().join("acl");
        fs::create_dir(&acl).unwrap();
        if acl_test::set_default_acl(&acl) {
            assert!(DirFacts::new(&acl).labelled());
            assert!(DirFacts::new(&acl).default_acl());
            assert!(s.temp_for(&mut DirFacts::new(&acl), true).is_none());
        }
        let plain = d.path().join("plain");
        fs::create_dir(&plain).unwrap();
        let mut f = DirFacts::new(&plain);
        assert!(!f.default_acl() && !f.labelled());
        let label = d.path().join("label");
        fs::create_dir(&label).unwrap();
        if rustix::fs::setxattr(
            &label,
            "security.troupe_test",
            b"x",
            rustix::fs::XattrFlags::empty(),
        )
        .is_ok()
        {
            let mut f = DirFacts::new(&label);
            assert!(f.labelled());
            assert!(!f.default_acl(), "a label is not a default ACL");
            assert!(s.temp_for(&mut f, true).is_none());
        }
        let shm = Path::new("/dev/shm");
        if fs::metadata(shm).is_ok_and(|m| m.dev() != fs::metadata(d.path()).unwrap().dev()) {
            let other = tempfile::tempdir_in(shm).unwrap();
            assert!(s.temp_for(&mut DirFacts::new(other.path()), true).is_none());
        }
        let nodump = d.path().join("nodump");
        fs::create_dir(&nodump).unwrap();
        if std::process::Command::new("chattr")
            .arg("+d")
            .arg(&nodump)
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                s.temp_for(&mut DirFacts::new(&nodump), true).is_none(),
                "nodump is inherited"
            );
        }
    }

    #[test]
    fn dir_facts_are_kept_for_the_last_directory_only() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        let mut slot = None;
        DirFacts::of(&mut slot, &a).stage_ok = Some(true);
        assert_eq!(DirFacts::of(&mut slot, &a).stage_ok, Some(true));
        assert_eq!(DirFacts::of(&mut slot, &b).stage_ok, None);
        assert!(
            DirFacts::of(&mut slot, &b).stat().is_none(),
            "b does not exist"
        );
        fs::create_dir(&b).unwrap();
        assert!(
            DirFacts::of(&mut slot, &b).stat().is_none(),
            "kept until forgotten"
        );
        assert!(DirFacts::of(&mut slot, &a).stat().is_none());
        assert!(DirFacts::of(&mut slot, &b).stat().is_some());
    }

    /// The probe's decision (timing aside): a run directory slower than
    /// the bound is given up for another, [`TRIES`] in all, the slow ones
    /// kept (empty, with their writer directories) and the cheapest used;
    /// a fast one is used at once.
    #[test]
    fn a_slow_run_directory_is_given_up_for_another() {
        let d = tempfile::tempdir().unwrap();
        let stage = d.path().join("stage");
        let runs = |prefix: &str| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = fs::read_dir(&stage)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
                .collect();
            v.sort();
            v
        };
        let target = tempfile::tempdir_in(d.path()).unwrap();
        let mut s = Stage::open(d.path(), "slow", StageWrites::Always).expect("stage");
        s.slow = std::time::Duration::ZERO;
        assert!(s.allows(&mut DirFacts::new(target.path()), false));
        let tried = runs("run-slow");
        assert_eq!(tried.len(), TRIES, "{tried:?}");
        for r in &tried {
            for l in 0..crate::providers::WRITE_THREADS {
                assert!(r.join(l.to_string()).is_dir());
            }
        }
        let used = s.run_dir().unwrap().to_owned();
        assert!(tried.contains(&used));
        assert!(s.file_temp(1, 2).starts_with(&used));
        let t = s
            .temp_for(&mut DirFacts::new(target.path()), false)
            .unwrap();
        assert_eq!(t.parent(), Some(used.as_path()));
        drop(s);
        let mut s = Stage::open(d.path(), "fast", StageWrites::Always).expect("stage");
        s.slow = std::time::Duration::MAX;
        assert!(s.allows(&mut DirFacts::new(target.path()), false));
        assert_eq!(runs("run-fast"), [stage.join("run-fast")]);
        assert_eq!(runs("run-slow").len(), TRIES, "young ones are kept");
    }
}
