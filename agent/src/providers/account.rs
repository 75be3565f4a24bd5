//! user and group providers. The target's `etc/passwd` and `etc/group` are
//! read once per run (and again after a change); changes go through the
//! real shadow-utils tools, with `--prefix ROOT` under `--root`.

use super::{Ctx, Outcome, cmd};
use anyhow::Context;
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use troupe_catalog::{Ensure, Kind, Membership};

/// One passwd entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PwEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
}

/// One group entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The users and groups of a target root.
#[derive(Debug, Default)]
pub struct Accounts {
    pub users: HashMap<String, PwEntry>,
    pub groups: HashMap<String, GrEntry>,
}

impl Accounts {
    /// Reads `root/etc/passwd` and `root/etc/group` (missing = empty).
    pub fn load(root: &Path) -> anyhow::Result<Accounts> {
        let read = |p: &str| -> anyhow::Result<String> {
            let path = root.join(p);
            match std::fs::read_to_string(&path) {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
            }
        };
        Ok(Accounts::parse(&read("etc/passwd")?, &read("etc/group")?))
    }

    /// Parses passwd and group text; malformed lines are ignored.
    pub fn parse(passwd: &str, group: &str) -> Accounts {
        let mut a = Accounts::default();
        for line in passwd.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                continue;
            }
            let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) else {
                continue;
            };
            a.users.entry(f[0].to_owned()).or_insert(PwEntry {
                name: f[0].to_owned(),
                uid,
                gid,
                gecos: f[4].to_owned(),
                home: f[5].to_owned(),
                shell: f[6].to_owned(),
            });
        }
        for line in group.lines() {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                continue;
            }
            let Ok(gid) = f[2].parse() else { continue };
            a.groups.entry(f[0].to_owned()).or_insert(GrEntry {
                name: f[0].to_owned(),
                gid,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect(),
            });
        }
        a
    }

    pub fn uid(&self, name: &str) -> Option<u32> {
        self.users.get(name).map(|u| u.uid)
    }
    pub fn gid(&self, name: &str) -> Option<u32> {
        self.groups.get(name).map(|g| g.gid)
    }
    /// Supplementary groups `user` is listed in.
    pub fn member_of(&self, user: &str) -> BTreeSet<String> {
        self.groups
            .values()
            .filter(|g| g.members.iter().any(|m| m == user))
            .map(|g| g.name.clone())
            .collect()
    }
}

fn prefix_args(ctx: &Ctx, argv: &mut Vec<String>) {
    if ctx.in_root() {
        argv.push("--prefix".into());
        argv.push(ctx.root.to_string_lossy().into_owned());
    }
}

fn valid_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 32
            && !name.starts_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$')),
        "invalid account name {name:?}"
    );
    Ok(())
}

/// `user`.
pub fn user(ctx: &mut Ctx, kind: &Kind) -> anyhow::Result<Outcome> {
    let Kind::User {
        name,
        ensure,
        uid,
        group,
        groups,
        membership,
        home,
        shell,
        comment,
        system,
        manage_home,
    } = kind
    else {
        anyhow::bail!("not a user resource");
    };
    valid_name(name)?;
    let mut out = Outcome::default();
    let acc = ctx.accounts()?;
    let cur = acc.users.get(name).cloned();
    let mut argv: Vec<String>;
    match (ensure, cur) {
        (Ensure::Absent, None) => return Ok(out),
        (Ensure::Absent, Some(_)) => {
            out.change("removed");
            argv = vec!["userdel".into()];
            if *manage_home {
                argv.push("--remove".into());
            }
        }
        (Ensure::Present, None) => {
            out.change("created");
            argv = vec!["useradd".into()];
            if let Some(u) = uid {
                argv.extend(["--uid".into(), u.to_string()]);
            }
            if let Some(g) = group {
                argv.extend(["--gid".into(), g.clone()]);
            } else if acc.groups.contains_key(name.as_str()) {
                // The user's own group is already there (often declared
                // with a pinned gid): `--user-group` would refuse it.
                argv.extend(["--gid".into(), name.clone()]);
            } else {
                // Like Debian's USERGROUPS: a group named after the user.
                argv.push("--user-group".into());
            }
            if !groups.is_empty() {
                argv.extend(["--groups".into(), groups.join(",")]);
            }
            if let Some(h) = home {
                argv.extend(["--home-dir".into(), h.clone()]);
            }
            if let Some(s) = shell {
                argv.extend(["--shell".into(), s.clone()]);
            }
            if let Some(c) = comment {
                argv.extend(["--comment".into(), c.clone()]);
            }
            if *system {
                argv.push("--system".into());
            }
            argv.push(
                if *manage_home {
                    "--create-home"
                } else {
                    "--no-create-home"
                }
                .into(),
            );
        }
        (Ensure::Present, Some(cur)) => {
            argv = vec!["usermod".into()];
            if let Some(u) = uid.filter(|u| *u != cur.uid) {
                out.change(format!("uid changed {} -> {u}", cur.uid));
                argv.extend(["--uid".into(), u.to_string()]);
            }
            if let Some(g) = group {
                let want = match g.parse::<u32>() {
                    Ok(n) => Some(n),
                    Err(_) => acc.gid(g),
                };
                let want = want.with_context(|| format!("primary group {g:?} does not exist"))?;
                if want != cur.gid {
                    out.change(format!("primary group changed {} -> {g}", cur.gid));
                    argv.extend(["--gid".into(), g.clone()]);
                }
            }
            let want: BTreeSet<String> = groups.iter().cloned().collect();
            let have = acc.member_of(name);
            match membership {
                // Exactly the listed groups (none when the list is empty).
                Membership::Inclusive if want != have => {
                    out.change(format!(
                        "groups changed [{}] -> [{}]",
                        have.into_iter().collect::<Vec<_>>().join(","),
                        want.iter().cloned().collect::<Vec<_>>().join(",")
                    ));
                    argv.extend([
                        "--groups".into(),
                        want.into_iter().collect::<Vec<_>>().join(","),
                    ]);
                }
                Membership::Inclusive => {}
                // At least the listed groups: others (added by hand or by
                // a package's scripts) are kept.
                Membership::Minimum => {
                    let missing: Vec<String> = want.difference(&have).cloned().collect();
                    if !missing.is_empty() {
                        out.change(format!("added to groups [{}]", missing.join(",")));
                        argv.extend(["--append".into(), "--groups".into(), missing.join(",")]);
                    }
                }
            }
            if let Some(h) = home.as_ref().filter(|h| **h != cur.home) {
                out.change(format!("home changed {} -> {h}", cur.home));
                argv.extend(["--home".into(), h.clone()]);
                if *manage_home {
                    argv.push("--move-home".into());
                }
            }
            if let Some(s) = shell.as_ref().filter(|s| **s != cur.shell) {
                out.change(format!("shell changed {} -> {s}", cur.shell));
                argv.extend(["--shell".into(), s.clone()]);
            }
            if let Some(c) = comment.as_ref().filter(|c| **c != cur.gecos) {
                out.change(format!("comment changed {:?} -> {c:?}", cur.gecos));
                argv.extend(["--comment".into(), c.clone()]);
            }
            if !out.changed {
                return Ok(out);
            }
        }
    }
    if ctx.noop {
        return Ok(out);
    }
    prefix_args(ctx, &mut argv);
    argv.push(name.clone());
    ctx.invalidate_accounts();
    cmd::check(&argv)?;
    Ok(out)
}

/// `group`.
pub fn group(ctx: &mut Ctx, kind: &Kind) -> anyhow::Result<Outcome> {
    let Kind::Group {
        name,
        ensure,
        gid,
        system,
    } = kind
    else {
        anyhow::bail!("not a group resource");
    };
    valid_name(name)?;
    let mut out = Outcome::default();
    let noop = ctx.noop;
    let acc = ctx.accounts()?;
    let cur = acc.groups.get(name).cloned();
    let mut argv: Vec<String> = match (ensure, cur) {
        (Ensure::Absent, None) => return Ok(out),
        (Ensure::Absent, Some(cur)) => {
            // groupdel refuses it too; saying so here keeps noop honest.
            let mut users: Vec<&str> = acc
                .users
                .values()
                .filter(|u| u.gid == cur.gid)
                .map(|u| u.name.as_str())
                .collect();
            users.sort_unstable();
            let why = format!(
                "it is the primary group of user(s) {}; remove them or give them \
                 another primary group first",
                users.join(", ")
            );
            // In noop those users may be removed earlier in this same run.
            anyhow::ensure!(
                users.is_empty() || noop,
                "cannot remove group {name}: {why}"
            );
            out.change(if users.is_empty() {
                "removed".to_owned()
            } else {
                format!("removed (fails unless done first: {why})")
            });
            vec!["groupdel".into()]
        }
        (Ensure::Present, None) => {
            out.change("created");
            let mut a = vec!["groupadd".to_owned()];
            if let Some(g) = gid {
                a.extend(["--gid".into(), g.to_string()]);
            }
            if *system {
                a.push("--system".into());
            }
            a
        }
        (Ensure::Present, Some(cur)) => match gid {
            Some(g) if *g != cur.gid => {
                out.change(format!("gid changed {} -> {g}", cur.gid));
                vec!["groupmod".into(), "--gid".into(), g.to_string()]
            }
            _ => return Ok(out),
        },
    };
    if ctx.noop {
        return Ok(out);
    }
    prefix_args(ctx, &mut argv);
    argv.push(name.clone());
    ctx.invalidate_accounts();
    cmd::check(&argv)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_group() {
        let a = Accounts::parse(
            "root:x:0:0:root:/root:/bin/bash\nbad line\napp:x:999:998:App user:/srv/app:/usr/sbin/nologin\n",
            "root:x:0:\nadm:x:4:app,bob\napp:x:998:\n",
        );
        assert_eq!(a.uid("app"), Some(999));
        assert_eq!(a.gid("app"), Some(998));
        assert_eq!(a.users["app"].home, "/srv/app");
        assert_eq!(a.users["app"].gecos, "App user");
        assert_eq!(
            a.member_of("app").into_iter().collect::<Vec<_>>(),
            vec!["adm"]
        );
        assert_eq!(a.uid("bad line"), None);
    }

    #[test]
    fn rejects_option_like_names() {
        assert!(valid_name("-r").is_err());
        assert!(valid_name("a b").is_err());
        assert!(valid_name("www-data").is_ok());
    }
}
