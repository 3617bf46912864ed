//! POSIX ACLs. Linux hands them to and from user space in the VFS form
//! (version 2, 8-byte entries: tag, perm, id) and ext4 stores the shorter
//! on-disk form (version 1; 4-byte entries without an id for the owner,
//! owning group, mask and other; 8-byte ones for named users and groups).

use crate::bytes::{Fields, put16, put32};
use crate::error::Corrupt;

/// `POSIX_ACL_XATTR_VERSION`: the VFS form.
pub const VFS_VERSION: u32 = 2;
/// `EXT4_ACL_VERSION`: the on-disk form.
pub const DISK_VERSION: u32 = 1;
/// Entry tags.
pub mod tag {
    /// The owner.
    pub const USER_OBJ: u16 = 0x01;
    /// A named user.
    pub const USER: u16 = 0x02;
    /// The owning group.
    pub const GROUP_OBJ: u16 = 0x04;
    /// A named group.
    pub const GROUP: u16 = 0x08;
    /// The mask.
    pub const MASK: u16 = 0x10;
    /// Everyone else.
    pub const OTHER: u16 = 0x20;
}
/// The id of entries that have none, in the VFS form.
pub const UNDEFINED_ID: u32 = u32::MAX;

/// One ACL entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclEntry {
    /// [`tag`].
    pub tag: u16,
    /// rwx bits.
    pub perm: u16,
    /// The user or group of a named entry, [`UNDEFINED_ID`] otherwise.
    pub id: u32,
}

fn named(tag: u16) -> Result<bool, u16> {
    match tag {
        tag::USER_OBJ | tag::GROUP_OBJ | tag::MASK | tag::OTHER => Ok(false),
        tag::USER | tag::GROUP => Ok(true),
        t => Err(t),
    }
}

/// Decodes the VFS form, checking the version, the size, the tags and
/// that permissions are at most rwx.
pub fn decode_vfs(value: &[u8]) -> Result<Vec<AclEntry>, Corrupt> {
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return Err(Corrupt::AclSize { len: value.len() });
    }
    let f = Fields::new(value, "ACL");
    let version = f.u32(0)?;
    if version != VFS_VERSION {
        return Err(Corrupt::AclVersion {
            found: version,
            want: VFS_VERSION,
        });
    }
    let mut out = Vec::with_capacity(value.len() / 8);
    for i in 0..(value.len() - 4) / 8 {
        let at = 4 + i * 8;
        let e = AclEntry {
            tag: f.u16(at)?,
            perm: f.u16(at + 2)?,
            id: f.u32(at + 4)?,
        };
        named(e.tag).map_err(|tag| Corrupt::AclTag { entry: i, tag })?;
        if e.perm & !7 != 0 {
            return Err(Corrupt::AclPerm {
                entry: i,
                perm: e.perm,
            });
        }
        out.push(e);
    }
    Ok(out)
}

/// The VFS form of `entries`.
pub fn encode_vfs(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = vec![0u8; 4 + 8 * entries.len()];
    put32(&mut out, 0, VFS_VERSION);
    for (i, e) in entries.iter().enumerate() {
        let at = 4 + 8 * i;
        put16(&mut out, at, e.tag);
        put16(&mut out, at + 2, e.perm);
        put32(&mut out, at + 4, e.id);
    }
    out
}

/// `ext4_acl_count`: the entries an on-disk ACL of `size` bytes holds
/// (up to four short ones, then the long ones), if the size is possible.
fn disk_count(size: usize) -> Option<usize> {
    let size = size.checked_sub(4)?;
    match size.checked_sub(4 * 4) {
        None => size.is_multiple_of(4).then_some(size / 4),
        Some(s) => s.is_multiple_of(8).then_some(s / 8 + 4),
    }
}

/// Decodes the on-disk form, as `ext4_acl_from_disk` does: the version,
/// the entry count the size implies, known tags, and entries ending
/// exactly at the value's end.
pub fn decode_disk(value: &[u8]) -> Result<Vec<AclEntry>, Corrupt> {
    let f = Fields::new(value, "ACL");
    let version = f.u32(0)?;
    if version != DISK_VERSION {
        return Err(Corrupt::AclVersion {
            found: version,
            want: DISK_VERSION,
        });
    }
    let n = disk_count(value.len()).ok_or(Corrupt::AclSize { len: value.len() })?;
    let mut out = Vec::with_capacity(n);
    let mut at = 4;
    for i in 0..n {
        let tag = f.u16(at)?;
        let perm = f.u16(at + 2)?;
        let id = if named(tag).map_err(|tag| Corrupt::AclTag { entry: i, tag })? {
            let id = f.u32(at + 4)?;
            at += 8;
            id
        } else {
            at += 4;
            UNDEFINED_ID
        };
        out.push(AclEntry { tag, perm, id });
    }
    if at != value.len() {
        return Err(Corrupt::AclEnd {
            end: at,
            len: value.len(),
        });
    }
    Ok(out)
}

/// The on-disk form of `entries`.
pub fn encode_disk(entries: &[AclEntry]) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    put32(&mut out, 0, DISK_VERSION);
    for e in entries {
        let at = out.len();
        let is_named = named(e.tag).unwrap_or(false);
        out.resize(at + if is_named { 8 } else { 4 }, 0);
        put16(&mut out, at, e.tag);
        put16(&mut out, at + 2, e.perm);
        if is_named {
            put32(&mut out, at + 4, e.id);
        }
    }
    out
}
