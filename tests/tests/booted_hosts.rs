//! Booted hosts (issue 14): systemd-nspawn containers with a real systemd
//! as PID 1, the fleet's own apt repository, and the real `troupe-agent`
//! installed from it as a package.
//!
//! - the test bed itself: boot, run commands, reboot (the host's changes
//!   survive), power cut, and nothing left behind;
//! - scenario 4: the service provider against real systemd: start +
//!   enable, nothing to do on a second run, a config change restarts once,
//!   a unit-file change is followed by daemon-reload and one restart, stop
//!   + disable, and units that do not start (203/EXEC; a start condition
//!   not met, as chrony in a container) fail their resource with systemd's
//!   own words.
//!
//! Needs root, systemd-nspawn and the Debian root of scripts/debian-root.sh
//! (.ci/run prepares it); skipped with a message elsewhere, fails under CI.
//! Each test prints what it cost.

use std::time::Instant;
use troupe_catalog::report::{Report, Status};
use troupe_catalog::{Catalog, Ensure, Kind, PackageEnsure, Resource, ResourceId, ServiceState};
use troupe_tests::nspawn::{APP, APP_PORT, Booted, Fleet};

fn res(kind: Kind) -> Resource {
    Resource {
        id: kind.id(),
        kind,
        requires: vec![],
        notify: vec![],
        sensitive: false,
        source: None,
        tags: vec![],
    }
}

fn file(c: &mut Catalog, path: &str, body: &str) -> Resource {
    let content = Some(c.add_content(body.as_bytes()));
    res(Kind::File {
        path: path.into(),
        ensure: Ensure::Present,
        content,
        mode: Some(0o644),
        owner: None,
        group: None,
        validate: None,
    })
}

fn service(name: &str, running: bool) -> Resource {
    res(Kind::Service {
        name: name.into(),
        ensure: Some(if running {
            ServiceState::Running
        } else {
            ServiceState::Stopped
        }),
        enable: Some(running),
    })
}

fn daemon_reload() -> Resource {
    res(Kind::Exec {
        name: "daemon-reload".into(),
        command: vec!["/usr/bin/systemctl".into(), "daemon-reload".into()],
        cwd: None,
        environment: Default::default(),
        user: None,
        timeout: None,
        creates: None,
        onlyif: None,
        unless: None,
        refreshonly: true,
        returns: vec![],
    })
}

fn id(kind: &str, title: &str) -> ResourceId {
    ResourceId::new(kind, title)
}

/// `troupe-agent run --once` inside the host on `c`: (exit code, report).
fn converge(h: &Booted, c: &Catalog) -> (Option<i32>, Report) {
    std::fs::write(h.root.join("root/catalog.json"), c.to_canonical_json()).unwrap();
    let o = h.sh(
        "troupe-agent run --once --output json --catalog /root/catalog.json \
         --state /var/lib/troupe-test --facts-dir /nonexistent",
    );
    let r: Report = serde_json::from_str(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); exit {:?}\nstdout {}\nstderr {}",
            o.code, o.stdout, o.stderr
        )
    });
    (o.code, r)
}

fn status<'a>(r: &'a Report, rid: &str) -> &'a troupe_catalog::report::ResourceReport {
    r.resources
        .iter()
        .find(|x| x.id.0 == rid)
        .unwrap_or_else(|| panic!("{rid} not in report {r:#?}"))
}

/// How many times systemd started `unit` (its journal's "Started" lines).
fn starts(h: &Booted, unit: &str) -> usize {
    h.sh_ok(&format!("journalctl --no-pager -o cat -u {unit}"))
        .lines()
        .filter(|l| l.starts_with("Started "))
        .count()
}

#[test]
fn a_booted_host_runs_systemd_reboots_keeps_its_changes_and_is_removed() {
    let t0 = Instant::now();
    let Some(fleet) = Fleet::require() else {
        return;
    };
    let mut h = fleet.boot("bed1");
    let root = h.root.clone();
    assert_eq!(h.sh_ok("cat /proc/1/comm").trim(), "systemd");
    assert_eq!(h.sh_ok("hostname").trim(), "bed1.example.com");
    // Services of the image were started by its systemd.
    assert_eq!(h.sh_ok("systemctl is-active nginx").trim(), "active");
    // Its own network: its address, and nothing but the switch.
    let addr = h.sh_ok("ip -4 -o addr show dev eth0");
    assert!(addr.contains(&h.host.ip.to_string()), "{addr}");
    let routes = h.sh_ok("ip route");
    assert!(!routes.contains("default"), "no way out: {routes}");
    // The fleet repository is the only apt source, and it works.
    h.sh_ok("apt-get update -qq && apt-cache policy inhouse-app | grep -q 1.2");

    // A change survives a clean reboot, which is a new systemd.
    h.sh_ok("echo kept > /etc/bed-marker");
    let pid1_start = h.sh_ok("cut -d' ' -f22 /proc/1/stat");
    h.reboot();
    assert_eq!(h.sh_ok("cat /etc/bed-marker").trim(), "kept");
    assert_eq!(h.sh_ok("cat /proc/1/comm").trim(), "systemd");
    assert_ne!(h.sh_ok("cut -d' ' -f22 /proc/1/stat"), pid1_start);
    // A power cut: PID 1 killed from outside; the host boots again.
    let nginx_run = h.sh_ok("systemctl show -p InvocationID --value nginx");
    h.kill();
    assert!(!h.running());
    h.boot();
    assert_eq!(h.sh_ok("systemctl is-active nginx").trim(), "active");
    assert_ne!(
        h.sh_ok("systemctl show -p InvocationID --value nginx"),
        nginx_run
    );
    let times = h.boot_times.clone();
    drop(h);
    // Nothing left: no mount, no directory.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&*root.to_string_lossy()),
        "overlay still mounted"
    );
    assert!(!root.exists(), "{} still there", root.display());
    eprintln!(
        "FIGURES booted host: boots (first, clean reboot, after power cut) {:?}; whole test {:.1?}",
        times,
        t0.elapsed()
    );
}

#[test]
fn service_provider_against_real_systemd() {
    let t0 = Instant::now();
    let Some(fleet) = Fleet::require() else {
        return;
    };
    let h = fleet.boot("svc1");
    let booted = t0.elapsed();
    // The agent comes from the fleet's repository, as a package.
    h.sh_ok("apt-get update -qq && apt-get install -y -qq troupe-agent >/dev/null");
    assert!(h.root.join("usr/bin/troupe-agent").exists());

    let conf = "/etc/inhouse-app.conf";
    let dropin = "/etc/systemd/system/inhouse-app.service.d/override.conf";
    let sid = format!("service[{APP}]");
    let build = |conf_body: &str, env: Option<&str>, running: bool| {
        let mut c = Catalog::new("svc1.example.com", "production", "v1");
        c.resources.push(res(Kind::Package {
            name: APP.into(),
            ensure: PackageEnsure::Version("1.0".into()),
        }));
        let mut f = file(&mut c, conf, conf_body);
        f.requires.push(id("package", APP));
        f.notify.push(id("service", APP));
        c.resources.push(f);
        if let Some(env) = env {
            c.resources.push(res(Kind::Directory {
                path: "/etc/systemd/system/inhouse-app.service.d".into(),
                ensure: Ensure::Present,
                mode: Some(0o755),
                owner: None,
                group: None,
                purge: false,
            }));
            let mut d = file(&mut c, dropin, &format!("[Service]\nEnvironment={env}\n"));
            d.requires
                .push(id("directory", "/etc/systemd/system/inhouse-app.service.d"));
            d.notify.push(id("exec", "daemon-reload"));
            c.resources.push(d);
            let mut r = daemon_reload();
            r.notify.push(id("service", APP));
            c.resources.push(r);
        }
        let mut s = service(APP, running);
        s.requires.push(id("package", APP));
        c.resources.push(s);
        c
    };

    // 1. Install from the repository, start, enable.
    let (code, r) = converge(&h, &build("v1\n", None, true));
    assert_eq!(code, Some(2), "{r:#?}");
    let s = status(&r, &sid);
    assert!(s.events.iter().any(|e| e == "started"), "{s:?}");
    assert!(s.events.iter().any(|e| e == "enabled at boot"), "{s:?}");
    assert!(
        !s.refreshed,
        "a service this run started is not restarted again"
    );
    assert_eq!(h.unit_prop(APP, "ActiveState"), "active");
    assert_eq!(h.unit_prop(APP, "UnitFileState"), "enabled");
    assert_eq!(
        h.sh_ok(&format!("dpkg-query -W -f '${{Version}}' {APP}")),
        "1.0"
    );
    let health = h.sh_ok(&format!(
        "for i in $(seq 50); do curl -fsS http://127.0.0.1:{APP_PORT}/health && exit 0; sleep 0.1; done; exit 1"
    ));
    assert_eq!(health.trim(), "ok 1.0");
    let pid1 = h.unit_prop(APP, "MainPID");
    assert_eq!(starts(&h, APP), 1);

    // 2. Nothing to do.
    let (code, r) = converge(&h, &build("v1\n", None, true));
    assert_eq!(code, Some(0), "{r:#?}");
    assert!(
        r.resources.iter().all(|x| x.status == Status::Unchanged),
        "{r:#?}"
    );
    assert_eq!(h.unit_prop(APP, "MainPID"), pid1);

    // 3. A changed config file restarts the service exactly once.
    let (code, r) = converge(&h, &build("v2\n", None, true));
    assert_eq!(code, Some(2), "{r:#?}");
    assert!(status(&r, &sid).refreshed, "{r:#?}");
    let pid2 = h.unit_prop(APP, "MainPID");
    assert_ne!(pid2, pid1);
    assert_eq!(starts(&h, APP), 2);

    // 4. A unit-file change: daemon-reload, then one restart that runs
    // the new definition.
    let (code, r) = converge(&h, &build("v2\n", Some("TROUPE_T=1"), true));
    assert_eq!(code, Some(2), "{r:#?}");
    assert_eq!(status(&r, "exec[daemon-reload]").status, Status::Changed);
    assert!(status(&r, &sid).refreshed, "{r:#?}");
    assert_eq!(h.unit_prop(APP, "NeedDaemonReload"), "no");
    assert!(h.unit_prop(APP, "Environment").contains("TROUPE_T=1"));
    let pid3 = h.unit_prop(APP, "MainPID");
    assert_ne!(pid3, pid2);
    assert_eq!(starts(&h, APP), 3);
    let env = h.sh_ok(&format!("tr '\\0' '\\n' < /proc/{pid3}/environ"));
    assert!(env.contains("TROUPE_T=1"), "{env}");

    // 5. Stop and disable.
    let (code, r) = converge(&h, &build("v2\n", Some("TROUPE_T=1"), false));
    assert_eq!(code, Some(2), "{r:#?}");
    let s = status(&r, &sid);
    assert!(s.events.iter().any(|e| e == "stopped"), "{s:?}");
    assert!(s.events.iter().any(|e| e == "disabled at boot"), "{s:?}");
    assert_eq!(h.unit_prop(APP, "ActiveState"), "inactive");
    assert_eq!(h.unit_prop(APP, "UnitFileState"), "disabled");

    // 6. Units that do not start fail their resource, in systemd's words,
    // on every run (never "started" again).
    std::fs::write(
        h.root.join("etc/systemd/system/troupe-broken.service"),
        "[Service]\nExecStart=/nonexistent/troupe-broken\n",
    )
    .unwrap();
    h.sh_ok("systemctl daemon-reload");
    let mut c = Catalog::new("svc1.example.com", "production", "v1");
    c.resources.push(res(Kind::Service {
        name: "troupe-broken".into(),
        ensure: Some(ServiceState::Running),
        enable: None,
    }));
    // chrony: ConditionCapability=CAP_SYS_TIME, which nspawn drops (one
    // of nspawn::CONTAINER_LIMITS): systemd skips it.
    c.resources.push(res(Kind::Service {
        name: "chrony".into(),
        ensure: Some(ServiceState::Running),
        enable: None,
    }));
    for _ in 0..2 {
        let t = Instant::now();
        let (code, r) = converge(&h, &c);
        assert_ne!(code, Some(0), "{r:#?}");
        assert_ne!(code, Some(2), "{r:#?}");
        let s = status(&r, "service[troupe-broken]");
        assert_eq!(s.status, Status::Failed, "{s:?}");
        let why = s.events.join(" ");
        assert!(
            why.contains("status 203") && why.contains("/nonexistent/troupe-broken"),
            "{why}"
        );
        let s = status(&r, "service[chrony]");
        assert_eq!(s.status, Status::Failed, "{s:?}");
        let why = s.events.join(" ");
        assert!(
            why.contains("condition") && why.contains("ConditionCapability=CAP_SYS_TIME"),
            "{why}"
        );
        assert!(
            t.elapsed().as_secs() < 10,
            "a failing start is reported at once, not after a timeout: {:?}",
            t.elapsed()
        );
    }
    eprintln!(
        "FIGURES service provider on a booted host: boot {booted:.1?}; whole test {:.1?}",
        t0.elapsed()
    );
}
