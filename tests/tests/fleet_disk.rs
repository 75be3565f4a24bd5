//! The master's data directory runs out of space (a small tmpfs, filled
//! up) while agents send reports and CSRs: they get clear errors, nothing
//! is half-written, and once space is freed and the master restarted every
//! store reads back consistent and the queued reports arrive.

use troupe_tests::netns::{Agent, Net, NetMaster, Tmpfs, write_tree};
use troupe_tests::{MasterOptions, run, tally};

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
    // An operator's PSK request fails clearly too.
    let psk = m.ca(&["psk", "new", "web4"]);
    let boot = boot.stderr.clone();
    let psk_err = psk.stderr.clone();
    assert!(!psk.success(), "{psk:?}");
    assert!(
        psk.stderr.contains("disk full") || psk.stderr.contains("No space left"),
        "{psk:?}"
    );
    let log = m.log();
    assert!(
        log.contains("No space left on device") || log.contains("no space"),
        "the master's log names the cause:\n{log}"
    );
    assert!(m.running(), "the master survives a full disk");

    // Restarting on the full disk: it either serves or says why not.
    m.kill9();
    let full_start = m.try_resume(&net);
    if let Err(e) = &full_start {
        assert!(e.contains("No space left on device"), "{e}");
    }

    // Free the space, restart: everything reads back and works again.
    std::fs::remove_file(&filler).unwrap();
    m.restart(&net);
    assert_eq!(m.signed(), certs_before, "certificates unchanged");
    let entries = m.ca_entries();
    assert!(
        entries.iter().any(|e| e.host == "web3" && e.state == "psk"),
        "web3's key is still unused: {entries:?}"
    );
    run(&mut web3.bootstrap_command(&net, &m, &fp, Some(&psk3))).assert_success();
    let (out, _) = web1.run_once(&net, &m);
    assert_eq!(out.code, Some(0), "{out:?}");
    let (out, _) = web2.run_once(&net, &m);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(web1.local_runs().1.is_empty(), "queue delivered");
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
    assert_eq!(m.signed().len(), 3);
    eprintln!(
        "restart on the full disk: {}",
        match &full_start {
            Ok(()) => "served".to_string(),
            Err(e) => e.lines().last().unwrap_or_default().to_string(),
        }
    );
    eprintln!(
        "disk full: report queued ({queued}) and delivered later; CSR refused, then signed\n{boot}\n{psk_err}"
    );
    tally::fault(
        "disk-full",
        "master data dir full during reports and CSRs",
        lost,
    );
}
