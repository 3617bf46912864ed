//! The priorities of the conversion's threads.
//!
//! The readers, preparers and flattener are one chain, in layer order,
//! whose pace sets the conversion's; the encrypting workers after it have
//! slack (the queue in front of them). So when the cores are short the
//! workers give way ([`give_way`]): the chain keeps its pace and the
//! workers catch up on what is left. With equal priorities, in a 0.40 s
//! conversion of the python image on 2 cores, the preparers waited about
//! 90 ms for a core and the first layer's reader, its pipe full, slept
//! about as long (`perf sched timehist`); with the workers at nice 10 the
//! conversion took 3–5 % less time (see the README).

/// How many nice steps below the rest of the conversion the workers run.
pub(crate) const WORKER_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`WORKER_NICE`] steps. Nice
/// values are per thread on Linux, so the rest of the process keeps its
/// own. Only ever lower, so it needs no privilege; a failure leaves the
/// priority as it was, which costs only time.
pub(crate) fn give_way() {
    if let Ok(now) = rustix::process::getpriority_process(None) {
        let _ = rustix::process::setpriority_process(None, (now + WORKER_NICE).min(19));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_gives_way_runs_nicer_and_the_others_do_not() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let worker = std::thread::spawn(|| {
            let start = rustix::process::getpriority_process(None).unwrap();
            give_way();
            (start, rustix::process::getpriority_process(None).unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(worker, (before, (before + WORKER_NICE).min(19)));
        // The thread that spawned it (the flattener's, in a conversion)
        // keeps its priority.
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
    }
}
