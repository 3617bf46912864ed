//! Directory entries: a directory of many names over many blocks, with
//! every file type and names of every length; the reader lists them in
//! the writer's order, each with its inode and type.

use super::*;
use crate::ext4::{FileType, ROOT_INO};

/// The kinds of inode, with the `EXT4_FT_*` code an entry for each
/// carries (written out here, not taken from the format crate).
fn kind(i: usize) -> (InodeKind, u8, FileType) {
    match i % 7 {
        0 => (InodeKind::File(FileData::default()), 1, FileType::Regular),
        1 => (
            InodeKind::Dir {
                entries: Default::default(),
            },
            2,
            FileType::Directory,
        ),
        2 => (
            InodeKind::CharDev { major: 1, minor: 3 },
            3,
            FileType::CharDevice,
        ),
        3 => (
            InodeKind::BlockDev { major: 8, minor: 1 },
            4,
            FileType::BlockDevice,
        ),
        4 => (InodeKind::Fifo, 5, FileType::Fifo),
        5 => (InodeKind::Socket, 6, FileType::Socket),
        _ => (
            InodeKind::Symlink {
                target: b"t".to_vec(),
            },
            7,
            FileType::Symlink,
        ),
    }
}

/// Name `i`: 1 to 255 bytes, any byte but `/` and NUL.
fn name(i: usize) -> Vec<u8> {
    let len = 1 + (i * 37) % 255;
    let mut n = format!("{i:03}").into_bytes();
    n.extend(
        (0..)
            .map(|j: usize| [b'x', 0xFF, b' ', b'\n', b'.'][j % 5])
            .take(len),
    );
    n.truncate(len.max(3));
    n
}

/// Blocks a directory of these names takes, `.` and `..` first: records
/// of 8 bytes plus the name, in 4-byte steps, never across a block.
fn dir_blocks(names: &[Vec<u8>]) -> u64 {
    let (mut blocks, mut used) = (1, 24);
    for n in names {
        let rec = (8 + n.len()).next_multiple_of(4);
        if used + rec > 4096 {
            blocks += 1;
            used = 0;
        }
        used += rec;
    }
    blocks
}

#[test]
fn directory_entries_many_blocks_every_type() {
    const N: usize = 400;
    let mut img = Image::in_memory(opts(0, 0));
    let mut names: Vec<Vec<u8>> = (0..N).map(name).collect();
    for (i, n) in names.iter().enumerate() {
        let (kind, _, _) = kind(i);
        // Not every name is UTF-8: insert by bytes.
        let parts = [&b"big"[..], n];
        img.tree
            .insert(&parts, kind, meta(0o644, i as u32, 0, 0, 0))
            .unwrap();
    }
    img.link("big/hard-link", "big/000");
    img.node(
        "empty",
        InodeKind::Dir {
            entries: Default::default(),
        },
        meta(0o755, 0, 0, 0, 0),
    );
    let (meta, _, _) = img.open();

    let big = ino_at(&meta, "/big");
    let inode = meta.inode(big).unwrap();
    names.push(b"hard-link".to_vec());
    let blocks = dir_blocks(&names);
    assert!(blocks >= 10, "{blocks} blocks");
    assert_eq!(inode.size, blocks * 4096);
    assert_eq!(inode.blocks, blocks * 8);
    // 400 / 7 subdirectories, rounded up for i % 7 == 1.
    assert_eq!(inode.links, 2 + (N as u16 + 5) / 7);

    // On disk in name order, `.` and `..` left out by the reader.
    let dir = meta.read_dir(big).unwrap();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(dir.entries.len(), sorted.len());
    for (i, (e, n)) in dir.entries.iter().zip(&sorted).enumerate() {
        assert!(e.name == *n, "entry {i}: {:?}", String::from_utf8_lossy(n));
    }

    let mut inos = std::collections::BTreeSet::new();
    for e in &dir.entries {
        let i = if e.name == b"hard-link" {
            0
        } else {
            names.iter().position(|n| *n == e.name).unwrap()
        };
        let (_, code, ty) = kind(i);
        let shown = String::from_utf8_lossy(&e.name);
        assert_eq!(e.file_type, code, "{shown}");
        let target = meta.inode(e.ino).unwrap();
        assert_eq!(target.file_type(), Some(ty), "{shown}");
        assert_eq!(target.dirent_type(), code, "{shown}");
        assert_eq!(target.uid, i as u32, "{shown}");
        assert_eq!(dir.get(&e.name), Some(e), "{shown}");
        assert_eq!(meta.lookup(big, &e.name).unwrap().as_ref(), Some(e));
        inos.insert(e.ino);
    }
    // One inode per name but the hard link.
    assert_eq!(inos.len(), N);
    let zero = dir.get(b"000").unwrap().ino;
    assert_eq!(dir.get(b"hard-link").unwrap().ino, zero);
    assert_eq!(meta.inode(zero).unwrap().links, 2);

    // An empty directory: one block holding `.` and `..` only.
    let empty = ino_at(&meta, "/empty");
    assert!(meta.read_dir(empty).unwrap().entries.is_empty());
    assert_eq!(meta.inode(empty).unwrap().size, 4096);
    let root = meta.read_dir(ROOT_INO).unwrap();
    let top: Vec<(&[u8], u8)> = root
        .entries
        .iter()
        .map(|e| (&e.name[..], e.file_type))
        .collect();
    assert_eq!(top, [(&b"big"[..], 2), (b"empty", 2), (b"lost+found", 2)]);
}
