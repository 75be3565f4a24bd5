//! `troupe`: the master daemon and the operator / bastion command line.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

/// jemalloc, not glibc malloc (ADR 0015): after a 10,000-node fleet glibc's
/// heap is fragmented and every new connection's buffers take its slow
/// paths; jemalloc's size classes do not, and it holds less memory per node.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Troupe: configuration management and signed orchestration.
///
/// Run `troupe master` on the master host. Every other subcommand is a
/// client: certificate-authority administration talks to the running master
/// through the root-only socket in its data directory; catalog, lookup and
/// secret commands work directly on a module tree; `run` and `deploy` sign
/// commands on a bastion and send them to the master over mutual TLS.
#[derive(Parser)]
#[command(
    name = "troupe",
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
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the master daemon: certificate authority and gRPC service.
    Master(troupe_master::daemon::Args),
    /// Certificate authority: fingerprints, PSKs, signing and revocation.
    #[command(subcommand)]
    Ca(troupe_master::ca_cli::CaCmd),
    /// Every node: last check-in, last run, changes, failures, staleness.
    Nodes(troupe_master::fleet_cli::NodesArgs),
    /// A node's run report (the latest, or RUN).
    Report(troupe_master::fleet_cli::ReportArgs),
    /// The facts a node sent with its last check-in.
    Facts(troupe_master::fleet_cli::FactsArgs),
    /// Environments: what code each serves; promote staged code.
    #[command(subcommand)]
    Env(troupe_master::fleet_cli::EnvCmd),
    /// Compile or diff a host's catalog from a module tree.
    #[command(subcommand)]
    Catalog(troupe_compiler::cli::CatalogCmd),
    /// Look a key up in the data hierarchy for a node.
    Lookup(troupe_compiler::cli::LookupArgs),
    /// Encrypt secrets and manage per-environment secret keys.
    #[command(subcommand)]
    Secret(troupe_compiler::cli::SecretCmd),
    /// Command-signing keys (passphrase-protected files or ssh-agent).
    Key(troupe_bastion::cli::KeyArgs),
    /// Audit-log tools: verify a hash-chained log.
    Audit(troupe_bastion::cli::AuditArgs),
    /// The master's trusted command signers (DATA/signers.toml): add, list,
    /// remove; a change applies to the next command.
    #[command(subcommand)]
    Signers(troupe_master::signers_cli::SignersCmd),
    /// Run a signed command on the matching hosts (from the bastion).
    Run(troupe_bastion::run_cli::RunArgs),
    /// Roll a release (RELEASE.toml) out host by host or batch by batch,
    /// stopping at the first failure.
    Deploy(DeployCli),
    /// Write shell completions and man pages into DIR (for packaging).
    #[command(hide = true)]
    PackageAssets {
        /// Output directory.
        dir: std::path::PathBuf,
    },
}

/// `troupe deploy RELEASE.toml ...`, or `troupe deploy log ...`.
#[derive(clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_long_help = troupe_bastion::deploy_cli::RELEASE_EXAMPLE
)]
struct DeployCli {
    #[command(subcommand)]
    sub: Option<troupe_master::events::cli::DeploySub>,
    #[command(flatten)]
    run: Option<troupe_bastion::deploy_cli::DeployArgs>,
}

/// Exit status of a command line that does not parse (sysexits' EX_USAGE),
/// distinct from 2, which `run`, `deploy` and `catalog diff` use for results.
const EXIT_USAGE: u8 = 64;

const AFTER_HELP: &str = "\
Environment:
  TROUPE_DATA      the master's data directory for ca, nodes, report, facts
                   and env (as --data; default /var/lib/troupe)
  TROUPE_SERVER    run, deploy: the master's URL (as --server)
  TROUPE_IDENTITY  run, deploy: the bastion's identity directory (as --identity)
  TROUPE_BASTION_CONFIG  deploy: the bastion's configuration file, its
                   [events] sinks (as --config; default /etc/troupe/bastion.toml)
  SSH_AUTH_SOCK    run, deploy --ssh-agent, key agent: the ssh-agent to sign with
  TROUPE_MODULES   catalog, lookup, secret: the module tree (as --modules;
                   default ./modules)
  TROUPE_LOG       log filter (as --log)

Exit status:
  0   success
  1   error: the message says what is wrong; a refused command changes nothing
  2   a result to act on: run/deploy: some host failed, refused or did not
      answer, or no host matched; catalog diff: the catalogs differ;
      env diff: some node changes or does not compile with the new code;
      env status: the newest module tree does not load
  64  usage error: unknown option, missing or malformed argument

Examples:
  troupe ca psk new web4.example.com --ttl 2h
  troupe nodes --where os.family=Debian --role web
  troupe run ping --role web --server https://master:8140 \\
      --identity /var/lib/troupe-agent --key ~/.troupe/alice.key";

/// --log, else TROUPE_LOG, else `info`.
fn log_filter(arg: Option<String>) -> String {
    arg.or_else(|| std::env::var("TROUPE_LOG").ok())
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| "info".into())
}

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
    troupe_master::logging::init(&log_filter(cli.log), cli.log_json);
    let result = match cli.cmd {
        Cmd::Master(args) => {
            let m = matches
                .subcommand_matches("master")
                .expect("the master subcommand's matches");
            troupe_master::config::resolve(args, m).and_then(|(args, file)| {
                if args.print_config {
                    print!("{}", troupe_master::config::print(&file, args.json));
                    return Ok(0);
                }
                troupe_master::daemon::run(args)
            })
        }
        Cmd::Ca(cmd) => troupe_master::ca_cli::run(cmd),
        Cmd::Nodes(args) => troupe_master::fleet_cli::nodes(args),
        Cmd::Report(args) => troupe_master::fleet_cli::report(args),
        Cmd::Facts(args) => troupe_master::fleet_cli::facts(args),
        Cmd::Env(cmd) => troupe_master::fleet_cli::env(cmd),
        Cmd::Catalog(cmd) => troupe_compiler::cli::catalog(cmd),
        Cmd::Lookup(args) => troupe_compiler::cli::lookup(args),
        Cmd::Secret(cmd) => troupe_compiler::cli::secret(cmd),
        Cmd::Key(args) => troupe_bastion::cli::run_key(&args, &mut std::io::stdout()).map(|()| 0),
        Cmd::Run(args) => troupe_bastion::run_cli::run(args),
        Cmd::Signers(cmd) => troupe_master::signers_cli::run(cmd),
        Cmd::Deploy(DeployCli { sub: Some(sub), .. }) => troupe_master::events::cli::run(sub),
        Cmd::Deploy(DeployCli {
            run: Some(args), ..
        }) => troupe_bastion::deploy_cli::run(args),
        // clap leaves an optional flattened group empty when its first
        // argument is a positional; read the release arguments directly.
        Cmd::Deploy(_) => match matches
            .subcommand_matches("deploy")
            .filter(|m| m.contains_id("release"))
            .map(<troupe_bastion::deploy_cli::DeployArgs as clap::FromArgMatches>::from_arg_matches)
        {
            Some(Ok(args)) => troupe_bastion::deploy_cli::run(args),
            Some(Err(e)) => Err(anyhow::anyhow!("{e}")),
            None => Err(anyhow::anyhow!(
                "give a release file (troupe deploy RELEASE.toml ...) or `troupe deploy log`"
            )),
        },
        Cmd::PackageAssets { dir } => package_assets(&dir),
        Cmd::Audit(args) => {
            troupe_bastion::cli::run_audit(&args, &mut std::io::stdout()).map(|()| 0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("troupe: error: {}", troupe_base::cli::one_line(&e));
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
