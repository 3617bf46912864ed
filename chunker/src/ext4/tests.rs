//! Whole-writer tests on in-memory images: what dumpe2fs reads from the
//! superblock, determinism, and the errors for trees ext4 cannot hold.
//! The e2fsck / ext4-view / kernel checks live in `tests/ext4_image.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use super::*;
use crate::sink::VecSink;
use crate::tree::{InodeKind, Metadata};

fn opts() -> Ext4Options {
    Ext4Options {
        chunk_size: 64 * 1024,
        free_bytes: 1 << 20,
        spare_inodes: 16,
    }
}

fn path(s: &str) -> Vec<&[u8]> {
    s.split('/').map(str::as_bytes).collect()
}

fn build(tree: &Tree, files: &[(&str, &[u8])]) -> Result<(Vec<u8>, Ext4Summary), Ext4Error> {
    let mut tree = tree.clone();
    let mut b = Ext4Builder::new(VecSink::default(), opts())?;
    for (name, data) in files {
        let fd = b.write_file(&mut &data[..], data.len() as u64)?;
        tree.insert(
            &path(name),
            InodeKind::File(fd),
            Metadata {
                mode: 0o644,
                ..Metadata::default()
            },
        )
        .unwrap();
    }
    let (sink, summary) = b.finish(&tree)?;
    Ok((sink.bytes, summary))
}

fn dumpe2fs(image: &[u8]) -> Option<BTreeMap<String, String>> {
    let tool = Path::new("/usr/sbin/dumpe2fs");
    if !tool.exists() {
        eprintln!("SKIP dumpe2fs check: /usr/sbin/dumpe2fs is not installed");
        return None;
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), image).unwrap();
    let out = Command::new(tool)
        .arg("-h")
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    Some(
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect(),
    )
}

#[test]
fn superblock_as_dumpe2fs_reads_it() {
    let (image, summary) = build(&Tree::new(), &[("a", b"hello"), ("b", &[1; 10_000])]).unwrap();
    assert_eq!(image.len() as u64, summary.size);
    assert_eq!(summary.size % (64 * 1024), 0);
    // 10 reserved inodes, root is among them, lost+found, a, b.
    assert_eq!(summary.inodes_used, 13);
    let Some(f) = dumpe2fs(&image) else { return };
    assert_eq!(
        f["Filesystem features"],
        "ext_attr sparse_super2 filetype extent flex_bg large_file huge_file dir_nlink extra_isize"
    );
    assert_eq!(f["Block size"], "4096");
    assert_eq!(f["Inode size"], "256");
    assert_eq!(f["Required extra isize"], "32");
    assert_eq!(f["Desired extra isize"], "32");
    assert_eq!(f["First inode"], "11");
    assert_eq!(f["Reserved block count"], "0");
    assert_eq!(f["Filesystem state"], "clean");
    assert_eq!(f["Last write time"], "Thu Jan  1 00:00:00 1970");
    assert_eq!(f["Filesystem flags"], "signed_directory_hash");
    assert_eq!(f["Default directory hash"], "half_md4");
    assert_eq!(f["Maximum mount count"], "-1");
    assert_eq!(f["Flex block group size"], "16");
    assert_eq!(f["Block count"], (summary.size / 4096).to_string());
    let free: u64 = f["Free blocks"].parse().unwrap();
    assert_eq!(free, summary.size / 4096 - summary.blocks_used);
    let inodes: u64 = f["Inode count"].parse().unwrap();
    let free_inodes: u64 = f["Free inodes"].parse().unwrap();
    assert_eq!(inodes - free_inodes, 13);
}

#[test]
fn deterministic_bytes_and_uuid() {
    let mut tree = Tree::new();
    tree.insert(
        &path("d/l"),
        InodeKind::Symlink {
            target: vec![b'x'; 100],
        },
        Metadata::default(),
    )
    .unwrap();
    let (one, _) = build(&tree, &[("f", b"data")]).unwrap();
    let (two, _) = build(&tree, &[("f", b"data")]).unwrap();
    assert!(one == two);
    let (three, _) = build(&tree, &[("g", b"data")]).unwrap();
    // The UUID (superblock offset 0x68) follows the metadata.
    let uuid = |img: &[u8]| img[1024 + 0x68..1024 + 0x78].to_vec();
    assert_ne!(uuid(&one), uuid(&three));
    assert_eq!(uuid(&one)[6] >> 4, 8, "a version 8 UUID");

    // Same metadata, different bytes: the identity tells them apart.
    let with_identity = |id: &[u8]| {
        let mut b = Ext4Builder::new(VecSink::default(), opts()).unwrap();
        b.identify(id);
        b.finish(&tree).unwrap().0.bytes
    };
    let (a, b) = (
        with_identity(b"layer sha256:aa"),
        with_identity(b"layer sha256:bb"),
    );
    assert_ne!(uuid(&a), uuid(&b));
    assert_eq!(a[..1024 + 0x68], b[..1024 + 0x68]);
    assert!(with_identity(b"layer sha256:aa") == a);
}

fn meta_with(name: &str, value: &[u8]) -> Metadata {
    let mut m = Metadata::default();
    m.xattrs.insert(name.as_bytes().to_vec(), value.to_vec());
    m
}

#[test]
fn malformed_acl_xattrs_are_refused_by_name() {
    let mut tree = Tree::new();
    tree.insert(
        &path("etc/acl"),
        InodeKind::Fifo,
        meta_with("system.posix_acl_access", b"\x01\0\0\0"),
    )
    .unwrap();
    let err = build(&tree, &[]).unwrap_err();
    assert!(
        matches!(&err, Ext4Error::Acl { path, name, .. }
            if path == "/etc/acl" && name == "system.posix_acl_access"),
        "{err}"
    );
    assert!(err.to_string().contains("version 1"), "{err}");
}

#[test]
fn oversized_xattrs_are_an_error() {
    let mut tree = Tree::new();
    tree.insert(
        &path("x"),
        InodeKind::Fifo,
        meta_with("user.huge", &[1; 5000]),
    )
    .unwrap();
    let err = build(&tree, &[]).unwrap_err();
    assert!(
        matches!(&err, Ext4Error::Xattr { path, .. } if path == "/x"),
        "{err}"
    );
    let mut tree = Tree::new();
    tree.insert(
        &path("y"),
        InodeKind::Fifo,
        meta_with("nonsense.name", b"v"),
    )
    .unwrap();
    assert!(matches!(build(&tree, &[]), Err(Ext4Error::Xattr { .. })));
}

#[test]
fn entries_ext4_cannot_hold_are_errors_naming_the_path() {
    let cases: Vec<(&str, InodeKind)> = vec![
        (
            "dev/big",
            InodeKind::CharDev {
                major: 4096,
                minor: 0,
            },
        ),
        (
            "dev/bigminor",
            InodeKind::BlockDev {
                major: 1,
                minor: 1 << 20,
            },
        ),
        (
            "long-link",
            InodeKind::Symlink {
                target: vec![b'a'; 4096],
            },
        ),
        ("empty-link", InodeKind::Symlink { target: Vec::new() }),
    ];
    for (name, kind) in cases {
        let mut tree = Tree::new();
        tree.insert(&path(name), kind, Metadata::default()).unwrap();
        let err = build(&tree, &[]).unwrap_err();
        assert!(
            matches!(&err, Ext4Error::BadEntry { path, .. } if path == &format!("/{name}")),
            "{name}: {err}"
        );
    }
    let long = "n".repeat(256);
    let mut tree = Tree::new();
    tree.insert(
        &path(&format!("d/{long}")),
        InodeKind::Fifo,
        Metadata::default(),
    )
    .unwrap();
    assert!(matches!(build(&tree, &[]), Err(Ext4Error::BadEntry { .. })));
}

#[test]
fn too_many_groups_for_the_header_chunk() {
    // 64 KiB chunks hold 15 descriptor blocks: 1920 groups, 240 GiB.
    let opts = Ext4Options {
        free_bytes: 300 << 30,
        ..opts()
    };
    let b = Ext4Builder::new(VecSink::default(), opts).unwrap();
    assert!(matches!(
        b.finish(&Tree::new()),
        Err(Ext4Error::TooLarge(_))
    ));
}

#[test]
fn blocks_claimed_twice_are_an_error() {
    let mut b = Ext4Builder::new(VecSink::default(), opts()).unwrap();
    let fd = b.write_file(&mut &[1u8; 5000][..], 5000).unwrap();
    let mut tree = Tree::new();
    // A copy of the same FileData instead of a hard link.
    tree.insert(&path("a"), InodeKind::File(fd.clone()), Metadata::default())
        .unwrap();
    tree.insert(&path("b"), InodeKind::File(fd), Metadata::default())
        .unwrap();
    let err = b.finish(&tree).unwrap_err();
    assert!(
        matches!(&err, Ext4Error::BadEntry { path, reason } if path == "/b" && reason.contains("/a")),
        "{err}"
    );
}
