//! # troupe-agent
//!
//! Owns everything that runs on a managed host: bootstrap (key pair, CSR with
//! the PSK, pinned CA), certificate renewal, facts, converging a catalog with
//! idempotent providers, reports, the local catalog cache and rollback;
//! and the orchestration listener, whose built-in `package.*`/`service.*`
//! actions call those same providers.
//!
//! It must never: contain the catalog compiler (it depends on the catalog
//! model only); trust a CA it has not pinned by fingerprint; leave a
//! half-written file (every write is temp + fsync + rename); run a shell
//! string where an argv was given; panic on a catalog or message it receives.

#![forbid(unsafe_code)]

pub mod bootstrap;
pub mod config;
pub mod engine;
pub mod facts;
/// The client identity now lives in `troupe-identity` (shared with the
/// bastion); this path stays for code written against `crate::identity`.
pub use troupe_identity as identity;
pub mod logging;
pub mod master_client;
pub mod orchestra;
pub mod providers;
pub mod renew;
pub mod resource;
pub mod run;
pub mod server_list;
pub mod source;
pub mod state;
pub mod waiting;
/// The owner/mode rule for files that grant trust (in troupe-command).
pub use troupe_command::trust;
