//! Signing keys: passphrase-protected key files and ssh-agent signing (key
//! ids, [`KeyError`] and the [`Signer`] trait are troupe-command's).
//!
//! - A **key id** is `ed25519:` followed by the standard base64 of the raw
//!   32-byte public key. It names a key unambiguously and carries the key
//!   itself, so a trust list is just a list of key ids. The OpenSSH-style
//!   fingerprint (`SHA256:...`, as printed by `ssh-add -l`) is shown next to
//!   it for humans.
//! - A **key file** is a PKCS#8 v2 `ENCRYPTED PRIVATE KEY` PEM: PBES2 with
//!   scrypt (log_n 14, r 8, p 1) and AES-256-CBC, from RustCrypto's `pkcs8`
//!   crate (no home-made crypto). `openssl pkey -in FILE` reads it too. It
//!   is written atomically with mode 0600 and refused at load time if group
//!   or others can read it. A `FILE.pub` next to it holds the key id.
//! - **ssh-agent signing** asks a running ssh-agent (`SSH_AUTH_SOCK`) to
//!   sign with an ed25519 identity: the private key never touches Troupe's
//!   files or memory. Every signature the agent returns is verified locally
//!   before use.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

use troupe_base::fs::{Atomic, write_atomic};
pub use troupe_command::keys::{KEY_ID_PREFIX, KeyError, KeyId, MIN_PASSPHRASE_LEN, Signer};

/// A signer holding the private key in memory (loaded from a key file).
pub struct FileSigner {
    key: SigningKey,
    id: KeyId,
}

impl fmt::Debug for FileSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSigner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl FileSigner {
    /// Generates a fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(Self::from_signing_key(key))
    }

    /// Wraps an existing key.
    pub fn from_signing_key(key: SigningKey) -> Self {
        let id = KeyId::from_public(&key.verifying_key());
        Self { key, id }
    }

    /// Writes the key, encrypted with `passphrase`, to `path` (mode 0600,
    /// atomic, never overwriting), and its key id to `path.pub` (mode 0644).
    pub fn write_encrypted(&self, path: &Path, passphrase: &str) -> Result<(), KeyError> {
        if passphrase.chars().count() < MIN_PASSPHRASE_LEN {
            return Err(KeyError::WeakPassphrase);
        }
        // PKCS#8 v1 (no embedded public key): what OpenSSL 3.0 reads too.
        let bytes = ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: self.key.to_bytes(),
            public_key: None,
        };
        let pem = bytes
            .to_pkcs8_encrypted_pem(passphrase.as_bytes(), pkcs8::LineEnding::LF)
            .map_err(|e| KeyError::Encrypt(e.to_string()))?;
        let wr = |p: &Path, e| KeyError::Write {
            path: p.to_path_buf(),
            source: e,
        };
        write_atomic(path, pem.as_bytes(), Atomic::durable(0o600).no_replace())
            .map_err(|e| wr(path, e))?;
        let pub_path = public_path(path);
        let pub_text = format!("{}\n", self.id);
        write_atomic(&pub_path, pub_text.as_bytes(), Atomic::durable(0o644))
            .map_err(|e| wr(&pub_path, e))?;
        Ok(())
    }

    /// Loads a key file written by [`FileSigner::write_encrypted`] (or any
    /// scrypt/PBKDF2 PKCS#8-encrypted ed25519 key). Refuses files readable
    /// by group or others.
    pub fn load(path: &Path, passphrase: &str) -> Result<Self, KeyError> {
        let rd = |e| KeyError::Read {
            path: path.to_path_buf(),
            source: e,
        };
        let meta = std::fs::metadata(path).map_err(rd)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        if meta.len() > 64 * 1024 {
            return Err(KeyError::Decrypt {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(rd)?;
        let key =
            SigningKey::from_pkcs8_encrypted_pem(&text, passphrase.as_bytes()).map_err(|_| {
                KeyError::Decrypt {
                    path: path.to_path_buf(),
                }
            })?;
        Ok(Self::from_signing_key(key))
    }

    /// The key id.
    pub fn key_id(&self) -> &KeyId {
        &self.id
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

impl Signer for FileSigner {
    fn key_id(&self) -> &KeyId {
        &self.id
    }
    fn sign(&mut self, message: &[u8]) -> Result<Signature, KeyError> {
        use ed25519_dalek::Signer as _;
        Ok(self.key.sign(message))
    }
}

/// The path of the public companion of a key file: `FILE.pub`.
pub fn public_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// A signer that asks a running ssh-agent to sign with one of its ed25519
/// keys.
pub struct SshAgentSigner {
    client: ssh_agent_client_rs::Client,
    public: ssh_key::PublicKey,
    id: KeyId,
}

impl fmt::Debug for SshAgentSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshAgentSigner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Lists the ed25519 keys an ssh-agent holds, as (key id, comment).
pub fn ssh_agent_keys(socket: &Path) -> Result<Vec<(KeyId, String)>, KeyError> {
    let mut client = connect_agent(socket)?;
    Ok(agent_ed25519(&mut client)?
        .into_iter()
        .map(|(id, pk)| (id, pk.comment().to_string()))
        .collect())
}

fn connect_agent(socket: &Path) -> Result<ssh_agent_client_rs::Client, KeyError> {
    ssh_agent_client_rs::Client::connect(socket)
        .map_err(|e| KeyError::Agent(format!("cannot connect to {}: {e}", socket.display())))
}

fn agent_ed25519(
    client: &mut ssh_agent_client_rs::Client,
) -> Result<Vec<(KeyId, ssh_key::PublicKey)>, KeyError> {
    let identities = client
        .list_all_identities()
        .map_err(|e| KeyError::Agent(format!("cannot list keys: {e}")))?;
    let mut out = Vec::new();
    for identity in identities {
        // Certificates are not command-signing keys.
        let ssh_agent_client_rs::Identity::PublicKey(pk) = identity else {
            continue;
        };
        let pk = pk.into_owned();
        if let ssh_key::public::KeyData::Ed25519(ed) = pk.key_data()
            && let Ok(vk) = VerifyingKey::from_bytes(&ed.0)
        {
            out.push((KeyId::from_public(&vk), pk));
        }
    }
    Ok(out)
}

impl SshAgentSigner {
    /// Connects to the ssh-agent at `socket` and selects the ed25519 key
    /// `key` (or the only ed25519 key it holds when `key` is `None`).
    pub fn connect(socket: &Path, key: Option<&KeyId>) -> Result<Self, KeyError> {
        let mut client = connect_agent(socket)?;
        let mut keys = agent_ed25519(&mut client)?;
        let (id, public) = match key {
            Some(want) => match keys.into_iter().find(|(id, _)| id == want) {
                Some(found) => found,
                None => return Err(KeyError::AgentNoKey(format!(" with id {want}"))),
            },
            None => {
                if keys.len() > 1 {
                    let ids: Vec<String> = keys.iter().map(|(id, _)| id.to_string()).collect();
                    return Err(KeyError::AgentAmbiguous(ids.join(", ")));
                }
                keys.pop()
                    .ok_or_else(|| KeyError::AgentNoKey(String::new()))?
            }
        };
        Ok(Self { client, public, id })
    }

    /// Connects through `SSH_AUTH_SOCK`.
    pub fn from_env(key: Option<&KeyId>) -> Result<Self, KeyError> {
        let sock = std::env::var_os("SSH_AUTH_SOCK").ok_or_else(|| {
            KeyError::Agent("SSH_AUTH_SOCK is not set: no ssh-agent is running".into())
        })?;
        Self::connect(Path::new(&sock), key)
    }
}

impl Signer for SshAgentSigner {
    fn key_id(&self) -> &KeyId {
        &self.id
    }
    fn sign(&mut self, message: &[u8]) -> Result<Signature, KeyError> {
        let sig = self
            .client
            .sign(self.public.clone(), message)
            .map_err(|e| KeyError::Agent(format!("signing failed: {e}")))?;
        if sig.algorithm() != ssh_key::Algorithm::Ed25519 {
            return Err(KeyError::AgentBadSignature);
        }
        let bytes: [u8; 64] = sig
            .as_bytes()
            .try_into()
            .map_err(|_| KeyError::AgentBadSignature)?;
        let sig = Signature::from_bytes(&bytes);
        self.id
            .verifying_key()
            .verify_strict(message, &sig)
            .map_err(|_| KeyError::AgentBadSignature)?;
        Ok(sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_roundtrip_mode_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.key");
        let s = FileSigner::generate().unwrap();
        assert!(matches!(
            s.write_encrypted(&path, "short"),
            Err(KeyError::WeakPassphrase)
        ));
        assert!(!path.exists());
        s.write_encrypted(&path, "correct horse battery").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
        let pubtext = std::fs::read_to_string(public_path(&path)).unwrap();
        assert_eq!(pubtext.trim(), s.key_id().as_str());

        let loaded = FileSigner::load(&path, "correct horse battery").unwrap();
        assert_eq!(loaded.key_id(), s.key_id());
        assert!(matches!(
            FileSigner::load(&path, "wrong passphrase"),
            Err(KeyError::Decrypt { .. })
        ));

        // Never overwrite an existing key.
        let other = FileSigner::generate().unwrap();
        assert!(matches!(
            other.write_encrypted(&path, "correct horse battery"),
            Err(KeyError::Write { .. })
        ));
        assert_eq!(
            FileSigner::load(&path, "correct horse battery")
                .unwrap()
                .key_id(),
            s.key_id()
        );

        // Refuse a key file others can read.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            FileSigner::load(&path, "correct horse battery"),
            Err(KeyError::InsecurePermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.key");
        write_atomic(
            &path,
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n",
            Atomic::durable(0o600).no_replace(),
        )
        .unwrap();
        assert!(matches!(
            FileSigner::load(&path, "whatever12"),
            Err(KeyError::Decrypt { .. })
        ));
        assert!(matches!(
            FileSigner::load(&dir.path().join("missing"), "whatever12"),
            Err(KeyError::Read { .. })
        ));
    }
}
