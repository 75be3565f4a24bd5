//! Helpers for the agent's real-system tests: build catalogs with the model,
//! run the real `troupe-agent` binary against a temp root and state dir.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use troupe_catalog::report::{Report, Status};
use troupe_catalog::{Catalog, Ensure, Kind, Resource, ResourceId};

pub const BIN: &str = env!("CARGO_BIN_EXE_troupe-agent");

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("root")).unwrap();
        Env { dir }
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
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
        Command::new(BIN)
            .args(a)
            .args(["--root", self.root().to_str().unwrap()])
            .args(["--state", self.state().to_str().unwrap()])
            .args(["--facts-dir", "/nonexistent"])
            .args(b)
            .args(c)
            .output()
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
        requires: vec![],
        notify: vec![],
        sensitive: false,
        source: None,
        tags: vec![],
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
