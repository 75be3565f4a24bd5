//! `troupe-agent bootstrap`. (Skeleton: filled in by the foundation work.)

/// Options of `troupe-agent bootstrap`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Master URL, e.g. https://127.0.0.1:8140
    #[arg(long)]
    pub server: String,
}

pub fn run(_args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("bootstrap is not built yet")
}
