//! Issue 17, events and the deploy workflow, end to end: a master whose
//! master.toml sends events to a real HTTP receiver in this test, a real
//! SMTP server with STARTTLS (Debian's python3-aiosmtpd) and a webhook
//! that never answers; real agents. Each event kind is caused the way it
//! happens in production (a CSR without a key, failing and recovering
//! runs, a node going quiet, short certificates, code staged, promoted
//! and broken, a command refused by an agent's policy, a release that
//! fails on a host and one that completes) and must arrive at the
//! receiver with its content; the release logs are read back with
//! `troupe deploy log`, the end of each release arrives by mail with its
//! full log, and the dead webhook delays nothing and is counted in the
//! metrics.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_tests::orch::{AgentSpec, AptGet, Fleet, shell_script, stand_in_package_tools};
use troupe_tests::{Master, MasterOptions, run, wait_until};

type Got = Arc<Mutex<Vec<serde_json::Value>>>;

/// A webhook receiver: every POST body (JSON) is kept; answers 200.
fn receiver() -> (String, Got) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/t0k3n", l.local_addr().unwrap());
    let got: Got = Arc::default();
    let g = got.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut r = BufReader::new(s);
            let (mut len, mut first) = (0usize, String::new());
            r.read_line(&mut first).ok();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_ok()
                && first.starts_with("POST /hooks/t0k3n ")
                && let Ok(v) = serde_json::from_slice(&body)
            {
                g.lock().unwrap().push(v);
            }
            let _ = r
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

/// A webhook that accepts connections and never answers.
fn dead() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    url
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stand-in package and service tools: web2's apt-get fails.
fn tools(spec: &AgentSpec, state: &Path) -> String {
    let apt = if spec.name == "web2" {
        AptGet::Fails
    } else {
        AptGet::Installs
    };
    stand_in_package_tools(state, apt, r#"["package.*", "service.*"]"#)
}

fn kinds(got: &Got) -> Vec<String> {
    got.lock()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

fn find(got: &Got, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut out = None;
    wait_until(Duration::from_secs(30), what, || {
        out = got.lock().unwrap().iter().find(|v| f(v)).cloned();
        out.is_some()
    });
    out.unwrap()
}

#[test]
fn every_event_reaches_real_receivers_and_releases_are_logged_and_mailed() {
    troupe_pki::tls::install_crypto_provider();
    let work = tempfile::tempdir().unwrap();
    let (url, got) = receiver();
    let dead_url = dead();
    let (_smtp, smtp_port, maildir) = troupe_tests::mail::smtp_server(work.path());
    let metrics_port = free_port();
    let tree = work.path().join("modules");
    troupe_tests::netns::write_tree(&tree, "hello", 1, 1);
    // The master's classification is what targeting trusts for a host that
    // has checked in (an agent's own `role` only fills in for a host never
    // classified): classify the hosts as their agents say they are, or
    // web1 (which runs once below) would be role "base" to the master and
    // `--role web` would match web2 only.
    std::fs::write(
        tree.join("site.toml"),
        "default_environment = \"production\"\n\n\
         [[node]]\nmatch = \"web*\"\nrole = \"web\"\n\n\
         [[node]]\nmatch = \"db*\"\nrole = \"db\"\n",
    )
    .unwrap();
    for r in ["web", "db"] {
        std::fs::copy(
            tree.join("environments/production/roles/base.toml"),
            tree.join(format!("environments/production/roles/{r}.toml")),
        )
        .unwrap();
    }
    let conf_dir = work.path().join("etc");
    std::fs::create_dir_all(&conf_dir).unwrap();
    // The exec hook: each event's kind (from its environment) and its JSON
    // line (from stdin), appended to a file.
    let hook_out = work.path().join("hook.out");
    let hook = conf_dir.join("hook");
    shell_script(
        &hook,
        &format!(
            "{{ printf '%s ' \"$TROUPE_EVENT_KIND\"; cat; }} >> {}",
            hook_out.display()
        ),
    );
    let conf = conf_dir.join("master.toml");
    std::fs::write(
        &conf,
        format!(
            r#"
[events]
scan_interval = "1s"
cert_expiry_days = 14

[[events.webhook]]
name = "chat"
url = "{url}"
kinds = ["*"]

[[events.webhook]]
name = "dead"
url = "{dead_url}"
timeout = "2s"
retries = 3
retry_delay = "1s"

[[events.exec]]
name = "hook"
argv = ["{hook}"]

[[events.email]]
name = "mail"
server = "localhost"
port = {smtp_port}
from = "troupe@example.com"
to = ["ops@example.com"]
ca_file = "{ca}"
kinds = ["deploy_finished", "deploy_aborted"]
"#,
            ca = work.path().join("smtp-ca.pem").display(),
            hook = hook.display(),
        ),
    )
    .unwrap();
    let master = Master::start_with(MasterOptions {
        modules: Some(tree.clone()),
        extra_args: [
            "--config",
            conf.to_str().unwrap(),
            "--hold",
            "production",
            "--code-poll",
            "200ms",
            "--run-interval",
            "1s",
            "--cert-ttl",
            "2d",
            "--metrics-listen",
            &format!("127.0.0.1:{metrics_port}"),
        ]
        .map(String::from)
        .to_vec(),
    });
    let f = Fleet::start_on(
        master,
        &[
            AgentSpec::new("web1").role("web"),
            AgentSpec::new("web2").role("web"),
            AgentSpec::new("db1").role("db"),
        ],
        tools,
    );
    let m = &f.master;

    // --print-config hides the webhook's token.
    let pc = run(Command::new(troupe_tests::troupe_bin())
        .args(["master", "--print-config", "--json", "--config"])
        .arg(&conf));
    pc.assert_success();
    assert!(!pc.stdout.contains("t0k3n"), "{}", pc.stdout);

    // cert_expiring: every certificate lasts 2 days.
    let e = find(&got, "cert_expiring for web1", |v| {
        v["kind"] == "cert_expiring" && v["node"] == "web1"
    });
    let days = e["data"]["days_left"].as_i64().unwrap();
    assert!(days == 1 || days == 2, "{e}");
    assert!(
        e["data"]["serial"].as_str().is_some_and(|s| !s.is_empty()),
        "{e}"
    );
    assert!(
        e["text"]
            .as_str()
            .unwrap()
            .starts_with("web1: certificate expires"),
        "{e}"
    );
    assert!(e.get("code").is_none(), "{e}");

    // csr_pending: a request without a key.
    let (_k, csr) = troupe_tests::make_csr("newhost", None);
    f.block_on(async {
        let mut ca = m.ca_client().await;
        ca.submit_csr(troupe_proto::v1::SubmitCsrRequest {
            name: "newhost".into(),
            csr,
        })
        .await
        .unwrap();
    });
    let e = find(&got, "csr_pending", |v| v["kind"] == "csr_pending");
    assert_eq!(e["node"], "newhost");
    assert!(
        e["text"]
            .as_str()
            .unwrap()
            .contains("troupe ca sign newhost"),
        "{e}"
    );

    // run_failed, then run_recovered: web1 converges into a sandbox whose
    // /etc is a file (so /etc/motd cannot be written), then a good one.
    let sandbox = work.path().join("root-web1");
    std::fs::create_dir_all(&sandbox).unwrap();
    std::fs::write(sandbox.join("etc"), "not a directory").unwrap();
    let agent_run = || {
        run(Command::new(troupe_tests::agent_bin())
            .args(["run", "--once", "--server", &m.url, "--state"])
            .arg(m.agent_state("web1"))
            .arg("--root")
            .arg(&sandbox))
    };
    let out = agent_run();
    assert!(matches!(out.code, Some(4 | 6)), "{out:?}");
    let e = find(&got, "run_failed", |v| v["kind"] == "run_failed");
    assert_eq!(e["node"], "web1");
    assert_eq!(e["environment"], "production");
    assert!(e["data"]["failed"].as_u64().unwrap() >= 1, "{e}");
    // A failure carries its typed error code (docs/json.md "Error codes").
    assert_eq!(e["code"], "failed", "{e}");
    assert!(
        e["text"].as_str().unwrap().starts_with("web1: run failed"),
        "{e}"
    );
    std::fs::remove_file(sandbox.join("etc")).unwrap();
    std::fs::create_dir(sandbox.join("etc")).unwrap();
    let out = agent_run();
    assert!(out.code == Some(2) || out.code == Some(0), "{out:?}");
    let e = find(&got, "run_recovered", |v| v["kind"] == "run_recovered");
    assert_eq!(e["node"], "web1");
    assert_eq!(e["data"]["failed"], 0, "{e}");
    assert!(e.get("code").is_none(), "{e}");
    // node_stale: web1 checks in no more (run interval 1s: stale after 3).
    let e = find(&got, "node_stale", |v| v["kind"] == "node_stale");
    assert_eq!(e["node"], "web1");
    assert!(e["data"]["seconds_since"].as_u64().unwrap() >= 3, "{e}");
    assert!(e["text"].as_str().unwrap().contains("stale"), "{e}");

    // code_promoted: production is held; a change is staged, then promoted.
    std::fs::write(
        tree.join("environments/production/data/common.toml"),
        "[motd]\nbanner = \"hello again\"\n",
    )
    .unwrap();
    wait_until(Duration::from_secs(60), "staged code promoted", || {
        run(Command::new(troupe_tests::troupe_bin())
            .args(["env", "promote", "production", "--yes", "--data"])
            .arg(&m.data))
        .success()
    });
    let e = find(&got, "code_promoted", |v| v["kind"] == "code_promoted");
    assert_eq!(e["environment"], "production");
    assert!(
        e["data"]["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{e}"
    );
    // code_load_failed: a broken site file.
    std::fs::write(tree.join("site.toml"), "[[node]\n").unwrap();
    let e = find(&got, "code_load_failed", |v| {
        v["kind"] == "code_load_failed"
    });
    assert!(
        e["data"]["error"].as_str().unwrap().contains("site.toml"),
        "{e}"
    );
    assert_eq!(e["code"], "compile_failed", "{e}");

    // command_refused: maintenance.on is denied by policy on role db.
    let out = f.troupe_run(&["maintenance.on", "message=x", "--role", "db"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let e = find(&got, "command_refused", |v| v["kind"] == "command_refused");
    assert_eq!(e["node"], "db1");
    assert_eq!(e["data"]["code"], "policy_denied");
    assert_eq!(e["code"], "permission_denied", "{e}");
    assert_eq!(e["data"]["action"], "maintenance.on", "{e}");

    // A release without --yes and without a terminal: refused, nothing run.
    let rel = work.path().join("release.toml");
    std::fs::write(
        &rel,
        "title = \"nginx 1.24\"\n[[package]]\nname = \"nginx\"\nversion = \"1.24.0-1\"\n",
    )
    .unwrap();
    let rel = rel.to_str().unwrap();
    let out = f.troupe("deploy", &[rel, "--role", "web"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("--yes"), "{out:?}");
    assert!(!std::fs::exists(m.data.join("deploys")).unwrap());

    // A release that fails on web2 (aborted), then one on web1 only
    // (finished). The dead webhook delays neither.
    let t = Instant::now();
    let out = f.troupe("deploy", &[rel, "--yes", "--role", "web"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stdout.contains("plan for release \"nginx 1.24\":"),
        "{out:?}"
    );
    assert!(out.stdout.contains("1. nginx 1.24.0-1"), "{out:?}");
    assert!(out.stdout.contains("batch 1: web1"), "{out:?}");
    assert!(out.stdout.contains("batch 2: web2"), "{out:?}");
    // web1 is stale (no check-in since its runs above) but attached: it is
    // targeted, and no host is left out.
    assert!(
        out.stdout.contains("matched 2 host(s): web1 web2"),
        "{out:?}"
    );
    assert!(!out.stdout.contains("left out"), "{out:?}");
    let id1 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("release id: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no release id: {out:?}"))
        .to_string();
    let out = f.troupe("deploy", &[rel, "--yes", "--name", "web1", "--json"]);
    out.assert_success();
    // Generous for a loaded machine (they take a few seconds); a sink that
    // blocked would cost each of the dozen deploy events the dead webhook
    // takes its 4 attempts of 2 s plus 3 s of retry delays: over 2 minutes.
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "two releases took {:?}: a dead webhook held them up",
        t.elapsed()
    );
    let id2 = out
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "release")
        .map(|v| v["id"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no release event: {out:?}"));
    let of1 = |kind: &str| {
        find(&got, kind, |v| {
            v["kind"] == kind && v["release"] == id1.as_str()
        })
    };
    let e = of1("deploy_started");
    assert_eq!(e["data"]["by"], "bastion", "{e}");
    assert_eq!(e["data"]["title"], "nginx 1.24", "{e}");
    assert_eq!(e["data"]["packages"][0]["name"], "nginx", "{e}");
    assert_eq!(
        e["data"]["packages"][0]["batches"],
        serde_json::json!([["web1"], ["web2"]]),
        "{e}"
    );
    assert!(
        e["text"]
            .as_str()
            .unwrap()
            .contains("nginx 1.24.0-1 on 2 host(s)"),
        "{e}"
    );
    let e = of1("deploy_package_started");
    assert_eq!(
        (
            &e["data"]["package"],
            &e["data"]["version"],
            &e["data"]["hosts"]
        ),
        (&"nginx".into(), &"1.24.0-1".into(), &2.into()),
        "{e}"
    );
    let e = of1("deploy_package_done");
    assert_eq!(e["data"]["ok"], serde_json::json!(["web1"]), "{e}");
    assert_eq!(e["data"]["failed"], serde_json::json!(["web2"]), "{e}");
    let e = of1("deploy_aborted");
    assert_eq!(e["data"]["failed_hosts"], 1, "{e}");
    assert_eq!(e["data"]["completed"], 1, "{e}");
    assert!(e["text"].as_str().unwrap().contains("ABORTED"), "{e}");
    assert_eq!(e["code"], "failed", "{e}");
    let e = find(&got, "deploy_host_failed", |v| {
        v["kind"] == "deploy_host_failed"
    });
    assert_eq!(e["node"], "web2");
    assert_eq!(e["data"]["step"], "update nginx to 1.24.0-1");
    assert!(
        e["data"]["undo"][0]
            .as_str()
            .unwrap()
            .contains("--name web2"),
        "{e}"
    );
    assert!(
        e["data"]["error"]
            .as_str()
            .unwrap()
            .contains("Unable to fetch"),
        "{e}"
    );
    assert_eq!(e["code"], "failed", "{e}");
    let e = find(&got, "deploy_finished", |v| {
        v["kind"] == "deploy_finished" && v["release"] == id2.as_str()
    });
    assert_eq!(e["data"]["status"], "complete");
    assert_eq!(e["data"]["completed"], 1, "{e}");
    assert!(e.get("code").is_none(), "{e}");
    find(&got, "deploy_step", |v| {
        v["kind"] == "deploy_step" && v["node"] == "web1"
    });

    // The logs, on the master.
    let log = |args: &[&str]| {
        run(Command::new(troupe_tests::troupe_bin())
            .args(["deploy", "log"])
            .args(args)
            .arg("--data")
            .arg(&m.data))
    };
    let out = log(&["--list", "--json"]);
    out.assert_success();
    let list: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], id2.as_str());
    assert_eq!(list[0]["status"], "complete");
    assert_eq!(list[1]["id"], id1.as_str());
    assert_eq!(list[1]["status"], "aborted");
    assert_eq!(list[1]["failed_hosts"], 1);
    assert_eq!(list[1]["by"], "bastion");
    let out = log(&[&id1, "--json"]);
    out.assert_success();
    let l: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let steps: Vec<&serde_json::Value> = l["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["record"]["record"] == "step")
        .collect();
    assert!(steps.len() >= 4, "{l}");
    for s in &steps {
        assert!(
            s["record"]["host"].is_string() && s["record"]["duration_ms"].is_u64(),
            "{s}"
        );
        assert!(
            s["record"]["started"].as_str().unwrap().ends_with('Z'),
            "{s}"
        );
    }
    assert!(
        steps
            .iter()
            .any(|s| s["record"]["host"] == "web2" && s["record"]["result"] == "failed")
    );
    let out = log(&[&id1]);
    out.assert_success();
    assert!(out.stdout.contains("status: aborted"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("web2 FAILED (nginx) at update nginx to 1.24.0-1"),
        "{}",
        out.stdout
    );
    let out = log(&["20990101T000000Z-000000"]);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("--list"), "{out:?}");

    // Mail at the end of each release, with its full log, over STARTTLS.
    wait_until(Duration::from_secs(30), "two mails", || {
        let all = troupe_tests::mail::mails(&maildir).join("\n----\n");
        all.contains(&id1) && all.contains(&id2)
    });
    let all = troupe_tests::mail::mails(&maildir).join("\n----\n");
    assert!(all.contains("ABORTED"), "{all}");
    assert!(
        all.contains("web2 FAILED (nginx) at update nginx to 1.24.0-1"),
        "{all}"
    );
    assert!(all.contains("finished: complete"), "{all}");

    // Every kind that has a real cause reached the receiver.
    let seen = kinds(&got);
    for k in [
        "run_failed",
        "run_recovered",
        "node_stale",
        "csr_pending",
        "cert_expiring",
        "code_promoted",
        "code_load_failed",
        "command_refused",
        "deploy_started",
        "deploy_package_started",
        "deploy_step",
        "deploy_host_failed",
        "deploy_package_done",
        "deploy_finished",
        "deploy_aborted",
    ] {
        assert!(seen.iter().any(|s| s == k), "{k} never arrived: {seen:?}");
    }
    // The exec hook got every kind but deploy_step (its default filter),
    // each as the same JSON as the webhook, with TROUPE_EVENT_KIND set.
    let hooked = |k: &str| {
        std::fs::read_to_string(&hook_out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(env, _)| *env == k)
            .filter_map(|(_, j)| serde_json::from_str::<serde_json::Value>(j).ok())
            .find(|v| v["kind"] == k)
    };
    for k in seen.iter().filter(|k| *k != "deploy_step") {
        wait_until(
            Duration::from_secs(30),
            &format!("{k} on the exec hook"),
            || hooked(k).is_some(),
        );
        let h = hooked(k).unwrap();
        let w = got
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["seq"] == h["seq"])
            .cloned()
            .unwrap_or_else(|| panic!("{k}: exec hook seq {} not on the webhook", h["seq"]));
        assert_eq!(
            h, w,
            "{k}: the exec hook and the webhook got different events"
        );
    }
    assert!(
        hooked("deploy_step").is_none(),
        "deploy_step reached the exec hook"
    );
    // The dead webhook's failures are counted.
    wait_until(
        Duration::from_secs(30),
        "dead webhook failures in the metrics",
        || {
            let Ok(body) = troupe_tests::metrics_text(metrics_port) else {
                return false;
            };
            body.lines().any(|l| {
                l.starts_with("troupe_event_sink_attempt_failures_total{sink=\"dead\"}")
                    && l.rsplit(' ')
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                        >= 1
            })
        },
    );
}
