//! The `vhost_request` fuzz target's harness (and its regression tests):
//! fuzzer bytes become a guest's memory, with a split virtqueue in it,
//! and go through the code the queue worker runs: the available ring
//! (`super::guard::take_heads`), the chain walker, the request parser,
//! and the backend itself against a small in-memory device.
//!
//! Input: byte 0 picks the queue size (2 to 256), byte 1 the features
//! (bit 0 EVENT_IDX), bytes 2..4 the next available index and 4..6 the
//! next used index; the rest is guest memory from address 0 (64 KiB in
//! all): the descriptor table at 0, the available ring at
//! [`AVAIL`], the used ring at [`USED`]. Anything can point anywhere,
//! inside or outside that memory.

use std::io;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use vhost_user_backend::{VringRwLock, VringT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::backend::{BlkBackend, Service};
use super::config::BlkGeometry;
use super::request::read;
use crate::device::BlockDevice;

/// Guest memory the harness builds.
pub const MEM_SIZE: usize = 64 * 1024;
/// The available ring's address.
pub const AVAIL: u64 = 0x1000;
/// The used ring's address.
pub const USED: u64 = 0x2000;
/// The largest queue the device accepts.
const MAX_QUEUE: u16 = 256;
/// The in-memory device's size.
const DEVICE_SIZE: usize = 1 << 20;
/// Passes over the queue the harness allows: with nobody moving the
/// available index, one queue's worth is all there can be.
const MAX_PASSES: usize = 3;

/// A writable device in memory.
struct MemDevice(RwLock<Vec<u8>>);

impl BlockDevice for MemDevice {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.0.read().unwrap_or_else(PoisonError::into_inner);
        let at = usize::try_from(offset).map_err(io::Error::other)?;
        let src = at
            .checked_add(buf.len())
            .and_then(|end| bytes.get(at..end))
            .ok_or_else(|| io::Error::other(format!("read past the end at {offset}")))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let at = usize::try_from(offset).map_err(io::Error::other)?;
        let dst = at
            .checked_add(buf.len())
            .and_then(|end| bytes.get_mut(at..end))
            .ok_or_else(|| io::Error::other(format!("write past the end at {offset}")))?;
        dst.copy_from_slice(buf);
        Ok(())
    }

    fn size(&self) -> u64 {
        DEVICE_SIZE as u64
    }

    fn writable(&self) -> bool {
        true
    }
}

/// One service (and its I/O thread) for every input.
fn service() -> Arc<Service> {
    static SERVICE: OnceLock<Arc<Service>> = OnceLock::new();
    SERVICE
        .get_or_init(|| {
            let geometry = BlkGeometry {
                size: DEVICE_SIZE as u64,
                block_size: 512,
                size_max: 1 << 20,
                seg_max: 254,
                queues: 1,
                writable: true,
            };
            let device = Arc::new(MemDevice(RwLock::new(vec![0; DEVICE_SIZE])));
            let service = Service::new(device, geometry, MAX_QUEUE, [b'f'; 20], 1, None)
                .expect("start the fuzzing service's I/O thread");
            // Hostile inputs log a line each; after the first hundred only
            // every thousandth is printed.
            Arc::new(service)
        })
        .clone()
}

/// Runs one input (see the module docs). Panics only on a broken
/// invariant: a parsed request outside guest memory or the limits, a
/// queue processed without end, a request left in flight.
pub fn vhost_request(data: &[u8]) {
    if data.len() < 6 {
        return;
    }
    let size = 1u16 << (1 + data[0] % 8);
    let event_idx = data[1] & 1 != 0;
    let next_avail = u16::from_le_bytes([data[2], data[3]]);
    let next_used = u16::from_le_bytes([data[4], data[5]]);
    let image = &data[6..data.len().min(6 + MEM_SIZE)];
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]) else {
        return;
    };
    if mem.write_slice(image, GuestAddress(0)).is_err() {
        return;
    }
    let service = service();

    // The walker and parser on every head the ring names, directly.
    for position in 0..size {
        let entry = AVAIL + 4 + 2 * u64::from(position);
        let Ok(head) = mem.read_obj::<u16>(GuestAddress(entry)) else {
            continue;
        };
        if let Ok(req) = read(&mem, GuestAddress(0), size, head, &service.limits) {
            assert!(req.data_len <= service.limits.max_data_len);
            assert!(req.data.len() <= service.limits.max_descriptors);
            for seg in &req.data {
                let end = seg.addr.0 + u64::from(seg.len);
                assert!(end <= MEM_SIZE as u64, "a segment outside guest memory");
            }
            assert!(
                req.status.0 < MEM_SIZE as u64,
                "a status outside guest memory"
            );
        }
    }

    // The backend over a real vring in the same memory.
    let atomic = GuestMemoryAtomic::new(mem);
    let backend = BlkBackend::new(Arc::clone(&service), atomic.clone());
    let Ok(vring) = VringRwLock::new(atomic, MAX_QUEUE) else {
        return;
    };
    if vring.set_queue_info(0, AVAIL, USED).is_err() {
        return;
    }
    vring.set_queue_size(size);
    vring.set_queue_next_avail(next_avail);
    vring.set_queue_next_used(next_used);
    vring.set_queue_event_idx(event_idx);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    backend.set_event_idx(event_idx);
    let mut passes = 0;
    while let Ok(true) = backend.process_queue(0, &vring) {
        passes += 1;
        assert!(passes < MAX_PASSES, "the queue was processed without end");
    }
    backend.wait_idle();
    assert_eq!(backend.in_flight(0), 0, "a request left in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs that break the queue, loop, or point outside memory end
    /// cleanly; the seed corpus's shapes.
    #[test]
    fn hostile_inputs_end_cleanly() {
        let mut input = vec![6u8, 1, 0, 0, 0, 0];
        input.resize(6 + MEM_SIZE, 0);
        // An available index far past the window.
        input[6 + AVAIL as usize + 2..6 + AVAIL as usize + 4]
            .copy_from_slice(&5000u16.to_le_bytes());
        vhost_request(&input);
        // Every head the same, within the window: taken once, then broken.
        input[6 + AVAIL as usize + 2..6 + AVAIL as usize + 4].copy_from_slice(&64u16.to_le_bytes());
        vhost_request(&input);
        // A descriptor looping on itself with a header in memory.
        input[6..6 + 8].copy_from_slice(&0x3000u64.to_le_bytes());
        input[6 + 8..6 + 12].copy_from_slice(&16u32.to_le_bytes());
        input[6 + 12..6 + 14].copy_from_slice(&1u16.to_le_bytes());
        vhost_request(&input);
        // Truncated and empty inputs.
        vhost_request(&input[..100]);
        vhost_request(&[]);
    }
}
