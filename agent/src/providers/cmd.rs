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
    let out = child.stdout.take().context("no stdout")?;
    let err = child.stderr.take().context("no stderr")?;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let out_buf = drain(out, done_tx.clone());
    let err_buf = drain(err, done_tx);
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
            wait_for_eof(&done_rx, prog);
            anyhow::bail!(
                "{prog:?} timed out after {} s and was killed",
                timeout.as_secs()
            );
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(20));
    };
    wait_for_eof(&done_rx, prog);
    let take = |b: &std::sync::Arc<std::sync::Mutex<Vec<u8>>>| {
        b.lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    };
    let mut b = take(&out_buf);
    b.extend(take(&err_buf));
    Ok(Output {
        code: status.code(),
        output: String::from_utf8_lossy(&b).into_owned(),
    })
}

/// How long output pipes may stay open after the command ended: a process
/// it left behind (a daemon started without closing stdout) would otherwise
/// keep the run waiting for end-of-file for as long as it lives.
const EOF_GRACE: Duration = Duration::from_secs(1);

/// Reads `r` on a thread into a shared buffer (at most [`MAX_OUTPUT`]
/// kept), then drains it to end-of-file and says so on `done`. The thread
/// may outlive the command (see [`EOF_GRACE`]); it ends with the pipe.
fn drain(
    mut r: impl Read + Send + 'static,
    done: std::sync::mpsc::Sender<()>,
) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match r.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if let Ok(mut v) = b.lock() {
                        let room = usize::try_from(MAX_OUTPUT)
                            .unwrap_or(usize::MAX)
                            .saturating_sub(v.len());
                        v.extend_from_slice(&chunk[..n.min(room)]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done.send(());
    });
    buf
}

/// Waits (at most [`EOF_GRACE`]) for both output pipes to reach
/// end-of-file after the command ended.
fn wait_for_eof(done: &std::sync::mpsc::Receiver<()>, prog: &str) {
    let deadline = Instant::now() + EOF_GRACE;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        if done.recv_timeout(left).is_err() {
            tracing::warn!(
                "{prog:?} ended but a process it started still holds its output open \
                 (a daemon that did not detach?); not waiting for it"
            );
            return;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: u64) -> anyhow::Result<Output> {
        let a = argv(&["sh", "-c", script]);
        run(&Spec {
            argv: &a,
            timeout: Some(Duration::from_secs(timeout)),
            ..Default::default()
        })
    }

    fn alive(pid: i32) -> bool {
        // A zombie waiting for its new parent counts as gone.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    }

    #[test]
    fn a_background_child_holding_the_output_open_does_not_hang_the_run() {
        // Like an init script that starts a daemon without closing its
        // stdout: the command itself exits at once.
        let t = Instant::now();
        let o = sh("sleep 30 & echo started $!", 60).unwrap();
        let took = t.elapsed();
        let pid: Option<i32> = o
            .output
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok());
        if let Some(p) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(o.ok(), "{o:?}");
        assert!(o.output.starts_with("started "), "{o:?}");
        assert!(took < Duration::from_secs(10), "took {took:?}");
    }

    #[test]
    fn a_timeout_kills_the_whole_process_group_and_returns() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let t = Instant::now();
        let e = sh(
            &format!("sleep 30 & echo $! > {}; sleep 30", pidfile.display()),
            1,
        )
        .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(format!("{e:#}").contains("timed out"), "{e:#}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            !alive(pid)
        });
        assert!(gone, "background child {pid} survived the timeout");
    }

    #[test]
    fn the_agents_environment_does_not_leak_into_commands() {
        // The test process has HOME, CARGO_*, RUST_* ...: none may reach it.
        let o = sh("env", 10).unwrap();
        let keys: Vec<&str> = o
            .output
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        for k in &keys {
            assert!(
                ["PATH", "LANG", "LC_ALL", "PWD", "SHLVL", "_"].contains(k),
                "{k} leaked into the command's environment: {keys:?}"
            );
        }
    }
}
