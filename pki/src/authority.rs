//! The certificate authority: key and certificate on disk, state in redb,
//! signing, rejection, revocation, cleaning, CRLs and the audit log.
//!
//! Layout under the CA directory (`DATA/ca`, mode 0700):
//!
//! | file | what |
//! |---|---|
//! | `ca_key.pem` | CA private key, ECDSA P-256, PKCS#8, mode 0600 |
//! | `ca_crt.pem` | self-signed CA certificate |
//! | `ca.redb` | PSK hashes, pending/rejected requests, issued certificates, CRL number |
//! | `crl.pem` | current CRL (a copy for operators; the master serves it) |
//! | `audit.log` | hash-chained JSON lines ([`troupe_base::audit`], head in `audit.log.head`): every PSK issued, sign, reject, revoke, clean, refusal (repeats per source counted, see [`crate::ca_audit`]); rotated to `audit.log.1`… |
//!
//! Every state change happens in one redb write transaction, under one
//! mutex, so concurrent requests cannot both consume a PSK or both get a
//! certificate for one name. A refused request changes nothing but the
//! audit log.
//!
//! After a write failed (e.g. a full disk), redb refuses every later
//! transaction on the open database; the CA then drops it, opens `ca.redb`
//! again and retries the transaction once ([`troupe_base::reopen`]), so it
//! recovers by itself once space is freed, without a restart.

use crate::ca_audit::{CaAudit, CaAuditLimits};
use crate::csr::{CheckedCsr, CsrError, check_csr};
use crate::name::{NameError, validate_host_name};
use crate::psk::{self, PskError, PskRecord};
use crate::util::{self, fingerprint_sha256, now, pem_encode, write_atomic};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
use thiserror::Error;
use troupe_base::error_code::ErrorCode;
use troupe_base::reopen::{Reopening, ReopeningDb};

const PSKS: TableDefinition<&str, &[u8]> = TableDefinition::new("psks");
const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests");
const CERTS: TableDefinition<&str, &[u8]> = TableDefinition::new("certs");
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Default for [`CaPolicy::max_pending`].
pub const MAX_PENDING_REQUESTS: u64 = 10_000;

/// Tunables of the CA.
#[derive(Debug, Clone)]
pub struct CaPolicy {
    /// Lifetime of host certificates, seconds.
    pub cert_ttl_secs: u64,
    /// Lifetime of the CA certificate when it is created, seconds.
    pub ca_ttl_secs: u64,
    /// Validity of each CRL (`nextUpdate - thisUpdate`), seconds.
    pub crl_ttl_secs: u64,
    /// Most pending (or rejected, not yet cleaned) requests kept: a flood
    /// of unauthenticated CSRs cannot grow the CA's state without bound.
    pub max_pending: u64,
    /// Rotation and refusal aggregation of `audit.log`.
    pub audit: CaAuditLimits,
}

impl Default for CaPolicy {
    fn default() -> Self {
        CaPolicy {
            cert_ttl_secs: 365 * 86_400,
            ca_ttl_secs: 10 * 365 * 86_400,
            crl_ttl_secs: 7 * 86_400,
            max_pending: MAX_PENDING_REQUESTS,
            audit: CaAuditLimits::default(),
        }
    }
}

/// Why a CA operation failed. Client errors come first; the last three are
/// the CA's own trouble.
#[derive(Debug, Error)]
pub enum CaError {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Psk(#[from] PskError),
    #[error(
        "host {host:?} already has a valid certificate (serial {serial}, expires {expires}); renew it over mutual TLS, or run `troupe ca clean {host}` first"
    )]
    AlreadyCertified {
        host: String,
        serial: String,
        expires: String,
    },
    #[error(
        "host {0:?} has a revoked certificate; an operator must run `troupe ca clean {0}` before it can join again"
    )]
    RevokedHost(String),
    #[error(
        "a different certificate request for {0:?} is already pending; an operator must sign, reject or clean it first"
    )]
    PendingConflict(String),
    #[error(
        "the CA already holds {0} pending or rejected requests; an operator must sign, reject or clean some first"
    )]
    TooManyPending(u64),
    #[error("no pending certificate request for {0:?}")]
    NoPending(String),
    #[error("host {0:?} has no valid certificate")]
    NoValidCert(String),
    #[error("nothing is known about host {0:?}")]
    UnknownHost(String),
    #[error("the client certificate (serial {0}) is revoked, expired or unknown to this CA")]
    PeerNotValid(String),
    #[error("CA storage error: {0}")]
    Storage(StorageFailure),
    #[error("CA file error: {0}")]
    Io(String),
    #[error("CA crypto error: {0}")]
    Crypto(String),
}

impl CaError {
    /// True when the caller is at fault (bad input or state), false when the
    /// CA itself failed.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            CaError::Storage(_) | CaError::Io(_) | CaError::Crypto(_)
        )
    }

    /// The typed code carried to clients (admin socket, gRPC metadata).
    pub fn code(&self) -> ErrorCode {
        match self {
            CaError::Csr(CsrError::TooLarge(_)) | CaError::TooManyPending(_) => {
                ErrorCode::LimitExceeded
            }
            CaError::Csr(_) | CaError::Name(_) => ErrorCode::InvalidArgument,
            CaError::Psk(_) => ErrorCode::PermissionDenied,
            CaError::AlreadyCertified { .. } => ErrorCode::AlreadyCertified,
            CaError::RevokedHost(_) | CaError::PeerNotValid(_) => ErrorCode::Revoked,
            CaError::PendingConflict(_) => ErrorCode::Conflict,
            CaError::NoPending(_) => ErrorCode::NoPendingRequest,
            CaError::NoValidCert(_) => ErrorCode::NoValidCertificate,
            CaError::UnknownHost(_) => ErrorCode::NotFound,
            CaError::Storage(_) | CaError::Io(_) | CaError::Crypto(_) => ErrorCode::Internal,
        }
    }
}

/// What went wrong in the CA's database.
#[derive(Debug)]
pub struct StorageFailure {
    message: String,
    previous_io: bool,
}

impl StorageFailure {
    fn new(message: impl Into<String>) -> Self {
        StorageFailure {
            message: message.into(),
            previous_io: false,
        }
    }
    /// True when redb refused because an earlier write failed (`PreviousIo`):
    /// the database must be opened again.
    pub fn is_previous_io(&self) -> bool {
        self.previous_io
    }
}

impl std::fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A redb error, told apart by its variant.
fn st(e: impl Into<redb::Error>) -> CaError {
    let e: redb::Error = e.into();
    match &e {
        // redb refuses every transaction after a failed write (e.g. a full
        // disk) until the database is opened again, which `Authority::db`
        // does; this message stays when the retry was refused too.
        redb::Error::PreviousIo => CaError::Storage(StorageFailure {
            message: format!(
                "the CA database stopped after an earlier write failed (disk full?); \
                 nothing was changed: free space, the master reopens the database \
                 by itself on the next request ({e})"
            ),
            previous_io: true,
        }),
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
            CaError::Storage(StorageFailure::new(format!(
                "{e}: nothing was changed (disk full? free space: the master \
                 recovers by itself on the next request)"
            )))
        }
        _ => CaError::Storage(StorageFailure::new(e.to_string())),
    }
}
/// A record that does not decode (or encode).
fn bad(e: impl std::fmt::Display) -> CaError {
    CaError::Storage(StorageFailure::new(e.to_string()))
}
/// The CA database's handle is stopped by an earlier I/O error.
fn stopped(e: &CaError) -> bool {
    matches!(e, CaError::Storage(f) if f.previous_io)
}
fn reopen_failed(m: String) -> CaError {
    CaError::Storage(StorageFailure::new(format!(
        "cannot open the CA database again after an earlier write failed \
         (disk full?): {m}; nothing was changed: free space, the master \
         retries by itself on the next request"
    )))
}
fn io(e: impl std::fmt::Display) -> CaError {
    CaError::Io(e.to_string())
}
fn cr(e: impl std::fmt::Display) -> CaError {
    CaError::Crypto(e.to_string())
}

/// A request waiting for (or refused by) an operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRecord {
    pub host: String,
    /// Hex DER of the CSR.
    pub csr: String,
    /// Hex SHA-256 of the requester's public key.
    pub spki_sha256: String,
    pub submitted: u64,
    pub source: String,
    /// Set when an operator rejected it.
    pub rejected_at: Option<u64>,
}

/// An issued certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertRecord {
    pub host: String,
    pub serial: String,
    pub not_before: u64,
    pub not_after: u64,
    /// Hex SHA-256 of the public key.
    pub spki_sha256: String,
    /// Hex DER of the certificate.
    pub der: String,
    pub revoked_at: Option<u64>,
    pub revoke_reason: Option<String>,
}

impl CertRecord {
    /// Valid now: not revoked and within its validity period.
    pub fn is_valid(&self, now: u64) -> bool {
        self.revoked_at.is_none() && now >= self.not_before && now < self.not_after
    }
    fn der(&self) -> Vec<u8> {
        hex::decode(&self.der).unwrap_or_default()
    }
}

/// A certificate handed back to a host.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub host: String,
    pub serial: String,
    pub der: Vec<u8>,
    pub pem: String,
    pub not_after: u64,
}

/// Result of a CSR submission.
#[derive(Debug, Clone)]
pub enum SubmitOutcome {
    /// Autosigned with a valid PSK.
    Signed(IssuedCert),
    /// Stored; waits for `troupe ca sign`.
    Pending,
}

/// What a host polling for its certificate learns.
#[derive(Debug, Clone)]
pub enum PollOutcome {
    Signed(IssuedCert),
    Pending,
    Rejected,
    Unknown,
}

/// Which entries `list` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListFilter {
    /// Pending requests and valid certificates.
    Default,
    /// Pending requests only.
    Pending,
    /// Everything: also rejected, revoked and expired, and outstanding PSKs.
    All,
}

/// One line of `troupe ca list`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListEntry {
    pub host: String,
    /// `pending`, `rejected`, `signed`, `revoked`, `expired`, `psk`.
    pub state: String,
    /// Serial (certificates) or public-key fingerprint (requests).
    pub id: String,
    /// Expiry (certificates, PSKs) or submission time (requests), RFC 3339.
    pub time: String,
}

struct Crl {
    der: Vec<u8>,
    pem: String,
}

/// The certificate authority.
pub struct Authority {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_der: Vec<u8>,
    ca_pem: String,
    ca_not_after: u64,
    db: ReopeningDb,
    audit: Mutex<CaAudit>,
    write_lock: Mutex<()>,
    crl: RwLock<Crl>,
    policy: CaPolicy,
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(cr)?;
    b[0] &= 0x7f; // positive
    b[0] |= 0x01; // no leading zero byte: fixed length
    Ok(SerialNumber::from_slice(&b))
}

fn to_time(secs: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX / 2))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn get_json<T: for<'de> Deserialize<'de>>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<T>, CaError> {
    match t.get(key).map_err(st)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(bad),
    }
}

fn put_json<T: Serialize>(
    t: &mut redb::Table<&'static str, &'static [u8]>,
    key: &str,
    v: &T,
) -> Result<(), CaError> {
    let bytes = serde_json::to_vec(v).map_err(bad)?;
    t.insert(key, bytes.as_slice()).map_err(st)?;
    Ok(())
}

fn all_json<T: for<'de> Deserialize<'de>>(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<T>, CaError> {
    let mut out = Vec::new();
    for item in t.iter().map_err(st)? {
        let (_, v) = item.map_err(st)?;
        out.push(serde_json::from_slice(v.value()).map_err(bad)?);
    }
    Ok(out)
}

fn host_serials(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    host: &str,
) -> Result<Vec<String>, CaError> {
    Ok(get_json(t, host)?.unwrap_or_default())
}

fn host_certs(
    hosts: &impl ReadableTable<&'static str, &'static [u8]>,
    certs: &impl ReadableTable<&'static str, &'static [u8]>,
    host: &str,
) -> Result<Vec<CertRecord>, CaError> {
    let mut out = Vec::new();
    for s in host_serials(hosts, host)? {
        if let Some(c) = get_json::<CertRecord>(certs, &s)? {
            out.push(c);
        }
    }
    Ok(out)
}

fn short(s: &str) -> String {
    s.chars().take(300).collect()
}

/// Memory the CA's database may use to cache its pages (redb's default,
/// 1 GiB, would keep every certificate ever read: ~3 KB per host; 16 MiB
/// may hold 1.7 KB per host at 10,000 hosts). The
/// per-request lookups (a host's certificate state) read the branch pages,
/// which stay cached, and one leaf, read from the kernel's page cache when
/// it is not.
const DB_CACHE_BYTES: usize = 4 << 20;

impl Authority {
    /// Opens the CA in `dir`, creating key, certificate and database on
    /// first use.
    pub fn open(dir: &Path, policy: CaPolicy) -> Result<Authority, CaError> {
        util::ensure_private_dir(dir, 0o700).map_err(io)?;
        let key_path = dir.join("ca_key.pem");
        let crt_path = dir.join("ca_crt.pem");
        let (key, ca_der) = if key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path)
                .map_err(|e| CaError::Io(format!("{}: {e}", key_path.display())))?;
            let key = KeyPair::from_pem(&key_pem)
                .map_err(|e| CaError::Io(format!("{}: {e}", key_path.display())))?;
            let crt_pem = std::fs::read(&crt_path)
                .map_err(|e| CaError::Io(format!("{}: {e}", crt_path.display())))?;
            use rustls::pki_types::pem::PemObject;
            let der = CertificateDer::from_pem_slice(&crt_pem)
                .map_err(|e| CaError::Io(format!("{}: {e}", crt_path.display())))?;
            (key, der.as_ref().to_vec())
        } else {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cr)?;
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, "Troupe CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let t = now();
            p.not_before = to_time(t.saturating_sub(300));
            p.not_after = to_time(t.saturating_add(policy.ca_ttl_secs));
            p.serial_number = Some(random_serial()?);
            p.key_identifier_method = KeyIdMethod::Sha256;
            let cert = p.self_signed(&key).map_err(cr)?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io)?;
            write_atomic(&crt_path, cert.pem().as_bytes(), 0o644).map_err(io)?;
            (key, cert.der().as_ref().to_vec())
        };
        let facts = util::cert_facts(&ca_der).map_err(io)?;
        let issuer =
            Issuer::from_ca_cert_der(&CertificateDer::from(ca_der.clone()), key).map_err(cr)?;
        let db_path = dir.join("ca.redb");
        let db = Reopening::open(&db_path, |p: &Path| {
            troupe_base::redb_file::create_db_with_cache(p, DB_CACHE_BYTES)
        })
        .map_err(|e| {
            CaError::Storage(StorageFailure::new(format!(
                "{}: {e} (is another master using this data directory?)",
                db_path.display()
            )))
        })?;
        db.run(
            |db| {
                let w = db.begin_write().map_err(st)?;
                w.open_table(PSKS).map_err(st)?;
                w.open_table(REQUESTS).map_err(st)?;
                w.open_table(CERTS).map_err(st)?;
                w.open_table(HOSTS).map_err(st)?;
                w.open_table(META).map_err(st)?;
                w.commit().map_err(st)
            },
            stopped,
            reopen_failed,
        )?;
        let audit = CaAudit::open(&dir.join("audit.log"), policy.audit)
            .map_err(|e| CaError::Io(e.to_string()))?;
        let ca_pem = pem_encode("CERTIFICATE", &ca_der);
        let a = Authority {
            dir: dir.to_path_buf(),
            issuer,
            ca_der,
            ca_pem,
            ca_not_after: facts.not_after,
            db,
            audit: Mutex::new(audit),
            write_lock: Mutex::new(()),
            crl: RwLock::new(Crl {
                der: Vec::new(),
                pem: String::new(),
            }),
            policy,
        };
        a.refresh_crl()?;
        Ok(a)
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }
    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
    /// SHA-256 fingerprint of the CA certificate (`AB:CD:...`).
    pub fn fingerprint(&self) -> String {
        fingerprint_sha256(&self.ca_der)
    }
    /// The current CRL, DER.
    pub fn crl_der(&self) -> Vec<u8> {
        self.crl.read().map(|c| c.der.clone()).unwrap_or_default()
    }
    /// The current CRL, PEM.
    pub fn crl_pem(&self) -> String {
        self.crl.read().map(|c| c.pem.clone()).unwrap_or_default()
    }
    /// The current CRL for rustls.
    pub fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        vec![CertificateRevocationListDer::from(self.crl_der())]
    }

    /// Appends one event to the hash-chained audit log (fsynced), or, for a
    /// repeated refusal from one source, counts it (see [`crate::ca_audit`]).
    /// Never contains secrets.
    pub fn audit(&self, event: &str, host: &str, detail: serde_json::Value) {
        let mut a = match self.audit.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        let shown = detail.to_string();
        match a.record(now(), event, &short(host), detail) {
            Ok(true) => {
                tracing::info!(target: "troupe::audit", event, host = %short(host), detail = %shown)
            }
            Ok(false) => {
                tracing::debug!(target: "troupe::audit", event, host = %short(host), detail = %shown, "counted")
            }
            Err(e) => tracing::error!("could not write the CA audit log: {e}"),
        }
    }

    /// Writes an audit record that must exist before the change it records
    /// is committed (a certificate issued): if it cannot be written (disk
    /// full), the change is refused, so no certificate is ever issued that
    /// the audit log does not name.
    fn audit_or_refuse(
        &self,
        event: &str,
        host: &str,
        detail: serde_json::Value,
    ) -> Result<(), CaError> {
        let mut a = match self.audit.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        let shown = detail.to_string();
        match a.record(now(), event, &short(host), detail) {
            Ok(_) => {
                tracing::info!(target: "troupe::audit", event, host = %short(host), detail = %shown);
                Ok(())
            }
            Err(e) => Err(CaError::Io(format!(
                "cannot write the CA audit log (disk full?), so nothing is issued: {e}"
            ))),
        }
    }

    /// Writes the pending counts of repeated refusals to the audit log (the
    /// master calls this at shutdown; dropping the CA does it too).
    pub fn flush_audit(&self) {
        let mut a = match self.audit.lock() {
            Ok(a) => a,
            Err(p) => p.into_inner(),
        };
        if let Err(e) = a.flush() {
            tracing::error!("could not write the CA audit log: {e}");
        }
    }

    /// Runs `op` on the database; when redb is stopped by an earlier I/O
    /// error, reopens it and runs `op` once more. `op` must not call `db`.
    fn db<R>(&self, op: impl FnMut(&redb::Database) -> Result<R, CaError>) -> Result<R, CaError> {
        self.db.run(op, stopped, reopen_failed)
    }

    /// Runs `decide` in one write transaction: commits when it returns Ok,
    /// aborts when it refuses (`Ok(Err(refusal))`: nothing committed).
    /// When redb is stopped by an earlier I/O error, the database is opened
    /// again and the whole transaction runs once more.
    fn transact<R>(
        &self,
        mut decide: impl FnMut(&redb::WriteTransaction) -> Result<R, CaError>,
    ) -> Result<Result<R, CaError>, CaError> {
        self.db(|db| {
            let w = db.begin_write().map_err(st)?;
            match decide(&w) {
                Ok(r) => {
                    w.commit().map_err(st)?;
                    Ok(Ok(r))
                }
                // Dropping `w` aborts it; the retry is a new transaction.
                Err(e) if stopped(&e) => Err(e),
                Err(e) => {
                    if let Err(a) = w.abort() {
                        tracing::warn!("CA: aborting a refused transaction: {a}");
                    }
                    Ok(Err(e))
                }
            }
        })
    }

    /// The CA's write mutex (a poisoned one is refused, not unwrapped).
    fn locked(&self) -> Result<MutexGuard<'_, ()>, CaError> {
        self.write_lock
            .lock()
            .map_err(|_| bad("the CA's write lock was poisoned by an earlier panic"))
    }

    /// How many times the CA database was opened (each recovery after an
    /// I/O error adds one).
    pub fn db_generation(&self) -> u64 {
        self.db.generation()
    }

    fn refuse<T>(&self, host: &str, source: &str, e: CaError) -> Result<T, CaError> {
        self.audit(
            "refuse",
            host,
            serde_json::json!({"reason": e.to_string(), "source": source}),
        );
        Err(e)
    }

    /// Regenerates the CRL (new number, fresh dates) from the revoked,
    /// unexpired certificates, and writes `crl.pem`.
    pub fn refresh_crl(&self) -> Result<(), CaError> {
        let _g = self.locked()?;
        self.refresh_crl_locked()
    }

    fn refresh_crl_locked(&self) -> Result<(), CaError> {
        let (der, pem) = self.db(|db| self.write_crl(db))?;
        if let Ok(mut c) = self.crl.write() {
            *c = Crl { der, pem };
        }
        Ok(())
    }

    fn write_crl(&self, db: &redb::Database) -> Result<(Vec<u8>, String), CaError> {
        let t = now();
        let w = db.begin_write().map_err(st)?;
        let (number, revoked) = {
            let mut meta = w.open_table(META).map_err(st)?;
            let n = meta
                .get("crl_number")
                .map_err(st)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert("crl_number", n).map_err(st)?;
            let certs = w.open_table(CERTS).map_err(st)?;
            let all: Vec<CertRecord> = all_json(&certs)?;
            let revoked: Vec<RevokedCertParams> = all
                .iter()
                .filter(|c| c.revoked_at.is_some() && c.not_after > t)
                .filter_map(|c| {
                    Some(RevokedCertParams {
                        serial_number: SerialNumber::from_slice(&hex::decode(&c.serial).ok()?),
                        revocation_time: to_time(c.revoked_at.unwrap_or(t)),
                        reason_code: None,
                        invalidity_date: None,
                    })
                })
                .collect();
            (n, revoked)
        };
        let params = CertificateRevocationListParams {
            this_update: to_time(t.saturating_sub(60)),
            next_update: to_time(t.saturating_add(self.policy.crl_ttl_secs)),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(cr)?;
        let der = crl.der().as_ref().to_vec();
        let pem = pem_encode("X509 CRL", &der);
        write_atomic(&self.dir.join("crl.pem"), pem.as_bytes(), 0o644).map_err(io)?;
        w.commit().map_err(st)?;
        Ok((der, pem))
    }

    /// Issues a new one-time PSK for `host`, replacing any earlier one.
    /// Returns the secret; only its hash is stored.
    pub fn new_psk(&self, host: &str, ttl_secs: u64) -> Result<String, CaError> {
        validate_host_name(host)?;
        if ttl_secs == 0 {
            return Err(CaError::Psk(PskError::Expired(host.into())));
        }
        let p = psk::generate(host, now(), ttl_secs).map_err(cr)?;
        let _g = self.locked()?;
        self.db(|db| {
            let w = db.begin_write().map_err(st)?;
            {
                let mut t = w.open_table(PSKS).map_err(st)?;
                put_json(&mut t, host, &p.record)?;
            }
            w.commit().map_err(st)
        })?;
        self.audit(
            "psk-new",
            host,
            serde_json::json!({"expires": util::fmt_time(p.record.expires)}),
        );
        Ok(p.secret)
    }

    fn sign_leaf(&self, host: &str, spki_der: &[u8]) -> Result<(CertRecord, IssuedCert), CaError> {
        let spki = rcgen::SubjectPublicKeyInfo::from_der(spki_der).map_err(cr)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, host);
        p.subject_alt_names = vec![SanType::DnsName(host.try_into().map_err(cr)?)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Both purposes, as Puppet's agent certificates: the host presents
        // it to the master (clientAuth) and serves TLS with it, e.g. nginx
        // in the `tls` profile (serverAuth); strict clients refuse a
        // clientAuth-only certificate there ("unsuitable certificate
        // purpose"). Agents still never take one for the master's:
        // `tls::client_config` refuses any server leaf with clientAuth.
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let t = now();
        let not_before = t.saturating_sub(300);
        let not_after = t
            .saturating_add(self.policy.cert_ttl_secs)
            .min(self.ca_not_after);
        p.not_before = to_time(not_before);
        p.not_after = to_time(not_after);
        let serial = random_serial()?;
        let serial_hex = hex::encode(serial.to_bytes());
        p.serial_number = Some(serial);
        let cert = p.signed_by(&spki, &self.issuer).map_err(cr)?;
        let der = cert.der().as_ref().to_vec();
        let spki_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(spki_der));
        let rec = CertRecord {
            host: host.to_string(),
            serial: serial_hex.clone(),
            not_before,
            not_after,
            spki_sha256,
            der: hex::encode(&der),
            revoked_at: None,
            revoke_reason: None,
        };
        let issued = IssuedCert {
            host: host.to_string(),
            serial: serial_hex,
            pem: cert.pem(),
            der,
            not_after,
        };
        Ok((rec, issued))
    }

    fn store_cert(w: &redb::WriteTransaction, rec: &CertRecord) -> Result<(), CaError> {
        let mut certs = w.open_table(CERTS).map_err(st)?;
        put_json(&mut certs, &rec.serial, rec)?;
        let mut hosts = w.open_table(HOSTS).map_err(st)?;
        let mut serials = host_serials(&hosts, &rec.host)?;
        serials.push(rec.serial.clone());
        put_json(&mut hosts, &rec.host, &serials)?;
        Ok(())
    }

    /// Handles a CSR from a host that has no certificate yet (bootstrap).
    /// `source` (e.g. the peer address) goes to the audit log.
    pub fn submit_csr(
        &self,
        requested_name: &str,
        csr_input: &[u8],
        source: &str,
    ) -> Result<SubmitOutcome, CaError> {
        let csr = match check_csr(csr_input, requested_name) {
            Ok(c) => c,
            Err(e) => return self.refuse(requested_name, source, e.into()),
        };
        let host = csr.name.as_str();
        let _g = self.locked()?;
        let t = now();
        // Decide inside the transaction; nothing is committed on refusal.
        let decision = self.transact(|w| {
            {
                let hosts = w.open_table(HOSTS).map_err(st)?;
                let certs = w.open_table(CERTS).map_err(st)?;
                let existing = host_certs(&hosts, &certs, host)?;
                if let Some(c) = existing.iter().find(|c| c.is_valid(t)) {
                    return Err(CaError::AlreadyCertified {
                        host: host.into(),
                        serial: c.serial.clone(),
                        expires: util::fmt_time(c.not_after),
                    });
                }
                if existing.iter().any(|c| c.revoked_at.is_some()) {
                    return Err(CaError::RevokedHost(host.into()));
                }
            }
            if let Some(secret) = &csr.psk {
                let mut psks = w.open_table(PSKS).map_err(st)?;
                let own: Option<PskRecord> = get_json(&psks, host)?;
                match psk::verify(host, secret, own.as_ref(), [], t) {
                    Ok(()) => {}
                    // Only a failing key is compared with other hosts' keys,
                    // to say clearly that it was issued for another host.
                    Err(PskError::Wrong(_) | PskError::NoneIssued(_)) => {
                        let others: Vec<PskRecord> = all_json(&psks)?;
                        psk::verify(host, secret, own.as_ref(), others.iter(), t)?;
                    }
                    Err(e) => return Err(e.into()),
                }
                let mut used = own.ok_or_else(|| PskError::NoneIssued(host.into()))?;
                used.used_at = Some(t);
                put_json(&mut psks, host, &used)?;
                drop(psks);
                let (rec, issued) = self.sign_leaf(host, &csr.spki_der)?;
                Self::store_cert(w, &rec)?;
                let mut reqs = w.open_table(REQUESTS).map_err(st)?;
                reqs.remove(host).map_err(st)?;
                // Audited before the commit: a certificate the log cannot
                // name is not issued (the transaction is aborted).
                self.audit_or_refuse(
                    "autosign",
                    host,
                    serde_json::json!({"serial": issued.serial, "source": source, "expires": util::fmt_time(issued.not_after)}),
                )?;
                Ok(SubmitOutcome::Signed(issued))
            } else {
                let mut reqs = w.open_table(REQUESTS).map_err(st)?;
                let spki = hex::encode(csr.spki_sha256);
                if let Some(r) = get_json::<RequestRecord>(&reqs, host)?
                    && r.rejected_at.is_none()
                {
                    return if r.spki_sha256 == spki {
                        Ok(SubmitOutcome::Pending)
                    } else {
                        Err(CaError::PendingConflict(host.into()))
                    };
                }
                if reqs.len().map_err(st)? >= self.policy.max_pending {
                    return Err(CaError::TooManyPending(self.policy.max_pending));
                }
                let rec = RequestRecord {
                    host: host.into(),
                    csr: hex::encode(&csr.der),
                    spki_sha256: spki,
                    submitted: t,
                    source: short(source),
                    rejected_at: None,
                };
                put_json(&mut reqs, host, &rec)?;
                Ok(SubmitOutcome::Pending)
            }
        });
        let decision = match decision {
            Ok(d) => d,
            Err(e) => {
                // The commit failed; an autosign record may already be in
                // the log: say that it did not take effect.
                self.audit(
                    "autosign-failed",
                    host,
                    serde_json::json!({"source": source, "error": e.to_string()}),
                );
                return Err(e);
            }
        };
        match decision {
            Ok(outcome) => {
                if let SubmitOutcome::Pending = &outcome {
                    self.audit(
                        "pending",
                        host,
                        serde_json::json!({"source": source, "key": hex::encode(csr.spki_sha256)}),
                    );
                }
                Ok(outcome)
            }
            Err(e) => self.refuse(host, source, e),
        }
    }

    /// What a bootstrapping host learns about its request: `spki_sha256`
    /// identifies its key, so one host cannot read another's outcome as its
    /// own.
    pub fn poll(&self, host: &str, spki_sha256: &[u8]) -> Result<PollOutcome, CaError> {
        validate_host_name(host)?;
        let spki = hex::encode(spki_sha256);
        self.db(|db| Self::poll_in(db, host, &spki))
    }

    fn poll_in(db: &redb::Database, host: &str, spki: &str) -> Result<PollOutcome, CaError> {
        let r = db.begin_read().map_err(st)?;
        let hosts = r.open_table(HOSTS).map_err(st)?;
        let certs = r.open_table(CERTS).map_err(st)?;
        let t = now();
        for c in host_certs(&hosts, &certs, host)? {
            if c.spki_sha256 == spki && c.is_valid(t) {
                let der = c.der();
                return Ok(PollOutcome::Signed(IssuedCert {
                    host: c.host.clone(),
                    serial: c.serial.clone(),
                    pem: pem_encode("CERTIFICATE", &der),
                    der,
                    not_after: c.not_after,
                }));
            }
        }
        let reqs = r.open_table(REQUESTS).map_err(st)?;
        Ok(match get_json::<RequestRecord>(&reqs, host)? {
            Some(req) if req.spki_sha256 == spki => {
                if req.rejected_at.is_some() {
                    PollOutcome::Rejected
                } else {
                    PollOutcome::Pending
                }
            }
            _ => PollOutcome::Unknown,
        })
    }

    /// Operator: signs the pending request of `host`.
    pub fn sign(&self, host: &str) -> Result<IssuedCert, CaError> {
        validate_host_name(host)?;
        let _g = self.locked()?;
        let res = self.transact(|w| {
            let mut reqs = w.open_table(REQUESTS).map_err(st)?;
            let req = match get_json::<RequestRecord>(&reqs, host)? {
                Some(r) if r.rejected_at.is_none() => r,
                _ => return Err(CaError::NoPending(host.into())),
            };
            let csr: CheckedCsr = check_csr(&hex::decode(&req.csr).map_err(bad)?, host)?;
            reqs.remove(host).map_err(st)?;
            drop(reqs);
            let (rec, issued) = self.sign_leaf(host, &csr.spki_der)?;
            Self::store_cert(w, &rec)?;
            Ok(issued)
        })?;
        match res {
            Ok(c) => {
                self.audit(
                    "sign",
                    host,
                    serde_json::json!({"serial": c.serial, "by": "operator"}),
                );
                Ok(c)
            }
            Err(e) => self.refuse(host, "operator", e),
        }
    }

    /// Operator: rejects the pending request of `host`. The record stays
    /// (marked rejected) so the polling host learns the outcome.
    pub fn reject(&self, host: &str) -> Result<(), CaError> {
        validate_host_name(host)?;
        let _g = self.locked()?;
        let res = self.transact(|w| {
            let mut reqs = w.open_table(REQUESTS).map_err(st)?;
            let mut req = match get_json::<RequestRecord>(&reqs, host)? {
                Some(r) if r.rejected_at.is_none() => r,
                _ => return Err(CaError::NoPending(host.into())),
            };
            req.rejected_at = Some(now());
            put_json(&mut reqs, host, &req)?;
            Ok(())
        })?;
        match res {
            Ok(()) => {
                self.audit("reject", host, serde_json::json!({"by": "operator"}));
                Ok(())
            }
            Err(e) => self.refuse(host, "operator", e),
        }
    }

    fn revoke_in(
        &self,
        w: &redb::WriteTransaction,
        host: &str,
        reason: &str,
    ) -> Result<Vec<String>, CaError> {
        let t = now();
        let hosts = w.open_table(HOSTS).map_err(st)?;
        let mut certs = w.open_table(CERTS).map_err(st)?;
        let mut revoked = Vec::new();
        for mut c in host_certs(&hosts, &certs, host)? {
            if c.is_valid(t) {
                c.revoked_at = Some(t);
                c.revoke_reason = Some(reason.to_string());
                put_json(&mut certs, &c.serial.clone(), &c)?;
                revoked.push(c.serial);
            }
        }
        Ok(revoked)
    }

    /// Operator: revokes every valid certificate of `host`. Takes effect on
    /// the next handshake (the caller reloads the TLS config with the new
    /// CRL) and on the next call (identity checks consult the store).
    pub fn revoke(&self, host: &str) -> Result<Vec<String>, CaError> {
        validate_host_name(host)?;
        let _g = self.locked()?;
        let res = self.transact(|w| match self.revoke_in(w, host, "revoked by operator")? {
            r if r.is_empty() => Err(CaError::NoValidCert(host.into())),
            r => Ok(r),
        })?;
        let revoked = match res {
            Ok(r) => r,
            Err(e @ CaError::NoValidCert(_)) => return self.refuse(host, "operator", e),
            Err(e) => return Err(e),
        };
        self.refresh_crl_locked()?;
        self.audit("revoke", host, serde_json::json!({"serials": revoked}));
        Ok(revoked)
    }

    /// Operator: forgets `host` so it can join again: revokes its valid
    /// certificates (they stay on the CRL until they expire), drops its
    /// pending or rejected request and its unused PSK (a used one stays, so
    /// replaying it is refused as "already used").
    pub fn clean(&self, host: &str) -> Result<Vec<String>, CaError> {
        validate_host_name(host)?;
        let _g = self.locked()?;
        let res = self.transact(|w| {
            let revoked = self.revoke_in(w, host, "cleaned by operator")?;
            let mut known = !revoked.is_empty();
            known |= w
                .open_table(HOSTS)
                .map_err(st)?
                .remove(host)
                .map_err(st)?
                .is_some();
            known |= w
                .open_table(REQUESTS)
                .map_err(st)?
                .remove(host)
                .map_err(st)?
                .is_some();
            // A used PSK is kept (so a replay says "already used"); an
            // unused one is withdrawn.
            let mut psks = w.open_table(PSKS).map_err(st)?;
            if let Some(p) = get_json::<PskRecord>(&psks, host)? {
                known = true;
                if p.used_at.is_none() {
                    psks.remove(host).map_err(st)?;
                }
            }
            if known {
                Ok(revoked)
            } else {
                // Nothing is committed.
                Err(CaError::UnknownHost(host.into()))
            }
        })?;
        match res {
            Ok(revoked) => {
                if !revoked.is_empty() {
                    self.refresh_crl_locked()?;
                }
                self.audit("clean", host, serde_json::json!({"revoked": revoked}));
                Ok(revoked)
            }
            Err(e @ CaError::UnknownHost(_)) => self.refuse(host, "operator", e),
            Err(e) => Err(e),
        }
    }

    /// Checks, on every authenticated call, that the verified client
    /// certificate `serial` of `host` is still valid in the CA's records
    /// (covers revocations during a long-lived connection).
    pub fn check_peer(&self, host: &str, serial: &str) -> Result<(), CaError> {
        let rec = self.db(|db| {
            let r = db.begin_read().map_err(st)?;
            let certs = r.open_table(CERTS).map_err(st)?;
            get_json::<CertRecord>(&certs, serial)
        })?;
        match rec {
            Some(c) if c.host == host && c.is_valid(now()) => Ok(()),
            _ => Err(CaError::PeerNotValid(serial.into())),
        }
    }

    /// Renewal over mutual TLS: `host`/`serial` come from the verified
    /// client certificate. Issues a new certificate for the CSR's key and
    /// revokes the old one (reason: superseded).
    pub fn renew(
        &self,
        host: &str,
        serial: &str,
        csr_input: &[u8],
        source: &str,
    ) -> Result<IssuedCert, CaError> {
        let csr = match check_csr(csr_input, host) {
            Ok(c) => c,
            Err(e) => return self.refuse(host, source, e.into()),
        };
        let _g = self.locked()?;
        let t = now();
        let res = self.transact(|w| {
            let mut certs = w.open_table(CERTS).map_err(st)?;
            let mut old = match get_json::<CertRecord>(&certs, serial)? {
                Some(c) if c.host == host && c.is_valid(t) => c,
                _ => return Err(CaError::PeerNotValid(serial.into())),
            };
            old.revoked_at = Some(t);
            old.revoke_reason = Some("superseded by renewal".into());
            put_json(&mut certs, serial, &old)?;
            drop(certs);
            let (rec, issued) = self.sign_leaf(host, &csr.spki_der)?;
            Self::store_cert(w, &rec)?;
            Ok(issued)
        })?;
        match res {
            Ok(c) => {
                self.refresh_crl_locked()?;
                self.audit(
                    "renew",
                    host,
                    serde_json::json!({"old_serial": serial, "serial": c.serial, "source": source}),
                );
                Ok(c)
            }
            Err(e) => self.refuse(host, source, e),
        }
    }

    /// Lists hosts, requests and (with `All`) PSKs, sorted by host.
    pub fn list(&self, filter: ListFilter) -> Result<Vec<ListEntry>, CaError> {
        self.db(|db| Self::list_in(db, filter))
    }

    fn list_in(db: &redb::Database, filter: ListFilter) -> Result<Vec<ListEntry>, CaError> {
        let t = now();
        let r = db.begin_read().map_err(st)?;
        let mut out = Vec::new();
        let reqs: Vec<RequestRecord> = all_json(&r.open_table(REQUESTS).map_err(st)?)?;
        for q in reqs {
            let state = if q.rejected_at.is_some() {
                "rejected"
            } else {
                "pending"
            };
            if state == "rejected" && filter != ListFilter::All {
                continue;
            }
            out.push(ListEntry {
                host: q.host,
                state: state.into(),
                id: q.spki_sha256,
                time: util::fmt_time(q.submitted),
            });
        }
        if filter != ListFilter::Pending {
            let hosts = r.open_table(HOSTS).map_err(st)?;
            let certs = r.open_table(CERTS).map_err(st)?;
            let names: Vec<String> = hosts
                .iter()
                .map_err(st)?
                .filter_map(|i| i.ok().map(|(k, _)| k.value().to_string()))
                .collect();
            for h in names {
                for c in host_certs(&hosts, &certs, &h)? {
                    let state = if c.revoked_at.is_some() {
                        "revoked"
                    } else if c.not_after <= t {
                        "expired"
                    } else {
                        "signed"
                    };
                    if state != "signed" && filter != ListFilter::All {
                        continue;
                    }
                    out.push(ListEntry {
                        host: c.host,
                        state: state.into(),
                        id: c.serial,
                        time: util::fmt_time(c.not_after),
                    });
                }
            }
        }
        if filter == ListFilter::All {
            let psks: Vec<PskRecord> = all_json(&r.open_table(PSKS).map_err(st)?)?;
            for p in psks {
                let state = if p.used_at.is_some() {
                    "psk-used"
                } else if p.expires <= t {
                    "psk-expired"
                } else {
                    "psk"
                };
                out.push(ListEntry {
                    host: p.host,
                    state: state.into(),
                    id: "-".into(),
                    time: util::fmt_time(p.expires),
                });
            }
        }
        out.sort_by(|a, b| a.host.cmp(&b.host).then(a.state.cmp(&b.state)));
        Ok(out)
    }

    /// Issues the master's own TLS server certificate for `names` (DNS names
    /// or IP addresses). Returns the chain (leaf, CA) and the key.
    pub fn issue_server_cert(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(cr)?;
        let mut p = CertificateParams::new(names.to_vec()).map_err(cr)?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "troupe-master");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let t = now();
        p.not_before = to_time(t.saturating_sub(300));
        p.not_after = to_time(
            t.saturating_add(self.policy.cert_ttl_secs)
                .min(self.ca_not_after),
        );
        p.serial_number = Some(random_serial()?);
        let cert = p.signed_by(&key, &self.issuer).map_err(cr)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(cr)?;
        self.audit(
            "server-cert",
            "troupe-master",
            serde_json::json!({"names": names}),
        );
        Ok((
            vec![
                cert.der().clone(),
                CertificateDer::from(self.ca_der.clone()),
            ],
            key_der,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_base::test_fs::mount_or_skip;

    fn csr(name: &str, psk: Option<&str>) -> Vec<u8> {
        let k = KeyPair::generate().unwrap();
        crate::csr::build_csr(name, &k, psk).unwrap()
    }

    fn state(a: &Authority, host: &str) -> Vec<String> {
        a.list(ListFilter::All)
            .unwrap()
            .into_iter()
            .filter(|e| e.host == host)
            .map(|e| e.state)
            .collect()
    }

    /// On a full disk the CA refuses clearly and changes nothing; once
    /// space is freed the same `Authority` (no restart) signs again.
    #[test]
    fn the_ca_recovers_by_itself_once_a_full_disk_has_space_again() {
        let Some(fs) = mount_or_skip("8m") else {
            return;
        };
        let a = Authority::open(&fs.path.join("ca"), CaPolicy::default()).unwrap();
        let psk = a.new_psk("web1", 3600).unwrap();
        let filler = fs.fill();
        let mut errors = Vec::new();
        for i in 0..4 {
            match a.submit_csr("web1", &csr("web1", Some(&psk)), "test") {
                Ok(_) => panic!("signed on a full disk (attempt {i})"),
                Err(e) => {
                    assert!(!e.is_client_error(), "{e}");
                    errors.push(e.to_string());
                }
            }
            assert!(a.new_psk(&format!("web{}", i + 2), 3600).is_err());
        }
        assert!(
            errors.iter().all(|e| e.contains("disk full")),
            "every refusal names the likely cause: {errors:#?}"
        );
        assert!(
            !errors.iter().any(|e| e.contains("restart")),
            "no restart is needed: {errors:#?}"
        );
        eprintln!("refusals on the full disk: {errors:#?}");
        let generation = a.db_generation();
        assert!(generation > 1, "the CA tried to reopen its database");
        std::fs::remove_file(&filler).unwrap();
        // Nothing was half-written: the key is still unused...
        assert_eq!(state(&a, "web1"), ["psk"]);
        // ...and it is accepted now, by the same process.
        match a.submit_csr("web1", &csr("web1", Some(&psk)), "test") {
            Ok(SubmitOutcome::Signed(c)) => assert_eq!(c.host, "web1"),
            other => panic!("{other:?}"),
        }
        assert_eq!(state(&a, "web1"), ["psk-used", "signed"]);
        assert!(a.new_psk("web2", 3600).is_ok());
        // The refused PSKs of the full disk were never stored.
        assert!(state(&a, "web3").is_empty());
        drop(a);
        let again = Authority::open(&fs.path.join("ca"), CaPolicy::default()).unwrap();
        assert_eq!(state(&again, "web1"), ["psk-used", "signed"]);
        assert_eq!(state(&again, "web2"), ["psk"]);
    }
}
