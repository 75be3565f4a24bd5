//! file, directory and symlink providers.

use super::{Ctx, Outcome, PendingWrite, Staged, cmd, octal};
use anyhow::Context;
use std::fs::{self, Metadata, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use troupe_catalog::{Ensure, Kind};

/// Largest text for which a unified diff is produced.
const MAX_DIFF_BYTES: usize = 1 << 20;

/// Largest content whose temp file is written at commit time (in parallel
/// with the rest of the batch); bigger ones are written at once, so a batch
/// never holds more than this per file in memory.
const DEFER_MAX_BYTES: usize = 256 << 10;

fn lstat(p: &Path) -> anyhow::Result<Option<Metadata>> {
    match fs::symlink_metadata(p) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot stat {}", p.display())),
    }
}

pub(crate) fn temp_path(dest: &Path) -> anyhow::Result<PathBuf> {
    let name = dest.file_name().context("path has no file name")?;
    Ok(dest.with_file_name(format!(".{}.troupe-new", name.to_string_lossy())))
}

fn parent_ok(ctx: &Ctx, p: &Path) -> anyhow::Result<()> {
    let parent = p.parent().context("path has no parent")?;
    if ctx.fresh_dirs.contains(parent) {
        return Ok(());
    }
    // In noop a parent the catalog would create counts as there.
    if ctx.noop && ctx.managed.contains(parent) {
        return Ok(());
    }
    match fs::metadata(parent) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!("parent {} is not a directory", parent.display()),
        Err(_) if ctx.root != Path::new("/") => anyhow::bail!(
            "parent directory {} does not exist (declare it, or require the resource that creates it; \
             converging into an empty --root {} needs its base directories first: mkdir -p {})",
            parent.display(),
            ctx.root.display(),
            parent.display()
        ),
        Err(_) => anyhow::bail!(
            "parent directory {} does not exist (declare it, or require the resource that creates it)",
            parent.display()
        ),
    }
}

/// Creates a fresh temp file (with `mode`, never following a link),
/// replacing a leftover from an interrupted run.
fn create_temp(tmp: &Path, mode: u32) -> anyhow::Result<fs::File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(mode)
            .open(tmp)
    };
    match open() {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            fs::remove_file(tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
            open().with_context(|| format!("cannot create {}", tmp.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", tmp.display())),
    }
}

/// The process's umask, read from `/proc/self/status` (reading it with
/// umask(2) would change it for a moment under other threads); None when
/// unknown.
fn umask() -> Option<u32> {
    static UMASK: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        let s = fs::read_to_string("/proc/self/status").ok()?;
        let v = s.lines().find_map(|l| l.strip_prefix("Umask:"))?;
        u32::from_str_radix(v.trim(), 8).ok()
    })
}

/// Whether a file created in `dir` by open(2) with `mode` already has
/// exactly that mode and the owner asked for, so the chown and chmod after
/// it can be left out: no setuid/setgid/sticky bits, none masked by the
/// umask, no default ACL on `dir` (it would replace the umask), and the
/// owner is this process's with the group left as it comes.
pub(crate) fn created_as_asked(
    ctx: &mut Ctx,
    dir: &Path,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
) -> bool {
    if mode & 0o7000 != 0 || gid.is_some() || uid.is_some_and(|u| u != ctx.euid) {
        return false;
    }
    if umask().is_none_or(|m| mode & m != 0) {
        return false;
    }
    !ctx.default_acl(dir)
}

/// Writes `bytes` to a fresh temp file with its final owner and mode (the
/// mode after the owner: chown clears setuid bits). With `as_created`
/// ([`created_as_asked`]) the file is created with `mode` and neither
/// chowned nor chmodded (two syscalls fewer per file); otherwise it is
/// created 0600 and given its owner, then its mode. Removes the temp file
/// when anything fails.
pub(crate) fn write_temp(
    tmp: &Path,
    bytes: &[u8],
    uid: Option<u32>,
    gid: Option<u32>,
    mode: u32,
    as_created: bool,
) -> anyhow::Result<()> {
    let mut f = create_temp(tmp, if as_created { mode } else { 0o600 })?;
    let res = (|| -> anyhow::Result<()> {
        f.write_all(bytes)?;
        if as_created {
            return Ok(());
        }
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&f, uid, gid).context("cannot chown")?;
        }
        f.set_permissions(fs::Permissions::from_mode(mode))
            .context("cannot chmod")?;
        Ok(())
    })();
    if res.is_err() {
        drop(f);
        let _ = fs::remove_file(tmp);
    }
    res
}

/// Same bytes? Compares size first, then the content, without hashing.
fn same_content(p: &Path, meta: &Metadata, want: &[u8]) -> anyhow::Result<bool> {
    if meta.len() != want.len() as u64 {
        return Ok(false);
    }
    let mut f = fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
    let mut buf = Vec::with_capacity(want.len() + 1);
    (&mut f).take(want.len() as u64 + 1).read_to_end(&mut buf)?;
    Ok(buf == want)
}

fn unified_diff(path: &str, old: &[u8], new: &[u8]) -> Option<String> {
    if old.len() + new.len() > MAX_DIFF_BYTES {
        return None;
    }
    let old = std::str::from_utf8(old).ok()?;
    let new = std::str::from_utf8(new).ok()?;
    Some(
        similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(3)
            .header(path, path)
            .to_string(),
    )
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// Checks/changes mode and ownership of an existing object.
fn converge_meta(
    ctx: &mut Ctx,
    p: &Path,
    meta: &Metadata,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let cur_mode = meta.permissions().mode() & 0o7777;
    let mode_wrong = mode.is_some_and(|m| m != cur_mode);
    let uid_wrong = uid.is_some_and(|u| u != meta.uid());
    let gid_wrong = gid.is_some_and(|g| g != meta.gid());
    if !(mode_wrong || uid_wrong || gid_wrong) {
        return Ok(());
    }
    if !ctx.noop {
        ctx.journal(p)?;
    }
    if uid_wrong || gid_wrong {
        out.change(format!(
            "owner changed {}:{} -> {}:{}",
            meta.uid(),
            meta.gid(),
            uid.unwrap_or(meta.uid()),
            gid.unwrap_or(meta.gid())
        ));
        if !ctx.noop {
            std::os::unix::fs::lchown(p, uid, gid)
                .with_context(|| format!("cannot chown {}", p.display()))?;
        }
    }
    if let Some(m) = mode {
        if mode_wrong {
            out.change(format!("mode changed {} -> {}", octal(cur_mode), octal(m)));
        }
        // chown clears setuid bits: (re)apply the mode after it.
        if !ctx.noop {
            fs::set_permissions(p, fs::Permissions::from_mode(m))
                .with_context(|| format!("cannot chmod {}", p.display()))?;
        }
    }
    if !ctx.noop {
        if meta.is_dir() {
            // Its setgid bit, group or mode may be what decides how files
            // are made in it.
            ctx.dirs_changed();
        }
        if let Some(d) = p.parent() {
            ctx.note_write(d);
        }
    }
    Ok(())
}

/// `file`: content, mode, owner, group; `ensure => absent` removes it.
pub fn file(ctx: &mut Ctx, kind: &Kind, sensitive: bool) -> anyhow::Result<Outcome> {
    let Kind::File {
        path,
        ensure,
        content,
        mode,
        owner,
        group,
        validate,
    } = kind
    else {
        anyhow::bail!("not a file resource");
    };
    let p = ctx.host_path(path)?;
    // A directory this batch created holds only this batch's temp files.
    let fresh = p.parent().is_some_and(|d| ctx.fresh_dirs.contains(d));
    let meta = if fresh { None } else { lstat(&p)? };
    let mut out = Outcome::default();
    if *ensure == Ensure::Absent {
        return remove_nondir(ctx, &p, meta.as_ref(), out);
    }
    if let Some(m) = &meta {
        anyhow::ensure!(
            !m.is_dir(),
            "{} is a directory; a file resource will not replace it",
            p.display()
        );
    }
    let uid = ctx.uid(owner)?;
    let gid = ctx.gid(group)?;
    let want: Option<std::borrow::Cow<[u8]>> = match content {
        Some(c) => Some(ctx.contents.get(&c.sha256.to_string())?),
        None => None,
    };
    let is_file = meta.as_ref().is_some_and(|m| m.is_file());
    let rewrite = match (&meta, &want) {
        (None, _) => true,
        (Some(_), _) if !is_file => true, // a symlink or special file: replace it
        (Some(m), Some(w)) => !same_content(&p, m, w)?,
        (Some(_), None) => false,
    };
    if !rewrite {
        let m = meta.as_ref().context("metadata")?;
        converge_meta(ctx, &p, m, *mode, uid, gid, &mut out)?;
        return Ok(out);
    }
    parent_ok(ctx, &p)?;
    let new: &[u8] = want.as_deref().unwrap_or(b"");
    let new_sha = troupe_catalog::sha256_hex(new);
    // Describe the change.
    let old: Option<Vec<u8>> = if is_file { fs::read(&p).ok() } else { None };
    match (&meta, &old) {
        (None, _) => {
            if sensitive {
                out.change("created (content redacted)");
            } else {
                out.change(format!("created with content sha256:{}", short(&new_sha)));
            }
        }
        (Some(_), Some(o)) => {
            if sensitive {
                out.change("content changed (redacted)");
            } else {
                out.change(format!(
                    "content changed sha256:{} -> sha256:{}",
                    short(&troupe_catalog::sha256_hex(o)),
                    short(&new_sha)
                ));
            }
        }
        (Some(_), None) => out.change("replaced a non-file with a file"),
    }
    // A diff for changed content (a new file's content is in the catalog).
    if let Some(o) = &old {
        out.diff = if sensitive {
            Some("(diff redacted: sensitive)\n".into())
        } else {
            unified_diff(path, o, new)
        };
    }
    // Keep the old mode/owner where the catalog does not manage them.
    let (cur_mode, cur_uid, cur_gid) = match &meta {
        Some(m) if is_file => (
            Some(m.permissions().mode() & 0o7777),
            Some(m.uid()),
            Some(m.gid()),
        ),
        _ => (None, None, None),
    };
    let final_mode = mode.or(cur_mode).unwrap_or(0o644);
    if let (Some(cm), Some(m)) = (cur_mode, mode)
        && cm != *m
    {
        out.change(format!("mode changed {} -> {}", octal(cm), octal(*m)));
    }
    if ctx.noop {
        return Ok(out);
    }
    ctx.journal_known(&p, Some(meta.is_none()))?;
    let tmp = temp_path(&p)?;
    let (u, g) = (uid.or(cur_uid), gid.or(cur_gid));
    let as_created = match p.parent() {
        Some(d) => created_as_asked(ctx, d, u, g, final_mode),
        None => false,
    };
    if validate.is_none() && new.len() <= DEFER_MAX_BYTES {
        // Written at commit, in parallel with the rest of the batch.
        let write = PendingWrite {
            bytes: new.to_vec(),
            uid: u,
            gid: g,
            mode: final_mode,
            as_created,
        };
        // Created in the stage when the directory allows it (the inode
        // then comes from the stage's block group, see [`super::stage`]).
        let in_stage = match p.parent() {
            Some(d) => ctx.stage_allows(d, g.is_some()),
            None => false,
        };
        let tmp = if in_stage { PathBuf::new() } else { tmp };
        stage(ctx, tmp, p, Some(write), in_stage);
        return Ok(out);
    }
    write_temp(&tmp, new, u, g, final_mode, as_created)
        .with_context(|| format!("cannot write {}", p.display()))?;
    let res = (|| -> anyhow::Result<()> {
        if let Some(v) = validate {
            // Under --root the validator runs inside the root (chroot), so
            // it sees the temp file at its path relative to the root.
            let in_root = ctx.in_root();
            let t = if in_root {
                std::path::Path::new("/")
                    .join(tmp.strip_prefix(&ctx.root).unwrap_or(&tmp))
                    .to_string_lossy()
                    .into_owned()
            } else {
                tmp.to_string_lossy().into_owned()
            };
            let argv: Vec<String> = v.iter().map(|a| a.replace('%', &t)).collect();
            let o = cmd::run(&cmd::Spec {
                argv: &argv,
                chroot: in_root.then_some(ctx.root.as_path()),
                ..Default::default()
            })?;
            anyhow::ensure!(
                o.ok(),
                "validate command failed ({}), file left unchanged: {}",
                o.describe(),
                if sensitive {
                    "(output redacted)".into()
                } else {
                    o.tail()
                }
            );
        }
        Ok(())
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e.context(format!("cannot write {}", p.display())));
    }
    stage(ctx, tmp, p, None, false);
    Ok(out)
}

/// Queues `tmp` (written now, or at commit when `write` is given) to be
/// renamed onto `dest` at the batch's commit.
fn stage(ctx: &mut Ctx, tmp: PathBuf, dest: PathBuf, write: Option<PendingWrite>, in_stage: bool) {
    if let Some(d) = dest.parent() {
        ctx.note_write(d);
    }
    ctx.staged.push(Staged {
        tmp,
        dest,
        resource: ctx.current,
        write,
        in_stage,
    });
}

/// Removes a file or symlink (never a directory).
fn remove_nondir(
    ctx: &mut Ctx,
    p: &Path,
    meta: Option<&Metadata>,
    mut out: Outcome,
) -> anyhow::Result<Outcome> {
    let Some(m) = meta else { return Ok(out) };
    anyhow::ensure!(
        !m.is_dir(),
        "{} is a directory; use a directory resource to remove it",
        p.display()
    );
    out.change("removed");
    if !ctx.noop {
        ctx.journal(p)?;
        fs::remove_file(p).with_context(|| format!("cannot remove {}", p.display()))?;
        if m.file_type().is_symlink() {
            ctx.paths_changed();
        }
        if let Some(d) = p.parent() {
            ctx.note_write(d);
        }
    }
    Ok(out)
}

/// `directory`: exists with mode/owner; `purge` removes unmanaged entries;
/// `ensure => absent` removes it when empty.
pub fn directory(ctx: &mut Ctx, kind: &Kind) -> anyhow::Result<Outcome> {
    let Kind::Directory {
        path,
        ensure,
        mode,
        owner,
        group,
        purge,
    } = kind
    else {
        anyhow::bail!("not a directory resource");
    };
    let p = ctx.host_path(path)?;
    let meta = lstat(&p)?;
    let mut out = Outcome::default();
    if *ensure == Ensure::Absent {
        let Some(m) = meta else { return Ok(out) };
        if !m.is_dir() {
            anyhow::bail!(
                "{} exists and is not a directory; not removing it",
                p.display()
            );
        }
        out.change("removed");
        if !ctx.noop {
            ctx.journal(&p)?;
            fs::remove_dir(&p).with_context(|| {
                format!(
                    "cannot remove {} (a directory is only removed when empty)",
                    p.display()
                )
            })?;
            ctx.paths_changed();
        }
        return Ok(out);
    }
    let uid = ctx.uid(owner)?;
    let gid = ctx.gid(group)?;
    match &meta {
        Some(m) if m.is_dir() => converge_meta(ctx, &p, m, *mode, uid, gid, &mut out)?,
        Some(_) => anyhow::bail!(
            "{} exists and is not a directory; not replacing it",
            p.display()
        ),
        None => {
            parent_ok(ctx, &p)?;
            let m = mode.unwrap_or(0o755);
            out.change(format!("created with mode {}", octal(m)));
            if !ctx.noop {
                ctx.journal_known(&p, Some(true))?;
                // Under a setgid parent mkdir adds the setgid bit (not in
                // `m`): chmod to `m`, or the next run would report a change.
                let as_created = match p.parent() {
                    Some(d) => {
                        created_as_asked(ctx, d, uid, gid, m) && ctx.dir_setgid(d) == Some(false)
                    }
                    None => false,
                };
                let make = |at: &Path| -> anyhow::Result<()> {
                    fs::DirBuilder::new()
                        .mode(if as_created { m } else { 0o700 })
                        .create(at)
                        .with_context(|| format!("cannot create {}", at.display()))?;
                    if !as_created {
                        if uid.is_some() || gid.is_some() {
                            std::os::unix::fs::lchown(at, uid, gid)
                                .with_context(|| format!("cannot chown {}", at.display()))?;
                        }
                        fs::set_permissions(at, fs::Permissions::from_mode(m))
                            .with_context(|| format!("cannot chmod {}", at.display()))?;
                    }
                    Ok(())
                };
                // A directory whose parent existed before this run is made
                // in the stage and renamed into place, so its inode (and
                // then its subdirectories' and files') comes from the
                // stage's block group ([`super::stage`]); one inside a
                // directory this run made is there already.
                let parent_fresh = p.parent().is_some_and(|d| ctx.fresh_dirs.contains(d));
                let staged_at = match p.parent() {
                    Some(d) if !parent_fresh => ctx.stage_temp_for(d, gid.is_some()),
                    _ => None,
                };
                let in_stage = staged_at.as_deref().is_some_and(|t| {
                    // NOREPLACE: a directory that appeared meanwhile stays
                    // (mkdir in place would fail on it too).
                    let res = make(t).and_then(|()| {
                        use rustix::fs::{CWD, RenameFlags, renameat_with};
                        renameat_with(CWD, t, CWD, &p, RenameFlags::NOREPLACE)
                            .with_context(|| format!("cannot move {}", t.display()))
                    });
                    if let Err(e) = &res {
                        let _ = fs::remove_dir(t);
                        tracing::debug!("{e:#} (made in place instead)");
                    }
                    res.is_ok()
                });
                if !in_stage {
                    make(&p)?;
                }
                if let Some(d) = p.parent() {
                    ctx.note_write(d);
                }
                ctx.fresh_dirs.insert(p.clone());
            }
        }
    }
    if *purge && p.is_dir() {
        let mut names: Vec<PathBuf> = fs::read_dir(&p)
            .with_context(|| format!("cannot list {}", p.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        for child in names {
            if ctx.managed.contains(&child) {
                continue;
            }
            let cm = lstat(&child)?;
            let is_dir = cm.as_ref().is_some_and(|m| m.is_dir());
            out.change(format!(
                "purged unmanaged {} {}",
                if is_dir { "directory" } else { "entry" },
                child.display()
            ));
            if ctx.noop {
                continue;
            }
            if is_dir {
                fs::remove_dir_all(&child)
                    .with_context(|| format!("cannot purge {}", child.display()))?;
            } else {
                ctx.journal(&child)?;
                fs::remove_file(&child)
                    .with_context(|| format!("cannot purge {}", child.display()))?;
            }
            ctx.note_write(&p);
            ctx.paths_changed();
        }
    }
    Ok(out)
}

/// `symlink`: `path` points at `target` (replacing a file, never a directory).
pub fn symlink(ctx: &mut Ctx, path: &str, ensure: Ensure, target: &str) -> anyhow::Result<Outcome> {
    let p = ctx.host_path(path)?;
    let meta = lstat(&p)?;
    let out = Outcome::default();
    if ensure == Ensure::Absent {
        return remove_nondir(ctx, &p, meta.as_ref(), out);
    }
    let mut out = out;
    match &meta {
        Some(m) if m.file_type().is_symlink() => {
            let cur = fs::read_link(&p)?;
            if cur == Path::new(target) {
                return Ok(out);
            }
            out.change(format!("target changed {} -> {target}", cur.display()));
        }
        Some(m) if m.is_dir() => anyhow::bail!(
            "{} is a directory; a symlink resource will not replace it",
            p.display()
        ),
        Some(_) => out.change(format!("replaced a file with a link to {target}")),
        None => {
            parent_ok(ctx, &p)?;
            out.change(format!("created -> {target}"));
        }
    }
    if ctx.noop {
        return Ok(out);
    }
    ctx.journal(&p)?;
    let tmp = temp_path(&p)?;
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("cannot create link {}", tmp.display()))?;
    fs::rename(&tmp, &p).with_context(|| format!("cannot move link onto {}", p.display()))?;
    ctx.paths_changed();
    if let Some(d) = p.parent() {
        ctx.note_write(d);
    }
    Ok(out)
}

/// Restores one journalled object to its state before a run (rollback).
pub fn restore(
    change: &crate::state::FileChange,
    bucket: &crate::state::Bucket,
) -> anyhow::Result<String> {
    use crate::state::Before;
    let p = &change.path;
    if let Some(root) = &change.root {
        // Resolve the path inside the root again: a parent that became a
        // link since the run must not carry the restore outside it.
        let rel = p.strip_prefix(root).map_err(|_| {
            anyhow::anyhow!(
                "{} is not inside the run's root {}",
                p.display(),
                root.display()
            )
        })?;
        let now = super::inroot::RootResolver::open(root)?
            .host_path(&Path::new("/").join(rel).to_string_lossy())
            .with_context(|| {
                format!(
                    "{} no longer resolves inside the root; not restoring",
                    p.display()
                )
            })?;
        anyhow::ensure!(
            &now == p,
            "{} now resolves to {} inside the root (a parent was replaced by a link since the run); not restoring",
            p.display(),
            now.display()
        );
    }
    let cur = lstat(p)?;
    match &change.before {
        Before::Absent => match cur {
            None => Ok(format!("{} already absent", p.display())),
            Some(m) if m.is_dir() => {
                fs::remove_dir(p).with_context(|| {
                    format!(
                        "cannot remove {} (created by the run, not empty now)",
                        p.display()
                    )
                })?;
                Ok(format!("removed directory {}", p.display()))
            }
            Some(_) => {
                fs::remove_file(p)?;
                Ok(format!("removed {}", p.display()))
            }
        },
        Before::File {
            sha256,
            mode,
            uid,
            gid,
        } => {
            let bytes = bucket.get(sha256)?;
            if cur.as_ref().is_some_and(|m| m.is_dir()) {
                anyhow::bail!("{} is now a directory; not replacing it", p.display());
            }
            let tmp = temp_path(p)?;
            let _ = fs::remove_file(&tmp);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            std::os::unix::fs::fchown(&f, Some(*uid), Some(*gid))?;
            f.set_permissions(fs::Permissions::from_mode(*mode))?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, p)?;
            Ok(format!(
                "restored {} (sha256:{})",
                p.display(),
                short(sha256)
            ))
        }
        Before::Symlink { target } => {
            if cur.as_ref().is_some_and(|m| m.is_dir()) {
                anyhow::bail!("{} is now a directory; not replacing it", p.display());
            }
            let tmp = temp_path(p)?;
            let _ = fs::remove_file(&tmp);
            std::os::unix::fs::symlink(target, &tmp)?;
            fs::rename(&tmp, p)?;
            Ok(format!("restored link {} -> {target}", p.display()))
        }
        Before::Directory { mode, uid, gid } => {
            if cur.is_none() {
                fs::create_dir(p)?;
            }
            std::os::unix::fs::lchown(p, Some(*uid), Some(*gid))?;
            fs::set_permissions(p, fs::Permissions::from_mode(*mode))?;
            Ok(format!("restored directory {}", p.display()))
        }
    }
}
