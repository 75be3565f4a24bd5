//! The master's in-memory serving state: per node, the latest compiled
//! catalog and what it was compiled from, what it was last served (file
//! bodies are served only from that), and check-ins not yet written to the
//! store. Owned by [`crate::state::MasterState`], filled by
//! [`crate::catalog_service`].

use crate::store::Checkin;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use troupe_catalog::Catalog;

/// A compiled catalog, ready to serve.
pub struct Compiled {
    pub hash: String,
    pub json: Vec<u8>,
    pub catalog: Catalog,
    pub role: String,
}

/// What a cached catalog was compiled from; it is reused only when all of
/// it matches.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CacheKey {
    pub(crate) facts: [u8; 32],
    pub(crate) environment: String,
    pub(crate) generation: u64,
    /// The fleet snapshot's generation, for a catalog that used `fleet()`.
    pub(crate) fleet: Option<u64>,
}

/// In-memory serving state: compiled catalogs, what each node was last
/// served, check-ins not yet written.
#[derive(Default)]
pub struct CatalogCache {
    /// Per node: the latest compiled catalog and what it was compiled from.
    pub(crate) compiled: Mutex<HashMap<String, (CacheKey, Arc<Compiled>)>>,
    pub(crate) served: Mutex<HashMap<String, Arc<Compiled>>>,
    pub(crate) checkins: Mutex<HashMap<String, Checkin>>,
    /// What templates' `fleet()` sees.
    pub fleet: crate::fleet_data::FleetData,
}

impl CatalogCache {
    /// Takes the check-ins recorded since the last call.
    pub fn drain_checkins(&self) -> Vec<Checkin> {
        let mut g = lock(&self.checkins);
        g.drain().map(|(_, c)| c).collect()
    }
    pub(crate) fn served(&self, node: &str) -> Option<Arc<Compiled>> {
        lock(&self.served).get(node).cloned()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
