//! Extended attributes: in the inode first, the rest in one xattr block.
//!
//! Both places use the same entry format ([`ext4fmt::xattr::Entry`]).
//! Entries grow from the front, values (padded to 4 bytes) from the back,
//! and four zero bytes end the entry list.
//!
//! - In the inode, the area after the extra fields starts with the magic;
//!   value offsets count from the first entry.
//! - The block starts with a 32-byte header (magic, refcount, block count,
//!   hash); value offsets count from the block start.
//!
//! Entries are sorted as e2fsprogs and the kernel sort them (name index,
//! then name length, then name), which the kernel's lookup in blocks
//! relies on. Hashes follow `ext2fs_ext_attr_hash_entry`, which e2fsck
//! verifies.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::BLOCK_SIZE;
use super::acl;
use super::inode::INLINE_XATTR_SIZE;
use ext4fmt::xattr::{
    BLOCK_HEADER_SIZE as BLOCK_HEADER, BlockHeader, END_MARK_SIZE as END_MARK,
    ENTRY_HEADER_SIZE as ENTRY_HEADER, Entry, IBODY_HEADER_SIZE, MAX_NAME_LEN, is_acl,
};
#[cfg(test)]
use ext4fmt::xattr::{MAGIC as XATTR_MAGIC, block_hash, entry_hash};

/// Why a set of xattrs cannot be stored.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum XattrError {
    /// A malformed POSIX ACL: its full name and what is wrong.
    Acl(String, String),
    /// Anything else, explained.
    Other(String),
}

/// The encoded xattrs of one inode.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The in-inode area (all zeros when nothing is stored there).
    pub inline: [u8; INLINE_XATTR_SIZE],
    /// The xattr block, when the inode area was not enough.
    pub block: Option<Vec<u8>>,
}

struct Attr<'a> {
    index: u8,
    name: &'a [u8],
    value: &'a [u8],
}

impl Attr<'_> {
    fn entry_len(&self) -> usize {
        (ENTRY_HEADER + self.name.len()).next_multiple_of(4)
    }

    fn value_len(&self) -> usize {
        self.value.len().next_multiple_of(4)
    }
}

/// The name index and suffix of `full`; the ACL names are whole names
/// (an empty suffix) whose values are converted to ext4's ACL format.
fn split_name(full: &[u8]) -> Result<(u8, &[u8]), XattrError> {
    let shown = || String::from_utf8_lossy(full).into_owned();
    let (index, suffix) = ext4fmt::xattr::split_name(full)
        .ok_or_else(|| XattrError::Other(format!("xattr {} has an unknown namespace", shown())))?;
    if !is_acl(index) && (suffix.is_empty() || suffix.len() > MAX_NAME_LEN) {
        return Err(XattrError::Other(format!(
            "xattr name {} must have 1 to 255 bytes after its namespace",
            shown()
        )));
    }
    Ok((index, suffix))
}

/// Write entries and values into `area`, entries from `entries_at`, value
/// offsets relative to `base`. Returns the entry hashes in order.
fn fill(area: &mut [u8], entries_at: usize, base: usize, attrs: &[&Attr<'_>]) -> Vec<u32> {
    let mut at = entries_at;
    let mut value_end = area.len();
    let mut hashes = Vec::with_capacity(attrs.len());
    for a in attrs {
        let offs = if a.value.is_empty() {
            0
        } else {
            value_end -= a.value_len();
            value_end - base
        };
        let entry = Entry {
            name_index: a.index,
            value_offs: offs as u16,
            // Values are stored inline, never in an inode of their own.
            value_inum: 0,
            value_size: a.value.len() as u32,
            hash: ext4fmt::xattr::entry_hash(a.name, a.value),
            name: a.name.to_vec(),
        };
        entry.encode(area, at);
        entry.encode_value(&mut area[base..], a.value);
        let hash = entry.hash;
        hashes.push(hash);
        at += a.entry_len();
    }
    hashes
}

/// Encode `xattrs` (full names to values) for one inode: as many as fit in
/// the inode (in sorted order), the rest in one block.
pub(crate) fn encode(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Encoded, XattrError> {
    let mut values = Vec::with_capacity(xattrs.len());
    for (full, value) in xattrs {
        let (index, name) = split_name(full)?;
        let value = if is_acl(index) {
            let disk = acl::to_disk(value).map_err(|why| {
                XattrError::Acl(String::from_utf8_lossy(full).into_owned(), why.to_string())
            })?;
            Cow::Owned(disk)
        } else {
            Cow::Borrowed(value.as_slice())
        };
        values.push((index, name, value));
    }
    let mut attrs: Vec<Attr<'_>> = values
        .iter()
        .map(|(index, name, value)| Attr {
            index: *index,
            name,
            value,
        })
        .collect();
    attrs.sort_by(|a, b| (a.index, a.name.len(), a.name).cmp(&(b.index, b.name.len(), b.name)));

    // In the inode: 4 bytes of magic, then entries, end mark and values.
    let mut inline_room = INLINE_XATTR_SIZE - IBODY_HEADER_SIZE - END_MARK;
    let mut block_room = BLOCK_SIZE as usize - BLOCK_HEADER - END_MARK;
    let mut in_inode = Vec::new();
    let mut in_block = Vec::new();
    for a in &attrs {
        let need = a.entry_len() + a.value_len();
        if need <= inline_room {
            inline_room -= need;
            in_inode.push(a);
        } else if need <= block_room {
            block_room -= need;
            in_block.push(a);
        } else {
            return Err(XattrError::Other(format!(
                "xattrs need more room than the inode and one {BLOCK_SIZE}-byte block \
                 (at {}, value of {} bytes)",
                String::from_utf8_lossy(a.name),
                a.value.len()
            )));
        }
    }

    let mut inline = [0u8; INLINE_XATTR_SIZE];
    if !in_inode.is_empty() {
        ext4fmt::xattr::encode_ibody_header(&mut inline);
        fill(&mut inline, IBODY_HEADER_SIZE, IBODY_HEADER_SIZE, &in_inode);
    }
    let block = (!in_block.is_empty()).then(|| {
        let mut b = vec![0u8; BLOCK_SIZE as usize];
        let hashes = fill(&mut b, BLOCK_HEADER, 0, &in_block);
        // One inode uses the block.
        BlockHeader {
            refcount: 1,
            blocks: 1,
            hash: ext4fmt::xattr::block_hash(&hashes),
        }
        .encode(&mut b);
        b
    });
    Ok(Encoded { inline, block })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_u32(b: &[u8], at: usize) -> u32 {
        ext4fmt::bytes::le32(b, at).unwrap()
    }

    fn map(items: &[(&str, &[u8])]) -> BTreeMap<Vec<u8>, Vec<u8>> {
        items
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect()
    }

    #[test]
    fn small_ones_stay_in_the_inode() {
        let e = encode(&map(&[("user.a", b"1"), ("security.capability", &[1; 20])])).unwrap();
        assert!(e.block.is_none());
        assert_eq!(get_u32(&e.inline, 0), XATTR_MAGIC);
        // Sorted by index: user (1) before security (6).
        assert_eq!(e.inline[4 + 1], 1);
        assert_eq!(e.inline[4], 1);
        assert_eq!(&e.inline[4 + 16..4 + 17], b"a");
        // The single value byte sits (padded) at the very end of the area;
        // the offset counts from the first entry, 4 bytes in.
        assert_eq!(
            u16::from_le_bytes([e.inline[6], e.inline[7]]),
            (96 - 4 - 4) as u16
        );
    }

    #[test]
    fn big_ones_go_to_the_block() {
        let big = vec![7u8; 3000];
        let e = encode(&map(&[("user.big", &big), ("user.s", b"x")])).unwrap();
        let b = e.block.unwrap();
        assert_eq!(get_u32(&b, 0), XATTR_MAGIC);
        assert_eq!(get_u32(&b, 4), 1);
        assert_eq!(get_u32(&b, 8), 1);
        assert_eq!(&b[32 + 16..32 + 19], b"big");
        let offs = usize::from(u16::from_le_bytes([b[34], b[35]]));
        assert_eq!(offs, 4096 - 3000);
        assert_eq!(get_u32(&b, 32 + 12), entry_hash(b"big", &big));
        assert_eq!(get_u32(&b, 12), block_hash(&[entry_hash(b"big", &big)]));
        let too_big = vec![1u8; 5000];
        assert!(matches!(
            encode(&map(&[("user.x", &too_big)])),
            Err(XattrError::Other(_))
        ));
    }

    #[test]
    fn acls_are_converted_and_unknown_namespaces_refused() {
        assert!(matches!(
            encode(&map(&[("system.posix_acl_access", b"x")])).unwrap_err(),
            XattrError::Acl(name, _) if name == "system.posix_acl_access"
        ));
        // Owner rwx, group r-x, other ---: version 2 in, version 1 out.
        let vfs = [
            2, 0, 0, 0, 1, 0, 7, 0, 0, 0, 0, 0, 4, 0, 5, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0,
        ];
        let e = encode(&map(&[("system.posix_acl_default", &vfs)])).unwrap();
        assert_eq!(e.inline[4], 0, "an ACL entry has an empty name");
        assert_eq!(e.inline[5], 3);
        let size = get_u32(&e.inline, 4 + 8) as usize;
        assert_eq!(size, 4 + 3 * 4);
        // A name that only starts like an ACL name is an ordinary system. xattr.
        let e = encode(&map(&[("system.posix_acl_accessx", b"v")])).unwrap();
        assert_eq!(e.inline[5], 7);
        assert!(matches!(
            encode(&map(&[("foo.bar", b"x")])),
            Err(XattrError::Other(_))
        ));
        assert!(matches!(
            encode(&map(&[("user.", b"x")])),
            Err(XattrError::Other(_))
        ));
    }

    #[test]
    fn hash_matches_e2fsprogs() {
        // Worked by hand from ext2fs_ext_attr_hash_entry: name "a" gives
        // 0x61; one value word 0x00000031 ("1") folds in as
        // (0x61 << 16) ^ (0x61 >> 16) ^ 0x31.
        assert_eq!(entry_hash(b"a", b"1"), (0x61 << 16) ^ 0x31);
        // High name bytes count as signed chars.
        assert_eq!(entry_hash(&[0x80], b""), 0xFFFF_FF80);
    }
}
