//! The conversion pipeline: flatten → chunk → encrypt → store → seal.
//!
//! The stages run at once ([`Pipeline::Overlapped`], the default):
//! - reader threads read, decompress and check the layers' blobs, several
//!   layers at once, ahead of the flattener ([`crate::flatten::readahead`]);
//! - preparer threads parse the tars, hash them for their diff_ids and
//!   stream each layer's file data into a detached layer of the
//!   [`ChunkingSink`], whose chunks are numbered within the layer; the
//!   flattening thread applies the entries in layer order, attaches each
//!   layer where it starts (now its chunks' numbers are known) and writes
//!   the metadata;
//! - worker threads take completed chunks off a bounded queue, four at a
//!   time, encrypt them convergently in their own buffers (their keys'
//!   hashes interleaved), and store them batched
//!   ([`ChunkStore::put_batched_all`], which hashes them once, together,
//!   for their ids), the buffers going back to the sink for later chunks.
//!   They run at a lower priority than the chain before them, which sets
//!   the conversion's pace (the `priority` module).
//!
//! The batch is made durable by one [`ChunkStore::sync`] before the
//! manifest is stored, so a manifest never names a chunk a crash could
//! lose; meanwhile a flusher thread calls [`ChunkStore::flush`] every
//! 64 new chunks (a directory store then writes back what it holds and
//! puts those chunks in place), so that sync, which nothing overlaps,
//! finds little left to write or rename. It skips its turn while a
//! registry's download spool holds layers not yet read. Memory stays at
//! a few chunks per worker, a few MiB of layer bytes and at most 48 MiB
//! of parsed entries whatever the image size; only the chunk table (64
//! bytes a chunk) grows with it. The image, chunks and manifest do not
//! depend on the pipeline or the thread count: chunks are placed by
//! index.
//!
//! Before any of that, the source is located (its manifest digest, from a
//! registry one manifest request) and looked up in the catalog's
//! conversion records ([`manifest::conversion`]): if the same source with
//! the same options was converted into this store and its manifest is
//! still there, the conversion is a no-op that says so
//! ([`ConvertReport::already_converted`]), unless [`ConvertOptions::force`].
//!
//! [`Pipeline::Serial`] is the path before the overlap, kept to compare
//! against: layers read on the flattening thread, each chunk stored (and
//! synced) on its own.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachetiers::{ChunkStore, Origin, PutOutcome, StoreError};
use manifest::{
    ChunkEntry, ChunkId, ChunkKey, ChunkSize, ConversionInputs, ConversionKey, DomainSecret,
    KeyProvider, Manifest, ManifestDigest, encrypt_chunk_owned, encrypt_chunks_in_place,
};

use crate::chunking::{ChunkConsumer, ChunkingSink};
use crate::flatten::{FlattenError, FlattenOptions, FlattenReport, flatten_image};
use crate::oci::{Image, ImageSource};

/// How to convert.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// Image layout options (chunk size among them).
    pub flatten: FlattenOptions,
    /// The dedup domain whose secret keys the chunks.
    pub domain: String,
    /// Encryption worker threads (at least 1).
    pub threads: usize,
    /// A name to point at the new manifest.
    pub tag: Option<String>,
    /// Print progress on stderr when it is a terminal.
    pub progress: bool,
    /// How the stages share the cores.
    pub pipeline: Pipeline,
    /// Convert even when the store records this source and options as
    /// converted already.
    pub force: bool,
}

/// How a conversion's stages share the cores (the output is the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pipeline {
    /// Layers read ahead on a thread of their own, chunks stored in a
    /// batch made durable by one sync before the manifest.
    #[default]
    Overlapped,
    /// The earlier path, kept for comparison: layers read on the
    /// flattening thread, each chunk synced as it is stored.
    Serial,
}

impl Pipeline {
    /// The name `--pipeline` takes.
    pub fn name(self) -> &'static str {
        match self {
            Pipeline::Overlapped => "overlapped",
            Pipeline::Serial => "serial",
        }
    }
}

impl fmt::Display for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A pipeline name that is not one.
#[derive(Debug, thiserror::Error)]
#[error("unknown pipeline `{0}` (expected `overlapped` or `serial`)")]
pub struct UnknownPipeline(pub String);

impl FromStr for Pipeline {
    type Err = UnknownPipeline;

    fn from_str(s: &str) -> Result<Self, UnknownPipeline> {
        match s {
            "overlapped" => Ok(Pipeline::Overlapped),
            "serial" => Ok(Pipeline::Serial),
            _ => Err(UnknownPipeline(s.to_owned())),
        }
    }
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            flatten: FlattenOptions::default(),
            domain: manifest::DEFAULT_DOMAIN.into(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tag: None,
            progress: false,
            pipeline: Pipeline::default(),
            force: false,
        }
    }
}

/// What a conversion did.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// Digest of the sealed manifest in the store.
    pub digest: ManifestDigest,
    /// Image size in bytes.
    pub image_bytes: u64,
    /// Chunks in the image, holes included.
    pub chunks: u64,
    /// All-zero chunks, recorded but not stored.
    pub holes: u64,
    /// Chunks stored by this conversion.
    pub new_chunks: u64,
    /// Chunks the store already had (deduplicated).
    pub existing_chunks: u64,
    /// Bytes of new objects written.
    pub bytes_written: u64,
    /// Size of the sealed manifest.
    pub manifest_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The store had converted this source with these options already:
    /// nothing was read or written but the tag (the counts are those of
    /// the stored manifest, every chunk already present).
    pub already_converted: bool,
    /// The flattening report (layers, config); `None` when
    /// [`ConvertReport::already_converted`].
    pub flatten: Option<FlattenReport>,
}

/// Errors from a conversion.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConvertError {
    /// Flattening the image failed.
    #[error(transparent)]
    Flatten(#[from] FlattenError),
    /// The chunk size option is not one a manifest can hold.
    #[error("invalid chunk size")]
    ChunkSize(#[from] manifest::ChunkSizeError),
    /// The key provider failed (domain secret or wrapping).
    #[error("key provider")]
    Keys(#[from] manifest::KeyError),
    /// Sealing the manifest failed.
    #[error("sealing the manifest")]
    Seal(#[from] manifest::SealError),
    /// Encoding the manifest failed.
    #[error("encoding the manifest")]
    Format(#[from] manifest::FormatError),
    /// Storing a chunk, the manifest or the tag failed.
    #[error("chunk store")]
    Store(#[from] StoreError),
    /// An encryption worker stopped unexpectedly.
    #[error("an encryption worker stopped: {0}")]
    Worker(String),
}

/// Where a chunk goes: a chunk of the image, or of a detached layer
/// (numbered within it) whose first chunk is known once it is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChunkAt {
    layer: Option<u64>,
    index: u64,
}

/// The work queue the encryption workers share.
type Queue = Arc<Mutex<Receiver<(ChunkAt, Vec<u8>)>>>;

struct Done {
    at: ChunkAt,
    id: ChunkId,
    key: ChunkKey,
    new: bool,
    bytes: u64,
}

/// Hands chunks to the workers; fails fast once a worker has failed.
/// The image's feeder makes one for each detached layer.
struct Feeder {
    tx: Option<SyncSender<(ChunkAt, Vec<u8>)>>,
    failed: Arc<Mutex<Option<StoreError>>>,
    progress: Option<Arc<Mutex<Progress>>>,
    /// Buffers the workers are done with, when they give them back.
    spare: Option<Arc<Mutex<Receiver<Vec<u8>>>>>,
    /// The detached layer this feeder's chunks are of, if one.
    layer: Option<u64>,
    /// The image's feeder: the next detached layer's token, and where
    /// each attached layer starts.
    next_layer: u64,
    starts: HashMap<u64, u64>,
}

impl Feeder {
    fn new(
        tx: SyncSender<(ChunkAt, Vec<u8>)>,
        failed: Arc<Mutex<Option<StoreError>>>,
        progress: Option<Progress>,
        spare: Option<Receiver<Vec<u8>>>,
    ) -> Self {
        Feeder {
            tx: Some(tx),
            failed,
            progress: progress.map(|p| Arc::new(Mutex::new(p))),
            spare: spare.map(|rx| Arc::new(Mutex::new(rx))),
            layer: None,
            next_layer: 0,
            starts: HashMap::new(),
        }
    }

    /// Where the chunks of the layers attached start.
    fn into_starts(self) -> HashMap<u64, u64> {
        self.starts
    }
}

impl ChunkConsumer for Feeder {
    fn chunk(&mut self, index: u64, data: Vec<u8>) -> io::Result<()> {
        if let Some(err) = self.failed.lock().map_err(|_| poisoned())?.as_ref() {
            return Err(io::Error::other(format!("storing chunks failed: {err}")));
        }
        if let Some(p) = &self.progress {
            p.lock().map_err(|_| poisoned())?.tick(data.len() as u64);
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("workers closed"))?;
        let at = ChunkAt {
            layer: self.layer,
            index,
        };
        tx.send((at, data))
            .map_err(|_| io::Error::other("encryption workers stopped"))
    }

    fn buffer(&mut self, size: usize) -> Vec<u8> {
        let spare = self
            .spare
            .as_ref()
            .and_then(|rx| rx.lock().ok()?.try_recv().ok());
        match spare {
            // As it is: the sink zeroes what it does not write.
            Some(mut buf) => {
                buf.resize(size, 0);
                buf
            }
            // Room for the tag encryption appends, so it never reallocates.
            None => {
                let mut buf = Vec::with_capacity(size + manifest::convergent::TAG_LEN);
                buf.resize(size, 0);
                buf
            }
        }
    }

    fn detach(&mut self) -> Option<(u64, Box<dyn ChunkConsumer + Send>)> {
        if self.layer.is_some() {
            return None;
        }
        let token = self.next_layer;
        self.next_layer += 1;
        let layer = Feeder {
            tx: self.tx.clone(),
            failed: self.failed.clone(),
            progress: self.progress.clone(),
            spare: self.spare.clone(),
            layer: Some(token),
            next_layer: 0,
            starts: HashMap::new(),
        };
        Some((token, Box::new(layer)))
    }

    fn attach(&mut self, token: u64, first: u64) -> io::Result<()> {
        if token >= self.next_layer || self.starts.insert(token, first).is_some() {
            return Err(io::Error::other(format!(
                "detached layer {token} attached twice or never detached"
            )));
        }
        Ok(())
    }
}

fn poisoned() -> io::Error {
    io::Error::other("a worker panicked")
}

struct Progress {
    bytes: u64,
    last: Instant,
    start: Instant,
}

impl Progress {
    fn tick(&mut self, n: u64) {
        self.bytes += n;
        if self.last.elapsed() >= Duration::from_millis(200) {
            self.last = Instant::now();
            let secs = self.start.elapsed().as_secs_f64().max(1e-9);
            eprint!(
                "\r{:>8.1} MB chunked  {:>7.1} MB/s",
                self.bytes as f64 / 1e6,
                self.bytes as f64 / 1e6 / secs
            );
            let _ = io::stderr().flush();
        }
    }
}

/// Encrypts and stores one chunk the serial way: the id computed by the
/// encryption, the object put (and synced) on its own.
fn store_serial(
    secret: &DomainSecret,
    store: &dyn ChunkStore,
    at: ChunkAt,
    data: Vec<u8>,
) -> Result<Stored, StoreError> {
    let chunk = encrypt_chunk_owned(secret, data);
    let outcome = store.put(&chunk.id, &chunk.object)?;
    Ok(Stored {
        at,
        id: chunk.id,
        key: chunk.key,
        outcome,
        object: chunk.object,
    })
}

/// Encrypts and stores chunks batched: their keys derived together, the
/// store hashing the objects together for their ids (once), the batch
/// synced before the manifest.
fn store_batched(
    secret: &DomainSecret,
    store: &dyn ChunkStore,
    chunks: Vec<(ChunkAt, Vec<u8>)>,
) -> Result<Vec<Stored>, StoreError> {
    let (places, mut buffers): (Vec<ChunkAt>, Vec<Vec<u8>>) = chunks.into_iter().unzip();
    let keys = encrypt_chunks_in_place(secret, &mut buffers);
    let objects: Vec<&[u8]> = buffers.iter().map(Vec::as_slice).collect();
    let put = store.put_batched_all(&objects)?;
    Ok(places
        .into_iter()
        .zip(keys)
        .zip(put)
        .zip(buffers)
        .map(|(((at, key), (id, outcome)), object)| Stored {
            at,
            id,
            key,
            outcome,
            object,
        })
        .collect())
}

/// One chunk encrypted and stored, and its buffer (the object now).
struct Stored {
    at: ChunkAt,
    id: ChunkId,
    key: ChunkKey,
    outcome: PutOutcome,
    object: Vec<u8>,
}

/// Chunks a worker of the overlapped pipeline takes at once: their keys
/// and ids are hashed as this many interleaved SHA-256 streams, which a
/// CPU's SHA unit runs in about half the time of one after another
/// ([`ChunkId::of_objects`]). The last batch may be smaller.
const BATCH: usize = 4;

/// New chunks between two [`ChunkStore::flush`]es (32 MiB of 512 KiB
/// chunks).
const FLUSH_EVERY: u64 = 64;

/// What a worker needs besides its queue.
struct WorkerCtx<'a> {
    secret: &'a DomainSecret,
    store: &'a dyn ChunkStore,
    failed: &'a Mutex<Option<StoreError>>,
    /// Where to give buffers back (the overlapped pipeline).
    spare: Option<Sender<Vec<u8>>>,
    /// The overlapped pipeline: new chunks stored so far, and the flusher
    /// to wake every [`FLUSH_EVERY`] of them.
    flush: Option<(&'a AtomicU64, SyncSender<()>)>,
}

fn worker(rx: Queue, done: Sender<Done>, ctx: WorkerCtx<'_>) {
    crate::priority::give_way();
    let take = if ctx.spare.is_some() { BATCH } else { 1 };
    loop {
        // Waits for a whole batch unless the queue closes first (the
        // image's last chunks); the other workers wait their turn.
        let chunks = {
            let Ok(rx) = rx.lock() else { return };
            let mut chunks = Vec::with_capacity(take);
            while chunks.len() < take {
                match rx.recv() {
                    Ok(chunk) => chunks.push(chunk),
                    Err(_) => break,
                }
            }
            chunks
        };
        if chunks.is_empty() {
            return;
        }
        let stored = match ctx.spare {
            Some(_) => store_batched(ctx.secret, ctx.store, chunks),
            None => chunks
                .into_iter()
                .map(|(at, data)| store_serial(ctx.secret, ctx.store, at, data))
                .collect(),
        };
        let stored = match stored {
            Ok(stored) => stored,
            Err(err) => {
                if let Ok(mut slot) = ctx.failed.lock() {
                    slot.get_or_insert(err);
                }
                return;
            }
        };
        if let Some((count, flusher)) = &ctx.flush {
            let new = stored.iter().filter(|s| s.outcome.is_new()).count() as u64;
            let before = count.fetch_add(new, Ordering::Relaxed);
            if (before + new) / FLUSH_EVERY > before / FLUSH_EVERY {
                // Busy flushing already: this one is covered.
                let _ = flusher.try_send(());
            }
        }
        for s in stored {
            let _ = done.send(Done {
                at: s.at,
                id: s.id,
                key: s.key,
                new: s.outcome.is_new(),
                bytes: s.object.len() as u64,
            });
            if let Some(spare) = &ctx.spare {
                // The sink may be finished; then the buffer just goes.
                let _ = spare.send(s.object);
            }
        }
    }
}

/// Convert `source` into encrypted chunks and a sealed manifest in `store`.
///
/// Chunks are put before the manifest, and the manifest before the tag, so
/// a failure at any point leaves a valid store: at worst some unreferenced
/// chunks, never a manifest naming a missing chunk. (Chunks stored batched
/// are synced before the manifest, and put in place on failure too.)
pub fn convert(
    source: &ImageSource,
    store: &dyn Origin,
    keys: &dyn KeyProvider,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let _span = tracing::info_span!("convert", source = %source, domain = %opts.domain).entered();
    let batched = opts.pipeline == Pipeline::Overlapped;
    let converted = convert_with(source, store, keys, opts, batched);
    if let Ok(r) = &converted {
        tracing::info!(
            digest = %r.digest,
            chunks = r.chunks,
            new_chunks = r.new_chunks,
            bytes_written = r.bytes_written,
            "converted"
        );
    }
    if converted.is_err() && batched {
        // What was stored stays stored, as on the serial path; the error
        // that stopped the conversion is the one to report.
        let _ = store.sync();
    }
    converted
}

fn convert_with(
    source: &ImageSource,
    store: &dyn Origin,
    keys: &dyn KeyProvider,
    opts: &ConvertOptions,
    batched: bool,
) -> Result<ConvertReport, ConvertError> {
    let start = Instant::now();
    let chunk_size = ChunkSize::new(opts.flatten.ext4.chunk_size)?;
    let secret = keys.domain_secret(&opts.domain)?;
    let located = Image::locate(source).map_err(FlattenError::from)?;
    let record = ConversionKey::derive(
        &secret,
        &ConversionInputs {
            source_digest: located.digest().as_str(),
            domain: &opts.domain,
            chunk_size,
            free_bytes: opts.flatten.ext4.free_bytes,
            spare_inodes: opts.flatten.ext4.spare_inodes,
        },
    );
    if !opts.force
        && let Some(report) = already_converted(store, keys, opts, &record, start)?
    {
        return Ok(report);
    }
    let image = located.open().map_err(FlattenError::from)?;
    let threads = opts.threads.max(1);
    let (tx, rx) = sync_channel::<(ChunkAt, Vec<u8>)>(threads * BATCH);
    let rx = Arc::new(Mutex::new(rx));
    let (done_tx, done_rx) = channel::<Done>();
    let (spare_tx, spare_rx) = channel::<Vec<u8>>();
    let failed = Arc::new(Mutex::new(None));
    let feeder = Feeder::new(
        tx,
        failed.clone(),
        (opts.progress && io::stderr().is_terminal()).then(|| Progress {
            bytes: 0,
            last: Instant::now(),
            start: Instant::now(),
        }),
        batched.then_some(spare_rx),
    );
    let mut flatten_opts = opts.flatten.clone();
    flatten_opts.read_ahead &= batched;

    let stored = AtomicU64::new(0);
    let (flush_tx, flush_rx) = sync_channel::<()>(1);
    let flattened = std::thread::scope(|scope| {
        if batched {
            // Writes back what the store holds dirty while the conversion
            // goes on, so that the sync before the manifest, which nothing
            // overlaps, has little left; its errors are the sync's to
            // report. Not while a registry's download spool holds layer
            // bytes in its files not yet read: a `syncfs` of the file
            // system they share (the usual case, `$TMPDIR` and the store
            // on one disk) would write those back too, only for them to
            // be punched out once read (51 MiB more written for the python
            // image, and 25–35 ms slower, when layers waited in files).
            // Layers read as they arrive hold nothing there, and then the
            // store is written back as from a layout (the python image:
            // the sync at the end 2 ms instead of 9).
            let image = &image;
            scope.spawn(move || {
                for () in flush_rx {
                    if !image.spooling() {
                        let _ = store.flush();
                    }
                }
            });
        }
        for _ in 0..threads {
            let ctx = WorkerCtx {
                secret: &secret,
                store,
                failed: &failed,
                spare: batched.then(|| spare_tx.clone()),
                flush: batched.then(|| (&stored, flush_tx.clone())),
            };
            let (rx, done_tx) = (rx.clone(), done_tx.clone());
            scope.spawn(move || worker(rx, done_tx, ctx));
        }
        drop(done_tx);
        drop(spare_tx);
        drop(flush_tx);
        let sink = ChunkingSink::new(chunk_size.as_u64(), feeder);
        // The workers hold the only receivers now: if they all stop, sending
        // fails instead of blocking.
        drop(rx);
        // Dropping the feeder closes the queue, so the workers drain it and
        // stop; on error flatten_into has dropped it already.
        flatten_image(&image, sink, &flatten_opts).map(|(sink, report)| {
            let count = sink.chunk_count();
            let feeder = sink.into_consumer();
            if feeder.progress.is_some() {
                eprintln!();
            }
            (count, feeder.into_starts(), report)
        })
    });
    if let Some(err) = failed
        .lock()
        .map_err(|_| ConvertError::Worker("poisoned".into()))?
        .take()
    {
        return Err(ConvertError::Store(err));
    }
    let (chunk_count, starts, report) = flattened?;

    let mut chunks = vec![ChunkEntry::Hole; chunk_count as usize];
    let (mut new_chunks, mut existing_chunks, mut bytes_written) = (0, 0, 0);
    for d in done_rx.iter() {
        let index = match d.at.layer {
            None => d.at.index,
            Some(layer) => {
                let start = starts.get(&layer).ok_or_else(|| {
                    ConvertError::Worker(format!("a chunk of layer {layer}, never attached"))
                })?;
                start + d.at.index
            }
        };
        let slot = chunks
            .get_mut(index as usize)
            .ok_or_else(|| ConvertError::Worker(format!("chunk {index} is past the image end")))?;
        *slot = ChunkEntry::Present {
            id: d.id,
            key: d.key,
        };
        if d.new {
            new_chunks += 1;
            bytes_written += d.bytes;
        } else {
            existing_chunks += 1;
        }
    }
    let holes = chunks.iter().filter(|c| c.is_hole()).count() as u64;

    let manifest = Manifest {
        source_digest: report.image_digest.to_string(),
        domain: opts.domain.clone(),
        filesystem: "ext4".into(),
        config: report.config.run.clone(),
        device_size: report.ext4.size,
        chunk_size,
        chunks,
    };
    let sealed = manifest::seal(&manifest, keys)?;
    // Every chunk durable (one sync for the batch) before the manifest
    // that names them; an origin's put_manifest syncs too, and then finds
    // nothing left to do.
    store.sync()?;
    let digest = store.put_manifest(&sealed)?;
    store.put_conversion(&opts.domain, &record, &digest)?;
    if let Some(tag) = &opts.tag {
        store.set_tag(&opts.domain, tag, &digest)?;
    }
    Ok(ConvertReport {
        digest,
        image_bytes: report.ext4.size,
        chunks: chunk_count,
        holes,
        new_chunks,
        existing_chunks,
        bytes_written,
        manifest_bytes: sealed.len() as u64,
        elapsed: start.elapsed(),
        already_converted: false,
        flatten: Some(report),
    })
}

/// The report of a conversion the store records as done: `None` unless
/// the record exists and the manifest it names is still stored and
/// unseals in this domain with these keys (a manifest removed since, or
/// sealed under keys that are gone, is converted again). Sets the tag.
fn already_converted(
    store: &dyn Origin,
    keys: &dyn KeyProvider,
    opts: &ConvertOptions,
    record: &ConversionKey,
    start: Instant,
) -> Result<Option<ConvertReport>, ConvertError> {
    let Some(digest) = store.get_conversion(&opts.domain, record)? else {
        return Ok(None);
    };
    let sealed = match store.get_manifest(&digest) {
        Ok(sealed) => sealed,
        Err(StoreError::ManifestNotFound { .. }) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    let Ok(manifest) = manifest::unseal_for_domain(&sealed, keys, &opts.domain) else {
        return Ok(None);
    };
    if let Some(tag) = &opts.tag {
        store.set_tag(&opts.domain, tag, &digest)?;
        // Garbage collection may have removed the (old, untagged) manifest
        // between the look above and the tag: then the tag would name
        // nothing, so convert after all (which stores a manifest and moves
        // the tag to it).
        match store.get_manifest(&digest) {
            Ok(_) => {}
            Err(StoreError::ManifestNotFound { .. }) => return Ok(None),
            Err(err) => return Err(err.into()),
        }
    }
    let chunks = manifest.chunks.len() as u64;
    let holes = manifest.chunks.iter().filter(|c| c.is_hole()).count() as u64;
    Ok(Some(ConvertReport {
        digest,
        image_bytes: manifest.device_size,
        chunks,
        holes,
        new_chunks: 0,
        existing_chunks: chunks - holes,
        bytes_written: 0,
        manifest_bytes: sealed.len() as u64,
        elapsed: start.elapsed(),
        already_converted: true,
        flatten: None,
    }))
}
