//! A layer's tar stream: decompressed, with both digests checked.
//!
//! The blob digest covers the compressed bytes and the diff_id the
//! uncompressed ones. Both are hashed while the tar is read, each byte
//! once for each digest it counts towards: a [`VerifiedBlob`] (checked by
//! the registry spool as it arrived) is only counted, not hashed again,
//! and an uncompressed blob's one hash is both its digest and its diff_id
//! (unless it was verified: then only the diff_id is hashed). The caller
//! reads the tar, then calls [`LayerStream::finish`], which drains whatever
//! the tar reader left (end-of-archive padding, trailing frames) so the
//! hashes cover the whole blob before comparing.

use std::io::{self, BufRead, Read};

use flate2::bufread::MultiGzDecoder;

use super::SourceError;
use super::digest::{Digest, HashReader};
use super::spec::Compression;
#[cfg(doc)]
use super::store::VerifiedBlob;
use super::store::{Blob, FileRange, Fill};

/// Bytes a layer's blob is read in (and its uncompressed tar, when the blob
/// is one), so reading it takes few system calls.
const READ_BUFFER: usize = 256 * 1024;

/// What the digests of a fully read layer turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerDigests {
    /// Digest of the blob as stored.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the blob as stored.
    pub compressed_bytes: u64,
    /// Size of the uncompressed tar.
    pub uncompressed_bytes: u64,
}

/// A blob's bytes, buffered: read from its file [`READ_BUFFER`] bytes at a
/// time (the tar reader asks for 512-byte headers, one syscall each
/// otherwise), or, where a download handed them over in memory, read in
/// place: the decompressor takes its input straight from the download's
/// buffers instead of a copy of them.
struct BlobBuf {
    range: FileRange,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    /// What `fill_buf` showed last is the range's, in memory.
    in_memory: bool,
}

impl BlobBuf {
    fn new(range: FileRange) -> Self {
        BlobBuf {
            range,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            pos: 0,
            filled: 0,
            in_memory: false,
        }
    }
}

impl BufRead for BlobBuf {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos < self.filled {
            return Ok(&self.buf[self.pos..self.filled]);
        }
        match self.range.fill(&mut self.buf)? {
            Fill::InMemory => {
                self.in_memory = true;
                Ok(self.range.in_memory())
            }
            Fill::Read(n) => {
                self.in_memory = false;
                (self.pos, self.filled) = (0, n);
                Ok(&self.buf[..n])
            }
        }
    }

    fn consume(&mut self, n: usize) {
        if self.in_memory {
            self.range.consume_in_memory(n);
        } else {
            self.pos = (self.pos + n).min(self.filled);
        }
    }
}

impl Read for BlobBuf {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let bytes = self.fill_buf()?;
        let n = bytes.len().min(out.len());
        out[..n].copy_from_slice(&bytes[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Each decoder reads the blob through a [`HashReader`] over a [`BlobBuf`]:
/// the bytes are hashed as the decoder consumes them.
enum Decoder {
    Plain(HashReader<BlobBuf>),
    // Multi-member, because concatenated gzip members are one valid stream.
    // Boxed: the inflate state is large, and there is one per layer. Its
    // input is as large as the plain one's (not flate2's 32 KiB buffer),
    // so reading the blob takes a few large reads.
    Gzip(Box<MultiGzDecoder<HashReader<BlobBuf>>>),
    Zstd(zstd::Decoder<'static, HashReader<BlobBuf>>),
}

impl Decoder {
    fn into_inner(self) -> HashReader<BlobBuf> {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(r) => r.into_inner(),
            Decoder::Zstd(r) => r.into_inner(),
        }
    }
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
            Decoder::Zstd(r) => r.read(buf),
        }
    }
}

/// A layer's uncompressed stream went past its byte limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("more than {limit} uncompressed bytes (the {what} limit)")]
pub struct LimitExceeded {
    /// Which limit: `layer` or `image`.
    pub what: &'static str,
    /// The bytes allowed.
    pub limit: u64,
}

impl LimitExceeded {
    /// The limit behind an I/O error, if that is what it is.
    pub fn find(err: &io::Error) -> Option<&LimitExceeded> {
        err.get_ref().and_then(|e| e.downcast_ref())
    }
}

/// The uncompressed tar of one layer, hashed as it is read.
pub struct LayerStream {
    inner: HashReader<Decoder>,
    /// Uncompressed bytes read so far, and the cap on them.
    read: u64,
    limit: Option<LimitExceeded>,
    name: Digest,
    expected_digest: Option<Digest>,
    expected_size: Option<u64>,
    expected_diff_id: Digest,
    /// The digest the blob was verified against on arrival, if it was.
    verified: Option<Digest>,
}

impl std::fmt::Debug for LayerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerStream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LayerStream {
    /// Decompress `blob` as `compression`. `name` is what errors call the
    /// layer; `expected_digest` and `expected_size` are checked when known
    /// (a `docker save` archive does not record them). A verified blob's
    /// digest must be the expected one; its bytes are not hashed again.
    pub fn new(
        blob: Blob,
        compression: Compression,
        name: Digest,
        expected_digest: Option<Digest>,
        expected_size: Option<u64>,
        expected_diff_id: Digest,
    ) -> Result<Self, SourceError> {
        let (blob, verified) = blob.into_parts();
        let blob = BlobBuf::new(blob);
        let raw = match verified {
            Some(_) => HashReader::counting(blob),
            None => HashReader::new(blob),
        };
        let decoder = match compression {
            Compression::None => Decoder::Plain(raw),
            Compression::Gzip => Decoder::Gzip(Box::new(MultiGzDecoder::new(raw))),
            Compression::Zstd => {
                Decoder::Zstd(zstd::Decoder::with_buffer(raw).map_err(|source| {
                    SourceError::ReadBlob {
                        digest: name.clone(),
                        source,
                    }
                })?)
            }
        };
        // An uncompressed blob is its own tar: its digest is the diff_id,
        // so hashing it twice would only halve the throughput. (Unless it
        // was verified on arrival: then the blob is not hashed here, and
        // the tar is, once, for the diff_id.)
        let inner = match (compression, &verified) {
            (Compression::None, None) => HashReader::counting(decoder),
            _ => HashReader::new(decoder),
        };
        Ok(LayerStream {
            inner,
            read: 0,
            limit: None,
            name,
            expected_digest,
            expected_size,
            expected_diff_id,
            verified,
        })
    }

    /// Fail reads once more than `limit` uncompressed bytes have been read
    /// (trailing bytes after the tar included); `what` names the limit.
    pub fn set_limit(&mut self, what: &'static str, limit: u64) {
        self.limit = Some(LimitExceeded { what, limit });
    }

    /// Uncompressed bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Leaves hashing the uncompressed bytes to the caller, who passes the
    /// diff_id it computed to [`LayerStream::finish_with`]: a thread that
    /// decompresses and hands the bytes on can then leave their hashing
    /// to the thread that reads them. Returns whether the caller must hash
    /// them: not for an uncompressed layer (its blob digest, hashed here,
    /// is its diff_id) nor once reading has begun.
    pub fn hash_diff_id_elsewhere(&mut self) -> bool {
        self.inner.stop_hashing()
    }

    /// Read the rest of the layer and check both digests.
    pub fn finish(self) -> Result<LayerDigests, SourceError> {
        self.finish_with(None)
    }

    /// [`LayerStream::finish`], with the diff_id of every uncompressed byte
    /// when [`LayerStream::hash_diff_id_elsewhere`] left that hashing to the
    /// caller.
    pub fn finish_with(mut self, diff_id: Option<Digest>) -> Result<LayerDigests, SourceError> {
        let read_err = |name: &Digest| {
            let digest = name.clone();
            move |source| SourceError::ReadBlob { digest, source }
        };
        // Through `read`, so the limit holds for trailing bytes too.
        io::copy(&mut self, &mut io::sink()).map_err(read_err(&self.name))?;
        let (decoder, hashed, uncompressed_bytes) = self.inner.finish();
        let mut raw = decoder.into_inner();
        // A decoder may stop before the end of its input; the blob digest
        // must still cover every stored byte.
        raw.drain().map_err(read_err(&self.name))?;
        let (_, hashed_blob, compressed_bytes) = raw.finish();
        // Hashed here unless verified on arrival: one or the other.
        let Some(digest) = hashed_blob.or(self.verified) else {
            return Err(SourceError::ReadBlob {
                digest: self.name,
                source: io::Error::other("the blob was neither hashed nor verified"),
            });
        };
        // Without a hash of the uncompressed bytes, the blob's stands for
        // it: right for an uncompressed layer, a mismatch for any other.
        let diff_id = hashed.or(diff_id).unwrap_or_else(|| digest.clone());
        if let Some(expected) = self.expected_digest
            && digest != expected
        {
            return Err(SourceError::DigestMismatch {
                digest: expected,
                actual: digest,
            });
        }
        if let Some(expected) = self.expected_size
            && compressed_bytes != expected
        {
            return Err(SourceError::SizeMismatch {
                digest: self.name,
                expected,
                actual: compressed_bytes,
            });
        }
        if diff_id != self.expected_diff_id {
            return Err(SourceError::DiffIdMismatch {
                layer: self.name,
                expected: self.expected_diff_id,
                actual: diff_id,
            });
        }
        Ok(LayerDigests {
            digest,
            diff_id,
            compressed_bytes,
            uncompressed_bytes,
        })
    }
}

impl Read for LayerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let buf = match &self.limit {
            Some(limit) => {
                // Ask for one byte past the limit at most: reaching it is
                // fine, passing it is the error.
                let room = (limit.limit + 1).saturating_sub(self.read);
                let n = (buf.len() as u64).min(room) as usize;
                if n == 0 {
                    return Err(io::Error::other(limit.clone()));
                }
                &mut buf[..n]
            }
            None => buf,
        };
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(limit) = &self.limit
            && self.read > limit.limit
        {
            return Err(io::Error::other(limit.clone()));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

    use super::*;
    use crate::oci::arrival::Arrival;
    use crate::oci::store::VerifiedBlob;

    /// Compressible bytes that are not all alike, and their gzip.
    fn gzipped(len: usize) -> (Vec<u8>, Vec<u8>) {
        let raw: Vec<u8> = (0..len).map(|i| ((i / 7) ^ (i % 13)) as u8).collect();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&raw).unwrap();
        (raw, gz.finish().unwrap())
    }

    /// A blob whose first `in_file` bytes went to the spool file before
    /// its reader came and the rest was handed over in memory, as the
    /// registry's spool does; the buffers handed over, by address.
    fn arrived(blob: &[u8], in_file: usize) -> (FileRange, Vec<std::ops::Range<usize>>) {
        let file = Arc::new(tempfile::tempfile().unwrap());
        let arrival = Arc::new(Arrival::new());
        file.write_all_at(&blob[..in_file], 0).unwrap();
        arrival.grew(in_file as u64);
        let range = FileRange::new(file, 0, blob.len() as u64).arriving(arrival.clone());
        let mut handed = Vec::new();
        let mut buf = arrival.buffer();
        for piece in blob[in_file..].chunks(100_000) {
            buf[..piece.len()].copy_from_slice(piece);
            let at = buf.as_ptr() as usize;
            handed.push(at..at + piece.len());
            buf = arrival.hand_over(buf, 0, piece.len()).unwrap();
        }
        arrival.finish(Ok(()));
        (range, handed)
    }

    #[test]
    fn bytes_handed_over_in_memory_are_read_in_place() {
        let (_, gz) = gzipped(2 << 20);
        let in_file = 150_000;
        let (range, handed) = arrived(&gz, in_file);
        let mut blob = BlobBuf::new(range);
        let (mut seen, mut in_place) = (Vec::new(), 0);
        loop {
            let bytes = blob.fill_buf().unwrap();
            if bytes.is_empty() {
                break;
            }
            // Part of what is shown, as a decompressor takes it.
            let n = bytes.len().min(70_000);
            let at = bytes.as_ptr() as usize;
            if seen.len() >= in_file {
                assert!(
                    handed
                        .iter()
                        .any(|h| h.contains(&at) && at + bytes.len() <= h.end),
                    "bytes past the file's were copied, not read where they were handed over"
                );
                in_place += n;
            }
            seen.extend_from_slice(&bytes[..n]);
            blob.consume(n);
        }
        assert!(seen == gz, "the bytes read differ from the blob");
        assert_eq!(in_place, gz.len() - in_file);
    }

    #[test]
    fn a_layer_read_in_place_has_its_digests_checked() {
        let (raw, gz) = gzipped(1 << 20);
        let digest = Digest::of(&gz);
        for in_file in [0, 1000, gz.len()] {
            let (range, _) = arrived(&gz, in_file);
            let blob = Blob::Verified(VerifiedBlob::checked(range, digest.clone()));
            let mut stream = LayerStream::new(
                blob,
                Compression::Gzip,
                digest.clone(),
                Some(digest.clone()),
                Some(gz.len() as u64),
                Digest::of(&raw),
            )
            .unwrap();
            let mut out = Vec::new();
            stream.read_to_end(&mut out).unwrap();
            assert!(
                out == raw,
                "decompressed bytes differ ({in_file} in the file)"
            );
            let digests = stream.finish().unwrap();
            assert_eq!(digests.diff_id, Digest::of(&raw));
            assert_eq!(digests.compressed_bytes, gz.len() as u64);
        }
    }

    #[test]
    fn a_layer_s_blob_is_hashed_as_the_decoder_consumes_it() {
        // From a layout: not verified, so hashed here, through the
        // decoder's consume; a wrong expected digest is a mismatch.
        let (raw, gz) = gzipped(600_000);
        let file = Arc::new(tempfile::tempfile().unwrap());
        file.write_all_at(&gz, 0).unwrap();
        let open = |expected: Digest| {
            let range = FileRange::new(file.clone(), 0, gz.len() as u64);
            let mut stream = LayerStream::new(
                Blob::Unchecked(range),
                Compression::Gzip,
                expected.clone(),
                Some(expected),
                Some(gz.len() as u64),
                Digest::of(&raw),
            )
            .unwrap();
            std::io::copy(&mut stream, &mut std::io::sink()).unwrap();
            stream.finish()
        };
        assert_eq!(open(Digest::of(&gz)).unwrap().digest, Digest::of(&gz));
        assert!(matches!(
            open(Digest::of(b"other")),
            Err(SourceError::DigestMismatch { .. })
        ));
    }
}
