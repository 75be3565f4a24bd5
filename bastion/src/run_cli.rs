//! `troupe run`: the bastion's command line for signed orchestration.
//!
//! The bastion is a host with a certificate (`troupe-agent bootstrap` into
//! `--identity DIR`); it signs each command with the sysadmin's key
//! (passphrase-protected file or ssh-agent) and submits it to the master
//! over mutual TLS, which relays it to the matching agents. Every agent
//! verifies the signature and its own policy before acting.
//!
//! Without `--batch` one envelope goes to every matching host at once.
//! With `--batch N` the matching hosts are discovered first (a signed
//! `ping` envelope submitted as a dry run: nothing is relayed), then each
//! host gets its own envelope naming only that host, N hosts at a time,
//! `--batch-sleep` apart; the run stops after the batch in which failures
//! exceed `--max-failures` (default 0: stop at the first failure).
//!
//! Exit status: 0 when every matched host answered `ok`; 2 when some host
//! failed, refused, did not answer, or nothing matched; 1 on errors.

use crate::cli::SignerArgs;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use troupe_command::envelope::{DEFAULT_TTL_SECS, MAX_TTL_SECS};
use troupe_command::verify::unix_now;
use troupe_command::{ArgValue, Command, Registry, Signer, TargetFilter};
use troupe_proto::v1::orchestration_client::OrchestrationClient;
use troupe_proto::v1::{CommandResult, SubmitRequest, SubmitSummary, submit_event};

use crate::progress::Progress;

/// What `troupe run` and `troupe deploy` share: the master, the bastion's
/// identity and signing key, and which hosts to target.
#[derive(clap::Args, Debug)]
pub struct FleetArgs {
    /// The master's URL, e.g. `https://puppet.example:8140` (https only;
    /// port 8140 when none is given).
    #[arg(long, env = "TROUPE_SERVER", value_name = "URL")]
    pub server: String,
    /// This bastion's identity: a state directory bootstrapped with
    /// `troupe-agent bootstrap --state DIR` (key.pem, cert.pem, ca.pem).
    #[arg(long, env = "TROUPE_IDENTITY", value_name = "DIR")]
    pub identity: PathBuf,
    #[command(flatten)]
    pub signer: SignerArgs,
    /// Only hosts whose fact equals the value (repeatable), e.g.
    /// `--where os.family=Debian`.
    #[arg(long = "where", value_name = "FACT=VALUE", value_parser = parse_where)]
    pub wheres: Vec<String>,
    /// Only hosts with this role.
    #[arg(long)]
    pub role: Option<String>,
    /// Only hosts whose name matches this glob (`web-*`).
    #[arg(long, value_name = "GLOB")]
    pub name: Option<String>,
    /// Only hosts in this environment (the `environment` each agent's
    /// orchestration configuration declares; checked by the agents too),
    /// e.g. `--environment dr` first, then `--environment production`.
    #[arg(long, value_name = "ENV")]
    pub environment: Option<String>,
    /// At most this many hosts (the first in name order; at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

impl FleetArgs {
    /// The target filter from --where/--role/--name/--environment/--limit.
    /// `--environment E` is the fact `environment=E`.
    pub fn target(&self) -> anyhow::Result<TargetFilter> {
        let mut wheres = self.wheres.clone();
        if let Some(e) = &self.environment {
            troupe_command::registry::check_environment(e)
                .map_err(|m| anyhow::anyhow!("--environment: {m}"))?;
            if wheres.iter().any(|w| w.starts_with("environment=")) {
                bail!("give the environment once: --environment or --where environment=...");
            }
            wheres.push(format!("environment={e}"));
        }
        TargetFilter::from_cli(&wheres, self.role.clone(), self.name.clone(), self.limit).map_err(
            |e| match e {
                // Name the option, not the envelope field it fills.
                troupe_command::envelope::EnvelopeError::Field { field, reason } => {
                    let option = match field {
                        "target.facts" => "--where",
                        "target.role" => "--role",
                        "target.name" => "--name",
                        "target.limit" => "--limit",
                        other => other,
                    };
                    anyhow::anyhow!("{option}: {reason}")
                }
                e => e.into(),
            },
        )
    }

    /// An mTLS channel to the master with the bastion's identity.
    pub async fn connect(&self) -> anyhow::Result<Channel> {
        let dir = &self.identity;
        let id = troupe_identity::Identity::load(dir).with_context(|| {
            format!(
                "--identity {}: not a bootstrapped identity (give the --state directory of `troupe-agent bootstrap`)",
                dir.display()
            )
        })?;
        let key = dir.join("key.pem");
        if let Ok(meta) = std::fs::metadata(&key) {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{} is accessible by group or others (mode {mode:o}); run `chmod 600 {}`",
                    key.display(),
                    key.display()
                );
            }
        }
        if u64::try_from(unix_now()).unwrap_or(0) > id.not_after {
            bail!(
                "the bastion's certificate in {} ({}) has expired; an expired certificate cannot be renewed: have the operator run `troupe ca clean {}`, then bootstrap again",
                dir.display(),
                id.name,
                id.name
            );
        }
        id.connect(&self.server).await.map_err(connect_hint)
    }
}

/// A wait for answers: 1 s to the master's limit (it waits no longer, so a
/// longer one would be cut short without a word).
pub(crate) fn parse_wait(s: &str) -> std::result::Result<humantime::Duration, String> {
    let d: humantime::Duration = s.parse().map_err(|e| format!("{e} (e.g. 30s, 5m)"))?;
    let max = u64::from(troupe_command::envelope::MAX_TIMEOUT_SECS);
    if d.as_secs() < 1 {
        return Err("at least 1s".into());
    }
    if d.as_secs() > max || (d.as_secs() == max && d.subsec_nanos() > 0) {
        return Err(format!(
            "at most {}: the master waits no longer for answers",
            humantime::format_duration(std::time::Duration::from_secs(max))
        ));
    }
    Ok(d)
}

/// `--where FACT=VALUE`: the shape is checked here (a usage error, as for
/// `troupe nodes --where`), the fact name with the rest of the target.
fn parse_where(s: &str) -> std::result::Result<String, String> {
    match s.split_once('=') {
        Some((fact, _)) if !fact.is_empty() => Ok(s.to_string()),
        _ => Err("expected FACT=VALUE, e.g. --where os.family=Debian".into()),
    }
}

/// Says what to check when the master cannot be reached at all (by the
/// connection failure's kind, see [`troupe_identity::ConnectFailure`]).
fn connect_hint(e: anyhow::Error) -> anyhow::Error {
    match troupe_identity::connect_hint(&e) {
        Some(hint) => anyhow::anyhow!("{e:#}; {hint}"),
        None => e,
    }
}

/// What a failed Submit says: a connection closed during the TLS
/// handshake is the master refusing the bastion's certificate, not the
/// command.
fn submit_error(what: &str, s: &tonic::Status) -> anyhow::Error {
    if troupe_identity::closed_by_master(s) {
        return anyhow::anyhow!(
            "the master closed the TLS connection: the bastion's certificate may be revoked or expired, or the master stopped (`troupe ca list --all` on the master shows the certificate's state)"
        );
    }
    anyhow::anyhow!("{what}: {}", troupe_identity::status_message(s))
}

/// Options of `troupe run`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = RUN_HELP)]
pub struct RunArgs {
    /// The action: ping, facts, agent.run, agent.disable, agent.enable,
    /// package.status|install|update, service.status|start|stop|restart,
    /// lb.drain, lb.restore, maintenance.on, maintenance.off, health.http,
    /// health.tcp, or a module action (with --module-actions).
    pub action: String,
    /// Arguments as NAME=VALUE, checked against the action's schema
    /// (e.g. `name=nginx`, `version=1.24.0-1`, `message="kernel update"`).
    #[arg(value_name = "NAME=VALUE")]
    pub args: Vec<String>,
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// Run on N hosts at a time (at least 1), each host with its own signed
    /// command.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,
    /// Pause between batches, e.g. `30s`.
    #[arg(long, default_value = "0s", requires = "batch")]
    pub batch_sleep: humantime::Duration,
    /// With --batch: stop once more than this many hosts have failed.
    #[arg(long, default_value_t = 0, requires = "batch")]
    pub max_failures: u32,
    /// How long to wait for answers (per batch; 1s to 10m, the longest the
    /// master waits).
    #[arg(long, default_value = "30s", value_parser = parse_wait)]
    pub timeout: humantime::Duration,
    /// Lifetime of each signed command in seconds (1 to 600); agents refuse
    /// it afterwards.
    #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_TTL_SECS,
          value_parser = clap::value_parser!(i64).range(1..=MAX_TTL_SECS))]
    pub ttl: i64,
    /// Show who matches; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Actions a module declares (TOML `[[action]]` tables, as in the
    /// agents' actions_dir), to check their arguments here too
    /// (repeatable): `MODULE=FILE`, a file `MODULE.toml`, or a directory of
    /// them: `--module-actions
    /// modules/environments/production/files/troupe/actions.d`.
    #[arg(long, value_name = "MODULE=FILE|DIR")]
    pub module_actions: Vec<String>,
    /// Print events as they happen, one JSON object a line (NDJSON):
    /// `{"event":"matched"|"batch"|"result"|"summary",...}`; a result
    /// carries the action's data (e.g. the facts) as JSON (docs/json.md).
    #[arg(long)]
    pub json: bool,
}

const RUN_HELP: &str = "\
Exit status:
  0   every matched host answered ok (--dry-run: some host matched)
  1   error: nothing was signed or sent, or the master refused the command
  2   some host failed, refused or did not answer, or no host matched
  64  malformed command line

Examples:
  troupe run ping --role web --server https://master:8140 \\
      --identity /var/lib/troupe-agent --key ~/.troupe/alice.key
  troupe run service.restart name=nginx --where os.family=Debian --batch 5 --batch-sleep 30s ...
  troupe run maintenance.on message=\"kernel update\" --name 'web-*' --dry-run ...";

/// Totals of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub matched: Vec<String>,
    pub ok: Vec<String>,
    pub not_ok: Vec<String>,
    pub no_answer: Vec<String>,
    /// Connected hosts left out because the master classified them with
    /// another role than the one their agent declares: (host, why).
    pub left_out: Vec<(String, String)>,
}

/// The master's left-out hosts as (host, why).
pub(crate) fn left_out(s: &SubmitSummary) -> Vec<(String, String)> {
    s.left_out
        .iter()
        .map(|l| (l.node.clone(), l.reason.clone()))
        .collect()
}

/// Lines saying which connected hosts were left out and why.
pub(crate) fn print_left_out(out: &mut dyn Write, left: &[(String, String)]) -> Result<()> {
    for (host, why) in left {
        writeln!(out, "left out: {host}: {why}")?;
    }
    Ok(())
}

/// `left_out` as JSON: `[{"node","reason"}]`.
pub(crate) fn left_out_json(left: &[(String, String)]) -> serde_json::Value {
    left.iter()
        .map(|(n, r)| serde_json::json!({"node": n, "reason": r}))
        .collect()
}

/// Submits one signed envelope and calls `on_result` for each host's
/// result as it arrives; returns the matched targets and the summary.
pub async fn submit(
    channel: Channel,
    wire: Vec<u8>,
    timeout: Duration,
    dry_run: bool,
    on_result: impl FnMut(&CommandResult),
) -> Result<(Vec<String>, SubmitSummary)> {
    submit_progress(
        channel,
        wire,
        timeout,
        dry_run,
        &Progress::default(),
        on_result,
    )
    .await
}

/// [`submit`], counting answers on `progress` ("answered N/M").
pub async fn submit_progress(
    channel: Channel,
    wire: Vec<u8>,
    timeout: Duration,
    dry_run: bool,
    progress: &Progress,
    mut on_result: impl FnMut(&CommandResult),
) -> Result<(Vec<String>, SubmitSummary)> {
    let mut client = OrchestrationClient::new(channel);
    let req = SubmitRequest {
        envelope: wire,
        timeout_secs: timeout.as_secs().clamp(1, 600) as u32,
        dry_run,
    };
    let mut stream = client
        .submit(req)
        .await
        .map_err(|s| submit_error("the master refused the command", &s))?
        .into_inner();
    let mut targets = Vec::new();
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(|s| submit_error("stream from the master", &s))?;
        match ev.event {
            Some(submit_event::Event::Targets(t)) => {
                if !dry_run {
                    progress.count(t.nodes.len() as u64, "");
                }
                targets = t.nodes
            }
            Some(submit_event::Event::Result(r)) => {
                progress.suspend(|| on_result(&r));
                progress.inc();
            }
            Some(submit_event::Event::Summary(s)) => return Ok((targets, s)),
            None => {}
        }
    }
    bail!("the master closed the stream before the summary")
}

/// Builds and signs one command envelope, valid for `ttl` seconds from now.
pub(crate) fn sign(
    signer: &mut dyn Signer,
    action: &str,
    args: &BTreeMap<String, ArgValue>,
    target: TargetFilter,
    ttl: i64,
) -> Result<Vec<u8>> {
    let cmd = Command::new(
        signer.key_id().clone(),
        action,
        args.clone(),
        target,
        unix_now(),
        ttl,
    )?;
    Ok(cmd.sign(signer)?.to_wire())
}

/// The data a result carries (e.g. `facts`' facts, `package.status`'
/// version), as JSON; `None` when there is none.
fn result_data(r: &CommandResult) -> Option<serde_json::Value> {
    if r.data_json.is_empty() {
        return None;
    }
    Some(serde_json::from_slice(&r.data_json).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&r.data_json).into_owned())
    }))
}

/// One result: a line (and the action's data, indented), or with `json` one
/// NDJSON event.
fn print_result(out: &mut dyn Write, r: &CommandResult, json: bool) {
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::json!({
                "event": "result", "node": r.node, "status": r.status,
                "message": r.message, "duration_ms": r.duration_ms,
                "data": result_data(r),
            })
        );
        let _ = out.flush();
        return;
    }
    let _ = writeln!(
        out,
        "{:<30} {:<14} {} ({} ms)",
        r.node,
        r.status,
        r.message.trim().replace('\n', " | "),
        r.duration_ms
    );
    if let Some(data) = result_data(r).filter(|d| !d.is_null()) {
        let text = serde_json::to_string_pretty(&data).unwrap_or_default();
        for line in text.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    let _ = out.flush();
}

fn print_matched(
    out: &mut dyn Write,
    matched: &[String],
    offline: &[String],
    left: &[(String, String)],
    json: bool,
) -> Result<()> {
    if json {
        writeln!(
            out,
            "{}",
            serde_json::json!({"event": "matched", "hosts": matched, "not_connected": offline,
                               "left_out": left_out_json(left)})
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "matched {} host(s): {}",
        matched.len(),
        matched.join(" ")
    )?;
    if !offline.is_empty() {
        writeln!(
            out,
            "not connected now (no answer expected): {}",
            offline.join(" ")
        )?;
    }
    print_left_out(out, left)
}

/// Runs `troupe run`.
pub fn run(args: RunArgs) -> Result<u8> {
    let mut registry = Registry::builtin();
    for m in &args.module_actions {
        let (module, file) = match m.split_once('=') {
            Some((module, file)) => (Some(module), file),
            None => (None, m.as_str()),
        };
        let path = std::path::Path::new(file);
        if module.is_none() && path.is_dir() {
            // A directory of MODULE.toml files, like an agent's actions_dir.
            troupe_command::action_files::load_actions_dir_checked(path, &mut registry, false)?;
            continue;
        }
        // MODULE=FILE, or FILE named MODULE.toml.
        let module = match module {
            Some(m) => m.to_string(),
            None => path
                .file_stem()
                .and_then(|s| s.to_str())
                .filter(|_| path.extension().is_some_and(|e| e == "toml"))
                .map(str::to_string)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--module-actions {m:?}: expected MODULE=FILE, MODULE.toml or a directory"
                    )
                })?,
        };
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        registry
            .add_module_toml(&module, &text)
            .map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    }
    let Some(spec) = registry.get(&args.action) else {
        let names: Vec<&str> = registry.actions().map(|a| a.name.as_str()).collect();
        bail!(
            "unknown action {:?}; built-in actions: {}",
            args.action,
            names.join(", ")
        );
    };
    let cmd_args = spec
        .parse_cli_args(&args.args)
        .with_context(|| format!("arguments of {}", args.action))?;
    let target = args.fleet.target()?;
    let mut signer = args.fleet.signer.open()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let channel = args.fleet.connect().await?;
        let mut out = std::io::stdout();
        let timeout = Duration::from(args.timeout);
        let mut totals = Totals::default();
        if args.dry_run || args.batch.is_some() {
            // Discovery with a ping envelope: never relayed.
            let wire = sign(&mut *signer, "ping", &BTreeMap::new(), target.clone(), 60)?;
            let (matched, found) = submit(channel.clone(), wire, timeout, true, |_| {}).await?;
            totals.left_out = left_out(&found);
            print_matched(&mut out, &matched, &found.no_answer, &totals.left_out, args.json)?;
            if args.dry_run {
                return Ok(if matched.is_empty() { 2 } else { 0 });
            }
            totals.matched = matched.clone();
            let progress = Progress::new(!args.json);
            progress.count(matched.len() as u64, &args.action);
            let n = args.batch.unwrap_or(1) as usize;
            let batches: Vec<Vec<String>> = matched.chunks(n).map(<[String]>::to_vec).collect();
            let count = batches.len();
            for (i, hosts) in batches.into_iter().enumerate() {
                if args.json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({"event": "batch", "batch": i + 1, "of": count, "hosts": hosts})
                    )?;
                } else {
                    writeln!(out, "batch {}/{}: {}", i + 1, count, hosts.join(" "))?;
                }
                let mut running = tokio::task::JoinSet::new();
                for h in &hosts {
                    let t = TargetFilter {
                        name: Some(h.clone()),
                        limit: None,
                        ..target.clone()
                    };
                    let wire = sign(&mut *signer, &args.action, &cmd_args, t, args.ttl)?;
                    let ch = channel.clone();
                    let host = h.clone();
                    running.spawn(async move {
                        let mut got = Vec::new();
                        let r = submit(ch, wire, timeout, false, |r| got.push(r.clone())).await;
                        (host, r, got)
                    });
                }
                while let Some(j) = running.join_next().await {
                    let (host, r, got) = j?;
                    progress.inc();
                    for g in &got {
                        progress.suspend(|| print_result(&mut out, g, args.json));
                        if g.status == "ok" {
                            totals.ok.push(g.node.clone());
                        } else {
                            totals.not_ok.push(g.node.clone());
                        }
                    }
                    match r {
                        Ok((_, s)) => totals.no_answer.extend(s.no_answer),
                        Err(e) => {
                            if args.json {
                                writeln!(
                                    out,
                                    "{}",
                                    serde_json::json!({"event": "result", "node": host, "status": "error", "message": format!("{e:#}"), "duration_ms": 0, "data": null})
                                )?;
                            } else {
                                writeln!(out, "{host:<30} error          {e:#}")?;
                            }
                            totals.not_ok.push(host);
                        }
                    }
                }
                let failed = totals.not_ok.len() + totals.no_answer.len();
                if failed > args.max_failures as usize {
                    if !args.json {
                        writeln!(
                            out,
                            "stopping: {failed} host(s) failed (allowed: {})",
                            args.max_failures
                        )?;
                    }
                    break;
                }
                if i + 1 < count && !args.batch_sleep.is_zero() {
                    tokio::time::sleep(args.batch_sleep.into()).await;
                }
            }
            progress.finish();
        } else {
            let wire = sign(&mut *signer, &args.action, &cmd_args, target, args.ttl)?;
            let json = args.json;
            let progress = Progress::new(!json);
            // Names the action on the bar; the count comes with the targets.
            progress.count(0, &args.action);
            let (matched, summary) = submit_progress(channel, wire, timeout, false, &progress, |r| {
                print_result(&mut std::io::stdout(), r, json);
                if r.status == "ok" {
                    totals.ok.push(r.node.clone());
                } else {
                    totals.not_ok.push(r.node.clone());
                }
            })
            .await?;
            progress.finish();
            totals.matched = matched;
            totals.left_out = left_out(&summary);
            totals.no_answer = summary.no_answer;
        }
        if args.json {
            print_summary_json(&mut out, &totals)?;
        } else {
            print_summary(&mut out, &totals)?;
        }
        let all_ok = !totals.matched.is_empty() && totals.ok.len() == totals.matched.len();
        Ok(if all_ok { 0 } else { 2 })
    })
}

fn print_summary_json(out: &mut dyn Write, t: &Totals) -> Result<()> {
    let answered: std::collections::BTreeSet<&String> =
        t.ok.iter().chain(&t.not_ok).chain(&t.no_answer).collect();
    let not_run: Vec<&String> = t.matched.iter().filter(|h| !answered.contains(h)).collect();
    writeln!(
        out,
        "{}",
        serde_json::json!({
            "event": "summary", "matched": t.matched, "ok": t.ok,
            "failed": t.not_ok, "no_answer": t.no_answer, "not_run": not_run,
            "left_out": left_out_json(&t.left_out),
        })
    )?;
    Ok(())
}

fn print_summary(out: &mut dyn Write, t: &Totals) -> Result<()> {
    let skipped = t
        .matched
        .len()
        .saturating_sub(t.ok.len() + t.not_ok.len() + t.no_answer.len());
    writeln!(
        out,
        "summary: {} matched, {} ok, {} failed or refused, {} no answer, {} not run",
        t.matched.len(),
        t.ok.len(),
        t.not_ok.len(),
        t.no_answer.len(),
        skipped
    )?;
    if t.matched.is_empty() {
        writeln!(out, "no host matched")?;
    }
    if !t.not_ok.is_empty() {
        writeln!(out, "failed: {}", t.not_ok.join(" "))?;
    }
    if !t.no_answer.is_empty() {
        writeln!(out, "no answer: {}", t.no_answer.join(" "))?;
    }
    print_left_out(out, &t.left_out)
}
