//! Harness for the `ext4_read` fuzz target (and its regression tests):
//! the reader over an image held in memory, walking the tree under a work
//! bound. Not part of the API.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::Arc;

use super::{Ext4Meta, FileType, MetaError, ROOT_INO};
use crate::device::BlockDevice;

/// The most inodes one walk looks at.
pub const MAX_INODES: usize = 2048;
/// The most file bytes one walk reads.
pub const MAX_FILE_BYTES: u64 = 4 << 20;
/// The most bytes read from one file.
const MAX_BYTES_PER_FILE: u64 = 64 << 10;

/// An image in memory.
#[derive(Debug)]
pub struct MemImage(pub Vec<u8>);

impl BlockDevice for MemImage {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let slice = usize::try_from(offset)
            .ok()
            .and_then(|start| self.0.get(start..start.checked_add(buf.len())?));
        match slice {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} bytes at {offset}: past the end", buf.len()),
            )),
        }
    }

    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

/// What a walk saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Walked {
    /// Inodes decoded.
    pub inodes: usize,
    /// Directory entries listed.
    pub entries: usize,
    /// File bytes read.
    pub file_bytes: u64,
    /// Symlink targets read.
    pub links: usize,
    /// Xattrs listed.
    pub xattrs: usize,
    /// Errors met past the superblock (each stops only its own branch).
    pub errors: usize,
}

/// Opens `image` and walks its tree breadth-first from the root: every
/// inode decoded once, directories listed, files read (in part), symlink
/// targets and xattrs read, each inode's path resolved again by name.
/// Bounded by [`MAX_INODES`] and [`MAX_FILE_BYTES`]. Errors below the
/// superblock are counted, not returned: a corrupt entry must not hide
/// the rest from the fuzzer.
pub fn walk(image: Vec<u8>) -> Result<Walked, MetaError> {
    let meta = Ext4Meta::open(Arc::new(MemImage(image)))?;
    let _ = meta.statfs();
    let mut seen = HashSet::new();
    let mut queue = VecDeque::from([(ROOT_INO, b"/".to_vec())]);
    let mut walked = Walked::default();
    while let Some((ino, path)) = queue.pop_front() {
        if walked.inodes >= MAX_INODES {
            break;
        }
        if !seen.insert(ino) {
            continue;
        }
        walked.inodes += 1;
        if let Err(e) = visit(&meta, ino, &path, &mut walked, &mut queue) {
            // Every error names where it is; a message that is empty
            // would not.
            assert!(!e.to_string().is_empty());
            walked.errors += 1;
        }
    }
    Ok(walked)
}

fn visit(
    meta: &Ext4Meta,
    ino: u32,
    path: &[u8],
    walked: &mut Walked,
    queue: &mut VecDeque<(u32, Vec<u8>)>,
) -> Result<(), MetaError> {
    let inode = meta.inode(ino)?;
    walked.xattrs += meta.xattrs(ino)?.len();
    match inode.file_type() {
        Some(FileType::Directory) => {
            for entry in &meta.read_dir(ino)?.entries {
                walked.entries += 1;
                let mut child = path.to_vec();
                if child.last() != Some(&b'/') {
                    child.push(b'/');
                }
                child.extend_from_slice(&entry.name);
                queue.push_back((entry.ino, child));
            }
        }
        Some(FileType::Regular) => {
            let map = meta.file_map(ino)?;
            let left = MAX_FILE_BYTES.saturating_sub(walked.file_bytes);
            let want = map.size().min(MAX_BYTES_PER_FILE).min(left);
            // Below 64 KiB.
            let mut buf = vec![0u8; want as usize];
            map.read_at(meta.source(), &mut buf, 0)?;
            walked.file_bytes += want;
        }
        Some(FileType::Symlink) => {
            meta.read_link(ino)?;
            walked.links += 1;
        }
        _ => {}
    }
    // Names lead back to the same inode (unless a `..` or a duplicate
    // name in a corrupt directory says otherwise; only errors matter).
    if path.len() <= 4096 {
        meta.resolve(path)?;
    }
    Ok(())
}
