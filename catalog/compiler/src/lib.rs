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
mod define;
pub mod diff;
pub mod env_diff;
mod error;
pub mod fleet;
mod fleet_facts;
pub mod secrets;
mod syntax;
mod tree;

pub use compile::{Classification, CompileInfo, CompileOptions, valid_certname};
pub use error::{Error, ErrorKind, Result, SourceFile, Span};
pub use fleet::{FactValue, FleetNode, FleetQuery, FleetSnapshot};
pub use secrets::SecretKeys;
pub use tree::trailing_number;
pub use tree::{EnvTree, Merge, ModuleTree, Site};

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
    fn deep_merge_tables_and_arrays() {
        use serde_json::json;
        let base = json!({"a": 1, "t": {"x": 1, "y": 2}, "l": ["c", "d"]});
        let over = json!({"a": 2, "t": {"y": 3, "z": 4}, "l": ["b", "c"]});
        assert_eq!(
            data::deep_merge(base, over),
            json!({"a": 2, "t": {"x": 1, "y": 3, "z": 4}, "l": ["b", "c", "d"]})
        );
    }

    #[test]
    fn relative_names_and_expressions() {
        assert!(tree::check_relative_name("nginx/site.conf.j2").is_ok());
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a//b",
            "./a",
            "a\\b",
        ] {
            assert!(tree::check_relative_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            tree::whole_expression("{{ params.list }}"),
            Some("params.list")
        );
        assert_eq!(tree::whole_expression("{{x}}"), Some("x"));
        assert_eq!(tree::whole_expression("{{ x }}\n"), None);
        assert_eq!(tree::whole_expression("a {{ x }}"), None);
        assert_eq!(tree::whole_expression("{{ a }}{{ b }}"), None);
    }

    #[test]
    fn secret_keys_debug_shows_no_key() {
        let mut k = SecretKeys::new();
        let id = age::x25519::Identity::generate();
        use age::secrecy::ExposeSecret;
        let text = id.to_string().expose_secret().to_owned();
        k.insert_str("production", &text).unwrap();
        let dbg = format!("{k:?}");
        assert!(dbg.contains("production"));
        assert!(!dbg.contains("AGE-SECRET-KEY"), "{dbg}");
        // Round trip through the data-file form.
        let toml = secrets::encrypt_to_toml(&id.to_public(), "production", b"s3cret").unwrap();
        let b64 = toml.split('"').nth(3).unwrap();
        assert_eq!(secrets::decrypt(&k, "production", b64).unwrap(), "s3cret");
        assert_eq!(
            secrets::decrypt(&k, "development", b64).unwrap_err().kind(),
            ErrorKind::Secret
        );
    }

    #[test]
    fn certnames() {
        assert!(valid_certname("web4.example.com"));
        assert!(!valid_certname("Web4"));
        assert!(!valid_certname("../x"));
        assert!(!valid_certname(""));
    }
}
