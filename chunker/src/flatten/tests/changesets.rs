//! Changeset semantics: whiteouts, opaque directories, links, every
//! entry kind and attribute, sparse files, each source format.

use super::*;

#[test]
fn files_stream_into_the_image_in_layer_order() {
    let big: Vec<u8> = (0..3 * BLOCK_SIZE + 17).map(|i| (i % 251) as u8).collect();
    let f = flat(vec![
        layer(|t| {
            t.dir("./usr/").file("./usr/big", &big).file("empty", b"");
        }),
        layer(|t| {
            t.file("usr/small", b"tiny");
        }),
    ]);
    assert_eq!(f.content("usr/big"), big);
    assert_eq!(f.content("empty"), b"");
    assert_eq!(f.content("usr/small"), b"tiny");
    // Each layer's data starts on a chunk boundary.
    let chunk_blocks = Ext4Options::default().chunk_size / u64::from(BLOCK_SIZE);
    let InodeKind::File(d) = &f.inode("usr/small").kind else {
        panic!()
    };
    assert_eq!(d.extents[0].physical % chunk_blocks, 0);
    assert_eq!(f.reports.len(), 2);
    assert_eq!(f.reports[0].entries, 3);
    assert!(f.reports[0].media_type.ends_with("+gzip"));
    assert!(f.reports[0].uncompressed_bytes > big.len() as u64);
}

#[test]
fn whiteouts_remove_lower_entries_only() {
    let f = flat(vec![
        layer(|t| {
            t.file("a/x", b"1")
                .file("a/y", b"2")
                .dir("d")
                .file("d/sub/z", b"3");
        }),
        layer(|t| {
            // Same-layer entry before its own whiteout survives.
            t.file("a/new", b"n").file(".wh.new_elsewhere", b"");
            t.file("a/.wh.x", b"")
                .file("a/.wh.new", b"")
                .file(".wh.d", b"");
            t.file("a/.wh.never_existed", b"");
        }),
    ]);
    assert!(!f.exists("a/x"));
    assert!(f.exists("a/y"));
    assert!(!f.exists("d"));
    assert_eq!(f.content("a/new"), b"n");
    // Whiteout files themselves never appear.
    assert!(!f.exists("a/.wh.x"));
    assert!(!f.exists(".wh.new_elsewhere"));
}

#[test]
fn opaque_dir_hides_lower_children_but_keeps_same_layer_ones() {
    let f = flat(vec![
        layer(|t| {
            t.file("o/lower", b"l")
                .file("o/keep/deep", b"d")
                .file("o/keep/other", b"o");
            t.file("p/lower", b"l");
        }),
        layer(|t| {
            // Entries of this layer come before the marker.
            t.file("o/before", b"b").file("o/keep/mine", b"m");
            t.file("o/.wh..wh..opq", b"");
            t.file("o/after", b"a");
            t.file("p/.wh..wh..opq", b"").file("q/.wh..wh..opq", b"");
        }),
    ]);
    assert!(!f.exists("o/lower"));
    assert!(!f.exists("o/keep/deep"));
    assert!(!f.exists("o/keep/other"));
    assert_eq!(f.content("o/keep/mine"), b"m");
    assert_eq!(f.content("o/before"), b"b");
    assert_eq!(f.content("o/after"), b"a");
    assert!(f.inode("p").is_dir());
    assert!(f.tree.entries(f.id("p").unwrap()).unwrap().is_empty());
    // A marker implies its directory.
    assert!(f.inode("q").is_dir());
    assert!(!f.exists("o/.wh..wh..opq"));
}

#[test]
fn hardlinks_to_lower_and_same_layer_files() {
    let f = flat(vec![
        layer(|t| {
            t.file("bin/busybox", b"BB");
        }),
        layer(|t| {
            t.hardlink("bin/sh", "bin/busybox");
            t.file("x", b"X").hardlink("./y", "./x");
            // The lower name goes, the link keeps the inode.
            t.file("bin/.wh.busybox", b"");
        }),
    ]);
    assert!(!f.exists("bin/busybox"));
    assert_eq!(f.content("bin/sh"), b"BB");
    assert_eq!(f.id("x"), f.id("y"));
    assert_eq!(f.inode("x").names, 2);
    assert_eq!(f.inode("bin/sh").names, 1);
}

#[test]
fn file_and_directory_replace_each_other() {
    let f = flat(vec![
        layer(|t| {
            t.file("f2d", b"file")
                .file("d2f/inner", b"i")
                .dir("dd")
                .file("dd/keep", b"k");
        }),
        layer(|t| {
            t.dir("f2d").file("f2d/child", b"c");
            t.file("d2f", b"now a file");
            t.dir("dd");
        }),
    ]);
    assert!(f.inode("f2d").is_dir());
    assert_eq!(f.content("f2d/child"), b"c");
    assert_eq!(f.content("d2f"), b"now a file");
    assert!(!f.exists("d2f/inner"));
    // Directory over directory keeps the children.
    assert_eq!(f.content("dd/keep"), b"k");
}

#[test]
fn every_entry_kind_and_attribute() {
    let long = format!("deep/{}/{}", "n".repeat(120), "file-with-a-long-name");
    let long_target = "t".repeat(150);
    let f = flat(vec![layer(|t| {
        let mut h = header(b"./", tar::EntryType::Directory, 0o700, 0);
        h.set_mtime(42);
        t.raw(h, b"");
        let mut h = header(b"suid", tar::EntryType::Regular, 0o4755, 1);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_600_000_000);
        t.raw(h, b"s");
        t.raw(
            header(b"sgid-sticky", tar::EntryType::Directory, 0o3775, 0),
            b"",
        );
        t.symlink("link", "../target/elsewhere");
        let mut h = header(b"dev/null", tar::EntryType::Char, 0o666, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        t.raw(h, b"");
        let mut h = header(b"dev/sda", tar::EntryType::Block, 0o660, 0);
        h.set_device_major(8).unwrap();
        h.set_device_minor(0).unwrap();
        t.raw(h, b"");
        t.raw(header(b"run/fifo", tar::EntryType::Fifo, 0o600, 0), b"");
        t.pax(&[
            ("mtime", b"1700000000.123456789"),
            ("uid", b"3000000000"),
            ("gid", b"70000"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00",
            ),
            ("SCHILY.xattr.user.note", b"hi"),
            ("SCHILY.xattr.trusted.t", b"\x00"),
        ]);
        t.file("bin/ping", b"ping");
        t.pax(&[("mtime", b"-1.5")]);
        t.file("old", b"o");
        t.pax(&[("path", long.as_bytes())]);
        t.file("ignored-short-name", b"pax long");
        t.gnu_long(b'L', b"gnu/long/".repeat(20).as_slice());
        t.file("gnu-short", b"gnu long");
        t.pax(&[("linkpath", long_target.as_bytes())]);
        t.symlink("pax-link", "short");
        t.gnu_long(b'L', format!("hl/{}", "h".repeat(110)).as_bytes());
        t.gnu_long(b'K', long.as_bytes());
        t.hardlink("hl-short", "short");
        t.pax_global(b"22 comment=whatever\n");
    })]);
    let root = f.tree.inode(f.tree.root());
    assert_eq!((root.meta.mode, root.meta.mtime.secs), (0o700, 42));
    let s = f.inode("suid");
    assert_eq!((s.meta.mode, s.meta.uid, s.meta.gid), (0o4755, 1000, 1001));
    assert_eq!(
        s.meta.mtime,
        Timestamp {
            secs: 1_600_000_000,
            nanos: 0
        }
    );
    assert_eq!(f.inode("sgid-sticky").meta.mode, 0o3775);
    assert_eq!(
        f.inode("link").kind,
        InodeKind::Symlink {
            target: b"../target/elsewhere".to_vec()
        }
    );
    assert_eq!(
        f.inode("dev/null").kind,
        InodeKind::CharDev { major: 1, minor: 3 }
    );
    assert_eq!(
        f.inode("dev/sda").kind,
        InodeKind::BlockDev { major: 8, minor: 0 }
    );
    assert_eq!(f.inode("run/fifo").kind, InodeKind::Fifo);
    let ping = f.inode("bin/ping");
    assert_eq!(
        ping.meta.mtime,
        Timestamp {
            secs: 1_700_000_000,
            nanos: 123_456_789
        }
    );
    assert_eq!((ping.meta.uid, ping.meta.gid), (3_000_000_000, 70000));
    assert_eq!(
        ping.meta.xattrs[&b"security.capability".to_vec()],
        b"\x01\x00\x00\x02\x00\x20\x00\x00"
    );
    assert_eq!(ping.meta.xattrs[&b"user.note".to_vec()], b"hi");
    assert_eq!(ping.meta.xattrs.len(), 3);
    assert_eq!(
        f.inode("old").meta.mtime,
        Timestamp {
            secs: -2,
            nanos: 500_000_000
        }
    );
    assert_eq!(f.content(&long), b"pax long");
    assert!(!f.exists("ignored-short-name"));
    let gnu = "gnu/long/".repeat(20);
    assert_eq!(f.content(gnu.trim_end_matches('/')), b"gnu long");
    assert_eq!(
        f.inode("pax-link").kind,
        InodeKind::Symlink {
            target: long_target.into_bytes()
        }
    );
    assert_eq!(f.id(&format!("hl/{}", "h".repeat(110))), f.id(&long));
    // The global header is not an entry.
    assert_eq!(f.reports[0].entries, 13);
}

#[test]
fn gnu_sparse_file_keeps_its_holes() {
    // Build a GNU sparse entry by hand: 2 data runs in a 1 MiB file.
    let mut t = TarWriter::new();
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(2 * 512);
    {
        let gnu = h.as_gnu_mut().unwrap();
        let set = |field: &mut [u8], v: u64| {
            let s = format!("{:0width$o}", v, width = field.len() - 1);
            field[..s.len()].copy_from_slice(s.as_bytes());
        };
        set(&mut gnu.realsize, 1 << 20);
        set(&mut gnu.sparse[0].offset, 0);
        set(&mut gnu.sparse[0].numbytes, 512);
        set(&mut gnu.sparse[1].offset, (1 << 20) - 512);
        set(&mut gnu.sparse[1].numbytes, 512);
    }
    let mut data = vec![b'a'; 512];
    data.extend(vec![b'z'; 512]);
    t.raw(h, &data);
    let f = flat(vec![t]);
    let content = f.content("sparse");
    assert_eq!(content.len(), 1 << 20);
    assert!(content[..512].iter().all(|&b| b == b'a'));
    assert!(content[512..(1 << 20) - 512].iter().all(|&b| b == 0));
    assert!(content[(1 << 20) - 512..].iter().all(|&b| b == b'z'));
    let InodeKind::File(d) = &f.inode("sparse").kind else {
        panic!()
    };
    assert_eq!(d.allocated_blocks(), 2);
}

#[test]
fn pax_sparse_files_1_0_and_0_1() {
    let size: u64 = 3 << 20;
    let mut t = TarWriter::new();
    // 1.0: the map leads the data, padded to 512 bytes.
    let mut stored = format!("2\n0\n4\n{}\n3\n", size - 3).into_bytes();
    stored.resize(512, 0);
    stored.extend_from_slice(b"headEND");
    let real = size.to_string();
    t.pax(&[
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", b"var/sparse-1.0"),
        ("GNU.sparse.realsize", real.as_bytes()),
    ]);
    t.file("var/GNUSparseFile.123/sparse-1.0", &stored);
    // 0.1: the map is a record.
    let map = format!("{},2", 1 << 20);
    t.pax(&[
        ("GNU.sparse.size", real.as_bytes()),
        ("GNU.sparse.numblocks", b"1"),
        ("GNU.sparse.map", map.as_bytes()),
        ("GNU.sparse.name", b"var/sparse-0.1"),
    ]);
    t.file("var/GNUSparseFile.124/sparse-0.1", b"mm");
    let f = flat(vec![t]);
    assert!(!f.exists("var/GNUSparseFile.123"));
    let a = f.content("var/sparse-1.0");
    assert_eq!(a.len() as u64, size);
    assert_eq!(&a[..4], b"head");
    assert_eq!(&a[a.len() - 3..], b"END");
    assert!(a[4..a.len() - 3].iter().all(|&b| b == 0));
    let b = f.content("var/sparse-0.1");
    assert_eq!(b.len() as u64, size);
    assert_eq!(&b[1 << 20..(1 << 20) + 2], b"mm");
    let InodeKind::File(d) = &f.inode("var/sparse-0.1").kind else {
        panic!()
    };
    assert_eq!(d.allocated_blocks(), 1);

    // A map that runs past the file is refused.
    let mut t = TarWriter::new();
    t.pax(&[
        ("GNU.sparse.size", b"10"),
        ("GNU.sparse.map", b"5,10"),
        ("GNU.sparse.name", b"x"),
    ]);
    t.file("GNUSparseFile.1/x", b"0123456789");
    let (_, _, err) = entry_error(vec![t]);
    assert!(matches!(err, EntryError::BadSparse { .. }), "{err}");
}

#[test]
fn docker_archive_flattens_with_sniffed_media_types() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("save.tar");
    let img = TestImage::new(vec![
        TestLayer::new(
            layer(|t| {
                t.file("etc/a", b"a");
            })
            .finish(),
            Compression::None,
        ),
        TestLayer::new(
            layer(|t| {
                t.file("etc/.wh.a", b"").file("etc/b", b"b");
            })
            .finish(),
            Compression::Gzip,
        ),
    ]);
    let (files, w) = img.docker_files("app:latest");
    crate::oci::testimg::write_tar(&file, &files);
    let source: ImageSource = format!("docker-archive:{}:app:latest", file.display())
        .parse()
        .unwrap();
    let image = Image::open(&source).unwrap();
    let sink = SharedSink::default();
    let mut b = Ext4Builder::new(sink.clone(), Ext4Options::default()).unwrap();
    let (tree, reports) = flatten_layers(&image, &mut b).unwrap();
    let f = Flat {
        tree,
        image: sink,
        reports,
    };
    assert!(!f.exists("etc/a"));
    assert_eq!(f.content("etc/b"), b"b");
    assert_eq!(
        f.reports[0].media_type,
        "application/vnd.oci.image.layer.v1.tar"
    );
    assert_eq!(
        f.reports[1].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(f.reports[1].digest, w.layers[1]);
    assert_eq!(f.reports[1].diff_id, w.diff_ids[1]);
}

#[test]
fn old_style_directory_entry_is_a_directory() {
    let f = flat(vec![layer(|t| {
        t.raw(header(b"olddir/", tar::EntryType::Regular, 0o750, 0), b"");
        t.file("olddir/f", b"x");
    })]);
    assert!(f.inode("olddir").is_dir());
    assert_eq!(f.inode("olddir").meta.mode, 0o750);
    assert_eq!(f.content("olddir/f"), b"x");
}

#[test]
fn entries_below_lower_symlinks_land_where_they_point() {
    let f = flat(vec![
        layer(|t| {
            t.file("usr/lib/libc.so", b"libc").symlink("lib", "usr/lib");
            t.symlink("abs", "/usr/lib").symlink("esc", "../../..");
        }),
        layer(|t| {
            t.file("lib/libnew.so", b"new lib");
            t.hardlink("abs/libc-hl", "lib/libc.so");
            t.file("esc/etc/passwd", b"inside");
            t.file("lib/.wh.libc.so", b"");
        }),
    ]);
    assert!(matches!(f.inode("lib").kind, InodeKind::Symlink { .. }));
    assert_eq!(f.content("usr/lib/libnew.so"), b"new lib");
    assert_eq!(f.content("usr/lib/libc-hl"), b"libc");
    assert!(!f.exists("usr/lib/libc.so"));
    assert_eq!(f.content("etc/passwd"), b"inside");
    assert!(matches!(f.inode("esc").kind, InodeKind::Symlink { .. }));
}
