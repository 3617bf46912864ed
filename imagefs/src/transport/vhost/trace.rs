//! `--record-trace FILE`: what the guest read, in order, with timestamps,
//! for the vmm-shim to replay. The format (JSON lines) is
//! [`manifest::trace`]; this module writes it to a file as requests
//! arrive. Lines are flushed after every batch a queue worker takes, so
//! the file is complete up to the last batch even if the daemon is killed.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub use manifest::trace::{TraceDecodeError, TraceHeader, TraceRecord};

/// Errors writing or reading a trace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// The file could not be created, written or read.
    #[error("trace file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a trace of this format.
    #[error("trace file {}: {source}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: TraceDecodeError,
    },
}

/// Writes a trace (shared by the queue workers).
#[derive(Debug)]
pub struct TraceWriter {
    path: PathBuf,
    start: Instant,
    out: Mutex<BufWriter<File>>,
}

impl TraceWriter {
    /// Creates `path` (replacing it) and writes the header.
    pub fn create(path: &Path, image: &str, device_size: u64) -> Result<Self, TraceError> {
        let io_err = |source| TraceError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::create(path).map_err(io_err)?;
        let mut out = BufWriter::new(file);
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let header = TraceHeader::new(image, device_size, started);
        writeln!(out, "{}", header.encode()).map_err(io_err)?;
        out.flush().map_err(io_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            start: Instant::now(),
            out: Mutex::new(out),
        })
    }

    /// Records a read of `len` bytes at `offset` from `queue`, now.
    pub fn record(&self, queue: u16, offset: u64, len: u64) -> Result<(), TraceError> {
        let t_ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let record = TraceRecord {
            t_ns,
            queue,
            offset,
            len,
        };
        writeln!(out, "{}", record.encode()).map_err(|source| TraceError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Pushes buffered records to the file.
    pub fn flush(&self) -> Result<(), TraceError> {
        self.out
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush()
            .map_err(|source| TraceError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Reads a trace file: its header and records, in order.
pub fn read_trace(path: &Path) -> Result<(TraceHeader, Vec<TraceRecord>), TraceError> {
    let file = File::open(path).map_err(|source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    manifest::trace::decode(BufReader::new(file)).map_err(|source| TraceError::Decode {
        path: path.to_path_buf(),
        source,
    })
}
