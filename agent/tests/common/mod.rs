//! Helpers for the agent's real-system tests: build catalogs with the model,
//! run the real `troupe-agent` binary against a temp root and state dir.
#![allow(dead_code)]

pub mod acl;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use troupe_catalog::report::{Report, Status};
use troupe_catalog::{Catalog, Ensure, Kind, Resource, ResourceId};

pub const BIN: &str = env!("CARGO_BIN_EXE_troupe-agent");

pub struct Env {
    pub dir: tempfile::TempDir,
}

/// Copies host file `p` to the same path inside `root` (following links,
/// with `/bin`, `/lib` spelled through `/usr` as on a merged-/usr host).
fn copy_into(root: &std::path::Path, p: &std::path::Path) {
    let real = std::fs::canonicalize(p).unwrap();
    for target in [p.to_path_buf(), real.clone()] {
        let rel = target.strip_prefix("/").unwrap();
        let rel = match rel.components().next().and_then(|c| c.as_os_str().to_str()) {
            Some("bin" | "lib" | "lib64" | "sbin") => std::path::Path::new("usr").join(rel),
            _ => rel.to_path_buf(),
        };
        let dst = root.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        if !dst.exists() {
            std::fs::copy(&real, &dst).unwrap();
        }
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        Env { dir }.with_userland()
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    /// Gives the root a minimal userland (the host's `sh`, `echo`, `true`,
    /// `false`, `sleep`, `touch`, `env` and the shared libraries they load),
    /// so exec resources, which run inside the root through `chroot`, have
    /// something to run.
    pub fn with_userland(self) -> Env {
        let root = self.root();
        for d in ["usr/bin", "usr/lib", "usr/lib64"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (link, target) in [
            ("bin", "usr/bin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            let _ = std::os::unix::fs::symlink(target, root.join(link));
        }
        for prog in [
            "sh", "dash", "echo", "true", "false", "sleep", "touch", "env", "cat",
        ] {
            let host = PathBuf::from("/usr/bin").join(prog);
            if !host.exists() {
                continue;
            }
            copy_into(&root, &host);
            let ldd = std::process::Command::new("ldd")
                .arg(&host)
                .output()
                .unwrap();
            for line in String::from_utf8_lossy(&ldd.stdout).lines() {
                // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
                // "/lib64/ld-linux-x86-64.so.2 (0x...)"
                let path = line
                    .split("=>")
                    .last()
                    .and_then(|r| r.split_whitespace().next())
                    .filter(|p| p.starts_with('/'));
                if let Some(p) = path {
                    copy_into(&root, std::path::Path::new(p));
                }
            }
        }
        self
    }
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    /// Host path of a catalog path inside the root.
    pub fn p(&self, path: &str) -> PathBuf {
        self.root().join(path.trim_start_matches('/'))
    }
    pub fn write_catalog(&self, c: &Catalog) -> PathBuf {
        let p = self.dir.path().join("catalog.json");
        std::fs::write(&p, c.to_canonical_json()).unwrap();
        p
    }
    /// `troupe-agent run --once --output json` with extra args.
    pub fn run(&self, c: &Catalog, extra: &[&str]) -> (i32, Report, Output) {
        let cat = self.write_catalog(c);
        self.run_with(&["--catalog", cat.to_str().unwrap()], extra)
    }
    pub fn run_with(&self, source: &[&str], extra: &[&str]) -> (i32, Report, Output) {
        let out = self.cmd(&["run", "--once", "--output", "json"], source, extra);
        let code = out.status.code().unwrap_or(-1);
        let report: Report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); exit {code}; stdout {}; stderr {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, report, out)
    }
    pub fn cmd(&self, a: &[&str], b: &[&str], c: &[&str]) -> Output {
        self.command(a).args(b).args(c).output().unwrap()
    }
    /// `troupe-agent ARGS --root ROOT --state STATE --facts-dir /nonexistent`,
    /// not started yet (for runs a test spawns and kills).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .args(["--root", self.root().to_str().unwrap()])
            .args(["--state", self.state().to_str().unwrap()])
            .args(["--facts-dir", "/nonexistent"]);
        c
    }
    /// `troupe-agent run --once --output quiet --catalog CAT`, started and
    /// not waited for (for runs a test pauses, kills or races).
    pub fn spawn_quiet_run(&self, cat: &Path) -> std::process::Child {
        let cat = cat.to_str().unwrap();
        self.command(&["run", "--once", "--output", "quiet", "--catalog", cat])
            .spawn()
            .unwrap()
    }
    /// Runs another subcommand (rollback, disable, enable) with --state.
    pub fn sub(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .args(["--state", self.state().to_str().unwrap()])
            .output()
            .unwrap()
    }
}

pub fn res(kind: Kind) -> Resource {
    Resource {
        id: kind.id(),
        kind,
        requires: Default::default(),
        notify: vec![],
        sensitive: false,
        source: None,
        tags: Default::default(),
        noop: false,
    }
}

pub fn dir(path: &str, mode: u32) -> Resource {
    res(Kind::Directory {
        path: path.into(),
        ensure: Ensure::Present,
        mode: Some(mode),
        owner: None,
        group: None,
        purge: false,
    })
}

pub fn file(c: &mut Catalog, path: &str, body: &[u8], mode: u32) -> Resource {
    let content = Some(c.add_content(body));
    res(Kind::File {
        path: path.into(),
        ensure: Ensure::Present,
        content,
        mode: Some(mode),
        owner: None,
        group: None,
        validate: None,
    })
}

pub fn link(path: &str, target: &str) -> Resource {
    res(Kind::Symlink {
        path: path.into(),
        ensure: Ensure::Present,
        target: target.into(),
    })
}

pub fn exec(name: &str, argv: &[&str]) -> Resource {
    res(Kind::Exec {
        name: name.into(),
        command: argv.iter().map(|s| s.to_string()).collect(),
        cwd: None,
        environment: Default::default(),
        user: None,
        timeout: None,
        creates: None,
        onlyif: None,
        unless: None,
        refreshonly: false,
        returns: vec![],
    })
}

pub fn id(kind: &str, title: &str) -> ResourceId {
    ResourceId::new(kind, title)
}

pub fn status_of<'a>(r: &'a Report, rid: &str) -> &'a troupe_catalog::report::ResourceReport {
    r.resources
        .iter()
        .find(|x| x.id.0 == rid)
        .unwrap_or_else(|| panic!("{rid} not in report"))
}

pub fn all_unchanged(r: &Report) -> bool {
    r.resources.iter().all(|x| x.status == Status::Unchanged)
}

pub fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

pub fn new_catalog() -> Catalog {
    Catalog::new("test.example", "production", "v1")
}
