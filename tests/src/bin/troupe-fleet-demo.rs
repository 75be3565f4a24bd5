//! The booted-fleet demo (scripts/fleet-demo.sh runs it; needs root):
//! three blank Debian 12 hosts booted with systemd-nspawn on a private
//! switch, a master serving the shipped modules, the troupe-agent package
//! from the fleet's own apt repository, `systemctl enable --now
//! troupe-agent` on all three at once, and the time from that start to
//! each host's converged `web` role; then each host's nginx is checked over
//! TLS, with its own certificate, from its neighbour. Everything is removed
//! at the end (also on Ctrl-C: the next run's sweep removes what is left).

use std::time::Instant;
use troupe_tests::nspawn::{CONTAINER_LIMITS, Fleet, next_report};

fn step(s: &str) {
    println!("\n\x1b[1m== {s}\x1b[0m");
}

fn main() {
    troupe_pki::tls::install_crypto_provider();
    let t0 = Instant::now();
    let fleet = match Fleet::new() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("troupe-fleet-demo: booted hosts are not available here: {e}");
            std::process::exit(1);
        }
    };
    let modules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("modules");
    step("a master on the fleet's switch, serving the shipped modules");
    let m = fleet.start_master(&modules);
    println!("troupe.example.com at {}", m.url);

    step("three blank hosts booted (systemd-nspawn, real systemd as PID 1)");
    let hosts: Vec<_> = ["web1", "web2", "web3"]
        .iter()
        .map(|n| fleet.boot(n))
        .collect();
    fleet.share_hosts(&hosts.iter().collect::<Vec<_>>());
    for h in &hosts {
        println!(
            "{:<18} {:<12} booted in {:.1?}",
            h.fqdn, h.host.ip, h.boot_times[0]
        );
    }

    step("apt-get install troupe-agent (the fleet's repository), settings, one-time key");
    for h in &hosts {
        fleet.prepare_agent(h, &m, "--interval 1800 --no-listen");
        println!(
            "{}: troupe-agent installed, /etc/troupe/psk written",
            h.fqdn
        );
    }

    step("systemctl enable --now troupe-agent, on all three at once");
    let start = Instant::now();
    for h in &hosts {
        h.sh_ok("systemctl enable --now troupe-agent");
    }
    for h in &hosts {
        let r = next_report(&m, &h.fqdn, None, 180);
        let res = r["resources"].as_array().cloned().unwrap_or_default();
        let count = |s: &str| res.iter().filter(|x| x["status"] == s).count();
        println!(
            "{}: converged {:.1?} after start: {} resources, {} changed, {} failed",
            h.fqdn,
            start.elapsed(),
            res.len(),
            count("changed"),
            count("failed")
        );
        for x in res.iter().filter(|x| x["status"] == "failed") {
            let id = x["id"].as_str().unwrap_or("?");
            let why = CONTAINER_LIMITS
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, w)| format!("expected in a container: {w}"))
                .unwrap_or_else(|| format!("UNEXPECTED: {}", x["events"]));
            println!("    failed {id}: {why}");
        }
    }

    step("nginx over TLS with each host's own certificate, checked from its neighbour");
    std::fs::copy(
        m.data.join("ca/ca_crt.pem"),
        hosts[0].root.join("root/troupe-ca.pem"),
    )
    .unwrap();
    for h in &hosts[1..] {
        std::fs::copy(
            m.data.join("ca/ca_crt.pem"),
            h.root.join("root/troupe-ca.pem"),
        )
        .unwrap();
    }
    for (i, h) in hosts.iter().enumerate() {
        let from = &hosts[(i + 1) % hosts.len()];
        let o = from.sh(&format!(
            "curl -sS -o /dev/null -w '%{{http_code}} %{{ssl_verify_result}}' --cacert /root/troupe-ca.pem https://{}/",
            h.fqdn
        ));
        println!(
            "{} -> https://{}/: {} (curl exit {:?}, verify against the Troupe CA only)",
            from.name,
            h.fqdn,
            o.stdout.trim(),
            o.code
        );
    }
    step("done");
    println!("whole demo {:.1?}; removing the hosts", t0.elapsed());
}
