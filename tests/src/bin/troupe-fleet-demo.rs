//! The booted-fleet demo (scripts/fleet-demo.sh runs it; needs root):
//! three blank Debian 12 hosts (no nginx, haproxy, ...: the role installs
//! them by apt from the fleet's repository) booted with systemd-nspawn on a
//! private switch, a master serving the shipped modules, the troupe-agent package
//! from the fleet's own apt repository, `systemctl enable --now
//! troupe-agent` on all three at once, and the time from that start to
//! each host's converged `web` role; then each host's nginx is checked over
//! TLS, with its own certificate, from its neighbour. Then a rolling
//! release of the in-house package with `troupe deploy` (scenario 6): 1.0
//! -> 1.1 host by host through each host's local HAProxy (which the role
//! configured), and 1.2, whose health check fails, stopped at the first
//! host. Everything is removed at the end (also on Ctrl-C: the next run's
//! sweep removes what is left).

use std::time::Instant;
use troupe_tests::nspawn::{APP, APP_PORT, CONTAINER_LIMITS, Fleet, next_report};

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
    // The shipped modules plus, per web host, the in-house app behind its
    // local HAProxy (`listen app`, its own server) and a release key.
    let modules = fleet.copy_modules();
    let (keys, ops) = fleet.ops_key();
    for n in ["web1", "web2", "web3"] {
        let f = modules.join(format!(
            "environments/production/data/nodes/{n}.example.com.toml"
        ));
        let mut d = std::fs::read_to_string(&f).unwrap_or_default();
        d.push_str(&format!(
            "\n[haproxy_local.services.app]\nport = 8000\nmode = \"http\"\nbackend_port = {APP_PORT}\n\
             backends = [\"{n}.example.com\"]\ncheck = \"http\"\ncheck_path = \"/health\"\n\n\
             [[troupe_agent.signers]]\nname = \"ops\"\nkey = \"{}\"\n\n\
             [[troupe_agent.rules]]\nname = \"releases\"\neffect = \"allow\"\nsigners = [\"ops\"]\n\
             actions = [\"ping\", \"maintenance.*\", \"lb.*\", \"package.*\", \"service.*\", \"health.*\"]\n",
            ops.key_id()
        ));
        std::fs::write(&f, d).unwrap();
    }
    step("a master on the fleet's switch, serving the shipped modules");
    let m = fleet.start_master(&modules);
    fleet.trust_ops(&m, &ops);
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

    step("README's \"On a new host\": apt install ./troupe-agent_*.deb, one-time key, agent.toml");
    for h in &hosts {
        fleet.prepare_agent(h, &m, &[("splay", "0")]);
        // The application the release upgrades (its first version).
        h.sh_ok(&format!(
            "apt-get install -y -qq {APP}=1.0 >/dev/null && systemctl enable --now -q {APP}"
        ));
        println!(
            "{}: troupe-agent package installed, /etc/troupe/psk and agent.toml written, {APP} 1.0 running",
            h.fqdn
        );
    }

    step("systemctl enable --now troupe-agent, on all three at once");
    let start = Instant::now();
    for h in &hosts {
        h.sh_ok("systemctl enable --now troupe-agent");
    }
    for h in &hosts {
        let r = next_report(&m, &h.fqdn, None, 480);
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

    step("what the role installed, by apt, from the fleet's repository (the image had none of it)");
    for h in &hosts {
        let p = h.sh("apt-cache policy nginx haproxy fail2ban");
        // "pkg:", "  Installed: V", ..., "*** V 500", "     500 ORIGIN Packages"
        let mut pkg = String::new();
        let mut version = String::new();
        let mut lines = p.stdout.lines();
        while let Some(l) = lines.next() {
            if !l.starts_with(' ') {
                pkg = l.trim_end_matches(':').to_string();
            } else if let Some(v) = l.trim_start().strip_prefix("Installed: ") {
                version = v.to_string();
            } else if l.trim_start().starts_with("*** ") {
                let origin = lines.next().unwrap_or("").trim();
                println!("{}: {pkg} {version} from {origin}", h.fqdn);
            }
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
    step("troupe deploy: inhouse-app 1.0 -> 1.1, host by host (scenario 6)");
    let bastion = fleet.bootstrap_bastion(&m);
    let deploy = |version: &str| {
        let rel = fleet.app_release(version, "app");
        println!("$ troupe deploy release-{version}.toml --role web");
        let t = Instant::now();
        let out = troupe_tests::run(
            fleet
                .net
                .command(&m.host, &troupe_tests::troupe_bin())
                .arg("deploy")
                .arg(&rel)
                .args(["--yes", "--role", "web", "--server", &m.url])
                .arg("--identity")
                .arg(&bastion)
                .arg("--key")
                .arg(keys.join("ops.key"))
                .arg("--passphrase-file")
                .arg(keys.join("ops.pass")),
        );
        print!("{}", out.stdout);
        eprint!("{}", out.stderr);
        println!("(exit {:?}, {:.1?})", out.code, t.elapsed());
    };
    let versions = || {
        for h in &hosts {
            let v = h.sh(&format!("dpkg-query -W -f '${{Version}}' {APP}"));
            let health =
                h.sh("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/health");
            println!(
                "{}: {APP} {}, /health through its HAProxy -> {}",
                h.fqdn,
                v.stdout.trim(),
                health.stdout.trim()
            );
        }
    };
    fleet.wait_for_web_listeners(&m, &bastion, &keys, 3);
    deploy("1.1");
    versions();
    step("troupe deploy: inhouse-app 1.2, whose health check fails");
    deploy("1.2");
    versions();
    step("done");
    println!("whole demo {:.1?}; removing the hosts", t0.elapsed());
}
