//! Group descriptors: an image of three block groups whose inodes fill
//! all three; every descriptor the reader finds points at the inode table
//! the writer filled, and its counts match the bitmaps.

use std::os::unix::fs::FileExt;

use ext4fmt::group::GroupDesc;

use super::*;

const GROUPS: u64 = 3;
const BLOCKS_PER_GROUP: u64 = 32768;
const FILES: u32 = 30;

fn read(file: &File, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).unwrap();
    buf
}

fn clear_bits(bitmap: &[u8], n: usize) -> u32 {
    (0..n)
        .filter(|&i| bitmap[i / 8] >> (i % 8) & 1 == 0)
        .count() as u32
}

#[test]
fn every_group_descriptor_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(dir.path().join("image.ext4"))
        .unwrap();
    // 260 MiB of free space: three groups of 128 MiB.
    let mut img = Image::in_file(file, opts(260 << 20, 0));
    for i in 0..FILES {
        let m = meta(0o600, 1000 + i, 2000 + i, i64::from(i) * 1000, i);
        img.file(&format!("d{}/f{i:02}", i % 3), &[i as u8 + 1; 100], m);
    }
    let (meta, summary, file) = img.open();
    // 10 reserved, lost+found, d0..d2 and the files: 44 inodes, 16 per
    // group (whole inode table blocks), so group 2 holds 33..=44.
    assert_eq!(summary.inodes_used, 44);
    let g = meta.geom;
    assert_eq!(u64::from(g.groups), GROUPS);
    assert_eq!(g.blocks_count.div_ceil(BLOCKS_PER_GROUP), GROUPS);
    assert_eq!((g.inodes_per_group, g.inodes_count), (16, 48));

    // The writer's layout: block bitmaps, inode bitmaps, then the inode
    // tables (one block of 16 inodes each) from the metadata region on.
    let start = summary.metadata_start;
    let (mut free_blocks, mut free_inodes) = (0u64, 0u64);
    for group in 0..g.groups {
        let gi = u64::from(group);
        let table = meta.inode_table(group).unwrap();
        assert_eq!(table, start + 2 * GROUPS + gi, "group {group}");
        let raw = read(&file, 4096 + 32 * gi, 32);
        let desc = GroupDesc::decode(&raw, false).unwrap();
        assert_eq!(desc.inode_table, table);
        assert_eq!(desc.block_bitmap, start + gi, "group {group}");
        assert_eq!(desc.inode_bitmap, start + GROUPS + gi, "group {group}");

        // Inodes: what the bitmap leaves free is what the descriptor
        // says, and what the reader finds in use is in the bitmap.
        let ibitmap = read(&file, desc.inode_bitmap * 4096, 4096);
        assert_eq!(clear_bits(&ibitmap, 16), desc.free_inodes, "group {group}");
        let used = (44u32.saturating_sub(group * 16)).min(16);
        assert_eq!(desc.free_inodes, 16 - used, "group {group}");
        let mut dirs = 0;
        for index in 0..used {
            let ino = group * 16 + index + 1;
            assert_eq!(ibitmap[index as usize / 8] >> (index % 8) & 1, 1);
            if ino == 2 || ino >= g.first_ino {
                dirs += u32::from(meta.inode(ino).unwrap().is_dir());
            }
        }
        assert_eq!(desc.used_dirs, dirs, "group {group}");

        // Blocks: the descriptor's free count is the bitmap's.
        let in_group = (g.blocks_count - gi * BLOCKS_PER_GROUP).min(BLOCKS_PER_GROUP);
        let bbitmap = read(&file, desc.block_bitmap * 4096, 4096);
        assert_eq!(
            clear_bits(&bbitmap, in_group as usize),
            desc.free_blocks,
            "group {group}"
        );
        free_blocks += u64::from(desc.free_blocks);
        free_inodes += u64::from(desc.free_inodes);
    }
    // Root and lost+found in group 0, d0..d2 right after them.
    assert_eq!(meta.inode(2).unwrap().links, 6);
    assert_eq!(free_blocks, g.stats.free_blocks);
    assert_eq!(free_inodes, g.stats.free_inodes);
    assert_eq!(free_blocks, g.blocks_count - summary.blocks_used);

    // Every file, in whichever group its inode landed, reads back whole.
    let mut groups_seen = [false; GROUPS as usize];
    for i in 0..FILES {
        let p = format!("/d{}/f{i:02}", i % 3);
        let ino = ino_at(&meta, &p);
        groups_seen[((ino - 1) / 16) as usize] = true;
        let inode = meta.inode(ino).unwrap();
        assert_eq!((inode.uid, inode.gid), (1000 + i, 2000 + i), "{p}");
        assert_eq!(inode.mtime.secs, i64::from(i) * 1000, "{p}");
        assert_eq!(inode.mtime.nsecs, i, "{p}");
        let map = meta.file_map(ino).unwrap();
        let mut data = vec![0u8; 100];
        map.read_at(meta.source(), &mut data, 0).unwrap();
        assert_eq!(data, [i as u8 + 1; 100], "{p}");
    }
    assert_eq!(groups_seen, [true; GROUPS as usize]);
}
