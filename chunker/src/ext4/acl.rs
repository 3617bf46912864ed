//! POSIX ACLs: from the xattr format layers carry to ext4's on-disk format.
//!
//! Layers (and the VFS) store `system.posix_acl_access`/`_default` as a
//! version-2 header followed by 8-byte entries (tag, permissions, id). ext4
//! stores a version-1 header, then 4-byte entries for the owner, group,
//! mask and other entries (no id) and 8-byte entries for named users and
//! groups, as the kernel's `ext4_acl_to_disk` writes them.

use ext4fmt::acl;

/// Convert a VFS-format ACL value to ext4's disk format, or say what is
/// wrong with it.
pub(crate) fn to_disk(value: &[u8]) -> Result<Vec<u8>, ext4fmt::Corrupt> {
    Ok(acl::encode_disk(&acl::decode_vfs(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext4fmt::acl::tag::{GROUP_OBJ, MASK, OTHER, USER, USER_OBJ};

    fn err(value: &[u8]) -> String {
        to_disk(value).unwrap_err().to_string()
    }

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
        assert!(err(b"x").contains("1 bytes"));
        assert!(err(&1u32.to_le_bytes()).contains("version 1"));
        assert!(err(&vfs(&[(0x40, 7, 0)])).contains("0x40"));
        assert!(err(&vfs(&[(USER_OBJ, 8, 0)])).contains("rwx"));
    }
}
