//! Per-environment secrets with age (x25519): one key pair per environment.
//! The private key lives in the master's data directory
//! (`DATA/secrets/ENV.key`, mode 0600), never in the module tree; the public
//! key (`environments/ENV/secrets.pub`) lets anyone encrypt.
//!
//! In data files a secret is the inline table
//! `{ env = "production", secret = "<base64 age ciphertext>" }`.

use crate::error::{Error, ErrorKind, Result};
use age::secrecy::ExposeSecret;
use base64::Engine;
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

/// Largest plaintext `troupe secret encrypt` accepts (1 MiB).
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// The private keys a master holds, by environment. `Debug` never shows them.
#[derive(Clone, Default)]
pub struct SecretKeys {
    keys: BTreeMap<String, Arc<age::x25519::Identity>>,
    /// For previews (`troupe catalog diff`): a secret whose key is not
    /// loaded becomes [`CIPHERTEXT_MARK`] + a hash of its ciphertext instead
    /// of an error, so two catalogs can be compared without the private key.
    ciphertext_preview: bool,
}

/// How a secret compiled without its key starts (see
/// [`SecretKeys::with_ciphertext_preview`]); the rest is a hash of the
/// ciphertext and `>`.
pub const CIPHERTEXT_MARK: &str = "<secret ciphertext sha256:";

impl fmt::Debug for SecretKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKeys")
            .field("environments", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Where an environment's private key lives in a data directory.
pub fn key_path(data_dir: &Path, env: &str) -> PathBuf {
    data_dir.join("secrets").join(format!("{env}.key"))
}

/// Checks an environment name: lowercase letters, digits, `_`, `-`.
pub fn valid_env_name(env: &str) -> bool {
    !env.is_empty()
        && env.len() <= 64
        && env
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !env.starts_with('-')
}

impl SecretKeys {
    pub fn new() -> SecretKeys {
        SecretKeys::default()
    }
    /// Adds a key from its `AGE-SECRET-KEY-1...` text.
    pub fn insert_str(&mut self, env: &str, key_text: &str) -> Result<()> {
        let line = key_text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        let id = age::x25519::Identity::from_str(line).map_err(|_| {
            Error::new(
                ErrorKind::Secret,
                format!("the secret key for environment `{env}` is not an age X25519 identity"),
            )
        })?;
        self.keys.insert(env.to_owned(), Arc::new(id));
        Ok(())
    }
    /// Loads `DATA/secrets/*.key`. A missing directory gives no keys.
    /// Refuses key files readable by group or others.
    pub fn load_dir(data_dir: &Path) -> Result<SecretKeys> {
        let mut keys = SecretKeys::new();
        let dir = data_dir.join("secrets");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    format!("cannot read {}: {e}", dir.display()),
                ));
            }
        };
        let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for path in names {
            let Some(env) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".key"))
            else {
                continue;
            };
            if !valid_env_name(env) {
                continue;
            }
            check_private_mode(&path)?;
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            keys.insert_str(env, &text)?;
        }
        Ok(keys)
    }
    /// Compiles a secret whose key is not loaded to a stand-in naming its
    /// ciphertext (never the value): the same ciphertext gives the same
    /// stand-in, a re-encrypted or changed one a different stand-in. For
    /// previews only: the master never serves such a catalog.
    pub fn with_ciphertext_preview(mut self) -> SecretKeys {
        self.ciphertext_preview = true;
        self
    }
    pub fn has(&self, env: &str) -> bool {
        self.keys.contains_key(env)
    }
    pub(crate) fn get(&self, env: &str) -> Option<&Arc<age::x25519::Identity>> {
        self.keys.get(env)
    }
}

#[cfg(unix)]
fn check_private_mode(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot stat {}: {e}", path.display()),
        )
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::new(
            ErrorKind::Secret,
            format!(
                "secret key {} is readable by group or others (mode {:o})",
                path.display(),
                meta.permissions().mode() & 0o777
            ),
        )
        .with_help(format!("chmod 600 {}", path.display())));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private_mode(_: &Path) -> Result<()> {
    Ok(())
}

/// Generates a key pair for `env`: writes the private key to
/// `DATA/secrets/ENV.key` (0600, refusing to overwrite) and returns the
/// public key (`age1...`).
pub fn keygen(data_dir: &Path, env: &str) -> Result<String> {
    if !valid_env_name(env) {
        return Err(Error::new(
            ErrorKind::Schema,
            format!("`{env}` is not a valid environment name (lowercase letters, digits, _ and -)"),
        ));
    }
    let path = key_path(data_dir, env);
    let dir = data_dir.join("secrets");
    std::fs::create_dir_all(&dir).map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    let id = age::x25519::Identity::generate();
    let public = id.to_public().to_string();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::new(
                ErrorKind::Secret,
                format!(
                    "{} already exists; refusing to replace the `{env}` key (every secret encrypted for it would be lost)",
                    path.display()
                ),
            )
        } else {
            Error::new(ErrorKind::Io, format!("cannot create {}: {e}", path.display()))
        }
    })?;
    let body = format!(
        "# troupe secret key for environment {env}\n# public key: {public}\n{}\n",
        id.to_string().expose_secret()
    );
    f.write_all(body.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("cannot write {}: {e}", path.display()),
            )
        })?;
    Ok(public)
}

/// Parses an `age1...` public key.
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient> {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    age::x25519::Recipient::from_str(line).map_err(|e| {
        Error::new(
            ErrorKind::Secret,
            format!("not an age X25519 public key (age1...): {e}"),
        )
    })
}

/// Encrypts `plaintext` for `env` and returns the TOML inline table to paste
/// into a data file.
pub fn encrypt_to_toml(
    recipient: &age::x25519::Recipient,
    env: &str,
    plaintext: &[u8],
) -> Result<String> {
    if plaintext.len() > MAX_SECRET_BYTES {
        return Err(Error::new(
            ErrorKind::Secret,
            format!("the value is larger than {MAX_SECRET_BYTES} bytes"),
        ));
    }
    let ct = age::encrypt(recipient, plaintext)
        .map_err(|e| Error::new(ErrorKind::Secret, format!("encryption failed: {e}")))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(ct);
    Ok(format!("{{ env = \"{env}\", secret = \"{b64}\" }}"))
}

/// Decrypts a base64 age ciphertext with `env`'s key. The caller marks every
/// resource that uses the result sensitive.
pub(crate) fn decrypt(keys: &SecretKeys, env: &str, b64: &str) -> Result<String> {
    if keys.ciphertext_preview && !keys.has(env) {
        let digest = troupe_catalog::sha256_hex(b64.trim().as_bytes());
        return Ok(format!("{CIPHERTEXT_MARK}{}>", &digest[..16]));
    }
    let id = keys.get(env).ok_or_else(|| {
        Error::new(
            ErrorKind::Secret,
            format!(
                "this secret needs the private key of environment `{env}`, which is not loaded"
            ),
        )
        .with_help(format!(
            "the master reads it from DATA/secrets/{env}.key (`troupe secret keygen --env {env}`)"
        ))
    })?;
    let ct = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| Error::new(ErrorKind::Secret, "the secret is not valid base64"))?;
    let pt = age::decrypt(id.as_ref(), &ct).map_err(|e| {
        Error::new(
            ErrorKind::Secret,
            format!("cannot decrypt this secret with the key of environment `{env}`: {e}"),
        )
        .with_help("it was probably encrypted for another environment's key; re-encrypt it with `troupe secret encrypt --env ENV`")
    })?;
    String::from_utf8(pt)
        .map_err(|_| Error::new(ErrorKind::Secret, "the decrypted secret is not UTF-8 text"))
}
