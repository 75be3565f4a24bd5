//! `troupe-agent facts`: what this host is (schema: notes/facts.md).
//!
//! Core facts come from the kernel (`/proc`, `/sys`, `getifaddrs`) and
//! `/etc/os-release`; external facts from a directory of `*.toml`, `*.json`
//! and executables that print a JSON object (each run with a timeout). An
//! external fact never overrides a core key: all of them live under
//! `"external"`.

use anyhow::Context;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Default directory of external facts.
pub const DEFAULT_FACTS_DIR: &str = "/etc/troupe/facts.d";

/// Options of `troupe-agent facts`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of external facts: `*.toml`, `*.json`, and executables
    /// printing a JSON object. Missing directory = no external facts.
    #[arg(long, default_value = DEFAULT_FACTS_DIR)]
    pub facts_dir: PathBuf,
    /// Seconds an external fact executable may run before it is killed.
    #[arg(long, default_value_t = 10)]
    pub facts_timeout: u64,
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    let facts = gather(&args.facts_dir, Duration::from_secs(args.facts_timeout));
    println!("{}", serde_json::to_string_pretty(&facts)?);
    Ok(0)
}

/// Core facts plus external facts from `facts_dir`. Never fails: a fact that
/// cannot be read is left out (and logged).
pub fn gather(facts_dir: &Path, timeout: Duration) -> Value {
    let mut facts = core();
    let external = external(facts_dir, timeout);
    if let Value::Object(m) = &mut facts {
        m.insert("external".into(), Value::Object(external));
    }
    facts
}

/// This host's FQDN (the `fqdn` fact): the default certificate name.
pub fn host_fqdn() -> String {
    let hostname = read_trim("/proc/sys/kernel/hostname")
        .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    fqdn(&hostname)
}

/// The core facts of this host.
pub fn core() -> Value {
    let mut m = Map::new();
    let hostname = read_trim("/proc/sys/kernel/hostname")
        .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
        .unwrap_or_else(|| "localhost".into());
    let short = hostname.split('.').next().unwrap_or(&hostname).to_owned();
    let fqdn = fqdn(&hostname);
    m.insert("hostname".into(), json!(short));
    m.insert("fqdn".into(), json!(fqdn));
    if let Ok(text) = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
    {
        m.insert("os".into(), os_from_release(&text));
    }
    let mut kernel = Map::new();
    kernel.insert(
        "name".into(),
        json!(read_trim("/proc/sys/kernel/ostype").unwrap_or_else(|| "Linux".into())),
    );
    if let Some(r) = read_trim("/proc/sys/kernel/osrelease") {
        kernel.insert("release".into(), json!(r));
    }
    m.insert("kernel".into(), Value::Object(kernel));
    m.insert("architecture".into(), json!(std::env::consts::ARCH));
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()));
    if let Some(n) = cpus {
        m.insert("processors".into(), json!({ "count": n }));
    }
    if let Some(kb) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| meminfo_total_kb(&t))
    {
        m.insert("memory".into(), json!({ "total_bytes": kb * 1024 }));
    }
    m.insert("networking".into(), networking());
    if let Some(up) =
        read_trim("/proc/uptime").and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
    {
        m.insert("uptime_seconds".into(), json!(up as u64));
    }
    Value::Object(m)
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// The FQDN: the host name if it has a dot, else the first dotted name given
/// for it in /etc/hosts, else host name + the resolv.conf domain/search.
fn fqdn(hostname: &str) -> String {
    if hostname.contains('.') {
        return hostname.to_owned();
    }
    if let Ok(hosts) = std::fs::read_to_string("/etc/hosts") {
        for line in hosts.lines() {
            let line = line.split('#').next().unwrap_or("");
            let names: Vec<&str> = line.split_whitespace().skip(1).collect();
            if names
                .iter()
                .any(|n| *n == hostname || n.split('.').next() == Some(hostname))
                && let Some(d) = names
                    .iter()
                    .find(|n| n.contains('.') && n.split('.').next() == Some(hostname))
            {
                return (*d).to_owned();
            }
        }
    }
    if let Ok(conf) = std::fs::read_to_string("/etc/resolv.conf") {
        for line in conf.lines() {
            let mut w = line.split_whitespace();
            if let (Some("domain" | "search"), Some(d)) = (w.next(), w.next()) {
                return format!("{hostname}.{d}");
            }
        }
    }
    hostname.to_owned()
}

/// Parses os-release text into the `os` fact.
pub fn os_from_release(text: &str) -> Value {
    let mut kv = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().trim_matches('"').trim_matches('\'');
            kv.insert(k.trim().to_owned(), v.to_owned());
        }
    }
    let id = kv.get("ID").cloned().unwrap_or_default();
    let like = kv.get("ID_LIKE").cloned().unwrap_or_default();
    let name = match id.as_str() {
        "debian" => "Debian",
        "ubuntu" => "Ubuntu",
        "centos" => "CentOS",
        "rocky" => "Rocky",
        "almalinux" => "AlmaLinux",
        "rhel" => "RedHat",
        "fedora" => "Fedora",
        "ol" => "OracleLinux",
        "amzn" => "Amazon",
        "opensuse-leap" | "opensuse-tumbleweed" | "sles" => "SUSE",
        "alpine" => "Alpine",
        "arch" => "Archlinux",
        _ => "",
    };
    let name = if name.is_empty() {
        kv.get("NAME").cloned().unwrap_or(id.clone())
    } else {
        name.to_owned()
    };
    let words: Vec<&str> = std::iter::once(id.as_str())
        .chain(like.split_whitespace())
        .collect();
    let family = if words.iter().any(|w| *w == "debian" || *w == "ubuntu") {
        "Debian".to_owned()
    } else if words
        .iter()
        .any(|w| matches!(*w, "rhel" | "fedora" | "centos"))
    {
        "RedHat".to_owned()
    } else if words.iter().any(|w| w.contains("suse")) {
        "Suse".to_owned()
    } else {
        name.clone()
    };
    let full = kv.get("VERSION_ID").cloned().unwrap_or_default();
    // Debian puts only the major in VERSION_ID; /etc/debian_version has more.
    let full = if id == "debian" {
        read_trim("/etc/debian_version")
            .filter(|v| {
                v.starts_with(&full) && v.chars().next().is_some_and(|c| c.is_ascii_digit())
            })
            .unwrap_or(full)
    } else {
        full
    };
    let major = full.split('.').next().unwrap_or("").to_owned();
    let mut os = json!({
        "family": family,
        "name": name,
        "release": { "full": full, "major": major },
    });
    if let Some(c) = kv.get("VERSION_CODENAME").filter(|c| !c.is_empty()) {
        os["codename"] = json!(c);
    }
    os
}

fn meminfo_total_kb(text: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn networking() -> Value {
    let mut ifaces: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut primary: Option<String> = None;
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let entry = ifaces.entry(a.interface_name.clone()).or_default();
            let Some(addr) = a.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                let ip = v4.ip().to_string();
                if primary.is_none() && !v4.ip().is_loopback() {
                    primary = Some(ip.clone());
                }
                push(entry, "ipv4", ip);
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                push(entry, "ipv6", v6.ip().to_string());
            } else if let Some(ll) = addr.as_link_addr()
                && let Some(mac) = ll.addr()
                && mac != [0; 6]
            {
                let s = mac
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":");
                entry.insert("mac".into(), json!(s));
            }
        }
    }
    let mut net = Map::new();
    if let Some(ip) = primary {
        net.insert("ip".into(), json!(ip));
    }
    net.insert(
        "interfaces".into(),
        Value::Object(
            ifaces
                .into_iter()
                .map(|(k, v)| (k, Value::Object(v)))
                .collect(),
        ),
    );
    Value::Object(net)
}

fn push(entry: &mut Map<String, Value>, key: &str, v: String) {
    if let Value::Array(a) = entry.entry(key).or_insert_with(|| json!([])) {
        a.push(json!(v));
    }
}

/// External facts from `dir`, merged in file-name order (a later file's key
/// replaces an earlier one). Bad files are logged and skipped.
pub fn external(dir: &Path, timeout: Duration) -> Map<String, Value> {
    let mut out = Map::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        match external_one(&p, timeout) {
            Ok(Some(Value::Object(m))) => out.extend(m),
            Ok(Some(_)) => {
                tracing::warn!(path = %p.display(), "external fact is not an object; skipped")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(path = %p.display(), "external fact skipped: {e:#}"),
        }
    }
    out
}

fn external_one(p: &Path, timeout: Duration) -> anyhow::Result<Option<Value>> {
    let meta = std::fs::metadata(p)?;
    if !meta.is_file() {
        return Ok(None);
    }
    let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
    if meta.permissions().mode() & 0o111 != 0 {
        let out = run_with_timeout(p, timeout)?;
        return Ok(Some(
            serde_json::from_slice(&out).context("executable did not print a JSON object")?,
        ));
    }
    match ext {
        "json" => {
            let b = std::fs::read(p)?;
            Ok(Some(serde_json::from_slice(&b).context("invalid JSON")?))
        }
        "toml" => {
            let t = std::fs::read_to_string(p)?;
            let v: toml::Table = toml::from_str(&t).context("invalid TOML")?;
            Ok(Some(serde_json::to_value(v)?))
        }
        _ => Ok(None),
    }
}

/// Runs `path` with no arguments, returns stdout (at most 1 MiB); kills it
/// after `timeout`.
fn run_with_timeout(path: &Path, timeout: Duration) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start")?;
    let mut stdout = child.stdout.take().context("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stdout).take(1 << 20).read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let out = reader.join().unwrap_or_default();
            anyhow::ensure!(status.success(), "exited with {status}");
            return Ok(out);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("timed out after {}s and was killed", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_debian_ubuntu_rocky() {
        let d = os_from_release("ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n");
        assert_eq!(d["family"], "Debian");
        assert_eq!(d["name"], "Debian");
        assert_eq!(d["release"]["major"], "12");
        assert_eq!(d["codename"], "bookworm");
        let u = os_from_release(
            "NAME=\"Ubuntu\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\nVERSION_CODENAME=jammy\n",
        );
        assert_eq!(u["family"], "Debian");
        assert_eq!(u["name"], "Ubuntu");
        assert_eq!(u["release"]["full"], "22.04");
        assert_eq!(u["release"]["major"], "22");
        let r =
            os_from_release("ID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.3\"\n");
        assert_eq!(r["family"], "RedHat");
        assert_eq!(r["name"], "Rocky");
        assert_eq!(r["release"]["major"], "9");
        assert!(r.get("codename").is_none());
    }

    #[test]
    fn core_has_schema_keys() {
        let f = core();
        for k in ["hostname", "fqdn", "kernel", "architecture", "networking"] {
            assert!(f.get(k).is_some(), "missing {k}");
        }
        assert!(f["memory"]["total_bytes"].as_u64().unwrap() > 0);
        assert!(f["processors"]["count"].as_u64().unwrap() >= 1);
        assert!(f["networking"]["interfaces"].get("lo").is_some());
    }

    #[test]
    fn external_facts_toml_json_exec_and_timeout() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("a.toml"),
            "role = \"web\"\n[dc]\nname = \"par1\"\n",
        )
        .unwrap();
        std::fs::write(d.path().join("b.json"), r#"{"rack": 7}"#).unwrap();
        std::fs::write(d.path().join("c.json"), "not json").unwrap();
        let exe = d.path().join("d.sh");
        std::fs::write(&exe, "#!/bin/sh\necho '{\"dyn\": true}'\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let slow = d.path().join("e.sh");
        std::fs::write(&slow, "#!/bin/sh\nexec sleep 5\n").unwrap();
        std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
        let t = Instant::now();
        let ext = external(d.path(), Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(4));
        assert_eq!(ext["role"], "web");
        assert_eq!(ext["dc"]["name"], "par1");
        assert_eq!(ext["rack"], 7);
        assert_eq!(ext["dyn"], true);
        assert_eq!(ext.len(), 4);
    }
}
