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

use super::entry::{self, Change, EntryError};
use super::limits::Limits;
use super::prepare::{Parsed, Prepared, ToApply, is_file, prepare_layer};
use super::resolve;
use super::tarstream::TarEntry;
use crate::ext4::Ext4Builder;
use crate::oci::Digest;
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

    /// Apply one prepared entry. A detached layer's file data is moved by
    /// `shift` blocks, to where the layer was attached.
    fn apply(
        &mut self,
        entry: TarEntry,
        apply: Option<ToApply>,
        limits: &Limits,
        tree: &mut Tree,
        shift: u64,
    ) -> Result<(), EntryError> {
        let Some(ToApply { parsed, data }) = apply else {
            return Ok(());
        };
        let Parsed { meta, path, kind } = parsed?;
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
        let meta = meta?;
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
            k if is_file(k) => {
                // Prepared when it was read, on the same checks as here.
                let mut file = data.unwrap_or_else(|| {
                    Err(EntryError::Data(io::Error::other(
                        "its data was not read (the layer was read wrongly)",
                    )))
                })?;
                for extent in &mut file.extents {
                    extent.physical += shift;
                }
                InodeKind::File(file)
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
    let mut applier = LayerApplier::new(layer);
    // Each entry is applied as soon as it is read: its data is already in
    // place (no shift).
    let mut apply = |p: Prepared| applier.apply(p, limits, tree, 0);
    prepare_layer(reader, layer, limits, builder, |_| 0, &mut apply)
}

/// Applies a layer's prepared entries to the tree, in order.
pub(crate) struct LayerApplier<'a> {
    layer: &'a Digest,
    applier: Applier,
}

impl<'a> LayerApplier<'a> {
    /// Start applying `layer`.
    pub(crate) fn new(layer: &'a Digest) -> Self {
        LayerApplier {
            layer,
            applier: Applier::default(),
        }
    }

    /// Apply one entry, its file data moved by `shift` blocks.
    pub(crate) fn apply(
        &mut self,
        prepared: Prepared,
        limits: &Limits,
        tree: &mut Tree,
        shift: u64,
    ) -> Result<(), LayerError> {
        // The header's path: a PAX sparse file's real name may be what
        // failed to parse.
        let Prepared {
            entry, name, apply, ..
        } = prepared;
        self.applier
            .apply(entry, apply, limits, tree, shift)
            .map_err(|source| LayerError::Entry {
                layer: self.layer.clone(),
                entry: name,
                source,
            })
    }
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
