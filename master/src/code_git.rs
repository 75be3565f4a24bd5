//! Git-backed environments (like r10k): `modules = "git+URL"` in
//! master.toml makes every branch of the repository at URL an environment.
//!
//! - A branch holds one environment's directory at its root
//!   (`hierarchy.toml`, `roles/`, `profiles/`, `data/`, ...); the branch
//!   named by `git_site_branch` (default `production`) also holds
//!   `site.toml`, which is served from that branch's serving commit (so a
//!   held site branch changes the classification only on promote).
//! - Branch names are environment names: a branch whose name is not one
//!   (lowercase letters, digits, `_` and `-`, at most 64) is skipped with the
//!   reason logged and shown by `troupe env status`; it never becomes a
//!   path component. Commit ids are checked to be hex.
//! - [`CodeManager::sync`] (every `git_poll`, and `troupe env sync [ENV]`)
//!   fetches with the git CLI (argv only, no prompt, a timeout, credentials
//!   in the URL redacted from everything shown) into `DATA/git/mirror.git`,
//!   checks each new commit out into its own directory
//!   (`DATA/git/checkouts/ENV.COMMIT`, written under a temp name, fsync'd,
//!   renamed into place), loads it, and swaps it in like a reloaded tree:
//!   an unheld environment serves it at once, a held one stages it for
//!   `troupe env promote`. A fetch, checkout or load failure leaves the
//!   serving code as it is and is recorded (`env status`); a failed commit
//!   is not retried until the branch moves (or `troupe env sync ENV`).
//! - The commits served are kept in `DATA/git/serving.json`, so a restart
//!   serves what was served (a held environment is not promoted by a
//!   restart) and then syncs.
//! - A branch that disappears keeps its environment serving its last
//!   commit (deleting a branch by mistake must not break the hosts in it);
//!   `env status` lists it as removed, and `troupe env sync ENV` naming it
//!   drops the environment (refused while it is held).

use crate::code::{CodeManager, Inner, Staged};
use anyhow::{Result, bail};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use troupe_base::error_code::{ErrorCode, error};
use troupe_compiler::{EnvTree, ModuleTree, Site};

/// What `modules` starts with when it names a git repository.
pub const PREFIX: &str = "git+";

/// Branch → commit, or branch → why it is skipped.
type Heads = BTreeMap<String, String>;

/// How long one fetch may take before it is killed.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one checkout may take.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository URL when `modules` is `git+URL`.
pub fn git_url(modules: &Path) -> Option<&str> {
    modules.to_str()?.strip_prefix(PREFIX)
}

/// Checks a repository URL from the configuration.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err(
            "`git+` must be followed by a repository URL or path, e.g. git+file:///srv/modules.git"
                .into(),
        );
    }
    if url.starts_with('-') {
        return Err(format!("{url:?} is not a repository URL"));
    }
    if url.chars().any(|c| c.is_control()) {
        return Err("the repository URL contains a control character".into());
    }
    if url.starts_with("ext::") || url.contains("::") && !url.contains("://") {
        return Err(format!(
            "{}: git remote helpers (`TRANSPORT::ADDRESS`) are refused; give a URL (file://, https://, ssh://) or a path",
            redact(url)
        ));
    }
    Ok(())
}

/// `url` with any user name and password replaced by `***`.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

/// Is `c` a commit id (SHA-1 or SHA-256, lowercase hex)?
fn valid_commit(c: &str) -> bool {
    (c.len() == 40 || c.len() == 64)
        && c.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn now() -> u64 {
    troupe_pki::util::now()
}

/// The repository an environment set comes from.
pub struct GitSource {
    url: String,
    shown: String,
    dir: PathBuf,
    site_branch: String,
    poll_secs: u64,
    /// One sync at a time (the poll and `troupe env sync`).
    lock: Mutex<()>,
    /// One writer of `serving.json` at a time (sync, promote).
    save_lock: Mutex<()>,
}

/// Sync state kept with the code (`Inner::git`).
#[derive(Default, Clone)]
pub(crate) struct GitState {
    last_sync: Option<u64>,
    last_attempt: Option<u64>,
    last_sync_error: Option<String>,
    /// Environment → (commit, why it does not load).
    failed: BTreeMap<String, (String, String)>,
    /// Environments of `failed` whose commit loaded but did not fit with
    /// the others (e.g. no site yet): tried again at every sync.
    retry: BTreeSet<String>,
    /// Branch → why it is not an environment.
    skipped: BTreeMap<String, String>,
    /// Environments whose branch is gone (still serving).
    removed: BTreeSet<String>,
    /// The branches (valid names) at the last fetch → commit.
    branches: BTreeMap<String, String>,
}

/// A commit that does not load.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FailedCommit {
    pub commit: String,
    pub error: String,
}

/// The `git` part of `troupe env status --json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GitStatus {
    /// The repository (user name and password redacted).
    pub url: String,
    pub site_branch: String,
    /// Seconds between fetches; 0: only on `troupe env sync`.
    pub poll_secs: u64,
    /// Unix time of the last fetch that worked.
    pub last_sync: Option<u64>,
    /// Unix time of the last fetch tried.
    pub last_attempt: Option<u64>,
    /// Why the last fetch failed (the serving code is unchanged).
    pub last_sync_error: Option<String>,
    /// Branch → head commit at the last fetch (valid names only).
    pub branches: BTreeMap<String, String>,
    /// Environment → the newest commit of its branch, which does not load.
    pub failed: BTreeMap<String, FailedCommit>,
    /// Branch → why it is not an environment.
    pub skipped: BTreeMap<String, String>,
    /// Environments whose branch is gone; they keep serving their last
    /// commit until `troupe env sync ENV`.
    pub removed: Vec<String>,
}

/// What one environment's sync did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EnvSync {
    /// `unchanged`, `added`, `updated`, `staged` (held: waits for
    /// promote), `unstaged` (the branch went back to the serving commit),
    /// `failed` (does not load; `serving` keeps serving), `branch-removed`
    /// (still serving) or `removed` (dropped by `env sync ENV`).
    pub action: &'static str,
    /// The branch's head commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The commit served after the sync.
    pub serving: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `troupe env sync --json` prints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SyncReport {
    pub url: String,
    pub environments: BTreeMap<String, EnvSync>,
    pub skipped: BTreeMap<String, String>,
    /// Bumped when the live code changed.
    pub generation: u64,
    /// Failures this sync found (not the ones known before): what the
    /// poll raises events for.
    #[serde(skip)]
    pub new_failures: Vec<String>,
}

impl SyncReport {
    /// Environments whose newest commit does not load.
    pub fn failed(&self) -> usize {
        self.environments
            .values()
            .filter(|e| e.action == "failed")
            .count()
    }
}

impl GitSource {
    fn mirror(&self) -> PathBuf {
        self.dir.join("mirror.git")
    }
    fn checkouts(&self) -> PathBuf {
        self.dir.join("checkouts")
    }
    fn serving_file(&self) -> PathBuf {
        self.dir.join("serving.json")
    }

    pub(crate) fn status(&self, st: &GitState) -> GitStatus {
        GitStatus {
            url: self.shown.clone(),
            site_branch: self.site_branch.clone(),
            poll_secs: self.poll_secs,
            last_sync: st.last_sync,
            last_attempt: st.last_attempt,
            last_sync_error: st.last_sync_error.clone(),
            branches: st.branches.clone(),
            failed: st
                .failed
                .iter()
                .map(|(e, (c, err))| {
                    (
                        e.clone(),
                        FailedCommit {
                            commit: c.clone(),
                            error: err.clone(),
                        },
                    )
                })
                .collect(),
            skipped: st.skipped.clone(),
            removed: st.removed.iter().cloned().collect(),
        }
    }

    /// Hides the URL's credentials in git's messages.
    fn scrub(&self, text: &str) -> String {
        let mut t = text.replace(&self.url, &self.shown);
        if let Some((_, rest)) = self.url.split_once("://") {
            let end = rest.find('/').unwrap_or(rest.len());
            if let Some(at) = rest[..end].rfind('@') {
                let userinfo = &rest[..at];
                if let Some((_, pass)) = userinfo.split_once(':')
                    && !pass.is_empty()
                {
                    t = t.replace(pass, "***");
                }
            }
        }
        t
    }

    /// Runs git with `args` (argv, never a shell): no prompt, no hooks, no
    /// remote helpers; killed after `timeout`. Returns stdout.
    fn git(
        &self,
        args: &[&OsStr],
        envs: &[(&str, &OsStr)],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let mut cmd = std::process::Command::new("git");
        cmd.args([
            "-c",
            "protocol.ext.allow=never",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let verb = args
            .iter()
            .map(|a| a.to_string_lossy())
            .find(|a| !a.starts_with('-') && !a.contains('='))
            .unwrap_or_default()
            .into_owned();
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot run git ({e}); install git (Debian: apt-get install git)")
        })?;
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let t_out = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = out.read_to_end(&mut b);
            b
        });
        let t_err = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = (&mut err).take(64 * 1024).read_to_end(&mut b);
            let _ = std::io::copy(&mut err, &mut std::io::sink());
            b
        });
        let start = std::time::Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Ok(s),
                Ok(None) if start.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(format!(
                        "git {verb} took longer than {}s and was stopped",
                        timeout.as_secs()
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => break Err(format!("waiting for git {verb}: {e}")),
            }
        };
        let stdout = t_out.join().unwrap_or_default();
        let stderr = t_err.join().unwrap_or_default();
        let status = status?;
        if status.success() {
            return Ok(stdout);
        }
        let msg = String::from_utf8_lossy(&stderr);
        let msg = msg.trim();
        let msg: String = msg.chars().take(2000).collect();
        Err(self.scrub(&format!(
            "git {verb} failed ({status}){}{}",
            if msg.is_empty() { "" } else { ": " },
            msg.replace('\n', "; ")
        )))
    }

    /// Fetches every branch into the mirror (pruning deleted ones).
    fn fetch(&self) -> Result<(), String> {
        let m = self.mirror();
        if !m.join("HEAD").is_file() {
            let _ = std::fs::remove_dir_all(&m);
            let tmp = self.dir.join(format!(".mirror-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            self.git(
                &[
                    OsStr::new("init"),
                    OsStr::new("--bare"),
                    OsStr::new("-q"),
                    tmp.as_os_str(),
                ],
                &[],
                CHECKOUT_TIMEOUT,
            )?;
            std::fs::rename(&tmp, &m).map_err(|e| format!("creating {}: {e}", m.display()))?;
        }
        self.git(
            &[
                OsStr::new("--git-dir"),
                m.as_os_str(),
                OsStr::new("fetch"),
                OsStr::new("--prune"),
                OsStr::new("--no-tags"),
                OsStr::new("--quiet"),
                OsStr::new("--"),
                OsStr::new(&self.url),
                OsStr::new("+refs/heads/*:refs/heads/*"),
            ],
            &[],
            FETCH_TIMEOUT,
        )
        .map(|_| ())
    }

    /// The mirror's branches → head commit, and the skipped ones → why.
    fn heads(&self) -> Result<(Heads, Heads), String> {
        let m = self.mirror();
        let out = self.git(
            &[
                OsStr::new("--git-dir"),
                m.as_os_str(),
                OsStr::new("for-each-ref"),
                OsStr::new("--format=%(objectname) %(refname)"),
                OsStr::new("refs/heads/"),
            ],
            &[],
            CHECKOUT_TIMEOUT,
        )?;
        let mut ok = BTreeMap::new();
        let mut skipped = BTreeMap::new();
        for line in String::from_utf8_lossy(&out).lines() {
            let Some((commit, refname)) = line.split_once(' ') else {
                continue;
            };
            let name = refname.strip_prefix("refs/heads/").unwrap_or(refname);
            if !troupe_compiler::secrets::valid_env_name(name) {
                skipped.insert(
                    name.to_owned(),
                    format!(
                        "branch {name:?} is not a valid environment name (lowercase letters, digits, _ and - only, at most 64, not starting with -): skipped"
                    ),
                );
            } else if !valid_commit(commit) {
                skipped.insert(
                    name.to_owned(),
                    format!("branch {name:?}: {commit:?} is not a commit id: skipped"),
                );
            } else {
                ok.insert(name.to_owned(), commit.to_owned());
            }
        }
        Ok((ok, skipped))
    }

    /// `DATA/git/checkouts/ENV.COMMIT`: the root the environment loads
    /// from (the branch's files are in `environments/ENV/` below it).
    fn checkout(&self, env: &str, commit: &str) -> Result<PathBuf, String> {
        let name = format!("{env}.{commit}");
        let dir = self.checkouts().join(&name);
        if dir.is_dir() {
            return Ok(dir);
        }
        let base = self.checkouts();
        std::fs::create_dir_all(&base).map_err(|e| format!("creating {}: {e}", base.display()))?;
        let tmp = base.join(format!(".tmp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let index = base.join(format!(".tmp-{name}-{}.index", std::process::id()));
        let work = tmp.join("environments").join(env);
        let r = (|| {
            std::fs::create_dir_all(&work)
                .map_err(|e| format!("creating {}: {e}", work.display()))?;
            let m = self.mirror();
            self.git(
                &[
                    OsStr::new("--git-dir"),
                    m.as_os_str(),
                    OsStr::new("--work-tree"),
                    work.as_os_str(),
                    OsStr::new("read-tree"),
                    OsStr::new("--reset"),
                    OsStr::new("-u"),
                    OsStr::new(commit),
                ],
                // Only the repository's own settings: no filters or
                // conversions from a global configuration.
                &[
                    ("GIT_INDEX_FILE", index.as_os_str()),
                    ("GIT_CONFIG_NOSYSTEM", OsStr::new("1")),
                    ("GIT_CONFIG_GLOBAL", OsStr::new("/dev/null")),
                ],
                CHECKOUT_TIMEOUT,
            )?;
            sync_tree(&tmp).map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &dir).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
            std::fs::File::open(&base)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("syncing {}: {e}", base.display()))
        })();
        let _ = std::fs::remove_file(&index);
        if r.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        r.map(|_| dir)
    }

    /// Checks out and loads one commit of a branch (and the site, for the
    /// site branch).
    fn load(&self, env: &str, commit: &str) -> Result<(Arc<EnvTree>, Option<Arc<Site>>), String> {
        let root = self.checkout(env, commit)?;
        let tree = EnvTree::load(&root, env).map_err(|e| format!("{e}"))?;
        let site = if env == self.site_branch {
            let d = root.join("environments").join(env);
            Some(Arc::new(Site::load(&d).map_err(|e| {
                format!("site.toml of branch `{env}` (git_site_branch): {e}")
            })?))
        } else {
            None
        };
        Ok((Arc::new(tree), site))
    }

    /// Records the commits served, so a restart serves them again.
    /// `commits` is read under the writer's lock, so the file never goes
    /// back to an older state than a concurrent writer saved.
    pub(crate) fn save_serving(&self, commits: impl FnOnce() -> BTreeMap<String, String>) {
        let _one = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        let doc = serde_json::json!({"serving": commits()});
        let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        if let Err(e) = troupe_base::fs::write_atomic(
            &self.serving_file(),
            &bytes,
            troupe_base::fs::Atomic::durable(0o600),
        ) {
            tracing::error!(
                "cannot record the commits served in {}: {e} (a restart would serve the branches' newest commits)",
                self.serving_file().display()
            );
        }
    }

    fn read_serving(&self) -> BTreeMap<String, String> {
        let Ok(b) = std::fs::read(self.serving_file()) else {
            return BTreeMap::new();
        };
        let v: serde_json::Value = match serde_json::from_slice(&b) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("{}: {e}; ignored", self.serving_file().display());
                return BTreeMap::new();
            }
        };
        v["serving"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .filter(|(k, v)| troupe_compiler::secrets::valid_env_name(k) && valid_commit(v))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes checkouts nothing serves or stages, and temp leftovers.
    fn gc(&self, keep: &BTreeSet<String>) {
        let Ok(rd) = std::fs::read_dir(self.checkouts()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let p = e.path();
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                if let Err(err) = r {
                    tracing::warn!("cannot remove the old checkout {}: {err}", p.display());
                }
            }
        }
    }
}

/// fsyncs every file and directory under `dir`.
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let ft = e.file_type()?;
        if ft.is_dir() {
            sync_tree(&e.path())?;
        } else if ft.is_file() {
            std::fs::File::open(e.path())?.sync_all()?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

/// What the git-backed code manager is built from (master.toml).
#[derive(Debug, Clone)]
pub struct GitOptions {
    pub url: String,
    /// `DATA/git`.
    pub dir: PathBuf,
    pub site_branch: String,
    pub poll: Duration,
}

impl CodeManager {
    /// Git-backed environments: serves the commits served before a restart
    /// (`DATA/git/serving.json`), then fetches and syncs once. A failure
    /// does not stop the master (like a tree that does not load).
    pub fn new_git(
        opts: GitOptions,
        hold: impl IntoIterator<Item = String>,
    ) -> Result<CodeManager> {
        check_url(&opts.url).map_err(|e| anyhow::anyhow!("modules: {e}"))?;
        if !troupe_compiler::secrets::valid_env_name(&opts.site_branch) {
            bail!(
                "git_site_branch {:?}: not an environment name (lowercase letters, digits, _ and -)",
                opts.site_branch
            );
        }
        troupe_pki::util::ensure_private_dir(&opts.dir, 0o700)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", opts.dir.display()))?;
        let shown = redact(&opts.url);
        let src = GitSource {
            url: opts.url,
            shown: shown.clone(),
            dir: opts.dir,
            site_branch: opts.site_branch,
            poll_secs: opts.poll.as_secs(),
            lock: Mutex::new(()),
            save_lock: Mutex::new(()),
        };
        // Leftovers of a sync that was killed.
        if let Ok(rd) = std::fs::read_dir(src.checkouts()) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(".tmp-") {
                    let p = e.path();
                    let _ = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
        let m = CodeManager {
            dir: PathBuf::from(format!("{PREFIX}{shown}")),
            hold: hold.into_iter().collect(),
            inner: RwLock::new(Inner {
                live: None,
                staged: BTreeMap::new(),
                fingerprint: None,
                last_error: None,
                generation: 0,
                commits: BTreeMap::new(),
                git: Some(GitState::default()),
            }),
            git: Some(src),
        };
        m.restore();
        if let Err(e) = m.sync(None) {
            tracing::error!("{e:#}");
        }
        Ok(m)
    }

    /// Loads the commits `serving.json` names.
    fn restore(&self) {
        let Some(git) = &self.git else { return };
        let serving = git.read_serving();
        if serving.is_empty() {
            return;
        }
        let mut envs = BTreeMap::new();
        let mut restored = BTreeMap::new();
        let mut site = None;
        for (env, commit) in &serving {
            match git.load(env, commit) {
                Ok((t, s)) => {
                    restored.insert(env.clone(), commit.clone());
                    envs.insert(env.clone(), t);
                    if s.is_some() {
                        site = s;
                    }
                }
                Err(e) => {
                    // Its branch's newest commit serves after the sync.
                    tracing::error!(
                        "cannot serve {env} at commit {commit} again (from {}): {e}",
                        git.serving_file().display()
                    );
                }
            }
        }
        let Some(site) = site else {
            tracing::error!(
                "{} has no commit of the site branch `{}`",
                git.serving_file().display(),
                git.site_branch
            );
            return;
        };
        match ModuleTree::assemble(git.dir.clone(), site, envs) {
            Ok(t) => {
                let mut g = self.write();
                g.live = Some(Arc::new(t));
                g.commits = restored;
                g.generation += 1;
            }
            Err(e) => tracing::error!("the commits served before do not load together: {e}"),
        }
    }

    /// Fetches the repository and brings every environment (or only
    /// `only`) to its branch's head: served at once, or staged for a held
    /// environment that already serves. Dir-backed trees are refused (they
    /// reload by themselves).
    pub fn sync(&self, only: Option<&str>) -> Result<SyncReport> {
        let Some(git) = &self.git else {
            return Err(error(
                ErrorCode::InvalidArgument,
                "the module tree is a directory, not a git repository: the master picks up its changes by itself",
            ));
        };
        let _one = git.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(o) = only
            && !troupe_compiler::secrets::valid_env_name(o)
        {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!(
                    "{o:?} is not an environment name (lowercase letters, digits, _ and - only)"
                ),
            ));
        }
        let fetched = git.fetch().and_then(|_| git.heads());
        let (heads, skipped) = match fetched {
            Ok(h) => h,
            Err(e) => {
                let mut g = self.write();
                let st = g.git.get_or_insert_with(GitState::default);
                st.last_attempt = Some(now());
                st.last_sync_error = Some(e.clone());
                return Err(error(
                    ErrorCode::Unavailable,
                    format!(
                        "fetching {} failed; the code serving is unchanged: {e}",
                        git.shown
                    ),
                ));
            }
        };
        let (live, commits, staged_commits, prev) = {
            let g = self.read();
            (
                g.live.clone(),
                g.commits.clone(),
                g.staged
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.commit.clone()?)))
                    .collect::<BTreeMap<_, _>>(),
                g.git.clone().unwrap_or_default(),
            )
        };
        for (b, why) in &skipped {
            if !prev.skipped.contains_key(b) {
                tracing::warn!("{why}");
            }
        }
        let mut report = SyncReport {
            url: git.shown.clone(),
            environments: BTreeMap::new(),
            skipped: skipped.clone(),
            generation: 0,
            new_failures: Vec::new(),
        };
        let mut failed = prev.failed.clone();
        let mut retry = BTreeSet::new();
        let mut loaded = Vec::new();
        let mut unstage = Vec::new();
        for (env, commit) in &heads {
            if only.is_some_and(|o| o != env) {
                continue;
            }
            let serving = commits.get(env);
            let staged = staged_commits.get(env);
            let entry = |action, err: Option<String>| EnvSync {
                action,
                commit: Some(commit.clone()),
                serving: serving.cloned(),
                error: err,
            };
            if staged.or(serving) == Some(commit) {
                failed.remove(env);
                report
                    .environments
                    .insert(env.clone(), entry("unchanged", None));
                continue;
            }
            if staged.is_some() && serving == Some(commit) {
                failed.remove(env);
                unstage.push(env.clone());
                report
                    .environments
                    .insert(env.clone(), entry("unstaged", None));
                continue;
            }
            // A commit that failed is tried again only when asked by name.
            if let Some((c, e)) = prev.failed.get(env)
                && c == commit
                && only.is_none()
                && !prev.retry.contains(env)
            {
                report
                    .environments
                    .insert(env.clone(), entry("failed", Some(e.clone())));
                continue;
            }
            match git.load(env, commit) {
                Ok((t, s)) => loaded.push((env.clone(), commit.clone(), t, s)),
                Err(e) => {
                    tracing::error!(
                        "environment {env}: commit {commit:.12} does not load; {}: {e}",
                        serving.map_or("it is not served until a commit loads".to_string(), |c| {
                            format!("{c:.12} keeps serving")
                        })
                    );
                    failed.insert(env.clone(), (commit.clone(), e.clone()));
                    report
                        .new_failures
                        .push(format!("environment {env}, commit {commit:.12}: {e}"));
                    report
                        .environments
                        .insert(env.clone(), entry("failed", Some(e)));
                }
            }
        }
        // Environments whose branch is gone keep serving, unless named.
        let mut removed: BTreeSet<String> = commits
            .keys()
            .filter(|e| !heads.contains_key(*e))
            .cloned()
            .collect();
        let mut drop_env = None;
        if let Some(o) = only {
            if removed.contains(o) {
                if self.hold.contains(o) {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        format!(
                            "the branch of `{o}` is gone, but `{o}` is held: it keeps serving {:.12}; take it off hold to remove it",
                            commits[o]
                        ),
                    ));
                }
                drop_env = Some(o.to_owned());
            } else if !heads.contains_key(o) {
                let why = skipped.get(o).cloned().unwrap_or_else(|| {
                    format!(
                        "there is no branch `{o}` in {} (branches: {})",
                        git.shown,
                        heads.keys().cloned().collect::<Vec<_>>().join(", ")
                    )
                });
                return Err(error(ErrorCode::NotFound, why));
            }
        }
        for e in &removed {
            if only.is_none_or(|o| o == e) {
                report.environments.insert(
                    e.clone(),
                    EnvSync {
                        action: "branch-removed",
                        commit: None,
                        serving: commits.get(e).cloned(),
                        error: None,
                    },
                );
            }
        }

        let mut g = self.write();
        let mut envs: BTreeMap<String, Arc<EnvTree>> = live
            .as_ref()
            .map(|t| {
                t.environments()
                    .filter_map(|e| Some((e.to_owned(), t.environment(e)?.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let mut site = live.as_ref().map(|t| t.site().clone());
        let mut new_commits = g.commits.clone();
        let mut changed = false;
        let mut went_live = Vec::new();
        for (env, commit, tree, tsite) in loaded {
            let held = self.hold.contains(&env) && envs.contains_key(&env);
            if held {
                let st = Staged {
                    env: tree,
                    site: tsite,
                    commit: Some(commit.clone()),
                };
                let same = live
                    .as_ref()
                    .is_some_and(|l| st.apply(l).code_version() == l.code_version());
                let action = if same {
                    // Same code (e.g. only a README changed): the commit
                    // moves, nothing to promote.
                    new_commits.insert(env.clone(), commit.clone());
                    g.staged.remove(&env);
                    "updated"
                } else {
                    g.staged.insert(env.clone(), st);
                    "staged"
                };
                failed.remove(&env);
                report.environments.insert(
                    env.clone(),
                    EnvSync {
                        action,
                        commit: Some(commit),
                        serving: new_commits.get(&env).cloned(),
                        error: None,
                    },
                );
            } else {
                let action = if envs.contains_key(&env) {
                    "updated"
                } else {
                    "added"
                };
                envs.insert(env.clone(), tree);
                if tsite.is_some() {
                    site = tsite;
                }
                new_commits.insert(env.clone(), commit.clone());
                went_live.push((env, commit, action));
                changed = true;
            }
        }
        for env in &unstage {
            g.staged.remove(env);
        }
        if let Some(e) = &drop_env {
            envs.remove(e);
            new_commits.remove(e);
            removed.remove(e);
            changed = true;
        }
        let mut assembled = None;
        if changed {
            let r = match site {
                Some(s) => {
                    ModuleTree::assemble(git.dir.clone(), s, envs).map_err(|e| format!("{e}"))
                }
                None => Err(format!(
                    "the site branch `{}` (git_site_branch) has no commit that loads, so there is no site.toml",
                    git.site_branch
                )),
            };
            match r {
                Ok(t) => assembled = Some(t),
                Err(e) => {
                    // Nothing of this sync goes live; each new commit is
                    // reported with the reason.
                    tracing::error!(
                        "the new commits do not load together; the code serving is unchanged: {e}"
                    );
                    new_commits = g.commits.clone();
                    for (env, commit, _) in &went_live {
                        failed.insert(env.clone(), (commit.clone(), e.clone()));
                        retry.insert(env.clone());
                    }
                    report.new_failures.push(e.clone());
                    if let Some(d) = &drop_env {
                        drop(g);
                        return Err(error(
                            ErrorCode::InvalidArgument,
                            format!("`{d}` cannot be removed: {e}"),
                        ));
                    }
                }
            }
        }
        for (env, commit, action) in went_live {
            let ok = assembled.is_some();
            report.environments.insert(
                env.clone(),
                EnvSync {
                    action: if ok { action } else { "failed" },
                    commit: Some(commit.clone()),
                    serving: new_commits.get(&env).cloned(),
                    error: if ok {
                        None
                    } else {
                        failed.get(&env).map(|f| f.1.clone())
                    },
                },
            );
            if ok {
                failed.remove(&env);
            }
        }
        if let Some(d) = &drop_env
            && assembled.is_some()
        {
            report.environments.insert(
                d.clone(),
                EnvSync {
                    action: "removed",
                    commit: None,
                    serving: None,
                    error: None,
                },
            );
            failed.remove(d);
        }
        let swapped = assembled.is_some();
        let commits_moved = new_commits != g.commits;
        if let Some(t) = assembled {
            g.live = Some(Arc::new(t));
            g.generation += 1;
        }
        // (After a failed assembly new_commits is what served before.)
        g.commits = new_commits;
        // Failures of branches that are gone no longer matter.
        failed.retain(|e, _| heads.contains_key(e));
        g.last_error = if failed.is_empty() {
            None
        } else {
            Some(
                failed
                    .iter()
                    .map(|(e, (c, err))| format!("environment {e}, commit {c:.12}: {err}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        };
        let st = g.git.get_or_insert_with(GitState::default);
        st.last_attempt = Some(now());
        st.last_sync = st.last_attempt;
        st.last_sync_error = None;
        retry.retain(|e| failed.contains_key(e));
        st.failed = failed;
        st.retry = retry;
        st.skipped = skipped;
        st.removed = removed;
        st.branches = heads;
        report.generation = g.generation;
        let mut keep: BTreeSet<String> =
            g.commits.iter().map(|(e, c)| format!("{e}.{c}")).collect();
        for (e, s) in &g.staged {
            if let Some(c) = &s.commit {
                keep.insert(format!("{e}.{c}"));
            }
        }
        drop(g);
        if commits_moved {
            git.save_serving(|| self.read().commits.clone());
        }
        if swapped {
            for (e, s) in &report.environments {
                if matches!(s.action, "added" | "updated" | "removed") {
                    tracing::info!(
                        env = %e,
                        commit = s.commit.as_deref().unwrap_or("-"),
                        "git: {}",
                        s.action
                    );
                }
            }
        }
        git.gc(&keep);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::code::tests::motd;
    use std::fs;
    use std::process::Command;

    /// A work repository with one commit per call, pushed nowhere: the
    /// master fetches from it directly (file://).
    struct Repo {
        dir: tempfile::TempDir,
    }

    impl Repo {
        fn new() -> Repo {
            let dir = tempfile::tempdir().unwrap();
            let r = Repo { dir };
            r.git(&["init", "-q", "-b", "production"]);
            r
        }
        fn url(&self) -> String {
            format!("file://{}", self.dir.path().display())
        }
        fn git(&self, args: &[&str]) -> String {
            let out = Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .current_dir(self.dir.path())
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }
        /// Commits an environment with this motd on `branch` (created from
        /// the current branch when new); returns the commit.
        fn commit(&self, branch: &str, motd: &str) -> String {
            let have = self.git(&["branch", "--list", branch]);
            if self.git(&["branch", "--list"]).is_empty() {
                // No commit yet: on the unborn first branch.
            } else if have.is_empty() {
                self.git(&["checkout", "-q", "-b", branch]);
            } else {
                self.git(&["checkout", "-q", branch]);
            }
            let d = self.dir.path();
            fs::create_dir_all(d.join("roles")).unwrap();
            fs::create_dir_all(d.join("profiles")).unwrap();
            fs::write(
                d.join("site.toml"),
                "default_environment = \"production\"\n[[node]]\nmatch = \"*.dev\"\nenvironment = \"development\"\n[[node]]\nmatch = \"*\"\nrole = \"base\"\n",
            )
            .unwrap();
            fs::write(
                d.join("hierarchy.toml"),
                "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
            )
            .unwrap();
            fs::write(d.join("roles/base.toml"), "include = [\"motd\"]\n").unwrap();
            fs::write(
                d.join("profiles/motd.toml"),
                format!("[file.\"/etc/motd\"]\ncontent = \"{motd}\\n\"\n"),
            )
            .unwrap();
            self.git(&["add", "-A"]);
            self.git(&["commit", "-q", "--allow-empty", "-m", motd]);
            self.git(&["rev-parse", "HEAD"])
        }
        fn break_it(&self, branch: &str) -> String {
            self.git(&["checkout", "-q", branch]);
            fs::write(
                self.dir.path().join("profiles/motd.toml"),
                "[file.\"/etc/motd\"\n",
            )
            .unwrap();
            self.git(&["commit", "-q", "-am", "broken"]);
            self.git(&["rev-parse", "HEAD"])
        }
    }

    fn manager(repo_url: &str, data: &Path, hold: &[&str]) -> CodeManager {
        CodeManager::new_git(
            GitOptions {
                url: repo_url.to_owned(),
                dir: data.join("git"),
                site_branch: "production".into(),
                poll: Duration::ZERO,
            },
            hold.iter().map(|s| s.to_string()),
        )
        .unwrap()
    }

    #[test]
    fn branches_are_environments_and_held_ones_wait_for_promote() {
        let repo = Repo::new();
        let p1 = repo.commit("production", "prod v1");
        let data = tempfile::tempdir().unwrap();
        let m = manager(&repo.url(), data.path(), &["production"]);
        assert_eq!(motd(&m, "production"), "prod v1\n");
        let st = m.status();
        assert_eq!(st.source, "git");
        assert_eq!(st.commits["production"], p1);
        assert!(st.git.as_ref().unwrap().last_sync.is_some());

        // A new branch appears as an environment at the next sync.
        let d1 = repo.commit("development", "dev v1");
        let rep = m.sync(None).unwrap();
        assert_eq!(rep.environments["development"].action, "added");
        assert_eq!(rep.environments["production"].action, "unchanged");
        assert_eq!(motd(&m, "development"), "dev v1\n");
        assert_eq!(m.status().commits["development"], d1);

        // An unheld branch's new commit serves at the sync.
        let d2 = repo.commit("development", "dev v2");
        assert_eq!(motd(&m, "development"), "dev v1\n", "not before a sync");
        let rep = m.sync(Some("development")).unwrap();
        assert_eq!(rep.environments["development"].action, "updated");
        assert_eq!(rep.environments.len(), 1, "only the environment named");
        assert_eq!(motd(&m, "development"), "dev v2\n");
        assert_eq!(m.status().commits["development"], d2);

        // The held production: staged, not served, until promoted.
        let p2 = repo.commit("production", "prod v2");
        let rep = m.sync(None).unwrap();
        assert_eq!(rep.environments["production"].action, "staged");
        assert_eq!(
            rep.environments["production"].serving.as_deref(),
            Some(p1.as_str())
        );
        assert_eq!(motd(&m, "production"), "prod v1\n");
        let st = m.status();
        assert_eq!(st.commits["production"], p1);
        assert_eq!(st.staged_commits["production"], p2);
        // Another sync changes nothing.
        assert_eq!(
            m.sync(None).unwrap().environments["production"].action,
            "unchanged"
        );
        // A restart serves what served (no promotion by restart), then
        // stages the new commit again.
        drop(m);
        let m = manager(&repo.url(), data.path(), &["production"]);
        assert_eq!(motd(&m, "production"), "prod v1\n");
        assert_eq!(m.status().commits["production"], p1);
        assert_eq!(m.status().staged_commits["production"], p2);
        assert_eq!(motd(&m, "development"), "dev v2\n");
        let shown = m.status().staged["production"].clone();
        assert_eq!(
            m.promote_expecting("production", Some(&shown)).unwrap(),
            shown
        );
        assert_eq!(motd(&m, "production"), "prod v2\n");
        let st = m.status();
        assert_eq!(st.commits["production"], p2);
        assert!(st.staged_commits.is_empty());
        assert_eq!(st.environments["production"], shown);
        // Only the served (and staged) commits stay checked out.
        let mut left: Vec<String> = fs::read_dir(data.path().join("git/checkouts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        m.sync(None).unwrap();
        let mut after: Vec<String> = fs::read_dir(data.path().join("git/checkouts"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        after.sort();
        assert_eq!(
            after,
            [format!("development.{d2}"), format!("production.{p2}")]
        );
        // And the restart after the promotion serves the promoted commit.
        drop(m);
        let m = manager(&repo.url(), data.path(), &["production"]);
        assert_eq!(motd(&m, "production"), "prod v2\n");
        assert!(m.status().staged_commits.is_empty());
    }

    #[test]
    fn bad_names_broken_commits_removed_branches_and_fetch_failures() {
        let repo = Repo::new();
        repo.commit("production", "prod v1");
        let d1 = repo.commit("development", "dev v1");
        // Names that are not environment names, one of them a path.
        repo.git(&["branch", "Feature/X"]);
        repo.git(&["branch", "bad.name"]);
        let data = tempfile::tempdir().unwrap();
        let m = manager(&repo.url(), data.path(), &[]);
        let st = m.status();
        let envs: Vec<&String> = st.environments.keys().collect();
        assert_eq!(envs, ["development", "production"]);
        let g = st.git.unwrap();
        assert!(
            g.skipped["Feature/X"].contains("not a valid environment name"),
            "{g:?}"
        );
        assert!(g.skipped.contains_key("bad.name"));
        // Nothing named after them on disk.
        for e in fs::read_dir(data.path().join("git/checkouts")).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                n.starts_with("production.") || n.starts_with("development."),
                "{n}"
            );
        }
        let e = m.sync(Some("bad.name")).unwrap_err().to_string();
        assert!(e.contains("not an environment name"), "{e}");

        // A broken commit: the old one keeps serving, status says why.
        let broken = repo.break_it("development");
        let rep = m.sync(None).unwrap();
        let dev = &rep.environments["development"];
        assert_eq!(dev.action, "failed");
        assert_eq!(dev.serving.as_deref(), Some(d1.as_str()));
        assert!(
            dev.error.as_deref().unwrap().contains("motd.toml"),
            "{dev:?}"
        );
        assert_eq!(rep.new_failures.len(), 1);
        assert_eq!(motd(&m, "development"), "dev v1\n");
        let st = m.status();
        assert!(st.last_error.as_deref().unwrap().contains("motd.toml"));
        assert_eq!(st.git.unwrap().failed["development"].commit, broken);
        // Not loaded (or reported as new) again at the next poll.
        let rep = m.sync(None).unwrap();
        assert_eq!(rep.environments["development"].action, "failed");
        assert!(rep.new_failures.is_empty());
        // Fixed: serves, the error is gone.
        let d3 = repo.commit("development", "dev v3");
        assert_eq!(
            m.sync(None).unwrap().environments["development"].action,
            "updated"
        );
        assert_eq!(motd(&m, "development"), "dev v3\n");
        assert_eq!(m.status().last_error, None);

        // A removed branch keeps serving until named.
        repo.git(&["checkout", "-q", "production"]);
        repo.git(&["branch", "-D", "development"]);
        let rep = m.sync(None).unwrap();
        assert_eq!(rep.environments["development"].action, "branch-removed");
        assert_eq!(motd(&m, "development"), "dev v3\n");
        assert_eq!(m.status().git.unwrap().removed, ["development"]);
        assert_eq!(m.status().commits["development"], d3);
        let rep = m.sync(Some("development")).unwrap();
        assert_eq!(rep.environments["development"].action, "removed");
        assert!(!m.status().environments.contains_key("development"));
        assert!(m.status().git.unwrap().removed.is_empty());
        let e = m.sync(Some("development")).unwrap_err().to_string();
        assert!(e.contains("no branch `development`"), "{e}");

        // The repository is unreachable: nothing changes, the error shows.
        let before = m.status();
        fs::rename(repo.dir.path().join(".git"), repo.dir.path().join("moved")).unwrap();
        let e = m.sync(None).unwrap_err().to_string();
        assert!(e.contains("the code serving is unchanged"), "{e}");
        let after = m.status();
        assert_eq!(after.live_version, before.live_version);
        assert_eq!(after.commits, before.commits);
        assert!(after.git.unwrap().last_sync_error.is_some());
        assert_eq!(motd(&m, "production"), "prod v1\n");
    }

    /// The site branch does not load at first: nothing serves (the other
    /// branches load but have no site); once it is fixed, every branch
    /// serves without having to move.
    #[test]
    fn a_broken_site_branch_holds_back_nothing_after_it_is_fixed() {
        let repo = Repo::new();
        repo.commit("production", "prod v1");
        repo.break_it("production");
        let d1 = repo.commit("development", "dev v1");
        let data = tempfile::tempdir().unwrap();
        let m = manager(&repo.url(), data.path(), &["production"]);
        let err = m.current().unwrap_err();
        assert!(err.contains("motd.toml"), "{err}");
        let st = m.status();
        assert_eq!(st.live_version, None);
        assert!(st.git.unwrap().failed.contains_key("development"));
        repo.commit("production", "prod v2");
        let rep = m.sync(None).unwrap();
        assert_eq!(rep.environments["production"].action, "added");
        assert_eq!(rep.environments["development"].action, "added");
        assert_eq!(motd(&m, "production"), "prod v2\n");
        assert_eq!(motd(&m, "development"), "dev v1\n");
        assert_eq!(m.status().commits["development"], d1);
        assert_eq!(m.status().last_error, None);
    }

    /// A branch cannot reach outside its checkout through a symlink, and
    /// a killed sync's half-written checkout is removed at start, never
    /// served.
    #[test]
    fn symlinks_out_and_leftovers_of_a_killed_sync_are_never_served() {
        let repo = Repo::new();
        repo.commit("production", "prod v1");
        let d1 = repo.commit("development", "dev v1");
        let data = tempfile::tempdir().unwrap();
        let m = manager(&repo.url(), data.path(), &[]);
        // A data file that is a link to a file outside the checkout.
        fs::create_dir_all(repo.dir.path().join("data")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", repo.dir.path().join("data/common.toml"))
            .unwrap();
        repo.git(&["add", "-A"]);
        repo.git(&["commit", "-q", "-m", "link out"]);
        let rep = m.sync(None).unwrap();
        let dev = &rep.environments["development"];
        assert_eq!(dev.action, "failed");
        assert!(
            dev.error
                .as_deref()
                .unwrap()
                .contains("outside the module tree"),
            "{dev:?}"
        );
        assert_eq!(motd(&m, "development"), "dev v1\n");
        assert_eq!(m.status().commits["development"], d1);
        drop(m);
        // A sync killed mid-checkout leaves a temp directory (here with
        // another motd): the next start removes it and serves the
        // recorded commits.
        let tmp = data
            .path()
            .join(format!("git/checkouts/.tmp-development.{d1}-4242"));
        fs::create_dir_all(tmp.join("environments/development/profiles")).unwrap();
        fs::write(
            tmp.join("environments/development/profiles/motd.toml"),
            "[file.\"/etc/motd\"]\ncontent = \"half\\n\"\n",
        )
        .unwrap();
        let m = manager(&repo.url(), data.path(), &[]);
        assert!(!tmp.exists());
        assert_eq!(motd(&m, "development"), "dev v1\n");
    }

    #[test]
    fn urls_are_checked_and_credentials_redacted() {
        assert_eq!(
            redact("https://bob:s3cret@git.example.com/m.git"),
            "https://***@git.example.com/m.git"
        );
        assert_eq!(redact("file:///srv/m.git"), "file:///srv/m.git");
        assert!(check_url("").is_err());
        assert!(check_url("--upload-pack=touch /tmp/x").is_err());
        assert!(check_url("ext::sh -c touch% /tmp/x").is_err());
        assert!(check_url("/srv/modules.git").is_ok());
        assert_eq!(
            git_url(Path::new("git+file:///srv/m.git")),
            Some("file:///srv/m.git")
        );
        assert_eq!(git_url(Path::new("/srv/modules")), None);
        // A failing fetch names the repository without the password.
        let data = tempfile::tempdir().unwrap();
        let m = manager("https://bob:s3cret@127.0.0.1:9/none.git", data.path(), &[]);
        let st = m.status();
        let g = st.git.unwrap();
        let e = g.last_sync_error.unwrap();
        assert!(!e.contains("s3cret"), "{e}");
        assert!(!format!("{:?}", m.dir()).contains("s3cret"));
        assert!(m.current().is_err());
    }
}
