//! GNU sparse files in PAX form (formats 0.0, 0.1 and 1.0, the last being
//! what `tar --sparse --format=posix` writes today).
//!
//! The tar crate expands the old GNU header form (type `S`) itself; these
//! forms are plain entries whose PAX records (and, for 1.0, a map at the
//! start of the data) say where the data runs are. [`SparseReader`] turns
//! the stored runs back into the whole file, zeros in the holes, which the
//! ext4 writer turns back into holes.

use std::io::{self, Read};

use super::entry::EntryError;
use crate::ext4::FileSource;

/// Sanity limit on the number of runs: a map this large is an attack.
const MAX_RUNS: usize = 1 << 20;

fn bad(reason: impl Into<String>) -> EntryError {
    EntryError::BadSparse {
        reason: reason.into(),
    }
}

fn number(v: &[u8]) -> Result<u64, EntryError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("{:?} is not a number", String::from_utf8_lossy(v))))
}

/// What the `GNU.sparse.*` records of one entry say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PaxSparse {
    /// `GNU.sparse.major`: 1 for format 1.0 (map in the data).
    pub major: Option<u64>,
    /// `GNU.sparse.name`: the real path (the header holds a made-up one).
    pub name: Option<Vec<u8>>,
    /// `GNU.sparse.realsize` (1.0) or `GNU.sparse.size` (0.x).
    pub real_size: Option<u64>,
    /// Runs `(offset, length)` from `GNU.sparse.map` (0.1) or
    /// `GNU.sparse.offset`/`numbytes` pairs (0.0).
    pub map: Vec<(u64, u64)>,
    pending_offset: Option<u64>,
}

impl PaxSparse {
    /// Take one record whose key starts with `GNU.sparse.`.
    pub fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), EntryError> {
        match key {
            b"GNU.sparse.major" => self.major = Some(number(value)?),
            b"GNU.sparse.name" => self.name = Some(value.to_vec()),
            b"GNU.sparse.realsize" | b"GNU.sparse.size" => self.real_size = Some(number(value)?),
            b"GNU.sparse.offset" => self.pending_offset = Some(number(value)?),
            b"GNU.sparse.numbytes" => {
                let offset = self
                    .pending_offset
                    .take()
                    .ok_or_else(|| bad("GNU.sparse.numbytes without an offset"))?;
                self.map.push((offset, number(value)?));
            }
            b"GNU.sparse.map" => {
                let nums = value
                    .split(|&b| b == b',')
                    .map(number)
                    .collect::<Result<Vec<_>, _>>()?;
                if nums.len() % 2 != 0 {
                    return Err(bad("GNU.sparse.map has an odd count"));
                }
                self.map = nums.chunks(2).map(|p| (p[0], p[1])).collect();
            }
            // numblocks, minor: nothing to do.
            _ => {}
        }
        if self.map.len() > MAX_RUNS {
            return Err(bad("too many runs"));
        }
        Ok(())
    }
}

/// Read a format 1.0 map from the start of the entry's data: decimal
/// numbers, one per line (run count, then offset and length of each run),
/// padded to a 512-byte boundary.
pub fn read_map_v1(r: &mut impl Read) -> Result<Vec<(u64, u64)>, EntryError> {
    let mut nums: Vec<u64> = Vec::new();
    let mut want: Option<usize> = None;
    let mut cur: Vec<u8> = Vec::new();
    let mut block = [0u8; 512];
    while want.is_none_or(|w| nums.len() < w) {
        r.read_exact(&mut block).map_err(EntryError::Data)?;
        for &b in &block {
            if want.is_some_and(|w| nums.len() >= w) {
                break;
            }
            if b == b'\n' {
                nums.push(number(&cur)?);
                cur.clear();
                if nums.len() == 1 {
                    let runs = nums[0] as usize;
                    if runs > MAX_RUNS {
                        return Err(bad("too many runs"));
                    }
                    want = Some(1 + 2 * runs);
                }
            } else if cur.len() < 20 {
                cur.push(b);
            } else {
                return Err(bad("sparse map number too long"));
            }
        }
    }
    Ok(nums[1..].chunks(2).map(|p| (p[0], p[1])).collect())
}

/// Check runs are in order, do not overlap and lie inside the file.
pub fn check_map(map: &[(u64, u64)], size: u64) -> Result<(), EntryError> {
    let mut end = 0u64;
    for &(offset, len) in map {
        let run_end = offset
            .checked_add(len)
            .ok_or_else(|| bad("run overflows"))?;
        if offset < end || run_end > size {
            return Err(bad("runs out of order, overlapping or past the end"));
        }
        end = run_end;
    }
    Ok(())
}

/// The whole file: stored runs from `inner`, zeros between them.
pub struct SparseReader<'a, R> {
    inner: &'a mut R,
    map: &'a [(u64, u64)],
    pos: u64,
    size: u64,
}

impl<'a, R: Read> SparseReader<'a, R> {
    /// Expand `inner` (the runs back to back) to a file of `size` bytes.
    /// `map` must have passed [`check_map`].
    pub fn new(inner: &'a mut R, map: &'a [(u64, u64)], size: u64) -> Self {
        SparseReader {
            inner,
            map,
            pos: 0,
            size,
        }
    }
}

impl<R: Read> SparseReader<'_, R> {
    /// Drop the runs that end at or before the current position.
    fn skip_done(&mut self) {
        while let Some(&(offset, len)) = self.map.first() {
            if offset + len > self.pos {
                break;
            }
            self.map = &self.map[1..];
        }
    }
}

impl<R: Read> FileSource for SparseReader<'_, R> {
    fn hole_ahead(&mut self) -> u64 {
        self.skip_done();
        match self.map.first() {
            Some(&(offset, _)) => offset.saturating_sub(self.pos),
            None => self.size - self.pos,
        }
    }

    fn data_ahead(&mut self) -> u64 {
        self.skip_done();
        match self.map.first() {
            Some(&(offset, len)) if offset <= self.pos => offset + len - self.pos,
            _ => 0,
        }
    }

    fn skip_hole(&mut self, n: u64) {
        self.pos += n.min(self.hole_ahead());
    }
}

impl<R: Read> Read for SparseReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(&(offset, len)) = self.map.first() {
            if offset + len > self.pos {
                break;
            }
            self.map = &self.map[1..];
        }
        let left = self.size - self.pos;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let n = match self.map.first() {
            Some(&(offset, len)) if offset <= self.pos => {
                let n = (buf.len() as u64).min(offset + len - self.pos) as usize;
                let k = self.inner.read(&mut buf[..n])?;
                if k == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "sparse data ends before its map says",
                    ));
                }
                k
            }
            next => {
                let hole_end = next.map_or(self.size, |&(offset, _)| offset);
                let n = (buf.len() as u64).min(hole_end - self.pos) as usize;
                buf[..n].fill(0);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_map_and_expansion() {
        let mut stored = b"2\n0\n3\n10\n2\n".to_vec();
        stored.resize(512, 0);
        stored.extend_from_slice(b"abcXY");
        let mut r = &stored[..];
        let map = read_map_v1(&mut r).unwrap();
        assert_eq!(map, [(0, 3), (10, 2)]);
        check_map(&map, 14).unwrap();
        let mut out = Vec::new();
        SparseReader::new(&mut r, &map, 14)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"abc\0\0\0\0\0\0\0XY\0\0");
    }

    #[test]
    fn records_and_bad_maps() {
        let mut s = PaxSparse::default();
        s.record(b"GNU.sparse.map", b"0,5,100,1").unwrap();
        s.record(b"GNU.sparse.size", b"200").unwrap();
        assert_eq!(s.map, [(0, 5), (100, 1)]);
        let mut s0 = PaxSparse::default();
        s0.record(b"GNU.sparse.offset", b"4").unwrap();
        s0.record(b"GNU.sparse.numbytes", b"2").unwrap();
        assert_eq!(s0.map, [(4, 2)]);
        assert!(s0.record(b"GNU.sparse.numbytes", b"2").is_err());
        assert!(s0.record(b"GNU.sparse.map", b"1,2,3").is_err());
        assert!(check_map(&[(0, 5), (3, 1)], 10).is_err());
        assert!(check_map(&[(8, 5)], 10).is_err());
        let mut short = &b"1\n0\n"[..];
        assert!(read_map_v1(&mut short).is_err());
        // Data shorter than the map promises.
        let map = [(0u64, 4u64)];
        let mut data = &b"ab"[..];
        let err = SparseReader::new(&mut data, &map, 4)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
