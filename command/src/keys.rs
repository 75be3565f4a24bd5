//! Key ids, key errors and the [`Signer`] trait: what verifying needs and
//! what a signer implements. The signers themselves (key files, ssh-agent)
//! are the bastion's (`troupe_bastion::keys`); an agent never signs.
//!
//! A **key id** is `ed25519:` followed by the standard base64 of the raw
//! 32-byte public key. It names a key unambiguously and carries the key
//! itself, so a trust list is just a list of key ids. The OpenSSH-style
//! fingerprint (`SHA256:...`, as printed by `ssh-add -l`) is shown next to
//! it for humans.

use std::fmt;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// Prefix of every key id.
pub const KEY_ID_PREFIX: &str = "ed25519:";
/// Minimum passphrase length accepted when creating a key file.
pub const MIN_PASSPHRASE_LEN: usize = 8;

/// Errors about keys, key files and the ssh-agent.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "invalid key id {0:?}: expected `ed25519:` followed by the base64 of a 32-byte public key"
    )]
    InvalidKeyId(String),
    #[error("passphrase too short: at least {MIN_PASSPHRASE_LEN} characters are required")]
    WeakPassphrase,
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "key file {path} is accessible by group or others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error(
        "cannot decrypt key file {path}: wrong passphrase or not an encrypted ed25519 PKCS#8 key"
    )]
    Decrypt { path: PathBuf },
    #[error("cannot encrypt key: {0}")]
    Encrypt(String),
    #[error("random number generator failed: {0}")]
    Random(String),
    #[error("ssh-agent: {0}")]
    Agent(String),
    #[error("ssh-agent holds no ed25519 key{0}")]
    AgentNoKey(String),
    #[error("ssh-agent holds several ed25519 keys; choose one with its key id: {0}")]
    AgentAmbiguous(String),
    #[error("ssh-agent returned a signature that does not verify with the chosen key")]
    AgentBadSignature,
}

/// The id of an ed25519 public key: `ed25519:<base64 of the 32 raw bytes>`.
#[derive(Clone)]
pub struct KeyId {
    text: String,
    key: VerifyingKey,
}

impl PartialEq for KeyId {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for KeyId {}
impl std::hash::Hash for KeyId {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.text.hash(h)
    }
}
impl PartialOrd for KeyId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for KeyId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl KeyId {
    /// The key id of a public key.
    pub fn from_public(key: &VerifyingKey) -> Self {
        Self {
            text: format!("{KEY_ID_PREFIX}{}", STANDARD.encode(key.to_bytes())),
            key: *key,
        }
    }

    /// Parses a key id; refuses anything that is not exactly the canonical
    /// form of a valid ed25519 point (so one key has one id).
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::InvalidKeyId(truncate_for_error(s));
        let b64 = s.strip_prefix(KEY_ID_PREFIX).ok_or_else(bad)?;
        if b64.len() != 44 {
            return Err(bad());
        }
        let raw = STANDARD.decode(b64).map_err(|_| bad())?;
        let key: [u8; 32] = raw.as_slice().try_into().map_err(|_| bad())?;
        let vk = VerifyingKey::from_bytes(&key).map_err(|_| bad())?;
        if vk.is_weak() {
            return Err(bad());
        }
        let id = Self::from_public(&vk);
        if id.text != s {
            return Err(bad());
        }
        Ok(id)
    }

    /// The ed25519 public key this id names.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The OpenSSH fingerprint (`SHA256:` + unpadded base64 of the SHA-256 of
    /// the SSH wire encoding of the key), as printed by `ssh-add -l`.
    pub fn openssh_fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(Sha256::digest(self.ssh_wire_blob()))
        )
    }

    /// The public key in OpenSSH `authorized_keys` form.
    pub fn openssh_public(&self, comment: &str) -> String {
        let mut line = format!("ssh-ed25519 {}", STANDARD.encode(self.ssh_wire_blob()));
        if !comment.is_empty() {
            line.push(' ');
            line.push_str(comment);
        }
        line
    }

    fn ssh_wire_blob(&self) -> Vec<u8> {
        let mut blob = Vec::with_capacity(51);
        blob.extend_from_slice(&11u32.to_be_bytes());
        blob.extend_from_slice(b"ssh-ed25519");
        blob.extend_from_slice(&32u32.to_be_bytes());
        blob.extend_from_slice(self.key.as_bytes());
        blob
    }
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.text)
    }
}

impl std::str::FromStr for KeyId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Something that signs command envelopes with an ed25519 key.
pub trait Signer {
    /// The id of the key that signs.
    fn key_id(&self) -> &KeyId;
    /// Signs `message` (the canonical envelope bytes).
    fn sign(&mut self, message: &[u8]) -> Result<Signature, KeyError>;
}

/// A signer for this crate's own unit tests (the real signers are the
/// bastion's).
#[cfg(test)]
pub(crate) struct TestSigner {
    key: ed25519_dalek::SigningKey,
    id: KeyId,
}

#[cfg(test)]
impl TestSigner {
    pub(crate) fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let id = KeyId::from_public(&key.verifying_key());
        Ok(Self { key, id })
    }

    pub(crate) fn key_id(&self) -> &KeyId {
        &self.id
    }

    pub(crate) fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

#[cfg(test)]
impl Signer for TestSigner {
    fn key_id(&self) -> &KeyId {
        &self.id
    }
    fn sign(&mut self, message: &[u8]) -> Result<Signature, KeyError> {
        use ed25519_dalek::Signer as _;
        Ok(self.key.sign(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TestSigner as FileSigner;

    #[test]
    fn key_id_roundtrip_and_canonical() {
        let s = FileSigner::generate().unwrap();
        let id = s.key_id().clone();
        assert!(id.as_str().starts_with(KEY_ID_PREFIX));
        assert_eq!(KeyId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.verifying_key(), s.verifying_key());
    }

    #[test]
    fn key_id_refuses_bad_forms() {
        let s = FileSigner::generate().unwrap();
        let good = s.key_id().as_str().to_string();
        for bad in [
            "",
            "ed25519:",
            "rsa:AAAA",
            &good[KEY_ID_PREFIX.len()..],
            &format!("{good}="),
            &format!("{good} "),
            &good.replace("ed25519:", "ED25519:"),
            "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        ] {
            assert!(
                matches!(KeyId::parse(bad), Err(KeyError::InvalidKeyId(_))),
                "{bad:?}"
            );
        }
    }
}
