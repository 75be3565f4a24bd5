//! Command-line front for `troupe key ...` and `troupe audit verify`, to be
//! wired into the `troupe` binary:
//!
//! ```text
//! #[derive(clap::Subcommand)]
//! enum Cmd {
//!     Key(troupe_bastion::cli::KeyArgs),
//!     Audit(troupe_bastion::cli::AuditArgs),
//! }
//! // Cmd::Key(a) => troupe_bastion::cli::run_key(&a, &mut std::io::stdout())?,
//! // Cmd::Audit(a) => troupe_bastion::cli::run_audit(&a, &mut std::io::stdout())?,
//! ```
//!
//! [`SignerArgs`] selects a signer (key file or ssh-agent) for commands that
//! sign (`troupe run`, `troupe deploy`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use crate::keys::{FileSigner, KeyId, Signer, SshAgentSigner, public_path, ssh_agent_keys};
use troupe_base::audit;

/// `troupe key`: manage command-signing keys.
#[derive(Debug, clap::Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

/// Key subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create a new ed25519 signing key in a passphrase-protected file.
    ///
    /// The file is PKCS#8 encrypted with scrypt + AES-256-CBC, mode 0600;
    /// the key id goes to FILE.pub. Add the key id to the hosts' trusted
    /// signers. An existing file is never overwritten.
    New {
        /// Where to write the key.
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
        /// Read the passphrase from the first line of this file instead of
        /// prompting on the terminal.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
    },
    /// Show a key file's key id and OpenSSH fingerprint.
    ///
    /// Reads FILE.pub; if it is missing, decrypts FILE (asks the passphrase).
    Show {
        /// The key file.
        file: PathBuf,
        /// Read the passphrase (needed only without FILE.pub) from the first
        /// line of this file instead of prompting on the terminal.
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Print {"key_id","fingerprint","openssh"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the ed25519 keys of the running ssh-agent (SSH_AUTH_SOCK) with
    /// their key ids, to sign with `--ssh-agent`.
    Agent,
}

/// `troupe audit`: audit-log tools.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// Audit subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify a hash-chained audit log and its head file (FILE.head).
    ///
    /// Detects edited, reordered, inserted or deleted records, and records
    /// cut from the end. Exits 0 when the chain is intact, 1 on any problem.
    /// The hash-chained logs are the master's `access-audit.log` and
    /// `orchestration-audit.log` and each agent's `orchestration-audit.log`
    /// (the CA's `ca/audit.log` is a plain JSON-lines log).
    Verify {
        /// The audit log.
        file: PathBuf,
        /// Print one JSON document: {"file","ok","records","head_seq",
        /// "head_hash","head_lagging","torn_tail"} or, when verification
        /// fails, {"file","ok":false,"error"} (exit status 1 either way).
        #[arg(long)]
        json: bool,
    },
}

/// How a signing command chooses its key.
#[derive(Debug, Clone, clap::Args)]
pub struct SignerArgs {
    /// Sign with this passphrase-protected key file.
    #[arg(long, value_name = "FILE", conflicts_with = "ssh_agent")]
    pub key: Option<PathBuf>,
    /// Sign through the running ssh-agent (SSH_AUTH_SOCK); the private key
    /// never touches Troupe's files.
    #[arg(long)]
    pub ssh_agent: bool,
    /// With --ssh-agent: which key (needed if the agent holds several
    /// ed25519 keys).
    #[arg(long, value_name = "KEY_ID", requires = "ssh_agent")]
    pub key_id: Option<KeyId>,
    /// Read the key file's passphrase from this file instead of prompting.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub passphrase_file: Option<PathBuf>,
}

impl SignerArgs {
    /// Opens the chosen signer.
    pub fn open(&self) -> anyhow::Result<Box<dyn Signer>> {
        if self.ssh_agent {
            return Ok(Box::new(SshAgentSigner::from_env(self.key_id.as_ref())?));
        }
        let Some(path) = &self.key else {
            bail!("choose a signing key: --key FILE or --ssh-agent");
        };
        let pass = passphrase(self.passphrase_file.as_deref(), "Passphrase: ", false)?;
        Ok(Box::new(FileSigner::load(path, &pass)?))
    }
}

fn passphrase(
    file: Option<&Path>,
    prompt: &str,
    confirm: bool,
) -> anyhow::Result<Zeroizing<String>> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read passphrase file {}", f.display()))?;
        let text = Zeroizing::new(text);
        return Ok(Zeroizing::new(
            text.lines().next().unwrap_or("").to_string(),
        ));
    }
    let p = Zeroizing::new(rpassword::prompt_password(prompt).map_err(no_terminal)?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Again: ").map_err(no_terminal)?);
        if *again != *p {
            bail!("the passphrases do not match");
        }
    }
    Ok(p)
}

/// Why the passphrase could not be asked, and the way round it.
fn no_terminal(e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot ask for the passphrase: no terminal ({e}); give --passphrase-file FILE (its first line)"
    )
}

fn show_id(id: &KeyId, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out, "key id:      {id}")?;
    writeln!(out, "fingerprint: {}", id.openssh_fingerprint())?;
    writeln!(out, "openssh:     {}", id.openssh_public("troupe"))?;
    Ok(())
}

/// Runs `troupe key ...`.
pub fn run_key(args: &KeyArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &args.command {
        KeyCommand::New {
            out: path,
            passphrase_file,
        } => {
            if path.exists() {
                bail!(
                    "{} already exists: refusing to overwrite a key",
                    path.display()
                );
            }
            let pass = passphrase(passphrase_file.as_deref(), "New passphrase: ", true)?;
            let signer = FileSigner::generate()?;
            signer.write_encrypted(path, &pass)?;
            writeln!(
                out,
                "wrote {} (mode 0600) and {}",
                path.display(),
                public_path(path).display()
            )?;
            show_id(signer.key_id(), out)
        }
        KeyCommand::Show {
            file,
            passphrase_file,
            json,
        } => {
            let pub_path = public_path(file);
            let id = match std::fs::read_to_string(&pub_path) {
                Ok(text) => KeyId::parse(text.trim()).with_context(|| {
                    format!("{} does not hold a valid key id", pub_path.display())
                })?,
                Err(_) => {
                    let pass = passphrase(passphrase_file.as_deref(), "Passphrase: ", false)?;
                    FileSigner::load(file, &pass)?.key_id().clone()
                }
            };
            if *json {
                let doc = serde_json::json!({
                    "key_id": id.to_string(),
                    "fingerprint": id.openssh_fingerprint(),
                    "openssh": id.openssh_public("troupe"),
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
                return Ok(());
            }
            show_id(&id, out)
        }
        KeyCommand::Agent => {
            let sock = std::env::var_os("SSH_AUTH_SOCK")
                .context("SSH_AUTH_SOCK is not set: no ssh-agent is running")?;
            let keys = ssh_agent_keys(Path::new(&sock))?;
            if keys.is_empty() {
                bail!("the ssh-agent holds no ed25519 key (add one with `ssh-add`)");
            }
            for (id, comment) in keys {
                writeln!(out, "{id}  {}  {comment}", id.openssh_fingerprint())?;
            }
            Ok(())
        }
    }
}

/// Refuses, with a message that says so, a file that is missing or is no
/// hash-chained log at all (no head file and a first line that is JSON
/// but no chain record), instead of calling it tampered.
fn not_a_chain(file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let head = {
        let mut h = file.as_os_str().to_owned();
        h.push(".head");
        PathBuf::from(h)
    };
    if head.exists() {
        return Ok(());
    }
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    if let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(first)
        && !o.contains_key("record")
    {
        bail!(
            "{} is not a hash-chained audit log (its first line is no chain record and there is no {}): \
             the chained logs are access-audit.log, orchestration-audit.log and ca/audit.log \
             (a CA log from before the chain was moved to ca/audit.log.plain-TIME); \
             if this is one, its head file is missing too",
            file.display(),
            head.display()
        );
    }
    Ok(())
}

/// Runs `troupe audit ...`. An error means verification failed.
pub fn run_audit(args: &AuditArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    match &args.command {
        AuditCommand::Verify { file, json } => {
            let checked = not_a_chain(file).and_then(|()| {
                audit::verify(file)
                    .with_context(|| format!("{}: verification FAILED", file.display()))
            });
            if *json {
                let doc = match &checked {
                    Ok(r) => serde_json::json!({
                        "file": file, "ok": true, "records": r.records,
                        "head_seq": r.head.seq, "head_hash": r.head.hash_hex(),
                        "head_lagging": r.head_lagging, "torn_tail": r.torn_tail,
                    }),
                    Err(e) => serde_json::json!({
                        "file": file, "ok": false, "error": troupe_base::cli::one_line(e),
                    }),
                };
                writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
            }
            let r = checked?;
            if *json {
                return Ok(());
            }
            writeln!(
                out,
                "{}: OK, {} records, head {} {}",
                file.display(),
                r.records,
                r.head.seq,
                r.head.hash_hex()
            )?;
            if r.head_lagging {
                writeln!(
                    out,
                    "note: the head file is one record behind (crash during an append; repaired on next open)"
                )?;
            }
            if r.torn_tail > 0 {
                writeln!(
                    out,
                    "note: {} bytes of an incomplete last record (crash during an append)",
                    r.torn_tail
                )?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Debug, clap::Subcommand)]
    #[allow(clippy::large_enum_variant)]
    enum Cmd {
        Key(KeyArgs),
        Audit(AuditArgs),
        Run {
            #[command(flatten)]
            signer: SignerArgs,
        },
    }

    #[test]
    fn clap_definitions_are_valid() {
        use clap::CommandFactory;
        Top::command().debug_assert();
    }

    #[test]
    fn key_new_show_and_sign_with_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ops.key");
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "long enough passphrase\n").unwrap();
        let Cmd::Key(new) = Top::parse_from([
            "t",
            "key",
            "new",
            "--out",
            key.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ])
        .cmd
        else {
            panic!()
        };
        let mut out = Vec::new();
        run_key(&new, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("key id:      ed25519:"), "{text}");
        // Again: refused, file unchanged.
        let before = std::fs::read(&key).unwrap();
        assert!(run_key(&new, &mut Vec::new()).is_err());
        assert_eq!(std::fs::read(&key).unwrap(), before);

        let Cmd::Key(show) = Top::parse_from(["t", "key", "show", key.to_str().unwrap()]).cmd
        else {
            panic!()
        };
        let mut out2 = Vec::new();
        run_key(&show, &mut out2).unwrap();
        let text2 = String::from_utf8(out2).unwrap();
        assert_eq!(text2.lines().next(), text.lines().nth(1));

        let Cmd::Run { signer } = Top::parse_from([
            "t",
            "run",
            "--key",
            key.to_str().unwrap(),
            "--passphrase-file",
            pass.to_str().unwrap(),
        ])
        .cmd
        else {
            panic!()
        };
        let mut s = signer.open().unwrap();
        let sig = s.sign(b"hello").unwrap();
        s.key_id()
            .verifying_key()
            .verify_strict(b"hello", &sig)
            .unwrap();
    }

    #[test]
    fn signer_args_conflicts() {
        assert!(Top::try_parse_from(["t", "run", "--key", "k", "--ssh-agent"]).is_err());
        assert!(Top::try_parse_from(["t", "run", "--key-id", "ed25519:x"]).is_err());
        let Cmd::Run { signer } = Top::parse_from(["t", "run"]).cmd else {
            panic!()
        };
        assert!(signer.open().is_err());
    }

    #[test]
    fn audit_verify_reports_ok_and_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = audit::AuditLog::open(&path).unwrap();
        log.append(&serde_json::json!({"action": "ping"})).unwrap();
        log.append(&serde_json::json!({"action": "facts"})).unwrap();
        drop(log);
        let Cmd::Audit(a) = Top::parse_from(["t", "audit", "verify", path.to_str().unwrap()]).cmd
        else {
            panic!()
        };
        let mut out = Vec::new();
        run_audit(&a, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("OK, 2 records"));
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("facts", "fact5");
        std::fs::write(&path, text).unwrap();
        let e = run_audit(&a, &mut Vec::new()).unwrap_err();
        assert!(format!("{e:#}").contains("line 2"), "{e:#}");
    }

    /// `--json` shapes (issue 16): audit verify, ok and failed; key show.
    #[test]
    fn audit_verify_and_key_show_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut log = audit::AuditLog::open(&path).unwrap();
        log.append(&serde_json::json!({"action": "ping"})).unwrap();
        drop(log);
        let p = path.to_str().unwrap();
        let Cmd::Audit(a) = Top::parse_from(["t", "audit", "verify", p, "--json"]).cmd else {
            panic!()
        };
        let mut out = Vec::new();
        run_audit(&a, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["records"], 1);
        assert_eq!(v["head_seq"], v["records"]);
        assert_eq!(v["head_hash"].as_str().unwrap().len(), 64);
        assert_eq!(v["file"], p);
        std::fs::write(&path, b"{\"tampered\":1}\n").unwrap();
        let mut out = Vec::new();
        assert!(run_audit(&a, &mut out).is_err());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains("FAILED"), "{v}");

        let key = dir.path().join("k.key");
        let pass = dir.path().join("pass");
        std::fs::write(&pass, "correct horse battery\n").unwrap();
        let signer = FileSigner::generate().unwrap();
        signer
            .write_encrypted(&key, "correct horse battery")
            .unwrap();
        let Cmd::Key(k) =
            Top::parse_from(["t", "key", "show", key.to_str().unwrap(), "--json"]).cmd
        else {
            panic!()
        };
        let mut out = Vec::new();
        run_key(&k, &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["key_id"], signer.key_id().to_string());
        assert!(
            v["fingerprint"].as_str().unwrap().starts_with("SHA256:"),
            "{v}"
        );
        assert!(
            v["openssh"].as_str().unwrap().starts_with("ssh-ed25519 "),
            "{v}"
        );
    }
}
