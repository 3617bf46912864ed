//! Inode numbering and per-inode block needs, before anything is written.
//!
//! Numbers: the root is 2, `lost+found` is 11 (the tree's own, or an empty
//! one we add, because e2fsck insists on it), and every other inode gets
//! the next number the first time [`Tree::walk`] meets it, so a hard-linked
//! inode has one number and the order is deterministic.
//!
//! Besides its inode, an inode may need blocks in the metadata region:
//! directory blocks or a slow symlink's target block (its "data"), extent
//! tree blocks, and an xattr block. They are placed consecutively per inode,
//! in inode order, in that order.

use super::dir::{self, DirEntry, file_type};
use super::extent::{self, ExtentTree};
use super::xattr::{self, XattrError};
use super::{BLOCK_SIZE, Ext4Error, MAX_EXTENT_LEN};
use crate::tree::{FileData, Inode, InodeId, InodeKind, Metadata, Tree};

/// The root directory's inode number.
pub(crate) const ROOT_INO: u32 = 2;
/// The first inode number not reserved by ext4; ours goes to `lost+found`.
pub(crate) const FIRST_INO: u32 = 11;
/// The name e2fsck wants in the root.
pub(crate) const LOST_FOUND: &[u8] = b"lost+found";
/// Longest symlink target stored in `i_block`; longer ones get a block.
pub(crate) const FAST_SYMLINK_MAX: usize = 59;

/// Where an inode comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// An inode of the tree.
    Tree(InodeId),
    /// The `lost+found` directory we add when the tree has none.
    LostFound,
}

/// One numbered inode and the metadata blocks it needs.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    /// Its inode number.
    pub ino: u32,
    /// What it is.
    pub source: Source,
    /// For directories, the parent's inode number (`..`).
    pub parent: u32,
    /// Directory blocks or the slow symlink block.
    pub data_blocks: u64,
    /// Extent tree blocks outside the inode.
    pub tree_blocks: u64,
    /// Whether it has an xattr block.
    pub xattr_block: bool,
    /// Its first metadata block (data, then tree, then xattr), once placed.
    pub first_block: u64,
}

impl Node {
    /// All metadata-region blocks charged to this inode.
    pub(crate) fn extra_blocks(&self) -> u64 {
        self.data_blocks + self.tree_blocks + u64::from(self.xattr_block)
    }

    /// The block of its xattr block, or 0.
    pub(crate) fn xattr_block_nr(&self) -> u64 {
        if self.xattr_block {
            self.first_block + self.data_blocks + self.tree_blocks
        } else {
            0
        }
    }
}

/// All inodes, numbered, with their block needs.
#[derive(Debug)]
pub(crate) struct Plan<'t> {
    tree: &'t Tree,
    /// Inodes by increasing number (2, 11, 12, …; 1 and 3..=10 are
    /// reserved and stay zero).
    pub nodes: Vec<Node>,
    /// Tree inode id to inode number (0 for ids not in the tree).
    ino_of: Vec<u32>,
    /// Whether we add `lost+found`.
    pub add_lost_found: bool,
    /// Sum of all nodes' extra blocks.
    pub extra_blocks: u64,
}

/// Metadata of the `lost+found` we add: mode 0700 like mke2fs, owned by
/// root, time 0.
fn lost_found_meta() -> Metadata {
    Metadata {
        mode: 0o700,
        ..Metadata::default()
    }
}

/// The path of a tree inode (its first name in walk order), for errors.
pub(crate) fn path_of(tree: &Tree, id: InodeId) -> String {
    if id == tree.root() {
        return "/".into();
    }
    let mut parent_of = std::collections::BTreeMap::new();
    tree.walk(|parent, name, child| {
        parent_of.entry(child).or_insert((parent, name.to_vec()));
    });
    let mut parts = Vec::new();
    let mut cur = id;
    while let Some((parent, name)) = parent_of.get(&cur) {
        parts.push(String::from_utf8_lossy(name).into_owned());
        cur = *parent;
    }
    parts.reverse();
    format!("/{}", parts.join("/"))
}

/// The dirent file type of a tree inode.
pub(crate) fn file_type_of(inode: &Inode) -> u8 {
    match inode.kind {
        InodeKind::Dir { .. } => file_type::DIR,
        InodeKind::File(_) => file_type::REG,
        InodeKind::Symlink { .. } => file_type::SYMLINK,
        InodeKind::CharDev { .. } => file_type::CHRDEV,
        InodeKind::BlockDev { .. } => file_type::BLKDEV,
        InodeKind::Fifo => file_type::FIFO,
        InodeKind::Socket => file_type::SOCK,
    }
}

impl<'t> Plan<'t> {
    /// Number the inodes of `tree` and work out their block needs. File
    /// data must lie in blocks `data_start..data_end`.
    pub(crate) fn new(tree: &'t Tree, data_start: u64, data_end: u64) -> Result<Self, Ext4Error> {
        let max_id = tree.inodes().map(|(id, _)| id.0).max().unwrap_or(0);
        let mut ino_of = vec![0u32; max_id as usize + 1];
        let root = tree.root();
        ino_of[root.0 as usize] = ROOT_INO;
        let mut order = vec![(Source::Tree(root), ROOT_INO)];

        let tree_lf = tree
            .entries(root)
            .and_then(|e| e.get(LOST_FOUND))
            .copied()
            .filter(|&id| tree.inode(id).is_dir());
        let has_lf_name = tree
            .entries(root)
            .is_some_and(|e| e.contains_key(LOST_FOUND));
        // A non-directory named lost+found is kept as it is; e2fsck will
        // complain about it, but it is what the image holds.
        let add_lost_found = !has_lf_name;
        match tree_lf {
            Some(id) => {
                ino_of[id.0 as usize] = FIRST_INO;
                order.push((Source::Tree(id), ROOT_INO));
            }
            None if add_lost_found => order.push((Source::LostFound, ROOT_INO)),
            None => {}
        }

        let mut next = FIRST_INO + u32::from(tree_lf.is_some() || add_lost_found);
        let mut bad_name: Option<(InodeId, &'static str)> = None;
        let mut overflow = false;
        tree.walk(|parent, name, id| {
            if let Err(e) = dir::check_name(name) {
                bad_name.get_or_insert((id, e));
            }
            if ino_of[id.0 as usize] == 0 {
                let Some(n) = next.checked_add(1) else {
                    overflow = true;
                    return;
                };
                ino_of[id.0 as usize] = next;
                order.push((Source::Tree(id), ino_of[parent.0 as usize]));
                next = n;
            }
        });
        if let Some((id, reason)) = bad_name {
            return Err(Ext4Error::BadEntry {
                path: path_of(tree, id),
                reason: reason.into(),
            });
        }
        if overflow {
            return Err(Ext4Error::TooLarge("more than 2^32 inodes".into()));
        }

        let mut plan = Plan {
            tree,
            nodes: Vec::with_capacity(order.len()),
            ino_of,
            add_lost_found,
            extra_blocks: 0,
        };
        for (i, (source, parent)) in order.into_iter().enumerate() {
            let ino = match i {
                0 => ROOT_INO,
                _ => FIRST_INO + i as u32 - 1,
            };
            let mut node = Node {
                ino,
                source,
                parent,
                data_blocks: 0,
                tree_blocks: 0,
                xattr_block: false,
                first_block: 0,
            };
            plan.size_node(&mut node, data_start, data_end)?;
            plan.extra_blocks += node.extra_blocks();
            plan.nodes.push(node);
        }
        Ok(plan)
    }

    /// The tree.
    pub(crate) fn tree(&self) -> &'t Tree {
        self.tree
    }

    /// The highest inode number in use (10 when only reserved ones are).
    pub(crate) fn last_ino(&self) -> u32 {
        self.nodes
            .last()
            .map_or(ROOT_INO, |n| n.ino)
            .max(FIRST_INO - 1)
    }

    /// Inode number of a tree inode.
    pub(crate) fn ino(&self, id: InodeId) -> u32 {
        self.ino_of[id.0 as usize]
    }

    /// Metadata of a node.
    pub(crate) fn meta(&self, node: &Node) -> std::borrow::Cow<'t, Metadata> {
        match node.source {
            Source::Tree(id) => std::borrow::Cow::Borrowed(&self.tree.inode(id).meta),
            Source::LostFound => std::borrow::Cow::Owned(lost_found_meta()),
        }
    }

    /// The path of a node, for errors.
    pub(crate) fn path(&self, node: &Node) -> String {
        self.source_path(node.source)
    }

    fn source_path(&self, source: Source) -> String {
        match source {
            Source::Tree(id) => path_of(self.tree, id),
            Source::LostFound => "/lost+found".into(),
        }
    }

    /// A directory node's entries, `.` and `..` first, then by name.
    pub(crate) fn dir_entries(&self, node: &Node) -> Vec<DirEntry<'t>> {
        let mut out = vec![
            DirEntry {
                name: b".",
                ino: node.ino,
                file_type: file_type::DIR,
            },
            DirEntry {
                name: b"..",
                ino: node.parent,
                file_type: file_type::DIR,
            },
        ];
        if let Source::Tree(id) = node.source {
            let tree = self.tree;
            let children = tree.entries(id).into_iter().flatten();
            out.extend(children.map(|(name, &child)| DirEntry {
                name,
                ino: self.ino(child),
                file_type: file_type_of(tree.inode(child)),
            }));
            if id == tree.root() && self.add_lost_found {
                let lf = DirEntry {
                    name: LOST_FOUND,
                    ino: FIRST_INO,
                    file_type: file_type::DIR,
                };
                let at = out[2..].partition_point(|e| e.name < LOST_FOUND) + 2;
                out.insert(at, lf);
            }
        }
        out
    }

    /// Subdirectories of a directory node (for its link count).
    pub(crate) fn subdirs(&self, node: &Node) -> u64 {
        self.dir_entries(node)[2..]
            .iter()
            .filter(|e| e.file_type == file_type::DIR)
            .count() as u64
    }

    /// Xattrs of a node, encoded.
    pub(crate) fn xattrs(&self, node: &Node) -> Result<xattr::Encoded, Ext4Error> {
        xattr::encode(&self.meta(node).xattrs).map_err(|e| match e {
            XattrError::Acl(name, reason) => Ext4Error::Acl {
                path: self.path(node),
                name,
                reason,
            },
            XattrError::Other(reason) => Ext4Error::Xattr {
                path: self.path(node),
                reason,
            },
        })
    }

    /// The extent tree of a node with data: its file extents, or its
    /// directory / symlink blocks.
    pub(crate) fn extent_tree(&self, node: &Node) -> Option<ExtentTree> {
        let tree_at = node.first_block + node.data_blocks;
        match node.source {
            Source::Tree(id) => match &self.tree.inode(id).kind {
                InodeKind::File(data) => Some(extent::build(&data.extents, tree_at)),
                InodeKind::Dir { .. } => Some(extent::build(
                    &extent::contiguous(node.first_block, node.data_blocks),
                    tree_at,
                )),
                InodeKind::Symlink { .. } if node.data_blocks > 0 => Some(extent::build(
                    &extent::contiguous(node.first_block, 1),
                    tree_at,
                )),
                _ => None,
            },
            Source::LostFound => Some(extent::build(
                &extent::contiguous(node.first_block, node.data_blocks),
                tree_at,
            )),
        }
    }

    fn size_node(&self, node: &mut Node, data_start: u64, data_end: u64) -> Result<(), Ext4Error> {
        let source = node.source;
        let bad = |reason: String| Ext4Error::BadEntry {
            path: self.source_path(source),
            reason,
        };
        let empty_dir = InodeKind::Dir {
            entries: Default::default(),
        };
        let kind = match source {
            Source::Tree(id) => &self.tree.inode(id).kind,
            Source::LostFound => &empty_dir,
        };
        match kind {
            InodeKind::Dir { .. } => {
                let entries = self.dir_entries(node);
                node.data_blocks = dir::block_count(entries.iter().map(|e| e.name.len()));
                let extents = node.data_blocks.div_ceil(u64::from(MAX_EXTENT_LEN));
                node.tree_blocks = extent::tree_blocks(extents as usize);
            }
            InodeKind::File(data) => {
                check_extents(data, data_start, data_end).map_err(bad)?;
                node.tree_blocks = extent::tree_blocks(data.extents.len());
            }
            InodeKind::Symlink { target } => {
                if target.is_empty() || target.len() >= BLOCK_SIZE as usize || target.contains(&0) {
                    return Err(bad(format!(
                        "symlink target of {} bytes: must be 1 to 4095 bytes without NUL",
                        target.len()
                    )));
                }
                node.data_blocks = u64::from(target.len() > FAST_SYMLINK_MAX);
            }
            InodeKind::CharDev { major, minor } | InodeKind::BlockDev { major, minor } => {
                if super::inode::encode_device(*major, *minor).is_none() {
                    return Err(bad(format!(
                        "device {major}:{minor} exceeds Linux's 12-bit major, 20-bit minor"
                    )));
                }
            }
            InodeKind::Fifo | InodeKind::Socket => {}
        }
        node.xattr_block = self.xattrs(node)?.block.is_some();
        Ok(())
    }

    /// Give each node its metadata blocks, consecutively from `start`.
    pub(crate) fn place(&mut self, start: u64) {
        let mut at = start;
        for node in &mut self.nodes {
            node.first_block = at;
            at += node.extra_blocks();
        }
    }
}

/// A file's extents must be sorted, disjoint, inside the file's size and
/// inside the data region.
fn check_extents(data: &FileData, data_start: u64, data_end: u64) -> Result<(), String> {
    let size_blocks = data.size.div_ceil(u64::from(BLOCK_SIZE));
    if size_blocks > 1 << 32 {
        return Err(format!(
            "file of {} bytes exceeds ext4's 16 TiB limit",
            data.size
        ));
    }
    let mut end = 0;
    for e in &data.extents {
        let (l, p, n) = (e.logical, e.physical, u64::from(e.len));
        if n == 0 || e.len > MAX_EXTENT_LEN || l < end || l + n > size_blocks {
            return Err(format!(
                "bad extent {e:?} for a file of {} bytes",
                data.size
            ));
        }
        if p < data_start || p + n > data_end {
            return Err(format!("extent {e:?} lies outside the data region"));
        }
        end = l + n;
    }
    Ok(())
}
