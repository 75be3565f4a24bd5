//! Live progress on a real terminal (issue 16): `troupe run`'s "answered
//! N/M" and the agent bootstrap's "waiting for an operator" are drawn as a
//! live line when stderr is a terminal (checked inside tmux, against a real
//! master), and piped output carries no escape code at all.
//!
//! Needs tmux (`.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use troupe_tests::orch::{AgentSpec, Fleet};
use troupe_tests::{Master, troupe_bin};

/// A private tmux server (own socket) running one command in a 120x30
/// window. The command starts only once the pane's raw output is being
/// recorded (`pipe-pane`), so nothing it draws is missed.
struct Tmux {
    sock: PathBuf,
    raw: PathBuf,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

impl Tmux {
    fn run(dir: &Path, cmd: &Command) -> Tmux {
        let sock = dir.join("tmux.sock");
        let raw = dir.join("pane.raw");
        let go = dir.join("GO");
        let mut line: Vec<String> = vec![quote(&cmd.get_program().to_string_lossy())];
        line.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
        let script = dir.join("run.sh");
        std::fs::write(
            &script,
            format!(
                "while [ ! -e {go} ]; do sleep 0.05; done\n{}\necho EXIT=$?\nsleep 600\n",
                line.join(" "),
                go = quote(&go.to_string_lossy()),
            ),
        )
        .unwrap();
        let t = Tmux { sock, raw };
        t.tmux(&[
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "30",
            "-s",
            "t",
            &format!("sh {}", quote(&script.to_string_lossy())),
        ]);
        t.tmux(&[
            "pipe-pane",
            "-o",
            "-t",
            "t",
            &format!("cat >> {}", quote(&t.raw.to_string_lossy())),
        ]);
        std::fs::write(&go, "").unwrap();
        t
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("tmux (apt-get install tmux)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "t"])
    }

    /// Polls the screen until `needle` shows; returns that screen.
    fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "{needle:?} never showed on the terminal; last screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    fn raw(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.raw).unwrap_or_default()).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .arg("kill-server")
            .output();
    }
}

#[test]
fn bootstrap_waiting_is_a_live_line_on_a_terminal_and_plain_in_a_pipe() {
    let m = Master::start();
    let dir = tempfile::tempdir().unwrap();

    // On a terminal: one spinner line with what it waits for and the time.
    let t = Tmux::run(dir.path(), &m.bootstrap_command("web1", None));
    let screen = t.wait_for(
        "waiting for an operator to sign web1",
        Duration::from_secs(20),
    );
    assert!(
        screen.contains("`troupe ca sign web1` on the master"),
        "{screen}"
    );
    // It redraws in place: after more polls the screen still holds one
    // such line, and no "still waiting" plain lines.
    std::thread::sleep(Duration::from_millis(1200));
    let screen = t.screen();
    assert_eq!(
        screen
            .matches("waiting for an operator to sign web1")
            .count(),
        1,
        "{screen}"
    );
    assert!(!screen.contains("still waiting"), "{screen}");
    assert!(
        t.raw().contains('\x1b'),
        "a live line redraws with escape codes"
    );
    m.ca_ok(&["sign", "web1"]);
    let screen = t.wait_for("EXIT=", Duration::from_secs(20));
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(
        !screen.contains("waiting for an operator"),
        "the spinner is cleared when signed:\n{screen}"
    );

    // Piped: plain lines saying the same, and not one escape code.
    let out = troupe_tests::run(m.bootstrap_command("web2", None).args(["--wait", "1s"]));
    assert!(!out.success());
    assert!(
        out.stderr.contains(
            "still waiting for an operator to sign web2 (`troupe ca sign web2` on the master)"
        ),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains('\x1b') && !out.stdout.contains('\x1b'),
        "{out:?}"
    );
}

/// The process id of `troupe-agent listen` with state dir `state`.
fn listener_pid(state: &Path) -> u32 {
    let want = state.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) == Some("listen") && args.contains(&want) {
            return pid;
        }
    }
    panic!("no troupe-agent listen for {want}");
}

fn kill(sig: &str, pid: u32) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn run_answers_are_counted_live_on_a_terminal_and_plain_in_a_pipe() {
    let f = Fleet::start(&[AgentSpec::new("web1").role("web")]);
    // A stopped agent is attached but answers nothing: the count stays at
    // 0/1 until the wait ends.
    let pid = listener_pid(&f.state("web1"));
    kill("STOP", pid);
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(troupe_bin());
    cmd.args(["run", "ping", "--role", "web", "--timeout", "3s"])
        .arg("--server")
        .arg(&f.master.url)
        .arg("--identity")
        .arg(&f.bastion)
        .arg("--key")
        .arg(&f.alice.path)
        .arg("--passphrase-file")
        .arg(&f.alice.passphrase_file);
    let t = Tmux::run(dir.path(), &cmd);
    let screen = t.wait_for("answered 0/1", Duration::from_secs(20));
    assert!(screen.contains("ping"), "{screen}");
    let screen = t.wait_for("EXIT=", Duration::from_secs(30));
    assert!(
        screen.contains("EXIT=2"),
        "no answer is a failure:\n{screen}"
    );
    assert!(
        !screen.contains("answered 0/1"),
        "the bar is cleared:\n{screen}"
    );
    assert!(t.raw().contains('\x1b'));

    // Piped: the same run prints plain lines only.
    let out = f.troupe_run(&["ping", "--role", "web", "--timeout", "1s"]);
    kill("CONT", pid);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.contains("no answer"), "{out:?}");
    assert!(
        !out.stderr.contains('\x1b') && !out.stdout.contains('\x1b'),
        "{out:?}"
    );
    assert!(!out.stderr.contains("answered 0/1"), "{out:?}");
}
