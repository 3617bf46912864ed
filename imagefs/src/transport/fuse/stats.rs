//! Counts of the FUSE requests a mount has served, by kind: what a
//! benchmark divides by the files it read to see the per-file cost.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The requests served so far (a snapshot; all zero for `--raw`, which
/// counts nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuseStats {
    /// `LOOKUP`: a name resolved in a directory.
    pub lookups: u64,
    /// `GETATTR`.
    pub getattrs: u64,
    /// `OPEN` of a file (none once the kernel has learnt that opens are
    /// not needed; see the mount's documentation).
    pub opens: u64,
    /// `RELEASE` of a file.
    pub releases: u64,
    /// `READ` of a file.
    pub reads: u64,
    /// Bytes those reads returned.
    pub read_bytes: u64,
    /// `OPENDIR`.
    pub opendirs: u64,
    /// `READDIR` and `READDIRPLUS` (one each per batch of entries).
    pub readdirs: u64,
    /// Directory entries those listings returned.
    pub dir_entries: u64,
    /// `READLINK`.
    pub readlinks: u64,
    /// `GETXATTR` and `LISTXATTR`.
    pub xattrs: u64,
}

/// The live counters, bumped by the FUSE threads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) lookups: AtomicU64,
    pub(crate) getattrs: AtomicU64,
    pub(crate) opens: AtomicU64,
    pub(crate) releases: AtomicU64,
    pub(crate) reads: AtomicU64,
    pub(crate) read_bytes: AtomicU64,
    pub(crate) opendirs: AtomicU64,
    pub(crate) readdirs: AtomicU64,
    pub(crate) dir_entries: AtomicU64,
    pub(crate) readlinks: AtomicU64,
    pub(crate) xattrs: AtomicU64,
}

/// Adds `n` to a counter (relaxed: the counts are read only as totals).
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> FuseStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FuseStats {
            lookups: get(&self.lookups),
            getattrs: get(&self.getattrs),
            opens: get(&self.opens),
            releases: get(&self.releases),
            reads: get(&self.reads),
            read_bytes: get(&self.read_bytes),
            opendirs: get(&self.opendirs),
            readdirs: get(&self.readdirs),
            dir_entries: get(&self.dir_entries),
            readlinks: get(&self.readlinks),
            xattrs: get(&self.xattrs),
        }
    }
}
