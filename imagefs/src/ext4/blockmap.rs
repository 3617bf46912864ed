//! Block maps, the pre-extent layout (ext2/ext3 files, kept by ext4 for
//! files without `EXTENTS_FL`): `i_block` holds 12 direct block numbers,
//! then one single, one double and one triple indirect block, each a
//! block of 32-bit block numbers. 0 is a hole.
//!
//! Only the first `blocks` logical blocks are mapped, so the reads are
//! bounded by the file's size; the depth is fixed, so there is no loop.

use super::MetaError;
use super::extent::Run;
use super::superblock::Geometry;
use ext4fmt::blockmap::{BlockMap, DIRECT_BLOCKS, decode_indirect, pointers_per_block};

/// The mapped blocks among the first `blocks` logical blocks of inode
/// `ino`, whose `i_block` is `i_block`.
pub(crate) fn runs(
    geom: &Geometry,
    ino: u32,
    i_block: &[u8; 60],
    blocks: u32,
    read_block: &mut dyn FnMut(u64) -> Result<Vec<u8>, MetaError>,
) -> Result<Vec<Run>, MetaError> {
    let mut out = Vec::new();
    let map = BlockMap::decode(i_block);
    for (i, &block) in (0..blocks).zip(&map.direct) {
        push(geom, ino, &mut out, i, block)?;
    }
    let per_block = pointers_per_block(geom.block_size);
    let mut first = DIRECT_BLOCKS as u32;
    let mut span = u64::from(per_block);
    for (level, &top) in (1..).zip(&map.indirect) {
        if u64::from(first) >= u64::from(blocks) {
            break;
        }
        walk(geom, ino, &mut out, top, level, first, blocks, read_block)?;
        let next = u64::from(first) + span;
        first = u32::try_from(next).unwrap_or(u32::MAX);
        span = span.saturating_mul(u64::from(per_block));
    }
    Ok(out)
}

fn push(
    geom: &Geometry,
    ino: u32,
    out: &mut Vec<Run>,
    logical: u32,
    block: u32,
) -> Result<(), MetaError> {
    if block == 0 {
        return Ok(());
    }
    if u64::from(block) >= geom.blocks_count {
        return Err(MetaError::Corrupt(format!(
            "inode {ino}: logical block {logical} maps to block {block}, past the {} blocks",
            geom.blocks_count
        )));
    }
    match out.last_mut() {
        Some(r)
            if r.logical + r.len == logical
                && r.physical + u64::from(r.len) == u64::from(block) =>
        {
            r.len += 1
        }
        _ => out.push(Run {
            logical,
            physical: u64::from(block),
            len: 1,
        }),
    }
    Ok(())
}

/// Maps the tree of `level` indirect levels at `block`, which covers the
/// logical blocks from `first`.
#[allow(clippy::too_many_arguments)]
fn walk(
    geom: &Geometry,
    ino: u32,
    out: &mut Vec<Run>,
    block: u32,
    level: u32,
    first: u32,
    blocks: u32,
    read_block: &mut dyn FnMut(u64) -> Result<Vec<u8>, MetaError>,
) -> Result<(), MetaError> {
    if block == 0 {
        return Ok(());
    }
    if u64::from(block) >= geom.blocks_count {
        return Err(MetaError::Corrupt(format!(
            "inode {ino}: indirect block {block} is past the {} blocks",
            geom.blocks_count
        )));
    }
    let data = read_block(u64::from(block))?;
    let at = || format!("inode {ino}: indirect block {block}");
    let pointers = decode_indirect(&data).map_err(MetaError::format(at))?;
    let per_block = pointers_per_block(geom.block_size);
    if pointers.len() != per_block as usize {
        return Err(MetaError::Corrupt(format!(
            "{}: {} block numbers, not {per_block}",
            at(),
            pointers.len()
        )));
    }
    // Logical blocks each pointer of this block covers.
    let span = u64::from(per_block).pow(level - 1);
    for (i, ptr) in (0u64..).zip(pointers) {
        let start = u64::from(first) + i * span;
        if start >= u64::from(blocks) {
            break;
        }
        let start = start as u32; // below `blocks`, a u32
        if level == 1 {
            push(geom, ino, out, start, ptr)?;
        } else {
            walk(geom, ino, out, ptr, level - 1, start, blocks, read_block)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::superblock::tests::sample;
    use ext4fmt::blockmap::encode_indirect;

    #[test]
    fn direct_single_and_double_indirect() {
        let g = Geometry {
            block_size: 1024,
            ..Geometry::decode(&sample()).unwrap()
        };
        let i_block = BlockMap {
            direct: std::array::from_fn(|i| 100 + i as u32),
            indirect: [50, 51, 0],
        }
        .encode();
        let mut reads = Vec::new();
        let got = runs(&g, 3, &i_block, 12 + 256 + 2, &mut |b| {
            reads.push(b);
            let mut d = [0u32; 256];
            match b {
                // Single indirect: 256 blocks from 1000 with a hole at 5.
                50 => {
                    for (i, v) in (0..).zip(&mut d) {
                        *v = if i == 5 { 0 } else { 1000 + i };
                    }
                }
                51 => d[0] = 52,
                52 => d[1] = 3000,
                _ => {}
            }
            Ok(encode_indirect(&d))
        })
        .unwrap();
        assert_eq!(reads, [50, 51, 52]);
        assert_eq!(
            got[0],
            Run {
                logical: 0,
                physical: 100,
                len: 12
            }
        );
        assert_eq!(
            got[1],
            Run {
                logical: 12,
                physical: 1000,
                len: 5
            }
        );
        assert_eq!(
            got[2],
            Run {
                logical: 18,
                physical: 1006,
                len: 250
            }
        );
        assert_eq!(
            got[3],
            Run {
                logical: 269,
                physical: 3000,
                len: 1
            }
        );
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn pointers_past_the_end_are_errors() {
        let g = Geometry::decode(&sample()).unwrap();
        let mut map = BlockMap::default();
        map.direct[0] = 70000;
        let e = runs(&g, 3, &map.encode(), 1, &mut |_| Ok(vec![])).unwrap_err();
        assert!(e.to_string().contains("inode 3"), "{e}");
        let mut map = BlockMap::default();
        map.indirect[0] = 70000;
        let i_block = map.encode();
        assert!(runs(&g, 3, &i_block, 20, &mut |_| Ok(vec![])).is_err());
        // An indirect block the wrong size is corrupt, not a short map.
        map.indirect[0] = 9;
        for short in [vec![], vec![0u8; 6], vec![0u8; 400]] {
            let e = runs(&g, 3, &map.encode(), 20, &mut |_| Ok(short.clone())).unwrap_err();
            assert!(
                e.is_corrupt() && e.to_string().contains("indirect block 9"),
                "{e}"
            );
        }
        // Beyond the file's blocks nothing is read.
        assert!(
            runs(&g, 3, &i_block, 12, &mut |_| panic!("read"))
                .unwrap()
                .is_empty()
        );
    }
}
