//! A canonical listing of a filesystem tree, three ways to produce one (a
//! directory on the host, an ext4 image read with `ext4-view`, and `umoci
//! unpack` as the independent reference), and a readable diff.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// The type of a filesystem object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FileKind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

/// Everything the tests compare about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Type.
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`0o7777` mask).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// mtime, whole seconds.
    pub mtime: i64,
    /// mtime, nanoseconds.
    pub mtime_nanos: u32,
    /// ctime (seconds, nanoseconds), when it is the image's own: `None`
    /// from a producer that cannot see it (ext4-view) or whose ctime is
    /// not the image's (an unpacked reference: the time of unpacking).
    pub ctime: Option<(i64, u32)>,
    /// Allocated 512-byte blocks (`st_blocks`), when they are the image's:
    /// `None` as for `ctime` (an unpacked reference's blocks are the host
    /// filesystem's).
    pub blocks: Option<u64>,
    /// Size of regular files and symlinks; 0 for others (directory sizes
    /// depend on the filesystem's layout, not on the tree).
    pub size: u64,
    /// SHA-256 (hex) of a regular file's content.
    pub sha256: Option<String>,
    /// A symlink's target.
    pub target: Option<Vec<u8>>,
    /// Extended attributes, sorted by name.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Device numbers of character and block devices.
    pub rdev: Option<(u32, u32)>,
    /// For a non-directory with several names in the listing: the smallest
    /// path naming the same inode (the same for all of them).
    pub link_group: Option<String>,
}

/// Path (`/`, `/a`, `/a/b`) to entry.
pub type Listing = BTreeMap<String, Entry>;

/// Fields a comparison leaves out, for producers that cannot see them or
/// for metadata that the OCI rules leave unspecified.
#[derive(Clone, Debug, Default)]
pub struct Mask {
    /// Ignore extended attributes everywhere.
    pub xattrs: bool,
    /// Ignore device numbers everywhere.
    pub rdev: bool,
    /// Ignore hard-link identity everywhere.
    pub link_group: bool,
    /// Ignore sub-second mtimes everywhere.
    pub mtime_nanos: bool,
    /// Ignore the mtime of these paths (for example implicit parents).
    pub mtime_of: BTreeSet<String>,
    /// Ignore mode, owner and mtime of these paths.
    pub meta_of: BTreeSet<String>,
}

impl Mask {
    /// The mask for an `ext4-view` listing, which cannot see xattrs, device
    /// numbers or inode numbers (ext4-view 1.0 exposes none of them).
    pub fn ext4_view() -> Self {
        Mask {
            xattrs: true,
            rdev: true,
            link_group: true,
            ..Mask::default()
        }
    }

    /// Applies the mask to a listing.
    pub fn apply(&self, listing: &Listing) -> Listing {
        let mut out = listing.clone();
        for (path, e) in out.iter_mut() {
            if self.xattrs {
                e.xattrs.clear();
            }
            if self.rdev {
                e.rdev = None;
            }
            if self.link_group {
                e.link_group = None;
            }
            if self.mtime_nanos {
                e.mtime_nanos = 0;
            }
            if self.mtime_of.contains(path) || self.meta_of.contains(path) {
                e.mtime = 0;
                e.mtime_nanos = 0;
            }
            if self.meta_of.contains(path) {
                e.mode = 0;
                e.uid = 0;
                e.gid = 0;
            }
        }
        out
    }
}

fn sha256_reader(mut r: impl Read) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn join(parent: &str, name: &str) -> String {
    if parent == "/" {
        format!("/{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Major and minor of a Linux `dev_t` (glibc's encoding).
pub fn dev_major_minor(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

fn set_link_groups(listing: &mut Listing, inodes: &HashMap<(u64, u64), Vec<String>>) {
    for paths in inodes.values() {
        if paths.len() > 1 {
            let first = paths.iter().min().cloned();
            for p in paths {
                if let Some(e) = listing.get_mut(p) {
                    e.link_group = first.clone();
                }
            }
        }
    }
}

/// Lists a directory tree on the host (a mount point or an unpacked
/// rootfs). Paths in `ignore` (such as `/lost+found`) are skipped with
/// everything below them.
pub fn list_dir(root: &Path, ignore: &[&str]) -> io::Result<Listing> {
    let mut listing = Listing::new();
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![("/".to_string(), root.to_path_buf())];
    while let Some((path, host)) = stack.pop() {
        let md = fs::symlink_metadata(&host)?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_file() {
            FileKind::File
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_char_device() {
            FileKind::CharDev
        } else if ft.is_block_device() {
            FileKind::BlockDev
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else {
            FileKind::Socket
        };
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(&host)? {
            let value = xattr::get(&host, &name)?.unwrap_or_default();
            xattrs.insert(name.to_string_lossy().into_owned(), value);
        }
        let entry = Entry {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            mtime_nanos: md.mtime_nsec() as u32,
            ctime: Some((md.ctime(), md.ctime_nsec() as u32)),
            blocks: Some(md.blocks()),
            size: if matches!(kind, FileKind::File | FileKind::Symlink) {
                md.size()
            } else {
                0
            },
            sha256: if kind == FileKind::File {
                Some(sha256_reader(File::open(&host)?)?)
            } else {
                None
            },
            target: if kind == FileKind::Symlink {
                Some(fs::read_link(&host)?.as_os_str().as_bytes().to_vec())
            } else {
                None
            },
            xattrs,
            rdev: if matches!(kind, FileKind::CharDev | FileKind::BlockDev) {
                Some(dev_major_minor(md.rdev()))
            } else {
                None
            },
            link_group: None,
        };
        if kind != FileKind::Dir {
            inodes
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(path.clone());
        }
        listing.insert(path.clone(), entry);
        if kind == FileKind::Dir {
            for child in fs::read_dir(&host)? {
                let child = child?;
                let name = child.file_name().to_string_lossy().into_owned();
                let p = join(&path, &name);
                if !ignore.contains(&p.as_str()) {
                    stack.push((p, child.path()));
                }
            }
        }
    }
    set_link_groups(&mut listing, &inodes);
    Ok(listing)
}

fn ext4_err(e: ext4_view::Ext4Error) -> io::Error {
    io::Error::other(e)
}

/// Lists an ext4 image with the `ext4-view` crate (an independent reader).
///
/// ext4-view 1.0 exposes type, mode, uid/gid, mtime with nanoseconds,
/// size, content and symlink targets. It does not expose extended
/// attributes, device numbers, inode numbers, the change time or the
/// allocated blocks, so `xattrs` stays empty, `rdev` and `link_group` stay
/// `None` (compare with [`Mask::ext4_view`]), and so do `ctime` and
/// `blocks` (never compared with `None`).
pub fn list_ext4_image(image: &Path, ignore: &[&str]) -> io::Result<Listing> {
    use ext4_view::{Ext4, FileType};
    let fs = Ext4::load_from_path(image).map_err(ext4_err)?;
    let mut listing = Listing::new();
    let root = fs.symlink_metadata("/").map_err(ext4_err)?;
    let mut pending = vec![("/".to_string(), root)];
    while let Some((path, md)) = pending.pop() {
        let ft = md.file_type();
        let kind = match ft {
            FileType::Directory => FileKind::Dir,
            FileType::Regular => FileKind::File,
            FileType::Symlink => FileKind::Symlink,
            FileType::CharacterDevice => FileKind::CharDev,
            FileType::BlockDevice => FileKind::BlockDev,
            FileType::Fifo => FileKind::Fifo,
            FileType::Socket => FileKind::Socket,
        };
        let sha256 = if kind == FileKind::File && md.len() == 0 {
            // Skips a path lookup per empty file (100,000 in one directory).
            Some(hex::encode(Sha256::digest(b"")))
        } else if kind == FileKind::File {
            let f = fs.open(path.as_str()).map_err(ext4_err)?;
            Some(sha256_reader(f)?)
        } else {
            None
        };
        let target = if kind == FileKind::Symlink {
            Some(
                fs.read_link(path.as_str())
                    .map_err(ext4_err)?
                    .as_ref()
                    .to_vec(),
            )
        } else {
            None
        };
        let t = md.modified();
        listing.insert(
            path.clone(),
            Entry {
                kind,
                mode: u32::from(md.mode()),
                uid: md.uid(),
                gid: md.gid(),
                mtime: t.seconds(),
                mtime_nanos: t.nanoseconds(),
                ctime: None,
                blocks: None,
                size: if matches!(kind, FileKind::File | FileKind::Symlink) {
                    md.len()
                } else {
                    0
                },
                sha256,
                target,
                xattrs: BTreeMap::new(),
                rdev: None,
                link_group: None,
            },
        );
        if kind == FileKind::Dir {
            for child in fs.read_dir(path.as_str()).map_err(ext4_err)? {
                let child = child.map_err(ext4_err)?;
                let name = child.file_name();
                let name = String::from_utf8_lossy(name.as_ref()).into_owned();
                if name == "." || name == ".." {
                    continue;
                }
                let p = join(&path, &name);
                if !ignore.contains(&p.as_str()) {
                    pending.push((p, child.metadata().map_err(ext4_err)?));
                }
            }
        }
    }
    Ok(listing)
}

/// Runs `umoci unpack --image LAYOUT:REF BUNDLE` (as root, so owners,
/// devices and xattrs are applied) and lists `BUNDLE/rootfs`. `bundle` must
/// not exist yet.
pub fn umoci_reference(layout: &Path, ref_name: &str, bundle: &Path) -> io::Result<Listing> {
    let image = format!("{}:{ref_name}", layout.display());
    let out = Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(bundle)
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "umoci unpack --image {image} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    list_dir(&bundle.join("rootfs"), &[]).map(unpacked)
}

/// A listing of an unpacked tree as a reference for an image: without
/// the change times (when it was unpacked) and allocated blocks (the host
/// filesystem's), which the image does not share.
pub fn unpacked(mut listing: Listing) -> Listing {
    for e in listing.values_mut() {
        e.ctime = None;
        e.blocks = None;
    }
    listing
}

struct Show<'a>(&'a Option<Vec<u8>>);
impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(b) => write!(f, "{:?}", String::from_utf8_lossy(b)),
            None => write!(f, "-"),
        }
    }
}

fn show_xattrs(x: &BTreeMap<String, Vec<u8>>) -> String {
    let items: Vec<String> = x
        .iter()
        .map(|(k, v)| {
            if v.len() > 24 {
                format!(
                    "{k}=<{} bytes, sha256 {}>",
                    v.len(),
                    &hex::encode(Sha256::digest(v))[..12]
                )
            } else {
                format!("{k}={}", hex::encode(v))
            }
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// Every difference between two listings, one readable line each.
pub fn diff(a_name: &str, a: &Listing, b_name: &str, b: &Listing) -> Vec<String> {
    let mut out = Vec::new();
    for (path, x) in a {
        let Some(y) = b.get(path) else {
            out.push(format!("{path}: only in {a_name} ({:?})", x.kind));
            continue;
        };
        let mut field = |name: &str, xs: String, ys: String| {
            if xs != ys {
                out.push(format!("{path}: {name}: {a_name} {xs}, {b_name} {ys}"));
            }
        };
        field("kind", format!("{:?}", x.kind), format!("{:?}", y.kind));
        field("mode", format!("{:o}", x.mode), format!("{:o}", y.mode));
        field("uid", x.uid.to_string(), y.uid.to_string());
        field("gid", x.gid.to_string(), y.gid.to_string());
        field(
            "mtime",
            format!("{}.{:09}", x.mtime, x.mtime_nanos),
            format!("{}.{:09}", y.mtime, y.mtime_nanos),
        );
        // Only where both producers see them as the image's.
        if let (Some(a), Some(b)) = (x.ctime, y.ctime) {
            field(
                "ctime",
                format!("{}.{:09}", a.0, a.1),
                format!("{}.{:09}", b.0, b.1),
            );
        }
        if let (Some(a), Some(b)) = (x.blocks, y.blocks) {
            field("blocks", a.to_string(), b.to_string());
        }
        field("size", x.size.to_string(), y.size.to_string());
        field(
            "sha256",
            format!("{:?}", x.sha256),
            format!("{:?}", y.sha256),
        );
        field(
            "target",
            Show(&x.target).to_string(),
            Show(&y.target).to_string(),
        );
        field("xattrs", show_xattrs(&x.xattrs), show_xattrs(&y.xattrs));
        field("rdev", format!("{:?}", x.rdev), format!("{:?}", y.rdev));
        field(
            "link group",
            format!("{:?}", x.link_group),
            format!("{:?}", y.link_group),
        );
    }
    for (path, y) in b {
        if !a.contains_key(path) {
            out.push(format!("{path}: only in {b_name} ({:?})", y.kind));
        }
    }
    out
}

/// Panics listing every difference (up to 200 lines) if the listings differ
/// after `mask` is applied to both.
pub fn assert_same(a_name: &str, a: &Listing, b_name: &str, b: &Listing, mask: &Mask) {
    let d = diff(a_name, &mask.apply(a), b_name, &mask.apply(b));
    if !d.is_empty() {
        let shown: Vec<&str> = d.iter().take(200).map(String::as_str).collect();
        panic!(
            "{} differences between {a_name} and {b_name}:\n  {}{}",
            d.len(),
            shown.join("\n  "),
            if d.len() > 200 { "\n  ..." } else { "" }
        );
    }
}
