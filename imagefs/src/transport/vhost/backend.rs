//! The `VhostUserBackend` of the block device.
//!
//! One epoll worker per queue (the vhost-user-backend crate's threads,
//! [`queues_per_thread`](VhostUserBackend::queues_per_thread) gives each
//! queue its own) takes every available chain off its queue, parses it
//! ([`request::parse`]) and serves a read that needs no fetch (its chunks
//! are in the dedicated tier, or holes) itself; anything else goes to a
//! small pool of I/O threads shared by all queues. Whichever thread serves
//! a request does the [`BlockDevice`](crate::device::BlockDevice) read or write, writes the status byte
//! and puts the chain on the used ring itself, under the vring's lock,
//! signalling the guest when EVENT_IDX says so. So a request waiting on a
//! cold chunk holds one pool thread and nothing else: requests behind it
//! on the same queue complete around it, out of order (no head-of-line
//! blocking).
//!
//! A rejected chain is completed at once by the queue worker, with its
//! status (IOERR or UNSUPP) when it has a valid status byte, and a log
//! line. `stop_vring` waits for the queue's requests in the pool.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::QueueT;
use vm_memory::{
    Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::config::BlkGeometry;
use super::request::{self, Limits, Request, RequestKind};
use super::trace::TraceWriter;
use super::{Stats, log_limited};
use crate::device::BlockDevice;
use crate::profile::ProfileRecorder;

/// Guest memory as the vhost-user-backend crate hands it over.
pub type Memory = GuestMemoryAtomic<GuestMemoryMmap>;
/// One snapshot of guest memory (kept by a request until it completes).
type MemorySnapshot = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Largest piece of a segment read or written at once (the bounce buffer).
const PIECE: usize = 1 << 20;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of I/O threads fed by one channel.
struct Pool {
    tx: Mutex<Sender<Job>>,
}

impl Pool {
    fn new(threads: usize) -> io::Result<Self> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("imagefs-blk-io-{n}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next
                        // job, not while running it.
                        let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => break, // the pool was dropped
                        }
                    }
                })?;
        }
        Ok(Self { tx: Mutex::new(tx) })
    }

    /// Runs `job` on a pool thread (or here, if every thread is gone).
    fn submit(&self, job: Job) {
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(job);
        if let Err(returned) = sent {
            (returned.0)();
        }
    }
}

/// What every connection of one `serve` shares: the image, the device's
/// shape, the I/O pool, the trace and the statistics.
pub struct Service {
    pub(super) image: Arc<dyn BlockDevice>,
    pub(super) geometry: BlkGeometry,
    pub(super) serial: [u8; 20],
    pub(super) limits: Limits,
    /// The largest queue a frontend may set up (QEMU asks for 1024).
    pub(super) queue_size: u16,
    pool: Pool,
    pub(super) trace: Option<TraceWriter>,
    /// Set once, by [`Service::record_profile`]: a recorder outlives the
    /// connections and is read by whoever stores the profile.
    profile: OnceLock<Arc<ProfileRecorder>>,
    pub(super) stats: Stats,
}

impl Service {
    /// A service for `image` with `io_threads` pool threads, accepting
    /// queues of up to `queue_size` descriptors.
    pub fn new(
        image: Arc<dyn BlockDevice>,
        geometry: BlkGeometry,
        queue_size: u16,
        serial: [u8; 20],
        io_threads: usize,
        trace: Option<TraceWriter>,
    ) -> io::Result<Self> {
        let limits = Limits {
            capacity_sectors: geometry.capacity_sectors(),
            max_descriptors: geometry.seg_max as usize + 2,
            max_data_len: u64::from(geometry.seg_max) * u64::from(geometry.size_max),
            writable: geometry.writable,
        };
        Ok(Self {
            image,
            geometry,
            serial,
            limits,
            queue_size,
            pool: Pool::new(io_threads)?,
            trace,
            profile: OnceLock::new(),
            stats: Stats::default(),
        })
    }

    /// The device's counters, live.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Records the start profile of every read from now on into
    /// `recorder` (`serve --record-profile`). False if a recorder was
    /// already set (it stays).
    pub fn record_profile(&self, recorder: Arc<ProfileRecorder>) -> bool {
        self.profile.set(recorder).is_ok()
    }

    /// Does what `req` asks; returns the status and the number of bytes
    /// written into device-writable buffers (the status byte included).
    pub(super) fn execute(&self, queue: u16, req: &Request, mem: &MemorySnapshot) -> (u8, u32) {
        let fail = |what: String| {
            log_limited(
                &self.stats.logged,
                &format!("queue {queue}: request {}: {what}", req.head),
            );
            self.stats.io_errors.fetch_add(1, Ordering::Relaxed);
            (VIRTIO_BLK_S_IOERR as u8, 1)
        };
        let data_used = u32::try_from(req.data_len).unwrap_or(u32::MAX);
        match req.kind {
            RequestKind::Read { .. } | RequestKind::Write { .. } => {
                let write = matches!(req.kind, RequestKind::Write { .. });
                let mut offset = req.offset().unwrap_or(0);
                let mut buf = vec![0u8; (req.data_len as usize).min(PIECE)];
                for seg in &req.data {
                    let mut done = 0u64;
                    while done < u64::from(seg.len) {
                        let n = (u64::from(seg.len) - done).min(PIECE as u64) as usize;
                        let addr = vm_memory::GuestAddress(seg.addr.0 + done);
                        let piece = &mut buf[..n];
                        let result = if write {
                            mem.read_slice(piece, addr)
                                .map_err(|e| format!("reading guest memory at {:#x}: {e}", addr.0))
                                .and_then(|()| {
                                    self.image.write_at(piece, offset).map_err(|e| {
                                        format!(
                                            "write of {n} bytes at offset {offset}: {}",
                                            crate::error_chain(&e)
                                        )
                                    })
                                })
                        } else {
                            self.image
                                .read_exact_at(piece, offset)
                                .map_err(|e| {
                                    format!(
                                        "read of {n} bytes at offset {offset}: {}",
                                        crate::error_chain(&e)
                                    )
                                })
                                .and_then(|()| {
                                    mem.write_slice(piece, addr).map_err(|e| {
                                        format!("writing guest memory at {:#x}: {e}", addr.0)
                                    })
                                })
                        };
                        if let Err(what) = result {
                            return fail(what);
                        }
                        done += n as u64;
                        offset += n as u64;
                    }
                }
                if write {
                    self.stats
                        .bytes_written
                        .fetch_add(req.data_len, Ordering::Relaxed);
                    (VIRTIO_BLK_S_OK as u8, 1)
                } else {
                    self.stats
                        .bytes_read
                        .fetch_add(req.data_len, Ordering::Relaxed);
                    (VIRTIO_BLK_S_OK as u8, data_used.saturating_add(1))
                }
            }
            RequestKind::Flush => match self.image.flush() {
                Ok(()) => (VIRTIO_BLK_S_OK as u8, 1),
                Err(e) => fail(format!("flush: {}", crate::error_chain(&e))),
            },
            RequestKind::GetId => {
                let mut left: &[u8] = &self.serial;
                let mut written = 0u32;
                for seg in &req.data {
                    if left.is_empty() {
                        break;
                    }
                    let n = (seg.len as usize).min(left.len());
                    if let Err(e) = mem.write_slice(&left[..n], seg.addr) {
                        return fail(format!("writing the serial at {:#x}: {e}", seg.addr.0));
                    }
                    left = &left[n..];
                    written += n as u32;
                }
                (VIRTIO_BLK_S_OK as u8, written + 1)
            }
        }
    }
}

/// The state of one frontend connection.
struct Conn {
    mem: RwLock<Memory>,
    event_idx: AtomicBool,
    acked_features: AtomicU64,
    /// Requests of each queue handed to the pool and not yet completed.
    inflight: Mutex<Vec<usize>>,
    idle: Condvar,
}

/// The vhost-user-blk backend of one connection (cheap to clone: the
/// vhost-user-backend crate gives a clone to every worker).
#[derive(Clone)]
pub struct BlkBackend {
    service: Arc<Service>,
    conn: Arc<Conn>,
}

impl BlkBackend {
    /// A backend for one connection, over guest memory `mem` (the same
    /// object the daemon is given).
    pub fn new(service: Arc<Service>, mem: Memory) -> Self {
        let queues = usize::from(service.geometry.queues);
        Self {
            service,
            conn: Arc::new(Conn {
                mem: RwLock::new(mem),
                event_idx: AtomicBool::new(false),
                acked_features: AtomicU64::new(0),
                inflight: Mutex::new(vec![0; queues]),
                idle: Condvar::new(),
            }),
        }
    }

    /// Takes every available chain off `vring` (queue `queue`) and
    /// dispatches it; with EVENT_IDX, repeats until no chain arrived
    /// while notifications were off.
    pub fn process_queue(&self, queue: u16, vring: &VringRwLock) -> io::Result<()> {
        let event_idx = self.conn.event_idx.load(Ordering::Acquire);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let mem = self
                .conn
                .mem
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .memory();
            let chains: Vec<_> = {
                let mut state = vring.get_mut();
                let q = state.get_queue_mut();
                std::iter::from_fn(|| q.pop_descriptor_chain(mem.clone())).collect()
            };
            for chain in chains {
                self.dispatch(queue, vring, chain, &mem);
            }
            if let Some(trace) = &self.service.trace
                && let Err(e) = trace.flush()
            {
                log_limited(&self.service.stats.logged, &e.to_string());
            }
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }

    fn dispatch(
        &self,
        queue: u16,
        vring: &VringRwLock,
        chain: virtio_queue::DescriptorChain<MemorySnapshot>,
        mem: &MemorySnapshot,
    ) {
        let started = Instant::now();
        let stats = &self.service.stats;
        let req = match request::parse(chain, &self.service.limits) {
            Ok(req) => req,
            Err(rejected) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                log_limited(
                    &stats.logged,
                    &format!(
                        "queue {queue}: request {} rejected: {}",
                        rejected.head, rejected.error
                    ),
                );
                let used = match rejected.status {
                    Some(addr) if mem.write_obj(rejected.error.status(), addr).is_ok() => 1,
                    _ => 0,
                };
                complete(vring, rejected.head, used, &stats.logged);
                return;
            }
        };
        match req.kind {
            RequestKind::Read { .. } => {
                stats.reads.fetch_add(1, Ordering::Relaxed);
                if let Some(trace) = &self.service.trace
                    && let Err(e) = trace.record(queue, req.offset().unwrap_or(0), req.data_len)
                {
                    log_limited(&stats.logged, &e.to_string());
                }
                if let (Some(profile), Some(offset)) = (self.service.profile.get(), req.offset()) {
                    profile.record_read(offset, req.data_len);
                }
            }
            RequestKind::Write { .. } => {
                stats.writes.fetch_add(1, Ordering::Relaxed);
            }
            RequestKind::Flush => {
                stats.flushes.fetch_add(1, Ordering::Relaxed);
            }
            RequestKind::GetId => {
                stats.get_ids.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.inflight_add(queue, 1);
        let (service, conn, vring, mem) = (
            Arc::clone(&self.service),
            Arc::clone(&self.conn),
            vring.clone(),
            mem.clone(),
        );
        let is_read = matches!(req.kind, RequestKind::Read { .. });
        // A read that needs no fetch (dedicated tier or holes) runs here on
        // the queue worker: handing it to the pool would cost two thread
        // switches, more than the local read itself. Anything that may
        // wait (a fetch, a write, a flush) goes to the pool.
        let inline = match req.kind {
            RequestKind::Read { .. } => self
                .service
                .image
                .is_local(req.offset().unwrap_or(0), req.data_len),
            RequestKind::GetId => true,
            RequestKind::Write { .. } | RequestKind::Flush => false,
        };
        let job = move || {
            let (status, used) = service.execute(queue, &req, &mem);
            let used = if mem.write_obj(status, req.status).is_ok() {
                used
            } else {
                0
            };
            complete(&vring, req.head, used, &service.stats.logged);
            service.stats.record(started.elapsed(), is_read);
            BlkBackend {
                service: Arc::clone(&service),
                conn,
            }
            .inflight_add(queue, -1);
        };
        if inline {
            job();
        } else {
            self.service.pool.submit(Box::new(job));
        }
    }

    fn inflight_add(&self, queue: u16, by: isize) {
        let mut inflight = self
            .conn
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = inflight.get_mut(usize::from(queue)) {
            *n = n.saturating_add_signed(by);
        }
        if inflight.iter().all(|&n| n == 0) || by < 0 {
            self.conn.idle.notify_all();
        }
    }
}

/// Puts chain `head` on the used ring with `used` bytes written, and
/// signals the guest if it wants to be (EVENT_IDX) — under one lock, as
/// pool threads complete concurrently.
fn complete(vring: &VringRwLock, head: u16, used: u32, logged: &AtomicU64) {
    let mut state = vring.get_mut();
    if let Err(e) = state.add_used(head, used) {
        log_limited(logged, &format!("cannot complete request {head}: {e}"));
        return;
    }
    match state.needs_notification() {
        Ok(false) => {}
        Ok(true) | Err(_) => {
            if let Err(e) = state.signal_used_queue() {
                log_limited(logged, &format!("cannot signal the guest: {e}"));
            }
        }
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.service.geometry.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.service.queue_size)
    }

    fn features(&self) -> u64 {
        self.service.geometry.features()
    }

    fn acked_features(&self, features: u64) {
        self.conn.acked_features.store(features, Ordering::Release);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        BlkGeometry::protocol_features()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.conn.event_idx.store(enabled, Ordering::Release);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.service.geometry.config_slice(offset, size)
    }

    fn update_memory(&self, mem: Memory) -> io::Result<()> {
        *self
            .conn
            .mem
            .write()
            .unwrap_or_else(PoisonError::into_inner) = mem;
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.service.geometry.queues.min(64))
            .map(|q| 1u64 << q)
            .collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::empty()).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let mut inflight = self
            .conn
            .inflight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while inflight.get(queue_index as usize).is_some_and(|&n| n > 0) {
            inflight = self
                .conn
                .idle
                .wait(inflight)
                .unwrap_or_else(PoisonError::into_inner);
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!(
                "unexpected event set {evset:?} on queue event {device_event}"
            )));
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("event for unknown queue {device_event}")))?;
        // One queue per worker thread: the thread index is the queue index.
        let queue = u16::try_from(thread_id).unwrap_or(u16::MAX);
        self.process_queue(queue, vring)
    }
}
