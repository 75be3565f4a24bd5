//! Issue 17: `troupe deploy` delivers its deploy events from the bastion,
//! through sinks in the bastion's configuration file (`--config`, the
//! `[events]` syntax of master.toml): a real HTTP receiver (axum), an exec
//! hook, aiosmtpd speaking SMTP with STARTTLS required (Debian's
//! python3-aiosmtpd), and a webhook that never answers, which must block
//! and fail nothing. Two real releases over real agents (package and
//! service tools are stand-in scripts): one that aborts when web2 fails,
//! one that finishes; each ends with a mail carrying the full log.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_tests::orch::{AgentSpec, AptGet, Fleet, stand_in_package_tools};

/// Stand-in package tools: web2's apt-get fails.
fn tools(spec: &AgentSpec, state: &Path) -> String {
    let apt = if spec.name == "web2" {
        AptGet::Fails
    } else {
        AptGet::Installs
    };
    stand_in_package_tools(
        state,
        apt,
        r#"["package.*", "service.*", "lb.*", "health.*"]"#,
    )
}

type Got = Arc<Mutex<Vec<serde_json::Value>>>;

/// An HTTP receiver (POST /hook records the JSON body) and a server that
/// accepts connections and never answers, on their own runtime.
fn receivers(rt: &tokio::runtime::Runtime) -> (String, String, Got) {
    let got: Got = Arc::default();
    let g = got.clone();
    rt.block_on(async move {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| async move {
                g.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                "ok"
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await });
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}/hook", dead.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = dead.accept().await {
                held.push(s);
            }
        });
        (url, dead_url, got)
    })
}

fn wait(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The release id `troupe deploy` printed.
fn release_id(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("release id: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no release id in {stdout}"))
        .to_string()
}

#[test]
fn deploy_events_reach_the_bastions_own_sinks_and_a_dead_one_blocks_nothing() {
    let f = Fleet::start_with(
        &[
            AgentSpec::new("web1").role("web"),
            AgentSpec::new("web2").role("web"),
        ],
        tools,
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, dead_url, got) = receivers(&rt);
    let dir = tempfile::tempdir().unwrap();
    let (_smtp, port, maildir) = troupe_tests::mail::smtp_server(dir.path());
    let hook_out = dir.path().join("hook.jsonl");
    let cfg = dir.path().join("bastion.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[events]
[[events.webhook]]
name = "chat"
url = "{url}"
[[events.webhook]]
name = "dead"
url = "{dead_url}"
timeout = "300ms"
retries = 0
[[events.exec]]
name = "hook"
argv = ["/bin/sh", "-c", "cat >> {out}"]
[[events.email]]
name = "mail"
server = "localhost"
port = {port}
from = "troupe@example.com"
to = ["ops@example.com"]
ca_file = "{ca}"
kinds = ["deploy_finished", "deploy_aborted"]
"#,
            out = hook_out.display(),
            ca = dir.path().join("smtp-ca.pem").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = cfg.to_string_lossy().into_owned();
    let rel = dir.path().join("release.toml");
    std::fs::write(
        &rel,
        "title = \"nginx 1.24\"\n[[package]]\nname = \"nginx\"\nversion = \"1.24.0-1\"\n",
    )
    .unwrap();
    let rel = rel.to_string_lossy().into_owned();

    // A bad configuration stops the deploy before anything is sent.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[events]\n[[events.exec]]\nargv = [\"notify\"]\n").unwrap();
    let out = f.troupe(
        "deploy",
        &[
            &rel,
            "--yes",
            "--role",
            "web",
            "--config",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("absolute path"), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(f.state("web1").join("fake/version")).unwrap(),
        "1.22.1-9"
    );

    // 1. web1 updates, web2 fails: the release aborts (exit 2).
    let t = Instant::now();
    let out = f.troupe(
        "deploy",
        &[&rel, "--yes", "--role", "web", "--config", &cfg],
    );
    let took = t.elapsed();
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stdout.contains("release STOPPED"), "{out:?}");
    let id1 = release_id(&out.stdout);
    // The dead webhook is reported, and changed nothing but a warning.
    assert!(
        out.stderr.contains("event sink dead:") && out.stderr.contains("not delivered"),
        "{out:?}"
    );
    assert!(took < Duration::from_secs(60), "{took:?}");

    // 2. web1 alone: the release finishes.
    let out = f.troupe(
        "deploy",
        &[
            &rel, "--yes", "--role", "web", "--name", "web1", "--config", &cfg,
        ],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let id2 = release_id(&out.stdout);
    assert_ne!(id1, id2);

    // The chat webhook: every deploy kind but deploy_step, in order, each
    // with a text line chat tools show.
    let seen = got.lock().unwrap().clone();
    let kinds = |id: &str| -> Vec<String> {
        seen.iter()
            .filter(|v| v["release"] == id)
            .map(|v| v["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        kinds(&id1),
        [
            "deploy_started",
            "deploy_package_started",
            "deploy_host_failed",
            "deploy_package_done",
            "deploy_aborted"
        ],
        "{seen:#?}"
    );
    assert_eq!(
        kinds(&id2),
        [
            "deploy_started",
            "deploy_package_started",
            "deploy_package_done",
            "deploy_finished"
        ],
        "{seen:#?}"
    );
    let failed = seen
        .iter()
        .find(|v| v["kind"] == "deploy_host_failed")
        .unwrap();
    assert_eq!(failed["node"], "web2");
    // The same typed error codes as the master's events (ADR 0008).
    assert_eq!(failed["code"], "failed", "{failed}");
    assert!(
        seen.iter()
            .any(|v| v["kind"] == "deploy_aborted" && v["code"] == "failed")
    );
    assert!(
        failed["text"]
            .as_str()
            .unwrap()
            .contains("release nginx 1.24: web2 FAILED (nginx) at update nginx to 1.24.0-1"),
        "{failed}"
    );
    assert!(
        failed["data"]["undo"][0]
            .as_str()
            .unwrap()
            .contains("--name web2"),
        "{failed}"
    );
    let started = seen.iter().find(|v| v["kind"] == "deploy_started").unwrap();
    assert!(
        started["text"]
            .as_str()
            .unwrap()
            .contains("release nginx 1.24 started by bastion: nginx 1.24.0-1 on 2 host(s)"),
        "{started}"
    );
    let done = seen
        .iter()
        .find(|v| v["kind"] == "deploy_finished")
        .unwrap();
    assert_eq!(done["data"]["status"], "complete");

    // The exec hook got the same events as JSON on stdin.
    let hooked: Vec<serde_json::Value> = std::fs::read_to_string(&hook_out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(hooked.len(), 9, "{hooked:#?}");
    assert_eq!(hooked[4]["kind"], "deploy_aborted");

    // One mail per release end, each with the release's full log.
    wait("two mails", 30, || {
        troupe_tests::mail::mails(&maildir).len() == 2
    });
    let all = troupe_tests::mail::mails(&maildir).join("\n----\n");
    for needle in [
        "Subject: [troupe] release nginx 1.24 ABORTED".to_string(),
        "Subject: [troupe] release nginx 1.24 finished: complete".to_string(),
        format!("release {id1}: nginx 1.24"),
        format!("release {id2}: nginx 1.24"),
        "web2 FAILED (nginx) at update nginx to 1.24.0-1".to_string(),
        "web1: update nginx to 1.24.0-1: ok".to_string(),
        "undo: troupe run maintenance.off".to_string(),
        "To: ops@example.com".to_string(),
    ] {
        assert!(all.contains(&needle), "missing {needle:?} in:\n{all}");
    }
    // The master kept the same logs (the bastion's sinks are besides).
    let log = troupe_tests::run(
        std::process::Command::new(troupe_tests::troupe_bin())
            .args(["deploy", "log", &id1, "--data"])
            .arg(&f.master.data),
    );
    assert!(log.stdout.contains("status: aborted"), "{log:?}");
}
