//! Hostile input, paths: a `--root` whose directories are links out of it
//! (absolute and relative, at any depth) must never carry a write, a
//! removal, a purge or a rollback outside the root, while Debian's own
//! absolute links (`/var/run -> /run`) resolve inside it; and one path
//! spelled several ways, or claimed by a file and a directory, is refused
//! by the compiler (naming both places) and by the agent's catalog check.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use troupe_catalog::report::{Report, Status};
use troupe_catalog::{Catalog, Ensure, Kind, Resource};
use troupe_tests::{agent_bin, tally};

fn res(kind: Kind) -> Resource {
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

fn file(c: &mut Catalog, path: &str, ensure: Ensure, body: &[u8]) -> Resource {
    let content = Some(c.add_content(body));
    res(Kind::File {
        path: path.into(),
        ensure,
        content,
        mode: Some(0o644),
        owner: None,
        group: None,
        validate: None,
    })
}

fn dir(path: &str, ensure: Ensure, purge: bool) -> Resource {
    res(Kind::Directory {
        path: path.into(),
        ensure,
        mode: Some(0o755),
        owner: None,
        group: None,
        purge,
    })
}

fn link(path: &str, ensure: Ensure, target: &str) -> Resource {
    res(Kind::Symlink {
        path: path.into(),
        ensure,
        target: target.into(),
    })
}

struct Env {
    _t: tempfile::TempDir,
    base: PathBuf,
}

impl Env {
    fn new() -> Env {
        let t = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir_all(base.join("root/etc")).unwrap();
        std::fs::create_dir_all(base.join("root/run")).unwrap();
        std::fs::create_dir_all(base.join("root/var")).unwrap();
        std::fs::create_dir_all(base.join("outside/sub")).unwrap();
        std::fs::write(base.join("outside/victim"), b"victim\n").unwrap();
        std::fs::write(base.join("outside/sub/victim"), b"victim\n").unwrap();
        Env { _t: t, base }
    }
    fn root(&self) -> PathBuf {
        self.base.join("root")
    }
    fn outside(&self) -> PathBuf {
        self.base.join("outside")
    }
    /// Every file under outside/, with its content (links as their target).
    fn snapshot_outside(&self) -> Vec<(PathBuf, Vec<u8>)> {
        fn walk(p: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for n in names {
                let m = std::fs::symlink_metadata(&n).unwrap();
                if m.is_dir() {
                    out.push((n.clone(), b"<dir>".to_vec()));
                    walk(&n, out);
                } else if m.file_type().is_symlink() {
                    let t = std::fs::read_link(&n).unwrap();
                    out.push((n, t.to_string_lossy().as_bytes().to_vec()));
                } else {
                    out.push((n.clone(), std::fs::read(&n).unwrap()));
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.outside(), &mut out);
        out
    }
    fn run(&self, c: &Catalog) -> (i32, Report, String) {
        let cat = self.base.join("catalog.json");
        std::fs::write(&cat, c.to_canonical_json()).unwrap();
        let out = Command::new(agent_bin())
            .args(["run", "--once", "--output", "json"])
            .args(["--catalog", cat.to_str().unwrap()])
            .args(["--root", self.root().to_str().unwrap()])
            .args(["--state", self.base.join("state").to_str().unwrap()])
            .args(["--facts-dir", "/nonexistent"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report: Report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON report ({e}); stdout {}; stderr {stderr}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        (out.status.code().unwrap_or(-1), report, stderr)
    }
}

/// Each way a parent inside the root can point out of it, with the
/// resource that tries to act through it.
#[test]
fn links_out_of_the_root_never_carry_a_change_outside() {
    // (what, links to make inside the root, resource builder)
    type Build = fn(&mut Catalog) -> Resource;
    type Case = (&'static str, Vec<(&'static str, String)>, Build);
    let cases: Vec<Case> = vec![
        (
            "file under an absolute link to a directory outside",
            vec![("etc/abs", "@OUT@".into())],
            |c| file(c, "/etc/abs/victim", Ensure::Present, b"pwned\n"),
        ),
        (
            "file under a relative link climbing out",
            vec![("etc/rel", "../../outside".into())],
            |c| file(c, "/etc/rel/victim", Ensure::Present, b"pwned\n"),
        ),
        (
            "new file two levels under an absolute link",
            vec![("etc/abs", "@OUT@".into())],
            |c| file(c, "/etc/abs/sub/new", Ensure::Present, b"pwned\n"),
        ),
        (
            "file under a link to a link to outside",
            vec![
                ("etc/hop2", "@OUT@".into()),
                ("etc/hop1", "/etc/hop2".into()),
            ],
            |c| file(c, "/etc/hop1/victim", Ensure::Present, b"pwned\n"),
        ),
        (
            "a link whose parent is a link outside",
            vec![("etc/abs", "@OUT@".into())],
            |_| link("/etc/abs/victim", Ensure::Present, "/x"),
        ),
        (
            "a directory whose parent is a link outside",
            vec![("etc/abs", "@OUT@".into())],
            |_| dir("/etc/abs/newdir", Ensure::Present, false),
        ),
        (
            "file absent through a link outside",
            vec![("etc/abs", "@OUT@".into())],
            |c| file(c, "/etc/abs/victim", Ensure::Absent, b""),
        ),
        (
            "link absent through a relative link outside",
            vec![("etc/rel", "../../outside".into())],
            |_| link("/etc/rel/victim", Ensure::Absent, "/x"),
        ),
        (
            "directory absent through a link outside",
            vec![("etc/abs", "@OUT@".into())],
            |_| dir("/etc/abs/sub", Ensure::Absent, false),
        ),
        (
            "purge of a directory reached through a link outside",
            vec![("etc/abs", "@OUT@".into())],
            |_| dir("/etc/abs/sub", Ensure::Present, true),
        ),
        (
            "a deep parent that is a link outside",
            vec![("var/lib", "@OUT@".into())],
            |c| file(c, "/var/lib/sub/victim", Ensure::Present, b"pwned\n"),
        ),
    ];
    for (what, links, build) in cases {
        let env = Env::new();
        let out = env.outside();
        for (at, to) in &links {
            let to = to.replace("@OUT@", out.to_str().unwrap());
            symlink(&to, env.root().join(at)).unwrap();
        }
        let before = env.snapshot_outside();
        let mut c = Catalog::new("web1", "production", "");
        let r = build(&mut c);
        c.resources.push(r);
        let (_code, report, stderr) = env.run(&c);
        assert_eq!(
            env.snapshot_outside(),
            before,
            "{what}: something outside the root changed; report {report:?}; stderr {stderr}"
        );
        // The resource either failed (the parent does not resolve to a
        // directory inside the root) or acted inside the root only.
        let st = report.resources[0].status;
        assert!(
            st == Status::Failed || st == Status::Changed || st == Status::Unchanged,
            "{what}: {report:?}"
        );
        tally::hostile("root-escape", what, true);
    }
}

/// Debian images hold absolute links such as /var/run -> /run: they
/// resolve inside the root, and rollback restores through them.
#[test]
fn absolute_links_inside_an_image_resolve_inside_the_root() {
    let env = Env::new();
    symlink("/run", env.root().join("var/run")).unwrap();
    std::fs::write(env.root().join("run/old.pid"), b"1\n").unwrap();
    let mut c = Catalog::new("web1", "production", "");
    let r = file(&mut c, "/var/run/app.pid", Ensure::Present, b"42\n");
    c.resources.push(r);
    let r = file(&mut c, "/var/run/old.pid", Ensure::Present, b"2\n");
    c.resources.push(r);
    let (code, report, stderr) = env.run(&c);
    assert_eq!(code, 2, "{report:?} {stderr}");
    assert_eq!(
        std::fs::read(env.root().join("run/app.pid")).unwrap(),
        b"42\n"
    );
    assert_eq!(
        std::fs::read(env.root().join("run/old.pid")).unwrap(),
        b"2\n"
    );
    // The link itself is untouched.
    assert_eq!(
        std::fs::read_link(env.root().join("var/run")).unwrap(),
        Path::new("/run")
    );
    // Second run: nothing to do.
    let (code, _, _) = env.run(&c);
    assert_eq!(code, 0);

    // Rollback of the first run restores inside the root...
    let st = env.base.join("state");
    let rb = |run: &str| {
        Command::new(agent_bin())
            .args(["rollback", run, "--state", st.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = rb(&report.run_id);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read(env.root().join("run/old.pid")).unwrap(),
        b"1\n"
    );
    assert!(!env.root().join("run/app.pid").exists());

    // ...and refuses when a parent has since become a link out of the root.
    let (code, report, stderr) = env.run(&c);
    assert_eq!(code, 2, "{report:?} {stderr}");
    std::fs::remove_dir_all(env.root().join("run")).unwrap();
    symlink(env.outside(), env.root().join("run")).unwrap();
    std::fs::write(env.outside().join("old.pid"), b"outside\n").unwrap();
    let before = env.snapshot_outside();
    let o = rb(&report.run_id);
    assert!(!o.status.success(), "{o:?}");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("not restoring"), "{text}");
    assert_eq!(env.snapshot_outside(), before);
    tally::hostile(
        "root-escape",
        "rollback through a parent that became a link out of the root",
        true,
    );
}

/// One path, several spellings or several file-like types: the agent's
/// catalog check refuses the catalog before touching anything.
#[test]
fn agent_refuses_one_path_claimed_twice() {
    type Build = fn(&mut Catalog) -> Vec<Resource>;
    let cases: Vec<(&str, Build, &str)> = vec![
        (
            "file[/etc/x] and file[/etc//x]",
            |c| {
                vec![
                    file(c, "/etc/x", Ensure::Present, b"a"),
                    file(c, "/etc//x", Ensure::Present, b"b"),
                ]
            },
            "not normal",
        ),
        (
            "file[/etc/./x]",
            |c| vec![file(c, "/etc/./x", Ensure::Present, b"b")],
            "not normal",
        ),
        (
            "file[/etc/x/]",
            |c| vec![file(c, "/etc/x/", Ensure::Present, b"b")],
            "not normal",
        ),
        (
            "file[/etc/x] and directory[/etc/x]",
            |c| {
                vec![
                    file(c, "/etc/x", Ensure::Present, b"a"),
                    dir("/etc/x", Ensure::Present, false),
                ]
            },
            "manage the same path",
        ),
        (
            "directory[/etc/x] and symlink[/etc/x]",
            |_| {
                vec![
                    dir("/etc/x", Ensure::Present, false),
                    link("/etc/x", Ensure::Present, "/y"),
                ]
            },
            "manage the same path",
        ),
    ];
    for (what, build, expect) in cases {
        let env = Env::new();
        let mut c = Catalog::new("web1", "production", "");
        let rs = build(&mut c);
        c.resources.extend(rs);
        let cat = env.base.join("catalog.json");
        std::fs::write(&cat, c.to_canonical_json()).unwrap();
        let out = Command::new(agent_bin())
            .args(["run", "--once", "--catalog", cat.to_str().unwrap()])
            .args(["--root", env.root().to_str().unwrap()])
            .args(["--state", env.base.join("state").to_str().unwrap()])
            .args(["--facts-dir", "/nonexistent"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(err.contains(expect), "{what}: {err}");
        assert!(!env.root().join("etc/x").exists(), "{what}: acted");
        tally::hostile("catalog-paths", &format!("agent: {what}"), true);
    }
}

fn modules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../modules")
}

fn copy_dir(from: &Path, to: &Path) {
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

/// The compiler refuses non-normal paths and a path claimed by two
/// file-like resources, naming both declarations.
#[test]
fn compiler_refuses_one_path_claimed_twice() {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../catalog/compiler/tests");
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tests.join("facts/debian12.json")).unwrap()).unwrap();
    let mut secrets = troupe_compiler::SecretKeys::new();
    for env in ["production", "development"] {
        let text = std::fs::read_to_string(tests.join(format!("keys/{env}.key"))).unwrap();
        secrets.insert_str(env, &text).unwrap();
    }
    let opts = troupe_compiler::CompileOptions {
        secrets,
        ..Default::default()
    };
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "file[/etc/x] next to file[/etc//x]",
            "[file.\"/etc/x\"]\ncontent = \"a\"\n\n[file.\"/etc//x\"]\ncontent = \"b\"\n",
            &["not normal", "\"/etc/x\""],
        ),
        (
            "file[/etc/./x]",
            "[file.\"/etc/./x\"]\ncontent = \"b\"\n",
            &["not normal"],
        ),
        (
            "file[/etc/x/]",
            "[file.\"/etc/x/\"]\ncontent = \"b\"\n",
            &["not normal"],
        ),
        (
            "file[/etc/x] next to directory[/etc/x]",
            "[file.\"/etc/x\"]\ncontent = \"a\"\n\n[directory.\"/etc/x\"]\n",
            &["same path as file[/etc/x]", "dup.toml:1", "dup.toml:4"],
        ),
        (
            "directory[/etc/x] next to symlink[/etc/x]",
            "[directory.\"/etc/x\"]\n\n[symlink.\"/etc/x\"]\ntarget = \"/y\"\n",
            &["same path as directory[/etc/x]", "dup.toml:1", "dup.toml:3"],
        ),
    ];
    for (what, profile, expect) in cases {
        let d = tempfile::tempdir().unwrap();
        copy_dir(&modules_dir(), d.path());
        let p = "environments/production";
        std::fs::write(d.path().join(format!("{p}/profiles/dup.toml")), profile).unwrap();
        std::fs::write(
            d.path().join(format!("{p}/roles/base.toml")),
            "include = [\"base\", \"dup\"]\n",
        )
        .unwrap();
        let err = match troupe_compiler::ModuleTree::load(d.path()) {
            Err(e) => e.to_string(),
            Ok(tree) => match tree.compile("mon2.example.com", &facts, &opts) {
                Err(e) => format!("{e} {}", e.location().unwrap_or_default()),
                Ok(_) => panic!("{what}: compiled"),
            },
        };
        for e in *expect {
            assert!(err.contains(e), "{what}: {err:?} lacks {e:?}");
        }
        tally::hostile("catalog-paths", &format!("compiler: {what}"), true);
    }
}
