//! Directory blocks, read linearly.
//!
//! Each block is a chain of `ext4_dir_entry_2` records: inode (4),
//! rec_len (2), name_len (1), file_type (1, with the `filetype` feature),
//! then the name. Inode 0 marks an unused record. Hashed (htree)
//! directories need no special case: their index blocks start with a
//! record of inode 0 spanning the whole block, and the `metadata_csum`
//! tail is a 12-byte record of inode 0, so both read as unused space.
//!
//! The checks are the kernel's `ext4_check_dir_entry`: a record is at
//! least 12 bytes, a multiple of 4, holds its name, stays inside the
//! block and names an inode the filesystem has. Every record advances by
//! at least 12 bytes, so a block is parsed in bounded steps.

use super::MetaError;
use super::inode::ROOT_INO;
use super::superblock::Geometry;
use ext4fmt::dir::DirEntry as DiskEntry;

/// One name in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The inode it names.
    pub ino: u32,
    /// The `EXT4_FT_*` type code (1 file, 2 directory, 3 character
    /// device, 4 block device, 5 FIFO, 6 socket, 7 symlink); 0 when the
    /// filesystem does not record types.
    pub file_type: u8,
    /// The name (never `.` or `..`, which are left out).
    pub name: Vec<u8>,
}

/// Appends the names in `block`, logical block `logical` of directory
/// `dir`, to `out`.
pub(crate) fn parse_block(
    geom: &Geometry,
    dir: u32,
    logical: u32,
    block: &[u8],
    out: &mut Vec<DirEntry>,
) -> Result<(), MetaError> {
    let mut at = 0usize;
    while at < block.len() {
        let bad = |why: String| {
            MetaError::Corrupt(format!(
                "directory inode {dir}, block {logical}, offset {at}: {why}"
            ))
        };
        let e = DiskEntry::decode(block, at, geom.filetype).map_err(MetaError::format(|| {
            format!("directory inode {dir}, block {logical}, offset {at}")
        }))?;
        let (ino, len, file_type) = (e.ino, e.rec_len, e.file_type);
        let reserved = ino != 0 && ino != ROOT_INO && ino < geom.first_ino;
        if ino > geom.inodes_count || reserved {
            return Err(bad(format!(
                "inode {ino} is not the root or in {}..={}",
                geom.first_ino, geom.inodes_count
            )));
        }
        let name = &e.name[..];
        if ino != 0 && name != b"." && name != b".." {
            if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
                return Err(bad(format!("bad name {:?}", String::from_utf8_lossy(name))));
            }
            out.push(DirEntry {
                ino,
                file_type,
                name: name.to_vec(),
            });
        }
        at += len;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ext4::superblock::tests::sample;

    pub(crate) fn record(ino: u32, len: u16, file_type: u8, name: &[u8]) -> Vec<u8> {
        let mut r = ino.to_le_bytes().to_vec();
        r.extend(len.to_le_bytes());
        r.push(name.len() as u8);
        r.push(file_type);
        r.extend(name);
        r.resize(usize::from(len).max(r.len()), 0);
        r
    }

    fn parse(block: &[u8]) -> Result<Vec<DirEntry>, MetaError> {
        let g = Geometry::decode(&sample()).unwrap();
        let mut out = Vec::new();
        parse_block(&g, 2, 0, block, &mut out).map(|()| out)
    }

    #[test]
    fn names_skipping_dots_unused_records_and_checksum_tails() {
        let mut b = record(2, 12, 2, b".");
        b.extend(record(2, 12, 2, b".."));
        b.extend(record(0, 16, 0, b"gone"));
        b.extend(record(12, 16, 1, b"file"));
        b.extend(record(13, 4096 - 56 - 12, 7, b"link"));
        b.extend(record(0, 12, 0xDE, b""));
        let got = parse(&b).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            DirEntry {
                ino: 12,
                file_type: 1,
                name: b"file".to_vec()
            }
        );
        assert_eq!(got[1].name, b"link");
        // An htree index block reads as one unused record.
        assert!(parse(&record(0, 4096, 0, b"")).unwrap().is_empty());
    }

    #[test]
    fn corrupt_records_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (record(12, 0, 1, b""), "length 0 for"),
            (record(12, 14, 1, b"a"), "length 14 for"),
            (
                record(12, 12, 1, b"abcdefgh"),
                "length 12 for a 8-byte name",
            ),
            (record(12, 8192, 1, b"a"), "4096 bytes left"),
            (record(9999, 4096, 1, b"a"), "inode 9999"),
            (record(8, 4096, 1, b"journal"), "inode 8"),
            (record(12, 4096, 1, b"a/b"), "bad name"),
            (record(12, 4096, 1, b""), "bad name"),
        ];
        for (mut b, want) in cases {
            b.resize(4096, 0);
            let e = parse(&b).unwrap_err().to_string();
            assert!(
                e.contains(want) && e.contains("directory inode 2"),
                "{want}: {e}"
            );
        }
        // A record header cut off by the block's end.
        let mut b = record(12, 4092, 1, b"a");
        b.extend([1, 0]);
        assert!(parse(&b).unwrap_err().to_string().contains("offset 4092"));
    }
}
