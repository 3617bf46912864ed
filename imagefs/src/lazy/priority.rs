//! Background fetch threads (prefetch, read-ahead) run at a lower CPU
//! priority than the threads serving the guest's requests.
//!
//! On a host with few cores a start is CPU-bound: hashing, decrypting and
//! copying the chunks a prefetch brings in competes with the threads that
//! answer the guest, and every request the guest waits for longer delays
//! the start. A niced thread still uses every idle cycle, so prefetch
//! keeps its throughput; it only yields when a guest request wants the
//! CPU.

/// The nice value of prefetch and read-ahead threads. `vmm-shim
/// coldstart` (both traces, with a profile, two rounds of 7 runs) put
/// nice 10 and 19 ahead of 0 by 10-40 % in the shared-warm and az-warm
/// scenarios, and apart from each other only by noise. 10 rather than 19,
/// because a demand read that joins a fetch a prefetch thread is leading
/// waits for that thread: at 10 it still gets about a tenth of a contended
/// core, at 19 about 1.5 %.
pub const BACKGROUND_NICE: i32 = 10;

thread_local! {
    /// Whether this thread fetches for prefetch or read-ahead.
    static BACKGROUND: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Lowers the calling thread's priority to [`BACKGROUND_NICE`] (best
/// effort: where the platform refuses, the thread keeps its priority) and
/// marks it as a background fetcher ([`is_background`]).
pub(super) fn lower_this_thread() {
    BACKGROUND.with(|b| b.set(true));
    // On Linux a thread id names one thread to setpriority(2).
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), BACKGROUND_NICE);
}

/// Whether the calling thread is a prefetch or read-ahead thread: a store
/// shared with other work (the agent's fair gate) queues its fetches
/// behind the ones a guest waits for.
pub fn is_background() -> bool {
    BACKGROUND.with(std::cell::Cell::get)
}
