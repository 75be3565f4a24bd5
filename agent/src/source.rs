//! Where catalogs and file contents come from, and where reports go.
//! Pluggable so that the master client (mTLS) can be added beside the local
//! file source without touching the converge engine.

use anyhow::Context;
use std::borrow::Cow;
use std::path::PathBuf;
use troupe_catalog::LazyCatalog;
use troupe_catalog::report::Report;

/// What a catalog source returned.
pub enum Fetched {
    /// A new catalog (already validated), kept as its JSON.
    Catalog(Box<LazyCatalog>),
    /// The source says the agent's cached catalog (by hash) is current.
    Unchanged,
}

/// A source of catalogs (a file now; the master over mTLS later).
pub trait CatalogSource {
    /// For logs and the run summary (`file:/path`, `master:https://...`).
    fn describe(&self) -> String;
    /// Fetches this node's catalog. `cached_hash` lets a source answer
    /// [`Fetched::Unchanged`] instead of resending the same catalog.
    fn fetch(
        &mut self,
        facts: &serde_json::Value,
        cached_hash: Option<&str>,
    ) -> anyhow::Result<Fetched>;
    /// Called before each run, outside the run lock: the master client
    /// refreshes the CRL and renews the certificate when due.
    fn before_run(&mut self) {}
    /// Whether a failed fetch may fall back to the cached catalog (not when
    /// the run asked for something specific, like another environment).
    fn cache_fallback(&self) -> bool {
        true
    }
    /// Runs are disabled (`troupe-agent disable`): tell the master, which
    /// shows the node as disabled rather than stale. A source without a
    /// master does nothing; a failure is only logged.
    fn checkin_disabled(&mut self, _reason: &str, _since: &str) {}
}

/// A catalog JSON file as written by `Catalog::to_canonical_json`, read as
/// a stream into a spill file of the state directory `state`
/// ([`crate::state::spill`]).
pub struct FileSource {
    pub path: PathBuf,
    pub state: PathBuf,
}

impl CatalogSource for FileSource {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }
    fn fetch(
        &mut self,
        _facts: &serde_json::Value,
        _cached: Option<&str>,
    ) -> anyhow::Result<Fetched> {
        let mut f = std::fs::File::open(&self.path)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let cat = LazyCatalog::from_file(&mut f, crate::state::spill(&self.state))
            .with_context(|| format!("catalog {} is invalid", self.path.display()))?;
        Ok(Fetched::Catalog(Box::new(cat)))
    }
}

/// File bodies by SHA-256 (the catalog's content table now; fetched from
/// the master by hash later).
pub trait ContentSource {
    fn get(&self, sha256: &str) -> anyhow::Result<Cow<'_, [u8]>>;
    /// An upper bound of the body's size without fetching it, when the
    /// source knows one cheaply.
    fn len_bound(&self, _sha256: &str) -> Option<usize> {
        None
    }
}

/// Bodies from the catalog's own content table (hashes were checked when
/// the catalog was decoded), each decoded when asked for.
pub struct CatalogContents<'a>(pub &'a LazyCatalog);

impl ContentSource for CatalogContents<'_> {
    fn get(&self, sha256: &str) -> anyhow::Result<Cow<'_, [u8]>> {
        self.0
            .content(sha256)
            .map(Cow::Owned)
            .with_context(|| format!("content {sha256} is not in the catalog"))
    }
    fn len_bound(&self, sha256: &str) -> Option<usize> {
        self.0.content_len_bound(sha256)
    }
}

/// Where reports are delivered (the master later). Reports that could not
/// be delivered stay queued in the state database and are retried on the
/// next run.
pub trait ReportSink {
    fn describe(&self) -> String;
    fn send(&mut self, report: &Report) -> anyhow::Result<()>;
    /// Called at the start of each run (e.g. to drop a connection kept from
    /// the previous one, which may be dead by now).
    fn new_run(&mut self) {}
}
