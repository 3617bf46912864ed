//! Layers downloaded in parallel, into files on disk until the flattener
//! reads them, in order.
//!
//! Up to `max_parallel` workers take layers in manifest order. A worker
//! starts a layer only when its size fits in the spool's byte budget, or
//! when the flattener is already waiting for it (so one layer larger than
//! the budget still goes through, alone). The flattener reads a layer as
//! it arrives (`arrival::Arrival`): a blob is hashed as it arrives, and the
//! reader's end of it waits until its size and digest match; a mismatch
//! is a read error there, so the conversion fails before anything made
//! from the layer is kept (the decompressor and tar reader see the bytes
//! first, as they would a hostile blob that matches its digest). Once a
//! reader is on a layer, the rest of it is handed to the reader in memory
//! instead of going through its file, the download waiting on the reader
//! past 1 MiB; layers no reader is on yet download ahead into their
//! files. A broken transfer resumes with a Range request after a backoff,
//! after the bytes already received (a server that ignores the Range has
//! them skipped, so what was read stays what is hashed). A layer's budget
//! is given back when the flattener is done with it (its blob dropped);
//! its file is unlinked as soon as it is made, so nothing is left behind
//! whatever happens. The flattener's readers open a layer each
//! ([`crate::flatten::readahead`]), so the layers they are on may all be
//! past the budget at once: it is passed by at most one layer per reader.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

use super::client::Client;
use super::{ErrorKind, RegistryError};
use crate::oci::Digest;
use crate::oci::arrival::{Arrival, FinishGuard};
use crate::oci::store::{FileRange, OnDrop, VerifiedBlob};

enum Slot {
    Queued,
    /// Downloading (or done): its file and how much of it has arrived.
    Started(Arc<File>, Arc<Arrival>),
    /// It could not start (no spool file).
    Failed(RegistryError),
    /// Handed to the flattener; its progress kept to tell its verdict.
    Taken(Option<Arc<Arrival>>),
}

struct State {
    slots: Vec<Slot>,
    /// The next layer a worker will start.
    next: usize,
    /// Bytes of started layers not yet given back.
    reserved: u64,
    reservations: Vec<u64>,
    /// The highest layer the flattener has asked for.
    wanted: usize,
}

/// The downloads of one image's layers.
pub struct Spool {
    client: Arc<Client>,
    dir: tempfile::TempDir,
    layers: Vec<(Digest, u64)>,
    budget: u64,
    state: Mutex<State>,
    changed: Condvar,
    cancelled: AtomicBool,
    /// Held while a spool file has a name (from its creation to its
    /// unlinking), and by `cancel` as it removes the directory: so the
    /// directory is empty when `cancel` removes it.
    naming: Mutex<()>,
    bars: Option<MultiProgress>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.dir.path())
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Start downloading `layers` (digest, size; bottom first) with
    /// `parallel` workers into a new directory under `parent`.
    pub fn start(
        client: Arc<Client>,
        layers: Vec<(Digest, u64)>,
        parent: &std::path::Path,
        budget: u64,
        parallel: usize,
        progress: bool,
    ) -> Result<Arc<Spool>, RegistryError> {
        let dir = tempfile::Builder::new()
            .prefix(".imagefs-spool-")
            .tempdir_in(parent)
            .map_err(|source| {
                client.error(ErrorKind::Spool {
                    dir: parent.to_owned(),
                    source,
                })
            })?;
        let n = layers.len();
        let bars = progress.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        let spool = Arc::new(Spool {
            client,
            dir,
            layers,
            budget,
            state: Mutex::new(State {
                slots: (0..n).map(|_| Slot::Queued).collect(),
                next: 0,
                reserved: 0,
                reservations: vec![0; n],
                wanted: 0,
            }),
            changed: Condvar::new(),
            cancelled: AtomicBool::new(false),
            naming: Mutex::new(()),
            bars,
        });
        for _ in 0..parallel.clamp(1, n.max(1)) {
            let spool = spool.clone();
            std::thread::spawn(move || spool.work());
        }
        Ok(spool)
    }

    /// Stop the downloads (the image was dropped), and remove the spool's
    /// directory now: a download may take until its timeout to notice,
    /// and a process that exits first would leave the directory behind.
    /// Its files are unlinked as they are made, so it is empty; a file
    /// made after this fails, and its download with it.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
        {
            // Not between a file's creation and its unlinking, when the
            // directory is not empty and would stay.
            let _naming = self.naming.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = std::fs::remove_dir(self.dir.path());
        }
        // A download waiting for its reader to take what it holds.
        if let Ok(st) = self.state.lock() {
            for slot in &st.slots {
                if let Slot::Started(_, a) | Slot::Taken(Some(a)) = slot {
                    a.abandon();
                }
            }
        }
        self.changed.notify_all();
    }

    fn work(&self) {
        loop {
            let index = {
                let Ok(mut st) = self.state.lock() else {
                    return;
                };
                loop {
                    if self.cancelled.load(Ordering::Relaxed) || st.next >= self.layers.len() {
                        return;
                    }
                    let size = self.layers[st.next].1;
                    if st.next <= st.wanted || st.reserved + size <= self.budget {
                        break;
                    }
                    st = match self.changed.wait(st) {
                        Ok(st) => st,
                        Err(_) => return,
                    };
                }
                let i = st.next;
                st.next += 1;
                st.reserved += self.layers[i].1;
                st.reservations[i] = self.layers[i].1;
                i
            };
            let slot = match self.create_file(index) {
                Ok(file) => Slot::Started(file, Arc::new(Arrival::new())),
                Err(e) => Slot::Failed(e),
            };
            let started = match &slot {
                Slot::Started(file, arrival) => Some((file.clone(), arrival.clone())),
                _ => None,
            };
            {
                let Ok(mut st) = self.state.lock() else {
                    return;
                };
                st.slots[index] = slot;
                self.changed.notify_all();
            }
            let Some((file, arrival)) = started else {
                continue;
            };
            let _unfinished = FinishGuard(&arrival);
            let result = self.download(index, &file, &arrival);
            arrival.finish(result.map_err(Into::into));
        }
    }

    /// A spool file could not be made or written.
    fn spool_error(&self, source: std::io::Error) -> RegistryError {
        self.client.error(ErrorKind::Spool {
            dir: self.dir.path().to_owned(),
            source,
        })
    }

    /// Layer `index`'s spool file, already unlinked: it lives as long as
    /// its handles.
    fn create_file(&self, index: usize) -> Result<Arc<File>, RegistryError> {
        let digest = &self.layers[index].0;
        let path = self.dir.path().join(format!("{index}-{}", digest.hex()));
        let spool_err = |source| self.spool_error(source);
        // After `cancel` the directory is gone and the open fails.
        let _naming = self.naming.lock().unwrap_or_else(PoisonError::into_inner);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(spool_err)?;
        std::fs::remove_file(&path).map_err(spool_err)?;
        Ok(Arc::new(file))
    }

    fn bar(&self, index: usize, size: u64) -> Option<ProgressBar> {
        let bars = self.bars.as_ref()?;
        let bar = bars.add(ProgressBar::new(size));
        let style = ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .ok()?
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("layer {}/{}", index + 1, self.layers.len()));
        Some(bar)
    }

    /// Download layer `index` into `file`, resuming after breaks, saying
    /// how far it has got in `arrival`; checks size and digest at the end.
    fn download(&self, index: usize, file: &File, arrival: &Arrival) -> Result<(), RegistryError> {
        let (digest, size) = &self.layers[index];
        let what = format!("blob {digest}");
        let spool_err = |source| self.spool_error(source);
        let mut hash = Sha256::new();
        let mut written = 0u64;
        let mut failures = 0u32;
        let bar = self.bar(index, *size);
        let mut buf = arrival.buffer();
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(self.client.error(ErrorKind::Cancelled));
            }
            let mut resp = self
                .client
                .get(&format!("blobs/{digest}"), None, written, &what)?;
            // A server that ignored the Range sends what we have again:
            // skipped, so the hash stays that of the file the flattener
            // is reading, whatever those bytes are this time.
            let mut skip = if written > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
                written
            } else {
                0
            };
            let broke = loop {
                if self.cancelled.load(Ordering::Relaxed) {
                    return Err(self.client.error(ErrorKind::Cancelled));
                }
                match resp.read(&mut buf) {
                    Ok(0) => break None,
                    Ok(n) => {
                        let dropped = skip.min(n as u64) as usize;
                        skip -= dropped as u64;
                        let fresh = &buf[dropped..n];
                        if fresh.is_empty() {
                            continue;
                        }
                        let at = written;
                        written += fresh.len() as u64;
                        if written > *size {
                            return Err(self.client.error(ErrorKind::SizeMismatch {
                                what,
                                expected: *size,
                                actual: written,
                            }));
                        }
                        hash.update(fresh);
                        buf = match arrival.hand_over(buf, dropped, n) {
                            Ok(next) => next,
                            Err(back) => {
                                file.write_all_at(&back[dropped..n], at)
                                    .map_err(spool_err)?;
                                arrival.grew(written);
                                back
                            }
                        };
                        if let Some(b) = &bar {
                            b.set_position(written);
                        }
                    }
                    Err(e) => break Some(e),
                }
            };
            if broke.is_none() && written == *size && skip == 0 {
                break;
            }
            failures += 1;
            if failures > self.client.retries() {
                let kind = match broke {
                    Some(source) => self.client.read_failed(what, source),
                    None => ErrorKind::Truncated {
                        what,
                        expected: *size,
                        actual: written,
                    },
                };
                return Err(self.client.error(kind));
            }
            std::thread::sleep(self.client.backoff_for(failures));
        }
        let actual = Digest::from_hash(hash.finalize().as_slice());
        if actual != *digest {
            return Err(self.client.error(ErrorKind::DigestMismatch {
                what,
                expected: digest.clone(),
                actual,
            }));
        }
        if let Some(b) = bar {
            b.finish();
        }
        Ok(())
    }

    /// Whether the spool's files hold, or will hold, bytes the flattener
    /// has yet to read (dirty pages a `syncfs` would write back, only for
    /// them to be punched out once read): layers still to start, layers
    /// no reader is on yet, and layers whose readers are still reading
    /// what went into the file before they came. A layer read as it
    /// arrives is handed over in memory and holds nothing there.
    pub fn holds_unread(&self) -> bool {
        let Ok(st) = self.state.lock() else {
            return false;
        };
        st.next < self.layers.len()
            || st.slots.iter().any(|slot| match slot {
                Slot::Started(_, arrival) | Slot::Taken(Some(arrival)) => arrival.file_unread(),
                Slot::Queued | Slot::Failed(_) | Slot::Taken(None) => false,
            })
    }

    /// Gives layer `index`'s share of the budget back.
    fn release(&self, index: usize) {
        if let Ok(mut st) = self.state.lock() {
            st.reserved -= std::mem::take(&mut st.reservations[index]);
            self.changed.notify_all();
        }
    }

    /// The blob of the first not yet opened layer with `digest`, once its
    /// download has started: it reads as the bytes arrive, and ends only
    /// once they match the digest. Dropping it gives its budget back.
    pub fn open(self: &Arc<Self>, digest: &Digest) -> Result<VerifiedBlob, RegistryError> {
        let poisoned = || self.client.error(ErrorKind::Poisoned);
        let mut st = self.state.lock().map_err(|_| poisoned())?;
        let index = (0..self.layers.len())
            .find(|&i| self.layers[i].0 == *digest && !matches!(st.slots[i], Slot::Taken(_)))
            .ok_or_else(|| {
                self.client.error(ErrorKind::NotFound {
                    what: format!("blob {digest} among the image's layers"),
                })
            })?;
        st.wanted = st.wanted.max(index);
        self.changed.notify_all();
        loop {
            match std::mem::replace(&mut st.slots[index], Slot::Taken(None)) {
                Slot::Started(file, arrival) => {
                    st.slots[index] = Slot::Taken(Some(arrival.clone()));
                    let len = self.layers[index].1;
                    // `download` checks the digest before `arrival` lets
                    // the range end.
                    let spool: Weak<Spool> = Arc::downgrade(self);
                    let range =
                        FileRange::new(file, 0, len)
                            .arriving(arrival)
                            .on_drop(OnDrop::new(move || {
                                if let Some(spool) = spool.upgrade() {
                                    spool.release(index);
                                }
                            }));
                    return Ok(VerifiedBlob::checked(range, digest.clone()));
                }
                Slot::Failed(e) => return Err(e),
                other => {
                    st.slots[index] = other;
                    st = self.changed.wait(st).map_err(|_| poisoned())?;
                }
            }
        }
    }

    /// How the downloads of `digest` that have started went, once they
    /// have ended: the first failure, if one failed. A layer that breaks
    /// while it is still arriving is explained by this first, since a
    /// corrupt or short blob breaks the decompressor or the tar before
    /// its digest is checked at the end.
    pub fn verdict(&self, digest: &Digest) -> Option<std::io::Error> {
        let arrivals: Vec<Arc<Arrival>> = {
            let st = self.state.lock().ok()?;
            (0..self.layers.len())
                .filter(|&i| self.layers[i].0 == *digest)
                .filter_map(|i| match &st.slots[i] {
                    Slot::Started(_, a) | Slot::Taken(Some(a)) => Some(a.clone()),
                    _ => None,
                })
                .collect()
        };
        arrivals.iter().find_map(|a| a.verdict())
    }
}
