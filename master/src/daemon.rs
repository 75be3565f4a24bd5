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
use tonic::transport::Server;
use tonic::transport::server::Router;
use troupe_pki::{Authority, CaPolicy, util};

/// Options of `troupe master`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Data directory: CA, certificates, state database, admin socket.
    /// Created (mode 0700) if missing.
    #[arg(long)]
    pub data: PathBuf,
    /// Address to serve gRPC over TLS on. Port 0 picks a free port; the
    /// bound address is written to DATA/listen.addr.
    #[arg(long, default_value = "127.0.0.1:8140")]
    pub listen: String,
    /// Module tree to compile catalogs from.
    #[arg(long)]
    pub modules: Option<PathBuf>,
    /// Names (DNS or IP) agents use to reach this master; they go in the
    /// master's TLS certificate. Default: the listen IP (unless
    /// unspecified), 127.0.0.1, localhost and this host's name.
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
    /// Lifetime of the host certificates this CA signs, e.g. `365d`, `90d`.
    #[arg(long, default_value = "365d")]
    pub cert_ttl: humantime::Duration,
}

/// Builds the gRPC router with every service of the master. Later services
/// (catalog, reports, ...) are added here; each authenticated call takes
/// its caller from [`crate::tls::peer_identity`].
pub fn router(state: Arc<MasterState>) -> Router {
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(crate::ca_service::server(state.clone()))
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
    util::ensure_private_dir(&args.data, 0o700)
        .with_context(|| format!("creating data directory {}", args.data.display()))?;
    let policy = CaPolicy {
        cert_ttl_secs: args.cert_ttl.as_secs().max(60),
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
    let state = Arc::new(MasterState {
        data_dir: args.data.clone(),
        modules: args.modules.clone(),
        ca: ca.clone(),
        tls: tls.clone(),
    });
    let admin = crate::admin::serve(state.clone()).await?;

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

    let incoming = crate::tls::incoming(listener, tls);
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
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail at startup");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
    };
    let result = router(state.clone())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    admin.abort();
    crl_task.abort();
    let _ = std::fs::remove_file(crate::admin::socket_path(&args.data));
    let _ = std::fs::remove_file(args.data.join("listen.addr"));
    result.context("serving gRPC")?;
    Ok(())
}
