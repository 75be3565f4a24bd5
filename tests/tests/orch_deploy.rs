//! `troupe deploy`: a rolling release over three real agents that fails on
//! the second host and stops there. The agents' package and service tools
//! are stand-in scripts in the test's temporary directory (configured with
//! `[tools]`), so nothing on this machine is installed or restarted.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use troupe_tests::orch::{AgentSpec, Fleet};

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Fake dpkg-query / apt-get / systemctl for one agent, keeping the
/// "installed version" in STATE/fake/version and a log of every call.
fn tools(spec: &AgentSpec, state: &Path) -> String {
    let d = state.join("fake");
    std::fs::create_dir_all(&d).unwrap();
    let v = d.join("version");
    let log = d.join("calls.log");
    std::fs::write(&v, "1.22.1-9").unwrap();
    script(
        &d.join("dpkg-query"),
        &format!(
            "echo \"dpkg-query $*\" >> {log}\nprintf 'install ok installed\\t%s' \"$(cat {v})\"",
            log = log.display(),
            v = v.display()
        ),
    );
    let apt = if spec.name == "web2" {
        format!(
            "echo \"apt-get $*\" >> {}\necho 'E: Unable to fetch some archives' >&2\nexit 100",
            log.display()
        )
    } else {
        format!(
            "echo \"apt-get $*\" >> {log}\nfor a; do last=$a; done\necho \"${{last#*=}}\" | tr -d '\\n' > {v}",
            log = log.display(),
            v = v.display()
        )
    };
    script(&d.join("apt-get"), &apt);
    script(
        &d.join("systemctl"),
        &format!("echo \"systemctl $*\" >> {}", log.display()),
    );
    format!(
        r#"
[[rule]]
name = "deploy"
effect = "allow"
signers = ["alice"]
actions = ["package.*", "service.*"]

[tools]
dpkg_query = "{d}/dpkg-query"
apt_get = "{d}/apt-get"
systemctl = "{d}/systemctl"
"#,
        d = d.display()
    )
}

#[test]
fn a_release_that_fails_on_the_second_host_stops_there() {
    let f = Fleet::start_with(
        &[
            AgentSpec::new("web1").role("web"),
            AgentSpec::new("web2").role("web"),
            AgentSpec::new("web3").role("web"),
        ],
        tools,
    );
    let rel = f.master.root.path().join("release.toml");
    std::fs::write(
        &rel,
        r#"
title = "nginx 1.24"
[[package]]
name = "nginx"
version = "1.24.0-1"
"#,
    )
    .unwrap();
    let rel = rel.to_string_lossy().into_owned();

    // The plan only.
    let out = f.troupe("deploy", &[&rel, "--role", "web", "--dry-run"]);
    out.assert_success();
    assert!(out.stdout.contains("update nginx to 1.24.0-1"), "{out:?}");
    let calls =
        |h: &str| std::fs::read_to_string(f.state(h).join("fake/calls.log")).unwrap_or_default();
    assert_eq!(calls("web1"), "", "a dry run runs nothing");

    let out = f.troupe("deploy", &[&rel, "--role", "web"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.contains("release STOPPED"), "{out:?}");
    assert!(
        out.stdout
            .contains("web2 (nginx): failed at step update nginx to 1.24.0-1"),
        "{out:?}"
    );
    assert!(out.stdout.contains("Unable to fetch"), "{out:?}");

    // web1: updated, services restarted, out of maintenance.
    let v1 = std::fs::read_to_string(f.state("web1").join("fake/version")).unwrap();
    assert_eq!(v1, "1.24.0-1");
    let c1 = calls("web1");
    assert!(
        c1.contains("systemctl stop -- nginx") && c1.contains("systemctl start -- nginx"),
        "{c1}"
    );
    assert!(!f.state("web1").join("maintenance").exists());
    // web2: failed at the update, left stopped and in maintenance.
    assert_eq!(
        std::fs::read_to_string(f.state("web2").join("fake/version")).unwrap(),
        "1.22.1-9"
    );
    let c2 = calls("web2");
    assert!(
        c2.contains("systemctl stop -- nginx") && !c2.contains("systemctl start"),
        "{c2}"
    );
    assert!(f.state("web2").join("maintenance").exists());
    // web3: never touched.
    assert_eq!(calls("web3"), "");
    assert!(!f.state("web3").join("maintenance").exists());
}
