//! exec resources in a temp root (run through chroot): as a user, with the
//! user's HOME; a timeout that kills the command and what it started and
//! fails the resource quickly with a clear message.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};
use troupe_catalog::Kind;
use troupe_catalog::report::Status;

#[test]
fn exec_as_a_user_in_a_root_gets_its_uid_and_home() {
    let env = Env::new();
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::create_dir_all(env.p("/tmp")).unwrap();
    std::fs::set_permissions(env.p("/tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(
        env.p("/etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:3300:3300::/home/alice:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(env.p("/etc/group"), "root:x:0:\nalice:x:3300:\n").unwrap();
    let mut c = new_catalog();
    let mut e = exec("whoami", &["sh", "-c", "echo \"$HOME $USER\" > /tmp/out"]);
    if let Kind::Exec { user, .. } = &mut e.kind {
        *user = Some("alice".into());
    }
    c.resources.push(e);
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    let out = env.p("/tmp/out");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "/home/alice alice\n"
    );
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), 3300);
}

#[test]
fn exec_timeout_fails_fast_and_leaves_no_children() {
    let env = Env::new();
    std::fs::create_dir_all(env.p("/tmp")).unwrap();
    let mut c = new_catalog();
    let mut e = exec(
        "hangs",
        &["sh", "-c", "sleep 60 & echo $! > /tmp/pid; sleep 60"],
    );
    if let Kind::Exec { timeout, .. } = &mut e.kind {
        *timeout = Some(1);
    }
    c.resources.push(e);
    let t = Instant::now();
    let (code, r, _) = env.run(&c, &[]);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    assert_eq!(code, 4, "{r:?}");
    let s = status_of(&r, "exec[hangs]");
    assert_eq!(s.status, Status::Failed);
    assert!(s.events.join(" ").contains("timed out after 1 s"), "{s:?}");
    let pid = std::fs::read_to_string(env.p("/tmp/pid")).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(&stat)
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    });
    assert!(
        gone,
        "the command's background child {} survived",
        pid.trim()
    );
}

#[test]
fn exec_timeout_zero_and_a_missing_cwd_are_clear_errors() {
    let env = Env::new();
    let mut c = new_catalog();
    let mut e = exec("zero", &["true"]);
    if let Kind::Exec { timeout, .. } = &mut e.kind {
        // Puppet's "no timeout": here every run would kill it at once.
        *timeout = Some(0);
    }
    c.resources.push(e);
    let mut e = exec("nocwd", &["true"]);
    if let Kind::Exec { cwd, .. } = &mut e.kind {
        *cwd = Some("/srv/missing".into());
    }
    c.resources.push(e);
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 4, "{r:?}");
    let ev = status_of(&r, "exec[zero]").events.join(" ");
    assert!(ev.contains("timeout 0"), "{ev}");
    let ev = status_of(&r, "exec[nocwd]").events.join(" ");
    assert!(
        ev.contains("/srv/missing") && ev.contains("does not exist"),
        "{ev}"
    );
}

#[test]
fn noop_of_a_fresh_catalog_does_not_fail_on_what_earlier_resources_would_create() {
    let env = Env::new();
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::write(env.p("/etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(env.p("/etc/group"), "root:x:0:\n").unwrap();
    let mut c = new_catalog();
    c.resources.push(dir("/srv", 0o755));
    c.resources.push(dir("/srv/app", 0o755));
    let mut e = exec("build", &["true"]);
    if let Kind::Exec { cwd, .. } = &mut e.kind {
        *cwd = Some("/srv/app".into());
    }
    e.requires = vec![id("directory", "/srv/app")].into();
    c.resources.push(e);
    c.resources.push(res(Kind::User {
        name: "app".into(),
        ensure: troupe_catalog::Ensure::Present,
        uid: None,
        group: None,
        groups: vec![],
        membership: Default::default(),
        home: None,
        shell: None,
        comment: None,
        system: true,
        manage_home: false,
    }));
    let mut cron = res(Kind::Cron {
        name: "report".into(),
        ensure: troupe_catalog::Ensure::Present,
        command: "/bin/true".into(),
        user: "app".into(),
        minute: "*".into(),
        hour: "*".into(),
        monthday: "*".into(),
        month: "*".into(),
        weekday: "*".into(),
        environment: Default::default(),
    });
    cron.requires = vec![id("user", "app")].into();
    c.resources.push(cron);
    let (code, r, _) = env.run(&c, &["--noop"]);
    assert_eq!(code, 2, "{r:?}");
    assert!(!env.p("/srv").exists());
}
