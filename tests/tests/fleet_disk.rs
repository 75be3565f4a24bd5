//! The master's data directory runs out of space (a small tmpfs, filled
//! up) while agents send reports and CSRs and a sysadmin sends a signed
//! command: they get clear errors and nothing is half-written. Once space
//! is freed, the same master process (no restart) stores the queued
//! report, signs a CSR whose one-time key stayed unused and relays signed
//! commands again: its redb stores reopen themselves after the failed
//! write. Then, with the disk full again, a restart either serves or says
//! why not, and once space is freed every store reads back consistent.

use std::process::Stdio;
use std::time::{Duration, Instant};
use troupe_bastion::FileSigner;
use troupe_master::admin::AdminRequest;
use troupe_tests::netns::{Agent, Net, NetMaster, Tmpfs, read_log, spawn_logged, write_tree};
use troupe_tests::orch::{PASSPHRASE, POLICY};
use troupe_tests::{MasterOptions, Out, agent_bin, run, tally, troupe_bin};

/// True when the running master holds report `run` of `node`.
fn master_has_report(m: &NetMaster, node: &str, run: &str) -> bool {
    m.admin(&AdminRequest::Report {
        host: node.into(),
        run: Some(run.into()),
    })
    .is_ok_and(|r| r["report"]["run_id"] == run)
}

#[test]
fn master_disk_full_gives_clear_errors_and_corrupts_no_store() {
    let Some(net) = Net::require() else { return };
    let disk = match Tmpfs::mount(net.tmp.path(), "16m") {
        Ok(d) => d,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("cannot mount a tmpfs for the master's data: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs: {e}");
            return;
        }
    };
    let tree = tempfile::tempdir().unwrap();
    let modules = tree.path().join("modules");
    write_tree(&modules, "Welcome", 3, 1);
    let mh = net.add_host("master");
    let mut m = NetMaster::start_in(
        &net,
        &mh,
        disk.path.join("data"),
        MasterOptions {
            modules: Some(modules),
            extra_args: vec![],
        },
    );
    let h = net.add_host("h1");
    let web1 = Agent::new(&h, "web1");
    let web2 = Agent::new(&h, "web2");
    let web3 = Agent::new(&h, "web3");
    let fp = m.fingerprint();
    for a in [&web1, &web2] {
        let psk = m.psk(&a.name);
        run(&mut a.bootstrap_command(&net, &m, &fp, Some(&psk))).assert_success();
        let (out, _) = a.run_once(&net, &m);
        assert_eq!(out.code, Some(2), "{out:?}");
    }
    let psk3 = m.psk("web3");

    // Signed orchestration: a bastion on the master's host, a signer both
    // the master and web2 trust, web2 listening for commands.
    let keys = net.tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let alice = FileSigner::generate().unwrap();
    let key = keys.join("alice.key");
    alice.write_encrypted(&key, PASSPHRASE).unwrap();
    let pass = keys.join("alice.pass");
    std::fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    std::fs::write(
        m.data.join("signers.toml"),
        format!(
            "[[signer]]\nname = \"alice\"\nkey = \"{}\"\n",
            alice.key_id()
        ),
    )
    .unwrap();
    std::fs::write(
        web2.state.join("orchestration.toml"),
        format!(
            "converge_root = \"{}\"\n\n[[signer]]\nname = \"alice\"\nkey = \"{}\"\n{POLICY}\n",
            web2.root.display(),
            alice.key_id()
        ),
    )
    .unwrap();
    let bastion = Agent::new(&m.host, "bastion");
    let psk = m.psk("bastion");
    run(&mut bastion.bootstrap_command(&net, &m, &fp, Some(&psk))).assert_success();
    let mut listen = net.command(&h, &agent_bin());
    listen
        .arg("listen")
        .arg("--server")
        .arg(net.server_url(&h, &m))
        .arg("--state")
        .arg(&web2.state)
        .args(["--backoff-max", "1s"])
        .env("TROUPE_LOG", "info")
        .stdin(Stdio::null());
    let listen_log = h.dir.join("listen-web2.log");
    let _listener = spawn_logged(&mut listen, &listen_log);
    let ping = |m: &NetMaster| -> Out {
        let mut c = net.command(&m.host, &troupe_bin());
        c.args(["run", "ping", "--name", "web2", "--server", &m.url])
            .arg("--identity")
            .arg(&bastion.state)
            .arg("--key")
            .arg(&key)
            .arg("--passphrase-file")
            .arg(&pass);
        run(&mut c)
    };
    let answered = |out: &Out| out.success() && out.stdout.contains("1 matched, 1 ok");
    let ping_until_answered = |m: &NetMaster, what: &str| {
        let start = Instant::now();
        loop {
            let out = ping(m);
            if answered(&out) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: no answer to a signed ping: {out:?}\n{}\n{}",
                read_log(&listen_log),
                m.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    // Also opens the master's relay-once cache before the disk fills.
    ping_until_answered(&m, "before the disk fills");
    let certs_before = m.signed();

    let filler = disk.fill();

    // A report cannot be stored: the agent hears why and keeps it queued.
    let (out, rep) = web1.run_once(&net, &m);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(rep.unwrap()["from_cache"], false);
    assert!(
        out.stderr.contains("could not store the report"),
        "the agent should say the master could not store its report: {out:?}"
    );
    let (_, unsent) = web1.local_runs();
    assert_eq!(unsent.len(), 1, "the report stays queued");
    let queued = unsent[0].clone();

    // A CSR cannot be signed: a clear refusal, and the key stays unused.
    let boot = run(&mut web3.bootstrap_command(&net, &m, &fp, Some(&psk3)));
    assert!(!boot.success(), "{boot:?}");
    assert!(
        boot.stderr.contains("internal certificate authority error"),
        "{boot:?}"
    );
    let boot = boot.stderr.clone();
    // (The CSR is refused before its transaction commits: the CA writes
    // the autosign record first, and cannot, so ca.redb is not stopped by
    // it.) An operator's PSK requests either fail clearly (no room: the CA
    // database is stopped and must be reopened once space is freed) or are
    // stored whole (redb reused pages its file already had). Checked again
    // after the restart.
    let mut psk_stored = Vec::new();
    let mut psk_err = String::new();
    for host in ["web4", "web5"] {
        let psk = m.ca(&["psk", "new", host]);
        if !psk.success() {
            assert!(
                psk.stderr.contains("disk full") || psk.stderr.contains("No space left"),
                "{psk:?}"
            );
            assert!(
                !psk.stderr.contains("restart"),
                "no restart needed: {psk:?}"
            );
            psk_err = psk.stderr.clone();
        }
        psk_stored.push((host, psk.success()));
    }
    // A signed command either cannot be recorded as relayed-once (then
    // nothing is relayed and the refusal says why) or went through on
    // pages the relay cache already had.
    let full_ping = ping(&m);
    let ping_refused = !full_ping.success();
    if ping_refused {
        assert!(
            full_ping.stderr.contains("not relayed"),
            "the refusal names the relay cache: {full_ping:?}"
        );
    }
    let log = m.log();
    assert!(
        log.contains("No space left on device") || log.contains("no space"),
        "the master's log names the cause:\n{log}"
    );
    assert!(m.running(), "the master survives a full disk");

    // Free the space. The same master process recovers: no restart.
    std::fs::remove_file(&filler).unwrap();
    let (out, _) = web1.run_once(&net, &m);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        !out.stderr.contains("could not store the report"),
        "{out:?}\n{}",
        m.log()
    );
    assert!(web1.local_runs().1.is_empty(), "queue delivered");
    assert!(
        master_has_report(&m, "web1", &queued),
        "the queued report {queued} is stored by the same master process"
    );
    let entries = m.ca_entries();
    assert!(
        entries.iter().any(|e| e.host == "web3" && e.state == "psk"),
        "web3's key is still unused: {entries:?}"
    );
    run(&mut web3.bootstrap_command(&net, &m, &fp, Some(&psk3))).assert_success();
    assert!(
        m.ca_entries()
            .iter()
            .any(|e| e.host == "web3" && e.state == "signed"),
        "web3 signed by the same master process"
    );
    ping_until_answered(&m, "after space was freed, without a restart");
    assert!(m.running(), "no restart");
    let log = m.log();
    let ca_stopped = psk_stored.iter().any(|(_, ok)| !ok);
    for file in ["nodes.redb", "ca.redb"] {
        if file == "ca.redb" && !ca_stopped {
            continue;
        }
        assert!(
            log.lines()
                .any(|l| l.contains("opened the store again") && l.contains(file)),
            "the master reopened {file} by itself:\n{log}"
        );
    }
    if ping_refused {
        assert!(
            log.lines().any(|l| l.contains("opened the store again")
                && l.contains("orchestration-relayed.redb")),
            "the master reopened its relay cache by itself:\n{log}"
        );
    }
    let mut lost_live = 0u64;
    for a in [&web1, &web2] {
        let (local, unsent) = a.local_runs();
        lost_live += unsent.len() as u64;
        lost_live += local
            .iter()
            .filter(|id| !master_has_report(&m, &a.name, id))
            .count() as u64;
    }
    assert_eq!(lost_live, 0, "every report is on the live master");
    tally::fault(
        "disk-full",
        "master data dir full, space freed: same process recovers (no restart)",
        lost_live,
    );

    // Full again; restarting on the full disk: it either serves or says
    // why not.
    let filler = disk.fill();
    m.kill9();
    let full_start = m.try_resume(&net);
    if let Err(e) = &full_start {
        assert!(e.contains("No space left on device"), "{e}");
    }

    // Free the space, restart: everything reads back and works again.
    std::fs::remove_file(&filler).unwrap();
    m.restart(&net);
    let signed = m.signed();
    assert_eq!(signed.len(), certs_before.len() + 1, "{signed:?}");
    for c in &certs_before {
        assert!(signed.contains(c), "certificate {c:?} kept");
    }
    let entries = m.ca_entries();
    assert!(
        entries
            .iter()
            .any(|e| e.host == "web3" && e.state == "psk-used"),
        "{entries:?}"
    );
    for (host, stored) in &psk_stored {
        assert_eq!(
            entries.iter().any(|e| e.host == *host && e.state == "psk"),
            *stored,
            "{host}: a key is stored exactly when its request succeeded: {entries:?}"
        );
    }
    let (out, _) = web1.run_once(&net, &m);
    assert_eq!(out.code, Some(0), "{out:?}");
    let (out, _) = web2.run_once(&net, &m);
    assert_eq!(out.code, Some(0), "{out:?}");
    ping_until_answered(&m, "after the restart");
    m.kill9();
    let mut lost = 0u64;
    for a in [&web1, &web2] {
        let (local, _) = a.local_runs();
        let stored = m.stored_run_ids(&a.name);
        assert_eq!(stored, local, "{}: reports on the master", a.name);
        lost += local.iter().filter(|id| !stored.contains(id)).count() as u64;
    }
    assert!(m.stored_run_ids("web1").contains(&queued));
    // The CA database reads back whole with the master stopped too.
    assert_eq!(m.signed().len(), certs_before.len() + 1);
    eprintln!(
        "signed ping on the full disk: {}",
        if ping_refused {
            full_ping.stderr.lines().last().unwrap_or_default()
        } else {
            "relayed (the relay cache had room)"
        }
    );
    eprintln!(
        "restart on the full disk: {}",
        match &full_start {
            Ok(()) => "served".to_string(),
            Err(e) => e.lines().last().unwrap_or_default().to_string(),
        }
    );
    eprintln!(
        "disk full: report queued ({queued}) and delivered later; CSR refused, then signed\n{boot}\nPSKs stored on the full disk: {psk_stored:?} {psk_err}"
    );
    tally::fault(
        "disk-full",
        "master data dir full during reports and CSRs",
        lost,
    );
}
