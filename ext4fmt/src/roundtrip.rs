//! Every structure: encode, decode, and the same value comes back; and the
//! decoders refuse what the format forbids.

use crate::acl::{self, AclEntry};
use crate::blockmap::{self, BlockMap};
use crate::dir::DirEntry;
use crate::error::Corrupt;
use crate::extent::{self, Header, Index, Leaf};
use crate::group::GroupDesc;
use crate::inode::{DiskInode, FileType, mode};
use crate::superblock::{self, Superblock, incompat};
use crate::time::Timestamp;
use crate::xattr::{self, BlockHeader, Entry};

#[test]
fn superblock() {
    let sb = Superblock {
        inodes_count: 1,
        blocks_count: 0x1_0000_0002,
        r_blocks_count: 0x3_0000_0004,
        free_blocks_count: 0x5_0000_0006,
        free_inodes_count: 7,
        first_data_block: 8,
        log_block_size: 2,
        log_cluster_size: 2,
        blocks_per_group: 9,
        clusters_per_group: 10,
        inodes_per_group: 11,
        max_mnt_count: 0xFFFF,
        state: 1,
        errors: 1,
        rev_level: 1,
        first_ino: 11,
        inode_size: 256,
        block_group_nr: 3,
        feature_compat: 0x208,
        feature_incompat: incompat::BIT64 | incompat::FILETYPE,
        feature_ro_compat: 0x6A,
        uuid: [1; 16],
        hash_seed: [2; 16],
        def_hash_version: 1,
        desc_size: 64,
        min_extra_isize: 32,
        want_extra_isize: 32,
        flags: 1,
        log_groups_per_flex: 4,
        backup_bgs: [12, 13],
    };
    let b = sb.encode();
    assert_eq!(Superblock::decode(&b), Ok(sb.clone()));
    // Without 64bit the high halves are not read.
    let narrow = Superblock {
        feature_incompat: incompat::FILETYPE,
        ..sb
    };
    let got = Superblock::decode(&narrow.encode()).unwrap();
    assert_eq!(got.blocks_count, 2);
    assert_eq!(got.free_blocks_count, 6);
    let mut bad = b;
    bad[superblock::off::MAGIC] = 0;
    assert!(matches!(
        Superblock::decode(&bad),
        Err(Corrupt::Magic { found: 0xEF00, .. })
    ));
    assert!(matches!(
        Superblock::decode(&b[..0x100]),
        Err(Corrupt::Short { .. })
    ));
}

#[test]
fn group_descriptor() {
    let d = GroupDesc {
        block_bitmap: 0x1_0000_0001,
        inode_bitmap: 0x2_0000_0002,
        inode_table: 0x3_0000_0003,
        free_blocks: 0x4_0004,
        free_inodes: 0x5_0005,
        used_dirs: 0x6_0006,
    };
    assert_eq!(GroupDesc::decode(&d.encode(64), true), Ok(d));
    let narrow = GroupDesc::decode(&d.encode(32), false).unwrap();
    assert_eq!((narrow.inode_table, narrow.used_dirs), (3, 6));
    assert!(GroupDesc::decode(&d.encode(32), true).is_err());
}

#[test]
fn inode() {
    let t = |secs, nsecs| Timestamp { secs, nsecs };
    let mut block = [0u8; 60];
    block[..5].copy_from_slice(b"hello");
    let i = DiskInode {
        mode: mode::S_IFLNK | 0o777,
        uid: 0x0005_1234,
        gid: 0x0006_4321,
        size: 5,
        atime: t(1, 2),
        ctime: t(-3, 4),
        mtime: t(5_000_000_000, 999_999_999),
        crtime: Some(t(7, 8)),
        links: 1,
        blocks: 0x1234_0000_0010,
        flags: 0x8_0000,
        block,
        generation: 9,
        file_acl: 0x1_0000_0010,
        extra_isize: 32,
    };
    let mut raw = [0u8; 256];
    i.encode(&mut raw);
    assert_eq!(DiskInode::decode(&raw, true), Ok(i.clone()));
    assert_eq!(i.file_type(), Some(FileType::Symlink));
    assert_eq!(i.fast_symlink_target(), Ok(&b"hello"[..]));
    // No in-inode xattrs until the magic is there.
    assert_eq!(i.xattr_area(&raw), None);
    raw[160..164].copy_from_slice(&xattr::MAGIC.to_le_bytes());
    assert_eq!(i.xattr_area(&raw).map(<[u8]>::len), Some(96));
    // 128-byte inodes: no extra fields, no creation time.
    let mut small = [0u8; 128];
    i.encode(&mut small);
    let got = DiskInode::decode(&small, true).unwrap();
    assert_eq!((got.mtime, got.crtime), (t(705_032_704, 0), None));
    raw[0x80] = 130;
    assert_eq!(
        DiskInode::decode(&raw, true),
        Err(Corrupt::ExtraIsize {
            extra: 130,
            inode_size: 256
        })
    );
}

#[test]
fn extent_nodes() {
    let h = Header {
        entries: 3,
        max: 4,
        depth: 1,
        generation: 5,
    };
    let mut root = [0u8; 60];
    root[..12].copy_from_slice(&h.encode());
    assert_eq!(Header::decode(&root), Ok(h));
    let ix = Index {
        logical: 7,
        leaf: 0x1_0000_0008,
    };
    assert_eq!(Index::decode(&ix.encode()), Ok(ix));
    for (len, unwritten) in [(32768, false), (32767, true)] {
        let l = Leaf {
            logical: 9,
            len,
            unwritten,
            start: 0xFFFF_0000_0001,
        };
        assert_eq!(Leaf::decode(&l.encode()), Ok(l));
    }
    let mut node = vec![0u8; 4096];
    extent::encode_node(&mut node, &Header { max: 340, ..h }, &[ix.encode()]);
    assert_eq!(Index::decode(extent::entry(&node, 0).unwrap()), Ok(ix));
    assert_eq!(extent::entries_in(4096), 340);
    let over = Header { max: 5, ..h };
    root[..12].copy_from_slice(&over.encode());
    assert!(matches!(
        Header::decode(&root),
        Err(Corrupt::ExtentCounts { .. })
    ));
    let deep = Header { depth: 6, ..h };
    root[..12].copy_from_slice(&deep.encode());
    assert_eq!(
        Header::decode(&root),
        Err(Corrupt::ExtentDepth { depth: 6 })
    );
}

#[test]
fn directory_entries() {
    let mut block = vec![0u8; 4096];
    let a = DirEntry {
        ino: 12,
        rec_len: 16,
        file_type: 1,
        name: b"file".to_vec(),
    };
    let b = DirEntry {
        ino: 13,
        rec_len: 4096 - 16,
        file_type: 2,
        name: b"dir".to_vec(),
    };
    a.encode(&mut block, 0);
    b.encode(&mut block, 16);
    assert_eq!(DirEntry::decode(&block, 0, true), Ok(a));
    assert_eq!(DirEntry::decode(&block, 16, true), Ok(b.clone()));
    assert_eq!(DirEntry::decode(&block, 16, false).unwrap().file_type, 0);
    // 64 KiB blocks store a whole-block record as 65535.
    let mut big = vec![0u8; 65536];
    let whole = DirEntry {
        rec_len: 65536,
        ..b
    };
    whole.encode(&mut big, 0);
    assert_eq!(DirEntry::decode(&big, 0, true), Ok(whole));
    block[20..22].copy_from_slice(&9u16.to_le_bytes());
    assert!(matches!(
        DirEntry::decode(&block, 16, true),
        Err(Corrupt::RecordLength { rec_len: 9, .. })
    ));
}

#[test]
fn xattr_entries_and_block() {
    let e = Entry {
        name_index: xattr::index::USER,
        value_offs: 4000,
        value_inum: 0,
        value_size: 3,
        hash: xattr::entry_hash(b"a", b"xyz"),
        name: b"a".to_vec(),
    };
    let mut area = vec![0u8; 4096];
    let h = BlockHeader {
        refcount: 2,
        blocks: 1,
        hash: xattr::block_hash(&[e.hash]),
    };
    h.encode(&mut area);
    e.encode(&mut area, 32);
    assert_eq!(BlockHeader::decode(&area), Ok(h));
    assert_eq!(Entry::decode(&area, 32), Ok(Some(e.clone())));
    assert_eq!(Entry::decode(&area, 32 + e.len()), Ok(None));
    assert_eq!(
        Entry::decode(&area[..34], 32),
        Err(Corrupt::XattrNoEnd { len: 34 })
    );
    area[8] = 2;
    assert!(matches!(
        BlockHeader::decode(&area),
        Err(Corrupt::XattrBlockHeader { blocks: 2, .. })
    ));
    // Names: every index's prefix and back.
    for (i, p) in xattr::NAME_INDEXES {
        assert_eq!(xattr::prefix(*i), Some(*p));
    }
    assert_eq!(xattr::split_name(b"user.x"), Some((1, &b"x"[..])));
    assert_eq!(
        xattr::split_name(b"system.posix_acl_access"),
        Some((2, &b""[..]))
    );
    assert_eq!(xattr::split_name(b"system.data"), Some((7, &b"data"[..])));
    assert_eq!(xattr::split_name(b"gnu.x"), None);
    assert_eq!(xattr::entry_hash(&[0x80], b""), 0xFFFF_FF80);
    assert_eq!(xattr::block_hash(&[1, 0, 2]), 0);
}

#[test]
fn acls_both_forms() {
    let entries = [
        AclEntry {
            tag: acl::tag::USER_OBJ,
            perm: 7,
            id: acl::UNDEFINED_ID,
        },
        AclEntry {
            tag: acl::tag::USER,
            perm: 5,
            id: 1000,
        },
        AclEntry {
            tag: acl::tag::GROUP_OBJ,
            perm: 5,
            id: acl::UNDEFINED_ID,
        },
        AclEntry {
            tag: acl::tag::GROUP,
            perm: 4,
            id: 50,
        },
        AclEntry {
            tag: acl::tag::MASK,
            perm: 5,
            id: acl::UNDEFINED_ID,
        },
        AclEntry {
            tag: acl::tag::OTHER,
            perm: 0,
            id: acl::UNDEFINED_ID,
        },
    ];
    let vfs = acl::encode_vfs(&entries);
    assert_eq!(acl::decode_vfs(&vfs).unwrap(), entries);
    let disk = acl::encode_disk(&entries);
    assert_eq!(disk.len(), 4 + 4 * 4 + 2 * 8);
    assert_eq!(acl::decode_disk(&disk).unwrap(), entries);
    assert_eq!(
        acl::decode_vfs(&disk),
        Err(Corrupt::AclVersion { found: 1, want: 2 })
    );
    assert_eq!(
        acl::decode_vfs(&disk[..disk.len() - 4]),
        Err(Corrupt::AclSize {
            len: disk.len() - 4
        })
    );
    assert!(matches!(
        acl::decode_disk(&vfs),
        Err(Corrupt::AclVersion { found: 2, want: 1 })
    ));
    let mut bad = vfs.clone();
    bad[4] = 0x40;
    assert_eq!(
        acl::decode_vfs(&bad),
        Err(Corrupt::AclTag {
            entry: 0,
            tag: 0x40
        })
    );
    bad[4] = 1;
    bad[6] = 8;
    assert_eq!(
        acl::decode_vfs(&bad),
        Err(Corrupt::AclPerm { entry: 0, perm: 8 })
    );
    assert_eq!(
        acl::decode_disk(&disk[..disk.len() - 2]),
        Err(Corrupt::AclSize {
            len: disk.len() - 2
        })
    );
    // Two long entries where the size promises four short ones.
    let two_long = acl::encode_disk(&[entries[1], entries[3]]);
    assert!(matches!(
        acl::decode_disk(&two_long),
        Err(Corrupt::Short { .. })
    ));
    // Five short entries and 4 bytes over: one long entry was counted.
    let mut five = acl::encode_disk(&[entries[0]; 5]);
    five.extend([0; 4]);
    assert_eq!(
        acl::decode_disk(&five),
        Err(Corrupt::AclEnd { end: 24, len: 28 })
    );
}

#[test]
fn block_map_and_indirect_blocks() {
    let map = BlockMap {
        direct: std::array::from_fn(|i| 100 + i as u32 * 3),
        indirect: [0xFFFF_FFFE, 0, 7],
    };
    let raw = map.encode();
    assert_eq!(&raw[0..4], &100u32.to_le_bytes());
    assert_eq!(&raw[44..48], &133u32.to_le_bytes());
    assert_eq!(&raw[48..52], &0xFFFF_FFFEu32.to_le_bytes());
    assert_eq!(&raw[56..60], &7u32.to_le_bytes());
    assert_eq!(BlockMap::decode(&raw), map);
    assert_eq!(BlockMap::decode(&[0; 60]), BlockMap::default());

    assert_eq!(blockmap::pointers_per_block(1024), 256);
    let pointers: Vec<u32> = (0..1024u32).map(|i| i.wrapping_mul(0x0101_0101)).collect();
    let block = blockmap::encode_indirect(&pointers);
    assert_eq!(block.len(), 4096);
    assert_eq!(&block[4..8], &0x0101_0101u32.to_le_bytes());
    assert_eq!(blockmap::decode_indirect(&block), Ok(pointers));
    for len in [0, 3, 1022] {
        assert_eq!(
            blockmap::decode_indirect(&vec![1; len]),
            Err(Corrupt::IndirectSize { len })
        );
    }
}

#[test]
fn xattr_values_and_in_inode_header() {
    // In the inode: the magic, then entries whose value offsets count
    // from the first entry.
    let mut area = vec![0u8; 100];
    xattr::encode_ibody_header(&mut area);
    assert_eq!(xattr::decode_ibody_header(&area), Ok(()));
    let entries = &mut area[xattr::IBODY_HEADER_SIZE..];
    let e = Entry {
        name_index: xattr::index::TRUSTED,
        value_offs: 88,
        value_inum: 0,
        value_size: 5,
        hash: 0,
        name: b"t".to_vec(),
    };
    e.encode(entries, 0);
    e.encode_value(entries, b"hello");
    let values_from = e.len() + xattr::END_MARK_SIZE;
    let entries = &area[xattr::IBODY_HEADER_SIZE..];
    assert_eq!(Entry::decode(entries, 0), Ok(Some(e.clone())));
    assert_eq!(e.value(entries, values_from), Ok(&b"hello"[..]));
    // Past the end, overlapping the entries, or overflowing: refused,
    // naming the numbers.
    for (offs, size) in [(92, 5), (4, 5), (u16::MAX, u32::MAX)] {
        let bad = Entry {
            value_offs: offs,
            value_size: size,
            ..e.clone()
        };
        assert_eq!(
            bad.value(entries, values_from),
            Err(Corrupt::XattrValue {
                offs: usize::from(offs),
                size: size as usize,
                from: values_from,
                len: 96
            })
        );
    }
    // An empty value is empty wherever it points.
    let empty = Entry {
        value_offs: 5000,
        value_size: 0,
        ..e
    };
    assert_eq!(empty.value(entries, values_from), Ok(&[][..]));
    area[0] ^= 1;
    assert!(matches!(
        xattr::decode_ibody_header(&area),
        Err(Corrupt::Magic {
            what: "in-inode xattrs",
            ..
        })
    ));
    assert!(matches!(
        xattr::decode_ibody_header(&area[..3]),
        Err(Corrupt::Short { .. })
    ));
}
