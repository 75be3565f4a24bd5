//! `troupe nodes`, `troupe report`, `troupe facts`, `troupe env`: what the
//! operator reads about the fleet and the code, from the running master
//! (through its admin socket, like `troupe ca`).

use crate::admin::{AdminRequest, AdminResponse};
use crate::ca_cli::DataArg;
use crate::store::{FactFilter, NodeRecord, RunEntry};
use anyhow::{Result, bail};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use troupe_catalog::report::{Report, Status};

/// `troupe nodes`: every node with its last check-in and run. STATUS is
/// the last run's (failed, changed, unchanged), or `disabled` while the
/// node's last check-in said its runs are disabled (`troupe-agent
/// disable`; the reason is in `--json` and on the dashboard).
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

/// `troupe report HOST [RUN]`: one run report, the latest by default;
/// `troupe report HOST --list`: the node's run history.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The node's certificate name, as `troupe nodes` lists it.
    pub host: String,
    /// Run id (from `troupe nodes`, `--list` or the agent's output).
    #[arg(conflicts_with = "list")]
    pub run: Option<String>,
    /// List the node's stored runs, oldest first: run id, start time,
    /// status, changed/failed/skipped, catalog hash, from cache.
    #[arg(long)]
    pub list: bool,
    /// Print the report (or with --list the runs) as JSON.
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
    /// Print JSON (the facts are always printed as one JSON object; the
    /// flag is accepted like on every other command).
    #[arg(long)]
    pub json: bool,
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
    /// Git-backed environments (`modules = "git+URL"`): fetch the
    /// repository now and bring each environment to its branch's newest
    /// commit (or only ENV).
    ///
    /// An environment that is not held serves the new commit at once; a
    /// held one stages it for `troupe env promote`. A commit that does not
    /// load is reported and the old one keeps serving. A branch whose name
    /// is not an environment name is skipped. An environment whose branch
    /// is gone keeps serving until it is named here: `troupe env sync ENV`
    /// removes it (refused while it is held).
    ///
    /// Exit status: 0 synced; 2 some environment's new commit does not
    /// load; 1 error (the fetch failed: nothing changed).
    Sync {
        /// Only this environment (branch).
        env: Option<String>,
        /// Print JSON: {"url","environments":{ENV:{"action","commit",
        /// "serving","error"?}},"skipped":{BRANCH:REASON},"generation"}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArg,
    },
    /// Make the staged code of a held environment live (see
    /// `troupe master --hold ENV`).
    ///
    /// First shows what would change on the environment's nodes (the
    /// summary of `troupe env diff ENV --staged`) and asks for `yes` on
    /// the terminal; the promotion is refused if newer code was staged
    /// meanwhile. Without a terminal it refuses unless --yes is given.
    Promote {
        /// The held environment, e.g. `production`.
        env: String,
        /// Promote without showing the diff or asking (for scripts).
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        data: DataArg,
    },
    /// Show what new code would change on every node of an environment
    /// (like octocatalog-diff): each node checked in to ENV is compiled with
    /// its last facts against the code serving ENV and against the new
    /// code; per node the resources added, removed and changed, then a
    /// summary.
    ///
    /// The new code: --to DIR (a module tree), --staged (the code staged
    /// for a held ENV), or by default the staged code if there is some,
    /// else the module tree on disk. Sensitive resources are compared on
    /// every attribute and shown by name and content hash, never by value;
    /// no private key is needed (without it secrets compare by
    /// ciphertext).
    ///
    /// Exit status: 0 nothing changes and every node compiles; 2 some node
    /// changes or does not compile with the new code; 1 error.
    Diff {
        /// The environment, e.g. `production`.
        env: String,
        /// The new code: a module tree directory (read by the master).
        #[arg(long, value_name = "DIR", conflicts_with = "staged")]
        to: Option<std::path::PathBuf>,
        /// The new code: what is staged for the held environment.
        #[arg(long)]
        staged: bool,
        /// Print one JSON document: {"environment","from_version",
        /// "to_version","to","summary":{"nodes","nodes_changed",
        /// "nodes_failing","added","removed","modified"},"nodes":[{"node",
        /// "status","added","removed","changed","changes","text",
        /// "old_error"?,"new_error"?}],"secrets_by_ciphertext"}.
        #[arg(long)]
        json: bool,
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
    resp.into_result()
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
            r#where: args.filters.iter().map(|f| f.to_string()).collect(),
            role: args.role.clone(),
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v["nodes"])?);
        return Ok(0);
    }
    let filtered = !args.filters.is_empty() || args.role.is_some();
    write_nodes(&v, filtered, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// The `troupe nodes` table from the master's answer. Failed and skipped
/// resources are separate columns: a skipped resource did not fail, it
/// was not tried because something it needs failed.
pub fn write_nodes(v: &serde_json::Value, filtered: bool, out: &mut dyn Write) -> Result<()> {
    let now = v["now"].as_u64().unwrap_or(0);
    let rows: Vec<NodeRow> = serde_json::from_value(v["nodes"].clone())?;
    if rows.is_empty() {
        if filtered {
            writeln!(out, "(no node matches --where/--role)")?;
        } else {
            writeln!(out, "(no nodes: none has checked in yet)")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<32} {:<12} {:<10} {:<12} {:<8} {:>7} {:>6} {:>7} {:<6} LAST RUN",
        "NODE",
        "ENVIRONMENT",
        "ROLE",
        "CHECK-IN",
        "STATUS",
        "CHANGED",
        "FAILED",
        "SKIPPED",
        "CACHED"
    )?;
    for r in rows {
        let n = &r.node;
        let (status, changed, failed, skipped, cached, run) = match &n.last_report {
            Some(l) => (
                l.status().to_owned(),
                l.changed.to_string(),
                l.failed.to_string(),
                l.skipped.to_string(),
                if l.from_cache { "yes" } else { "no" },
                l.run_id.clone(),
            ),
            None => (
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-",
                "-".into(),
            ),
        };
        // Runs disabled on the host (`troupe-agent disable`): the last
        // report's status is old news; its counts stay for reference.
        let status = if n.disabled.is_some() {
            "disabled".to_owned()
        } else {
            status
        };
        let checkin = if r.stale {
            format!("{} STALE", ago(now, n.last_checkin))
        } else {
            ago(now, n.last_checkin)
        };
        writeln!(
            out,
            "{:<32} {:<12} {:<10} {:<12} {:<8} {:>7} {:>6} {:>7} {:<6} {}",
            n.name, n.environment, n.role, checkin, status, changed, failed, skipped, cached, run
        )?;
    }
    Ok(())
}

/// Points at `troupe nodes` when the master knows nothing of a node (by
/// the answer's error code, never its wording).
pub(crate) fn unknown_node_hint(error: anyhow::Error) -> anyhow::Error {
    if troupe_base::error_code::code_of(&error)
        == Some(troupe_base::error_code::ErrorCode::NotFound)
    {
        let text = error.to_string();
        troupe_base::error_code::error(
            troupe_base::error_code::ErrorCode::NotFound,
            format!("{text}; `troupe nodes` lists the nodes that have checked in"),
        )
    } else {
        error
    }
}

pub fn report(args: ReportArgs) -> Result<u8> {
    if args.list {
        return report_list(&args);
    }
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
    write_report(&r, args.all, &mut std::io::stdout().lock())?;
    Ok(0)
}

/// `troupe report HOST --list`.
fn report_list(args: &ReportArgs) -> Result<u8> {
    let v = ask(
        &args.data.data,
        AdminRequest::ReportList {
            host: args.host.clone(),
        },
    )
    .map_err(unknown_node_hint)?;
    let runs: Vec<RunEntry> = serde_json::from_value(v["runs"].clone())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&runs)?)?;
    } else {
        write_runs(&runs, &mut out)?;
    }
    Ok(0)
}

/// The run history table, oldest first.
pub fn write_runs(runs: &[RunEntry], out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "{:<36} {:<25} {:<8} {:>7} {:>6} {:>7} {:<6} CATALOG",
        "RUN", "STARTED", "STATUS", "CHANGED", "FAILED", "SKIPPED", "CACHED"
    )?;
    for r in runs {
        writeln!(
            out,
            "{:<36} {:<25} {:<8} {:>7} {:>6} {:>7} {:<6} {}",
            r.run_id,
            r.started,
            r.status,
            r.changed,
            r.failed,
            r.skipped,
            if r.from_cache { "yes" } else { "no" },
            r.catalog_hash
        )?;
    }
    Ok(())
}

/// The resource a skip goes back to: following "skipped: X was skipped"
/// events to the resources that failed (or the skip's own reason).
fn skip_causes(r: &Report) -> BTreeMap<String, Vec<String>> {
    let by_id: BTreeMap<&str, &troupe_catalog::report::ResourceReport> =
        r.resources.iter().map(|x| (x.id.0.as_str(), x)).collect();
    // For each skipped resource, its root causes.
    let mut causes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for res in r.resources.iter().filter(|x| x.status == Status::Skipped) {
        let mut roots = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&troupe_catalog::report::ResourceReport> = vec![res];
        while let Some(cur) = todo.pop() {
            if !seen.insert(cur.id.0.as_str()) {
                continue;
            }
            let mut followed = false;
            for e in &cur.events {
                let Some(rest) = e.strip_prefix("skipped: ") else {
                    continue;
                };
                let id = rest
                    .strip_suffix(" was skipped")
                    .or_else(|| rest.strip_suffix(" failed"));
                match id.and_then(|i| by_id.get(i)) {
                    Some(up) if up.status == Status::Skipped => {
                        todo.push(up);
                        followed = true;
                    }
                    Some(up) => {
                        roots.insert(format!("{} failed", up.id));
                        followed = true;
                    }
                    None => {
                        roots.insert(rest.to_owned());
                        followed = true;
                    }
                }
            }
            if !followed && cur.id != res.id {
                roots.insert(format!("{} was skipped", cur.id));
            }
        }
        if roots.is_empty() {
            roots.insert("no reason recorded".into());
        }
        for root in roots {
            causes.entry(root).or_default().push(res.id.0.clone());
        }
    }
    causes
}

/// A run report for a person: counts, then every resource that changed or
/// failed with its events; skipped resources grouped under the failure
/// that caused them, said once.
pub fn write_report(r: &Report, all: bool, out: &mut dyn Write) -> Result<()> {
    let (unchanged, changed, failed, skipped) = r.counts();
    writeln!(out, "run {} on {} ({})", r.run_id, r.node, r.started)?;
    writeln!(
        out,
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
    )?;
    if !r.tags.is_empty() {
        writeln!(
            out,
            "partial run: only resources tagged {}",
            r.tags.join(", ")
        )?;
    }
    let pending = match r.noop_pending() {
        0 => String::new(),
        n => format!(", {n} would change (noop)"),
    };
    writeln!(
        out,
        "{} resources: {changed} changed{pending}, {failed} failed, {skipped} skipped, {unchanged} unchanged in {} ms",
        r.resources.len(),
        r.duration_ms
    )?;
    for res in &r.resources {
        let tag = match res.status {
            Status::Unchanged if !all => continue,
            Status::Skipped => continue,
            Status::Unchanged => "unchanged",
            Status::Changed => "changed",
            Status::Failed => "FAILED",
            Status::Noop => "would change (noop)",
        };
        writeln!(out, "  {tag:<9} {}", res.id)?;
        for e in &res.events {
            writeln!(out, "            {e}")?;
        }
    }
    for (cause, ids) in skip_causes(r) {
        writeln!(out, "  skipped   {} because {cause}:", ids.len())?;
        for id in ids {
            writeln!(out, "            {id}")?;
        }
    }
    Ok(())
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
            let git = &c["git"];
            if git.is_object() {
                println!(
                    "  last sync {}{}",
                    git["last_sync"]
                        .as_u64()
                        .map(troupe_pki::util::fmt_time)
                        .unwrap_or_else(|| "never".into()),
                    match git["poll_secs"].as_u64() {
                        Some(0) | None => " (polling off: `troupe env sync`)".to_string(),
                        Some(s) => format!(" (every {s}s)"),
                    }
                );
                if let Some(e) = git["last_sync_error"].as_str() {
                    println!("  the last fetch FAILED (the code serving is unchanged): {e}");
                }
            }
            if let Some(obj) = c["environments"].as_object() {
                for (env, ver) in obj {
                    let held = c["hold"]
                        .as_array()
                        .is_some_and(|h| h.iter().any(|x| x == env.as_str()));
                    let staged = c["staged"][env].as_str();
                    let commit = c["commits"][env]
                        .as_str()
                        .map(|s| format!(" commit {s:.12}"))
                        .unwrap_or_default();
                    let staged_commit = c["staged_commits"][env]
                        .as_str()
                        .map(|s| format!(" commit {s:.12}"))
                        .unwrap_or_default();
                    println!(
                        "  {env:<16} serving {:.12}{commit}{}{}{}",
                        ver.as_str().unwrap_or("?"),
                        if held { "  (held)" } else { "" },
                        staged
                            .map(|s| format!(
                                "  staged {s:.12}{staged_commit}: `troupe env promote {env}`"
                            ))
                            .unwrap_or_default(),
                        if git["removed"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|x| x == env.as_str()))
                        {
                            format!("  (branch removed: `troupe env sync {env}` removes it)")
                        } else {
                            String::new()
                        }
                    );
                }
            }
            if let Some(sk) = git["skipped"].as_object() {
                for why in sk.values() {
                    println!("  {}", why.as_str().unwrap_or("?"));
                }
            }
            if git.is_object() && git["last_sync_error"].is_string() && c["last_error"].is_null() {
                return Ok(2);
            }
            if let Some(e) = c["last_error"].as_str() {
                if git.is_object() {
                    println!(
                        "the newest commit of a branch does NOT load (the previous one keeps serving):\n{e}"
                    );
                    return Ok(2);
                }
                println!(
                    "the newest tree on disk does NOT load (the previous one keeps serving):\n{e}"
                );
                return Ok(2);
            }
            Ok(0)
        }
        EnvCmd::Sync { env, json, data } => {
            let v = ask(&data.data, AdminRequest::EnvSync { env })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", write_env_sync(&v));
            }
            let failed = v["environments"]
                .as_object()
                .is_some_and(|o| o.values().any(|e| e["action"] == "failed"));
            Ok(if failed { 2 } else { 0 })
        }
        EnvCmd::Promote { env, yes, data } => {
            use std::io::IsTerminal;
            let expect = if yes {
                None
            } else {
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "refusing to promote `{env}` without confirmation: there is no terminal to ask on; \
                         review `troupe env diff {env} --staged`, then run `troupe env promote {env} --yes`"
                    );
                }
                let v = ask(
                    &data.data,
                    AdminRequest::EnvDiff {
                        env: env.clone(),
                        to: None,
                        staged: true,
                    },
                )?;
                let mut out = std::io::stdout().lock();
                write_promote_summary(&v, &mut out)?;
                write!(
                    out,
                    "promote `{env}` to {:.12}? type yes to go on: ",
                    v["to_version"].as_str().unwrap_or("?")
                )?;
                out.flush()?;
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if answer.trim() != "yes" {
                    bail!("not promoted: the answer was not `yes`");
                }
                v["to_version"].as_str().map(str::to_owned)
            };
            let v = ask(
                &data.data,
                AdminRequest::EnvPromote {
                    env: env.clone(),
                    expect,
                },
            )?;
            println!(
                "{env}: now serving {}",
                v["version"].as_str().unwrap_or("?")
            );
            Ok(0)
        }
        EnvCmd::Diff {
            env,
            to,
            staged,
            json,
            data,
        } => {
            // The master reads DIR: send it an absolute path.
            let to = match to {
                Some(d) => Some(
                    std::fs::canonicalize(&d)
                        .map_err(|e| anyhow::anyhow!("--to {}: {e}", d.display()))?,
                ),
                None => None,
            };
            let v = ask(&data.data, AdminRequest::EnvDiff { env, to, staged })?;
            let code = if v["summary"]["nodes_changed"].as_u64() == Some(0)
                && v["summary"]["nodes_failing"].as_u64() == Some(0)
            {
                0
            } else {
                2
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", write_env_diff(&v));
            }
            Ok(code)
        }
    }
}

/// `troupe env sync`'s text: one line per environment, then the skipped
/// branches.
pub fn write_env_sync(v: &serde_json::Value) -> String {
    let mut out = format!("fetched {}\n", v["url"].as_str().unwrap_or("?"));
    let short = |x: &serde_json::Value| {
        x.as_str()
            .map(|s| s.chars().take(12).collect::<String>())
            .unwrap_or_else(|| "nothing".into())
    };
    if let Some(envs) = v["environments"].as_object() {
        for (env, e) in envs {
            let commit = short(&e["commit"]);
            let serving = short(&e["serving"]);
            let line = match e["action"].as_str().unwrap_or("?") {
                "unchanged" => format!("unchanged at {commit}"),
                "added" => format!("added: serving {commit}"),
                "updated" => format!("updated: serving {commit}"),
                "staged" => format!(
                    "staged {commit} (held; {serving} keeps serving until `troupe env promote {env}`)"
                ),
                "unstaged" => format!("unstaged: the branch is back at {commit}, which serves"),
                "failed" => format!(
                    "FAILED: commit {commit} does not load; {}: {}",
                    if e["serving"].is_string() {
                        format!("{serving} keeps serving")
                    } else {
                        "not served until a commit loads".to_string()
                    },
                    e["error"].as_str().unwrap_or("?")
                ),
                "branch-removed" => format!(
                    "branch removed: still serving {serving} (`troupe env sync {env}` removes the environment)"
                ),
                "removed" => "removed (its branch is gone)".to_string(),
                other => other.to_string(),
            };
            out.push_str(&format!("  {env:<16} {line}\n"));
        }
    }
    if let Some(sk) = v["skipped"].as_object() {
        for why in sk.values() {
            out.push_str(&format!("  {}\n", why.as_str().unwrap_or("?")));
        }
    }
    out
}

/// `troupe env diff`'s text: what serves, what is compared, then each
/// node's changes and the summary.
pub fn write_env_diff(v: &serde_json::Value) -> String {
    format!(
        "environment {}: serving {:.12}, compared with {} ({:.12})\n{}",
        v["environment"].as_str().unwrap_or("?"),
        v["from_version"].as_str().unwrap_or("?"),
        v["to"].as_str().unwrap_or("?"),
        v["to_version"].as_str().unwrap_or("?"),
        troupe_compiler::env_diff::render(v)
    )
}

/// What `troupe env promote` shows before asking: the summary and the
/// nodes that change, without the per-resource detail.
fn write_promote_summary(v: &serde_json::Value, out: &mut dyn Write) -> Result<()> {
    for n in v["nodes"].as_array().into_iter().flatten() {
        let status = n["status"].as_str().unwrap_or("?");
        if status == "unchanged" {
            continue;
        }
        writeln!(
            out,
            "  {:<32} {status}: {} added, {} removed, {} changed",
            n["node"].as_str().unwrap_or("?"),
            n["added"],
            n["removed"],
            n["changed"]
        )?;
    }
    let text = troupe_compiler::env_diff::render(&serde_json::json!({
        "environment": v["environment"],
        "summary": v["summary"],
        "secrets_by_ciphertext": v["secrets_by_ciphertext"],
    }));
    write!(out, "{text}")?;
    writeln!(
        out,
        "(the details: `troupe env diff {} --staged`)",
        v["environment"].as_str().unwrap_or("ENV")
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_node_hint_follows_the_code() {
        use troupe_base::error_code::{ErrorCode, error};
        let e = error(ErrorCode::NotFound, "web9 is a stranger");
        assert_eq!(
            unknown_node_hint(e).to_string(),
            "web9 is a stranger; `troupe nodes` lists the nodes that have checked in"
        );
        let e = anyhow::anyhow!("no report for web9");
        assert_eq!(unknown_node_hint(e).to_string(), "no report for web9");
    }
    use troupe_catalog::ResourceId;
    use troupe_catalog::report::ResourceReport;

    fn res(id: &str, status: Status, events: &[&str]) -> ResourceReport {
        ResourceReport {
            id: ResourceId(id.into()),
            status,
            events: events.iter().map(|e| e.to_string()).collect(),
            diff: None,
            refreshed: false,
            duration_ms: 0,
        }
    }

    /// One failure and three resources skipped behind it, in a chain.
    fn chain_report() -> Report {
        Report {
            run_id: "r1".into(),
            node: "web1.example.com".into(),
            started: "2026-12-06T18:00:00Z".into(),
            duration_ms: 5,
            noop: false,
            catalog_hash: "sha256:abc".into(),
            environment: "production".into(),
            code_version: "v1".into(),
            from_cache: false,
            tags: vec![],
            resources: vec![
                res("package[nginx]", Status::Failed, &["apt-get failed"]),
                res(
                    "file[/etc/nginx/nginx.conf]",
                    Status::Skipped,
                    &["skipped: package[nginx] failed"],
                ),
                res(
                    "service[nginx]",
                    Status::Skipped,
                    &["skipped: file[/etc/nginx/nginx.conf] was skipped"],
                ),
                res(
                    "exec[reload]",
                    Status::Skipped,
                    &["skipped: service[nginx] was skipped"],
                ),
                res("file[/etc/motd]", Status::Changed, &["content changed"]),
            ],
        }
    }

    /// Issue 16 item 5: failed and skipped are counted apart.
    #[test]
    fn nodes_shows_failed_and_skipped_apart() {
        let rep = chain_report();
        let node = NodeRecord {
            name: "web1.example.com".into(),
            last_checkin: 100,
            environment: "production".into(),
            role: "web".into(),
            catalog_hash: "sha256:abc".into(),
            last_report: Some(crate::store::ReportSummary {
                run_id: rep.run_id.clone(),
                started: rep.started.clone(),
                received: 100,
                changed: 1,
                failed: 1,
                skipped: 3,
                noop: false,
                from_cache: false,
                duration_ms: 5,
                exit_code: 6,
            }),
            report_seq: 1,
            disabled: None,
        };
        let v = serde_json::json!({"now": 110, "nodes": [{"node": node, "stale": false}]});
        let mut out = Vec::new();
        write_nodes(&v, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
        // CHECK-IN is "10s ago": two words in the row, one in the header.
        let at = |name: &str| row[col(name) + 1];
        assert_eq!(at("FAILED"), "1", "{text}");
        assert_eq!(at("SKIPPED"), "3", "{text}");
        assert_eq!(at("CHANGED"), "1", "{text}");
        assert_eq!(at("STATUS"), "failed", "{text}");

        // A node whose runs are disabled says so, whatever its last run was.
        let mut node = node;
        node.disabled = Some(crate::store::DisabledMark {
            reason: "kernel upgrade".into(),
            since: "2026-12-07T00:00:00Z".into(),
        });
        let v = serde_json::json!({"now": 110, "nodes": [{"node": node, "stale": false}]});
        let mut out = Vec::new();
        write_nodes(&v, false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let row: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(at_in(&row, col("STATUS")), "disabled", "{text}");
    }

    fn at_in<'a>(row: &[&'a str], col: usize) -> &'a str {
        row[col + 1]
    }

    /// Issue 16 item 5: a skipped resource's cause is said once, naming the
    /// failure, not once per descendant.
    #[test]
    fn report_says_a_skip_cause_once() {
        let mut out = Vec::new();
        write_report(&chain_report(), false, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("1 changed, 1 failed, 3 skipped, 0 unchanged"),
            "{text}"
        );
        assert_eq!(text.matches("package[nginx] failed").count(), 1, "{text}");
        assert!(
            text.contains("skipped   3 because package[nginx] failed:"),
            "{text}"
        );
        assert!(!text.contains("was skipped"), "{text}");
        for id in [
            "file[/etc/nginx/nginx.conf]",
            "service[nginx]",
            "exec[reload]",
        ] {
            assert_eq!(text.matches(id).count(), 1, "{id}: {text}");
        }
    }

    #[test]
    fn run_history_lists_every_run() {
        let a = chain_report();
        let mut b = chain_report();
        b.run_id = "r2".into();
        b.from_cache = true;
        let runs: Vec<RunEntry> = [&a, &b].into_iter().map(RunEntry::of).collect();
        let mut out = Vec::new();
        write_runs(&runs, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("RUN "));
        assert!(lines[1].starts_with("r1 "), "{text}");
        assert!(lines[2].contains(" yes "), "{text}");
        let j = serde_json::to_value(&runs[0]).unwrap();
        for k in [
            "run_id",
            "started",
            "status",
            "changed",
            "failed",
            "skipped",
            "catalog_hash",
            "from_cache",
        ] {
            assert!(j.get(k).is_some(), "{k} missing: {j}");
        }
        assert_eq!(j["status"], "failed");
        assert_eq!(j["skipped"], 3);
    }
}
