//! Linear directory blocks (no htree).
//!
//! A directory is a sequence of blocks of `ext4_dir_entry_2` records:
//! inode (4), rec_len (2), name_len (1), file_type (1), then the name padded
//! to 4 bytes. Records never span blocks; the last record of each block is
//! stretched to the block's end, which is how ext4 marks the end of a block.

use super::BLOCK_SIZE;
use ext4fmt::dir::{DirEntry as DiskEntry, rec_len as record_len};

/// The longest name a directory entry holds.
pub(crate) use ext4fmt::dir::MAX_NAME_LEN;
/// `EXT4_FT_*` codes stored in directory entries (the `filetype` feature).
pub(crate) use ext4fmt::dir::file_type;

/// One entry to write.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DirEntry<'a> {
    /// The name (1..=255 bytes, no `/` or NUL).
    pub name: &'a [u8],
    /// The inode number.
    pub ino: u32,
    /// One of [`file_type`].
    pub file_type: u8,
}

/// Why a name cannot be a directory entry, if it cannot.
pub(crate) fn check_name(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("empty file name")
    } else if name.len() > MAX_NAME_LEN {
        Err("file name longer than 255 bytes")
    } else if name.contains(&b'/') || name.contains(&0) {
        Err("file name contains '/' or NUL")
    } else if name == b"." || name == b".." {
        Err("file name is '.' or '..'")
    } else {
        Ok(())
    }
}

/// Number of blocks [`encode`] gives for entries with these name lengths.
pub(crate) fn block_count(name_lens: impl IntoIterator<Item = usize>) -> u64 {
    let bs = BLOCK_SIZE as usize;
    let mut blocks = 1;
    let mut used = 0;
    for len in name_lens {
        let rec = record_len(len);
        if used + rec > bs {
            blocks += 1;
            used = 0;
        }
        used += rec;
    }
    blocks
}

/// Encode `entries` (`.` and `..` first, as given) into whole blocks.
pub(crate) fn encode(entries: &[DirEntry<'_>]) -> Vec<u8> {
    let bs = BLOCK_SIZE as usize;
    // Where each record goes, and its length; the last of each block is
    // stretched to the block's end.
    let mut placed: Vec<(usize, usize)> = Vec::with_capacity(entries.len());
    let mut block_start = 0;
    let mut used = 0;
    for e in entries {
        let rec = record_len(e.name.len());
        if used + rec > bs {
            if let Some((off, len)) = placed.last_mut() {
                *len = bs - (*off - block_start);
            }
            block_start += bs;
            used = 0;
        }
        placed.push((block_start + used, rec));
        used += rec;
    }
    if let Some((off, len)) = placed.last_mut() {
        *len = bs - (*off - block_start);
    }
    let mut out = vec![0u8; block_start + bs];
    for (e, &(off, rec_len)) in entries.iter().zip(&placed) {
        DiskEntry {
            ino: e.ino,
            rec_len,
            file_type: e.file_type,
            name: e.name.to_vec(),
        }
        .encode(&mut out, off);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec_len(b: &[u8], off: usize) -> usize {
        usize::from(u16::from_le_bytes([b[off + 4], b[off + 5]]))
    }

    #[test]
    fn entries_fill_blocks_and_stretch_the_last() {
        let names: Vec<Vec<u8>> = (0..1000)
            .map(|i| format!("file-{i:05}").into_bytes())
            .collect();
        let mut entries = vec![
            DirEntry {
                name: b".",
                ino: 2,
                file_type: file_type::DIR,
            },
            DirEntry {
                name: b"..",
                ino: 2,
                file_type: file_type::DIR,
            },
        ];
        entries.extend(names.iter().map(|n| DirEntry {
            name: n,
            ino: 12,
            file_type: file_type::REG,
        }));
        let bytes = encode(&entries);
        let lens = entries.iter().map(|e| e.name.len());
        assert_eq!(bytes.len() as u64, block_count(lens) * 4096);
        // Walk every block: records chain exactly to the block end.
        let mut seen = 0;
        for block in bytes.chunks(4096) {
            let mut off = 0;
            while off < 4096 {
                let r = rec_len(block, off);
                assert!(r >= 8 && r.is_multiple_of(4));
                seen += 1;
                off += r;
            }
            assert_eq!(off, 4096);
        }
        assert_eq!(seen, entries.len());
        assert_eq!(&bytes[12 + 8..12 + 10], b"..");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name(b"ok").is_ok());
        assert!(check_name(b"").is_err());
        assert!(check_name(b"a/b").is_err());
        assert!(check_name(&[b'x'; 256]).is_err());
        assert!(check_name(&[b'x'; 255]).is_ok());
    }
}
