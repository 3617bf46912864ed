//! The ext4 metadata reader over filesystems it did not write: images
//! made by `mke2fs` (ext4 with 4 KiB and 1 KiB blocks, small inodes, ext3
//! with block maps and hashed directories), filled through a kernel loop
//! mount (so the kernel wrote every xattr, ACL, shared xattr block and
//! directory index), and the same tree copied by `mke2fs -d` (e2fsprogs'
//! writer). For every path, the inode number, mode, owner, the four times
//! (birth time where `statx` gives one), link count, allocated blocks,
//! device number, symlink target and xattrs the reader finds must be what
//! the kernel shows.
//!
//! Needs root, `mke2fs`, `mount`, `mknod` and loop devices; says
//! `SKIP: <reason>` and returns without them.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imagefs::ext4::{Ext4Meta, FileType, Timestamp};
use tests::cases::{acl_xattr, capability};
use tests::harness::{self, Mount};
use tests::treecheck::list_dir;

fn tools_present() -> bool {
    ["mke2fs", "mount", "mknod", "mkfifo"]
        .iter()
        .all(|t| harness::require_tool(t))
        && harness::require_root("loop mounts")
}

fn run(cmd: &mut Command) {
    let (ok, out) = harness::run(cmd);
    assert!(ok, "{cmd:?}: {out}");
}

/// Fills a mounted filesystem, through the kernel.
fn populate(m: &Path) {
    let block_size = fs::metadata(m).unwrap().blksize() as usize;
    const U: u32 = u32::MAX;
    let set = |p: &str, name: &str, value: &[u8]| {
        xattr::set(m.join(p), name, value).unwrap_or_else(|e| panic!("setxattr {p} {name}: {e}"))
    };
    fs::create_dir_all(m.join("etc")).unwrap();
    fs::write(m.join("etc/conf"), "conf\n").unwrap();
    set("etc/conf", "user.nl", b"a\nb=c\n");
    set("etc/conf", "user.bin", &[0, 1, 2, 255, 10, 13, 0]);
    set("etc/conf", "user.empty", b"");
    set("etc/conf", "trusted.t", b"trusted\n");
    set("etc/conf", "security.capability", &capability(13));
    fs::hard_link(m.join("etc/conf"), m.join("etc/conf-link")).unwrap();
    // ACLs with named entries (one equivalent to the mode would be folded
    // into the mode and not stored).
    fs::write(m.join("etc/acl"), "acl\n").unwrap();
    set(
        "etc/acl",
        "system.posix_acl_access",
        &acl_xattr(&[
            (1, 6, U),
            (2, 4, 1000),
            (4, 4, U),
            (8, 6, 50),
            (0x10, 6, U),
            (0x20, 0, U),
        ]),
    );
    fs::create_dir(m.join("shared")).unwrap();
    set(
        "shared",
        "system.posix_acl_default",
        &acl_xattr(&[
            (1, 7, U),
            (2, 7, 1001),
            (4, 5, U),
            (0x10, 7, U),
            (0x20, 5, U),
        ]),
    );
    // Inherits the default ACL as its own access ACL.
    fs::write(m.join("shared/inherits"), "i\n").unwrap();
    // Identical xattrs too big for the inode: the kernel shares one block.
    for f in ["same-a", "same-b"] {
        fs::write(m.join(f), f).unwrap();
        set(f, "user.same", &[7u8; 200]);
    }
    // As many as fit: the inode first, then the block.
    fs::write(m.join("many"), "many\n").unwrap();
    let mut n = 0;
    while n < 40 && xattr::set(m.join("many"), format!("user.many.{n:02}"), &[n as u8; 24]).is_ok()
    {
        n += 1;
    }
    assert!(n >= 8, "only {n} xattrs fit");
    fs::write(m.join("big"), "big\n").unwrap();
    set("big", "user.big", &vec![0x5A; block_size - 200]);
    // A directory of several blocks (hashed with dir_index), links,
    // devices, a FIFO.
    fs::create_dir(m.join("dir")).unwrap();
    for i in 0..1500 {
        fs::write(m.join(format!("dir/entry-with-a-longish-name-{i:04}")), b"").unwrap();
    }
    std::os::unix::fs::symlink("etc/conf", m.join("fast-link")).unwrap();
    std::os::unix::fs::symlink("x/".repeat(60), m.join("slow-link")).unwrap();
    run(Command::new("mknod")
        .arg(m.join("null"))
        .args(["c", "1", "3"]));
    run(Command::new("mknod")
        .arg(m.join("wide"))
        .args(["b", "259", "70000"]));
    run(Command::new("mkfifo").arg(m.join("fifo")));
    // Owners with high halves, and times with nanoseconds before 1970,
    // after 2038 (epoch bits; clamped on 128-byte inodes) and today.
    std::os::unix::fs::chown(m.join("etc/conf"), Some(70000), Some(0x0002_0001)).unwrap();
    std::os::unix::fs::lchown(m.join("slow-link"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(m.join("etc/acl"), fs::Permissions::from_mode(0o4751)).unwrap();
    let times = [
        (
            "etc/conf",
            UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        ),
        ("many", UNIX_EPOCH - Duration::new(1_000_000, 999)),
        (
            "big",
            UNIX_EPOCH + Duration::new(5_000_000_000, 999_999_999),
        ),
    ];
    for (p, t) in times {
        let f = File::options().write(true).open(m.join(p)).unwrap();
        f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
    }
    // A file with allocated blocks beyond one.
    fs::write(m.join("blocks"), vec![1u8; 3 * block_size + 1]).unwrap();
}

/// A kernel time as the reader's.
fn kernel_time(secs: i64, nsecs: i64) -> Timestamp {
    Timestamp {
        secs,
        nsecs: nsecs as u32,
    }
}

fn system_time(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nsecs: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (secs, nsecs) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsecs == 0 {
                Timestamp { secs, nsecs }
            } else {
                Timestamp {
                    secs: secs - 1,
                    nsecs: 1_000_000_000 - nsecs,
                }
            }
        }
    }
}

/// Compares the reader's view of `image` with a kernel loop mount of it.
fn check(image: &Path, label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let Some(kernel) = Mount::loop_mount(image, dir.path(), true).unwrap() else {
        return;
    };
    let listing = list_dir(kernel.path(), &[]).unwrap();
    let meta = Ext4Meta::open(Arc::new(File::open(image).unwrap())).unwrap();
    let mut with_xattrs = 0;
    let (mut births, mut links) = (0, 0);
    for (path, entry) in &listing {
        let host = kernel.path().join(path.trim_start_matches('/'));
        let md = fs::symlink_metadata(&host).unwrap();
        let ino = meta
            .resolve(path.as_bytes())
            .unwrap_or_else(|e| panic!("{label}: resolving {path}: {e}"))
            .unwrap_or_else(|| panic!("{label}: {path} not found"));
        assert_eq!(u64::from(ino), md.ino(), "{label}: inode number of {path}");
        let inode = meta.inode(ino).unwrap();
        assert_eq!(
            u64::from(inode.links),
            md.nlink(),
            "{label}: link count of {path}"
        );
        assert_eq!(
            u64::from(inode.rdev()),
            md.rdev(),
            "{label}: rdev of {path}"
        );
        assert_eq!(u32::from(inode.mode), md.mode(), "{label}: mode of {path}");
        assert_eq!(
            (inode.uid, inode.gid),
            (md.uid(), md.gid()),
            "{label}: owner of {path}"
        );
        assert_eq!(inode.size, md.size(), "{label}: size of {path}");
        assert_eq!(inode.blocks, md.blocks(), "{label}: st_blocks of {path}");
        let times = [
            (inode.atime, kernel_time(md.atime(), md.atime_nsec())),
            (inode.mtime, kernel_time(md.mtime(), md.mtime_nsec())),
            (inode.ctime, kernel_time(md.ctime(), md.ctime_nsec())),
        ];
        for (what, (ours, kernels)) in ["atime", "mtime", "ctime"].iter().zip(times) {
            assert_eq!(ours, kernels, "{label}: {what} of {path}");
        }
        // statx gives a birth time exactly when the inode has room for one.
        let birth = md.created().ok().map(system_time);
        assert_eq!(inode.crtime, birth, "{label}: crtime of {path}");
        births += usize::from(birth.is_some());
        if inode.file_type() == Some(FileType::Symlink) {
            let target = fs::read_link(&host).unwrap();
            assert_eq!(
                meta.read_link(ino)
                    .unwrap_or_else(|e| panic!("{label}: target of {path}: {e}")),
                target.as_os_str().as_bytes(),
                "{label}: target of {path}"
            );
            links += 1;
        }
        let xattrs: BTreeMap<String, Vec<u8>> = meta
            .xattrs(ino)
            .unwrap_or_else(|e| panic!("{label}: xattrs of {path}: {e}"))
            .iter()
            .filter(|x| x.shown_by_linux())
            .map(|x| (String::from_utf8(x.name.clone()).unwrap(), x.value.clone()))
            .collect();
        assert_eq!(xattrs, entry.xattrs, "{label}: xattrs of {path}");
        with_xattrs += usize::from(!xattrs.is_empty());
    }
    assert!(listing.len() > 1500, "{label}: {} paths", listing.len());
    assert!(
        with_xattrs >= 9,
        "{label}: only {with_xattrs} paths with xattrs"
    );
    // What the image was meant to exercise is there.
    assert!(links >= 2, "{label}: only {links} symlinks");
    // 128-byte inodes have no room for a birth time.
    assert_eq!(
        births > 0,
        !label.contains("128-byte"),
        "{label}: {births} birth times"
    );
    let inode_of = |p: &str| {
        let ino = meta.resolve(p.as_bytes()).unwrap().unwrap();
        meta.inode(ino).unwrap()
    };
    let (a, b, dir) = (inode_of("/same-a"), inode_of("/same-b"), inode_of("/dir"));
    // The kernel shares identical xattr blocks and hashes big
    // directories (EXT4_INDEX_FL); mke2fs -d does neither.
    if !label.contains("mke2fs -d") {
        assert!(
            a.xattr_block != 0 && a.xattr_block == b.xattr_block,
            "{label}: no shared xattr block"
        );
        assert!(dir.flags & 0x1000 != 0, "{label}: /dir is not hashed");
    }
    // EXT4_EXTENTS_FL: an extent tree rather than a block map.
    assert_eq!(
        dir.flags & 0x8_0000 == 0,
        label.starts_with("ext3"),
        "{label}: /dir's block mapping"
    );
    let ping = meta.resolve(b"/etc/conf").unwrap().unwrap();
    assert_eq!(meta.resolve(b"/etc/conf-link").unwrap(), Some(ping));
    eprintln!(
        "{label}: {} paths, {with_xattrs} with xattrs, all as the kernel shows",
        listing.len()
    );
    kernel.unmount().unwrap();
}

#[test]
fn mke2fs_images_read_as_the_kernel_reads_them() {
    if !tools_present() {
        return;
    }
    // 64 MiB is a "small" filesystem to mke2fs (1 KiB blocks) unless the
    // block size is given.
    let variants: &[(&str, &[&str])] = &[
        ("ext4, 4 KiB blocks", &["-t", "ext4", "-b", "4096"]),
        (
            "ext4, 1 KiB blocks, 128-byte inodes",
            &["-t", "ext4", "-b", "1024", "-I", "128"],
        ),
        (
            "ext3 (block maps, hashed directories)",
            &["-t", "ext3", "-b", "4096"],
        ),
        (
            "ext4 without 64bit or metadata_csum, 2 KiB blocks",
            &["-t", "ext4", "-b", "2048", "-O", "^64bit,^metadata_csum"],
        ),
    ];
    for (label, opts) in variants {
        let work = tempfile::tempdir().unwrap();
        let image = work.path().join("fs.img");
        File::create(&image).unwrap().set_len(64 << 20).unwrap();
        run(Command::new("mke2fs")
            .args(["-q", "-F"])
            .args(*opts)
            .arg(&image));
        let mnt = work.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let Some(rw) = Mount::loop_mount(&image, &mnt, false).unwrap() else {
            return;
        };
        populate(rw.path());
        rw.unmount().unwrap();
        check(&image, label);

        // The same tree written by e2fsprogs.
        let copy = work.path().join("copy.img");
        File::create(&copy).unwrap().set_len(64 << 20).unwrap();
        let Some(ro) = Mount::loop_mount(&image, &mnt, true).unwrap() else {
            return;
        };
        run(Command::new("mke2fs")
            .args(["-q", "-F"])
            .args(*opts)
            .arg("-d")
            .arg(ro.path())
            .arg(&copy));
        ro.unmount().unwrap();
        check(&copy, &format!("{label}, mke2fs -d"));
    }
}
