//! The block device behind one frontend connection.
//!
//! One worker per queue (`super::worker`) takes every available chain
//! off its queue, marks it in flight in the inflight region (when the
//! frontend gave one, [`super::inflight`]), parses it ([`request::read`])
//! and serves a read that needs no fetch (its chunks
//! are in the dedicated tier, or holes) itself; anything else goes to a
//! small pool of I/O threads shared by all queues. Whichever thread serves
//! a request does the [`BlockDevice`] read or write, writes the status byte
//! and puts the chain on the used ring itself, under the vring's lock,
//! signalling the guest when EVENT_IDX says so. So a request waiting on a
//! cold chunk holds one pool thread and nothing else: requests behind it
//! on the same queue complete around it, out of order (no head-of-line
//! blocking).
//!
//! A rejected chain is completed at once by the queue worker, with its
//! status (IOERR or UNSUPP) when it has a valid status byte, and a log
//! line. A guest that breaks the ring itself (an available index past the
//! window, a head outside the queue or still in flight) breaks the queue
//! instead ([`super::guard`]): at most one request per head is ever in
//! flight, so at most a queue's size per queue, and the pool's channel is
//! bounded by that. [`BlkBackend::stop_vring`] waits for the queue's requests in the
//! pool. Chains left in flight by a previous backend are handed to
//! [`BlkBackend::resubmit`] when the queue starts, before any new one.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::QueueT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap,
};

use super::config::BlkGeometry;
use super::guard::{QueueGuard, take_heads};
use super::inflight::InflightRegion;
use super::request::{self, Limits, Request, RequestKind};
use super::trace::TraceWriter;
use super::{Stats, log_limited};
use crate::device::BlockDevice;
use crate::profile::ProfileRecorder;

/// Guest memory, replaced as the frontend updates its memory table.
pub type Memory = GuestMemoryAtomic<GuestMemoryMmap>;
/// One snapshot of guest memory (kept by a request until it completes).
type MemorySnapshot = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Largest piece of a segment read or written at once (the bounce buffer).
const PIECE: usize = 1 << 20;

type Task = Box<dyn FnOnce() + Send>;

/// Most jobs waiting in the pool's channel. Requests in flight are
/// bounded already (one per descriptor head); this bounds the channel
/// itself, below the 64 × 32768 heads the largest device could have
/// (the channel allocates its slots up front). A worker that finds it
/// full waits for a pool thread to take a job: back-pressure, no loss.
const MAX_QUEUED: usize = 4096;

/// A fixed pool of I/O threads fed by one bounded channel.
struct Pool {
    tx: Mutex<SyncSender<Task>>,
}

impl Pool {
    /// `threads` threads taking jobs from a channel of `capacity`.
    fn new(threads: usize, capacity: usize) -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Task>(capacity.clamp(1, MAX_QUEUED));
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

    /// Runs `job` on a pool thread (or here, if every thread is gone);
    /// waits while the channel is full.
    fn submit(&self, job: Task) {
        // A clone, so that a full channel does not hold the lock (and
        // every other queue's worker) while it waits.
        let tx = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let sent = tx.send(job);
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
        // Every request of every queue could be in the pool at once.
        let pool_capacity = usize::from(geometry.queues) * usize::from(queue_size);
        Ok(Self {
            image,
            geometry,
            serial,
            limits,
            queue_size,
            pool: Pool::new(io_threads, pool_capacity)?,
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
        // One span per request: the fetches it causes (with the image and
        // chunk index) nest in it.
        let _span = tracing::debug_span!(
            "request",
            device = self.stats.logged.prefix.get().map_or("", String::as_str),
            queue,
            head = req.head,
            kind = ?req.kind,
            bytes = req.data_len
        )
        .entered();
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

/// Resubmitted requests of one queue not yet completed.
#[derive(Default)]
struct Resubmitted {
    total: usize,
    left: usize,
}

/// The state of one frontend connection.
struct Conn {
    mem: Memory,
    event_idx: AtomicBool,
    /// Requests of each queue handed to the pool and not yet completed.
    pending: Mutex<Vec<usize>>,
    idle: Condvar,
    /// The inflight region (SET_INFLIGHT_FD), if the frontend gave one.
    region: RwLock<Option<Arc<InflightRegion>>>,
    /// Per queue: the order number of the next chain taken.
    counters: Vec<AtomicU64>,
    /// Per queue: resubmitted requests still running.
    resubmitted: Vec<Mutex<Resubmitted>>,
    /// Per queue: broken or not, and the heads in flight.
    guards: Vec<QueueGuard>,
}

/// The vhost-user-blk backend of one connection (cheap to clone: every
/// queue worker and every request holds one).
#[derive(Clone)]
pub struct BlkBackend {
    service: Arc<Service>,
    conn: Arc<Conn>,
}

/// Where a request's chain lives, for its completion.
struct Job {
    queue: u16,
    head: u16,
    region: Option<Arc<InflightRegion>>,
    resubmitted: bool,
}

impl BlkBackend {
    /// A backend for one connection, over guest memory `mem` (the same
    /// object the connection's vrings use).
    pub fn new(service: Arc<Service>, mem: Memory) -> Self {
        let queues = usize::from(service.geometry.queues);
        let queue_size = service.queue_size;
        Self {
            service,
            conn: Arc::new(Conn {
                mem,
                event_idx: AtomicBool::new(false),
                pending: Mutex::new(vec![0; queues]),
                idle: Condvar::new(),
                region: RwLock::new(None),
                counters: (0..queues).map(|_| AtomicU64::new(0)).collect(),
                resubmitted: (0..queues).map(|_| Mutex::default()).collect(),
                guards: (0..queues).map(|_| QueueGuard::new(queue_size)).collect(),
            }),
        }
    }

    /// The service this connection serves.
    pub(super) fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Whether VIRTIO_RING_F_EVENT_IDX was negotiated.
    pub fn set_event_idx(&self, enabled: bool) {
        self.conn.event_idx.store(enabled, Ordering::Release);
    }

    /// Tracks this connection's requests in `region` from now on.
    pub fn set_inflight_region(&self, region: Option<Arc<InflightRegion>>) {
        *self
            .conn
            .region
            .write()
            .unwrap_or_else(PoisonError::into_inner) = region;
    }

    /// The frontend's error eventfd for queue `queue` (SET_VRING_ERR),
    /// signalled when the guest breaks the queue.
    pub fn set_err(&self, queue: u16, err: Option<std::fs::File>) {
        if let Some(guard) = self.conn.guards.get(usize::from(queue)) {
            guard.set_err(err);
        }
    }

    /// Whether the guest broke queue `queue` (see [`super::guard`]).
    pub fn is_broken(&self, queue: u16) -> bool {
        self.conn
            .guards
            .get(usize::from(queue))
            .is_some_and(QueueGuard::is_broken)
    }

    /// Requests of queue `queue` taken and not yet completed.
    pub fn in_flight(&self, queue: u16) -> usize {
        self.conn
            .guards
            .get(usize::from(queue))
            .map_or(0, QueueGuard::in_flight)
    }

    fn region(&self) -> Option<Arc<InflightRegion>> {
        self.conn
            .region
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Queue `queue` starts over the ring `vring` (addresses and base
    /// set): with an inflight region, finishes what the last backend left
    /// (see [`InflightRegion::recover`]), positions the ring after the
    /// chains still in flight and returns their heads, oldest first.
    pub fn start_queue(&self, queue: u16, vring: &VringRwLock) -> io::Result<Vec<u16>> {
        // A started queue works again, even one the guest broke (what
        // NEEDS_RESET asks of a driver: reset, then start over).
        if let Some(guard) = self.conn.guards.get(usize::from(queue)) {
            guard.restart();
        }
        let Some(region) = self.region() else {
            return Ok(Vec::new());
        };
        let used = vring.queue_used_idx().map_err(io::Error::other)?;
        let recovery = region.recover(queue, used);
        if let Some(counter) = self.conn.counters.get(usize::from(queue)) {
            counter.store(recovery.next_counter, Ordering::Relaxed);
        }
        if let Some(next_avail) = recovery.next_avail {
            vring.set_queue_next_avail(next_avail);
            vring.set_queue_next_used(used);
        }
        Ok(recovery.resubmit)
    }

    /// Runs the chains `heads` of queue `queue`, left in flight by the
    /// previous backend, before anything new.
    pub fn resubmit(&self, queue: u16, vring: &VringRwLock, heads: &[u16]) {
        if heads.is_empty() {
            return;
        }
        let stats = &self.service.stats;
        const SHOWN: usize = 16;
        let mut list = heads
            .iter()
            .take(SHOWN)
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        if heads.len() > SHOWN {
            list.push_str(", …");
        }
        log_limited(
            &stats.logged,
            &format!(
                "queue {queue}: resubmitting {} in-flight requests from before the reconnect (heads {list})",
                heads.len()
            ),
        );
        stats
            .resubmitted
            .fetch_add(heads.len() as u64, Ordering::Relaxed);
        if let Some(r) = self.conn.resubmitted.get(usize::from(queue)) {
            *r.lock().unwrap_or_else(PoisonError::into_inner) = Resubmitted {
                total: heads.len(),
                left: heads.len(),
            };
        }
        let mem = self.conn.mem.memory();
        let region = self.region();
        let (table, size) = {
            let state = vring.get_ref();
            let q = state.get_queue();
            (q.desc_table(), q.size())
        };
        let guard = self.conn.guards.get(usize::from(queue));
        for &head in heads {
            // The region is the frontend's: a head in it twice, or outside
            // the queue, is skipped rather than run twice.
            if let Some(Err(e)) = guard.map(|g| g.take(head, size)) {
                log_limited(
                    &stats.logged,
                    &format!("queue {queue}: not resubmitting head {head}: {e}"),
                );
                continue;
            }
            let job = Job {
                queue,
                head,
                region: region.clone(),
                resubmitted: true,
            };
            self.dispatch(job, vring, GuestAddress(table), size, &mem);
        }
    }

    /// Takes the available chains off `vring` (queue `queue`) and
    /// dispatches them; with EVENT_IDX, repeats until no chain arrived
    /// while notifications were off. Returns true when it stopped after a
    /// queue's worth of chains (more may be waiting: call again after
    /// checking for a stop), so one guest cannot keep its worker from
    /// ever seeing one. A queue the guest broke is left alone (see
    /// [`super::guard`]).
    pub fn process_queue(&self, queue: u16, vring: &VringRwLock) -> io::Result<bool> {
        let Some(guard) = self.conn.guards.get(usize::from(queue)) else {
            return Ok(false);
        };
        let event_idx = self.conn.event_idx.load(Ordering::Acquire);
        let region = self.region();
        let counter = self.conn.counters.get(usize::from(queue));
        // Rounds and chains taken, up to one queue's worth.
        let mut budget = usize::from(self.service.queue_size);
        loop {
            if guard.is_broken() {
                return Ok(false);
            }
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            let mem = self.conn.mem.memory();
            let (taken, table, size) = {
                let mut state = vring.get_mut();
                let q = state.get_queue_mut();
                if !q.ready() {
                    // Stopped (GET_VRING_BASE) or reset meanwhile.
                    return Ok(false);
                }
                let (table, size) = (q.desc_table(), q.size());
                (take_heads(q, &*mem, guard, budget), table, size)
            };
            budget = budget.saturating_sub(taken.heads.len().max(1));
            for &head in &taken.heads {
                // In flight before anything of it runs: a backend started
                // after our death resubmits it.
                if let (Some(region), Some(counter)) = (&region, counter) {
                    region.taken(queue, head, counter.fetch_add(1, Ordering::Relaxed));
                }
                let job = Job {
                    queue,
                    head,
                    region: region.clone(),
                    resubmitted: false,
                };
                self.dispatch(job, vring, GuestAddress(table), size, &mem);
            }
            if let Some(trace) = &self.service.trace
                && let Err(e) = trace.flush()
            {
                log_limited(&self.service.stats.logged, &e.to_string());
            }
            if let Some(fault) = taken.fault {
                if guard.break_with(queue, &fault, &self.service.stats.logged) {
                    self.service
                        .stats
                        .broken_queues
                        .fetch_add(1, Ordering::Relaxed);
                }
                return Ok(false);
            }
            if budget == 0 {
                return Ok(true);
            }
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(false);
            }
        }
    }

    fn dispatch(
        &self,
        job: Job,
        vring: &VringRwLock,
        table: GuestAddress,
        size: u16,
        mem: &MemorySnapshot,
    ) {
        let started = Instant::now();
        let queue = job.queue;
        let stats = &self.service.stats;
        let req = match request::read(&**mem, table, size, job.head, &self.service.limits) {
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
                self.complete(&job, vring, used);
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
        self.pending_add(queue, 1);
        let (backend, vring, mem) = (self.clone(), vring.clone(), mem.clone());
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
        let run = move || {
            let service = &backend.service;
            let (status, used) = service.execute(queue, &req, &mem);
            let used = if mem.write_obj(status, req.status).is_ok() {
                used
            } else {
                0
            };
            backend.complete(&job, &vring, used);
            service.stats.record(started.elapsed(), is_read);
            backend.pending_add(queue, -1);
        };
        if inline {
            run();
        } else {
            self.service.pool.submit(Box::new(run));
        }
    }

    /// Puts the job's chain on the used ring with `used` bytes written,
    /// clearing it in the inflight region around that as libvhost-user
    /// does, and signals the guest if it wants to be (EVENT_IDX) — under
    /// one lock, as pool threads complete concurrently.
    fn complete(&self, job: &Job, vring: &VringRwLock, used: u32) {
        let logged = &self.service.stats.logged;
        {
            let mut state = vring.get_mut();
            // Free the head before the used ring says it is done: the guest
            // may make it available again at once.
            if let Some(guard) = self.conn.guards.get(usize::from(job.queue)) {
                guard.release(job.head);
            }
            if let Some(region) = &job.region {
                region.completing(job.queue, job.head);
            }
            if let Err(e) = state.add_used(job.head, used) {
                log_limited(
                    logged,
                    &format!(
                        "queue {}: cannot complete request {}: {e}",
                        job.queue, job.head
                    ),
                );
                return;
            }
            if let Some(region) = &job.region {
                region.completed(job.queue, job.head, state.get_queue().next_used());
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
        if job.resubmitted
            && let Some(r) = self.conn.resubmitted.get(usize::from(job.queue))
        {
            self.service
                .stats
                .resubmitted_completed
                .fetch_add(1, Ordering::Relaxed);
            let mut r = r.lock().unwrap_or_else(PoisonError::into_inner);
            r.left = r.left.saturating_sub(1);
            if r.left == 0 && r.total > 0 {
                log_limited(
                    logged,
                    &format!(
                        "queue {}: the {} resubmitted requests completed",
                        job.queue, r.total
                    ),
                );
                r.total = 0;
            }
        }
    }

    fn pending_add(&self, queue: u16, by: isize) {
        let mut pending = self
            .conn
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = pending.get_mut(usize::from(queue)) {
            *n = n.saturating_add_signed(by);
        }
        if pending.iter().all(|&n| n == 0) || by < 0 {
            self.conn.idle.notify_all();
        }
    }

    /// Waits until queue `queue` has no request left in the pool (the
    /// frontend stops the ring: GET_VRING_BASE).
    pub fn stop_vring(&self, queue: u16) {
        let mut pending = self
            .conn
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while pending.get(usize::from(queue)).is_some_and(|&n| n > 0) {
            pending = self
                .conn
                .idle
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until no queue has a request left (the connection ends).
    pub fn wait_idle(&self) {
        for queue in 0..self.service.geometry.queues {
            self.stop_vring(queue);
        }
    }
}
