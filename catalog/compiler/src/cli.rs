//! The compiler's command-line front, wired into `troupe`. (Skeleton.)

/// `troupe catalog ...`
#[derive(clap::Subcommand, Debug)]
pub enum CatalogCmd {
    /// Compile a host's catalog and print it.
    Compile {
        host: String,
    },
}

/// `troupe lookup ...`
#[derive(clap::Args, Debug)]
pub struct LookupArgs {
    /// The key to look up.
    pub key: String,
}

/// `troupe secret ...`
#[derive(clap::Subcommand, Debug)]
pub enum SecretCmd {
    /// Encrypt a value for an environment.
    Encrypt {
        #[arg(long)]
        env: String,
    },
}

pub fn catalog(_cmd: CatalogCmd) -> anyhow::Result<u8> {
    anyhow::bail!("the catalog compiler is not built yet")
}
pub fn lookup(_args: LookupArgs) -> anyhow::Result<u8> {
    anyhow::bail!("lookup is not built yet")
}
pub fn secret(_cmd: SecretCmd) -> anyhow::Result<u8> {
    anyhow::bail!("secrets are not built yet")
}
