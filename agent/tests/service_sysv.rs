//! The service provider's init-script path on a real host without systemd:
//! an LSB init script in /etc/init.d, run through `service`, enabled with
//! `update-rc.d`. The script and its links are removed afterwards, whatever
//! happens. Skipped (with a message) where systemd is the running init or
//! the Debian tools are missing; fails under CI=true if they are missing.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use troupe_catalog::report::{Report, Status};
use troupe_catalog::{Catalog, Kind, ServiceState};

/// The init script, its pidfile and its rc links; removed on drop.
struct InitScript {
    name: String,
    log: PathBuf,
}

impl InitScript {
    fn install(name: &str, log: &Path) -> InitScript {
        let script = format!(
            r#"#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Required-Start:
# Required-Stop:
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: Troupe test service
### END INIT INFO
PIDFILE=/run/{name}.pid
LOG={log}
# A killed daemon may linger as a zombie where PID 1 does not reap.
running() {{ [ -f "$PIDFILE" ] && p=$(cat "$PIDFILE") && [ -r "/proc/$p/status" ] && ! grep -q '^State:.*Z' "/proc/$p/status"; }}
case "$1" in
  start)
    running && exit 0
    echo start >> "$LOG"
    setsid sleep 600 </dev/null >/dev/null 2>&1 &
    echo $! > "$PIDFILE" ;;
  stop)
    running && kill "$(cat "$PIDFILE")"
    rm -f "$PIDFILE"
    echo stop >> "$LOG" ;;
  restart)
    "$0" stop; "$0" start; echo restart >> "$LOG" ;;
  status)
    running ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 3 ;;
esac
"#,
            log = log.display()
        );
        let path = format!("/etc/init.d/{name}");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        InitScript {
            name: name.into(),
            log: log.to_owned(),
        }
    }
    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(format!("/run/{}.pid", self.name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
    fn is_running(&self) -> bool {
        Command::new(format!("/etc/init.d/{}", self.name))
            .arg("status")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
    fn start_links(&self) -> usize {
        (2..=5)
            .filter(|rl| {
                std::fs::read_dir(format!("/etc/rc{rl}.d"))
                    .map(|rd| {
                        rd.flatten().any(|e| {
                            let f = e.file_name().to_string_lossy().into_owned();
                            f.starts_with('S') && f.get(3..) == Some(self.name.as_str())
                        })
                    })
                    .unwrap_or(false)
            })
            .count()
    }
    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for InitScript {
    fn drop(&mut self) {
        let script = format!("/etc/init.d/{}", self.name);
        let _ = Command::new(&script).arg("stop").output();
        let _ = Command::new("update-rc.d")
            .args(["-f", &self.name, "remove"])
            .output();
        let _ = std::fs::remove_file(script);
        let _ = std::fs::remove_file(format!("/run/{}.pid", self.name));
    }
}

fn have(tool: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

/// `troupe-agent run --once` against the real host (`--root /`).
fn run_host(env: &Env, c: &Catalog) -> (i32, Report) {
    let cat = env.write_catalog(c);
    let out = Command::new(BIN)
        .args(["run", "--once", "--output", "json", "--root", "/"])
        .args(["--state", env.state().to_str().unwrap()])
        .args(["--facts-dir", "/nonexistent"])
        .args(["--catalog", cat.to_str().unwrap()])
        .output()
        .unwrap();
    let code = out.status.code().unwrap_or(-1);
    let report: Report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); exit {code}; stderr {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, report)
}

fn catalog(c: &mut Catalog, conf: &Path, body: &[u8], name: &str, running: bool) {
    c.resources.clear();
    let mut f = file(c, conf.to_str().unwrap(), body, 0o644);
    f.notify.push(id("service", name));
    c.resources.push(f);
    c.resources.push(res(Kind::Service {
        name: name.into(),
        ensure: Some(if running {
            ServiceState::Running
        } else {
            ServiceState::Stopped
        }),
        enable: Some(running),
    }));
}

#[test]
fn init_script_service_is_started_enabled_refreshed_once_and_stopped() {
    if Path::new("/run/systemd/system").is_dir() {
        eprintln!("systemd is the running init here; the init-script path is not used");
        return;
    }
    if !(have("service") && have("update-rc.d")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "service/update-rc.d missing: .ci/run must install init-system-helpers"
        );
        eprintln!("service or update-rc.d missing; skipped");
        return;
    }
    let env = Env::new();
    let name = format!("troupe-t-{}", std::process::id());
    let svc = InitScript::install(&name, &env.dir.path().join("svc.log"));
    let conf = env.dir.path().join("svc.conf");
    let mut c = new_catalog();
    let sid = format!("service[{name}]");

    // First run: config written, service started and enabled at boot; the
    // refresh is not a second start.
    catalog(&mut c, &conf, b"v1\n", &name, true);
    let (code, r) = run_host(&env, &c);
    assert_eq!(code, 2, "{r:?}");
    let s = status_of(&r, &sid);
    assert_eq!(s.status, Status::Changed, "{s:?}");
    assert!(s.events.iter().any(|e| e == "started"), "{s:?}");
    assert!(s.events.iter().any(|e| e == "enabled at boot"), "{s:?}");
    assert!(svc.is_running());
    assert_eq!(svc.start_links(), 4, "start links in rc2..rc5");
    assert_eq!(svc.log(), ["start"]);
    let pid1 = svc.pid().unwrap();

    // Second run: nothing to do.
    let (code, r) = run_host(&env, &c);
    assert_eq!(code, 0, "{r:?}");
    assert!(all_unchanged(&r), "{r:?}");
    assert_eq!(svc.pid(), Some(pid1));

    // A config change restarts it exactly once.
    catalog(&mut c, &conf, b"v2\n", &name, true);
    let (code, r) = run_host(&env, &c);
    assert_eq!(code, 2, "{r:?}");
    let s = status_of(&r, &sid);
    assert!(s.refreshed, "{s:?}");
    assert_eq!(svc.log(), ["start", "stop", "start", "restart"]);
    assert_ne!(svc.pid(), Some(pid1));

    // Killed behind the agent's back: started again.
    let _ = Command::new("kill")
        .arg(svc.pid().unwrap().to_string())
        .status();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!svc.is_running());
    let (code, r) = run_host(&env, &c);
    assert_eq!(code, 2, "{r:?}");
    assert!(status_of(&r, &sid).events.iter().any(|e| e == "started"));
    assert!(svc.is_running());

    // Stopped and disabled; then idempotent.
    catalog(&mut c, &conf, b"v2\n", &name, false);
    let (code, r) = run_host(&env, &c);
    assert_eq!(code, 2, "{r:?}");
    let s = status_of(&r, &sid);
    assert!(s.events.iter().any(|e| e == "stopped"), "{s:?}");
    assert!(s.events.iter().any(|e| e == "disabled at boot"), "{s:?}");
    assert!(!svc.is_running());
    assert_eq!(svc.start_links(), 0);
    let (code, r) = run_host(&env, &c);
    assert_eq!(code, 0, "{r:?}");
    assert!(all_unchanged(&r));
}
