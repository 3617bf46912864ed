//! The driver side of one split virtqueue of a virtio-blk device, written
//! straight into [`GuestRam`]: what a guest's driver does, both as it
//! should (requests in fixed slots, checked against a model of the disk)
//! and as a hostile guest would (raw descriptors, raw available-ring
//! entries and index). The hostile-guest soak and the crash-consistency
//! tests drive a real `imagefs serve` through it and [`VhostBlk`].
//!
//! Layout: the descriptor table, the available ring and the used ring at
//! [`RING_BASE`]; then one slot per three descriptors (header, data,
//! status), each with its own header, data buffer and status byte, so a
//! slot's request never shares memory with another's.

use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::memory::GuestRam;
use crate::vhost_blk::{QueueLayout, VhostBlk};

/// Where the rings start in guest memory.
pub const RING_BASE: u64 = 0x1000;
/// Where the slots' headers start.
const HEADERS: u64 = 0x10_0000;
/// Where the slots' status bytes start.
const STATUSES: u64 = 0x18_0000;
/// Where the slots' data buffers start.
const DATA: u64 = 0x20_0000;
/// Largest data buffer of one slot.
pub const SLOT_DATA: u64 = 64 * 1024;
/// Where the scratch area for hostile tables starts (after the data).
const SCRATCH_GAP: u64 = 0x10_0000;

/// A split descriptor's flags.
pub const F_NEXT: u16 = 1;
/// Device-writable.
pub const F_WRITE: u16 = 2;
/// An indirect table.
pub const F_INDIRECT: u16 = 4;

/// virtio-blk request types.
pub const T_IN: u32 = 0;
/// Write.
pub const T_OUT: u32 = 1;
/// Flush.
pub const T_FLUSH: u32 = 4;
/// The status byte a device writes for success.
pub const S_OK: u8 = 0;
/// What a slot's status byte holds until the device writes it.
pub const S_UNSET: u8 = 0xFF;

/// What a well-formed request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read `len` bytes at `sector`.
    Read {
        /// First sector.
        sector: u64,
        /// Bytes (whole sectors, at most [`SLOT_DATA`]).
        len: u32,
    },
    /// Write `data` at `sector`.
    Write {
        /// First sector.
        sector: u64,
        /// Bytes (whole sectors, at most [`SLOT_DATA`]).
        data: Vec<u8>,
    },
    /// Make every completed write durable.
    Flush,
}

/// One split virtqueue's driver over guest memory (see the module docs).
#[derive(Debug)]
pub struct BlkDriver {
    size: u16,
    layout: QueueLayout,
    /// The next available index this driver publishes.
    avail_idx: u16,
    /// The used index up to which completions were collected.
    used_seen: u16,
    /// Where slots' data end: the scratch area's start.
    scratch: u64,
}

impl BlkDriver {
    /// A queue of `size` entries (a power of two) laid out in `ram`, which
    /// must hold the rings, the slots and 1 MiB of scratch. The rings are
    /// zeroed.
    pub fn new(ram: &GuestRam, size: u16) -> Result<Self> {
        if !size.is_power_of_two() || size < 4 {
            return Err(Error::Config(format!("queue size {size}")));
        }
        let n = u64::from(size);
        let desc = RING_BASE;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        let end = used + 6 + 8 * n;
        let slots = n / 3;
        let scratch = DATA + slots * SLOT_DATA + SCRATCH_GAP;
        if end > HEADERS || slots * 16 > STATUSES - HEADERS || scratch + (1 << 20) > ram.size() {
            return Err(Error::Config(format!(
                "a queue of {size} does not fit in {} bytes of guest memory",
                ram.size()
            )));
        }
        ram.write(RING_BASE, &vec![0u8; (end - RING_BASE) as usize])?;
        Ok(Self {
            size,
            layout: QueueLayout {
                size,
                desc,
                avail,
                used,
            },
            avail_idx: 0,
            used_seen: 0,
            scratch,
        })
    }

    /// Where the rings are, for [`VhostBlk::activate`].
    pub fn layout(&self) -> QueueLayout {
        self.layout
    }

    /// Slots: requests that can be outstanding at once.
    pub fn slots(&self) -> u16 {
        self.size / 3
    }

    /// Guest memory free for hostile tables: at least 1 MiB from here.
    pub fn scratch(&self) -> u64 {
        self.scratch
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Writes descriptor `index` of the table.
    pub fn write_desc(
        &self,
        ram: &GuestRam,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        write_desc_at(
            ram,
            self.layout.desc + 16 * u64::from(index),
            addr,
            len,
            flags,
            next,
        )
    }

    /// Publishes `head` on the available ring (whatever it is) and moves
    /// the index on by one.
    pub fn push_head(&mut self, ram: &GuestRam, head: u16) -> Result<()> {
        self.push_heads(ram, &[head])
    }

    /// Publishes `heads` (whatever they are) with one move of the index,
    /// so the device sees them all at once.
    pub fn push_heads(&mut self, ram: &GuestRam, heads: &[u16]) -> Result<()> {
        let mut idx = self.avail_idx;
        for head in heads {
            let entry = self.layout.avail + 4 + 2 * u64::from(idx % self.size);
            ram.write(entry, &head.to_le_bytes())?;
            idx = idx.wrapping_add(1);
        }
        self.set_avail_idx(ram, idx)
    }

    /// Writes the available index (the entries before it must be written
    /// first: the device reads them after it).
    pub fn set_avail_idx(&mut self, ram: &GuestRam, idx: u16) -> Result<()> {
        fence(Ordering::SeqCst);
        ram.write(self.layout.avail + 2, &idx.to_le_bytes())?;
        fence(Ordering::SeqCst);
        self.avail_idx = idx;
        Ok(())
    }

    /// The available index published so far.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used index the device wrote.
    pub fn used_idx(&self, ram: &GuestRam) -> Result<u16> {
        let mut b = [0u8; 2];
        ram.read(self.layout.used + 2, &mut b)?;
        fence(Ordering::SeqCst);
        Ok(u16::from_le_bytes(b))
    }

    /// Starts over after a reconnect: the device takes from `idx` on, and
    /// everything before it was collected.
    pub fn rewind(&mut self, ram: &GuestRam, idx: u16) -> Result<()> {
        self.used_seen = idx;
        self.set_avail_idx(ram, idx)
    }

    /// The descriptors' heads of slot `slot`: header, data, status.
    fn slot_descs(slot: u16) -> [u16; 3] {
        [slot * 3, slot * 3 + 1, slot * 3 + 2]
    }

    /// Writes slot `slot`'s request for `op` (see [`prepare`](Self::prepare))
    /// and publishes it; returns its head.
    pub fn submit(&mut self, ram: &GuestRam, slot: u16, op: &Op) -> Result<u16> {
        let head = self.prepare(ram, slot, op)?;
        self.push_head(ram, head)?;
        Ok(head)
    }

    /// Writes slot `slot`'s request for `op` (header, data, descriptors, a
    /// poisoned status byte) without publishing it; returns its head.
    pub fn prepare(&mut self, ram: &GuestRam, slot: u16, op: &Op) -> Result<u16> {
        if slot >= self.slots() {
            return Err(Error::Config(format!("slot {slot} of {}", self.slots())));
        }
        let [h, d, s] = Self::slot_descs(slot);
        let header = HEADERS + 16 * u64::from(slot);
        let status = STATUSES + u64::from(slot);
        let data = DATA + SLOT_DATA * u64::from(slot);
        let (kind, sector) = match op {
            Op::Read { sector, .. } => (T_IN, *sector),
            Op::Write { sector, .. } => (T_OUT, *sector),
            Op::Flush => (T_FLUSH, 0),
        };
        let mut hdr = [0u8; 16];
        hdr[0..4].copy_from_slice(&kind.to_le_bytes());
        hdr[8..16].copy_from_slice(&sector.to_le_bytes());
        ram.write(header, &hdr)?;
        ram.write(status, &[S_UNSET])?;
        match op {
            Op::Read { len, .. } => {
                check_len(u64::from(*len))?;
                self.write_desc(ram, h, header, 16, F_NEXT, d)?;
                self.write_desc(ram, d, data, *len, F_NEXT | F_WRITE, s)?;
            }
            Op::Write { data: bytes, .. } => {
                check_len(bytes.len() as u64)?;
                ram.write(data, bytes)?;
                self.write_desc(ram, h, header, 16, F_NEXT, d)?;
                self.write_desc(ram, d, data, bytes.len() as u32, F_NEXT, s)?;
            }
            Op::Flush => {
                self.write_desc(ram, h, header, 16, F_NEXT, s)?;
            }
        }
        self.write_desc(ram, s, status, 1, F_WRITE, 0)?;
        Ok(h)
    }

    /// Slot `slot`'s header address (the attacks reuse it).
    pub fn header_addr(slot: u16) -> u64 {
        HEADERS + 16 * u64::from(slot)
    }

    /// Slot `slot`'s status byte address.
    pub fn status_addr(slot: u16) -> u64 {
        STATUSES + u64::from(slot)
    }

    /// Slot `slot`'s data buffer address.
    pub fn data_addr(slot: u16) -> u64 {
        DATA + SLOT_DATA * u64::from(slot)
    }

    /// The slot whose request has head `head`.
    pub fn slot_of(head: u16) -> u16 {
        head / 3
    }

    /// Slot `slot`'s status byte.
    pub fn status(&self, ram: &GuestRam, slot: u16) -> Result<u8> {
        let mut b = [0u8; 1];
        ram.read(STATUSES + u64::from(slot), &mut b)?;
        Ok(b[0])
    }

    /// Slot `slot`'s data buffer, `len` bytes.
    pub fn data(&self, ram: &GuestRam, slot: u16, len: usize) -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        ram.read(DATA + SLOT_DATA * u64::from(slot), &mut b)?;
        Ok(b)
    }

    /// The used-ring entries (head, bytes written) added since the last
    /// call.
    pub fn collect(&mut self, ram: &GuestRam) -> Result<Vec<(u16, u32)>> {
        let used = self.used_idx(ram)?;
        let mut out = Vec::new();
        while self.used_seen != used {
            let at = self.layout.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let mut e = [0u8; 8];
            ram.read(at, &mut e)?;
            let id = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
            let len = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
            out.push((u16::try_from(id).unwrap_or(u16::MAX), len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        Ok(out)
    }

    /// Collects completions until `done` says enough, or `timeout` passes
    /// (an error naming `what`): a hang guard, polling every 200 µs.
    pub fn wait_until(
        &mut self,
        ram: &GuestRam,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&[(u16, u32)]) -> bool,
    ) -> Result<Vec<(u16, u32)>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            got.extend(self.collect(ram)?);
            if done(&got) {
                return Ok(got);
            }
            if Instant::now() >= deadline {
                return Err(Error::QueueTimeout {
                    what: format!("{what} (completions so far: {got:?})"),
                    secs: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Kicks the device (what the guest's QueueNotify does).
    pub fn kick(blk: &VhostBlk) -> Result<()> {
        blk.kick.write(1).map_err(|source| Error::Host {
            what: "kick eventfd",
            source,
        })
    }
}

fn check_len(len: u64) -> Result<()> {
    if len == 0 || !len.is_multiple_of(512) || len > SLOT_DATA {
        return Err(Error::Config(format!(
            "request of {len} bytes (whole sectors up to {SLOT_DATA})"
        )));
    }
    Ok(())
}

/// Writes one split descriptor at guest address `at`.
pub fn write_desc_at(
    ram: &GuestRam,
    at: u64,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) -> Result<()> {
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..16].copy_from_slice(&next.to_le_bytes());
    ram.write(at, &d)
}
