//! cron provider: one block per entry in the user's crontab spool file
//! (`var/spool/cron/crontabs/USER` on the Debian family,
//! `var/spool/cron/USER` on RedHat), marked `# troupe: NAME`. The spool file
//! is rewritten atomically (temp + fsync + rename), which cron notices by
//! the spool directory's mtime. Entries without the marker are left alone.

use super::{Ctx, Outcome};
use anyhow::Context;
use std::os::unix::fs::MetadataExt;
use troupe_catalog::{Ensure, Kind};

const MARK: &str = "# troupe: ";

/// Renders the block for one entry (marker, env lines, schedule line).
pub fn render(name: &str, k: &Kind) -> Option<String> {
    let Kind::Cron {
        command,
        minute,
        hour,
        monthday,
        month,
        weekday,
        environment,
        ..
    } = k
    else {
        return None;
    };
    let mut s = format!("{MARK}{name}\n");
    for (k, v) in environment {
        s.push_str(&format!("{k}={v}\n"));
    }
    s.push_str(&format!(
        "{minute} {hour} {monthday} {month} {weekday} {command}\n"
    ));
    Some(s)
}

/// Splits a crontab into (before, the block for `name` if present, after).
pub fn find_block<'a>(text: &'a str, name: &str) -> (String, Option<String>, String) {
    let lines: Vec<&'a str> = text.split_inclusive('\n').collect();
    let marker = format!("{MARK}{name}");
    let Some(start) = lines.iter().position(|l| l.trim_end() == marker) else {
        return (text.to_owned(), None, String::new());
    };
    let mut end = start + 1;
    // Environment lines, then the schedule line.
    while end < lines.len() {
        let l = lines[end].trim_start();
        let is_env = l
            .split_once('=')
            .is_some_and(|(k, _)| !k.is_empty() && !k.contains(char::is_whitespace));
        end += 1;
        if !is_env {
            break;
        }
    }
    (
        lines[..start].concat(),
        Some(lines[start..end].concat()),
        lines[end..].concat(),
    )
}

pub fn cron(ctx: &mut Ctx, kind: &Kind, sensitive: bool) -> anyhow::Result<Outcome> {
    let Kind::Cron {
        name,
        ensure,
        command,
        user,
        minute,
        hour,
        monthday,
        month,
        weekday,
        environment,
    } = kind
    else {
        anyhow::bail!("not a cron resource");
    };
    for (what, v) in [
        ("name", name.as_str()),
        ("command", command.as_str()),
        ("minute", minute),
        ("hour", hour),
        ("monthday", monthday),
        ("month", month),
        ("weekday", weekday),
    ] {
        anyhow::ensure!(!v.contains('\n'), "cron {what} contains a newline");
    }
    for f in [minute, hour, monthday, month, weekday] {
        anyhow::ensure!(
            !f.is_empty() && !f.contains(char::is_whitespace),
            "cron schedule field {f:?} is empty or has spaces"
        );
    }
    for (k, v) in environment {
        anyhow::ensure!(
            !k.is_empty() && !k.contains(['=', '\n', ' ']) && !v.contains('\n'),
            "invalid cron environment entry {k:?}"
        );
    }
    anyhow::ensure!(
        !user.is_empty() && !user.contains(['/', '.']),
        "invalid cron user {user:?}"
    );
    // The marker line is matched without trailing blanks: a name with them
    // would never be found again and be appended on every run.
    anyhow::ensure!(
        !name.trim().is_empty() && name.trim() == name,
        "invalid cron name {name:?}: empty or with leading/trailing blanks"
    );
    let debian = ctx.os_family != "RedHat";
    let spool = if debian {
        format!("/var/spool/cron/crontabs/{user}")
    } else {
        format!("/var/spool/cron/{user}")
    };
    let p = ctx.host_path(&spool)?;
    let cur = match std::fs::read_to_string(&p) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
    };
    let (before, block, after) = find_block(&cur, name);
    let want = render(name, kind).context("render")?;
    let mut out = Outcome::default();
    if *ensure == Ensure::Absent && block.is_none() {
        return Ok(out);
    }
    // What cron checks before it loads the file: owned by the user (and on
    // Debian group crontab, as crontab(1) leaves it), mode 0600.
    let uid = if *ensure == Ensure::Present {
        match user_uid(ctx, user) {
            Ok(u) => u,
            // A user resource may create it earlier in this same run.
            Err(e) if ctx.noop => {
                out.change(format!(
                    "{e:#}: a real run fails unless it is created first"
                ));
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let gid = if debian {
        Some(ctx.accounts()?.gid("crontab").unwrap_or(0))
    } else {
        None
    };
    let new = match (ensure, &block) {
        (Ensure::Absent, None) => return Ok(out),
        (Ensure::Absent, Some(_)) => {
            out.change("removed");
            format!("{before}{after}")
        }
        (Ensure::Present, Some(b)) if *b == want => {
            let m =
                std::fs::metadata(&p).with_context(|| format!("cannot stat {}", p.display()))?;
            if uid.is_none_or(|u| u == m.uid())
                && gid.is_none_or(|g| g == m.gid())
                && m.mode() & 0o7777 == 0o600
            {
                return Ok(out);
            }
            // Rewritten (not chmod/chown in place): cron reloads a crontab
            // when the spool directory's mtime changes, which a rename does.
            out.change(format!(
                "owner/mode of {} repaired (was {}:{} {:04o}; cron ignores it so)",
                p.display(),
                m.uid(),
                m.gid(),
                m.mode() & 0o7777
            ));
            cur.clone()
        }
        (Ensure::Present, Some(_)) => {
            out.change(if sensitive {
                "entry changed (redacted)".to_owned()
            } else {
                format!("entry changed: {}", want.lines().last().unwrap_or(""))
            });
            format!("{before}{want}{after}")
        }
        (Ensure::Present, None) => {
            out.change(if sensitive {
                "entry added (redacted)".to_owned()
            } else {
                format!("entry added: {}", want.lines().last().unwrap_or(""))
            });
            let sep = if before.is_empty() || before.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            format!("{before}{sep}{want}")
        }
    };
    if ctx.noop {
        return Ok(out);
    }
    let dir = p.parent().context("spool dir")?;
    if !dir.exists() {
        create_spool_dir(dir, debian, gid)?;
    }
    // Removing the last entry of a user whose account is gone: keep the
    // file's owner as it is.
    let uid = match uid {
        Some(u) => Some(u),
        None => std::fs::metadata(&p).ok().map(|m| m.uid()),
    };
    ctx.journal(&p)?;
    write_crontab(&p, new.as_bytes(), uid, gid)?;
    Ok(out)
}

/// The uid of `user`: from the target's passwd, or on the host itself also
/// through NSS (LDAP/SSSD users have crontabs too). Fails, in noop as well,
/// when the user does not exist.
fn user_uid(ctx: &mut Ctx, user: &str) -> anyhow::Result<Option<u32>> {
    if let Some(u) = ctx.accounts()?.uid(user) {
        return Ok(Some(u));
    }
    if !ctx.in_root()
        && let Ok(Some(pw)) = nix::unistd::User::from_name(user)
    {
        return Ok(Some(pw.uid.as_raw()));
    }
    anyhow::bail!(
        "cron user {user:?} does not exist in {}; create it first (a user resource this cron entry requires)",
        ctx.root.join("etc/passwd").display()
    )
}

/// Creates a missing spool directory the way the cron package does:
/// Debian `crontabs` root:crontab 1730, RedHat `cron` root 0700.
fn create_spool_dir(dir: &std::path::Path, debian: bool, gid: Option<u32>) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mode = if debian { 0o1730 } else { 0o700 };
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::os::unix::fs::chown(dir, Some(0), gid)
        .with_context(|| format!("cannot chown {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", dir.display()))?;
    Ok(())
}

/// Replaces a crontab atomically with its final owner and mode already on
/// the temp file (cron never sees a root-owned or half-written crontab).
/// The temp name starts with a dot, which cron skips.
fn write_crontab(
    p: &std::path::Path,
    bytes: &[u8],
    uid: Option<u32>,
    gid: Option<u32>,
) -> anyhow::Result<()> {
    let dir = p.parent().context("spool dir")?;
    let fname = p.file_name().context("crontab name")?;
    let tmp = dir.join(format!(".{}.troupe-new", fname.to_string_lossy()));
    let _ = std::fs::remove_file(&tmp);
    super::file::write_temp(&tmp, bytes, uid, gid, 0o600, false)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let synced = std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, p));
    if let Err(e) = synced {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot replace {}", p.display()));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cmd: &str) -> Kind {
        Kind::Cron {
            name: "backup".into(),
            ensure: Ensure::Present,
            command: cmd.into(),
            user: "root".into(),
            minute: "5".into(),
            hour: "*".into(),
            monthday: "*".into(),
            month: "*".into(),
            weekday: "*".into(),
            environment: [("MAILTO".to_owned(), "ops".to_owned())].into(),
        }
    }

    #[test]
    fn finds_and_replaces_only_its_block() {
        let b = render("backup", &entry("/usr/bin/backup")).unwrap();
        let text = format!("# user line\n0 1 * * * /bin/other\n{b}# after\n");
        let (before, block, after) = find_block(&text, "backup");
        assert_eq!(before, "# user line\n0 1 * * * /bin/other\n");
        assert_eq!(block.as_deref(), Some(b.as_str()));
        assert_eq!(after, "# after\n");
        let (_, none, _) = find_block(&text, "other");
        assert!(none.is_none());
    }
}
