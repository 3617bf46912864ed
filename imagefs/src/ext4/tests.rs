//! The reader over whole images from our converter: names, inode numbers,
//! link counts, device numbers and xattrs come back as they went in; and
//! no single corrupted byte in anything the reader reads makes it panic.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};

use ::tests::cases::{acl_xattr, capability};
use ::tests::imagegen::{Entry, Image, Layer};
use chunker::ext4::Ext4Options;
use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;

use super::*;

/// An image held in memory; records the ranges read when asked to.
pub(super) struct Mem {
    bytes: Vec<u8>,
    reads: Mutex<Option<Vec<(u64, usize)>>>,
}

impl BlockDevice for Mem {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Some(r) = self.reads.lock().unwrap().as_mut() {
            r.push((offset, buf.len()));
        }
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        match self.bytes.get(start..start + buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end")),
        }
    }

    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

pub(super) fn mem(bytes: Vec<u8>) -> Arc<Mem> {
    Arc::new(Mem {
        bytes,
        reads: Mutex::new(None),
    })
}

/// Path → the xattrs put on it.
pub(super) type Want = BTreeMap<&'static str, Vec<(String, Vec<u8>)>>;

pub(super) fn sample() -> (Image, Want) {
    let access = acl_xattr(&[
        (1, 6, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    let default = acl_xattr(&[
        (1, 7, u32::MAX),
        (4, 5, u32::MAX),
        (8, 5, 42),
        (0x10, 5, u32::MAX),
        (0x20, 5, u32::MAX),
    ]);
    let mut many = Entry::file("etc/many", "m");
    let mut many_want = Vec::new();
    for i in 0..24 {
        let v = vec![i as u8; 40 + i];
        many = many.xattr(&format!("user.attr{i:02}"), &v);
        many_want.push((format!("user.attr{i:02}"), v));
    }
    let mut want = Want::new();
    want.insert("/etc/many", many_want);
    want.insert(
        "/bin/ping",
        vec![
            ("security.capability".into(), capability(13)),
            ("trusted.origin".into(), b"t\n".to_vec()),
            ("user.bin".into(), b"\0\n\xff\n".to_vec()),
        ],
    );
    want.insert(
        "/etc/acl",
        vec![("system.posix_acl_access".into(), access.clone())],
    );
    want.insert(
        "/shared",
        vec![("system.posix_acl_default".into(), default.clone())],
    );
    let entries = vec![
        Entry::file("bin/ping", "ping")
            .xattr("security.capability", capability(13))
            .xattr("trusted.origin", "t\n")
            .xattr("user.bin", b"\0\n\xff\n"),
        Entry::hardlink("bin/ping2", "bin/ping"),
        Entry::file("etc/acl", "a").xattr("system.posix_acl_access", &access),
        Entry::dir("shared").xattr("system.posix_acl_default", &default),
        many,
        Entry::char_dev("dev/null", 1, 3),
        Entry::block_dev("dev/big", 300, 70000),
        Entry::symlink("etc/link", "many"),
        Entry::symlink("etc/slow", "x/".repeat(60)),
        Entry::file("owned", "0123456789")
            .owner(70000, 0x0002_0001)
            .mode(0o4751)
            .mtime(1_700_000_000, 123_456_789),
        Entry::file("future", "f").mtime(5_000_000_000, 999_999_999),
        Entry::fifo("fifo"),
    ];
    (Image::new(vec![Layer::new(entries)]), want)
}

pub(super) fn flatten(image: &Image) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    image.write_oci_layout(&layout, "t").unwrap();
    let src: ImageSource = format!("oci:{}:t", layout.display()).parse().unwrap();
    let path = dir.path().join("image.ext4");
    let opts = FlattenOptions {
        ext4: Ext4Options {
            chunk_size: 64 * 1024,
            free_bytes: 0,
            spare_inodes: 0,
        },
        ..FlattenOptions::default()
    };
    flatten_to_file(&src, &path, &opts).expect("flatten");
    std::fs::read(path).unwrap()
}

fn names(x: &[Xattr]) -> Vec<(String, Vec<u8>)> {
    x.iter()
        .map(|x| (String::from_utf8(x.name.clone()).unwrap(), x.value.clone()))
        .collect()
}

#[test]
fn a_converted_image_reads_back() {
    let (image, want) = sample();
    let meta = Ext4Meta::open(mem(flatten(&image))).unwrap();
    for (path, attrs) in &want {
        let ino = meta.resolve(path.as_bytes()).unwrap().unwrap();
        let mut got = names(&meta.xattrs(ino).unwrap());
        got.sort();
        assert_eq!(&got, attrs, "{path}");
    }
    // Many attributes: some in the inode, the rest in the block.
    let many = meta.resolve(b"/etc/many").unwrap().unwrap();
    let inode = meta.inode(many).unwrap();
    assert!(inode.ibody.is_some() && inode.xattr_block != 0);

    let ping = meta.resolve(b"bin/ping").unwrap().unwrap();
    assert_eq!(meta.resolve(b"/bin/./ping2").unwrap(), Some(ping));
    assert_eq!(meta.inode(ping).unwrap().links, 2);
    assert_eq!(meta.resolve(b"/bin/../etc/many").unwrap(), Some(many));
    assert_eq!(meta.resolve(b"/").unwrap(), Some(ROOT_INO));
    assert_eq!(meta.resolve(b"/bin/nothing").unwrap(), None);
    assert!(matches!(
        meta.resolve(b"/bin/ping/x"),
        Err(MetaError::NotADirectory(i)) if i == ping
    ));
    let null = meta.resolve(b"/dev/null").unwrap().unwrap();
    assert_eq!(meta.inode(null).unwrap().rdev(), 0x0103);
    let big = meta.resolve(b"/dev/big").unwrap().unwrap();
    assert_eq!(
        meta.inode(big).unwrap().rdev(),
        (70000 & 0xFF) | (300 << 8) | ((70000 & !0xFF) << 12)
    );
    // The root: "." and ".." are left out, the rest is there with types.
    let root = meta.read_dir(ROOT_INO).unwrap();
    let mut top: Vec<_> = root
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.file_type))
        .collect();
    top.sort();
    assert_eq!(
        top,
        [
            (b"bin".to_vec(), 2),
            (b"dev".to_vec(), 2),
            (b"etc".to_vec(), 2),
            (b"fifo".to_vec(), 5),
            (b"future".to_vec(), 1),
            (b"lost+found".to_vec(), 2),
            (b"owned".to_vec(), 1),
            (b"shared".to_vec(), 2)
        ]
    );
    assert_eq!(meta.inode(ROOT_INO).unwrap().links, 7);
}

#[test]
fn source_errors_name_the_range() {
    let (image, _) = sample();
    let mut bytes = flatten(&image);
    // Cut the image after its first 8 KiB: the superblock reads, the
    // inode table does not.
    bytes.truncate(8192);
    let meta = Ext4Meta::open(mem(bytes)).unwrap();
    let e = meta.read_dir(ROOT_INO).unwrap_err();
    assert!(matches!(e, MetaError::Read { .. }), "{e}");
    assert!(e.to_string().starts_with("reading image bytes "), "{e}");
    assert!(matches!(
        Ext4Meta::open(mem(vec![0; 100])),
        Err(MetaError::Read { .. })
    ));
    assert!(Ext4Meta::open(mem(vec![0; 4096])).unwrap_err().is_corrupt());
    let meta = Ext4Meta::open(mem(flatten(&sample().0))).unwrap();
    assert!(meta.inode(0).is_err());
    assert!(meta.inode(u32::MAX).is_err());
}

/// Reads everything: every path, inode and xattr list.
fn walk_all(meta: &Ext4Meta) -> Result<usize, MetaError> {
    let mut seen = HashSet::new();
    let mut todo = vec![ROOT_INO];
    while let Some(dir) = todo.pop() {
        if !seen.insert(dir) {
            continue;
        }
        meta.xattrs(dir)?;
        for e in meta.read_dir(dir)?.entries.clone() {
            let inode = meta.inode(e.ino)?;
            meta.xattrs(e.ino)?;
            inode.rdev();
            if inode.file_type() == Some(FileType::Symlink) {
                meta.read_link(e.ino)?;
            }
            if inode.is_dir() {
                todo.push(e.ino);
            }
        }
    }
    Ok(seen.len())
}

#[test]
fn no_single_corrupt_byte_panics_or_hangs() {
    let (image, _) = sample();
    let bytes = flatten(&image);
    let source = mem(bytes.clone());
    *source.reads.lock().unwrap() = Some(Vec::new());
    let meta = Ext4Meta::open(source.clone()).unwrap();
    assert!(walk_all(&meta).unwrap() >= 6);
    let mut offsets: Vec<u64> = source
        .reads
        .lock()
        .unwrap()
        .take()
        .unwrap()
        .iter()
        .flat_map(|&(o, n)| o..o + n as u64)
        .collect();
    offsets.sort();
    offsets.dedup();
    // Every byte the walk read, set to three other values; each walk must
    // end, with a result or an error.
    let mut errors = 0;
    for &at in &offsets {
        let old = bytes[at as usize];
        for new in [old ^ 0xFF, old ^ 0x01, old.wrapping_add(0x40)] {
            let mut bad = bytes.clone();
            bad[at as usize] = new;
            if let Ok(m) = Ext4Meta::open(mem(bad)) {
                errors += usize::from(walk_all(&m).is_err());
            } else {
                errors += 1;
            }
        }
    }
    assert!(
        errors > 0,
        "no corruption among {} bytes was noticed",
        offsets.len()
    );
}

#[test]
fn modes_owners_times_and_sizes_read_back() {
    let meta = Ext4Meta::open(mem(flatten(&sample().0))).unwrap();
    let inode = |p: &str| {
        meta.inode(meta.resolve(p.as_bytes()).unwrap().unwrap())
            .unwrap()
    };
    let owned = inode("/owned");
    assert_eq!(owned.mode, 0o104751);
    assert_eq!(owned.file_type(), Some(FileType::Regular));
    assert_eq!((owned.uid, owned.gid), (70000, 0x0002_0001));
    let t = Timestamp {
        secs: 1_700_000_000,
        nsecs: 123_456_789,
    };
    // The converter sets every time from the layer's mtime.
    assert_eq!((owned.atime, owned.mtime, owned.ctime), (t, t, t));
    assert_eq!(owned.crtime, Some(t));
    assert_eq!(owned.size, 10);
    // One 4 KiB block, in 512-byte units.
    assert_eq!(owned.blocks, 8);
    // Past 2038: an epoch bit (times before 1970 are in the unit tests:
    // the image generator does not write them).
    let future = inode("/future").mtime;
    assert_eq!((future.secs, future.nsecs), (5_000_000_000, 999_999_999));
    assert_eq!(inode("/fifo").file_type(), Some(FileType::Fifo));
    assert_eq!(inode("/fifo").blocks, 0);
    assert_eq!(inode("/dev/null").file_type(), Some(FileType::CharDevice));
    assert_eq!(inode("/dev/big").file_type(), Some(FileType::BlockDevice));
    assert_eq!(inode("/etc/link").file_type(), Some(FileType::Symlink));
    let root = inode("/");
    assert!(root.is_dir() && root.blocks >= 8);
    // The superblock's counts.
    let st = meta.statfs();
    assert_eq!(st.block_size, 4096);
    assert!(st.blocks > 0 && st.free_blocks <= st.blocks);
    assert!(st.avail_blocks <= st.free_blocks);
    assert!(st.inodes >= 20 && st.free_inodes < st.inodes);
}

#[test]
fn symlink_targets_fast_and_slow() {
    let meta = Ext4Meta::open(mem(flatten(&sample().0))).unwrap();
    let ino = |p: &[u8]| meta.resolve(p).unwrap().unwrap();
    let fast = ino(b"/etc/link");
    assert_eq!(meta.read_link(fast).unwrap(), b"many");
    assert_eq!(meta.inode(fast).unwrap().blocks, 0);
    let slow = ino(b"/etc/slow");
    assert_eq!(meta.read_link(slow).unwrap(), "x/".repeat(60).as_bytes());
    assert_eq!(meta.inode(slow).unwrap().blocks, 8);
    assert!(matches!(
        meta.read_link(ino(b"/owned")),
        Err(MetaError::NotASymlink(_))
    ));
}

#[test]
fn corrupt_symlink_sizes_are_errors() {
    let bytes = flatten(&sample().0);
    let meta = Ext4Meta::open(mem(bytes.clone())).unwrap();
    let offset_of = |p: &[u8]| {
        let ino = meta.resolve(p).unwrap().unwrap();
        inode_offset(&meta, ino)
    };
    for (path, size) in [
        (&b"/etc/link"[..], 0u32),
        (b"/etc/link", 3),
        (b"/etc/link", 60),
        (b"/etc/slow", 0),
        (b"/etc/slow", 4096),
    ] {
        let at = offset_of(path) as usize;
        let mut bad = bytes.clone();
        bad[at + 4..at + 8].copy_from_slice(&size.to_le_bytes());
        let m = Ext4Meta::open(mem(bad)).unwrap();
        let ino = m.resolve(path).unwrap().unwrap();
        let e = m.read_link(ino).unwrap_err();
        assert!(e.is_corrupt(), "{size}: {e}");
    }
}

/// Where inode `ino` is in the image.
fn inode_offset(meta: &Ext4Meta, ino: u32) -> u64 {
    let g = &meta.geom;
    let group = (ino - 1) / g.inodes_per_group;
    let table = meta.inode_table(group).unwrap();
    table * u64::from(g.block_size)
        + u64::from((ino - 1) % g.inodes_per_group) * u64::from(g.inode_size)
}

#[test]
fn threads_share_one_reader() {
    fn shared<T: Send + Sync>(_: &T) {}
    let meta = Ext4Meta::open(mem(flatten(&sample().0))).unwrap();
    shared(&meta);
    let alone = walk_all(&Ext4Meta::open(mem(flatten(&sample().0))).unwrap()).unwrap();
    std::thread::scope(|s| {
        let walks: Vec<_> = (0..4).map(|_| s.spawn(|| walk_all(&meta))).collect();
        for w in walks {
            assert_eq!(w.join().unwrap().unwrap(), alone);
        }
    });
}
