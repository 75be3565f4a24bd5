//! The master daemon. (Skeleton: filled in by the foundation work.)

use std::path::PathBuf;

/// Options of `troupe master`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Data directory: CA, certificates, state database, admin socket.
    #[arg(long)]
    pub data: PathBuf,
    /// Address to serve gRPC over TLS on.
    #[arg(long, default_value = "127.0.0.1:8140")]
    pub listen: String,
    /// Module tree to compile catalogs from.
    #[arg(long)]
    pub modules: Option<PathBuf>,
}

pub fn run(_args: Args) -> anyhow::Result<u8> {
    anyhow::bail!("the master daemon is not built yet")
}
