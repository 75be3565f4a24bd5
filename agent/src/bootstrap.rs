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
//! `--retry-for` (5 minutes by default, `forever` to wait until it answers),
//! one WARN line per retry saying what it waits for; answers from the
//! master (refusals, a CA whose fingerprint is not `--ca-fingerprint`) are
//! final at once. A retry, or a bootstrap resumed with the key of an
//! earlier one, first asks for a certificate already signed for that key,
//! so an answer lost with a killed master never turns into "already
//! certified".
//!
//! A bootstrap that fails leaves the state directory as it found it: the
//! CA and CRL are stored only with the certificate, and a key it made is
//! removed again, unless the master may hold a request for that key (a
//! pending request, or a request whose answer was lost): then the key is
//! kept so that running bootstrap again resumes, and the error says so.
//!
//! ## State directory layout (`--state DIR`, mode 0700)
//!
//! | file | owner | what |
//! |---|---|---|
//! | `key.pem` | bootstrap/renew | private key, PKCS#8 PEM, mode 0600, never logged |
//! | `cert.pem` | bootstrap/renew | this host's certificate |
//! | `ca.pem` | bootstrap | the pinned CA certificate |
//! | `crl.pem` | bootstrap, CRL refresh | the CA's latest CRL (applied to the master's certificate) |
//! | `key.pem.next`, `cert.pem.next` | renew | transient: a renewal between its two renames (see [`troupe_identity::recover_renewal`]) |
//!
//! Every other file in that directory (e.g. `agent.redb`) belongs to the
//! converge work and is never touched here. Every write is atomic.

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use troupe_identity::{
    self as identity, CA_FILE, CERT_FILE, CRL_FILE, Identity, KEY_FILE, status_message,
};
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
    /// --poll-max, with jitter) for this long, then give up (exit 1);
    /// `forever` waits until the master answers. Each retry logs one WARN
    /// line saying why and when it tries again; Ctrl-C stops. Refusals
    /// (a wrong pre-shared key, another CA fingerprint) are never retried.
    #[arg(long, default_value = "5m", value_name = "DURATION|forever")]
    pub retry_for: RetryFor,
}

/// How long to retry a master that cannot be reached: a duration, or
/// `forever` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryFor(pub Option<Duration>);

impl std::str::FromStr for RetryFor {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<RetryFor, String> {
        if s.trim().eq_ignore_ascii_case("forever") {
            return Ok(RetryFor(None));
        }
        let d: humantime::Duration = s
            .parse()
            .map_err(|e| format!("{e} (e.g. 30s, 5m, 1h, or `forever`)"))?;
        Ok(RetryFor(Some(d.into())))
    }
}

impl std::fmt::Display for RetryFor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            None => f.write_str("forever"),
            Some(d) => write!(f, "{}", humantime::format_duration(d)),
        }
    }
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

/// Fetches the CA over a pinned connection; returns its DER and PEM (stored
/// only once the certificate is).
async fn fetch_pinned_ca(channel: Channel, pin: [u8; 32]) -> Result<(Vec<u8>, String)> {
    let resp = CaClient::new(channel)
        .get_ca_certificate(Empty {})
        .await
        .map_err(|s| {
            anyhow::Error::new(identity::CallError::new("fetching the CA certificate", &s))
        })?
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
    Ok((der.as_ref().to_vec(), resp.pem))
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
    identity::parse_server(&args.server)?;
    let dir_existed = args.state.exists();
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
    let key = match load_or_create_key(&args.state) {
        Ok(k) => k,
        Err(e) => return Err(undo(args, e, dir_existed, reused, false)),
    };
    let mut held = false;
    match join(args, pin, &key, reused, &mut held).await {
        Ok(done) => Ok(done),
        Err(e) => Err(undo(args, e, dir_existed, reused, held)),
    }
}

/// After a failed bootstrap: leaves the state directory as it was found.
/// A key this bootstrap made is removed, unless the master may hold a
/// request for it (`held`): then it is kept, and the error says so.
fn undo(
    args: &Args,
    e: anyhow::Error,
    dir_existed: bool,
    reused: bool,
    held: bool,
) -> anyhow::Error {
    let key = args.state.join(KEY_FILE);
    if reused {
        return e;
    }
    if held {
        return anyhow!(
            "{e:#}; {} is kept: the master may hold a request for this key, and running \
             bootstrap again resumes with it (to start over instead, remove it and have the \
             operator run `troupe ca clean {}`)",
            key.display(),
            args.name
        );
    }
    if let Err(r) = std::fs::remove_file(&key)
        && r.kind() != std::io::ErrorKind::NotFound
    {
        return anyhow!("{e:#}; removing {} failed: {r}", key.display());
    }
    if !dir_existed {
        // Only if empty: nothing else was there before us.
        let _ = std::fs::remove_dir(&args.state);
    }
    e
}

/// Connect, submit, wait, check and store; `held` tells whether the
/// master may hold a request for `key` when this fails.
async fn join(
    args: &Args,
    pin: [u8; 32],
    key: &rcgen::KeyPair,
    reused: bool,
    held: &mut bool,
) -> Result<Bootstrapped> {
    // A master that is down or restarting (or a network that drops us) is
    // retried with backoff; answers from the master are final.
    let started = Instant::now();
    let max: Duration = args.poll_max.into();
    let mut delay: Duration = Duration::from(args.poll_initial).min(max);
    let mut tries = 0u32;
    let (ca, crl_pem, mut client, first) = loop {
        tries += 1;
        // The key may already be certified when an earlier try (or an
        // earlier bootstrap) was signed but the answer never arrived.
        match submit(args, pin, key, reused || tries > 1, held).await {
            Ok(x) => break x,
            Err(Try::Final(e)) => return Err(e),
            Err(Try::Transient(e)) => {
                let pause = delay.mul_f64(0.5 + fastrand::f64());
                let waited =
                    humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
                let until = match args.retry_for.0 {
                    Some(limit) if started.elapsed() + pause > limit => {
                        return Err(e.context(format!(
                            "gave up after {tries} tries in {waited} (--retry-for {}; \
                             `--retry-for forever` waits until the master answers)",
                            args.retry_for
                        )));
                    }
                    Some(limit) => format!(
                        "giving up {} from now (--retry-for {})",
                        humantime::format_duration(Duration::from_secs(
                            limit.saturating_sub(started.elapsed()).as_secs()
                        )),
                        args.retry_for
                    ),
                    None => "waiting until it answers (--retry-for forever)".into(),
                };
                tracing::warn!(
                    "{e:#}; retrying in {:.1} s, {until}; Ctrl-C stops",
                    pause.as_secs_f64()
                );
                tokio::time::sleep(pause).await;
                delay = (delay * 2).min(max);
            }
        }
    };
    let signed = match State::try_from(first.state) {
        Ok(State::Signed) => first,
        Ok(State::Pending) => {
            *held = true;
            wait_for_operator(&mut client, args, key, &first, held).await?
        }
        _ => bail!("unexpected answer from the master: {}", first.message),
    };
    let cert_der = check_issued(&signed.certificate_pem, &args.name, key, &ca.0)?;
    // The CA and CRL first, the certificate (what marks a finished
    // bootstrap) last.
    util::write_atomic(&args.state.join(CA_FILE), ca.1.as_bytes(), 0o644)?;
    util::write_atomic(&args.state.join(CRL_FILE), crl_pem.as_bytes(), 0o644)?;
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
/// TLS, certificate or fingerprint failure, nor a bad --server), by the
/// kind the connector classified (see `identity::ConnectFailure`).
fn transient_connect(e: &anyhow::Error) -> bool {
    identity::connect_failure(e).is_some_and(identity::ConnectFailure::is_transient)
}

/// What one successful try brings: the CA (DER, PEM), the CRL (PEM), the
/// client, and the master's first answer.
type Submitted = (
    (Vec<u8>, String),
    String,
    CaClient<Channel>,
    CertificateStatus,
);

/// One try: connect with the pinned CA, fetch CA and CRL, then (when this
/// key may already hold a certificate) ask for it, else submit the CSR.
/// `held` becomes true once the master may hold a request for `key`.
async fn submit(
    args: &Args,
    pin: [u8; 32],
    key: &rcgen::KeyPair,
    maybe_signed: bool,
    held: &mut bool,
) -> Result<Submitted, Try> {
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
            if transient_connect(&e) {
                return Err(Try::Transient(match identity::connect_hint(&e) {
                    Some(hint) => anyhow!("{e:#}; {hint}"),
                    None => e,
                }));
            }
            if identity::connect_failure(&e) == Some(identity::ConnectFailure::PinMismatch) {
                return Err(Try::Final(fingerprint_mismatch(args, pin).await));
            }
            return Err(Try::Final(
                e.context("connecting with the pinned CA fingerprint"),
            ));
        }
    };
    // On this fresh, verified connection a failed call (not a bad answer)
    // is a broken connection: both helpers return a `CallError` then.
    let broken = |e: anyhow::Error| {
        if e.downcast_ref::<identity::CallError>().is_some() {
            Try::Transient(e)
        } else {
            Try::Final(e)
        }
    };
    let ca = fetch_pinned_ca(channel.clone(), pin)
        .await
        .map_err(broken)?;
    let crl_pem = identity::fetch_crl(channel.clone(), &ca.0)
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
            *held = true;
            return Ok((ca, crl_pem, client, resp));
        }
    }
    let csr = troupe_pki::build_csr(&args.name, key, args.psk.as_deref())
        .context("building the CSR")
        .map_err(fin)?;
    // From here until an answer arrives, the master may hold a request.
    *held = true;
    let first = match client
        .submit_csr(SubmitCsrRequest {
            name: args.name.clone(),
            csr,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let e = st(
                &format!(
                    "the master refused the certificate request for {}",
                    args.name
                ),
                s,
            );
            if matches!(e, Try::Final(_)) {
                *held = false;
            }
            return Err(e);
        }
    };
    *held = matches!(
        State::try_from(first.state),
        Ok(State::Signed | State::Pending)
    );
    Ok((ca, crl_pem, client, first))
}

/// Records the CA certificates a server presents, and trusts nothing: a
/// handshake with it always fails. Used only to say which CA a master
/// has when it is not the pinned one.
#[derive(Debug)]
struct ShowChain {
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    schemes: Vec<rustls::SignatureScheme>,
}

impl rustls::client::danger::ServerCertVerifier for ShowChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if let Ok(mut g) = self.seen.lock() {
            *g = intermediates.iter().map(|c| c.as_ref().to_vec()).collect();
        }
        Err(rustls::Error::General(
            "only looking: nothing is trusted".into(),
        ))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "only looking: nothing is trusted".into(),
        ))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General(
            "only looking: nothing is trusted".into(),
        ))
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.schemes.clone()
    }
}

/// The CA certificates (DER) the server at `server` presents in its TLS
/// chain; empty when it cannot be asked. The handshake is aborted by
/// [`ShowChain`]: nothing is sent and nothing is trusted.
async fn presented_cas(server: &str) -> Vec<Vec<u8>> {
    let Ok(addr) = identity::parse_server(server) else {
        return Vec::new();
    };
    let provider = troupe_pki::tls::provider();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let verifier = Arc::new(ShowChain {
        seen: seen.clone(),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let Ok(builder) =
        rustls::ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()
    else {
        return Vec::new();
    };
    let mut cfg = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![troupe_pki::tls::ALPN_H2.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let look = async {
        if let Ok(tcp) = tokio::net::TcpStream::connect(&addr.authority).await {
            let _ = connector.connect(addr.server_name.clone(), tcp).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), look).await;
    seen.lock().map(|g| g.clone()).unwrap_or_default()
}

/// `AB:CD:...`, as `troupe ca fingerprint` prints it.
fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The error for a master whose CA is not the pinned one: both
/// fingerprints, and where to compare.
async fn fingerprint_mismatch(args: &Args, pin: [u8; 32]) -> anyhow::Error {
    let given = colon_hex(&pin);
    let cas = presented_cas(&args.server).await;
    if cas.is_empty() {
        return anyhow!(
            "the server at {} presents no CA certificate, so it cannot be checked against \
             the pinned fingerprint (--ca-fingerprint) {given}: is --server the master's gRPC port? Nothing was sent",
            args.server
        );
    }
    let theirs: Vec<String> = cas.iter().map(|c| util::fingerprint_sha256(c)).collect();
    anyhow!(
        "the master's CA fingerprint differs from the one given: the master at {} has {}, \
         the pinned fingerprint (--ca-fingerprint) is {given}; compare with `troupe ca fingerprint` on the master \
         (and check --server). Nothing was sent and nothing is trusted",
        args.server,
        theirs.join(" and ")
    )
}

/// Polls with exponential backoff until signed, rejected or given up.
async fn wait_for_operator(
    client: &mut CaClient<Channel>,
    args: &Args,
    key: &rcgen::KeyPair,
    first: &CertificateStatus,
    held: &mut bool,
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
    let waiting = crate::waiting::Waiting::start(format!(
        "waiting for an operator to sign {} (`troupe ca sign {}` on the master)",
        args.name, args.name
    ));
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
                waiting.suspend(|| {
                    tracing::warn!(
                        "polling the master failed ({}); retrying",
                        status_message(&s)
                    )
                });
                continue;
            }
            Err(s) => bail!("polling the master: {}", status_message(&s)),
        };
        match State::try_from(resp.state) {
            Ok(State::Signed) => return Ok(resp),
            Ok(State::Pending) => waiting.still(),
            Ok(State::Rejected) => {
                *held = false;
                bail!(
                    "the certificate request for {} was rejected by an operator: {}",
                    args.name,
                    resp.message
                )
            }
            _ => {
                *held = false;
                bail!(
                    "the master no longer knows the request for {}: {}",
                    args.name,
                    resp.message
                )
            }
        }
    }
}
