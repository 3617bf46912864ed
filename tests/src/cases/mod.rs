//! The generated test images, each with the facts its flattened tree must
//! show (an expected model checked independently of the umoci reference).

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

use crate::imagegen::{Compression, Entry, Image, Layer};
use crate::treecheck::{FileKind, Listing};

mod gnu_tar;

pub use gnu_tar::{GNU_SPARSE_SIZE, gnu_sparse_runs, gnu_tar_sparse, gnu_tar_tree};

/// A fact about the flattened tree.
#[derive(Clone, Debug)]
pub enum Expect {
    /// The path does not exist.
    Absent(&'static str),
    /// A regular file with exactly this content.
    Content(String, Vec<u8>),
    /// A regular file with this SHA-256 (hex) and size.
    Sha256(String, String, u64),
    /// The path has this type.
    Kind(&'static str, FileKind),
    /// Permission bits (with setuid/setgid/sticky).
    Mode(&'static str, u32),
    /// Owner and group.
    Owner(&'static str, u32, u32),
    /// mtime seconds and nanoseconds.
    Mtime(&'static str, i64, u32),
    /// An extended attribute's value.
    Xattr(&'static str, &'static str, Vec<u8>),
    /// Device numbers.
    Rdev(&'static str, u32, u32),
    /// A symlink target.
    Target(&'static str, Vec<u8>),
    /// These paths are one inode (and no other path is).
    Linked(Vec<&'static str>),
    /// Not hard-linked to anything.
    NotLinked(&'static str),
    /// A directory with exactly this many entries.
    DirSize(&'static str, usize),
}

/// One generated image and what it must flatten to.
pub struct Case {
    /// Short name, used for file names.
    pub name: &'static str,
    /// The image.
    pub image: Image,
    /// Paths whose metadata the OCI rules leave to the implementation
    /// (implicit parent directories and the root): mode/owner/mtime ignored
    /// when comparing with the umoci reference.
    pub unspecified: BTreeSet<String>,
    /// Facts checked against every listing.
    pub expect: Vec<Expect>,
}

/// A version-2 `security.capability` value granting `cap` (bit number) as
/// effective and permitted.
pub fn capability(cap: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(0x0200_0001u32.to_le_bytes()); // VFS_CAP_REVISION_2 | EFFECTIVE
    v.extend((1u32 << cap).to_le_bytes()); // permitted, low word
    v.extend(0u32.to_le_bytes()); // inheritable, low word
    v.extend(0u32.to_le_bytes()); // permitted, high word
    v.extend(0u32.to_le_bytes()); // inheritable, high word
    v
}

/// A POSIX ACL in the xattr format `getxattr` returns: version 2, then
/// (tag, perm, id) entries, little-endian.
pub fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

/// [`pattern`] with newline bytes replaced (binary PAX values with
/// newlines have their own case, `xattr_newline`).
pub fn pattern_no_newline(len: usize, seed: u8) -> Vec<u8> {
    pattern(len, seed)
        .into_iter()
        .map(|b| if b == b'\n' { b'\x0b' } else { b })
        .collect()
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = Sha256::digest([seed]).to_vec();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(&block).to_vec();
    }
    out.truncate(len);
    out
}

fn long(prefix: &str, len: usize) -> String {
    let mut s = prefix.to_string();
    while s.len() < len {
        s.push(char::from(b'a' + (s.len() % 26) as u8));
    }
    s
}

fn set(paths: &[&str]) -> BTreeSet<String> {
    paths.iter().map(|s| s.to_string()).collect()
}

/// Whiteouts, opaque directories, hard links, replacements, implicit
/// parents, symlinks, devices, FIFOs, owners, mode bits, sub-second mtimes,
/// xattrs and long names over three layers (plain, gzip, zstd).
pub fn changeset() -> Case {
    // No newline bytes here: binary values with newlines have their own
    // case (`xattr_newline`), so that one failure does not hide the rest.
    let big_xattr = pattern_no_newline(2000, 7);
    let slow_target = long("/usr/share/slow/target/", 150);
    let pax_name = long("long/pax-", 180);
    let gnu_name = long("long/gnu-", 220);
    let gnu_link = long("long/gnulink-", 130);
    let l1 = vec![
        Entry::dir("etc").mtime(1_600_000_100, 111_111_111),
        Entry::file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"),
        Entry::file("etc/hidden", b"deleted by layer 2"),
        Entry::dir("opq"),
        Entry::file("opq/a", b"lower a"),
        Entry::dir("opq/sub"),
        Entry::file("opq/sub/b", b"lower b"),
        Entry::file("f2d", b"file that becomes a dir"),
        Entry::dir("d2f"),
        Entry::file("d2f/child", b"child of a dir that becomes a file"),
        Entry::dir("lower"),
        Entry::file("lower/target", b"lower-layer file, linked from above").owner(5, 6),
        Entry::dir("wdir"),
        Entry::file("wdir/x", b"x"),
        Entry::dir("wdir/y"),
        Entry::file("suid", b"#!/bin/sh\n").mode(0o4755),
        Entry::file("sgid", b"#!/bin/sh\n").mode(0o2755),
        Entry::dir("sticky").mode(0o1777),
        Entry::file("allbits", b"all mode bits").mode(0o7777),
        Entry::file("nobits", b"no mode bits").mode(0),
        Entry::file("owned", b"owned").owner(1000, 1001),
        Entry::file("bigid", b"big ids").owner(3_000_000, 4_000_000),
        Entry::dir("bigiddir").owner(2_097_152, 0xFFFF_FFFE),
        Entry::file("nanos", b"sub-second").mtime(1_600_000_123, 456_789_012),
        Entry::file("cap", b"\x7fELF")
            .mode(0o755)
            .xattr("security.capability", capability(10)),
        Entry::file("uxattr", b"x")
            .xattr("user.one", b"1")
            .xattr("user.two", b"second value"),
        Entry::file("bigxattr", b"y").xattr("user.big", &big_xattr),
        Entry::dir("xdir").xattr("user.dirattr", b"on a dir"),
        Entry::symlink("fastlink", b"etc/passwd"),
        Entry::symlink("slowlink", slow_target.as_bytes()),
        Entry::symlink("dangling", b"/nowhere/at/all"),
        Entry::dir("dev"),
        Entry::char_dev("dev/null", 1, 3).mode(0o666),
        Entry::block_dev("dev/sda", 8, 0).mode(0o660).owner(0, 6),
        Entry::block_dev("dev/bigdev", 259, 65_536).mode(0o600),
        Entry::fifo("fifo").mode(0o620),
        Entry::file("implicit/a/b/file", b"parents not listed"),
        Entry::dir("long"),
        Entry::file(pax_name.as_bytes(), b"pax long name"),
        Entry::file(gnu_name.as_bytes(), b"gnu long name").gnu_long_names(),
        Entry::hardlink(gnu_link.as_bytes(), gnu_name.as_bytes()).gnu_long_names(),
        Entry::file("empty", b""),
        Entry::dir("hl"),
        Entry::file("hl/a", b"linked twice, first name removed later").mode(0o640),
        Entry::hardlink("hl/b", b"hl/a"),
        Entry::hardlink("hl/c", b"hl/a"),
    ];
    let l2 = vec![
        Entry::whiteout("etc/hidden"),
        Entry::file("opq/new", b"added before the marker"),
        Entry::opaque("opq"),
        Entry::dir("f2d").mode(0o750),
        Entry::file("f2d/inner", b"inside the new dir"),
        Entry::file("d2f", b"now a file"),
        Entry::dir("upper"),
        Entry::hardlink("upper/link", b"lower/target"),
        Entry::whiteout("wdir"),
        Entry::dir("l2"),
        Entry::file("l2/orig", b"same-layer hard link"),
        Entry::hardlink("l2/link1", b"l2/orig"),
        Entry::file("etc/passwd", b"root:x:0:0::/root:/bin/bash\n"),
    ];
    let l3 = vec![
        Entry::whiteout("hl/a"),
        Entry::file("etc/new", b"third layer").mtime(1_600_000_300, 999_999_999),
    ];
    let image = Image::new(vec![
        Layer::new(l1),
        Layer::new(l2).compressed(Compression::Gzip),
        Layer::new(l3).compressed(Compression::Zstd),
    ]);
    use Expect::*;
    use FileKind as K;
    let expect = vec![
        Absent("/etc/hidden"),
        Absent("/etc/.wh.hidden"),
        Absent("/opq/a"),
        Absent("/opq/sub"),
        Absent("/opq/.wh..wh..opq"),
        Content("/opq/new".into(), b"added before the marker".to_vec()),
        DirSize("/opq", 1),
        Kind("/f2d", K::Dir),
        Mode("/f2d", 0o750),
        Content("/f2d/inner".into(), b"inside the new dir".to_vec()),
        Content("/d2f".into(), b"now a file".to_vec()),
        Absent("/d2f/child"),
        Linked(vec!["/lower/target", "/upper/link"]),
        Owner("/upper/link", 5, 6),
        Absent("/wdir"),
        Linked(vec!["/l2/link1", "/l2/orig"]),
        Content(
            "/etc/passwd".into(),
            b"root:x:0:0::/root:/bin/bash\n".to_vec(),
        ),
        Mode("/suid", 0o4755),
        Mode("/sgid", 0o2755),
        Mode("/sticky", 0o1777),
        Mode("/allbits", 0o7777),
        Mode("/nobits", 0),
        Owner("/owned", 1000, 1001),
        Owner("/bigid", 3_000_000, 4_000_000),
        Owner("/bigiddir", 2_097_152, 0xFFFF_FFFE),
        Mtime("/nanos", 1_600_000_123, 456_789_012),
        Mtime("/etc/new", 1_600_000_300, 999_999_999),
        Xattr("/cap", "security.capability", capability(10)),
        Xattr("/uxattr", "user.two", b"second value".to_vec()),
        Xattr("/bigxattr", "user.big", big_xattr),
        Xattr("/xdir", "user.dirattr", b"on a dir".to_vec()),
        Target("/fastlink", b"etc/passwd".to_vec()),
        Target("/slowlink", slow_target.into_bytes()),
        Target("/dangling", b"/nowhere/at/all".to_vec()),
        Rdev("/dev/null", 1, 3),
        Kind("/dev/null", K::CharDev),
        Rdev("/dev/sda", 8, 0),
        Kind("/dev/sda", K::BlockDev),
        Rdev("/dev/bigdev", 259, 65_536),
        Kind("/fifo", K::Fifo),
        Mode("/fifo", 0o620),
        Content("/implicit/a/b/file".into(), b"parents not listed".to_vec()),
        Kind("/implicit/a", K::Dir),
        Content(format!("/{pax_name}"), b"pax long name".to_vec()),
        Content(format!("/{gnu_name}"), b"gnu long name".to_vec()),
        Content(format!("/{gnu_link}"), b"gnu long name".to_vec()),
        Content("/empty".into(), Vec::new()),
        Absent("/hl/a"),
        Linked(vec!["/hl/b", "/hl/c"]),
        Content(
            "/hl/b".into(),
            b"linked twice, first name removed later".to_vec(),
        ),
        Mode("/hl/c", 0o640),
    ];
    Case {
        name: "changeset",
        image,
        unspecified: set(&["/", "/implicit", "/implicit/a", "/implicit/a/b"]),
        expect,
    }
}

/// Binary xattr values containing newline bytes (PAX records are
/// length-prefixed, so any byte may appear): a capability set whose
/// permitted word is 0x0a (CAP_DAC_OVERRIDE | CAP_FOWNER) and a user xattr
/// that is just "a\nb=c\n".
pub fn xattr_newline() -> Case {
    let mut cap = capability(1);
    cap[4] = 0x0a;
    let entries = vec![
        Entry::file("capnl", b"x").xattr("security.capability", &cap),
        Entry::file("usernl", b"y").xattr("user.nl", b"a\nb=c\n"),
    ];
    Case {
        name: "xattr-newline",
        image: Image::new(vec![Layer::new(entries)]),
        unspecified: set(&["/"]),
        expect: vec![
            Expect::Xattr("/capnl", "security.capability", cap),
            Expect::Xattr("/usernl", "user.nl", b"a\nb=c\n".to_vec()),
        ],
    }
}

/// More replacement rules: a hard-linked name replaced above, a directory
/// re-listed (merged, attributes from above), symlink↔directory swaps, a
/// whiteout of something that never existed, an opaque marker for a new
/// directory, an entry listed twice in one layer, and a deleted path
/// re-created as another type.
pub fn changeset2() -> Case {
    let l1 = vec![
        Entry::file("a", b"old a"),
        Entry::hardlink("b", b"a"),
        Entry::dir("merge").mode(0o755).mtime(1_600_000_001, 0),
        Entry::file("merge/keep", b"kept"),
        Entry::symlink("s2d", b"somewhere"),
        Entry::dir("d2s"),
        Entry::file("d2s/gone", b"gone"),
        Entry::file("gone", b"deleted, then back as a dir"),
        Entry::dir("dev2"),
        Entry::fifo("dev2/p2f"),
        Entry::file("dev2/f2c", b"becomes a char device"),
    ];
    let l2 = vec![
        Entry::file("a", b"new a").mode(0o600),
        Entry::dir("merge")
            .mode(0o700)
            .owner(3, 4)
            .mtime(1_600_000_002, 200),
        Entry::file("merge/added", b"added"),
        Entry::dir("s2d"),
        Entry::file("s2d/in", b"in"),
        Entry::symlink("d2s", b"/etc"),
        Entry::whiteout("never-existed"),
        Entry::whiteout("gone"),
        Entry::opaque("newdir"),
        Entry::file("newdir/f", b"f"),
        Entry::file("twice", b"first"),
        Entry::file("twice", b"second"),
        Entry::file("dev2/p2f", b"fifo became a file"),
        Entry::char_dev("dev2/f2c", 5, 1),
    ];
    let l3 = vec![Entry::dir("gone").mode(0o711)];
    use Expect::*;
    use FileKind as K;
    Case {
        name: "changeset2",
        image: Image::new(vec![
            Layer::new(l1).compressed(Compression::Zstd),
            Layer::new(l2),
            Layer::new(l3).compressed(Compression::Gzip),
        ]),
        // newdir is implied by its opaque marker, never listed.
        unspecified: set(&["/", "/newdir"]),
        expect: vec![
            Content("/a".into(), b"new a".to_vec()),
            Mode("/a", 0o600),
            NotLinked("/a"),
            Content("/b".into(), b"old a".to_vec()),
            NotLinked("/b"),
            Mode("/merge", 0o700),
            Owner("/merge", 3, 4),
            Mtime("/merge", 1_600_000_002, 200),
            Content("/merge/keep".into(), b"kept".to_vec()),
            Content("/merge/added".into(), b"added".to_vec()),
            Kind("/s2d", K::Dir),
            Content("/s2d/in".into(), b"in".to_vec()),
            Kind("/d2s", K::Symlink),
            Target("/d2s", b"/etc".to_vec()),
            Absent("/never-existed"),
            Absent("/.wh.never-existed"),
            Kind("/gone", K::Dir),
            Mode("/gone", 0o711),
            DirSize("/gone", 0),
            Kind("/newdir", K::Dir),
            DirSize("/newdir", 1),
            Content("/twice".into(), b"second".to_vec()),
            Content("/dev2/p2f".into(), b"fifo became a file".to_vec()),
            Kind("/dev2/f2c", K::CharDev),
            Rdev("/dev2/f2c", 5, 1),
        ],
    }
}

/// Boundaries: a path split into the ustar prefix field, a name of exactly
/// 100 bytes (no NUL in the header), a 255-byte component, UTF-8 and spaces
/// in names, symlink targets of 59/60/61 bytes (the fast-symlink limit),
/// many small xattrs that overflow the inode, a large xattr on a directory,
/// and 100 names for one file.
pub fn boundaries() -> Case {
    let long_dir = long("p/", 112);
    let prefixed = format!("{long_dir}/{}", long("file-", 80));
    let hundred = long("hundred/", 100);
    let max_component = format!("max/{}", long("n", 255));
    let t = |n: usize| long("/target/", n);
    let mut many = Entry::file("many-xattrs", b"m");
    for i in 0..20 {
        many = many.xattr(&format!("user.attr{i:02}"), pattern_no_newline(30, i as u8));
    }
    let mut l1 = vec![
        Entry::dir("p"),
        Entry::dir(long_dir.as_bytes()),
        Entry::file(prefixed.as_bytes(), b"prefix field").ustar_prefix(),
        Entry::dir("hundred"),
        Entry::file(hundred.as_bytes(), b"exactly 100"),
        Entry::dir("max"),
        Entry::file(max_component.as_bytes(), b"255"),
        Entry::dir("café"),
        Entry::file("café/naïve ファイル with spaces", b"utf-8"),
        Entry::symlink("t59", t(59).as_bytes()),
        Entry::symlink("t60", t(60).as_bytes()),
        Entry::symlink("t61", t(61).as_bytes()),
        many,
        Entry::dir("bigxdir").xattr("user.big", pattern_no_newline(3000, 42)),
        Entry::dir("links"),
        Entry::file("links/origin", b"one inode, 100 names"),
    ];
    for i in 0..99 {
        l1.push(Entry::hardlink(format!("links/l{i:02}"), b"links/origin"));
    }
    use Expect::*;
    Case {
        name: "boundaries",
        image: Image::new(vec![Layer::new(l1).compressed(Compression::Gzip)]),
        unspecified: set(&["/"]),
        expect: vec![
            Content(format!("/{prefixed}"), b"prefix field".to_vec()),
            Content(format!("/{hundred}"), b"exactly 100".to_vec()),
            Content(format!("/{max_component}"), b"255".to_vec()),
            Content("/café/naïve ファイル with spaces".into(), b"utf-8".to_vec()),
            Target("/t59", t(59).into_bytes()),
            Target("/t60", t(60).into_bytes()),
            Target("/t61", t(61).into_bytes()),
            Xattr("/many-xattrs", "user.attr19", pattern_no_newline(30, 19)),
            Xattr("/bigxdir", "user.big", pattern_no_newline(3000, 42)),
            DirSize("/links", 100),
        ],
    }
}

/// A POSIX ACL as a PAX xattr (`system.posix_acl_access`, in the xattr
/// format: version 2, then (tag, perm, id) entries). ext4 stores ACLs in its
/// own on-disk format, so a writer that copies the bytes verbatim breaks them.
pub fn acl() -> Case {
    let v = acl_xattr(&[
        (1, 6, u32::MAX),
        (2, 4, 1000),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ]);
    let d = acl_xattr(&[(1, 7, u32::MAX), (4, 5, u32::MAX), (0x20, 5, u32::MAX)]);
    Case {
        name: "acl",
        image: Image::new(vec![Layer::new(vec![
            Entry::file("acl-file", b"acl")
                .mode(0o640)
                .xattr("system.posix_acl_access", &v),
            Entry::dir("acl-dir")
                .mode(0o755)
                .xattr("system.posix_acl_default", &d),
        ])]),
        unspecified: set(&["/"]),
        expect: vec![
            Expect::Xattr("/acl-file", "system.posix_acl_access", v),
            Expect::Xattr("/acl-dir", "system.posix_acl_default", d),
        ],
    }
}

/// Hard links to a symlink, a FIFO and a device.
pub fn special_hard_links() -> Case {
    let l1 = vec![
        Entry::symlink("sym", b"target-of-sym"),
        Entry::hardlink("sym-hl", b"sym"),
        Entry::fifo("pipe"),
        Entry::hardlink("pipe-hl", b"pipe"),
        Entry::char_dev("tty", 4, 1),
        Entry::hardlink("tty-hl", b"tty"),
    ];
    use Expect::*;
    Case {
        name: "special-hard-links",
        image: Image::new(vec![Layer::new(l1)]),
        unspecified: set(&["/"]),
        expect: vec![
            Linked(vec!["/sym", "/sym-hl"]),
            Target("/sym-hl", b"target-of-sym".to_vec()),
            Linked(vec!["/pipe", "/pipe-hl"]),
            Linked(vec!["/tty", "/tty-hl"]),
            Rdev("/tty-hl", 4, 1),
        ],
    }
}

/// An upper-layer entry below a lower-layer symlink to a directory
/// (`lib -> usr/lib`, as in merged-/usr systems). Docker's and containerd's
/// layer appliers and umoci all resolve the parent inside the root, so the
/// file lands in `usr/lib`; absolute targets and `..` are resolved with
/// the image root as `/` (never the host's).
pub fn symlinked_parent() -> Case {
    let l1 = vec![
        Entry::dir("usr"),
        Entry::dir("usr/lib"),
        Entry::file("usr/lib/libc.so", b"libc"),
        Entry::symlink("lib", b"usr/lib"),
        Entry::symlink("lib64", b"/usr/lib"),
        Entry::symlink("chain1", b"chain2"),
        Entry::symlink("chain2", b"./usr/../usr/lib"),
        Entry::dir("opt"),
        Entry::dir("usr/share"),
        Entry::symlink("usr/share/up", b"../../../../../opt"),
    ];
    let l2 = vec![
        Entry::file("lib/libnew.so", b"new lib"),
        Entry::file("lib64/abs.so", b"through an absolute symlink"),
        Entry::file("chain1/chain.so", b"through two symlinks"),
        Entry::file("usr/share/up/clamped", b"`..` stops at the root"),
        Entry::hardlink("lib/hl.so", b"lib/libc.so"),
    ];
    let l3 = vec![Entry::whiteout("lib64/abs.so")];
    use Expect::*;
    Case {
        name: "symlinked-parent",
        image: Image::new(vec![Layer::new(l1), Layer::new(l2), Layer::new(l3)]),
        unspecified: set(&["/"]),
        expect: vec![
            Linked(vec!["/usr/lib/hl.so", "/usr/lib/libc.so"]),
            Absent("/usr/lib/abs.so"),
            Kind("/lib", FileKind::Symlink),
            Content("/usr/lib/libnew.so".into(), b"new lib".to_vec()),
            Content("/usr/lib/chain.so".into(), b"through two symlinks".to_vec()),
            Content("/opt/clamped".into(), b"`..` stops at the root".to_vec()),
            Kind("/usr/share/up", FileKind::Symlink),
        ],
    }
}

/// Layers that list the root directory itself (`./`): its attributes come
/// from the last layer that lists it.
pub fn root_entry() -> Case {
    let l1 = vec![
        Entry::dir("./")
            .mode(0o700)
            .owner(7, 8)
            .mtime(1_600_000_400, 1),
        Entry::file("./a", b"a"),
    ];
    let l2 = vec![
        Entry::dir("./")
            .mode(0o751)
            .owner(9, 10)
            .mtime(1_600_000_500, 2),
        Entry::file("./b", b"b"),
    ];
    Case {
        name: "root-entry",
        image: Image::new(vec![
            Layer::new(l1),
            Layer::new(l2).compressed(Compression::Gzip),
        ]),
        unspecified: BTreeSet::new(),
        expect: vec![
            Expect::Mode("/", 0o751),
            Expect::Owner("/", 9, 10),
            Expect::Mtime("/", 1_600_000_500, 2),
            Expect::Content("/a".into(), b"a".to_vec()),
        ],
    }
}

/// One directory holding 100,000 entries.
pub fn big_dir() -> Case {
    let mut entries = vec![Entry::dir("many")];
    for i in 0..100_000 {
        let e = if i % 1000 == 0 {
            Entry::file(format!("many/f{i:06}"), format!("file {i}"))
        } else {
            Entry::file(format!("many/f{i:06}"), b"")
        };
        entries.push(e);
    }
    Case {
        name: "bigdir",
        image: Image::new(vec![Layer::new(entries).compressed(Compression::Gzip)]),
        unspecified: set(&["/"]),
        expect: vec![
            Expect::DirSize("/many", 100_000),
            Expect::Content("/many/f099000".into(), b"file 99000".to_vec()),
        ],
    }
}

/// Files that are mostly zeros (holes once flattened), and a file whose
/// data alternates with holes block by block (many extents, a deep tree).
pub fn sparse() -> Case {
    let tail = pattern(10_000, 3);
    // 2000 data blocks separated by holes: 2000 extents, a depth-2 tree.
    let fragments: Vec<(u64, Vec<u8>)> = (0..2000u32)
        .map(|i| (4096, pattern(4096, (i % 251) as u8)))
        .collect();
    let entries = vec![
        Entry::sparse("zeros-then-tail", 64 << 20, &tail),
        Entry::sparse("all-zeros", 8 << 20, b""),
        Entry::sparse("unaligned", 12_345, b"end"),
        Entry::file("dense", pattern(3 << 20, 9)),
        Entry::sparse_runs("fragmented", fragments),
    ];
    Case {
        name: "sparse",
        image: Image::new(vec![Layer::new(entries).compressed(Compression::Zstd)]),
        unspecified: set(&["/"]),
        expect: vec![Expect::Kind("/zeros-then-tail", FileKind::File)],
    }
}

/// Size of the file in [`huge`]: just over 4 GiB.
pub const HUGE_SIZE: u64 = (4 << 30) + (1 << 20) + 4096;

/// A file over 4 GiB (zeros, then data), in a zstd layer so the source
/// takes megabytes of disk rather than 4 GiB.
pub fn huge() -> Case {
    let tail = pattern(8192, 4);
    let zeros = HUGE_SIZE - tail.len() as u64;
    Case {
        name: "huge",
        image: Image::new(vec![
            Layer::new(vec![
                Entry::file("small-before", b"before"),
                Entry::sparse("huge", zeros, &tail),
                Entry::file("small-after", b"after"),
            ])
            .compressed(Compression::Zstd),
        ]),
        unspecified: set(&["/"]),
        expect: vec![
            Expect::Content("/small-after".into(), b"after".to_vec()),
            Expect::Kind("/huge", FileKind::File),
        ],
    }
}

/// Checks every fact of `expect` in `listing`; returns the failures.
pub fn check(listing: &Listing, expect: &[Expect]) -> Vec<String> {
    let mut bad = Vec::new();
    let hex = |b: &[u8]| hex::encode(Sha256::digest(b));
    for e in expect {
        let path: &str = match e {
            Expect::Content(p, _) | Expect::Sha256(p, ..) => p,
            Expect::Absent(p)
            | Expect::Kind(p, _)
            | Expect::Mode(p, _)
            | Expect::Owner(p, ..)
            | Expect::Mtime(p, ..)
            | Expect::Xattr(p, ..)
            | Expect::Rdev(p, ..)
            | Expect::Target(p, _)
            | Expect::NotLinked(p)
            | Expect::DirSize(p, _) => p,
            Expect::Linked(ps) => ps[0],
        };
        let got = listing.get(path);
        let ok = match (e, got) {
            (Expect::Absent(_), g) => g.is_none(),
            (_, None) => false,
            (Expect::Content(_, c), Some(g)) => {
                g.kind == FileKind::File && g.sha256.as_deref() == Some(hex(c).as_str())
            }
            (Expect::Sha256(_, h, size), Some(g)) => {
                g.kind == FileKind::File && g.sha256.as_ref() == Some(h) && g.size == *size
            }
            (Expect::Kind(_, k), Some(g)) => g.kind == *k,
            (Expect::Mode(_, m), Some(g)) => g.mode == *m,
            (Expect::Owner(_, u, gid), Some(g)) => g.uid == *u && g.gid == *gid,
            (Expect::Mtime(_, s, n), Some(g)) => g.mtime == *s && g.mtime_nanos == *n,
            (Expect::Xattr(_, k, v), Some(g)) => g.xattrs.get(*k) == Some(v),
            (Expect::Rdev(_, a, b), Some(g)) => g.rdev == Some((*a, *b)),
            (Expect::Target(_, t), Some(g)) => g.target.as_ref() == Some(t),
            (Expect::NotLinked(_), Some(g)) => g.link_group.is_none(),
            (Expect::DirSize(p, n), Some(g)) => {
                let prefix = format!("{p}/");
                let count = listing
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(k, _)| !k[prefix.len()..].contains('/'))
                    .count();
                g.kind == FileKind::Dir && count == *n
            }
            (Expect::Linked(ps), Some(g)) => {
                let group = g.link_group.clone();
                let members: Vec<&String> = listing
                    .iter()
                    .filter(|(_, e)| group.is_some() && e.link_group == group)
                    .map(|(p, _)| p)
                    .collect();
                group.is_some()
                    && members.len() == ps.len()
                    && ps.iter().all(|p| members.iter().any(|m| m == p))
            }
        };
        if !ok {
            let shown = match (e, got) {
                (Expect::Mode(..), Some(g)) => format!("mode {:o}", g.mode),
                _ => format!("{got:?}"),
            };
            bad.push(format!(
                "expected {e:?} (modes are decimal here), found {shown}"
            ));
        }
    }
    bad
}

/// The masking rules for fields that a listing cannot see are the caller's;
/// this skips the facts a producer cannot check (xattrs, rdev, links for
/// ext4-view).
pub fn visible_to_ext4_view(expect: &[Expect]) -> Vec<Expect> {
    expect
        .iter()
        .filter(|e| {
            !matches!(
                e,
                Expect::Xattr(..) | Expect::Rdev(..) | Expect::Linked(_) | Expect::NotLinked(_)
            )
        })
        .cloned()
        .collect()
}
