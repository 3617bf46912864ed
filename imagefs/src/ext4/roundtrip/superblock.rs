//! The superblock: the geometry and counts the reader decodes are the
//! ones the writer laid out.

use super::*;
use crate::ext4::superblock::{FsStats, Geometry};

#[test]
fn superblock_geometry_and_counts() {
    let mut img = Image::in_memory(opts(1 << 20, 16));
    img.file("a", b"hello", meta(0o644, 0, 0, 0, 0));
    img.file("d/b", &[1; 10_000], meta(0o600, 1, 2, 3, 4));
    img.node("d/fifo", InodeKind::Fifo, meta(0o644, 0, 0, 0, 0));
    let (meta, summary, _) = img.open();
    // 10 reserved inodes (the root among them), lost+found, a, d, b, fifo.
    assert_eq!(summary.inodes_used, 15);
    // One group: the used inodes and the spare ones, in whole blocks of
    // 16 inodes.
    let inodes = (15 + 16u32).next_multiple_of(16);
    let blocks = summary.size / 4096;
    let free_blocks = blocks - summary.blocks_used;
    assert_eq!(
        meta.geom,
        Geometry {
            block_size: 4096,
            blocks_count: blocks,
            inodes_count: inodes,
            inodes_per_group: inodes,
            first_ino: 11,
            inode_size: 256,
            desc_size: 32,
            groups: 1,
            is_64bit: false,
            filetype: true,
            huge_file: true,
            cluster_size: 4096,
            stats: FsStats {
                block_size: 4096,
                blocks,
                free_blocks,
                // No reserved blocks.
                avail_blocks: free_blocks,
                inodes: u64::from(inodes),
                free_inodes: u64::from(inodes) - 15,
            },
        }
    );
    assert_eq!(meta.statfs(), meta.geom.stats);
    // The free space asked for is there, beyond what Linux holds back.
    assert!(free_blocks * 4096 >= 1 << 20, "{free_blocks} free blocks");
}

#[test]
fn superblock_without_spare_room() {
    let mut img = Image::in_memory(opts(0, 0));
    img.file("only", &[7; 4096 * 3], meta(0o644, 0, 0, 0, 0));
    let (meta, summary, _) = img.open();
    let g = meta.geom;
    assert_eq!(summary.inodes_used, 12);
    assert_eq!((g.inodes_count, g.inodes_per_group), (16, 16));
    assert_eq!(g.stats.free_inodes, 4);
    assert_eq!(g.blocks_count, summary.size / 4096);
    assert_eq!(g.stats.free_blocks, g.blocks_count - summary.blocks_used);
    // The image is padded to a whole chunk of 16 blocks.
    assert_eq!(g.blocks_count % 16, 0);
}
