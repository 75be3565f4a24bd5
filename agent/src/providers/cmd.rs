//! Running external programs (package managers, init systems, execs):
//! always an argv (never a shell), stdin closed, output captured (bounded),
//! killed with its whole process group after a timeout.

use anyhow::Context;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Most output kept from one command.
const MAX_OUTPUT: u64 = 64 * 1024;

/// How to run a command.
#[derive(Debug, Default, Clone)]
pub struct Spec<'a> {
    pub argv: &'a [String],
    pub cwd: Option<&'a Path>,
    /// Extra environment (on top of a minimal PATH/LANG environment).
    pub env: Option<&'a BTreeMap<String, String>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub timeout: Option<Duration>,
    /// Run inside this root (`--root`): through coreutils `chroot`, so the
    /// command, its libraries and `cwd` all come from the root and nothing
    /// runs against the host. `uid`/`gid` are ignored then; see `chroot_user`.
    pub chroot: Option<&'a Path>,
    /// With `chroot`: the user (name, resolved in the root) to run as.
    pub chroot_user: Option<&'a str>,
}

/// The argv that runs `spec` inside its chroot (or `None` without one).
fn chrooted(spec: &Spec) -> Option<Vec<String>> {
    let root = spec.chroot?;
    let mut v = vec!["/usr/sbin/chroot".to_owned()];
    if let Some(u) = spec.chroot_user {
        v.push(format!("--userspec={u}"));
    }
    v.push(root.to_string_lossy().into_owned());
    if let Some(d) = spec.cwd {
        // `env -C` (coreutils, inside the root) changes directory without
        // a shell; `--` keeps the command from being read as an option.
        v.extend([
            "/usr/bin/env".into(),
            "-C".into(),
            d.to_string_lossy().into_owned(),
        ]);
        v.push("--".into());
    }
    v.extend(spec.argv.iter().cloned());
    Some(v)
}

/// Result of a finished command.
#[derive(Debug)]
pub struct Output {
    /// Exit code, or None when killed by a signal.
    pub code: Option<i32>,
    /// stdout and stderr, interleaved per stream (stdout first).
    pub output: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// The last few lines of output, for an error message.
    pub fn tail(&self) -> String {
        let lines: Vec<&str> = self.output.trim_end().lines().collect();
        let start = lines.len().saturating_sub(6);
        lines[start..].join(" | ")
    }
    pub fn describe(&self) -> String {
        match self.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".into(),
        }
    }
}

/// Runs a command to completion (or its timeout, default 300 s).
pub fn run(spec: &Spec) -> anyhow::Result<Output> {
    anyhow::ensure!(!spec.argv.is_empty(), "empty command");
    let wrapped = chrooted(spec);
    let argv = wrapped.as_deref().unwrap_or(spec.argv);
    let (prog, args) = argv.split_first().context("empty command")?;
    let mut c = Command::new(prog);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C")
        .env("LC_ALL", "C")
        .process_group(0);
    if let Some(env) = spec.env {
        c.envs(env);
    }
    if spec.chroot.is_none() {
        if let Some(d) = spec.cwd {
            c.current_dir(d);
        }
        if let Some(g) = spec.gid {
            c.gid(g);
        }
        if let Some(u) = spec.uid {
            c.uid(u);
        }
    }
    let mut child = c.spawn().with_context(|| format!("cannot run {prog:?}"))?;
    let pid = child.id();
    let mut out = child.stdout.take().context("no stdout")?;
    let mut err = child.stderr.take().context("no stderr")?;
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = (&mut out).take(MAX_OUTPUT).read_to_end(&mut b);
        let _ = std::io::copy(&mut out, &mut std::io::sink());
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = (&mut err).take(MAX_OUTPUT).read_to_end(&mut b);
        let _ = std::io::copy(&mut err, &mut std::io::sink());
        b
    });
    let timeout = spec.timeout.unwrap_or(Duration::from_secs(300));
    let start = Instant::now();
    let mut sleep = Duration::from_micros(200);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > timeout {
            // Kill the whole process group the command leads.
            if let Ok(p) = i32::try_from(pid) {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(p),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!(
                "{prog:?} timed out after {} s and was killed",
                timeout.as_secs()
            );
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(20));
    };
    let mut b = t_out.join().unwrap_or_default();
    b.extend(t_err.join().unwrap_or_default());
    Ok(Output {
        code: status.code(),
        output: String::from_utf8_lossy(&b).into_owned(),
    })
}

/// Runs `argv` and fails with a clear message unless it exits 0.
pub fn check(argv: &[String]) -> anyhow::Result<Output> {
    let o = run(&Spec {
        argv,
        ..Default::default()
    })?;
    anyhow::ensure!(
        o.ok(),
        "`{}` failed with {}: {}",
        argv.join(" "),
        o.describe(),
        o.tail()
    );
    Ok(o)
}

/// Runs `argv` and returns whether it exited 0 (an error only when it could
/// not run at all).
pub fn succeeds(argv: &[String]) -> anyhow::Result<bool> {
    Ok(run(&Spec {
        argv,
        ..Default::default()
    })?
    .ok())
}

/// Builds an argv from string slices.
pub fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}
