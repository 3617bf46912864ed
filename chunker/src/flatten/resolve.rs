//! Resolving an entry's parent directories through symlinks already in the
//! tree, the way containerd, Docker and umoci apply layers: a layer that
//! writes `lib/x` over a lower `lib -> usr/lib` puts `x` in `usr/lib`.
//!
//! Resolution is scoped to the image root: an absolute target starts again
//! at the root and `..` stops there, so no symlink can lead outside it. The
//! last component is never followed (an entry replaces a symlink, it does
//! not write through it).

use std::collections::VecDeque;

use super::entry::{self, Components, EntryError};
use super::limits::Limits;
use crate::tree::{InodeId, InodeKind, Tree};

/// Symlinks followed for one path before giving up, as Linux does. With
/// targets at most `max_path_bytes` long (checked when a symlink is put),
/// this bounds the work of one resolution.
const MAX_HOPS: u32 = 40;

/// `path` with every parent component that is a symlink replaced by where
/// it leads inside the root. Components that do not exist yet stay as they
/// are (the tree creates them as implicit directories). The result is held
/// to the path limits too: symlinks may lead deeper than the path itself.
pub fn resolve_parent(
    tree: &Tree,
    path: &[Vec<u8>],
    limits: &Limits,
) -> Result<Components, EntryError> {
    let Some((name, parents)) = path.split_last() else {
        return Ok(Vec::new());
    };
    let mut resolved = resolve_dir(tree, parents, limits)?;
    resolved.push(name.clone());
    entry::check_path(entry::path_len(&resolved), &resolved, limits)?;
    Ok(resolved)
}

/// A directory path with every component resolved, the last one included.
///
/// Each step looks one name up in the directory reached so far (not the
/// whole path again from the root), so a path costs time linear in its
/// length.
pub fn resolve_dir(
    tree: &Tree,
    dir: &[Vec<u8>],
    limits: &Limits,
) -> Result<Components, EntryError> {
    let mut todo: VecDeque<Vec<u8>> = dir.iter().cloned().collect();
    let mut resolved: Components = Vec::new();
    // The inode of each resolved component, while they exist: once one is
    // missing, nothing below it can be a symlink.
    let mut ids: Vec<InodeId> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => {
                resolved.pop();
                ids.truncate(resolved.len());
                continue;
            }
            _ => {}
        }
        resolved.push(c);
        if resolved.len() > limits.max_depth {
            return Err(EntryError::PathTooDeep {
                depth: resolved.len(),
                limit: limits.max_depth,
            });
        }
        if ids.len() + 1 != resolved.len() {
            continue;
        }
        let here = ids.last().copied().unwrap_or(tree.root());
        let name = &resolved[resolved.len() - 1];
        let Some(id) = tree.child(here, name) else {
            continue;
        };
        if let InodeKind::Symlink { target } = &tree.inode(id).kind {
            hops += 1;
            if hops > MAX_HOPS {
                return Err(EntryError::SymlinkLoop);
            }
            resolved.pop();
            if target.first() == Some(&b'/') {
                resolved.clear();
                ids.clear();
            }
            for part in target.split(|&b| b == b'/').rev() {
                todo.push_front(part.to_vec());
            }
        } else {
            ids.push(id);
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::{FileData, Metadata};

    fn comps(s: &str) -> Components {
        s.split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect()
    }

    fn tree_with(links: &[(&str, &str)]) -> Tree {
        let mut t = Tree::new();
        let dir = || InodeKind::Dir {
            entries: Default::default(),
        };
        for d in ["usr/lib", "a/b"] {
            let c = comps(d);
            let r: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            t.insert(&r, dir(), Metadata::default()).unwrap();
        }
        let f = comps("a/file");
        let r: Vec<&[u8]> = f.iter().map(Vec::as_slice).collect();
        t.insert(
            &r,
            InodeKind::File(FileData::default()),
            Metadata::default(),
        )
        .unwrap();
        for (path, target) in links {
            let c = comps(path);
            let r: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            let kind = InodeKind::Symlink {
                target: target.as_bytes().to_vec(),
            };
            t.insert(&r, kind, Metadata::default()).unwrap();
        }
        t
    }

    #[test]
    fn follows_parents_inside_the_root() {
        let t = tree_with(&[
            ("lib", "usr/lib"),
            ("abs", "/usr/lib"),
            ("a/b/up", "../../usr"),
            ("esc", "../../../.."),
            ("chain", "lib"),
            ("loop1", "loop2"),
            ("loop2", "loop1"),
        ]);
        let l = Limits::default();
        let r = |p: &str| resolve_parent(&t, &comps(p), &l).unwrap();
        assert_eq!(r("lib/x"), comps("usr/lib/x"));
        assert_eq!(r("abs/x"), comps("usr/lib/x"));
        assert_eq!(r("a/b/up/lib/x"), comps("usr/lib/x"));
        assert_eq!(r("chain/x"), comps("usr/lib/x"));
        // `..` stops at the root.
        assert_eq!(r("esc/etc/passwd"), comps("etc/passwd"));
        // The last component is not followed.
        assert_eq!(r("lib"), comps("lib"));
        // Missing components stay.
        assert_eq!(r("new/dir/x"), comps("new/dir/x"));
        // A file parent is left for the tree to refuse.
        assert_eq!(r("a/file/x"), comps("a/file/x"));
        assert!(matches!(
            resolve_parent(&t, &comps("loop1/x"), &l),
            Err(EntryError::SymlinkLoop)
        ));
        assert_eq!(
            resolve_dir(&t, &comps("lib"), &l).unwrap(),
            comps("usr/lib")
        );
    }
}
