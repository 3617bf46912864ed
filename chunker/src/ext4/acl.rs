//! POSIX ACLs: from the xattr format layers carry to ext4's on-disk format.
//!
//! Layers (and the VFS) store `system.posix_acl_access`/`_default` as a
//! version-2 header followed by 8-byte entries (tag, permissions, id). ext4
//! stores a version-1 header, then 4-byte entries for the owner, group,
//! mask and other entries (no id) and 8-byte entries for named users and
//! groups, as the kernel's `ext4_acl_to_disk` writes them.

use super::bytes::{get_u32, put_u16, put_u32};

const VFS_VERSION: u32 = 2;
const DISK_VERSION: u32 = 1;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

/// Convert a VFS-format ACL value to ext4's disk format, or say what is
/// wrong with it.
pub(crate) fn to_disk(value: &[u8]) -> Result<Vec<u8>, String> {
    if value.len() < 4 || !(value.len() - 4).is_multiple_of(8) {
        return Err(format!(
            "an ACL value of {} bytes is not a 4-byte header plus 8-byte entries",
            value.len()
        ));
    }
    let version = get_u32(value, 0);
    if version != VFS_VERSION {
        return Err(format!("ACL version {version} is not {VFS_VERSION}"));
    }
    let mut out = vec![0u8; 4];
    put_u32(&mut out, 0, DISK_VERSION);
    for entry in value[4..].chunks(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        let perm = u16::from_le_bytes([entry[2], entry[3]]);
        if perm & !7 != 0 {
            return Err(format!("ACL permissions {perm:#o} are more than rwx"));
        }
        let at = out.len();
        match tag {
            USER_OBJ | GROUP_OBJ | MASK | OTHER => {
                out.resize(at + 4, 0);
            }
            USER | GROUP => {
                out.resize(at + 8, 0);
                out[at + 4..at + 8].copy_from_slice(&entry[4..8]);
            }
            _ => return Err(format!("ACL entry tag {tag:#x} is unknown")),
        }
        put_u16(&mut out, at, tag);
        put_u16(&mut out, at + 2, perm);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vfs(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    #[test]
    fn short_and_full_entries() {
        let v = vfs(&[
            (USER_OBJ, 7, u32::MAX),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 5, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        let d = to_disk(&v).unwrap();
        let expect: Vec<u8> = [
            &1u32.to_le_bytes()[..],
            &[1, 0, 7, 0],
            &[2, 0, 5, 0],
            &1000u32.to_le_bytes(),
            &[4, 0, 5, 0],
            &[0x10, 0, 5, 0],
            &[0x20, 0, 0, 0],
        ]
        .concat();
        assert_eq!(d, expect);
    }

    #[test]
    fn malformed_values_are_named() {
        assert!(to_disk(b"x").unwrap_err().contains("1 bytes"));
        assert!(
            to_disk(&1u32.to_le_bytes())
                .unwrap_err()
                .contains("version 1")
        );
        assert!(to_disk(&vfs(&[(0x40, 7, 0)])).unwrap_err().contains("0x40"));
        assert!(
            to_disk(&vfs(&[(USER_OBJ, 8, 0)]))
                .unwrap_err()
                .contains("rwx")
        );
    }
}
