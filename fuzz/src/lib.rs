//! # troupe-fuzz
//!
//! Owns the fuzz entry points for Troupe's parsers of untrusted input: the
//! CSR parser (troupe-pki), the module-tree loader and compiler
//! (troupe-compiler), the agent's catalog decoder (troupe-catalog) and the
//! signed command envelope decoder (troupe-command).
//!
//! Each function takes arbitrary bytes and must never panic: an error is
//! the expected answer to bad input. Where a parser accepts an input, the
//! function also checks a property that must hold for every accepted input
//! (canonical re-encoding, determinism), so the fuzzer finds wrong answers
//! as well as crashes. The libFuzzer binaries in `fuzz_targets/` call these
//! functions; `tests/tests/hostile_regressions.rs` feeds every committed
//! crash input (`fuzz/regressions/<target>/`) and seed
//! (`fuzz/corpus-seeds/<target>/`) to the very same functions on stable
//! Rust in the normal test suite.
//!
//! It must never write anywhere but its own temporary directory, nor
//! touch the network.

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::path::{Path, PathBuf};

/// Names of the targets (directories under `corpus-seeds/` and
/// `regressions/`), each matching a function of this crate.
pub const TARGETS: &[&str] = &["csr", "module_tree", "catalog", "envelope"];

/// Runs target `name` on `data` (for the regression test).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "csr" => csr(data),
        "module_tree" => module_tree(data),
        "catalog" => catalog(data),
        "envelope" => envelope(data),
        other => panic!("unknown fuzz target {other}"),
    }
}

/// The CSR parser and policy, as the CA runs it on a `SubmitCsr` body.
pub fn csr(data: &[u8]) {
    let Ok(c) = troupe_pki::csr::check_csr(data, "web1") else {
        return;
    };
    // Accepted: its facts must be consistent.
    assert_eq!(c.name, "web1");
    use troupe_pki::csr::MAX_CSR_BYTES;
    assert!(data.len() <= MAX_CSR_BYTES);
    let again = troupe_pki::csr::check_csr(data, "web1").expect("deterministic");
    assert_eq!(again.spki_sha256, c.spki_sha256);
    assert!(c.psk.as_ref().is_none_or(|p| p.len() <= 256));
}

/// The agent's catalog decoder (`Catalog::from_json`, which validates).
/// An accepted catalog must re-encode canonically: decoding its canonical
/// JSON gives the same catalog, the same bytes and the same hash.
pub fn catalog(data: &[u8]) {
    // The agent decodes with the streaming `LazyCatalog` (issue 20): it must
    // accept exactly what the whole-document decoder accepts, with the same
    // hash.
    let whole = troupe_catalog::Catalog::from_json(data);
    let lazy = troupe_catalog::LazyCatalog::from_slice(data, troupe_catalog::Spill::Memory);
    match (&whole, &lazy) {
        (Ok(c), Ok(l)) => assert_eq!(l.hash(), c.hash(), "streaming decoder: another hash"),
        (Err(_), Err(_)) => {}
        (w, l) => panic!(
            "decoders disagree: whole {:?}, streaming {:?}",
            w.as_ref().err(),
            l.as_ref().err()
        ),
    }
    let Ok(cat) = whole else {
        return;
    };
    let canon = cat.to_canonical_json();
    let again = troupe_catalog::Catalog::from_json(&canon)
        .expect("the canonical JSON of an accepted catalog must be accepted");
    assert_eq!(
        again.to_canonical_json(),
        canon,
        "canonical JSON not stable"
    );
    assert_eq!(again.hash(), cat.hash());
    let _ = cat.sensitive_ids();
}

/// The signed command envelope decoder (`SignedCommand::from_wire`) and
/// the body decoder (`Command::decode`). The encoding is unambiguous: an
/// accepted input re-encodes to exactly the same bytes.
pub fn envelope(data: &[u8]) {
    if let Ok(sc) = troupe_command::SignedCommand::from_wire(data) {
        assert_eq!(sc.to_wire(), data, "wire form is not canonical");
        assert_eq!(
            sc.command().encode().expect("a decoded command re-encodes"),
            sc.body()
        );
    }
    if let Ok(cmd) = troupe_command::envelope::Command::decode(data) {
        assert_eq!(
            cmd.encode().expect("a decoded command re-encodes"),
            data,
            "body encoding is not canonical"
        );
    }
}

/// The files of the small module tree [`module_tree`] starts from; the
/// first input byte picks one of them, the rest replaces its content.
pub const TREE_FILES: &[(&str, &str)] = &[
    (
        "site.toml",
        r#"default_environment = "production"
zones = 3

[[node]]
match = "web*"
role = "web"

[[node]]
regex = '^db[0-9]+$'
role = "base"
when = "node.zone is defined and node.zone == 1"

[[node]]
match = "*"
role = "base"
"#,
    ),
    (
        "environments/production/hierarchy.toml",
        r#"[[level]]
name = "node"
path = "nodes/{{ node.certname }}.toml"

[[level]]
name = "os"
path = "os/{{ facts.os.family }}.toml"

[[level]]
name = "common"
path = "common.toml"
"#,
    ),
    (
        "environments/production/data/common.toml",
        r#"[motd]
banner = "Welcome"

[www]
pages = ["index", "about"]
"#,
    ),
    (
        "environments/production/data/nodes/web1.toml",
        "[motd]\nbanner = \"Hello web1\"\n",
    ),
    (
        "environments/production/roles/web.toml",
        "description = \"web\"\ninclude = [\"motd\", \"www\"]\n",
    ),
    (
        "environments/production/roles/base.toml",
        "include = [\"motd\"]\n",
    ),
    (
        "environments/production/profiles/motd.toml",
        r#"[params]
banner = "unset"

[file."/etc/motd"]
template = "motd.j2"
mode = "0644"
"#,
    ),
    (
        "environments/production/profiles/www.toml",
        r#"[params]
pages = { default = [], merge = "deep" }

[directory."/srv/www"]
mode = "0755"

[file."/srv/www/{{ item }}.html"]
for_each = "params.pages"
content = "<h1>{{ item }} on {{ node.certname }}</h1>\n"
mode = "0644"
require = ["directory[/srv/www]"]

[file."/srv/www/logo.txt"]
source = "logo.txt"

[package.nginx]
ensure = "installed"
when = "facts.os.family == 'Debian'"

[service.nginx]
ensure = "running"
subscribe = ["file[/srv/www/index.html]"]
"#,
    ),
    (
        "environments/production/templates/motd.j2",
        "{{ params.banner }} ({{ node.certname }}, role {{ node.role }})\n\
         {% for k in facts.os %}{{ k }} {% endfor %}\n",
    ),
    ("environments/production/files/logo.txt", "LOGO\n"),
];

/// The facts the tree target compiles with.
pub fn tree_facts() -> serde_json::Value {
    serde_json::json!({
        "hostname": "web1", "fqdn": "web1.example.com",
        "os": {"family": "Debian", "name": "Debian",
               "release": {"full": "12.5", "major": "12"}, "codename": "bookworm"},
        "kernel": {"name": "Linux", "release": "6.1.0"},
        "architecture": "x86_64", "processors": {"count": 2},
        "memory": {"total_bytes": 1073741824},
        "networking": {"ip": "10.0.0.4", "interfaces": {}},
        "uptime_seconds": 5
    })
}

/// Writes the pristine tree into `dir`.
pub fn write_tree(dir: &Path) {
    for (rel, text) in TREE_FILES {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("creating the fuzz tree");
        }
        std::fs::write(&p, text).expect("writing the fuzz tree");
    }
}

thread_local! {
    static TREE: RefCell<Option<(tempfile::TempDir, PathBuf)>> = const { RefCell::new(None) };
}

/// The module-tree loader and compiler: one file of a small valid tree is
/// replaced by the input (first byte: which file), then the tree is loaded
/// and, when it loads, every node name below is classified and compiled
/// (twice: compiling is deterministic). Errors are fine; panics are not.
pub fn module_tree(data: &[u8]) {
    let Some((&sel, content)) = data.split_first() else {
        return;
    };
    let (rel, original) = TREE_FILES[sel as usize % TREE_FILES.len()];
    TREE.with(|t| {
        let mut t = t.borrow_mut();
        let (_, root) = t.get_or_insert_with(|| {
            let d = tempfile::Builder::new()
                .prefix("troupe-fuzz-tree-")
                .tempdir()
                .expect("tempdir");
            let root = d.path().join("modules");
            write_tree(&root);
            (d, root)
        });
        let path = root.join(rel);
        std::fs::write(&path, content).expect("writing the fuzz input");
        let result = std::panic::catch_unwind(|| load_and_compile(root));
        // Restore before anything else, so the next input starts clean.
        std::fs::write(&path, original).expect("restoring the fuzz tree");
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
}

fn load_and_compile(root: &Path) {
    let Ok(tree) = troupe_compiler::ModuleTree::load(root) else {
        return;
    };
    let facts = tree_facts();
    let opts = troupe_compiler::CompileOptions::default();
    for node in ["web1", "db1", "db4", "other.example.com"] {
        let _ = tree.classify(node, &opts.extensions, &facts);
        let a = tree.compile(node, &facts, &opts);
        if let Ok(a) = a {
            a.validate()
                .expect("the compiler produced a catalog that does not validate");
            let b = tree
                .compile(node, &facts, &opts)
                .expect("compiling is deterministic");
            assert_eq!(
                a.to_canonical_json(),
                b.to_canonical_json(),
                "compiling is not deterministic"
            );
            // What the master serves, the agent must accept.
            troupe_catalog::Catalog::from_json(&a.to_canonical_json())
                .expect("the agent refuses a catalog the compiler produced");
        }
    }
}

/// Every file in `dir` (sorted), for the regression test and the seeds.
pub fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    v.sort();
    v.into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pristine_tree_compiles() {
        let d = tempfile::tempdir().unwrap();
        super::write_tree(d.path());
        let tree = troupe_compiler::ModuleTree::load(d.path()).unwrap();
        let opts = troupe_compiler::CompileOptions::default();
        let cat = tree.compile("web1", &super::tree_facts(), &opts).unwrap();
        assert!(cat.resources.len() >= 6, "{}", cat.to_pretty_json());
    }
}
