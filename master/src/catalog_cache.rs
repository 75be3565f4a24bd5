//! The master's in-memory serving state: per node, the latest compiled
//! catalog and what it was compiled from (its file bodies are served only
//! from that), and check-ins not yet written to the store. Owned by
//! [`crate::state::MasterState`], filled by [`crate::catalog_service`].
//!
//! Memory does not grow with a copy of everything per node:
//! - the cache keeps what a check-in needs (the catalog's hash, role and
//!   environment) and the bodies the node may fetch, not the catalog JSON:
//!   that is sent right after the compile, and an agent that lacks it
//!   while the cache says "unchanged" gets a fresh compile;
//! - file bodies are shared by SHA-256 across nodes: a thousand nodes with
//!   the same `/etc/motd` hold one copy;
//! - the whole cache is bounded in bytes (`catalog_cache_bytes`, see
//!   [`DEFAULT_CACHE_BYTES`]): past the bound the least recently used nodes
//!   are evicted (their next check-in recompiles).

use crate::store::Checkin;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use troupe_catalog::{Blob, Catalog};

/// Default bound of the compiled-catalog cache (`catalog_cache_bytes`):
/// 256 MiB, about 100,000 nodes of the shipped roles.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// Bytes charged per cached node on top of its strings and body
/// references: the map slots and allocation headers.
const ENTRY_OVERHEAD: usize = 160;
/// Bytes charged per shared body on top of its data.
const BODY_OVERHEAD: usize = 128;

/// Bodies at least this long are kept deflated when that saves a quarter.
const DEFLATE_MIN: usize = 512;
/// zlib's level 6 trade-off is made for archives; configuration text
/// gains little past level 3, and a compile pays for it.
const DEFLATE_LEVEL: u8 = 3;

/// A file body, held once however many cached catalogs reference it.
/// Bodies are cold: an agent fetches one only after a new catalog, and
/// only when its own copy differs. So a large one is kept deflated
/// (rendered configuration text shrinks 4-10x) and inflated per request.
pub struct Body {
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    data: Stored,
}

enum Stored {
    /// The body as the catalog's content table holds it.
    Plain(Blob),
    /// The bytes, deflated (raw DEFLATE), and their length.
    Deflated { deflated: Box<[u8]>, len: usize },
}

/// Bytes charged for one shared body: its data, its hash (twice: the
/// table's key too) and the allocations around it.
fn body_bytes(b: &Body) -> usize {
    2 * b.sha256.len() + b.data_len() + BODY_OVERHEAD
}

impl Body {
    fn new(sha256: String, blob: Blob) -> Body {
        let len = match &blob {
            Blob::Utf8(s) | Blob::Base64(s) => s.len(),
        };
        if len >= DEFLATE_MIN
            && let Some(bytes) = blob.bytes()
        {
            let deflated = miniz_oxide::deflate::compress_to_vec(&bytes, DEFLATE_LEVEL);
            if deflated.len() <= bytes.len() - bytes.len() / 4 {
                return Body {
                    sha256,
                    data: Stored::Deflated {
                        deflated: deflated.into_boxed_slice(),
                        len: bytes.len(),
                    },
                };
            }
        }
        Body {
            sha256,
            data: Stored::Plain(blob),
        }
    }

    /// Bytes held for the body's data.
    fn data_len(&self) -> usize {
        match &self.data {
            Stored::Plain(Blob::Utf8(s) | Blob::Base64(s)) => s.len(),
            Stored::Deflated { deflated, .. } => deflated.len(),
        }
    }

    /// The body's bytes (`None` for a malformed base64 body).
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match &self.data {
            Stored::Plain(b) => b.bytes(),
            Stored::Deflated { deflated, len } => {
                miniz_oxide::inflate::decompress_to_vec_with_limit(deflated, *len)
                    .ok()
                    .filter(|v| v.len() == *len)
            }
        }
    }

    /// Whether the body is held deflated.
    pub fn is_deflated(&self) -> bool {
        matches!(self.data, Stored::Deflated { .. })
    }
}

/// A compiled catalog as the cache keeps it.
pub struct Compiled {
    /// `sha256:` hash of the canonical JSON.
    pub hash: String,
    /// The environment it was compiled in.
    pub environment: String,
    /// The node's role.
    pub role: String,
    /// The bodies it references, sorted by hash (shared across nodes).
    bodies: Box<[Arc<Body>]>,
}

impl Compiled {
    /// The bytes of a body this catalog references, `None` for any other
    /// hash (or a body whose base64 is malformed).
    pub fn body(&self, sha256: &str) -> Option<Vec<u8>> {
        let i = self
            .bodies
            .binary_search_by(|b| b.sha256.as_str().cmp(sha256))
            .ok()?;
        self.bodies[i].bytes()
    }

    /// How many bodies it references.
    pub fn body_count(&self) -> usize {
        self.bodies.len()
    }

    /// Bytes charged to the node for this entry (its own strings and body
    /// references; the bodies are charged once, in the shared table).
    fn own_bytes(&self, node: &str, key: &CacheKey) -> usize {
        ENTRY_OVERHEAD
            + node.len()
            + key.environment.len()
            + self.hash.len()
            + self.environment.len()
            + self.role.len()
            + self.bodies.len() * std::mem::size_of::<Arc<Body>>()
            + key.fleet.as_ref().map_or(0, |d| d.heap_bytes())
    }
}

/// What a cached catalog was compiled from; it is reused only when all of
/// it matches.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct CacheKey {
    pub(crate) facts: [u8; 32],
    pub(crate) environment: String,
    pub(crate) generation: u64,
    /// For a catalog that used `fleet()`: what it read, and the snapshot
    /// generation it is known current under.
    pub(crate) fleet: Option<crate::fleet_data::FleetDep>,
}

struct Entry {
    key: CacheKey,
    compiled: Arc<Compiled>,
    bytes: usize,
    used: u64,
}

/// The cached catalogs and their shared bodies, with the bytes charged.
struct Inner {
    nodes: HashMap<String, Entry>,
    bodies: HashMap<String, Arc<Body>>,
    bytes: usize,
    limit: usize,
    clock: u64,
}

/// In-memory serving state: compiled catalogs (bounded in bytes), check-ins
/// not yet written.
pub struct CatalogCache {
    inner: Mutex<Inner>,
    pub(crate) checkins: Mutex<HashMap<String, Checkin>>,
    /// What templates' `fleet()` sees.
    pub fleet: crate::fleet_data::FleetData,
}

impl Default for CatalogCache {
    fn default() -> Self {
        CatalogCache::new(DEFAULT_CACHE_BYTES)
    }
}

/// What [`CatalogCache::stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Nodes with a cached catalog.
    pub nodes: usize,
    /// Distinct bodies held (each once).
    pub bodies: usize,
    /// Bytes charged against the bound.
    pub bytes: usize,
    /// The bound.
    pub limit: usize,
}

impl CatalogCache {
    /// An empty cache holding at most `limit` bytes.
    pub fn new(limit: u64) -> CatalogCache {
        CatalogCache {
            inner: Mutex::new(Inner {
                nodes: HashMap::new(),
                bodies: HashMap::new(),
                bytes: 0,
                limit: usize::try_from(limit).unwrap_or(usize::MAX),
                clock: 0,
            }),
            checkins: Mutex::default(),
            fleet: Default::default(),
        }
    }

    /// Takes the check-ins recorded since the last call.
    pub fn drain_checkins(&self) -> Vec<Checkin> {
        let mut g = lock(&self.checkins);
        g.drain().map(|(_, c)| c).collect()
    }

    /// The catalog `node` was last served, while it is cached.
    pub fn served(&self, node: &str) -> Option<Arc<Compiled>> {
        lock(&self.inner)
            .nodes
            .get(node)
            .map(|e| e.compiled.clone())
    }

    /// Sizes, for metrics and tests.
    pub fn stats(&self) -> CacheStats {
        let g = lock(&self.inner);
        CacheStats {
            nodes: g.nodes.len(),
            bodies: g.bodies.len(),
            bytes: g.bytes,
            limit: g.limit,
        }
    }

    /// The cached catalog of `node` when it was compiled from `key`'s
    /// facts, environment and code (and, for a catalog that used
    /// `fleet()`, when `fleet_current` finds what it read unchanged: it
    /// returns the fleet generation the entry is then current under).
    pub(crate) fn get(
        &self,
        node: &str,
        key: &CacheKey,
        fleet_current: impl FnOnce(&crate::fleet_data::FleetDep) -> Option<u64>,
    ) -> Option<Arc<Compiled>> {
        let mut g = lock(&self.inner);
        g.clock += 1;
        let now = g.clock;
        let e = g.nodes.get_mut(node)?;
        let k = &mut e.key;
        if !(k.facts == key.facts
            && k.environment == key.environment
            && k.generation == key.generation)
        {
            return None;
        }
        if let Some(dep) = &mut k.fleet {
            dep.generation = fleet_current(dep)?;
        }
        e.used = now;
        Some(e.compiled.clone())
    }

    /// Caches `catalog` (compiled from `key`, hashing to `hash`) as the
    /// current one of `node`, taking its bodies into the shared table, and
    /// evicts the least recently used nodes while over the bound. Returns
    /// what was cached. A single catalog larger than the whole bound is
    /// returned but not kept.
    pub(crate) fn insert(
        &self,
        node: &str,
        key: CacheKey,
        hash: String,
        role: String,
        catalog: Catalog,
    ) -> Arc<Compiled> {
        // BTreeMap: the bodies come sorted by hash. Bodies the table lacks
        // are prepared (deflated) outside the lock, so compiles on other
        // threads do not wait for that.
        let known: Vec<Option<Arc<Body>>> = {
            let g = lock(&self.inner);
            catalog
                .contents
                .keys()
                .map(|h| g.bodies.get(h).cloned())
                .collect()
        };
        let prepared: Vec<Arc<Body>> = catalog
            .contents
            .into_iter()
            .zip(known)
            .map(|((sha256, blob), k)| k.unwrap_or_else(|| Arc::new(Body::new(sha256, blob))))
            .collect();
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        if let Some(old) = inner.nodes.remove(node) {
            inner.bytes -= old.bytes;
            inner.release(old.compiled);
        }
        let mut bodies: Vec<Arc<Body>> = Vec::with_capacity(prepared.len());
        let mut fresh: Vec<usize> = Vec::new();
        let mut new_bytes = 0usize;
        for b in prepared {
            match inner.bodies.get(&b.sha256) {
                // Held already (maybe added by another compile meanwhile).
                Some(held) => bodies.push(held.clone()),
                None => {
                    new_bytes += body_bytes(&b);
                    fresh.push(bodies.len());
                    bodies.push(b);
                }
            }
        }
        let compiled = Arc::new(Compiled {
            hash,
            environment: catalog.environment,
            role,
            bodies: bodies.into_boxed_slice(),
        });
        let own = compiled.own_bytes(node, &key);
        if own + new_bytes > inner.limit {
            if inner.limit == 0 {
                return compiled;
            }
            tracing::warn!(
                node,
                "the catalog of {node} needs {} bytes of cache, more than catalog_cache_bytes \
                 ({}): it is not cached (each check-in recompiles it; raise catalog_cache_bytes)",
                own + new_bytes,
                inner.limit
            );
            return compiled;
        }
        for &i in &fresh {
            let b = &compiled.bodies[i];
            inner.bodies.insert(b.sha256.clone(), b.clone());
        }
        inner.bytes += new_bytes;
        inner.clock += 1;
        let used = inner.clock;
        inner.bytes += own;
        inner.nodes.insert(
            node.to_owned(),
            Entry {
                key,
                compiled: compiled.clone(),
                bytes: own,
                used,
            },
        );
        if inner.bytes > inner.limit {
            inner.evict(node);
        }
        compiled
    }
}

impl Inner {
    /// Drops one reference to `compiled`; bodies nothing else references
    /// leave the shared table.
    fn release(&mut self, compiled: Arc<Compiled>) {
        let hashes: Vec<String> = compiled.bodies.iter().map(|b| b.sha256.clone()).collect();
        drop(compiled);
        for h in hashes {
            self.drop_if_unused(&h);
        }
    }

    fn drop_if_unused(&mut self, sha256: &str) {
        if let Some(b) = self.bodies.get(sha256)
            && Arc::strong_count(b) == 1
        {
            let freed = body_bytes(b);
            self.bodies.remove(sha256);
            self.bytes -= freed;
        }
    }

    /// Brings the charged bytes down to 7/8 of the bound (so eviction runs
    /// once per many inserts), least recently used nodes first, never
    /// `keep` (the node just inserted) unless it is the last one left.
    fn evict(&mut self, keep: &str) {
        // Bodies a request still held when their last catalog went.
        let idle: Vec<String> = self
            .bodies
            .iter()
            .filter(|(_, b)| Arc::strong_count(b) == 1)
            .map(|(h, _)| h.clone())
            .collect();
        for h in idle {
            self.drop_if_unused(&h);
        }
        let target = self.limit - self.limit / 8;
        if self.bytes <= target {
            return;
        }
        let mut order: Vec<(u64, String)> = self
            .nodes
            .iter()
            .filter(|(n, _)| n.as_str() != keep)
            .map(|(n, e)| (e.used, n.clone()))
            .collect();
        order.sort_unstable();
        let before = self.nodes.len();
        for (_, node) in order {
            if self.bytes <= target {
                break;
            }
            if let Some(e) = self.nodes.remove(&node) {
                self.bytes -= e.bytes;
                self.release(e.compiled);
            }
        }
        tracing::info!(
            "catalog cache over catalog_cache_bytes ({}): evicted {} of {before} nodes' catalogs \
             (least recently used; they recompile at their next check-in)",
            self.limit,
            before - self.nodes.len()
        );
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> CacheKey {
        CacheKey {
            facts: [n; 32],
            environment: String::new(),
            generation: 1,
            fleet: None,
        }
    }

    fn catalog(node: &str, bodies: &[&[u8]]) -> Catalog {
        let mut c = Catalog::new(node, "production", "v1");
        for b in bodies {
            c.add_content(b);
        }
        c
    }

    /// `len` bytes no compressor shrinks (SHA-256 chained from `seed`).
    fn noise(seed: usize, len: usize) -> Vec<u8> {
        use sha2::Digest;
        let mut out = Vec::with_capacity(len + 32);
        let mut h: [u8; 32] = sha2::Sha256::digest(seed.to_le_bytes()).into();
        while out.len() < len {
            out.extend_from_slice(&h);
            h = sha2::Sha256::digest(h).into();
        }
        out.truncate(len);
        out
    }

    #[test]
    fn large_bodies_are_held_deflated_and_served_whole() {
        let cache = CatalogCache::new(DEFAULT_CACHE_BYTES);
        // A rendered config: 400 backend lines, 12 KiB.
        let conf: String = (0..400)
            .map(|i| format!("    server web{i} web{i}.example.com:80 check\n"))
            .collect();
        let rnd = noise(1, 4096);
        let c = put(&cache, "lb1", &[conf.as_bytes(), &rnd, b"short"]);
        let by = |b: &[u8]| {
            let h = troupe_catalog::sha256_hex(b);
            c.bodies.iter().find(|x| x.sha256 == h).unwrap().clone()
        };
        assert!(by(conf.as_bytes()).is_deflated());
        assert!(!by(&rnd).is_deflated(), "incompressible: kept as is");
        assert!(!by(b"short").is_deflated());
        for b in [conf.as_bytes(), &rnd[..], &b"short"[..]] {
            assert_eq!(c.body(&troupe_catalog::sha256_hex(b)).unwrap(), b);
        }
        // Charged for what is held: the config's deflated size.
        let s = cache.stats();
        assert!(
            s.bytes < conf.len() / 3 + rnd.len() + 2048,
            "{} bytes charged for a {} byte config",
            s.bytes,
            conf.len()
        );
    }

    fn put(cache: &CatalogCache, node: &str, bodies: &[&[u8]]) -> Arc<Compiled> {
        let c = catalog(node, bodies);
        let hash = c.hash();
        cache.insert(node, key(1), hash, "web".into(), c)
    }

    #[test]
    fn identical_bodies_are_held_once_across_nodes() {
        let cache = CatalogCache::new(DEFAULT_CACHE_BYTES);
        let motd = vec![b'm'; 4096];
        let conf = b"listen 80\n".to_vec();
        for i in 0..1000 {
            let own = format!("host {i}\n");
            put(&cache, &format!("n{i}"), &[&motd, &conf, own.as_bytes()]);
        }
        let s = cache.stats();
        assert_eq!(s.nodes, 1000);
        // Two shared bodies plus one per node, not three per node.
        assert_eq!(s.bodies, 1002);
        // The 4 KiB body is charged once: well under one copy per node.
        assert!(s.bytes < 1000 * 1024, "{} bytes for 1,000 nodes", s.bytes);
        let a = cache.served("n1").unwrap();
        let b = cache.served("n999").unwrap();
        let sha = troupe_catalog::sha256_hex(&motd);
        let ia = a.bodies.iter().position(|x| x.sha256 == sha).unwrap();
        let ib = b.bodies.iter().position(|x| x.sha256 == sha).unwrap();
        assert!(Arc::ptr_eq(&a.bodies[ia], &b.bodies[ib]));
        assert_eq!(a.body(&sha).unwrap(), motd);
        // Another node's own body is not this node's to fetch.
        assert!(a.body(&troupe_catalog::sha256_hex(b"host 999\n")).is_none());
        assert_eq!(
            b.body(&troupe_catalog::sha256_hex(b"host 999\n")).unwrap(),
            b"host 999\n"
        );
    }

    #[test]
    fn inserting_past_the_byte_bound_evicts_least_recently_used() {
        let limit = 64 * 1024;
        let cache = CatalogCache::new(limit);
        for i in 0..1000 {
            let body = noise(i, 1024); // 1 KiB, distinct, incompressible
            put(&cache, &format!("n{i}"), &[&body]);
            // n0 is used on every round, so it is never the least recent.
            assert!(
                cache.get("n0", &key(1), |_| None).is_some(),
                "n0 evicted at {i}"
            );
            let s = cache.stats();
            assert!(s.bytes <= limit as usize, "{} > {limit} after {i}", s.bytes);
            assert!(cache.served(&format!("n{i}")).is_some());
        }
        let s = cache.stats();
        assert!(s.nodes > 10 && s.nodes < 64, "{} nodes cached", s.nodes);
        assert_eq!(s.bodies, s.nodes, "evicted nodes' bodies are freed");
        assert!(cache.served("n1").is_none());
        assert!(cache.served("n998").is_some());
    }

    #[test]
    fn replacing_a_catalog_frees_bodies_only_it_held() {
        let cache = CatalogCache::new(DEFAULT_CACHE_BYTES);
        put(&cache, "a", &[b"shared", b"old a"]);
        put(&cache, "b", &[b"shared"]);
        let before = cache.stats();
        assert_eq!(before.bodies, 2);
        put(&cache, "a", &[b"shared", b"new a"]);
        let s = cache.stats();
        assert_eq!(s.bodies, 2);
        assert_eq!(s.bytes, before.bytes, "same sizes, same charge");
        let a = cache.served("a").unwrap();
        assert!(a.body(&troupe_catalog::sha256_hex(b"old a")).is_none());
        assert!(a.body(&troupe_catalog::sha256_hex(b"new a")).is_some());
        // A different key misses; the same key hits.
        assert!(cache.get("a", &key(2), |_| None).is_none());
        assert_eq!(cache.get("a", &key(1), |_| None).unwrap().hash, a.hash);
    }

    #[test]
    fn a_catalog_larger_than_the_bound_is_served_but_not_kept() {
        let cache = CatalogCache::new(4096);
        put(&cache, "small", &[b"x"]);
        let before = cache.stats();
        let big = noise(7, 8192);
        let c = put(&cache, "big", &[&big]);
        assert_eq!(c.body(&troupe_catalog::sha256_hex(&big)).unwrap(), big);
        assert!(cache.served("big").is_none());
        assert_eq!(cache.stats(), before);
    }
}
