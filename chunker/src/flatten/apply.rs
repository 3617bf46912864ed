//! Applying one layer's tar to the tree, per the OCI changeset rules.
//!
//! Regular files stream straight into the image as they are met; the tree
//! only records where their bytes went. Whiteouts apply to lower layers
//! only, so the applier remembers which directory entries this layer has
//! put (and their ancestors), by parent inode and name: an opaque marker
//! or whiteout that comes after same-layer entries prunes only what is not
//! from this layer. Keyed by inode, the set costs one name per entry,
//! whatever the depth (by path it cost the sum of all prefixes).

use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};

use super::entry::{self, Change, EntryError, PaxAttrs};
use super::limits::{Limits, MAX_FILE_SIZE};
use super::resolve;
use super::sparse::{self, SparseReader};
use super::tarstream::{TarEntry, TarError, TarReader};
use crate::ext4::Ext4Builder;
use crate::oci::{Digest, LimitExceeded};
use crate::sink::ImageSink;
use crate::tree::{InodeId, InodeKind, Tree, implicit_dir_metadata};

/// Errors from reading one layer's tar.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The tar stream cannot be read: truncated, not a tar, or the
    /// compression is corrupt.
    #[error("layer {layer}: cannot read the tar stream")]
    Read {
        /// The layer.
        layer: Digest,
        /// Why.
        source: io::Error,
    },
    /// One entry cannot be applied.
    #[error("layer {layer}: entry {entry:?}")]
    Entry {
        /// The layer.
        layer: Digest,
        /// The entry's path as written in the tar (shortened when long).
        entry: String,
        /// What is wrong with it.
        source: EntryError,
    },
}

/// An entry's name for an error: lossy UTF-8, at most 256 bytes of it.
fn entry_name(path: &[u8]) -> String {
    const SHOWN: usize = 256;
    if path.len() <= SHOWN {
        return String::from_utf8_lossy(path).into_owned();
    }
    format!(
        "{}... ({} bytes)",
        String::from_utf8_lossy(&path[..SHOWN]),
        path.len()
    )
}

fn refs(path: &[Vec<u8>]) -> Vec<&[u8]> {
    path.iter().map(Vec::as_slice).collect()
}

/// Per-layer state: the directory entries this layer has put, with their
/// ancestors, as `(parent inode, name)`.
#[derive(Debug, Default)]
struct Applier {
    touched: HashSet<(InodeId, Vec<u8>)>,
}

impl Applier {
    fn is_touched(&self, dir: InodeId, name: &[u8]) -> bool {
        // Borrowed lookups need the owned key; names are short.
        self.touched.contains(&(dir, name.to_vec()))
    }

    fn mark(&mut self, tree: &Tree, path: &[Vec<u8>]) {
        let mut cur = tree.root();
        for name in path {
            if !self.is_touched(cur, name) {
                self.touched.insert((cur, name.clone()));
            }
            match tree.child(cur, name) {
                Some(id) => cur = id,
                None => return,
            }
        }
    }

    /// Remove the lower-layer contents of directory `dir`, keeping whatever
    /// this layer put there. Iterative: the tree may be as deep as paths
    /// are allowed to be.
    fn prune(&self, tree: &mut Tree, dir: InodeId) {
        let mut todo = vec![dir];
        while let Some(dir) = todo.pop() {
            // Directories have one name, so nothing queued is freed before
            // it is reached; checked anyway, as a freed id would panic.
            if !tree.contains(dir) {
                continue;
            }
            let Some(entries) = tree.entries(dir) else {
                continue;
            };
            let children: Vec<(Vec<u8>, InodeId)> =
                entries.iter().map(|(n, &id)| (n.clone(), id)).collect();
            for (name, child) in children {
                if self.is_touched(dir, &name) {
                    todo.push(child);
                } else {
                    tree.remove_child(dir, &name);
                }
            }
        }
    }

    fn whiteout(&self, tree: &mut Tree, target: &[Vec<u8>]) -> Result<(), EntryError> {
        let Some((name, parents)) = target.split_last() else {
            return Err(crate::tree::TreeError::Root.into());
        };
        let Some(parent) = tree.lookup(&refs(parents)) else {
            return Ok(());
        };
        if self.is_touched(parent, name) {
            // Put by this layer: only lower-layer contents under it go.
            if let Some(id) = tree.child(parent, name) {
                self.prune(tree, id);
            }
        } else {
            tree.remove_child(parent, name);
        }
        Ok(())
    }

    fn opaque(&self, tree: &mut Tree, dir: &[Vec<u8>]) -> Result<(), EntryError> {
        if !dir.is_empty() {
            let exists_as_dir = tree
                .lookup(&refs(dir))
                .is_some_and(|id| tree.inode(id).is_dir());
            if !exists_as_dir {
                // The marker implies its directory.
                let kind = InodeKind::Dir {
                    entries: BTreeMap::new(),
                };
                tree.insert(&refs(dir), kind, implicit_dir_metadata())?;
            }
        }
        if let Some(id) = tree.lookup(&refs(dir)) {
            self.prune(tree, id);
        }
        Ok(())
    }

    fn apply<R: Read, S: ImageSink>(
        &mut self,
        reader: &mut TarReader<R>,
        entry: &TarEntry,
        limits: &Limits,
        tree: &mut Tree,
        builder: &mut Ext4Builder<S>,
    ) -> Result<(), EntryError> {
        let pax = match &entry.pax {
            Some(pairs) => {
                entry::pax_attrs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?
            }
            None => PaxAttrs::default(),
        };
        // A PAX sparse file's header holds a made-up name; the real one is
        // in its records.
        let raw_path = match pax.sparse.as_ref().and_then(|s| s.name.as_ref()) {
            Some(name) => name,
            None => &entry.path,
        };
        // Checked before anything else is done with the path.
        if raw_path.len() > limits.max_path_bytes {
            return Err(EntryError::PathTooLong {
                bytes: raw_path.len(),
                limit: limits.max_path_bytes,
            });
        }
        let path = entry::normalize_path(raw_path)?;
        entry::check_path(raw_path.len(), &path, limits)?;
        // Parents that are symlinks in lower layers lead where they point.
        let path = resolve::resolve_parent(tree, &path, limits)?;
        let (name, parent) = match path.split_last() {
            Some((name, parent)) => (name.as_slice(), parent),
            None => (&b""[..], &path[..0]),
        };
        match entry::classify(&path)? {
            Change::Ignore => return Ok(()),
            Change::Opaque => return self.opaque(tree, parent),
            Change::Whiteout(hidden) => {
                let mut target = parent.to_vec();
                target.push(hidden.to_vec());
                return self.whiteout(tree, &target);
            }
            Change::Put => {}
        }
        let header = &entry.header;
        let meta = entry::metadata(header, &pax)?;
        let mut kind = header.entry_type();
        if kind == tar::EntryType::Regular && raw_path.ends_with(b"/") && entry.size == 0 {
            // Pre-POSIX tars mark directories only by the trailing slash.
            kind = tar::EntryType::Directory;
        }
        if path.is_empty() {
            // `./` itself: the root directory's attributes.
            if !kind.is_dir() {
                return Err(crate::tree::TreeError::Root.into());
            }
            let root = tree.root();
            tree.inode_mut(root).meta = meta;
            return Ok(());
        }
        debug_assert!(!name.is_empty());
        let at = refs(&path);
        let (major, minor) = if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
            let major = header
                .device_major()
                .map_err(EntryError::Header)?
                .unwrap_or(0);
            let minor = header
                .device_minor()
                .map_err(EntryError::Header)?
                .unwrap_or(0);
            (major, minor)
        } else {
            (0, 0)
        };
        let link_target = || -> Result<Vec<u8>, EntryError> {
            let raw = entry.link.clone().ok_or(EntryError::NoLinkTarget)?;
            if raw.len() > limits.max_path_bytes {
                return Err(EntryError::PathTooLong {
                    bytes: raw.len(),
                    limit: limits.max_path_bytes,
                });
            }
            Ok(raw)
        };
        let inode = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                InodeKind::File(self.file(reader, entry, &pax, builder)?)
            }
            tar::EntryType::Directory => InodeKind::Dir {
                entries: BTreeMap::new(),
            },
            tar::EntryType::Symlink => InodeKind::Symlink {
                target: link_target()?,
            },
            tar::EntryType::Char => InodeKind::CharDev { major, minor },
            tar::EntryType::Block => InodeKind::BlockDev { major, minor },
            tar::EntryType::Fifo => InodeKind::Fifo,
            tar::EntryType::Link => {
                let raw = link_target()?;
                let target = entry::normalize_path(&raw).map_err(|_| EntryError::LinkEscapes {
                    target: String::from_utf8_lossy(&raw).into_owned(),
                })?;
                if target.is_empty() {
                    return Err(EntryError::LinkEscapes {
                        target: String::from_utf8_lossy(&raw).into_owned(),
                    });
                }
                entry::check_path(raw.len(), &target, limits)?;
                let target = resolve::resolve_parent(tree, &target, limits)?;
                tree.link(&at, &refs(&target))?;
                self.mark(tree, &path);
                return Ok(());
            }
            other => return Err(EntryError::UnknownType(char::from(other.as_byte()))),
        };
        tree.insert(&at, inode, meta)?;
        self.mark(tree, &path);
        Ok(())
    }

    /// Stream a regular file's data into the image. Sparse files (PAX or
    /// old GNU) are expanded with their holes skipped, never read.
    fn file<R: Read, S: ImageSink>(
        &self,
        reader: &mut TarReader<R>,
        entry: &TarEntry,
        pax: &PaxAttrs,
        builder: &mut Ext4Builder<S>,
    ) -> Result<crate::tree::FileData, EntryError> {
        let data_err = |e: io::Error| match LimitExceeded::find(&e) {
            Some(limit) => EntryError::TooLarge(limit.clone()),
            None => EntryError::Data(e),
        };
        let mut data = reader.data();
        let (map, size) = match (&pax.sparse, &entry.gnu_sparse) {
            (None, None) => {
                return builder.write_file(&mut data, entry.size).map_err(data_err);
            }
            (Some(sp), _) => {
                let size = sp.real_size.ok_or_else(|| EntryError::BadSparse {
                    reason: "no real size".into(),
                })?;
                check_sparse_size(size)?;
                let map = if sp.major == Some(1) {
                    sparse::read_map_v1(&mut data).map_err(|e| match e {
                        EntryError::Data(io) => data_err(io),
                        other => other,
                    })?
                } else {
                    sp.map.clone()
                };
                (map, size)
            }
            (None, Some(gnu)) => {
                check_sparse_size(gnu.real_size)?;
                let stored: u64 = gnu.map.iter().map(|&(_, len)| len).sum();
                if stored != entry.size {
                    return Err(EntryError::BadSparse {
                        reason: format!("the map holds {stored} bytes, the entry {}", entry.size),
                    });
                }
                (gnu.map.clone(), gnu.real_size)
            }
        };
        sparse::check_map(&map, size)?;
        builder
            .write_sparse_file(&mut SparseReader::new(&mut data, &map, size), size)
            .map_err(data_err)
    }
}

fn check_sparse_size(size: u64) -> Result<(), EntryError> {
    if size > MAX_FILE_SIZE {
        return Err(EntryError::SparseTooLarge {
            size,
            limit: MAX_FILE_SIZE,
        });
    }
    Ok(())
}

/// Apply the layer tar read from `reader` to `tree`, streaming file data into
/// `builder`. `layer` names the layer in errors. Returns how many entries
/// the layer had (PAX global headers not counted). The caller starts the
/// layer with [`Ext4Builder::begin_layer`], caps the stream's bytes and
/// checks its digests afterwards.
pub fn apply_layer<R: Read, S: ImageSink>(
    reader: R,
    layer: &Digest,
    limits: &Limits,
    tree: &mut Tree,
    builder: &mut Ext4Builder<S>,
) -> Result<u64, LayerError> {
    let mut tar = TarReader::new(reader, limits);
    let mut applier = Applier::default();
    let mut count = 0;
    // The last entry read: a limit reached while skipping its data is its.
    let mut last: Option<String> = None;
    loop {
        let entry = match tar.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(TarError::Header { entry, error }) => {
                return Err(LayerError::Entry {
                    layer: layer.clone(),
                    entry: entry_name(&entry),
                    source: error,
                });
            }
            Err(TarError::Io(source)) => {
                return Err(match (LimitExceeded::find(&source), last) {
                    (Some(limit), Some(entry)) => LayerError::Entry {
                        layer: layer.clone(),
                        entry,
                        source: EntryError::TooLarge(limit.clone()),
                    },
                    _ => LayerError::Read {
                        layer: layer.clone(),
                        source,
                    },
                });
            }
        };
        last = Some(entry_name(&entry.path));
        if entry.header.entry_type().is_pax_global_extensions() {
            // Global defaults (often just a comment); OCI layers do not
            // rely on them and the spec leaves them to the implementation.
            // Their data is skipped, never held.
            continue;
        }
        count += 1;
        applier
            .apply(&mut tar, &entry, limits, tree, builder)
            .map_err(|source| LayerError::Entry {
                layer: layer.clone(),
                // The header's path: a PAX sparse file's real name may be
                // what failed to parse.
                entry: entry_name(&entry.path),
                source,
            })?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Metadata;

    /// A tree deeper than any path limit allows (it can only be built
    /// directly), every level put by this layer but one lower-layer file
    /// at the bottom, and an opaque marker at the root: pruning must not
    /// recurse per level.
    #[test]
    fn prune_handles_a_tree_deeper_than_the_stack() {
        const DEPTH: usize = 200_000;
        let dirs: Vec<Vec<u8>> = vec![b"d".to_vec(); DEPTH];
        let with = |leaf: &[u8]| {
            let mut p = dirs.clone();
            p.push(leaf.to_vec());
            p
        };
        let file = || InodeKind::File(crate::tree::FileData::default());
        let mut tree = Tree::new();
        let (lower, upper) = (with(b"lower"), with(b"upper"));
        tree.insert(&refs(&lower), file(), Metadata::default())
            .unwrap();
        let mut applier = Applier::default();
        tree.insert(&refs(&upper), file(), Metadata::default())
            .unwrap();
        applier.mark(&tree, &upper);
        let root = tree.root();
        applier.prune(&mut tree, root);
        assert!(tree.lookup(&refs(&upper)).is_some());
        assert!(tree.lookup(&refs(&lower)).is_none());
    }
}
