//! # troupe-bastion
//!
//! Owns the sysadmin's side of signed orchestration, built into the
//! `troupe` binary:
//!
//! - [`keys`]: ed25519 signing keys in passphrase-protected PKCS#8 files and
//!   signing through a running ssh-agent;
//! - [`release`]: `RELEASE.toml` manifests and the pure rolling-release
//!   planner;
//! - [`run_cli`], [`deploy_cli`]: `troupe run` and `troupe deploy` (sign
//!   each command just before it is sent, submit it to the master over
//!   mutual TLS with the bastion's `troupe-identity`, print results);
//! - [`deploy_log`], [`deploy_events`]: a release's log as text and its
//!   events, delivered to sinks configured on the bastion
//!   (`/etc/troupe/bastion.toml`, `[events]`, through `troupe-events`);
//! - [`cli`]: `troupe key ...`, `troupe audit verify`, and the signer
//!   options `run` and `deploy` share.
//!
//! It must never: be linked by the agent (the agent verifies, it never
//! signs); depend on the agent or the master daemon; print or log a private
//! key or a passphrase; write a private key file readable by anyone but its
//! owner; sign a command the local registry refuses.

#![forbid(unsafe_code)]

pub mod cli;
pub mod deploy_cli;
pub mod deploy_events;
pub mod deploy_log;
pub mod deploy_record;
pub mod keys;
pub mod progress;
pub mod release;
pub mod run_cli;

pub use keys::{FileSigner, SshAgentSigner};
