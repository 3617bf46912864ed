//! Extent trees: where a file's (or directory's, or slow symlink's) blocks
//! are.
//!
//! The root lives in the inode's 60-byte `i_block`: a 12-byte header and up
//! to 4 entries. Up to 4 extents fit there directly (depth 0). More extents
//! go into leaf blocks of 340 entries ((4096 − 12) / 12), and when more than
//! 4 leaves are needed, index blocks of 340 entries above them, as many
//! levels as it takes. Nodes are filled in order, each full but the last at
//! its level, so the tree is as shallow and narrow as possible (e2fsck
//! suggests rebuilding trees that are not).
//!
//! No checksum tail: we do not set `metadata_csum`.

use super::BLOCK_SIZE;
use crate::tree::Extent;
use ext4fmt::extent::{ENTRY_SIZE, HEADER_SIZE, Header, Index, Leaf, encode_node};

pub(crate) use ext4fmt::extent::ROOT_ENTRIES;
/// Entries in one tree block.
pub(crate) const BLOCK_ENTRIES: usize = (BLOCK_SIZE as usize - HEADER_SIZE) / ENTRY_SIZE;

/// An encoded extent tree.
#[derive(Debug)]
pub(crate) struct ExtentTree {
    /// The root, to store in `i_block`.
    pub root: [u8; 60],
    /// The tree blocks, to write at consecutive blocks from the
    /// `first_block` given to [`build`].
    pub blocks: Vec<Vec<u8>>,
}

/// Number of tree blocks (outside the inode) needed for `n` extents.
pub(crate) fn tree_blocks(n: usize) -> u64 {
    let mut total = 0;
    let mut level = n;
    while level > ROOT_ENTRIES {
        level = level.div_ceil(BLOCK_ENTRIES);
        total += level as u64;
    }
    total
}

fn header(entries: usize, max: usize, depth: u16) -> Header {
    Header {
        entries: entries as u16,
        max: max as u16,
        depth,
        generation: 0,
    }
}

/// One 12-byte entry of some level, with the first logical block it covers.
struct Entry {
    logical: u32,
    bytes: [u8; ENTRY_SIZE],
}

fn leaf_entry(e: &Extent) -> Entry {
    let leaf = Leaf {
        logical: e.logical as u32,
        // At most 32768: initialized.
        len: e.len as u16,
        unwritten: false,
        start: e.physical,
    };
    Entry {
        logical: leaf.logical,
        bytes: leaf.encode(),
    }
}

fn index_entry(logical: u32, block: u64) -> Entry {
    let bytes = Index {
        logical,
        leaf: block,
    }
    .encode();
    Entry { logical, bytes }
}

fn node(buf: &mut [u8], header: &Header, entries: &[Entry]) {
    let bytes: Vec<[u8; ENTRY_SIZE]> = entries.iter().map(|e| e.bytes).collect();
    encode_node(buf, header, &bytes);
}

/// Build the tree for `extents` (sorted by logical block, each at most
/// 32768 blocks, logical blocks below 2^32), placing tree blocks at
/// `first_block`, `first_block + 1`, …: leaves first, then each index
/// level upwards.
pub(crate) fn build(extents: &[Extent], first_block: u64) -> ExtentTree {
    let mut entries: Vec<Entry> = extents.iter().map(leaf_entry).collect();
    let mut blocks = Vec::new();
    let mut depth = 0u16;
    while entries.len() > ROOT_ENTRIES {
        let mut parents = Vec::with_capacity(entries.len().div_ceil(BLOCK_ENTRIES));
        for chunk in entries.chunks(BLOCK_ENTRIES) {
            let mut b = vec![0u8; BLOCK_SIZE as usize];
            node(&mut b, &header(chunk.len(), BLOCK_ENTRIES, depth), chunk);
            let block = first_block + blocks.len() as u64;
            // An index entry starts where its child's first entry starts.
            parents.push(index_entry(chunk[0].logical, block));
            blocks.push(b);
        }
        entries = parents;
        depth += 1;
    }
    let mut root = [0u8; 60];
    node(
        &mut root,
        &header(entries.len(), ROOT_ENTRIES, depth),
        &entries,
    );
    ExtentTree { root, blocks }
}

/// Split a contiguous run of `count` blocks at `physical` (file blocks from
/// 0) into extents of at most 32768 blocks.
pub(crate) fn contiguous(physical: u64, count: u64) -> Vec<Extent> {
    let max = u64::from(super::MAX_EXTENT_LEN);
    (0..count.div_ceil(max))
        .map(|i| Extent {
            logical: i * max,
            physical: physical + i * max,
            len: (count - i * max).min(max) as u32,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext4fmt::bytes::le32;
    use ext4fmt::extent::MAGIC as EXTENT_MAGIC;

    fn get_u32(b: &[u8], at: usize) -> u32 {
        le32(b, at).unwrap()
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes([b[off], b[off + 1]])
    }

    fn extents(n: usize) -> Vec<Extent> {
        (0..n)
            .map(|i| Extent {
                logical: 2 * i as u64,
                physical: 1000 + 2 * i as u64,
                len: 1,
            })
            .collect()
    }

    #[test]
    fn small_trees_live_in_the_inode() {
        let t = build(&extents(4), 50);
        assert!(t.blocks.is_empty());
        assert_eq!(tree_blocks(4), 0);
        assert_eq!(u16_at(&t.root, 0), EXTENT_MAGIC);
        assert_eq!(u16_at(&t.root, 2), 4);
        assert_eq!(u16_at(&t.root, 4), 4);
        assert_eq!(u16_at(&t.root, 6), 0);
        assert_eq!(get_u32(&t.root, 12 + 3 * 12), 6);
        let empty = build(&[], 50);
        assert_eq!(u16_at(&empty.root, 2), 0);
    }

    #[test]
    fn depth_grows_as_needed() {
        for (n, depth, blocks) in [(5, 1, 1), (1360, 1, 4), (1361, 2, 6), (1500, 2, 6)] {
            let t = build(&extents(n), 50);
            assert_eq!(t.blocks.len() as u64, tree_blocks(n), "n={n}");
            assert_eq!(t.blocks.len(), blocks, "n={n}");
            assert_eq!(u16_at(&t.root, 6), depth, "n={n}");
            // The root's first index points at the first node of the level
            // below, which starts at logical block 0.
            assert_eq!(get_u32(&t.root, 12), 0);
        }
        let t = build(&extents(1500), 50);
        // Leaves: 340, 340, 340, 340, 140; one index block above them.
        assert_eq!(u16_at(&t.blocks[4], 2), 140);
        assert_eq!(u16_at(&t.blocks[5], 2), 5);
        assert_eq!(u16_at(&t.blocks[5], 6), 1);
        assert_eq!(get_u32(&t.blocks[5], 12 + 12 + 4), 51);
        assert_eq!(get_u32(&t.blocks[5], 12 + 12), 680);
        assert_eq!(u16_at(&t.root, 2), 1);
        assert_eq!(get_u32(&t.root, 12 + 4), 55);
    }

    #[test]
    fn contiguous_runs_split_at_limit() {
        let e = contiguous(10, 70000);
        assert_eq!(e.len(), 3);
        assert_eq!(e[2].logical, 65536);
        assert_eq!(e[2].physical, 65546);
        assert_eq!(e[2].len, 70000 - 65536);
        assert!(contiguous(10, 0).is_empty());
    }
}
