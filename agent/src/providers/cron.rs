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
    let new = match (ensure, &block) {
        (Ensure::Absent, None) => return Ok(out),
        (Ensure::Absent, Some(_)) => {
            out.change("removed");
            format!("{before}{after}")
        }
        (Ensure::Present, Some(b)) if *b == want => return Ok(out),
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
    let uid = ctx
        .accounts()?
        .uid(user)
        .with_context(|| format!("cron user {user:?} does not exist"))?;
    let gid = if debian {
        ctx.accounts()?.gid("crontab").unwrap_or(0)
    } else {
        0
    };
    let dir = p.parent().context("spool dir")?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    ctx.journal(&p)?;
    crate::state::write_atomic(&p, new.as_bytes(), 0o600)?;
    let m = std::fs::metadata(&p)?;
    if m.uid() != uid || m.gid() != gid {
        std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
    }
    Ok(out)
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
