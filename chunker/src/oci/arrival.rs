//! Bytes still arriving: a registry download that the flattener reads
//! while it comes in.
//!
//! Until a reader is on the layer, the writer puts what arrives in the
//! spool file and says how far the file has grown ([`Arrival::grew`]).
//! Once a reader is on it ([`Arriving`]), what comes next is handed over
//! in memory instead ([`Arrival::hand_over`]): at most [`HELD_MAX`] bytes, the
//! writer waiting for the reader past that. A layer the flattener is
//! reading goes no faster than its reader anyway, and writing it to a
//! file only to read it back at once, and punch it out, cost a copy, the
//! page cache's pages and the punches. Layers no reader is on yet still
//! download ahead into their files, within the spool's budget.
//!
//! Once the download ends, the writer says whether every byte came and
//! matched the digest ([`Arrival::finish`]). The reader's end (the read
//! that returns 0) waits for that, and a failed download is an error
//! there instead. So a layer whose blob does not match its digest never
//! reads to its end, and a conversion fails before anything made from the
//! layer is kept. A reader that goes away ([`Arrival::abandon`]) lets the
//! writer finish without waiting: what arrives is hashed and dropped, so
//! the download's verdict still comes.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::store::free_pages;
use crate::pool::BlockPool;

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// Bytes handed over in memory that the writer may get ahead of the
/// reader by; past it, the writer waits until the reader is down to half.
pub(crate) const HELD_MAX: usize = 4 << 20;

/// How far behind the reader a file's pages are freed at a time.
const FREE_STEP: u64 = 1 << 20;

/// Handed-over buffers kept for the writer to fill again.
const SPARES: usize = 8;

/// Bytes in one handed-over buffer (the writer's reads).
pub(crate) const BUFFER: usize = 256 * 1024;

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

/// Bytes handed over in memory: `buf[from..to]`, the rest of `buf` spare
/// room (so a buffer is filled again without clearing it).
#[derive(Debug)]
struct Held {
    buf: Vec<u8>,
    from: usize,
    to: usize,
}

impl Held {
    /// The bytes `buf[from..to]`.
    fn new(buf: Vec<u8>, from: usize, to: usize) -> Self {
        let to = to.min(buf.len());
        Held {
            from: from.min(to),
            to,
            buf,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[self.from..self.to]
    }
}

/// Whether a reader is on the layer.
#[derive(Debug, Default, PartialEq)]
enum Reader {
    /// Not yet: arriving bytes go to the file.
    #[default]
    Absent,
    /// Arriving bytes are handed over in memory.
    Reading,
    /// It went away: arriving bytes are dropped (after being hashed).
    Gone,
}

#[derive(Debug, Default)]
struct Arrived {
    /// Bytes arrived so far, from the start of the blob.
    len: u64,
    /// The first `in_file` of them are in the file, the rest in `held`.
    in_file: u64,
    held: VecDeque<Held>,
    /// Room the buffers in `held` take.
    held_bytes: usize,
    reader: Reader,
    /// A peek waits for bytes past what is held: the writer hands over
    /// more without waiting for room.
    peeking: bool,
    /// `Some` once the download has ended: `Ok` when every byte came and
    /// matched.
    end: Option<Result<(), Shared>>,
}

impl Arrived {
    fn failure(&self) -> Option<io::Error> {
        match &self.end {
            Some(Err(failure)) => Some(io::Error::other(failure.clone())),
            _ => None,
        }
    }
}

/// How much of a blob has arrived, where, and how its download ended.
#[derive(Debug)]
pub(crate) struct Arrival {
    state: Mutex<Arrived>,
    changed: Condvar,
    /// Buffers the reader is done with, for the writer to fill again.
    spare: BlockPool,
}

/// What a reader at some position finds next.
enum Next {
    /// File bytes, up to this offset.
    File(u64),
    /// Bytes handed over in memory.
    Held(Held),
    /// The download ended well and everything has been read.
    End,
}

impl Arrival {
    /// Nothing arrived yet.
    pub(crate) fn new() -> Self {
        Arrival {
            state: Mutex::default(),
            changed: Condvar::new(),
            spare: BlockPool::new(BUFFER, SPARES),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Arrived> {
        // Plain fields, consistent at every point a panic could leave.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, st: MutexGuard<'a, Arrived>) -> MutexGuard<'a, Arrived> {
        self.changed.wait(st).unwrap_or_else(|e| e.into_inner())
    }

    /// The first `len` bytes are in the file.
    pub(crate) fn grew(&self, len: u64) {
        let mut st = self.lock();
        debug_assert!(st.held.is_empty() && st.len == st.in_file);
        if st.end.is_none() && len > st.len {
            st.len = len;
            st.in_file = len;
            self.changed.notify_all();
        }
    }

    /// A [`BUFFER`]-byte buffer for the writer to fill: one the reader is
    /// done with, or a new one.
    pub(crate) fn buffer(&self) -> Vec<u8> {
        self.spare.get()
    }

    /// Hands `buf[from..to]` over to a reader, once one has come, and
    /// gives the writer a buffer to fill next; before that, `Err(buf)`
    /// back, for the writer to put in the file ([`Arrival::grew`]). The
    /// writer first waits while [`HELD_MAX`] bytes or more are held,
    /// until the reader is down to half. Dropped (and counted as arrived)
    /// when the reader has gone.
    pub(crate) fn hand_over(
        &self,
        buf: Vec<u8>,
        from: usize,
        to: usize,
    ) -> Result<Vec<u8>, Vec<u8>> {
        let held = Held::new(buf, from, to);
        let mut st = self.lock();
        if st.reader == Reader::Absent {
            return Err(held.buf);
        }
        if st.held_bytes >= HELD_MAX {
            while st.reader == Reader::Reading && st.held_bytes > HELD_MAX / 2 && !st.peeking {
                st = self.wait(st);
            }
        }
        if st.end.is_none() {
            st.len += held.bytes().len() as u64;
            if st.reader == Reader::Gone {
                self.spare.put(held.buf);
            } else {
                st.held_bytes += held.buf.len();
                st.held.push_back(held);
            }
            self.changed.notify_all();
        }
        drop(st);
        Ok(self.spare.get())
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

    /// No reader will read any more: the writer stops handing bytes over
    /// and goes on to the end, so the verdict still comes.
    pub(crate) fn abandon(&self) {
        let mut st = self.lock();
        st.reader = Reader::Gone;
        let held = std::mem::take(&mut st.held);
        st.held_bytes = 0;
        for h in held {
            self.spare.put(h.buf);
        }
        self.changed.notify_all();
    }

    /// A reader has come: what arrives next is handed over in memory.
    fn attach(&self) {
        let mut st = self.lock();
        if st.reader == Reader::Absent {
            st.reader = Reader::Reading;
        }
    }

    /// Waits for what a reader at `pos` reads next, taking back the
    /// buffer it is `done` with. A failed download is an error, whatever
    /// had arrived.
    fn next(&self, pos: u64, done: Option<Vec<u8>>) -> io::Result<Next> {
        if let Some(buf) = done {
            self.spare.put(buf);
        }
        let mut st = self.lock();
        loop {
            if let Some(e) = st.failure() {
                return Err(e);
            }
            if pos < st.in_file {
                return Ok(Next::File(st.in_file));
            }
            if let Some(held) = st.held.pop_front() {
                st.held_bytes -= held.buf.len();
                if st.held_bytes <= HELD_MAX / 2 {
                    self.changed.notify_all();
                }
                return Ok(Next::Held(held));
            }
            if st.end.is_some() {
                return Ok(Next::End);
            }
            st = self.wait(st);
        }
    }

    /// Copies into `buf` the bytes from `pos`, from the file or the held
    /// buffers still queued, waiting until they have arrived (fewer only
    /// at the end); returns how many it copied.
    fn peek(&self, file: &File, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let want = pos + buf.len() as u64;
        let mut st = self.lock();
        while st.end.is_none() && st.len < want {
            st.peeking = true;
            self.changed.notify_all();
            st = self.wait(st);
        }
        st.peeking = false;
        if let Some(e) = st.failure() {
            return Err(e);
        }
        let mut got = 0;
        let mut at = pos;
        while at < st.in_file && got < buf.len() {
            let n = (buf.len() - got).min((st.in_file - at) as usize);
            match file.read_at(&mut buf[got..got + n], at)? {
                0 => break,
                k => {
                    got += k;
                    at += k as u64;
                }
            }
        }
        // The held buffers still queued end where what has arrived does.
        let queued: u64 = st.held.iter().map(|h| h.bytes().len() as u64).sum();
        let mut skip = at.saturating_sub(st.len - queued) as usize;
        for held in &st.held {
            if got == buf.len() {
                break;
            }
            let bytes = held.bytes();
            if skip >= bytes.len() {
                skip -= bytes.len();
                continue;
            }
            let n = (buf.len() - got).min(bytes.len() - skip);
            buf[got..got + n].copy_from_slice(&bytes[skip..skip + n]);
            got += n;
            skip = 0;
        }
        Ok(got)
    }

    /// Waits for the download to end; its failure, if it failed. Whoever
    /// asks is done reading: the writer no longer waits for a reader.
    pub(crate) fn verdict(&self) -> Option<io::Error> {
        self.abandon();
        let mut st = self.lock();
        while st.end.is_none() {
            st = self.wait(st);
        }
        st.failure()
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

/// A reader's side of an [`Arrival`], reading a blob from its start:
/// the file up to where it was handed over, then the buffers. It frees
/// the file's pages behind it, since nothing reads them again.
#[derive(Debug)]
pub(crate) struct Arriving {
    arrival: Arc<Arrival>,
    /// The buffer being read, and how far.
    current: Option<Held>,
    /// The file has been punched up to here; `None` once the reader has
    /// left it for good (all that comes after is handed over in memory).
    freed: Option<u64>,
    /// How many times the file was punched.
    #[cfg(test)]
    punches: usize,
}

impl Arriving {
    /// The reader of `arrival`: from now on, arriving bytes come to it in
    /// memory.
    pub(crate) fn new(arrival: Arc<Arrival>) -> Self {
        arrival.attach();
        Arriving {
            arrival,
            current: None,
            freed: Some(0),
            #[cfg(test)]
            punches: 0,
        }
    }

    /// Reads at `*pos` (moving it) of a blob `end` bytes long in `file`.
    pub(crate) fn read(
        &mut self,
        file: &File,
        pos: &mut u64,
        end: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        loop {
            if let Some(held) = &mut self.current
                && held.from < held.to
            {
                let bytes = held.bytes();
                let n = buf.len().min(bytes.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                held.from += n;
                *pos += n as u64;
                return Ok(n);
            }
            let done = self.current.take().map(|h| h.buf);
            match self.arrival.next(*pos, done)? {
                Next::File(in_file) => {
                    let n = (buf.len() as u64).min(in_file.min(end) - *pos) as usize;
                    let k = file.read_at(&mut buf[..n], *pos)?;
                    if k == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the spool file ends before what was written to it",
                        ));
                    }
                    *pos += k as u64;
                    self.free_behind(file, (*pos).min(in_file), false);
                    return Ok(k);
                }
                Next::Held(held) => {
                    // Everything before it was in the file, all read, and
                    // the file gets no more: freed to its end, once.
                    self.free_behind(file, *pos, true);
                    self.current = Some(held);
                }
                Next::End if *pos < end => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the download ended before the blob's recorded size",
                    ));
                }
                Next::End => return Ok(0),
            }
        }
    }

    /// Up to `buf.len()` bytes at `pos`, without moving.
    pub(crate) fn peek(&self, file: &File, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        if let Some(held) = &self.current {
            let bytes = held.bytes();
            got = buf.len().min(bytes.len());
            buf[..got].copy_from_slice(&bytes[..got]);
        }
        if got == buf.len() {
            return Ok(got);
        }
        Ok(got + self.arrival.peek(file, pos + got as u64, &mut buf[got..])?)
    }

    /// Frees the file's pages before `upto`, a step at a time, or all at
    /// once when the reader is `leaving` the file for good.
    fn free_behind(&mut self, file: &File, upto: u64, leaving: bool) {
        let Some(freed) = self.freed else {
            return;
        };
        let upto = upto & !(4096 - 1);
        if upto > freed && (leaving || upto >= freed + FREE_STEP) {
            free_pages(file, freed, upto - freed);
            self.freed = Some(upto);
            #[cfg(test)]
            {
                self.punches += 1;
            }
        }
        if leaving {
            self.freed = None;
        }
    }
}

impl Drop for Arriving {
    fn drop(&mut self) {
        self.arrival.abandon();
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
        (file, Arc::new(Arrival::new()), data)
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

    /// Writes `data` the way the spool does, `chunk` bytes (at most
    /// [`BUFFER`]) at a time: to the file until a reader is on, then
    /// handed over in memory.
    fn spool_like(file: &std::fs::File, arrival: &Arrival, data: &[u8], chunk: usize) {
        let mut at = 0;
        let mut buf = arrival.buffer();
        for piece in data.chunks(chunk) {
            buf[..piece.len()].copy_from_slice(piece);
            buf = match arrival.hand_over(buf, 0, piece.len()) {
                Ok(next) => next,
                Err(back) => {
                    file.write_all_at(piece, at as u64).unwrap();
                    arrival.grew((at + piece.len()) as u64);
                    back
                }
            };
            at += piece.len();
        }
    }

    #[test]
    fn once_a_reader_is_on_what_arrives_comes_in_memory_not_through_the_file() {
        let (file, arrival, data) = halves(300_000);
        // Before the reader comes: the file.
        file.write_all_at(&data[..100_000], 0).unwrap();
        arrival.grew(100_000);
        let mut range =
            FileRange::new(file.clone(), 0, data.len() as u64).arriving(arrival.clone());
        let writer = {
            let (file, arrival, data) = (file.clone(), arrival.clone(), data.clone());
            std::thread::spawn(move || {
                // The rest, handed over (the offsets as the spool keeps them).
                let mut buf = arrival.buffer();
                for piece in data[100_000..].chunks(10_000) {
                    buf[..piece.len()].copy_from_slice(piece);
                    buf = arrival
                        .hand_over(buf, 0, piece.len())
                        .expect("a reader is on the layer");
                }
                arrival.finish(Ok(()));
                drop(file);
            })
        };
        let mut head = [0u8; 16];
        assert_eq!(range.peek(&mut head).unwrap(), 16);
        assert_eq!(head, data[..16]);
        let mut all = Vec::new();
        range.read_to_end(&mut all).unwrap();
        writer.join().unwrap();
        assert!(all == data, "the bytes read differ from those written");
        // Only what came before the reader was written to the file.
        assert_eq!(file.metadata().unwrap().len(), 100_000);
    }

    #[test]
    fn the_file_is_freed_once_when_the_reader_leaves_it() {
        let (file, arrival, data) = halves(300_000);
        file.write_all_at(&data[..100_000], 0).unwrap();
        arrival.grew(100_000);
        let mut reader = Arriving::new(arrival.clone());
        let writer = {
            let (arrival, data) = (arrival.clone(), data.clone());
            std::thread::spawn(move || {
                let mut buf = arrival.buffer();
                for piece in data[100_000..].chunks(10_000) {
                    buf[..piece.len()].copy_from_slice(piece);
                    buf = arrival.hand_over(buf, 0, piece.len()).unwrap();
                }
                arrival.finish(Ok(()));
            })
        };
        let (mut pos, mut all) = (0u64, Vec::new());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader
                .read(&file, &mut pos, data.len() as u64, &mut buf)
                .unwrap()
            {
                0 => break,
                n => all.extend_from_slice(&buf[..n]),
            }
        }
        writer.join().unwrap();
        assert!(all == data, "the bytes read differ from those written");
        // One punch, as the reader left the file for the held buffers; none
        // for the twenty buffers after (they were never in the file).
        assert_eq!(reader.punches, 1);
        assert_eq!(reader.freed, None);
    }

    /// A reader on `total` bytes that a writer thread spools as the spool
    /// does, ending the download with `end`.
    struct Spooled {
        file: Arc<std::fs::File>,
        arrival: Arc<Arrival>,
        data: Vec<u8>,
        range: FileRange,
        writer: std::thread::JoinHandle<()>,
    }

    fn spooled(total: usize, end: fn() -> Result<(), Failure>) -> Spooled {
        let (file, arrival, data) = halves(total);
        let range = FileRange::new(file.clone(), 0, total as u64).arriving(arrival.clone());
        let writer = {
            let (file, arrival, data) = (file.clone(), arrival.clone(), data.clone());
            std::thread::spawn(move || {
                spool_like(&file, &arrival, &data, 256 * 1024);
                arrival.finish(end());
            })
        };
        Spooled {
            file,
            arrival,
            data,
            range,
            writer,
        }
    }

    #[test]
    fn the_writer_holds_no_more_than_held_max_ahead_of_its_reader() {
        let Spooled {
            file,
            arrival,
            data,
            mut range,
            writer,
        } = spooled(3 * HELD_MAX + 12_345, || Ok(()));
        let mut all = Vec::new();
        let mut buf = vec![0u8; 100_000];
        loop {
            // What the writer holds: never more than one buffer past the
            // bound, however slowly the reader goes.
            let held = arrival.lock().held_bytes;
            assert!(held <= HELD_MAX + 256 * 1024, "{held} bytes held");
            match range.read(&mut buf).unwrap() {
                0 => break,
                n => all.extend_from_slice(&buf[..n]),
            }
        }
        writer.join().unwrap();
        assert!(all == data, "the bytes read differ from those written");
        assert_eq!(file.metadata().unwrap().len(), 0);
    }

    /// What `f` returns, failing (not hanging) if it does not return.
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, ended) = mpsc::channel();
        std::thread::spawn(move || done.send(f()));
        ended
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("still waiting: a writer waits for a reader that is gone")
    }

    /// Waits for `writer`, failing (not hanging) if it does not end.
    fn ends(writer: std::thread::JoinHandle<()>) {
        assert!(within(move || writer.join().is_ok()), "the writer panicked");
    }

    #[test]
    fn a_reader_that_goes_away_lets_the_writer_finish() {
        let Spooled {
            arrival,
            data,
            mut range,
            writer,
            ..
        } = spooled(3 * HELD_MAX, || Ok(()));
        let mut some = [0u8; 1000];
        range.read_exact(&mut some).unwrap();
        assert_eq!(some, data[..1000]);
        drop(range);
        ends(writer);
        assert!(arrival.verdict().is_none());
        assert!(arrival.lock().held.is_empty(), "dropped bytes still held");
    }

    #[test]
    fn asking_for_the_verdict_stops_the_writer_waiting_for_the_reader() {
        // The flattener asks why a layer broke while its reader, which
        // stopped reading, is still open.
        let Spooled {
            arrival,
            range,
            writer,
            ..
        } = spooled(3 * HELD_MAX, || {
            Err("blob sha256:cd does not match its digest".into())
        });
        let asked = arrival.clone();
        let failure = within(move || asked.verdict()).expect("the download failed");
        assert!(failure.to_string().contains("does not match"), "{failure}");
        ends(writer);
        drop(range);
    }

    #[test]
    fn a_peek_past_what_is_held_does_not_wait_for_ever() {
        // Small reads fill the held room (counted by buffer) with few
        // bytes; a peek wanting more than those lets the writer go on.
        let (file, arrival, data) = halves(256 * 1024);
        let range = FileRange::new(file.clone(), 0, data.len() as u64).arriving(arrival.clone());
        let writer = {
            let (arrival, data) = (arrival.clone(), data.clone());
            std::thread::spawn(move || {
                let mut buf = arrival.buffer();
                for piece in data.chunks(1024) {
                    buf[..piece.len()].copy_from_slice(piece);
                    buf = arrival.hand_over(buf, 0, piece.len()).unwrap();
                }
                arrival.finish(Ok(()));
            })
        };
        let head = within(move || {
            let mut head = vec![0u8; 64 * 1024];
            let n = range.peek(&mut head).unwrap();
            (n, head)
        });
        assert_eq!(head.0, 64 * 1024);
        assert!(head.1 == data[..64 * 1024], "peeked bytes differ");
        ends(writer);
        drop(file);
    }
}
