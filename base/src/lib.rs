//! # troupe-base
//!
//! Owns the small pieces every other Troupe crate shares, so each has one
//! implementation:
//!
//! - [`fs`]: atomic file writes (temp file in the same directory, rename;
//!   durable or not, replacing or refusing to replace, with the mode set
//!   from the start);
//! - [`audit`]: the append-only, hash-chained, fsync'd audit log and its
//!   verifier (the agent's and master's command logs, the master's access
//!   log, the certificate authority's log);
//! - [`redb_file`]: creating a redb file so that a killed creation never
//!   leaves one that cannot be opened (temp name, sync, link into place);
//! - [`reopen`]: the redb handle that reopens itself after a failed write
//!   (a full disk);
//! - [`cli`]: the one-line error format both binaries print, and their
//!   quiet exit (141) when the reader of stdout has gone;
//! - [`error_code`]: the typed error codes carried next to error messages
//!   on the admin socket and gRPC, so programs branch on codes, never text;
//! - [`facts`]: flattened facts and the `--where FACT=VALUE` matcher that
//!   `troupe nodes` and `troupe run`/`deploy` share;
//! - `test_fs` (feature `test-fs`, dev-dependencies only): a small tmpfs
//!   for tests that fill a disk.
//!
//! It must never: depend on another Troupe crate (everything depends on
//! it); hold policy, trust or protocol decisions (those belong to the crates
//! that own them); leave a half-written file; panic on bytes from disk.

#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod error_code;
pub mod facts;
pub mod fs;
pub mod redb_file;
pub mod reopen;
#[cfg(any(test, feature = "test-fs"))]
#[doc(hidden)]
pub mod test_fs;
pub mod trust;
