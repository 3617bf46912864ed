//! The access-trace format: what a guest read, in order, with timestamps
//! (written by `imagefs serve --record-trace`, replayed by the vmm-shim).
//!
//! A trace is JSON lines. The first line is a [`TraceHeader`]:
//!
//! ```text
//! {"format":"imagefs-trace","version":1,"image":"sha256:…","device_size":1048576,"started_unix_ns":1767225600000000000}
//! ```
//!
//! and every further line one [`TraceRecord`], in the order the device
//! took the requests off its queues:
//!
//! ```text
//! {"t_ns":1234567,"queue":0,"offset":4096,"len":512}
//! ```
//!
//! `t_ns` is nanoseconds since `started_unix_ns` (a monotonic clock),
//! `offset` and `len` are bytes on the device. Blank lines are skipped.

use std::io::{self, BufRead};

/// The `format` of a trace header.
pub const TRACE_FORMAT: &str = "imagefs-trace";
/// The version this module writes and reads.
pub const TRACE_VERSION: u32 = 1;

/// The header line of a trace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TraceHeader {
    /// Always [`TRACE_FORMAT`].
    pub format: String,
    /// Format version ([`TRACE_VERSION`]).
    pub version: u32,
    /// The manifest digest of the image served.
    pub image: String,
    /// Its device size in bytes.
    pub device_size: u64,
    /// When recording started, nanoseconds since the Unix epoch.
    pub started_unix_ns: u128,
}

impl TraceHeader {
    /// A header of the current format and version.
    pub fn new(image: &str, device_size: u64, started_unix_ns: u128) -> Self {
        Self {
            format: TRACE_FORMAT.into(),
            version: TRACE_VERSION,
            image: image.into(),
            device_size,
            started_unix_ns,
        }
    }

    /// The header as one line (no newline).
    pub fn encode(&self) -> String {
        // Strings and integers only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
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

impl TraceRecord {
    /// The record as one line (no newline); written by hand because it
    /// is on the I/O path and is four integers.
    pub fn encode(&self) -> String {
        format!(
            "{{\"t_ns\":{},\"queue\":{},\"offset\":{},\"len\":{}}}",
            self.t_ns, self.queue, self.offset, self.len
        )
    }
}

/// Errors decoding a trace.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceDecodeError {
    /// The bytes could not be read.
    #[error("reading the trace: {0}")]
    Io(#[source] io::Error),
    /// A line is not what the format says.
    #[error("line {line}: {source}")]
    Format {
        /// 1-based line number.
        line: usize,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The first line is not a trace header of this version.
    #[error("not an {TRACE_FORMAT} version {TRACE_VERSION} trace (first line {first:?})")]
    NotATrace {
        /// The first line, cut to 120 characters.
        first: String,
    },
}

/// Decodes a whole trace: its header and its records, in order.
pub fn decode(input: impl BufRead) -> Result<(TraceHeader, Vec<TraceRecord>), TraceDecodeError> {
    let mut lines = input.lines().enumerate();
    let not_a_trace = |first: &str| TraceDecodeError::NotATrace {
        first: first.chars().take(120).collect(),
    };
    let first = loop {
        match lines.next() {
            None => return Err(not_a_trace("")),
            Some((_, line)) => {
                let line = line.map_err(TraceDecodeError::Io)?;
                if !line.trim().is_empty() {
                    break line;
                }
            }
        }
    };
    let header: TraceHeader = serde_json::from_str(&first).map_err(|_| not_a_trace(&first))?;
    if header.format != TRACE_FORMAT || header.version != TRACE_VERSION {
        return Err(not_a_trace(&first));
    }
    let mut records = Vec::new();
    for (i, line) in lines {
        let line = line.map_err(TraceDecodeError::Io)?;
        if line.trim().is_empty() {
            continue;
        }
        records.push(
            serde_json::from_str(&line).map_err(|source| TraceDecodeError::Format {
                line: i + 1,
                source,
            })?,
        );
    }
    Ok((header, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let header = TraceHeader::new("sha256:00", 1 << 20, 1_767_225_600_000_000_000);
        let records = [
            TraceRecord {
                t_ns: 5,
                queue: 0,
                offset: 4096,
                len: 512,
            },
            TraceRecord {
                t_ns: u64::MAX,
                queue: u16::MAX,
                offset: u64::MAX - 511,
                len: 1 << 20,
            },
        ];
        let mut text = header.encode() + "\n\n";
        for r in &records {
            text += &r.encode();
            text.push('\n');
        }
        let (h, got) = decode(text.as_bytes()).unwrap();
        assert_eq!(h, header);
        assert_eq!(got, records);
    }

    #[test]
    fn rejects_what_is_not_a_trace() {
        assert!(matches!(
            decode(&b""[..]),
            Err(TraceDecodeError::NotATrace { .. })
        ));
        assert!(matches!(
            decode(&b"0 4096\n"[..]),
            Err(TraceDecodeError::NotATrace { .. })
        ));
        let other = TraceHeader {
            format: "something-else".into(),
            ..TraceHeader::new("x", 0, 0)
        };
        assert!(matches!(
            decode(other.encode().as_bytes()),
            Err(TraceDecodeError::NotATrace { .. })
        ));
        let bad = TraceHeader::new("x", 0, 0).encode() + "\n{\"t_ns\":1}\n";
        let err = decode(bad.as_bytes()).unwrap_err();
        assert!(
            matches!(err, TraceDecodeError::Format { line: 2, .. }),
            "{err}"
        );
    }
}
