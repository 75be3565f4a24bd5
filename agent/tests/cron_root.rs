//! cron entries in a temp root: what Debian's cron and cronie check before
//! they load a crontab (owner, mode, the spool directory's own mode), drift
//! in those repaired, and a user that does not exist refused (and shown in noop).

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use troupe_catalog::{Ensure, Kind};

const ALICE: u32 = 3200;
const CRONTAB_GID: u32 = 107;

fn env() -> Env {
    let env = Env::new();
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::write(
        env.p("/etc/passwd"),
        format!("root:x:0:0:root:/root:/bin/bash\nalice:x:{ALICE}:{ALICE}::/home/alice:/bin/sh\n"),
    )
    .unwrap();
    std::fs::write(
        env.p("/etc/group"),
        format!("root:x:0:\ncrontab:x:{CRONTAB_GID}:\nalice:x:{ALICE}:\n"),
    )
    .unwrap();
    env
}

fn entry(name: &str, user: &str) -> Kind {
    Kind::Cron {
        name: name.into(),
        ensure: Ensure::Present,
        command: "/usr/local/bin/report".into(),
        user: user.into(),
        minute: "15".into(),
        hour: "3".into(),
        monthday: "*".into(),
        month: "*".into(),
        weekday: "*".into(),
        environment: Default::default(),
    }
}

#[test]
fn crontab_owner_mode_and_spool_dir_are_what_cron_accepts_and_drift_is_repaired() {
    let env = env();
    let mut c = new_catalog();
    c.resources.push(res(entry("report", "alice")));
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    let tab = env.p("/var/spool/cron/crontabs/alice");
    let m = std::fs::metadata(&tab).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (ALICE, CRONTAB_GID, 0o600)
    );
    // Debian's crontabs directory: root:crontab 1730 (crontab(1) is
    // setgid crontab and writes there; users cannot list it).
    let d = std::fs::metadata(env.p("/var/spool/cron/crontabs")).unwrap();
    assert_eq!(
        (d.uid(), d.gid(), d.mode() & 0o7777),
        (0, CRONTAB_GID, 0o1730)
    );
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r:?}");

    // Same content, wrong owner and mode (cron refuses to load it: "WRONG
    // FILE OWNER" / "BAD FILE MODE"): repaired.
    std::os::unix::fs::chown(&tab, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&tab, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    let m = std::fs::metadata(&tab).unwrap();
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777),
        (ALICE, CRONTAB_GID, 0o600)
    );
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r:?}");
}

#[test]
fn cron_for_a_user_that_does_not_exist_fails_says_so_in_noop_and_writes_nothing() {
    let env = env();
    let mut c = new_catalog();
    c.resources.push(res(entry("report", "ghost")));
    // noop says so (a user resource may create it first in a real run).
    for (extra, want) in [(&["--noop"][..], 2), (&[], 4)] {
        let (code, r, _) = env.run(&c, extra);
        assert_eq!(code, want, "{extra:?} {r:?}");
        let ev = status_of(&r, "cron[report]").events.join(" ");
        assert!(
            ev.contains("ghost") && ev.contains("does not exist"),
            "{ev}"
        );
    }
    assert!(!env.p("/var/spool/cron/crontabs/ghost").exists());
}

#[test]
fn a_cron_name_with_surrounding_blanks_is_refused_not_appended_every_run() {
    let env = env();
    let mut c = new_catalog();
    c.resources.push(res(entry("report ", "alice")));
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 4, "{r:?}");
    let ev = status_of(&r, "cron[report ]").events.join(" ");
    assert!(ev.contains("name"), "{ev}");
    assert!(!env.p("/var/spool/cron/crontabs/alice").exists());
}
