//! The ext4 writer against e2fsck, ext4-view and the Linux kernel: each
//! test builds a tree with the public API, writes its image, and checks
//! that all three read back exactly that tree (see `ext4_support`).

mod ext4_support;

use std::collections::BTreeMap;
use std::io::Read;

use chunker::ext4::Ext4Options;
use chunker::tree::{InodeKind, Metadata, Timestamp};
use ext4_support::{ImageBuilder, meta};

fn opts() -> Ext4Options {
    Ext4Options {
        chunk_size: 64 * 1024,
        free_bytes: 1 << 20,
        spare_inodes: 64,
    }
}

fn dir() -> InodeKind {
    InodeKind::Dir {
        entries: BTreeMap::new(),
    }
}

fn with_xattrs(mode: u16, xattrs: &[(&str, &[u8])]) -> Metadata {
    Metadata {
        mode,
        xattrs: xattrs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.to_vec()))
            .collect(),
        ..Metadata::default()
    }
}

/// A valid VFS_CAP_REVISION_2 `security.capability` value granting
/// CAP_NET_BIND_SERVICE (permitted and effective).
fn capability() -> Vec<u8> {
    let mut v = Vec::new();
    for word in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

#[test]
fn empty_tree() {
    let built = ImageBuilder::new(opts()).build();
    built.check_all();
}

#[test]
fn every_file_type() {
    let mut b = ImageBuilder::new(opts());
    b.file("etc/hello", b"hello, world\n", meta(0o644));
    b.file("empty", b"", meta(0o600));
    b.node("dir", dir(), meta(0o750));
    b.node(
        "link",
        InodeKind::Symlink {
            target: b"etc/hello".to_vec(),
        },
        meta(0o777),
    );
    b.node(
        "dev/null",
        InodeKind::CharDev { major: 1, minor: 3 },
        meta(0o666),
    );
    b.node(
        "dev/sda",
        InodeKind::BlockDev { major: 8, minor: 0 },
        meta(0o660),
    );
    b.node("fifo", InodeKind::Fifo, meta(0o644));
    b.node("sock", InodeKind::Socket, meta(0o755));
    b.file("name with spaces and \u{e9}", b"x", meta(0o644));
    b.file(&"n".repeat(255), b"long name", meta(0o644));
    // Names are bytes, not necessarily UTF-8.
    let raw: &[&[u8]] = &[b"raw-\xff\xfe-name"];
    b.tree.insert(raw, InodeKind::Fifo, meta(0o644)).unwrap();
    b.build().check_all();
}

#[test]
fn the_trees_own_lost_and_found_is_used() {
    let mut b = ImageBuilder::new(opts());
    b.node("lost+found", dir(), meta(0o700));
    b.file("lost+found/kept", b"kept", meta(0o644));
    b.file("a", b"a", meta(0o644));
    b.build().check_all();
}

#[test]
fn modes_owners_and_times() {
    let mut b = ImageBuilder::new(opts());
    let t = |secs, nanos| Timestamp { secs, nanos };
    let m = |mode, uid, gid, mtime| Metadata {
        mode,
        uid,
        gid,
        mtime,
        ..Metadata::default()
    };
    b.file(
        "setuid",
        b"u",
        m(0o4755, 0, 0, t(1_700_000_000, 123_456_789)),
    );
    b.file("setgid", b"g", m(0o2711, 1, 2, t(1, 1)));
    b.node("sticky", dir(), m(0o1777, 0, 0, t(0, 999_999_999)));
    b.file("all-bits", b"7", m(0o7777, 0, 0, t(0, 0)));
    b.file("no-bits", b"0", m(0, 0, 0, t(0, 0)));
    b.file(
        "big-ids",
        b"i",
        m(0o640, 70_000, 4_000_000_000, t(-1, 500_000_000)),
    );
    b.file(
        "before-1970",
        b"b",
        m(0o644, 65_535, 65_536, t(-1_000_000_000, 42)),
    );
    b.file("after-2038", b"a", m(0o644, 0, 0, t(4_102_444_800, 5)));
    b.node("old-dir", dir(), m(0o700, 1000, 1000, t(-86_400, 0)));
    b.node(
        "fifo-owned",
        InodeKind::Fifo,
        m(0o620, 123_456, 654_321, t(17, 17)),
    );
    let root = b.tree.root();
    b.tree.inode_mut(root).meta = m(0o711, 5, 6, t(1_234_567_890, 987_654_321));
    b.build().check_all();
}

#[test]
fn xattrs_in_inode_and_block() {
    let mut b = ImageBuilder::new(opts());
    let big = vec![0xA5u8; 3000];
    let cap = capability();
    b.file("small", b"s", with_xattrs(0o644, &[("user.a", b"1")]));
    b.file(
        "cap",
        b"c",
        with_xattrs(0o755, &[("security.capability", &cap)]),
    );
    b.file(
        "big",
        b"b",
        with_xattrs(0o644, &[("user.big", &big), ("user.small", b"x")]),
    );
    b.file(
        "many",
        b"m",
        with_xattrs(
            0o644,
            &[
                ("user.one", b"1"),
                ("user.two", b"22"),
                ("user.empty", b""),
                ("trusted.t", b"trusted value"),
                ("security.capability", &cap),
                ("user.longer-name-here", &[7u8; 200]),
                ("user.\u{e9}t\u{e9}", b"accents"),
            ],
        ),
    );
    b.node(
        "xdir",
        dir(),
        with_xattrs(0o755, &[("user.dir", &[1u8; 1000]), ("trusted.d", b"d")]),
    );
    b.node(
        "xlink",
        InodeKind::Symlink {
            target: b"small".to_vec(),
        },
        with_xattrs(0o777, &[("trusted.l", &[2u8; 500])]),
    );
    b.node(
        "xfifo",
        InodeKind::Fifo,
        with_xattrs(0o644, &[("trusted.f", b"f")]),
    );
    b.node(
        "xdev",
        InodeKind::BlockDev {
            major: 300,
            minor: 70_000,
        },
        with_xattrs(
            0o600,
            &[("trusted.dev", &[5u8; 1500]), ("security.s", b"s")],
        ),
    );
    let root = b.tree.root();
    b.tree
        .inode_mut(root)
        .meta
        .xattrs
        .insert(b"user.root".to_vec(), b"r".to_vec());
    b.build().check_all();
}

#[test]
fn hard_links() {
    let mut b = ImageBuilder::new(opts());
    b.file(
        "a",
        b"shared bytes",
        with_xattrs(0o644, &[("user.k", b"v")]),
    );
    b.link("d/b", "a");
    b.link("d/e/c", "a");
    b.node(
        "dev/tty",
        InodeKind::CharDev { major: 5, minor: 0 },
        meta(0o666),
    );
    b.link("dev/tty-again", "dev/tty");
    b.node(
        "s",
        InodeKind::Symlink {
            target: b"a".to_vec(),
        },
        meta(0o777),
    );
    b.link("s2", "s");
    b.file("single", b"1", meta(0o644));
    let built = b.build();
    let a = built.tree.lookup(&ext4_support::p("a")).unwrap();
    assert_eq!(built.tree.inode(a).names, 3);
    built.check_all();
}

#[test]
fn fast_and_slow_symlinks() {
    let mut b = ImageBuilder::new(opts());
    for len in [1usize, 59, 60, 61, 4095] {
        let target: Vec<u8> = (0..len).map(|i| b"abcdefghij/"[i % 11]).collect();
        b.node(
            &format!("l{len}"),
            InodeKind::Symlink { target },
            meta(0o777),
        );
    }
    b.node(
        "slow-with-xattr",
        InodeKind::Symlink {
            target: vec![b'x'; 100],
        },
        with_xattrs(0o777, &[("trusted.big", &[3u8; 2000])]),
    );
    b.build().check_all();
}

#[test]
fn devices() {
    let mut b = ImageBuilder::new(opts());
    for (i, (major, minor)) in [
        (0, 0),
        (1, 3),
        (255, 255),
        (256, 0),
        (0, 256),
        (300, 70_000),
        (4095, 1_048_575),
    ]
    .into_iter()
    .enumerate()
    {
        b.node(
            &format!("c{i}"),
            InodeKind::CharDev { major, minor },
            meta(0o600),
        );
        b.node(
            &format!("b{i}"),
            InodeKind::BlockDev { major, minor },
            meta(0o600),
        );
    }
    b.build().check_all();
}

#[test]
fn sparse_file() {
    let mut b = ImageBuilder::new(opts());
    let mut data = vec![0u8; 10 << 20];
    data[0] = 1;
    data[5 << 20] = 2;
    data[(5 << 20) + 4096 * 3 + 7] = 3;
    *data.last_mut().unwrap() = 4;
    b.file("sparse", &data, meta(0o644));
    b.file("all-holes", &vec![0u8; 1 << 20], meta(0o644));
    b.file("tail", &[0, 0, 0, 9], meta(0o644));
    let built = b.build();
    // Only the four data blocks take room in the data region.
    let id = built.tree.lookup(&ext4_support::p("sparse")).unwrap();
    let InodeKind::File(fd) = &built.tree.inode(id).kind else {
        panic!()
    };
    assert_eq!(fd.allocated_blocks(), 4);
    built.check_all();
}

/// Every other block non-zero: one extent per data block.
fn fragmented(blocks: usize) -> Vec<u8> {
    let mut data = vec![0u8; blocks * 2 * 4096];
    for i in 0..blocks {
        data[i * 2 * 4096] = (i % 251) as u8 + 1;
    }
    data
}

#[test]
fn fragmented_files_need_deep_extent_trees() {
    let mut b = ImageBuilder::new(opts());
    // 4 fit the inode, 5 need a leaf, 1361 need an index level, 1600 too.
    for n in [4, 5, 340, 1360, 1361, 1600] {
        b.file(&format!("frag{n}"), &fragmented(n), meta(0o644));
    }
    // A deep tree whose first extent starts after a hole.
    let mut holey = vec![0u8; 4096];
    holey.extend_from_slice(&fragmented(1400));
    b.file("frag-after-hole", &holey, meta(0o644));
    let built = b.build();
    let id = built.tree.lookup(&ext4_support::p("frag1600")).unwrap();
    let InodeKind::File(fd) = &built.tree.inode(id).kind else {
        panic!()
    };
    assert_eq!(fd.extents.len(), 1600);
    built.check_all();
}

#[test]
fn file_over_4_gib() {
    let mut b = ImageBuilder::new(opts());
    let zeros = 4u64 << 30;
    let tail = vec![0xEEu8; 8192];
    let size = zeros + tail.len() as u64;
    let mut src = std::io::repeat(0).take(zeros).chain(&tail[..]);
    b.file_from("huge", &mut src, size, meta(0o644));
    b.file("after", b"after the huge one", meta(0o644));
    b.build().check_all();
}

#[test]
fn directory_with_100k_entries() {
    let mut b = ImageBuilder::new(Ext4Options {
        spare_inodes: 100,
        ..opts()
    });
    for i in 0..100_000 {
        b.file(&format!("big/entry-{i:06}"), b"", meta(0o644));
    }
    b.file("big/with-data", b"data", meta(0o644));
    b.node("big/subdir", dir(), meta(0o755));
    b.build().check_all();
}

#[test]
fn deep_nesting() {
    let mut b = ImageBuilder::new(opts());
    let mut path = String::new();
    for i in 0..300 {
        path.push_str(&format!("d{i:03}/"));
    }
    b.file(&format!("{path}bottom"), b"deep", meta(0o644));
    b.node(
        &format!("{path}link"),
        InodeKind::Symlink {
            target: b"bottom".to_vec(),
        },
        meta(0o777),
    );
    b.build().check_all();
}

#[test]
fn many_groups_with_a_partial_last_group() {
    // 25 groups of 128 MiB and a bit: bitmaps and tables for every group.
    let opts = Ext4Options {
        free_bytes: 25 * (128 << 20) + 12345 * 4096,
        spare_inodes: 5000,
        ..opts()
    };
    let mut b = ImageBuilder::new(opts);
    for i in 0..50 {
        b.file(
            &format!("f{i}"),
            &vec![i as u8 + 1; 5000 * (i + 1)],
            meta(0o644),
        );
        b.begin_layer();
    }
    let built = b.build();
    assert!(built.summary.size > 21 * (128 << 20));
    assert_ne!(built.summary.size % (128 << 20), 0);
    built.check_all();
}

#[test]
fn layers_with_deleted_and_replaced_files() {
    let mut b = ImageBuilder::new(opts());
    b.file("keep", &vec![1u8; 100_000], meta(0o644));
    b.file("gone", &vec![2u8; 200_000], meta(0o644));
    b.file("replaced", &vec![3u8; 50_000], meta(0o644));
    b.file("dir/inner", &vec![4u8; 10_000], meta(0o644));
    b.begin_layer();
    b.tree.remove(&ext4_support::p("gone")).unwrap();
    b.tree.remove(&ext4_support::p("dir")).unwrap();
    b.file("replaced", &vec![5u8; 70_000], meta(0o600));
    b.file("new", b"new", meta(0o644));
    b.build().check_all();
}

#[test]
fn chunk_size_4_mib() {
    let opts = Ext4Options {
        chunk_size: 4 << 20,
        ..opts()
    };
    let mut b = ImageBuilder::new(opts);
    b.file("l1", &vec![1u8; 3 << 20], meta(0o644));
    b.begin_layer();
    b.file("l2", &vec![2u8; 5 << 20], meta(0o644));
    b.node(
        "l2dir/x",
        InodeKind::Symlink {
            target: b"../l2".to_vec(),
        },
        meta(0o777),
    );
    let built = b.build();
    assert_eq!(built.summary.size % (4 << 20), 0);
    assert_eq!(built.summary.metadata_start % 1024, 0);
    built.check_all();
}

fn mixed_tree(b: &mut ImageBuilder) {
    b.file(
        "a",
        b"alpha",
        with_xattrs(0o644, &[("user.x", &[9u8; 3000])]),
    );
    b.file("frag", &fragmented(20), meta(0o600));
    b.link("hard", "a");
    b.node(
        "l",
        InodeKind::Symlink {
            target: vec![b'q'; 80],
        },
        meta(0o777),
    );
    b.node(
        "c",
        InodeKind::CharDev {
            major: 300,
            minor: 70_000,
        },
        meta(0o600),
    );
    for i in 0..500 {
        b.file(&format!("many/{i}"), format!("{i}").as_bytes(), meta(0o644));
    }
}

#[test]
fn same_tree_gives_identical_bytes() {
    let mut images = Vec::new();
    for _ in 0..2 {
        let mut b = ImageBuilder::new(opts());
        mixed_tree(&mut b);
        let built = b.build();
        images.push(std::fs::read(&built.path).unwrap());
    }
    assert!(images[0] == images[1], "two builds of the same tree differ");
    // A different tree gets a different UUID (bytes 0x468.. of the image).
    let mut b = ImageBuilder::new(opts());
    mixed_tree(&mut b);
    b.file("extra", b"!", meta(0o644));
    let other = std::fs::read(&b.build().path).unwrap();
    assert_ne!(images[0][0x468..0x478], other[0x468..0x478]);
}

#[test]
fn more_than_65000_subdirectories_link_count_1() {
    let mut b = ImageBuilder::new(opts());
    for i in 0..65_001 {
        b.node(&format!("wide/d{i}"), dir(), meta(0o755));
    }
    b.file("wide/d7/file", b"f", meta(0o644));
    let built = b.build();
    // ext4-view looks each directory up by path through a 65,001-entry
    // linear parent, which is quadratic; e2fsck and the kernel check it.
    ext4_support::fsck(&built.path);
    built.check_mount(true);
    built.check_mount(false);
}

#[test]
fn free_space_is_usable_when_mounted() {
    let free = 16 << 20;
    let mut b = ImageBuilder::new(Ext4Options {
        free_bytes: free,
        ..opts()
    });
    b.file("a", &[1u8; 100_000], meta(0o644));
    let built = b.build();
    built.with_rw_mount(|root| {
        // All but a little of the free space asked for takes a file
        // (the new file's own extent blocks come out of the rest).
        let data = vec![0x77u8; free as usize - (256 << 10)];
        std::fs::write(root.join("fill"), &data).unwrap();
        let f = std::fs::File::options()
            .write(true)
            .open(root.join("fill"))
            .unwrap();
        f.sync_all().unwrap();
        assert_eq!(std::fs::read(root.join("fill")).unwrap().len(), data.len());
    });
}

#[test]
fn default_options() {
    let mut b = ImageBuilder::new(Ext4Options::default());
    mixed_tree(&mut b);
    let built = b.build();
    assert_eq!(built.summary.size % Ext4Options::default().chunk_size, 0);
    built.check_all();
}
