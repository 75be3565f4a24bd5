//! Module action files (`MODULE.toml` with `[[action]]` tables) read from a
//! directory: the agent's `actions_dir` (owner and mode checked: they decide
//! which programs run) and the bastion's `--module-actions` (only to check
//! arguments before signing).

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use crate::Registry;

/// Refuses a file or directory that someone other than root or this
/// process's user could change.
fn check_owner(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        bail!(
            "{} is owned by uid {}, not root or this agent's user: refusing module actions from it",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o022 != 0 {
        bail!(
            "{} is writable by group or others (mode {:o}): refusing module actions from it",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    Ok(())
}

/// Most module action files read from `actions_dir`.
const MAX_ACTION_FILES: usize = 256;
/// Largest module action file.
const MAX_ACTION_FILE: u64 = 256 * 1024;

/// Adds every `MODULE.toml` in `dir` to `registry` (all or nothing: any
/// bad file refuses the whole configuration). A missing directory adds
/// nothing. The directory and files must be owned by root or this user
/// and writable by nobody else.
pub fn load_actions_dir(dir: &Path, registry: &mut Registry) -> Result<()> {
    load_actions_dir_checked(dir, registry, true)
}

/// Like [`load_actions_dir`]; `check_owners = false` skips the owner and
/// mode checks (for the bastion, which only checks arguments with them).
pub fn load_actions_dir_checked(
    dir: &Path,
    registry: &mut Registry,
    check_owners: bool,
) -> Result<()> {
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("actions_dir {}", dir.display())),
    };
    if !meta.is_dir() {
        bail!("actions_dir {} is not a directory", dir.display());
    }
    if check_owners {
        check_owner(dir, &meta)?;
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            files.push(path);
        }
    }
    if files.len() > MAX_ACTION_FILES {
        bail!(
            "{}: more than {MAX_ACTION_FILES} action files",
            dir.display()
        );
    }
    files.sort();
    let mut staged = registry.clone();
    for path in files {
        let module = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|m| crate::envelope::is_arg_name(m))
            .ok_or_else(|| {
                anyhow!(
                    "{}: the file name must be MODULE.toml with MODULE like `[a-z][a-z0-9_]*`",
                    path.display()
                )
            })?
            .to_string();
        // symlink_metadata: a link elsewhere is refused, not followed.
        let meta = std::fs::symlink_metadata(&path)?;
        if !meta.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        if check_owners {
            check_owner(&path, &meta)?;
        }
        if meta.len() > MAX_ACTION_FILE {
            bail!("{} is larger than {MAX_ACTION_FILE} bytes", path.display());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        staged
            .add_module_toml(&module, &text)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    *registry = staged;
    Ok(())
}
