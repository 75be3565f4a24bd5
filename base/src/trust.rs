//! The owner/mode rule for files that grant trust.
//!
//! A file that decides who may command this host or what runs (the
//! orchestration configuration with its signers and policy, module action
//! files, the agent configuration) is refused unless it is owned by root or
//! by the agent's user and writable by nobody else; every directory above
//! it must be owned by root or the agent's user and not writable by group
//! or others either, unless it has the sticky bit (as /tmp does: others
//! cannot rename or remove what they do not own there). The file is checked
//! on the descriptor it is read from, so what is checked is what is read.
//! The agent (`troupe_agent::trust` and `troupe_command::trust` re-export
//! this), the master (its `signers.toml`) and both daemons' config files
//! (`troupe_pki::config_file`: agent.toml, master.toml) use it.

use anyhow::{Context, Result, bail};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Largest trust file read (1 MiB).
pub const MAX_TRUST_FILE: u64 = 1 << 20;

fn owner_ok(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

fn check_meta(path: &Path, meta: &std::fs::Metadata, what: &str, dir: bool) -> Result<()> {
    if !owner_ok(meta.uid()) {
        bail!(
            "{what} {} is owned by uid {}, not root or this agent's user (uid {}): refusing it; chown it to root",
            path.display(),
            meta.uid(),
            nix::unistd::geteuid().as_raw()
        );
    }
    let sticky = dir && meta.mode() & 0o1000 != 0;
    if meta.mode() & 0o022 != 0 && !sticky {
        bail!(
            "{what} {} is writable by group or others (mode {:04o}): refusing it; chmod go-w it",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Checks every directory above `path` (after resolving links).
fn check_parents(path: &Path, what: &str) -> Result<()> {
    let real = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let mut dir = real.parent();
    while let Some(d) = dir {
        let m = std::fs::metadata(d).with_context(|| format!("cannot stat {}", d.display()))?;
        check_meta(d, &m, &format!("the directory holding the {what}"), true)?;
        dir = d.parent();
    }
    Ok(())
}

/// Checks that `path`, a file that grants trust (`what` names it in
/// errors, e.g. "orchestration configuration"), and the directories above
/// it satisfy the owner/mode rule. Errors say what to change.
pub fn check_trusted_file(path: &Path, what: &str) -> Result<()> {
    let m = std::fs::metadata(path).with_context(|| format!("{what} {}", path.display()))?;
    check_meta(path, &m, what, false)?;
    check_parents(path, what)
}

/// Reads a file that grants trust, refusing it (see [`check_trusted_file`])
/// when someone other than root or this user could have changed it.
/// `Ok(None)` when it does not exist.
pub fn read_trusted_file(path: &Path, what: &str) -> Result<Option<String>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {what} {}", path.display())),
    };
    let m = f
        .metadata()
        .with_context(|| format!("{what} {}", path.display()))?;
    if !m.is_file() {
        bail!("{what} {} is not a regular file", path.display());
    }
    check_meta(path, &m, what, false)?;
    check_parents(path, what)?;
    let mut text = String::new();
    f.take(MAX_TRUST_FILE + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if text.len() as u64 > MAX_TRUST_FILE {
        bail!(
            "{what} {} is larger than {MAX_TRUST_FILE} bytes",
            path.display()
        );
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_or_other_writable_files_and_dirs_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("conf");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = d.join("x.toml");
        std::fs::write(&f, "a = 1\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(read_trusted_file(&f, "test").unwrap().unwrap(), "a = 1\n");
        assert!(
            read_trusted_file(&d.join("none"), "test")
                .unwrap()
                .is_none()
        );
        for mode in [0o664, 0o646, 0o666] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_trusted_file(&f, "test").unwrap_err().to_string();
            assert!(e.contains("writable by group or others"), "{e}");
            assert!(check_trusted_file(&f, "test").is_err());
        }
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = read_trusted_file(&f, "test").unwrap_err().to_string();
        assert!(e.contains("the directory holding"), "{e}");
        // Sticky, like /tmp: allowed.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(read_trusted_file(&f, "test").is_ok());
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&f, Some(12345), None).unwrap();
            let e = read_trusted_file(&f, "test").unwrap_err().to_string();
            assert!(e.contains("owned by uid 12345"), "{e}");
        }
    }
}
