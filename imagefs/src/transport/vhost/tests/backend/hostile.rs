//! A guest that breaks the virtqueue protocol: an available index past
//! the window, a head made available again while in flight, a head
//! outside the queue. Each must leave the backend responsive (the
//! worker back in epoll, stoppable) and bounded (no request run twice).

use std::sync::mpsc;

use super::*;

/// Runs `f` on its own thread and waits for it at most 20 s (a hang
/// guard: a spinning backend never answers).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} did not return within 20 s"))
}

impl Harness<'_> {
    fn event_idx(&self) {
        self.backend.set_event_idx(true);
        self.vring.set_queue_event_idx(true);
    }

    fn read_chunk(&mut self, n: u64, chunk: usize) -> u16 {
        self.submit(&[
            header(self.mem, n, VIRTIO_BLK_T_IN, (chunk * CHUNK / 512) as u64),
            desc(DATA + n * 0x1_0000, 4096, true),
            status_desc(n),
        ])
    }
}

/// With EVENT_IDX, an available index more than a queue's size ahead
/// made `process_queue` spin forever (nothing could be popped, and
/// `enable_notification` kept saying there was more).
#[test]
fn an_avail_index_past_the_window_does_not_spin() {
    let d = device(false);
    d.store.open();
    let mem = guest_memory();
    let mut h = harness(&mem, &d, &opts(false));
    h.event_idx();
    let first = h.read_chunk(0, 2);
    h.kick();
    assert_eq!(h.wait_used(1), [(first, 4097)]);
    let idx = h.avail_idx();
    h.set_avail_idx(idx.wrapping_add(QSIZE + 3));
    let (backend, vring) = (h.backend.clone(), h.vring.clone());
    let more = within(
        "process_queue on an avail index past the window",
        move || backend.process_queue(0, &vring),
    )
    .unwrap();
    assert!(!more, "a broken queue has nothing more to give");
    assert!(h.backend.is_broken(0));
    assert_eq!(h.service.stats.report().broken_queues, 1);
    // Broken, it is left alone even once the index is sane again...
    h.set_avail_idx(idx);
    let second = h.read_chunk(1, 3);
    h.kick();
    assert_eq!(h.used().len(), 1, "a broken queue was processed");
    // ...until the frontend restarts it.
    h.backend.start_queue(0, &h.vring).unwrap();
    h.kick();
    assert_eq!(h.wait_used(2)[1], (second, 4097));
    assert_eq!(h.service.stats.report().broken_queues, 1);
}

/// The frontend hears of a broken queue through its error eventfd.
#[test]
fn a_broken_queue_signals_the_error_eventfd() {
    let d = device(false);
    d.store.open();
    let mem = guest_memory();
    let h = harness(&mem, &d, &opts(false));
    let (err_rx, err_tx) = std::io::pipe().unwrap();
    h.backend.set_err(
        0,
        Some(std::fs::File::from(std::os::fd::OwnedFd::from(err_tx))),
    );
    h.push_head(QSIZE);
    h.kick();
    let mut b = [0u8; 8];
    use std::io::Read;
    within("the error eventfd", move || {
        let mut r = err_rx;
        r.read_exact(&mut b).map(|()| b)
    })
    .unwrap();
    assert!(h.backend.is_broken(0));
}

/// The same guest behind a real worker thread: the worker must go back
/// to epoll, so stopping it (what GET_VRING_BASE, a disconnect and
/// SIGTERM do) returns.
#[test]
fn a_worker_on_a_queue_past_the_window_still_stops() {
    let d = device(false);
    d.store.open();
    let mem = guest_memory();
    let h = harness(&mem, &d, &opts(false));
    h.event_idx();
    let (kick_rx, mut kick_tx) = std::io::pipe().unwrap();
    h.vring
        .set_kick(Some(std::fs::File::from(std::os::fd::OwnedFd::from(
            kick_rx,
        ))));
    let worker =
        super::super::worker::Worker::spawn(h.backend.clone(), 0, h.vring.clone(), Vec::new())
            .unwrap();
    h.set_avail_idx(QSIZE + 3);
    use std::io::Write;
    kick_tx.write_all(&1u64.to_ne_bytes()).unwrap();
    // Give the worker the kick before the stop (either order must stop).
    std::thread::sleep(Duration::from_millis(200));
    within("stopping the worker", move || worker.stop());
}

/// A head made available again while its request is still running (a
/// cold read held at the gate) was run again, once per repetition: a
/// queue's worth of jobs per kick, without bound.
#[test]
fn a_head_made_available_again_while_in_flight_is_not_run_twice() {
    let d = device(false);
    let mem = guest_memory();
    let mut h = harness(&mem, &d, &opts(false));
    let cold = h.read_chunk(0, 0);
    h.kick();
    for _ in 0..5 {
        h.push_head(cold);
    }
    h.kick();
    assert_eq!(h.service.stats.report().reads, 1, "the repeated head ran");
    assert!(h.backend.is_broken(0));
    assert_eq!(h.backend.in_flight(0), 1);
    d.store.open();
    assert_eq!(h.wait_used(1), [(cold, 4097)]);
    h.backend.wait_idle();
    assert_eq!(h.used().len(), 1, "one completion for one request");
    assert_eq!(h.backend.in_flight(0), 0);
    assert_eq!(h.service.stats.report().broken_queues, 1);
}

/// A head outside the descriptor table is a broken queue (as QEMU's
/// "Guest says index N is available"), not a chain to reject: it cannot
/// even be put on the used ring.
#[test]
fn a_head_outside_the_queue_is_not_taken() {
    let d = device(false);
    d.store.open();
    let mem = guest_memory();
    let h = harness(&mem, &d, &opts(false));
    h.push_head(QSIZE + 1);
    h.kick();
    let report = h.service.stats.report();
    assert_eq!(report.rejected, 0, "{report:?}");
    assert_eq!(report.broken_queues, 1, "{report:?}");
    assert!(h.backend.is_broken(0));
}

/// A well-behaved guest reuses a head as soon as its completion is on
/// the used ring; that is never taken for a repeat.
#[test]
fn a_head_reused_after_its_completion_is_served() {
    let d = device(false);
    d.store.open();
    let mem = guest_memory();
    let mut h = harness(&mem, &d, &opts(false));
    let head = h.read_chunk(0, 1);
    h.kick();
    h.wait_used(1);
    for n in 2..=6 {
        h.push_head(head);
        h.kick();
        h.wait_used(n);
    }
    let report = h.service.stats.report();
    assert_eq!((report.reads, report.rejected), (6, 0), "{report:?}");
    assert_eq!(report.broken_queues, 0, "{report:?}");
    assert!(h.used().iter().all(|&u| u == (head, 4097)));
}
