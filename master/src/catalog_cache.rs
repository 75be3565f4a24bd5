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
//! - large bodies are split into chunks at content-defined line boundaries
//!   and the chunks are shared by SHA-256 too: bodies that differ in a few
//!   lines (a load balancer's config naming its own host above the same
//!   2,500 backends, or listing one more backend than the last compile's)
//!   hold their common lines once (see [`split_chunks`]);
//! - the whole cache is bounded in bytes (`catalog_cache_bytes`, see
//!   [`DEFAULT_CACHE_BYTES`]): past the bound the least recently used nodes
//!   are evicted (their next check-in recompiles).

use crate::store::Checkin;
use sha2::Digest;
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

/// Bodies at least this long are split into shared chunks.
const CHUNKED_MIN: usize = 4096;
/// A chunk ends after a line whose hash has these bits clear (one line in
/// 32 on average: ~2 KB chunks of configuration text)...
const CHUNK_MASK: u64 = 31;
/// ... once it holds at least this many bytes ...
const CHUNK_MIN: usize = 512;
/// ... and at the latest at this many (inside a line if need be).
const CHUNK_MAX: usize = 16 * 1024;
/// Bytes charged per shared chunk on top of its data.
const CHUNK_OVERHEAD: usize = 96;

/// Where `bytes` is cut into chunks: the end offset of each. Boundaries
/// depend only on the lines before them (a line ends a chunk when its hash
/// says so), so two bodies that differ in one line are cut alike before
/// and after it and share every chunk but one. Bytes without newlines are
/// cut every [`CHUNK_MAX`].
pub(crate) fn split_chunks(bytes: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut start = 0usize;
    // FNV-1a of the current line.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, &b) in bytes.iter().enumerate() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        let len = i + 1 - start;
        if b == b'\n' {
            if len >= CHUNK_MIN && (h >> 20) & CHUNK_MASK == 0 {
                ends.push(i + 1);
                start = i + 1;
            }
            h = 0xcbf2_9ce4_8422_2325;
        } else if len >= CHUNK_MAX {
            ends.push(i + 1);
            start = i + 1;
        }
    }
    if start < bytes.len() || ends.is_empty() {
        ends.push(bytes.len());
    }
    ends
}

/// Bytes, kept deflated when that saves a quarter.
enum Packed {
    Raw(Box<[u8]>),
    Deflated { deflated: Box<[u8]>, len: usize },
}

impl Packed {
    fn new(bytes: &[u8]) -> Packed {
        if bytes.len() >= DEFLATE_MIN {
            let deflated = miniz_oxide::deflate::compress_to_vec(bytes, DEFLATE_LEVEL);
            if deflated.len() <= bytes.len() - bytes.len() / 4 {
                return Packed::Deflated {
                    deflated: deflated.into_boxed_slice(),
                    len: bytes.len(),
                };
            }
        }
        Packed::Raw(bytes.into())
    }

    fn held(&self) -> usize {
        match self {
            Packed::Raw(b) => b.len(),
            Packed::Deflated { deflated, .. } => deflated.len(),
        }
    }

    fn append_to(&self, out: &mut Vec<u8>) -> Option<()> {
        match self {
            Packed::Raw(b) => out.extend_from_slice(b),
            Packed::Deflated { deflated, len } => {
                let v = miniz_oxide::inflate::decompress_to_vec_with_limit(deflated, *len).ok()?;
                if v.len() != *len {
                    return None;
                }
                out.extend_from_slice(&v);
            }
        }
        Some(())
    }
}

/// A piece of one or more large bodies, held once (keyed by the SHA-256
/// of its bytes).
pub(crate) struct Chunk {
    sha256: [u8; 32],
    data: Packed,
}

/// Bytes charged for one shared chunk.
fn chunk_bytes(c: &Chunk) -> usize {
    c.data.held() + CHUNK_OVERHEAD
}

/// A large body cut into chunks (not yet sharing any), ready to be held.
pub(crate) struct Pieces {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    hashes: Vec<[u8; 32]>,
}

impl Pieces {
    fn new(bytes: Vec<u8>) -> Pieces {
        let ends = split_chunks(&bytes);
        let mut start = 0;
        let hashes = ends
            .iter()
            .map(|&end| {
                let h: [u8; 32] = sha2::Sha256::digest(&bytes[start..end]).into();
                start = end;
                h
            })
            .collect();
        Pieces {
            bytes,
            ends,
            hashes,
        }
    }

    /// The chunks, taking those `known` has (by position) and packing the
    /// others (deflating: call without the cache's lock).
    fn chunks(&self, known: Vec<Option<Arc<Chunk>>>) -> Box<[Arc<Chunk>]> {
        let mut start = 0;
        self.ends
            .iter()
            .zip(&self.hashes)
            .zip(known)
            .map(|((&end, h), k)| {
                let piece = &self.bytes[start..end];
                start = end;
                k.unwrap_or_else(|| {
                    Arc::new(Chunk {
                        sha256: *h,
                        data: Packed::new(piece),
                    })
                })
            })
            .collect()
    }
}

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
    /// A large body: its chunks (shared with other bodies), in order.
    Chunked {
        chunks: Box<[Arc<Chunk>]>,
        len: usize,
    },
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

    /// Bytes held for the body's data (for a chunked one, its references:
    /// the chunks are charged once, in the shared chunk table).
    fn data_len(&self) -> usize {
        match &self.data {
            Stored::Plain(Blob::Utf8(s) | Blob::Base64(s)) => s.len(),
            Stored::Deflated { deflated, .. } => deflated.len(),
            Stored::Chunked { chunks, .. } => chunks.len() * std::mem::size_of::<Arc<Chunk>>(),
        }
    }

    /// The chunks of a chunked body (empty for any other).
    fn chunks(&self) -> &[Arc<Chunk>] {
        match &self.data {
            Stored::Chunked { chunks, .. } => chunks,
            _ => &[],
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
            Stored::Chunked { chunks, len } => {
                let mut out = Vec::with_capacity(*len);
                for c in chunks.iter() {
                    c.data.append_to(&mut out)?;
                }
                (out.len() == *len).then_some(out)
            }
        }
    }

    /// Whether the body is held as shared chunks.
    pub fn is_chunked(&self) -> bool {
        matches!(self.data, Stored::Chunked { .. })
    }

    /// Whether the body is held deflated.
    pub fn is_deflated(&self) -> bool {
        matches!(self.data, Stored::Deflated { .. })
    }
}

/// A body of a catalog being inserted, on its way into the cache.
enum Prep {
    /// The cache holds it already.
    Held(Arc<Body>),
    /// Packed (small bodies).
    Ready(Body),
    /// Cut into chunks, not packed yet.
    Pieces(String, Pieces),
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
    /// The chunks of chunked bodies, each once.
    chunks: HashMap<[u8; 32], Arc<Chunk>>,
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
    /// Distinct chunks of chunked bodies held (each once).
    pub chunks: usize,
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
                chunks: HashMap::new(),
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
            chunks: g.chunks.len(),
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
        // The table is keyed by hex text (a catalog holds raw digests).
        let contents: Vec<(String, Blob)> = catalog
            .contents
            .into_iter()
            .map(|(h, b)| (h.to_string(), b))
            .collect();
        let known: Vec<Option<Arc<Body>>> = {
            let g = lock(&self.inner);
            contents
                .iter()
                .map(|(h, _)| g.bodies.get(h).cloned())
                .collect()
        };
        // Large bodies are cut into chunks; the chunks held already are
        // looked up under one lock, the others packed outside it.
        let preps: Vec<Prep> = contents
            .into_iter()
            .zip(known)
            .map(|((sha256, blob), k)| match k {
                Some(b) => Prep::Held(b),
                None => match blob.bytes() {
                    Some(bytes) if bytes.len() >= CHUNKED_MIN => {
                        Prep::Pieces(sha256, Pieces::new(bytes))
                    }
                    _ => Prep::Ready(Body::new(sha256, blob)),
                },
            })
            .collect();
        let known_chunks: Vec<Vec<Option<Arc<Chunk>>>> = {
            let g = lock(&self.inner);
            preps
                .iter()
                .map(|p| match p {
                    Prep::Pieces(_, pc) => {
                        pc.hashes.iter().map(|h| g.chunks.get(h).cloned()).collect()
                    }
                    _ => Vec::new(),
                })
                .collect()
        };
        let prepared: Vec<Arc<Body>> = preps
            .into_iter()
            .zip(known_chunks)
            .map(|(p, kc)| match p {
                Prep::Held(b) => b,
                Prep::Ready(b) => Arc::new(b),
                Prep::Pieces(sha256, pc) => Arc::new(Body {
                    sha256,
                    data: Stored::Chunked {
                        len: pc.bytes.len(),
                        chunks: pc.chunks(kc),
                    },
                }),
            })
            .collect();
        let mut g = lock(&self.inner);
        let inner = &mut *g;
        if let Some(old) = inner.nodes.remove(node) {
            inner.bytes -= old.bytes;
            inner.release(old.compiled);
        }
        let mut bodies: Vec<Arc<Body>> = Vec::with_capacity(prepared.len());
        let mut fresh: Vec<usize> = Vec::new();
        let mut new_chunks: HashMap<[u8; 32], Arc<Chunk>> = HashMap::new();
        let mut new_bytes = 0usize;
        for mut b in prepared {
            match inner.bodies.get(&b.sha256) {
                // Held already (maybe added by another compile meanwhile).
                Some(held) => bodies.push(held.clone()),
                None => {
                    // Chunks another compile added meanwhile: share those.
                    if let Some(body) = Arc::get_mut(&mut b)
                        && let Stored::Chunked { chunks, .. } = &mut body.data
                    {
                        for c in chunks.iter_mut() {
                            if let Some(held) = inner.chunks.get(&c.sha256)
                                && !Arc::ptr_eq(held, c)
                            {
                                *c = held.clone();
                            }
                        }
                    }
                    for c in b.chunks() {
                        if !inner.chunks.contains_key(&c.sha256)
                            && !new_chunks.contains_key(&c.sha256)
                        {
                            new_bytes += chunk_bytes(c);
                            new_chunks.insert(c.sha256, c.clone());
                        }
                    }
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
        inner.chunks.extend(new_chunks);
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
            let gone = self.bodies.remove(sha256);
            self.bytes -= freed;
            // Its chunks that no other body holds leave too.
            if let Some(b) = gone {
                let hashes: Vec<[u8; 32]> = b.chunks().iter().map(|c| c.sha256).collect();
                drop(b);
                for h in hashes {
                    self.drop_chunk_if_unused(&h);
                }
            }
        }
    }

    fn drop_chunk_if_unused(&mut self, sha256: &[u8; 32]) {
        if let Some(c) = self.chunks.get(sha256)
            && Arc::strong_count(c) == 1
        {
            self.bytes -= chunk_bytes(c);
            self.chunks.remove(sha256);
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
        let idle: Vec<[u8; 32]> = self
            .chunks
            .iter()
            .filter(|(_, c)| Arc::strong_count(c) == 1)
            .map(|(h, _)| *h)
            .collect();
        for h in idle {
            self.drop_chunk_if_unused(&h);
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
        let medium = &conf.as_bytes()[..2048];
        let c = put(&cache, "lb1", &[conf.as_bytes(), &rnd, b"short", medium]);
        let by = |b: &[u8]| {
            let h = troupe_catalog::sha256_hex(b);
            c.bodies.iter().find(|x| x.sha256 == h).unwrap().clone()
        };
        assert!(by(conf.as_bytes()).is_chunked(), "large: chunked");
        assert!(by(medium).is_deflated());
        assert!(by(&rnd).is_chunked(), "large: chunked");
        assert!(!by(b"short").is_deflated());
        assert!(!by(b"short").is_chunked());
        for b in [conf.as_bytes(), &rnd[..], &b"short"[..], medium] {
            assert_eq!(c.body(&troupe_catalog::sha256_hex(b)).unwrap(), b);
        }
        // Charged for what is held: the config's deflated chunks.
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

    /// A load balancer's config: its own name on top, then `backends`.
    fn lb_conf(host: &str, backends: impl Iterator<Item = usize>) -> String {
        let mut s = format!("# This host is {host}\nglobal\n    maxconn 4096\n\nlisten web\n");
        for i in backends {
            s.push_str(&format!(
                "    server web{i}.fleet.example.com web{i}.fleet.example.com:80 check\n"
            ));
        }
        s
    }

    #[test]
    fn chunk_boundaries_after_a_change_are_the_same() {
        let a = lb_conf("lb1", 0..2000);
        let b = lb_conf("lb222", (0..2000).filter(|i| *i != 1500));
        let (ea, eb) = (split_chunks(a.as_bytes()), split_chunks(b.as_bytes()));
        assert!(ea.len() > 20, "{} chunks", ea.len());
        assert_eq!(*ea.last().unwrap(), a.len());
        // The same chunk ends, counted from the end of each body, past
        // the removed line.
        let tail = |e: &[usize], len: usize| -> Vec<usize> {
            e.iter().map(|x| len - x).filter(|x| *x < 20 * 70).collect()
        };
        assert_eq!(tail(&ea, a.len()), tail(&eb, b.len()));
        // Not cut by position: no ends in common counted from the start
        // after the first line (which differs in length).
        assert!(ea.windows(2).all(|w| w[1] - w[0] <= CHUNK_MAX));
        // Bytes without a newline are cut every CHUNK_MAX.
        let flat = vec![b'x'; CHUNK_MAX * 2 + 5];
        assert_eq!(
            split_chunks(&flat),
            vec![CHUNK_MAX, 2 * CHUNK_MAX, 2 * CHUNK_MAX + 5]
        );
        assert_eq!(split_chunks(b""), vec![0]);
    }

    #[test]
    fn large_bodies_that_differ_in_a_few_lines_share_their_chunks() {
        let cache = CatalogCache::new(DEFAULT_CACHE_BYTES);
        // 400 load balancers, each naming itself above the same 2,000
        // backends (~140 KB), the last 100 compiled before web1500 came.
        let mut confs = Vec::new();
        for n in 0..400 {
            let conf = if n < 300 {
                lb_conf(&format!("lb{n}"), 0..2000)
            } else {
                lb_conf(&format!("lb{n}"), (0..2000).filter(|i| *i != 1500))
            };
            put(&cache, &format!("lb{n}"), &[conf.as_bytes()]);
            confs.push(conf);
        }
        let s = cache.stats();
        assert_eq!(s.bodies, 400);
        let one = confs[0].len();
        assert!(one > 130_000, "{one}");
        // Each distinct chunk once: far less than 400 deflated copies.
        assert!(s.chunks < 3 * one / 2000 + 400 * 2, "{} chunks", s.chunks);
        // A fifth of what 400 bodies deflated whole would take.
        let whole = miniz_oxide::deflate::compress_to_vec(confs[0].as_bytes(), DEFLATE_LEVEL);
        assert!(
            s.bytes * 5 < 400 * whole.len(),
            "{} bytes charged for 400 bodies of {one} ({} deflated)",
            s.bytes,
            whole.len()
        );
        // Each served whole, and only to its own node.
        for n in [0usize, 299, 300, 399] {
            let c = cache.served(&format!("lb{n}")).unwrap();
            let h = troupe_catalog::sha256_hex(confs[n].as_bytes());
            assert!(c.bodies[0].is_chunked());
            assert_eq!(c.body(&h).unwrap(), confs[n].as_bytes());
        }
        // The same lines are the same chunk in memory, not a copy.
        let (a, b) = (cache.served("lb0").unwrap(), cache.served("lb399").unwrap());
        let (ca, cb) = (a.bodies[0].chunks(), b.bodies[0].chunks());
        assert!(Arc::ptr_eq(ca.last().unwrap(), cb.last().unwrap()));
        assert!(!Arc::ptr_eq(&ca[0], &cb[0]), "the first lines differ");
        drop((a, b));
        // Replaced by small catalogs: every chunk is freed.
        for n in 0..400 {
            put(&cache, &format!("lb{n}"), &[b"small"]);
        }
        let s = cache.stats();
        assert_eq!((s.bodies, s.chunks), (1, 0));
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
