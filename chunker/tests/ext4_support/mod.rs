//! Test harness for the ext4 writer: build a tree and its image, then check
//! the image with e2fsck, with the `ext4-view` crate and through the Linux
//! kernel (loop mounts, read-only and read-write) against the tree.
//!
//! Every check compares against the [`Tree`] the image was built from, plus
//! the SHA-256 of each file's bytes recorded while they were streamed in.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

use chunker::ext4::{DataOut, Ext4Builder, Ext4Options, Ext4Summary};
use chunker::sink::FileSink;
use chunker::tree::{Inode, InodeId, InodeKind, Metadata, Tree};
use sha2::{Digest, Sha256};

mod kernel;
mod view;

pub use kernel::fsck;

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
}

fn report(what: &str, bad: Vec<String>) {
    if !bad.is_empty() {
        let shown: Vec<_> = bad.iter().take(30).cloned().collect();
        panic!("{what}: {} mismatches:\n{}", bad.len(), shown.join("\n"));
    }
}
