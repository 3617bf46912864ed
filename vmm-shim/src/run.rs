//! One probe-guest run: create the VM, connect the backend, run the vCPU on
//! its own thread under a watchdog, and collect what the probe recorded.
//!
//! The watchdog (the calling thread) stops the vCPU when the backend's socket
//! hangs up or the time limit passes: it sets a stop flag and signals the vCPU
//! thread, whose KVM_RUN then returns EINTR. It re-sends the signal until the
//! thread is out, so a signal that lands between two KVM_RUNs is not lost.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, VcpuExit, VcpuFd};
use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

use crate::error::{Error, Result, kvm};
use crate::layout;
use crate::memory::GuestRam;
use crate::probe::{self, Outcome, Params, Placement, RequestResult, TraceEntry, WaitMode};
use crate::vhost_blk::VhostBlk;
use crate::virtio_mmio::{Action, MmioBlk, QUEUE_NOTIFY};
use crate::vm::Machine;

/// How the guest's queue kicks reach the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickPath {
    /// A KVM ioeventfd on QueueNotify: no exit to the VMM.
    Ioeventfd,
    /// An MMIO exit, after which the VMM signals the kick eventfd.
    MmioExit,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The vhost-user-blk backend's socket.
    pub socket: PathBuf,
    /// The reads to replay.
    pub trace: Vec<TraceEntry>,
    /// Probe parameters.
    pub params: Params,
    /// Give every read its own buffer so its data can be read back.
    pub keep_data: bool,
    /// Watchdog limit for the whole run.
    pub timeout: Duration,
    /// Limit for each vhost-user reply during setup and activation.
    pub io_timeout: Duration,
    /// Updated with the guest's completed-request count while it runs.
    pub progress: Option<Arc<AtomicU64>>,
    /// Try a KVM ioeventfd for kicks (else every kick is an MMIO exit).
    pub ioeventfd: bool,
}

impl RunConfig {
    /// A configuration with default probe parameters and limits (120 s run,
    /// 10 s per vhost-user reply), buffers recycled.
    pub fn new(socket: PathBuf, trace: Vec<TraceEntry>) -> Self {
        Self {
            socket,
            trace,
            params: Params::default(),
            keep_data: false,
            timeout: Duration::from_secs(120),
            io_timeout: Duration::from_secs(10),
            progress: None,
            ioeventfd: true,
        }
    }
}

/// A finished run.
#[derive(Debug)]
pub struct ProbeRun {
    /// From the start of VM creation to the first KVM_RUN.
    pub setup: Duration,
    /// Guest TSC rate.
    pub tsc_khz: u32,
    /// The probe's parameter block after the run.
    pub outcome: Outcome,
    /// Per-request results, in trace order.
    pub results: Vec<RequestResult>,
    /// What the probe printed.
    pub console: String,
    /// How kicks travelled.
    pub kick: KickPath,
    /// Capacity the backend reported in GET_CONFIG (512-byte sectors).
    pub backend_capacity: u64,
    trace: Vec<TraceEntry>,
    placement: Placement,
    ram: GuestRam,
}

impl ProbeRun {
    /// Converts a TSC delta into time.
    pub fn tsc_to_duration(&self, ticks: u64) -> Duration {
        Duration::from_nanos(ticks.saturating_mul(1_000_000) / u64::from(self.tsc_khz.max(1)))
    }

    /// VM creation to the first completed read.
    pub fn to_first_completion(&self) -> Duration {
        let first = self
            .results
            .iter()
            .map(|r| r.tsc_complete)
            .min()
            .unwrap_or(self.outcome.tsc_start);
        self.setup + self.tsc_to_duration(first.saturating_sub(self.outcome.tsc_start))
    }

    /// VM creation to the last read of the trace ("ready").
    pub fn to_ready(&self) -> Duration {
        self.setup
            + self.tsc_to_duration(self.outcome.tsc_end.saturating_sub(self.outcome.tsc_start))
    }

    /// Per-request latencies (submit to completion seen), in trace order.
    pub fn latencies(&self) -> Vec<Duration> {
        self.results
            .iter()
            .map(|r| self.tsc_to_duration(r.tsc_complete.saturating_sub(r.tsc_submit)))
            .collect()
    }

    /// Bytes the guest read.
    pub fn bytes_read(&self) -> u64 {
        self.trace.iter().map(|e| u64::from(e.len)).sum()
    }

    /// The data read by trace entry `i` (only meaningful with `keep_data`).
    pub fn data(&self, i: usize) -> Result<Vec<u8>> {
        let e = self
            .trace
            .get(i)
            .ok_or_else(|| Error::Config(format!("no trace entry {i}")))?;
        let mut buf = vec![0u8; e.len as usize];
        self.ram.read(self.placement.bufs[i], &mut buf)?;
        Ok(buf)
    }
}

/// Why the vCPU thread returned.
enum VcpuEnd {
    Done,
    Stopped,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StopReason {
    BackendGone,
    Timeout,
}

extern "C" fn kick_vcpu(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

pub(crate) fn vcpu_signal() -> libc::c_int {
    SIGRTMIN() + 2
}

pub(crate) fn install_signal() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = register_signal_handler(vcpu_signal(), kick_vcpu).map_err(|e| Error::Host {
            what: "install vCPU kick signal handler",
            source: std::io::Error::from_raw_os_error(e.errno()),
        });
    });
    res
}

/// Runs the probe guest against the backend at `cfg.socket`.
pub fn run_probe(cfg: &RunConfig) -> Result<ProbeRun> {
    install_signal()?;
    let start = Instant::now();
    let placement = probe::place(&cfg.trace, &cfg.params, cfg.keep_data)?;
    let ram = GuestRam::new(placement.ram_size)?;
    let mut machine = Machine::new(ram)?;
    probe::write_guest(&machine.ram, &cfg.trace, &cfg.params, &placement)?;
    machine.enter_long_mode(layout::PROBE_LOAD, layout::STACK_TOP - 8, layout::PARAMS, 0)?;
    let tsc_khz = machine.tsc_khz()?;
    let backend = VhostBlk::connect(&cfg.socket, cfg.io_timeout)?;
    let backend_capacity = backend.capacity_sectors();
    let kick = if !cfg.ioeventfd {
        KickPath::MmioExit
    } else {
        match machine.vm.register_ioevent(
            &backend.kick,
            &IoEventAddress::Mmio(layout::VIRTIO_MMIO + QUEUE_NOTIFY),
            0u32,
        ) {
            Ok(()) => KickPath::Ioeventfd,
            Err(_) => KickPath::MmioExit,
        }
    };
    let mut dev = MmioBlk::new(backend);
    let setup = start.elapsed();

    let watch = dev
        .backend()
        .watch_socket()
        .try_clone()
        .map_err(|source| Error::Host {
            what: "dup vhost-user socket",
            source,
        })?;
    let stop = AtomicBool::new(false);
    let tid = AtomicU64::new(0);
    let mut console = Vec::new();
    let total = cfg.trace.len() as u64;
    let Machine { vcpu, ram, .. } = &mut machine;
    let ram: &GuestRam = ram;
    let (end, reason) = std::thread::scope(|s| {
        let handle = s.spawn(|| {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            tid.store(me as u64, Ordering::SeqCst);
            vcpu_loop(vcpu, &mut dev, ram, &stop, &mut console, cfg.params.wait)
        });
        let reason = watchdog(&Watch {
            handle: &handle,
            stop: &stop,
            tid: &tid,
            start,
            timeout: cfg.timeout,
            sock: &watch,
            ram,
            progress: cfg.progress.as_deref(),
        });
        let end = handle
            .join()
            .unwrap_or_else(|_| Err(Error::VcpuExit("vCPU thread panicked".into())));
        (end, reason)
    });
    let console = String::from_utf8_lossy(&console).into_owned();
    let outcome = probe::read_outcome(&machine.ram)?;
    let path = cfg.socket.clone();
    match (end, reason) {
        (_, Some(StopReason::BackendGone)) => Err(Error::BackendDisconnected {
            path,
            completed: outcome.completed,
            total,
        }),
        (Ok(VcpuEnd::Stopped), Some(StopReason::Timeout)) | (Ok(VcpuEnd::Stopped), None) => {
            Err(Error::Timeout {
                secs: cfg.timeout.as_secs(),
                completed: outcome.completed,
                total,
            })
        }
        (Err(e), _) => Err(e),
        (Ok(VcpuEnd::Done), _) => {
            if outcome.status != 1 {
                return Err(Error::Guest {
                    reason: probe::status_reason(outcome.status),
                    detail: outcome.detail,
                    console,
                });
            }
            let results = probe::read_results(&machine.ram, &placement, cfg.trace.len())?;
            drop(dev);
            let Machine { ram, .. } = machine;
            Ok(ProbeRun {
                setup,
                tsc_khz,
                outcome,
                results,
                console,
                kick,
                backend_capacity,
                trace: cfg.trace.clone(),
                placement,
                ram,
            })
        }
    }
}

/// Watches the run from the calling thread; returns why it stopped the vCPU,
/// or None when the vCPU thread ended by itself.
struct Watch<'a, 'b> {
    handle: &'a std::thread::ScopedJoinHandle<'b, Result<VcpuEnd>>,
    stop: &'a AtomicBool,
    tid: &'a AtomicU64,
    start: Instant,
    timeout: Duration,
    sock: &'a UnixStream,
    ram: &'a GuestRam,
    progress: Option<&'a AtomicU64>,
}

fn watchdog(w: &Watch<'_, '_>) -> Option<StopReason> {
    let Watch {
        handle,
        stop,
        tid,
        start,
        timeout,
        sock,
        ram,
        progress,
    } = *w;
    let reason = loop {
        if let Some(p) = progress
            && let Ok(n) = probe::read_completed(ram)
        {
            p.store(n, Ordering::SeqCst);
        }
        if handle.is_finished() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: sock.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and
        // its fd belongs to `sock`, which is borrowed for the whole loop.
        let n = unsafe { libc::poll(&mut pfd, 1, 20) };
        if n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            break StopReason::BackendGone;
        }
        if start.elapsed() > timeout {
            break StopReason::Timeout;
        }
    };
    stop.store(true, Ordering::SeqCst);
    // Unblocks a vCPU thread waiting on a vhost-user reply (activation).
    let _ = sock.shutdown(std::net::Shutdown::Both);
    while !handle.is_finished() {
        let t = tid.load(Ordering::SeqCst);
        if t != 0 {
            // SAFETY: `t` is the pthread_t of the vCPU thread, which has not
            // been joined yet (the scope joins it after this function), so
            // the id is still valid even if the thread has just exited.
            unsafe { libc::pthread_kill(t as libc::pthread_t, vcpu_signal()) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some(reason)
}

/// Runs the vCPU until the probe rings the doorbell, the watchdog stops it,
/// or something unexpected happens.
fn vcpu_loop(
    vcpu: &mut VcpuFd,
    dev: &mut MmioBlk,
    ram: &GuestRam,
    stop: &AtomicBool,
    console: &mut Vec<u8>,
    wait: WaitMode,
) -> Result<VcpuEnd> {
    let virtio = layout::VIRTIO_MMIO..layout::VIRTIO_MMIO + 0x1000;
    let control = layout::CONTROL..layout::CONTROL + 0x1000;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(VcpuEnd::Stopped);
        }
        match vcpu.run() {
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if virtio.contains(&addr) {
                    dev.read(addr - layout::VIRTIO_MMIO, data);
                } else {
                    data.fill(0);
                }
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if virtio.contains(&addr) {
                    if dev.write(ram, addr - layout::VIRTIO_MMIO, data)? == Action::Kick {
                        dev.backend().kick.write(1).map_err(|source| Error::Host {
                            what: "signal kick eventfd",
                            source,
                        })?;
                    }
                } else if addr == layout::CONTROL {
                    return Ok(VcpuEnd::Done);
                } else if addr == layout::CONTROL + 8 {
                    console.push(data.first().copied().unwrap_or(0));
                } else if !control.contains(&addr) {
                    return Err(Error::VcpuExit(format!(
                        "guest wrote {} bytes to unmapped address {addr:#x}",
                        data.len()
                    )));
                }
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                if port == 0x3f8 {
                    console.extend_from_slice(data);
                }
            }
            Ok(VcpuExit::IoIn(_, data)) => data.fill(0),
            Ok(VcpuExit::Hlt) => {
                if wait != WaitMode::Halt {
                    return Err(Error::VcpuExit(format!(
                        "guest halted unexpectedly; console: {:?}",
                        String::from_utf8_lossy(console)
                    )));
                }
                wait_for_call(dev.backend(), stop)?;
            }
            Ok(VcpuExit::Intr) => {}
            Ok(VcpuExit::Shutdown) => {
                return Err(Error::VcpuExit(format!(
                    "guest shut down (triple fault); console: {:?}",
                    String::from_utf8_lossy(console)
                )));
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                return Err(Error::VcpuExit(format!(
                    "KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"
                )));
            }
            Ok(other) => {
                return Err(Error::VcpuExit(format!("unhandled exit {other:?}")));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => return Err(kvm("KVM_RUN")(e)),
        }
    }
}

/// The probe halted waiting for a completion: block until the backend
/// signals the call eventfd (or the watchdog stops us), then resume it.
fn wait_for_call(backend: &VhostBlk, stop: &AtomicBool) -> Result<()> {
    let fd = backend.call.as_raw_fd();
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is valid for the call; `fd` is the call eventfd owned
        // by `backend`, which is borrowed for the whole function.
        let n = unsafe { libc::poll(&mut pfd, 1, 20) };
        if n > 0 {
            // Clear the counter; the probe rechecks the used ring itself.
            let _ = backend.call.read();
            return Ok(());
        }
    }
    Ok(())
}
