//! Content digests (`sha256:<hex>`) and a reader that hashes what passes
//! through it.
//!
//! Every blob of an image is named by its digest, so checking a blob is
//! hashing its bytes as they stream by and comparing at the end: nothing is
//! read twice and nothing is held in memory.

use std::fmt;
use std::io::{self, BufRead, Read};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A `sha256:<64 lowercase hex>` content digest, the only algorithm images
/// use in practice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

/// A string that is not a digest we can check.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a sha256 digest (sha256:<64 hex digits>)")]
pub struct BadDigest(pub String);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest::from_hash(Sha256::digest(bytes).as_slice())
    }

    pub(crate) fn from_hash(hash: &[u8]) -> Self {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    /// The hex part, as used in blob file names.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The whole digest, `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digest whose hex part is `hex`, if it is well formed.
    pub fn from_hex(hex: &str) -> Option<Self> {
        format!("sha256:{hex}").parse().ok()
    }
}

impl FromStr for Digest {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, BadDigest> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| BadDigest(s.into()))?;
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok {
            Ok(Digest(s.to_owned()))
        } else {
            Err(BadDigest(s.into()))
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A reader that hashes and counts every byte read through it.
#[derive(Debug)]
pub struct HashReader<R> {
    inner: R,
    hash: Option<Sha256>,
    count: u64,
}

impl<R: Read> HashReader<R> {
    /// Hash what is read from `inner`.
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hash: Some(Sha256::new()),
            count: 0,
        }
    }

    /// Only count what is read from `inner` (when another reader already
    /// hashes the same bytes); [`HashReader::finish`] then has no digest.
    pub fn counting(inner: R) -> Self {
        HashReader {
            inner,
            hash: None,
            count: 0,
        }
    }

    /// Stops hashing, before anything was read, for a caller that hashes
    /// the same bytes elsewhere; whether it did (not when only counting
    /// already, nor once bytes were read, whose hash would be lost).
    pub fn stop_hashing(&mut self) -> bool {
        self.count == 0 && self.hash.take().is_some()
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Read the rest of the stream so the digest covers all of it.
    pub fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    /// The inner reader, the digest of the bytes read so far (`None` when
    /// only counting) and their count.
    pub fn finish(self) -> (R, Option<Digest>, u64) {
        let digest = self
            .hash
            .map(|h| Digest::from_hash(h.finalize().as_slice()));
        (self.inner, digest, self.count)
    }
}

/// For a decoder that takes its input in place: what it consumes is
/// hashed (and counted) then, and what it leaves is not.
impl<R: BufRead> BufRead for HashReader<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        if let Some(h) = &mut self.hash {
            // The bytes `fill_buf` showed, still there: asking again reads
            // nothing. Should it fail, the digest is wrong and the blob's
            // check fails, as it must, since these bytes went unhashed.
            if let Ok(bytes) = self.inner.fill_buf() {
                h.update(&bytes[..n.min(bytes.len())]);
            }
        }
        self.count += n as u64;
        self.inner.consume(n);
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hash {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let d = Digest::of(b"abc");
        assert_eq!(
            d.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        assert_eq!(Digest::from_hex(d.hex()), Some(d));
        for bad in [
            "sha512:ab",
            "sha256:ABC",
            "ba7816bf",
            "sha256:../../etc/passwd",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hash_reader_covers_drained_bytes() {
        let mut r = HashReader::new(&b"hello world"[..]);
        let mut five = [0; 5];
        r.read_exact(&mut five).unwrap();
        assert_eq!(r.drain().unwrap(), 6);
        let (_, d, n) = r.finish();
        assert_eq!(n, 11);
        assert_eq!(d, Some(Digest::of(b"hello world")));
        let mut c = HashReader::counting(&b"abc"[..]);
        assert_eq!(c.drain().unwrap(), 3);
        assert_eq!(c.finish().1, None);
    }

    #[test]
    fn hash_reader_hashes_what_is_consumed_in_place() {
        let mut r = HashReader::new(&b"hello world"[..]);
        assert_eq!(r.fill_buf().unwrap(), b"hello world");
        r.consume(6);
        // Shown again but not consumed: not hashed twice.
        assert_eq!(r.fill_buf().unwrap(), b"world");
        let mut rest = [0; 5];
        r.read_exact(&mut rest).unwrap();
        let (_, d, n) = r.finish();
        assert_eq!(n, 11);
        assert_eq!(d, Some(Digest::of(b"hello world")));
    }
}
