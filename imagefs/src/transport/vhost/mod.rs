//! `imagefs serve`: the image as a vhost-user-blk device, one daemon per
//! microVM, fetching chunks only when the guest reads them.
//!
//! - [`config`]: the virtio-blk configuration space and feature bits;
//! - [`chain`]: a descriptor chain walked from its head index (bounded);
//! - [`guard`]: a queue the guest broke (an available index past the
//!   window, a head outside the queue or still in flight) and the heads
//!   in flight, which bound each queue's requests;
//! - [`request`]: a walked chain parsed into a request (pure);
//! - [`backend`]: the device of one connection (the I/O pool, out-of-order
//!   completion, inflight tracking);
//! - `handler`: the vhost-user protocol (our own request handler, as
//!   vhost-user-backend's refuses inflight tracking), `worker`: one
//!   thread per running queue;
//! - [`inflight`]: the shared inflight region (`INFLIGHT_SHMFD`): a
//!   backend restarted after a crash resubmits what was in flight;
//! - [`trace`]: the `--record-trace` file.
//!
//! [`Server::record_profile`] adds a start-profile recorder
//! ([`crate::profile::ProfileRecorder`]) on the same read path.
//!
//! [`serve`] listens on a Unix socket, serves one frontend (QEMU's
//! `vhost-user-blk`, the vmm-shim) until it disconnects, and returns what
//! was served; with `keep_alive` it then waits on the same listening
//! socket for a reconnecting frontend instead. A [`StopHandle`] (from
//! [`Server::stop_handle`]) ends it cleanly at any point, from any thread:
//! the program decides what stops it (the CLI: SIGINT and SIGTERM).

pub mod backend;
pub mod chain;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
mod handler;
pub mod inflight;
pub mod request;
pub mod trace;
mod worker;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use telemetry::histogram::LogHistogram;
use vhost::vhost_user::{BackendListener, Error as VhostUserError, Listener};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use backend::{BlkBackend, Service};
pub use config::{BlkGeometry, serial_of};
pub use trace::{TraceError, TraceHeader, TraceRecord, TraceWriter, read_trace};

use crate::device::BlockDevice;

/// How [`serve`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// The Unix socket to listen on (replaced if it exists).
    pub socket: PathBuf,
    /// Request queues, each with its own worker thread (1..=64).
    pub queues: u16,
    /// The largest queue a frontend may set up, in descriptors (a power
    /// of two, 4..=32768; QEMU's vhost-user-blk asks for 1024). SEG_MAX is
    /// this minus two (header and status), at most 254.
    pub queue_size: u16,
    /// Largest data segment advertised (SIZE_MAX).
    pub size_max: u32,
    /// Accept guest writes (copy-on-write into the dedicated tier; the
    /// image must have one). Without it, RO is offered and writes fail.
    pub writable: bool,
    /// After the frontend disconnects, wait for the next one.
    pub keep_alive: bool,
    /// Threads doing the blocking reads and writes, shared by the queues.
    pub io_threads: usize,
    /// Record the guest's reads here (see [`trace`]).
    pub record_trace: Option<PathBuf>,
    /// The image's manifest digest (`sha256:…`): the serial and the trace
    /// header come from it.
    pub image_digest: String,
    /// What the device's log lines start with (`imagefs serve`; the agent
    /// names the VM).
    pub log_prefix: String,
}

impl ServeOptions {
    /// Defaults for `socket` and `image_digest`: one queue of up to 1024, 1 MiB
    /// segments, read-only, 8 I/O threads, no trace.
    pub fn new(socket: PathBuf, image_digest: String) -> Self {
        Self {
            socket,
            queues: 1,
            queue_size: 1024,
            size_max: 1 << 20,
            writable: false,
            keep_alive: false,
            io_threads: 8,
            record_trace: None,
            image_digest,
            log_prefix: "imagefs serve".into(),
        }
    }
}

/// Errors from [`serve`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The options cannot be served.
    #[error("invalid serve options: {0}")]
    Options(String),
    /// `writable` without a dedicated tier to write into.
    #[error("--writable needs a dedicated tier (the instance's own cache directory)")]
    NotWritable,
    /// The trace file could not be created.
    #[error("recording the trace: {0}")]
    Trace(#[source] TraceError),
    /// Threads could not be started.
    #[error("starting the I/O threads: {0}")]
    Threads(#[source] std::io::Error),
    /// The vhost-user daemon failed (the socket, the protocol).
    #[error("vhost-user daemon on {}: {message}", socket.display())]
    Daemon {
        /// The socket.
        socket: PathBuf,
        /// What the daemon said.
        message: String,
    },
}

pub use manifest::report::ServeReport;

/// Counters shared by every connection of one [`serve`].
#[derive(Debug, Default)]
pub struct Stats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    get_ids: AtomicU64,
    rejected: AtomicU64,
    io_errors: AtomicU64,
    /// Queues the guest broke (see [`guard`]).
    pub(super) broken_queues: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// Log lines written, and their prefix (for [`log_limited`]).
    pub(crate) logged: LimitedLog,
    /// Frontend connections accepted so far.
    connections: AtomicU64,
    /// Requests left in flight by an earlier backend, resubmitted.
    pub(super) resubmitted: AtomicU64,
    /// Of those, the ones completed.
    pub(super) resubmitted_completed: AtomicU64,
    /// Whether a frontend is connected now.
    connected: AtomicBool,
    all: Mutex<LogHistogram>,
    reads_only: Mutex<LogHistogram>,
}

impl Stats {
    fn record(&self, took: Duration, is_read: bool) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.all
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(us);
        if is_read {
            self.reads_only
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(us);
        }
    }

    /// Read service times in microseconds against fixed `bounds_us`
    /// ([`LogHistogram::counts_within`]), and their sum.
    pub fn read_latency(&self, bounds_us: &[u64]) -> (Vec<u64>, u64) {
        let h = self
            .reads_only
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (h.counts_within(bounds_us), h.sum())
    }

    /// Frontend connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether a frontend is connected now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// A report of the counters so far.
    pub fn report(&self) -> ServeReport {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        let reads = self
            .reads_only
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ServeReport {
            connections: self.connections(),
            resubmitted: get(&self.resubmitted),
            resubmitted_completed: get(&self.resubmitted_completed),
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            get_ids: get(&self.get_ids),
            rejected: get(&self.rejected),
            broken_queues: get(&self.broken_queues),
            io_errors: get(&self.io_errors),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            p50_us: all.quantile(0.5),
            p99_us: all.quantile(0.99),
            read_p50_us: reads.quantile(0.5),
            read_p99_us: reads.quantile(0.99),
        }
    }
}

/// The device's log: a prefix naming it and a count of lines written.
#[derive(Debug, Default)]
pub(crate) struct LimitedLog {
    written: AtomicU64,
    prefix: OnceLock<String>,
}

/// Writes `line` to stderr, prefixed with the device's name
/// ([`ServeOptions::log_prefix`]); after 100 lines only every 1000th, so a
/// hostile guest cannot flood the log.
pub(crate) fn log_limited(logged: &LimitedLog, line: &str) {
    let n = logged.written.fetch_add(1, Ordering::Relaxed);
    if n < 100 || n.is_multiple_of(1000) {
        let prefix = logged.prefix.get().map_or("imagefs serve", String::as_str);
        tracing::warn!("{prefix}: {line}");
    }
}

/// Builds the [`Service`] (device shape, pool, trace) for `image`.
pub fn service(
    image: Arc<dyn BlockDevice>,
    opts: &ServeOptions,
) -> Result<Arc<Service>, ServeError> {
    if !(1..=64).contains(&opts.queues) {
        return Err(ServeError::Options(format!(
            "--queues {} is not in 1..=64",
            opts.queues
        )));
    }
    if !opts.queue_size.is_power_of_two() || opts.queue_size < 4 {
        return Err(ServeError::Options(format!(
            "--queue-size {} is not a power of two of at least 4",
            opts.queue_size
        )));
    }
    if opts.size_max < 4096 {
        return Err(ServeError::Options(format!(
            "segment size {} is smaller than a page",
            opts.size_max
        )));
    }
    if opts.writable && !image.writable() {
        return Err(ServeError::NotWritable);
    }
    let geometry = BlkGeometry {
        size: image.size(),
        block_size: 512,
        size_max: opts.size_max,
        seg_max: (u32::from(opts.queue_size) - 2).min(254),
        queues: opts.queues,
        writable: opts.writable,
    };
    let hex = opts
        .image_digest
        .strip_prefix("sha256:")
        .unwrap_or(&opts.image_digest);
    let trace = opts
        .record_trace
        .as_deref()
        .map(|path| TraceWriter::create(path, &opts.image_digest, image.size()))
        .transpose()
        .map_err(ServeError::Trace)?;
    let service = Service::new(
        image,
        geometry,
        opts.queue_size,
        serial_of(hex),
        opts.io_threads,
        trace,
    )
    .map_err(ServeError::Threads)?;
    let _ = service.stats.logged.prefix.set(opts.log_prefix.clone());
    Ok(Arc::new(service))
}

/// The stop request shared by a [`Server`] and its [`StopHandle`]s.
struct Stop {
    requested: AtomicBool,
    wake: EventFd,
    /// The current frontend connection (a clone, to shut it down).
    conn: Mutex<Option<UnixStream>>,
}

impl Stop {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            requested: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
            conn: Mutex::new(None),
        })
    }

    fn request(&self) {
        // The flag first: `serve` checks it after publishing a connection,
        // so a request racing with a new connection is never lost.
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(conn) = &*self.conn.lock().unwrap_or_else(PoisonError::into_inner) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn set_conn(&self, conn: Option<UnixStream>) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = conn;
    }
}

/// Waits until a frontend connects to `listener` (true) or a stop is
/// requested (false).
fn wait_for_frontend(listener: &Listener, stop: &Stop) -> std::io::Result<bool> {
    const LISTENER: u64 = 0;
    const WAKE: u64 = 1;
    let epoll = Epoll::new()?;
    epoll.ctl(
        ControlOperation::Add,
        listener.as_raw_fd(),
        EpollEvent::new(EventSet::IN, LISTENER),
    )?;
    epoll.ctl(
        ControlOperation::Add,
        stop.wake.as_raw_fd(),
        EpollEvent::new(EventSet::IN, WAKE),
    )?;
    let mut events = [EpollEvent::default(); 2];
    loop {
        if stop.requested() {
            return Ok(false);
        }
        match epoll.wait(-1, &mut events) {
            Ok(n) => {
                if events[..n].iter().any(|e| e.data() == LISTENER) && !stop.requested() {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Stops a running [`Server`] from any thread: wakes its wait for a
/// frontend and disconnects the current one. Stopping before the run
/// starts makes it return at once.
#[derive(Clone)]
pub struct StopHandle(Arc<Stop>);

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopHandle")
            .field("requested", &self.0.requested())
            .finish()
    }
}

impl StopHandle {
    /// Asks the server to stop; [`Server::run`] then returns its report.
    pub fn stop(&self) {
        self.0.request();
    }
}

/// A vhost-user-blk server for one image, ready to run.
pub struct Server {
    service: Arc<Service>,
    opts: ServeOptions,
    stop: Arc<Stop>,
}

impl Server {
    /// Checks `opts` and builds the device for `image`; nothing listens
    /// yet.
    pub fn new(image: Arc<dyn BlockDevice>, opts: &ServeOptions) -> Result<Self, ServeError> {
        Ok(Self {
            service: service(image, opts)?,
            opts: opts.clone(),
            stop: Arc::new(Stop::new().map_err(ServeError::Threads)?),
        })
    }

    /// Records the start profile of every guest read into `recorder`
    /// (see [`crate::profile`]); the caller stores it when recording ends.
    pub fn record_profile(&self, recorder: Arc<crate::profile::ProfileRecorder>) {
        self.service.record_profile(recorder);
    }

    /// The device's live counters (the agent reports them while it runs).
    pub fn stats(&self) -> Arc<Service> {
        Arc::clone(&self.service)
    }

    /// A handle that stops [`Server::run`].
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop))
    }

    /// Serves on `opts.socket` (see the module docs); `listening` is
    /// called each time the daemon waits for a frontend. Returns when the
    /// frontend disconnects (with `keep_alive`, only when stopped or when
    /// the daemon fails).
    pub fn run(
        self,
        mut listening: impl FnMut(&std::path::Path),
    ) -> Result<ServeReport, ServeError> {
        let Self {
            service,
            opts,
            stop,
        } = self;
        let daemon_err = |message: String| ServeError::Daemon {
            socket: opts.socket.clone(),
            message,
        };
        // One listening socket for the whole run (replacing a stale one): a
        // frontend that reconnects (`keep_alive`) always finds it accepting.
        let mut listener =
            Listener::new(&opts.socket, true).map_err(|e| daemon_err(format!("listening: {e}")))?;
        loop {
            listening(&opts.socket);
            if !wait_for_frontend(&listener, &stop)
                .map_err(|e| daemon_err(format!("waiting for a frontend: {e}")))?
            {
                break;
            }
            let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
            let backend = BlkBackend::new(Arc::clone(&service), mem.clone());
            let handler = Arc::new(Mutex::new(
                handler::Handler::new(backend, mem).map_err(ServeError::Threads)?,
            ));
            // The listener is readable, so this accepts without blocking.
            let accepted = BackendListener::new(&mut listener, Arc::clone(&handler))
                .and_then(|mut l| l.accept())
                .map_err(|e| daemon_err(format!("accepting a frontend: {e}")))?;
            let Some(mut conn) = accepted else { continue };
            service.stats.connections.fetch_add(1, Ordering::Relaxed);
            service.stats.connected.store(true, Ordering::Relaxed);
            stop.set_conn(conn.try_clone_connection().ok());
            if stop.requested() {
                stop.request();
            }
            let result = loop {
                if let Err(e) = conn.handle_request() {
                    break e;
                }
            };
            service.stats.connected.store(false, Ordering::Relaxed);
            stop.set_conn(None);
            drop(conn);
            // Stops the queue workers and waits for the requests still in
            // the pool: the next frontend must find nothing of this one
            // running (a reconnect recovers what is in flight itself).
            handler
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .close();
            drop(handler);
            if let Some(trace) = &service.trace {
                let _ = trace.flush();
            }
            match result {
                // A frontend going away, even mid-message, is the normal
                // end, and so is any error once a stop was asked for (it
                // shut the socket down).
                VhostUserError::Disconnected | VhostUserError::PartialMessage => {}
                _ if stop.requested() => {}
                e => return Err(daemon_err(e.to_string())),
            }
            if stop.requested() || !opts.keep_alive {
                break;
            }
            tracing::info!("frontend disconnected; waiting for the next one (--keep-alive)");
        }
        if stop.requested() {
            tracing::info!("stopped");
        }
        Ok(service.stats.report())
    }
}

/// [`Server::new`] then [`Server::run`], for callers that stop it only by
/// disconnecting the frontend.
pub fn serve(
    image: Arc<dyn BlockDevice>,
    opts: &ServeOptions,
    listening: impl FnMut(&std::path::Path),
) -> Result<ServeReport, ServeError> {
    Server::new(image, opts)?.run(listening)
}

#[cfg(test)]
mod tests;
