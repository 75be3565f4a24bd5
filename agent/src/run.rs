//! `troupe-agent run`, `disable`, `enable`, `rollback`.
//!
//! One run: take the lock, gather facts, get the catalog (source, else the
//! cached last good one), converge, optionally roll back on failure, store
//! the report (redb, bounded), write `last_run_summary.json`, deliver or
//! queue the report. Exit codes follow `puppet agent --detailed-exitcodes`:
//! 0 nothing changed, 2 changes, 4 failures, 6 both; 1 when no run happened.

use crate::engine;
use crate::facts;
use crate::providers::{self, Ctx};
use crate::source::{CatalogContents, CatalogSource, Fetched, FileSource, ReportSink};
use crate::state::{self, State};
use anyhow::Context;
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use troupe_catalog::LazyCatalog;
use troupe_catalog::report::{Report, Status};

/// How the run is shown on stdout.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Changed, failed and skipped resources (with diffs) and a summary line.
    Changes,
    /// Only the summary line.
    Summary,
    /// The whole report as JSON.
    Json,
    /// Nothing.
    Quiet,
}

/// Options of `troupe-agent run`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Converge once and exit (otherwise run as a daemon every --interval).
    #[arg(long)]
    pub once: bool,
    /// Change nothing; show what would change (with unified diffs).
    #[arg(long)]
    pub noop: bool,
    /// Converge the catalog inside this directory instead of `/` (files,
    /// directories, links, users and groups via ROOT/etc/passwd, packages via
    /// dpkg/rpm --root, chosen by ROOT/etc/os-release; execs run chrooted;
    /// services are not managed there: reported as
    /// `not managed under --root`, neither checked nor changed). A relative
    /// path is taken from the current directory.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// State directory: catalog cache, reports, rollback bucket, lock.
    #[arg(long, default_value = state::DEFAULT_STATE_DIR)]
    pub state: PathBuf,
    /// Catalog JSON file to converge. Without it (and until a master is
    /// configured) the cached last good catalog is used.
    #[arg(long, conflicts_with = "server")]
    pub catalog: Option<PathBuf>,
    /// The master, e.g. https://puppet.example.com:8140: fetch the catalog
    /// from it over mutual TLS (identity from `troupe-agent bootstrap`) and
    /// send it the report. When it cannot be reached the cached catalog is
    /// converged and the report is queued until it can.
    #[arg(long, env = "TROUPE_SERVER")]
    pub server: Option<String>,
    /// With --server: ask for a catalog compiled in this environment instead
    /// of the one the site classifies this node in. The master refuses unless
    /// started with --allow-agent-environment; such a run never falls back to
    /// the cached catalog.
    #[arg(long, requires = "server", value_name = "ENV")]
    pub environment: Option<String>,
    /// Daemon with --server: do not keep the command stream open (by
    /// default the daemon also runs `troupe-agent listen` on a thread, with
    /// STATE/orchestration.toml; without that file every command is refused).
    #[arg(long)]
    pub no_listen: bool,
    /// Daemon with --server: the command listener's trust and policy file
    /// (default: STATE/orchestration.toml; the packaged agent.toml says
    /// /etc/troupe/orchestration.toml).
    #[arg(long, value_name = "FILE")]
    pub orchestration: Option<PathBuf>,
    /// More masters to try, in order, when --server fails (agent.toml's
    /// `server` list).
    #[arg(skip)]
    pub more_servers: Vec<String>,
    /// Directory of external facts.
    #[arg(long, default_value = facts::DEFAULT_FACTS_DIR)]
    pub facts_dir: PathBuf,
    /// Daemon: seconds between runs.
    #[arg(long, default_value_t = 1800)]
    pub interval: u64,
    /// Daemon: random extra delay (0..=SPLAY seconds) before each run.
    #[arg(long, default_value_t = 0)]
    pub splay: u64,
    /// Set when this start just joined the master: the first run goes at
    /// once (a new host converges when started, not up to SPLAY seconds
    /// later); the splay spreads the later runs.
    #[arg(skip)]
    pub just_joined: bool,
    /// Restore every file this run changed when any resource fails.
    #[arg(long)]
    pub rollback_on_failure: bool,
    /// Reports (and rollback journals) kept in the state directory.
    #[arg(long, default_value_t = 100)]
    pub keep_reports: usize,
    /// Local package files (NAME_VERSION_ARCH.deb / NAME-VERSION.ARCH.rpm) to
    /// install from; the only way to install a .deb under --root.
    #[arg(long)]
    pub package_dir: Option<PathBuf>,
    /// What to print on stdout.
    #[arg(long, value_enum, default_value = "changes")]
    pub output: Output,
    /// Where new files' temp files are created before their rename into
    /// place: in STATE/stage (a directory the kernel may place in another
    /// block group; `auto`: only on ext4 without a journal, where it
    /// saves a scan of recently freed inodes per file) or next to the
    /// target (`never`). A file keeps whatever its directory gives it
    /// (ACL, label, setgid group, inode flags) either way.
    #[arg(long, value_enum, default_value = "auto")]
    pub stage_writes: providers::stage::StageWrites,
    /// Converge only the resources carrying one of these tags (comma
    /// separated): a role, a profile, a defined type (`nginx::vhost`) or a
    /// tag the modules set. As in Puppet, what they depend on is not
    /// applied unless it is tagged too. The report lists only them.
    #[arg(long, value_delimiter = ',', value_name = "TAG,...", value_parser = parse_tag)]
    pub tags: Vec<String>,
}

/// A tag as the module language writes them: lowercase letters, digits,
/// `_ . : -`.
fn parse_tag(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && !s.starts_with(['.', ':', '-'])
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.:-".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a tag: tags are lowercase letters, digits, `_`, `.`, `:` and `-` \
             (e.g. --tags nginx,tls)"
        ))
    }
}

/// A source used when none is configured: always fails, so the run falls
/// back to the cached catalog.
struct NoSource;

impl CatalogSource for NoSource {
    fn describe(&self) -> String {
        "none".into()
    }
    fn fetch(&mut self, _: &serde_json::Value, _: Option<&str>) -> anyhow::Result<Fetched> {
        anyhow::bail!("no catalog source configured (give --catalog FILE)")
    }
}

/// With --server: refuses at once (no retries, nothing created) when the
/// state directory holds no identity to talk to the master with.
fn require_identity(state_dir: &Path, server: &str) -> anyhow::Result<()> {
    use troupe_identity::{CERT_FILE, Identity, KEY_FILE, KEY_NEXT};
    let has_key = state_dir.join(KEY_FILE).exists() || state_dir.join(KEY_NEXT).exists();
    if has_key && Identity::exists(state_dir) {
        // An expired certificate never works again: say so at once.
        if let Ok(id) = Identity::load(state_dir) {
            id.check_not_expired()?;
        }
        return Ok(());
    }
    if has_key {
        anyhow::bail!(
            "the bootstrap in {} has not finished ({KEY_FILE} but no {CERT_FILE}): run \
             `troupe-agent bootstrap` again to resume it, then run",
            state_dir.display()
        );
    }
    anyhow::bail!(
        "{} holds no identity for the master (no {KEY_FILE}): run `troupe-agent bootstrap \
         --server {server} --name HOST --ca-fingerprint FP --state {}` first",
        state_dir.display(),
        state_dir.display()
    )
}

/// Refuses a --state directory that does not exist, except the default
/// one (created on first use): a typo must not make a new state.
fn existing_state_dir(state_dir: &Path) -> anyhow::Result<()> {
    if state_dir == Path::new(state::DEFAULT_STATE_DIR) || state_dir.is_dir() {
        return Ok(());
    }
    anyhow::bail!(
        "--state {}: no such directory (the agent's state directory is {} unless another \
         was given to `troupe-agent bootstrap`/`run`)",
        state_dir.display(),
        state::DEFAULT_STATE_DIR
    )
}

pub fn run(args: Args) -> anyhow::Result<u8> {
    if let Some(server) = &args.server {
        require_identity(&args.state, server)?;
        troupe_pki::tls::install_crypto_provider();
        let retry = crate::master_client::Retry::default();
        let client = |url: &str| {
            crate::master_client::MasterClient::new(url, args.state.clone(), retry.clone())
        };
        // The report sink shares each master's connection with the catalog
        // source: one run is one connection to the master.
        let (mut source, mut sink): (Box<dyn CatalogSource>, Box<dyn ReportSink>) =
            if args.more_servers.is_empty() {
                let source = client(server)?.with_environment(args.environment.clone());
                let sink = source.sharing();
                (Box::new(source), Box::new(sink))
            } else {
                let all: Vec<&String> = std::iter::once(server).chain(&args.more_servers).collect();
                let mut sources = Vec::new();
                let mut sinks = Vec::new();
                for url in all {
                    let source = client(url)?.with_environment(args.environment.clone());
                    sinks.push(source.sharing());
                    sources.push(source);
                }
                (
                    Box::new(crate::server_list::ServerList(sources)),
                    Box::new(crate::server_list::ServerList(sinks)),
                )
            };
        if args.once {
            source.before_run();
            let r = run_once(&args, source.as_mut(), Some(sink.as_mut()))?;
            return Ok(r.exit_code() as u8);
        }
        let _listener = if args.no_listen {
            None
        } else {
            let listen = crate::orchestra::ListenArgs {
                server: server.clone(),
                state: args.state.clone(),
                orchestration: args.orchestration.clone(),
                facts_dir: args.facts_dir.clone(),
                backoff_max: std::time::Duration::from_secs(60).into(),
            };
            match crate::orchestra::spawn_listener(listen) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::error!("the command listener did not start (runs go on): {e:#}");
                    None
                }
            }
        };
        return daemon(&args, source.as_mut(), Some(sink.as_mut()));
    }
    let mut source: Box<dyn CatalogSource> = match &args.catalog {
        Some(p) => Box::new(FileSource {
            path: p.clone(),
            state: args.state.clone(),
        }),
        None => Box::new(NoSource),
    };
    if args.once {
        let r = run_once(&args, source.as_mut(), None)?;
        return Ok(r.exit_code() as u8);
    }
    daemon(&args, source.as_mut(), None)
}

fn daemon(
    args: &Args,
    source: &mut dyn CatalogSource,
    mut sink: Option<&mut dyn ReportSink>,
) -> anyhow::Result<u8> {
    tracing::info!(
        interval = args.interval,
        splay = args.splay,
        "agent daemon started ({})",
        source.describe()
    );
    let mut first = true;
    loop {
        if args.splay > 0 && !(first && args.just_joined) {
            std::thread::sleep(Duration::from_secs(fastrand::u64(0..=args.splay)));
        }
        // The sink first: a master client's sink shares the source's
        // connection, which the source's upkeep opens for the run.
        if let Some(s) = sink.as_mut() {
            s.new_run();
        }
        source.before_run();
        let this_run = sink.as_mut().map(|s| &mut **s as &mut dyn ReportSink);
        match run_once(args, source, this_run) {
            Ok(r) => {
                let (u, c, f, s) = r.counts();
                tracing::info!(
                    run = %r.run_id,
                    changed = c, failed = f, skipped = s, unchanged = u,
                    from_cache = r.from_cache,
                    "run finished"
                );
            }
            Err(e) => tracing::warn!("run did not happen: {e:#}"),
        }
        first = false;
        std::thread::sleep(Duration::from_secs(args.interval.max(1)));
    }
}

/// Gets the catalog: from the source, else from the cache; and whether it
/// came from the cache.
fn obtain_catalog(
    st: &State,
    source: &mut dyn CatalogSource,
    facts: &serde_json::Value,
) -> anyhow::Result<(LazyCatalog, bool)> {
    let cached_hash = st.cached_hash()?;
    let load_cached = || st.load_cached_catalog();
    match source.fetch(facts, cached_hash.as_deref()) {
        Ok(Fetched::Catalog(cat)) => {
            let cat = *cat;
            if cached_hash.as_deref() != Some(cat.hash()) {
                st.cache_catalog(&cat)?;
            }
            Ok((cat, false))
        }
        Ok(Fetched::Unchanged) => {
            let cat = load_cached()?
                .context("the source said the catalog is unchanged, but none is cached")?;
            if cached_hash.as_deref() == Some(cat.hash()) {
                return Ok((cat, false));
            }
            // catalog.json was replaced but its hash not recorded (a crash
            // in between): ask for the catalog whole.
            drop(cat);
            match source.fetch(facts, None)? {
                Fetched::Catalog(cat) => {
                    st.cache_catalog(&cat)?;
                    Ok((*cat, false))
                }
                Fetched::Unchanged => anyhow::bail!(
                    "the source said the catalog is unchanged, but the cached one is not the \
                     one it means"
                ),
            }
        }
        Err(e) if !source.cache_fallback() => Err(e.context(format!(
            "no catalog from {} (this run does not fall back to the cached catalog)",
            source.describe()
        ))),
        Err(e) => {
            // What to check when the master could not be reached at all.
            let why = troupe_base::cli::one_line(&e);
            let hint = troupe_identity::connect_hint(&e)
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            tracing::warn!(
                "catalog source {} failed: {why}{hint}; using the cached catalog",
                source.describe()
            );
            match load_cached()? {
                Some(c) => Ok((c, true)),
                None => Err(anyhow::anyhow!(
                    "no catalog: the source failed and there is no cached catalog: {why}{hint}"
                )),
            }
        }
    }
}

/// One complete run. Errors mean no run happened (disabled, locked, no
/// catalog, bad root); resource failures are in the report.
pub fn run_once(
    args: &Args,
    source: &mut dyn CatalogSource,
    sink: Option<&mut dyn ReportSink>,
) -> anyhow::Result<Report> {
    let t0 = Instant::now();
    let started = state::now_rfc3339();
    state::create_private_dir(&args.state)?;
    if let Some(d) = state::disabled(&args.state) {
        source.checkin_disabled(&d.reason, &d.since);
        anyhow::bail!(
            "runs are disabled since {}: {} (troupe-agent enable --state {})",
            d.since,
            d.reason,
            args.state.display()
        );
    }
    let lock = state::RunLock::acquire(&args.state)?;
    let st = State::open(&args.state)?;
    if lock.previous_crashed {
        // Old contents saved by a killed run were never journaled.
        match st.sweep_bucket() {
            Ok(n) if n > 0 => tracing::info!(
                "the previous run was killed; {n} unreferenced bucket file(s) removed"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!("cannot sweep the file bucket: {e:#}"),
        }
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "state opened");
    // A relative --root is taken from the current directory, as --state is.
    let root = std::path::absolute(&args.root)
        .with_context(|| format!("--root {}", args.root.display()))?;
    anyhow::ensure!(
        root.is_dir(),
        "--root {} is not an existing directory (create it first: mkdir -p {})",
        root.display(),
        root.display()
    );
    let facts = facts::gather(&args.facts_dir, Duration::from_secs(10));
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "facts gathered");
    let (catalog, from_cache) = obtain_catalog(&st, source, &facts)?;
    let catalog_hash = catalog.hash().to_owned();
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "catalog ready");
    // Under --root the target is the root: its os-release chooses the
    // package tools (a Rocky image converged from a Debian host uses rpm).
    let os_family = root_os_family(&root)
        .unwrap_or_else(|| facts["os"]["family"].as_str().unwrap_or("").to_owned());
    let contents = CatalogContents(&catalog);
    let bucket = st.bucket();
    let mut ctx = Ctx::new(
        &root,
        args.noop,
        &os_family,
        &contents,
        (!args.noop).then_some(&bucket),
    );
    ctx.package_dir = args.package_dir.clone();
    // The run's id names its files; its journal is streamed to one as it
    // grows (a killed run's is never named, and swept by the next save).
    let run_id = state::new_run_id();
    let base = st.new_run_base(&run_id)?;
    if !args.noop {
        ctx.journal = providers::Journal::to_file(st.journal_path(&base))?;
        ctx.stage = providers::stage::Stage::open(&args.state, &run_id, args.stage_writes);
    }
    if !args.tags.is_empty()
        && !catalog
            .resources()
            .any(|r| engine::selected(&r, &args.tags))
    {
        let mut known: Vec<String> = catalog.resources().flat_map(|r| r.tags.to_vec()).collect();
        known.sort_unstable();
        known.dedup();
        tracing::warn!(
            "--tags {}: no resource of the catalog carries any of them, so nothing is converged (tags in it: {})",
            args.tags.join(","),
            known.join(", ")
        );
    }
    let mut resources = engine::converge_tagged(&catalog, &mut ctx, &args.tags);
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "converged");
    // The catalog and its bodies are not needed any more: free them before
    // the report is stored.
    let journal = std::mem::replace(&mut ctx.journal, providers::Journal::memory()).finish()?;
    drop(ctx);
    let (node, environment, code_version) = (
        catalog.node.clone(),
        catalog.environment.clone(),
        catalog.code_version.clone(),
    );
    drop(catalog);
    let failed = resources
        .iter()
        .any(|r| matches!(r.status, Status::Failed | Status::Skipped));
    if failed && args.rollback_on_failure && !args.noop {
        let changes = match &journal {
            providers::JournalDone::File(Some(name)) => st.journal_file_changes(name)?,
            providers::JournalDone::File(None) => Vec::new(),
            providers::JournalDone::Memory(c) => c.clone(),
        };
        if !changes.is_empty() {
            let restored = rollback_changes(&changes, &bucket);
            for r in resources.iter_mut().filter(|r| r.status == Status::Changed) {
                r.events
                    .push("rolled back: this run failed, its file changes were undone".into());
            }
            for line in restored {
                tracing::warn!("rollback: {line}");
            }
        }
    }
    let report = Report {
        run_id,
        node,
        started,
        duration_ms: t0.elapsed().as_millis() as u64,
        noop: args.noop,
        catalog_hash,
        environment,
        code_version,
        from_cache,
        tags: args.tags.clone(),
        resources,
    };
    let queue = sink.is_some();
    let journal = match &journal {
        providers::JournalDone::File(name) => state::Journal::File(name.as_deref()),
        providers::JournalDone::Memory(c) => state::Journal::Changes(c),
    };
    st.store_run(&report, &base, journal, queue, args.keep_reports)?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "report stored");
    if let Some(sink) = sink {
        deliver(&st, sink, &report);
    }
    write_summary(&args.state, &report, &source.describe())?;
    print_report(&report, args.output);
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "done");
    Ok(report)
}

/// Sends queued reports, oldest first, stopping at the first failure.
/// `current` is this run's report, already in memory: it is not read back.
fn deliver(st: &State, sink: &mut dyn ReportSink, current: &Report) {
    let Ok(ids) = st.unsent() else { return };
    for id in ids {
        let stored;
        let r = if id == current.run_id {
            current
        } else {
            let Ok(Some(r)) = st.report(&id) else {
                let _ = st.mark_sent(&id);
                continue;
            };
            stored = r;
            &stored
        };
        match sink.send(r) {
            Ok(()) => {
                let _ = st.mark_sent(&id);
            }
            Err(e) => {
                tracing::warn!(
                    "report {id} not delivered to {}: {e:#}; kept queued",
                    sink.describe()
                );
                return;
            }
        }
    }
}

fn write_summary(state_dir: &Path, r: &Report, source: &str) -> anyhow::Result<()> {
    let (u, c, f, s) = r.counts();
    let v = json!({
        "version": 1,
        "run_id": r.run_id,
        "node": r.node,
        "started": r.started,
        "duration_ms": r.duration_ms,
        "noop": r.noop,
        "catalog_hash": r.catalog_hash,
        "catalog_source": source,
        "from_cache": r.from_cache,
        "exit_code": r.exit_code(),
        "resources": { "total": r.resources.len(), "unchanged": u, "changed": c, "failed": f, "skipped": s, "noop": r.noop_pending() },
        "tags": r.tags,
    });
    let mut b = serde_json::to_vec_pretty(&v)?;
    b.push(b'\n');
    state::write_replace(&state_dir.join("last_run_summary.json"), &b, 0o644)
}

fn print_report(r: &Report, output: Output) {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Quiet => return,
        Output::Json => {
            let _ = serde_json::to_writer_pretty(&mut out, r);
            let _ = writeln!(out);
            return;
        }
        Output::Changes => {
            let verb = if r.noop { "would change" } else { "changed" };
            for res in &r.resources {
                let tag = match res.status {
                    // Unchanged resources with a note (a service under
                    // --root: not managed) still show it.
                    Status::Unchanged if !res.events.is_empty() => "note",
                    Status::Unchanged => continue,
                    Status::Changed => verb,
                    Status::Failed => "FAILED",
                    Status::Skipped => "skipped",
                    Status::Noop => "would change (noop)",
                };
                for e in &res.events {
                    let _ = writeln!(out, "{tag} {}: {e}", res.id);
                }
                if let Some(d) = &res.diff {
                    let _ = write!(out, "{d}");
                }
            }
        }
        Output::Summary => {}
    }
    let (u, c, f, s) = r.counts();
    let pending = match r.noop_pending() {
        0 => String::new(),
        n => format!(", {n} would change (noop)"),
    };
    let tags = if r.tags.is_empty() {
        String::new()
    } else {
        format!(" (--tags {})", r.tags.join(","))
    };
    let _ = writeln!(
        out,
        "run {}{}{tags}: {} resources, {c} {}{pending}, {f} failed, {s} skipped, {u} unchanged in {} ms (catalog {}{}) exit {}",
        r.run_id,
        if r.noop { " (noop)" } else { "" },
        r.resources.len(),
        if r.noop { "would change" } else { "changed" },
        r.duration_ms,
        &r.catalog_hash,
        if r.from_cache { ", from cache" } else { "" },
        r.exit_code()
    );
}

/// Undoes a journal, newest change first. Returns one line per object.
pub fn rollback_changes(changes: &[state::FileChange], bucket: &state::Bucket) -> Vec<String> {
    let mut lines = Vec::new();
    for c in changes.iter().rev() {
        match providers::file::restore(c, bucket) {
            Ok(l) => lines.push(l),
            Err(e) => lines.push(format!("FAILED {}: {e:#}", c.path.display())),
        }
    }
    lines
}

/// Options of `troupe-agent rollback`.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    /// Run id (from the run's output or `--list`).
    #[arg(required_unless_present = "list")]
    pub run: Option<String>,
    /// List stored runs and how many files each changed.
    #[arg(long)]
    pub list: bool,
    /// With --list: print a JSON array of {"run_id","started","file_changes",
    /// "noop","from_cache","status"}.
    #[arg(long, requires = "list")]
    pub json: bool,
    #[arg(long, default_value = state::DEFAULT_STATE_DIR)]
    pub state: PathBuf,
}

/// `troupe-agent rollback RUN`: restores every file that run changed.
pub fn rollback(args: RollbackArgs) -> anyhow::Result<u8> {
    let _lock = state::RunLock::acquire(&args.state)?;
    let st = State::open(&args.state)?;
    if args.list {
        let mut rows = Vec::new();
        for id in st.run_ids()? {
            let n = st.changes(&id)?.map(|c| c.len()).unwrap_or(0);
            let report = st.report(&id)?;
            let noop = report.as_ref().is_some_and(|r| r.noop);
            if args.json {
                let status = report.as_ref().map(|r| match r.exit_code() {
                    0 => "ok",
                    2 => "changed",
                    _ => "failed",
                });
                rows.push(serde_json::json!({
                    "run_id": id, "file_changes": n, "noop": noop,
                    "started": report.as_ref().map(|r| r.started.clone()),
                    "from_cache": report.as_ref().map(|r| r.from_cache),
                    "status": status,
                }));
            } else {
                println!(
                    "{id}\t{n} file changes{}",
                    if noop { " (noop)" } else { "" }
                );
            }
        }
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        return Ok(0);
    }
    let run = args.run.context("give a run id")?;
    let changes = st
        .changes(&run)?
        .with_context(|| format!("no stored run {run:?} (see `troupe-agent rollback --list`)"))?;
    if changes.is_empty() {
        println!("run {run} changed no files; nothing to roll back");
        return Ok(0);
    }
    let lines = rollback_changes(&changes, &st.bucket());
    let mut failed = false;
    for l in &lines {
        failed |= l.starts_with("FAILED");
        println!("{l}");
    }
    Ok(if failed { 4 } else { 0 })
}

/// Options of `troupe-agent disable`.
#[derive(clap::Args, Debug)]
pub struct DisableArgs {
    /// Why (shown by every refused run).
    #[arg(default_value = "disabled by an operator")]
    pub reason: String,
    /// The agent's state directory; refused if it does not exist (a typo
    /// must not disable nothing), except the default one.
    #[arg(long, default_value = state::DEFAULT_STATE_DIR)]
    pub state: PathBuf,
}

/// Options of `troupe-agent enable`.
#[derive(clap::Args, Debug)]
pub struct EnableArgs {
    /// The agent's state directory; refused if it does not exist, except
    /// the default one.
    #[arg(long, default_value = state::DEFAULT_STATE_DIR)]
    pub state: PathBuf,
}

pub fn disable(args: DisableArgs) -> anyhow::Result<u8> {
    existing_state_dir(&args.state)?;
    state::create_private_dir(&args.state)?;
    let d = state::Disabled {
        reason: args.reason,
        since: state::now_rfc3339(),
    };
    state::write_atomic(
        &args.state.join("disabled"),
        &serde_json::to_vec(&d)?,
        0o644,
    )?;
    println!("runs disabled: {}", d.reason);
    Ok(0)
}

pub fn enable(args: EnableArgs) -> anyhow::Result<u8> {
    existing_state_dir(&args.state)?;
    match std::fs::remove_file(args.state.join("disabled")) {
        Ok(()) => println!("runs enabled"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("runs were not disabled"),
        Err(e) => return Err(e).context("cannot remove the disabled marker"),
    }
    Ok(0)
}

/// The `os.family` of a `--root` other than `/`, from its os-release.
fn root_os_family(root: &Path) -> Option<String> {
    if root == Path::new("/") {
        return None;
    }
    let text = std::fs::read_to_string(root.join("etc/os-release"))
        .or_else(|_| std::fs::read_to_string(root.join("usr/lib/os-release")))
        .ok()?;
    let os = facts::os_from_release(&text);
    os["family"].as_str().map(str::to_owned)
}
