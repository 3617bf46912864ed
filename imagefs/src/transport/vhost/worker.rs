//! The worker thread of one queue: runs while the queue is started (its
//! kick fd set) and enabled, waiting on the kick eventfd and an exit
//! eventfd and calling [`BlkBackend::process_queue`] on each kick.
//!
//! A worker first resubmits what a previous backend left in flight, then
//! takes whatever is already available (the kick libvhost-user sends
//! itself after a reconnect: the guest may have kicked while no backend
//! listened), and only then waits. Each pass over the queue is bounded
//! (a queue's worth of chains, see [`BlkBackend::process_queue`]); the
//! worker checks for a stop between passes, so no guest can keep it from
//! stopping, and a broken queue sends it straight back to its wait.

use std::io;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use vhost_user_backend::{VringRwLock, VringT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::backend::BlkBackend;
use super::log_limited;

const KICK: u64 = 0;
const EXIT: u64 = 1;

/// A running queue worker; stopped (and joined) by [`Worker::stop`] or on
/// drop.
pub(super) struct Worker {
    exit: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker of queue `queue` over `vring`, which resubmits
    /// `resubmit` first.
    pub(super) fn spawn(
        backend: BlkBackend,
        queue: u16,
        vring: VringRwLock,
        resubmit: Vec<u16>,
    ) -> io::Result<Self> {
        let exit = EventFd::new(EFD_NONBLOCK)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            exit.as_raw_fd(),
            EpollEvent::new(EventSet::IN, EXIT),
        )?;
        // The kick eventfd stays in the vring (the handler replaces it
        // only after stopping this worker); epoll keeps its own reference.
        if let Some(kick) = vring.get_ref().get_kick() {
            epoll.ctl(
                ControlOperation::Add,
                kick.as_raw_fd(),
                EpollEvent::new(EventSet::IN, KICK),
            )?;
        }
        let thread = std::thread::Builder::new()
            .name(format!("imagefs-blk-q{queue}"))
            .spawn(move || run(&backend, queue, &vring, &epoll, &resubmit))?;
        Ok(Self {
            exit,
            thread: Some(thread),
        })
    }

    /// Stops the worker and waits for it (not for the requests it handed
    /// to the pool: [`BlkBackend::stop_vring`] does that).
    pub(super) fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.exit.write(1);
            let _ = thread.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(backend: &BlkBackend, queue: u16, vring: &VringRwLock, epoll: &Epoll, resubmit: &[u16]) {
    let logged = &backend.service().stats.logged;
    // True when the last pass stopped at its budget with chains left.
    let process = || match backend.process_queue(queue, vring) {
        Ok(more) => more,
        Err(e) => {
            log_limited(logged, &format!("queue {queue}: {e}"));
            false
        }
    };
    backend.resubmit(queue, vring, resubmit);
    let mut more = process();
    let mut events = [EpollEvent::default(); 2];
    loop {
        // With chains left, only look for a stop (or a kick) and go on.
        let n = match epoll.wait(if more { 0 } else { -1 }, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log_limited(logged, &format!("queue {queue}: waiting for a kick: {e}"));
                return;
            }
        };
        if events[..n].iter().any(|e| e.data() == EXIT) {
            return;
        }
        let kicked = events[..n].iter().any(|e| e.data() == KICK);
        if kicked {
            // Consumes the kick; false when the ring was disabled meanwhile.
            match vring.read_kick() {
                Ok(true) => more = process(),
                Ok(false) => more = false,
                Err(e) => {
                    log_limited(logged, &format!("queue {queue}: reading the kick: {e}"));
                    return;
                }
            }
        } else if more {
            more = process();
        }
    }
}
