//! `troupe signers add|list|remove`: the master's trusted command signers,
//! `DATA/signers.toml`, without hand-editing TOML.
//!
//! The master reads the file again at every submission, and this command
//! replaces it atomically (temp file + rename) before it returns, so a
//! change applies to the next command: there is no window in which the
//! old list still answers. The file is checked as a whole (names, keys,
//! duplicates) before it is written; a refused change leaves it as it was.
//! Agents keep their own list (`[[signer]]` in their orchestration.toml,
//! usually managed by their catalog): see docs/orchestration-trust.md.

use crate::ca_cli::DataArg;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use troupe_command::{KeyId, TrustedSigners};

/// `troupe signers ...`
#[derive(clap::Subcommand, Debug)]
pub enum SignersCmd {
    /// Trust a key to sign commands (the master relays only commands from
    /// trusted signers; each agent checks its own list again).
    Add {
        /// A name for the signer (`[A-Za-z0-9_.@-]`, up to 64), e.g. `alice`.
        name: String,
        /// The key id (`ed25519:...`, from `troupe key show` or
        /// `troupe key agent`), or the path of a key's `.pub` file.
        key: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// List the trusted signers: name, key id, OpenSSH fingerprint.
    List {
        /// Print a JSON array of {"name","key_id","fingerprint"}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArg,
    },
    /// Stop trusting a signer (by name or key id).
    Remove {
        /// The signer's name or key id.
        signer: String,
        #[command(flatten)]
        data: DataArg,
    },
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "signer")]
    signers: Vec<Entry>,
}

#[derive(serde::Deserialize, serde::Serialize, Clone)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    key: String,
}

/// The signers file of a data directory.
pub fn path(data: &Path) -> PathBuf {
    data.join(crate::orchestra::SIGNERS_FILE)
}

fn load(p: &Path) -> Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
    };
    TrustedSigners::from_toml(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; fix it by hand before changing it here",
            p.display()
        )
    })?;
    let f: File = toml::from_str(&text).with_context(|| format!("{}", p.display()))?;
    Ok(f.signers)
}

fn save(p: &Path, entries: &[Entry]) -> Result<()> {
    let mut text = String::from(
        "# Signers whose commands this master relays (troupe signers add|remove).\n\
         # Each agent checks the signature again against its own list.\n",
    );
    let body = toml::to_string(&File {
        signers: entries.to_vec(),
    })?;
    text.push_str(&body);
    // Never write a list the master would refuse.
    TrustedSigners::from_toml(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = p.parent()
        && !dir.is_dir()
    {
        bail!(
            "{} does not exist: give the master's data directory (--data or TROUPE_DATA)",
            dir.display()
        );
    }
    troupe_pki::util::write_atomic(p, text.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", p.display()))
}

fn key_id(arg: &str) -> Result<KeyId> {
    if let Ok(k) = KeyId::parse(arg.trim()) {
        return Ok(k);
    }
    let p = Path::new(arg);
    if p.is_file() {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        return KeyId::parse(text.trim())
            .with_context(|| format!("{} does not hold a key id (ed25519:...)", p.display()));
    }
    bail!(
        "{arg:?} is neither a key id (ed25519:..., see `troupe key show FILE`) nor a readable .pub file"
    )
}

/// Runs `troupe signers ...`, writing to `out`.
pub fn run_to(cmd: SignersCmd, out: &mut dyn Write) -> Result<u8> {
    match cmd {
        SignersCmd::Add { name, key, data } => {
            let p = path(&data.data);
            let key = key_id(&key)?;
            let mut entries = load(&p)?;
            if let Some(e) = entries.iter().find(|e| e.key == key.to_string()) {
                bail!("key {key} is already trusted as `{}`", e.name);
            }
            if entries.iter().any(|e| e.name == name) {
                bail!(
                    "a signer named `{name}` already exists; remove it first (`troupe signers remove {name}`)"
                );
            }
            entries.push(Entry {
                name: name.clone(),
                key: key.to_string(),
            });
            save(&p, &entries)?;
            writeln!(
                out,
                "trusting `{name}` ({}) in {}: applies to the next command",
                key.openssh_fingerprint(),
                p.display()
            )?;
            Ok(0)
        }
        SignersCmd::List { json, data } => {
            let p = path(&data.data);
            let entries = load(&p)?;
            let rows: Vec<(String, KeyId)> = entries
                .iter()
                .map(|e| Ok((e.name.clone(), KeyId::parse(&e.key)?)))
                .collect::<Result<_>>()?;
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(n, k)| {
                        serde_json::json!({"name": n, "key_id": k.to_string(),
                                           "fingerprint": k.openssh_fingerprint()})
                    })
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else if rows.is_empty() {
                writeln!(
                    out,
                    "(no trusted signers in {}: every command is refused; `troupe signers add NAME KEY`)",
                    p.display()
                )?;
            } else {
                for (n, k) in &rows {
                    writeln!(out, "{n:<20} {k}  {}", k.openssh_fingerprint())?;
                }
            }
            Ok(0)
        }
        SignersCmd::Remove { signer, data } => {
            let p = path(&data.data);
            let mut entries = load(&p)?;
            let before = entries.len();
            entries.retain(|e| e.name != signer && e.key != signer);
            if entries.len() == before {
                bail!(
                    "no trusted signer `{signer}` in {} (`troupe signers list`)",
                    p.display()
                );
            }
            save(&p, &entries)?;
            writeln!(
                out,
                "removed `{signer}`: commands it signs are refused from now on{}",
                if entries.is_empty() {
                    " (no signer is left: every command is refused)"
                } else {
                    ""
                }
            )?;
            Ok(0)
        }
    }
}

pub fn run(cmd: SignersCmd) -> Result<u8> {
    run_to(cmd, &mut std::io::stdout().lock())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Top {
        #[command(subcommand)]
        cmd: SignersCmd,
    }

    fn go(args: &[&str]) -> Result<String> {
        let mut argv = vec!["signers"];
        argv.extend(args);
        let t = Top::try_parse_from(argv).unwrap();
        let mut out = Vec::new();
        run_to(t.cmd, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn add_list_remove_keep_a_file_the_master_accepts() {
        let d = tempfile::tempdir().unwrap();
        let data = d.path().to_str().unwrap();
        let alice = troupe_bastion::keys::FileSigner::generate().unwrap();
        let bob = troupe_bastion::keys::FileSigner::generate().unwrap();
        let a = alice.key_id().to_string();
        let pubfile = d.path().join("bob.key.pub");
        std::fs::write(&pubfile, format!("{}\n", bob.key_id())).unwrap();

        assert!(
            go(&["list", "--data", data])
                .unwrap()
                .contains("no trusted signers")
        );
        go(&["add", "alice", &a, "--data", data]).unwrap();
        go(&["add", "bob", pubfile.to_str().unwrap(), "--data", data]).unwrap();
        // The master's parser accepts what was written.
        let text = std::fs::read_to_string(path(d.path())).unwrap();
        let t = TrustedSigners::from_toml(&text).unwrap();
        assert_eq!(t.name_of(alice.key_id()), Some("alice"));
        assert_eq!(t.name_of(bob.key_id()), Some("bob"));

        // Refusals change nothing.
        let e = go(&["add", "alice2", &a, "--data", data]).unwrap_err();
        assert!(e.to_string().contains("already trusted as `alice`"), "{e}");
        let carol = troupe_bastion::keys::FileSigner::generate().unwrap();
        let e = go(&["add", "alice", &carol.key_id().to_string(), "--data", data]).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let e = go(&["add", "bad name", "ed25519:nope", "--data", data]).unwrap_err();
        assert!(e.to_string().contains("neither a key id"), "{e}");
        assert_eq!(std::fs::read_to_string(path(d.path())).unwrap(), text);

        let v: serde_json::Value =
            serde_json::from_str(&go(&["list", "--json", "--data", data]).unwrap()).unwrap();
        assert_eq!(v[0]["name"], "alice");
        assert_eq!(v[0]["key_id"], a);
        assert_eq!(v[1]["name"], "bob");
        assert!(v[1]["fingerprint"].as_str().unwrap().starts_with("SHA256:"));

        go(&["remove", "alice", "--data", data]).unwrap();
        let text = std::fs::read_to_string(path(d.path())).unwrap();
        let t = TrustedSigners::from_toml(&text).unwrap();
        assert_eq!(t.name_of(alice.key_id()), None);
        assert_eq!(t.len(), 1);
        let e = go(&["remove", "alice", "--data", data]).unwrap_err();
        assert!(e.to_string().contains("no trusted signer `alice`"), "{e}");
        // By key id too.
        go(&["remove", &bob.key_id().to_string(), "--data", data]).unwrap();
        assert!(
            TrustedSigners::from_toml(&std::fs::read_to_string(path(d.path())).unwrap())
                .unwrap()
                .is_empty()
        );
    }
}
