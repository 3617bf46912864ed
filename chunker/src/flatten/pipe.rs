//! One layer's uncompressed bytes on their way from the thread that
//! decompresses them to the flattener.
//!
//! While the flattener reads this layer, or while little has arrived, the
//! bytes wait in memory: at most [`PipeBounds::mem_blocks`] blocks, and
//! the decompressing thread waits for room. While the flattener is still
//! on an earlier layer, the bytes past that go to an unlinked temporary
//! file (the spill), within a byte budget shared by every layer: so a
//! reader can decompress a whole layer ahead of the flattener without
//! holding it in memory, and waits only when the budget is spent. The
//! flattener reads the segments in the order they were written, memory or
//! spill, and sees one stream.
//!
//! Closing a pipe ([`Pipe::close`], when the flattener stops early) wakes
//! its reader, whose next put fails, so no thread is left waiting.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::oci::store::free_pages;
use crate::oci::{LayerStream, SourceError};
use crate::pool::BlockPool;

/// How much a pipe may hold, and where it spills.
#[derive(Clone, Debug)]
pub(super) struct PipeBounds {
    /// Bytes in one block.
    pub block: usize,
    /// Blocks held in memory per layer.
    pub mem_blocks: usize,
    /// Where spill files are made (unlinked at once).
    pub spill_dir: PathBuf,
}

/// The spill bytes every layer's pipe may hold together.
#[derive(Debug)]
pub(super) struct SpillBudget {
    limit: u64,
    used: AtomicU64,
}

impl SpillBudget {
    pub(super) fn new(limit: u64) -> Self {
        SpillBudget {
            limit,
            used: AtomicU64::new(0),
        }
    }

    fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// A run of the layer's bytes, in order.
enum Segment {
    /// A block in memory: its first `.1` bytes.
    Mem(Vec<u8>, usize),
    /// Bytes in the spill file.
    Spilled { offset: u64, len: u64 },
}

/// How the layer's bytes ended.
pub(super) enum End {
    /// Every byte was put: the stream, whose digests the flattener checks.
    Done(Box<LayerStream>),
    /// Reading failed: the error the flattener would have seen.
    Failed(io::Error),
}

#[derive(Default)]
struct State {
    /// The layer's media type and whether the flattener hashes it for the
    /// diff_id, or why it could not be opened; taken by the flattener.
    opened: Option<Result<(String, bool), SourceError>>,
    segments: VecDeque<Segment>,
    mem_blocks: usize,
    spill: Option<Arc<File>>,
    /// Bytes written to the spill file, and taken from the budget.
    spilled: u64,
    end: Option<End>,
    /// The flattener is on this layer: bytes stay in memory.
    active: bool,
    /// The flattener stopped: the reader stops too.
    closed: bool,
    /// The reader is done with this layer, however it left (a panic
    /// included): the flattener waits for nothing more.
    reader_gone: bool,
}

/// One layer's bytes between its reader and the flattener.
pub(super) struct Pipe {
    state: Mutex<State>,
    changed: Condvar,
    bounds: PipeBounds,
    budget: Arc<SpillBudget>,
    pool: Arc<BlockPool>,
}

/// The flattener stopped reading.
#[derive(Debug)]
pub(super) struct Closed;

impl Pipe {
    pub(super) fn new(bounds: PipeBounds, budget: Arc<SpillBudget>, pool: Arc<BlockPool>) -> Self {
        Pipe {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            bounds,
            budget,
            pool,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere leaves the state consistent (every update is
        // one assignment), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    // --- the reader's side ---

    /// A block to fill for the next put.
    pub(super) fn block(&self) -> Vec<u8> {
        self.pool.get()
    }

    /// The layer is open (or could not be).
    pub(super) fn opened(&self, opened: Result<(String, bool), SourceError>) -> Result<(), Closed> {
        let mut s = self.lock();
        if s.closed {
            return Err(Closed);
        }
        s.opened = Some(opened);
        self.changed.notify_all();
        Ok(())
    }

    /// The next `len` bytes of the layer, the start of `block`. Waits while
    /// memory is full and the spill budget spent (or the flattener is on
    /// this layer, which never spills). A spilled block goes back to the
    /// pool.
    pub(super) fn put(&self, block: Vec<u8>, len: usize) -> Result<(), Closed> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return Err(Closed);
            }
            if s.mem_blocks < self.bounds.mem_blocks {
                s.mem_blocks += 1;
                s.segments.push_back(Segment::Mem(block, len));
                self.changed.notify_all();
                return Ok(());
            }
            if !s.active && self.budget.try_take(len as u64) {
                break;
            }
            s = self.wait(s);
        }
        // Spill: written outside the lock, where only this reader writes.
        let file = match &s.spill {
            Some(file) => file.clone(),
            None => match tempfile::tempfile_in(&self.bounds.spill_dir) {
                Ok(file) => s.spill.insert(Arc::new(file)).clone(),
                Err(e) => {
                    self.budget.give_back(len as u64);
                    return Err(self.fail_locked(s, spill_error(&self.bounds, e)));
                }
            },
        };
        let offset = s.spilled;
        s.spilled += len as u64;
        drop(s);
        let written = file.write_all_at(&block[..len], offset);
        let mut s = self.lock();
        if let Err(e) = written {
            return Err(self.fail_locked(s, spill_error(&self.bounds, e)));
        }
        match s.segments.back_mut() {
            Some(Segment::Spilled { offset: o, len: l }) if *o + *l == offset => *l += len as u64,
            _ => s.segments.push_back(Segment::Spilled {
                offset,
                len: len as u64,
            }),
        }
        self.changed.notify_all();
        drop(s);
        self.pool.put(block);
        Ok(())
    }

    /// Records a spill failure as the layer's end; the reader stops.
    fn fail_locked(&self, mut s: MutexGuard<'_, State>, e: io::Error) -> Closed {
        s.end = Some(End::Failed(e));
        self.changed.notify_all();
        Closed
    }

    /// The reader has left this layer: called by a guard, so that a
    /// reader that panicked leaves no flattener waiting.
    pub(super) fn reader_gone(&self) {
        let mut s = self.lock();
        s.reader_gone = true;
        self.changed.notify_all();
    }

    /// Every byte has been put, or reading failed.
    pub(super) fn end(&self, end: End) {
        let mut s = self.lock();
        s.end = Some(end);
        self.changed.notify_all();
    }

    // --- the flattener's side ---

    /// Waits for the layer to be opened; from now on the flattener is on
    /// this layer. `None` if it was taken already.
    pub(super) fn take_opened(&self) -> Option<Result<(String, bool), SourceError>> {
        let mut s = self.lock();
        s.active = true;
        self.changed.notify_all();
        while s.opened.is_none() && !s.closed && !s.reader_gone {
            s = self.wait(s);
        }
        s.opened.take()
    }

    /// Puts the next bytes at the start of `buf` (the caller's block, which
    /// may be swapped for the reader's): `Ok(n)` with `n > 0`, or
    /// `Err(end)` once every byte has been read.
    pub(super) fn next(&self, buf: &mut Vec<u8>) -> Result<usize, End> {
        if buf.len() != self.bounds.block {
            *buf = self.pool.get();
        }
        let mut s = self.lock();
        loop {
            match s.segments.pop_front() {
                Some(Segment::Mem(block, len)) => {
                    s.mem_blocks -= 1;
                    self.changed.notify_all();
                    drop(s);
                    self.pool.put(std::mem::replace(buf, block));
                    return Ok(len);
                }
                Some(Segment::Spilled { offset, len }) => {
                    let n = len.min(buf.len() as u64);
                    if n < len {
                        s.segments.push_front(Segment::Spilled {
                            offset: offset + n,
                            len: len - n,
                        });
                    }
                    let Some(file) = s.spill.clone() else {
                        return Err(End::Failed(io::Error::other("the spill file is gone")));
                    };
                    drop(s);
                    return match file.read_exact_at(&mut buf[..n as usize], offset) {
                        Ok(()) => {
                            // Read once: free its pages now, for the next
                            // spill or the chunks to reuse, instead of
                            // growing the page cache by every spilled byte.
                            free_pages(&file, offset, n);
                            Ok(n as usize)
                        }
                        Err(e) => Err(End::Failed(spill_error(&self.bounds, e))),
                    };
                }
                None => {}
            }
            if let Some(end) = s.end.take() {
                self.release(&mut s);
                return Err(end);
            }
            if s.closed || s.reader_gone {
                return Err(End::Failed(io::Error::other("the layer reader stopped")));
            }
            s = self.wait(s);
        }
    }

    /// Gives the spill's budget back and drops its file.
    fn release(&self, s: &mut State) {
        self.budget.give_back(s.spilled);
        s.spilled = 0;
        s.spill = None;
    }

    /// The flattener stopped: wakes the reader, whose next put fails, and
    /// gives the spill back.
    pub(super) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        s.segments.clear();
        s.mem_blocks = 0;
        self.release(&mut s);
        self.changed.notify_all();
    }

    /// Wakes a reader that waits for spill budget, which another layer may
    /// have given back.
    pub(super) fn nudge(&self) {
        let _s = self.lock();
        self.changed.notify_all();
    }
}

fn spill_error(bounds: &PipeBounds, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "spilling a decompressed layer to {}: {e}",
            bounds.spill_dir.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BLOCK: usize = 8;

    fn pipe(dir: &Path, mem_blocks: usize, budget: u64) -> (Pipe, Arc<SpillBudget>) {
        let budget = Arc::new(SpillBudget::new(budget));
        let bounds = PipeBounds {
            block: BLOCK,
            mem_blocks,
            spill_dir: dir.to_owned(),
        };
        let pool = Arc::new(BlockPool::new(BLOCK, 4));
        (Pipe::new(bounds, budget.clone(), pool), budget)
    }

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK]
    }

    /// Everything the flattener reads, and how it ended.
    fn drain(p: &Pipe) -> (Vec<u8>, End) {
        assert!(matches!(p.take_opened(), Some(Ok(_))));
        let (mut out, mut buf) = (Vec::new(), Vec::new());
        loop {
            match p.next(&mut buf) {
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(end) => return (out, end),
            }
        }
    }

    #[test]
    fn bytes_past_memory_spill_and_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (p, budget) = pipe(dir.path(), 1, 1 << 20);
        p.opened(Ok(("tar".into(), true))).unwrap();
        // Not yet read: one block in memory, the rest spilled.
        p.put(block(1), BLOCK).unwrap();
        p.put(block(2), 5).unwrap();
        p.put(block(3), BLOCK).unwrap();
        assert_eq!(budget.used.load(Ordering::Acquire), 5 + BLOCK as u64);
        let (out, end) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                // Read now: these stay in memory, after the spilled ones.
                p.put(block(4), 3)?;
                p.put(block(5), BLOCK)?;
                p.end(End::Failed(io::Error::other("done")));
                Ok::<_, Closed>(())
            });
            let drained = drain(&p);
            reader.join().unwrap().unwrap();
            drained
        });
        let mut want = block(1);
        want.extend_from_slice(&[2; 5]);
        want.extend_from_slice(&block(3));
        want.extend_from_slice(&[4; 3]);
        want.extend_from_slice(&block(5));
        assert_eq!(out, want);
        assert!(matches!(end, End::Failed(e) if e.to_string() == "done"));
        // The spill's budget is given back at the end.
        assert_eq!(budget.used.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_spent_budget_waits_for_the_flattener_and_close_wakes_it() {
        let dir = tempfile::tempdir().unwrap();
        // Room for one block in memory and one spilled.
        let (p, budget) = pipe(dir.path(), 1, BLOCK as u64);
        p.opened(Ok(("tar".into(), true))).unwrap();
        p.put(block(1), BLOCK).unwrap();
        p.put(block(2), BLOCK).unwrap();
        std::thread::scope(|s| {
            // Over the budget: this put waits until the pipe is closed.
            let waiting = s.spawn(|| p.put(block(3), BLOCK));
            p.close();
            assert!(waiting.join().unwrap().is_err());
        });
        assert_eq!(budget.used.load(Ordering::Acquire), 0);
        assert!(p.put(block(4), BLOCK).is_err());
    }

    #[test]
    fn a_reader_that_left_without_an_end_leaves_no_one_waiting() {
        let dir = tempfile::tempdir().unwrap();
        // Before opening the layer (a panic in the decompressor, say).
        let (p, _) = pipe(dir.path(), 4, 0);
        p.reader_gone();
        assert!(p.take_opened().is_none());
        // Midway: what was put is read, then the layer fails.
        let (p, _) = pipe(dir.path(), 4, 0);
        p.opened(Ok(("tar".into(), true))).unwrap();
        p.put(block(9), BLOCK).unwrap();
        p.reader_gone();
        let (out, end) = drain(&p);
        assert_eq!(out, block(9));
        assert!(matches!(end, End::Failed(e) if e.to_string().contains("reader stopped")));
    }

    #[test]
    fn a_spill_that_cannot_be_written_ends_the_layer_naming_where() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let (p, budget) = pipe(&missing, 1, 1 << 20);
        p.opened(Ok(("tar".into(), true))).unwrap();
        p.put(block(1), BLOCK).unwrap();
        assert!(p.put(block(2), BLOCK).is_err());
        let (out, end) = drain(&p);
        assert_eq!(out, block(1));
        let End::Failed(e) = end else {
            panic!("the layer ended without the spill error")
        };
        let text = e.to_string();
        assert!(text.contains("spilling a decompressed layer to"), "{text}");
        assert!(text.contains("missing"), "{text}");
        assert_eq!(budget.used.load(Ordering::Acquire), 0);
    }
}
