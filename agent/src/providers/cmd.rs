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
    /// Run as this uid (with `gid` and the user's supplementary groups,
    /// through `setpriv --init-groups`; HOME, USER and LOGNAME set). `gid`
    /// alone is not used.
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

const SETPRIV: &str = "setpriv";

/// The argv that runs `spec` as its `uid`/`gid` on this host (or `None`):
/// through util-linux `setpriv --init-groups`, which also gives the user's
/// supplementary groups (std's `Command::uid` drops root's groups but sets
/// none of the user's). `setpriv` execs the command: no extra process.
fn as_user(spec: &Spec) -> Option<Vec<String>> {
    let uid = spec.uid?;
    let mut v = vec![SETPRIV.to_owned(), format!("--reuid={uid}")];
    if let Some(g) = spec.gid {
        v.push(format!("--regid={g}"));
    }
    v.push("--init-groups".into());
    v.push("--".into());
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
    /// Where stderr starts in `output` (a byte offset on a char boundary).
    pub stderr_at: usize,
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
    /// The command's stdout alone.
    pub fn stdout(&self) -> &str {
        self.output.get(..self.stderr_at).unwrap_or("")
    }
    /// The command's stderr alone.
    pub fn stderr(&self) -> &str {
        self.output.get(self.stderr_at..).unwrap_or("")
    }
    pub fn describe(&self) -> String {
        match self.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".into(),
        }
    }
}

/// The error of a command killed at its timeout (`downcast_ref` tells it
/// from a command that could not run), with what it wrote until then.
#[derive(Debug)]
pub struct TimedOut {
    pub program: String,
    pub secs: u64,
    pub output: Output,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} timed out after {} s and was killed",
            self.program, self.secs
        )
    }
}

impl std::error::Error for TimedOut {}

/// Runs a command to completion (or its timeout, default 300 s).
pub fn run(spec: &Spec) -> anyhow::Result<Output> {
    anyhow::ensure!(!spec.argv.is_empty(), "empty command");
    let wrapped = chrooted(spec).or_else(|| as_user(spec));
    let argv = wrapped.as_deref().unwrap_or(spec.argv);
    let (prog, args) = argv.split_first().context("empty command")?;
    // Messages name the command, not its chroot/setpriv wrapper.
    let shown = spec.argv.first().map_or("", String::as_str);
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
    if spec.chroot.is_none()
        && let Some(u) = spec.uid
        && let Ok(Some(pw)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u))
    {
        // What a login gives (the command's own environment may override).
        c.env("HOME", &pw.dir)
            .env("USER", &pw.name)
            .env("LOGNAME", &pw.name);
    }
    if let Some(env) = spec.env {
        c.envs(env);
    }
    if spec.chroot.is_none()
        && let Some(d) = spec.cwd
    {
        c.current_dir(d);
    }
    let mut child = c.spawn().with_context(|| {
        if prog == SETPRIV {
            format!(
                "cannot run {shown:?} as uid {:?}: {SETPRIV} (util-linux) is needed to switch user",
                spec.uid
            )
        } else {
            format!("cannot run {shown:?}")
        }
    })?;
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
            wait_for_eof(&done_rx, shown);
            return Err(TimedOut {
                program: shown.to_owned(),
                secs: timeout.as_secs(),
                output: collect(None, &out_buf, &err_buf),
            }
            .into());
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(20));
    };
    wait_for_eof(&done_rx, shown);
    Ok(collect(status.code(), &out_buf, &err_buf))
}

type Buf = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// The output read so far from both pipes.
fn collect(code: Option<i32>, out: &Buf, err: &Buf) -> Output {
    let take = |b: &Buf| {
        b.lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    };
    let mut output = String::from_utf8_lossy(&take(out)).into_owned();
    let stderr_at = output.len();
    output.push_str(&String::from_utf8_lossy(&take(err)));
    Output {
        code,
        output,
        stderr_at,
    }
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
pub(crate) mod tests {
    use super::*;

    fn sh(script: &str, timeout: u64) -> anyhow::Result<Output> {
        let a = argv(&["sh", "-c", script]);
        run(&Spec {
            argv: &a,
            timeout: Some(Duration::from_secs(timeout)),
            ..Default::default()
        })
    }

    /// Whether `pid` runs (the orchestration tests use it too).
    pub(crate) fn alive(pid: i32) -> bool {
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

    /// A user of this host that is listed as a member of some group (its
    /// supplementary group), if there is one.
    fn user_with_supplementary_group() -> Option<(nix::unistd::User, u32)> {
        let group = std::fs::read_to_string("/etc/group").ok()?;
        group.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let gid: u32 = f.get(2)?.parse().ok()?;
            f.get(3)?.split(',').find_map(|m| {
                let u = nix::unistd::User::from_name(m).ok()??;
                (u.uid.as_raw() != 0 && u.gid.as_raw() != gid).then_some((u, gid))
            })
        })
    }

    #[test]
    fn a_command_run_as_a_user_gets_that_users_groups_and_home() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("not root; skipped");
            return;
        }
        let Some((user, extra)) = user_with_supplementary_group() else {
            eprintln!("no user with a supplementary group on this host; skipped");
            return;
        };
        let a = argv(&["sh", "-c", "id -G; echo \"$HOME $USER $LOGNAME\""]);
        let o = run(&Spec {
            argv: &a,
            cwd: Some(Path::new("/")),
            uid: Some(user.uid.as_raw()),
            gid: Some(user.gid.as_raw()),
            timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        })
        .unwrap();
        assert!(o.ok(), "{o:?}");
        let mut lines = o.output.lines();
        let groups: Vec<u32> = lines
            .next()
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect();
        // Not root's groups, but the user's own (initgroups).
        assert!(!groups.contains(&0), "{groups:?}");
        assert!(groups.contains(&user.gid.as_raw()), "{groups:?}");
        assert!(groups.contains(&extra), "{groups:?} lacks {extra}");
        assert_eq!(
            lines.next().unwrap_or(""),
            format!("{} {} {}", user.dir.display(), user.name, user.name)
        );
    }
}
