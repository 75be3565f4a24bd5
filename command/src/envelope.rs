//! The signed command envelope and its canonical encoding.
//!
//! # Canonical encoding (format version 1)
//!
//! The signed bytes ("body") are, in this fixed order, with every integer
//! big-endian:
//!
//! ```text
//! magic      15 bytes  "troupe-command\0"      (domain separation)
//! version    u8        1
//! id         16 bytes  random
//! signer     str       key id ("ed25519:...")
//! issued_at  i64       unix seconds
//! expires_at i64       unix seconds
//! facts      u16 count, then count × (str key, str value), keys strictly ascending
//! role       opt<str>
//! name       opt<str>  host-name glob
//! limit      opt<u32>
//! action     str
//! args       u16 count, then count × (str name, value), names strictly ascending
//!
//! str      = u32 length, then that many bytes of UTF-8
//! opt<T>   = u8 0 (absent) | u8 1 followed by T
//! value    = u8 1, u8 0|1 (bool) | u8 2, i64 (int) | u8 3, str (string)
//! ```
//!
//! Why it is unambiguous: every field has a fixed position and either a
//! fixed width or an explicit length prefix, so no byte can belong to two
//! fields and no two field lists concatenate to the same bytes. Why it is
//! canonical (one value, one encoding): map keys must be strictly ascending
//! (no reordering, no duplicates), booleans must be 0 or 1, option tags 0 or
//! 1, strings valid UTF-8, and trailing bytes are refused; so
//! `encode(decode(b)) == b` for every accepted `b`. The version byte lets a
//! later format coexist; a version this code does not know is refused.
//!
//! On the wire a [`SignedCommand`] is `u32 body length, body, 64-byte
//! ed25519 signature` over exactly the body bytes.
//!
//! The decoder never panics, never allocates more than the input size, and
//! refuses inputs over [`MAX_BODY`] bytes, strings over [`MAX_STR`] bytes and
//! more than [`MAX_ENTRIES`] facts or arguments.

use std::collections::BTreeMap;
use std::fmt;

use ed25519_dalek::Signature;

use crate::keys::{KeyError, KeyId, Signer};

/// Domain-separation magic at the start of every body.
pub const MAGIC: &[u8; 15] = b"troupe-command\0";
/// The only format version this code reads and writes.
pub const FORMAT_VERSION: u8 = 1;
/// Hard maximum lifetime of a command (expires_at - issued_at), seconds.
pub const MAX_TTL_SECS: i64 = 600;
/// Default lifetime of a command, seconds.
pub const DEFAULT_TTL_SECS: i64 = 120;
/// Longest wait for answers, seconds (the longest command lifetime).
pub const MAX_TIMEOUT_SECS: u32 = 600;
/// Maximum size of an encoded body.
pub const MAX_BODY: usize = 32 * 1024;
/// Maximum size of one encoded string.
pub const MAX_STR: usize = 4096;
/// Maximum number of target facts, and of arguments.
pub const MAX_ENTRIES: usize = 32;
/// Size of a signed command on the wire, at most.
pub const MAX_WIRE: usize = 4 + MAX_BODY + 64;

/// Why bytes are not a valid envelope (or a command cannot be encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope too large: {0} bytes (maximum {MAX_BODY})")]
    TooLarge(usize),
    #[error("envelope truncated")]
    Truncated,
    #[error("not a Troupe command envelope (bad magic)")]
    BadMagic,
    #[error("unsupported envelope format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
    #[error("invalid field {field}: {reason}")]
    Field { field: &'static str, reason: String },
}

fn field(field: &'static str, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError::Field {
        field,
        reason: reason.into(),
    }
}

/// A random 128-bit command id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub [u8; 16]);

impl CommandId {
    /// A fresh id from the operating system's random source.
    pub fn random() -> Result<Self, KeyError> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(b))
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CommandId({self})")
    }
}

impl serde::Serialize for CommandId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A typed argument value. What a value means (package name, version...)
/// comes from the action's schema in the [`crate::registry::Registry`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum ArgValue {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Bool(b) => write!(f, "{b}"),
            ArgValue::Int(i) => write!(f, "{i}"),
            ArgValue::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Which hosts a command is for. All present criteria must hold.
/// `limit` is applied by the sender/master when choosing targets; an agent
/// cannot enforce it and ignores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetFilter {
    /// Fact equalities (flattened fact name → value as text).
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
    /// The host's role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// A shell-style glob over the host name (`web-*.dc1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// At most this many hosts (chosen by the sender).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl TargetFilter {
    /// Checks every criterion's syntax.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        if self.facts.len() > MAX_ENTRIES {
            return Err(field(
                "target.facts",
                format!("more than {MAX_ENTRIES} facts"),
            ));
        }
        for (k, v) in &self.facts {
            if !is_fact_name(k) {
                return Err(field(
                    "target.facts",
                    format!("invalid fact name {:?}", clip(k)),
                ));
            }
            if !is_fact_value(v) {
                return Err(field("target.facts", format!("invalid value for fact {k}")));
            }
        }
        if let Some(r) = &self.role
            && !is_role_name(r)
        {
            return Err(field("target.role", format!("invalid role {:?}", clip(r))));
        }
        if let Some(n) = &self.name
            && let Err(e) = check_host_glob(n)
        {
            return Err(field("target.name", e));
        }
        if self.limit == Some(0) {
            return Err(field("target.limit", "limit must be at least 1"));
        }
        Ok(())
    }

    /// Builds a filter from command-line options: `--where FACT=VALUE`
    /// (repeatable), `--role`, `--name GLOB`, `--limit N`; validated.
    pub fn from_cli(
        wheres: &[String],
        role: Option<String>,
        name: Option<String>,
        limit: Option<u32>,
    ) -> Result<Self, EnvelopeError> {
        let mut facts = BTreeMap::new();
        for w in wheres {
            let m: troupe_base::facts::FactMatch =
                w.parse().map_err(|e: String| field("target.facts", e))?;
            if facts.contains_key(&m.name) {
                return Err(field(
                    "target.facts",
                    format!("fact {} given twice", clip(&m.name)),
                ));
            }
            facts.insert(m.name, m.value);
        }
        let t = Self {
            facts,
            role,
            name,
            limit,
        };
        t.validate()?;
        Ok(t)
    }

    /// Whether a host matches the facts, role and name criteria (not limit).
    pub fn matches(
        &self,
        name: &str,
        role: Option<&str>,
        facts: &BTreeMap<String, String>,
    ) -> bool {
        if let Some(r) = &self.role
            && role != Some(r.as_str())
        {
            return false;
        }
        if let Some(g) = &self.name
            && !host_glob_matches(g, name)
        {
            return false;
        }
        self.facts.iter().all(|(k, v)| facts.get(k) == Some(v))
    }
}

/// An unsigned command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: CommandId,
    pub signer: KeyId,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; at most [`MAX_TTL_SECS`] after `issued_at`.
    pub expires_at: i64,
    pub target: TargetFilter,
    pub action: String,
    pub args: BTreeMap<String, ArgValue>,
}

impl Command {
    /// A new command with a fresh random id, valid from `now` for `ttl_secs`
    /// (1..=[`MAX_TTL_SECS`]).
    pub fn new(
        signer: KeyId,
        action: &str,
        args: BTreeMap<String, ArgValue>,
        target: TargetFilter,
        now: i64,
        ttl_secs: i64,
    ) -> Result<Self, EnvelopeError> {
        if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
            return Err(field(
                "expires_at",
                format!("TTL must be 1..={MAX_TTL_SECS} seconds, got {ttl_secs}"),
            ));
        }
        let id = CommandId::random().map_err(|e| field("id", e.to_string()))?;
        let expires_at = now
            .checked_add(ttl_secs)
            .ok_or_else(|| field("expires_at", "overflow"))?;
        let cmd = Self {
            id,
            signer,
            issued_at: now,
            expires_at,
            target,
            action: action.to_string(),
            args,
        };
        cmd.encode()?;
        Ok(cmd)
    }

    /// The canonical body bytes (what is signed).
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        self.validate_structure()?;
        let mut w = Writer(Vec::with_capacity(256));
        w.0.extend_from_slice(MAGIC);
        w.0.push(FORMAT_VERSION);
        w.0.extend_from_slice(&self.id.0);
        w.str(self.signer.as_str());
        w.0.extend_from_slice(&self.issued_at.to_be_bytes());
        w.0.extend_from_slice(&self.expires_at.to_be_bytes());
        w.0.extend_from_slice(&(self.target.facts.len() as u16).to_be_bytes());
        for (k, v) in &self.target.facts {
            w.str(k);
            w.str(v);
        }
        w.opt_str(self.target.role.as_deref());
        w.opt_str(self.target.name.as_deref());
        match self.target.limit {
            None => w.0.push(0),
            Some(l) => {
                w.0.push(1);
                w.0.extend_from_slice(&l.to_be_bytes());
            }
        }
        w.str(&self.action);
        w.0.extend_from_slice(&(self.args.len() as u16).to_be_bytes());
        for (k, v) in &self.args {
            w.str(k);
            match v {
                ArgValue::Bool(b) => {
                    w.0.push(1);
                    w.0.push(u8::from(*b));
                }
                ArgValue::Int(i) => {
                    w.0.push(2);
                    w.0.extend_from_slice(&i.to_be_bytes());
                }
                ArgValue::Str(s) => {
                    w.0.push(3);
                    w.str(s);
                }
            }
        }
        if w.0.len() > MAX_BODY {
            return Err(EnvelopeError::TooLarge(w.0.len()));
        }
        Ok(w.0)
    }

    /// Decodes canonical body bytes. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_BODY {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let mut r = Reader { b: bytes, pos: 0 };
        if r.take(MAGIC.len())? != MAGIC {
            return Err(EnvelopeError::BadMagic);
        }
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(version));
        }
        let id = CommandId(r.array::<16>()?);
        let signer_text = r.str("signer")?;
        let signer = KeyId::parse(&signer_text).map_err(|e| field("signer", e.to_string()))?;
        let issued_at = i64::from_be_bytes(r.array::<8>()?);
        let expires_at = i64::from_be_bytes(r.array::<8>()?);
        let nfacts = r.count("target.facts")?;
        let mut facts = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..nfacts {
            let k = r.str("target.facts")?;
            let v = r.str("target.facts")?;
            ascending(&mut last, &k, "target.facts")?;
            facts.insert(k, v);
        }
        let role = r.opt_str("target.role")?;
        let name = r.opt_str("target.name")?;
        let limit = match r.u8()? {
            0 => None,
            1 => Some(u32::from_be_bytes(r.array::<4>()?)),
            t => return Err(field("target.limit", format!("invalid option tag {t}"))),
        };
        let action = r.str("action")?;
        let nargs = r.count("args")?;
        let mut args = BTreeMap::new();
        let mut last: Option<String> = None;
        for _ in 0..nargs {
            let k = r.str("args")?;
            ascending(&mut last, &k, "args")?;
            let v = match r.u8()? {
                1 => match r.u8()? {
                    0 => ArgValue::Bool(false),
                    1 => ArgValue::Bool(true),
                    b => {
                        return Err(field(
                            "args",
                            format!("invalid bool byte {b} for {}", clip(&k)),
                        ));
                    }
                },
                2 => ArgValue::Int(i64::from_be_bytes(r.array::<8>()?)),
                3 => ArgValue::Str(r.str("args")?),
                t => {
                    return Err(field(
                        "args",
                        format!("invalid value tag {t} for {}", clip(&k)),
                    ));
                }
            };
            args.insert(k, v);
        }
        if r.pos != bytes.len() {
            return Err(EnvelopeError::TrailingBytes(bytes.len() - r.pos));
        }
        let cmd = Self {
            id,
            signer,
            issued_at,
            expires_at,
            target: TargetFilter {
                facts,
                role,
                name,
                limit,
            },
            action,
            args,
        };
        cmd.validate_structure()?;
        Ok(cmd)
    }

    /// Syntax checks shared by the encoder and the decoder (so the encoder
    /// never produces what the decoder refuses).
    fn validate_structure(&self) -> Result<(), EnvelopeError> {
        if self.expires_at <= self.issued_at {
            return Err(field("expires_at", "expiry is not after issued-at"));
        }
        self.target.validate()?;
        if !is_action_name(&self.action) {
            return Err(field(
                "action",
                format!("invalid action name {:?}", clip(&self.action)),
            ));
        }
        if self.args.len() > MAX_ENTRIES {
            return Err(field("args", format!("more than {MAX_ENTRIES} arguments")));
        }
        for (k, v) in &self.args {
            if !is_arg_name(k) {
                return Err(field(
                    "args",
                    format!("invalid argument name {:?}", clip(k)),
                ));
            }
            if let ArgValue::Str(s) = v
                && s.len() > MAX_STR
            {
                return Err(field(
                    "args",
                    format!("argument {k} longer than {MAX_STR} bytes"),
                ));
            }
        }
        Ok(())
    }

    /// Signs this command.
    pub fn sign(self, signer: &mut dyn Signer) -> Result<SignedCommand, SignError> {
        if signer.key_id() != &self.signer {
            return Err(SignError::SignerMismatch {
                envelope: self.signer.to_string(),
                key: signer.key_id().to_string(),
            });
        }
        let body = self.encode()?;
        let signature = signer.sign(&body)?;
        Ok(SignedCommand {
            body,
            signature: signature.to_bytes(),
            command: self,
        })
    }
}

/// Why a command could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the envelope names signer {envelope} but the key is {key}")]
    SignerMismatch { envelope: String, key: String },
}

/// A command with its signature, as sent on the wire. Decoding checks the
/// structure only: the signature is checked by [`crate::verify::Verifier`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCommand {
    body: Vec<u8>,
    signature: [u8; 64],
    command: Command,
}

impl SignedCommand {
    /// The decoded command (not yet verified!).
    pub fn command(&self) -> &Command {
        &self.command
    }

    /// The exact signed bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The signature over [`SignedCommand::body`].
    pub fn signature(&self) -> Signature {
        Signature::from_bytes(&self.signature)
    }

    /// The wire form: `u32 body length, body, signature`.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.body.len() + 64);
        out.extend_from_slice(&(self.body.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses the wire form. Never panics; refuses anything malformed.
    pub fn from_wire(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_WIRE {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let mut r = Reader { b: bytes, pos: 0 };
        let len = u32::from_be_bytes(r.array::<4>()?) as usize;
        if len > MAX_BODY {
            return Err(EnvelopeError::TooLarge(len));
        }
        let body = r.take(len)?.to_vec();
        let signature = r.array::<64>()?;
        if r.pos != bytes.len() {
            return Err(EnvelopeError::TrailingBytes(bytes.len() - r.pos));
        }
        let command = Command::decode(&body)?;
        Ok(Self {
            body,
            signature,
            command,
        })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn str(&mut self, s: &str) {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.0.push(0),
            Some(s) => {
                self.0.push(1);
                self.str(s);
            }
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        let end = self.pos.checked_add(n).ok_or(EnvelopeError::Truncated)?;
        let s = self.b.get(self.pos..end).ok_or(EnvelopeError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.array::<1>()?[0])
    }
    fn count(&mut self, name: &'static str) -> Result<usize, EnvelopeError> {
        let n = u16::from_be_bytes(self.array::<2>()?) as usize;
        if n > MAX_ENTRIES {
            return Err(field(name, format!("{n} entries (maximum {MAX_ENTRIES})")));
        }
        Ok(n)
    }
    fn str(&mut self, name: &'static str) -> Result<String, EnvelopeError> {
        let n = u32::from_be_bytes(self.array::<4>()?) as usize;
        if n > MAX_STR {
            return Err(field(
                name,
                format!("string of {n} bytes (maximum {MAX_STR})"),
            ));
        }
        let s = self.take(n)?;
        String::from_utf8(s.to_vec()).map_err(|_| field(name, "not valid UTF-8"))
    }
    fn opt_str(&mut self, name: &'static str) -> Result<Option<String>, EnvelopeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str(name)?)),
            t => Err(field(name, format!("invalid option tag {t}"))),
        }
    }
}

fn ascending(last: &mut Option<String>, k: &str, name: &'static str) -> Result<(), EnvelopeError> {
    if let Some(prev) = last
        && k <= prev.as_str()
    {
        return Err(field(
            name,
            "keys not strictly ascending (duplicate or unsorted)",
        ));
    }
    *last = Some(k.to_string());
    Ok(())
}

/// Clips untrusted text for error messages.
#[doc(hidden)]
pub fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// `[a-z][a-z0-9_]*` segments joined by `.`, at most 64 bytes
/// (`ping`, `service.restart`, `postgres.vacuum_db`).
pub fn is_action_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.').all(|seg| {
            let mut c = seg.chars();
            matches!(c.next(), Some('a'..='z'))
                && c.all(|ch| matches!(ch, 'a'..='z' | '0'..='9' | '_'))
        })
}

/// `[a-z][a-z0-9_]*`, at most 64 bytes.
pub fn is_arg_name(s: &str) -> bool {
    !s.contains('.') && is_action_name(s)
}

pub use troupe_base::facts::{is_fact_name, is_fact_value};

/// Role names: `[A-Za-z0-9_.:-]`, 1..=128 bytes (`web`, `role::db`).
pub fn is_role_name(s: &str) -> bool {
    is_fact_name(s)
}

/// Checks a host-name glob: host-name characters plus `* ? [ ] !`,
/// 1..=253 bytes, and a valid pattern.
pub fn check_host_glob(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("host glob must be 1..=253 characters".into());
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-.*?[]!".contains(*c)))
    {
        return Err(format!("character {c:?} is not allowed in a host glob"));
    }
    glob::Pattern::new(s)
        .map(|_| ())
        .map_err(|e| format!("invalid glob {:?}: {}", clip(s), e.msg))
}

/// Whether a host name matches a glob (ASCII case-insensitive, `*` may
/// cross dots). An invalid glob matches nothing.
pub fn host_glob_matches(glob: &str, name: &str) -> bool {
    match glob::Pattern::new(glob) {
        Ok(p) => p.matches_with(
            name,
            glob::MatchOptions {
                case_sensitive: false,
                require_literal_separator: false,
                require_literal_leading_dot: false,
            },
        ),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::TestSigner as FileSigner;

    pub(crate) fn sample(signer: &FileSigner) -> Command {
        let mut args = BTreeMap::new();
        args.insert("name".to_string(), ArgValue::Str("nginx".into()));
        args.insert("noop".to_string(), ArgValue::Bool(true));
        args.insert("count".to_string(), ArgValue::Int(-3));
        let mut facts = BTreeMap::new();
        facts.insert("os.family".to_string(), "debian".to_string());
        let target = TargetFilter {
            facts,
            role: Some("web".into()),
            name: Some("web-*".into()),
            limit: Some(5),
        };
        Command::new(
            signer.key_id().clone(),
            "package.status",
            args,
            target,
            1_700_000_000,
            60,
        )
        .unwrap()
    }

    #[test]
    fn encode_decode_roundtrip_is_canonical() {
        let s = FileSigner::generate().unwrap();
        let c = sample(&s);
        let b = c.encode().unwrap();
        let d = Command::decode(&b).unwrap();
        assert_eq!(d, c);
        assert_eq!(d.encode().unwrap(), b);
        assert!(b.starts_with(MAGIC));
    }

    #[test]
    fn decoder_refusals() {
        let s = FileSigner::generate().unwrap();
        let b = sample(&s).encode().unwrap();
        assert_eq!(
            Command::decode(&b[..b.len() - 1]),
            Err(EnvelopeError::Truncated)
        );
        let mut t = b.clone();
        t.push(0);
        assert_eq!(Command::decode(&t), Err(EnvelopeError::TrailingBytes(1)));
        let mut m = b.clone();
        m[0] ^= 1;
        assert_eq!(Command::decode(&m), Err(EnvelopeError::BadMagic));
        let mut v = b.clone();
        v[MAGIC.len()] = 2;
        assert_eq!(
            Command::decode(&v),
            Err(EnvelopeError::UnsupportedVersion(2))
        );
        assert_eq!(
            Command::decode(&vec![0u8; MAX_BODY + 1]),
            Err(EnvelopeError::TooLarge(MAX_BODY + 1))
        );
        assert_eq!(Command::decode(&[]), Err(EnvelopeError::Truncated));
    }

    #[test]
    fn decoder_refuses_unsorted_or_duplicate_args_and_bad_bools() {
        let s = FileSigner::generate().unwrap();
        let mut c = sample(&s);
        c.target = TargetFilter::default();
        c.args.clear();
        c.args.insert("a".into(), ArgValue::Bool(true));
        c.args.insert("b".into(), ArgValue::Bool(false));
        let b = c.encode().unwrap();
        // Swap the two names "a" and "b": same length, now descending.
        let ia = b.len() - (4 + 1 + 1 + 1) * 2 + 4;
        let ib = b.len() - (4 + 1 + 1 + 1) + 4;
        assert_eq!((b[ia], b[ib]), (b'a', b'b'));
        let mut sw = b.clone();
        sw[ia] = b'b';
        sw[ib] = b'a';
        assert!(matches!(
            Command::decode(&sw),
            Err(EnvelopeError::Field { field: "args", .. })
        ));
        let mut dup = b.clone();
        dup[ib] = b'a';
        assert!(matches!(
            Command::decode(&dup),
            Err(EnvelopeError::Field { field: "args", .. })
        ));
        let mut badbool = b.clone();
        let last = badbool.len() - 1;
        badbool[last] = 2;
        assert!(matches!(
            Command::decode(&badbool),
            Err(EnvelopeError::Field { field: "args", .. })
        ));
    }

    #[test]
    fn new_refuses_bad_ttl_and_names() {
        let s = FileSigner::generate().unwrap();
        let id = s.key_id().clone();
        let t = TargetFilter::default();
        let a = BTreeMap::new();
        assert!(Command::new(id.clone(), "ping", a.clone(), t.clone(), 0, 0).is_err());
        assert!(
            Command::new(
                id.clone(),
                "ping",
                a.clone(),
                t.clone(),
                0,
                MAX_TTL_SECS + 1
            )
            .is_err()
        );
        assert!(Command::new(id.clone(), "ping", a.clone(), t.clone(), 0, MAX_TTL_SECS).is_ok());
        assert!(Command::new(id.clone(), "Ping; rm", a.clone(), t.clone(), 0, 60).is_err());
        let bad_glob = TargetFilter {
            name: Some("web;rm".into()),
            ..Default::default()
        };
        assert!(Command::new(id.clone(), "ping", a.clone(), bad_glob, 0, 60).is_err());
        let mut bad_arg = BTreeMap::new();
        bad_arg.insert("Na me".into(), ArgValue::Bool(true));
        assert!(Command::new(id, "ping", bad_arg, t, 0, 60).is_err());
    }

    #[test]
    fn wire_roundtrip_and_refusals() {
        let mut s = FileSigner::generate().unwrap();
        let c = sample(&s);
        let sc = c.clone().sign(&mut s).unwrap();
        let w = sc.to_wire();
        let back = SignedCommand::from_wire(&w).unwrap();
        assert_eq!(back, sc);
        assert_eq!(back.command(), &c);
        assert_eq!(
            SignedCommand::from_wire(&w[..w.len() - 1]),
            Err(EnvelopeError::Truncated)
        );
        let mut t = w.clone();
        t.push(1);
        assert_eq!(
            SignedCommand::from_wire(&t),
            Err(EnvelopeError::TrailingBytes(1))
        );
        let mut big = w.clone();
        big[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            SignedCommand::from_wire(&big),
            Err(EnvelopeError::TooLarge(_))
        ));
    }

    #[test]
    fn sign_refuses_other_signer() {
        let s = FileSigner::generate().unwrap();
        let mut other = FileSigner::generate().unwrap();
        let c = sample(&s);
        assert!(matches!(
            c.sign(&mut other),
            Err(SignError::SignerMismatch { .. })
        ));
    }

    #[test]
    fn target_from_cli() {
        let t = TargetFilter::from_cli(
            &["os.family=debian".into(), "dc=par1".into()],
            Some("web".into()),
            Some("web-*".into()),
            Some(10),
        )
        .unwrap();
        assert_eq!(t.facts["dc"], "par1");
        assert!(TargetFilter::from_cli(&["nodelimiter".into()], None, None, None).is_err());
        assert!(TargetFilter::from_cli(&["a=1".into(), "a=2".into()], None, None, None).is_err());
        assert!(TargetFilter::from_cli(&[], None, Some("a b".into()), None).is_err());
        assert!(TargetFilter::from_cli(&[], None, None, Some(0)).is_err());
    }

    #[test]
    fn target_matching() {
        let mut facts = BTreeMap::new();
        facts.insert("os.family".to_string(), "debian".to_string());
        facts.insert("dc".to_string(), "par1".to_string());
        let f = TargetFilter {
            facts: [("dc".to_string(), "par1".to_string())].into(),
            role: Some("web".into()),
            name: Some("web-*.example".into()),
            limit: None,
        };
        assert!(f.matches("web-01.example", Some("web"), &facts));
        assert!(f.matches("WEB-01.example", Some("web"), &facts));
        assert!(!f.matches("db-01.example", Some("web"), &facts));
        assert!(!f.matches("web-01.example", Some("db"), &facts));
        assert!(!f.matches("web-01.example", None, &facts));
        facts.insert("dc".to_string(), "ams1".to_string());
        assert!(!f.matches("web-01.example", Some("web"), &facts));
        assert!(TargetFilter::default().matches("anything", None, &BTreeMap::new()));
    }
}
