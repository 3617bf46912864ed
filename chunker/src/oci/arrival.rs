//! Bytes still arriving in a file: a registry download that the flattener
//! reads while it is written.
//!
//! The writer says how far the file has grown ([`Arrival::grew`]) and,
//! once the download ends, whether every byte came and matched the
//! digest ([`Arrival::finish`]). A [`super::store::FileRange`] over the
//! file reads up to what has arrived and waits for more; its end (the
//! read that returns 0) waits for the digest, and a failed download is an
//! error there instead. So a layer whose blob does not match its digest
//! never reads to its end, and a conversion fails before anything made
//! from the layer is kept.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// How a download failed, told to everyone who asks: the reader at the
/// layer's end, and the flattener explaining why the layer broke first.
#[derive(Clone, Debug)]
struct Shared(Arc<Failure>);

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[derive(Debug, Default)]
struct Arrived {
    /// Bytes written so far, from the start of the file.
    len: u64,
    /// `Some` once the download has ended: `Ok` when every byte came and
    /// matched.
    end: Option<Result<(), Shared>>,
}

/// How much of a file has arrived, and how its download ended.
#[derive(Debug, Default)]
pub(crate) struct Arrival {
    state: Mutex<Arrived>,
    changed: Condvar,
}

impl Arrival {
    fn lock(&self) -> MutexGuard<'_, Arrived> {
        // Two plain fields, consistent at every point a panic could leave.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first `len` bytes have been written.
    pub(crate) fn grew(&self, len: u64) {
        let mut st = self.lock();
        if st.end.is_none() && len > st.len {
            st.len = len;
            self.changed.notify_all();
        }
    }

    /// The download ended: every byte came and matched (`Ok`), or not.
    /// Only the first call counts.
    pub(crate) fn finish(&self, result: Result<(), Failure>) {
        let mut st = self.lock();
        if st.end.is_none() {
            st.end = Some(result.map_err(|e| Shared(Arc::new(e))));
            self.changed.notify_all();
        }
    }

    /// Waits until `want` bytes have arrived or the download has ended
    /// well, and returns how many have arrived (fewer than `want` only at
    /// the end). A failed download is an error, whatever had arrived.
    pub(crate) fn wait(&self, want: u64) -> io::Result<u64> {
        let mut st = self.lock();
        loop {
            match &st.end {
                Some(Ok(())) => return Ok(st.len),
                Some(Err(failure)) => return Err(io::Error::other(failure.clone())),
                None if st.len >= want => return Ok(st.len),
                None => st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }

    /// Waits for the download to end; its failure, if it failed.
    pub(crate) fn verdict(&self) -> Option<io::Error> {
        self.wait(u64::MAX).err()
    }
}

/// Ends an [`Arrival`] as failed if its writer stops without ending it (a
/// panic), so no reader waits for ever.
pub(crate) struct FinishGuard<'a>(pub(crate) &'a Arrival);

impl Drop for FinishGuard<'_> {
    fn drop(&mut self) {
        self.0
            .finish(Err("the download stopped without finishing".into()));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;
    use std::sync::mpsc;

    use super::*;
    use crate::oci::store::FileRange;

    /// A file of `total` bytes written in two halves by another thread;
    /// the reader is told when to let the writer go on.
    fn halves(total: usize) -> (Arc<std::fs::File>, Arc<Arrival>, Vec<u8>) {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
        (file, Arc::new(Arrival::default()), data)
    }

    #[test]
    fn reads_what_has_arrived_and_ends_only_when_checked() {
        let (file, arrival, data) = halves(10_000);
        let half = data.len() / 2;
        let mut range =
            FileRange::new(file.clone(), 0, data.len() as u64).arriving(arrival.clone());
        let (go_on, next) = mpsc::channel::<()>();
        let writer = {
            let (file, arrival, data) = (file.clone(), arrival.clone(), data.clone());
            std::thread::spawn(move || {
                file.write_all_at(&data[..half], 0).unwrap();
                arrival.grew(half as u64);
                next.recv().unwrap();
                file.write_all_at(&data[half..], half as u64).unwrap();
                arrival.grew(data.len() as u64);
                next.recv().unwrap();
                arrival.finish(Ok(()));
            })
        };
        // The first half is readable while the writer waits for us.
        let mut got = vec![0u8; half];
        range.read_exact(&mut got).unwrap();
        assert_eq!(got, data[..half]);
        go_on.send(()).unwrap();
        let mut rest = vec![0u8; data.len() - half];
        range.read_exact(&mut rest).unwrap();
        assert_eq!(rest, data[half..]);
        // Everything has arrived, but the end waits for the check.
        assert!(arrival.lock().end.is_none());
        go_on.send(()).unwrap();
        let mut more = [0u8; 16];
        assert_eq!(range.read(&mut more).unwrap(), 0);
        writer.join().unwrap();
    }

    #[test]
    fn a_failed_download_is_an_error_not_an_end() {
        let (file, arrival, data) = halves(4096);
        file.write_all_at(&data, 0).unwrap();
        arrival.grew(data.len() as u64);
        let mut range = FileRange::new(file, 0, data.len() as u64).arriving(arrival.clone());
        let mut all = Vec::new();
        let writer = {
            let arrival = arrival.clone();
            std::thread::spawn(move || {
                arrival.finish(Err("blob sha256:ab does not match its digest".into()))
            })
        };
        let err = range.read_to_end(&mut all).unwrap_err();
        writer.join().unwrap();
        assert!(err.to_string().contains("does not match"), "{err}");
        // Asked again, by the reader or anyone: the same error, never a
        // clean end.
        let again = range.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(again.to_string(), err.to_string());
        assert_eq!(arrival.verdict().unwrap().to_string(), err.to_string());
    }

    #[test]
    fn a_writer_that_stops_fails_its_readers() {
        let (file, arrival, _) = halves(100);
        let mut range = FileRange::new(file, 0, 100).arriving(arrival.clone());
        let writer = {
            let arrival = arrival.clone();
            std::thread::spawn(move || {
                let _guard = FinishGuard(&arrival);
                arrival.grew(0);
                panic!("writer dies");
            })
        };
        assert!(writer.join().is_err());
        let err = range.read(&mut [0u8; 8]).unwrap_err();
        assert!(err.to_string().contains("without finishing"), "{err}");
    }

    #[test]
    fn peek_waits_for_the_bytes_it_shows() {
        let (file, arrival, data) = halves(64);
        let range = FileRange::new(file.clone(), 0, 64).arriving(arrival.clone());
        let writer = {
            let (arrival, data) = (arrival.clone(), data.clone());
            std::thread::spawn(move || {
                file.write_all_at(&data[..2], 0).unwrap();
                arrival.grew(2);
                file.write_all_at(&data[2..], 2).unwrap();
                arrival.grew(64);
            })
        };
        let mut head = [0u8; 4];
        assert_eq!(range.peek(&mut head).unwrap(), 4);
        assert_eq!(head, data[..4]);
        writer.join().unwrap();
    }
}
