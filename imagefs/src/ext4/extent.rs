//! Extent trees: which disk blocks hold a file's logical blocks.
//!
//! A node is a 12-byte header (magic 0xF30A, entries, max, depth,
//! generation) and 12-byte entries. The root sits in the inode's
//! `i_block` (room for 4 entries); deeper nodes fill a block. Leaf entries
//! (depth 0): first logical block (4), length (2; above 32768 it marks an
//! unwritten extent, which reads as zeros), start high (2), start low (4).
//! Index entries: first logical block (4), child low (4), child high (2).
//!
//! The walk is bounded: each child must be exactly one level below its
//! parent (so a pointer back up the tree is an error, not a loop), the
//! depth is at most 5 as in the kernel, and the nodes visited are capped.

use super::MetaError;
use super::superblock::Geometry;
use ext4fmt::extent::{Header, Index, Leaf, entry};

/// The most tree blocks one walk reads; far above any real tree for the
/// directories and xattr values this reader walks.
const MAX_NODES: usize = 1 << 16;

/// Logical blocks `logical..logical + len` live at `physical..`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Run {
    pub logical: u32,
    pub physical: u64,
    pub len: u32,
}

/// The written extents of inode `ino` whose tree root is `root`, in tree
/// order. `read_block` reads one filesystem block.
pub(crate) fn runs(
    geom: &Geometry,
    ino: u32,
    root: &[u8],
    read_block: &mut dyn FnMut(u64) -> Result<Vec<u8>, MetaError>,
) -> Result<Vec<Run>, MetaError> {
    let mut out = Vec::new();
    // (node bytes, where it came from, the depth its parent expects)
    let mut stack: Vec<(Vec<u8>, Option<u64>, Option<u16>)> = vec![(root.to_vec(), None, None)];
    let mut visited = 0usize;
    while let Some((node, block, want_depth)) = stack.pop() {
        visited += 1;
        let at = || match block {
            Some(b) => format!("inode {ino}: extent block {b}"),
            None => format!("inode {ino}: extent root"),
        };
        if visited > MAX_NODES {
            return Err(MetaError::Corrupt(format!(
                "{}: more than {MAX_NODES} extent tree blocks",
                at()
            )));
        }
        let bad = |why: String| MetaError::Corrupt(format!("{}: {why}", at()));
        let h = Header::decode(&node).map_err(MetaError::format(at))?;
        let depth = h.depth;
        if want_depth.is_some_and(|d| d != depth) {
            return Err(bad(format!("depth {depth} (expected {want_depth:?})")));
        }
        let mut children = Vec::new();
        for i in 0..usize::from(h.entries) {
            let e = entry(&node, i).map_err(MetaError::format(at))?;
            if depth == 0 {
                let leaf = Leaf::decode(e).map_err(MetaError::format(at))?;
                let (logical, len, physical) = (leaf.logical, leaf.len, leaf.start);
                let fits = physical
                    .checked_add(u64::from(len))
                    .is_some_and(|end| end <= geom.blocks_count)
                    && logical.checked_add(u32::from(len)).is_some();
                if len == 0 || physical == 0 || !fits {
                    return Err(bad(format!(
                        "extent {i}: {len} blocks at {physical} for logical block {logical}"
                    )));
                }
                if !leaf.unwritten {
                    out.push(Run {
                        logical,
                        physical,
                        len: u32::from(len),
                    });
                }
            } else {
                let child = Index::decode(e).map_err(MetaError::format(at))?.leaf;
                if child == 0 || child >= geom.blocks_count {
                    return Err(bad(format!("index {i} points at block {child}")));
                }
                children.push(child);
            }
        }
        // Pushed in reverse so that the walk stays in tree order.
        for child in children.into_iter().rev() {
            stack.push((read_block(child)?, Some(child), Some(depth - 1)));
        }
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ext4::superblock::tests::sample;
    use ext4fmt::extent::{INIT_MAX_LEN, MAGIC};
    use std::collections::HashMap;

    pub(crate) fn header(entries: u16, max: u16, depth: u16) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [MAGIC, entries, max, depth, 0, 0] {
            h.extend(v.to_le_bytes());
        }
        h
    }

    pub(crate) fn leaf(logical: u32, len: u16, physical: u64) -> Vec<u8> {
        let mut e = logical.to_le_bytes().to_vec();
        e.extend(len.to_le_bytes());
        e.extend(((physical >> 32) as u16).to_le_bytes());
        e.extend((physical as u32).to_le_bytes());
        e
    }

    fn index(logical: u32, child: u64) -> Vec<u8> {
        let mut e = logical.to_le_bytes().to_vec();
        e.extend((child as u32).to_le_bytes());
        e.extend(((child >> 32) as u16).to_le_bytes());
        e.extend([0, 0]);
        e
    }

    fn node(mut h: Vec<u8>, entries: &[Vec<u8>], size: usize) -> Vec<u8> {
        for e in entries {
            h.extend(e);
        }
        h.resize(size, 0);
        h
    }

    fn walk(root: &[u8], blocks: &HashMap<u64, Vec<u8>>) -> Result<Vec<Run>, MetaError> {
        let g = Geometry::decode(&sample()).unwrap();
        runs(&g, 11, root, &mut |b| {
            blocks
                .get(&b)
                .cloned()
                .ok_or_else(|| MetaError::Corrupt(format!("test: no block {b}")))
        })
    }

    #[test]
    fn leaves_in_the_root_and_below() {
        let root = node(
            header(2, 4, 0),
            &[leaf(0, 2, 100), leaf(5, INIT_MAX_LEN + 3, 200)],
            60,
        );
        assert_eq!(
            walk(&root, &HashMap::new()).unwrap(),
            [Run {
                logical: 0,
                physical: 100,
                len: 2
            }]
        );
        let mut blocks = HashMap::new();
        blocks.insert(7, node(header(1, 340, 0), &[leaf(0, 1, 300)], 4096));
        blocks.insert(8, node(header(1, 340, 0), &[leaf(9, 4, 400)], 4096));
        let root = node(header(2, 4, 1), &[index(0, 7), index(9, 8)], 60);
        let got = walk(&root, &blocks).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            Run {
                logical: 9,
                physical: 400,
                len: 4
            }
        );
    }

    #[test]
    fn corrupt_trees_are_errors_not_loops() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (node(vec![0; 12], &[], 60), "magic"),
            (node(header(5, 4, 0), &[], 60), "entries"),
            (node(header(1, 9, 0), &[], 60), "entries"),
            (node(header(0, 4, 6), &[], 60), "depth"),
            (node(header(1, 4, 0), &[leaf(0, 0, 100)], 60), "extent 0"),
            (node(header(1, 4, 0), &[leaf(0, 1, 65536)], 60), "extent 0"),
            (
                node(header(1, 4, 0), &[leaf(u32::MAX, 2, 9)], 60),
                "extent 0",
            ),
            (node(header(1, 4, 1), &[index(0, 1 << 40)], 60), "index 0"),
            (vec![0x0A, 0xF3], "fields reach byte"),
        ];
        for (root, want) in cases {
            let e = walk(&root, &HashMap::new()).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("inode 11"), "{want}: {e}");
        }
        // A child that claims the parent's depth (a pointer back up).
        let mut blocks = HashMap::new();
        blocks.insert(7, node(header(1, 340, 1), &[index(0, 7)], 4096));
        let root = node(header(1, 4, 1), &[index(0, 7)], 60);
        let e = walk(&root, &blocks).unwrap_err().to_string();
        assert!(e.contains("extent block 7") && e.contains("depth"), "{e}");
    }
}
