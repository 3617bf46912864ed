//! Test harness for the ext4 writer: build a tree and its image, then check
//! the image with e2fsck, with the `ext4-view` crate and through the Linux
//! kernel (loop mounts, read-only and read-write) against the tree.
//!
//! Every check compares against the [`Tree`] the image was built from, plus
//! the SHA-256 of each file's bytes recorded while they were streamed in.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use chunker::ext4::{Ext4Builder, Ext4Options, Ext4Summary};
use chunker::sink::FileSink;
use chunker::tree::{Inode, InodeId, InodeKind, Metadata, Tree};
use sha2::{Digest, Sha256};

/// A path as components.
pub fn p(path: &str) -> Vec<&[u8]> {
    path.split('/').map(str::as_bytes).collect()
}

/// Attributes with the given mode and everything else zero.
pub fn meta(mode: u16) -> Metadata {
    Metadata {
        mode,
        ..Metadata::default()
    }
}

/// A content digest that skips all-zero 64 KiB windows (hashing only the
/// others, with their offsets, and the length), so that multi-GiB sparse
/// files are cheap to compare; independent of how the bytes are split
/// into calls.
pub struct SparseHash {
    hash: Sha256,
    window: Vec<u8>,
    index: u64,
    len: u64,
}

const WINDOW: usize = 64 << 10;

impl SparseHash {
    /// An empty digest.
    pub fn new() -> Self {
        SparseHash {
            hash: Sha256::new(),
            window: Vec::with_capacity(WINDOW),
            index: 0,
            len: 0,
        }
    }

    /// Add bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.len += bytes.len() as u64;
        while !bytes.is_empty() {
            let take = (WINDOW - self.window.len()).min(bytes.len());
            self.window.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.window.len() == WINDOW {
                self.flush();
            }
        }
    }

    fn flush(&mut self) {
        if self.window.iter().any(|&b| b != 0) {
            self.hash.update(self.index.to_le_bytes());
            self.hash.update(&self.window);
        }
        self.index += 1;
        self.window.clear();
    }

    /// The digest.
    pub fn finish(mut self) -> Vec<u8> {
        self.flush();
        self.hash.update(self.len.to_le_bytes());
        self.hash.finalize().to_vec()
    }
}

/// A reader that hashes what passes through it.
struct Tee<'a> {
    inner: &'a mut dyn Read,
    hash: SparseHash,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Builds a tree and its image side by side.
pub struct ImageBuilder {
    builder: Ext4Builder<FileSink>,
    /// The tree being built.
    pub tree: Tree,
    hashes: BTreeMap<InodeId, Vec<u8>>,
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ImageBuilder {
    /// An empty tree and image.
    pub fn new(opts: Ext4Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.ext4");
        let file = fs::File::create(&path).unwrap();
        ImageBuilder {
            builder: Ext4Builder::new(FileSink::new(file), opts).unwrap(),
            tree: Tree::new(),
            hashes: BTreeMap::new(),
            dir,
            path,
        }
    }

    /// A regular file with these bytes.
    pub fn file(&mut self, path: &str, data: &[u8], meta: Metadata) -> InodeId {
        self.file_from(path, &mut &data[..], data.len() as u64, meta)
    }

    /// A regular file of `size` bytes read from `src`.
    pub fn file_from(
        &mut self,
        path: &str,
        src: &mut dyn Read,
        size: u64,
        meta: Metadata,
    ) -> InodeId {
        let mut tee = Tee {
            inner: src,
            hash: SparseHash::new(),
        };
        let data = self.builder.write_file(&mut tee, size).unwrap();
        let id = self
            .tree
            .insert(&p(path), InodeKind::File(data), meta)
            .unwrap();
        self.hashes.insert(id, tee.hash.finish());
        id
    }

    /// Any other kind of entry.
    pub fn node(&mut self, path: &str, kind: InodeKind, meta: Metadata) -> InodeId {
        self.tree.insert(&p(path), kind, meta).unwrap()
    }

    /// A hard link.
    pub fn link(&mut self, path: &str, target: &str) {
        self.tree.link(&p(path), &p(target)).unwrap();
    }

    /// Start the next layer.
    pub fn begin_layer(&mut self) {
        self.builder.begin_layer();
    }

    /// Write the metadata and finish the image.
    pub fn build(self) -> Built {
        let (_, summary) = self.builder.finish(&self.tree).unwrap();
        assert_eq!(fs::metadata(&self.path).unwrap().len(), summary.size);
        Built {
            path: self.path,
            tree: self.tree,
            hashes: self.hashes,
            summary,
            _dir: self.dir,
        }
    }
}

/// One path the image should hold.
pub struct Expected<'t> {
    /// Absolute path bytes, `/` for the root.
    pub path: Vec<u8>,
    /// The tree inode.
    pub id: InodeId,
    /// The inode.
    pub inode: &'t Inode,
    /// For directories, the sorted entry names (with our `lost+found`).
    pub children: Option<Vec<Vec<u8>>>,
}

/// A finished image and the tree it came from.
pub struct Built {
    /// The image file.
    pub path: PathBuf,
    /// The tree.
    pub tree: Tree,
    hashes: BTreeMap<InodeId, Vec<u8>>,
    /// What the writer reported.
    pub summary: Ext4Summary,
    _dir: tempfile::TempDir,
}

fn bytes_path(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = parent.to_vec();
    if v != b"/" {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Expected link count of a directory with `subdirs` subdirectories.
fn dir_links(subdirs: usize) -> u64 {
    let n = 2 + subdirs as u64;
    if n > 65000 { 1 } else { n }
}

impl Built {
    /// Every path, the root first, parents before children.
    pub fn expected(&self) -> Vec<Expected<'_>> {
        let tree = &self.tree;
        let children = |id: InodeId, is_root: bool| {
            tree.entries(id).map(|e| {
                let mut names: Vec<Vec<u8>> = e.keys().cloned().collect();
                if is_root && !e.contains_key(&b"lost+found"[..]) {
                    names.push(b"lost+found".to_vec());
                    names.sort();
                }
                names
            })
        };
        let root = tree.root();
        let mut out = vec![Expected {
            path: b"/".to_vec(),
            id: root,
            inode: tree.inode(root),
            children: children(root, true),
        }];
        let mut dir_paths = BTreeMap::from([(root, b"/".to_vec())]);
        tree.walk(|parent, name, id| {
            let path = bytes_path(&dir_paths[&parent], name);
            if tree.inode(id).is_dir() {
                dir_paths.insert(id, path.clone());
            }
            out.push(Expected {
                path,
                id,
                inode: tree.inode(id),
                children: children(id, false),
            });
        });
        out
    }

    fn subdirs(&self, e: &Expected<'_>) -> usize {
        let tree_subdirs = self.tree.entries(e.id).map_or(0, |en| {
            en.values()
                .filter(|&&c| self.tree.inode(c).is_dir())
                .count()
        });
        let added_lf = e.id == self.tree.root()
            && !self
                .tree
                .entries(e.id)
                .unwrap()
                .contains_key(&b"lost+found"[..]);
        tree_subdirs + usize::from(added_lf)
    }

    /// Run every check: e2fsck, ext4-view, read-only mount, read-write
    /// mount (with writes, then e2fsck again).
    pub fn check_all(&self) {
        fsck(&self.path);
        self.check_view();
        self.check_mount(true);
        self.check_mount(false);
    }

    /// Read the image with the `ext4-view` crate and compare. (ext4-view
    /// 1.0 exposes no inode numbers, xattrs or device numbers; the mount
    /// checks cover those.)
    pub fn check_view(&self) {
        let fs = ext4_view::Ext4::load_from_path(&self.path).expect("ext4-view loads the image");
        let mut bad = Vec::new();
        // Metadata comes from each directory's listing rather than a path
        // lookup per entry: lookups scan linear directories, which would
        // make a 100,000-entry directory quadratic.
        let expected = self.expected();
        let mut found: BTreeMap<Vec<u8>, Result<ext4_view::Metadata, String>> = BTreeMap::new();
        found.insert(
            b"/".to_vec(),
            fs.symlink_metadata("/").map_err(|e| e.to_string()),
        );
        for e in expected.iter().filter(|e| e.inode.is_dir()) {
            let Ok(entries) = fs.read_dir(&e.path[..]) else {
                continue;
            };
            for d in entries {
                let d = d.unwrap();
                let name = d.file_name().as_ref().to_vec();
                if name != b"." && name != b".." {
                    found.insert(
                        bytes_path(&e.path, &name),
                        d.metadata().map_err(|e| e.to_string()),
                    );
                }
            }
        }
        for e in expected {
            let path = show(&e.path);
            let md = match found.get(&e.path) {
                Some(Ok(md)) => md,
                Some(Err(err)) if e.inode.meta.mtime.secs as i32 as u32 >= 1 << 31 => {
                    // ext4-view 1.0 decodes the 32-bit seconds field with
                    // i32::try_from(u32), so it rejects every time whose
                    // low word has the top bit set (before 1970, after
                    // 2038) that the kernel reads fine; the mount checks
                    // cover these.
                    eprintln!(
                        "NOTE {path}: ext4-view 1.0 cannot decode mtime {:?}: {err}",
                        e.inode.meta.mtime
                    );
                    continue;
                }
                Some(Err(err)) => {
                    bad.push(format!("{path}: ext4-view: {err}"));
                    continue;
                }
                None => {
                    bad.push(format!("{path}: ext4-view does not find it"));
                    continue;
                }
            };
            let m = &e.inode.meta;
            let ft = md.file_type();
            let type_ok = match &e.inode.kind {
                InodeKind::Dir { .. } => ft.is_dir(),
                InodeKind::File(_) => ft.is_regular_file(),
                InodeKind::Symlink { .. } => ft.is_symlink(),
                InodeKind::CharDev { .. } => ft.is_char_dev(),
                InodeKind::BlockDev { .. } => ft.is_block_dev(),
                InodeKind::Fifo => ft.is_fifo(),
                InodeKind::Socket => ft.is_socket(),
            };
            let got = (
                md.mode(),
                md.uid(),
                md.gid(),
                md.modified().seconds(),
                md.modified().nanoseconds(),
            );
            let want = (m.mode & 0o7777, m.uid, m.gid, m.mtime.secs, m.mtime.nanos);
            if !type_ok || got != want {
                bad.push(format!("{path}: ext4-view type ok {type_ok}, (mode, uid, gid, secs, nanos) {got:?} want {want:?}"));
            }
            match &e.inode.kind {
                InodeKind::File(data) => {
                    if md.len() != data.size {
                        bad.push(format!(
                            "{path}: ext4-view size {} want {}",
                            md.len(),
                            data.size
                        ));
                    }
                    let mut h = SparseHash::new();
                    let mut buf = vec![0u8; 1 << 20];
                    let mut f = (data.size > 0).then(|| fs.open(&e.path[..]).unwrap());
                    while let Some(f) = &mut f {
                        let n = f.read_bytes(&mut buf).unwrap();
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                    }
                    if h.finish() != self.hashes[&e.id] {
                        bad.push(format!("{path}: ext4-view content differs"));
                    }
                }
                InodeKind::Symlink { target } => {
                    let got = fs.read_link(&e.path[..]).unwrap();
                    if got.as_ref() != &target[..] {
                        bad.push(format!("{path}: ext4-view link target {:?}", got));
                    }
                }
                InodeKind::Dir { .. } => {
                    let mut names: Vec<Vec<u8>> = fs
                        .read_dir(&e.path[..])
                        .unwrap()
                        .map(|d| d.unwrap().file_name().as_ref().to_vec())
                        .filter(|n| n != b"." && n != b"..")
                        .collect();
                    names.sort();
                    if Some(&names) != e.children.as_ref() {
                        bad.push(format!(
                            "{path}: ext4-view lists {} entries, want {}",
                            names.len(),
                            e.children.as_ref().unwrap().len()
                        ));
                    }
                }
                _ => {}
            }
        }
        report("ext4-view", bad);
    }

    /// Loop-mount the image and compare through the kernel. Read-write
    /// mounts also write to the image and then run e2fsck again.
    pub fn check_mount(&self, read_only: bool) {
        let Some(mnt) = Mount::new(&self.path, read_only) else {
            return;
        };
        let mut bad = Vec::new();
        let mut ino_of: BTreeMap<InodeId, u64> = BTreeMap::new();
        let mut id_of: BTreeMap<u64, InodeId> = BTreeMap::new();
        for e in self.expected() {
            let host = mnt.dir.path().join(OsStr::from_bytes(&e.path[1..]));
            let path = show(&e.path);
            let md = match fs::symlink_metadata(&host) {
                Ok(md) => md,
                Err(err) => {
                    bad.push(format!("{path}: kernel: {err}"));
                    continue;
                }
            };
            let m = &e.inode.meta;
            let ft = md.file_type();
            let (type_ok, links) = match &e.inode.kind {
                InodeKind::Dir { .. } => (ft.is_dir(), dir_links(self.subdirs(&e))),
                InodeKind::File(_) => (ft.is_file(), u64::from(e.inode.names)),
                InodeKind::Symlink { .. } => (ft.is_symlink(), u64::from(e.inode.names)),
                InodeKind::CharDev { .. } => (ft.is_char_device(), u64::from(e.inode.names)),
                InodeKind::BlockDev { .. } => (ft.is_block_device(), u64::from(e.inode.names)),
                InodeKind::Fifo => (ft.is_fifo(), u64::from(e.inode.names)),
                InodeKind::Socket => (ft.is_socket(), u64::from(e.inode.names)),
            };
            let got = (
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
                md.mtime(),
                md.mtime_nsec(),
                md.nlink(),
            );
            let want = (
                u32::from(m.mode & 0o7777),
                m.uid,
                m.gid,
                m.mtime.secs,
                i64::from(m.mtime.nanos),
                links,
            );
            if !type_ok || got != want {
                bad.push(format!("{path}: kernel type ok {type_ok}, (mode, uid, gid, secs, nanos, nlink) {got:?} want {want:?}"));
            }
            // Hard-link identity: one inode number per tree inode.
            if *ino_of.entry(e.id).or_insert(md.ino()) != md.ino()
                || *id_of.entry(md.ino()).or_insert(e.id) != e.id
            {
                bad.push(format!(
                    "{path}: inode number {} breaks hard-link identity",
                    md.ino()
                ));
            }
            let mut names: BTreeSet<Vec<u8>> = BTreeSet::new();
            for name in xattr::list(&host).unwrap() {
                let value = xattr::get(&host, &name).unwrap();
                let name = name.as_bytes().to_vec();
                if m.xattrs.get(&name) != value.as_ref() {
                    bad.push(format!("{path}: xattr {} differs", show(&name)));
                }
                names.insert(name);
            }
            if names != m.xattrs.keys().cloned().collect() {
                bad.push(format!("{path}: xattr names {names:?}"));
            }
            match &e.inode.kind {
                InodeKind::File(data) => {
                    if md.len() != data.size {
                        bad.push(format!(
                            "{path}: kernel size {} want {}",
                            md.len(),
                            data.size
                        ));
                    } else if hash_file(&host) != self.hashes[&e.id] {
                        bad.push(format!("{path}: kernel content differs"));
                    }
                }
                InodeKind::Symlink { target } => {
                    let got = fs::read_link(&host).unwrap();
                    if got.as_os_str().as_bytes() != &target[..] {
                        bad.push(format!("{path}: kernel link target {got:?}"));
                    }
                }
                InodeKind::CharDev { major, minor } | InodeKind::BlockDev { major, minor } => {
                    let rdev = md.rdev();
                    let got = (
                        ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff),
                        (rdev & 0xff) | ((rdev >> 12) & !0xff),
                    );
                    if got != (u64::from(*major), u64::from(*minor)) {
                        bad.push(format!(
                            "{path}: kernel device {got:?} want {major}:{minor}"
                        ));
                    }
                }
                InodeKind::Dir { .. } => {
                    let mut names: Vec<Vec<u8>> = fs::read_dir(&host)
                        .unwrap()
                        .map(|d| d.unwrap().file_name().as_bytes().to_vec())
                        .collect();
                    names.sort();
                    if Some(&names) != e.children.as_ref() {
                        bad.push(format!(
                            "{path}: kernel lists {} entries, want {}",
                            names.len(),
                            e.children.as_ref().unwrap().len()
                        ));
                    }
                }
                _ => {}
            }
        }
        if !read_only {
            // The kernel allocates from our bitmaps; the result must stay
            // consistent.
            let d = mnt.dir.path().join("imagefs-rw-test");
            fs::create_dir(&d).unwrap();
            fs::write(d.join("data"), vec![0x5a; 300_000]).unwrap();
            xattr::set(d.join("data"), "user.written", b"yes").unwrap();
            for i in 0..50 {
                fs::write(d.join(format!("f{i}")), format!("{i}")).unwrap();
            }
            fs::remove_file(d.join("f3")).unwrap();
        }
        drop(mnt);
        report(
            if read_only {
                "read-only mount"
            } else {
                "read-write mount"
            },
            bad,
        );
        if !read_only {
            fsck(&self.path);
        }
    }
}

impl Built {
    /// Run `f` on the image mounted read-write (skipped, loudly, where we
    /// cannot mount), then check it with e2fsck.
    pub fn with_rw_mount(&self, f: impl FnOnce(&Path)) {
        let Some(mnt) = Mount::new(&self.path, false) else {
            return;
        };
        f(mnt.dir.path());
        drop(mnt);
        fsck(&self.path);
    }
}

fn hash_file(path: &Path) -> Vec<u8> {
    let mut f = fs::File::open(path).unwrap();
    let mut h = SparseHash::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finish()
}

fn report(what: &str, bad: Vec<String>) {
    if !bad.is_empty() {
        let shown: Vec<_> = bad.iter().take(30).cloned().collect();
        panic!("{what}: {} mismatches:\n{}", bad.len(), shown.join("\n"));
    }
}

/// `e2fsck -fn` must find nothing to fix; skipped (loudly) when e2fsck is
/// not installed.
pub fn fsck(image: &Path) {
    let e2fsck = Path::new("/usr/sbin/e2fsck");
    if !e2fsck.exists() {
        eprintln!(
            "SKIP e2fsck check: /usr/sbin/e2fsck is not installed (apt-get install e2fsprogs)"
        );
        return;
    }
    let out = Command::new(e2fsck).arg("-fn").arg(image).output().unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A loop mount, unmounted on drop.
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    /// Mount, or say why not and return `None` when we lack the privilege
    /// or the loop device support to mount.
    fn new(image: &Path, read_only: bool) -> Option<Mount> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if uid.as_deref().ok() != Some("0") {
            eprintln!("SKIP kernel mount check: not running as root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let opts = if read_only { "loop,ro" } else { "loop" };
        let out = Command::new("mount")
            .args(["-t", "ext4", "-o", opts])
            .arg(image)
            .arg(dir.path())
            .output()
            .unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
            if err.contains("permission denied")
                || err.contains("operation not permitted")
                || err.contains("failed to setup loop device")
            {
                eprintln!("SKIP kernel mount check: mount is not permitted here: {err}");
                return None;
            }
            let dmesg = Command::new("dmesg")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default();
            let dmesg = String::from_utf8_lossy(&dmesg);
            let tail: Vec<&str> = dmesg.lines().rev().take(10).collect();
            panic!(
                "mount -o {opts} failed: {err}\nkernel log:\n{}",
                tail.join("\n")
            );
        }
        Some(Mount { dir })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok && !std::thread::panicking() {
            panic!("umount {} failed", self.dir.path().display());
        }
    }
}
