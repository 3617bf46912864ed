//! Reading a layer's tar header by header, with every size checked before
//! anything is read into memory.
//!
//! The `tar` crate's archive reader reads PAX and GNU long-name records
//! whole whatever their size field says, splits PAX records on newlines
//! (values may hold them) and expands GNU sparse holes as zeros. This
//! reader uses the crate only to decode header fields: an extension
//! header's size is checked against [`Limits::max_header_bytes`] before its
//! data is read, PAX records are read by their length prefixes, and a GNU
//! sparse entry is returned as its map and stored runs, so the holes are
//! never materialised.

use std::io::{self, Read};

use super::entry::EntryError;
use super::limits::Limits;
use super::pax::parse_records;

const BLOCK: u64 = 512;

/// PAX records as `(key, value)` pairs, in order.
pub type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// An old-GNU (`S`) sparse entry: where its stored runs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GnuSparse {
    /// Runs `(offset, length)` in file order; the data holds them back to back.
    pub map: Vec<(u64, u64)>,
    /// The file's size, holes included.
    pub real_size: u64,
}

/// One entry's headers, decoded; its data is read with [`TarReader::data`].
#[derive(Debug)]
pub struct TarEntry {
    /// The entry's own header (not its extension headers).
    pub header: tar::Header,
    /// The path: GNU long name, else PAX `path`, else the header's.
    pub path: Vec<u8>,
    /// The link target: GNU long link, else PAX `linkpath`, else the
    /// header's.
    pub link: Option<Vec<u8>>,
    /// The PAX records of its extended header, if it had one.
    pub pax: Option<PaxRecords>,
    /// Bytes of data stored in the archive (PAX `size` applied).
    pub size: u64,
    /// For an old-GNU sparse entry, its map.
    pub gnu_sparse: Option<GnuSparse>,
}

/// Why the next entry cannot be read.
#[derive(Debug)]
pub enum TarError {
    /// The stream cannot be read (truncated, corrupt compression, a limit).
    Io(io::Error),
    /// A header is bad; `entry` is the name the bad header carries.
    Header {
        /// The name in the offending header.
        entry: Vec<u8>,
        /// What is wrong.
        error: EntryError,
    },
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        TarError::Io(e)
    }
}

/// Reads entries one after the other from an uncompressed tar stream.
pub struct TarReader<R> {
    inner: R,
    /// Data bytes of the current entry not read yet.
    data_left: u64,
    /// Padding after them.
    pad_left: u64,
    max_header_bytes: u64,
    done: bool,
}

fn bad(header: &tar::Header, error: EntryError) -> TarError {
    TarError::Header {
        entry: header.path_bytes().into_owned(),
        error,
    }
}

fn header_err(header: &tar::Header, msg: &str) -> TarError {
    bad(header, EntryError::Header(io::Error::other(msg.to_owned())))
}

/// Bytes after `size` bytes of data to the next block. Not by rounding
/// up: a size field (or PAX `size` record) may be near `u64::MAX`.
fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// Strip the one NUL GNU tar puts after a long name.
fn strip_nul(mut v: Vec<u8>) -> Vec<u8> {
    if v.last() == Some(&0) {
        v.pop();
    }
    v
}

impl<R: Read> TarReader<R> {
    /// Read entries from `inner`, with the header limit of `limits`.
    pub fn new(inner: R, limits: &Limits) -> Self {
        TarReader {
            inner,
            data_left: 0,
            pad_left: 0,
            max_header_bytes: limits.max_header_bytes,
            done: false,
        }
    }

    /// The reader entries are read from.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The current entry's data (what is left of it).
    pub fn data(&mut self) -> Data<'_, R> {
        Data { reader: self }
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            self.inner.read_exact(&mut buf[..want])?;
            n -= want as u64;
        }
        Ok(())
    }

    /// A whole block, or `None` at a clean end of stream.
    fn block(&mut self) -> io::Result<Option<[u8; BLOCK as usize]>> {
        let mut b = [0u8; BLOCK as usize];
        let mut got = 0;
        while got < b.len() {
            match self.inner.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the tar ends inside a header",
                    ));
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Some(b))
    }

    /// Read an extension header's data, `size` bytes and their padding.
    fn extension_data(&mut self, size: u64) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; size as usize];
        self.inner.read_exact(&mut v)?;
        self.skip(padding(size))?;
        Ok(v)
    }

    /// The next entry, its extension headers applied; `None` at the end.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let left = self.data_left + self.pad_left;
        self.skip(left)?;
        self.data_left = 0;
        self.pad_left = 0;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<PaxRecords> = None;
        // Extension bytes read for this entry so far.
        let mut ext_bytes = 0u64;
        loop {
            let Some(block) = self.block()? else {
                self.done = true;
                return match ext_bytes {
                    0 => Ok(None),
                    _ => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "extension headers with no entry after them",
                    )
                    .into()),
                };
            };
            if block.iter().all(|&b| b == 0) {
                // End of archive; what follows is only hashed.
                self.done = true;
                if ext_bytes > 0 {
                    return Err(
                        io::Error::other("extension headers with no entry after them").into(),
                    );
                }
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block).clone();
            let sum: u32 = block[..148]
                .iter()
                .chain(&block[156..])
                .map(|&b| u32::from(b))
                .sum::<u32>()
                + 8 * 32;
            if header.cksum().ok() != Some(sum) {
                return Err(header_err(&header, "header checksum mismatch"));
            }
            let kind = header.entry_type();
            let size = header
                .entry_size()
                .map_err(|e| bad(&header, EntryError::Header(e)))?;
            let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
            let extension = recognized
                && (kind.is_pax_local_extensions()
                    || kind.is_gnu_longname()
                    || kind.is_gnu_longlink());
            if extension {
                let limit = self.max_header_bytes;
                if size > limit.saturating_sub(ext_bytes) {
                    return Err(bad(
                        &header,
                        EntryError::HeaderTooLarge {
                            kind: char::from(kind.as_byte()),
                            bytes: size,
                            limit,
                        },
                    ));
                }
                ext_bytes += size;
                let dup = if kind.is_pax_local_extensions() {
                    pax.is_some()
                } else if kind.is_gnu_longname() {
                    long_name.is_some()
                } else {
                    long_link.is_some()
                };
                if dup {
                    return Err(header_err(&header, "two extension headers of one kind"));
                }
                let data = self.extension_data(size)?;
                if kind.is_pax_local_extensions() {
                    let records = parse_records(&data)
                        .ok_or_else(|| header_err(&header, "malformed PAX records"))?;
                    pax = Some(records);
                } else if kind.is_gnu_longname() {
                    long_name = Some(strip_nul(data));
                } else {
                    long_link = Some(strip_nul(data));
                }
                continue;
            }
            let pax_value = |key: &[u8]| {
                pax.as_ref()
                    .and_then(|r| r.iter().rev().find(|(k, _)| k == key))
                    .map(|(_, v)| v.clone())
            };
            let mut size = size;
            if let Some(v) = pax_value(b"size") {
                size = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        bad(
                            &header,
                            EntryError::Pax {
                                key: "size".into(),
                                value: String::from_utf8_lossy(&v).into_owned(),
                            },
                        )
                    })?;
            }
            let gnu_sparse = if kind.is_gnu_sparse() {
                Some(self.gnu_sparse(&header, ext_bytes)?)
            } else {
                None
            };
            let path = match long_name {
                Some(n) => n,
                None => pax_value(b"path").unwrap_or_else(|| header.path_bytes().into_owned()),
            };
            let link = match long_link {
                Some(n) => Some(n),
                None => pax_value(b"linkpath")
                    .or_else(|| header.link_name_bytes().map(|l| l.into_owned())),
            };
            self.data_left = size;
            self.pad_left = padding(size);
            return Ok(Some(TarEntry {
                header,
                path,
                link,
                pax,
                size,
                gnu_sparse,
            }));
        }
    }

    /// The map of an old-GNU sparse entry: four runs in its header, more in
    /// extension blocks after it (counted against the header limit).
    fn gnu_sparse(
        &mut self,
        header: &tar::Header,
        mut ext_bytes: u64,
    ) -> Result<GnuSparse, TarError> {
        let gnu = header
            .as_gnu()
            .ok_or_else(|| header_err(header, "sparse entry without a GNU header"))?;
        let mut map = Vec::new();
        let mut add = |run: &tar::GnuSparseHeader| -> Result<(), TarError> {
            if run.is_empty() {
                return Ok(());
            }
            let offset = run
                .offset()
                .map_err(|e| bad(header, EntryError::Header(e)))?;
            let len = run
                .length()
                .map_err(|e| bad(header, EntryError::Header(e)))?;
            map.push((offset, len));
            Ok(())
        };
        for run in &gnu.sparse {
            add(run)?;
        }
        let mut extended = gnu.is_extended();
        while extended {
            ext_bytes += BLOCK;
            if ext_bytes > self.max_header_bytes {
                return Err(bad(
                    header,
                    EntryError::HeaderTooLarge {
                        kind: 'S',
                        bytes: ext_bytes,
                        limit: self.max_header_bytes,
                    },
                ));
            }
            let block = self.block()?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "sparse map cut short")
            })?;
            let mut ext = tar::GnuExtSparseHeader::new();
            ext.as_mut_bytes().copy_from_slice(&block);
            for run in &ext.sparse {
                add(run)?;
            }
            extended = ext.is_extended();
        }
        let real_size = gnu
            .real_size()
            .map_err(|e| bad(header, EntryError::Header(e)))?;
        Ok(GnuSparse { map, real_size })
    }
}

/// The current entry's data: at most what its header says.
pub struct Data<'a, R> {
    reader: &'a mut TarReader<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (buf.len() as u64).min(self.reader.data_left) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.reader.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the tar ends inside an entry's data",
            ));
        }
        self.reader.data_left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::testimg::{TarWriter, header};

    fn first(tar: &[u8]) -> Result<Option<TarEntry>, TarError> {
        TarReader::new(tar, &Limits::default()).next_entry()
    }

    #[test]
    fn sizes_near_the_top_of_u64_are_a_clean_error() {
        // A PAX size record of u64::MAX: rounding it up to a block
        // overflowed.
        let mut t = TarWriter::new();
        t.pax(&[("size", u64::MAX.to_string().as_bytes())])
            .file("f", b"");
        let tar = t.finish();
        let mut r = TarReader::new(&tar[..], &Limits::default());
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.size, u64::MAX);
        let mut buf = Vec::new();
        assert!(r.data().read_to_end(&mut buf).is_err());
        assert!(r.next_entry().is_err());
        // Not a number.
        let mut t = TarWriter::new();
        t.pax(&[("size", b"-1")]).file("f", b"");
        assert!(matches!(
            first(&t.finish()),
            Err(TarError::Header {
                error: EntryError::Pax { .. },
                ..
            })
        ));
    }

    #[test]
    fn extension_headers_are_checked_before_reading() {
        // The header claims 2 MiB; only the header is there.
        let mut h = header(b"PaxHeaders/x", tar::EntryType::XHeader, 0o644, 2 << 20);
        h.set_cksum();
        let err = first(h.as_bytes()).unwrap_err();
        let TarError::Header { entry, error } = err else {
            panic!("not a header error");
        };
        assert_eq!(entry, b"PaxHeaders/x");
        assert!(matches!(
            error,
            EntryError::HeaderTooLarge { kind: 'x', .. }
        ));
        // Two that fit one by one but not together.
        let limits = Limits {
            max_header_bytes: 1000,
            ..Limits::default()
        };
        let mut t = TarWriter::new();
        t.pax(&[("comment", &[b'a'; 600])])
            .gnu_long(b'L', &[b'b'; 600])
            .file("f", b"");
        let tar = t.finish();
        let err = TarReader::new(&tar[..], &limits).next_entry().unwrap_err();
        assert!(matches!(
            err,
            TarError::Header {
                error: EntryError::HeaderTooLarge { kind: 'L', .. },
                ..
            }
        ));
    }

    #[test]
    fn bad_checksum_and_dangling_extensions_are_errors() {
        let mut t = TarWriter::new();
        t.file("f", b"x");
        let mut tar = t.finish();
        tar[0] ^= 1;
        assert!(matches!(first(&tar), Err(TarError::Header { .. })));
        let mut t = TarWriter::new();
        t.pax(&[("path", b"p")]);
        assert!(first(&t.finish()).is_err());
    }
}
