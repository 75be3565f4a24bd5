//! # troupe-master
//!
//! Owns the master daemon (the gRPC service over mutual TLS, the certificate
//! authority's online operations, catalog serving) and the `troupe` command
//! line used by operators on the master and by sysadmins on the bastion.
//!
//! It must never: take a caller's identity from a request body instead of
//! its verified client certificate; serve one node another node's catalog,
//! files or reports; log a private key, PSK or decrypted secret.

#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod ca_cli;
pub mod ca_service;
pub mod catalog_cache;
pub mod catalog_service;
pub mod code;
pub mod code_git;
pub mod config;
pub mod daemon;
pub mod env_diff;
pub mod events;
pub mod fleet_cli;
pub mod fleet_data;
pub mod heap;
pub mod logging;
pub mod metrics;
pub mod orchestra;
pub mod signers_cli;
pub mod state;
pub mod store;
pub mod tls;
pub mod web;
