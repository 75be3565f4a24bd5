//! # troupe-pki
//!
//! Owns Troupe's trust layer: the certificate authority (key, self-signed
//! certificate, random serials, signing, revocation, CRL, audit log, state in
//! redb), host-name validation, CSR parsing (pre-shared key in
//! `pp_preshared_key` or `challengePassword`), one-time PSKs (stored only as
//! hashes, compared in constant time), the rustls configurations for
//! mutual TLS, and the daemons' configuration files (trusted only when root
//! or the daemon owns them and no one else may write them). Its redb state
//! goes through `troupe_base::reopen`.
//!
//! It must never: log or return a private key or a PSK; copy an extension
//! from a CSR into a certificate; trust an identity that does not come from a
//! verified certificate; panic on bytes from the network or from disk.

#![forbid(unsafe_code)]

pub mod authority;
pub mod ca_audit;
pub mod config_file;
pub mod csr;
pub mod name;
pub mod psk;
pub mod tls;
pub mod util;

pub use authority::{
    Authority, CaError, CaPolicy, IssuedCert, ListEntry, ListFilter, PollOutcome, SubmitOutcome,
};
pub use ca_audit::CaAuditLimits;
pub use csr::{CheckedCsr, CsrError, build_csr, check_csr};
pub use name::{NameError, validate_host_name};
pub use psk::PskError;
