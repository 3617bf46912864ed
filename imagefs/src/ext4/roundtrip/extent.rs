//! Extent trees: header, index and leaf entries. Files with holes give
//! one extent per run of written blocks; with more than 4 the tree grows
//! leaf blocks (depth 1), with more than 4 × 340 index blocks above them
//! (depth 2). The reader must map every block where the writer put it,
//! read holes as zeros and charge the tree blocks to the inode.

use ext4fmt::extent::Header;
use ext4fmt::inode::flags::EXTENTS;

use super::*;

const BS: usize = 4096;

/// File bytes: `blocks` blocks, block `i` written (with bytes that vary
/// by block) when `written(i)`, else zeros; then `tail` more bytes of the
/// last pattern, or of zeros when the last block is a hole.
fn pattern(blocks: usize, written: impl Fn(usize) -> bool, tail: usize) -> Vec<u8> {
    let mut data = vec![0u8; blocks * BS + tail];
    for i in 0..blocks + usize::from(tail > 0) {
        if written(i) {
            let end = ((i + 1) * BS).min(data.len());
            for (j, b) in data[i * BS..end].iter_mut().enumerate() {
                *b = (i * 7 + j % 251) as u8 | 1;
            }
        }
    }
    data
}

struct Case {
    name: &'static str,
    data: Vec<u8>,
    /// Extents the writer makes for it.
    extents: usize,
    depth: u16,
    /// Extent tree blocks outside the inode.
    tree_blocks: u64,
}

fn cases() -> Vec<Case> {
    let even = |i: usize| i.is_multiple_of(2);
    vec![
        Case {
            name: "empty",
            data: Vec::new(),
            extents: 0,
            depth: 0,
            tree_blocks: 0,
        },
        Case {
            name: "all-hole",
            data: vec![0; 300 * BS + 5],
            extents: 0,
            depth: 0,
            tree_blocks: 0,
        },
        Case {
            name: "one",
            data: pattern(3, |_| true, 100),
            extents: 1,
            depth: 0,
            tree_blocks: 0,
        },
        Case {
            name: "four-in-the-inode",
            data: pattern(7, even, 0),
            extents: 4,
            depth: 0,
            tree_blocks: 0,
        },
        Case {
            // Holes at the start, between and at the end (a partial
            // last block of zeros).
            name: "six-in-a-leaf",
            data: pattern(12, |i| i % 2 == 1, 3000),
            extents: 6,
            depth: 1,
            tree_blocks: 1,
        },
        Case {
            name: "four-full-leaves",
            data: pattern(2 * 1360 - 1, even, 0),
            extents: 1360,
            depth: 1,
            tree_blocks: 4,
        },
        Case {
            // Five leaves under one index block.
            name: "index-node",
            data: pattern(2 * 1361 - 1, even, 17),
            extents: 1361,
            depth: 2,
            tree_blocks: 6,
        },
    ]
}

#[test]
fn extent_trees_holes_and_sparse_files() {
    let cases = cases();
    let mut img = Image::in_memory(opts(0, 0));
    let mut written = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        if i % 2 == 1 {
            img.layer();
        }
        let fd = img.file(c.name, &c.data, meta(0o644, 0, 0, 0, 0));
        assert_eq!(fd.extents.len(), c.extents, "{}", c.name);
        written.push(fd);
    }
    let (meta, _, _) = img.open();
    for (c, fd) in cases.iter().zip(&written) {
        let name = c.name;
        let ino = ino_at(&meta, &format!("/{name}"));
        let inode = meta.inode(ino).unwrap();
        assert_eq!(inode.size, c.data.len() as u64, "{name}");
        assert_eq!(inode.flags, EXTENTS, "{name}");
        let data_blocks = fd.allocated_blocks();
        assert_eq!(inode.blocks, 8 * (data_blocks + c.tree_blocks), "{name}");

        // The root in i_block: its header, and as many entries as the
        // root holds when the tree has depth.
        let root = Header::decode(inode.i_block()).unwrap();
        assert_eq!(root.depth, c.depth, "{name}");
        assert_eq!(root.max, 4, "{name}");
        let root_entries = match c.depth {
            0 => c.extents,
            1 => c.extents.div_ceil(340),
            _ => c.extents.div_ceil(340).div_ceil(340),
        };
        assert_eq!(usize::from(root.entries), root_entries, "{name}");

        // Every leaf, through the index and leaf blocks, as written.
        let blocks = u32::try_from(inode.size.div_ceil(BS as u64)).unwrap();
        let runs = meta.runs(&inode, blocks).unwrap();
        let got: Vec<(u64, u64, u32)> = runs
            .iter()
            .map(|r| (u64::from(r.logical), r.physical, r.len))
            .collect();
        let want: Vec<(u64, u64, u32)> = fd
            .extents
            .iter()
            .map(|e| (e.logical, e.physical, e.len))
            .collect();
        assert_eq!(got, want, "{name}");

        // The byte map, clipped at the size, and the bytes, holes as
        // zeros.
        let map = meta.file_map(ino).unwrap();
        assert_eq!(map.size(), inode.size, "{name}");
        let want: Vec<(u64, u64, u64)> = fd
            .extents
            .iter()
            .map(|e| {
                let start = e.logical * BS as u64;
                let len = (u64::from(e.len) * BS as u64).min(inode.size - start);
                (start, e.physical * BS as u64, len)
            })
            .collect();
        assert_eq!(map.extents(), &want[..], "{name}");
        let mut back = vec![0xEEu8; c.data.len()];
        map.read_at(meta.source(), &mut back, 0).unwrap();
        assert!(back == c.data, "{name}: the bytes differ");
    }
}
