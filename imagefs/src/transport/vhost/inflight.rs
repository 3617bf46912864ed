//! Inflight I/O tracking (vhost-user `INFLIGHT_SHMFD`) for split
//! virtqueues: which chains the backend took off a queue and has not yet
//! put on the used ring, kept in memory the frontend owns, so that a
//! backend started after a crash (or an upgrade) resubmits them and the
//! guest never sees an error.
//!
//! The frontend asks for the region once (GET_INFLIGHT_FD: we create and
//! zero a memfd), keeps it across our restarts and hands it to every
//! backend it starts (SET_INFLIGHT_FD). Per queue, at `queue * stride`:
//!
//! ```text
//! header (16 bytes): features u64 | version u16 | desc_num u16
//!                    | last_batch_head u16 | used_idx u16
//! desc_num × DescStateSplit (16 bytes each):
//!                    inflight u8 | padding [u8; 5] | next u16 | counter u64
//! ```
//!
//! little-endian, as libvhost-user and QEMU lay it out. The stride is
//! `16 + 16 × queue_size` rounded up to 64 bytes (libvhost-user rounds
//! `16 × queue_size + 2` up to 64, which is the same for the power-of-two
//! sizes a split queue has, and leaves room for the header either way).
//!
//! [`QueueHeader`] and [`DescState`] are the one definition of the layout:
//! their `encode`/`decode` and the live accessors of [`InflightRegion`]
//! use the same offsets. The mapping is only touched through vm-memory's
//! volatile, atomic accessors (the frontend maps it too), never through a
//! reference or a transmute.

use std::fs::File;
use std::sync::atomic::{Ordering, fence};

use vm_memory::mmap::MmapRegion;
use vm_memory::{AtomicAccess, Bytes, FileOffset, VolatileMemory};

/// Bytes of the per-queue header.
pub const HEADER_LEN: usize = 16;
/// Bytes of one descriptor's state.
pub const DESC_LEN: usize = 16;
/// Alignment of each queue's part of the region.
const QUEUE_ALIGN: usize = 64;
/// The layout version this code writes (libvhost-user's `INFLIGHT_VERSION`).
pub const VERSION: u16 = 1;

// Header field offsets.
const H_FEATURES: usize = 0;
const H_VERSION: usize = 8;
const H_DESC_NUM: usize = 10;
const H_LAST_BATCH_HEAD: usize = 12;
const H_USED_IDX: usize = 14;
// Descriptor state field offsets (1..6 is padding).
const D_INFLIGHT: usize = 0;
const D_NEXT: usize = 6;
const D_COUNTER: usize = 8;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The header of one queue's part of the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueHeader {
    /// Reserved for the frontend (unused by split queues).
    pub features: u64,
    /// 0 until a backend first starts the queue, then [`VERSION`].
    pub version: u16,
    /// Descriptor states that follow (the queue size).
    pub desc_num: u16,
    /// The head being completed last (cleared on recovery when the used
    /// index moved past it).
    pub last_batch_head: u16,
    /// The used index after the last completion that finished.
    pub used_idx: u16,
}

impl QueueHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[H_FEATURES..H_FEATURES + 8].copy_from_slice(&self.features.to_le_bytes());
        b[H_VERSION..H_VERSION + 2].copy_from_slice(&self.version.to_le_bytes());
        b[H_DESC_NUM..H_DESC_NUM + 2].copy_from_slice(&self.desc_num.to_le_bytes());
        b[H_LAST_BATCH_HEAD..H_LAST_BATCH_HEAD + 2]
            .copy_from_slice(&self.last_batch_head.to_le_bytes());
        b[H_USED_IDX..H_USED_IDX + 2].copy_from_slice(&self.used_idx.to_le_bytes());
        b
    }

    /// A header from its bytes.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Self {
        Self {
            features: le64(b, H_FEATURES),
            version: le16(b, H_VERSION),
            desc_num: le16(b, H_DESC_NUM),
            last_batch_head: le16(b, H_LAST_BATCH_HEAD),
            used_idx: le16(b, H_USED_IDX),
        }
    }
}

/// The state of one descriptor (by head index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DescState {
    /// 1 while the chain with this head is taken and not completed.
    pub inflight: u8,
    /// Unused by split queues.
    pub next: u16,
    /// Order in which chains were taken (resubmission follows it).
    pub counter: u64,
}

impl DescState {
    /// The state's bytes (the padding zero).
    pub fn encode(&self) -> [u8; DESC_LEN] {
        let mut b = [0u8; DESC_LEN];
        b[D_INFLIGHT] = self.inflight;
        b[D_NEXT..D_NEXT + 2].copy_from_slice(&self.next.to_le_bytes());
        b[D_COUNTER..D_COUNTER + 8].copy_from_slice(&self.counter.to_le_bytes());
        b
    }

    /// A state from its bytes.
    pub fn decode(b: &[u8; DESC_LEN]) -> Self {
        Self {
            inflight: b[D_INFLIGHT],
            next: le16(b, D_NEXT),
            counter: le64(b, D_COUNTER),
        }
    }
}

/// Bytes of one queue's part of the region for a queue of `queue_size`.
pub fn queue_stride(queue_size: u16) -> usize {
    (HEADER_LEN + DESC_LEN * usize::from(queue_size)).next_multiple_of(QUEUE_ALIGN)
}

/// Errors setting up an inflight region.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InflightError {
    /// The frontend asked for no queues or empty queues.
    #[error("an inflight region for {num_queues} queues of {queue_size} descriptors is empty")]
    Empty {
        /// Queues asked for.
        num_queues: u16,
        /// Their size.
        queue_size: u16,
    },
    /// The memfd could not be created or sized.
    #[error("creating the inflight memfd: {0}")]
    Memfd(#[source] std::io::Error),
    /// The region the frontend gave is smaller than its queues need.
    #[error(
        "inflight region of {given} bytes is too small for {num_queues} queues of \
         {queue_size} descriptors ({needed} bytes)"
    )]
    TooSmall {
        /// Its size.
        given: u64,
        /// Bytes needed.
        needed: u64,
        /// Queues.
        num_queues: u16,
        /// Their size.
        queue_size: u16,
    },
    /// The region could not be mapped.
    #[error("mapping the inflight region: {0}")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
}

/// What a queue's inflight state says when the queue starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The heads to resubmit, oldest first (by counter).
    pub resubmit: Vec<u16>,
    /// The counter for the next chain taken.
    pub next_counter: u64,
    /// The next available index to take: the used index plus the chains
    /// still in flight (every chain taken is either used or in flight).
    /// `None` for a region no backend used yet (nothing to recover).
    pub next_avail: Option<u16>,
}

/// A mapped inflight region (see the module docs).
pub struct InflightRegion {
    map: MmapRegion<()>,
    num_queues: u16,
    queue_size: u16,
    stride: usize,
}

impl std::fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightRegion")
            .field("num_queues", &self.num_queues)
            .field("queue_size", &self.queue_size)
            .finish()
    }
}

impl InflightRegion {
    /// Bytes a region for `num_queues` queues of `queue_size` needs.
    pub fn size_for(num_queues: u16, queue_size: u16) -> u64 {
        u64::from(num_queues) * queue_stride(queue_size) as u64
    }

    /// Creates a zeroed memfd for `num_queues` queues of `queue_size`
    /// (GET_INFLIGHT_FD) and maps it; each queue's `desc_num` is set.
    pub fn create(num_queues: u16, queue_size: u16) -> Result<(File, Self), InflightError> {
        if num_queues == 0 || queue_size == 0 {
            return Err(InflightError::Empty {
                num_queues,
                queue_size,
            });
        }
        let size = Self::size_for(num_queues, queue_size);
        let fd =
            rustix::fs::memfd_create("imagefs-vhost-inflight", rustix::fs::MemfdFlags::CLOEXEC)
                .map_err(|e| InflightError::Memfd(e.into()))?;
        let file = File::from(fd);
        // A new memfd extended with ftruncate reads as zeros.
        file.set_len(size).map_err(InflightError::Memfd)?;
        let mapped = file.try_clone().map_err(InflightError::Memfd)?;
        let region = Self::map(mapped, 0, size, num_queues, queue_size)?;
        for q in 0..num_queues {
            region.store(
                region.header_at(q) + H_DESC_NUM,
                queue_size,
                Ordering::Relaxed,
            );
        }
        Ok((file, region))
    }

    /// Maps `mmap_size` bytes of `file` from `mmap_offset` (SET_INFLIGHT_FD).
    pub fn map(
        file: File,
        mmap_offset: u64,
        mmap_size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        if num_queues == 0 || queue_size == 0 {
            return Err(InflightError::Empty {
                num_queues,
                queue_size,
            });
        }
        let needed = Self::size_for(num_queues, queue_size);
        if mmap_size < needed {
            return Err(InflightError::TooSmall {
                given: mmap_size,
                needed,
                num_queues,
                queue_size,
            });
        }
        // Only what the queues use is mapped; `needed` is small (at most
        // 64 queues of 32768 descriptors, 32 MiB).
        let map = MmapRegion::from_file(FileOffset::new(file, mmap_offset), needed as usize)
            .map_err(InflightError::Map)?;
        Ok(Self {
            map,
            num_queues,
            queue_size,
            stride: queue_stride(queue_size),
        })
    }

    /// Queues in the region.
    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// Descriptors per queue.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    fn header_at(&self, queue: u16) -> usize {
        usize::from(queue) * self.stride
    }

    fn desc_at(&self, queue: u16, head: u16) -> usize {
        self.header_at(queue) + HEADER_LEN + usize::from(head) * DESC_LEN
    }

    fn valid(&self, queue: u16, head: u16) -> bool {
        queue < self.num_queues && head < self.queue_size
    }

    // Every offset used is inside the mapping (checked by `valid` or by
    // construction) and naturally aligned, so the volatile atomic access
    // cannot fail; an error would be a bug here, so it is ignored rather
    // than turned into a guest-visible failure.
    fn store<T: AtomicAccess>(&self, at: usize, v: T, order: Ordering) {
        let _ = self.map.as_volatile_slice().store(v, at, order);
    }

    /// Queue `queue`'s header.
    pub fn header(&self, queue: u16) -> QueueHeader {
        let mut b = [0u8; HEADER_LEN];
        if queue < self.num_queues {
            let _ = self
                .map
                .as_volatile_slice()
                .read_slice(&mut b, self.header_at(queue));
        }
        QueueHeader::decode(&b)
    }

    /// The state of descriptor `head` of queue `queue`.
    pub fn desc(&self, queue: u16, head: u16) -> DescState {
        let mut b = [0u8; DESC_LEN];
        if self.valid(queue, head) {
            let _ = self
                .map
                .as_volatile_slice()
                .read_slice(&mut b, self.desc_at(queue, head));
        }
        DescState::decode(&b)
    }

    /// The chain `head` was taken off the queue, as the `counter`th: marked
    /// in flight before it is executed (libvhost-user's `inflight_get`).
    pub fn taken(&self, queue: u16, head: u16, counter: u64) {
        if !self.valid(queue, head) {
            return;
        }
        let at = self.desc_at(queue, head);
        self.store(at + D_COUNTER, counter.to_le(), Ordering::Relaxed);
        self.store(at + D_INFLIGHT, 1u8, Ordering::Release);
    }

    /// `head` is about to be put on the used ring (`inflight_pre_put`): if
    /// we die after the used index moves but before [`Self::completed`],
    /// recovery knows which chain that was.
    pub fn completing(&self, queue: u16, head: u16) {
        if !self.valid(queue, head) {
            return;
        }
        self.store(
            self.header_at(queue) + H_LAST_BATCH_HEAD,
            head.to_le(),
            Ordering::Release,
        );
    }

    /// `head` is on the used ring and the used index is now `used_idx`
    /// (`inflight_post_put`).
    pub fn completed(&self, queue: u16, head: u16, used_idx: u16) {
        if !self.valid(queue, head) {
            return;
        }
        self.store(
            self.desc_at(queue, head) + D_INFLIGHT,
            0u8,
            Ordering::Release,
        );
        // The descriptor is clear before the used index says so.
        fence(Ordering::SeqCst);
        self.store(
            self.header_at(queue) + H_USED_IDX,
            used_idx.to_le(),
            Ordering::Release,
        );
    }

    /// Reads queue `queue`'s state when it starts, the guest's used index
    /// being `used_idx` (libvhost-user's `vu_check_queue_inflights`): a
    /// region no backend used yet is initialised; otherwise a completion
    /// cut short between the used index and the region is finished, and
    /// the chains still in flight are returned for resubmission.
    pub fn recover(&self, queue: u16, used_idx: u16) -> Recovery {
        let fresh = Recovery {
            resubmit: Vec::new(),
            next_counter: 0,
            next_avail: None,
        };
        if queue >= self.num_queues {
            return fresh;
        }
        let header = self.header(queue);
        let base = self.header_at(queue);
        if header.version == 0 {
            self.store(
                base + H_DESC_NUM,
                self.queue_size.to_le(),
                Ordering::Relaxed,
            );
            self.store(base + H_VERSION, VERSION.to_le(), Ordering::Release);
            return fresh;
        }
        if header.used_idx != used_idx {
            // The used ring got the last chain but the region did not
            // hear of it: it is complete, not in flight.
            if header.last_batch_head < self.queue_size {
                let at = self.desc_at(queue, header.last_batch_head);
                self.store(at + D_INFLIGHT, 0u8, Ordering::Release);
            }
            fence(Ordering::SeqCst);
            self.store(base + H_USED_IDX, used_idx.to_le(), Ordering::Release);
        }
        let desc_num = header.desc_num.min(self.queue_size);
        let mut inflight: Vec<(u64, u16)> = (0..desc_num)
            .filter_map(|head| {
                let d = self.desc(queue, head);
                (d.inflight != 0).then_some((d.counter, head))
            })
            .collect();
        inflight.sort_unstable();
        let next_counter = inflight.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        Recovery {
            next_avail: Some(used_idx.wrapping_add(inflight.len() as u16)),
            resubmit: inflight.into_iter().map(|(_, head)| head).collect(),
            next_counter,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_desc_state_round_trip_at_their_offsets() {
        let h = QueueHeader {
            features: 0x0102_0304_0506_0708,
            version: 0x0a0b,
            desc_num: 0x0c0d,
            last_batch_head: 0x0e0f,
            used_idx: 0x1011,
        };
        let b = h.encode();
        assert_eq!(
            b,
            [
                8, 7, 6, 5, 4, 3, 2, 1, 0x0b, 0x0a, 0x0d, 0x0c, 0x0f, 0x0e, 0x11, 0x10
            ]
        );
        assert_eq!(QueueHeader::decode(&b), h);
        let d = DescState {
            inflight: 1,
            next: 0x0203,
            counter: 0x1122_3344_5566_7788,
        };
        let b = d.encode();
        assert_eq!(
            b,
            [
                1, 0, 0, 0, 0, 0, 3, 2, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11
            ]
        );
        assert_eq!(DescState::decode(&b), d);
    }

    #[test]
    fn stride_holds_header_and_descriptors() {
        for qs in [1u16, 4, 128, 1024, 32768] {
            let s = queue_stride(qs);
            assert!(s >= HEADER_LEN + DESC_LEN * usize::from(qs));
            assert_eq!(s % QUEUE_ALIGN, 0);
        }
        // The same as libvhost-user's ALIGN_UP(16 * n + 2, 64) for a power of two.
        assert_eq!(queue_stride(128), (16 * 128 + 2usize).next_multiple_of(64));
    }

    /// What one backend writes, a second mapping of the same memfd (the
    /// next backend) reads, through the same layout.
    #[test]
    fn a_second_mapping_recovers_what_the_first_left_in_flight() {
        let (file, a) = InflightRegion::create(2, 8).unwrap();
        let size = InflightRegion::size_for(2, 8);
        assert_eq!(file.metadata().unwrap().len(), size);
        assert_eq!(a.header(1).desc_num, 8);
        // A fresh region is initialised, nothing to recover.
        assert_eq!(a.recover(1, 0).next_avail, None);
        assert_eq!(a.header(1).version, VERSION);
        // Five chains taken, 3 and 6 completed; 4 was being completed (its
        // used entry published) when the backend died.
        for (counter, head) in [(0u64, 6u16), (1, 3), (2, 7), (3, 1), (4, 4)] {
            a.taken(1, head, counter);
        }
        a.completing(1, 6);
        a.completed(1, 6, 1);
        a.completing(1, 3);
        a.completed(1, 3, 2);
        a.completing(1, 4);
        assert_eq!(
            a.desc(1, 7),
            DescState {
                inflight: 1,
                next: 0,
                counter: 2
            }
        );
        let b = InflightRegion::map(file.try_clone().unwrap(), 0, size, 2, 8).unwrap();
        // The guest's used index is 3 (4's entry landed).
        let r = b.recover(1, 3);
        assert_eq!(r.resubmit, vec![7, 1]);
        assert_eq!(r.next_avail, Some(5));
        assert_eq!(r.next_counter, 4);
        assert_eq!(b.header(1).used_idx, 3);
        assert_eq!(b.desc(1, 4).inflight, 0);
        // Queue 0 is untouched by queue 1's traffic.
        assert_eq!(b.header(0).version, 0);
        // Bytes written through the layout's encode read back field by field.
        let raw = QueueHeader {
            version: VERSION,
            desc_num: 8,
            last_batch_head: 2,
            used_idx: 9,
            features: 0,
        }
        .encode();
        b.map.as_volatile_slice().write_slice(&raw, 0).unwrap();
        b.map
            .as_volatile_slice()
            .write_slice(
                &DescState {
                    inflight: 1,
                    next: 0,
                    counter: 7,
                }
                .encode(),
                HEADER_LEN + 5 * DESC_LEN,
            )
            .unwrap();
        let r = a.recover(0, 9);
        assert_eq!((r.resubmit, r.next_avail), (vec![5], Some(10)));
        // Too small a region is refused.
        assert!(matches!(
            InflightRegion::map(file, 0, size - 1, 2, 8),
            Err(InflightError::TooSmall { .. })
        ));
    }
}
