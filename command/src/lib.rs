//! # troupe-command
//!
//! Owns the transport-independent core of Troupe's signed orchestration
//! (issue 6), linked by both the bastion/master CLI and the agent:
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
//! - [`keys`]: ed25519 signing keys in passphrase-protected PKCS#8 files and
//!   signing through a running ssh-agent, plus key ids;
//! - [`release`]: `RELEASE.toml` manifests and the pure rolling-release
//!   planner;
//! - [`cli`]: clap types and handlers for `troupe key ...` and
//!   `troupe audit verify` (over `troupe_base::audit`).
//!
//! It must never: execute anything itself (no processes, no shell, no
//! network: executing actions is the agent's job); trust a signer list, a
//! public key or a policy carried inside a command (trust comes only from the
//! configuration handed to the [`verify::Verifier`]); record a command id in
//! the replay cache before its signature and time window have been verified;
//! panic on bytes from the network or from files; log or print a private key
//! or a passphrase; write a private key file readable by anyone but its owner.

#![forbid(unsafe_code)]

pub mod cli;
pub mod envelope;
pub mod keys;
pub mod policy;
pub mod registry;
pub mod release;
pub mod replay;
pub mod verify;

pub use envelope::{ArgValue, Command, CommandId, SignedCommand, TargetFilter};
pub use keys::{FileSigner, KeyId, Signer, SshAgentSigner};
pub use policy::Policy;
pub use registry::Registry;
pub use verify::{HostContext, Refusal, TrustedSigners, Verified, Verifier};
