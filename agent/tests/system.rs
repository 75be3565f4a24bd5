//! Real tools in a root: a .deb built here with dpkg-deb and installed with
//! dpkg --root; users and groups with shadow-utils --prefix; kill -9 in the
//! middle of a run.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use troupe_catalog::report::Status;
use troupe_catalog::{Ensure, Kind, Membership, PackageEnsure};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Builds troupe-hello_1.0_all.deb (one file) into `out`.
fn build_deb(work: &std::path::Path, out: &std::path::Path, version: &str) {
    let pkg = work.join(format!("pkg-{version}"));
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(pkg.join("usr/share/troupe-hello")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        format!(
            "Package: troupe-hello\nVersion: {version}\nArchitecture: all\nMaintainer: Troupe tests <t@example.invalid>\nDescription: test package\n"
        ),
    )
    .unwrap();
    std::fs::write(
        pkg.join("usr/share/troupe-hello/hello.txt"),
        format!("hello {version}\n"),
    )
    .unwrap();
    std::fs::create_dir_all(out).unwrap();
    let o = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&pkg)
        .arg(out.join(format!("troupe-hello_{version}_all.deb")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// An empty dpkg database in the test root and a package dir holding
/// troupe-hello 1.0; returns the package dir.
fn dpkg_root(env: &Env) -> std::path::PathBuf {
    let pkgs = env.dir.path().join("pkgs");
    build_deb(env.dir.path(), &pkgs, "1.0");
    for d in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
        "var/log",
    ] {
        std::fs::create_dir_all(env.root().join(d)).unwrap();
    }
    std::fs::write(env.root().join("var/lib/dpkg/status"), "").unwrap();
    std::fs::write(env.root().join("var/lib/dpkg/available"), "").unwrap();
    pkgs
}

#[test]
fn a_dpkg_lock_held_by_another_process_is_waited_for() {
    if !have("dpkg-deb") {
        eprintln!("dpkg-deb not installed; test needs Debian tools");
        return;
    }
    let env = Env::new();
    let pkgs = dpkg_root(&env);
    // What unattended-upgrades does: a write lock on dpkg's frontend lock
    // (fcntl record locks, as dpkg takes them), here held by this process
    // and released after a while by closing the file.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(env.root().join("var/lib/dpkg/lock-frontend"))
        .unwrap();
    let fl = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(&lock, nix::fcntl::FcntlArg::F_SETLK(&fl)).unwrap();
    let held = std::time::Duration::from_millis(1500);
    let release = std::thread::spawn(move || {
        std::thread::sleep(held);
        drop(lock);
    });
    let mut c = new_catalog();
    c.resources.push(res(Kind::Package {
        name: "troupe-hello".into(),
        ensure: PackageEnsure::Present,
    }));
    let t0 = std::time::Instant::now();
    let (code, r, _) = env.run(&c, &["--package-dir", pkgs.to_str().unwrap()]);
    release.join().unwrap();
    assert_eq!(code, 2, "the install waited for the lock: {r:?}");
    assert!(t0.elapsed() >= held, "{:?}", t0.elapsed());
    assert_eq!(
        std::fs::read(env.p("/usr/share/troupe-hello/hello.txt")).unwrap(),
        b"hello 1.0\n"
    );
}

#[test]
fn installs_and_removes_a_real_deb_in_a_dpkg_root() {
    if !have("dpkg-deb") {
        eprintln!("dpkg-deb not installed; test needs Debian tools");
        return;
    }
    let env = Env::new();
    let pkgs = dpkg_root(&env);
    let pd = pkgs.to_str().unwrap();
    let mut c = new_catalog();
    c.resources.push(res(Kind::Package {
        name: "troupe-hello".into(),
        ensure: PackageEnsure::Present,
    }));
    let (code, r, _) = env.run(&c, &["--package-dir", pd, "--noop"]);
    assert_eq!(code, 2, "{r:?}");
    assert!(!env.p("/usr/share/troupe-hello/hello.txt").exists());
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    assert_eq!(
        std::fs::read(env.p("/usr/share/troupe-hello/hello.txt")).unwrap(),
        b"hello 1.0\n"
    );
    let status = std::fs::read_to_string(env.root().join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: troupe-hello") && status.contains("install ok installed"));
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 0, "{r:?}");
    // A pinned version that is not installed yet: upgrade from the package dir.
    build_deb(env.dir.path(), &pkgs, "1.1");
    c.resources[0] = res(Kind::Package {
        name: "troupe-hello".into(),
        ensure: PackageEnsure::Version("1.1".into()),
    });
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    assert!(status_of(&r, "package[troupe-hello]").events[0].contains("1.0 -> 1.1"));
    assert_eq!(
        std::fs::read(env.p("/usr/share/troupe-hello/hello.txt")).unwrap(),
        b"hello 1.1\n"
    );
    // Remove.
    c.resources[0] = res(Kind::Package {
        name: "troupe-hello".into(),
        ensure: PackageEnsure::Absent,
    });
    let (code, r, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 2, "{r:?}");
    assert!(!env.p("/usr/share/troupe-hello/hello.txt").exists());
    let (code, _, _) = env.run(&c, &["--package-dir", pd]);
    assert_eq!(code, 0);
}

#[test]
fn users_and_groups_in_a_root_via_shadow_utils_prefix() {
    if !have("useradd") {
        eprintln!("useradd not installed");
        return;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::create_dir_all(env.p("/home")).unwrap();
    std::fs::write(env.p("/etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::write(env.p("/etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(env.p("/etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    std::fs::write(env.p("/etc/gshadow"), "root:*::\n").unwrap();
    let mut c = new_catalog();
    c.resources.push(res(Kind::Group {
        name: "web".into(),
        ensure: Ensure::Present,
        gid: Some(2500),
        system: false,
    }));
    c.resources.push(res(Kind::Group {
        name: "deploy".into(),
        ensure: Ensure::Present,
        gid: Some(2501),
        system: false,
    }));
    let mut u = res(Kind::User {
        name: "alice".into(),
        ensure: Ensure::Present,
        uid: Some(2600),
        group: Some("web".into()),
        groups: vec!["deploy".into()],
        membership: Membership::Minimum,
        home: Some("/home/alice".into()),
        shell: Some("/bin/sh".into()),
        comment: Some("Alice".into()),
        system: false,
        manage_home: false,
    });
    u.requires = vec![id("group", "web"), id("group", "deploy")].into();
    c.resources.push(u);
    c.resources.push(dir("/srv", 0o755));
    let mut f = file(&mut c, "/srv/owned", b"mine\n", 0o600);
    if let Kind::File { owner, group, .. } = &mut f.kind {
        *owner = Some("alice".into());
        *group = Some("web".into());
    }
    f.requires = vec![id("user", "alice"), id("directory", "/srv")].into();
    c.resources.push(f);
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    let passwd = std::fs::read_to_string(env.p("/etc/passwd")).unwrap();
    assert!(
        passwd.contains("alice:x:2600:2500:Alice:/home/alice:/bin/sh"),
        "{passwd}"
    );
    let group = std::fs::read_to_string(env.p("/etc/group")).unwrap();
    assert!(
        group.contains("web:x:2500:") && group.contains("deploy:x:2501:alice"),
        "{group}"
    );
    let m = std::fs::metadata(env.p("/srv/owned")).unwrap();
    assert_eq!((m.uid(), m.gid()), (2600, 2500));
    // The host's own accounts were not touched.
    let host = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(!host.contains("alice:x:2600"));
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r:?}");
    // Drift: shell changed by hand is repaired with usermod --prefix.
    let p = std::fs::read_to_string(env.p("/etc/passwd")).unwrap();
    std::fs::write(
        env.p("/etc/passwd"),
        p.replace(":/home/alice:/bin/sh", ":/home/alice:/bin/bash"),
    )
    .unwrap();
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2);
    assert!(status_of(&r, "user[alice]").events[0].contains("shell changed"));
    assert!(
        std::fs::read_to_string(env.p("/etc/passwd"))
            .unwrap()
            .contains(":/home/alice:/bin/sh")
    );

    // Group membership. By default (minimum) a group alice was added to by
    // hand (here: by a package's scripts) is kept, and a listed group she
    // was taken out of is given back without touching the other.
    let set_group_file = |from: &str, to: &str| {
        let g = std::fs::read_to_string(env.p("/etc/group")).unwrap();
        assert!(g.contains(from), "{g}");
        std::fs::write(env.p("/etc/group"), g.replace(from, to)).unwrap();
    };
    set_group_file("root:x:0:\n", "root:x:0:\nssl-cert:x:2502:alice\n");
    std::fs::write(
        env.p("/etc/gshadow"),
        std::fs::read_to_string(env.p("/etc/gshadow")).unwrap() + "ssl-cert:!::alice\n",
    )
    .unwrap();
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "a group added by hand is kept: {r:?}");
    set_group_file("deploy:x:2501:alice", "deploy:x:2501:");
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    assert!(
        status_of(&r, "user[alice]").events[0].contains("added to groups [deploy]"),
        "{r:?}"
    );
    let group = std::fs::read_to_string(env.p("/etc/group")).unwrap();
    assert!(
        group.contains("deploy:x:2501:alice") && group.contains("ssl-cert:x:2502:alice"),
        "{group}"
    );
    // membership = inclusive: exactly the listed groups.
    for r in &mut c.resources {
        if let Kind::User { membership, .. } = &mut r.kind {
            *membership = Membership::Inclusive;
        }
    }
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    assert!(
        status_of(&r, "user[alice]").events[0]
            .contains("groups changed [deploy,ssl-cert] -> [deploy]"),
        "{r:?}"
    );
    let group = std::fs::read_to_string(env.p("/etc/group")).unwrap();
    assert!(
        group.contains("deploy:x:2501:alice") && group.contains("ssl-cert:x:2502:\n"),
        "{group}"
    );
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r:?}");
}

/// `files` files under /data, each `body_lines` lines, with a commit point
/// (an exec that pauses) after every `pause_every` files, so kills land in
/// every phase.
fn paused_catalog(
    env: &Env,
    files: usize,
    body_lines: usize,
    pause_every: usize,
) -> (troupe_catalog::Catalog, Vec<(std::path::PathBuf, Vec<u8>)>) {
    let mut c = new_catalog();
    c.resources.push(dir("/data", 0o755));
    let mut expect = vec![];
    for i in 0..files {
        let body: Vec<u8> = format!("file {i}\n").repeat(body_lines).into_bytes();
        let path = format!("/data/f{i:05}.txt");
        let mut f = file(&mut c, &path, &body, 0o644);
        f.requires.push(id("directory", "/data"));
        c.resources.push(f);
        expect.push((env.p(&path), body));
        if i % pause_every == pause_every - 1 {
            let marker = format!("/data/pause{i}");
            let script = format!("sleep 0.05; : > \"{marker}\"");
            let mut e = exec(&format!("pause{i}"), &["/bin/sh", "-c", &script]);
            if let Kind::Exec { creates, .. } = &mut e.kind {
                *creates = Some(marker);
            }
            c.resources.push(e);
        }
    }
    (c, expect)
}

/// Large enough that a debug-build run takes a while.
fn big_catalog(env: &Env) -> (troupe_catalog::Catalog, Vec<(std::path::PathBuf, Vec<u8>)>) {
    paused_catalog(env, 1000, 800, 200)
}

#[test]
fn kill_9_mid_run_leaves_no_partial_file_and_next_run_converges() {
    let env = Env::new();
    let (c, expect) = big_catalog(&env);
    let cat = env.write_catalog(&c);
    let mut killed_mid_run = 0;
    for delay_ms in [30u64, 80, 150, 250, 400] {
        let mut child = env.spawn_quiet_run(&cat);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let st = child.wait().unwrap();
        if st.code().is_none() {
            killed_mid_run += 1;
        }
        // Every managed file is absent or complete, never partial.
        for (p, body) in &expect {
            if let Ok(b) = std::fs::read(p) {
                assert_eq!(
                    &b,
                    body,
                    "partial file {} after kill at {delay_ms} ms",
                    p.display()
                );
            }
        }
        // Reset so the next kill lands on a fresh run.
        if delay_ms != 400 {
            let _ = std::fs::remove_dir_all(env.p("/data"));
        }
    }
    assert!(killed_mid_run > 0, "no run was killed while running");
    let (code, r, _) = env.run(&c, &[]);
    assert!(code == 2 || code == 0, "{code}");
    assert!(r.resources.iter().all(|x| x.status != Status::Failed));
    for (p, body) in &expect {
        assert_eq!(&std::fs::read(p).unwrap(), body);
    }
    let temps: Vec<_> = std::fs::read_dir(env.p("/data"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("troupe-new"))
        .collect();
    assert!(temps.is_empty(), "temp files left: {}", temps.len());
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{:?}", r.counts());
    // Nor a half-created state database (the next start removes those).
    let creating: Vec<_> = std::fs::read_dir(env.state())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".creating-"))
        .collect();
    assert!(creating.is_empty(), "{creating:?}");
}

/// A run's rollback journal is streamed to `runs/` while it converges. A
/// run killed mid-way leaves a partial journal nothing names: what the kill
/// loses is exactly that run's journal and the old contents it saved (the
/// next run sweeps both, so the killed run's changes cannot be rolled
/// back); the runs stored before it are whole and still roll back.
#[test]
fn kill_9_mid_run_loses_only_its_own_journal() {
    let env = Env::new();
    // A stored run that changed /keep.txt: its old content is in the bucket.
    std::fs::write(env.p("/keep.txt"), "before\n").unwrap();
    let mut c1 = new_catalog();
    let f = file(&mut c1, "/keep.txt", b"after\n", 0o644);
    c1.resources.push(f);
    let (code, r1, _) = env.run(&c1, &[]);
    assert_eq!(code, 2, "{r1:?}");
    // Files with old content: each change saves a blob and a journal entry.
    let (c, expect) = paused_catalog(&env, 2000, 1, 100);
    std::fs::create_dir(env.p("/data")).unwrap();
    let old = |i: usize| format!("old {i}\n").into_bytes();
    for (i, (p, _)) in expect.iter().enumerate() {
        std::fs::write(p, old(i)).unwrap();
    }
    let cat = env.write_catalog(&c);
    let runs = env.state().join("runs");
    let journals = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&runs)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".journal.json"))
            .collect()
    };
    let stored = journals();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let mut child = env.spawn_quiet_run(&cat);
    // Killed as soon as its journal has reached the disk.
    let t = std::time::Instant::now();
    let partial = loop {
        let found = journals()
            .into_iter()
            .find(|p| !stored.contains(p) && std::fs::metadata(p).is_ok_and(|m| m.len() > 0));
        if let Some(p) = found {
            break p;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended unkilled"
        );
        assert!(
            t.elapsed().as_secs() < 60,
            "no journal streamed while converging"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let _ = child.kill(); // SIGKILL
    assert!(child.wait().unwrap().code().is_none(), "not killed mid-run");
    let text = std::fs::read(&partial).unwrap();
    assert!(
        text.starts_with(b"[{\"path\":"),
        "{}",
        String::from_utf8_lossy(&text[..40])
    );
    assert!(
        serde_json::from_slice::<serde_json::Value>(&text).is_err(),
        "a whole journal"
    );
    let changed: Vec<usize> = (0..expect.len())
        .filter(|&i| std::fs::read(&expect[i].0).unwrap() == expect[i].1)
        .collect();
    assert!(!changed.is_empty(), "no file changed before the kill");
    // The next run converges, sweeps the partial journal and the old
    // contents only it referred to.
    let (code, r3, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{:?}", r3.counts());
    assert!(!partial.exists(), "the killed run's journal is left");
    let bucket = env.state().join("bucket");
    for &i in &changed {
        let sha = troupe_catalog::sha256_hex(&old(i));
        assert!(
            !bucket.join(&sha[..2]).join(&sha).exists(),
            "blob of file {i} kept"
        );
    }
    // The stored runs are the first and the last, whole.
    let list = env.sub(&["rollback", "--list"]);
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    let ids: Vec<&str> = list.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(ids, [r1.run_id.as_str(), r3.run_id.as_str()], "{list}");
    assert!(
        list.contains(&format!(
            "{}\t{} file changes",
            r3.run_id,
            expect.len() - changed.len()
        )),
        "{list}"
    );
    // The run before the kill still rolls back; so does the one after.
    let out = env.sub(&["rollback", &r3.run_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.sub(&["rollback", &r1.run_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(env.p("/keep.txt")).unwrap(), b"before\n");
    for (i, (p, body)) in expect.iter().enumerate() {
        let want = if changed.contains(&i) {
            body.clone()
        } else {
            old(i)
        };
        assert_eq!(std::fs::read(p).unwrap(), want, "{}", p.display());
    }
}

/// The same catalog over files that already hold other content: a run
/// killed at any point (writing temp files, syncing, renaming, between
/// batches) leaves every file either its old content or its whole new one,
/// with its mode; the next run finishes the job.
#[test]
fn kill_9_mid_batch_leaves_each_file_old_or_whole_new() {
    let env = Env::new();
    // A commit point, with a pause, every 100 files.
    let (c, expect) = paused_catalog(&env, 400, 1, 100);
    let cat = env.write_catalog(&c);
    let old = |i: usize| format!("old {i}\n").into_bytes();
    std::fs::create_dir(env.p("/data")).unwrap();
    for (i, (p, _)) in expect.iter().enumerate() {
        std::fs::write(p, old(i)).unwrap();
    }
    let (mut killed_mid_run, mut mixed) = (0, 0);
    let t = std::time::Instant::now();
    // Later and later, until a kill lands after some renames (old and new
    // files side by side): how late depends on the build and the load.
    let mut delay_ms = 100u64;
    while mixed == 0 && delay_ms < 20_000 {
        delay_ms = delay_ms * 8 / 5;
        let mut child = env.spawn_quiet_run(&cat);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        if child.wait().unwrap().code().is_none() {
            killed_mid_run += 1;
        }
        let mut new = 0;
        for (i, (p, body)) in expect.iter().enumerate() {
            let b = std::fs::read(p).unwrap();
            if &b == body {
                new += 1;
                assert_eq!(mode_of(p), 0o644, "{}", p.display());
            } else {
                assert_eq!(
                    b,
                    old(i),
                    "neither old nor new: {} after kill at {delay_ms} ms",
                    p.display()
                );
            }
        }
        eprintln!("kill at {delay_ms} ms: {new} of {} files new", expect.len());
        if new > 0 && new < expect.len() {
            mixed += 1;
        }
    }
    assert!(killed_mid_run > 0, "no run was killed while running");
    assert!(
        mixed > 0,
        "no kill landed between the first and the last rename"
    );
    eprintln!("kills took {:?}", t.elapsed());
    let (code, r, _) = env.run(&c, &[]);
    assert!(code == 2 || code == 0, "{code}");
    assert!(r.resources.iter().all(|x| x.status != Status::Failed));
    for (p, body) in &expect {
        assert_eq!(&std::fs::read(p).unwrap(), body);
    }
    eprintln!("and the run after them {:?}", t.elapsed());
}

/// What a `kill -9` during redb's creation of `agent.redb` (the very first
/// run) left before the fix: the grown file, the header without redb's
/// magic number (written last), zeros after. Every later run refused it
/// ("Not a redb database: magic number mismatch") and the agent was stuck.
fn killed_state_db_creation(env: &Env) -> std::path::PathBuf {
    let scratch = tempfile::tempdir().unwrap();
    let real = scratch.path().join("real.redb");
    drop(redb::Database::create(&real).unwrap());
    let whole = std::fs::read(&real).unwrap();
    let mut left = vec![0u8; whole.len()];
    left[9..512].copy_from_slice(&whole[9..512]);
    std::fs::create_dir_all(env.state()).unwrap();
    let db = env.state().join("agent.redb");
    std::fs::write(&db, left).unwrap();
    db
}

#[test]
fn a_run_killed_while_creating_its_state_database_does_not_stick() {
    let env = Env::new();
    let mut c = new_catalog();
    let f = file(&mut c, "/motd", b"hello\n", 0o644);
    c.resources.push(f);
    // A creation killed before the magic number, and one killed right
    // after the temp file appeared (under the new scheme).
    killed_state_db_creation(&env);
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = env
        .state()
        .join(format!(".agent.redb.creating-{dead_pid}-00"));
    std::fs::write(&stale, b"").unwrap();
    let (code, r, out) = env.run(&c, &[]);
    assert_eq!(
        code,
        2,
        "{:?} {}",
        r.counts(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(env.p("/motd")).unwrap(), b"hello\n");
    assert!(!stale.exists(), "the killed creation's temp file is left");
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{:?}", r.counts());
}

#[test]
fn a_damaged_state_database_is_a_clear_error_and_kept() {
    let env = Env::new();
    let mut c = new_catalog();
    let f = file(&mut c, "/motd", b"hello\n", 0o644);
    c.resources.push(f);
    let (code, _, _) = env.run(&c, &[]);
    assert_eq!(code, 2);
    // Damaged later (not a half-created file): it holds reports.
    let db = env.state().join("agent.redb");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[..9].copy_from_slice(&[0; 9]);
    std::fs::write(&db, &bytes).unwrap();
    let out = env.cmd(
        &["run", "--once", "--output", "json"],
        &["--catalog", env.write_catalog(&c).to_str().unwrap()],
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    assert_ne!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.redb"), "{err}");
    assert!(err.contains("not a redb database"), "{err}");
    assert!(err.contains("move it aside"), "{err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "the database was changed"
    );
}
