//! `troupe-agent`: bootstrap, facts, converge, rollback on a managed host.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The Troupe agent: joins the master with a one-time pre-shared key, then
/// pulls its catalog over mutual TLS and converges this host idempotently.
#[derive(Parser)]
#[command(name = "troupe-agent", version, propagate_version = true)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info`, `troupe=debug`.
    #[arg(long, global = true, env = "TROUPE_LOG", default_value = "info")]
    log: String,
    /// Emit logs as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join a master: key pair, CSR with the pre-shared key, pinned CA.
    Bootstrap(troupe_agent::bootstrap::Args),
    /// Renew this host's certificate over mutual TLS (and refresh the CRL).
    Renew(troupe_agent::renew::Args),
    /// Converge this host once, or as a daemon on a timer.
    Run(troupe_agent::run::Args),
    /// Print this host's facts as JSON.
    Facts(troupe_agent::facts::Args),
    /// Restore every file a run changed (`--list` shows stored runs).
    Rollback(troupe_agent::run::RollbackArgs),
    /// Stop runs from happening (until `enable`), with a reason.
    Disable(troupe_agent::run::DisableArgs),
    /// Allow runs again after `disable`.
    Enable(troupe_agent::run::EnableArgs),
    /// Keep a command stream open to the master and run the signed
    /// commands this host's orchestration configuration allows.
    Listen(troupe_agent::orchestra::ListenArgs),
}

fn main() -> ExitCode {
    troupe_pki::tls::install_crypto_provider();
    let cli = Cli::parse();
    troupe_agent::logging::init(&cli.log, cli.log_json);
    let result = match cli.cmd {
        Cmd::Bootstrap(args) => troupe_agent::bootstrap::run(args),
        Cmd::Renew(args) => troupe_agent::renew::run(args),
        Cmd::Run(args) => troupe_agent::run::run(args),
        Cmd::Facts(args) => troupe_agent::facts::run(args),
        Cmd::Rollback(args) => troupe_agent::run::rollback(args),
        Cmd::Disable(args) => troupe_agent::run::disable(args),
        Cmd::Enable(args) => troupe_agent::run::enable(args),
        Cmd::Listen(args) => troupe_agent::orchestra::listen(args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("troupe-agent: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
