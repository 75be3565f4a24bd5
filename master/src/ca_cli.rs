//! `troupe ca ...`. (Skeleton: filled in by the foundation work.)

/// Certificate authority administration.
#[derive(clap::Subcommand, Debug)]
pub enum CaCmd {
    /// Print the CA certificate's SHA-256 fingerprint.
    Fingerprint {
        #[arg(long)]
        data: std::path::PathBuf,
    },
}

pub fn run(_cmd: CaCmd) -> anyhow::Result<u8> {
    anyhow::bail!("CA administration is not built yet")
}
