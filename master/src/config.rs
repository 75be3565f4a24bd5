//! `/etc/troupe/master.toml`: the master daemon's configuration file.
//!
//! Every `troupe master` flag has a key (the flag's name with `_` for `-`;
//! `--data` is `data_dir`, `--server-name` is `server_names`, a list).
//! Precedence: flag > environment (`TROUPE_KEY`, upper case; `TROUPE_DATA`
//! for `data_dir`) > file > default; `troupe master --print-config
//! [--json]` shows each effective value and where it came from. Unknown
//! keys, and a file that others may write or a non-root user owns, are
//! refused (see [`troupe_pki::config_file`]). Durations are strings like
//! `"30m"` or whole seconds.

use crate::daemon::Args;
use anyhow::{Result, anyhow};
use clap::parser::ValueSource;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use troupe_pki::config_file::{ConfigFile, Given};

/// Where the master's configuration file is unless `--config` says
/// otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/troupe/master.toml";

/// Every key `master.toml` may hold.
pub const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "modules",
    "hold",
    "metrics_listen",
    "web_listen",
    "viewers",
    "run_interval",
    "reports_keep",
    "server_names",
    "cert_ttl",
    "code_poll",
    "git_poll",
    "git_site_branch",
    "allow_agent_environment",
    "compile_threads",
    "catalog_cache_bytes",
    "node_store_cache_bytes",
    "shutdown_grace",
    "ca_audit_max_bytes",
    "ca_audit_keep",
    "ca_audit_refusal_window",
    "events",
];

/// A duration in the file: `"30m"` (humantime) or whole seconds.
#[derive(Debug, Clone, Copy)]
struct Dur(humantime::Duration);

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(n) => Ok(Dur(std::time::Duration::from_secs(n).into())),
            Raw::Text(t) => t.parse::<humantime::Duration>().map(Dur).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{t:?} is not a duration ({e}); e.g. \"30m\", \"10s\" or a number of seconds"
                ))
            }),
        }
    }
}

fn given(m: &clap::ArgMatches, id: &str, env: Option<&'static str>) -> Given {
    match m.value_source(id) {
        Some(ValueSource::CommandLine) => Given::Flag,
        Some(ValueSource::EnvVariable) => env.map_or(Given::No, Given::Env),
        _ => Given::No,
    }
}

/// Applies the configuration file (`args.config`, or the default one when
/// it exists) and the environment to the parsed `troupe master` options.
pub fn resolve(mut args: Args, m: &clap::ArgMatches) -> Result<(Args, ConfigFile)> {
    let explicit = args.config.is_some();
    let path = args
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let mut f = ConfigFile::load(&path, explicit, KEYS).map_err(|e| anyhow!(e))?;
    let e = |s: String| anyhow!(s);
    args.listen = f
        .resolve("listen", given(m, "listen", None), args.listen)
        .map_err(e)?;
    args.data = f
        .resolve("data_dir", given(m, "data", Some("TROUPE_DATA")), args.data)
        .map_err(e)?;
    args.modules = f
        .resolve("modules", given(m, "modules", None), args.modules)
        .map_err(e)?;
    // A git URL's user name and password are never printed.
    if let Some(url) = args.modules.as_deref().and_then(crate::code_git::git_url) {
        let shown = format!("git+{}", crate::code_git::redact(url));
        if shown != format!("git+{url}") {
            f.show_as("modules", serde_json::Value::String(shown));
        }
    }
    args.hold = f
        .resolve("hold", given(m, "hold", None), args.hold)
        .map_err(e)?;
    args.metrics_listen = f
        .resolve(
            "metrics_listen",
            given(m, "metrics_listen", None),
            args.metrics_listen,
        )
        .map_err(e)?;
    let web_listen: Option<String> = f
        .resolve(
            "web_listen",
            given(m, "web_listen", None),
            args.web_listen.map(|a| a.to_string()),
        )
        .map_err(e)?;
    args.web_listen = web_listen
        .map(|w| crate::daemon::parse_listen(&w).map_err(|why| anyhow!("web_listen {w:?}: {why}")))
        .transpose()?;
    args.viewers = f
        .resolve("viewers", given(m, "viewers", None), args.viewers)
        .map_err(e)?;
    args.run_interval = f
        .resolve(
            "run_interval",
            given(m, "run_interval", None),
            Dur(args.run_interval),
        )
        .map_err(e)?
        .0;
    args.reports_keep = f
        .resolve(
            "reports_keep",
            given(m, "reports_keep", None),
            args.reports_keep,
        )
        .map_err(e)?;
    args.server_names = f
        .resolve(
            "server_names",
            given(m, "server_names", None),
            args.server_names,
        )
        .map_err(e)?;
    args.cert_ttl = f
        .resolve("cert_ttl", given(m, "cert_ttl", None), Dur(args.cert_ttl))
        .map_err(e)?
        .0;
    args.code_poll = f
        .resolve(
            "code_poll",
            given(m, "code_poll", None),
            Dur(args.code_poll),
        )
        .map_err(e)?
        .0;
    args.git_poll = f
        .resolve("git_poll", given(m, "git_poll", None), Dur(args.git_poll))
        .map_err(e)?
        .0;
    args.git_site_branch = f
        .resolve(
            "git_site_branch",
            given(m, "git_site_branch", None),
            args.git_site_branch,
        )
        .map_err(e)?;
    args.allow_agent_environment = f
        .resolve(
            "allow_agent_environment",
            given(m, "allow_agent_environment", None),
            args.allow_agent_environment,
        )
        .map_err(e)?;
    args.compile_threads = f
        .resolve(
            "compile_threads",
            given(m, "compile_threads", None),
            args.compile_threads,
        )
        .map_err(e)?;
    args.catalog_cache_bytes = f
        .resolve(
            "catalog_cache_bytes",
            given(m, "catalog_cache_bytes", None),
            args.catalog_cache_bytes,
        )
        .map_err(e)?;
    args.node_store_cache_bytes = f
        .resolve(
            "node_store_cache_bytes",
            given(m, "node_store_cache_bytes", None),
            args.node_store_cache_bytes,
        )
        .map_err(e)?;
    args.shutdown_grace = f
        .resolve(
            "shutdown_grace",
            given(m, "shutdown_grace", None),
            Dur(args.shutdown_grace),
        )
        .map_err(e)?
        .0;
    args.ca_audit_max_bytes = f
        .resolve(
            "ca_audit_max_bytes",
            given(m, "ca_audit_max_bytes", None),
            args.ca_audit_max_bytes,
        )
        .map_err(e)?;
    args.ca_audit_keep = f
        .resolve(
            "ca_audit_keep",
            given(m, "ca_audit_keep", None),
            args.ca_audit_keep,
        )
        .map_err(e)?;
    args.ca_audit_refusal_window = f
        .resolve(
            "ca_audit_refusal_window",
            given(m, "ca_audit_refusal_window", None),
            Dur(args.ca_audit_refusal_window),
        )
        .map_err(e)?
        .0;
    // A table (sinks, filters), in the file only (see crate::events::config).
    args.events = f.resolve("events", Given::No, args.events).map_err(e)?;
    args.events
        .check()
        .map_err(|m| anyhow!("config file {}: {m}", f.path().display()))?;
    if args.ca_audit_max_bytes < 4096 {
        anyhow::bail!("ca_audit_max_bytes: must be at least 4096");
    }
    if !(1..=1000).contains(&args.ca_audit_keep) {
        anyhow::bail!("ca_audit_keep: must be between 1 and 1000");
    }
    if args.reports_keep == 0 {
        anyhow::bail!("reports_keep: must be at least 1");
    }
    Ok((args, f))
}

/// `troupe master --print-config [--json]`.
pub fn print(f: &ConfigFile, json: bool) -> String {
    if json {
        let mut s = serde_json::to_string_pretty(&f.to_json()).unwrap_or_default();
        s.push('\n');
        s
    } else {
        f.to_text()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[derive(clap::Parser)]
    struct T {
        #[command(flatten)]
        a: Args,
    }

    fn parse(argv: &[&str]) -> (Args, clap::ArgMatches) {
        use clap::{CommandFactory, FromArgMatches};
        let m = T::command().no_binary_name(true).get_matches_from(argv);
        (T::from_arg_matches(&m).unwrap().a, m)
    }

    #[test]
    fn web_listen_and_viewers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("master.toml");
        std::fs::write(&p, "web_listen = \"0.0.0.0:8150\"\nviewers = [\"alice\"]\n").unwrap();
        let (a, m) = parse(&["--config", p.to_str().unwrap()]);
        let (a, _) = resolve(a, &m).unwrap();
        assert_eq!(a.web_listen.unwrap().to_string(), "0.0.0.0:8150");
        assert_eq!(a.viewers, ["alice"]);
        let (a, m) = parse(&[
            "--config",
            p.to_str().unwrap(),
            "--web-listen",
            "127.0.0.1:9",
        ]);
        assert_eq!(resolve(a, &m).unwrap().0.web_listen.unwrap().port(), 9);
        std::fs::write(&p, "web_listen = \"localhost:8150\"\n").unwrap();
        let (a, m) = parse(&["--config", p.to_str().unwrap()]);
        let err = resolve(a, &m).unwrap_err().to_string();
        assert!(
            err.contains("web_listen") && err.contains("IP:PORT"),
            "{err}"
        );
    }

    #[test]
    fn keys_apply_flags_win_and_durations_parse() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("master.toml");
        std::fs::write(
            &p,
            "listen = \"0.0.0.0:8141\"\ndata_dir = \"/srv/troupe\"\nrun_interval = \"5m\"\n\
             code_poll = 3\nserver_names = [\"m.example.com\"]\nreports_keep = 7\n\
             node_store_cache_bytes = 1048576\n",
        )
        .unwrap();
        let (a, m) = parse(&["--config", p.to_str().unwrap(), "--reports-keep", "9"]);
        let (a, f) = resolve(a, &m).unwrap();
        assert_eq!(a.listen.to_string(), "0.0.0.0:8141");
        assert_eq!(a.data, Path::new("/srv/troupe"));
        assert_eq!(a.run_interval.as_secs(), 300);
        assert_eq!(a.code_poll.as_secs(), 3);
        assert_eq!(a.server_names, ["m.example.com"]);
        assert_eq!(a.reports_keep, 9);
        assert_eq!(a.node_store_cache_bytes, 1 << 20);
        let j = f.to_json();
        assert_eq!(j["settings"]["reports_keep"]["source"], "flag");
        assert_eq!(j["settings"]["run_interval"]["value"], "5m");
        assert_eq!(j["settings"]["shutdown_grace"]["source"], "default");

        std::fs::write(
            &p,
            "modules = \"git+file:///srv/m.git\"\ngit_poll = 0\ngit_site_branch = \"main\"\n",
        )
        .unwrap();
        let (a, m) = parse(&["--config", p.to_str().unwrap()]);
        let (a, _) = resolve(a, &m).unwrap();
        assert_eq!(a.git_poll.as_secs(), 0);
        assert_eq!(a.git_site_branch, "main");
        assert_eq!(
            crate::code_git::git_url(a.modules.as_deref().unwrap()),
            Some("file:///srv/m.git")
        );
        // A password in the URL is used, never printed.
        std::fs::write(
            &p,
            "modules = \"git+https://deploy:s3cret@git.example.com/m.git\"\n",
        )
        .unwrap();
        let (a, m) = parse(&["--config", p.to_str().unwrap()]);
        let (a, f) = resolve(a, &m).unwrap();
        assert!(a.modules.unwrap().to_str().unwrap().contains("s3cret"));
        for shown in [print(&f, false), print(&f, true)] {
            assert!(!shown.contains("s3cret"), "{shown}");
            assert!(
                shown.contains("git+https://***@git.example.com/m.git"),
                "{shown}"
            );
        }

        std::fs::write(&p, "run_interval = \"soon\"\n").unwrap();
        let (a, m) = parse(&["--config", p.to_str().unwrap()]);
        let err = resolve(a, &m).unwrap_err().to_string();
        assert!(
            err.contains("run_interval") && err.contains("master.toml"),
            "{err}"
        );
        std::fs::write(&p, "port = 8140\n").unwrap();
        let (a, m) = parse(&["--config", p.to_str().unwrap()]);
        let err = resolve(a, &m).unwrap_err().to_string();
        assert!(err.contains("unknown key `port`"), "{err}");
    }

    /// The packaged /etc/troupe/master.toml with every commented example
    /// turned on (`#key = ...`, `#[table]`; of alternatives for one key,
    /// the first) is a valid configuration: the dashboard, the viewers and
    /// the three kinds of event sinks.
    #[test]
    fn the_packaged_master_toml_parses_with_its_examples_on() {
        let packaged = include_str!("../../packaging/etc/master.toml");
        let mut on = String::new();
        let mut turned = 0;
        let mut table = String::new();
        let mut seen = std::collections::HashSet::new();
        for line in packaged.lines() {
            let example = line.strip_prefix('#').filter(|l| {
                if l.starts_with('[') {
                    table = l.to_string();
                    return true;
                }
                l.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty()
                        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        && (table.starts_with("[[") || seen.insert(format!("{table}.{k}")))
                })
            });
            match example {
                Some(l) => {
                    on.push_str(l);
                    turned += 1;
                }
                None => on.push_str(line),
            }
            on.push('\n');
        }
        assert!(turned > 20, "{on}");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("master.toml");
        std::fs::write(&p, &on).unwrap();
        let (a, m) = parse(&["--config", p.to_str().unwrap()]);
        let (a, _) = resolve(a, &m).unwrap_or_else(|e| panic!("{e:#}\n{on}"));
        assert_eq!(a.web_listen.unwrap().to_string(), "127.0.0.1:8150");
        assert_eq!(a.viewers, ["alice-laptop"]);
        let ev = &a.events;
        assert_eq!(ev.cert_expiry_days, 14);
        assert_eq!(ev.webhook.len(), 1);
        assert!(ev.webhook[0].url.starts_with("https://chat.example.com/"));
        assert!(
            ev.webhook[0]
                .kinds
                .takes(crate::events::EventKind::DeployAborted)
        );
        assert_eq!(ev.email.len(), 1);
        assert_eq!(ev.email[0].to, ["ops@example.com"]);
        assert_eq!(ev.exec.len(), 1);
        assert_eq!(ev.exec[0].argv[0], "/usr/local/bin/page-oncall");
        // As shipped (every example commented out): no sink.
        std::fs::write(&p, packaged).unwrap();
        let (a, m) = parse(&["--config", p.to_str().unwrap()]);
        let (a, _) = resolve(a, &m).unwrap();
        assert!(a.events.webhook.is_empty() && a.events.email.is_empty());
        assert!(a.web_listen.is_none());
    }
}
