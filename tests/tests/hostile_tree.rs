//! Hostile input, end to end: a module tree that tries to read files
//! outside itself (path traversal in file sources, templates and data
//! paths, absolute names, symlinks out, includes from templates) and facts
//! that steer a data path outside it, all through a real master serving
//! the tree. A tree that tries is refused when it loads (the operator sees
//! why in `troupe env status`, the previous tree keeps serving, agents get
//! the same catalog as before) or, when the attempt is only visible at
//! compile time, the node's catalog is refused with the reason; the file
//! outside is never read into anything served or logged.

mod hostile_common;

use hostile_common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;
use troupe_tests::{Master, tally, wait_until};

/// Content of the file outside the tree that every case tries to reach.
const MARKER: &str = "OUTSIDE-MARKER-7f3a9c: the tree must never read this";

fn env_status(m: &Master) -> serde_json::Value {
    let resp = troupe_master::admin::call(&m.data, &troupe_master::admin::AdminRequest::EnvStatus)
        .expect("admin socket")
        .expect("master running");
    assert!(resp.ok, "{:?}", resp.error);
    resp.result.expect("result")["code"].clone()
}

/// Moves a file's mtime forward so the master's poll sees the change
/// within one clock tick.
fn touch_later(p: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(p) {
        let _ = f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5));
    }
}

/// How a hostile tree is expected to be refused.
enum Expect {
    /// The tree does not load; `env status` shows this.
    Load(&'static str),
    /// The tree loads; web1's catalog is refused with this.
    Compile(&'static str),
}

struct Case {
    what: &'static str,
    /// File replaced (relative to the production environment) and its new
    /// content, or a symlink to make there.
    path: &'static str,
    change: Change,
    expect: Expect,
}

enum Change {
    Text(String),
    SymlinkTo(PathBuf),
}

/// Applies `case`, checks the refusal, then restores the tree and waits
/// until it serves again.
async fn check(m: &Master, modules: &Path, outside: &Path, case: Case, good_hash: &str) {
    let env = modules.join("environments/production");
    let target = env.join(case.path);
    let original = std::fs::read(&target).ok();
    let gen_before = env_status(m)["generation"].as_u64().unwrap();
    let version_before = env_status(m)["live_version"].clone();
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    let _ = std::fs::remove_file(&target);
    match &case.change {
        Change::Text(t) => {
            std::fs::write(&target, t).unwrap();
            touch_later(&target);
        }
        Change::SymlinkTo(to) => {
            std::os::unix::fs::symlink(to, &target).unwrap();
            touch_later(&env.join("hierarchy.toml"));
        }
    }
    let web1 = m.agent_channel("web1").await.unwrap();
    match case.expect {
        Expect::Load(needle) => {
            wait_until(Duration::from_secs(15), case.what, || {
                env_status(m)["last_error"].is_string()
            });
            let st = env_status(m);
            let err = st["last_error"].as_str().unwrap();
            assert!(
                err.contains(needle),
                "{}: {needle:?} not in {err}",
                case.what
            );
            assert!(!err.contains(MARKER), "{}: {err}", case.what);
            assert_eq!(st["live_version"], version_before, "{}", case.what);
            assert_eq!(st["generation"].as_u64().unwrap(), gen_before);
            // Agents are served the catalog of the last good tree.
            let cat = get_catalog(&web1, &facts("web1")).await.unwrap();
            assert_eq!(cat.hash(), good_hash, "{}", case.what);
        }
        Expect::Compile(needle) => {
            wait_until(Duration::from_secs(15), case.what, || {
                env_status(m)["generation"].as_u64().unwrap() > gen_before
                    || env_status(m)["last_error"].is_string()
            });
            let st = env_status(m);
            assert!(
                st["last_error"].is_null(),
                "{}: expected the tree to load: {st}",
                case.what
            );
            let s = get_catalog(&web1, &facts("web1")).await.unwrap_err();
            assert_status(&s, Code::FailedPrecondition, needle, case.what);
            assert!(!s.message().contains(MARKER), "{}: {s:?}", case.what);
        }
    }
    assert!(
        !m.log().contains(MARKER),
        "{}: the master logged it",
        case.what
    );
    tally::hostile("path-traversal", case.what, true);

    // Restore and wait until the good tree serves again.
    let _ = std::fs::remove_file(&target);
    if let Some(o) = original {
        std::fs::write(&target, o).unwrap();
        touch_later(&target);
    } else {
        touch_later(&env.join("hierarchy.toml"));
    }
    let gen_now = env_status(m)["generation"].as_u64().unwrap();
    wait_until(
        Duration::from_secs(15),
        "the good tree to serve again",
        || {
            let st = env_status(m);
            st["last_error"].is_null() && st["generation"].as_u64().unwrap() > gen_now
        },
    );
    let cat = get_catalog(&web1, &facts("web1")).await.unwrap();
    assert_eq!(cat.hash(), good_hash, "after restoring from {}", case.what);
    let _ = outside;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_reaching_outside_itself_is_refused_and_the_last_good_one_serves() {
    let (m, modules, tree) = master_with_tree(&["web1", "db1"]);
    let outside = tree.path().join("outside");
    std::fs::create_dir_all(outside.join("templates")).unwrap();
    let secret = outside.join("secret.txt");
    std::fs::write(&secret, MARKER).unwrap();
    std::fs::write(outside.join("templates/evil.j2"), MARKER).unwrap();
    std::fs::write(
        outside.join("hierarchy.toml"),
        format!("# {MARKER}\n[[level]]\nname = \"x\"\npath = \"common.toml\"\n"),
    )
    .unwrap();
    let web1 = m.agent_channel("web1").await.unwrap();
    let good = get_catalog(&web1, &facts("web1")).await.unwrap();
    let good_hash = good.hash();
    assert!(
        String::from_utf8_lossy(&good.to_canonical_json()).contains("web1 private banner"),
        "the tree serves web1's data"
    );
    // From files/ (or templates/), this many `..` reach the tree's parent.
    let up = "../../../../outside/secret.txt";
    let www = |file_attr: &str| {
        format!(
            "[directory.\"/srv/www\"]\nmode = \"0755\"\n\n[file.\"/srv/www/index.html\"]\n\
             content = \"x\"\n\n[file.\"/srv/www/logo.txt\"]\n{file_attr}\nmode = \"0644\"\n"
        )
    };
    let cases = vec![
        Case {
            what: "file source ../../../../outside/secret.txt",
            path: "profiles/www.toml",
            change: Change::Text(www(&format!("source = \"{up}\""))),
            expect: Expect::Load("leaves its directory"),
        },
        Case {
            what: "file source /etc/shadow",
            path: "profiles/www.toml",
            change: Change::Text(www("source = \"/etc/shadow\"")),
            expect: Expect::Load("absolute path"),
        },
        Case {
            what: "file template ../../../../outside/secret.txt",
            path: "profiles/www.toml",
            change: Change::Text(www(&format!("template = \"{up}\""))),
            expect: Expect::Load("leaves its directory"),
        },
        Case {
            what: "file source with a backslash traversal",
            path: "profiles/www.toml",
            change: Change::Text(www("source = \"..\\\\..\\\\etc\\\\shadow\"")),
            expect: Expect::Load("backslash"),
        },
        Case {
            what: "file under files/ symlinked to a file outside the tree",
            path: "files/logo.txt",
            change: Change::SymlinkTo(secret.clone()),
            expect: Expect::Load("leads outside the module tree"),
        },
        Case {
            what: "templates/ subdirectory symlinked outside the tree",
            path: "templates/evil",
            change: Change::SymlinkTo(outside.join("templates")),
            expect: Expect::Load("leads outside the module tree"),
        },
        Case {
            what: "hierarchy.toml symlinked outside the tree",
            path: "hierarchy.toml",
            change: Change::SymlinkTo(outside.join("hierarchy.toml")),
            expect: Expect::Load("leads outside the module tree"),
        },
        Case {
            what: "data file symlinked to /etc/shadow",
            path: "data/os/Debian.toml",
            change: Change::SymlinkTo("/etc/shadow".into()),
            expect: Expect::Load("leads outside the module tree"),
        },
        Case {
            what: "template including ../../../../outside/secret.txt",
            path: "templates/motd.j2",
            change: Change::Text(format!("{{% include \"{up}\" %}}\n")),
            expect: Expect::Compile("does not compile"),
        },
        Case {
            what: "template including /etc/shadow",
            path: "templates/motd.j2",
            change: Change::Text("{% include \"/etc/shadow\" %}\n".into()),
            expect: Expect::Compile("does not compile"),
        },
    ];
    for case in cases {
        check(&m, &modules, &outside, case, &good_hash).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn facts_steering_a_data_path_outside_the_tree_are_refused() {
    let (m, _modules, tree) = master_with_tree(&["web1", "db1"]);
    let outside = tree.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(
        outside.join("x.toml"),
        format!("[motd]\nbanner = \"{MARKER}\"\n"),
    )
    .unwrap();
    let db1 = m.agent_channel("db1").await.unwrap();
    let fleet_before = fleet(&m);
    // The hierarchy has `os/{{ facts.os.family }}.toml`; the facts are the
    // agent's.
    for family in [
        "../../../../outside/x",
        "../nodes/web1",
        "/etc/shadow",
        "Debian/../../nodes/web1",
    ] {
        let mut f = facts("db1");
        f["os"]["family"] = family.into();
        let s = get_catalog(&db1, &f).await.unwrap_err();
        assert_status(&s, Code::FailedPrecondition, "does not compile", family);
        assert!(!s.message().contains(MARKER), "{s:?}");
        assert!(!s.message().contains("web1 private banner"), "{s:?}");
        tally::hostile(
            "path-traversal",
            &format!("facts os.family = {family:?} in a data path"),
            true,
        );
    }
    assert!(!m.log().contains(MARKER));
    // Refused compiles record no check-in.
    assert_eq!(fleet(&m), fleet_before);
    // db1's honest facts still compile.
    let cat = get_catalog(&db1, &facts("db1")).await.unwrap();
    assert_eq!(cat.node, "db1");
}
