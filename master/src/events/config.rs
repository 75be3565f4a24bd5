//! The `[events]` table of master.toml: [`troupe_events::config`] (shared
//! with the bastion's bastion.toml).

pub use troupe_events::config::*;
