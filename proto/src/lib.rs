//! # troupe-proto
//!
//! Owns the gRPC wire contract between the Troupe master and its agents: the
//! `.proto` files under `proto/` and the Rust code generated from them.
//!
//! [`error_code`] is part of the contract too: the `troupe-error-code`
//! metadata a failed call carries, so clients branch on a code.
//!
//! It must never contain behaviour: no validation, no I/O, no policy. Every
//! message that arrives from the network is untrusted and is validated by the
//! crate that handles it (pki, master, agent).

#![forbid(unsafe_code)]

/// Generated code for package `troupe.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("troupe.v1");
}

pub mod error_code;

/// Largest gRPC message either side accepts by default (4 MiB). Services set
/// tighter limits where a message has a natural bound (CSRs, commands).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
