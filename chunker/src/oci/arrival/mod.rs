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
/// Small: every buffer in flight is memory the writer touches fresh, and
/// 4 MiB here cost a pull of the python image about 1,700 more page
/// faults for no gain in time.
pub(crate) const HELD_MAX: usize = 1 << 20;

/// How far behind the reader a file's pages are freed at a time.
const FREE_STEP: u64 = 1 << 20;

/// Handed-over buffers kept for the writer to fill again: as many as can
/// be held, and the writer's and the reader's, so none is made twice.
const SPARES: usize = HELD_MAX / BUFFER + 2;

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
    /// The reader has read the file's bytes (and frees them as it goes
    /// on): it reads only what is handed over from now on.
    left_file: bool,
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

/// Where the bytes at a reader's position are ([`Arriving::ready`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ahead {
    /// Handed over in memory: [`Arriving::held`].
    InMemory,
    /// In the file, up to this offset.
    InFile(u64),
    /// The blob has been read to its end, and its download ended well.
    End,
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
        if st.end.is_some() {
            return Ok(held.buf);
        }
        st.len += held.bytes().len() as u64;
        self.changed.notify_all();
        if st.reader == Reader::Gone {
            // Nobody will read it: the writer fills the same buffer again.
            return Ok(held.buf);
        }
        st.held_bytes += held.buf.len();
        st.held.push_back(held);
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
                // Held bytes come after all of the file's: it is read.
                st.left_file = true;
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

    /// Whether the file holds bytes, or will get more, that are still to
    /// be read and freed: true until a reader is on the blob and has left
    /// the file (or has gone). Until then a `syncfs` would write back
    /// pages that are only read once and punched out.
    pub(crate) fn file_unread(&self) -> bool {
        let st = self.lock();
        match st.reader {
            Reader::Absent => true,
            Reader::Reading => st.in_file > 0 && !st.left_file,
            Reader::Gone => false,
        }
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

    /// Waits for what comes at `pos` of a blob `end` bytes long in
    /// `file`: bytes handed over in memory, to be read in place
    /// ([`Arriving::held`]), bytes in the file up to an offset, or the
    /// end, once the download has ended well.
    pub(crate) fn ready(&mut self, file: &File, pos: u64, end: u64) -> io::Result<Ahead> {
        loop {
            if self.current.as_ref().is_some_and(|h| h.from < h.to) {
                return Ok(Ahead::InMemory);
            }
            let done = self.current.take().map(|h| h.buf);
            match self.arrival.next(pos, done)? {
                Next::File(in_file) => return Ok(Ahead::InFile(in_file.min(end))),
                Next::Held(held) => {
                    // Everything before it was in the file, all read, and
                    // the file gets no more: freed to its end, once.
                    self.free_behind(file, pos, true);
                    self.current = Some(held);
                }
                Next::End if pos < end => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the download ended before the blob's recorded size",
                    ));
                }
                Next::End => return Ok(Ahead::End),
            }
        }
    }

    /// The handed-over bytes [`Arriving::ready`] found (none otherwise).
    pub(crate) fn held(&self) -> &[u8] {
        self.current.as_ref().map_or(&[], Held::bytes)
    }

    /// Moves past `n` of the [`Arriving::held`] bytes; how many it did.
    pub(crate) fn consume_held(&mut self, n: usize) -> usize {
        match &mut self.current {
            Some(held) => {
                let n = n.min(held.to - held.from);
                held.from += n;
                n
            }
            None => 0,
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
        match self.ready(file, *pos, end)? {
            Ahead::InMemory => {
                let bytes = self.held();
                let n = buf.len().min(bytes.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                self.consume_held(n);
                *pos += n as u64;
                Ok(n)
            }
            Ahead::InFile(in_file) => self.read_file(file, pos, in_file, buf),
            Ahead::End => Ok(0),
        }
    }

    /// Reads at `*pos` (moving it) from the file, which holds the blob up
    /// to `in_file` ([`Ahead::InFile`]), freeing its pages behind.
    pub(crate) fn read_file(
        &mut self,
        file: &File,
        pos: &mut u64,
        in_file: u64,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let n = (buf.len() as u64).min(in_file - *pos) as usize;
        let k = file.read_at(&mut buf[..n], *pos)?;
        if k == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spool file ends before what was written to it",
            ));
        }
        *pos += k as u64;
        self.free_behind(file, *pos, false);
        Ok(k)
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
mod tests;
