//! Providers: each one looks at the host, compares with the resource, and
//! changes only what differs (so a converged host gets zero changes). In
//! noop mode they only describe what they would do.
//!
//! File writes are staged: the new content goes to a temp file next to its
//! target (mode and owner already set); the engine commits staged files in
//! batches (the temp files not yet written are written on up to
//! [`WRITE_THREADS`] threads, contiguous runs of the batch each, so
//! different directories are filled in parallel; then one `syncfs` per file
//! system, the renames (in parallel the same way); the next batch's
//! `syncfs`, or the one [`Ctx::finish`] adds after the last batch, makes
//! the renames durable), so every file is replaced atomically and durably
//! without one fsync per file (measured: one `fdatasync` per file is ~8x
//! slower here than a `syncfs` per batch, bench/README.md). A crash
//! leaves either the old or the new file, never a partial one; left-over
//! temp files (`.NAME.troupe-new`) are replaced or removed by the next run.

pub mod account;
pub mod cmd;
pub mod cron;
pub mod exec;
pub mod file;
pub mod inroot;
pub mod package;
pub mod service;
pub mod stage;
mod systemd_state;

use crate::source::ContentSource;
use crate::state::{Bucket, FileChange};
use anyhow::Context;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use troupe_catalog::{Kind, Resource};

pub use account::Accounts;

/// Paths of the programs the package and service providers run, for the
/// ones configured (orchestration.toml `[tools]`); any other is found on
/// the commands' fixed PATH. A converge run configures none.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tools {
    pub dpkg_query: Option<PathBuf>,
    pub dpkg: Option<PathBuf>,
    pub apt_get: Option<PathBuf>,
    pub apt_cache: Option<PathBuf>,
    pub rpm: Option<PathBuf>,
    pub dnf: Option<PathBuf>,
    pub systemctl: Option<PathBuf>,
    pub journalctl: Option<PathBuf>,
    pub service: Option<PathBuf>,
}

impl Tools {
    /// Every configured path (to check that each is absolute).
    pub fn configured(&self) -> impl Iterator<Item = &PathBuf> {
        [
            &self.dpkg_query,
            &self.dpkg,
            &self.apt_get,
            &self.apt_cache,
            &self.rpm,
            &self.dnf,
            &self.systemctl,
            &self.journalctl,
            &self.service,
        ]
        .into_iter()
        .flatten()
    }

    fn slot(&self, prog: &str) -> Option<&PathBuf> {
        match prog {
            "dpkg-query" => self.dpkg_query.as_ref(),
            "dpkg" => self.dpkg.as_ref(),
            "apt-get" => self.apt_get.as_ref(),
            "apt-cache" => self.apt_cache.as_ref(),
            "rpm" => self.rpm.as_ref(),
            "dnf" | "yum" => self.dnf.as_ref(),
            "systemctl" => self.systemctl.as_ref(),
            "journalctl" => self.journalctl.as_ref(),
            "service" => self.service.as_ref(),
            _ => None,
        }
    }

    /// argv[0] for `prog`: its configured path, else the bare name.
    pub fn path(&self, prog: &str) -> String {
        self.slot(prog)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| prog.to_owned())
    }

    /// Whether `prog` is configured here.
    pub fn has(&self, prog: &str) -> bool {
        self.slot(prog).is_some()
    }
}

/// What one provider call did.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changed: bool,
    pub events: Vec<String>,
    pub diff: Option<String>,
    /// A notify/subscribe refresh was carried out (or would be, in noop).
    pub refreshed: bool,
}

impl Outcome {
    pub fn change(&mut self, event: impl Into<String>) {
        self.changed = true;
        self.events.push(event.into());
    }
}

/// Most files staged before they are committed: bounds what a big first
/// run holds in memory (paths, small bodies) to a few hundred KB.
pub const MAX_BATCH_FILES: usize = 4096;

/// Most threads that write a batch's temp files.
pub const WRITE_THREADS: usize = 4;

/// A staged file: temp written (or to be written at commit), waiting for
/// its rename.
#[derive(Debug)]
pub struct Staged {
    pub tmp: PathBuf,
    pub dest: PathBuf,
    /// Index of the resource (in catalog order) that staged it.
    pub resource: usize,
    /// The temp file still to be written at commit (None: already written,
    /// e.g. because a validate command had to see it).
    pub write: Option<PendingWrite>,
    /// The temp file goes in the run's stage directory ([`stage`]; `tmp`
    /// is then empty: its path there is chosen at commit, by the writer
    /// thread, [`stage::Stage::file_temp`]); on any error there the file is
    /// written next to `dest` instead.
    pub in_stage: bool,
}

/// A temp file's content and metadata, written at commit time.
#[derive(Debug)]
pub struct PendingWrite {
    pub bytes: Vec<u8>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mode: u32,
    /// Created with `mode` and this owner already: no chown, no chmod
    /// ([`file::created_as_asked`]).
    pub as_created: bool,
}

/// Runs `f` on every staged file not marked in `skip`, on up to
/// [`WRITE_THREADS`] threads for big batches (contiguous runs each, so the
/// threads mostly work in different directories); returns (index, error)
/// for each that failed.
fn par_each<F>(staged: &[Staged], skip: &[bool], f: F) -> Vec<(usize, String)>
where
    F: Fn(usize, &Staged) -> Option<String> + Sync,
{
    let one = |i: usize, s: &Staged| -> Option<(usize, String)> {
        if skip.get(i).copied().unwrap_or(false) {
            return None;
        }
        f(i, s).map(|e| (i, e))
    };
    let chunk = chunk_len(staged.len());
    if chunk >= staged.len() {
        return staged
            .iter()
            .enumerate()
            .filter_map(|(i, s)| one(i, s))
            .collect();
    }
    let one = &one;
    std::thread::scope(|sc| {
        let handles: Vec<_> = staged
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| {
                let h = sc.spawn(move || {
                    part.iter()
                        .enumerate()
                        .filter_map(|(i, s)| one(c * chunk + i, s))
                        .collect::<Vec<_>>()
                });
                (c, part.len(), h)
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|(c, len, h)| {
                // A thread that died leaves its whole run unaccounted for:
                // fail it rather than guess.
                h.join().unwrap_or_else(|_| {
                    (c * chunk..c * chunk + len)
                        .map(|i| (i, "a file-writing thread failed".to_string()))
                        .collect()
                })
            })
            .collect()
    })
}

/// A run's rollback journal: in memory, or streamed as it grows to its file
/// in the state directory (`runs/ID.NONCE.journal.json`, the JSON array
/// [`crate::state::State::changes`] reads), so a run of 10,000 changed
/// files holds none of them.
pub struct Journal {
    /// The file and its writer; `None`: kept in `mem`.
    file: Option<(PathBuf, std::io::BufWriter<std::fs::File>)>,
    mem: Vec<FileChange>,
    len: usize,
    /// A 128-bit keyed hash of each path journaled (two SipHash keys): a
    /// path is journaled once, its first state, without keeping the paths.
    /// Two paths taken for one needs a 128-bit collision of random keys.
    seen: HashSet<(u64, u64)>,
    keys: (std::hash::RandomState, std::hash::RandomState),
    /// A write failed: the file may hold half an entry, so nothing more is
    /// changed and the journal is not stored.
    broken: bool,
}

/// A finished journal.
pub enum JournalDone {
    /// Streamed to `runs/NAME` and synced (`None`: nothing changed, no file).
    File(Option<String>),
    Memory(Vec<FileChange>),
}

impl Journal {
    pub fn memory() -> Journal {
        Journal {
            file: None,
            mem: Vec::new(),
            len: 0,
            seen: HashSet::new(),
            keys: Default::default(),
            broken: false,
        }
    }

    /// A journal streamed to the new file `path` (0600).
    pub fn to_file(path: PathBuf) -> anyhow::Result<Journal> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = std::io::BufWriter::with_capacity(64 << 10, f);
        w.write_all(b"[")
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Journal {
            file: Some((path, w)),
            ..Journal::memory()
        })
    }

    /// How many objects it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True the first time `path` is asked about in this run.
    fn first_time(&mut self, path: &Path) -> bool {
        use std::hash::BuildHasher;
        let h = (self.keys.0.hash_one(path), self.keys.1.hash_one(path));
        self.seen.insert(h)
    }

    fn push(
        &mut self,
        path: &Path,
        before: &crate::state::Before,
        root: Option<&Path>,
    ) -> anyhow::Result<()> {
        use std::io::Write;
        match &mut self.file {
            None => self.mem.push(FileChange {
                path: path.to_owned(),
                before: before.clone(),
                root: root.map(Path::to_owned),
            }),
            Some((name, w)) => {
                anyhow::ensure!(
                    !self.broken,
                    "the rollback journal {} could not be written: nothing more is changed",
                    name.display()
                );
                anyhow::ensure!(
                    path.to_str().is_some() && root.is_none_or(|r| r.to_str().is_some()),
                    "{} is not UTF-8: a rollback journal cannot name it",
                    path.display()
                );
                #[derive(serde::Serialize)]
                struct Change<'a> {
                    path: &'a Path,
                    before: &'a crate::state::Before,
                    #[serde(skip_serializing_if = "Option::is_none")]
                    root: Option<&'a Path>,
                }
                let res = (|| -> std::io::Result<()> {
                    if self.len > 0 {
                        w.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut *w, &Change { path, before, root })?;
                    Ok(())
                })();
                // Nothing is changed that the journal could not note.
                self.broken |= res.is_err();
                res.with_context(|| {
                    format!("cannot write the rollback journal {}", name.display())
                })?;
            }
        }
        self.len += 1;
        Ok(())
    }

    /// Ends the journal: the file is closed and synced (or removed when it
    /// holds nothing).
    pub fn finish(self) -> anyhow::Result<JournalDone> {
        use std::io::Write;
        let Some((path, mut w)) = self.file else {
            return Ok(JournalDone::Memory(self.mem));
        };
        anyhow::ensure!(
            !self.broken,
            "the rollback journal {} could not be written",
            path.display()
        );
        if self.len == 0 {
            drop(w);
            let _ = std::fs::remove_file(&path);
            return Ok(JournalDone::File(None));
        }
        let res = (|| -> std::io::Result<()> {
            w.write_all(b"]")?;
            w.into_inner().map_err(|e| e.into_error())?.sync_data()
        })();
        res.with_context(|| format!("cannot write the rollback journal {}", path.display()))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("journal file name")?
            .to_owned();
        Ok(JournalDone::File(Some(name)))
    }
}

/// How many of a batch of `n` files each writer thread takes (contiguous
/// runs: file `i` is written by thread `i / chunk_len(n)`).
fn chunk_len(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Threads only pay off beyond a few dozen files.
    let threads = cores.min(WRITE_THREADS).min(n / 32).max(1);
    n.div_ceil(threads).max(1)
}

/// Where file `i` of a batch has its temp file: next to its target
/// (`home`, or not staged), or in writer `i / chunk`'s directory of the
/// stage.
fn temp_of<'a>(
    s: &'a Staged,
    i: usize,
    chunk: usize,
    stage: Option<&stage::Stage>,
    home: bool,
) -> Result<std::borrow::Cow<'a, Path>, String> {
    use std::borrow::Cow;
    if home {
        return file::temp_path(&s.dest)
            .map(Cow::Owned)
            .map_err(|e| format!("{e:#}"));
    }
    if !s.in_stage {
        return Ok(Cow::Borrowed(&s.tmp));
    }
    stage
        .map(|st| Cow::Owned(st.file_temp(i / chunk.max(1), i)))
        .ok_or_else(|| "no stage directory".to_string())
}

/// Everything a provider needs during one run.
pub struct Ctx<'a> {
    /// `/`, or the `--root` directory everything is converged into.
    pub root: PathBuf,
    pub noop: bool,
    /// `os.family` fact (`Debian`, `RedHat`, ...), chooses package tools.
    pub os_family: String,
    pub contents: &'a dyn ContentSource,
    /// Where old contents go before a change (None in noop).
    pub bucket: Option<&'a Bucket>,
    /// Rollback journal of this run.
    pub journal: Journal,
    last_noted: Option<PathBuf>,
    /// Host paths of every file/directory/symlink in the catalog (purge).
    pub managed: HashSet<PathBuf>,
    /// Files staged and not yet renamed into place.
    pub staged: Vec<Staged>,
    /// Directories created since the last commit before a non-batchable
    /// resource: nothing but this run's staged (or committed) files can be
    /// in them (non-batchable resources such as execs always run after a
    /// [`Ctx::commit`], which clears this; a full batch's
    /// [`Ctx::commit_batch`] keeps it).
    pub fresh_dirs: HashSet<PathBuf>,
    /// A directory on each file system written to (for `syncfs`).
    sync_devs: HashMap<u64, PathBuf>,
    /// What is known of the last directory new files or directories were
    /// asked about (default ACL, setgid, whether it may be staged).
    dir_facts: Option<stage::DirFacts>,
    /// This process's effective uid.
    pub euid: u32,
    accounts: Option<Accounts>,
    /// Index of the resource being converged.
    pub current: usize,
    /// Local package files to install from (`--package-dir`).
    pub package_dir: Option<PathBuf>,
    /// Program paths (orchestration actions; a converge run sets none).
    pub tools: Tools,
    /// Resolves paths inside `root` (None for `/`; the error when the root
    /// cannot be opened).
    resolver: Result<Option<inroot::RootResolver>, String>,
    /// Where new files' temp files are created when their directory allows
    /// it (None: next to their targets).
    pub stage: Option<stage::Stage>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        root: &Path,
        noop: bool,
        os_family: &str,
        contents: &'a dyn ContentSource,
        bucket: Option<&'a Bucket>,
    ) -> Ctx<'a> {
        // Canonical, so resolved paths (read back from the kernel) and
        // `root` share their prefix.
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_owned());
        let resolver = if root == Path::new("/") {
            Ok(None)
        } else {
            inroot::RootResolver::open(&root)
                .map(Some)
                .map_err(|e| format!("{e:#}"))
        };
        Ctx {
            resolver,
            root,
            noop,
            os_family: os_family.to_owned(),
            contents,
            bucket,
            journal: Journal::memory(),
            last_noted: None,
            managed: HashSet::new(),
            staged: Vec::new(),
            fresh_dirs: HashSet::new(),
            sync_devs: HashMap::new(),
            dir_facts: None,
            euid: nix::unistd::geteuid().as_raw(),
            accounts: None,
            current: 0,
            package_dir: None,
            tools: Tools::default(),
            stage: None,
        }
    }

    /// True when converging into a directory other than `/`.
    pub fn in_root(&self) -> bool {
        self.root != Path::new("/")
    }

    /// The host path of an absolute catalog path. Under `--root` its
    /// parent directories are resolved inside the root (links included, as
    /// in a chroot; see [`inroot`]), so nothing done to it acts outside the
    /// root; the last component is never followed. Refuses relative paths
    /// and `..` components.
    pub fn host_path(&self, path: &str) -> anyhow::Result<PathBuf> {
        match &self.resolver {
            Ok(Some(r)) => r.host_path(path),
            Err(e) => anyhow::bail!("{e}"),
            Ok(None) => {
                let mut out = self.root.clone();
                out.extend(inroot::components(path)?);
                Ok(out)
            }
        }
    }

    /// Forgets resolved parents and what is known of directories: call
    /// after changing a link or removing a directory inside the root.
    pub fn paths_changed(&mut self) {
        self.dir_facts = None;
        if let Ok(Some(r)) = &self.resolver {
            r.clear();
        }
    }

    /// Users and groups of the target (read once per run, reloaded after a
    /// user/group change).
    pub fn accounts(&mut self) -> anyhow::Result<&Accounts> {
        if self.accounts.is_none() {
            self.accounts = Some(Accounts::load(&self.root)?);
        }
        self.accounts.as_ref().context("accounts")
    }

    pub fn invalidate_accounts(&mut self) {
        self.accounts = None;
    }

    /// Resolves an owner name (or numeric id) to a uid.
    pub fn uid(&mut self, owner: &Option<String>) -> anyhow::Result<Option<u32>> {
        match owner {
            None => Ok(None),
            Some(o) => {
                if let Ok(n) = o.parse() {
                    return Ok(Some(n));
                }
                self.accounts()?
                    .uid(o)
                    .map(Some)
                    .with_context(|| format!("owner {o:?} is not a user in {}", self.passwd_desc()))
            }
        }
    }

    pub fn gid(&mut self, group: &Option<String>) -> anyhow::Result<Option<u32>> {
        match group {
            None => Ok(None),
            Some(g) => {
                if let Ok(n) = g.parse() {
                    return Ok(Some(n));
                }
                self.accounts()?
                    .gid(g)
                    .map(Some)
                    .with_context(|| format!("group {g:?} is not a group in {}", self.group_desc()))
            }
        }
    }

    fn passwd_desc(&self) -> String {
        self.root.join("etc/passwd").display().to_string()
    }
    fn group_desc(&self) -> String {
        self.root.join("etc/group").display().to_string()
    }

    /// Whether `dir` has a default ACL (or it cannot be told), asked once
    /// for a run of files in the same directory.
    pub fn default_acl(&mut self, dir: &Path) -> bool {
        stage::DirFacts::of(&mut self.dir_facts, dir).default_acl()
    }

    /// Whether `dir` has the setgid bit (None: it cannot be stat'ed),
    /// from the same statx(2) as the stage's checks.
    pub fn dir_setgid(&mut self, dir: &Path) -> Option<bool> {
        stage::DirFacts::of(&mut self.dir_facts, dir)
            .stat()
            .map(|x| x.mode & 0o2000 != 0)
    }

    /// Whether a new file in `dir` (`gid_set`: its group is set) has its
    /// temp file in the stage ([`stage::Stage::allows`]).
    pub fn stage_allows(&mut self, dir: &Path, gid_set: bool) -> bool {
        match &mut self.stage {
            Some(st) => st.allows(stage::DirFacts::of(&mut self.dir_facts, dir), gid_set),
            None => false,
        }
    }

    /// A temp path in the stage for a new directory in `dir`, or None to
    /// make it in place ([`stage::Stage::temp_for`]).
    pub fn stage_temp_for(&mut self, dir: &Path, gid_set: bool) -> Option<PathBuf> {
        match &mut self.stage {
            Some(st) => st.temp_for(stage::DirFacts::of(&mut self.dir_facts, dir), gid_set),
            None => None,
        }
    }

    /// Forgets what is known of directories: call after changing a
    /// directory's owner or mode, a link or removing a directory.
    pub fn dirs_changed(&mut self) {
        self.dir_facts = None;
    }

    /// Remembers that the file system holding `dir` has unsynced writes.
    pub fn note_write(&mut self, dir: &Path) {
        // A directory this run created is on its parent's file system,
        // noted when it was created (`sync_devs` is kept to the run's end).
        if self.last_noted.as_deref() == Some(dir) || self.fresh_dirs.contains(dir) {
            return;
        }
        self.last_noted = Some(dir.to_owned());
        if let Ok(m) = std::fs::metadata(dir) {
            self.sync_devs
                .entry(m.dev())
                .or_insert_with(|| dir.to_owned());
        }
    }

    /// Saves what `path` is now (content into the bucket) before a change.
    pub fn journal(&mut self, path: &Path) -> anyhow::Result<()> {
        self.journal_known(path, None)
    }

    /// [`Ctx::journal`] for a path already known to be absent
    /// (`absent == true`) saves a second stat.
    pub fn journal_known(&mut self, path: &Path, absent: Option<bool>) -> anyhow::Result<()> {
        use crate::state::Before;
        use std::os::unix::fs::PermissionsExt;
        if self.noop {
            return Ok(());
        }
        if !self.journal.first_time(path) {
            return Ok(()); // the first state of this run is what rollback restores
        }
        let root = self.in_root().then_some(self.root.as_path());
        if absent == Some(true) {
            return self.journal.push(path, &Before::Absent, root);
        }
        let before = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Before::Absent,
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
            Ok(m) if m.file_type().is_symlink() => Before::Symlink {
                target: std::fs::read_link(path)?.to_string_lossy().into_owned(),
            },
            Ok(m) if m.is_dir() => Before::Directory {
                mode: m.permissions().mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
            },
            Ok(m) => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let bucket = self.bucket.context("no file bucket")?;
                let sha256 = bucket.put(&bytes)?;
                let bdir = bucket.dir.clone();
                self.note_write(&bdir);
                Before::File {
                    sha256,
                    mode: m.permissions().mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                }
            }
        };
        let root = self.in_root().then_some(self.root.as_path());
        self.journal.push(path, &before, root)
    }

    /// Commits staged files: sync (their temp files and everything written
    /// before), rename each into place. Returns the failures as (resource
    /// index, message). The renames are durable after the next commit or
    /// [`Ctx::finish`].
    pub fn commit(&mut self) -> Vec<(usize, String)> {
        self.fresh_dirs.clear();
        self.commit_batch()
    }

    /// [`Ctx::commit`] when the batch is only full: what follows is more
    /// files and directories, so the directories this run created still
    /// hold nothing but its own files (no `lstat` of each new file's path
    /// after the first batch).
    pub fn commit_batch(&mut self) -> Vec<(usize, String)> {
        let mut failed = Vec::new();
        // What follows a commit (an exec, say) may change links, and a
        // rename may have replaced one.
        self.paths_changed();
        if self.staged.is_empty() {
            // Nothing to order: what was written since the last sync is
            // synced by the next commit with files, or by `finish`.
            return failed;
        }
        let t = std::time::Instant::now();
        let staged = std::mem::take(&mut self.staged);
        let mut unwritten = vec![false; staged.len()];
        // Staged files written next to their targets after all.
        let mut home = vec![false; staged.len()];
        let chunk = chunk_len(staged.len());
        let stage = self.stage.as_ref();
        let writes = par_each(&staged, &unwritten, |i, s| {
            let w = s.write.as_ref()?;
            temp_of(s, i, chunk, stage, false)
                .and_then(|tmp| {
                    file::write_temp(&tmp, &w.bytes, w.uid, w.gid, w.mode, w.as_created)
                        .map_err(|e| format!("{e:#}"))
                })
                .err()
                .map(|e| format!("cannot write {}: {e}", s.dest.display()))
        });
        for (i, msg) in writes {
            let Some(s) = staged.get(i) else { continue };
            if let Ok(tmp) = temp_of(s, i, chunk, stage, false) {
                let _ = std::fs::remove_file(&tmp);
            }
            if s.in_stage {
                tracing::debug!("{msg} (in the stage; written in place instead)");
                match write_home(s) {
                    Ok(()) => home[i] = true,
                    Err(e) => {
                        unwritten[i] = true;
                        failed.push((s.resource, e));
                    }
                }
                continue;
            }
            unwritten[i] = true;
            failed.push((s.resource, msg));
        }
        let t_written = t.elapsed();
        self.sync_all();
        let t_sync1 = t.elapsed();
        let home = &home;
        let renames = par_each(&staged, &unwritten, |i, s| {
            let at_home = home.get(i).copied().unwrap_or(false);
            let from = match temp_of(s, i, chunk, stage, at_home) {
                Ok(p) => p,
                Err(e) => return Some(e),
            };
            let e = std::fs::rename(&from, &s.dest).err()?;
            let _ = std::fs::remove_file(&from);
            Some(format!("could not move the new content into place: {e}"))
        });
        // A staged file whose rename failed (another file system under the
        // target after all, a project quota, an encrypted directory...) is
        // written next to its target, synced and renamed from there.
        let mut retry = Vec::new();
        for (i, msg) in renames {
            let Some(s) = staged.get(i) else { continue };
            if s.in_stage && !home.get(i).copied().unwrap_or(false) {
                tracing::debug!(
                    "{}: {msg} (from the stage; written in place instead)",
                    s.dest.display()
                );
                match write_home(s) {
                    Ok(()) => retry.push((i, s)),
                    Err(e) => failed.push((s.resource, e)),
                }
                continue;
            }
            failed.push((s.resource, msg));
        }
        if !retry.is_empty() {
            self.sync_all();
            for (i, s) in retry {
                let from = match temp_of(s, i, chunk, stage, true) {
                    Ok(p) => p,
                    Err(e) => {
                        failed.push((s.resource, e));
                        continue;
                    }
                };
                if let Err(e) = std::fs::rename(&from, &s.dest) {
                    let _ = std::fs::remove_file(&from);
                    failed.push((
                        s.resource,
                        format!("could not move the new content into place: {e}"),
                    ));
                }
            }
        }
        // The renames are made durable by the next commit's first sync
        // (which syncs everything written since) or by [`Ctx::finish`]:
        // one `syncfs` per batch, plus one at the end of the run.
        tracing::debug!(
            written_ms = t_written.as_secs_f64() * 1e3,
            sync1_ms = t_sync1.as_secs_f64() * 1e3,
            renamed_ms = t.elapsed().as_secs_f64() * 1e3,
            "staged files committed"
        );
        failed
    }

    /// The last commit of a run: [`Ctx::commit`], then one more `syncfs`
    /// so every rename, link, removal and directory of the run is durable
    /// before the run's report and journal are stored.
    pub fn finish(&mut self) -> Vec<(usize, String)> {
        let failed = self.commit();
        if !self.sync_devs.is_empty() {
            let t = std::time::Instant::now();
            self.sync_all();
            self.sync_devs.clear();
            tracing::debug!(
                sync_ms = t.elapsed().as_secs_f64() * 1e3,
                "run's changes synced"
            );
        }
        failed
    }

    fn sync_all(&self) {
        for dir in self.sync_devs.values() {
            if let Ok(f) = std::fs::File::open(dir)
                && let Err(e) = nix::unistd::syncfs(&f)
            {
                tracing::warn!("syncfs {}: {e}", dir.display());
            }
        }
    }
}

/// Writes a staged file's temp file next to its target instead (after an
/// error on the stage path).
fn write_home(s: &Staged) -> Result<(), String> {
    let w = s
        .write
        .as_ref()
        .ok_or_else(|| format!("cannot write {}: no content", s.dest.display()))?;
    file::temp_path(&s.dest)
        .and_then(|tmp| file::write_temp(&tmp, &w.bytes, w.uid, w.gid, w.mode, w.as_created))
        .map_err(|e| format!("cannot write {}: {e:#}", s.dest.display()))
}

/// Converges one resource. `refresh` is true when a resource that notifies
/// it changed in this run.
pub fn apply(ctx: &mut Ctx, res: &Resource, refresh: bool) -> anyhow::Result<Outcome> {
    let sensitive = res.sensitive;
    match &res.kind {
        Kind::File { .. } => file::file(ctx, &res.kind, sensitive),
        Kind::Directory { .. } => file::directory(ctx, &res.kind),
        Kind::Symlink {
            path,
            ensure,
            target,
        } => file::symlink(ctx, path, *ensure, target),
        Kind::Package { .. } => package::package(ctx, &res.kind),
        Kind::Service { .. } => service::service(ctx, &res.kind, refresh),
        Kind::User { .. } => account::user(ctx, &res.kind),
        Kind::Group { .. } => account::group(ctx, &res.kind),
        Kind::Exec { .. } => exec::exec(ctx, &res.kind, refresh, sensitive),
        Kind::Cron { .. } => cron::cron(ctx, &res.kind, sensitive),
    }
}

/// True for resources whose changes are staged and may be batched; any other
/// resource first needs every staged file committed (it may read them).
pub fn is_batchable(res: &Resource) -> bool {
    use troupe_catalog::Ensure;
    matches!(
        &res.kind,
        Kind::File {
            ensure: Ensure::Present,
            ..
        } | Kind::Directory {
            ensure: Ensure::Present,
            purge: false,
            ..
        }
    )
}

/// `0644`-style octal.
pub fn octal(mode: u32) -> String {
    format!("{mode:04o}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    struct NoContents;
    impl ContentSource for NoContents {
        fn get(&self, _: &str) -> anyhow::Result<Cow<'_, [u8]>> {
            anyhow::bail!("no contents")
        }
    }

    fn staged(tmp: PathBuf, dest: PathBuf, body: &[u8], in_stage: bool) -> Staged {
        Staged {
            tmp,
            dest,
            resource: 0,
            write: Some(PendingWrite {
                bytes: body.to_vec(),
                uid: None,
                gid: None,
                mode: 0o640,
                as_created: false,
            }),
            in_stage,
        }
    }

    /// A staged file whose temp file cannot be written in the stage (its
    /// directories are gone), or not renamed from it (a stage on another
    /// file system: EXDEV), is written next to its target instead: the
    /// commit still succeeds, with the content and mode asked for, and
    /// leaves no temp file anywhere.
    #[test]
    fn stage_errors_fall_back_to_the_temp_file_next_to_the_target() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let shm = Path::new("/dev/shm");
        let other_fs = std::fs::metadata(shm)
            .is_ok_and(|m| m.dev() != std::fs::metadata(d.path()).unwrap().dev());
        let shm_state = other_fs.then(|| tempfile::tempdir_in(shm).unwrap());
        let mut cases = vec![("a.txt", state.path())];
        if let Some(s) = &shm_state {
            cases.push(("b.txt", s.path()));
        }
        for (name, state) in cases {
            let contents = NoContents;
            let mut ctx = Ctx::new(d.path(), false, "", &contents, None);
            let mut st = stage::Stage::open(state, "t", stage::StageWrites::Always).unwrap();
            assert!(
                st.allows(&mut stage::DirFacts::new(state), false),
                "makes the run's directories"
            );
            let run = st.run_dir().unwrap().to_owned();
            if name == "a.txt" {
                std::fs::remove_dir_all(&run).unwrap();
            }
            ctx.stage = Some(st);
            let dest = d.path().join(name);
            ctx.staged
                .push(staged(PathBuf::new(), dest.clone(), b"new\n", true));
            ctx.note_write(d.path());
            let failed = ctx.finish();
            assert!(failed.is_empty(), "{name}: {failed:?}");
            assert_eq!(std::fs::read(&dest).unwrap(), b"new\n");
            assert_eq!(
                std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777,
                0o640
            );
            if run.exists() {
                let left: Vec<_> = std::fs::read_dir(run.join("0"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                assert!(left.is_empty(), "{name}: stage temp removed: {left:?}");
            }
        }
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("troupe-new")), "{names:?}");
    }

    /// Without the fallback, a file not staged fails as before.
    #[test]
    fn an_unstaged_write_error_fails_its_file() {
        let d = tempfile::tempdir().unwrap();
        let contents = NoContents;
        let mut ctx = Ctx::new(d.path(), false, "", &contents, None);
        let a = d.path().join("a.txt");
        ctx.staged
            .push(staged(d.path().join("gone/1"), a.clone(), b"a\n", false));
        let failed = ctx.finish();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert!(!a.exists());
    }
}
