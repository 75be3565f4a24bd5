//! `troupe-agent facts`. (Skeleton: filled in by the agent work.)

/// Options of `troupe-agent facts`.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("facts are not built yet")
}
