//! Parsing and policy checks of certificate signing requests (PKCS#10).
//!
//! Everything here treats its input as hostile: sizes are bounded, the
//! signature must verify with the CSR's own key, the subject must be exactly
//! `CN=<requested name>`, and only a short list of attributes and extensions
//! is accepted. Nothing requested is ever copied into a certificate: the CA
//! builds certificates from its own policy and takes only the public key.

use crate::name::{NameError, validate_host_name};
use crate::psk::MAX_PSK_LEN;
use sha2::{Digest, Sha256};
use thiserror::Error;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Version;

/// Largest CSR (DER or PEM) the CA will parse.
pub const MAX_CSR_BYTES: usize = 16 * 1024;
/// Puppet's `pp_preshared_key` extension, carrying the PSK as a DER UTF8String.
pub const OID_PP_PRESHARED_KEY: &str = "1.3.6.1.4.1.34380.1.1.4";
/// PKCS#9 challengePassword attribute (what `openssl req` fills in).
pub const OID_CHALLENGE_PASSWORD: &str = "1.2.840.113549.1.9.7";
const OID_EXTENSION_REQUEST: &str = "1.2.840.113549.1.9.14";
const OID_CN: &str = "2.5.4.3";
const OID_SUBJECT_KEY_ID: &str = "2.5.29.14";
const OID_KEY_USAGE: &str = "2.5.29.15";
const OID_SAN: &str = "2.5.29.17";
const OID_BASIC_CONSTRAINTS: &str = "2.5.29.19";
const OID_EXT_KEY_USAGE: &str = "2.5.29.37";

/// Extensions a CSR may request. They are checked, then ignored: the
/// certificate's extensions come from CA policy only.
pub const ALLOWED_EXTENSIONS: &[&str] = &[
    OID_PP_PRESHARED_KEY,
    OID_SUBJECT_KEY_ID,
    OID_KEY_USAGE,
    OID_SAN,
    OID_BASIC_CONSTRAINTS,
    OID_EXT_KEY_USAGE,
];

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a CSR was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CsrError {
    #[error("the CSR is empty")]
    Empty,
    #[error("the CSR is {0} bytes; at most {MAX_CSR_BYTES} are accepted")]
    TooLarge(usize),
    #[error("the CSR is not valid PEM or DER PKCS#10: {0}")]
    Malformed(String),
    #[error("the CSR has {0} trailing bytes after the request")]
    TrailingBytes(usize),
    #[error("the CSR has version {0}; only version 1 (0) exists")]
    BadVersion(u32),
    #[error("the CSR signature does not verify with the CSR's own public key")]
    BadSignature,
    #[error("the requested name is not acceptable: {0}")]
    BadName(#[from] NameError),
    #[error("the CSR subject must be exactly CN=<name>: {0}")]
    BadSubject(String),
    #[error("the CSR subject CN {subject:?} differs from the requested name {requested:?}")]
    SubjectMismatch { subject: String, requested: String },
    #[error("the CSR public key is not accepted: {0}")]
    BadKey(String),
    #[error("the CSR carries attribute {0}, which is not allowed")]
    DisallowedAttribute(String),
    #[error("the CSR requests extension {0}, which is not allowed")]
    DisallowedExtension(String),
    #[error("the CSR repeats {0}")]
    Duplicate(String),
    #[error("the CSR's extension {oid} is invalid: {reason}")]
    BadExtension { oid: String, reason: String },
    #[error("the CSR carries two different pre-shared keys (extension and challengePassword)")]
    ConflictingPsk,
}

/// A CSR that passed every check.
#[derive(Clone)]
pub struct CheckedCsr {
    /// The host name (equal to the subject CN and the requested name).
    pub name: String,
    /// DER SubjectPublicKeyInfo of the requester's key.
    pub spki_der: Vec<u8>,
    /// SHA-256 of `spki_der`: identifies the requester's key.
    pub spki_sha256: [u8; 32],
    /// The pre-shared key, if the CSR carries one.
    pub psk: Option<String>,
    /// The whole CSR, DER.
    pub der: Vec<u8>,
}

impl std::fmt::Debug for CheckedCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedCsr")
            .field("name", &self.name)
            .field("spki_sha256", &hex::encode(self.spki_sha256))
            .field("psk", &self.psk.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Turns PEM or DER input into DER, within the size limit.
pub fn csr_der(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    if input.is_empty() {
        return Err(CsrError::Empty);
    }
    if input.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(input.len()));
    }
    if input.starts_with(b"-----BEGIN") {
        use rustls::pki_types::CertificateSigningRequestDer;
        use rustls::pki_types::pem::PemObject;
        let der = CertificateSigningRequestDer::from_pem_slice(input)
            .map_err(|e| CsrError::Malformed(format!("PEM: {e}")))?;
        return Ok(der.as_ref().to_vec());
    }
    Ok(input.to_vec())
}

/// Parses `input` (PEM or DER) and checks it against policy for
/// `requested_name`. Never panics, whatever the bytes.
pub fn check_csr(input: &[u8], requested_name: &str) -> Result<CheckedCsr, CsrError> {
    validate_host_name(requested_name)?;
    let der = csr_der(input)?;
    let (rest, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingBytes(rest.len()));
    }
    let info = &csr.certification_request_info;
    if info.version != X509Version(0) {
        return Err(CsrError::BadVersion(info.version.0));
    }
    // The key policy first: a key the CA would never certify (RSA-1024, an
    // unsupported algorithm) is refused for what it is, not as a signature
    // that "does not verify" (ring refuses to verify with small RSA keys).
    check_key(&info.subject_pki)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    // Subject: exactly one RDN holding exactly one CN.
    let rdns: Vec<_> = info.subject.iter_rdn().collect();
    if rdns.len() != 1 {
        return Err(CsrError::BadSubject(format!(
            "it has {} components",
            rdns.len()
        )));
    }
    let attrs: Vec<_> = rdns[0].iter().collect();
    if attrs.len() != 1 || attrs[0].attr_type().to_id_string() != OID_CN {
        return Err(CsrError::BadSubject("it is not a single CN".into()));
    }
    let cn = attrs[0]
        .as_str()
        .map_err(|_| CsrError::BadSubject("the CN is not a string".into()))?;
    if cn != requested_name {
        return Err(CsrError::SubjectMismatch {
            subject: cn.chars().take(300).collect(),
            requested: requested_name.to_string(),
        });
    }

    // Public key: one the CA can certify and peers can verify.
    let spki = &info.subject_pki;

    // Attributes and extensions.
    let mut psk_ext: Option<String> = None;
    let mut psk_challenge: Option<String> = None;
    let mut seen_ext_request = false;
    for attr in info.iter_attributes() {
        let oid = attr.oid.to_id_string();
        match attr.parsed_attribute() {
            ParsedCriAttribute::ChallengePassword(pw) if oid == OID_CHALLENGE_PASSWORD => {
                if psk_challenge.is_some() {
                    return Err(CsrError::Duplicate("challengePassword".into()));
                }
                psk_challenge = Some(pw.0.clone());
            }
            ParsedCriAttribute::ExtensionRequest(req) if oid == OID_EXTENSION_REQUEST => {
                if seen_ext_request {
                    return Err(CsrError::Duplicate("extensionRequest".into()));
                }
                seen_ext_request = true;
                let mut seen = Vec::new();
                for ext in &req.extensions {
                    let ext_oid = ext.oid.to_id_string();
                    if !ALLOWED_EXTENSIONS.contains(&ext_oid.as_str()) {
                        return Err(CsrError::DisallowedExtension(ext_oid));
                    }
                    if seen.contains(&ext_oid) {
                        return Err(CsrError::Duplicate(format!("extension {ext_oid}")));
                    }
                    seen.push(ext_oid.clone());
                    let bad = |reason: &str| CsrError::BadExtension {
                        oid: ext_oid.clone(),
                        reason: reason.to_string(),
                    };
                    match ext_oid.as_str() {
                        OID_PP_PRESHARED_KEY => {
                            psk_ext = Some(decode_utf8_string(ext.value).ok_or_else(|| {
                                bad("pp_preshared_key must be one DER UTF8String")
                            })?);
                        }
                        OID_SAN => match ext.parsed_extension() {
                            ParsedExtension::SubjectAlternativeName(san) => {
                                let only_own_name = san.general_names.iter().all(
                                    |g| matches!(g, GeneralName::DNSName(n) if *n == requested_name),
                                );
                                if !only_own_name {
                                    return Err(bad(
                                        "subjectAltName may only name the requested host",
                                    ));
                                }
                            }
                            _ => return Err(bad("unparsable subjectAltName")),
                        },
                        OID_BASIC_CONSTRAINTS => match ext.parsed_extension() {
                            ParsedExtension::BasicConstraints(bc) if !bc.ca => {}
                            ParsedExtension::BasicConstraints(_) => {
                                return Err(bad("a host may not request a CA certificate"));
                            }
                            _ => return Err(bad("unparsable basicConstraints")),
                        },
                        _ => {
                            if ext.parsed_extension().error().is_some() {
                                return Err(bad("unparsable"));
                            }
                        }
                    }
                }
            }
            _ => return Err(CsrError::DisallowedAttribute(oid)),
        }
    }
    let psk = match (psk_ext, psk_challenge) {
        (Some(a), Some(b)) if a != b => return Err(CsrError::ConflictingPsk),
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    if let Some(p) = &psk
        && p.len() > MAX_PSK_LEN
    {
        return Err(CsrError::BadExtension {
            oid: OID_PP_PRESHARED_KEY.into(),
            reason: format!("pre-shared key longer than {MAX_PSK_LEN} bytes"),
        });
    }
    let spki_der = spki.raw.to_vec();
    let spki_sha256 = Sha256::digest(&spki_der).into();
    Ok(CheckedCsr {
        name: requested_name.to_string(),
        spki_der,
        spki_sha256,
        psk,
        der,
    })
}

fn check_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    use x509_parser::public_key::PublicKey;
    // rcgen must recognise the key type to put it in a certificate.
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|_| {
        CsrError::BadKey(format!(
            "unsupported algorithm {} (use ECDSA P-256/P-384, Ed25519 or RSA >= {MIN_RSA_BITS})",
            spki.algorithm.algorithm.to_id_string()
        ))
    })?;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() < MIN_RSA_BITS => Err(CsrError::BadKey(format!(
            "RSA key of {} bits; RSA keys need at least {MIN_RSA_BITS} bits (or use ECDSA P-256/P-384 or Ed25519)",
            rsa.key_size()
        ))),
        Ok(_) => Ok(()),
        Err(e) => Err(CsrError::BadKey(e.to_string())),
    }
}

/// Decodes exactly one DER UTF8String.
fn decode_utf8_string(value: &[u8]) -> Option<String> {
    let (rest, obj) = x509_parser::der_parser::der::parse_der_utf8string(value).ok()?;
    if !rest.is_empty() {
        return None;
    }
    obj.as_str().ok().map(str::to_string)
}

/// DER encoding of a UTF8String: the value of a `pp_preshared_key` extension.
pub fn encode_psk_extension_value(psk: &str) -> Vec<u8> {
    use x509_parser::asn1_rs::{ToDer, Utf8String};
    Utf8String::new(psk).to_der_vec().unwrap_or_default()
}

/// The OID of `pp_preshared_key` as arcs, for building CSRs with rcgen.
pub const PP_PRESHARED_KEY_ARCS: &[u64] = &[1, 3, 6, 1, 4, 1, 34380, 1, 1, 4];

/// Builds a CSR (DER) for `name` signed by `key`, carrying `psk` (if any) in
/// the `pp_preshared_key` extension. Used by the agent and by tests.
pub fn build_csr(
    name: &str,
    key: &rcgen::KeyPair,
    psk: Option<&str>,
) -> Result<Vec<u8>, rcgen::Error> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    if let Some(psk) = psk {
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                PP_PRESHARED_KEY_ARCS,
                encode_psk_extension_value(psk),
            ));
    }
    Ok(params.serialize_request(key)?.der().as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key() -> rcgen::KeyPair {
        rcgen::KeyPair::generate().unwrap()
    }

    #[test]
    fn good_csr_with_psk_extension() {
        let k = key();
        let der = build_csr("web1", &k, Some("s3cret")).unwrap();
        let c = check_csr(&der, "web1").unwrap();
        assert_eq!(c.name, "web1");
        assert_eq!(c.psk.as_deref(), Some("s3cret"));
        assert_eq!(
            c.spki_der,
            rcgen::PublicKeyData::subject_public_key_info(&k)
        );
        // PEM works too.
        let pem = crate::util::pem_encode("CERTIFICATE REQUEST", &der);
        assert_eq!(
            check_csr(pem.as_bytes(), "web1").unwrap().psk.as_deref(),
            Some("s3cret")
        );
        // Debug never shows the key.
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn csr_without_psk_is_valid_but_has_none() {
        let der = build_csr("web1", &key(), None).unwrap();
        assert_eq!(check_csr(&der, "web1").unwrap().psk, None);
    }

    #[test]
    fn refusals() {
        let k = key();
        let der = build_csr("web1", &k, Some("x")).unwrap();
        assert_eq!(
            check_csr(&der, "web2").unwrap_err(),
            CsrError::SubjectMismatch {
                subject: "web1".into(),
                requested: "web2".into()
            }
        );
        assert!(matches!(check_csr(&der, "Web1"), Err(CsrError::BadName(_))));
        // Flip a bit in the signature (the last byte of the DER).
        let mut bad = der.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(check_csr(&bad, "web1").unwrap_err(), CsrError::BadSignature);
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(
            check_csr(&trailing, "web1").unwrap_err(),
            CsrError::TrailingBytes(1)
        );
        assert_eq!(check_csr(&[], "web1").unwrap_err(), CsrError::Empty);
        assert_eq!(
            check_csr(&vec![0x30; MAX_CSR_BYTES + 1], "web1").unwrap_err(),
            CsrError::TooLarge(MAX_CSR_BYTES + 1)
        );
    }

    #[test]
    fn disallowed_extension_and_ca_request_refused() {
        let k = key();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, "web1");
        p.custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 2, 3, 4],
                vec![5, 0],
            ));
        let der = p.serialize_request(&k).unwrap().der().to_vec();
        assert_eq!(
            check_csr(&der, "web1").unwrap_err(),
            CsrError::DisallowedExtension("1.2.3.4".into())
        );

        let mut p = rcgen::CertificateParams::new(vec!["web1".into()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, "web1");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let der = p.serialize_request(&k).unwrap().der().to_vec();
        assert!(matches!(
            check_csr(&der, "web1"),
            Err(CsrError::BadExtension { .. })
        ));

        let mut p = rcgen::CertificateParams::new(vec!["other".into()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, "web1");
        let der = p.serialize_request(&k).unwrap().der().to_vec();
        assert!(matches!(
            check_csr(&der, "web1"),
            Err(CsrError::BadExtension { .. })
        ));
    }

    #[test]
    fn extra_subject_components_refused() {
        let k = key();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, "web1");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "evil");
        let der = p.serialize_request(&k).unwrap().der().to_vec();
        assert!(matches!(
            check_csr(&der, "web1"),
            Err(CsrError::BadSubject(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = check_csr(&bytes, "web1");
        }

        #[test]
        fn never_panics_on_mutated_csrs(idx in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
            // Mutating a real CSR reaches deeper into the parser than noise.
            static DER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let der = DER.get_or_init(|| build_csr("web1", &rcgen::KeyPair::generate().unwrap(), Some("k")).unwrap());
            let mut m = der.clone();
            let i = idx % m.len();
            m[i] = val;
            m.truncate(1 + cut % m.len());
            let _ = check_csr(&m, "web1");
        }
    }
}
