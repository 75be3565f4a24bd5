//! Issue 17: a real `troupe deploy` (the bastion signing each step, real
//! listening agents verifying them, the master storing the signed release
//! records) followed live on the dashboard's deploy page in a headless
//! Chromium: the page shows the release running, then its progress and
//! log grow and its status turns `complete` without a reload. The agents'
//! package and service tools are stand-in scripts; web2's package update
//! waits for a gate file the test creates once the browser has seen the
//! release running, so the order is certain, not a race. Screenshots in
//! `target/dashboard-screenshots/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use troupe_tests::orch::{AgentSpec, AptGet, Fleet, stand_in_package_tools};
use troupe_tests::web::Browser;
use troupe_tests::{Master, MasterOptions, troupe_bin, wait_until};

/// The gate web2's apt-get waits for (at most 60 s).
fn gate(state: &Path) -> PathBuf {
    state.parent().unwrap().join("web2-may-update")
}

/// Stand-in package tools: web2's apt-get waits for the gate file.
fn tools(spec: &AgentSpec, state: &Path) -> String {
    let apt = if spec.name == "web2" {
        AptGet::WaitsFor(gate(state))
    } else {
        AptGet::Installs
    };
    stand_in_package_tools(
        state,
        apt,
        r#"["package.*", "service.*", "lb.*", "health.*"]"#,
    )
}

#[test]
fn a_real_deploy_is_followed_live_on_the_dashboard() {
    let t0 = Instant::now();
    troupe_pki::tls::install_crypto_provider();
    let master = Master::start_with(MasterOptions {
        modules: None,
        extra_args: vec!["--web-listen".into(), "127.0.0.1:0".into()],
    });
    let f = Fleet::start_on(
        master,
        &[
            AgentSpec::new("web1").role("web"),
            AgentSpec::new("web2").role("web"),
        ],
        tools,
    );
    let addr_file = f.master.data.join("web.addr");
    wait_until(Duration::from_secs(10), "the dashboard", || {
        addr_file.exists()
    });
    let u = format!(
        "http://{}",
        std::fs::read_to_string(&addr_file).unwrap().trim()
    );
    let rel = f.master.root.path().join("release.toml");
    std::fs::write(
        &rel,
        "title = \"nginx 1.24 live\"\n[[package]]\nname = \"nginx\"\nversion = \"1.24.0-1\"\n",
    )
    .unwrap();

    let mut b = Browser::open(&format!("{u}/deploys"));
    let t_deploy = Instant::now();
    let deploy = Command::new(troupe_bin())
        .arg("deploy")
        .arg(&rel)
        .args(["--yes", "--role", "web", "--server"])
        .arg(&f.master.url)
        .arg("--identity")
        .arg(&f.bastion)
        .arg("--key")
        .arg(&f.alice.path)
        .arg("--passphrase-file")
        .arg(&f.alice.passphrase_file)
        .env_remove("TROUPE_BASTION_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("troupe deploy");
    // The release's log appears on the master: its id.
    let deploys = f.master.data.join("deploys");
    let mut id = String::new();
    wait_until(
        Duration::from_secs(30),
        "the release log on the master",
        || {
            id = std::fs::read_dir(&deploys)
                .ok()
                .and_then(|rd| {
                    rd.flatten()
                        .filter_map(|e| {
                            e.file_name()
                                .to_str()?
                                .strip_suffix(".jsonl")
                                .map(str::to_owned)
                        })
                        .next()
                })
                .unwrap_or_default();
            !id.is_empty()
        },
    );
    // The history lists it; its page shows it running, web1 done, web2
    // held at the gate.
    let dom = b.goto(&format!("{u}/deploys"));
    assert!(
        dom.contains(&id) && dom.contains("nginx 1.24 live"),
        "{dom}"
    );
    b.goto(&format!("{u}/deploys/{id}"));
    b.eval("window.__sameDocument = 'live'");
    let status = format!("document.querySelector('[data-deploy-status=\"{id}\"]').textContent");
    let rows = "document.querySelectorAll('#deploy-log tbody tr').length";
    let log_text = "document.getElementById('deploy-log').textContent";
    // The log and the progress bar are updated by separate live events:
    // wait for both to show web1 done (web2 cannot finish: its gate holds).
    b.wait_for(
        &format!(
            "{status} === 'running' && {log_text}.includes('web2') && \
             {log_text}.includes('update nginx to 1.24.0-1') && \
             document.getElementById('deploy-progress').value >= 1"
        ),
        Duration::from_secs(60),
    );
    let running_rows = b.eval(rows).as_u64().unwrap();
    let progress_then = b.eval("document.getElementById('deploy-progress').value");
    // web1 is done, web2 waits at the gate.
    assert_eq!(progress_then, 1);
    b.screenshot("deploy-live-running.png");
    std::fs::write(gate(&f.master.agent_state("web2")), "").unwrap();

    let out = deploy.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("release id: {id}")), "{stdout}");
    let t_deploy = t_deploy.elapsed();
    b.wait_for(
        &format!(
            "{status} === 'complete' && {rows} > {running_rows} && \
             document.getElementById('deploy-progress').value === 2"
        ),
        Duration::from_secs(30),
    );
    assert_eq!(
        b.eval("window.__sameDocument"),
        "live",
        "the page was reloaded"
    );
    // Every record of the real release is on the page, as the master
    // stored it (`troupe deploy log ID`).
    let text = b.eval(log_text);
    let text = text.as_str().unwrap();
    for needle in [
        "web1",
        "web2",
        "start nginx",
        "leave maintenance",
        "complete",
    ] {
        assert!(text.contains(needle), "{needle} not in the log: {text}");
    }
    let stored = std::fs::read_to_string(deploys.join(format!("{id}.jsonl"))).unwrap();
    assert_eq!(
        b.eval(rows).as_u64().unwrap() as usize,
        stored.lines().count()
    );
    b.screenshot("deploy-live-complete.png");
    drop(b);
    eprintln!(
        "web_deploy_live: deploy {:.1}s, total {:.1}s",
        t_deploy.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
