//! `troupe-agent`: bootstrap, facts, converge, rollback on a managed host.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

/// The Troupe agent: joins the master with a one-time pre-shared key, then
/// pulls its catalog over mutual TLS and converges this host idempotently.
#[derive(Parser)]
#[command(
    name = "troupe-agent",
    version,
    propagate_version = true,
    after_long_help = AFTER_HELP
)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info`, `troupe=debug`
    /// (default: TROUPE_LOG, else `info`).
    // TROUPE_LOG is read by hand: clap would list an option filled from the
    // environment in every usage error, as if it were required.
    #[arg(long, global = true, value_name = "FILTER")]
    log: Option<String>,
    /// Emit logs as JSON lines.
    #[arg(long, global = true)]
    log_json: bool,
    /// Configuration file read by `run` (default /etc/troupe/agent.toml;
    /// a missing default file means defaults; keys: `man troupe-agent`).
    #[arg(long, global = true, value_name = "FILE", env = "TROUPE_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// Print the effective configuration of `run` (every key, its value
    /// and where it came from: flag, env, file or default) and exit.
    #[arg(long)]
    print_config: bool,
    /// With --print-config: as JSON.
    #[arg(long, requires = "print_config")]
    json: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join a master: key pair, CSR with the pre-shared key, pinned CA.
    Bootstrap(troupe_agent::bootstrap::Args),
    /// Renew this host's certificate over mutual TLS (and refresh the CRL).
    Renew(troupe_agent::renew::Args),
    /// Converge this host once, or as a daemon on a timer.
    #[command(after_long_help = RUN_EXIT)]
    Run(troupe_agent::run::Args),
    /// Print this host's facts as JSON.
    Facts(troupe_agent::facts::Args),
    /// Print the current state of a file, package, service, user, group or
    /// cron entry as the module language would declare it (--json too).
    Resource(troupe_agent::resource::Args),
    /// Restore every file a run changed (`--list` shows stored runs).
    Rollback(troupe_agent::run::RollbackArgs),
    /// Stop runs from happening (until `enable`), with a reason.
    Disable(troupe_agent::run::DisableArgs),
    /// Allow runs again after `disable`.
    Enable(troupe_agent::run::EnableArgs),
    /// Keep a command stream open to the master and run the signed
    /// commands this host's orchestration configuration allows.
    Listen(troupe_agent::orchestra::ListenArgs),
    /// Write shell completions and man pages into DIR (for packaging).
    #[command(hide = true)]
    PackageAssets {
        /// Output directory.
        dir: std::path::PathBuf,
    },
}

/// Exit status of a command line that does not parse (sysexits' EX_USAGE),
/// distinct from the 2/4/6 of `run`.
const EXIT_USAGE: u8 = 64;

const AFTER_HELP: &str = "\
Environment:
  TROUPE_PSK     bootstrap: the one-time pre-shared key (as --psk; keeps it out of `ps`)
  TROUPE_SERVER  run: the master's URL (as --server)
  TROUPE_LOG     log filter (as --log)

Exit status:
  0   success (run: nothing needed changing)
  1   error: the message says what is wrong (run: no run happened)
  2   run: changes were made
  4   run: some resources failed or were skipped
  6   run: changes made and some resources failed
  64  usage error: unknown option, missing or malformed argument

Example (the first join; the key comes from `troupe ca psk new HOST` on the master):
  TROUPE_PSK=... troupe-agent bootstrap --server https://master:8140 \\
      --name web4.example.com --ca-fingerprint SHA256-FROM-troupe-ca-fingerprint
  troupe-agent run --server https://master:8140 --once";

/// --log, else TROUPE_LOG, else `info`.
fn log_filter(arg: Option<String>) -> String {
    arg.or_else(|| std::env::var("TROUPE_LOG").ok())
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "info".into())
}

const RUN_EXIT: &str = "\
Exit status (as puppet agent --detailed-exitcodes; with --once):
  0   nothing needed changing
  1   no run happened (the message says why)
  2   changes were made
  4   some resources failed or were skipped
  6   changes made and some resources failed
  64  malformed command line";

fn main() -> ExitCode {
    troupe_base::cli::exit_quietly_when_stdout_closes();
    troupe_pki::tls::install_crypto_provider();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)));
    let (cli, matches) = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    troupe_agent::logging::init(&log_filter(cli.log), cli.log_json);
    let config = cli
        .config
        .clone()
        .unwrap_or_else(|| troupe_agent::config::DEFAULT_CONFIG.into());
    let explicit = cli.config.is_some();
    let Some(cmd) = cli.cmd else {
        if !cli.print_config {
            let _ = Cli::command()
                .error(
                    clap::error::ErrorKind::MissingSubcommand,
                    "a subcommand is required (or --print-config); see --help",
                )
                .print();
            return ExitCode::from(EXIT_USAGE);
        }
        let (args, m) = troupe_agent::config::default_run();
        return finish(
            troupe_agent::config::resolve(args, &m, &config, explicit).map(|eff| {
                print!("{}", troupe_agent::config::print(&eff, cli.json));
                0
            }),
        );
    };
    let result = match cmd {
        Cmd::Bootstrap(args) => troupe_agent::bootstrap::run(args),
        Cmd::Renew(args) => troupe_agent::renew::run(args),
        Cmd::Run(args) => {
            let m = matches
                .subcommand_matches("run")
                .expect("the run subcommand's matches");
            troupe_agent::config::resolve(args, m, &config, explicit).and_then(|eff| {
                if cli.print_config {
                    print!("{}", troupe_agent::config::print(&eff, cli.json));
                    return Ok(0);
                }
                let just_joined = troupe_agent::config::bootstrap_if_needed(&eff)?;
                troupe_agent::run::run(troupe_agent::run::Args {
                    just_joined,
                    ..eff.run
                })
            })
        }
        Cmd::Facts(args) => troupe_agent::facts::run(args),
        Cmd::Resource(args) => troupe_agent::resource::run(args),
        Cmd::Rollback(args) => troupe_agent::run::rollback(args),
        Cmd::Disable(args) => troupe_agent::run::disable(args),
        Cmd::Enable(args) => troupe_agent::run::enable(args),
        Cmd::Listen(args) => troupe_agent::orchestra::listen(args),
        Cmd::PackageAssets { dir } => package_assets(&dir),
    };
    finish(result)
}

fn finish(result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("troupe-agent: error: {}", troupe_base::cli::one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// `package-assets DIR` (hidden; scripts/package.sh runs it): shell
/// completions (bash, zsh, fish) in DIR/completions and a man page for the
/// command and every subcommand in DIR/man.
fn package_assets(out: &std::path::Path) -> anyhow::Result<u8> {
    use clap_complete::Shell;
    // No `help` subcommand pages: every page has --help's text already.
    fn no_help(cmd: clap::Command) -> clap::Command {
        cmd.disable_help_subcommand(true).mut_subcommands(no_help)
    }
    let mut cmd = no_help(Cli::command());
    cmd.build();
    let name = cmd.get_name().to_owned();
    let (man, comp) = (out.join("man"), out.join("completions"));
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    for sh in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(sh, &mut cmd, &name, &comp)?;
    }
    clap_mangen::generate_to(cmd, &man)?;
    Ok(0)
}
