//! `troupe deploy log [ID] [--list] [--json]`: the release logs the master
//! stored (`DATA/deploys/`), read from the data directory on the master
//! host (no running master needed).

use super::deploys::DeployStore;
use anyhow::{Result, bail};

/// `troupe deploy ...` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DeploySub {
    /// A release's full log (every step, host, result and timing), or the
    /// list of releases (`--list`, or no ID). Run on the master host.
    Log(DeployLogArgs),
}

/// Options of `troupe deploy log`.
#[derive(clap::Args, Debug)]
pub struct DeployLogArgs {
    /// The release id `troupe deploy` printed (e.g. 20261206T210334Z-3f9a0c).
    pub id: Option<String>,
    /// List the releases, newest first.
    #[arg(long, conflicts_with = "id")]
    pub list: bool,
    /// Print JSON (docs/json.md: "Release logs").
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub data: crate::ca_cli::DataArg,
}

/// Runs `troupe deploy log`.
pub fn run(sub: DeploySub) -> Result<u8> {
    let DeploySub::Log(a) = sub;
    let store = DeployStore::new(a.data.data.join(super::deploys::DEPLOYS_DIR));
    let mut out = String::new();
    match &a.id {
        Some(id) => {
            let Some(log) = store.read(id)? else {
                bail!(
                    "no release {id} in {} (`troupe deploy log --list` shows the releases)",
                    store.dir().display()
                );
            };
            if a.json {
                out = serde_json::to_string_pretty(&log)? + "\n";
            } else {
                out = log.to_text();
            }
        }
        None => {
            let list = store.list()?;
            if a.json {
                out = serde_json::to_string_pretty(&list)? + "\n";
            } else if list.is_empty() {
                out.push_str("no releases recorded\n");
            } else {
                use std::fmt::Write as _;
                let _ = writeln!(
                    out,
                    "{:<24}  {:<24}  {:<9}  {:>5}  {:>6}  TITLE",
                    "ID", "STARTED", "STATUS", "HOSTS", "FAILED"
                );
                for r in &list {
                    let _ = writeln!(
                        out,
                        "{:<24}  {:<24}  {:<9}  {:>5}  {:>6}  {}",
                        r.id, r.started, r.status, r.hosts, r.failed_hosts, r.title
                    );
                }
            }
        }
    }
    print!("{out}");
    Ok(0)
}
