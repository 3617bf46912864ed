//! Writing the metadata region and the header, once all file data is out.
//!
//! Order of writes (offsets only grow, the header comes last, as the sink
//! contract asks): block bitmaps, inode bitmaps, inode tables, then each
//! inode's directory / symlink / extent tree / xattr blocks in inode order,
//! then block 0 (superblock) and the group descriptor table. All-zero
//! blocks are skipped: the sink reads unwritten ranges as zeros.
//!
//! The UUID and hash seed come from a SHA-256 over the caller's identity
//! bytes and everything written, so they are deterministic and differ
//! between different trees (and, given identities, different contents).

use sha2::{Digest, Sha256};

use super::group::{Bitmap, DESC_SIZE, GroupDesc};
use super::inode::{self, DiskInode, EXTENTS_FL, EXTRA_ISIZE, INODE_SIZE, mode};
use super::layout::{BLOCKS_PER_GROUP, Geometry};
use super::plan::{FIRST_INO, Node, Plan, Source};
use super::superblock::{SUPERBLOCK_OFFSET, Superblock};
use super::{BLOCK_SIZE, Ext4Error, Ext4Options, Ext4Summary, dir};
use crate::sink::ImageSink;
use crate::tree::InodeKind;

/// Largest link count ext4 stores for a directory; beyond it the count is 1
/// ("many"), which `dir_nlink` allows.
const DIR_LINK_MAX: u64 = 65000;
const BS: u64 = BLOCK_SIZE as u64;

/// Writes blocks at growing block numbers, skipping zero blocks, hashing
/// what it writes.
struct RegionWriter<'a> {
    sink: &'a mut dyn ImageSink,
    next: u64,
    hash: Sha256,
}

impl RegionWriter<'_> {
    fn write(&mut self, block: u64, bytes: &[u8]) -> Result<(), Ext4Error> {
        debug_assert!(block >= self.next, "metadata writes must go forward");
        debug_assert!(bytes.len().is_multiple_of(BS as usize));
        let blocks: Vec<&[u8]> = bytes.chunks(BS as usize).collect();
        let mut i = 0;
        while i < blocks.len() {
            if blocks[i].iter().all(|&b| b == 0) {
                i += 1;
                continue;
            }
            let start = i;
            while i < blocks.len() && blocks[i].iter().any(|&b| b != 0) {
                self.hash.update((block + i as u64).to_le_bytes());
                self.hash.update(blocks[i]);
                i += 1;
            }
            let run = &bytes[start * BS as usize..i * BS as usize];
            self.sink.write_at((block + start as u64) * BS, run)?;
        }
        self.next = block + blocks.len() as u64;
        Ok(())
    }
}

/// Write the metadata for `tree` from block `first_free` (a chunk boundary
/// after all file data), then the header; say what the image holds.
/// `identity` (see [`super::Ext4Builder::identify`]) goes into the UUID.
pub(crate) fn write_metadata(
    sink: &mut dyn ImageSink,
    tree: &crate::tree::Tree,
    first_free: u64,
    opts: &Ext4Options,
    identity: &[u8],
) -> Result<Ext4Summary, Ext4Error> {
    let chunk_blocks = opts.chunk_size / BS;
    let mut plan = Plan::new(tree, chunk_blocks, first_free)?;
    let geo = Geometry::compute(
        first_free,
        plan.extra_blocks,
        u64::from(plan.last_ino()),
        u64::from(opts.spare_inodes),
        opts.free_bytes.div_ceil(BS),
        chunk_blocks,
    )?;
    plan.place(geo.extra_start);

    let mut out = RegionWriter {
        sink,
        next: geo.meta_start,
        hash: Sha256::new(),
    };
    out.hash.update(b"imagefs ext4 identity");
    out.hash.update((identity.len() as u64).to_le_bytes());
    out.hash.update(identity);
    let mut descs = vec![GroupDesc::default(); geo.groups as usize];
    for (g, d) in descs.iter_mut().enumerate() {
        let g = g as u64;
        d.block_bitmap = (geo.meta_start + g) as u32;
        d.inode_bitmap = (geo.inode_bitmaps + g) as u32;
        d.inode_table = (geo.inode_tables + g * geo.itable_blocks) as u32;
    }
    write_block_bitmaps(&mut out, &plan, &geo, &mut descs)?;
    write_inode_bitmaps(&mut out, &plan, &geo, &mut descs)?;
    write_inode_tables(&mut out, &plan, &geo, &mut descs)?;
    for node in &plan.nodes {
        write_extra_blocks(&mut out, &plan, node)?;
    }
    debug_assert!(out.next <= geo.meta_end);

    let free_blocks: u64 = descs.iter().map(|d| u64::from(d.free_blocks)).sum();
    let free_inodes: u64 = descs.iter().map(|d| u64::from(d.free_inodes)).sum();
    out.hash.update(b"imagefs ext4 geometry");
    for v in [
        geo.blocks,
        geo.groups,
        geo.inodes_per_group,
        free_blocks,
        free_inodes,
    ] {
        out.hash.update(v.to_le_bytes());
    }
    let digest = out.hash.finalize();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    // An RFC 9562 version 8 (custom) UUID, variant 10.
    uuid[6] = (uuid[6] & 0x0F) | 0x80;
    uuid[8] = (uuid[8] & 0x3F) | 0x80;
    let mut hash_seed = [0u8; 16];
    hash_seed.copy_from_slice(&digest[16..32]);

    let sb = Superblock {
        inodes_count: (geo.groups * geo.inodes_per_group) as u32,
        blocks_count: geo.blocks as u32,
        free_blocks: free_blocks as u32,
        free_inodes: free_inodes as u32,
        blocks_per_group: BLOCKS_PER_GROUP as u32,
        inodes_per_group: geo.inodes_per_group as u32,
        first_ino: FIRST_INO,
        inode_size: INODE_SIZE as u16,
        extra_isize: EXTRA_ISIZE,
        uuid,
        hash_seed,
    };
    let mut header = vec![0u8; ((1 + geo.gdt_blocks) * BS) as usize];
    header[SUPERBLOCK_OFFSET..SUPERBLOCK_OFFSET + 1024].copy_from_slice(&sb.encode());
    for (g, d) in descs.iter().enumerate() {
        let off = BS as usize + g * DESC_SIZE;
        header[off..off + DESC_SIZE].copy_from_slice(&d.encode());
    }
    out.sink.write_at(0, &header)?;

    Ok(Ext4Summary {
        size: geo.blocks * BS,
        metadata_start: geo.meta_start,
        inodes_used: u64::from(plan.last_ino()),
        blocks_used: geo.blocks - free_blocks,
    })
}

/// Block bitmaps: the superblock and descriptor blocks, every live file
/// extent and the whole metadata region are in use; everything else
/// (including data of files that upper layers deleted) is free. Bits past
/// the end of the last group are set, as ext4 expects.
fn write_block_bitmaps(
    out: &mut RegionWriter<'_>,
    plan: &Plan<'_>,
    geo: &Geometry,
    descs: &mut [GroupDesc],
) -> Result<(), Ext4Error> {
    let tree = plan.tree();
    // (start, end, owning node): None for the header and metadata region.
    let mut used: Vec<(u64, u64, Option<&Node>)> = vec![
        (0, 1 + geo.gdt_blocks, None),
        (geo.meta_start, geo.meta_end, None),
    ];
    for node in &plan.nodes {
        if let Source::Tree(id) = node.source
            && let InodeKind::File(data) = &tree.inode(id).kind
        {
            used.extend(
                data.extents
                    .iter()
                    .map(|e| (e.physical, e.physical + u64::from(e.len), Some(node))),
            );
        }
    }
    used.sort_unstable_by_key(|r| (r.0, r.1));
    for pair in used.windows(2) {
        let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
        if start < end {
            // Two inodes claiming the same blocks: a caller that copied a
            // file's FileData instead of making a hard link, say.
            let name = |n: Option<&Node>| n.map_or("filesystem metadata".into(), |n| plan.path(n));
            return Err(Ext4Error::BadEntry {
                path: name(b),
                reason: format!("its data blocks from {start} are also used by {}", name(a)),
            });
        }
    }
    let mut first = 0;
    for (g, desc) in descs.iter_mut().enumerate() {
        let start = g as u64 * BLOCKS_PER_GROUP;
        let end = start + geo.group_blocks(g as u64);
        let mut bitmap = Bitmap::new();
        while first < used.len() && used[first].1 <= start {
            first += 1;
        }
        for &(s, e, _) in used[first..].iter().take_while(|r| r.0 < end) {
            bitmap.set_range(
                (s.max(start) - start) as usize,
                (e.min(end) - start) as usize,
            );
        }
        let n = (end - start) as usize;
        desc.free_blocks = bitmap.count_clear(n) as u16;
        bitmap.set_range(n, BLOCKS_PER_GROUP as usize);
        out.write(geo.meta_start + g as u64, bitmap.as_bytes())?;
    }
    Ok(())
}

/// Inode bitmaps: numbers 1..=last are in use (reserved ones included),
/// and the bits past the group's inodes are set.
fn write_inode_bitmaps(
    out: &mut RegionWriter<'_>,
    plan: &Plan<'_>,
    geo: &Geometry,
    descs: &mut [GroupDesc],
) -> Result<(), Ext4Error> {
    let last = u64::from(plan.last_ino());
    let ipg = geo.inodes_per_group;
    for (g, desc) in descs.iter_mut().enumerate() {
        let first_ino = g as u64 * ipg + 1;
        let used = (last + 1).saturating_sub(first_ino).min(ipg);
        let mut bitmap = Bitmap::new();
        bitmap.set_range(0, used as usize);
        bitmap.set_range(ipg as usize, 8 * BS as usize);
        desc.free_inodes = (ipg - used) as u16;
        out.write(geo.inode_bitmaps + g as u64, bitmap.as_bytes())?;
    }
    Ok(())
}

/// One group's inode table at a time.
fn write_inode_tables(
    out: &mut RegionWriter<'_>,
    plan: &Plan<'_>,
    geo: &Geometry,
    descs: &mut [GroupDesc],
) -> Result<(), Ext4Error> {
    let ipg = geo.inodes_per_group;
    let mut nodes = plan.nodes.iter().peekable();
    for (g, desc) in descs.iter_mut().enumerate() {
        let mut table = vec![0u8; ipg as usize * INODE_SIZE];
        let group_end = (g as u64 + 1) * ipg;
        while let Some(node) = nodes.next_if(|n| u64::from(n.ino) <= group_end) {
            let disk = disk_inode(plan, node)?;
            if disk.mode & 0o170000 == mode::S_IFDIR {
                desc.used_dirs += 1;
            }
            let off = ((u64::from(node.ino) - 1) % ipg) as usize * INODE_SIZE;
            table[off..off + INODE_SIZE].copy_from_slice(&disk.encode());
        }
        out.write(geo.inode_tables + g as u64 * geo.itable_blocks, &table)?;
    }
    Ok(())
}

/// The on-disk inode of a node.
fn disk_inode(plan: &Plan<'_>, node: &Node) -> Result<DiskInode, Ext4Error> {
    let meta = plan.meta(node);
    let xattrs = plan.xattrs(node)?;
    let tree = plan.extent_tree(node);
    let mut disk = DiskInode {
        mode: meta.mode & 0o7777,
        uid: meta.uid,
        gid: meta.gid,
        size: 0,
        time: meta.mtime,
        links: 1,
        fs_blocks: node.extra_blocks(),
        flags: 0,
        block: [0; 60],
        xattr_block: node.xattr_block_nr(),
        inline_xattrs: xattrs.inline,
    };
    if let Some(t) = &tree {
        disk.block = t.root;
        disk.flags |= EXTENTS_FL;
    }
    let too_many_links = |n: u32| Ext4Error::BadEntry {
        path: plan.path(node),
        reason: format!("{n} hard links exceed ext4's 65000"),
    };
    let kind = match node.source {
        Source::Tree(id) => Some(&plan.tree().inode(id).kind),
        Source::LostFound => None,
    };
    match kind {
        None | Some(InodeKind::Dir { .. }) => {
            disk.mode |= mode::S_IFDIR;
            disk.size = node.data_blocks * BS;
            let links = 2 + plan.subdirs(node);
            disk.links = if links > DIR_LINK_MAX {
                1
            } else {
                links as u16
            };
        }
        Some(InodeKind::File(data)) => {
            disk.mode |= mode::S_IFREG;
            disk.size = data.size;
            disk.fs_blocks += data.allocated_blocks();
        }
        Some(InodeKind::Symlink { target }) => {
            disk.mode |= mode::S_IFLNK;
            disk.size = target.len() as u64;
            if node.data_blocks == 0 {
                // A fast symlink: the target lives in i_block, NUL padded.
                disk.block[..target.len()].copy_from_slice(target);
            }
        }
        Some(InodeKind::CharDev { major, minor }) | Some(InodeKind::BlockDev { major, minor }) => {
            let is_char = matches!(kind, Some(InodeKind::CharDev { .. }));
            disk.mode |= if is_char {
                mode::S_IFCHR
            } else {
                mode::S_IFBLK
            };
            disk.block = inode::encode_device(*major, *minor).expect("checked when planning");
        }
        Some(InodeKind::Fifo) => disk.mode |= mode::S_IFIFO,
        Some(InodeKind::Socket) => disk.mode |= mode::S_IFSOCK,
    }
    if let Source::Tree(id) = node.source
        && !plan.tree().inode(id).is_dir()
    {
        let names = plan.tree().inode(id).names;
        disk.links = u16::try_from(names)
            .ok()
            .filter(|&n| u64::from(n) <= DIR_LINK_MAX)
            .ok_or_else(|| too_many_links(names))?;
    }
    Ok(disk)
}

/// A node's directory or symlink blocks, extent tree blocks and xattr
/// block, in that order from its first block.
fn write_extra_blocks(
    out: &mut RegionWriter<'_>,
    plan: &Plan<'_>,
    node: &Node,
) -> Result<(), Ext4Error> {
    if node.extra_blocks() == 0 {
        return Ok(());
    }
    let kind = match node.source {
        Source::Tree(id) => Some(&plan.tree().inode(id).kind),
        Source::LostFound => None,
    };
    match kind {
        None | Some(InodeKind::Dir { .. }) => {
            let bytes = dir::encode(&plan.dir_entries(node));
            debug_assert_eq!(bytes.len() as u64, node.data_blocks * BS);
            out.write(node.first_block, &bytes)?;
        }
        Some(InodeKind::Symlink { target }) if node.data_blocks > 0 => {
            let mut block = vec![0u8; BS as usize];
            block[..target.len()].copy_from_slice(target);
            out.write(node.first_block, &block)?;
        }
        _ => {}
    }
    if let Some(tree) = plan.extent_tree(node) {
        debug_assert_eq!(tree.blocks.len() as u64, node.tree_blocks);
        for (i, block) in tree.blocks.iter().enumerate() {
            out.write(node.first_block + node.data_blocks + i as u64, block)?;
        }
    }
    if let Some(block) = plan.xattrs(node)?.block {
        out.write(node.xattr_block_nr(), &block)?;
    }
    Ok(())
}
