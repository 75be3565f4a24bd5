//! Certificate renewal and CRL refresh over mutual TLS.
//!
//! [`maintain`] is what the run loop calls before each run: it refreshes
//! the CRL and renews the certificate when less than a third of its
//! lifetime is left. `troupe-agent renew` does the same on demand
//! (`--force` renews regardless of the remaining lifetime).
//!
//! Renewal makes a new key, sends a CSR for our own name over a channel
//! authenticated by the current certificate (the master takes the name
//! from that certificate and revokes it once the new one is issued), checks
//! the answer, writes `key.pem.next` and `cert.pem.next`, then renames them
//! into place (key first). [`troupe_identity::recover_renewal`] finishes
//! the job if the process dies between the renames.
//!
//! A certificate that has already expired (or was revoked) cannot renew
//! itself: the master refuses the handshake. Such a host joins again with
//! `troupe ca clean HOST` on the master and a new bootstrap with a fresh
//! PSK.

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::Digest;
use std::path::{Path, PathBuf};
use troupe_identity::{
    self as identity, CERT_FILE, CERT_NEXT, Identity, KEY_FILE, KEY_NEXT, status_message,
};
use troupe_pki::util;
use troupe_proto::v1::RenewRequest;
use troupe_proto::v1::ca_client::CaClient;
use troupe_proto::v1::certificate_status::State;

/// Options of `troupe-agent renew`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Master URL, e.g. https://master.example.com:8140
    #[arg(long)]
    pub server: String,
    /// State directory (key, certificate, CA, CRL).
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR)]
    pub state: PathBuf,
    /// Renew even if the certificate is far from expiry.
    #[arg(long)]
    pub force: bool,
}

/// What [`maintain`] / [`renew`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewOutcome {
    /// The certificate has more than a third of its lifetime left.
    NotDue { not_after: u64 },
    /// A new certificate is in place.
    Renewed { serial: String, not_after: u64 },
}

/// Runs `troupe-agent renew`.
pub fn run(args: Args) -> Result<u8> {
    troupe_pki::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(maintain(&args.state, &args.server, args.force))? {
        RenewOutcome::NotDue { not_after } => eprintln!(
            "certificate valid until {}: renewal not due yet (use --force to renew now)",
            util::fmt_time(not_after)
        ),
        RenewOutcome::Renewed { serial, not_after } => eprintln!(
            "renewed: new certificate serial {serial}, valid until {}",
            util::fmt_time(not_after)
        ),
    }
    Ok(0)
}

/// Refreshes the CRL, then renews the certificate if due (or `force`).
/// Call before each run; reconnect afterwards if it returns `Renewed`.
pub async fn maintain(state_dir: &Path, server: &str, force: bool) -> Result<RenewOutcome> {
    let id = Identity::load(state_dir)?;
    let channel = id.connect(server).await?;
    Ok(maintain_over(&id, channel, force).await?.0)
}

/// [`maintain`] over a channel the caller opened with `id` (the agent's
/// run does its certificate upkeep, catalog and report on one
/// connection). Also says whether the stored CRL changed: a connection
/// opened before was verified with the old one.
pub async fn maintain_over(
    id: &Identity,
    channel: tonic::transport::Channel,
    force: bool,
) -> Result<(RenewOutcome, bool)> {
    let state_dir = &id.state_dir;
    let pem = identity::fetch_crl(channel.clone(), &id.ca_der)
        .await
        .context("refreshing the CRL")?;
    let path = state_dir.join(identity::CRL_FILE);
    let crl_changed = std::fs::read(&path).ok().as_deref() != Some(pem.as_bytes());
    if crl_changed {
        util::write_atomic(&path, pem.as_bytes(), 0o644).context("storing the CRL")?;
    }
    if !force && !id.renewal_due(util::now()) {
        return Ok((
            RenewOutcome::NotDue {
                not_after: id.not_after,
            },
            crl_changed,
        ));
    }
    Ok((renew(id, channel).await?, crl_changed))
}

/// Renews `id`'s certificate over `channel` (authenticated by `id`).
pub async fn renew(id: &Identity, channel: tonic::transport::Channel) -> Result<RenewOutcome> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the new key pair")?;
    let csr = troupe_pki::build_csr(&id.name, &key, None).context("building the CSR")?;
    let resp = CaClient::new(channel)
        .renew(RenewRequest { csr })
        .await
        .map_err(|s| {
            anyhow!(
                "the master refused to renew {}: {}",
                id.name,
                status_message(&s)
            )
        })?
        .into_inner();
    if State::try_from(resp.state) != Ok(State::Signed) {
        bail!("the master did not renew {}: {}", id.name, resp.message);
    }
    let der = CertificateDer::from_pem_slice(resp.certificate_pem.as_bytes())
        .context("the master sent an unreadable certificate")?;
    let facts = util::cert_facts(der.as_ref()).map_err(|e| anyhow!("renewed certificate: {e}"))?;
    let ours: [u8; 32] =
        sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
    if facts.cn != id.name || facts.spki_sha256 != ours {
        bail!("the renewed certificate is not for this host's new key");
    }
    util::verify_issued_by(der.as_ref(), &id.ca_der)
        .map_err(|e| anyhow!("renewed certificate: {e}"))?;
    let dir = &id.state_dir;
    util::write_atomic(&dir.join(KEY_NEXT), key.serialize_pem().as_bytes(), 0o600)?;
    util::write_atomic(
        &dir.join(CERT_NEXT),
        util::pem_encode("CERTIFICATE", der.as_ref()).as_bytes(),
        0o644,
    )?;
    std::fs::rename(dir.join(KEY_NEXT), dir.join(KEY_FILE))?;
    std::fs::rename(dir.join(CERT_NEXT), dir.join(CERT_FILE))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(RenewOutcome::Renewed {
        serial: facts.serial,
        not_after: facts.not_after,
    })
}
