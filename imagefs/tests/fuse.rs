//! The FUSE debug mount: a generated image, flattened to ext4,
//! mounted through real FUSE and compared with a kernel loop mount of the
//! same bytes (contents, metadata, xattrs, device numbers, inode numbers
//! and link counts); `--raw` mode; an unreadable range becoming `EIO`.
//!
//! Needs root and `/dev/fuse` (and loop devices for the comparison); says
//! `SKIP: <reason>` and returns without them.

use std::fs::{self, File};
use std::io::{self, ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tests::cases::{acl_xattr, capability};
use tests::imagegen::noise;

use chunker::ext4::Ext4Options;
use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;
use imagefs::BlockDevice;
use imagefs::transport::fuse::{
    MountError, MountOptions, Mounted, PassthroughOptions, PassthroughStats, RAW_NAME, mount,
};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tests::harness::{self, Mount};
use tests::imagegen::{Compression, Entry, Image, Layer};
use tests::treecheck::{Mask, assert_same, list_dir};

fn sample_image() -> Image {
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
        (8, 7, 4242),
        (0x10, 7, u32::MAX),
        (0x20, 5, u32::MAX),
    ]);
    // More than the inode holds: the rest spills into the xattr block.
    let mut many = Entry::file("app/many-xattrs", "m\n");
    for i in 0..30u8 {
        many = many.xattr(&format!("user.attr{i:02}"), vec![i; 20 + usize::from(i)]);
    }
    let mut base = vec![
        Entry::dir("etc"),
        Entry::file("etc/os-release", "ID=fuse-test\n"),
        Entry::file("etc/empty", b""),
        Entry::file("usr/lib/libbig.so", noise(1, 1_300_000)),
        Entry::file("usr/lib/libodd.so", noise(2, 70_001)).mtime(1_650_000_000, 123_456_789),
        Entry::sparse("usr/lib/sparse.img", 3 << 20, b"tail after a hole"),
        Entry::file("bin/hello", "#!/bin/sh\necho hello\n").mode(0o4755),
        Entry::hardlink("bin/hi", "bin/hello"),
        Entry::symlink("bin/greet", "hello"),
        Entry::symlink(
            "bin/far",
            "/usr/lib/../lib/a-rather-long-target-name-beyond-sixty-bytes/x/y",
        ),
        Entry::symlink("bin/dangling", "/nowhere"),
        Entry::file("home/user/notes", "mine\n")
            .owner(1000, 1000)
            .mode(0o600),
        Entry::dir("home/user/private")
            .owner(1000, 1000)
            .mode(0o700),
        Entry::dir("tmp").mode(0o1777),
        Entry::char_dev("dev/null", 1, 3).mode(0o666),
        Entry::block_dev("dev/loop9", 7, 9),
        Entry::fifo("run/pipe"),
        Entry::file(b"odd/name \xff\xfe with bytes".as_slice(), "not utf-8\n"),
        Entry::file("app/ping", "capable\n")
            .xattr("user.note", "a value")
            .xattr("security.capability", capability(13)),
        Entry::hardlink("app/ping-again", "app/ping"),
        Entry::file("app/binary", "b")
            .xattr("user.bin", b"\0\x01\n\xff\nline two\n")
            .xattr("user.empty", b"")
            .xattr("trusted.overlay.origin", b"\x00\xfb\x21"),
        Entry::file("app/acl", "acl\n")
            .mode(0o640)
            .xattr("system.posix_acl_access", &access),
        Entry::dir("app/shared")
            .mode(0o2775)
            .xattr("system.posix_acl_default", &default)
            .xattr("user.dir", "on a directory"),
        many,
        Entry::file("deep/a/b/c/d/e/f", "deep\n"),
    ];
    // Enough names for a directory of several blocks.
    for i in 0..400 {
        base.push(Entry::file(
            format!("many/entry-with-a-longish-name-{i:04}"),
            format!("{i}\n"),
        ));
    }
    let upper = Layer::new(vec![
        Entry::whiteout("etc/os-release"),
        Entry::file("etc/os-release", "ID=fuse-test\nVERSION=2\n"),
    ])
    .compressed(Compression::Zstd);
    Image::new(vec![Layer::new(base).compressed(Compression::Gzip), upper])
}

/// A flattened image in a temporary directory.
struct Flat {
    dir: TempDir,
    image: PathBuf,
}

fn flatten() -> Flat {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    sample_image().write_oci_layout(&layout, "t").unwrap();
    let src: ImageSource = format!("oci:{}:t", layout.display()).parse().unwrap();
    let image = dir.path().join("image.ext4");
    let opts = FlattenOptions {
        ext4: Ext4Options {
            chunk_size: 64 * 1024,
            free_bytes: 1 << 20,
            spare_inodes: 64,
        },
        ..FlattenOptions::default()
    };
    flatten_to_file(&src, &image, &opts).expect("flatten");
    Flat { dir, image }
}

/// True when FUSE can be tried here; otherwise prints a SKIP line.
fn fuse_available() -> bool {
    if !Path::new("/dev/fuse").exists() {
        harness::skip("/dev/fuse does not exist");
        return false;
    }
    harness::require_root("mounting FUSE")
}

fn is_mounted(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = dir.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

/// A FUSE mount that is gone when this is dropped, test failure or not.
struct Guard {
    mounted: Option<Mounted>,
    dir: PathBuf,
}

impl Guard {
    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(m) = self.mounted.take()
            && let Err(e) = m.unmount()
        {
            eprintln!("unmounting {}: {e}", self.dir.display());
        }
        if is_mounted(&self.dir) {
            // Last resort, so that no later test meets a dead mount.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Mounts `source` at `dir`; `None` after a SKIP line when FUSE mounts are
/// not permitted here.
fn fuse_mount(source: Arc<dyn BlockDevice>, dir: &Path, raw: bool) -> Option<Guard> {
    let opts = MountOptions {
        raw,
        ..MountOptions::default()
    };
    match mount(source, dir, &opts) {
        Ok(m) => {
            let canonical = fs::canonicalize(dir).unwrap();
            Some(Guard {
                mounted: Some(m),
                dir: canonical,
            })
        }
        Err(MountError::Fuse { source, .. })
            if matches!(
                source.kind(),
                ErrorKind::PermissionDenied | ErrorKind::NotFound
            ) || source.raw_os_error() == Some(1) =>
        {
            harness::skip(&format!("FUSE mount not permitted here: {source}"));
            None
        }
        Err(e) => panic!("mounting FUSE at {}: {e:?}", dir.display()),
    }
}

fn open_image(path: &Path) -> Arc<dyn BlockDevice> {
    Arc::new(File::open(path).unwrap())
}

fn sha256_file(path: &Path) -> String {
    let mut f = File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// `stat -f` numbers that must agree: block size, inodes, free inodes,
/// free blocks.
fn statfs(dir: &Path) -> String {
    let out = Command::new("stat")
        .args(["-f", "-c", "%S %c %d %f"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "stat -f {}", dir.display());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tree_matches_a_kernel_loop_mount() {
    if !fuse_available() {
        return;
    }
    let flat = flatten();
    let kdir = flat.dir.path().join("kernel");
    let fdir = flat.dir.path().join("fuse");
    fs::create_dir(&kdir).unwrap();
    fs::create_dir(&fdir).unwrap();
    let Some(kernel) = Mount::loop_mount(&flat.image, &kdir, true).unwrap() else {
        return;
    };
    let Some(fuse) = fuse_mount(open_image(&flat.image), &fdir, false) else {
        return;
    };

    let ignore = ["/lost+found"];
    let want = list_dir(kernel.path(), &ignore).unwrap();
    let got = list_dir(fuse.path(), &ignore).unwrap();
    assert!(
        want.len() > 400,
        "kernel listing has {} entries",
        want.len()
    );
    // Everything, xattrs (every name and value), device numbers and hard
    // links included.
    assert_same("kernel", &want, "fuse", &got, &Mask::default());
    let xattrs = |p: &str| want[p].xattrs.keys().cloned().collect::<Vec<_>>();
    assert_eq!(xattrs("/app/many-xattrs").len(), 30);
    assert_eq!(
        xattrs("/app/binary").len(),
        3,
        "{:?}",
        xattrs("/app/binary")
    );
    assert_eq!(xattrs("/app/acl"), ["system.posix_acl_access"]);
    assert!(xattrs("/app/shared").contains(&"system.posix_acl_default".to_string()));
    assert_eq!(
        want["/app/ping"].link_group.as_deref(),
        Some("/app/ping"),
        "the kernel sees the hard link"
    );

    // Inode numbers and link counts are ext4's own (the root is FUSE's
    // inode 1; ext4 calls it 2).
    assert_eq!(fs::metadata(fuse.path()).unwrap().ino(), 1);
    for path in want.keys() {
        if path.contains('\u{FFFD}') {
            // Listed lossily: not a path to open.
            continue;
        }
        let rel = path.trim_start_matches('/');
        let k = fs::symlink_metadata(kernel.path().join(rel)).unwrap();
        let f = fs::symlink_metadata(fuse.path().join(rel)).unwrap();
        assert_eq!(k.nlink(), f.nlink(), "link count of {path}");
        if path != "/" {
            assert_eq!(k.ino(), f.ino(), "inode number of {path}");
        }
    }

    // Reads at odd offsets and sizes, backwards, across blocks and holes.
    for rel in [
        "usr/lib/libbig.so",
        "usr/lib/sparse.img",
        "usr/lib/libodd.so",
    ] {
        let k = File::open(kernel.path().join(rel)).unwrap();
        let f = File::open(fuse.path().join(rel)).unwrap();
        let len = k.metadata().unwrap().len();
        for &(off, n) in &[
            (len - 1, 1),
            (len / 2 + 7, 9000),
            (4095, 2),
            (0, 300_000),
            (len - 5000, 10_000),
            (len + 10, 10),
        ] {
            let read = |file: &File| {
                let mut buf = vec![0u8; n];
                let got = file.read_at(&mut buf, off).unwrap();
                buf.truncate(got);
                buf
            };
            assert_eq!(read(&k), read(&f), "{rel} at {off} ({n} bytes)");
        }
    }

    assert_eq!(statfs(kernel.path()), statfs(fuse.path()));

    // Read-only; a missing xattr is ENODATA (`None`).
    let err = fs::OpenOptions::new()
        .append(true)
        .open(fuse.path().join("etc/empty"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS expected, got {err}");
    assert_eq!(
        xattr::get(fuse.path().join("app/ping"), "user.note").unwrap(),
        Some(b"a value".to_vec())
    );
    assert_eq!(
        xattr::get(fuse.path().join("app/ping"), "user.nothing").unwrap(),
        None
    );
    let missing = fs::symlink_metadata(fuse.path().join("etc/nothing")).unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound);

    drop(fuse);
    assert!(!is_mounted(&fs::canonicalize(&fdir).unwrap()));
    kernel.unmount().unwrap();
}

#[test]
fn raw_mode_shows_the_device_as_one_file() {
    if !fuse_available() {
        return;
    }
    let flat = flatten();
    let dir = flat.dir.path().join("raw");
    fs::create_dir(&dir).unwrap();
    let Some(fuse) = fuse_mount(open_image(&flat.image), &dir, true) else {
        return;
    };
    let names: Vec<String> = fs::read_dir(fuse.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [RAW_NAME]);
    let disk = fuse.path().join(RAW_NAME);
    assert_eq!(
        fs::metadata(&disk).unwrap().len(),
        fs::metadata(&flat.image).unwrap().len()
    );
    assert_eq!(sha256_file(&disk), sha256_file(&flat.image));
    // An unaligned read near the end.
    let len = fs::metadata(&flat.image).unwrap().len();
    let mut a = vec![0u8; 777];
    let mut b = vec![0u8; 777];
    FileExt::read_exact_at(&File::open(&disk).unwrap(), &mut a, len - 1000).unwrap();
    FileExt::read_exact_at(&File::open(&flat.image).unwrap(), &mut b, len - 1000).unwrap();
    assert_eq!(a, b);
}

/// A source whose reads fail while `failing` is set, like a chunk that no
/// tier can serve.
struct Flaky {
    file: File,
    failing: AtomicBool,
}

impl BlockDevice for Flaky {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::other("chunk 17 (test): every tier missed"));
        }
        FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn size(&self) -> u64 {
        BlockDevice::size(&self.file)
    }
}

#[test]
fn unreadable_bytes_become_eio_and_the_mount_recovers() {
    if !fuse_available() {
        return;
    }
    let flat = flatten();
    let dir = flat.dir.path().join("flaky");
    fs::create_dir(&dir).unwrap();
    let flaky = Arc::new(Flaky {
        file: File::open(&flat.image).unwrap(),
        failing: AtomicBool::new(false),
    });
    let Some(fuse) = fuse_mount(flaky.clone(), &dir, false) else {
        return;
    };
    let big = fuse.path().join("usr/lib/libbig.so");
    assert_eq!(fs::metadata(&big).unwrap().len(), 1_300_000);

    // Looked up now; its xattr block is read only when asked for.
    let many = fuse.path().join("app/many-xattrs");
    assert!(fs::symlink_metadata(&many).unwrap().is_file());

    flaky.failing.store(true, Ordering::SeqCst);
    let err = fs::read(&big).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO expected, got {err}");
    let err = xattr::list(&many).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO expected, got {err}");

    flaky.failing.store(false, Ordering::SeqCst);
    assert_eq!(fs::read(&big).unwrap(), noise(1, 1_300_000));
    assert_eq!(xattr::list(&many).unwrap().count(), 30);
}

/// A plain file source that counts its reads and says its bytes are local
/// only while `local` is set, like a dedicated tier before and after the
/// chunks arrive.
struct Warming {
    file: File,
    local: AtomicBool,
    reads: AtomicU64,
}

impl BlockDevice for Warming {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        FileExt::read_exact_at(&self.file, buf, offset)
    }

    fn size(&self) -> u64 {
        BlockDevice::size(&self.file)
    }

    fn is_local(&self, offset: u64, len: u64) -> bool {
        self.local.load(Ordering::SeqCst) && BlockDevice::is_local(&self.file, offset, len)
    }
}

/// Opens and reads `path` until `ok` holds of the mount's passthrough
/// counters: a release reaches the daemon a moment after `close` returns,
/// and until then a new open keeps the mode of the old one.
fn read_until(m: &Mounted, path: &Path, ok: impl Fn(&PassthroughStats) -> bool) -> Vec<u8> {
    for _ in 0..100 {
        let bytes = fs::read(path).unwrap();
        if ok(&m.passthrough_stats().unwrap()) {
            return bytes;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!(
        "{}: passthrough counters never got there: {:?}",
        path.display(),
        m.passthrough_stats()
    );
}

#[test]
fn files_held_locally_are_passed_through_to_the_kernel() {
    if !fuse_available() {
        return;
    }
    let flat = flatten();
    let dir = flat.dir.path().join("passthrough-mnt");
    let backing = flat.dir.path().join("backing");
    fs::create_dir(&dir).unwrap();
    let source = Arc::new(Warming {
        file: File::open(&flat.image).unwrap(),
        local: AtomicBool::new(false),
        reads: AtomicU64::new(0),
    });
    // Left by a mount whose process was killed: removed at mount.
    let stale = backing.join("imagefs-passthrough-4294967295");
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("12"), "old copy").unwrap();
    let opts = MountOptions {
        // Room for libbig.so (1.3 MB) alone.
        passthrough: Some(PassthroughOptions {
            dir: backing.clone(),
            capacity: 1_350_000,
        }),
        ..MountOptions::default()
    };
    let m = match mount(source.clone(), &dir, &opts) {
        Ok(m) => m,
        Err(MountError::Fuse { source, .. }) => {
            harness::skip(&format!("FUSE mount not permitted here: {source}"));
            return;
        }
        Err(e) => panic!("mounting: {e:?}"),
    };
    let fuse = Guard {
        mounted: Some(m),
        dir: fs::canonicalize(&dir).unwrap(),
    };
    let m = fuse.mounted.as_ref().unwrap();
    assert!(!stale.exists(), "a dead mount's copies are removed");
    let big = fuse.path().join("usr/lib/libbig.so");
    let want = noise(1, 1_300_000);

    // Nothing local yet: served by reads.
    let held = File::open(&big).unwrap();
    assert_eq!(fs::read(&big).unwrap(), want);
    // Local now, but an open in the normal mode holds the inode: the
    // kernel refuses a second mode, so the new open stays normal (a wrong
    // choice here is EIO for the reader).
    source.local.store(true, Ordering::SeqCst);
    assert_eq!(fs::read(&big).unwrap(), want);
    let s = m.passthrough_stats().unwrap();
    if !s.active {
        harness::skip("the kernel does not offer FUSE passthrough here (Linux 6.9+, root)");
        return;
    }
    assert_eq!((s.passthrough_opens, s.cached_opens), (0, 3), "{s:?}");
    drop(held);

    // With the normal opens gone, the next open is passed through: the
    // file is copied once, then the kernel reads it with no daemon read.
    let got = read_until(m, &big, |s| s.passthrough_opens > 0);
    assert_eq!(got, want);
    let s = m.passthrough_stats().unwrap();
    assert_eq!(s.materialized_files, 1, "{s:?}");
    assert_eq!(s.materialized_bytes, 1_300_000, "{s:?}");
    let reads = source.reads.load(Ordering::SeqCst);
    let held = File::open(&big).unwrap();
    let mut again = vec![0u8; want.len()];
    FileExt::read_exact_at(&held, &mut again, 0).unwrap();
    assert_eq!(again, want);
    assert_eq!(fs::read(&big).unwrap(), want);
    assert_eq!(
        source.reads.load(Ordering::SeqCst),
        reads,
        "a passed-through file was read through the daemon"
    );
    let s = m.passthrough_stats().unwrap();
    assert!(s.passthrough_opens >= 3, "{s:?}");
    assert_eq!(s.materialized_files, 1, "the backing file is reused: {s:?}");
    assert_eq!(s.stored_bytes, 1_300_000, "{s:?}");

    // No room for a second file while libbig.so is open: libodd.so is
    // served by reads, and nothing is evicted.
    let odd = fuse.path().join("usr/lib/libodd.so");
    assert_eq!(fs::read(&odd).unwrap(), noise(2, 70_001));
    assert_eq!(m.passthrough_stats().unwrap().evicted_files, 0);
    drop(held);
    // Once it is closed, libbig.so's copy makes way.
    let got = read_until(m, &odd, |s| s.evicted_files == 1);
    assert_eq!(got, noise(2, 70_001));
    let s = m.passthrough_stats().unwrap();
    assert_eq!(s.stored_bytes, 70_001, "{s:?}");
    // Larger than the capacity: always served by reads.
    let sparse = fs::read(fuse.path().join("usr/lib/sparse.img")).unwrap();
    assert_eq!(sparse.len(), (3 << 20) + 17);
    assert!(sparse.ends_with(b"tail after a hole"));
    assert_eq!(m.passthrough_stats().unwrap().materialized_files, 2);
    // Still readable after all that.
    assert_eq!(fs::read(&big).unwrap(), want);
    // A copy deleted from under the mount is made again at the next open.
    let own = backing.join(format!("imagefs-passthrough-{}", std::process::id()));
    for f in fs::read_dir(&own).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    let before = m.passthrough_stats().unwrap().materialized_files;
    let got = read_until(m, &big, |s| s.materialized_files == before + 1);
    assert_eq!(got, want);
    // The backing directory goes with the mount.
    drop(fuse);
    let left: Vec<_> = fs::read_dir(&backing).unwrap().collect();
    assert!(left.is_empty(), "left in {}: {left:?}", backing.display());
}
