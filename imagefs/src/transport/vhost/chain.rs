//! Walking a split virtqueue's descriptor chain from its head index: the
//! chains taken off the available ring and the ones resubmitted after a
//! reconnect (known only by head) go through the same walker.
//!
//! The walk is bounded: a head or `next` outside its table, a table read
//! outside guest memory, a loop (more steps than the table has entries),
//! an indirect table inside an indirect table, an indirect descriptor that
//! also chains on, an indirect table whose length is not a whole number of
//! descriptors, and more than `max` descriptors in all are each an error.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

/// Bytes of one split descriptor.
const DESC_SIZE: u64 = 16;
/// Most entries of an indirect table (a split queue's largest size).
const MAX_INDIRECT: u64 = 32768;

/// One descriptor's buffer, as the chain gives it (not yet checked
/// against guest memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable (else device-readable).
    pub write: bool,
}

/// Why a chain could not be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalkError {
    /// The head index is not in the descriptor table.
    #[error("head {head} is outside the queue of {size} descriptors")]
    HeadOutOfRange {
        /// The head.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// A `next` index is outside its table.
    #[error("next index {next} is outside a table of {len} descriptors")]
    NextOutOfRange {
        /// The index.
        next: u16,
        /// Entries in the table.
        len: u64,
    },
    /// A descriptor could not be read from guest memory.
    #[error("descriptor at {addr:#x} is outside guest memory")]
    Unreadable {
        /// Its guest address.
        addr: u64,
    },
    /// The chain visits more descriptors than its table has: a loop.
    #[error("chain loops (more than {len} steps in a table of {len})")]
    Loop {
        /// Entries in the table.
        len: u64,
    },
    /// An indirect table refers to another indirect table.
    #[error("indirect descriptor inside an indirect table")]
    NestedIndirect,
    /// An indirect descriptor that also has NEXT set.
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    /// An indirect table's length is not a whole, bounded number of
    /// descriptors.
    #[error("indirect table of {len} bytes is not 1..=32768 whole descriptors")]
    BadIndirectTable {
        /// Its length.
        len: u32,
    },
    /// More descriptors than the device accepts.
    #[error("chain has more than {max} descriptors")]
    TooMany {
        /// The limit.
        max: usize,
    },
}

/// Walks the chain starting at `head` in the descriptor table at `table`
/// of a queue of `queue_size` entries, following NEXT and one level of
/// INDIRECT; at most `max` descriptors (see the module docs).
pub fn walk<M: GuestMemory + ?Sized>(
    mem: &M,
    table: GuestAddress,
    queue_size: u16,
    head: u16,
    max: usize,
) -> Result<Vec<Desc>, WalkError> {
    if head >= queue_size {
        return Err(WalkError::HeadOutOfRange {
            head,
            size: queue_size,
        });
    }
    let mut out = Vec::new();
    let (mut table, mut len, mut index) = (table, u64::from(queue_size), head);
    let mut indirect = false;
    let mut steps = 0u64;
    loop {
        if u64::from(index) >= len {
            return Err(WalkError::NextOutOfRange { next: index, len });
        }
        steps += 1;
        if steps > len {
            return Err(WalkError::Loop { len });
        }
        let at = table
            .0
            .checked_add(u64::from(index) * DESC_SIZE)
            .ok_or(WalkError::Unreadable { addr: table.0 })?;
        let d: Descriptor = mem
            .read_obj(GuestAddress(at))
            .map_err(|_| WalkError::Unreadable { addr: at })?;
        let flags = u32::from(d.flags());
        if flags & VRING_DESC_F_INDIRECT != 0 {
            if indirect {
                return Err(WalkError::NestedIndirect);
            }
            if flags & VRING_DESC_F_NEXT != 0 {
                return Err(WalkError::IndirectWithNext);
            }
            let bytes = u64::from(d.len());
            if bytes == 0 || bytes % DESC_SIZE != 0 || bytes / DESC_SIZE > MAX_INDIRECT {
                return Err(WalkError::BadIndirectTable { len: d.len() });
            }
            (table, len, index, steps, indirect) = (d.addr(), bytes / DESC_SIZE, 0, 0, true);
            continue;
        }
        if out.len() >= max {
            return Err(WalkError::TooMany { max });
        }
        out.push(Desc {
            addr: d.addr(),
            len: d.len(),
            write: flags & VRING_DESC_F_WRITE != 0,
        });
        if flags & VRING_DESC_F_NEXT == 0 {
            return Ok(out);
        }
        index = d.next();
    }
}
