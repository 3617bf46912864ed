//! Counts of the FUSE requests a mount has served, by kind: what a
//! benchmark divides by the files it read to see the per-file cost.

use serde::{Deserialize, Serialize};
use telemetry::counter::Counter;

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
    pub(crate) lookups: Counter,
    pub(crate) getattrs: Counter,
    pub(crate) opens: Counter,
    pub(crate) releases: Counter,
    pub(crate) reads: Counter,
    pub(crate) read_bytes: Counter,
    pub(crate) opendirs: Counter,
    pub(crate) readdirs: Counter,
    pub(crate) dir_entries: Counter,
    pub(crate) readlinks: Counter,
    pub(crate) xattrs: Counter,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> FuseStats {
        FuseStats {
            lookups: self.lookups.get(),
            getattrs: self.getattrs.get(),
            opens: self.opens.get(),
            releases: self.releases.get(),
            reads: self.reads.get(),
            read_bytes: self.read_bytes.get(),
            opendirs: self.opendirs.get(),
            readdirs: self.readdirs.get(),
            dir_entries: self.dir_entries.get(),
            readlinks: self.readlinks.get(),
            xattrs: self.xattrs.get(),
        }
    }
}
