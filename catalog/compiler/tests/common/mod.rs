//! Shared helpers for the compiler's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use troupe_compiler::{CompileOptions, ModuleTree, SecretKeys};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn modules() -> PathBuf {
    repo_root().join("modules")
}

pub fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

pub fn facts(name: &str) -> serde_json::Value {
    let p = tests_dir().join("facts").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
}

/// The test-only keys of the shipped example environments.
pub fn keys() -> SecretKeys {
    let mut k = SecretKeys::new();
    for env in ["production", "development"] {
        let text =
            std::fs::read_to_string(tests_dir().join("keys").join(format!("{env}.key"))).unwrap();
        k.insert_str(env, &text).unwrap();
    }
    k
}

/// The fleet the shipped roles are compiled against (tests/fleet.json):
/// db1-3 and web1-6 in production, a development db, an lb.
pub fn fleet() -> std::sync::Arc<troupe_compiler::FleetSnapshot> {
    std::sync::Arc::new(
        troupe_compiler::FleetSnapshot::from_file(&tests_dir().join("fleet.json"))
            .unwrap_or_else(|e| panic!("{}", e.render())),
    )
}

pub fn opts() -> CompileOptions {
    CompileOptions {
        secrets: keys(),
        fleet: Some(fleet()),
        ..Default::default()
    }
}

pub fn shipped() -> ModuleTree {
    ModuleTree::load(modules()).unwrap_or_else(|e| panic!("{}", e.render()))
}

/// Copies the shipped tree into a temp dir so a test can break it.
pub fn scratch_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&modules(), dir.path());
    dir
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

pub fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}
