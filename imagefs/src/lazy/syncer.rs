//! The dedicated tier's group commit: a thread that persists the fills of
//! the last [`PERSIST_PERIOD`] (one `fdatasync` for all of them), so that
//! no fetch waits for a sync of its own.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::Inner;
use super::dedicated::PERSIST_PERIOD;

/// The persisting thread of one [`LazyImage`](super::LazyImage) with a
/// dedicated tier; dropping it stops the thread, which persists once more
/// on its way out.
pub(super) struct Syncer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread, or returns `None` when the image has no
    /// dedicated tier or no thread can be started (fills are then
    /// persisted at flush and close only).
    pub(super) fn start(inner: &Arc<Inner>) -> Option<Self> {
        inner.dedicated.as_ref()?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (for_inner, for_stop) = (Arc::clone(inner), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("imagefs-dedicated-sync".into())
            .spawn(move || run(&for_inner, &for_stop))
            .ok()?;
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }
}

fn run(inner: &Inner, stop: &(Mutex<bool>, Condvar)) {
    let Some(dedicated) = &inner.dedicated else {
        return;
    };
    let (flag, wake) = stop;
    let mut stopped = flag.lock().unwrap_or_else(PoisonError::into_inner);
    while !*stopped {
        stopped = wake
            .wait_timeout(stopped, PERSIST_PERIOD)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        drop(stopped);
        // A failure leaves the chunks pending for the next round; a
        // guest's flush reports it.
        let _ = dedicated.persist();
        stopped = flag.lock().unwrap_or_else(PoisonError::into_inner);
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let (flag, wake) = &*self.stop;
        *flag.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
