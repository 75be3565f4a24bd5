//! `troupe-agent bootstrap`: join a master.
//!
//! 1. Make an ECDSA P-256 key pair (`key.pem`, 0600), or reuse the one left
//!    by an earlier, unfinished bootstrap.
//! 2. Connect over TLS trusting nothing but a CA whose SHA-256 fingerprint
//!    equals `--ca-fingerprint` (the master presents it in its chain), fetch
//!    the CA certificate, check its fingerprint again and store it.
//! 3. Send a CSR (`CN=<name>`) carrying the one-time pre-shared key in the
//!    `pp_preshared_key` extension. With a valid key the master signs at
//!    once; without one (or `--psk` omitted) the request waits as pending
//!    and the agent polls with exponential backoff until an operator signs
//!    or rejects it.
//! 4. Check the certificate (our name, our key, signed by the pinned CA),
//!    fetch the CRL, and store both.
//!
//! A master that cannot be reached or drops the connection (down,
//! restarting, network cut) is retried with backoff and jitter for
//! `--retry-for`; answers from the master (refusals) are final. A retry, or
//! a bootstrap resumed with the key of an earlier one, first asks for a
//! certificate already signed for that key, so an answer lost with a
//! killed master never turns into "already certified".
//!
//! ## State directory layout (`--state DIR`, mode 0700)
//!
//! | file | owner | what |
//! |---|---|---|
//! | `key.pem` | bootstrap/renew | private key, PKCS#8 PEM, mode 0600, never logged |
//! | `cert.pem` | bootstrap/renew | this host's certificate |
//! | `ca.pem` | bootstrap | the pinned CA certificate |
//! | `crl.pem` | bootstrap, CRL refresh | the CA's latest CRL (applied to the master's certificate) |
//! | `key.pem.next`, `cert.pem.next` | renew | transient: a renewal between its two renames (see [`crate::identity::recover_renewal`]) |
//!
//! Every other file in that directory (e.g. `agent.redb`) belongs to the
//! converge work and is never touched here. Every write is atomic.

use crate::identity::{self, CA_FILE, CERT_FILE, Identity, KEY_FILE, status_message};
use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use troupe_pki::util;
use troupe_proto::v1::ca_client::CaClient;
use troupe_proto::v1::certificate_status::State;
use troupe_proto::v1::{CertificateStatus, Empty, PollCertificateRequest, SubmitCsrRequest};

/// Options of `troupe-agent bootstrap`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Master URL, e.g. https://master.example.com:8140
    #[arg(long)]
    pub server: String,
    /// This host's name as it will appear in its certificate (lower case,
    /// a-z 0-9 - .).
    #[arg(long)]
    pub name: String,
    /// One-time pre-shared key from `troupe ca psk new HOST`. Without it the
    /// request waits for an operator to run `troupe ca sign HOST`.
    #[arg(long, env = "TROUPE_PSK", hide_env_values = true)]
    pub psk: Option<String>,
    /// SHA-256 fingerprint of the master's CA (`troupe ca fingerprint`).
    /// The agent trusts no other CA.
    #[arg(long)]
    pub ca_fingerprint: String,
    /// State directory (key, certificate, CA, CRL).
    #[arg(long, default_value = crate::state::DEFAULT_STATE_DIR)]
    pub state: PathBuf,
    /// First wait between polls while the request is pending.
    #[arg(long, default_value = "2s")]
    pub poll_initial: humantime::Duration,
    /// Longest wait between polls (the wait doubles up to this).
    #[arg(long, default_value = "60s")]
    pub poll_max: humantime::Duration,
    /// Give up waiting for an operator after this long (default: wait
    /// forever).
    #[arg(long)]
    pub wait: Option<humantime::Duration>,
    /// While the master cannot be reached (down, restarting, network cut),
    /// keep retrying with backoff (--poll-initial doubling up to
    /// --poll-max, with jitter) for this long before giving up.
    #[arg(long, default_value = "5m")]
    pub retry_for: humantime::Duration,
}

/// Runs `troupe-agent bootstrap`.
pub fn run(args: Args) -> Result<u8> {
    troupe_pki::tls::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(bootstrap(&args))?;
    eprintln!(
        "bootstrapped {}: certificate serial {}, valid until {} (state in {})",
        done.name,
        done.serial,
        util::fmt_time(done.not_after),
        args.state.display()
    );
    Ok(0)
}

/// Loads the existing key or makes (and stores) a new one.
fn load_or_create_key(state: &Path) -> Result<rcgen::KeyPair> {
    let path = state.join(KEY_FILE);
    if path.exists() {
        let pem = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return rcgen::KeyPair::from_pem(&pem)
            .with_context(|| format!("{} is not a usable private key", path.display()));
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the key pair")?;
    util::write_atomic(&path, key.serialize_pem().as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(key)
}

/// Fetches the CA over a pinned connection and stores it; returns its DER.
async fn fetch_pinned_ca(channel: Channel, pin: [u8; 32], state: &Path) -> Result<Vec<u8>> {
    let resp = CaClient::new(channel)
        .get_ca_certificate(Empty {})
        .await
        .map_err(|s| anyhow!("fetching the CA certificate: {}", status_message(&s)))?
        .into_inner();
    let der = CertificateDer::from_pem_slice(resp.pem.as_bytes())
        .context("the master sent an unreadable CA certificate")?;
    let got: [u8; 32] = sha2::Sha256::digest(der.as_ref()).into();
    if got != pin {
        bail!(
            "the master's CA fingerprint is {}, not the pinned {}: refusing to trust it",
            util::fingerprint_sha256(der.as_ref()),
            hex::encode_upper(pin)
        );
    }
    util::write_atomic(&state.join(CA_FILE), resp.pem.as_bytes(), 0o644)?;
    Ok(der.as_ref().to_vec())
}

/// Checks a certificate from the master: our name, our key, the pinned CA.
fn check_issued(pem: &str, name: &str, key: &rcgen::KeyPair, ca_der: &[u8]) -> Result<Vec<u8>> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .context("the master sent an unreadable certificate")?;
    let facts = util::cert_facts(der.as_ref()).map_err(|e| anyhow!("issued certificate: {e}"))?;
    if facts.cn != name {
        bail!(
            "the master issued a certificate for {:?}, not {name:?}",
            facts.cn
        );
    }
    let ours: [u8; 32] =
        sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(key)).into();
    if facts.spki_sha256 != ours {
        bail!("the master issued a certificate for another key");
    }
    util::verify_issued_by(der.as_ref(), ca_der).map_err(|e| anyhow!("issued certificate: {e}"))?;
    Ok(der.as_ref().to_vec())
}

/// What a finished bootstrap produced.
#[derive(Debug, Clone)]
pub struct Bootstrapped {
    pub name: String,
    pub serial: String,
    pub not_after: u64,
}

/// The whole bootstrap; see the module docs.
pub async fn bootstrap(args: &Args) -> Result<Bootstrapped> {
    troupe_pki::validate_host_name(&args.name)
        .map_err(|e| anyhow!("--name {:?}: {e}", args.name))?;
    let pin = util::parse_fingerprint(&args.ca_fingerprint)
        .map_err(|e| anyhow!("--ca-fingerprint: {e}"))?;
    util::ensure_private_dir(&args.state, 0o700)
        .with_context(|| format!("creating state directory {}", args.state.display()))?;
    if Identity::exists(&args.state) {
        let detail = match Identity::load(&args.state) {
            Ok(id) => format!(
                "as {} (serial {}, expires {})",
                id.name,
                id.serial,
                util::fmt_time(id.not_after)
            ),
            Err(e) => format!("but its credentials do not load: {e:#}"),
        };
        bail!(
            "{} is already bootstrapped {detail}; to join again, remove {} and {} there \
             (and have the operator run `troupe ca clean {}`)",
            args.state.display(),
            KEY_FILE,
            CERT_FILE,
            args.name
        );
    }
    let reused = args.state.join(KEY_FILE).exists();
    let key = load_or_create_key(&args.state)?;
    // A master that is down or restarting (or a network that drops us) is
    // retried with backoff; answers from the master are final.
    let started = Instant::now();
    let max: Duration = args.poll_max.into();
    let mut delay: Duration = Duration::from(args.poll_initial).min(max);
    let mut tries = 0u32;
    let (ca_der, mut client, first) = loop {
        tries += 1;
        // The key may already be certified when an earlier try (or an
        // earlier bootstrap) was signed but the answer never arrived.
        match submit(args, pin, &key, reused || tries > 1).await {
            Ok(x) => break x,
            Err(Try::Final(e)) => return Err(e),
            Err(Try::Transient(e)) => {
                let pause = delay.mul_f64(0.5 + fastrand::f64());
                if started.elapsed() + pause > Duration::from(args.retry_for) {
                    return Err(e.context(format!(
                        "gave up after {tries} tries in {}",
                        humantime::format_duration(Duration::from_secs(
                            started.elapsed().as_secs()
                        ))
                    )));
                }
                tracing::warn!("{e:#}; retrying in {} ms", pause.as_millis());
                tokio::time::sleep(pause).await;
                delay = (delay * 2).min(max);
            }
        }
    };
    let signed = match State::try_from(first.state) {
        Ok(State::Signed) => first,
        Ok(State::Pending) => wait_for_operator(&mut client, args, &key, &first).await?,
        _ => bail!("unexpected answer from the master: {}", first.message),
    };
    let cert_der = check_issued(&signed.certificate_pem, &args.name, &key, &ca_der)?;
    util::write_atomic(
        &args.state.join(CERT_FILE),
        util::pem_encode("CERTIFICATE", &cert_der).as_bytes(),
        0o644,
    )?;
    let facts = util::cert_facts(&cert_der).map_err(|e| anyhow!(e))?;
    Ok(Bootstrapped {
        name: facts.cn,
        serial: facts.serial,
        not_after: facts.not_after,
    })
}

/// How one try of connect + CSR ended when it did not succeed.
enum Try {
    /// The master could not be reached or the connection broke: retry.
    Transient(anyhow::Error),
    /// An answer (a refusal, a wrong CA) or a local failure: stop.
    Final(anyhow::Error),
}

/// Connection-level failures (worth retrying), as opposed to answers.
fn transient_status(s: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        s.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// True when a connect error is the network's or a down master's (not a
/// TLS, certificate or fingerprint failure, nor a bad --server).
fn transient_connect(e: &anyhow::Error) -> bool {
    let m = format!("{e:#}").to_lowercase();
    let verdict = ["certificate", "fingerprint", "--server", "alert", "verif"]
        .iter()
        .any(|p| m.contains(p));
    !verdict
        || [
            "connection refused",
            "connection reset",
            "connection aborted",
            "no route to host",
            "network is unreachable",
            "timed out",
            "broken pipe",
            "unexpected eof",
            "handshake eof",
            "connection closed",
        ]
        .iter()
        .any(|p| m.contains(p))
}

/// One try: connect with the pinned CA, fetch CA and CRL, then (when this
/// key may already hold a certificate) ask for it, else submit the CSR.
async fn submit(
    args: &Args,
    pin: [u8; 32],
    key: &rcgen::KeyPair,
    maybe_signed: bool,
) -> Result<(Vec<u8>, CaClient<Channel>, CertificateStatus), Try> {
    let fin = Try::Final;
    let st = |what: &str, s: tonic::Status| {
        let e = anyhow!("{what}: {}", status_message(&s));
        if transient_status(&s) {
            Try::Transient(e)
        } else {
            Try::Final(e)
        }
    };
    let config = troupe_pki::tls::pinned_client_config(pin).map_err(|e| fin(e.into()))?;
    let channel = match identity::connect_with(config, &args.server).await {
        Ok(c) => c,
        Err(e) => {
            let e = e.context("connecting with the pinned CA fingerprint");
            return Err(if transient_connect(&e) {
                Try::Transient(e)
            } else {
                Try::Final(e)
            });
        }
    };
    // On this fresh, verified connection a failed call (not a bad answer)
    // is a broken connection: both helpers say "fetching the ...: " then.
    let broken = |e: anyhow::Error| {
        if e.to_string().starts_with("fetching the ") {
            Try::Transient(e)
        } else {
            Try::Final(e)
        }
    };
    let ca_der = fetch_pinned_ca(channel.clone(), pin, &args.state)
        .await
        .map_err(broken)?;
    identity::refresh_crl(channel.clone(), &ca_der, &args.state)
        .await
        .map_err(broken)?;
    let mut client = CaClient::new(channel);
    if maybe_signed {
        let spki: Vec<u8> =
            sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(key)).to_vec();
        let resp = client
            .poll_certificate(PollCertificateRequest {
                name: args.name.clone(),
                public_key_sha256: spki,
            })
            .await
            .map_err(|s| st("asking the master for an earlier request's certificate", s))?
            .into_inner();
        if matches!(
            State::try_from(resp.state),
            Ok(State::Signed | State::Pending)
        ) {
            return Ok((ca_der, client, resp));
        }
    }
    let csr = troupe_pki::build_csr(&args.name, key, args.psk.as_deref())
        .context("building the CSR")
        .map_err(fin)?;
    let first = client
        .submit_csr(SubmitCsrRequest {
            name: args.name.clone(),
            csr,
        })
        .await
        .map_err(|s| {
            st(
                &format!(
                    "the master refused the certificate request for {}",
                    args.name
                ),
                s,
            )
        })?
        .into_inner();
    Ok((ca_der, client, first))
}

/// Polls with exponential backoff until signed, rejected or given up.
async fn wait_for_operator(
    client: &mut CaClient<Channel>,
    args: &Args,
    key: &rcgen::KeyPair,
    first: &CertificateStatus,
) -> Result<CertificateStatus> {
    let spki: Vec<u8> =
        sha2::Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(key)).to_vec();
    eprintln!(
        "certificate request for {} is pending: {}.\n\
         The operator should check that `troupe ca list --pending` shows this key: {}\n\
         Waiting (Ctrl-C to stop; running bootstrap again resumes with the same key).",
        args.name,
        first.message,
        hex::encode(&spki)
    );
    let started = Instant::now();
    let max: Duration = args.poll_max.into();
    let mut delay: Duration = Duration::from(args.poll_initial).min(max);
    loop {
        if let Some(w) = args.wait
            && started.elapsed() + delay > Duration::from(w)
        {
            bail!(
                "gave up after {} waiting for an operator to sign {} (`troupe ca sign {}`)",
                humantime::format_duration(Duration::from_secs(started.elapsed().as_secs())),
                args.name,
                args.name
            );
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(max);
        let resp = match client
            .poll_certificate(PollCertificateRequest {
                name: args.name.clone(),
                public_key_sha256: spki.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown) => {
                tracing::warn!(
                    "polling the master failed ({}); retrying",
                    status_message(&s)
                );
                continue;
            }
            Err(s) => bail!("polling the master: {}", status_message(&s)),
        };
        match State::try_from(resp.state) {
            Ok(State::Signed) => return Ok(resp),
            Ok(State::Pending) => tracing::info!("still pending"),
            Ok(State::Rejected) => bail!(
                "the certificate request for {} was rejected by an operator: {}",
                args.name,
                resp.message
            ),
            _ => bail!(
                "the master no longer knows the request for {}: {}",
                args.name,
                resp.message
            ),
        }
    }
}
