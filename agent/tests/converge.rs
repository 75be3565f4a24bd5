//! Real-system converge tests: the real binary, a temp root, a real state dir.

mod common;
use common::*;
use std::os::unix::fs::MetadataExt;
use troupe_catalog::report::Status;
use troupe_catalog::{Catalog, Ensure, Kind};

/// /etc/app (0750) with two files, a link, and a file owned by a named user
/// from ROOT/etc/passwd.
fn base_catalog() -> Catalog {
    let mut c = new_catalog();
    c.resources.push(dir("/etc", 0o755));
    c.resources.push(dir("/etc/app", 0o750));
    let mut f1 = file(
        &mut c,
        "/etc/app/app.conf",
        b"port = 8080\nworkers = 4\n",
        0o640,
    );
    f1.requires.push(id("directory", "/etc/app"));
    if let Kind::File { owner, group, .. } = &mut f1.kind {
        *owner = Some("app".into());
        *group = Some("app".into());
    }
    c.resources.push(f1);
    let mut f2 = file(&mut c, "/etc/motd", b"managed by troupe\n", 0o644);
    f2.requires.push(id("directory", "/etc"));
    c.resources.push(f2);
    let mut l = link("/etc/app/current.conf", "/etc/app/app.conf");
    l.requires.push(id("file", "/etc/app/app.conf"));
    c.resources.push(l);
    c
}

fn seed_accounts(env: &Env) {
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::write(
        env.p("/etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\napp:x:4321:4322:App:/srv/app:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(env.p("/etc/group"), "root:x:0:\napp:x:4322:\n").unwrap();
}

#[test]
fn converges_root_then_second_run_has_zero_changes_and_drift_is_repaired() {
    let env = Env::new();
    seed_accounts(&env);
    let c = base_catalog();
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    assert_eq!(r.exit_code(), 2);
    assert!(!r.from_cache);
    assert_eq!(r.catalog_hash, c.hash());
    // Every file, mode, owner and link.
    assert_eq!(
        std::fs::read(env.p("/etc/app/app.conf")).unwrap(),
        b"port = 8080\nworkers = 4\n"
    );
    assert_eq!(mode_of(&env.p("/etc/app/app.conf")), 0o640);
    let m = std::fs::metadata(env.p("/etc/app/app.conf")).unwrap();
    assert_eq!((m.uid(), m.gid()), (4321, 4322));
    assert_eq!(mode_of(&env.p("/etc/app")), 0o750);
    assert_eq!(
        std::fs::read(env.p("/etc/motd")).unwrap(),
        b"managed by troupe\n"
    );
    assert_eq!(mode_of(&env.p("/etc/motd")), 0o644);
    assert_eq!(
        std::fs::read_link(env.p("/etc/app/current.conf")).unwrap(),
        std::path::Path::new("/etc/app/app.conf")
    );
    // Second run: nothing to do.
    let (code, r2, _) = env.run(&c, &[]);
    assert_eq!(code, 0);
    assert!(all_unchanged(&r2), "{r2:?}");
    assert_ne!(r.run_id, r2.run_id);

    // Hand-made drift: content, mode, owner, a deleted file, a moved link.
    std::fs::write(env.p("/etc/app/app.conf"), "port = 1\n").unwrap();
    std::os::unix::fs::chown(env.p("/etc/app/app.conf"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(
        env.p("/etc/app"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::remove_file(env.p("/etc/motd")).unwrap();
    std::fs::remove_file(env.p("/etc/app/current.conf")).unwrap();
    std::os::unix::fs::symlink("/elsewhere", env.p("/etc/app/current.conf")).unwrap();
    let (code, r3, _) = env.run(&c, &[]);
    assert_eq!(code, 2);
    for rid in [
        "file[/etc/app/app.conf]",
        "directory[/etc/app]",
        "file[/etc/motd]",
        "symlink[/etc/app/current.conf]",
    ] {
        assert_eq!(status_of(&r3, rid).status, Status::Changed, "{rid}");
    }
    assert!(
        status_of(&r3, "file[/etc/app/app.conf]")
            .diff
            .as_ref()
            .unwrap()
            .contains("-port = 1")
    );
    let m = std::fs::metadata(env.p("/etc/app/app.conf")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (4321, 4322, 0o640));
    assert_eq!(mode_of(&env.p("/etc/app")), 0o750);
    assert!(env.p("/etc/motd").exists());
    assert_eq!(
        std::fs::read_link(env.p("/etc/app/current.conf")).unwrap(),
        std::path::Path::new("/etc/app/app.conf")
    );
    let (code, r4, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r4:?}");
    // No temp files left behind.
    let leftovers: Vec<_> = walk(&env.root())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("troupe-new"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Monitoring summary.
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.state().join("last_run_summary.json")).unwrap())
            .unwrap();
    assert_eq!(s["run_id"], r4.run_id.as_str());
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["resources"]["total"], 5);
}

pub fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
    }
    out
}

#[test]
fn noop_changes_nothing_and_shows_diffs() {
    let env = Env::new();
    seed_accounts(&env);
    let c = base_catalog();
    let (code, r, out) = env.run(&c, &["--noop"]);
    assert_eq!(code, 2);
    assert!(r.noop);
    assert!(!env.p("/etc/app").exists(), "noop created something");
    assert!(
        std::fs::read_dir(env.state().join("bucket")).is_err()
            || walk(&env.state().join("bucket")).is_empty()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created with content sha256:"));
    // Converge, drift, noop again: the drift stays.
    env.run(&c, &[]);
    std::fs::write(env.p("/etc/motd"), "hand edit\n").unwrap();
    let (code, r, _) = env.run(&c, &["--noop"]);
    assert_eq!(code, 2);
    let d = status_of(&r, "file[/etc/motd]").diff.clone().unwrap();
    assert!(
        d.contains("-hand edit") && d.contains("+managed by troupe"),
        "{d}"
    );
    assert_eq!(std::fs::read(env.p("/etc/motd")).unwrap(), b"hand edit\n");
    // Human output of a noop run.
    let cat = env.write_catalog(&c);
    let o = env.cmd(
        &["run", "--once", "--noop"],
        &["--catalog", cat.to_str().unwrap()],
        &[],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("would change file[/etc/motd]"), "{text}");
    assert!(text.contains("+managed by troupe"), "{text}");
}

#[test]
fn sensitive_values_are_redacted() {
    let env = Env::new();
    let mut c = new_catalog();
    c.resources.push(dir("/etc", 0o755));
    let mut f = file(&mut c, "/etc/secret.conf", b"password = hunter2\n", 0o600);
    f.sensitive = true;
    c.resources.push(f);
    let mut e = exec("show", &["/bin/echo", "hunter2"]);
    e.sensitive = true;
    c.resources.push(e);
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::write(env.p("/etc/secret.conf"), "password = old-secret\n").unwrap();
    let cat = env.write_catalog(&c);
    for mode in [&["--noop"][..], &[][..]] {
        let o = env.cmd(
            &["run", "--once", "--output", "json"],
            &["--catalog", cat.to_str().unwrap()],
            mode,
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !all.contains("hunter2") && !all.contains("old-secret"),
            "{all}"
        );
        assert!(all.contains("redacted"), "{all}");
    }
    assert_eq!(
        std::fs::read(env.p("/etc/secret.conf")).unwrap(),
        b"password = hunter2\n"
    );
}

#[test]
fn failed_resource_skips_dependents_transitively() {
    let env = Env::new();
    let mut c = new_catalog();
    // Parent missing: fails.
    let bad = file(&mut c, "/missing/dir/x.conf", b"x\n", 0o644);
    c.resources.push(bad);
    let mut dep = file(&mut c, "/dep.conf", b"dep\n", 0o644);
    dep.requires.push(id("file", "/missing/dir/x.conf"));
    c.resources.push(dep);
    let mut dep2 = exec("after", &["/bin/true"]);
    dep2.requires.push(id("file", "/dep.conf"));
    c.resources.push(dep2);
    let ok = file(&mut c, "/independent.conf", b"fine\n", 0o644);
    c.resources.push(ok);
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 6, "{r:?}");
    let f = status_of(&r, "file[/missing/dir/x.conf]");
    assert_eq!(f.status, Status::Failed);
    assert!(f.events[0].contains("does not exist"), "{:?}", f.events);
    let d = status_of(&r, "file[/dep.conf]");
    assert_eq!(d.status, Status::Skipped);
    assert!(
        d.events[0].contains("file[/missing/dir/x.conf] failed"),
        "{:?}",
        d.events
    );
    let d2 = status_of(&r, "exec[after]");
    assert_eq!(d2.status, Status::Skipped);
    assert!(d2.events[0].contains("file[/dep.conf] was skipped"));
    assert!(!env.p("/dep.conf").exists());
    assert_eq!(
        status_of(&r, "file[/independent.conf]").status,
        Status::Changed
    );
    assert!(env.p("/independent.conf").exists());
}

#[test]
fn notify_refreshes_exactly_once_per_run() {
    let env = Env::new();
    let mut c = new_catalog();
    let mut a = file(&mut c, "/a.conf", b"a\n", 0o644);
    let mut b = file(&mut c, "/b.conf", b"b\n", 0o644);
    let mut counter = exec("reload", &["/bin/sh", "-c", "echo refreshed >> /count"]);
    if let Kind::Exec { refreshonly, .. } = &mut counter.kind {
        *refreshonly = true;
    }
    a.notify.push(id("exec", "reload"));
    b.notify.push(id("exec", "reload"));
    c.resources.push(a);
    c.resources.push(b);
    c.resources.push(counter);
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2);
    let e = status_of(&r, "exec[reload]");
    assert!(e.refreshed);
    assert_eq!(e.status, Status::Changed);
    assert_eq!(
        std::fs::read_to_string(env.p("/count")).unwrap(),
        "refreshed\n"
    );
    // Nothing changed: no refresh.
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(env.p("/count")).unwrap(),
        "refreshed\n"
    );
    // One of the two changes: one refresh.
    std::fs::write(env.p("/a.conf"), "drift\n").unwrap();
    env.run(&c, &[]);
    assert_eq!(
        std::fs::read_to_string(env.p("/count")).unwrap(),
        "refreshed\nrefreshed\n"
    );
}

#[test]
fn exec_guards_timeout_and_returns() {
    let env = Env::new();
    let mut c = new_catalog();
    let mut creates = exec("mk", &["/bin/sh", "-c", "touch /made"]);
    if let Kind::Exec { creates: cr, .. } = &mut creates.kind {
        *cr = Some("/made".into());
    }
    c.resources.push(creates);
    let mut unless = exec("never", &["/bin/sh", "-c", "touch /never"]);
    if let Kind::Exec { unless: u, .. } = &mut unless.kind {
        *u = Some(vec!["/bin/true".into()]);
    }
    c.resources.push(unless);
    let mut onlyif = exec("cond", &["/bin/sh", "-c", "touch /cond"]);
    if let Kind::Exec { onlyif: o, .. } = &mut onlyif.kind {
        *o = Some(vec!["/bin/false".into()]);
    }
    c.resources.push(onlyif);
    let mut slow = exec("slow", &["/bin/sleep", "10"]);
    if let Kind::Exec { timeout, .. } = &mut slow.kind {
        *timeout = Some(1);
    }
    c.resources.push(slow);
    let mut rc = exec("rc3", &["/bin/sh", "-c", "exit 3"]);
    if let Kind::Exec { returns, .. } = &mut rc.kind {
        *returns = vec![0, 3];
    }
    c.resources.push(rc);
    let t = std::time::Instant::now();
    let (code, r, _) = env.run(&c, &[]);
    assert!(t.elapsed() < std::time::Duration::from_secs(8));
    assert_eq!(code, 6);
    assert!(env.p("/made").exists());
    assert!(!env.p("/never").exists());
    assert!(!env.p("/cond").exists());
    let s = status_of(&r, "exec[slow]");
    assert_eq!(s.status, Status::Failed);
    assert!(s.events[0].contains("timed out"), "{:?}", s.events);
    assert_eq!(status_of(&r, "exec[rc3]").status, Status::Changed);
    // creates now exists: mk is unchanged.
    let (_, r, _) = env.run(&c, &[]);
    assert_eq!(status_of(&r, "exec[mk]").status, Status::Unchanged);
}

#[test]
fn rollback_restores_previous_contents() {
    let env = Env::new();
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::write(env.p("/etc/pre.conf"), "original\n").unwrap();
    let mut c1 = new_catalog();
    {
        let f = file(&mut c1, "/etc/pre.conf", b"version 1\n", 0o644);
        c1.resources.push(f);
    }
    {
        let f = file(&mut c1, "/etc/new.conf", b"new 1\n", 0o644);
        c1.resources.push(f);
    }
    let (_, r1, _) = env.run(&c1, &[]);
    let mut c2 = new_catalog();
    {
        let f = file(&mut c2, "/etc/pre.conf", b"version 2\n", 0o600);
        c2.resources.push(f);
    }
    {
        let f = file(&mut c2, "/etc/new.conf", b"new 2\n", 0o644);
        c2.resources.push(f);
    }
    let (code, r2, _) = env.run(&c2, &[]);
    assert_eq!(code, 2);
    assert_eq!(
        std::fs::read(env.p("/etc/pre.conf")).unwrap(),
        b"version 2\n"
    );
    // Roll back run 2: the run-1 contents and mode come back.
    let o = env.sub(&["rollback", &r2.run_id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(env.p("/etc/pre.conf")).unwrap(),
        b"version 1\n"
    );
    assert_eq!(mode_of(&env.p("/etc/pre.conf")), 0o644);
    assert_eq!(std::fs::read(env.p("/etc/new.conf")).unwrap(), b"new 1\n");
    // Roll back run 1: the original file and no new.conf.
    let o = env.sub(&["rollback", &r1.run_id]);
    assert!(o.status.success());
    assert_eq!(
        std::fs::read(env.p("/etc/pre.conf")).unwrap(),
        b"original\n"
    );
    assert!(!env.p("/etc/new.conf").exists());
    // Listing and unknown ids.
    let o = env.sub(&["rollback", "--list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&r1.run_id));
    let o = env.sub(&["rollback", "--list", "--json"]);
    assert!(o.status.success());
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let first = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == r1.run_id.as_str())
        .unwrap();
    assert!(first["file_changes"].as_u64().unwrap() >= 1, "{runs}");
    assert_eq!(first["noop"], false);
    assert_eq!(first["status"], "changed");
    let o = env.sub(&["rollback", "no-such-run"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no stored run"));
}

#[test]
fn rollback_on_failure_undoes_the_run() {
    let env = Env::new();
    std::fs::write(env.p("/app.conf"), "good\n").unwrap();
    let mut c = new_catalog();
    let f = file(&mut c, "/app.conf", b"bad\n", 0o644);
    c.resources.push(f);
    let mut e = exec("check", &["/bin/false"]);
    e.requires.push(id("file", "/app.conf"));
    c.resources.push(e);
    let (code, r, _) = env.run(&c, &["--rollback-on-failure"]);
    assert_eq!(code, 6);
    assert!(
        status_of(&r, "file[/app.conf]")
            .events
            .iter()
            .any(|e| e.contains("rolled back"))
    );
    assert_eq!(std::fs::read(env.p("/app.conf")).unwrap(), b"good\n");
    // Without the option the change stays.
    env.run(&c, &[]);
    assert_eq!(std::fs::read(env.p("/app.conf")).unwrap(), b"bad\n");
}

#[test]
fn cached_catalog_is_used_when_the_source_fails() {
    let env = Env::new();
    let mut c = new_catalog();
    {
        let f = file(&mut c, "/x.conf", b"x\n", 0o644);
        c.resources.push(f);
    }
    let (_, r1, _) = env.run(&c, &[]);
    assert!(!r1.from_cache);
    std::fs::remove_file(env.p("/x.conf")).unwrap();
    let (code, r, _) = env.run_with(&["--catalog", "/nonexistent/catalog.json"], &[]);
    assert_eq!(code, 2);
    assert!(r.from_cache);
    assert_eq!(r.catalog_hash, c.hash());
    assert!(env.p("/x.conf").exists());
    // A corrupt catalog file also falls back to the cache.
    let bad = env.dir.path().join("bad.json");
    std::fs::write(&bad, "{\"format\":1, nope").unwrap();
    let (code, r, _) = env.run_with(&["--catalog", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(r.from_cache);
    // No cache and no source: a clear error, exit 1.
    let env2 = Env::new();
    let o = env2.cmd(
        &["run", "--once"],
        &["--catalog", "/nonexistent/c.json"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no cached catalog"));
}

#[test]
fn disable_enable_and_lock() {
    let env = Env::new();
    let mut c = new_catalog();
    c.resources.push(exec("wait", &["/bin/sleep", "2"]));
    // disable refuses a --state directory that does not exist (a typo).
    std::fs::create_dir_all(env.state()).unwrap();
    let o = env.sub(&["disable", "maintenance window"]);
    assert!(o.status.success());
    let cat = env.write_catalog(&c);
    let o = env.cmd(
        &["run", "--once"],
        &["--catalog", cat.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("maintenance window"));
    assert!(env.sub(&["enable"]).status.success());
    // One run at a time.
    let mut first = env.spawn_quiet_run(&cat);
    std::thread::sleep(std::time::Duration::from_millis(700));
    let o = env.cmd(
        &["run", "--once"],
        &["--catalog", cat.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another run is in progress"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(first.wait().unwrap().code(), Some(2));
}

#[test]
fn purge_removes_unmanaged_entries() {
    let env = Env::new();
    std::fs::create_dir_all(env.p("/conf.d/olddir")).unwrap();
    std::fs::write(env.p("/conf.d/stray.conf"), "x").unwrap();
    std::fs::write(env.p("/conf.d/olddir/y"), "y").unwrap();
    let mut c = new_catalog();
    let mut d = dir("/conf.d", 0o755);
    if let Kind::Directory { purge, .. } = &mut d.kind {
        *purge = true;
    }
    c.resources.push(d);
    let mut keep = file(&mut c, "/conf.d/keep.conf", b"k\n", 0o644);
    keep.requires.push(id("directory", "/conf.d"));
    c.resources.push(keep);
    let (code, _, _) = env.run(&c, &["--noop"]);
    assert_eq!(code, 2);
    assert!(env.p("/conf.d/stray.conf").exists());
    let (code, _, _) = env.run(&c, &[]);
    assert_eq!(code, 2);
    assert!(!env.p("/conf.d/stray.conf").exists());
    assert!(!env.p("/conf.d/olddir").exists());
    assert!(env.p("/conf.d/keep.conf").exists());
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r:?}");
}

#[test]
fn absent_resources_and_cron() {
    let env = Env::new();
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::write(env.p("/etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(env.p("/etc/group"), "root:x:0:\ncrontab:x:107:\n").unwrap();
    std::fs::write(env.p("/etc/old.conf"), "old").unwrap();
    let mut c = new_catalog();
    c.resources.push(res(Kind::File {
        path: "/etc/old.conf".into(),
        ensure: Ensure::Absent,
        content: None,
        mode: None,
        owner: None,
        group: None,
        validate: None,
    }));
    c.resources.push(res(Kind::Cron {
        name: "backup".into(),
        ensure: Ensure::Present,
        command: "/usr/local/bin/backup --quick".into(),
        user: "root".into(),
        minute: "15".into(),
        hour: "3".into(),
        monthday: "*".into(),
        month: "*".into(),
        weekday: "*".into(),
        environment: [("MAILTO".to_owned(), "ops@example.com".to_owned())].into(),
    }));
    let (code, _, _) = env.run(&c, &[]);
    assert_eq!(code, 2);
    assert!(!env.p("/etc/old.conf").exists());
    let tab = std::fs::read_to_string(env.p("/var/spool/cron/crontabs/root")).unwrap();
    assert!(
        tab.contains(
            "# troupe: backup\nMAILTO=ops@example.com\n15 3 * * * /usr/local/bin/backup --quick\n"
        ),
        "{tab}"
    );
    let m = std::fs::metadata(env.p("/var/spool/cron/crontabs/root")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o600, 107));
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r:?}");
}

#[test]
fn services_are_not_managed_and_repository_packages_fail_clearly_under_root() {
    let env = Env::new();
    let mut c = new_catalog();
    c.resources.push(res(Kind::Service {
        name: "nginx".into(),
        ensure: Some(troupe_catalog::ServiceState::Running),
        enable: Some(true),
    }));
    c.resources.push(res(Kind::Package {
        name: "nginx".into(),
        ensure: troupe_catalog::PackageEnsure::Present,
    }));
    std::fs::create_dir_all(env.p("/var/lib/dpkg/info")).unwrap();
    std::fs::write(env.p("/var/lib/dpkg/status"), "").unwrap();
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 4);
    // The service is neither checked nor changed, and the report says so
    // (not a failure: a root has no init system to ask).
    let s = status_of(&r, "service[nginx]");
    assert_eq!(s.status, Status::Unchanged);
    assert_eq!(s.events.len(), 1, "{:?}", s.events);
    assert!(
        s.events[0].starts_with("not managed under --root")
            && s.events[0].contains("wanted: running, enabled at boot"),
        "{:?}",
        s.events
    );
    let p = status_of(&r, "package[nginx]");
    assert_eq!(p.status, Status::Failed);
    assert!(
        p.events[0].contains("apt has no root option"),
        "{:?}",
        p.events
    );
    // The default output shows the note too, not only the JSON report.
    let cat = env.write_catalog(&c);
    let out = env.cmd(
        &["run", "--once"],
        &["--catalog", cat.to_str().unwrap()],
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("note service[nginx]: not managed under --root"),
        "{stdout}"
    );
}

#[test]
fn daemon_runs_on_its_interval() {
    let env = Env::new();
    let mut c = new_catalog();
    let f = file(&mut c, "/d.conf", b"d\n", 0o644);
    c.resources.push(f);
    let cat = env.write_catalog(&c);
    let mut d = env
        .command(&[
            "run",
            "--interval",
            "1",
            "--output",
            "quiet",
            "--catalog",
            cat.to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    // Wait for at least two runs (first changes, second finds nothing).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut runs = 0;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let o = env.sub(&["rollback", "--list"]);
        runs = String::from_utf8_lossy(&o.stdout).lines().count();
        if runs >= 2 {
            break;
        }
    }
    let _ = d.kill();
    let _ = d.wait();
    assert!(runs >= 2, "daemon made {runs} runs");
    assert!(env.p("/d.conf").exists());
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.state().join("last_run_summary.json")).unwrap())
            .unwrap();
    assert_eq!(s["exit_code"], 0, "{s}");
}

#[test]
fn exec_under_root_runs_inside_the_root_never_on_the_host() {
    let env = Env::new();
    std::fs::create_dir_all(env.p("/tmp")).unwrap();
    let marker = format!(
        "/tmp/troupe-escape-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut c = new_catalog();
    c.resources
        .push(exec("mark", &["/usr/bin/touch", marker.as_str()]));
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{:?}", r.resources);
    assert!(env.p(&marker).exists(), "the command ran inside the root");
    assert!(
        !std::path::Path::new(&marker).exists(),
        "the command must never touch the host's {marker}"
    );

    // A root without the program: a clear failure, nothing run on the host.
    let bare = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_troupe-agent"))
        .args(["run", "--once", "--output", "json", "--catalog"])
        .arg(env.write_catalog(&c))
        .arg("--root")
        .arg(bare.path())
        .arg("--state")
        .arg(bare.path().join(".state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4));
    let report: troupe_catalog::report::Report = serde_json::from_slice(&out.stdout).unwrap();
    let s = status_of(&report, "exec[mark]");
    assert_eq!(s.status, Status::Failed);
    assert!(s.events[0].contains("chroot"), "{:?}", s.events);
    assert!(!std::path::Path::new(&marker).exists());
}

/// 200 files in 10 directories: a batch big enough to be written on several
/// threads. One temp path is blocked by a directory, so exactly that file
/// fails (and says why); every other file is right, nothing is left behind,
/// and once the blocker is gone the next run fixes only that file.
#[test]
fn big_batches_converge_and_a_failed_temp_write_fails_only_its_file() {
    let env = Env::new();
    let mut c = new_catalog();
    c.resources.push(dir("/srv", 0o755));
    let body = |d: usize, f: usize| format!("dir {d} file {f}\n").into_bytes();
    for d in 0..10 {
        let dp = format!("/srv/d{d:02}");
        let mut dr = dir(&dp, 0o750);
        dr.requires.push(id("directory", "/srv"));
        c.resources.push(dr);
        for f in 0..20 {
            let mut fr = file(&mut c, &format!("{dp}/f{f:02}.txt"), &body(d, f), 0o640);
            fr.requires.push(id("directory", &dp));
            c.resources.push(fr);
        }
    }
    // d03 exists beforehand (not created by the run) and one temp path in
    // it is a directory that cannot be replaced.
    let blocker = env.p("/srv/d03/.f07.txt.troupe-new");
    std::fs::create_dir_all(&blocker).unwrap();
    // Temp files next to their targets (the staged ones are tested below).
    let (code, r, _) = env.run(&c, &["--stage-writes", "never"]);
    assert_eq!(code, 6, "changes and a failure: {r:?}");
    let bad = status_of(&r, "file[/srv/d03/f07.txt]");
    assert_eq!(bad.status, Status::Failed);
    assert!(
        bad.events.iter().any(|e| e.contains("cannot write")),
        "{:?}",
        bad.events
    );
    let changed = r
        .resources
        .iter()
        .filter(|x| x.status == Status::Changed)
        .count();
    // /srv pre-existed with the right mode: unchanged; all else changed.
    assert_eq!(status_of(&r, "directory[/srv]").status, Status::Unchanged);
    assert_eq!(changed, r.resources.len() - 2);
    for d in 0..10 {
        for f in 0..20 {
            let p = env.p(&format!("/srv/d{d:02}/f{f:02}.txt"));
            if (d, f) == (3, 7) {
                assert!(!p.exists());
                continue;
            }
            assert_eq!(std::fs::read(&p).unwrap(), body(d, f), "{}", p.display());
            assert_eq!(mode_of(&p), 0o640);
        }
    }
    let leftovers: Vec<_> = walk(&env.root())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("troupe-new") && *p != blocker)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir(&blocker).unwrap();
    let (code, r2, _) = env.run(&c, &["--stage-writes", "never"]);
    assert_eq!(code, 2, "{r2:?}");
    let changed: Vec<_> = r2
        .resources
        .iter()
        .filter(|x| x.status != Status::Unchanged)
        .map(|x| x.id.0.as_str())
        .collect();
    assert_eq!(changed, ["file[/srv/d03/f07.txt]"]);
    assert_eq!(
        std::fs::read(env.p("/srv/d03/f07.txt")).unwrap(),
        body(3, 7)
    );
    let (code, r3, _) = env.run(&c, &[]);
    assert_eq!(code, 0);
    assert!(all_unchanged(&r3));
}

/// `--stage-writes always`: a new file in a plain directory has its temp
/// file in STATE/stage (a directory blocking its in-place temp path does
/// not stop it), while the files of a directory with a default ACL or the
/// setgid bit keep their temp file next to the target (the same blocker
/// fails them), so they get the ACL and the group the directory gives.
/// Once unblocked every file converges with its content and mode, and the
/// stage holds nothing after the run.
#[test]
fn staged_writes_keep_what_the_directory_gives_and_fall_back_in_place() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (chown to another group)");
        return;
    }
    let env = Env::new();
    let mut c = new_catalog();
    let body = |d: &str| format!("in {d}\n").into_bytes();
    let dirs = ["plain", "acl", "sgid"];
    for d in dirs {
        std::fs::create_dir_all(env.p(&format!("/srv/{d}"))).unwrap();
        let f = file(&mut c, &format!("/srv/{d}/f.txt"), &body(d), 0o640);
        c.resources.push(f);
        // A new directory in each, and a file in it.
        c.resources.push(dir(&format!("/srv/{d}/sub"), 0o750));
        let mut f = file(&mut c, &format!("/srv/{d}/sub/g.txt"), &body(d), 0o600);
        f.requires.push(id("directory", &format!("/srv/{d}/sub")));
        c.resources.push(f);
        std::fs::create_dir(env.p(&format!("/srv/{d}/.f.txt.troupe-new"))).unwrap();
    }
    let acl = common::acl::set_default_acl(&env.p("/srv/acl"));
    std::os::unix::fs::chown(env.p("/srv/sgid"), None, Some(4322)).unwrap();
    std::fs::set_permissions(
        env.p("/srv/sgid"),
        std::os::unix::fs::PermissionsExt::from_mode(0o2775),
    )
    .unwrap();
    let (code, r, _) = env.run(&c, &["--stage-writes", "always"]);
    assert_eq!(code, 6, "{r:?}");
    assert_eq!(
        status_of(&r, "file[/srv/plain/f.txt]").status,
        Status::Changed
    );
    assert_eq!(
        status_of(&r, "file[/srv/sgid/f.txt]").status,
        Status::Failed
    );
    if acl {
        assert_eq!(status_of(&r, "file[/srv/acl/f.txt]").status, Status::Failed);
    }
    // New directories: made in the stage under plain/; in place under
    // sgid/ (so the kernel gives them the parent's group) and under acl/
    // (the default ACL). Each has exactly the declared mode from the first
    // run: the setgid bit mkdir adds under sgid/ is not in it.
    for d in dirs {
        let sub = env.p(&format!("/srv/{d}/sub"));
        assert_eq!(mode_of(&sub), 0o750, "{d}/sub has the declared mode");
        let _ = std::fs::remove_dir(env.p(&format!("/srv/{d}/.f.txt.troupe-new")));
    }
    let (code, r, _) = env.run(&c, &["--stage-writes", "always"]);
    assert!(code == 2 || code == 0, "{r:?}");
    for d in dirs {
        let id = format!("directory[/srv/{d}/sub]");
        assert_eq!(status_of(&r, &id).status, Status::Unchanged, "{id}");
    }
    for d in dirs {
        let p = env.p(&format!("/srv/{d}/f.txt"));
        assert_eq!(std::fs::read(&p).unwrap(), body(d));
        assert_eq!(mode_of(&p), 0o640);
        assert_eq!(std::fs::metadata(&p).unwrap().uid(), 0);
    }
    for d in dirs {
        let g = env.p(&format!("/srv/{d}/sub/g.txt"));
        assert_eq!(std::fs::read(&g).unwrap(), body(d));
        assert_eq!(mode_of(&g), 0o600);
    }
    assert_eq!(
        std::fs::metadata(env.p("/srv/plain/f.txt")).unwrap().gid(),
        0
    );
    assert_eq!(std::fs::metadata(env.p("/srv/plain/sub")).unwrap().gid(), 0);
    for p in ["/srv/sgid/f.txt", "/srv/sgid/sub"] {
        assert_eq!(std::fs::metadata(env.p(p)).unwrap().gid(), 4322, "{p}");
    }
    // sub/ is 0750 as declared, without the setgid bit: its new file has
    // the creator's group like any file whose group is not declared.
    let g = std::fs::metadata(env.p("/srv/sgid/sub/g.txt")).unwrap();
    assert_eq!(g.gid(), 0);
    if acl {
        let n = rustix::fs::getxattr(
            env.p("/srv/acl/f.txt"),
            "system.posix_acl_access",
            &mut [0u8; 0][..],
        );
        assert!(n.is_ok(), "the default ACL was inherited: {n:?}");
        let n = rustix::fs::getxattr(
            env.p("/srv/acl/sub"),
            "system.posix_acl_default",
            &mut [0u8; 0][..],
        );
        assert!(n.is_ok(), "the new directory has the default ACL: {n:?}");
    }
    // The stage keeps the run's (emptied) directories a while, nothing in
    // them.
    let left: Vec<_> = walk(&env.state().join("stage"))
        .into_iter()
        .filter(|p| !p.is_dir())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let (code, r, _) = env.run(&c, &["--stage-writes", "always"]);
    assert_eq!(code, 0);
    assert!(all_unchanged(&r));
}

/// A directory made setgid in the middle of a run is asked again (what a
/// run knows of a directory is forgotten when it changes one): the new
/// directory made in it after the chmod has exactly its declared mode, not
/// the setgid bit mkdir adds there, and its group.
#[test]
fn a_directory_changed_mid_run_is_asked_again() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (chown to another group)");
        return;
    }
    let env = Env::new();
    let x = env.p("/srv/x");
    std::fs::create_dir_all(&x).unwrap();
    std::os::unix::fs::chown(&x, None, Some(4322)).unwrap();
    let mut c = new_catalog();
    let a = file(&mut c, "/srv/x/a.txt", b"a\n", 0o644);
    c.resources.push(a);
    c.resources.push(dir("/srv/x", 0o2775));
    c.resources.push(dir("/srv/x/sub", 0o750));
    let b = file(&mut c, "/srv/x/b.txt", b"b\n", 0o644);
    c.resources.push(b);
    let (code, r, _) = env.run(&c, &["--stage-writes", "always"]);
    assert_eq!(code, 2, "{r:?}");
    assert_eq!(mode_of(&x), 0o2775);
    assert_eq!(std::fs::metadata(x.join("b.txt")).unwrap().gid(), 4322);
    assert_eq!(std::fs::metadata(x.join("sub")).unwrap().gid(), 4322);
    assert_eq!(mode_of(&x.join("sub")), 0o750);
    let (code, r, _) = env.run(&c, &["--stage-writes", "always"]);
    assert_eq!(code, 0, "{r:?}");
    assert!(all_unchanged(&r));
}

/// Issue 16: `--root` may be relative (like `--state`), and the first run
/// into an empty root says which base directory to create.
#[test]
fn a_relative_root_works_and_an_empty_root_says_what_to_create() {
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("root")).unwrap();
    let mut c = new_catalog();
    let f = file(&mut c, "/etc/motd", b"managed\n", 0o644);
    c.resources.push(f);
    let cat = cwd.path().join("catalog.json");
    std::fs::write(&cat, c.to_pretty_json()).unwrap();
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_troupe-agent"))
            .current_dir(cwd.path())
            .args([
                "run",
                "--once",
                "--output",
                "json",
                "--catalog",
                "catalog.json",
            ])
            .args(["--root", "root", "--state", "state"])
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let report: troupe_catalog::report::Report = serde_json::from_slice(&out.stdout).unwrap();
    let s = status_of(&report, "file[/etc/motd]");
    assert!(
        s.events[0].contains("mkdir -p ") && s.events[0].contains("root/etc"),
        "{:?}",
        s.events
    );
    std::fs::create_dir(cwd.path().join("root/etc")).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        std::fs::read(cwd.path().join("root/etc/motd")).unwrap(),
        b"managed\n"
    );
}

/// A minimal POSIX ACL (`u::rwx g::--- o::---`) in the kernel's xattr form:
/// version 2, then (tag, perm, id) entries.
fn owner_only_acl() -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in [(0x01u16, 7u16), (0x04, 0), (0x20, 0)] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(u32::MAX.to_le_bytes());
    }
    v
}

/// Files and directories are created with their final mode and no chmod
/// only when nothing can change that mode: under a default ACL (which
/// replaces the umask) and under a umask that masks bits of the mode, the
/// mode is still exactly the catalog's, and a second run changes nothing.
#[test]
fn modes_are_exact_under_a_default_acl_and_a_strict_umask() {
    let catalog = |c: &mut Catalog| {
        let a = file(c, "/acl/a.conf", b"a\n", 0o644);
        c.resources.push(a);
        c.resources.push(dir("/acl/sub", 0o755));
        let mut b = file(c, "/acl/sub/b.conf", b"b\n", 0o644);
        b.requires.push(id("directory", "/acl/sub"));
        c.resources.push(b);
        let cf = file(c, "/acl/c.conf", b"c\n", 0o640);
        c.resources.push(cf);
    };
    let check = |env: &Env| {
        assert_eq!(mode_of(&env.p("/acl/a.conf")), 0o644);
        assert_eq!(mode_of(&env.p("/acl/sub")), 0o755);
        assert_eq!(mode_of(&env.p("/acl/sub/b.conf")), 0o644);
        assert_eq!(mode_of(&env.p("/acl/c.conf")), 0o640);
        assert_eq!(std::fs::read(env.p("/acl/sub/b.conf")).unwrap(), b"b\n");
    };
    // A default ACL on the parent: what open(2) would give is 0600.
    let env = Env::new();
    std::fs::create_dir(env.p("/acl")).unwrap();
    rustix::fs::setxattr(
        env.p("/acl"),
        "system.posix_acl_default",
        &owner_only_acl(),
        rustix::fs::XattrFlags::empty(),
    )
    .expect("this file system takes POSIX ACLs");
    let probe = env.p("/acl/probe");
    std::fs::File::create(&probe).unwrap();
    assert_eq!(mode_of(&probe), 0o600, "the default ACL applies");
    std::fs::remove_file(&probe).unwrap();
    let mut c = new_catalog();
    catalog(&mut c);
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    check(&env);
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r:?}");
    assert!(all_unchanged(&r));
    // umask 077: what open(2) and mkdir(2) would give is 0600 and 0700.
    let env = Env::new();
    std::fs::create_dir(env.p("/acl")).unwrap();
    let cat = env.write_catalog(&c);
    let run = || {
        let agent = env.command(&[
            "run",
            "--once",
            "--output",
            "json",
            "--catalog",
            cat.to_str().unwrap(),
        ]);
        let mut argv = vec![agent.get_program().to_owned()];
        argv.extend(agent.get_args().map(|a| a.to_owned()));
        std::process::Command::new("sh")
            .args(["-c", "umask 077; exec \"$0\" \"$@\""])
            .args(argv)
            .output()
            .unwrap()
    };
    let out = run();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    check(&env);
    let out = run();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
