//! # troupe-tests
//!
//! Owns the cross-crate end-to-end test harness: it starts real `troupe` and
//! `troupe-agent` processes on loopback addresses with their own state
//! directories and sandbox roots, and drives them as an operator would.
//!
//! It must never touch the real host outside temporary directories, nor send
//! traffic anywhere but to loopback (or the harness's own namespaces).

#![forbid(unsafe_code)]
