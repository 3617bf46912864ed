//! Inodes: type and permission bits, owners (both halves), the four times
//! with nanoseconds and epoch bits, sizes (past 4 GiB too), allocated
//! blocks, link counts, device numbers, fast and slow symlinks.

use ext4fmt::inode::flags::EXTENTS;
use ext4fmt::time::{MAX_SECS, MIN_SECS};

use super::*;
use crate::ext4::{FileType, Timestamp};

/// `new_encode_dev`, written out here rather than taken from the format
/// crate, so that a wrong encoding there fails this test.
fn dev(major: u32, minor: u32) -> u32 {
    (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12)
}

fn time(secs: i64, nsecs: u32) -> Timestamp {
    Timestamp { secs, nsecs }
}

/// All four times of `inode` (the writer sets them all from the mtime).
fn times(inode: &Inode) -> [Option<Timestamp>; 4] {
    [
        Some(inode.atime),
        Some(inode.mtime),
        Some(inode.ctime),
        inode.crtime,
    ]
}

#[test]
fn inode_modes_owners_times_sizes_and_links() {
    let mut img = Image::in_memory(opts(0, 0));
    img.file(
        "owned",
        b"0123456789",
        meta(0o4751, 70000, 0x0002_0001, 1_700_000_000, 123_456_789),
    );
    img.file("old", b"x", meta(0o644, 0, 0, -1_000_000_000, 1));
    img.node(
        "min",
        InodeKind::Fifo,
        meta(0o2600, 1, 1, MIN_SECS, 999_999_999),
    );
    // Epoch bits 1 and 2.
    img.node(
        "y2100",
        InodeKind::Socket,
        meta(0o755, 0, 0, 4_102_444_800, 5),
    );
    img.node(
        "late",
        InodeKind::Fifo,
        meta(0o1000, 0, 0, (1 << 33) + 7, 500),
    );
    img.node(
        "max",
        InodeKind::Fifo,
        meta(0o7777, u32::MAX, u32::MAX, MAX_SECS, 0),
    );
    // Past ext4's range: clamped, as the kernel clamps.
    img.node(
        "past",
        InodeKind::Fifo,
        meta(0o644, 0, 0, i64::MAX, 2_000_000_000),
    );
    // 5 GiB and 7 bytes, all hole: size_high, no blocks.
    let huge = FileData {
        size: (5 << 30) + 7,
        extents: Vec::new(),
    };
    img.node("huge", InodeKind::File(huge), meta(0o644, 0, 0, 0, 0));
    img.file("three", &[9; 8193], meta(0o640, 5, 6, 7, 8));
    img.link("three-again", "three");
    img.link("d/three", "three");
    img.node("d/e/f", InodeKind::Fifo, meta(0o644, 0, 0, 0, 0));
    img.node("d/g", InodeKind::Socket, meta(0o644, 0, 0, 0, 0));
    let (meta, _, _) = img.open();
    let at = |p: &str| inode_at(&meta, p);

    let owned = at("/owned");
    assert_eq!(owned.mode, 0o104751);
    assert_eq!(owned.file_type(), Some(FileType::Regular));
    assert_eq!((owned.uid, owned.gid), (70000, 0x0002_0001));
    assert_eq!(times(&owned), [Some(time(1_700_000_000, 123_456_789)); 4]);
    assert_eq!((owned.size, owned.blocks, owned.links), (10, 8, 1));
    assert_eq!(owned.flags, EXTENTS);
    assert_eq!(owned.xattr_block, 0);

    assert_eq!(times(&at("/old")), [Some(time(-1_000_000_000, 1)); 4]);
    let min = at("/min");
    assert_eq!((min.mode, min.uid, min.gid), (0o012600, 1, 1));
    assert_eq!(times(&min), [Some(time(MIN_SECS, 999_999_999)); 4]);
    assert_eq!((min.size, min.blocks, min.flags), (0, 0, 0));
    let y2100 = at("/y2100");
    assert_eq!(y2100.mode, 0o140755);
    assert_eq!(y2100.file_type(), Some(FileType::Socket));
    assert_eq!(times(&y2100), [Some(time(4_102_444_800, 5)); 4]);
    let late = at("/late");
    assert_eq!(late.mode, 0o011000);
    assert_eq!(times(&late), [Some(time((1 << 33) + 7, 500)); 4]);
    let max = at("/max");
    assert_eq!((max.mode, max.uid, max.gid), (0o017777, u32::MAX, u32::MAX));
    assert_eq!(times(&max), [Some(time(MAX_SECS, 0)); 4]);
    assert_eq!(times(&at("/past")), [Some(time(MAX_SECS, 999_999_999)); 4]);

    let huge = at("/huge");
    assert_eq!((huge.size, huge.blocks), ((5 << 30) + 7, 0));
    assert!(
        meta.file_map(ino_at(&meta, "/huge"))
            .unwrap()
            .extents()
            .is_empty()
    );

    // Three names, one inode; 8193 bytes take three blocks.
    let three = at("/three");
    assert_eq!((three.size, three.blocks, three.links), (8193, 24, 3));
    assert_eq!((three.mode, three.uid, three.gid), (0o100640, 5, 6));
    assert_eq!(times(&three), [Some(time(7, 8)); 4]);
    assert_eq!(ino_at(&meta, "/three-again"), three.ino);
    assert_eq!(ino_at(&meta, "/d/three"), three.ino);

    // Directories: 2 links plus one per subdirectory; one block each.
    let root = at("/");
    assert_eq!(root.ino, 2);
    assert_eq!(root.links, 2 + 2); // lost+found, d
    let d = at("/d");
    assert_eq!((d.links, d.size, d.blocks), (3, 4096, 8));
    assert_eq!(d.mode & 0o170000, 0o040000);
    assert_eq!(d.flags, EXTENTS);
    assert_eq!(at("/d/e").links, 2);
    let lf = at("/lost+found");
    assert_eq!((lf.ino, lf.mode, lf.links), (11, 0o040700, 2));
}

#[test]
fn inode_device_numbers() {
    let cases: [(&str, bool, u32, u32); 8] = [
        ("null", true, 1, 3),
        ("zero-zero", true, 0, 0),
        ("old-max", true, 255, 255),
        ("new-major", true, 256, 0),
        ("new-minor", false, 8, 256),
        ("big", false, 300, 70000),
        ("max", false, 4095, 0xF_FFFF),
        ("sda", false, 8, 0),
    ];
    let mut img = Image::in_memory(opts(0, 0));
    for (name, is_char, major, minor) in cases {
        let kind = if is_char {
            InodeKind::CharDev { major, minor }
        } else {
            InodeKind::BlockDev { major, minor }
        };
        img.node(&format!("dev/{name}"), kind, meta(0o660, 0, 6, 1, 2));
    }
    let (meta, _, _) = img.open();
    for (name, is_char, major, minor) in cases {
        let inode = inode_at(&meta, &format!("/dev/{name}"));
        let (ty, bits) = if is_char {
            (FileType::CharDevice, 0o020000)
        } else {
            (FileType::BlockDevice, 0o060000)
        };
        assert_eq!(inode.file_type(), Some(ty), "{name}");
        assert_eq!(inode.mode, bits | 0o660, "{name}");
        assert_eq!(inode.rdev(), dev(major, minor), "{name} {major}:{minor}");
        assert_eq!((inode.size, inode.blocks, inode.flags), (0, 0, 0), "{name}");
        assert_eq!((inode.uid, inode.gid), (0, 6), "{name}");
    }
}

#[test]
fn inode_fast_and_slow_symlinks() {
    let targets: Vec<(String, Vec<u8>)> = [1, 2, 58, 59, 60, 61, 200, 4095]
        .into_iter()
        .map(|n| {
            let target = (0..n).map(|i| b"abc/.\xff"[i % 6]).collect();
            (format!("l{n}"), target)
        })
        .collect();
    let mut img = Image::in_memory(opts(0, 0));
    for (name, target) in &targets {
        let kind = InodeKind::Symlink {
            target: target.clone(),
        };
        img.node(name, kind, meta(0o777, 10, 20, 30, 40));
    }
    let (meta, _, _) = img.open();
    for (name, target) in &targets {
        let ino = ino_at(&meta, &format!("/{name}"));
        let inode = meta.inode(ino).unwrap();
        assert_eq!(inode.mode, 0o120777, "{name}");
        assert_eq!(inode.file_type(), Some(FileType::Symlink), "{name}");
        assert_eq!(inode.size, target.len() as u64, "{name}");
        assert_eq!((inode.uid, inode.gid), (10, 20), "{name}");
        assert_eq!(times(&inode), [Some(time(30, 40)); 4], "{name}");
        assert_eq!(meta.read_link(ino).unwrap(), *target, "{name}");
        let fast = target.len() < 60;
        assert_eq!(inode.is_fast_symlink(4096), fast, "{name}");
        if fast {
            // The target in i_block, no blocks, no extent tree.
            assert_eq!(inode.blocks, 0, "{name}");
            assert_eq!(inode.flags, 0, "{name}");
            assert_eq!(&inode.i_block()[..target.len()], &target[..], "{name}");
        } else {
            // One block, mapped by an extent.
            assert_eq!(inode.blocks, 8, "{name}");
            assert_eq!(inode.flags, EXTENTS, "{name}");
            let runs = meta.runs(&inode, 1).unwrap();
            assert_eq!(runs.len(), 1, "{name}");
            assert_eq!((runs[0].logical, runs[0].len), (0, 1), "{name}");
        }
    }
}
