//! Applying one layer's tar to the tree, per the OCI changeset rules.
//!
//! Regular files stream straight into the image as they are met; the tree
//! only records where their bytes went. Whiteouts apply to lower layers
//! only, so the applier remembers which paths this layer has put (and
//! their ancestors): an opaque marker or whiteout that comes after
//! same-layer entries prunes only what is not from this layer.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};

use super::entry::{self, Change, Components, EntryError, PaxAttrs};
use super::pax;
use super::resolve;
use super::sparse::{self, SparseReader};
use crate::ext4::Ext4Builder;
use crate::oci::Digest;
use crate::sink::ImageSink;
use crate::tree::{InodeKind, Tree, implicit_dir_metadata};

/// PAX records as `(key, value)` pairs.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

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
        /// The entry's path as written in the tar.
        entry: String,
        /// What is wrong with it.
        source: EntryError,
    },
}

fn refs(path: &[Vec<u8>]) -> Vec<&[u8]> {
    path.iter().map(Vec::as_slice).collect()
}

/// Per-layer state: the paths this layer has put, with their ancestors.
#[derive(Debug, Default)]
struct Applier {
    touched: BTreeSet<Components>,
}

impl Applier {
    fn mark(&mut self, path: &[Vec<u8>]) {
        // Ancestors of a touched path are touched already, so stop at the
        // first one found.
        for end in (1..=path.len()).rev() {
            if !self.touched.insert(path[..end].to_vec()) {
                break;
            }
        }
    }

    /// Remove the lower-layer contents of the directory at `dir`, keeping
    /// whatever this layer put there.
    fn prune(&self, tree: &mut Tree, dir: &[Vec<u8>]) -> Result<(), EntryError> {
        let Some(id) = tree.lookup(&refs(dir)) else {
            return Ok(());
        };
        let Some(entries) = tree.entries(id) else {
            return Ok(());
        };
        let names: Vec<Vec<u8>> = entries.keys().cloned().collect();
        for name in names {
            let mut child = dir.to_vec();
            child.push(name);
            if self.touched.contains(&child) {
                self.prune(tree, &child)?;
            } else {
                tree.remove(&refs(&child))?;
            }
        }
        Ok(())
    }

    fn whiteout(&self, tree: &mut Tree, target: &[Vec<u8>]) -> Result<(), EntryError> {
        if self.touched.contains(target) {
            // Put by this layer: only lower-layer contents under it go.
            self.prune(tree, target)
        } else {
            tree.remove(&refs(target))?;
            Ok(())
        }
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
        self.prune(tree, dir)
    }

    fn apply<R: Read, S: ImageSink>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        recovered: &dyn Fn() -> Option<PaxRecords>,
        tree: &mut Tree,
        builder: &mut Ext4Builder<S>,
    ) -> Result<(), EntryError> {
        let pairs = match entry.pax_extensions().map_err(EntryError::Header)? {
            Some(records) => {
                let parsed: Result<Vec<_>, _> = records
                    .map(|r| r.map(|r| (r.key_bytes().to_vec(), r.value_bytes().to_vec())))
                    .collect();
                match parsed {
                    Ok(pairs) => Some(pairs),
                    // The crate splits records on newlines; values may hold
                    // them. Read the records by their length prefixes.
                    Err(err) => Some(recovered().ok_or(EntryError::Header(err))?),
                }
            }
            None => None,
        };
        let pax = match pairs {
            Some(pairs) => {
                entry::pax_attrs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?
            }
            None => PaxAttrs::default(),
        };
        // A PAX sparse file's header holds a made-up name; the real one is
        // in its records.
        let raw_path = match pax.sparse.as_ref().and_then(|s| s.name.clone()) {
            Some(name) => name,
            None => entry.path_bytes().into_owned(),
        };
        let path = entry::normalize_path(&raw_path)?;
        // Parents that are symlinks in lower layers lead where they point.
        let path = resolve::resolve_parent(tree, &path)?;
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
        let meta = entry::metadata(entry.header(), &pax)?;
        let mut kind = entry.header().entry_type();
        if kind == tar::EntryType::Regular && raw_path.ends_with(b"/") && entry.size() == 0 {
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
            let h = entry.header();
            let major = h.device_major().map_err(EntryError::Header)?.unwrap_or(0);
            let minor = h.device_minor().map_err(EntryError::Header)?.unwrap_or(0);
            (major, minor)
        } else {
            (0, 0)
        };
        let inode = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                // For a GNU sparse entry the tar crate expands the holes
                // as zeros; the writer turns zero blocks back into holes.
                let data = match &pax.sparse {
                    None => {
                        let size = entry.size();
                        builder.write_file(entry, size)
                    }
                    Some(sp) => {
                        let size = sp.real_size.ok_or_else(|| EntryError::BadSparse {
                            reason: "no real size".into(),
                        })?;
                        let map = if sp.major == Some(1) {
                            sparse::read_map_v1(entry)?
                        } else {
                            sp.map.clone()
                        };
                        sparse::check_map(&map, size)?;
                        builder.write_file(&mut SparseReader::new(entry, &map, size), size)
                    }
                };
                InodeKind::File(data.map_err(EntryError::Data)?)
            }
            tar::EntryType::Directory => InodeKind::Dir {
                entries: BTreeMap::new(),
            },
            tar::EntryType::Symlink => InodeKind::Symlink {
                target: entry
                    .link_name_bytes()
                    .ok_or(EntryError::NoLinkTarget)?
                    .into_owned(),
            },
            tar::EntryType::Char => InodeKind::CharDev { major, minor },
            tar::EntryType::Block => InodeKind::BlockDev { major, minor },
            tar::EntryType::Fifo => InodeKind::Fifo,
            tar::EntryType::Link => {
                let raw = entry.link_name_bytes().ok_or(EntryError::NoLinkTarget)?;
                let target = entry::normalize_path(&raw).map_err(|_| EntryError::LinkEscapes {
                    target: String::from_utf8_lossy(&raw).into_owned(),
                })?;
                if target.is_empty() {
                    return Err(EntryError::LinkEscapes {
                        target: String::from_utf8_lossy(&raw).into_owned(),
                    });
                }
                let target = resolve::resolve_parent(tree, &target)?;
                tree.link(&at, &refs(&target))?;
                self.mark(&path);
                return Ok(());
            }
            other => return Err(EntryError::UnknownType(char::from(other.as_byte()))),
        };
        tree.insert(&at, inode, meta)?;
        self.mark(&path);
        Ok(())
    }
}

/// Apply the layer tar read from `reader` to `tree`, streaming file data into
/// `builder`. `layer` names the layer in errors. Returns how many entries
/// the layer had (PAX global headers not counted). The caller starts the
/// layer with [`Ext4Builder::begin_layer`] and checks the stream's digests
/// afterwards.
pub fn apply_layer<R: Read, S: ImageSink>(
    reader: R,
    layer: &Digest,
    tree: &mut Tree,
    builder: &mut Ext4Builder<S>,
) -> Result<u64, LayerError> {
    let read_err = |source| LayerError::Read {
        layer: layer.clone(),
        source,
    };
    let kept = pax::Recorded::default();
    let mut archive = tar::Archive::new(pax::Recorder::new(reader, kept.clone()));
    let mut applier = Applier::default();
    let mut count = 0;
    let mut entries = archive.entries().map_err(read_err)?;
    // Where the headers of the next entry start: after this one's data.
    let mut next_header = 0u64;
    loop {
        kept.keep_from(next_header);
        let Some(entry) = entries.next() else { break };
        // The headers are read; the entry's data need not be kept.
        kept.freeze();
        let mut entry = entry.map_err(read_err)?;
        next_header = (entry.raw_file_position() + entry.size()).next_multiple_of(512);
        let header_at = entry.raw_header_position();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Global defaults (often just a comment); OCI layers do not
            // rely on them and the spec leaves them to the implementation.
            continue;
        }
        count += 1;
        let recovered = || pax::records_before(&kept, header_at);
        applier
            .apply(&mut entry, &recovered, tree, builder)
            .map_err(|source| LayerError::Entry {
                layer: layer.clone(),
                // The header's path: a PAX sparse file's real name may be
                // what failed to parse.
                entry: String::from_utf8_lossy(&entry.path_bytes()).into_owned(),
                source,
            })?;
    }
    Ok(count)
}
