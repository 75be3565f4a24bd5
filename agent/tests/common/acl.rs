//! A default ACL for the tests (shared by `tests/converge.rs` through
//! `common` and by `src/providers/stage.rs`'s unit tests through `#[path]`).

/// Sets a default ACL with a named user on `dir` (so a file created under
/// it gets an access ACL of its own): user::rwx user:4321:rw- group::r-x
/// mask::rwx other::r-x. False when the file system refuses it.
pub fn set_default_acl(dir: &std::path::Path) -> bool {
    let mut v = vec![2u8, 0, 0, 0];
    for (tag, perm, id) in [
        (0x01u16, 7u16, u32::MAX),
        (0x02, 6, 4321),
        (0x04, 5, u32::MAX),
        (0x10, 7, u32::MAX),
        (0x20, 5, u32::MAX),
    ] {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    rustix::fs::setxattr(
        dir,
        "system.posix_acl_default",
        &v,
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok()
}
