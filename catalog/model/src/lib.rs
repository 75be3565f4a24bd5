//! # troupe-catalog
//!
//! Owns the catalog model: the versioned, serialisable document a master
//! compiles for one host and an agent converges, and the run report an agent
//! sends back. It defines the resource types, their attributes, the
//! dependency and refresh edges, the content table (file bodies referenced by
//! SHA-256), canonical encoding, hashing and validation on decode.
//!
//! It must never: depend on the compiler, the network or the file system
//! (agents link it, so it stays small); accept a catalog that fails
//! [`Catalog::validate`] (unknown format, duplicate ids, dangling or
//! backwards edges, contents whose hash does not match); panic on any input.

#![forbid(unsafe_code)]

pub mod lazy;
pub mod report;

pub use lazy::{LazyCatalog, Spill};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// The catalog format this crate writes and reads. Bumped on any change that
/// an older agent could misread.
pub const FORMAT_VERSION: u32 = 1;

/// Largest encoded catalog an agent accepts (64 MiB).
pub const MAX_CATALOG_BYTES: usize = 64 * 1024 * 1024;

/// Errors from decoding or validating a catalog.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("catalog is {0} bytes, more than the {MAX_CATALOG_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("catalog is not valid JSON for format {FORMAT_VERSION}: {0}")]
    Decode(String),
    #[error("catalog format {found} is not supported (this build reads format {FORMAT_VERSION})")]
    Format { found: u32 },
    #[error("resource {0} is declared twice")]
    Duplicate(ResourceId),
    #[error("resource {from} refers to {to}, which is not in the catalog")]
    Dangling { from: ResourceId, to: ResourceId },
    #[error("resource {from} must come after {to}, but the catalog lists it first")]
    Order { from: ResourceId, to: ResourceId },
    #[error("resource {id} refers to content {hash}, which is not in the content table")]
    MissingContent { id: ResourceId, hash: String },
    #[error("content table entry {0} does not hash to its key")]
    ContentHash(String),
    #[error("resource {id} is invalid: {why}")]
    Invalid { id: ResourceId, why: String },
    #[error("resources {first} and {second} manage the same path {path}")]
    SamePath {
        first: ResourceId,
        second: ResourceId,
        path: String,
    },
    /// The catalog could not be read, or its copy not kept (a full disk).
    #[error("{0}")]
    Store(String),
}

/// Checks that `path` is a normal absolute path, the one spelling of it a
/// catalog may use: it starts with `/`, has no empty (`//`), `.` or `..`
/// component, no trailing `/` (except `/` itself) and no NUL. Returns what
/// is wrong, with the normal spelling when there is one.
pub fn check_normal_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} is not absolute"));
    }
    if path.contains('\0') {
        return Err(format!("path {path:?} contains a NUL byte"));
    }
    if path == "/" {
        return Ok(());
    }
    // No list of components unless the path is refused (the compiler
    // checks every path of a catalog).
    let comps = || path[1..].split('/');
    if comps().any(|c| c == "..") {
        return Err(format!("path {path:?} contains `..`"));
    }
    if comps().any(|c| c.is_empty() || c == ".") {
        let normal: Vec<&str> = comps().filter(|c| !c.is_empty() && *c != ".").collect();
        return Err(format!(
            "path {path:?} is not normal (an empty, `.` or trailing component); write it as {:?}",
            format!("/{}", normal.join("/"))
        ));
    }
    Ok(())
}

/// A resource's identity: its type and title, written `type[title]`, e.g.
/// `file[/etc/ssh/sshd_config]` or `package[nginx]`. Unique in a catalog.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResourceId(pub String);

impl ResourceId {
    pub fn new(kind: &str, title: &str) -> Self {
        // One allocation of the final size (`format!` grows its buffer).
        let mut s = String::with_capacity(kind.len() + title.len() + 2);
        s.push_str(kind);
        s.push('[');
        s.push_str(title);
        s.push(']');
        ResourceId(s)
    }
    /// The type part (`file` of `file[/etc/motd]`).
    pub fn kind(&self) -> &str {
        self.0.split_once('[').map(|(k, _)| k).unwrap_or(&self.0)
    }
    /// The title part (`/etc/motd` of `file[/etc/motd]`).
    pub fn title(&self) -> &str {
        self.0
            .split_once('[')
            .map(|(_, t)| t.strip_suffix(']').unwrap_or(t))
            .unwrap_or("")
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A host's catalog: every resource the agent must converge, in an order in
/// which each resource comes after everything it depends on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Always [`FORMAT_VERSION`] for catalogs this build writes.
    pub format: u32,
    /// The node's certificate name.
    pub node: String,
    /// The environment it was compiled in (`production`, `development`, ...).
    pub environment: String,
    /// Identifies the module tree it was compiled from (a content hash or a
    /// commit id).
    pub code_version: String,
    /// Resources in a valid topological order.
    pub resources: Vec<Resource>,
    /// File bodies by lowercase hex SHA-256 of their bytes.
    #[serde(default)]
    pub contents: BTreeMap<Sha256Hex, Blob>,
}

/// One managed thing on the host. (Unknown fields are refused by [`Kind`],
/// which receives every field this struct does not consume.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// `type[title]`; must match [`Kind::id`] of `kind`.
    pub id: ResourceId,
    /// The type and its attributes.
    #[serde(flatten)]
    pub kind: Kind,
    /// Resources that must be converged before this one (explicit
    /// require/before plus automatic edges). A failed requirement skips this
    /// resource. Holds one id inline (most resources require only their
    /// parent directory or their package): no list allocated for it.
    #[serde(default, skip_serializing_if = "Ids::is_empty")]
    pub requires: Ids,
    /// Resources to refresh (restart a service, run a refresh-only exec) when
    /// this one changes (notify, and subscribe seen from the other side).
    /// Each target also appears after this resource in the order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<ResourceId>,
    /// True when an attribute came from a secret: its values are redacted in
    /// every log, diff and report.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sensitive: bool,
    /// Where it was declared (`profiles/base.toml:12:3`), for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// Tags (role, profile names) for filtering and reports.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// Never change this resource: only report what would change (`noop =
    /// true` in the module), even in a normal run.
    #[serde(default, skip_serializing_if = "is_false")]
    pub noop: bool,
}

/// A list of resource ids that holds one inline (a `Vec` of them
/// otherwise). Reads as a slice; encoded as a JSON list.
pub type Ids = smallvec::SmallVec<[ResourceId; 1]>;

fn is_false(b: &bool) -> bool {
    !*b
}

/// Where a resource was declared, encoded as the string
/// `FILE:LINE:COLUMN` (`profiles/base.toml:12:3`). The compiler makes it
/// from the file's name, shared by every resource declared in that file,
/// and two numbers, so a resource holds no string of its own; a decoded
/// catalog holds the text as it was sent.
#[derive(Clone)]
pub struct Source(SourceRepr);

#[derive(Clone)]
enum SourceRepr {
    At {
        file: std::sync::Arc<str>,
        line: u32,
        column: u32,
    },
    Text(Box<str>),
}

impl Source {
    /// `file:line:column`.
    pub fn at(file: std::sync::Arc<str>, line: u32, column: u32) -> Source {
        Source(SourceRepr::At { file, line, column })
    }
}

impl From<String> for Source {
    fn from(s: String) -> Source {
        Source(SourceRepr::Text(s.into_boxed_str()))
    }
}

impl From<&str> for Source {
    fn from(s: &str) -> Source {
        Source(SourceRepr::Text(s.into()))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            SourceRepr::At { file, line, column } => write!(f, "{file}:{line}:{column}"),
            SourceRepr::Text(t) => f.write_str(t),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

/// Equal when they read the same (a compiled source and its decoded text
/// are equal).
impl PartialEq for Source {
    fn eq(&self, other: &Source) -> bool {
        match (&self.0, &other.0) {
            (SourceRepr::Text(a), SourceRepr::Text(b)) => a == b,
            (
                SourceRepr::At { file, line, column },
                SourceRepr::At {
                    file: f2,
                    line: l2,
                    column: c2,
                },
            ) => file == f2 && line == l2 && column == c2,
            _ => self.to_string() == other.to_string(),
        }
    }
}

impl Eq for Source {}

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            // Written straight into the output, no string made.
            SourceRepr::At { .. } => s.collect_str(self),
            SourceRepr::Text(t) => s.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Source, D::Error> {
        String::deserialize(d).map(Source::from)
    }
}

/// A resource's tags, encoded as a JSON list of strings. The list is
/// shared: the compiler gives every resource declared with the same tags
/// (a profile's own resources: role, profile) one copy, so a resource holds
/// a pointer instead of a list and its strings (three allocations fewer per
/// resource, which the allocator would otherwise walk when the catalog is
/// freed). Reads as a slice of strings.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Tags(std::sync::Arc<[String]>);

impl Serialize for Tags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Tags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Tags, D::Error> {
        Vec::<String>::deserialize(d).map(Tags::from)
    }
}

impl Tags {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Whether `self` and `other` are the same shared list (not only equal).
    pub fn ptr_eq(&self, other: &Tags) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl std::ops::Deref for Tags {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl From<Vec<String>> for Tags {
    fn from(v: Vec<String>) -> Tags {
        Tags(v.into())
    }
}

impl FromIterator<String> for Tags {
    fn from_iter<I: IntoIterator<Item = String>>(it: I) -> Tags {
        Tags(it.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Tags {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<const N: usize> PartialEq<[&str; N]> for Tags {
    fn eq(&self, other: &[&str; N]) -> bool {
        self.0.len() == N && self.0.iter().zip(other).all(|(a, b)| a == b)
    }
}

/// Present or absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ensure {
    #[default]
    Present,
    Absent,
}

/// How a user's `groups` are enforced (Puppet's `membership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Membership {
    /// The user is in at least the listed groups; groups it was added to
    /// by hand or by a package's scripts are kept.
    #[default]
    Minimum,
    /// The user is in exactly the listed groups; any other supplementary
    /// group is left.
    Inclusive,
}

impl Membership {
    fn is_minimum(&self) -> bool {
        *self == Membership::Minimum
    }
}

/// What a package should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageEnsure {
    Present,
    Absent,
    Latest,
    /// Exactly this version (as the package manager spells it).
    Version(String),
}

/// What a service should be doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Running,
    Stopped,
}

/// A body's SHA-256, written as 64 lowercase hex digits (the key of
/// [`Catalog::contents`] and [`ContentRef::sha256`]). Held as the 32 raw
/// bytes, inline: a file resource and its content-table entry own no hex
/// string (two heap blocks fewer per body, which the allocator would
/// otherwise walk again when a big catalog is freed). Text that is not a
/// lowercase hex SHA-256 (only in a decoded catalog, which
/// [`Catalog::validate`] then refuses) is kept as sent, so the errors name
/// it as it was written. Compares, orders and hashes as its text (the
/// order of the bytes is the order of their lowercase hex).
#[derive(Clone)]
pub struct Sha256Hex(HexRepr);

#[derive(Clone)]
enum HexRepr {
    Bytes([u8; 32]),
    Text(Box<str>),
}

impl Sha256Hex {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Hex {
        Sha256Hex(HexRepr::Bytes(Sha256::digest(bytes).into()))
    }
    /// From a raw digest.
    pub fn from_bytes(digest: [u8; 32]) -> Sha256Hex {
        Sha256Hex(HexRepr::Bytes(digest))
    }
    /// The raw digest; `None` for text that is not a lowercase hex SHA-256.
    pub fn bytes(&self) -> Option<[u8; 32]> {
        match &self.0 {
            HexRepr::Bytes(b) => Some(*b),
            HexRepr::Text(_) => None,
        }
    }
    /// Writes the text into `buf`, returning it (no allocation).
    fn text<'b>(&'b self, buf: &'b mut [u8; 64]) -> &'b str {
        match &self.0 {
            HexRepr::Bytes(b) => {
                // 64 bytes is exactly what 32 bytes need: this cannot fail.
                let _ = hex::encode_to_slice(b, buf);
                std::str::from_utf8(buf).unwrap_or_default()
            }
            HexRepr::Text(t) => t,
        }
    }
}

impl From<&str> for Sha256Hex {
    fn from(s: &str) -> Sha256Hex {
        let lower_hex = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut out = [0u8; 32];
        if lower_hex && hex::decode_to_slice(s, &mut out).is_ok() {
            Sha256Hex(HexRepr::Bytes(out))
        } else {
            Sha256Hex(HexRepr::Text(s.into()))
        }
    }
}

impl From<String> for Sha256Hex {
    fn from(s: String) -> Sha256Hex {
        Sha256Hex::from(s.as_str())
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.text(&mut [0u8; 64]))
    }
}

impl fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.text(&mut [0u8; 64]), f)
    }
}

impl Ord for Sha256Hex {
    fn cmp(&self, other: &Sha256Hex) -> std::cmp::Ordering {
        match (&self.0, &other.0) {
            (HexRepr::Bytes(a), HexRepr::Bytes(b)) => a.cmp(b),
            _ => self.text(&mut [0u8; 64]).cmp(other.text(&mut [0u8; 64])),
        }
    }
}

impl PartialOrd for Sha256Hex {
    fn partial_cmp(&self, other: &Sha256Hex) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Sha256Hex {
    fn eq(&self, other: &Sha256Hex) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Sha256Hex {}

impl std::hash::Hash for Sha256Hex {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.text(&mut [0u8; 64]).hash(h)
    }
}

impl PartialEq<str> for Sha256Hex {
    fn eq(&self, other: &str) -> bool {
        self.text(&mut [0u8; 64]) == other
    }
}

impl PartialEq<&str> for Sha256Hex {
    fn eq(&self, other: &&str) -> bool {
        self == *other
    }
}

impl Serialize for Sha256Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.text(&mut [0u8; 64]))
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Sha256Hex, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Sha256Hex;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Sha256Hex, E> {
                Ok(Sha256Hex::from(s))
            }
        }
        d.deserialize_str(V)
    }
}

/// A reference to a body in [`Catalog::contents`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentRef {
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: Sha256Hex,
    pub size: u64,
}

/// A file body. Text is kept as text so catalogs stay readable.
///
/// Its `Debug` output shows only the size and hash, never the bytes: a body
/// may hold a decrypted secret, and `{:?}` output ends up in logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "encoding", content = "data", rename_all = "lowercase")]
pub enum Blob {
    Utf8(String),
    Base64(String),
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.bytes() {
            Some(b) => write!(
                f,
                "Blob(<{} bytes, sha256:{:.12}>)",
                b.len(),
                sha256_hex(&b)
            ),
            None => f.write_str("Blob(<invalid base64>)"),
        }
    }
}

impl Blob {
    pub fn from_bytes(bytes: &[u8]) -> Blob {
        match std::str::from_utf8(bytes) {
            Ok(s) => Blob::Utf8(s.to_owned()),
            Err(_) => Blob::Base64(base64_encode(bytes)),
        }
    }
    /// The bytes, or `None` when the base64 is malformed.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Blob::Utf8(s) => Some(s.as_bytes().to_vec()),
            Blob::Base64(s) => base64_decode(s),
        }
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    // Into a buffer, then one allocation (`hex::encode` collects chars).
    let mut buf = [0u8; 64];
    let _ = hex::encode_to_slice(Sha256::digest(bytes), &mut buf); // 64 = 2 x 32
    std::str::from_utf8(&buf).unwrap_or_default().to_owned()
}

/// Resource types and their attributes. `None` means "not managed".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Kind {
    File {
        path: String,
        #[serde(default)]
        ensure: Ensure,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<ContentRef>,
        /// Octal permission bits, e.g. 0o644.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// Command (argv, `%` replaced by the temp file's path) that must exit
        /// 0 before the new content replaces the old, e.g. `sshd -t -f %`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        validate: Option<Vec<String>>,
    },
    Directory {
        path: String,
        #[serde(default)]
        ensure: Ensure,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// Remove entries not managed by this catalog.
        #[serde(default, skip_serializing_if = "is_false")]
        purge: bool,
    },
    Symlink {
        path: String,
        #[serde(default)]
        ensure: Ensure,
        target: String,
    },
    Package {
        name: String,
        ensure: PackageEnsure,
    },
    Service {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ensure: Option<ServiceState>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        enable: Option<bool>,
    },
    User {
        name: String,
        #[serde(default)]
        ensure: Ensure,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
        /// Primary group (name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// Supplementary groups.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        groups: Vec<String>,
        /// Whether `groups` is a minimum (default) or the exact list.
        #[serde(default, skip_serializing_if = "Membership::is_minimum")]
        membership: Membership,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        home: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shell: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        #[serde(default, skip_serializing_if = "is_false")]
        system: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        manage_home: bool,
    },
    Group {
        name: String,
        #[serde(default)]
        ensure: Ensure,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gid: Option<u32>,
        #[serde(default, skip_serializing_if = "is_false")]
        system: bool,
    },
    Exec {
        /// Unique name (the title).
        name: String,
        /// argv; never passed through a shell.
        command: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        environment: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// Seconds before the command is killed (default 300).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout: Option<u64>,
        /// Skip when this path exists.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        creates: Option<String>,
        /// Run only if this argv exits 0.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        onlyif: Option<Vec<String>>,
        /// Run only if this argv exits non-zero.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unless: Option<Vec<String>>,
        /// Run only when refreshed by a notify/subscribe edge.
        #[serde(default, skip_serializing_if = "is_false")]
        refreshonly: bool,
        /// Exit codes that count as success (default `[0]`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        returns: Vec<i32>,
    },
    Cron {
        name: String,
        #[serde(default)]
        ensure: Ensure,
        command: String,
        user: String,
        #[serde(default = "star")]
        minute: String,
        #[serde(default = "star")]
        hour: String,
        #[serde(default = "star")]
        monthday: String,
        #[serde(default = "star")]
        month: String,
        #[serde(default = "star")]
        weekday: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        environment: BTreeMap<String, String>,
    },
}

fn star() -> String {
    "*".to_owned()
}

impl Kind {
    /// The type name (`file`, `package`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::File { .. } => "file",
            Kind::Directory { .. } => "directory",
            Kind::Symlink { .. } => "symlink",
            Kind::Package { .. } => "package",
            Kind::Service { .. } => "service",
            Kind::User { .. } => "user",
            Kind::Group { .. } => "group",
            Kind::Exec { .. } => "exec",
            Kind::Cron { .. } => "cron",
        }
    }
    /// The title: the path for file-like types, the name otherwise.
    pub fn title(&self) -> &str {
        match self {
            Kind::File { path, .. } | Kind::Directory { path, .. } | Kind::Symlink { path, .. } => {
                path
            }
            Kind::Package { name, .. }
            | Kind::Service { name, .. }
            | Kind::User { name, .. }
            | Kind::Group { name, .. }
            | Kind::Exec { name, .. }
            | Kind::Cron { name, .. } => name,
        }
    }
    /// The id this resource must have.
    pub fn id(&self) -> ResourceId {
        ResourceId::new(self.type_name(), self.title())
    }

    /// The path of a file-like resource (file, directory, symlink): at most
    /// one of them may manage a path.
    pub fn fs_path(&self) -> Option<&str> {
        match self {
            Kind::File { path, .. } | Kind::Directory { path, .. } | Kind::Symlink { path, .. } => {
                Some(path)
            }
            _ => None,
        }
    }
}

impl Catalog {
    /// An empty catalog for `node`.
    pub fn new(node: &str, environment: &str, code_version: &str) -> Catalog {
        Catalog {
            format: FORMAT_VERSION,
            node: node.to_owned(),
            environment: environment.to_owned(),
            code_version: code_version.to_owned(),
            resources: Vec::new(),
            contents: BTreeMap::new(),
        }
    }

    /// Adds `bytes` to the content table and returns the reference to put in
    /// a file resource.
    pub fn add_content(&mut self, bytes: &[u8]) -> ContentRef {
        let sha256 = Sha256Hex::of(bytes);
        self.contents
            .entry(sha256.clone())
            .or_insert_with(|| Blob::from_bytes(bytes));
        ContentRef {
            sha256,
            size: bytes.len() as u64,
        }
    }

    /// The canonical encoding: compact JSON with fields in declaration order
    /// and maps sorted, so equal catalogs encode to identical bytes.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        // Serialising these plain data types cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Human-readable JSON.
    pub fn to_pretty_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// SHA-256 of the canonical encoding, `sha256:`-prefixed.
    pub fn hash(&self) -> String {
        format!("sha256:{}", sha256_hex(&self.to_canonical_json()))
    }

    /// Decodes and validates a catalog received from the network or a cache.
    pub fn from_json(bytes: &[u8]) -> Result<Catalog, CatalogError> {
        if bytes.len() > MAX_CATALOG_BYTES {
            return Err(CatalogError::TooLarge(bytes.len()));
        }
        // Check the format before the full decode so a newer catalog gets the
        // clear "format" error rather than an unknown-field one.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| CatalogError::Decode(e.to_string()))?;
        if head.format != FORMAT_VERSION {
            return Err(CatalogError::Format { found: head.format });
        }
        let cat: Catalog =
            serde_json::from_slice(bytes).map_err(|e| CatalogError::Decode(e.to_string()))?;
        cat.validate()?;
        Ok(cat)
    }

    /// Checks every invariant an agent relies on: the format, unique ids
    /// matching their kind, edges that point at resources listed earlier
    /// (requires) or later (notify), and a content table whose keys are the
    /// hashes of their bodies, with every referenced body present.
    pub fn validate(&self) -> Result<(), CatalogError> {
        if self.format != FORMAT_VERSION {
            return Err(CatalogError::Format { found: self.format });
        }
        let mut pos: HashMap<&ResourceId, usize> = HashMap::with_capacity(self.resources.len());
        let mut paths: HashMap<&str, &ResourceId> = HashMap::new();
        for (i, r) in self.resources.iter().enumerate() {
            let expect = r.kind.id();
            if r.id != expect {
                return Err(CatalogError::Invalid {
                    id: r.id.clone(),
                    why: format!("its id does not match its type and title ({expect})"),
                });
            }
            if pos.insert(&r.id, i).is_some() {
                return Err(CatalogError::Duplicate(r.id.clone()));
            }
            // One path, one file-like resource, spelled one way.
            if let Some(path) = r.kind.fs_path() {
                check_normal_path(path).map_err(|why| CatalogError::Invalid {
                    id: r.id.clone(),
                    why,
                })?;
                if let Some(first) = paths.insert(path, &r.id) {
                    return Err(CatalogError::SamePath {
                        first: first.clone(),
                        second: r.id.clone(),
                        path: path.to_owned(),
                    });
                }
            }
        }
        for (i, r) in self.resources.iter().enumerate() {
            for dep in &r.requires {
                match pos.get(dep) {
                    None => {
                        return Err(CatalogError::Dangling {
                            from: r.id.clone(),
                            to: dep.clone(),
                        });
                    }
                    Some(&j) if j >= i => {
                        return Err(CatalogError::Order {
                            from: r.id.clone(),
                            to: dep.clone(),
                        });
                    }
                    _ => {}
                }
            }
            for target in &r.notify {
                match pos.get(target) {
                    None => {
                        return Err(CatalogError::Dangling {
                            from: r.id.clone(),
                            to: target.clone(),
                        });
                    }
                    Some(&j) if j <= i => {
                        return Err(CatalogError::Order {
                            from: target.clone(),
                            to: r.id.clone(),
                        });
                    }
                    _ => {}
                }
            }
            if let Kind::File {
                content: Some(c), ..
            } = &r.kind
                && !self.contents.contains_key(&c.sha256)
            {
                return Err(CatalogError::MissingContent {
                    id: r.id.clone(),
                    hash: c.sha256.to_string(),
                });
            }
            if let Kind::Exec { command, .. } = &r.kind
                && command.is_empty()
            {
                return Err(CatalogError::Invalid {
                    id: r.id.clone(),
                    why: "its command is empty".into(),
                });
            }
        }
        for (hash, blob) in &self.contents {
            match blob.bytes() {
                Some(b) if Sha256Hex::of(&b) == *hash => {}
                _ => return Err(CatalogError::ContentHash(hash.to_string())),
            }
        }
        Ok(())
    }

    /// The ids of resources whose values must be redacted.
    pub fn sensitive_ids(&self) -> BTreeSet<&ResourceId> {
        self.resources
            .iter()
            .filter(|r| r.sensitive)
            .map(|r| &r.id)
            .collect()
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn file(path: &str, content: Option<ContentRef>) -> Resource {
        let kind = Kind::File {
            path: path.into(),
            ensure: Ensure::Present,
            content,
            mode: Some(0o644),
            owner: None,
            group: None,
            validate: None,
        };
        Resource {
            id: kind.id(),
            kind,
            requires: Default::default(),
            notify: vec![],
            sensitive: false,
            source: None,
            tags: Tags::default(),
            noop: false,
        }
    }

    fn dir(path: &str) -> Resource {
        let kind = Kind::Directory {
            path: path.into(),
            ensure: Ensure::Present,
            mode: None,
            owner: None,
            group: None,
            purge: false,
        };
        Resource {
            id: kind.id(),
            kind,
            requires: Default::default(),
            notify: vec![],
            sensitive: false,
            source: None,
            tags: Tags::default(),
            noop: false,
        }
    }

    fn sample() -> Catalog {
        let mut c = Catalog::new("web1.example", "production", "abc");
        let body = c.add_content(b"hello\n");
        c.resources.push(dir("/etc/app"));
        let mut f = file("/etc/app/app.conf", Some(body));
        f.requires.push(ResourceId::new("directory", "/etc/app"));
        c.resources.push(f);
        c
    }

    #[test]
    fn roundtrip_is_byte_identical_and_hash_stable() {
        let c = sample();
        let bytes = c.to_canonical_json();
        let back = Catalog::from_json(&bytes).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.to_canonical_json(), bytes);
        assert_eq!(back.hash(), c.hash());
        assert!(c.hash().starts_with("sha256:"));
    }

    #[test]
    fn source_and_tags_encode_as_strings() {
        let mut c = sample();
        let name: std::sync::Arc<str> = "profiles/app.toml".into();
        c.resources[0].source = Some(Source::at(name.clone(), 12, 3));
        c.resources[1].source = Some(Source::at(name, 14, 1));
        c.resources[0].tags = vec!["web".to_owned(), "app".to_owned()].into();
        c.resources[1].tags = c.resources[0].tags.clone();
        let text = String::from_utf8(c.to_canonical_json()).unwrap();
        assert!(
            text.contains("\"source\":\"profiles/app.toml:12:3\",\"tags\":[\"web\",\"app\"]"),
            "{text}"
        );
        assert!(
            text.contains("\"source\":\"profiles/app.toml:14:1\""),
            "{text}"
        );
        // Decoded, a source is the text it was sent as, equal to the one
        // compiled; the catalog encodes to the same bytes.
        let back = Catalog::from_json(text.as_bytes()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.to_canonical_json(), text.as_bytes());
        assert_eq!(
            back.resources[0].source.as_ref().unwrap().to_string(),
            "profiles/app.toml:12:3"
        );
        assert_ne!(back.resources[0].source, back.resources[1].source);
        assert_ne!(
            Source::from("profiles/app.toml:12:4"),
            Source::at("profiles/app.toml".into(), 12, 3)
        );
        // Empty tags and no source are left out, as before.
        let plain = String::from_utf8(sample().to_canonical_json()).unwrap();
        assert!(
            !plain.contains("\"tags\"") && !plain.contains("\"source\""),
            "{plain}"
        );
    }

    #[test]
    fn one_requirement_is_held_inline_and_written_as_a_list() {
        let c = sample();
        let f = &c.resources[1];
        // The file's one requirement (its directory) needs no list of its own.
        assert_eq!(f.requires.len(), 1);
        assert!(!f.requires.spilled());
        let text = String::from_utf8(c.to_canonical_json()).unwrap();
        assert!(
            text.contains("\"requires\":[\"directory[/etc/app]\"]"),
            "{text}"
        );
        // No requirement: no key at all, as before.
        assert_eq!(text.matches("\"requires\"").count(), 1, "{text}");
        let back = Catalog::from_json(text.as_bytes()).unwrap();
        assert_eq!(back, c);
        assert!(!back.resources[1].requires.spilled());
        assert_eq!(back.to_canonical_json(), text.as_bytes());
        // Two or more: a list on the heap, same encoding.
        let mut c2 = c.clone();
        c2.resources.insert(0, dir("/srv"));
        c2.resources[2]
            .requires
            .push(ResourceId::new("directory", "/srv"));
        assert!(c2.resources[2].requires.spilled());
        c2.validate().unwrap();
        let text2 = String::from_utf8(c2.to_canonical_json()).unwrap();
        assert!(
            text2.contains("\"requires\":[\"directory[/etc/app]\",\"directory[/srv]\"]"),
            "{text2}"
        );
        let back2 = Catalog::from_json(text2.as_bytes()).unwrap();
        assert_eq!(back2, c2);
        assert_eq!(back2.to_canonical_json(), text2.as_bytes());
        // A requirement that is not a list of strings is refused.
        let bad = text.replace(
            "\"requires\":[\"directory[/etc/app]\"]",
            "\"requires\":\"directory[/etc/app]\"",
        );
        assert!(matches!(
            Catalog::from_json(bad.as_bytes()),
            Err(CatalogError::Decode(_))
        ));
    }

    #[test]
    fn content_hashes_are_bytes_written_as_hex() {
        let mut c = sample();
        let r = c.add_content(b"a body\n");
        let hex = sha256_hex(b"a body\n");
        // Held as bytes, written as the same lowercase hex as before.
        assert_eq!(r.sha256.bytes(), Some(Sha256::digest(b"a body\n").into()));
        assert_eq!(r.sha256.to_string(), hex);
        assert_eq!(r.sha256, hex.as_str());
        let text = String::from_utf8(c.to_canonical_json()).unwrap();
        assert!(
            text.contains(&format!("\"{hex}\":{{\"encoding\"")),
            "{text}"
        );
        let back = Catalog::from_json(text.as_bytes()).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.to_canonical_json(), text.as_bytes());
        assert!(back.contents.keys().all(|k| k.bytes().is_some()));
        // The table is in the order of the hex text.
        let keys: Vec<String> = back.contents.keys().map(|k| k.to_string()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert!(keys.len() > 1 && keys == sorted, "{keys:?}");
        // Text that is no lowercase hex SHA-256 is kept as sent, orders as
        // text and is refused by name.
        for bad in ["ABC", &hex.to_uppercase(), &hex[..63]] {
            let h = Sha256Hex::from(bad);
            assert_eq!(h.bytes(), None);
            assert_eq!(h.to_string(), bad);
            assert_eq!(h.cmp(&Sha256Hex::from(hex.as_str())), bad.cmp(hex.as_str()));
            let mut c2 = c.clone();
            if let Kind::File {
                content: Some(cr), ..
            } = &mut c2.resources[1].kind
            {
                cr.sha256 = h;
            }
            let json = String::from_utf8(c2.to_canonical_json()).unwrap();
            assert!(json.contains(&format!("\"sha256\":\"{bad}\"")), "{json}");
            match Catalog::from_json(json.as_bytes()) {
                Err(CatalogError::MissingContent { hash, .. }) => assert_eq!(hash, bad),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn resource_id_parts() {
        let id = ResourceId::new("file", "/etc/a[1]");
        assert_eq!(id.kind(), "file");
        assert_eq!(id.title(), "/etc/a[1]");
        assert_eq!(id.to_string(), "file[/etc/a[1]]");
    }

    #[test]
    fn rejects_other_format() {
        let mut c = sample();
        c.format = 99;
        let bytes = serde_json::to_vec(&c).unwrap();
        assert_eq!(
            Catalog::from_json(&bytes),
            Err(CatalogError::Format { found: 99 })
        );
    }

    #[test]
    fn rejects_duplicate_dangling_and_backwards_edges() {
        let mut c = sample();
        c.resources.push(dir("/etc/app"));
        assert!(matches!(c.validate(), Err(CatalogError::Duplicate(_))));

        let mut c = sample();
        c.resources[1]
            .requires
            .push(ResourceId::new("package", "x"));
        assert!(matches!(c.validate(), Err(CatalogError::Dangling { .. })));

        let mut c = sample();
        c.resources.swap(0, 1);
        assert!(matches!(c.validate(), Err(CatalogError::Order { .. })));

        let mut c = sample();
        c.resources[1]
            .notify
            .push(ResourceId::new("directory", "/etc/app"));
        assert!(matches!(c.validate(), Err(CatalogError::Order { .. })));
    }

    #[test]
    fn rejects_missing_or_tampered_content() {
        let mut c = sample();
        c.contents.clear();
        assert!(matches!(
            c.validate(),
            Err(CatalogError::MissingContent { .. })
        ));
        let mut c = sample();
        for v in c.contents.values_mut() {
            *v = Blob::Utf8("evil\n".into());
        }
        assert!(matches!(c.validate(), Err(CatalogError::ContentHash(_))));
    }

    #[test]
    fn rejects_mismatched_id_and_unknown_fields() {
        let mut c = sample();
        c.resources[0].id = ResourceId::new("directory", "/elsewhere");
        assert!(matches!(c.validate(), Err(CatalogError::Invalid { .. })));
        let text = String::from_utf8(sample().to_canonical_json()).unwrap();
        let evil = text.replacen("\"format\":1", "\"format\":1,\"extra\":true", 1);
        assert!(matches!(
            Catalog::from_json(evil.as_bytes()),
            Err(CatalogError::Decode(_))
        ));
    }

    #[test]
    fn rejects_unknown_resource_attribute() {
        let text = String::from_utf8(sample().to_canonical_json()).unwrap();
        let evil = text.replacen("\"type\":\"file\"", "\"type\":\"file\",\"setuid\":true", 1);
        assert_ne!(evil, text);
        assert!(matches!(
            Catalog::from_json(evil.as_bytes()),
            Err(CatalogError::Decode(_))
        ));
    }

    #[test]
    fn paths_are_normal_and_claimed_once() {
        for ok in ["/", "/etc", "/etc/x", "/etc/x.d/a b"] {
            assert_eq!(check_normal_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "etc/x",
            "/etc//x",
            "/etc/./x",
            "/etc/x/",
            "/etc/../x",
            "/./x",
            "//",
        ] {
            assert!(check_normal_path(bad).is_err(), "{bad}");
        }
        assert!(
            check_normal_path("/etc//x")
                .unwrap_err()
                .contains("\"/etc/x\"")
        );
        let mut c = sample();
        c.resources.push(dir("/etc/app/app.conf"));
        match c.validate() {
            Err(CatalogError::SamePath {
                first,
                second,
                path,
            }) => {
                assert_eq!(first.0, "file[/etc/app/app.conf]");
                assert_eq!(second.0, "directory[/etc/app/app.conf]");
                assert_eq!(path, "/etc/app/app.conf");
            }
            other => panic!("{other:?}"),
        }
        let mut c = sample();
        c.resources.push(dir("/etc//app"));
        assert!(matches!(c.validate(), Err(CatalogError::Invalid { .. })));
    }

    #[test]
    fn debug_output_never_shows_file_bodies() {
        let mut c = sample();
        c.add_content(b"password=hunter2\n");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("17 bytes"), "{dbg}");
    }

    #[test]
    fn binary_blob_roundtrip() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let mut c = Catalog::new("n", "e", "v");
        let r = c.add_content(&bytes);
        assert!(matches!(c.contents[&r.sha256], Blob::Base64(_)));
        assert_eq!(c.contents[&r.sha256].bytes().unwrap(), bytes);
        c.validate().unwrap();
    }

    /// Every input of the tests above, and more: the lazy decode accepts
    /// and refuses exactly as the whole decode does.
    fn cases() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut push = |c: &Catalog| out.push(serde_json::to_vec(c).unwrap());
        let ok = sample();
        push(&ok);
        let mut c = sample();
        c.resources.push(dir("/etc/app"));
        push(&c);
        let mut c = sample();
        c.resources[1]
            .requires
            .push(ResourceId::new("package", "x"));
        push(&c);
        let mut c = sample();
        c.resources.swap(0, 1);
        push(&c);
        let mut c = sample();
        c.resources[1]
            .notify
            .push(ResourceId::new("directory", "/etc/app"));
        push(&c);
        let mut c = sample();
        c.resources[0]
            .notify
            .push(ResourceId::new("file", "/etc/app/app.conf"));
        push(&c);
        let mut c = sample();
        c.resources[0]
            .notify
            .push(ResourceId::new("file", "/nowhere"));
        push(&c);
        let mut c = sample();
        c.contents.clear();
        push(&c);
        let mut c = sample();
        for v in c.contents.values_mut() {
            *v = Blob::Utf8("evil\n".into());
        }
        push(&c);
        let mut c = sample();
        c.resources[0].id = ResourceId::new("directory", "/elsewhere");
        push(&c);
        let mut c = sample();
        c.resources.push(dir("/etc/app/app.conf"));
        push(&c);
        let mut c = sample();
        c.resources.push(dir("/etc//app"));
        push(&c);
        let mut c = sample();
        c.format = 99;
        push(&c);
        let mut c = sample();
        c.add_content(&(0..=255u8).collect::<Vec<u8>>());
        push(&c);
        let text = String::from_utf8(sample().to_canonical_json()).unwrap();
        // The same catalogs in orders and forms a streaming reader must
        // take as the whole decode does: the content table first, its keys
        // unsorted or given twice, the catalog as an array.
        let mut three = sample();
        three.add_content(b"zzz\n");
        three.add_content(b"aaa\n");
        let v = serde_json::to_value(&three).unwrap();
        let obj = |k: &str| serde_json::to_string(&v[k]).unwrap();
        let entries: Vec<String> = v["contents"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, b)| format!("{}:{b}", serde_json::to_string(k).unwrap()))
            .collect();
        let mut reversed = entries.clone();
        reversed.reverse();
        let (first_key, _) = entries[0].split_once(':').unwrap();
        let head = format!(
            "\"format\":1,\"node\":{},\"environment\":{},\"code_version\":{}",
            obj("node"),
            obj("environment"),
            obj("code_version")
        );
        let reordered = [
            format!(
                "{{\"contents\":{},\"resources\":{},{head}}}",
                obj("contents"),
                obj("resources")
            ),
            format!(
                "{{{head},\"resources\":{},\"contents\":{{{}}}}}",
                obj("resources"),
                reversed.join(",")
            ),
            format!(
                "{{{head},\"resources\":{},\"contents\":{{{},{first_key}:{{\"encoding\":\"utf8\",\"data\":\"x\"}}}}}}",
                obj("resources"),
                entries.join(",")
            ),
            format!(
                "{{{head},\"resources\":{},\"contents\":{{{first_key}:{{\"encoding\":\"utf8\",\"data\":\"x\"}},{}}}}}",
                obj("resources"),
                entries.join(",")
            ),
            format!(
                "[1,{},{},{},{},{}]",
                obj("node"),
                obj("environment"),
                obj("code_version"),
                obj("resources"),
                obj("contents")
            ),
            format!(
                "[1,{},{},{},{}]",
                obj("node"),
                obj("environment"),
                obj("code_version"),
                obj("resources")
            ),
            format!("[1,{}]", obj("node")),
            format!("{{\"resources\":[{{\"id\":1}}],{head}}}").replacen(
                "\"format\":1",
                "\"format\":2",
                1,
            ),
            format!("{{\"resources\":[{{\"id\":1}}],{head}}}"),
            format!("{{{head},\"node\":\"again\",\"resources\":[]}}"),
            format!(
                "{{{head},\"resources\":[],\"contents\":{{\"nothex\":{{\"encoding\":\"utf8\",\"data\":\"x\"}}}}}}"
            ),
            format!("{{{head},\"resources\":[]}} x"),
            format!("{{{head}}}"),
        ];
        for r in reordered {
            out.push(r.into_bytes());
        }
        for evil in [
            text.replacen("\"format\":1", "\"format\":1,\"extra\":true", 1),
            text.replacen("\"type\":\"file\"", "\"type\":\"file\",\"setuid\":true", 1),
            text.replacen("\"encoding\":\"utf8\"", "\"encoding\":\"utf9\"", 1),
            text.replacen("\"mode\":420", "\"mode\":\"420\"", 1),
            sample().to_pretty_json(),
            sample()
                .to_pretty_json()
                .replacen("\"mode\": 420", "\"mode\": -1", 1),
            "{\"format\":1}".into(),
            "[]".into(),
            "".into(),
        ] {
            out.push(evil.into_bytes());
        }
        out
    }

    /// The three ways to make a [`LazyCatalog`]: bytes kept in memory,
    /// bytes spilled to a file, a file read as a stream into a file.
    fn lazies(bytes: &[u8]) -> Vec<Result<LazyCatalog, CatalogError>> {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("catalog.json");
        std::fs::write(&src, bytes).unwrap();
        let spill = || crate::Spill::File(tempfile::tempfile_in(dir.path()).unwrap());
        vec![
            LazyCatalog::from_json(bytes.to_vec()),
            LazyCatalog::from_slice(bytes, spill()),
            LazyCatalog::from_file(&mut std::fs::File::open(&src).unwrap(), spill()),
        ]
    }

    #[test]
    fn lazy_decode_accepts_and_refuses_as_the_whole_decode() {
        for (bytes, lazy) in cases()
            .into_iter()
            .flat_map(|b| lazies(&b).into_iter().map(move |l| (b.clone(), l)))
        {
            let whole = Catalog::from_json(&bytes);
            let text = String::from_utf8_lossy(&bytes);
            match (&whole, &lazy) {
                (Ok(c), Ok(l)) => {
                    assert_eq!(l.hash(), c.hash(), "{text}");
                    let rs: Vec<Resource> = l.resources().collect();
                    assert_eq!(rs, c.resources, "{text}");
                    for (k, v) in &c.contents {
                        assert_eq!(l.content(&k.to_string()), v.bytes(), "{text}");
                    }
                    assert_eq!(l.content(&"0".repeat(64)), None);
                    let mut canon = Vec::new();
                    l.write_canonical(&mut canon).unwrap();
                    assert_eq!(canon, c.to_canonical_json(), "{text}");
                    assert_eq!(
                        (l.node.as_str(), l.code_version.as_str()),
                        ("web1.example", "abc")
                    );
                    for (i, r) in c.resources.iter().enumerate() {
                        let want: Vec<u32> = r
                            .requires
                            .iter()
                            .map(|d| c.resources.iter().position(|x| &x.id == d).unwrap() as u32)
                            .collect();
                        assert_eq!(l.requires_of(i), want.as_slice());
                        let by: Vec<usize> = (0..c.resources.len())
                            .filter(|&j| c.resources[j].notify.contains(&r.id))
                            .collect();
                        assert_eq!(l.notifiers_of(i).collect::<Vec<_>>(), by);
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "{text}"),
                _ => panic!("whole {whole:?} lazy {lazy:?}: {text}"),
            }
        }
    }

    proptest! {
        #[test]
        fn base64_roundtrips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Catalog::from_json(&bytes);
            let _ = LazyCatalog::from_json(bytes);
        }

        #[test]
        fn base64_decode_never_panics(s in "[A-Za-z0-9+/=]{0,40}") {
            let _ = base64_decode(&s);
        }
    }
}
