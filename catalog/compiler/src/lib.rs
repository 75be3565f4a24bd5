//! # troupe-compiler
//!
//! Owns Troupe's language: reading a module tree (site, roles, profiles,
//! templates, data hierarchy, encrypted secrets), classifying a node, and
//! compiling a host's facts into its [`troupe_catalog::Catalog`].
//!
//! Use: [`ModuleTree::load`] reads and checks a whole tree once (it is
//! `Send + Sync`; build a new one off to the side and swap an `Arc`);
//! [`ModuleTree::classify`] gives a node's role and environment;
//! [`ModuleTree::compile`] is pure and fast: no file system, no clock, the
//! same inputs give a byte-identical catalog.
//!
//! It must never: run commands or read files outside the module tree (from
//! templates or otherwise); log or emit a decrypted secret except inside a
//! resource marked sensitive; panic on any module tree, however malformed.
//! It is linked into the master only, never into the agent.

#![forbid(unsafe_code)]

pub mod cli;
mod compile;
pub mod data;
pub mod diff;
mod error;
pub mod secrets;
mod syntax;
mod tree;

pub use compile::{Classification, CompileOptions, trailing_number, valid_certname};
pub use error::{Error, ErrorKind, Result, SourceFile, Span};
pub use secrets::SecretKeys;
pub use tree::{EnvTree, Merge, ModuleTree};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn tree_is_send_sync() {
        assert_send_sync::<ModuleTree>();
        assert_send_sync::<std::sync::Arc<ModuleTree>>();
        assert_send_sync::<Error>();
    }

    #[test]
    fn trailing_numbers_and_zones() {
        assert_eq!(trailing_number("web4"), Some(4));
        assert_eq!(trailing_number("db-12"), Some(12));
        assert_eq!(trailing_number("bastion"), None);
        assert_eq!(trailing_number(""), None);
        assert_eq!(trailing_number("99999999999999999999999"), None);
    }

    #[test]
    fn certnames() {
        assert!(valid_certname("web4.example.com"));
        assert!(!valid_certname("Web4"));
        assert!(!valid_certname("../x"));
        assert!(!valid_certname(""));
    }
}
