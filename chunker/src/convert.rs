//! The conversion pipeline: flatten → chunk → encrypt → store → seal.
//!
//! The ext4 writer streams into a [`ChunkingSink`]; each completed chunk goes
//! over a bounded queue to worker threads that encrypt it convergently and
//! put it in the store. Memory stays at a few chunks per worker whatever the
//! image size; only the chunk table (64 bytes a chunk) grows with it.

use std::io::{self, IsTerminal, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachetiers::{ChunkStore, Origin, StoreError};
use manifest::{
    ChunkEntry, ChunkId, ChunkKey, ChunkSize, DomainSecret, KeyProvider, Manifest, ManifestDigest,
    encrypt_chunk_owned,
};

use crate::chunking::{ChunkConsumer, ChunkingSink};
use crate::flatten::{FlattenError, FlattenOptions, FlattenReport, flatten_into};
use crate::oci::ImageSource;

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
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            flatten: FlattenOptions::default(),
            domain: manifest::DEFAULT_DOMAIN.into(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tag: None,
            progress: false,
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
    /// The flattening report (layers, config).
    pub flatten: FlattenReport,
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

/// The work queue the encryption workers share.
type Queue = Arc<Mutex<Receiver<(u64, Vec<u8>)>>>;

struct Done {
    index: u64,
    id: ChunkId,
    key: ChunkKey,
    new: bool,
    bytes: u64,
}

/// Hands chunks to the workers; fails fast once a worker has failed.
struct Feeder {
    tx: Option<SyncSender<(u64, Vec<u8>)>>,
    failed: Arc<Mutex<Option<StoreError>>>,
    progress: Option<Progress>,
}

impl ChunkConsumer for Feeder {
    fn chunk(&mut self, index: u64, data: Vec<u8>) -> io::Result<()> {
        if let Some(err) = self.failed.lock().map_err(|_| poisoned())?.as_ref() {
            return Err(io::Error::other(format!("storing chunks failed: {err}")));
        }
        if let Some(p) = &mut self.progress {
            p.tick(data.len() as u64);
        }
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| io::Error::other("workers closed"))?;
        tx.send((index, data))
            .map_err(|_| io::Error::other("encryption workers stopped"))
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

fn worker(
    rx: Queue,
    done: std::sync::mpsc::Sender<Done>,
    secret: &DomainSecret,
    store: &dyn ChunkStore,
    failed: &Mutex<Option<StoreError>>,
) {
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((index, data)) = next else { return };
        let chunk = encrypt_chunk_owned(secret, data);
        match store.put(&chunk.id, &chunk.object) {
            Ok(outcome) => {
                let _ = done.send(Done {
                    index,
                    id: chunk.id,
                    key: chunk.key,
                    new: outcome.is_new(),
                    bytes: chunk.object.len() as u64,
                });
            }
            Err(err) => {
                if let Ok(mut slot) = failed.lock() {
                    slot.get_or_insert(err);
                }
                return;
            }
        }
    }
}

/// Convert `source` into encrypted chunks and a sealed manifest in `store`.
///
/// Chunks are put before the manifest, and the manifest before the tag, so
/// a failure at any point leaves a valid store: at worst some unreferenced
/// chunks, never a manifest naming a missing chunk.
pub fn convert(
    source: &ImageSource,
    store: &dyn Origin,
    keys: &dyn KeyProvider,
    opts: &ConvertOptions,
) -> Result<ConvertReport, ConvertError> {
    let start = Instant::now();
    let chunk_size = ChunkSize::new(opts.flatten.ext4.chunk_size)?;
    let secret = keys.domain_secret(&opts.domain)?;
    let threads = opts.threads.max(1);
    let (tx, rx) = sync_channel::<(u64, Vec<u8>)>(threads * 2);
    let rx = Arc::new(Mutex::new(rx));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<Done>();
    let failed = Arc::new(Mutex::new(None));
    let feeder = Feeder {
        tx: Some(tx),
        failed: failed.clone(),
        progress: (opts.progress && io::stderr().is_terminal()).then(|| Progress {
            bytes: 0,
            last: Instant::now(),
            start: Instant::now(),
        }),
    };

    let flattened = std::thread::scope(|scope| {
        for _ in 0..threads {
            let (rx, done_tx, failed) = (rx.clone(), done_tx.clone(), &*failed);
            let secret = &secret;
            scope.spawn(move || worker(rx, done_tx, secret, store, failed));
        }
        drop(done_tx);
        let sink = ChunkingSink::new(chunk_size.as_u64(), feeder);
        // The workers hold the only receivers now: if they all stop, sending
        // fails instead of blocking.
        drop(rx);
        // Dropping the feeder closes the queue, so the workers drain it and
        // stop; on error flatten_into has dropped it already.
        flatten_into(source, sink, &opts.flatten).map(|(sink, report)| {
            let count = sink.chunk_count();
            if sink.into_consumer().progress.is_some() {
                eprintln!();
            }
            (count, report)
        })
    });
    if let Some(err) = failed
        .lock()
        .map_err(|_| ConvertError::Worker("poisoned".into()))?
        .take()
    {
        return Err(ConvertError::Store(err));
    }
    let (chunk_count, report) = flattened?;

    let mut chunks = vec![ChunkEntry::Hole; chunk_count as usize];
    let (mut new_chunks, mut existing_chunks, mut bytes_written) = (0, 0, 0);
    for d in done_rx.iter() {
        let slot = chunks.get_mut(d.index as usize).ok_or_else(|| {
            ConvertError::Worker(format!("chunk {} is past the image end", d.index))
        })?;
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
    let digest = store.put_manifest(&sealed)?;
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
        flatten: report,
    })
}
