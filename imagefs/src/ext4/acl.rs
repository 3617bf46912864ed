//! POSIX ACLs: ext4's on-disk format back to the xattr (VFS) format that
//! `getxattr` returns, as the kernel's `ext4_acl_from_disk` and
//! `posix_acl_to_xattr` do.
//!
//! On disk: a version-1 header (4 bytes), then 4-byte entries (tag,
//! permissions) for the owner, owning group, mask and others, and 8-byte
//! entries (tag, permissions, id) for named users and groups. The VFS
//! format: a version-2 header, then 8-byte entries for all of them, with
//! id `ACL_UNDEFINED_ID` (`u32::MAX`) where ext4 stores none.

use super::bytes::{le16, le32};

const DISK_VERSION: u32 = 1;
const VFS_VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

/// `ext4_acl_count`: the entries a value of `size` bytes holds, assuming
/// the four short entries come with any number of long ones.
fn count(size: usize) -> Option<usize> {
    let size = size.checked_sub(4)?;
    match size.checked_sub(4 * 4) {
        None => size.is_multiple_of(4).then_some(size / 4),
        Some(s) => s.is_multiple_of(8).then_some(s / 8 + 4),
    }
}

/// The VFS form of an ext4 ACL value, or why it is malformed.
pub(crate) fn from_disk(value: &[u8]) -> Result<Vec<u8>, String> {
    let version = le32(value, 0).ok_or_else(|| format!("{}-byte ACL", value.len()))?;
    if version != DISK_VERSION {
        return Err(format!("ACL version {version} is not {DISK_VERSION}"));
    }
    let n = count(value.len()).ok_or_else(|| format!("an ACL of {} bytes", value.len()))?;
    let mut out = VFS_VERSION.to_le_bytes().to_vec();
    let mut at = 4;
    for i in 0..n {
        let cut = || format!("ACL entry {i} runs past the value's {} bytes", value.len());
        let tag = le16(value, at).ok_or_else(cut)?;
        let perm = le16(value, at + 2).ok_or_else(cut)?;
        let id = match tag {
            USER_OBJ | GROUP_OBJ | MASK | OTHER => {
                at += 4;
                UNDEFINED_ID
            }
            USER | GROUP => {
                let id = le32(value, at + 4).ok_or_else(cut)?;
                at += 8;
                id
            }
            _ => return Err(format!("ACL entry {i} has the unknown tag {tag:#x}")),
        };
        out.extend(tag.to_le_bytes());
        out.extend(perm.to_le_bytes());
        out.extend(id.to_le_bytes());
    }
    if at != value.len() {
        return Err(format!("ACL entries end at byte {at} of {}", value.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(from_disk(b"ab").unwrap_err().contains("2-byte"));
        assert!(
            from_disk(&2u32.to_le_bytes())
                .unwrap_err()
                .contains("version 2")
        );
        let mut odd = disk(&[(USER_OBJ, 7, None)]);
        odd.push(0);
        assert!(from_disk(&odd).unwrap_err().contains("9 bytes"));
        assert!(
            from_disk(&disk(&[(0x40, 7, None)]))
                .unwrap_err()
                .contains("0x40")
        );
        // Two long entries where the size promises four short ones.
        let d = disk(&[(USER, 7, Some(1)), (GROUP, 7, Some(2))]);
        assert!(from_disk(&d).unwrap_err().contains("runs past"));
        // Short entries where a long one was counted: bytes left over.
        let mut d = disk(&[(OTHER, 0, None); 5]);
        d.extend([0; 4]);
        assert!(from_disk(&d).unwrap_err().contains("end at byte 24 of 28"));
    }
}
