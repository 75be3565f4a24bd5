//! `troupe nodes`, `troupe report`, `troupe facts`, `troupe env`: what the
//! operator reads about the fleet and the code, from the running master
//! (through its admin socket, like `troupe ca`).

use crate::admin::{AdminRequest, AdminResponse};
use crate::ca_cli::DataArg;
use crate::store::{FactFilter, NodeRecord};
use anyhow::{Result, bail};
use serde::Deserialize;
use std::path::Path;
use troupe_catalog::report::{Report, Status};

/// `troupe nodes`: every node with its last check-in and run.
#[derive(clap::Args, Debug)]
pub struct NodesArgs {
    /// Only nodes whose facts match, e.g. `os.family=Debian` (repeatable;
    /// all must match). Paths are dotted into nested facts.
    #[arg(long = "where", value_name = "FACT=VALUE")]
    pub filters: Vec<FactFilter>,
    /// Only nodes with this role.
    #[arg(long)]
    pub role: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub data: DataArg,
}

/// `troupe report HOST [RUN]`: one run report, the latest by default.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The node's certificate name, as `troupe nodes` lists it.
    pub host: String,
    /// Run id (from `troupe nodes` or the agent's output).
    pub run: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also list unchanged resources.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub data: DataArg,
}

/// `troupe facts HOST`: the facts a node sent with its last check-in.
#[derive(clap::Args, Debug)]
pub struct FactsArgs {
    /// The node's certificate name, as `troupe nodes` lists it.
    pub host: String,
    #[command(flatten)]
    pub data: DataArg,
}

/// `troupe env ...`: environments and code promotion.
#[derive(clap::Subcommand, Debug)]
pub enum EnvCmd {
    /// Show the code each environment serves, what is staged for held
    /// environments, and why the newest tree does not load (if it does not).
    ///
    /// Exits 2 when the newest tree does not load.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArg,
    },
    /// Make the staged code of a held environment live (see
    /// `troupe master --hold ENV`).
    Promote {
        /// The held environment, e.g. `production`.
        env: String,
        #[command(flatten)]
        data: DataArg,
    },
}

fn ask(data: &Path, req: AdminRequest) -> Result<serde_json::Value> {
    let resp: AdminResponse = match crate::ca_cli::call(data, &req)? {
        Some(r) => r,
        None => bail!(
            "no master is running on {}: this command asks the running master (start `troupe master --data {}`, or give the right --data or TROUPE_DATA)",
            data.display(),
            data.display()
        ),
    };
    if resp.ok {
        Ok(resp.result.unwrap_or_default())
    } else {
        bail!("{}", resp.error.unwrap_or_else(|| "unknown error".into()))
    }
}

#[derive(Deserialize)]
struct NodeRow {
    node: NodeRecord,
    stale: bool,
}

fn ago(now: u64, t: u64) -> String {
    if t == 0 {
        return "never".into();
    }
    let s = now.saturating_sub(t);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

pub fn nodes(args: NodesArgs) -> Result<u8> {
    let v = ask(
        &args.data.data,
        AdminRequest::Nodes {
            r#where: args
                .filters
                .iter()
                .map(|f| format!("{}={}", f.path, f.value))
                .collect(),
            role: args.role.clone(),
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v["nodes"])?);
        return Ok(0);
    }
    let now = v["now"].as_u64().unwrap_or(0);
    let rows: Vec<NodeRow> = serde_json::from_value(v["nodes"].clone())?;
    if rows.is_empty() {
        if args.filters.is_empty() && args.role.is_none() {
            println!("(no nodes: none has checked in yet)");
        } else {
            println!("(no node matches --where/--role)");
        }
        return Ok(0);
    }
    println!(
        "{:<32} {:<12} {:<10} {:<12} {:<8} {:>7} {:>6} {:<6} LAST RUN",
        "NODE", "ENVIRONMENT", "ROLE", "CHECK-IN", "STATUS", "CHANGED", "FAILED", "CACHED"
    );
    for r in rows {
        let n = &r.node;
        let (status, changed, failed, cached, run) = match &n.last_report {
            Some(l) => (
                l.status().to_owned(),
                l.changed.to_string(),
                (l.failed + l.skipped).to_string(),
                if l.from_cache { "yes" } else { "no" },
                l.run_id.clone(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-", "-".into()),
        };
        let checkin = if r.stale {
            format!("{} STALE", ago(now, n.last_checkin))
        } else {
            ago(now, n.last_checkin)
        };
        println!(
            "{:<32} {:<12} {:<10} {:<12} {:<8} {:>7} {:>6} {:<6} {}",
            n.name, n.environment, n.role, checkin, status, changed, failed, cached, run
        );
    }
    Ok(0)
}

/// Points at `troupe nodes` when the master knows nothing of a node.
fn unknown_node_hint(error: anyhow::Error) -> anyhow::Error {
    let text = error.to_string();
    if text.starts_with("no report") || text.starts_with("no facts known") {
        anyhow::anyhow!("{text}; `troupe nodes` lists the nodes that have checked in")
    } else {
        error
    }
}

pub fn report(args: ReportArgs) -> Result<u8> {
    let v = ask(
        &args.data.data,
        AdminRequest::Report {
            host: args.host.clone(),
            run: args.run.clone(),
        },
    )
    .map_err(unknown_node_hint)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v["report"])?);
        return Ok(0);
    }
    let r: Report = serde_json::from_value(v["report"].clone())?;
    let (unchanged, changed, failed, skipped) = r.counts();
    println!("run {} on {} ({})", r.run_id, r.node, r.started);
    println!(
        "catalog {} from {} (environment {}, code {}){}",
        r.catalog_hash,
        if r.from_cache {
            "the agent's cache"
        } else {
            "the master"
        },
        r.environment,
        r.code_version,
        if r.noop { ", noop" } else { "" }
    );
    if !r.tags.is_empty() {
        println!("partial run: only resources tagged {}", r.tags.join(", "));
    }
    let pending = match r.noop_pending() {
        0 => String::new(),
        n => format!(", {n} would change (noop)"),
    };
    println!(
        "{} resources: {changed} changed{pending}, {failed} failed, {skipped} skipped, {unchanged} unchanged in {} ms",
        r.resources.len(),
        r.duration_ms
    );
    for res in &r.resources {
        if res.status == Status::Unchanged && !args.all {
            continue;
        }
        let tag = match res.status {
            Status::Unchanged => "unchanged",
            Status::Changed => "changed",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
            Status::Noop => "would change (noop)",
        };
        println!("  {tag:<9} {}", res.id);
        for e in &res.events {
            println!("            {e}");
        }
    }
    Ok(0)
}

pub fn facts(args: FactsArgs) -> Result<u8> {
    let v = ask(
        &args.data.data,
        AdminRequest::Facts {
            host: args.host.clone(),
        },
    )
    .map_err(unknown_node_hint)?;
    println!("{}", serde_json::to_string_pretty(&v["facts"])?);
    Ok(0)
}

pub fn env(cmd: EnvCmd) -> Result<u8> {
    match cmd {
        EnvCmd::Status { json, data } => {
            let v = ask(&data.data, AdminRequest::EnvStatus)?;
            let c = &v["code"];
            if json {
                println!("{}", serde_json::to_string_pretty(c)?);
                return Ok(0);
            }
            println!("module tree {}", c["dir"].as_str().unwrap_or("?"));
            if let Some(obj) = c["environments"].as_object() {
                for (env, ver) in obj {
                    let held = c["hold"]
                        .as_array()
                        .is_some_and(|h| h.iter().any(|x| x == env.as_str()));
                    let staged = c["staged"][env].as_str();
                    println!(
                        "  {env:<16} serving {:.12}{}{}",
                        ver.as_str().unwrap_or("?"),
                        if held { "  (held)" } else { "" },
                        staged
                            .map(|s| format!("  staged {s:.12}: `troupe env promote {env}`"))
                            .unwrap_or_default()
                    );
                }
            }
            if let Some(e) = c["last_error"].as_str() {
                println!(
                    "the newest tree on disk does NOT load (the previous one keeps serving):\n{e}"
                );
                return Ok(2);
            }
            Ok(0)
        }
        EnvCmd::Promote { env, data } => {
            let v = ask(&data.data, AdminRequest::EnvPromote { env: env.clone() })?;
            println!(
                "{env}: now serving {}",
                v["version"].as_str().unwrap_or("?")
            );
            Ok(0)
        }
    }
}
