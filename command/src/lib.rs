//! # troupe-command
//!
//! Owns the agent-side core of Troupe's signed orchestration, linked by the
//! agent, the master (which checks and relays envelopes) and the bastion
//! (which builds and signs them):
//!
//! - [`envelope`]: the signed command envelope (random 128-bit id, signer key
//!   id, issued-at/expiry with a hard maximum TTL, target filter, action,
//!   typed arguments), its canonical byte encoding and a bounded decoder;
//! - [`verify`]: the checks every agent runs before acting, each refusal a
//!   specific [`verify::Refusal`];
//! - [`replay`]: the on-disk (redb) replay cache that keeps every accepted id
//!   for its whole validity window, across restarts;
//! - [`registry`]: the action whitelist and typed argument schemas (built-ins
//!   plus module-declared actions), and module actions' argv templates
//!   expanded into argv (whole elements only; the agent runs them);
//! - [`policy`]: allow/deny rules by signer, action, facts and role
//!   (deny-overrides, deny by default);
//! - [`keys`]: key ids, key errors and the [`Signer`] trait (the signers
//!   themselves, key files and ssh-agent, are `troupe-bastion`'s);
//! - [`action_files`]: module action files read from a directory;
//! - [`trust`]: the owner/mode rule for files that grant trust (signer
//!   lists, orchestration and agent configuration), checked on what is read.
//!
//! It must never: sign (no private key, key file, passphrase prompt or
//! ssh-agent client: the agent links this crate); execute anything itself
//! (no processes, no shell, no network: executing actions is the agent's
//! job); trust a signer list, a public key or a policy carried inside a
//! command (trust comes only from the configuration handed to the
//! [`verify::Verifier`]); record a command id in the replay cache before its
//! signature and time window have been verified; panic on bytes from the
//! network or from files.

#![forbid(unsafe_code)]

pub mod action_files;
pub mod envelope;
pub mod keys;
pub mod policy;
pub mod registry;
pub mod replay;
/// The owner/mode rule for files that grant trust (lives in troupe-base,
/// which the config-file loader shares).
pub use troupe_base::trust;
pub mod verify;

pub use envelope::{ArgValue, Command, CommandId, SignedCommand, TargetFilter};
pub use keys::{KeyId, Signer};
pub use policy::Policy;
pub use registry::Registry;
pub use verify::{HostContext, Refusal, TrustedSigners, Verified, Verifier};
