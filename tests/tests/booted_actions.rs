//! Built-in orchestration actions on a booted host (issue 18 part 4): the
//! `package.*` and `service.*` commands are the package and service
//! providers' own code, so what the providers learnt on real hosts reaches
//! a signed command:
//!
//! - `service.restart` of a unit systemd cannot start (ExecStart missing:
//!   203/EXEC) is reported failed with systemd's own words and `troupe
//!   run` exits non-zero; it is never "restarted";
//! - `service.restart` of a running unit really restarts it (main PID
//!   changes) and says it runs;
//! - `package.update` while another process holds the dpkg frontend lock
//!   (as unattended-upgrades does) waits for the lock, then upgrades from
//!   the fleet's repository with the real apt.
//!
//! Needs root, systemd-nspawn and the Debian root of scripts/debian-root.sh
//! (.ci/run prepares it); skipped with a message elsewhere, fails under CI.
//! Prints what it cost.

use std::path::Path;
use std::time::{Duration, Instant};
use troupe_tests::nspawn::{APP, Fleet};

#[test]
fn signed_service_and_package_commands_go_through_the_providers() {
    let t0 = Instant::now();
    let Some(fleet) = Fleet::require() else {
        return;
    };
    let modules = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("modules");
    let m = fleet.start_master(&modules);
    let (keys, ops) = fleet.ops_key();
    fleet.trust_ops(&m, &ops);
    let h = fleet.boot("web1");
    fleet.share_hosts(&[&h]);
    // The package's daemon runs the listener; `noop`: its runs change
    // nothing, so the commands are the only change on this host.
    fleet.prepare_agent(
        &h,
        &m,
        &[("interval", "3600"), ("splay", "0"), ("noop", "true")],
    );
    std::fs::write(
        h.root.join("etc/troupe/orchestration.toml"),
        format!(
            "role = \"web\"\n\n[[signer]]\nname = \"ops\"\nkey = \"{}\"\n\n\
             [[rule]]\nname = \"commands\"\neffect = \"allow\"\nsigners = [\"ops\"]\n\
             actions = [\"ping\", \"package.*\", \"service.*\"]\n",
            ops.key_id()
        ),
    )
    .unwrap();
    // A unit whose program does not exist: `systemctl restart` returns 0
    // (Type=simple: the fork succeeded), the unit fails with 203/EXEC.
    std::fs::write(
        h.root.join("etc/systemd/system/broken.service"),
        "[Unit]\nDescription=a unit that cannot start\n\n[Service]\nExecStart=/nonexistent/broken-app\n",
    )
    .unwrap();
    h.sh_ok(&format!(
        "set -e; chmod 0640 /etc/troupe/orchestration.toml; systemctl daemon-reload; \
         apt-get install -y -qq {APP}=1.0 >/dev/null; systemctl enable --now -q {APP}; \
         systemctl enable --now -q troupe-agent"
    ));
    let bastion = fleet.bootstrap_bastion(&m);
    fleet.wait_for_web_listeners(&m, &bastion, &keys, 1);
    let ready = t0.elapsed();
    let run = |args: &[&str]| {
        troupe_tests::run(
            fleet
                .net
                .command(&m.host, &troupe_tests::troupe_bin())
                .arg("run")
                .args(args)
                .args(["--name", &h.fqdn, "--server", &m.url])
                .arg("--identity")
                .arg(&bastion)
                .arg("--key")
                .arg(keys.join("ops.key"))
                .arg("--passphrase-file")
                .arg(keys.join("ops.pass")),
        )
    };

    // A unit that cannot start: failed, in systemd's words.
    let out = run(&["service.restart", "name=broken"]);
    assert!(!out.success(), "{out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("ActiveState=failed"), "{out:?}");
    assert!(
        all.contains("203") && all.contains("/nonexistent/broken-app"),
        "{out:?}"
    );
    assert!(!all.contains("restart done"), "{out:?}");
    assert_eq!(h.unit_prop("broken", "ActiveState"), "failed");

    // A good restart: a new main process, and the command says it runs.
    let before = h.unit_prop(APP, "MainPID");
    let out = run(&["service.restart", &format!("name={APP}")]);
    out.assert_success();
    assert!(out.stdout.contains("the unit is running"), "{out:?}");
    let after = h.unit_prop(APP, "MainPID");
    assert!(after != before && after != "0", "{before} -> {after}");

    // The dpkg frontend lock held (an fcntl lock, as apt and
    // unattended-upgrades take it) for 4 s: package.update waits for it,
    // then upgrades with the real apt (the provider's DPkg::Lock::Timeout).
    h.sh_ok("apt-get update -qq");
    h.sh_ok(
        "nohup python3 -c \"import fcntl,time; f=open('/var/lib/dpkg/lock-frontend','w'); \
         fcntl.lockf(f, fcntl.LOCK_EX); open('/root/lock-held','w').close(); time.sleep(4)\" \
         >/dev/null 2>&1 &",
    );
    let t = Instant::now();
    while !h.root.join("root/lock-held").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the lock was never taken"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    let out = run(&["package.update", &format!("name={APP}"), "version=1.1"]);
    let waited = t.elapsed();
    out.assert_success();
    assert!(waited >= Duration::from_secs(2), "did not wait: {waited:?}");
    assert_eq!(
        h.sh_ok(&format!("dpkg-query -W -f '${{Version}}' {APP}")),
        "1.1"
    );
    eprintln!(
        "FIGURES built-in actions on a booted host: ready in {ready:.1?}; package.update behind a \
         held dpkg lock {waited:.1?}; whole test {:.1?}",
        t0.elapsed()
    );
}
