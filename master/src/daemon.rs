//! `troupe master`: the master daemon.
//!
//! Data directory layout (`--data DIR`, mode 0700):
//!
//! | path | what |
//! |---|---|
//! | `ca/` | the certificate authority (see `troupe_pki::authority`) |
//! | `server/key.pem`, `server/cert.pem` | the master's TLS key (0600) and chain, reissued at each start |
//! | `admin.sock` | the admin endpoint for `troupe ca ...` (0600, see [`crate::admin`]) |
//! | `listen.addr` | the address actually bound (useful with port 0), written once ready |
//!
//! One TLS listener serves every gRPC service built by [`router`]; handshakes
//! verify client certificates against the CA and its CRL (see [`crate::tls`]).

use crate::state::MasterState;
use crate::tls::ServerTls;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use troupe_pki::{Authority, CaPolicy, util};

/// Options of `troupe master`. Every one also has a key in the
/// configuration file (see [`crate::config`]).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Configuration file (default /etc/troupe/master.toml; a missing
    /// default file means defaults). Precedence: flag > environment
    /// (TROUPE_KEY) > file > default.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (every key, its value and where it
    /// came from: flag, env, file or default) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// With --print-config: as JSON.
    #[arg(long, requires = "print_config")]
    pub json: bool,
    /// Data directory: CA, certificates, state database, admin socket.
    /// Created (mode 0700) if missing. The client commands (`troupe ca`,
    /// `nodes`, ...) use the same default.
    #[arg(long, env = "TROUPE_DATA", default_value = "/var/lib/troupe")]
    pub data: PathBuf,
    /// Address to serve gRPC over TLS on, as IP:PORT (e.g. 0.0.0.0:8140,
    /// [::]:8140). Port 0 picks a free port; the bound address is written
    /// to DATA/listen.addr.
    #[arg(long, default_value = "127.0.0.1:8140", value_name = "IP:PORT", value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,
    /// Module tree to compile catalogs from. The master refuses to start
    /// when DIR is not a directory. A tree that does not load does not
    /// stop the master (the CA and reports keep working): catalogs are
    /// refused with the load error until a good tree appears; later changes
    /// that do not load are refused while the last good tree keeps serving.
    ///
    /// `git+URL` (e.g. git+file:///srv/modules.git, git+https://...,
    /// git+ssh://...): every branch of that git repository is an
    /// environment, fetched every --git-poll and by `troupe env sync`
    /// (see modules/README.md, "Environments from git").
    #[arg(long, value_name = "DIR|git+URL")]
    pub modules: Option<PathBuf>,
    /// With `--modules git+URL`: how often to fetch the repository
    /// (e.g. 1m); 0 fetches only at start and on `troupe env sync`.
    #[arg(long, default_value = "1m")]
    pub git_poll: humantime::Duration,
    /// With `--modules git+URL`: the branch whose root holds site.toml
    /// (the classification shared by all environments).
    #[arg(long, default_value = "production", value_name = "BRANCH")]
    pub git_site_branch: String,
    /// Names (DNS or IP) agents use to reach this master; they go in the
    /// master's TLS certificate. Default: the listen IP (unless
    /// unspecified), 127.0.0.1, localhost and this host's name.
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
    /// Lifetime of the host certificates this CA signs, e.g. `365d`, `90d`.
    #[arg(long, default_value = "365d")]
    pub cert_ttl: humantime::Duration,
    /// Hold an environment (repeatable): its new code is staged and served
    /// only after `troupe env promote ENV`, so development work never
    /// reaches it directly. Needs --modules, whose tree must have ENV.
    #[arg(long = "hold", value_name = "ENV")]
    pub hold: Vec<String>,
    /// How often to look for changes in the module tree.
    #[arg(long, default_value = "2s")]
    pub code_poll: humantime::Duration,
    /// Serve Prometheus metrics (plain HTTP, `GET /metrics`) on this
    /// address, e.g. 127.0.0.1:9140. Off unless given.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Serve the read-only dashboard and JSON API (`/api/v1/...`) on this
    /// address, e.g. 127.0.0.1:8150. Off unless given. Plain HTTP on a
    /// loopback address only; on any other address HTTPS, open only to
    /// client certificates from this CA whose name is in --viewer.
    #[arg(long, value_name = "IP:PORT", value_parser = parse_listen)]
    pub web_listen: Option<std::net::SocketAddr>,
    /// A certificate name (from this CA) allowed to use the dashboard over
    /// HTTPS (repeatable; key `viewers` in master.toml). Needed when
    /// --web-listen is not a loopback address.
    #[arg(long = "viewer", value_name = "NAME")]
    pub viewers: Vec<String>,
    /// Let agents ask for a catalog from another environment than the one
    /// the site classifies them in (off: such requests are refused).
    #[arg(long)]
    pub allow_agent_environment: bool,
    /// The agents' run interval; a node that missed 3 is shown as stale.
    #[arg(long, default_value = "30m")]
    pub run_interval: humantime::Duration,
    /// Reports kept per node (older ones are pruned).
    #[arg(long, default_value_t = crate::store::DEFAULT_REPORTS_PER_NODE)]
    pub reports_keep: usize,
    /// Catalog compiles that may run at once (default: one per core).
    #[arg(long)]
    pub compile_threads: Option<usize>,
    /// Memory the compiled-catalog cache may use, in bytes (default 256
    /// MiB, about 100,000 nodes of typical roles). File bodies that nodes
    /// share are held once. Past the bound the least recently used nodes'
    /// catalogs are dropped and compiled again at their next check-in.
    /// 0 caches nothing (every check-in compiles).
    #[arg(long, default_value_t = crate::catalog_cache::DEFAULT_CACHE_BYTES, value_name = "BYTES")]
    pub catalog_cache_bytes: u64,
    /// Memory the node store (DATA/nodes.redb: check-ins, facts, reports)
    /// may use to cache its pages, in bytes (default 8 MiB). Pages past it
    /// are read again from the file (usually from the kernel's page cache);
    /// 0 caches none.
    #[arg(long, default_value_t = crate::store::DEFAULT_CACHE_BYTES, value_name = "BYTES")]
    pub node_store_cache_bytes: u64,
    /// On SIGTERM, how long in-flight requests may take to finish before
    /// the master closes them (agents' command streams are closed then).
    #[arg(long, default_value = "10s")]
    pub shutdown_grace: humantime::Duration,
    /// Rotate the CA's audit log (DATA/ca/audit.log) once it holds this
    /// many bytes: it becomes audit.log.1 and a new hash chain starts whose
    /// first record names the previous file's last hash.
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(4096..))]
    pub ca_audit_max_bytes: u64,
    /// Rotated CA audit logs kept (audit.log.1 ... audit.log.N); the oldest
    /// is deleted, so the CA's audit logs hold at most (N+1) x
    /// --ca-audit-max-bytes.
    #[arg(long, default_value_t = 4, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub ca_audit_keep: u32,
    /// Refused certificate requests from one source address within this
    /// window are written once, then counted: one `refuse_repeated` record
    /// with the count follows when the window has closed (or at shutdown).
    /// `0s` writes every refusal.
    #[arg(long, default_value = "60s")]
    pub ca_audit_refusal_window: humantime::Duration,
    /// The `[events]` table of master.toml (sinks: webhook, email, exec;
    /// see crate::events::config). File only.
    #[arg(skip)]
    pub events: crate::events::config::EventsConfig,
}

/// `--listen`: an IP and a port (a usage error otherwise, with an example).
pub(crate) fn parse_listen(s: &str) -> std::result::Result<std::net::SocketAddr, String> {
    s.parse().map_err(|_| {
        let hint = if s.parse::<std::net::IpAddr>().is_ok() {
            "the port is missing"
        } else {
            "not an IP address and port"
        };
        format!(
            "{hint}: expected IP:PORT, e.g. 127.0.0.1:8140, 0.0.0.0:8140 (every IPv4 address) \
             or [::]:8140"
        )
    })
}

/// Loads the module tree at startup: refuses to start when `dir` is not a
/// directory (a typo) or the tree lacks a held environment. A tree that
/// does not load is logged loudly, and the master starts without it: the
/// CA and report intake must not depend on module code, and agents
/// converge from their cached catalogs meanwhile.
fn load_code(args: &Args, dir: &std::path::Path) -> Result<crate::code::CodeManager> {
    let hold = &args.hold;
    if let Some(url) = crate::code_git::git_url(dir) {
        let m = crate::code::CodeManager::new_git(
            crate::code_git::GitOptions {
                url: url.to_owned(),
                dir: args.data.join("git"),
                site_branch: args.git_site_branch.clone(),
                poll: args.git_poll.into(),
            },
            hold.iter().cloned(),
        )?;
        let st = m.status();
        match &st.live_version {
            Some(v) => {
                tracing::info!(version = %v, repository = %m.dir().display(), "git environments loaded")
            }
            None => tracing::error!(
                "{}: no environment loads yet; the master starts without code and refuses catalogs until a sync works (the CA and reports work): {}",
                m.dir().display(),
                st.git
                    .as_ref()
                    .and_then(|g| g.last_sync_error.clone())
                    .or(st.last_error.clone())
                    .unwrap_or_default()
            ),
        }
        for env in hold {
            if st.live_version.is_some() && !st.environments.contains_key(env) {
                tracing::warn!("--hold {env}: there is no branch {env:?} yet");
            }
        }
        return Ok(m);
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!("--modules {}: not a directory", dir.display()),
        Err(e) => anyhow::bail!("--modules {}: {e}", dir.display()),
    }
    let m = crate::code::CodeManager::new(dir.to_path_buf(), hold.iter().cloned());
    // A tree that changed while it was read (a checkout under way) is
    // read again.
    for _ in 0..20 {
        let st = m.status();
        if st.live_version.is_some() || st.last_error.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        m.reload_if_changed();
    }
    let st = m.status();
    let Some(version) = st.live_version else {
        tracing::error!(
            "--modules {}: the module tree does not load; the master starts without it and \
             refuses catalogs until a good tree appears (the CA and reports work): {}",
            dir.display(),
            st.last_error
                .unwrap_or_else(|| "it kept changing while it was read".into())
        );
        if !hold.is_empty() {
            tracing::warn!(
                "--hold {}: cannot be checked until the module tree loads",
                hold.join(", ")
            );
        }
        return Ok(m);
    };
    for env in hold {
        if !st.environments.contains_key(env) {
            let have: Vec<&str> = st.environments.keys().map(String::as_str).collect();
            anyhow::bail!(
                "--hold {env}: the module tree {} has no environment {env:?} (it has: {})",
                dir.display(),
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            );
        }
    }
    tracing::info!(version = %version, "module tree loaded");
    Ok(m)
}

/// The gRPC routes with every service of the master, served by
/// [`crate::tls::serve`] (HTTP/2 settings there). Later services are added
/// here; each authenticated call takes its caller from
/// [`crate::tls::peer_identity`].
pub fn routes(state: Arc<MasterState>) -> tonic::service::Routes {
    tonic::service::Routes::new(crate::ca_service::server(state.clone()))
        .add_service(crate::catalog_service::catalog_server(state.clone()))
        .add_service(crate::catalog_service::reports_server(state.clone()))
        .add_service(crate::orchestra::server(state.clone()))
        .prepare()
}

fn default_server_names(listen: &std::net::SocketAddr) -> Vec<String> {
    let mut names = Vec::new();
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    for n in ["127.0.0.1", "localhost"] {
        if !names.iter().any(|x| x == n) {
            names.push(n.to_string());
        }
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim().to_lowercase();
        if troupe_pki::validate_host_name(&h).is_ok() && !names.contains(&h) {
            names.push(h);
        }
    }
    names
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(args: Args) -> Result<u8> {
    troupe_pki::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve(args))?;
    Ok(0)
}

async fn serve(args: Args) -> Result<()> {
    // A dashboard that could not be served safely stops the start first.
    crate::web::check_config(args.web_listen, &args.viewers)?;
    // The module tree first: a master that cannot serve catalogs refuses
    // to start before it creates or changes anything.
    let code = match &args.modules {
        Some(dir) => {
            if crate::code_git::git_url(dir).is_some() {
                util::ensure_private_dir(&args.data, 0o700)
                    .with_context(|| format!("creating data directory {}", args.data.display()))?;
            }
            Some(Arc::new(load_code(&args, dir)?))
        }
        None if !args.hold.is_empty() => anyhow::bail!(
            "--hold {}: there is no module tree to hold environments of (give --modules DIR)",
            args.hold.join(", ")
        ),
        None => None,
    };
    util::ensure_private_dir(&args.data, 0o700)
        .with_context(|| format!("creating data directory {}", args.data.display()))?;
    let policy = CaPolicy {
        cert_ttl_secs: args.cert_ttl.as_secs().max(60),
        audit: troupe_pki::CaAuditLimits {
            max_bytes: args.ca_audit_max_bytes,
            keep: args.ca_audit_keep,
            refusal_window_secs: args.ca_audit_refusal_window.as_secs(),
        },
        ..CaPolicy::default()
    };
    let ca_dir = args.data.join("ca");
    let ca = tokio::task::spawn_blocking(move || Authority::open(&ca_dir, policy))
        .await?
        .context("opening the certificate authority")?;
    let ca = Arc::new(ca);
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let names = if args.server_names.is_empty() {
        default_server_names(&addr)
    } else {
        args.server_names.clone()
    };
    let tls = Arc::new(ServerTls::new(&ca, &names, &args.data)?);
    let store = crate::store::NodeStore::open_with_cache(
        &args.data.join("nodes.redb"),
        args.reports_keep,
        args.node_store_cache_bytes,
    )?;
    let secrets = troupe_compiler::SecretKeys::load_dir(&args.data)
        .map_err(|e| anyhow::anyhow!("loading secret keys: {e}"))?;
    let access_audit = troupe_base::audit::AuditLog::open(&args.data.join("access-audit.log"))
        .map_err(|e| anyhow::anyhow!("opening the access audit log: {e}"))?;
    let threads = args
        .compile_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let sinks = crate::events::sinks::Sinks::start(&args.events, &args.data, metrics.clone())
        .map_err(|e| anyhow::anyhow!("events: {e}"))?;
    let state = Arc::new(MasterState {
        data_dir: args.data.clone(),
        modules: args.modules.clone(),
        ca: ca.clone(),
        tls: tls.clone(),
        code,
        store: Arc::new(store),
        metrics,
        catalogs: crate::catalog_cache::CatalogCache::new(args.catalog_cache_bytes),
        compile_slots: tokio::sync::Semaphore::new(threads),
        secrets,
        allow_agent_environment: args.allow_agent_environment,
        run_interval_secs: args.run_interval.as_secs().max(1),
        access_audit: std::sync::Mutex::new(access_audit),
        identities: tokio::sync::watch::channel(0).0,
        events: Arc::new(crate::events::Events::with_sinks(&args.data, sinks)),
    });
    let admin = crate::admin::serve(state.clone()).await?;

    // Pick up module changes without a restart.
    let code_task = state.code.clone().map(|code| {
        let metrics = state.metrics.clone();
        let ev_state = state.clone();
        let poll = args.code_poll.as_secs_f64().max(0.2);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(poll));
            loop {
                tick.tick().await;
                let c = code.clone();
                match tokio::task::spawn_blocking(move || c.reload_if_changed()).await {
                    Ok(crate::code::Reload::Swapped(v)) => {
                        tracing::info!(version = %v, "new module code is live")
                    }
                    Ok(crate::code::Reload::Failed(e)) => {
                        metrics.code_load_failures.inc();
                        crate::events::hooks::code_load_failed(&ev_state, &e.to_string(), code.status().live_version.as_deref());
                        if code.status().live_version.is_some() {
                            tracing::error!("the changed module tree does not load; the previous one keeps serving: {e}")
                        } else {
                            tracing::error!("the module tree still does not load; no catalogs are served until it does: {e}")
                        }
                    }
                    _ => {}
                }
            }
        })
    });
    // Git-backed environments: fetch every --git-poll (0: only on
    // `troupe env sync`).
    let git_task = match state.code.clone() {
        Some(code) if code.disk_dir().is_none() && args.git_poll.as_secs() > 0 => {
            let metrics = state.metrics.clone();
            let ev_state = state.clone();
            let every = Duration::from(args.git_poll);
            Some(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await; // the first sync ran at start
                // A fetch failing the same way at every poll is one event.
                let mut last_fetch_error: Option<String> = None;
                loop {
                    tick.tick().await;
                    let c = code.clone();
                    let r = tokio::task::spawn_blocking(move || c.sync(None)).await;
                    let failed = match r {
                        Ok(Ok(rep)) => {
                            last_fetch_error = None;
                            rep.new_failures
                        }
                        Ok(Err(e)) => {
                            let e = format!("{e:#}");
                            if last_fetch_error.as_deref() == Some(e.as_str()) {
                                vec![]
                            } else {
                                tracing::error!("{e}");
                                last_fetch_error = Some(e.clone());
                                vec![e]
                            }
                        }
                        Err(_) => vec![],
                    };
                    if !failed.is_empty() {
                        metrics.code_load_failures.inc();
                        crate::events::hooks::code_load_failed(
                            &ev_state,
                            &failed.join("\n"),
                            code.status().live_version.as_deref(),
                        );
                    }
                }
            }))
        }
        _ => None,
    };
    let scan_task = crate::events::scan::spawn(
        state.clone(),
        args.events.scan_interval.0,
        args.events.cert_expiry_days,
    );
    // Write check-ins in batches (one transaction a second).
    let flush_state = state.clone();
    let flush_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let st = flush_state.clone();
            let _ =
                tokio::task::spawn_blocking(move || crate::catalog_service::flush_checkins(&st))
                    .await;
        }
    });
    let metrics_task = match &args.metrics_listen {
        None => None,
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener {addr}"))?;
            tracing::info!(addr = %l.local_addr()?, "metrics listening");
            let st = state.clone();
            let refresh: Arc<dyn Fn(&crate::metrics::Metrics) + Send + Sync> =
                Arc::new(move |m| st.refresh_gauges(m));
            Some(tokio::spawn(crate::metrics::serve(
                l,
                state.metrics.clone(),
                refresh,
                std::future::pending(),
            )))
        }
    };
    let web_task = match args.web_listen {
        None => None,
        Some(addr) => Some(crate::web::serve(state.clone(), addr, &args.viewers).await?),
    };
    if let Some((addr, _)) = &web_task {
        util::write_atomic(
            &args.data.join("web.addr"),
            format!("{addr}\n").as_bytes(),
            0o644,
        )?;
    }

    // Keep the CRL fresh: regenerate it daily (it is valid for a week).
    let crl_state = state.clone();
    let crl_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(86_400));
        tick.tick().await;
        loop {
            tick.tick().await;
            let ca = crl_state.ca.clone();
            match tokio::task::spawn_blocking(move || ca.refresh_crl()).await {
                Ok(Ok(())) => crl_state.reload_crl(),
                _ => tracing::error!("could not refresh the CRL"),
            }
        }
    });

    util::write_atomic(
        &args.data.join("listen.addr"),
        format!("{addr}\n").as_bytes(),
        0o644,
    )?;
    tracing::info!(
        %addr,
        fingerprint = %ca.fingerprint(),
        names = ?names,
        "troupe master listening"
    );
    notify_ready();
    // Graceful shutdown: on SIGTERM/SIGINT stop accepting, let in-flight
    // requests finish, but never wait longer than the grace period (agents'
    // command streams are long-lived and would hold the master forever).
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signalled = stopping.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("cannot install a SIGTERM handler: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down: finishing in-flight requests");
        signalled.notify_waiters();
    });
    let server_stop = stopping.clone();
    let serving = crate::tls::serve(
        listener,
        tls,
        state.metrics.clone(),
        routes(state.clone()),
        async move { server_stop.notified().await },
    );
    let grace = args.shutdown_grace.into();
    tokio::select! {
        () = serving => {}
        _ = async { stopping.notified().await; tokio::time::sleep(grace).await } => {
            tracing::warn!("requests still open after {grace:?}; closing them");
        }
    }
    admin.abort();
    crl_task.abort();
    scan_task.abort();
    flush_task.abort();
    if let Some(t) = code_task {
        t.abort();
    }
    if let Some(t) = git_task {
        t.abort();
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    if let Some((_, t)) = web_task {
        t.abort();
    }
    crate::catalog_service::flush_checkins(&state);
    state.ca.flush_audit();
    let _ = std::fs::remove_file(crate::admin::socket_path(&args.data));
    let _ = std::fs::remove_file(args.data.join("listen.addr"));
    let _ = std::fs::remove_file(args.data.join("web.addr"));
    Ok(())
}

/// Tells systemd the master serves (troupe-master.service is Type=notify):
/// the CA, the admin socket and the listener are up, so `systemctl start`
/// returns only now and a `troupe ca ...` typed next finds the master.
/// Does nothing without `$NOTIFY_SOCKET` (not started by systemd).
fn notify_ready() {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sock| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = SocketAddr::from_abstract_name(name)?;
                sock.send_to_addr(b"READY=1", &addr)
            }
            None => sock.send_to(b"READY=1", &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!("could not tell systemd the master is ready (NOTIFY_SOCKET): {e}");
    }
}
