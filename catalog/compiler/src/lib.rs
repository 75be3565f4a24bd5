//! # troupe-compiler
//!
//! Owns Troupe's language: reading a module tree (site, roles, profiles,
//! templates, data hierarchy, encrypted secrets), classifying a node, and
//! compiling a host's facts into its [`troupe_catalog::Catalog`].
//!
//! It must never: run commands or read files outside the module tree (from
//! templates or otherwise); log or emit a decrypted secret except inside a
//! resource marked sensitive; panic on any module tree, however malformed.
//! It is linked into the master only, never into the agent.

#![forbid(unsafe_code)]

pub mod cli;
