//! `--record-trace FILE`: what the guest read, in order, with timestamps,
//! for the vmm-shim to replay.
//!
//! The file is JSON lines. The first line is a header:
//!
//! ```text
//! {"format":"imagefs-trace","version":1,"image":"sha256:…","device_size":1048576,"started_unix_ns":1767225600000000000}
//! ```
//!
//! and every further line one guest read, in the order the device took
//! the requests off its queues:
//!
//! ```text
//! {"t_ns":1234567,"queue":0,"offset":4096,"len":512}
//! ```
//!
//! `t_ns` is nanoseconds since `started_unix_ns` (a monotonic clock),
//! `offset` and `len` are bytes on the device. Lines are written as
//! requests arrive and flushed after every batch a queue worker takes, so
//! the file is complete up to the last batch even if the daemon is killed.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The header line of a trace file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceHeader {
    /// Always `imagefs-trace`.
    pub format: String,
    /// Format version (1).
    pub version: u32,
    /// The manifest digest of the image served.
    pub image: String,
    /// Its device size in bytes.
    pub device_size: u64,
    /// When recording started, nanoseconds since the Unix epoch.
    pub started_unix_ns: u128,
}

/// One guest read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceRecord {
    /// Nanoseconds since the start of recording.
    pub t_ns: u64,
    /// The queue the request came on.
    pub queue: u16,
    /// Byte offset on the device.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

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
    /// A line is not what the format says.
    #[error("trace file {} line {line}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The first line is not an imagefs trace header.
    #[error("trace file {} does not start with an imagefs-trace version 1 header", path.display())]
    NotATrace {
        /// The file.
        path: PathBuf,
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
        let header = TraceHeader {
            format: "imagefs-trace".into(),
            version: 1,
            image: image.into(),
            device_size,
            started_unix_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        };
        let line = serde_json::to_string(&header).map_err(|e| io_err(e.into()))?;
        writeln!(out, "{line}").map_err(io_err)?;
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
        // The record is four integers: formatting cannot fail.
        writeln!(
            out,
            "{{\"t_ns\":{t_ns},\"queue\":{queue},\"offset\":{offset},\"len\":{len}}}"
        )
        .map_err(|source| TraceError::Io {
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
    let io_err = |source| TraceError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut lines = BufReader::new(file).lines();
    let first = lines
        .next()
        .ok_or_else(|| TraceError::NotATrace {
            path: path.to_path_buf(),
        })?
        .map_err(io_err)?;
    let header: TraceHeader =
        serde_json::from_str(&first).map_err(|source| TraceError::Format {
            path: path.to_path_buf(),
            line: 1,
            source,
        })?;
    if header.format != "imagefs-trace" || header.version != 1 {
        return Err(TraceError::NotATrace {
            path: path.to_path_buf(),
        });
    }
    let mut records = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line.map_err(io_err)?;
        if line.trim().is_empty() {
            continue;
        }
        records.push(
            serde_json::from_str(&line).map_err(|source| TraceError::Format {
                path: path.to_path_buf(),
                line: i + 2,
                source,
            })?,
        );
    }
    Ok((header, records))
}
