//! Init scripts as they are found in the wild, on the real host without
//! systemd: one that starts its daemon without detaching it or closing its
//! stdout, enabled for runlevel S (rcS.d, early boot). The script, its
//! process and its links are removed afterwards, whatever happens. Skipped
//! where systemd is the running init or the Debian tools are missing.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use troupe_catalog::report::Report;
use troupe_catalog::{Catalog, Kind, ServiceState};

struct Script(String);

impl Drop for Script {
    fn drop(&mut self) {
        let script = format!("/etc/init.d/{}", self.0);
        let _ = Command::new(&script).arg("stop").output();
        let _ = Command::new("update-rc.d")
            .args(["-f", &self.0, "remove"])
            .output();
        let _ = std::fs::remove_file(script);
        let _ = std::fs::remove_file(format!("/run/{}.pid", self.0));
    }
}

fn have(tool: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists())
}

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

#[test]
fn an_undetached_daemon_does_not_hang_the_run_and_an_rcs_service_is_enabled_once() {
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
    let name = format!("troupe-e-{}", std::process::id());
    let script = format!(
        r#"#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Required-Start:
# Required-Stop:
# Default-Start:     S
# Default-Stop:
# Short-Description: Troupe test service (early boot, undetached daemon)
### END INIT INFO
PIDFILE=/run/{name}.pid
running() {{ [ -f "$PIDFILE" ] && p=$(cat "$PIDFILE") && [ -r "/proc/$p/status" ] && ! grep -q '^State:.*Z' "/proc/$p/status"; }}
case "$1" in
  start)
    running && exit 0
    echo starting
    sleep 600 &
    echo $! > "$PIDFILE" ;;
  stop)
    running && kill "$(cat "$PIDFILE")"
    rm -f "$PIDFILE" ;;
  restart) "$0" stop; "$0" start ;;
  status) running ;;
  *) exit 3 ;;
esac
"#
    );
    let path = format!("/etc/init.d/{name}");
    let _guard = Script(name.clone());
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut c = new_catalog();
    c.resources.push(res(Kind::Service {
        name: name.clone(),
        ensure: Some(ServiceState::Running),
        enable: Some(true),
    }));
    let t = Instant::now();
    let (code, r) = run_host(&env, &c);
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "the run waited for the daemon: {:?}",
        t.elapsed()
    );
    assert_eq!(code, 2, "{r:?}");
    let rcs = std::fs::read_dir("/etc/rcS.d")
        .map(|rd| {
            rd.flatten().any(|e| {
                let f = e.file_name().to_string_lossy().into_owned();
                f.starts_with('S') && f.get(3..) == Some(name.as_str())
            })
        })
        .unwrap_or(false);
    assert!(rcs, "no start link in /etc/rcS.d");
    // Enabled in rcS.d is enabled: no "enabled at boot" on every run.
    let (code, r) = run_host(&env, &c);
    assert_eq!(code, 0, "{r:?}");
    assert!(all_unchanged(&r), "{r:?}");
    // Stopped and disabled (the rcS.d link becomes a K link), once.
    c.resources[0] = res(Kind::Service {
        name: name.clone(),
        ensure: Some(ServiceState::Stopped),
        enable: Some(false),
    });
    let (code, r) = run_host(&env, &c);
    assert_eq!(code, 2, "{r:?}");
    let (code, r) = run_host(&env, &c);
    assert_eq!(code, 0, "{r:?}");
    assert!(all_unchanged(&r), "{r:?}");
}
