//! Per-queue defences against a guest that breaks the virtqueue protocol.
//!
//! A queue is *broken* when the guest does something a driver must never
//! do and that leaves no sane way on:
//!
//! - it moves the available index more than a queue's size past the next
//!   entry to take (virtio-queue's iterator then returns an error forever,
//!   while the ring keeps saying something is available);
//! - the available ring cannot be read;
//! - it makes available a head outside the descriptor table (it could not
//!   even be put on the used ring);
//! - it makes available a head whose request is still in flight.
//!
//! What a device does then is what QEMU's `virtio_error` does: it logs
//! once, with the queue and what was wrong, stops processing the queue
//! and tells the frontend (the SET_VRING_ERR eventfd, which QEMU reports
//! as a vring error). Requests already taken complete normally. The
//! queue works again once the frontend restarts it (a device reset, or
//! GET_VRING_BASE then SET_VRING_KICK), as after NEEDS_RESET. Completing
//! a repeated head with IOERR instead was rejected: its buffers are the
//! live request's, and a second used entry for one head corrupts the
//! guest driver's own bookkeeping.
//!
//! Refusing a head already in flight is also what bounds the work a guest
//! can queue: at most one request per descriptor head, so at most the
//! queue's size per queue, however often it kicks.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::{LimitedLog, log_limited};

/// Bytes before the available ring's entries (flags, idx).
const AVAIL_RING_HEADER: u64 = 4;

/// How a guest broke a queue (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueFault {
    /// The available index is further ahead than the queue has entries.
    #[error(
        "the available index {avail_idx} is {ahead} entries past the next one to take \
         ({next_avail}), more than the queue's {size}"
    )]
    AvailIndexTooFar {
        /// What the guest wrote.
        avail_idx: u16,
        /// The next entry the device takes.
        next_avail: u16,
        /// How far ahead that is.
        ahead: u16,
        /// The queue size.
        size: u16,
    },
    /// The available ring (its index or an entry) is outside guest memory.
    #[error("the available ring at {addr:#x} is outside guest memory")]
    AvailRingUnreadable {
        /// The address that could not be read.
        addr: u64,
    },
    /// A head outside the descriptor table was made available.
    #[error("head {head} is outside the queue of {size} descriptors")]
    HeadOutOfRange {
        /// The head.
        head: u16,
        /// The queue size.
        size: u16,
    },
    /// A head was made available again while its request was in flight.
    #[error("head {head} was made available again while its request is still in flight")]
    RepeatedHead {
        /// The head.
        head: u16,
    },
}

/// One queue's guard: whether it is broken, which heads are in flight,
/// and the frontend's error eventfd.
#[derive(Debug)]
pub(super) struct QueueGuard {
    broken: AtomicBool,
    /// One bit per descriptor head: taken and not yet completed.
    in_flight: Mutex<Vec<u64>>,
    /// SET_VRING_ERR's eventfd, signalled when the queue breaks.
    err: Mutex<Option<File>>,
}

impl QueueGuard {
    /// A guard for a queue of up to `max_size` descriptors.
    pub(super) fn new(max_size: u16) -> Self {
        Self {
            broken: AtomicBool::new(false),
            in_flight: Mutex::new(vec![0; usize::from(max_size).div_ceil(64)]),
            err: Mutex::new(None),
        }
    }

    pub(super) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Marks queue `queue` broken by `fault`: logged and signalled the
    /// first time only. True if it was not broken before.
    pub(super) fn break_with(&self, queue: u16, fault: &QueueFault, logged: &LimitedLog) -> bool {
        if self.broken.swap(true, Ordering::AcqRel) {
            return false;
        }
        log_limited(
            logged,
            &format!(
                "queue {queue}: broken by the guest, no longer processed until the frontend \
                 resets it: {fault}"
            ),
        );
        if let Some(mut err) = self
            .err
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            // An eventfd takes a u64 count; a failure leaves the log line.
            let _ = err.write_all(&1u64.to_ne_bytes());
        }
        true
    }

    /// The queue was (re)started by the frontend: it works again.
    pub(super) fn restart(&self) {
        self.broken.store(false, Ordering::Release);
    }

    /// The frontend's error eventfd (SET_VRING_ERR), if any.
    pub(super) fn set_err(&self, err: Option<File>) {
        *self.err.lock().unwrap_or_else(PoisonError::into_inner) = err;
    }

    /// Marks `head` in flight; a fault if it already is, or if it is not
    /// below `size`.
    pub(super) fn take(&self, head: u16, size: u16) -> Result<(), QueueFault> {
        let mut bits = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (word, bit) = (usize::from(head) / 64, 1u64 << (head % 64));
        match bits.get_mut(word) {
            Some(w) if head < size => {
                if *w & bit != 0 {
                    return Err(QueueFault::RepeatedHead { head });
                }
                *w |= bit;
                Ok(())
            }
            _ => Err(QueueFault::HeadOutOfRange { head, size }),
        }
    }

    /// `head` is completing: the guest may make it available again as
    /// soon as the used ring says so, so this comes before.
    pub(super) fn release(&self, head: u16) {
        let mut bits = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = bits.get_mut(usize::from(head) / 64) {
            *w &= !(1u64 << (head % 64));
        }
    }

    /// Requests taken and not completed.
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum()
    }
}

/// What [`take_heads`] took: the heads, marked in flight, and the fault
/// that stopped it, if one did (the heads before it are still good).
#[derive(Debug, Default)]
pub(super) struct Taken {
    pub(super) heads: Vec<u16>,
    pub(super) fault: Option<QueueFault>,
}

/// Takes at most `budget` heads off `q`'s available ring in `mem`,
/// marking each in flight in `guard`. Reads the ring itself rather than
/// through virtio-queue's iterator, which reports an index too far ahead
/// or an unreadable entry only as "nothing there".
pub(super) fn take_heads<M: GuestMemory + ?Sized>(
    q: &mut Queue,
    mem: &M,
    guard: &QueueGuard,
    budget: usize,
) -> Taken {
    let mut taken = Taken::default();
    let size = q.size();
    let ring = q.avail_ring();
    let avail_idx = match q.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => idx.0,
        Err(_) => {
            taken.fault = Some(QueueFault::AvailRingUnreadable {
                addr: ring.saturating_add(2),
            });
            return taken;
        }
    };
    let next_avail = q.next_avail();
    let ahead = avail_idx.wrapping_sub(next_avail);
    if ahead > size {
        taken.fault = Some(QueueFault::AvailIndexTooFar {
            avail_idx,
            next_avail,
            ahead,
            size,
        });
        return taken;
    }
    for i in 0..ahead.min(u16::try_from(budget).unwrap_or(u16::MAX)) {
        let position = next_avail.wrapping_add(i);
        // Past the end of the address space, the read fails.
        let addr = ring.saturating_add(AVAIL_RING_HEADER + 2 * u64::from(position % size));
        let head = match mem.read_obj::<u16>(GuestAddress(addr)) {
            Ok(head) => u16::from_le(head),
            Err(_) => {
                taken.fault = Some(QueueFault::AvailRingUnreadable { addr });
                break;
            }
        };
        if let Err(fault) = guard.take(head, size) {
            taken.fault = Some(fault);
            break;
        }
        q.set_next_avail(position.wrapping_add(1));
        taken.heads.push(head);
    }
    taken
}
