//! Extended attributes: entries (`struct ext4_xattr_entry`) in the inode
//! after its extra fields (behind a 4-byte magic) or in one block (behind
//! a 32-byte header); names are stored as a name index plus a suffix;
//! values sit at the area's end, each padded to 4 bytes.

use crate::bytes::{Fields, put32};
use crate::error::Corrupt;

/// `EXT4_XATTR_MAGIC`, at the start of the in-inode area and the block.
pub const MAGIC: u32 = 0xEA02_0000;
/// Bytes of the block header.
pub const BLOCK_HEADER_SIZE: usize = 32;
/// Bytes of the in-inode header (the magic).
pub const IBODY_HEADER_SIZE: usize = 4;
/// Bytes of an entry before its name.
pub const ENTRY_HEADER_SIZE: usize = 16;
/// The 4 zero bytes that end an entry list.
pub const END_MARK_SIZE: usize = 4;
/// The longest name suffix.
pub const MAX_NAME_LEN: usize = 255;

/// Name indexes (`EXT4_XATTR_INDEX_*`).
pub mod index {
    /// `user.`
    pub const USER: u8 = 1;
    /// `system.posix_acl_access`
    pub const POSIX_ACL_ACCESS: u8 = 2;
    /// `system.posix_acl_default`
    pub const POSIX_ACL_DEFAULT: u8 = 3;
    /// `trusted.`
    pub const TRUSTED: u8 = 4;
    /// `security.`
    pub const SECURITY: u8 = 6;
    /// `system.` (others, e.g. `system.data`)
    pub const SYSTEM: u8 = 7;
    /// `system.richacl`
    pub const RICHACL: u8 = 8;
    /// `gnu.` (the Hurd)
    pub const GNU: u8 = 10;
}

/// Each name index and its prefix; the ACL and richacl ones are whole
/// names (no suffix).
pub const NAME_INDEXES: &[(u8, &[u8])] = &[
    (index::USER, b"user."),
    (index::POSIX_ACL_ACCESS, b"system.posix_acl_access"),
    (index::POSIX_ACL_DEFAULT, b"system.posix_acl_default"),
    (index::TRUSTED, b"trusted."),
    (index::SECURITY, b"security."),
    (index::SYSTEM, b"system."),
    (index::RICHACL, b"system.richacl"),
    (index::GNU, b"gnu."),
];

/// The prefix of name index `i`.
pub fn prefix(i: u8) -> Option<&'static [u8]> {
    NAME_INDEXES.iter().find(|(n, _)| *n == i).map(|(_, p)| *p)
}

/// Whether index `i` names a POSIX ACL (its value is [`crate::acl`]'s
/// on-disk form).
pub fn is_acl(i: u8) -> bool {
    i == index::POSIX_ACL_ACCESS || i == index::POSIX_ACL_DEFAULT
}

/// The index and suffix of a full name, among the namespaces Linux lets
/// a file carry (`user.`, `trusted.`, `security.`, `system.` and the
/// ACLs); `None` for any other.
pub fn split_name(full: &[u8]) -> Option<(u8, &[u8])> {
    const WRITABLE: [u8; 6] = [
        index::POSIX_ACL_ACCESS,
        index::POSIX_ACL_DEFAULT,
        index::USER,
        index::TRUSTED,
        index::SECURITY,
        index::SYSTEM,
    ];
    WRITABLE.iter().find_map(|&i| {
        let p = prefix(i)?;
        if is_acl(i) {
            (full == p).then_some((i, &b""[..]))
        } else {
            full.strip_prefix(p).map(|s| (i, s))
        }
    })
}

/// One entry's header and name suffix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Name index ([`index`]).
    pub name_index: u8,
    /// Where the value starts: from the first entry in the inode, from
    /// the block's start in a block.
    pub value_offs: u16,
    /// The inode holding the value (`ea_inode`), or 0.
    pub value_inum: u32,
    /// Bytes of value.
    pub value_size: u32,
    /// [`entry_hash`] of name and value (0 in the inode).
    pub hash: u32,
    /// The name after its prefix.
    pub name: Vec<u8>,
}

impl Entry {
    /// Bytes the entry takes in the list.
    pub fn len(&self) -> usize {
        (ENTRY_HEADER_SIZE + self.name.len()).next_multiple_of(4)
    }

    /// Whether the entry has no name (never, in a valid list).
    pub fn is_empty(&self) -> bool {
        self.name.is_empty()
    }

    /// Writes the entry at `at` of `area`.
    pub fn encode(&self, area: &mut [u8], at: usize) {
        area[at] = self.name.len() as u8;
        area[at + 1] = self.name_index;
        crate::bytes::put16(area, at + 2, self.value_offs);
        put32(area, at + 4, self.value_inum);
        put32(area, at + 8, self.value_size);
        put32(area, at + 12, self.hash);
        area[at + ENTRY_HEADER_SIZE..at + ENTRY_HEADER_SIZE + self.name.len()]
            .copy_from_slice(&self.name);
    }

    /// Decodes the entry at `at`; `None` at the end mark.
    pub fn decode(area: &[u8], at: usize) -> Result<Option<Entry>, Corrupt> {
        let f = Fields::new(area, "xattr entry");
        if f.u32(at)
            .map_err(|_| Corrupt::XattrNoEnd { len: area.len() })?
            == 0
        {
            return Ok(None);
        }
        let name_len = usize::from(f.u8(at)?);
        Ok(Some(Entry {
            name_index: f.u8(at + 1)?,
            value_offs: f.u16(at + 2)?,
            value_inum: f.u32(at + 4)?,
            value_size: f.u32(at + 8)?,
            hash: f.u32(at + 12)?,
            name: f.bytes(at + ENTRY_HEADER_SIZE, name_len)?.to_vec(),
        }))
    }

    /// Writes `value` (of [`Entry::value_size`] bytes) at the entry's
    /// `value_offs` in `area`, whose offsets count from its start: the
    /// block, or the in-inode area after its magic.
    pub fn encode_value(&self, area: &mut [u8], value: &[u8]) {
        let at = usize::from(self.value_offs);
        area[at..at + value.len()].copy_from_slice(value);
    }

    /// The entry's value in `area` (offsets counted as for
    /// [`Entry::encode_value`]), checked as the kernel's `check_xattrs`
    /// does: inside the area and not before `values_from`, the byte after
    /// the entries' end mark. An empty value is empty wherever it points.
    /// A value in its own inode (`value_inum`) is the caller's to refuse.
    pub fn value<'a>(&self, area: &'a [u8], values_from: usize) -> Result<&'a [u8], Corrupt> {
        let (offs, size) = (usize::from(self.value_offs), self.value_size as usize);
        if size == 0 {
            return Ok(&[]);
        }
        match crate::bytes::slice(area, offs, size) {
            Some(v) if offs >= values_from => Ok(v),
            _ => Err(Corrupt::XattrValue {
                offs,
                size,
                from: values_from,
                len: area.len(),
            }),
        }
    }
}

/// Writes the in-inode area's header (the magic) at its start.
pub fn encode_ibody_header(area: &mut [u8]) {
    put32(area, 0, MAGIC);
}

/// Checks the in-inode area's header; the entries follow it, at
/// [`IBODY_HEADER_SIZE`].
pub fn decode_ibody_header(area: &[u8]) -> Result<(), Corrupt> {
    let magic = Fields::new(area, "in-inode xattrs").u32(0)?;
    if magic != MAGIC {
        return Err(Corrupt::Magic {
            what: "in-inode xattrs",
            found: magic,
            want: MAGIC,
        });
    }
    Ok(())
}

/// `struct ext4_xattr_header`, at the start of an xattr block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockHeader {
    /// Inodes sharing the block.
    pub refcount: u32,
    /// Blocks (always 1).
    pub blocks: u32,
    /// [`block_hash`] of the entries' hashes.
    pub hash: u32,
}

impl BlockHeader {
    /// Writes the header at the start of `block`.
    pub fn encode(&self, block: &mut [u8]) {
        put32(block, 0, MAGIC);
        put32(block, 4, self.refcount);
        put32(block, 8, self.blocks);
        put32(block, 12, self.hash);
    }

    /// Decodes and checks the header: the magic, one block, referenced.
    pub fn decode(block: &[u8]) -> Result<BlockHeader, Corrupt> {
        let f = Fields::new(block, "xattr block");
        let magic = f.u32(0)?;
        if magic != MAGIC {
            return Err(Corrupt::Magic {
                what: "xattr block",
                found: magic,
                want: MAGIC,
            });
        }
        let h = BlockHeader {
            refcount: f.u32(4)?,
            blocks: f.u32(8)?,
            hash: f.u32(12)?,
        };
        if h.blocks != 1 || h.refcount == 0 {
            return Err(Corrupt::XattrBlockHeader {
                blocks: h.blocks,
                refcount: h.refcount,
            });
        }
        Ok(h)
    }
}

/// `ext2fs_ext_attr_hash_entry`: the name bytes as C `char` (signed, as
/// on x86), then the value in little-endian words, zero-padded.
pub fn entry_hash(name: &[u8], value: &[u8]) -> u32 {
    let mut hash: u32 = 0;
    for &c in name {
        hash = (hash << 5) ^ (hash >> 27) ^ (c as i8 as i32 as u32);
    }
    for word in value.chunks(4) {
        let mut w = [0u8; 4];
        w[..word.len()].copy_from_slice(word);
        hash = (hash << 16) ^ (hash >> 16) ^ u32::from_le_bytes(w);
    }
    hash
}

/// `ext4_xattr_rehash`: the block's hash over its entries' hashes; 0 when
/// any entry's is 0.
pub fn block_hash(hashes: &[u32]) -> u32 {
    let mut hash: u32 = 0;
    for &h in hashes {
        if h == 0 {
            return 0;
        }
        hash = (hash << 16) ^ (hash >> 16) ^ h;
    }
    hash
}
