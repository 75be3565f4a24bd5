//! Users and groups in a temp root with the real shadow-utils tools
//! (`--prefix`): the edge cases a sysadmin meets on real hosts.

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use troupe_catalog::report::Status;
use troupe_catalog::{Ensure, Kind, Membership};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A root with root's own accounts (and an NIS compat line and a comment
/// the agent does not manage).
fn env_with_accounts(extra_group: &str) -> Option<Env> {
    if !have("useradd") {
        assert!(
            std::env::var_os("CI").is_none(),
            "shadow-utils (useradd) missing"
        );
        eprintln!("useradd not installed; skipped");
        return None;
    }
    let env = Env::new();
    std::fs::create_dir_all(env.p("/etc")).unwrap();
    std::fs::create_dir_all(env.p("/home")).unwrap();
    std::fs::write(
        env.p("/etc/passwd"),
        "root:x:0:0:root:/root:/bin/bash\n+@admins::::::\n",
    )
    .unwrap();
    std::fs::write(env.p("/etc/group"), format!("root:x:0:\n{extra_group}")).unwrap();
    std::fs::write(env.p("/etc/shadow"), "root:*:19000:0:99999:7:::\n").unwrap();
    let gs: String = format!("root:*::\n{extra_group}")
        .lines()
        .map(|l| format!("{}:!::\n", l.split(':').next().unwrap()))
        .collect();
    std::fs::write(env.p("/etc/gshadow"), gs).unwrap();
    Some(env)
}

fn user(name: &str, group: Option<&str>) -> Kind {
    Kind::User {
        name: name.into(),
        ensure: Ensure::Present,
        uid: Some(3100),
        group: group.map(Into::into),
        groups: vec![],
        membership: Membership::Minimum,
        home: Some(format!("/home/{name}")),
        shell: Some("/bin/sh".into()),
        comment: None,
        system: false,
        manage_home: false,
    }
}

#[test]
fn a_user_whose_same_named_group_already_exists_gets_that_group() {
    // The common pattern: group app (pinned gid) declared, then user app
    // without an explicit primary group. `useradd --user-group` refuses
    // ("group app exists"), so the user was never created.
    let Some(env) = env_with_accounts("app:x:3000:\n") else {
        return;
    };
    let mut c = new_catalog();
    c.resources.push(res(Kind::Group {
        name: "app".into(),
        ensure: Ensure::Present,
        gid: Some(3000),
        system: false,
    }));
    // Debian's shadow files: root:shadow 0640; the tools must keep that.
    for f in ["/etc/shadow", "/etc/gshadow"] {
        std::os::unix::fs::chown(env.p(f), Some(0), Some(42)).unwrap();
        std::fs::set_permissions(env.p(f), std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let mut k = user("app", None);
    if let Kind::User { groups, .. } = &mut k {
        // The primary group listed again: no change claimed on later runs.
        *groups = vec!["app".into()];
    }
    let mut u = res(k);
    u.requires = vec![id("group", "app")].into();
    c.resources.push(u);
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    let passwd = std::fs::read_to_string(env.p("/etc/passwd")).unwrap();
    assert!(
        passwd.contains("app:x:3100:3000::/home/app:/bin/sh"),
        "{passwd}"
    );
    // Lines the agent does not manage are kept.
    assert!(passwd.contains("+@admins::::::"), "{passwd}");
    for f in ["/etc/shadow", "/etc/gshadow"] {
        let m = std::fs::metadata(env.p(f)).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (0, 42, 0o640), "{f}");
    }
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r:?}");
    assert!(all_unchanged(&r));
}

#[test]
fn removing_a_group_still_primary_for_a_user_fails_clearly_and_changes_nothing() {
    let Some(env) = env_with_accounts("web:x:3000:\n") else {
        return;
    };
    let mut c = new_catalog();
    c.resources.push(res(user("alice", Some("web"))));
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    let mut c = new_catalog();
    c.resources.push(res(Kind::Group {
        name: "web".into(),
        ensure: Ensure::Absent,
        gid: None,
        system: false,
    }));
    // noop warns (the user might be removed earlier in the same run); a
    // real run fails before groupdel, naming the user.
    for (extra, want) in [(&["--noop"][..], 2), (&[], 4)] {
        let (code, r, _) = env.run(&c, extra);
        assert_eq!(code, want, "{extra:?} {r:?}");
        let s = status_of(&r, "group[web]");
        let ev = s.events.join(" ");
        assert!(
            ev.contains("primary group") && ev.contains("alice"),
            "{extra:?} {ev}"
        );
    }
    assert_eq!(
        status_of(&env.run(&c, &[]).1, "group[web]").status,
        Status::Failed
    );
    let group = std::fs::read_to_string(env.p("/etc/group")).unwrap();
    assert!(group.contains("web:x:3000:"), "{group}");
}

#[test]
fn a_user_that_exists_with_another_uid_is_moved_once() {
    let Some(env) = env_with_accounts("web:x:3000:\n") else {
        return;
    };
    let p = std::fs::read_to_string(env.p("/etc/passwd")).unwrap();
    std::fs::write(
        env.p("/etc/passwd"),
        format!("{p}alice:x:3099:3000::/home/alice:/bin/sh\n"),
    )
    .unwrap();
    let s = std::fs::read_to_string(env.p("/etc/shadow")).unwrap();
    std::fs::write(env.p("/etc/shadow"), format!("{s}alice:!:19000::::::\n")).unwrap();
    let mut c = new_catalog();
    c.resources.push(res(user("alice", Some("web"))));
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 2, "{r:?}");
    assert!(status_of(&r, "user[alice]").events[0].contains("uid changed 3099 -> 3100"));
    let passwd = std::fs::read_to_string(env.p("/etc/passwd")).unwrap();
    assert!(
        passwd.contains("alice:x:3100:3000::/home/alice:/bin/sh"),
        "{passwd}"
    );
    assert!(passwd.contains("+@admins::::::"), "{passwd}");
    let (code, r, _) = env.run(&c, &[]);
    assert_eq!(code, 0, "{r:?}");
}
