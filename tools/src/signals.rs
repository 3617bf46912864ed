//! The process's one SIGINT/SIGTERM handler. A subcommand that starts
//! something long-running hands it a way to stop that thing (the library
//! gives each a handle); a signal then stops it, and the subcommand ends
//! cleanly with its report. With nothing registered, a signal has its
//! default effect (the process ends).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::low_level::emulate_default_handler;

type StopFn = Box<dyn Fn() + Send>;

/// What a signal does now.
enum Target {
    /// The default action.
    Default,
    /// Something is starting: remember the signal until its stop is known.
    Deferred(Option<i32>),
    /// Stop it.
    Stop(StopFn),
}

/// The installed handler.
pub struct Signals {
    target: Arc<Mutex<Target>>,
}

fn lock(m: &Mutex<Target>) -> MutexGuard<'_, Target> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Signals {
    /// Installs the handler and the thread that receives the signals.
    pub fn install() -> std::io::Result<Self> {
        let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
        let target = Arc::new(Mutex::new(Target::Default));
        let seen = Arc::clone(&target);
        std::thread::Builder::new()
            .name("imagefs-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    match &mut *lock(&seen) {
                        Target::Default => {
                            let _ = emulate_default_handler(signal);
                        }
                        Target::Deferred(pending) => *pending = Some(signal),
                        Target::Stop(stop) => stop(),
                    }
                }
            })?;
        Ok(Self { target })
    }

    /// From now until the returned guard is dropped, a signal stops what
    /// [`Armed::stop_with`] names; one that arrives before that is kept
    /// and acted on then.
    pub fn arm(&self) -> Armed<'_> {
        *lock(&self.target) = Target::Deferred(None);
        Armed { signals: self }
    }
}

/// A subcommand's claim on the signals (see [`Signals::arm`]).
pub struct Armed<'a> {
    signals: &'a Signals,
}

impl Armed<'_> {
    /// A signal (including one already received) now calls `stop`.
    pub fn stop_with(&self, stop: impl Fn() + Send + 'static) {
        let mut target = lock(&self.signals.target);
        if let Target::Deferred(Some(_)) = &*target {
            stop();
        }
        *target = Target::Stop(Box::new(stop));
    }
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        let previous = std::mem::replace(&mut *lock(&self.signals.target), Target::Default);
        // A signal that came while starting, with nothing to stop yet,
        // still ends the process.
        if let Target::Deferred(Some(signal)) = previous {
            let _ = emulate_default_handler(signal);
        }
    }
}
