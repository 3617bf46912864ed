//! Extended attributes: the in-inode area and the xattr block.
//!
//! Both hold the same entries (`struct ext4_xattr_entry`): name length
//! (1), name index (1), value offset (2), value inode (4), value size (4),
//! hash (4), then the name suffix padded to 4 bytes. Four zero bytes end
//! the list; values sit after it.
//! - In the inode, after `i_extra_isize`: the magic, then the entries;
//!   value offsets count from the first entry.
//! - The block: a 32-byte header (magic, refcount, block count 1, hash),
//!   then the entries; value offsets count from the block's start. Several
//!   inodes may share one block (the refcount says how many).
//!
//! The name index is a prefix: 1 `user.`, 2 `system.posix_acl_access`,
//! 3 `system.posix_acl_default`, 4 `trusted.`, 6 `security.`, 7
//! `system.`, 8 `system.richacl`, 10 `gnu.`. The two ACLs are stored in
//! ext4's own format and are converted back (see `acl.rs`).
//!
//! Checks follow the kernel's `check_xattrs`: every entry and the end mark
//! inside the area, every value inside the area and after the end mark.

use super::MetaError;
use super::acl;
use ext4fmt::xattr::{
    BLOCK_HEADER_SIZE as BLOCK_HEADER, BlockHeader, END_MARK_SIZE, Entry, IBODY_HEADER_SIZE,
    decode_ibody_header, is_acl, prefix,
};

/// One extended attribute, as `getxattr` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xattr {
    /// The on-disk name index.
    pub index: u8,
    /// The full name (`user.comment`).
    pub name: Vec<u8>,
    /// The value; POSIX ACLs in the xattr (VFS) format.
    pub value: Vec<u8>,
}

impl Xattr {
    /// Whether Linux's ext4 shows this attribute: it has no handler for
    /// the plain `system.` index (7, where inline data keeps
    /// `system.data`) or for rich ACLs (8), and skips them when listing.
    pub fn shown_by_linux(&self) -> bool {
        matches!(self.index, 1 | 2 | 3 | 4 | 6 | 10)
    }
}

/// Appends the attributes of an in-inode area (from its magic to the
/// inode's end) of inode `ino`.
pub(crate) fn parse_ibody(ino: u32, area: &[u8], out: &mut Vec<Xattr>) -> Result<(), MetaError> {
    let at = || format!("inode {ino}: in-inode xattrs");
    decode_ibody_header(area).map_err(MetaError::format(at))?;
    // Values count from the first entry, just after the magic.
    parse_entries(&at, &area[IBODY_HEADER_SIZE..], 0, out)
}

/// Appends the attributes of xattr block `block` (its bytes `data`) of
/// inode `ino`.
pub(crate) fn parse_block(
    ino: u32,
    block: u64,
    data: &[u8],
    out: &mut Vec<Xattr>,
) -> Result<(), MetaError> {
    let at = || format!("inode {ino}: xattr block {block}");
    BlockHeader::decode(data).map_err(MetaError::format(at))?;
    parse_entries(&at, data, BLOCK_HEADER, out)
}

/// Parses the entries from `first` in `area`, whose value offsets count
/// from the area's start.
fn parse_entries(
    at: &dyn Fn() -> String,
    area: &[u8],
    first: usize,
    out: &mut Vec<Xattr>,
) -> Result<(), MetaError> {
    let mut entries = Vec::new();
    let mut pos = first;
    while let Some(e) = Entry::decode(area, pos).map_err(MetaError::format(at))? {
        let len = e.len();
        entries.push(e);
        pos += len;
    }
    let values_from = pos + END_MARK_SIZE;
    for e in &entries {
        let (index, suffix, inum) = (e.name_index, &e.name[..], e.value_inum);
        let shown = || {
            let p = prefix(index).map_or_else(
                || format!("index {index} "),
                |p| String::from_utf8_lossy(p).into_owned(),
            );
            format!("{p}{}", String::from_utf8_lossy(suffix))
        };
        if inum != 0 {
            // ea_inode: ext4-view refuses such filesystems, so a mount
            // never meets one.
            return Err(MetaError::Unsupported(format!(
                "{}: the value of {} is in inode {inum} (ea_inode)",
                at(),
                shown()
            )));
        }
        let value = e
            .value(area, values_from)
            .map_err(MetaError::format(|| format!("{}: {}", at(), shown())))?;
        let Some(p) = prefix(index) else {
            // Linux lists and reads only the indexes it names.
            continue;
        };
        let value = if is_acl(index) && suffix.is_empty() {
            acl::from_disk(value).map_err(MetaError::format(|| format!("{}: {}", at(), shown())))?
        } else {
            value.to_vec()
        };
        out.push(Xattr {
            index,
            name: [p, suffix].concat(),
            value,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An entry with its value at `offs`.
    pub(crate) fn entry(index: u8, name: &[u8], offs: u16, size: u32) -> Entry {
        Entry {
            name_index: index,
            value_offs: offs,
            value_inum: 0,
            value_size: size,
            hash: 0,
            name: name.to_vec(),
        }
    }

    /// An xattr block with `attrs` (index, suffix, value).
    pub(crate) fn block(attrs: &[(u8, &[u8], &[u8])], size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        BlockHeader {
            refcount: 1,
            blocks: 1,
            hash: 0,
        }
        .encode(&mut b);
        let mut pos = BLOCK_HEADER;
        let mut end = size;
        for (index, name, value) in attrs {
            end -= value.len().next_multiple_of(4);
            let e = entry(*index, name, end as u16, value.len() as u32);
            e.encode(&mut b, pos);
            e.encode_value(&mut b, value);
            pos += e.len();
        }
        b
    }

    fn parsed(
        r: Result<(), MetaError>,
        out: Vec<Xattr>,
    ) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
        r.map(|()| {
            out.into_iter()
                .map(|x| (String::from_utf8(x.name).unwrap(), x.value))
                .collect()
        })
    }

    fn of_block(b: &[u8]) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
        let mut out = Vec::new();
        let r = parse_block(7, 99, b, &mut out);
        parsed(r, out)
    }

    #[test]
    fn names_values_and_acls() {
        let acl = [1, 0, 0, 0, 1, 0, 6, 0, 4, 0, 4, 0, 0x20, 0, 0, 0];
        let b = block(
            &[
                (1, b"bin", b"\0\n\xff"),
                (2, b"", &acl),
                (6, b"capability", b"cap"),
                (4, b"t", b""),
                (10, b"g", b"hurd"),
                (7, b"data", b""),
                (9, b"odd", b"hidden"),
            ],
            1024,
        );
        let got = of_block(&b).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "user.bin",
                "system.posix_acl_access",
                "security.capability",
                "trusted.t",
                "gnu.g",
                "system.data"
            ]
        );
        assert_eq!(got[0].1, b"\0\n\xff");
        assert_eq!(&got[1].1[..4], &2u32.to_le_bytes());
        assert_eq!(got[1].1.len(), 4 + 3 * 8);
        assert_eq!(got[3].1, b"");
    }

    #[test]
    fn in_inode_offsets_count_from_the_first_entry() {
        let mut area = vec![0u8; 96];
        ext4fmt::xattr::encode_ibody_header(&mut area);
        let e = entry(1, b"a", 88, 3);
        e.encode(&mut area[IBODY_HEADER_SIZE..], 0);
        e.encode_value(&mut area[IBODY_HEADER_SIZE..], b"xyz");
        let mut out = Vec::new();
        let r = parse_ibody(5, &area, &mut out);
        assert_eq!(
            parsed(r, out).unwrap(),
            [("user.a".to_string(), b"xyz".to_vec())]
        );
        area[3] = 0;
        assert!(parse_ibody(5, &area, &mut Vec::new()).is_err());
    }

    #[test]
    fn corrupt_blocks_are_errors() {
        let good = block(&[(1, b"a", b"value")], 1024);
        let err = |b: &[u8]| of_block(b).unwrap_err().to_string();
        let mut b = good.clone();
        b[3] = 0;
        assert!(err(&b).contains("magic"));
        let mut b = good.clone();
        b[8] = 2;
        assert!(err(&b).contains("2 blocks"));
        let mut b = good.clone();
        b[4] = 0;
        assert!(err(&b).contains("0 references"));
        // A value past the end, or overlapping the entries.
        let mut b = good.clone();
        b[BLOCK_HEADER + 2..BLOCK_HEADER + 4].copy_from_slice(&1022u16.to_le_bytes());
        assert!(err(&b).contains("outside"));
        let mut b = good.clone();
        b[BLOCK_HEADER + 2..BLOCK_HEADER + 4].copy_from_slice(&40u16.to_le_bytes());
        assert!(err(&b).contains("outside"));
        // No end mark: entries up to the end of the block.
        let mut b = vec![0xAB; 64];
        b[..32].copy_from_slice(&good[..32]);
        let e = err(&b);
        assert!(
            e.contains("inode 7: xattr block 99") && e.contains("fields reach byte"),
            "{e}"
        );
        // A name running past the end.
        let mut b = good[..BLOCK_HEADER + 16].to_vec();
        b[BLOCK_HEADER] = 200;
        assert!(err(&b).contains("fields reach byte"));
        // A corrupt ACL.
        let b = block(&[(3, b"", b"\x01\0\0\0\x40\0")], 1024);
        assert!(err(&b).contains("system.posix_acl_default"));
        // A value in another inode.
        let mut b = good;
        b[BLOCK_HEADER + 4] = 12;
        assert!(matches!(of_block(&b), Err(MetaError::Unsupported(_))));
        assert!(of_block(&[0; 8]).is_err());
    }
}
