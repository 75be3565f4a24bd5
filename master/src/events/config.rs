//! The `[events]` table of master.toml.
