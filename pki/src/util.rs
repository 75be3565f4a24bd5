//! Small helpers shared by the CA and the agent: atomic private files, PEM,
//! fingerprints, certificate facts, the clock.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Unix seconds now (0 if the clock is before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes `bytes` to `path` atomically and durably (temp file in the same
/// directory, fsync, rename, fsync of the directory), with exactly `mode`
/// from the start, so a private key is never readable by others, even
/// briefly ([`troupe_base::fs::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    troupe_base::fs::write_atomic(
        path,
        bytes,
        troupe_base::fs::Atomic::durable(mode).exact_mode(),
    )
}

/// Creates `dir` (and parents) and sets it to `mode`.
pub fn ensure_private_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// PEM-encodes DER with the given label.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// SHA-256 fingerprint of DER bytes as `AB:CD:...` (openssl's format).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    let d = Sha256::digest(der);
    d.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a SHA-256 fingerprint written as hex, with or without colons, in
/// any case, optionally prefixed with `sha256:` or `SHA256 Fingerprint=`.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let s = s.trim();
    let s = s
        .strip_prefix("SHA256 Fingerprint=")
        .or_else(|| s.strip_prefix("sha256:"))
        .or_else(|| s.strip_prefix("SHA256:"))
        .unwrap_or(s);
    let hexs: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hexs)
        .map_err(|_| "the fingerprint must be 64 hex digits (colons allowed)".to_string())?;
    bytes
        .try_into()
        .map_err(|_| "the fingerprint must be a SHA-256 digest (32 bytes)".to_string())
}

/// Facts about a certificate the CA and the agent need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject common name.
    pub cn: String,
    /// Serial number, lower-case hex.
    pub serial: String,
    /// Unix seconds.
    pub not_before: u64,
    /// Unix seconds.
    pub not_after: u64,
    /// SHA-256 of the SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
}

/// Reads the facts of a DER certificate.
pub fn cert_facts(der: &[u8]) -> Result<CertFacts, String> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("invalid certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or("the certificate has no common name")?
        .to_string();
    let v = cert.validity();
    Ok(CertFacts {
        cn,
        serial: hex::encode(cert.raw_serial()),
        not_before: u64::try_from(v.not_before.timestamp()).unwrap_or(0),
        not_after: u64::try_from(v.not_after.timestamp()).unwrap_or(0),
        spki_sha256: Sha256::digest(cert.public_key().raw).into(),
    })
}

/// Checks that DER certificate `cert` was signed by the CA certificate `ca`.
pub fn verify_issued_by(cert: &[u8], ca: &[u8]) -> Result<(), String> {
    let (_, cert) = X509Certificate::from_der(cert).map_err(|e| format!("certificate: {e}"))?;
    let (_, ca) = X509Certificate::from_der(ca).map_err(|e| format!("CA certificate: {e}"))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| "the certificate is not signed by the CA".to_string())
}

/// Checks that DER CRL `crl` parses and was signed by the CA certificate
/// `ca`.
pub fn verify_crl(crl: &[u8], ca: &[u8]) -> Result<(), String> {
    let (rest, crl) = x509_parser::parse_x509_crl(crl).map_err(|e| format!("invalid CRL: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the CRL".into());
    }
    let (_, ca) = X509Certificate::from_der(ca).map_err(|e| format!("CA certificate: {e}"))?;
    crl.verify_signature(ca.public_key())
        .map_err(|_| "the CRL is not signed by the CA".to_string())
}

/// Formats unix seconds as RFC 3339 UTC.
pub fn fmt_time(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_round_trip() {
        let fp = fingerprint_sha256(b"hello");
        let parsed = parse_fingerprint(&fp).unwrap();
        assert_eq!(parse_fingerprint(&fp.to_lowercase()).unwrap(), parsed);
        assert_eq!(parse_fingerprint(&fp.replace(':', "")).unwrap(), parsed);
        assert_eq!(
            parse_fingerprint(&format!("SHA256 Fingerprint={fp}")).unwrap(),
            parsed
        );
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint("zz").is_err());
    }

    #[test]
    fn atomic_write_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key.pem");
        write_atomic(&p, b"secret", 0o600).unwrap();
        let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        write_atomic(&p, b"again", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"again");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
