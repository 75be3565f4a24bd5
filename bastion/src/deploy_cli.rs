//! `troupe deploy RELEASE.toml`: a rolling release from the bastion.
//!
//! The matching hosts are discovered first (a signed `ping` submitted as a
//! dry run: nothing is relayed), then planned with
//! [`crate::release`]: for each package in order, batch by batch,
//! each host goes through enter maintenance, drain (if `[lb]`), stop the
//! services, update to the version, verify the version, start the
//! services, check health (if the package or the release has a health
//! check), restore, leave maintenance. Every step is its own signed
//! command naming only that host, and each agent checks it like any other.
//! A health check is repeated (`retries`, `interval_secs`), each attempt
//! its own signed command (`health.http`, `health.tcp` or a module
//! action), until it passes or the attempts run out.
//! A host that fails a step stops there, left as the steps it completed
//! made it (in maintenance, drained, services stopped: whatever is true);
//! the release stops once more hosts failed than `--max-failures` allows
//! (0: the first failure). Any failed host, stopped or not, makes the
//! release exit 2, listing each failed host, its step, what it was left
//! with and the exact `troupe run` commands that undo it. The same file is run against the disaster-recovery environment
//! first and production second: `--environment dr`, then
//! `--environment production` (each agent declares its environment and
//! checks it again).
//!
//! Before anything runs, the plan (title, packages in order with their
//! versions, the hosts of each batch) is printed and `yes` must be typed
//! on the terminal (`--yes` for CI; no terminal and no `--yes`: refused).
//! Each release gets an id ([`crate::deploy_record`]); its records (the
//! plan, every step on every host with its result and timing, failures,
//! the end) are signed and sent to the master, which keeps the log
//! (`troupe deploy log ID` on the master) and raises events from it.

use crate::deploy_record::{DeployRecord, now_rfc3339};
use crate::release::{self, HostOutcome, Next, PlanOptions, Release, Step};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use troupe_command::{Signer, TargetFilter};

/// Options of `troupe deploy`.
#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    /// The release manifest (title, ordered packages and versions; see the
    /// example below). Checked before anything is signed or sent: unknown
    /// keys, bad names and versions are refused.
    pub release: PathBuf,
    #[command(flatten)]
    pub fleet: crate::run_cli::FleetArgs,
    /// Hosts updated at the same time (at least 1).
    #[arg(long, default_value_t = 1, value_parser = parse_batch)]
    pub batch: usize,
    /// Pause between batches, e.g. `60s`.
    #[arg(long, default_value = "0s")]
    pub batch_sleep: humantime::Duration,
    /// Failed hosts tolerated before the release stops (0: the first
    /// failure stops it).
    #[arg(long, default_value_t = 0)]
    pub max_failures: usize,
    /// How long to wait for each step's answer (1s to 10m, the longest the
    /// master waits).
    #[arg(long, default_value = "10m", value_parser = crate::run_cli::parse_wait)]
    pub step_timeout: humantime::Duration,
    /// Show the plan; run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Go ahead without asking (CI, scripts). Without it, the plan is
    /// shown and `yes` must be typed on the terminal; with no terminal,
    /// the deploy is refused.
    #[arg(long)]
    pub yes: bool,
    /// Print events as they happen, one JSON object a line (NDJSON):
    /// `{"event":"matched"|"plan"|"batch"|"step_failed"|"host_ok"|"done",...}`
    /// (fields in docs/json.md).
    #[arg(long)]
    pub json: bool,
    /// The bastion's configuration file: its `[events]` table (the syntax
    /// of master.toml's) sends this release's events to webhooks, email
    /// (the full log at the end) and exec hooks from the bastion. Default
    /// /etc/troupe/bastion.toml when it exists.
    #[arg(long, env = "TROUPE_BASTION_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Writes one NDJSON event line and flushes it (a consumer sees it now).
fn event(out: &mut dyn Write, v: serde_json::Value) -> Result<()> {
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// What a host that stopped at step `failed` of `steps` is left with, and
/// the `troupe run` commands that undo it (in the order to run them).
/// Only steps that completed count: a host that failed entering maintenance
/// is not in maintenance.
pub fn left_behind(steps: &[Step], failed: usize) -> (Vec<String>, Vec<(String, String)>) {
    let done = &steps[..failed.min(steps.len())];
    let mut state = Vec::new();
    let mut undo = Vec::new();
    let ran = |f: &dyn Fn(&Step) -> bool| done.iter().any(f);
    for s in done.iter().rev() {
        match s {
            Step::StopService { service }
                if !ran(&|x| matches!(x, Step::StartService { service: t } if t == service)) =>
            {
                state.push(format!("{service} stopped"));
                undo.push(("service.start".to_string(), format!("name={service}")));
            }
            Step::Drain { backend }
                if !ran(&|x| matches!(x, Step::Restore { backend: b } if b == backend)) =>
            {
                state.push(format!("drained from {backend}"));
                undo.push(("lb.restore".to_string(), format!("backend={backend}")));
            }
            Step::EnterMaintenance { .. } if !ran(&|x| matches!(x, Step::LeaveMaintenance)) => {
                state.push("in maintenance".to_string());
                undo.push(("maintenance.off".to_string(), String::new()));
            }
            _ => {}
        }
    }
    state.reverse();
    (state, undo)
}

/// The exact `troupe run` command for one undo step on `host`.
fn undo_command(fleet: &crate::run_cli::FleetArgs, host: &str, action: &str, arg: &str) -> String {
    let mut c = format!("troupe run {action}");
    if !arg.is_empty() {
        c.push(' ');
        c.push_str(arg);
    }
    c.push_str(&format!(
        " --name {host} --server {} --identity {}",
        fleet.server,
        fleet.identity.display()
    ));
    if let Some(k) = &fleet.signer.key {
        c.push_str(&format!(" --key {}", k.display()));
    } else if fleet.signer.ssh_agent {
        c.push_str(" --ssh-agent");
        if let Some(id) = &fleet.signer.key_id {
            c.push_str(&format!(" --key-id {id}"));
        }
    }
    c
}

/// `troupe deploy --help`'s closing text (the manifest, exit statuses).
pub const RELEASE_EXAMPLE: &str = "\
RELEASE.toml:
  title = \"nginx 1.24.0 with openssl 3.0.11\"
  [lb]                        # optional: drain/restore in HAProxy
  backend = \"be_web\"
  [health]                    # optional: after start, before restore
  http = \"http://127.0.0.1:80/healthz\"    # or tcp = 5432, or action = \"MODULE.ACTION\"
  expect_status = 200
  retries = 3                 # extra attempts, interval_secs apart
  [[package]]                 # in order
  name = \"openssl\"
  version = \"3.0.11-1~deb12u2\"
  services = [\"nginx\"]        # restarted around the update; default [name]
  [[package]]
  name = \"nginx\"
  version = \"1.24.0-1\"

Exit status:
  0   every host updated (--dry-run: the plan was shown)
  1   error: nothing was run (a bad manifest, key, identity or master)
  2   some host failed (the release stopped, or finished within
      --max-failures): each failed host is listed with its step, what it
      was left with, and the `troupe run` commands that undo it; or no
      host matched
  64  malformed command line

The plan is printed first and `yes` must be typed (--yes in CI; without a
terminal and without --yes the deploy is refused). Each release gets an id;
its full log is kept on the master: `troupe deploy log ID` there
(`troupe deploy log --list` for every release). Sinks in the [events] table
of /etc/troupe/bastion.toml (--config) get the release's events from the
bastion too: chat webhooks, email (the full log at the end), exec hooks.

Example:
  troupe deploy RELEASE.toml --environment dr --role web --batch 2 --dry-run \\
      --server https://master:8140 --identity /var/lib/troupe-agent --key ~/.troupe/alice.key";

fn parse_batch(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("at least 1 host per batch".into()),
        Err(e) => Err(e.to_string()),
    }
}

async fn run_step(
    channel: tonic::transport::Channel,
    wire: Vec<u8>,
    timeout: Duration,
    host: &str,
) -> Result<troupe_proto::v1::CommandResult, String> {
    let mut got = None;
    let r = crate::run_cli::submit(channel, wire, timeout, false, |r| got = Some(r.clone())).await;
    if let Err(e) = r {
        return Err(format!("{e:#}"));
    }
    match got {
        Some(r) if r.node == host => Ok(r),
        Some(r) => Err(format!("unexpected answer from {}", r.node)),
        None => Err("no answer".into()),
    }
}

/// Signs one step for exactly one host.
fn sign(
    signer: &mut dyn Signer,
    host: &str,
    action: &str,
    args: BTreeMap<String, troupe_command::ArgValue>,
    ttl: i64,
) -> Result<Vec<u8>> {
    let target = TargetFilter {
        name: Some(host.to_string()),
        ..Default::default()
    };
    crate::run_cli::sign(signer, action, &args, target, ttl)
}

/// Runs `troupe deploy`. Exit status 0 when every host was updated, 2 when
/// the release stopped on failures, 1 on errors.
pub fn run(args: DeployArgs) -> Result<u8> {
    let text = std::fs::read_to_string(&args.release)
        .with_context(|| format!("reading {}", args.release.display()))?;
    let rel = Release::from_toml(&text).with_context(|| format!("{}", args.release.display()))?;
    let target = args.fleet.target()?;
    use std::io::IsTerminal;
    if !args.dry_run && !args.yes && !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "not deploying without a confirmation: there is no terminal to ask on; give --yes \
             to deploy without asking (CI), or --dry-run to see the plan"
        );
    }
    let bastion_cfg = crate::deploy_events::BastionConfig::load(args.config.as_deref())?;
    let mut signer_box = args.fleet.signer.open()?;
    let signer: &mut dyn Signer = &mut *signer_box;
    let mut recorder_owned = crate::deploy_record::Recorder::new();
    let recorder = &mut recorder_owned;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let args = &args;
    let result = rt.block_on(async move {
        let channel = args.fleet.connect().await?;
        let progress = crate::progress::Progress::new(!args.json);
        progress.status("discovering the matching hosts".into());
        let mut out = crate::progress::Out::new(&progress);
        let probe = crate::run_cli::sign(&mut *signer, "ping", &BTreeMap::new(), target, 60)?;
        let (hosts, found) = crate::run_cli::submit(channel.clone(), probe, Duration::from_secs(30), true, |_| {}).await?;
        let json = args.json;
        if json {
            event(&mut out, serde_json::json!({
                "event": "matched", "release": rel.title,
                "environment": args.fleet.environment,
                "hosts": hosts, "not_connected": found.no_answer,
                "left_out": crate::run_cli::left_out_json(&crate::run_cli::left_out(&found)),
            }))?;
        } else {
            writeln!(out, "release: {}", rel.title)?;
            if let Some(e) = &args.fleet.environment {
                writeln!(out, "environment: {e}")?;
            }
            writeln!(out, "matched {} host(s): {}", hosts.len(), hosts.join(" "))?;
            if !found.no_answer.is_empty() {
                writeln!(
                    out,
                    "not connected now (their steps will get no answer): {}",
                    found.no_answer.join(" ")
                )?;
            }
            crate::run_cli::print_left_out(&mut out, &crate::run_cli::left_out(&found))?;
        }
        if hosts.is_empty() {
            if !json {
                writeln!(out, "no host matched: nothing to deploy")?;
            }
            progress.finish();
            return Ok(2);
        }
        let plan = release::plan(
            &rel,
            &hosts,
            PlanOptions {
                batch_size: args.batch,
                failure_threshold: args.max_failures,
            },
        )?;
        let planned: Vec<crate::deploy_record::PlannedPackage> = plan
            .phases
            .iter()
            .map(|p| crate::deploy_record::PlannedPackage {
                name: p.package.clone(),
                version: p.version.clone(),
                batches: p.batches.clone(),
            })
            .collect();
        if !json {
            print_plan(&mut out, &rel.title, &planned)?;
        }
        if args.dry_run && json {
            for (i, p) in plan.phases.iter().enumerate() {
                let steps = p
                    .batches
                    .first()
                    .and_then(|b| b.first())
                    .and_then(|h| plan.steps(i, h))
                    .map(|hs| hs.steps.iter().map(describe).collect::<Vec<_>>())
                    .unwrap_or_default();
                event(&mut out, serde_json::json!({
                    "event": "plan", "package": p.package, "version": p.version,
                    "batches": p.batches, "steps": steps,
                }))?;
            }
            progress.finish();
            return Ok(0);
        }
        if args.dry_run {
            for (i, p) in plan.phases.iter().enumerate() {
                writeln!(out, "package {} {}: {} batch(es)", p.package, p.version, p.batches.len())?;
                if let Some(first) = p.batches.first().and_then(|b| b.first())
                    && let Some(hs) = plan.steps(i, first)
                {
                    for s in &hs.steps {
                        writeln!(out, "  {}", describe(s))?;
                    }
                }
            }
            progress.finish();
            return Ok(0);
        }
        if json {
            for p in &planned {
                event(&mut out, serde_json::json!({
                    "event": "plan", "package": p.name, "version": p.version,
                    "batches": p.batches,
                }))?;
            }
        }
        if !args.yes {
            confirm(&progress, &rel.title, &planned)?;
        }
        recorder.connect(channel.clone());
        if let Some(cfg) = &bastion_cfg.events {
            let by = troupe_identity::Identity::load(&args.fleet.identity)
                .map(|i| i.name)
                .unwrap_or_else(|_| "bastion".to_string());
            recorder.local = crate::deploy_events::LocalEvents::start(cfg, &recorder.id, &by)?;
        }
        if json {
            event(&mut out, serde_json::json!({"event": "release", "id": recorder.id}))?;
        } else {
            writeln!(out, "release id: {} (its log: `troupe deploy log {}` on the master)", recorder.id, recorder.id)?;
        }
        recorder
            .send(&mut *signer, DeployRecord::Started {
                title: rel.title.clone(),
                environment: args.fleet.environment.clone(),
                packages: planned.clone(),
                not_connected: found.no_answer.clone(),
                time: now_rfc3339(),
            })
            .await;
        let mut current: Option<usize> = None;
        let (mut phase_ok, mut phase_failed) = (Vec::<String>::new(), Vec::<String>::new());
        let timeout = Duration::from(args.step_timeout);
        let ttl = troupe_command::envelope::MAX_TTL_SECS;
        let mut rollout = plan.rollout();
        let mut next = rollout.next_batch();
        loop {
            match next {
                Next::Done | Next::Stopped { .. } => {
                    progress.finish();
                    let stopped = matches!(next, Next::Stopped { .. });
                    let failures = rollout.failures();
                    if let Some(prev) = current.take() {
                        let p = &plan.phases[prev];
                        recorder.send(&mut *signer, DeployRecord::PackageDone {
                            package: p.package.clone(), version: p.version.clone(),
                            ok: std::mem::take(&mut phase_ok), failed: std::mem::take(&mut phase_failed),
                            time: now_rfc3339(),
                        }).await;
                    }
                    let end = if stopped {
                        DeployRecord::Aborted {
                            reason: format!(
                                "stopped: {} host(s) failed, more than --max-failures {} allows",
                                failures.len(), args.max_failures
                            ),
                            completed: rollout.completed(), failed_hosts: failures.len(), time: now_rfc3339(),
                        }
                    } else {
                        DeployRecord::Finished {
                            status: if failures.is_empty() { "complete" } else { "failed" }.into(),
                            completed: rollout.completed(), failed_hosts: failures.len(), time: now_rfc3339(),
                        }
                    };
                    recorder.send(&mut *signer, end).await;
                    let mut listed = Vec::new();
                    for f in &failures {
                        let steps = plan
                            .phases
                            .iter()
                            .position(|p| p.package == f.package)
                            .and_then(|i| plan.steps(i, &f.host))
                            .map(|hs| hs.steps)
                            .unwrap_or_default();
                        let at = f.step.as_ref().and_then(|st| steps.iter().position(|x| x == st));
                        let (left, undo) = match at {
                            Some(i) => left_behind(&steps, i),
                            None => (vec!["unknown (no answer)".to_string()], Vec::new()),
                        };
                        let undo: Vec<String> = undo
                            .iter()
                            .map(|(a, arg)| undo_command(&args.fleet, &f.host, a, arg))
                            .collect();
                        listed.push((f, left, undo));
                    }
                    if json {
                        let fs: Vec<serde_json::Value> = listed
                            .iter()
                            .map(|(f, left, undo)| serde_json::json!({
                                "host": f.host, "package": f.package,
                                "step": f.step.as_ref().map(describe), "error": f.error,
                                "left": left, "undo": undo,
                            }))
                            .collect();
                        event(&mut out, serde_json::json!({
                            "event": "done",
                            "status": if stopped { "stopped" } else if failures.is_empty() { "complete" } else { "failed" },
                            "completed": rollout.completed(),
                            "failed_hosts": failures.len(),
                            "failures": fs,
                        }))?;
                    } else if failures.is_empty() {
                        writeln!(out, "release complete: {} host-package update(s)", rollout.completed())?;
                    } else {
                        writeln!(
                            out,
                            "release {} after {} update(s); {} host(s) FAILED:",
                            if stopped { "STOPPED" } else { "FINISHED WITH FAILURES" },
                            rollout.completed(),
                            failures.len()
                        )?;
                        for (f, left, undo) in &listed {
                            let step = f.step.as_ref().map(describe).unwrap_or_else(|| "-".into());
                            let state = if left.is_empty() {
                                "nothing to undo on it".to_string()
                            } else {
                                format!("left {}", left.join(", "))
                            };
                            writeln!(
                                out,
                                "  {} ({}): failed at step {step}: {} — {state}",
                                f.host, f.package, f.error
                            )?;
                            for u in undo {
                                writeln!(out, "      undo: {u}")?;
                            }
                        }
                    }
                    return Ok(if failures.is_empty() { 0 } else { 2 });
                }
                Next::Batch { phase, hosts } => {
                    let pkg = &plan.phases[phase];
                    if current != Some(phase) {
                        if let Some(prev) = current {
                            let p = &plan.phases[prev];
                            recorder.send(&mut *signer, DeployRecord::PackageDone {
                                package: p.package.clone(), version: p.version.clone(),
                                ok: std::mem::take(&mut phase_ok), failed: std::mem::take(&mut phase_failed),
                                time: now_rfc3339(),
                            }).await;
                        }
                        current = Some(phase);
                        recorder.send(&mut *signer, DeployRecord::PackageStarted {
                            package: pkg.package.clone(), version: pkg.version.clone(),
                            hosts: pkg.batches.iter().map(Vec::len).sum(), time: now_rfc3339(),
                        }).await;
                    }
                    let names: Vec<&str> = hosts.iter().map(|h| h.host.as_str()).collect();
                    if json {
                        event(&mut out, serde_json::json!({
                            "event": "batch", "package": pkg.package,
                            "version": pkg.version, "hosts": names,
                        }))?;
                    } else {
                        writeln!(out, "{} {}: {}", pkg.package, pkg.version, names.join(" "))?;
                    }
                    // Hosts of a batch move in lockstep: each step is signed
                    // just before it runs (short command lifetimes), sent to
                    // every host still going, and a host that fails stops.
                    let mut outcomes: BTreeMap<String, HostOutcome> = BTreeMap::new();
                    let nsteps = hosts.iter().map(|h| h.steps.len()).max().unwrap_or(0);
                    for i in 0..nsteps {
                        // The hosts still going, with their step i.
                        let mut going: Vec<(String, Step)> = Vec::new();
                        for hs in &hosts {
                            if outcomes.contains_key(&hs.host) {
                                continue;
                            }
                            if let Some(step) = hs.steps.get(i) {
                                going.push((hs.host.clone(), step.clone()));
                            }
                        }
                        let Some(first) = going.first().map(|(_, s)| s.clone()) else { continue };
                        progress.status(format!(
                            "{} {}: step {}/{nsteps} {} on {} host(s)",
                            pkg.package,
                            pkg.version,
                            i + 1,
                            describe(&first),
                            going.len()
                        ));
                        // A health check is tried `1 + retries` times.
                        let (attempts, pause, step_timeout) = match &first {
                            Step::CheckHealth { check } => (
                                check.attempts(),
                                Duration::from_secs(u64::from(check.interval_secs)),
                                timeout.min(Duration::from_secs(u64::from(check.timeout_secs) + 15)),
                            ),
                            _ => (1, Duration::ZERO, timeout),
                        };
                        for attempt in 1..=attempts {
                            let mut set = tokio::task::JoinSet::new();
                            for (host, step) in &going {
                                let Some((action, a)) = step.action() else {
                                    outcomes.insert(host.clone(), HostOutcome::Failed { step: i, error: "step has no action".into() });
                                    continue;
                                };
                                let wire = sign(&mut *signer, host, &action, a, ttl)?;
                                let ch = channel.clone();
                                let (host, step) = (host.clone(), step.clone());
                                set.spawn(async move {
                                    let started = now_rfc3339();
                                    let t0 = std::time::Instant::now();
                                    let r = run_step(ch, wire, step_timeout, &host).await;
                                    (host, step, r, started, t0.elapsed())
                                });
                            }
                            let mut again = Vec::new();
                            while let Some(j) = set.join_next().await {
                                let (host, step, r, started, took) = j?;
                                let code = match &r {
                                    Err(_) => "error".to_string(),
                                    Ok(x) => x.status.clone(),
                                };
                                let error = match r {
                                    Err(e) => Some(e),
                                    Ok(r) if r.status != "ok" => Some(format!("{}: {}", r.status, r.message)),
                                    Ok(r) => match &step {
                                        Step::VerifyVersion { version, .. } => {
                                            let v: serde_json::Value = serde_json::from_slice(&r.data_json).unwrap_or_default();
                                            let have = v["version"].as_str().unwrap_or("");
                                            (have != version).then(|| format!("version is {have:?}, expected {version:?}"))
                                        }
                                        _ => None,
                                    },
                                };
                                recorder.send(&mut *signer, DeployRecord::Step {
                                    host: host.clone(), package: pkg.package.clone(), step: describe(&step),
                                    attempt,
                                    result: match (&error, code.as_str()) {
                                        (None, _) => "ok".into(),
                                        (Some(_), "ok") => "failed".into(),
                                        (Some(_), c) => c.to_string(),
                                    },
                                    message: error.clone().unwrap_or_default(),
                                    started, duration_ms: took.as_millis() as u64,
                                }).await;
                                let Some(error) = error else { continue };
                                if json {
                                    event(&mut out, serde_json::json!({
                                        "event": "step_failed", "host": host,
                                        "step": describe(&step), "attempt": attempt,
                                        "attempts": attempts, "error": error,
                                        "final": attempt >= attempts,
                                    }))?;
                                }
                                if attempt < attempts {
                                    if !json {
                                        writeln!(
                                            out,
                                            "  {host}: {} attempt {attempt}/{attempts} failed: {error}; again in {} s",
                                            describe(&step),
                                            pause.as_secs()
                                        )?;
                                    }
                                    again.push((host, step));
                                } else {
                                    let error = if attempts > 1 {
                                        format!("{attempts} attempts failed, the last: {error}")
                                    } else {
                                        error
                                    };
                                    if !json {
                                        writeln!(out, "  {host}: FAILED at {}: {error}", describe(&step))?;
                                    }
                                    let (left, undo) = hosts
                                        .iter()
                                        .find(|h| h.host == host)
                                        .map(|h| left_behind(&h.steps, i))
                                        .unwrap_or_default();
                                    recorder.send(&mut *signer, DeployRecord::HostFailed {
                                        host: host.clone(), package: pkg.package.clone(), step: describe(&step),
                                        error: error.clone(), left,
                                        undo: undo.iter().map(|(a, arg)| undo_command(&args.fleet, &host, a, arg)).collect(),
                                        time: now_rfc3339(),
                                    }).await;
                                    phase_failed.push(host.clone());
                                    outcomes.insert(host, HostOutcome::Failed { step: i, error });
                                }
                            }
                            if again.is_empty() {
                                break;
                            }
                            again.sort_by(|a, b| a.0.cmp(&b.0));
                            going = again;
                            tokio::time::sleep(pause).await;
                        }
                    }
                    for hs in &hosts {
                        if !outcomes.contains_key(&hs.host) {
                            if json {
                                event(&mut out, serde_json::json!({
                                    "event": "host_ok", "host": hs.host, "package": pkg.package,
                                }))?;
                            } else {
                                writeln!(out, "  {}: ok", hs.host)?;
                            }
                            recorder.send(&mut *signer, DeployRecord::HostDone {
                                host: hs.host.clone(), package: pkg.package.clone(), time: now_rfc3339(),
                            }).await;
                            phase_ok.push(hs.host.clone());
                            outcomes.insert(hs.host.clone(), HostOutcome::Ok);
                        }
                    }
                    next = rollout.record(&outcomes);
                    if matches!(next, Next::Batch { .. }) && !args.batch_sleep.is_zero() {
                        tokio::time::sleep(args.batch_sleep.into()).await;
                    }
                }
            }
        }
    });
    // An error after the release started (the master gone, a signing
    // failure): its log ends with `aborted`.
    if let Err(e) = &result
        && recorder_owned.open()
    {
        let reason = format!("error: {}", troupe_base::cli::one_line(e));
        rt.block_on(recorder_owned.send(
            &mut *signer_box,
            DeployRecord::Aborted {
                reason,
                completed: 0,
                failed_hosts: 0,
                time: now_rfc3339(),
            },
        ));
    }
    if let Some(local) = recorder_owned.local.take() {
        for w in rt.block_on(local.finish(crate::deploy_events::FINISH_WAIT)) {
            eprintln!("troupe: warning: {w}; the release's result stands");
        }
    }
    result
}

/// The plan: title, packages in order with their versions, the hosts of
/// each batch.
fn print_plan(
    out: &mut dyn Write,
    title: &str,
    packages: &[crate::deploy_record::PlannedPackage],
) -> Result<()> {
    writeln!(out, "plan for release {title:?}:")?;
    for (i, p) in packages.iter().enumerate() {
        writeln!(out, "  {}. {} {}", i + 1, p.name, p.version)?;
        for (b, hosts) in p.batches.iter().enumerate() {
            writeln!(out, "       batch {}: {}", b + 1, hosts.join(" "))?;
        }
    }
    Ok(())
}

/// Asks for `yes` on the terminal; anything else stops the release before
/// anything is sent.
fn confirm(
    progress: &crate::progress::Progress,
    title: &str,
    packages: &[crate::deploy_record::PlannedPackage],
) -> Result<()> {
    let mut hosts: Vec<&String> = packages
        .iter()
        .flat_map(|p| p.batches.iter().flatten())
        .collect();
    hosts.sort();
    hosts.dedup();
    let answer = progress.suspend(|| -> std::io::Result<String> {
        let mut err = std::io::stderr();
        write!(
            err,
            "Deploy {title:?}: {} package(s) to {} host(s)? Type yes to go on: ",
            packages.len(),
            hosts.len()
        )?;
        err.flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line)
    })?;
    if answer.trim() != "yes" {
        anyhow::bail!(
            "not confirmed (the answer was {:?}, not yes): nothing was run",
            answer.trim()
        );
    }
    Ok(())
}

fn describe(s: &Step) -> String {
    match s {
        Step::EnterMaintenance { .. } => "enter maintenance".into(),
        Step::Drain { backend } => format!("drain from {backend}"),
        Step::StopService { service } => format!("stop {service}"),
        Step::UpdatePackage { package, version } => format!("update {package} to {version}"),
        Step::VerifyVersion { package, version } => format!("verify {package} is {version}"),
        Step::StartService { service } => format!("start {service}"),
        Step::CheckHealth { check } => format!("check health ({})", check.describe()),
        Step::Restore { backend } => format!("restore in {backend}"),
        Step::LeaveMaintenance => "leave maintenance".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps() -> Vec<Step> {
        vec![
            Step::EnterMaintenance {
                message: "m".into(),
            },
            Step::Drain {
                backend: "be_web".into(),
            },
            Step::StopService {
                service: "nginx".into(),
            },
            Step::UpdatePackage {
                package: "nginx".into(),
                version: "1".into(),
            },
            Step::StartService {
                service: "nginx".into(),
            },
            Step::Restore {
                backend: "be_web".into(),
            },
            Step::LeaveMaintenance,
        ]
    }

    /// Issue 16 item 2: "drained and in maintenance" only when true.
    #[test]
    fn left_behind_says_only_what_is_true() {
        let s = steps();
        // Failed entering maintenance: nothing to undo.
        assert_eq!(left_behind(&s, 0), (vec![], vec![]));
        // Failed at the drain: in maintenance only.
        let (left, undo) = left_behind(&s, 1);
        assert_eq!(left, ["in maintenance"]);
        assert_eq!(undo, [("maintenance.off".to_string(), String::new())]);
        // Failed at the update: stopped, drained, in maintenance; undone in
        // reverse order.
        let (left, undo) = left_behind(&s, 3);
        assert_eq!(
            left,
            ["in maintenance", "drained from be_web", "nginx stopped"]
        );
        let actions: Vec<&str> = undo.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(actions, ["service.start", "lb.restore", "maintenance.off"]);
        // Failed leaving maintenance: restored and started already.
        let (left, _) = left_behind(&s, 6);
        assert_eq!(left, ["in maintenance"]);
    }
}
