//! The master's module code: which tree is live, picking up changes without
//! a restart, and holding environments for promotion.
//!
//! - The live tree is an `Arc<ModuleTree>` swapped atomically; a request
//!   compiles against whichever tree it picked up, start to finish.
//! - [`CodeManager::reload_if_changed`] fingerprints the directory (paths,
//!   sizes, mtimes), loads a changed tree off to the side and swaps it in.
//!   A tree that fails to load leaves the previous one serving and records
//!   why ([`CodeStatus::last_error`]). A tree that changed again while it
//!   was being read is not used (the next poll retries), so a half-finished
//!   `git checkout` is never served.
//! - An environment on **hold** (e.g. production) keeps serving its promoted
//!   code; newer code for it is *staged* and goes live only with
//!   [`CodeManager::promote`] (`troupe env promote production`). The site
//!   file (classification) is shared by all environments and applies at
//!   once.
//! - With `modules = "git+URL"` the environments are the branches of a git
//!   repository instead, synced by [`CodeManager::sync`]
//!   ([`crate::code_git`]); the same hold/promote rule applies, the staged
//!   code (`Staged`) then carries its commit and, for the site branch,
//!   the site.

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use troupe_compiler::{EnvTree, ModuleTree};

/// The directory fingerprint: a hash over every file's relative path, size
/// and modification time (dot-directories such as `.git` are skipped).
pub fn fingerprint(dir: &Path) -> Result<String> {
    fn walk(dir: &Path, rel: &Path, h: &mut Sha256) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let md = e.metadata()?;
            let path = rel.join(&name);
            h.update(path.to_string_lossy().as_bytes());
            h.update([0]);
            if md.is_dir() {
                walk(&e.path(), &path, h)?;
            } else {
                use std::os::unix::fs::MetadataExt;
                h.update(md.len().to_le_bytes());
                h.update(md.mtime().to_le_bytes());
                h.update(md.mtime_nsec().to_le_bytes());
            }
        }
        Ok(())
    }
    let mut h = Sha256::new();
    walk(dir, Path::new(""), &mut h)
        .with_context(|| format!("cannot read the module tree {}", dir.display()))?;
    Ok(hex::encode(h.finalize()))
}

pub(crate) struct Inner {
    pub(crate) live: Option<Arc<ModuleTree>>,
    pub(crate) staged: BTreeMap<String, Staged>,
    pub(crate) fingerprint: Option<String>,
    pub(crate) last_error: Option<String>,
    pub(crate) generation: u64,
    /// Git-backed environments: environment → the commit it serves.
    pub(crate) commits: BTreeMap<String, String>,
    /// Git-backed environments: sync state (`None` for a directory).
    pub(crate) git: Option<crate::code_git::GitState>,
}

/// New code for a held environment, waiting for `troupe env promote`.
#[derive(Clone)]
pub(crate) struct Staged {
    pub(crate) env: Arc<EnvTree>,
    /// The site that comes with it (git: the site branch's new commit).
    pub(crate) site: Option<Arc<troupe_compiler::Site>>,
    /// The commit it was checked out from (git only).
    pub(crate) commit: Option<String>,
}

impl Staged {
    /// `live` with this code in place: what serving is after promotion.
    pub(crate) fn apply(&self, live: &ModuleTree) -> ModuleTree {
        if let Some(site) = &self.site {
            let mut envs: BTreeMap<String, Arc<EnvTree>> = live
                .environments()
                .filter_map(|e| Some((e.to_owned(), live.environment(e)?.clone())))
                .collect();
            envs.insert(self.env.name().to_owned(), self.env.clone());
            if let Ok(t) = ModuleTree::assemble(live.root().to_owned(), site.clone(), envs) {
                return t;
            }
        }
        live.with_environment(self.env.clone())
    }
}

/// What `troupe env status` shows.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CodeStatus {
    pub dir: PathBuf,
    /// Code version of the whole live tree, if one loaded.
    pub live_version: Option<String>,
    /// Environment → code version served.
    pub environments: BTreeMap<String, String>,
    /// Held environment → code version staged for promotion.
    pub staged: BTreeMap<String, String>,
    pub hold: Vec<String>,
    /// Why the newest tree on disk is not serving, if it failed to load.
    pub last_error: Option<String>,
    /// Bumped at every swap of the live tree.
    pub generation: u64,
    /// `dir` or `git`.
    pub source: &'static str,
    /// Git-backed: environment → commit served.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub commits: BTreeMap<String, String>,
    /// Git-backed: held environment → commit staged for promotion.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub staged_commits: BTreeMap<String, String>,
    /// Git-backed: the repository and its last sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git: Option<crate::code_git::GitStatus>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Nothing changed on disk.
    Unchanged,
    /// A new tree is live (its code version).
    Swapped(String),
    /// The tree on disk changed but failed to load; the old one serves.
    Failed(String),
    /// The tree changed while it was being read; try again later.
    Unsettled,
}

/// The module code of a master.
pub struct CodeManager {
    pub(crate) dir: PathBuf,
    pub(crate) hold: BTreeSet<String>,
    pub(crate) inner: RwLock<Inner>,
    /// Set when the environments are branches of a git repository
    /// (`modules = "git+URL"`, see [`crate::code_git`]).
    pub(crate) git: Option<crate::code_git::GitSource>,
}

impl CodeManager {
    /// Loads `dir`. A tree that fails to load does not stop the master (the
    /// CA keeps working); catalogs are refused with the load error until a
    /// good tree appears.
    pub fn new(dir: PathBuf, hold: impl IntoIterator<Item = String>) -> CodeManager {
        let m = CodeManager {
            dir,
            hold: hold.into_iter().collect(),
            inner: RwLock::new(Inner {
                live: None,
                staged: BTreeMap::new(),
                fingerprint: None,
                last_error: None,
                generation: 0,
                commits: BTreeMap::new(),
                git: None,
            }),
            git: None,
        };
        m.reload_if_changed();
        m
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The live tree, or why there is none.
    pub fn current(&self) -> Result<Arc<ModuleTree>, String> {
        let g = self.read();
        match &g.live {
            Some(t) => Ok(t.clone()),
            None => Err(g
                .last_error
                .clone()
                .unwrap_or_else(|| "no module tree is loaded".into())),
        }
    }

    /// The live tree and its generation, read together (a check-in's cache
    /// key must name the generation of the tree it compiles with), without
    /// building the whole [`CodeStatus`].
    pub fn current_with_generation(&self) -> Result<(Arc<ModuleTree>, u64), String> {
        let g = self.read();
        match &g.live {
            Some(t) => Ok((t.clone(), g.generation)),
            None => Err(g
                .last_error
                .clone()
                .unwrap_or_else(|| "no module tree is loaded".into())),
        }
    }

    /// Loads the tree again if anything on disk changed.
    pub fn reload_if_changed(&self) -> Reload {
        if self.git.is_some() {
            // Branches are fetched by `sync` (git_poll, `troupe env sync`).
            return Reload::Unchanged;
        }
        let before = match fingerprint(&self.dir) {
            Ok(f) => f,
            Err(e) => return self.fail(None, format!("{e:#}")),
        };
        if self.read().fingerprint.as_deref() == Some(before.as_str()) {
            return Reload::Unchanged;
        }
        let loaded = ModuleTree::load(&self.dir);
        match fingerprint(&self.dir) {
            Ok(after) if after == before => {}
            _ => return Reload::Unsettled,
        }
        let new = match loaded {
            Ok(t) => t,
            Err(e) => return self.fail(Some(before), format!("{e}")),
        };
        let mut g = self.write();
        let mut tree = new;
        let mut staged = BTreeMap::new();
        if let Some(live) = &g.live {
            for env in &self.hold {
                let (Some(old), Some(fresh)) = (live.environment(env), tree.environment(env))
                else {
                    continue;
                };
                if old.code_version() != fresh.code_version() {
                    staged.insert(
                        env.clone(),
                        Staged {
                            env: fresh.clone(),
                            site: None,
                            commit: None,
                        },
                    );
                    tree = tree.with_environment(old.clone());
                }
            }
        }
        let version = tree.code_version().to_owned();
        g.live = Some(Arc::new(tree));
        g.staged = staged;
        g.fingerprint = Some(before);
        g.last_error = None;
        g.generation += 1;
        Reload::Swapped(version)
    }

    fn fail(&self, fingerprint: Option<String>, error: String) -> Reload {
        let mut g = self.write();
        // Remember the failed fingerprint so the same broken tree is not
        // reloaded (and logged) at every poll.
        if fingerprint.is_some() {
            g.fingerprint = fingerprint;
        }
        g.last_error = Some(error.clone());
        Reload::Failed(error)
    }

    /// The module tree directory (`--modules`); for git-backed
    /// environments the repository's address (credentials redacted).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The module tree directory on disk, `None` for git-backed
    /// environments (their code is the branches' commits).
    pub fn disk_dir(&self) -> Option<&Path> {
        match self.git {
            Some(_) => None,
            None => Some(&self.dir),
        }
    }

    /// The live tree with `env`'s staged code in place: what serving would
    /// be after `promote(env)` (`None` when nothing is staged for it).
    pub fn staged_tree(&self, env: &str) -> Option<Arc<ModuleTree>> {
        let g = self.read();
        let staged = g.staged.get(env)?.clone();
        Some(Arc::new(staged.apply(g.live.as_ref()?)))
    }

    /// Makes the staged code of a held environment live.
    pub fn promote(&self, env: &str) -> Result<String> {
        self.promote_expecting(env, None)
    }

    /// [`CodeManager::promote`], refused when the staged code is no longer
    /// `expect` (the code version a confirmation was given for: newer code
    /// was staged since).
    pub fn promote_expecting(&self, env: &str, expect: Option<&str>) -> Result<String> {
        let mut g = self.write();
        if !self.hold.contains(env) {
            anyhow::bail!(
                "environment `{env}` is not on hold: its code goes live as soon as it loads"
            );
        }
        let Some(live) = g.live.clone() else {
            anyhow::bail!("no module tree is loaded");
        };
        let Some(staged) = g.staged.get(env).cloned() else {
            anyhow::bail!(
                "nothing is staged for environment `{env}`: it already serves the newest code"
            );
        };
        let tree = staged.apply(&live);
        if let Some(want) = expect {
            let now = tree.env_code_version(env).unwrap_or_default();
            if now != want {
                return Err(troupe_base::error_code::error(
                    troupe_base::error_code::ErrorCode::Conflict,
                    format!(
                        "the code staged for `{env}` changed since it was shown ({:.12}, now {:.12}): nothing promoted; run `troupe env promote {env}` again to see the new changes",
                        want, now
                    ),
                ));
            }
        }
        g.staged.remove(env);
        // The identity catalogs carry and `env status` shows: site + env.
        let version = tree
            .env_code_version(env)
            .context("the promoted environment vanished")?;
        g.live = Some(Arc::new(tree));
        g.generation += 1;
        if let Some(c) = staged.commit {
            g.commits.insert(env.to_owned(), c);
            drop(g);
            if let Some(git) = &self.git {
                git.save_serving(|| self.read().commits.clone());
            }
        }
        Ok(version)
    }

    pub fn status(&self) -> CodeStatus {
        let g = self.read();
        CodeStatus {
            dir: self.dir.clone(),
            live_version: g.live.as_ref().map(|t| t.code_version().to_owned()),
            environments: g
                .live
                .as_ref()
                .map(|t| {
                    t.environments()
                        .filter_map(|e| Some((e.to_owned(), t.env_code_version(e)?)))
                        .collect()
                })
                .unwrap_or_default(),
            // The version it will serve once promoted, as catalogs carry it.
            staged: match &g.live {
                Some(t) => g
                    .staged
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.apply(t).env_code_version(k)?)))
                    .collect(),
                None => BTreeMap::new(),
            },
            hold: self.hold.iter().cloned().collect(),
            last_error: g.last_error.clone(),
            generation: g.generation,
            source: if self.git.is_some() { "git" } else { "dir" },
            commits: g.commits.clone(),
            staged_commits: g
                .staged
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.commit.clone()?)))
                .collect(),
            git: match (&self.git, &g.git) {
                (Some(src), Some(st)) => Some(src.status(st)),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    const SITE: &str =
        "default_environment = \"production\"\n\n[[node]]\nmatch = \"*\"\nrole = \"base\"\n";

    fn write_env(root: &Path, env: &str, motd: &str) {
        let e = root.join("environments").join(env);
        fs::create_dir_all(e.join("roles")).unwrap();
        fs::create_dir_all(e.join("profiles")).unwrap();
        fs::create_dir_all(e.join("data")).unwrap();
        fs::write(
            e.join("hierarchy.toml"),
            "[[level]]\nname = \"common\"\npath = \"common.toml\"\n",
        )
        .unwrap();
        fs::write(e.join("roles/base.toml"), "include = [\"motd\"]\n").unwrap();
        fs::write(
            e.join("profiles/motd.toml"),
            format!("[file.\"/etc/motd\"]\ncontent = \"{motd}\\n\"\nmode = \"0644\"\n"),
        )
        .unwrap();
    }

    fn tree(dir: &Path) {
        fs::write(dir.join("site.toml"), SITE).unwrap();
        write_env(dir, "production", "prod v1");
        write_env(dir, "development", "dev v1");
    }

    /// The motd body `env` compiles to (the test trees' one file).
    pub(crate) fn motd(m: &CodeManager, env: &str) -> String {
        let t = m.current().unwrap();
        let opts = troupe_compiler::CompileOptions {
            environment: Some(env.into()),
            ..Default::default()
        };
        let cat = t
            .compile("web1.example.com", &serde_json::json!({}), &opts)
            .unwrap();
        let body = cat.contents.values().next().unwrap().bytes().unwrap();
        String::from_utf8(body).unwrap()
    }

    fn catalog_version(m: &CodeManager, env: &str) -> String {
        let opts = troupe_compiler::CompileOptions {
            environment: Some(env.into()),
            ..Default::default()
        };
        let t = m.current().unwrap();
        t.compile("web1.example.com", &serde_json::json!({}), &opts)
            .unwrap()
            .code_version
    }

    // mtime granularity: make sure a rewrite changes the fingerprint even
    // when it lands in the same clock tick.
    fn touch_later(p: &Path) {
        let f = fs::File::options().write(true).open(p).unwrap();
        let t = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        f.set_modified(t).unwrap();
    }

    #[test]
    fn picks_up_changes_and_keeps_the_last_good_tree() {
        let d = tempfile::tempdir().unwrap();
        tree(d.path());
        let m = CodeManager::new(d.path().into(), []);
        assert_eq!(motd(&m, "development"), "dev v1\n");
        assert_eq!(m.reload_if_changed(), Reload::Unchanged);

        write_env(d.path(), "development", "dev v2");
        touch_later(&d.path().join("environments/development/profiles/motd.toml"));
        assert!(matches!(m.reload_if_changed(), Reload::Swapped(_)));
        assert_eq!(motd(&m, "development"), "dev v2\n");

        // Broken TOML: the old tree keeps serving, the error is recorded,
        // and the same broken tree is not reloaded again and again.
        let p = d.path().join("environments/development/profiles/motd.toml");
        fs::write(&p, "[file.\"/etc/motd\"\ncontent = \n").unwrap();
        touch_later(&p);
        let Reload::Failed(err) = m.reload_if_changed() else {
            panic!("a broken tree must fail to load")
        };
        assert!(err.contains("motd.toml"), "{err}");
        assert_eq!(motd(&m, "development"), "dev v2\n");
        assert_eq!(m.status().last_error.as_deref(), Some(err.as_str()));
        assert_eq!(m.reload_if_changed(), Reload::Unchanged);

        // Fixed: swaps in and clears the error.
        write_env(d.path(), "development", "dev v3");
        touch_later(&p);
        assert!(matches!(m.reload_if_changed(), Reload::Swapped(_)));
        assert_eq!(motd(&m, "development"), "dev v3\n");
        assert_eq!(m.status().last_error, None);
    }

    #[test]
    fn held_environment_serves_promoted_code_only() {
        let d = tempfile::tempdir().unwrap();
        tree(d.path());
        let m = CodeManager::new(d.path().into(), ["production".to_string()]);
        write_env(d.path(), "production", "prod v2");
        write_env(d.path(), "development", "dev v2");
        touch_later(&d.path().join("environments/production/profiles/motd.toml"));
        touch_later(&d.path().join("environments/development/profiles/motd.toml"));
        assert!(matches!(m.reload_if_changed(), Reload::Swapped(_)));
        // Development moves at once; production waits for promotion.
        assert_eq!(motd(&m, "development"), "dev v2\n");
        assert_eq!(motd(&m, "production"), "prod v1\n");
        let st = m.status();
        assert!(st.staged.contains_key("production"));
        assert!(m.promote("development").is_err());
        let promoted = m.promote("production").unwrap();
        assert_eq!(motd(&m, "production"), "prod v2\n");
        // One identity for a code generation (issue 16 item 4): what was
        // staged, what promote printed, what status serves and what the
        // catalogs carry are the same string.
        assert_eq!(st.staged["production"], promoted);
        assert_eq!(m.status().environments["production"], promoted);
        assert_eq!(catalog_version(&m, "production"), promoted);
        assert!(m.status().staged.is_empty());
        let again = m.promote("production").unwrap_err().to_string();
        assert!(again.contains("nothing is staged"), "{again}");
    }

    /// Issue 19 item 4: a promotion confirmed for one staged version is
    /// refused when other code was staged since; staged_tree is what
    /// promote would serve.
    #[test]
    fn promote_refuses_code_staged_after_the_confirmation() {
        let d = tempfile::tempdir().unwrap();
        tree(d.path());
        let m = CodeManager::new(d.path().into(), ["production".to_string()]);
        assert!(m.staged_tree("production").is_none());
        let p = d.path().join("environments/production/profiles/motd.toml");
        write_env(d.path(), "production", "prod v2");
        touch_later(&p);
        assert!(matches!(m.reload_if_changed(), Reload::Swapped(_)));
        let shown = m.status().staged["production"].clone();
        let staged = m.staged_tree("production").unwrap();
        assert_eq!(staged.env_code_version("production").unwrap(), shown);
        // Newer code is staged before the operator says yes.
        write_env(d.path(), "production", "prod v3");
        let f = fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(10))
            .unwrap();
        assert!(matches!(m.reload_if_changed(), Reload::Swapped(_)));
        let e = m
            .promote_expecting("production", Some(&shown))
            .unwrap_err()
            .to_string();
        assert!(e.contains("changed since it was shown"), "{e}");
        assert_eq!(motd(&m, "production"), "prod v1\n", "nothing promoted");
        let now = m.status().staged["production"].clone();
        assert_eq!(m.promote_expecting("production", Some(&now)).unwrap(), now);
        assert_eq!(motd(&m, "production"), "prod v3\n");
    }

    #[test]
    fn a_missing_tree_refuses_catalogs_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let m = CodeManager::new(d.path().join("nope"), []);
        let err = m.current().unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }
}
