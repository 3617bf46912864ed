//! POSIX ACLs: ext4's on-disk format back to the xattr (VFS) format that
//! `getxattr` returns, as the kernel's `ext4_acl_from_disk` and
//! `posix_acl_to_xattr` do.
//!
//! On disk: a version-1 header (4 bytes), then 4-byte entries (tag,
//! permissions) for the owner, owning group, mask and others, and 8-byte
//! entries (tag, permissions, id) for named users and groups. The VFS
//! format: a version-2 header, then 8-byte entries for all of them, with
//! id `ACL_UNDEFINED_ID` (`u32::MAX`) where ext4 stores none.

use ext4fmt::acl;

/// The VFS form of the on-disk ACL `value`, or what is wrong with it.
pub(crate) fn from_disk(value: &[u8]) -> Result<Vec<u8>, ext4fmt::Corrupt> {
    Ok(acl::encode_vfs(&acl::decode_disk(value)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext4fmt::acl::tag::{GROUP, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ};

    fn err(value: &[u8]) -> String {
        from_disk(value).unwrap_err().to_string()
    }

    fn disk(entries: &[(u16, u16, Option<u32>)]) -> Vec<u8> {
        let mut v = 1u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            if let Some(id) = id {
                v.extend(id.to_le_bytes());
            }
        }
        v
    }

    #[test]
    fn short_and_long_entries() {
        let d = disk(&[
            (USER_OBJ, 6, None),
            (USER, 4, Some(1000)),
            (GROUP_OBJ, 4, None),
            (MASK, 4, None),
            (OTHER, 0, None),
        ]);
        let mut want = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in [
            (1u16, 6u16, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ] {
            want.extend(tag.to_le_bytes());
            want.extend(perm.to_le_bytes());
            want.extend(id.to_le_bytes());
        }
        assert_eq!(from_disk(&d).unwrap(), want);
        // Three short entries (a minimal ACL).
        let d = disk(&[(USER_OBJ, 7, None), (GROUP_OBJ, 5, None), (OTHER, 5, None)]);
        assert_eq!(from_disk(&d).unwrap().len(), 4 + 3 * 8);
        // A header alone: no entries (the kernel then reports no ACL).
        assert_eq!(from_disk(&disk(&[])).unwrap(), 2u32.to_le_bytes());
    }

    #[test]
    fn malformed_values_are_named() {
        assert!(err(b"ab").contains("2 bytes"));
        assert!(err(&2u32.to_le_bytes()).contains("version 2"));
        let mut odd = disk(&[(USER_OBJ, 7, None)]);
        odd.push(0);
        assert!(err(&odd).contains("9 bytes"));
        assert!(err(&disk(&[(0x40, 7, None)])).contains("0x40"));
        // Two long entries where the size promises four short ones.
        let d = disk(&[(USER, 7, Some(1)), (GROUP, 7, Some(2))]);
        assert!(err(&d).contains("fields reach byte"));
        // Short entries where a long one was counted: bytes left over.
        let mut d = disk(&[(OTHER, 0, None); 5]);
        d.extend([0; 4]);
        assert!(err(&d).contains("end at byte 24 of 28"));
    }
}
