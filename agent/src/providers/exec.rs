//! exec provider: runs an argv (never through a shell) when its guards
//! (`creates`, `onlyif`, `unless`, `refreshonly`) say so.
//!
//! Under `--root` the command and its `onlyif`/`unless` checks run inside
//! the root through `chroot` (never against the host): the program, `cwd`
//! and `user` all come from the root, and `creates` is resolved inside it.
//! A root without the program fails with a clear error.

use super::{Ctx, Outcome, cmd};
use anyhow::Context;
use std::collections::BTreeMap;
use std::time::Duration;
use troupe_catalog::Kind;

struct Runner {
    cwd: Option<std::path::PathBuf>,
    env: BTreeMap<String, String>,
    uid: Option<u32>,
    gid: Option<u32>,
    timeout: Duration,
    chroot: Option<std::path::PathBuf>,
    user: Option<String>,
}

impl Runner {
    fn run(&self, argv: &[String]) -> anyhow::Result<cmd::Output> {
        cmd::run(&cmd::Spec {
            argv,
            cwd: self.cwd.as_deref(),
            env: Some(&self.env),
            uid: self.uid,
            gid: self.gid,
            timeout: Some(self.timeout),
            chroot: self.chroot.as_deref(),
            chroot_user: self.user.as_deref(),
        })
    }
}

pub fn exec(ctx: &mut Ctx, kind: &Kind, refresh: bool, sensitive: bool) -> anyhow::Result<Outcome> {
    let Kind::Exec {
        name: _,
        command,
        cwd,
        environment,
        user,
        timeout,
        creates,
        onlyif,
        unless,
        refreshonly,
        returns,
    } = kind
    else {
        anyhow::bail!("not an exec resource");
    };
    let mut out = Outcome::default();
    if *refreshonly && !refresh {
        return Ok(out);
    }
    anyhow::ensure!(
        *timeout != Some(0),
        "timeout 0 would kill the command at once: give the most seconds it may take (default 300)"
    );
    if let Some(c) = creates
        && ctx.host_path(c)?.symlink_metadata().is_ok()
    {
        return Ok(out);
    }
    if let Some(d) = cwd {
        let host = ctx.host_path(d)?;
        // In noop a directory resource may not have created it yet.
        anyhow::ensure!(
            ctx.noop || host.is_dir(),
            "working directory {d} does not exist{}; create it first (a directory resource this exec requires)",
            if ctx.in_root() {
                format!(" in {}", ctx.root.display())
            } else {
                String::new()
            }
        );
    }
    let (uid, gid) = match user {
        None => (None, None),
        // Resolved by `chroot --userspec` inside the root.
        Some(_) if ctx.in_root() => (None, None),
        Some(u) => {
            let pw = nix::unistd::User::from_name(u)
                .ok()
                .flatten()
                .with_context(|| format!("user {u:?} (to run the command as) does not exist"))?;
            (Some(pw.uid.as_raw()), Some(pw.gid.as_raw()))
        }
    };
    let mut env = environment.clone();
    if ctx.in_root()
        && let Some(u) = user
        && let Some(pw) = ctx.accounts()?.users.get(u.as_str())
    {
        // `chroot --userspec` sets no HOME/USER/LOGNAME; outside a root
        // the command runner does (from the host's passwd).
        for (k, v) in [("HOME", &pw.home), ("USER", u), ("LOGNAME", u)] {
            env.entry(k.to_owned()).or_insert_with(|| v.clone());
        }
    }
    let runner = Runner {
        cwd: cwd.as_ref().map(Into::into),
        env,
        uid,
        gid,
        timeout: Duration::from_secs(timeout.unwrap_or(300)),
        chroot: ctx.in_root().then(|| ctx.root.clone()),
        user: user.clone(),
    };
    if let Some(check) = onlyif {
        let o = runner.run(check).context("onlyif check could not run")?;
        if !o.ok() {
            return Ok(out);
        }
    }
    if let Some(check) = unless {
        let o = runner.run(check).context("unless check could not run")?;
        if o.ok() {
            return Ok(out);
        }
    }
    let shown = if sensitive {
        "(command redacted)".to_owned()
    } else {
        command.join(" ")
    };
    out.refreshed = refresh;
    if ctx.noop {
        out.change(format!("would run: {shown}"));
        return Ok(out);
    }
    let o = runner.run(command)?;
    let ok_codes: &[i32] = if returns.is_empty() { &[0] } else { returns };
    let ok = o.code.is_some_and(|c| ok_codes.contains(&c));
    let output = if sensitive {
        "(output redacted)".to_owned()
    } else {
        o.tail()
    };
    anyhow::ensure!(ok, "`{shown}` failed with {}: {output}", o.describe());
    out.change(format!("ran: {shown} ({})", o.describe()));
    Ok(out)
}
