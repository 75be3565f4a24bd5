//! `/etc/troupe/agent.toml`: the agent's configuration file.
//!
//! Every `troupe-agent run` flag has a key, and a few keys serve the first
//! join. Precedence: flag > environment (`TROUPE_KEY`, upper case) > file >
//! default; `troupe-agent --print-config [--json]` shows each effective
//! value and where it came from. Unknown keys, and a file that others may
//! write or a non-root user owns, are refused (see
//! [`troupe_pki::config_file`]).
//!
//! | key | flag of `run` | what |
//! |---|---|---|
//! | `server` | `--server` | the master's URL, or a list tried in order (Puppet's server_list) |
//! | `name` | (bootstrap `--name`) | this host's certificate name (default: its FQDN) |
//! | `ca_fingerprint` | (bootstrap `--ca-fingerprint`) | the master's CA, pinned at the first join |
//! | `psk_file` | (bootstrap `--psk`) | the one-time key, read at bootstrap only and deleted after a successful join |
//! | `state_dir` | `--state` | identity, catalog cache, reports |
//! | `interval`, `splay` | `--interval`, `--splay` | seconds between runs, random extra delay |
//! | `noop` | `--noop` | change nothing, report what would change |
//! | `orchestration` | `--no-listen` (inverted) | the signed-command listener on or off |
//! | `orchestration_file` | `--orchestration` | the listener's trust and policy file |
//! | `facts_dir`, `environment`, `rollback_on_failure`, `keep_reports`, `package_dir`, `root`, `output` | same names | as the flags |
//! | `stage_writes` | `--stage-writes` | `auto` (default), `always` or `never`: new files' temp files created in `STATE/stage` (docs/adr/0014) |
//!
//! The first join needs no separate command: when the state directory
//! holds no certificate and `ca_fingerprint` is set, `troupe-agent run`
//! bootstraps first (with the key from `psk_file`, if any; without one the
//! request waits for `troupe ca sign`), deletes `psk_file`, then runs.

use crate::run::{Args as RunArgs, Output};
use anyhow::{Context, Result, anyhow};
use clap::parser::ValueSource;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use troupe_pki::config_file::{ConfigFile, Given};

/// Where the agent's configuration file is unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/troupe/agent.toml";

/// Every key `agent.toml` may hold.
pub const KEYS: &[&str] = &[
    "server",
    "name",
    "ca_fingerprint",
    "psk_file",
    "state_dir",
    "interval",
    "splay",
    "noop",
    "orchestration",
    "orchestration_file",
    "facts_dir",
    "environment",
    "rollback_on_failure",
    "keep_reports",
    "package_dir",
    "root",
    "output",
    "stage_writes",
];

/// `server`: one URL or a list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Servers {
    One(String),
    Many(Vec<String>),
}

impl Servers {
    pub fn list(&self) -> Vec<String> {
        match self {
            Servers::One(s) => vec![s.clone()],
            Servers::Many(v) => v.clone(),
        }
    }
}

/// The effective configuration of `troupe-agent run`.
#[derive(Debug)]
pub struct Effective {
    /// The run's options (`server` is the first of `servers`).
    pub run: RunArgs,
    /// The masters, tried in order.
    pub servers: Vec<String>,
    pub name: Option<String>,
    pub ca_fingerprint: Option<String>,
    pub psk_file: Option<PathBuf>,
    /// The file and where each value came from.
    pub file: ConfigFile,
}

/// Only `troupe-agent run`'s options, to get their defaults when
/// `--print-config` is given without a subcommand.
#[derive(clap::Parser)]
struct RunOnly {
    #[command(flatten)]
    args: RunArgs,
}

/// The default `run` options and their (empty) matches.
pub fn default_run() -> (RunArgs, clap::ArgMatches) {
    use clap::{CommandFactory, FromArgMatches};
    let m = RunOnly::command()
        .no_binary_name(true)
        .get_matches_from(Vec::<String>::new());
    let args = RunOnly::from_arg_matches(&m)
        .expect("run's defaults parse")
        .args;
    (args, m)
}

fn given(m: &clap::ArgMatches, id: &str, env: Option<&'static str>) -> Given {
    match m.value_source(id) {
        Some(ValueSource::CommandLine) => Given::Flag,
        Some(ValueSource::EnvVariable) => env.map_or(Given::No, Given::Env),
        _ => Given::No,
    }
}

/// Applies the configuration file (`path`; `explicit` when `--config` was
/// given) and the environment to the parsed `run` options.
pub fn resolve(
    mut args: RunArgs,
    m: &clap::ArgMatches,
    path: &Path,
    explicit: bool,
) -> Result<Effective> {
    let mut f = ConfigFile::load(path, explicit, KEYS).map_err(|e| anyhow!(e))?;
    let e = |s: String| anyhow!(s);
    // --catalog converges a file: no master then, whatever the file says.
    let servers = if args.catalog.is_some() {
        f.resolve::<Option<Servers>>("server", Given::Flag, None)
            .map_err(e)?
    } else {
        f.resolve(
            "server",
            given(m, "server", Some("TROUPE_SERVER")),
            args.server.clone().map(Servers::One),
        )
        .map_err(e)?
    };
    let servers = servers.map(|s| s.list()).unwrap_or_default();
    if servers.iter().any(|s| s.trim().is_empty()) {
        anyhow::bail!("config file {}: key `server`: an empty URL", path.display());
    }
    args.server = servers.first().cloned();
    args.more_servers = servers.iter().skip(1).cloned().collect();
    let name = f
        .resolve::<Option<String>>("name", Given::No, None)
        .map_err(e)?;
    let ca_fingerprint = f
        .resolve::<Option<String>>("ca_fingerprint", Given::No, None)
        .map_err(e)?;
    let psk_file = f
        .resolve::<Option<PathBuf>>("psk_file", Given::No, None)
        .map_err(e)?;
    args.state = f
        .resolve("state_dir", given(m, "state", None), args.state)
        .map_err(e)?;
    args.interval = f
        .resolve("interval", given(m, "interval", None), args.interval)
        .map_err(e)?;
    args.splay = f
        .resolve("splay", given(m, "splay", None), args.splay)
        .map_err(e)?;
    args.noop = f
        .resolve("noop", given(m, "noop", None), args.noop)
        .map_err(e)?;
    args.no_listen = !f
        .resolve(
            "orchestration",
            given(m, "no_listen", None),
            !args.no_listen,
        )
        .map_err(e)?;
    args.orchestration = f
        .resolve(
            "orchestration_file",
            given(m, "orchestration", None),
            args.orchestration,
        )
        .map_err(e)?;
    args.facts_dir = f
        .resolve("facts_dir", given(m, "facts_dir", None), args.facts_dir)
        .map_err(e)?;
    args.environment = f
        .resolve(
            "environment",
            given(m, "environment", None),
            args.environment,
        )
        .map_err(e)?;
    args.rollback_on_failure = f
        .resolve(
            "rollback_on_failure",
            given(m, "rollback_on_failure", None),
            args.rollback_on_failure,
        )
        .map_err(e)?;
    args.keep_reports = f
        .resolve(
            "keep_reports",
            given(m, "keep_reports", None),
            args.keep_reports,
        )
        .map_err(e)?;
    args.package_dir = f
        .resolve(
            "package_dir",
            given(m, "package_dir", None),
            args.package_dir,
        )
        .map_err(e)?;
    args.root = f
        .resolve("root", given(m, "root", None), args.root)
        .map_err(e)?;
    let output = f
        .resolve(
            "output",
            given(m, "output", None),
            output_name(args.output).to_owned(),
        )
        .map_err(e)?;
    args.output = <Output as clap::ValueEnum>::from_str(&output, true).map_err(|_| {
        anyhow!(
            "config file {}: key `output`: {output:?} is not one of changes, summary, json, quiet",
            path.display()
        )
    })?;
    let stage = f
        .resolve(
            "stage_writes",
            given(m, "stage_writes", None),
            args.stage_writes.name().to_owned(),
        )
        .map_err(e)?;
    args.stage_writes = <crate::providers::stage::StageWrites as clap::ValueEnum>::from_str(
        &stage, true,
    )
    .map_err(|_| {
        anyhow!(
            "config file {}: key `stage_writes`: {stage:?} is not one of auto, always, never",
            path.display()
        )
    })?;
    if args.environment.is_some() && args.server.is_none() {
        anyhow::bail!("`environment` needs a `server` (flag --server or key `server`)");
    }
    Ok(Effective {
        run: args,
        servers,
        name,
        ca_fingerprint,
        psk_file,
        file: f,
    })
}

fn output_name(o: Output) -> &'static str {
    match o {
        Output::Changes => "changes",
        Output::Summary => "summary",
        Output::Json => "json",
        Output::Quiet => "quiet",
    }
}

/// `troupe-agent --print-config [--json]`.
pub fn print(eff: &Effective, json: bool) -> String {
    if json {
        let mut s = serde_json::to_string_pretty(&eff.file.to_json()).unwrap_or_default();
        s.push('\n');
        s
    } else {
        eff.file.to_text()
    }
}

/// Whether `state_dir` holds a finished identity (key and certificate).
fn has_identity(state_dir: &Path) -> bool {
    use crate::identity::{Identity, KEY_FILE, KEY_NEXT};
    (state_dir.join(KEY_FILE).exists() || state_dir.join(KEY_NEXT).exists())
        && Identity::exists(state_dir)
}

/// Reads the one-time key: refused when others may read it (it is a
/// secret) or write it.
fn read_psk(path: &Path) -> Result<Option<String>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("psk_file {}", path.display())),
    };
    if meta.mode() & 0o077 != 0 {
        anyhow::bail!(
            "psk_file {}: refused: group or others may read or write it (mode {:04o}); it holds \
             a secret: run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o7777,
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("psk_file {}", path.display()))?;
    let psk = text.trim().to_owned();
    if psk.is_empty() {
        anyhow::bail!("psk_file {}: empty", path.display());
    }
    Ok(Some(psk))
}

/// The first join, when the state directory has no certificate and
/// `ca_fingerprint` is set: bootstraps against the first server with the
/// key from `psk_file` (deleted once joined). Does nothing otherwise.
/// Whether it joined.
pub fn bootstrap_if_needed(eff: &Effective) -> Result<bool> {
    let (Some(server), Some(fp)) = (eff.servers.first(), eff.ca_fingerprint.as_ref()) else {
        return Ok(false);
    };
    if has_identity(&eff.run.state) {
        return Ok(false);
    }
    let psk = match &eff.psk_file {
        Some(p) => read_psk(p)?,
        None => None,
    };
    let name = eff
        .name
        .clone()
        .unwrap_or_else(crate::facts::host_fqdn)
        .to_ascii_lowercase();
    tracing::info!(
        "{} holds no certificate: joining {server} as {name} first{}",
        eff.run.state.display(),
        if psk.is_some() {
            " (with the pre-shared key)"
        } else {
            " (no pre-shared key: waiting for `troupe ca sign`)"
        }
    );
    crate::state::create_private_dir(&eff.run.state)?;
    let args = crate::bootstrap::Args {
        server: server.clone(),
        name,
        psk,
        ca_fingerprint: fp.clone(),
        state: eff.run.state.clone(),
        poll_initial: std::time::Duration::from_secs(2).into(),
        poll_max: std::time::Duration::from_secs(60).into(),
        wait: None,
        retry_for: crate::bootstrap::RetryFor(Some(std::time::Duration::from_secs(300))),
    };
    crate::bootstrap::run(args)?;
    if let Some(p) = &eff.psk_file
        && p.exists()
    {
        std::fs::remove_file(p).with_context(|| {
            format!(
                "joined, but could not delete the used psk_file {}",
                p.display()
            )
        })?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_matches(argv: &[&str]) -> (RunArgs, clap::ArgMatches) {
        use clap::{CommandFactory, FromArgMatches};
        let m = RunOnly::command()
            .no_binary_name(true)
            .get_matches_from(argv);
        (RunOnly::from_arg_matches(&m).unwrap().args, m)
    }

    #[test]
    fn file_values_apply_and_flags_win() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(
            &p,
            "server = [\"https://a:8140\", \"https://b:8140\"]\ninterval = 60\n\
             orchestration = false\noutput = \"quiet\"\nstate_dir = \"/tmp/s\"\n",
        )
        .unwrap();
        let (a, m) = run_matches(&["--interval", "5"]);
        let eff = resolve(a, &m, &p, true).unwrap();
        assert_eq!(eff.servers, ["https://a:8140", "https://b:8140"]);
        assert_eq!(eff.run.server.as_deref(), Some("https://a:8140"));
        assert_eq!(eff.run.interval, 5, "the flag wins");
        assert!(eff.run.no_listen);
        assert_eq!(eff.run.output, Output::Quiet);
        assert_eq!(eff.run.state, Path::new("/tmp/s"));
        let j = eff.file.to_json();
        assert_eq!(j["settings"]["interval"]["source"], "flag");
        assert_eq!(j["settings"]["splay"]["source"], "default");

        // --catalog: no master, whatever the file says.
        let (a, m) = run_matches(&["--catalog", "/x.json"]);
        assert!(resolve(a, &m, &p, true).unwrap().servers.is_empty());
    }

    #[test]
    fn bad_output_and_unknown_keys_name_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("agent.toml");
        std::fs::write(&p, "output = \"loud\"\n").unwrap();
        let (a, m) = run_matches(&[]);
        let e = resolve(a, &m, &p, true).unwrap_err().to_string();
        assert!(
            e.contains("key `output`") && e.contains("agent.toml"),
            "{e}"
        );
        std::fs::write(&p, "master = \"https://a\"\n").unwrap();
        let (a, m) = run_matches(&[]);
        let e = resolve(a, &m, &p, true).unwrap_err().to_string();
        assert!(e.contains("unknown key `master`"), "{e}");
    }
}
