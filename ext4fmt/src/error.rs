//! What a decode finds wrong, as data: each [`Corrupt`] kind carries the
//! numbers that were wrong, for the caller to name the inode or block.

/// A structure's bytes break the format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corrupt {
    /// A field lies past the structure's end.
    #[error("{what}: {len} bytes, fields reach byte {need}")]
    Short {
        /// The structure.
        what: &'static str,
        /// Its bytes.
        len: usize,
        /// Bytes its fields need.
        need: usize,
    },
    /// A magic number is wrong.
    #[error("{what}: magic {found:#x} is not {want:#x}")]
    Magic {
        /// The structure.
        what: &'static str,
        /// What was there.
        found: u32,
        /// What should be.
        want: u32,
    },
    /// `i_extra_isize` is not a multiple of 4 inside the inode.
    #[error("i_extra_isize {extra} in a {inode_size}-byte inode")]
    ExtraIsize {
        /// The stored extra size.
        extra: u16,
        /// The inode's size.
        inode_size: usize,
    },
    /// A fast symlink's size does not match its target.
    #[error("fast symlink of size {size}")]
    FastSymlink {
        /// `i_size`.
        size: u64,
    },
    /// An extent node counts more entries than it has room for.
    #[error("{entries} extent entries of at most {max} in a {node_size}-byte node")]
    ExtentCounts {
        /// `eh_entries`.
        entries: u16,
        /// `eh_max`.
        max: u16,
        /// The node's bytes.
        node_size: usize,
    },
    /// An extent node is deeper than ext4 allows.
    #[error("extent depth {depth}")]
    ExtentDepth {
        /// `eh_depth`.
        depth: u16,
    },
    /// A directory record's length is impossible.
    #[error(
        "directory record at {offset}: length {rec_len} for a {name_len}-byte name, {room} bytes left"
    )]
    RecordLength {
        /// Its offset in the block.
        offset: usize,
        /// Its record length.
        rec_len: usize,
        /// Its name length.
        name_len: usize,
        /// Bytes from it to the block's end.
        room: usize,
    },
    /// An indirect block is not whole 4-byte block numbers.
    #[error("an indirect block of {len} bytes is not whole 4-byte block numbers")]
    IndirectSize {
        /// The block's bytes.
        len: usize,
    },
    /// An xattr value lies outside the area's values (after the entries'
    /// end mark, before the area's end).
    #[error("xattr value of {size} bytes at {offs} is outside {from}..{len}")]
    XattrValue {
        /// `e_value_offs`, from where the area's offsets count.
        offs: usize,
        /// `e_value_size`.
        size: usize,
        /// Where values may start: just after the end mark.
        from: usize,
        /// The area's bytes.
        len: usize,
    },
    /// An xattr entry list has no end mark.
    #[error("xattr entries run past the end ({len} bytes) without an end mark")]
    XattrNoEnd {
        /// The area's bytes.
        len: usize,
    },
    /// An xattr block header's counts are wrong.
    #[error("xattr block of {blocks} blocks and {refcount} references (must be 1 and at least 1)")]
    XattrBlockHeader {
        /// `h_blocks`.
        blocks: u32,
        /// `h_refcount`.
        refcount: u32,
    },
    /// An ACL value's size is not a header plus whole entries.
    #[error("an ACL value of {len} bytes is not a header plus whole entries")]
    AclSize {
        /// The value's bytes.
        len: usize,
    },
    /// An on-disk ACL's entries end before its value does.
    #[error("ACL entries end at byte {end} of {len}")]
    AclEnd {
        /// Where the entries end.
        end: usize,
        /// The value's bytes.
        len: usize,
    },
    /// An ACL's version is wrong for its form.
    #[error("ACL version {found} is not {want}")]
    AclVersion {
        /// What was there.
        found: u32,
        /// What the form has.
        want: u32,
    },
    /// An ACL entry's tag is unknown.
    #[error("ACL entry {entry} has the unknown tag {tag:#x}")]
    AclTag {
        /// The entry.
        entry: usize,
        /// Its tag.
        tag: u16,
    },
    /// An ACL entry grants more than rwx.
    #[error("ACL entry {entry} has permissions {perm:#o}, more than rwx")]
    AclPerm {
        /// The entry.
        entry: usize,
        /// Its permissions.
        perm: u16,
    },
}

/// A layout this crate does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unsupported {
    /// Group descriptors spread over the block groups.
    #[error("meta_bg (group descriptors spread over the block groups)")]
    MetaBg,
    /// An xattr value stored in its own inode.
    #[error("an xattr value in inode {inum} (ea_inode)")]
    EaInode {
        /// The value's inode.
        inum: u32,
    },
}

/// Any decode error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes break the format.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// The bytes use a layout this crate does not decode.
    #[error(transparent)]
    Unsupported(#[from] Unsupported),
}
