//! Checking the image through the Linux kernel (loop mounts) and e2fsck.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use chunker::tree::{InodeId, InodeKind};

use super::{Built, SparseHash, dir_links, report, show};

impl Built {
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Exit 0 still allows remarks that are not errors ("extent tree could
    // be narrower"); a clean image gets only the pass lines and the
    // summary.
    let remarks: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.starts_with("Pass ") && !l.contains(" files ("))
        .collect();
    assert!(
        out.status.success() && remarks.is_empty(),
        "e2fsck -fn failed ({}):\n{}{}",
        out.status,
        stdout,
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
