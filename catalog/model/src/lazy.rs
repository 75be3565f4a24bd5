//! A catalog validated as a whole but kept as canonical JSON outside the
//! heap (a file), its resources and bodies decoded one at a time when
//! needed (the agent's form).
//!
//! [`Catalog::from_json`] builds every resource and body as Rust values:
//! for 10,000 files that is four times the JSON (~1.6 KB a resource). An
//! agent converges resources in order, one at a time, so [`LazyCatalog`]
//! streams the document once: each resource and body is decoded, checked,
//! written in its canonical encoding to a [`Spill`] (a file the agent made
//! for it, or memory) and dropped; what stays on the heap is, per resource,
//! where it is in the spill and which earlier resources it requires (a few
//! bytes each). The document itself is never held whole when read from a
//! file ([`LazyCatalog::from_file`]).
//!
//! It accepts exactly the catalogs [`Catalog::from_json`] accepts and
//! refuses the others with the same [`CatalogError`] (for a catalog with
//! several faults, possibly another of them), and its
//! [`LazyCatalog::hash`] is [`Catalog::hash`]. A spill file must not be
//! written by anyone else while the catalog is alive (the agent's is an
//! unnamed file in its private state directory).

use crate::{
    Blob, CatalogError, FORMAT_VERSION, Kind, MAX_CATALOG_BYTES, Resource, ResourceId,
    check_normal_path,
};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Where a [`LazyCatalog`] keeps the canonical JSON of its resources and
/// bodies.
pub enum Spill {
    /// On the heap (tests, small catalogs, no place for a file).
    Memory,
    /// In this file (empty, opened for reading and writing), read back with
    /// positioned reads: its pages are the kernel's cache, not this
    /// process's memory.
    File(File),
}

enum Store {
    Mem(Vec<u8>),
    File(File),
}

/// Bytes read from a file store at once for resources (read in order).
const WINDOW: u64 = 64 << 10;

/// A validated catalog held outside the heap (see the module documentation).
pub struct LazyCatalog {
    store: Store,
    pub format: u32,
    pub node: String,
    pub environment: String,
    pub code_version: String,
    /// Byte range of each resource's canonical JSON in the store.
    spans: Vec<(u32, u32)>,
    /// The resources' array (`[...]`) in the store.
    res_region: (u32, u32),
    /// `req[req_at[i]..req_at[i + 1]]`: indices of what resource `i` requires.
    req_at: Vec<u32>,
    req: Vec<u32>,
    /// Notify edges `(target, notifier)`, sorted.
    notified_by: Vec<(u32, u32)>,
    /// Content table: SHA-256 -> byte range of the body's canonical JSON in
    /// the store (and `true`: it hashes to its key), sorted.
    contents: Vec<([u8; 32], u32, u32, bool)>,
    /// The content table's object (`{...}`) in the store, when it is the
    /// canonical one (keys sorted, none twice); otherwise written entry by
    /// entry.
    cont_region: Option<(u32, u32)>,
    hash: String,
    any_purge: bool,
    any_noop: bool,
    /// Resources read ahead from a file store: (offset, bytes).
    window: Mutex<(u64, Vec<u8>)>,
}

/// A resource's phase-two finding, resolved once every id is known.
enum Finding {
    /// Requires something not listed before it (dangling or backwards).
    Requires(ResourceId, ResourceId),
    /// Notifies something not listed before it: fine if listed after.
    Notify(u32, ResourceId, ResourceId),
    Definite(CatalogError),
}

/// The key of an id or a path in the maps of a validation: a 128-bit
/// keyed hash (two SipHash keys, random per catalog) instead of a copy of
/// the string. Two strings taken for one needs a 128-bit collision under
/// keys nobody outside the process knows.
#[derive(Default)]
struct Keys(std::hash::RandomState, std::hash::RandomState);

impl Keys {
    fn of(&self, s: &str) -> (u64, u64) {
        use std::hash::BuildHasher;
        (self.0.hash_one(s), self.1.hash_one(s))
    }
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

/// Counts what is read, so a file larger than the limit is refused even
/// when it grew after its size was checked.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.n > MAX_CATALOG_BYTES as u64 {
            return Err(std::io::Error::other("catalog over the size limit"));
        }
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// The store being written while the document is read.
enum Out {
    Mem(Vec<u8>),
    File(std::io::BufWriter<File>),
}

/// Everything gathered while the document streams by.
struct Parse {
    out: Out,
    at: u64,
    io_error: Option<String>,
    /// The document gave another format: stop (its error is the format's).
    other_format: bool,
    buf: Vec<u8>,
    spans: Vec<(u32, u32)>,
    res_region: Option<(u32, u32)>,
    req_at: Vec<u32>,
    req: Vec<u32>,
    keys: Keys,
    /// Index of each resource by its id's key.
    pos: HashMap<(u64, u64), u32>,
    /// Index of each resource managing a path, by the path's key.
    paths: HashMap<(u64, u64), u32>,
    first_error: Option<CatalogError>,
    /// Findings, with the index of the resource they are about.
    findings: Vec<(u32, Finding)>,
    /// Bodies the resources refer to (resource index, SHA-256), checked
    /// once the content table is read; `bad_refs` for references that are
    /// not a SHA-256 in hex.
    refs: Vec<(u32, [u8; 32])>,
    bad_refs: Vec<(u32, String)>,
    any_purge: bool,
    any_noop: bool,
    /// Content entries with a SHA-256 key: (key, value span, body matches).
    entries: Vec<([u8; 32], u32, u32, bool)>,
    /// Content keys that are not a SHA-256 in hex (each an error).
    bad_keys: Vec<String>,
    cont_region: Option<(u32, u32)>,
    cont_sorted: bool,
}

impl Parse {
    fn new(spill: Spill) -> Parse {
        Parse {
            out: match spill {
                Spill::Memory => Out::Mem(Vec::new()),
                Spill::File(f) => Out::File(std::io::BufWriter::with_capacity(64 << 10, f)),
            },
            at: 0,
            io_error: None,
            other_format: false,
            buf: Vec::with_capacity(1024),
            spans: Vec::new(),
            res_region: None,
            req_at: Vec::new(),
            req: Vec::new(),
            keys: Keys::default(),
            pos: HashMap::new(),
            paths: HashMap::new(),
            first_error: None,
            findings: Vec::new(),
            refs: Vec::new(),
            bad_refs: Vec::new(),
            any_purge: false,
            any_noop: false,
            entries: Vec::new(),
            bad_keys: Vec::new(),
            cont_region: None,
            cont_sorted: true,
        }
    }

    /// The store's offset now, as a span end (refused past 4 GiB).
    fn offset(&self) -> Result<u32, String> {
        u32::try_from(self.at).map_err(|_| "the catalog's canonical form is over 4 GiB".into())
    }

    fn put(&mut self, b: &[u8]) -> Result<u32, String> {
        match &mut self.out {
            Out::Mem(v) => v.extend_from_slice(b),
            Out::File(w) => w
                .write_all(b)
                .map_err(|e| format!("cannot write the catalog's copy: {e}"))?,
        }
        self.at += b.len() as u64;
        self.offset()
    }

    /// Writes `self.buf`; returns its span.
    fn put_buf(&mut self) -> Result<(u32, u32), String> {
        let a = self.offset()?;
        let buf = std::mem::take(&mut self.buf);
        let r = self.put(&buf);
        self.buf = buf;
        Ok((a, r?))
    }

    fn fail<E: de::Error>(&mut self, why: String) -> E {
        let e = E::custom(&why);
        self.io_error = Some(why);
        e
    }

    /// Phases one and two of `Catalog::validate` for resource `i`.
    fn check(&mut self, i: u32, r: Resource) {
        if self.first_error.is_some() {
            return;
        }
        let expect = r.kind.id();
        if r.id != expect {
            self.first_error = Some(CatalogError::Invalid {
                id: r.id,
                why: format!("its id does not match its type and title ({expect})"),
            });
            return;
        }
        let key = self.keys.of(&r.id.0);
        if self.pos.contains_key(&key) {
            self.first_error = Some(CatalogError::Duplicate(r.id));
            return;
        }
        self.pos.insert(key, i);
        if let Some(path) = r.kind.fs_path() {
            if let Err(why) = check_normal_path(path) {
                self.first_error = Some(CatalogError::Invalid { id: r.id, why });
                return;
            }
            let key = self.keys.of(path);
            if let Some(&first) = self.paths.get(&key) {
                // The first claimant's id is resolved at the end (from the
                // store, once written out).
                self.first_error = Some(CatalogError::SamePath {
                    first: ResourceId(format!("#{first}")),
                    second: r.id.clone(),
                    path: path.to_owned(),
                });
                return;
            }
            self.paths.insert(key, i);
        }
        self.any_noop |= r.noop;
        self.any_purge |= matches!(r.kind, Kind::Directory { purge: true, .. });
        for dep in &r.requires {
            match self.pos.get(&self.keys.of(&dep.0)) {
                Some(&j) if j < i => self.req.push(j),
                _ => {
                    self.findings
                        .push((i, Finding::Requires(r.id.clone(), dep.clone())));
                    return;
                }
            }
        }
        for t in &r.notify {
            if self.pos.contains_key(&self.keys.of(&t.0)) {
                // Listed before (or is itself): backwards.
                let e = CatalogError::Order {
                    from: t.clone(),
                    to: r.id.clone(),
                };
                self.findings.push((i, Finding::Definite(e)));
                return;
            }
            self.findings
                .push((i, Finding::Notify(i, r.id.clone(), t.clone())));
        }
        if let Kind::File {
            content: Some(c), ..
        } = &r.kind
        {
            match c.sha256.bytes() {
                Some(h) => self.refs.push((i, h)),
                None => self.bad_refs.push((i, c.sha256.to_string())),
            }
            return;
        }
        if let Kind::Exec { command, .. } = &r.kind
            && command.is_empty()
        {
            let e = CatalogError::Invalid {
                id: r.id,
                why: "its command is empty".into(),
            };
            self.findings.push((i, Finding::Definite(e)));
        }
    }
}

/// The whole document, as `Catalog`'s derived `Deserialize` reads it.
struct Top<'p>(&'p mut Parse);

#[derive(Default)]
struct Head {
    format: Option<u32>,
    node: Option<String>,
    environment: Option<String>,
    code_version: Option<String>,
}

const FIELDS: &[&str] = &[
    "format",
    "node",
    "environment",
    "code_version",
    "resources",
    "contents",
];

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Head;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Head, D::Error> {
        d.deserialize_struct("Catalog", FIELDS, self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Head;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("struct Catalog")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Head, A::Error> {
        let len = |i| de::Error::invalid_length(i, &"struct Catalog with 6 elements");
        let mut h = Head::default();
        let format = seq.next_element::<u32>()?.ok_or_else(|| len(0))?;
        if format != FORMAT_VERSION {
            self.0.other_format = true;
            return Err(de::Error::custom("another format"));
        }
        h.format = Some(format);
        h.node = Some(seq.next_element()?.ok_or_else(|| len(1))?);
        h.environment = Some(seq.next_element()?.ok_or_else(|| len(2))?);
        h.code_version = Some(seq.next_element()?.ok_or_else(|| len(3))?);
        seq.next_element_seed(Resources(&mut *self.0))?
            .ok_or_else(|| len(4))?;
        seq.next_element_seed(Contents(&mut *self.0))?;
        // `Catalog::from_json` reads the format first as a one-field struct,
        // which refuses an array of more than one element (the error given
        // is that one): so does this.
        let _ = h;
        Err(de::Error::custom("a catalog is a JSON object"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head, A::Error> {
        let mut h = Head::default();
        let (mut resources, mut contents) = (false, false);
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "format" => {
                    if h.format.is_some() {
                        return Err(de::Error::duplicate_field("format"));
                    }
                    let f: u32 = map.next_value()?;
                    if f != FORMAT_VERSION {
                        self.0.other_format = true;
                        return Err(de::Error::custom("another format"));
                    }
                    h.format = Some(f);
                }
                "node" => {
                    if h.node.is_some() {
                        return Err(de::Error::duplicate_field("node"));
                    }
                    h.node = Some(map.next_value()?);
                }
                "environment" => {
                    if h.environment.is_some() {
                        return Err(de::Error::duplicate_field("environment"));
                    }
                    h.environment = Some(map.next_value()?);
                }
                "code_version" => {
                    if h.code_version.is_some() {
                        return Err(de::Error::duplicate_field("code_version"));
                    }
                    h.code_version = Some(map.next_value()?);
                }
                "resources" => {
                    if resources {
                        return Err(de::Error::duplicate_field("resources"));
                    }
                    resources = true;
                    map.next_value_seed(Resources(&mut *self.0))?;
                }
                "contents" => {
                    if contents {
                        return Err(de::Error::duplicate_field("contents"));
                    }
                    contents = true;
                    map.next_value_seed(Contents(&mut *self.0))?;
                }
                other => return Err(de::Error::unknown_field(other, FIELDS)),
            }
        }
        let missing = de::Error::missing_field;
        if h.format.is_none() {
            return Err(missing("format"));
        }
        if h.node.is_none() {
            return Err(missing("node"));
        }
        if h.environment.is_none() {
            return Err(missing("environment"));
        }
        if h.code_version.is_none() {
            return Err(missing("code_version"));
        }
        if !resources {
            return Err(missing("resources"));
        }
        Ok(h)
    }
}

/// The `resources` array: each element decoded, written out canonical,
/// checked, dropped.
struct Resources<'p>(&'p mut Parse);

impl<'de> DeserializeSeed<'de> for Resources<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Resources<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a sequence")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let p = self.0;
        let start = p.offset().map_err(|e| p.fail::<A::Error>(e))?;
        p.put(b"[").map_err(|e| p.fail::<A::Error>(e))?;
        let mut i = 0u32;
        while let Some(r) = seq.next_element::<Resource>()? {
            if i > 0 {
                p.put(b",").map_err(|e| p.fail::<A::Error>(e))?;
            }
            p.buf.clear();
            serde_json::to_writer(&mut p.buf, &r).map_err(|e| p.fail::<A::Error>(e.to_string()))?;
            let span = p.put_buf().map_err(|e| p.fail::<A::Error>(e))?;
            p.spans.push(span);
            p.req_at.push(p.req.len() as u32);
            p.check(i, r);
            i += 1;
        }
        let end = p.put(b"]").map_err(|e| p.fail::<A::Error>(e))?;
        p.req_at.push(p.req.len() as u32);
        p.res_region = Some((start, end));
        Ok(())
    }
}

/// The `contents` object: each body decoded, hashed, written out, dropped.
struct Contents<'p>(&'p mut Parse);

impl<'de> DeserializeSeed<'de> for Contents<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Contents<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a map")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let p = self.0;
        let start = p.offset().map_err(|e| p.fail::<A::Error>(e))?;
        p.put(b"{").map_err(|e| p.fail::<A::Error>(e))?;
        let mut prev: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            let blob: Blob = map.next_value()?;
            let ok = blob.bytes().is_some_and(|b| crate::sha256_hex(&b) == key);
            if prev.is_some() {
                p.put(b",").map_err(|e| p.fail::<A::Error>(e))?;
            }
            p.buf.clear();
            let _ = serde_json::to_writer(&mut p.buf, &key);
            p.buf.push(b':');
            p.put_buf().map_err(|e| p.fail::<A::Error>(e))?;
            p.buf.clear();
            serde_json::to_writer(&mut p.buf, &blob)
                .map_err(|e| p.fail::<A::Error>(e.to_string()))?;
            let (a, b) = p.put_buf().map_err(|e| p.fail::<A::Error>(e))?;
            if prev.as_ref().is_some_and(|k| *k >= key) {
                p.cont_sorted = false;
            }
            match hex32(&key) {
                Some(h) => p.entries.push((h, a, b, ok)),
                None => p.bad_keys.push(key.clone()),
            }
            prev = Some(key);
        }
        let end = p.put(b"}").map_err(|e| p.fail::<A::Error>(e))?;
        p.cont_region = Some((start, end));
        Ok(())
    }
}

/// `Catalog::from_json`'s first look (its name is in its errors).
mod first_look {
    #[derive(serde::Deserialize)]
    pub struct Head {
        pub format: u32,
    }
}
use first_look::Head as HeadFormat;

/// The error `Catalog::from_json` gives before decoding the document whole:
/// malformed JSON, no `format`, or another format.
fn head_error(head: Result<HeadFormat, serde_json::Error>) -> Option<CatalogError> {
    match head {
        Err(e) => Some(CatalogError::Decode(e.to_string())),
        Ok(h) if h.format != FORMAT_VERSION => Some(CatalogError::Format { found: h.format }),
        Ok(_) => None,
    }
}

impl LazyCatalog {
    /// Decodes and validates a catalog received from the network or a cache,
    /// kept in memory (see [`Catalog::from_json`] for what is refused).
    ///
    /// [`Catalog::from_json`]: crate::Catalog::from_json
    pub fn from_json(bytes: Vec<u8>) -> Result<LazyCatalog, CatalogError> {
        Self::from_slice(&bytes, Spill::Memory)
    }

    /// [`LazyCatalog::from_json`], kept in `spill`.
    pub fn from_slice(bytes: &[u8], spill: Spill) -> Result<LazyCatalog, CatalogError> {
        if bytes.len() > MAX_CATALOG_BYTES {
            return Err(CatalogError::TooLarge(bytes.len()));
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        Self::parse(&mut de, spill, || head_error(serde_json::from_slice(bytes)))
    }

    /// [`LazyCatalog::from_json`] for a catalog in `file` (read from its
    /// start), kept in `spill`: the document is read as a stream, never
    /// held whole.
    pub fn from_file(file: &mut File, spill: Spill) -> Result<LazyCatalog, CatalogError> {
        let io = |e: std::io::Error| CatalogError::Store(format!("cannot read the catalog: {e}"));
        let len = file.metadata().map_err(io)?.len();
        if len > MAX_CATALOG_BYTES as u64 {
            return Err(CatalogError::TooLarge(len as usize));
        }
        file.rewind().map_err(io)?;
        let mut src = Counted {
            inner: std::io::BufReader::with_capacity(64 << 10, &*file),
            n: 0,
        };
        let mut de = serde_json::Deserializer::from_reader(&mut src);
        let res = Self::parse(&mut de, spill, || {
            (&*file).rewind().ok()?;
            head_error(serde_json::from_reader(std::io::BufReader::with_capacity(
                64 << 10,
                &*file,
            )))
        });
        if src.n > MAX_CATALOG_BYTES as u64 {
            return Err(CatalogError::TooLarge(src.n as usize));
        }
        match res {
            // A stream's error positions can be a column off a slice's:
            // read the refused document whole (the error path only) for
            // exactly the error `Catalog::from_json` gives.
            Err(CatalogError::Decode(e)) => {
                let mut bytes = Vec::new();
                (&*file).rewind().map_err(io)?;
                (&*file)
                    .take(MAX_CATALOG_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
                    .map_err(io)?;
                match Self::from_slice(&bytes, Spill::Memory) {
                    Err(exact) => Err(exact),
                    Ok(_) => Err(CatalogError::Decode(e)),
                }
            }
            other => other,
        }
    }

    fn parse<'de, R: serde_json::de::Read<'de>>(
        de: &mut serde_json::Deserializer<R>,
        spill: Spill,
        head: impl FnOnce() -> Option<CatalogError>,
    ) -> Result<LazyCatalog, CatalogError> {
        let mut p = Parse::new(spill);
        let read = Top(&mut p)
            .deserialize(&mut *de)
            .and_then(|h| de.end().map(|()| h));
        if let Some(why) = p.io_error.take() {
            return Err(CatalogError::Store(why));
        }
        let h = match read {
            Ok(h) => h,
            // As `Catalog::from_json`: its first look (the JSON, the
            // format) decides, then the whole decode.
            Err(e) => return Err(head().unwrap_or(CatalogError::Decode(e.to_string()))),
        };
        let out = std::mem::replace(&mut p.out, Out::Mem(Vec::new()));
        let store = match out {
            Out::Mem(v) => Store::Mem(v),
            Out::File(w) => Store::File(w.into_inner().map_err(|e| {
                CatalogError::Store(format!("cannot write the catalog's copy: {}", e.error()))
            })?),
        };
        let mut contents = std::mem::take(&mut p.entries);
        // A key given twice: the last one counts (as in a map); the store
        // offset orders them as given.
        contents.sort_unstable_by_key(|e| (e.0, e.1));
        let mut kept = 0;
        for k in 0..contents.len() {
            if kept > 0 && contents[kept - 1].0 == contents[k].0 {
                kept -= 1;
            }
            contents[kept] = contents[k];
            kept += 1;
        }
        contents.truncate(kept);
        contents.shrink_to_fit();
        let bad_hash = contents.iter().find(|c| !c.3).map(|c| hex::encode(c.0));
        p.bad_keys.sort();
        let hash_error = match (bad_hash, p.bad_keys.first()) {
            (Some(h), Some(k)) => Some(if *k < h { k.clone() } else { h }),
            (h, k) => h.or(k.cloned()),
        };
        let mut cat = LazyCatalog {
            store,
            format: h.format.unwrap_or(FORMAT_VERSION),
            node: h.node.unwrap_or_default(),
            environment: h.environment.unwrap_or_default(),
            code_version: h.code_version.unwrap_or_default(),
            spans: std::mem::take(&mut p.spans),
            res_region: p.res_region.unwrap_or((0, 0)),
            req_at: std::mem::take(&mut p.req_at),
            req: std::mem::take(&mut p.req),
            notified_by: Vec::new(),
            cont_region: p
                .cont_region
                .filter(|_| p.cont_sorted && p.bad_keys.is_empty()),
            contents,
            hash: String::new(),
            any_purge: p.any_purge,
            any_noop: p.any_noop,
            window: Mutex::new((0, Vec::new())),
        };
        let id = |i: u32| {
            cat.resource(i as usize)
                .map(|r| r.id)
                .unwrap_or_else(|| ResourceId(format!("resource #{i}")))
        };
        if let Some(mut e) = p.first_error.take() {
            if let CatalogError::SamePath { first, .. } = &mut e
                && let Some(i) = first.0.strip_prefix('#').and_then(|n| n.parse().ok())
            {
                *first = id(i);
            }
            return Err(e);
        }
        drop(std::mem::take(&mut p.paths));
        // The first resource referring to a body not in the table: its
        // error comes after the findings of resources listed before it.
        let missing = p
            .refs
            .iter()
            .find(|(_, h)| cat.contents.binary_search_by(|e| e.0.cmp(h)).is_err())
            .map(|&(i, h)| (i, hex::encode(h)));
        let missing_key = p
            .bad_refs
            .iter()
            .find(|(_, k)| p.bad_keys.binary_search(k).is_err())
            .cloned();
        let missing = match (missing, missing_key) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        let missing_error =
            |(i, hash): (u32, String)| CatalogError::MissingContent { id: id(i), hash };
        let mut notified_by = Vec::new();
        for (at, f) in std::mem::take(&mut p.findings) {
            if let Some(m) = missing.clone().filter(|m| m.0 < at) {
                return Err(missing_error(m));
            }
            match f {
                Finding::Requires(from, to) => {
                    return Err(if p.pos.contains_key(&p.keys.of(&to.0)) {
                        CatalogError::Order { from, to }
                    } else {
                        CatalogError::Dangling { from, to }
                    });
                }
                Finding::Notify(i, from, to) => match p.pos.get(&p.keys.of(&to.0)) {
                    Some(&j) => notified_by.push((j, i)),
                    None => return Err(CatalogError::Dangling { from, to }),
                },
                Finding::Definite(e) => return Err(e),
            }
        }
        if let Some(m) = missing {
            return Err(missing_error(m));
        }
        if let Some(k) = hash_error {
            return Err(CatalogError::ContentHash(k));
        }
        drop(p);
        notified_by.sort_unstable();
        cat.notified_by = notified_by;
        let mut h = HashWriter(Sha256::new());
        cat.write_canonical(&mut h)
            .map_err(|e| CatalogError::Store(format!("cannot read the catalog's copy: {e}")))?;
        cat.hash = format!("sha256:{}", hex::encode(h.0.finalize()));
        Ok(cat)
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

    /// Bytes `a..b` of the store.
    fn read(&self, a: u32, b: u32) -> Option<Cow<'_, [u8]>> {
        match &self.store {
            Store::Mem(v) => v.get(a as usize..b as usize).map(Cow::Borrowed),
            Store::File(f) => {
                let mut buf = vec![0; b.checked_sub(a)? as usize];
                f.read_exact_at(&mut buf, a.into()).ok()?;
                Some(Cow::Owned(buf))
            }
        }
    }

    /// Resource `i` (in catalog order), decoded now.
    pub fn resource(&self, i: usize) -> Option<Resource> {
        let (a, b) = *self.spans.get(i)?;
        // Decoded once already, when validated.
        let f = match &self.store {
            Store::Mem(v) => return serde_json::from_slice(v.get(a as usize..b as usize)?).ok(),
            Store::File(f) => f,
        };
        let (a, b) = (u64::from(a), u64::from(b));
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (at, buf) = &mut *w;
        if a < *at || b > *at + buf.len() as u64 {
            let end = (a + WINDOW).min(self.res_region.1.into()).max(b);
            buf.resize((end - a) as usize, 0);
            if f.read_exact_at(buf, a).is_err() {
                buf.clear();
                return None;
            }
            *at = a;
        }
        serde_json::from_slice(&buf[(a - *at) as usize..(b - *at) as usize]).ok()
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
    /// it is not in the content table, or cannot be read back.
    pub fn content(&self, sha256: &str) -> Option<Vec<u8>> {
        let (a, b) = self.content_span(sha256)?;
        let blob: Blob = serde_json::from_slice(&self.read(a, b)?).ok()?;
        match blob {
            Blob::Utf8(s) => Some(s.into_bytes()),
            Blob::Base64(_) => blob.bytes(),
        }
    }

    /// An upper bound of the body's size (the length of its JSON).
    pub fn content_len_bound(&self, sha256: &str) -> Option<usize> {
        self.content_span(sha256).map(|(a, b)| (b - a) as usize)
    }

    fn content_span(&self, sha256: &str) -> Option<(u32, u32)> {
        let k = hex32(sha256)?;
        let i = self.contents.binary_search_by(|e| e.0.cmp(&k)).ok()?;
        let (_, a, b, _) = self.contents[i];
        Some((a, b))
    }

    /// Copies bytes `a..b` of the store to `w`.
    fn copy(&self, (a, b): (u32, u32), w: &mut dyn Write) -> std::io::Result<()> {
        match &self.store {
            Store::Mem(v) => w.write_all(v.get(a as usize..b as usize).unwrap_or_default()),
            Store::File(f) => {
                let mut buf = vec![0; (WINDOW as usize).min(b.saturating_sub(a) as usize)];
                let mut at = u64::from(a);
                while at < u64::from(b) {
                    let n = buf.len().min((u64::from(b) - at) as usize);
                    f.read_exact_at(&mut buf[..n], at)?;
                    w.write_all(&buf[..n])?;
                    at += n as u64;
                }
                Ok(())
            }
        }
    }

    /// Writes the canonical encoding ([`Catalog::to_canonical_json`]) to `w`.
    ///
    /// [`Catalog::to_canonical_json`]: crate::Catalog::to_canonical_json
    pub fn write_canonical(&self, w: &mut dyn Write) -> std::io::Result<()> {
        write!(w, "{{\"format\":{},\"node\":", self.format)?;
        serde_json::to_writer(&mut *w, &self.node)?;
        w.write_all(b",\"environment\":")?;
        serde_json::to_writer(&mut *w, &self.environment)?;
        w.write_all(b",\"code_version\":")?;
        serde_json::to_writer(&mut *w, &self.code_version)?;
        w.write_all(b",\"resources\":")?;
        self.copy(self.res_region, w)?;
        w.write_all(b",\"contents\":")?;
        match self.cont_region {
            Some(r) => self.copy(r, w)?,
            None => {
                w.write_all(b"{")?;
                for (k, (hk, a, b, _)) in self.contents.iter().enumerate() {
                    if k > 0 {
                        w.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut *w, &hex::encode(hk))?;
                    w.write_all(b":")?;
                    self.copy((*a, *b), w)?;
                }
                w.write_all(b"}")?;
            }
        }
        w.write_all(b"}")
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
