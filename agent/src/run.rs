//! `troupe-agent run`. (Skeleton: filled in by the agent work.)

/// Options of `troupe-agent run`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Converge once and exit.
    #[arg(long)]
    pub once: bool,
}

pub fn run(_args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("converge is not built yet")
}
