//! Group descriptors: where each block group's inode table starts.
//!
//! A descriptor is 32 bytes, or `s_desc_size` (64 and up) with the
//! `64bit` feature; `bg_inode_table_lo` is at 0x08 and, in the wide form,
//! `bg_inode_table_hi` at 0x28.

use super::MetaError;
use super::superblock::Geometry;
use ext4fmt::group::{GroupDesc, WIDE_SIZE};

/// The first block of the inode table described by `desc` (group
/// `group`), checked to lie, whole, inside the filesystem.
pub(crate) fn inode_table(geom: &Geometry, group: u32, desc: &[u8]) -> Result<u64, MetaError> {
    let bad = |why: String| MetaError::Corrupt(format!("group descriptor {group}: {why}"));
    let wide = geom.is_64bit && usize::from(geom.desc_size) >= WIDE_SIZE;
    let table = GroupDesc::decode(desc, wide)
        .map_err(MetaError::format(|| format!("group descriptor {group}")))?
        .inode_table;
    let table_bytes = u64::from(geom.inodes_per_group) * u64::from(geom.inode_size);
    let table_blocks = table_bytes.div_ceil(u64::from(geom.block_size));
    match table.checked_add(table_blocks) {
        Some(end) if table > 0 && end <= geom.blocks_count => Ok(table),
        _ => Err(bad(format!(
            "inode table at block {table} ({table_blocks} blocks) is outside the {} blocks",
            geom.blocks_count
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::superblock::tests::sample;

    #[test]
    fn low_and_high_halves() {
        let g = Geometry::decode(&sample()).unwrap();
        let mut d = vec![0u8; 64];
        d[0x08..0x0C].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(inode_table(&g, 0, &d).unwrap(), 100);
        d[0x28] = 1;
        let e = inode_table(&g, 3, &d).unwrap_err().to_string();
        assert!(
            e.contains("group descriptor 3") && e.contains("outside"),
            "{e}"
        );
        // Without 64bit the high half is not read.
        let narrow = Geometry {
            is_64bit: false,
            desc_size: 32,
            ..g
        };
        assert_eq!(inode_table(&narrow, 0, &d[..32]).unwrap(), 100);
        // A table running past the end, at block 0, or a short descriptor.
        d[0x28] = 0;
        d[0x08..0x0C].copy_from_slice(&65535u32.to_le_bytes());
        assert!(inode_table(&g, 0, &d).is_err());
        d[0x08..0x0C].copy_from_slice(&0u32.to_le_bytes());
        assert!(inode_table(&g, 0, &d).is_err());
        assert!(inode_table(&g, 0, &d[..8]).is_err());
    }
}
