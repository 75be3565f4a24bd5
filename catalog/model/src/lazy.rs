//! A catalog validated as a whole but kept as its JSON bytes, its resources
//! and bodies decoded one at a time when needed (the agent's form).
//!
//! [`Catalog::from_json`] builds every resource and body as Rust values:
//! for 10,000 files that is four times the JSON (~1.6 KB a resource). An
//! agent converges resources in order, one at a time, so [`LazyCatalog`]
//! keeps the bytes and, per resource, only where it is in them and which
//! earlier resources it requires (a few bytes each). It accepts exactly the
//! catalogs [`Catalog::from_json`] accepts and refuses the others with the
//! same [`CatalogError`] (for a catalog with several faults, possibly
//! another of them), and its [`LazyCatalog::hash`] is [`Catalog::hash`].

use crate::{
    Blob, CatalogError, FORMAT_VERSION, Kind, MAX_CATALOG_BYTES, Resource, ResourceId,
    check_normal_path,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;

/// A validated catalog held as its JSON (see the module documentation).
pub struct LazyCatalog {
    bytes: Vec<u8>,
    pub format: u32,
    pub node: String,
    pub environment: String,
    pub code_version: String,
    /// Byte range of each resource's JSON in `bytes`.
    spans: Vec<(u32, u32)>,
    /// `req[req_at[i]..req_at[i + 1]]`: indices of what resource `i` requires.
    req_at: Vec<u32>,
    req: Vec<u32>,
    /// Notify edges `(target, notifier)`, sorted.
    notified_by: Vec<(u32, u32)>,
    /// Content table: SHA-256 -> byte range of the body's JSON, sorted.
    contents: Vec<([u8; 32], u32, u32)>,
    hash: String,
    any_purge: bool,
    any_noop: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Outline<'a> {
    format: u32,
    node: String,
    environment: String,
    code_version: String,
    #[serde(borrow)]
    resources: Vec<&'a RawValue>,
    #[serde(default, borrow)]
    contents: BTreeMap<Cow<'a, str>, &'a RawValue>,
}

/// A resource's phase-two finding, resolved once every id is known.
enum Finding {
    /// Requires something not listed before it (dangling or backwards).
    Requires(ResourceId, ResourceId),
    /// Notifies something not listed before it: fine if listed after.
    Notify(u32, ResourceId, ResourceId),
    Definite(CatalogError),
}

/// A decode error of the JSON at `start` of `bytes`, its position given in
/// the whole document (as a decode of the whole document says it).
fn decode_err(e: serde_json::Error, bytes: &[u8], start: usize) -> CatalogError {
    let text = e.to_string();
    if e.line() == 0 {
        return CatalogError::Decode(text);
    }
    let msg = text
        .rsplit_once(" at line ")
        .map(|(m, _)| m.to_owned())
        .unwrap_or(text);
    let before = &bytes[..start];
    let nl = before.iter().filter(|&&b| b == b'\n').count();
    let line = e.line() + nl;
    let col = if e.line() == 1 {
        let last_nl = before.iter().rposition(|&b| b == b'\n');
        e.column() + start - last_nl.map_or(0, |p| p + 1)
    } else {
        e.column()
    };
    CatalogError::Decode(format!("{msg} at line {line} column {col}"))
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// A writer that only hashes.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LazyCatalog {
    /// Decodes and validates a catalog received from the network or a cache,
    /// keeping `bytes` (see [`Catalog::from_json`] for what is refused).
    ///
    /// [`Catalog::from_json`]: crate::Catalog::from_json
    pub fn from_json(bytes: Vec<u8>) -> Result<LazyCatalog, CatalogError> {
        if bytes.len() > MAX_CATALOG_BYTES {
            return Err(CatalogError::TooLarge(bytes.len()));
        }
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head =
            serde_json::from_slice(&bytes).map_err(|e| CatalogError::Decode(e.to_string()))?;
        if head.format != FORMAT_VERSION {
            return Err(CatalogError::Format { found: head.format });
        }
        let out: Outline =
            serde_json::from_slice(&bytes).map_err(|e| CatalogError::Decode(e.to_string()))?;
        let base = bytes.as_ptr() as usize;
        let span = |raw: &RawValue| -> (u32, u32) {
            let s = raw.get();
            let start = s.as_ptr() as usize - base;
            // MAX_CATALOG_BYTES < 4 GiB: offsets fit.
            (start as u32, (start + s.len()) as u32)
        };
        let n = out.resources.len();
        let mut spans = Vec::with_capacity(n);
        let mut req_at = Vec::with_capacity(n + 1);
        let mut req: Vec<u32> = Vec::with_capacity(n);
        let mut pos: HashMap<ResourceId, u32> = HashMap::with_capacity(n);
        let mut paths: HashMap<String, u32> = HashMap::with_capacity(n);
        let mut decode_error: Option<CatalogError> = None;
        let mut first_error: Option<CatalogError> = None;
        let mut findings: Vec<Finding> = Vec::new();
        let (mut any_purge, mut any_noop) = (false, false);
        // The canonical encoding, hashed piece by piece as
        // `Catalog::to_canonical_json` would write it whole.
        let mut h = HashWriter(Sha256::new());
        let mut buf = Vec::with_capacity(1024);
        let _ = write!(h, "{{\"format\":{},\"node\":", out.format);
        let _ = serde_json::to_writer(&mut h, &out.node);
        let _ = h.write_all(b",\"environment\":");
        let _ = serde_json::to_writer(&mut h, &out.environment);
        let _ = h.write_all(b",\"code_version\":");
        let _ = serde_json::to_writer(&mut h, &out.code_version);
        let _ = h.write_all(b",\"resources\":[");
        for (i, raw) in out.resources.iter().enumerate() {
            let i = i as u32;
            let sp = span(raw);
            spans.push(sp);
            req_at.push(req.len() as u32);
            let r: Resource = match serde_json::from_str(raw.get()) {
                Ok(r) => r,
                Err(e) => {
                    if decode_error.is_none() {
                        decode_error = Some(decode_err(e, &bytes, sp.0 as usize));
                    }
                    continue;
                }
            };
            if decode_error.is_some() {
                continue;
            }
            buf.clear();
            let _ = serde_json::to_writer(&mut buf, &r);
            if i > 0 {
                h.0.update(b",");
            }
            h.0.update(&buf);
            if first_error.is_some() {
                continue;
            }
            // Phase one (as Catalog::validate's first loop).
            let expect = r.kind.id();
            if r.id != expect {
                first_error = Some(CatalogError::Invalid {
                    id: r.id.clone(),
                    why: format!("its id does not match its type and title ({expect})"),
                });
                continue;
            }
            if pos.contains_key(&r.id) {
                first_error = Some(CatalogError::Duplicate(r.id.clone()));
                continue;
            }
            pos.insert(r.id.clone(), i);
            if let Some(path) = r.kind.fs_path() {
                if let Err(why) = check_normal_path(path) {
                    first_error = Some(CatalogError::Invalid {
                        id: r.id.clone(),
                        why,
                    });
                    continue;
                }
                if let Some(&first) = paths.get(path) {
                    first_error = Some(CatalogError::SamePath {
                        first: ResourceId(String::new()), // filled in below
                        second: r.id.clone(),
                        path: path.to_owned(),
                    });
                    // The first claimant's id: decode it again (error path).
                    if let Some(Ok(f)) = out
                        .resources
                        .get(first as usize)
                        .map(|raw| serde_json::from_str::<Resource>(raw.get()))
                        && let Some(CatalogError::SamePath { first: slot, .. }) =
                            first_error.as_mut()
                    {
                        *slot = f.id;
                    }
                    continue;
                }
                paths.insert(path.to_owned(), i);
            }
            any_noop |= r.noop;
            any_purge |= matches!(r.kind, Kind::Directory { purge: true, .. });
            // Phase two (as its second loop), resolved after the pass.
            let mut found = false;
            for dep in &r.requires {
                match pos.get(dep) {
                    Some(&j) if j < i => req.push(j),
                    _ => {
                        findings.push(Finding::Requires(r.id.clone(), dep.clone()));
                        found = true;
                        break;
                    }
                }
            }
            if found {
                continue;
            }
            for t in &r.notify {
                if pos.contains_key(t) {
                    // Listed before (or is itself): backwards.
                    findings.push(Finding::Definite(CatalogError::Order {
                        from: t.clone(),
                        to: r.id.clone(),
                    }));
                    found = true;
                    break;
                }
                findings.push(Finding::Notify(i, r.id.clone(), t.clone()));
            }
            if found {
                continue;
            }
            if let Kind::File {
                content: Some(c), ..
            } = &r.kind
                && !out.contents.contains_key(c.sha256.as_str())
            {
                findings.push(Finding::Definite(CatalogError::MissingContent {
                    id: r.id.clone(),
                    hash: c.sha256.clone(),
                }));
                continue;
            }
            if let Kind::Exec { command, .. } = &r.kind
                && command.is_empty()
            {
                findings.push(Finding::Definite(CatalogError::Invalid {
                    id: r.id.clone(),
                    why: "its command is empty".into(),
                }));
            }
        }
        req_at.push(req.len() as u32);
        drop(paths);
        let _ = h.write_all(b"],\"contents\":{");
        let mut contents = Vec::with_capacity(out.contents.len());
        let mut hash_error: Option<CatalogError> = None;
        for (k, (key, raw)) in out.contents.iter().enumerate() {
            let sp = span(raw);
            let blob: Blob = match serde_json::from_str(raw.get()) {
                Ok(b) => b,
                Err(e) => {
                    if decode_error.is_none() {
                        decode_error = Some(decode_err(e, &bytes, sp.0 as usize));
                    }
                    continue;
                }
            };
            if k > 0 {
                h.0.update(b",");
            }
            let _ = serde_json::to_writer(&mut h, key.as_ref());
            h.0.update(b":");
            let _ = serde_json::to_writer(&mut h, &blob);
            let ok = blob
                .bytes()
                .is_some_and(|b| crate::sha256_hex(&b) == key.as_ref());
            match hex32(key) {
                Some(hk) if ok => contents.push((hk, sp.0, sp.1)),
                _ => {
                    if hash_error.is_none() {
                        hash_error = Some(CatalogError::ContentHash(key.clone().into_owned()));
                    }
                }
            }
        }
        let _ = h.write_all(b"}}");
        if let Some(e) = decode_error.or(first_error) {
            return Err(e);
        }
        let mut notified_by = Vec::new();
        for f in findings {
            match f {
                Finding::Requires(from, to) => {
                    return Err(if pos.contains_key(&to) {
                        CatalogError::Order { from, to }
                    } else {
                        CatalogError::Dangling { from, to }
                    });
                }
                Finding::Notify(i, from, to) => match pos.get(&to) {
                    Some(&j) => notified_by.push((j, i)),
                    None => return Err(CatalogError::Dangling { from, to }),
                },
                Finding::Definite(e) => return Err(e),
            }
        }
        if let Some(e) = hash_error {
            return Err(e);
        }
        drop(pos);
        notified_by.sort_unstable();
        let hash = format!("sha256:{}", hex::encode(h.0.finalize()));
        let (format, node, environment, code_version) =
            (out.format, out.node, out.environment, out.code_version);
        Ok(LazyCatalog {
            bytes,
            format,
            node,
            environment,
            code_version,
            spans,
            req_at,
            req,
            notified_by,
            contents,
            hash,
            any_purge,
            any_noop,
        })
    }

    /// [`Catalog::hash`](crate::Catalog::hash): SHA-256 of the canonical
    /// encoding, `sha256:`-prefixed.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// How many resources.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Resource `i` (in catalog order), decoded now.
    pub fn resource(&self, i: usize) -> Option<Resource> {
        let (a, b) = *self.spans.get(i)?;
        // Decoded once already, when validated.
        serde_json::from_slice(&self.bytes[a as usize..b as usize]).ok()
    }

    /// Every resource, in order, each decoded when reached.
    pub fn resources(&self) -> impl Iterator<Item = Resource> + '_ {
        (0..self.len()).filter_map(|i| self.resource(i))
    }

    /// Indices of the resources `i` requires (all before `i`).
    pub fn requires_of(&self, i: usize) -> &[u32] {
        match (self.req_at.get(i), self.req_at.get(i + 1)) {
            (Some(&a), Some(&b)) => &self.req[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Indices of the resources that notify `i` (all listed before it), in
    /// order.
    pub fn notifiers_of(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let i = i as u32;
        let from = self.notified_by.partition_point(|&(t, _)| t < i);
        self.notified_by[from..]
            .iter()
            .take_while(move |&&(t, _)| t == i)
            .map(|&(_, n)| n as usize)
    }

    /// Whether a directory resource purges.
    pub fn any_purge(&self) -> bool {
        self.any_purge
    }

    /// Whether a resource is marked `noop`.
    pub fn any_noop(&self) -> bool {
        self.any_noop
    }

    /// The body with this SHA-256 (lowercase hex), decoded now; `None` when
    /// it is not in the content table or its base64 is malformed (neither
    /// can be after validation).
    pub fn content(&self, sha256: &str) -> Option<Vec<u8>> {
        let (a, b) = self.content_span(sha256)?;
        let blob: Blob = serde_json::from_slice(&self.bytes[a..b]).ok()?;
        match blob {
            Blob::Utf8(s) => Some(s.into_bytes()),
            Blob::Base64(_) => blob.bytes(),
        }
    }

    /// An upper bound of the body's size (the length of its JSON).
    pub fn content_len_bound(&self, sha256: &str) -> Option<usize> {
        self.content_span(sha256).map(|(a, b)| b - a)
    }

    fn content_span(&self, sha256: &str) -> Option<(usize, usize)> {
        let k = hex32(sha256)?;
        let i = self.contents.binary_search_by(|e| e.0.cmp(&k)).ok()?;
        let (_, a, b) = self.contents[i];
        Some((a as usize, b as usize))
    }

    /// The JSON this catalog was decoded from.
    pub fn json(&self) -> &[u8] {
        &self.bytes
    }

    /// Writes the canonical encoding ([`Catalog::to_canonical_json`]) to
    /// `w`: the bytes themselves when they are canonical, otherwise encoded
    /// again piece by piece.
    ///
    /// [`Catalog::to_canonical_json`]: crate::Catalog::to_canonical_json
    pub fn write_canonical(&self, w: &mut dyn Write) -> std::io::Result<()> {
        let own = format!("sha256:{}", crate::sha256_hex(&self.bytes));
        if own == self.hash {
            return w.write_all(&self.bytes);
        }
        write!(w, "{{\"format\":{},\"node\":", self.format)?;
        serde_json::to_writer(&mut *w, &self.node)?;
        w.write_all(b",\"environment\":")?;
        serde_json::to_writer(&mut *w, &self.environment)?;
        w.write_all(b",\"code_version\":")?;
        serde_json::to_writer(&mut *w, &self.code_version)?;
        w.write_all(b",\"resources\":[")?;
        for i in 0..self.len() {
            if i > 0 {
                w.write_all(b",")?;
            }
            let r = self
                .resource(i)
                .ok_or_else(|| std::io::Error::other("a validated resource no longer decodes"))?;
            serde_json::to_writer(&mut *w, &r)?;
        }
        w.write_all(b"],\"contents\":{")?;
        for (k, (hk, a, b)) in self.contents.iter().enumerate() {
            if k > 0 {
                w.write_all(b",")?;
            }
            serde_json::to_writer(&mut *w, &hex::encode(hk))?;
            w.write_all(b":")?;
            let blob: Blob = serde_json::from_slice(&self.bytes[*a as usize..*b as usize])?;
            serde_json::to_writer(&mut *w, &blob)?;
        }
        w.write_all(b"}}")
    }
}

impl std::fmt::Debug for LazyCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyCatalog")
            .field("node", &self.node)
            .field("resources", &self.len())
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}
