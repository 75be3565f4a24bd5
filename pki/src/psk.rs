//! One-time pre-shared keys (PSKs) bound to a host name.
//!
//! A PSK is 32 random bytes shown once, hex encoded, to the operator or the
//! spawning script. The CA stores only `SHA-256(key)` with the host it was
//! issued for, its expiry and whether it has been used. Checking a presented
//! key compares hashes in constant time; a key is accepted once, only for its
//! own host, and only before it expires.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;

/// Longest PSK the CA will even look at, in bytes.
pub const MAX_PSK_LEN: usize = 256;

/// What the CA stores about an issued PSK. Never the key itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PskRecord {
    /// Host name the key was issued for.
    pub host: String,
    /// Hex SHA-256 of the key.
    pub hash: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds after which the key is refused.
    pub expires: u64,
    /// Unix seconds when the key was consumed, if it was.
    pub used_at: Option<u64>,
}

/// Why a presented PSK was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PskError {
    #[error("no pre-shared key was issued for host {0:?}")]
    NoneIssued(String),
    #[error("the pre-shared key is wrong for host {0:?}")]
    Wrong(String),
    #[error("the pre-shared key presented for {requested:?} was issued for another host")]
    OtherHost { requested: String },
    #[error("the pre-shared key for host {0:?} has already been used")]
    AlreadyUsed(String),
    #[error("the pre-shared key for host {0:?} expired")]
    Expired(String),
    #[error("the pre-shared key is malformed (empty, too long or not printable)")]
    Malformed,
}

/// A freshly generated key: `secret` is shown once, `record` is stored.
pub struct NewPsk {
    pub secret: String,
    pub record: PskRecord,
}

impl std::fmt::Debug for NewPsk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewPsk")
            .field("secret", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

/// Hex SHA-256 of a key, as stored.
pub fn hash_psk(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Generates a new random key for `host`, valid for `ttl_secs` from `now`.
pub fn generate(host: &str, now: u64, ttl_secs: u64) -> Result<NewPsk, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let secret = hex::encode(bytes);
    let record = PskRecord {
        host: host.to_string(),
        hash: hash_psk(&secret),
        created: now,
        expires: now.saturating_add(ttl_secs),
        used_at: None,
    };
    Ok(NewPsk { secret, record })
}

/// Checks that a presented key is well formed (cheap, before any hashing).
pub fn check_format(secret: &str) -> Result<(), PskError> {
    if secret.is_empty()
        || secret.len() > MAX_PSK_LEN
        || !secret.chars().all(|c| c.is_ascii_graphic())
    {
        return Err(PskError::Malformed);
    }
    Ok(())
}

fn hashes_equal(a: &str, b: &str) -> bool {
    // Both are hex of a fixed-size digest; compare the bytes in constant time.
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Decides whether `secret` may sign a certificate for `host` at `now`.
///
/// `own` is the record issued for `host` (if any); `others` are all other
/// hosts' records, consulted only to say "issued for another host" clearly.
/// The hash comparison comes first, so whether a key is used or expired is
/// only revealed to someone who holds it. Changes nothing: the caller marks
/// the record used in the same transaction that signs.
pub fn verify<'a>(
    host: &str,
    secret: &str,
    own: Option<&PskRecord>,
    others: impl IntoIterator<Item = &'a PskRecord>,
    now: u64,
) -> Result<(), PskError> {
    check_format(secret)?;
    let presented = hash_psk(secret);
    let matches_own = own.is_some_and(|r| r.host == host && hashes_equal(&r.hash, &presented));
    if !matches_own {
        let other = others
            .into_iter()
            .filter(|r| r.host != host)
            .fold(false, |acc, r| acc | hashes_equal(&r.hash, &presented));
        if other {
            return Err(PskError::OtherHost {
                requested: host.to_string(),
            });
        }
        return Err(match own {
            None => PskError::NoneIssued(host.to_string()),
            Some(_) => PskError::Wrong(host.to_string()),
        });
    }
    let Some(own) = own else {
        return Err(PskError::NoneIssued(host.to_string()));
    };
    if own.used_at.is_some() {
        return Err(PskError::AlreadyUsed(host.to_string()));
    }
    if now >= own.expires {
        return Err(PskError::Expired(host.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_key_is_accepted_once_then_refused() {
        let p = generate("web1", 100, 60).unwrap();
        assert_eq!(p.secret.len(), 64);
        assert_ne!(p.record.hash, p.secret, "only the hash is stored");
        assert_eq!(verify("web1", &p.secret, Some(&p.record), [], 120), Ok(()));
        let mut used = p.record.clone();
        used.used_at = Some(121);
        assert_eq!(
            verify("web1", &p.secret, Some(&used), [], 122),
            Err(PskError::AlreadyUsed("web1".into()))
        );
    }

    #[test]
    fn wrong_expired_other_host_and_missing_are_distinct_errors() {
        let a = generate("web1", 100, 60).unwrap();
        let b = generate("web2", 100, 60).unwrap();
        assert_eq!(
            verify("web1", &"0".repeat(64), Some(&a.record), [&b.record], 110),
            Err(PskError::Wrong("web1".into()))
        );
        assert_eq!(
            verify("web1", &a.secret, Some(&a.record), [], 160),
            Err(PskError::Expired("web1".into()))
        );
        assert_eq!(
            verify(
                "web1",
                &b.secret,
                Some(&a.record),
                [&a.record, &b.record],
                110
            ),
            Err(PskError::OtherHost {
                requested: "web1".into()
            })
        );
        assert_eq!(
            verify("web3", &a.secret, None, [&a.record, &b.record], 110),
            Err(PskError::OtherHost {
                requested: "web3".into()
            })
        );
        assert_eq!(
            verify("web3", &"ab".repeat(32), None, [&a.record], 110),
            Err(PskError::NoneIssued("web3".into()))
        );
    }

    #[test]
    fn malformed_keys_are_refused_before_hashing() {
        let a = generate("web1", 0, 60).unwrap();
        for bad in ["", "a b", "\u{e9}", &"x".repeat(MAX_PSK_LEN + 1)] {
            assert_eq!(
                verify("web1", bad, Some(&a.record), [], 1),
                Err(PskError::Malformed)
            );
        }
    }

    #[test]
    fn keys_are_random_and_debug_hides_them() {
        let a = generate("h", 0, 1).unwrap();
        let b = generate("h", 0, 1).unwrap();
        assert_ne!(a.secret, b.secret);
        assert!(!format!("{a:?}").contains(&a.secret));
    }

    #[test]
    fn expiry_boundary_is_exclusive() {
        let a = generate("h", 100, 10).unwrap();
        assert_eq!(verify("h", &a.secret, Some(&a.record), [], 109), Ok(()));
        assert_eq!(
            verify("h", &a.secret, Some(&a.record), [], 110),
            Err(PskError::Expired("h".into()))
        );
    }
}
