//! The flattened file tree: what the layers add up to, before it becomes ext4.
//!
//! Inodes live in an arena addressed by [`InodeId`]; directories map names to
//! inode ids, so a hard link is simply a second name for the same id. File
//! data is not held here: a regular file records where its bytes were already
//! written in the image ([`Extent`]s), which keeps memory proportional to the
//! number of files, not their size.
//!
//! Everything is ordered (`BTreeMap`, arena order), so walking the tree is
//! deterministic.

use std::collections::BTreeMap;

/// Index of an inode in the tree's arena (not the ext4 inode number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InodeId(pub u32);

/// A point in time with nanosecond precision, seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Whole seconds (may be negative).
    pub secs: i64,
    /// Nanoseconds, below 1_000_000_000.
    pub nanos: u32,
}

/// Attributes shared by every kind of inode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Permission bits including setuid, setgid and sticky (`0o7777` mask).
    pub mode: u16,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time; ext4's atime, ctime and crtime are set to it too.
    pub mtime: Timestamp,
    /// Extended attributes by full name (`security.capability`, `user.x`).
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A run of file blocks placed contiguously in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First file block (in units of the filesystem block size).
    pub logical: u64,
    /// First image block holding it.
    pub physical: u64,
    /// Number of blocks.
    pub len: u32,
}

/// Where a regular file's bytes are; blocks not covered by an extent are holes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileData {
    /// File size in bytes.
    pub size: u64,
    /// Extents sorted by `logical`, not overlapping.
    pub extents: Vec<Extent>,
}

impl FileData {
    /// Number of image blocks this file's data occupies.
    pub fn allocated_blocks(&self) -> u64 {
        self.extents.iter().map(|e| u64::from(e.len)).sum()
    }
}

/// The kind-specific part of an inode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeKind {
    /// A directory: entry name to inode. Never holds `.` or `..`.
    Dir {
        /// Entries sorted by name bytes.
        entries: BTreeMap<Vec<u8>, InodeId>,
    },
    /// A regular file whose data is already in the image.
    File(FileData),
    /// A symbolic link and its target.
    Symlink {
        /// The link target, as stored in the layer.
        target: Vec<u8>,
    },
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// One inode: kind, attributes and how many directory entries name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// What it is.
    pub kind: InodeKind,
    /// Its attributes.
    pub meta: Metadata,
    /// Number of directory entries that refer to it (hard links).
    pub names: u32,
}

impl Inode {
    /// True for directories.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, InodeKind::Dir { .. })
    }
}

/// Errors from tree operations; paths are shown as given.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// A path component that should be a directory is something else.
    #[error("{path}: a parent component is not a directory")]
    NotADirectory {
        /// The path being resolved.
        path: String,
    },
    /// The path has no components (it names the root).
    #[error("the root directory cannot be replaced or removed")]
    Root,
    /// A hard link names a target that does not exist.
    #[error("hard link {path} points at {target}, which does not exist")]
    LinkTargetMissing {
        /// The link being created.
        path: String,
        /// Its target.
        target: String,
    },
    /// A hard link whose path holds its target: replacing the path would
    /// remove the target first.
    #[error("hard link {path} would remove its own target {target}")]
    LinkReplacesTarget {
        /// The link being created.
        path: String,
        /// Its target, under the link's path.
        target: String,
    },
    /// A hard link names a directory.
    #[error("hard link {path} points at directory {target}")]
    LinkToDirectory {
        /// The link being created.
        path: String,
        /// Its target.
        target: String,
    },
}

fn show(path: &[&[u8]]) -> String {
    let mut s = String::from("/");
    s.push_str(
        &path
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("/"),
    );
    s
}

/// The flattened tree. Paths are given as lists of components, already
/// normalized by the caller (no empty, `.` or `..` components).
#[derive(Clone, Debug)]
pub struct Tree {
    inodes: Vec<Option<Inode>>,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

/// Attributes given to directories that a layer implies but never lists.
pub fn implicit_dir_metadata() -> Metadata {
    Metadata {
        mode: 0o755,
        ..Metadata::default()
    }
}

impl Tree {
    /// A tree holding only an empty root directory (mode 0755, owned by root).
    pub fn new() -> Self {
        Tree {
            inodes: vec![Some(Inode {
                kind: InodeKind::Dir {
                    entries: BTreeMap::new(),
                },
                meta: implicit_dir_metadata(),
                names: 1,
            })],
        }
    }

    /// The root directory.
    pub fn root(&self) -> InodeId {
        InodeId(0)
    }

    /// The inode with this id. Panics only on an id this tree never issued
    /// or has removed, which is a programming error.
    pub fn inode(&self, id: InodeId) -> &Inode {
        self.inodes[id.0 as usize]
            .as_ref()
            .expect("inode id refers to a removed inode")
    }

    /// Whether `id` names a live inode.
    pub fn contains(&self, id: InodeId) -> bool {
        self.inodes.get(id.0 as usize).is_some_and(Option::is_some)
    }

    /// Mutable access to an inode, as [`Tree::inode`].
    pub fn inode_mut(&mut self, id: InodeId) -> &mut Inode {
        self.inodes[id.0 as usize]
            .as_mut()
            .expect("inode id refers to a removed inode")
    }

    /// Live inodes in arena order (the order they were created).
    pub fn inodes(&self) -> impl Iterator<Item = (InodeId, &Inode)> {
        self.inodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.as_ref().map(|n| (InodeId(i as u32), n)))
    }

    /// Number of live inodes, the root included.
    pub fn len(&self) -> usize {
        self.inodes.iter().filter(|n| n.is_some()).count()
    }

    /// True when only the root exists and it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 1 && self.entries(self.root()).is_some_and(|e| e.is_empty())
    }

    /// A directory's entries, or `None` for a non-directory.
    pub fn entries(&self, dir: InodeId) -> Option<&BTreeMap<Vec<u8>, InodeId>> {
        match &self.inode(dir).kind {
            InodeKind::Dir { entries } => Some(entries),
            _ => None,
        }
    }

    fn entries_mut(&mut self, dir: InodeId) -> Option<&mut BTreeMap<Vec<u8>, InodeId>> {
        match &mut self.inode_mut(dir).kind {
            InodeKind::Dir { entries } => Some(entries),
            _ => None,
        }
    }

    /// Resolve a path to an inode, without following symlinks.
    pub fn lookup(&self, path: &[&[u8]]) -> Option<InodeId> {
        let mut cur = self.root();
        for name in path {
            cur = *self.entries(cur)?.get(*name)?;
        }
        Some(cur)
    }

    /// The parent directory of `path`, creating missing directories with
    /// [`implicit_dir_metadata`].
    fn parent_dir(&mut self, path: &[&[u8]]) -> Result<InodeId, TreeError> {
        let (_, parents) = path.split_last().ok_or(TreeError::Root)?;
        let mut cur = self.root();
        for name in parents {
            let next = self.entries(cur).and_then(|e| e.get(*name)).copied();
            cur = match next {
                Some(id) if self.inode(id).is_dir() => id,
                Some(_) => {
                    return Err(TreeError::NotADirectory { path: show(path) });
                }
                None => {
                    let id = self.alloc(Inode {
                        kind: InodeKind::Dir {
                            entries: BTreeMap::new(),
                        },
                        meta: implicit_dir_metadata(),
                        names: 1,
                    });
                    self.entries_mut(cur)
                        .expect("cur is a directory")
                        .insert(name.to_vec(), id);
                    id
                }
            };
        }
        Ok(cur)
    }

    fn alloc(&mut self, inode: Inode) -> InodeId {
        self.inodes.push(Some(inode));
        InodeId((self.inodes.len() - 1) as u32)
    }

    /// Add or replace the entry at `path`.
    ///
    /// Follows the OCI changeset rules for an entry of a layer: a directory
    /// over an existing directory keeps the existing children and takes the
    /// new attributes; anything else replaces what was there (a replaced
    /// directory loses its whole subtree). Missing parents are created.
    pub fn insert(
        &mut self,
        path: &[&[u8]],
        kind: InodeKind,
        meta: Metadata,
    ) -> Result<InodeId, TreeError> {
        let parent = self.parent_dir(path)?;
        let name = path.last().ok_or(TreeError::Root)?;
        if let Some(existing) = self.entries(parent).and_then(|e| e.get(*name)).copied() {
            if self.inode(existing).is_dir() && matches!(kind, InodeKind::Dir { .. }) {
                self.inode_mut(existing).meta = meta;
                return Ok(existing);
            }
            self.unlink_entry(parent, name);
        }
        let id = self.alloc(Inode {
            kind,
            meta,
            names: 1,
        });
        self.entries_mut(parent)
            .expect("parent is a directory")
            .insert(name.to_vec(), id);
        Ok(id)
    }

    /// Make `path` another name for the inode at `target` (a hard link).
    /// An existing entry at `path` is replaced first.
    pub fn link(&mut self, path: &[&[u8]], target: &[&[u8]]) -> Result<InodeId, TreeError> {
        let target_id = self
            .lookup(target)
            .ok_or_else(|| TreeError::LinkTargetMissing {
                path: show(path),
                target: show(target),
            })?;
        if self.inode(target_id).is_dir() {
            return Err(TreeError::LinkToDirectory {
                path: show(path),
                target: show(target),
            });
        }
        if path == target {
            return Ok(target_id);
        }
        if target.starts_with(path) {
            // `d` -> `d/f`: replacing `d` frees `d/f` before it is linked.
            return Err(TreeError::LinkReplacesTarget {
                path: show(path),
                target: show(target),
            });
        }
        let parent = self.parent_dir(path)?;
        let name = path.last().ok_or(TreeError::Root)?;
        if self.entries(parent).and_then(|e| e.get(*name)).is_some() {
            self.unlink_entry(parent, name);
        }
        self.inode_mut(target_id).names += 1;
        self.entries_mut(parent)
            .expect("parent is a directory")
            .insert(name.to_vec(), target_id);
        Ok(target_id)
    }

    /// Remove the entry at `path` (a whiteout). Returns whether it existed.
    pub fn remove(&mut self, path: &[&[u8]]) -> Result<bool, TreeError> {
        let (name, parents) = path.split_last().ok_or(TreeError::Root)?;
        let Some(parent) = self.lookup(parents) else {
            return Ok(false);
        };
        if self.entries(parent).and_then(|e| e.get(*name)).is_none() {
            return Ok(false);
        }
        self.unlink_entry(parent, name);
        Ok(true)
    }

    /// The entry `name` of directory `dir`, if both exist.
    pub fn child(&self, dir: InodeId, name: &[u8]) -> Option<InodeId> {
        self.entries(dir)?.get(name).copied()
    }

    /// Remove the entry `name` of directory `dir` (freeing what only it
    /// named). Returns whether it existed.
    pub fn remove_child(&mut self, dir: InodeId, name: &[u8]) -> bool {
        if self.child(dir, name).is_none() {
            return false;
        }
        self.unlink_entry(dir, name);
        true
    }

    /// Remove every entry of the directory at `path` (an opaque whiteout),
    /// keeping the directory itself. Returns false when it is not a directory.
    pub fn clear_dir(&mut self, path: &[&[u8]]) -> bool {
        let Some(dir) = self.lookup(path) else {
            return false;
        };
        let Some(names) = self
            .entries(dir)
            .map(|e| e.keys().cloned().collect::<Vec<_>>())
        else {
            return false;
        };
        for name in names {
            self.unlink_entry(dir, &name);
        }
        true
    }

    /// Drop one name; free the inode (and a directory's subtree) when it was
    /// the last one.
    fn unlink_entry(&mut self, parent: InodeId, name: &[u8]) {
        let Some(id) = self.entries_mut(parent).and_then(|e| e.remove(name)) else {
            return;
        };
        let mut stack = vec![id];
        while let Some(id) = stack.pop() {
            let inode = self.inode_mut(id);
            inode.names -= 1;
            if inode.names > 0 {
                continue;
            }
            if let Some(Inode {
                kind: InodeKind::Dir { entries },
                ..
            }) = self.inodes[id.0 as usize].take()
            {
                stack.extend(entries.into_values());
            }
        }
    }

    /// Visit every directory entry depth-first in name order, parents before
    /// children: `(parent, name, inode)`. The root itself is not visited.
    pub fn walk(&self, mut visit: impl FnMut(InodeId, &[u8], InodeId)) {
        let mut stack: Vec<(
            InodeId,
            std::collections::btree_map::Iter<'_, Vec<u8>, InodeId>,
        )> = Vec::new();
        if let Some(e) = self.entries(self.root()) {
            stack.push((self.root(), e.iter()));
        }
        while let Some((dir, iter)) = stack.last_mut() {
            let dir = *dir;
            match iter.next() {
                Some((name, &id)) => {
                    visit(dir, name, id);
                    if let Some(e) = self.entries(id) {
                        stack.push((id, e.iter()));
                    }
                }
                None => {
                    stack.pop();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> InodeKind {
        InodeKind::File(FileData::default())
    }

    fn p(s: &str) -> Vec<&[u8]> {
        s.split('/').map(str::as_bytes).collect()
    }

    #[test]
    fn implicit_parents_and_replacement() {
        let mut t = Tree::new();
        t.insert(&p("a/b/c"), file(), Metadata::default()).unwrap();
        let a = t.lookup(&p("a")).unwrap();
        assert!(t.inode(a).is_dir());
        assert_eq!(t.inode(a).meta.mode, 0o755);
        // A file replacing a directory drops the subtree.
        t.insert(&p("a"), file(), Metadata::default()).unwrap();
        assert!(t.lookup(&p("a/b")).is_none());
        assert_eq!(t.len(), 2);
        // A path through a file is an error.
        assert!(matches!(
            t.insert(&p("a/x"), file(), Metadata::default()),
            Err(TreeError::NotADirectory { .. })
        ));
    }

    #[test]
    fn directory_over_directory_keeps_children() {
        let mut t = Tree::new();
        t.insert(&p("d/f"), file(), Metadata::default()).unwrap();
        let meta = Metadata {
            mode: 0o700,
            uid: 5,
            ..Metadata::default()
        };
        let kind = InodeKind::Dir {
            entries: BTreeMap::new(),
        };
        let d = t.insert(&p("d"), kind, meta).unwrap();
        assert_eq!(t.inode(d).meta.uid, 5);
        assert!(t.lookup(&p("d/f")).is_some());
    }

    #[test]
    fn hard_links_share_and_survive_removal() {
        let mut t = Tree::new();
        let f = t.insert(&p("x"), file(), Metadata::default()).unwrap();
        assert_eq!(t.link(&p("y/z"), &p("x")).unwrap(), f);
        assert_eq!(t.inode(f).names, 2);
        assert!(t.remove(&p("x")).unwrap());
        assert_eq!(t.inode(f).names, 1);
        assert_eq!(t.lookup(&p("y/z")), Some(f));
        assert!(matches!(
            t.link(&p("q"), &p("missing")),
            Err(TreeError::LinkTargetMissing { .. })
        ));
        assert!(matches!(
            t.link(&p("q"), &p("y")),
            Err(TreeError::LinkToDirectory { .. })
        ));
    }

    #[test]
    fn link_over_its_own_ancestor_is_refused() {
        let mut t = Tree::new();
        let f = t.insert(&p("d/e/f"), file(), Metadata::default()).unwrap();
        for path in ["d", "d/e"] {
            let err = t.link(&p(path), &p("d/e/f")).unwrap_err();
            assert!(matches!(err, TreeError::LinkReplacesTarget { .. }), "{err}");
            assert!(
                err.to_string()
                    .contains("would remove its own target /d/e/f")
            );
        }
        // Nothing changed.
        assert_eq!(t.lookup(&p("d/e/f")), Some(f));
        assert_eq!(t.inode(f).names, 1);
        // A sibling prefix is no ancestor.
        t.insert(&p("d/e2"), file(), Metadata::default()).unwrap();
        assert_eq!(t.link(&p("d/e2"), &p("d/e/f")).unwrap(), f);
    }

    #[test]
    fn opaque_and_walk_order() {
        let mut t = Tree::new();
        for name in ["d/b", "d/a", "d/c/e", "z"] {
            t.insert(&p(name), file(), Metadata::default()).unwrap();
        }
        let mut seen = Vec::new();
        t.walk(|_, name, _| seen.push(String::from_utf8(name.to_vec()).unwrap()));
        assert_eq!(seen, ["d", "a", "b", "c", "e", "z"]);
        assert!(t.clear_dir(&p("d")));
        assert!(t.entries(t.lookup(&p("d")).unwrap()).unwrap().is_empty());
        assert_eq!(t.len(), 3);
        assert!(!t.remove(&p("nope/x")).unwrap());
    }
}
