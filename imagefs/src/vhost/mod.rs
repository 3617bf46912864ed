//! `imagefs serve`: the image as a vhost-user-blk device, one daemon per
//! microVM, fetching chunks only when the guest reads them.
//!
//! - [`config`]: the virtio-blk configuration space and feature bits;
//! - [`request`]: a descriptor chain parsed into a request (pure);
//! - [`backend`]: the `VhostUserBackend` (queue workers, the I/O pool,
//!   out-of-order completion);
//! - [`trace`]: the `--record-trace` file.
//!
//! [`serve`] listens on a Unix socket, serves one frontend (QEMU's
//! `vhost-user-blk`, the vmm-shim) until it disconnects, and returns what
//! was served; with `keep_alive` it then waits on the same listening
//! socket for a reconnecting frontend instead. SIGINT or SIGTERM ends it
//! cleanly at any point (see [`ServeOptions::stop_on_signals`]).

pub mod backend;
pub mod config;
pub mod request;
pub mod trace;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

pub use backend::{BlkBackend, Service};
pub use config::{BlkGeometry, serial_of};
pub use trace::{TraceError, TraceHeader, TraceRecord, TraceWriter, read_trace};

use crate::BlockDevice;

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
    /// SIGINT and SIGTERM end the run cleanly: the frontend (if any) is
    /// disconnected and [`serve`] returns its report. Outside a run the
    /// signals keep their default action. Off for callers that handle
    /// signals themselves.
    pub stop_on_signals: bool,
    /// Threads doing the blocking reads and writes, shared by the queues.
    pub io_threads: usize,
    /// Record the guest's reads here (see [`trace`]).
    pub record_trace: Option<PathBuf>,
    /// The image's manifest digest (`sha256:…`): the serial and the trace
    /// header come from it.
    pub image_digest: String,
}

impl ServeOptions {
    /// Defaults for `socket` and `image_digest`: one queue of up to 1024, 1 MiB
    /// segments, read-only, 8 I/O threads, no trace, stopped by SIGINT and
    /// SIGTERM.
    pub fn new(socket: PathBuf, image_digest: String) -> Self {
        Self {
            socket,
            queues: 1,
            queue_size: 1024,
            size_max: 1 << 20,
            writable: false,
            keep_alive: false,
            stop_on_signals: true,
            io_threads: 8,
            record_trace: None,
            image_digest,
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

/// What a [`serve`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeReport {
    /// Frontend connections served.
    pub connections: u64,
    /// Read requests.
    pub reads: u64,
    /// Write requests.
    pub writes: u64,
    /// Flush requests.
    pub flushes: u64,
    /// GET_ID requests.
    pub get_ids: u64,
    /// Chains rejected (malformed, out of range, unsupported).
    pub rejected: u64,
    /// Requests that failed in the image (IOERR).
    pub io_errors: u64,
    /// Bytes read by the guest.
    pub bytes_read: u64,
    /// Bytes written by the guest.
    pub bytes_written: u64,
    /// Service time (request taken off the queue to completion), all
    /// requests, median, microseconds (histogram bucket, about 12% wide).
    pub p50_us: u64,
    /// The same, 99th percentile.
    pub p99_us: u64,
    /// Service time of reads only, median, microseconds.
    pub read_p50_us: u64,
    /// Service time of reads only, 99th percentile.
    pub read_p99_us: u64,
}

impl std::fmt::Display for ServeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connection(s); requests: {} reads ({} bytes), {} writes ({} bytes), {} flushes, \
             {} get-id, {} rejected, {} I/O errors; service time p50 {} us p99 {} us \
             (reads p50 {} us p99 {} us)",
            self.connections,
            self.reads,
            self.bytes_read,
            self.writes,
            self.bytes_written,
            self.flushes,
            self.get_ids,
            self.rejected,
            self.io_errors,
            self.p50_us,
            self.p99_us,
            self.read_p50_us,
            self.read_p99_us
        )
    }
}

/// A log-scale histogram of durations in microseconds: exact below 16,
/// then 8 buckets per power of two.
#[derive(Debug)]
struct Histogram {
    buckets: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; 16 + 60 * 8],
        }
    }
}

impl Histogram {
    fn index(us: u64) -> usize {
        if us < 16 {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros() as usize; // >= 4
        let sub = ((us >> (exp - 3)) & 7) as usize;
        16 + (exp - 4) * 8 + sub
    }

    /// The smallest value that falls in bucket `i`.
    fn lower(i: usize) -> u64 {
        if i < 16 {
            return i as u64;
        }
        let exp = (i - 16) / 8 + 4;
        let sub = ((i - 16) % 8) as u64;
        (1u64 << exp) | (sub << (exp - 3))
    }

    fn record(&mut self, us: u64) {
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
    }

    fn quantile(&self, q: f64) -> u64 {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::lower(i);
            }
        }
        Self::lower(self.buckets.len() - 1)
    }
}

/// Counters shared by every connection of one [`serve`].
#[derive(Debug, Default)]
pub struct Stats {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    get_ids: AtomicU64,
    rejected: AtomicU64,
    io_errors: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// Log lines written (for [`log_limited`]).
    logged: AtomicU64,
    all: Mutex<Histogram>,
    reads_only: Mutex<Histogram>,
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

    /// A report of the counters so far.
    pub fn report(&self, connections: u64) -> ServeReport {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let all = self.all.lock().unwrap_or_else(PoisonError::into_inner);
        let reads = self
            .reads_only
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ServeReport {
            connections,
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            get_ids: get(&self.get_ids),
            rejected: get(&self.rejected),
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

/// Writes `line` to stderr, prefixed; after 100 lines only every 1000th, so
/// a hostile guest cannot flood the log.
pub(crate) fn log_limited(logged: &AtomicU64, line: &str) {
    let n = logged.fetch_add(1, Ordering::Relaxed);
    if n < 100 || n.is_multiple_of(1000) {
        eprintln!("imagefs serve: {line}");
    }
}

/// Builds the [`Service`] (device shape, pool, trace) for `image`.
pub fn service(image: Arc<dyn BlockDevice>, opts: &ServeOptions) -> Result<Arc<Service>, ServeError> {
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
    Service::new(
        image,
        geometry,
        opts.queue_size,
        serial_of(hex),
        opts.io_threads,
        trace,
    )
    .map(Arc::new)
    .map_err(ServeError::Threads)
}

/// Asks a running [`serve`] to stop: wakes its wait for a frontend and
/// disconnects the current one.
struct Stop {
    requested: AtomicBool,
    wake: EventFd,
    conn: Mutex<Option<ShutdownHandle>>,
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
            conn.shutdown();
        }
    }

    fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn set_conn(&self, conn: Option<ShutdownHandle>) {
        *self.conn.lock().unwrap_or_else(PoisonError::into_inner) = conn;
    }
}

/// The runs that SIGINT/SIGTERM stop. One thread per process receives the
/// signals (installed at the first run, never removed: signal-hook cannot
/// restore a default handler), stops every current run, or, when none is
/// running, gives the signal its default action.
static SIGNAL_TARGETS: Mutex<Vec<Arc<Stop>>> = Mutex::new(Vec::new());
static SIGNAL_THREAD: OnceLock<Result<(), String>> = OnceLock::new();

/// Registers `stop` with the signal thread while alive.
struct SignalGuard(Arc<Stop>);

impl SignalGuard {
    fn new(stop: &Arc<Stop>) -> Result<Self, ServeError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let started = SIGNAL_THREAD.get_or_init(|| {
            let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
                .map_err(|e| format!("installing SIGINT/SIGTERM handlers: {e}"))?;
            std::thread::Builder::new()
                .name("imagefs-serve-signals".into())
                .spawn(move || {
                    for signal in signals.forever() {
                        let targets = SIGNAL_TARGETS
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        if targets.is_empty() {
                            let _ = signal_hook::low_level::emulate_default_handler(signal);
                        }
                        for t in targets.iter() {
                            t.request();
                        }
                    }
                })
                .map(|_| ())
                .map_err(|e| format!("starting the signal thread: {e}"))
        });
        if let Err(e) = started {
            return Err(ServeError::Threads(std::io::Error::other(e.clone())));
        }
        SIGNAL_TARGETS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(stop));
        Ok(Self(Arc::clone(stop)))
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        SIGNAL_TARGETS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|t| !Arc::ptr_eq(t, &self.0));
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

/// Serves `image` on `opts.socket` (see the module docs); `listening` is
/// called each time the daemon waits for a frontend. Returns when the
/// frontend disconnects (with `keep_alive`, only when stopped by a signal
/// or when the daemon fails).
pub fn serve(
    image: Arc<dyn BlockDevice>,
    opts: &ServeOptions,
    mut listening: impl FnMut(&std::path::Path),
) -> Result<ServeReport, ServeError> {
    let service = service(image, opts)?;
    let daemon_err = |message: String| ServeError::Daemon {
        socket: opts.socket.clone(),
        message,
    };
    let stop = Arc::new(Stop::new().map_err(ServeError::Threads)?);
    let _signals = if opts.stop_on_signals {
        Some(SignalGuard::new(&stop)?)
    } else {
        None
    };
    // One listening socket for the whole run (replacing a stale one): a
    // frontend that reconnects (`keep_alive`) always finds it accepting.
    let mut listener =
        Listener::new(&opts.socket, true).map_err(|e| daemon_err(format!("listening: {e}")))?;
    let mut connections = 0;
    loop {
        listening(&opts.socket);
        if !wait_for_frontend(&listener, &stop)
            .map_err(|e| daemon_err(format!("waiting for a frontend: {e}")))?
        {
            break;
        }
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let backend = BlkBackend::new(Arc::clone(&service), mem.clone());
        let mut daemon = VhostUserDaemon::new("imagefs-vhost-blk".into(), backend, mem)
            .map_err(|e| daemon_err(e.to_string()))?;
        // The listener is readable, so this accepts without blocking.
        daemon
            .start(&mut listener)
            .map_err(|e| daemon_err(e.to_string()))?;
        connections += 1;
        stop.set_conn(daemon.shutdown_handle());
        if stop.requested() {
            daemon.request_shutdown();
        }
        let result = daemon.wait();
        stop.set_conn(None);
        // Stops and joins the queue workers through their exit events.
        drop(daemon);
        if let Some(trace) = &service.trace {
            let _ = trace.flush();
        }
        match result {
            // A frontend going away, even mid-message, is the normal end.
            Ok(())
            | Err(DaemonError::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => {}
            Err(e) => return Err(daemon_err(e.to_string())),
        }
        if stop.requested() || !opts.keep_alive {
            break;
        }
        eprintln!("imagefs serve: frontend disconnected; waiting for the next one (--keep-alive)");
    }
    if stop.requested() {
        eprintln!("imagefs serve: stopped by a signal");
    }
    Ok(service.stats.report(connections))
}

#[cfg(test)]
mod tests;
