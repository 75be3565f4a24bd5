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
//! A host that fails a step stops there, so it stays drained and in
//! maintenance; the release stops once more hosts failed than
//! `--max-failures` allows (0: the first failure), with a descriptive
//! error. The same file is run against the disaster-recovery environment
//! first and production second: `--environment dr`, then
//! `--environment production` (each agent declares its environment and
//! checks it again).

use crate::release::{self, HostOutcome, Next, PlanOptions, Release, Step};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use troupe_command::{Signer, TargetFilter};

/// Options of `troupe deploy`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = RELEASE_EXAMPLE)]
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
}

const RELEASE_EXAMPLE: &str = "\
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
  2   the release stopped on failures (failed hosts stay drained and in
      maintenance), or no host matched
  64  malformed command line

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
    let mut signer = args.fleet.signer.open()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let channel = args.fleet.connect().await?;
        let mut out = std::io::stdout();
        let probe = crate::run_cli::sign(&mut *signer, "ping", &BTreeMap::new(), target, 60)?;
        let (hosts, _) = crate::run_cli::submit(channel.clone(), probe, Duration::from_secs(30), true, |_| {}).await?;
        writeln!(out, "release: {}", rel.title)?;
        if let Some(e) = &args.fleet.environment {
            writeln!(out, "environment: {e}")?;
        }
        writeln!(out, "matched {} host(s): {}", hosts.len(), hosts.join(" "))?;
        if hosts.is_empty() {
            writeln!(out, "no connected host matched: nothing to deploy")?;
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
            return Ok(0);
        }
        let timeout = Duration::from(args.step_timeout);
        let ttl = troupe_command::envelope::MAX_TTL_SECS;
        let mut rollout = plan.rollout();
        let mut next = rollout.next_batch();
        loop {
            match next {
                Next::Done => {
                    writeln!(out, "release complete: {} host-package update(s)", rollout.completed())?;
                    return Ok(0);
                }
                Next::Stopped { failures } => {
                    writeln!(out, "release STOPPED after {} update(s):", rollout.completed())?;
                    for f in &failures {
                        let step = f.step.as_ref().map(describe).unwrap_or_else(|| "-".into());
                        writeln!(
                            out,
                            "  {} ({}): failed at step {step}: {} — left as it is (drained and in maintenance)",
                            f.host, f.package, f.error
                        )?;
                    }
                    return Ok(2);
                }
                Next::Batch { phase, hosts } => {
                    let pkg = &plan.phases[phase];
                    writeln!(
                        out,
                        "{} {}: {}",
                        pkg.package,
                        pkg.version,
                        hosts.iter().map(|h| h.host.as_str()).collect::<Vec<_>>().join(" ")
                    )?;
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
                                    let r = run_step(ch, wire, step_timeout, &host).await;
                                    (host, step, r)
                                });
                            }
                            let mut again = Vec::new();
                            while let Some(j) = set.join_next().await {
                                let (host, step, r) = j?;
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
                                let Some(error) = error else { continue };
                                if attempt < attempts {
                                    writeln!(
                                        out,
                                        "  {host}: {} attempt {attempt}/{attempts} failed: {error}; again in {} s",
                                        describe(&step),
                                        pause.as_secs()
                                    )?;
                                    again.push((host, step));
                                } else {
                                    let error = if attempts > 1 {
                                        format!("{attempts} attempts failed, the last: {error}")
                                    } else {
                                        error
                                    };
                                    writeln!(out, "  {host}: FAILED at {}: {error}", describe(&step))?;
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
                            writeln!(out, "  {}: ok", hs.host)?;
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
    })
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
