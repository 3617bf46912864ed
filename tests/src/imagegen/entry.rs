//! One tar entry of a generated layer: its kind, content and metadata, and
//! how it is written (PAX records, GNU long names or a ustar prefix).

use std::io::{self, Read, Write};

use sha2::Digest;

use super::hash_writer;
use crate::tarw::{MAX_OCTAL7, MAX_OCTAL11, RawHeader, TarWriter};

/// The default mtime of generated entries (2020-09-13).
pub const DEFAULT_MTIME: i64 = 1_600_000_000;

/// A regular file's content.
#[derive(Clone, Debug)]
pub enum Data {
    /// These bytes.
    Bytes(Vec<u8>),
    /// Runs of (zero bytes, then these bytes), in order; the zeros are
    /// streamed, never held whole.
    Sparse(Vec<(u64, Vec<u8>)>),
}

impl Data {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Sparse(runs) => runs.iter().map(|(z, d)| z + d.len() as u64).sum(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// SHA-256 (hex) of the content, streamed.
    pub fn sha256(&self) -> String {
        let mut h = hash_writer(io::sink(), None);
        io::copy(&mut self.reader(), &mut h).expect("hash in memory");
        hex::encode(h.hash.finalize())
    }

    fn reader(&self) -> Box<dyn Read + '_> {
        match self {
            Data::Bytes(b) => Box::new(&b[..]),
            Data::Sparse(runs) => Box::new(RunsReader {
                runs,
                index: 0,
                offset: 0,
            }),
        }
    }
}

/// Reads runs of (zeros, data) without materializing the zeros.
struct RunsReader<'a> {
    runs: &'a [(u64, Vec<u8>)],
    index: usize,
    /// Position inside the current run (zeros first, then data).
    offset: u64,
}

impl Read for RunsReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some((zeros, data)) = self.runs.get(self.index) {
            let run_len = zeros + data.len() as u64;
            if self.offset >= run_len {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = if self.offset < *zeros {
                let n = buf.len().min((zeros - self.offset) as usize);
                buf[..n].fill(0);
                n
            } else {
                let start = (self.offset - zeros) as usize;
                let n = buf.len().min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                n
            };
            self.offset += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

/// What a tar entry is.
#[derive(Clone, Debug)]
pub enum Kind {
    /// Regular file.
    File(Data),
    /// Directory.
    Dir,
    /// Symbolic link to this target.
    Symlink(Vec<u8>),
    /// Hard link to this path (as named in the archive).
    Hardlink(Vec<u8>),
    /// Character device.
    CharDev(u32, u32),
    /// Block device.
    BlockDev(u32, u32),
    /// Named pipe.
    Fifo,
}

/// How names longer than 100 bytes are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongNames {
    /// PAX `path` / `linkpath` records.
    Pax,
    /// GNU `././@LongLink` records of type `L` / `K`.
    Gnu,
    /// The ustar `prefix` field (path split at a `/`, prefix ≤ 155 and
    /// name ≤ 100 bytes); link names still use PAX.
    UstarPrefix,
}

/// One tar entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path exactly as written to the archive (a `/` is appended for dirs).
    pub path: Vec<u8>,
    /// Type and type-specific data.
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    /// Owner; above 2^21-1 it goes into a PAX record.
    pub uid: u32,
    /// Group; above 2^21-1 it goes into a PAX record.
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds; non-zero values go into a PAX `mtime` record.
    pub mtime_nanos: u32,
    /// Extended attributes (PAX `SCHILY.xattr.NAME`).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Extension used for long names.
    pub long_names: LongNames,
}

impl Entry {
    fn new(path: impl AsRef<[u8]>, kind: Kind, mode: u32) -> Self {
        Entry {
            path: path.as_ref().to_vec(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: DEFAULT_MTIME,
            mtime_nanos: 0,
            xattrs: Vec::new(),
            long_names: LongNames::Pax,
        }
    }
    /// A regular file (mode 0644).
    pub fn file(path: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> Self {
        Self::new(
            path,
            Kind::File(Data::Bytes(content.as_ref().to_vec())),
            0o644,
        )
    }
    /// A file of `zeros` zero bytes followed by `tail`.
    pub fn sparse(path: impl AsRef<[u8]>, zeros: u64, tail: impl AsRef<[u8]>) -> Self {
        Self::sparse_runs(path, vec![(zeros, tail.as_ref().to_vec())])
    }
    /// A file of runs of (zero bytes, then data).
    pub fn sparse_runs(path: impl AsRef<[u8]>, runs: Vec<(u64, Vec<u8>)>) -> Self {
        Self::new(path, Kind::File(Data::Sparse(runs)), 0o644)
    }
    /// A directory (mode 0755).
    pub fn dir(path: impl AsRef<[u8]>) -> Self {
        Self::new(path, Kind::Dir, 0o755)
    }
    /// A symbolic link (mode 0777).
    pub fn symlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Self::new(path, Kind::Symlink(target.as_ref().to_vec()), 0o777)
    }
    /// A hard link to `target`.
    pub fn hardlink(path: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        Self::new(path, Kind::Hardlink(target.as_ref().to_vec()), 0o644)
    }
    /// A character device.
    pub fn char_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        Self::new(path, Kind::CharDev(major, minor), 0o666)
    }
    /// A block device.
    pub fn block_dev(path: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        Self::new(path, Kind::BlockDev(major, minor), 0o660)
    }
    /// A FIFO.
    pub fn fifo(path: impl AsRef<[u8]>) -> Self {
        Self::new(path, Kind::Fifo, 0o644)
    }
    /// The whiteout that deletes `path` (`DIR/.wh.NAME`, an empty file).
    pub fn whiteout(path: &str) -> Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let p = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        Self::file(p, b"")
    }
    /// The opaque marker of directory `dir` (`DIR/.wh..wh..opq`).
    pub fn opaque(dir: &str) -> Self {
        Self::file(format!("{dir}/.wh..wh..opq"), b"")
    }
    /// Sets the permission bits.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }
    /// Sets owner and group.
    pub fn owner(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    /// Sets the mtime.
    pub fn mtime(mut self, secs: i64, nanos: u32) -> Self {
        self.mtime = secs;
        self.mtime_nanos = nanos;
        self
    }
    /// Adds an extended attribute.
    pub fn xattr(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }
    /// Uses the ustar prefix field for a long path.
    pub fn ustar_prefix(mut self) -> Self {
        self.long_names = LongNames::UstarPrefix;
        self
    }
    /// Uses GNU records for long names.
    pub fn gnu_long_names(mut self) -> Self {
        self.long_names = LongNames::Gnu;
        self
    }

    /// Writes this entry (with any extension headers) to `w`.
    pub fn write_to<W: Write>(&self, w: &mut TarWriter<W>) -> io::Result<()> {
        let mut path = self.path.clone();
        if matches!(self.kind, Kind::Dir) && !path.ends_with(b"/") {
            path.push(b'/');
        }
        let (typeflag, link, size): (u8, &[u8], u64) = match &self.kind {
            Kind::File(d) => (b'0', b"", d.len()),
            Kind::Dir => (b'5', b"", 0),
            Kind::Symlink(t) => (b'2', t, 0),
            Kind::Hardlink(t) => (b'1', t, 0),
            Kind::CharDev(..) => (b'3', b"", 0),
            Kind::BlockDev(..) => (b'4', b"", 0),
            Kind::Fifo => (b'6', b"", 0),
        };
        let (devmajor, devminor) = match self.kind {
            Kind::CharDev(a, b) | Kind::BlockDev(a, b) => (a, b),
            _ => (0, 0),
        };
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let gnu = self.long_names == LongNames::Gnu;
        let mut name = path.clone();
        let mut prefix = Vec::new();
        if path.len() > 100 && self.long_names == LongNames::UstarPrefix {
            let split = (0..path.len())
                .rev()
                .find(|&i| {
                    path[i] == b'/' && i <= 155 && path.len() - i - 1 <= 100 && i + 1 < path.len()
                })
                .expect("path cannot be split into ustar prefix and name");
            prefix = path[..split].to_vec();
            name = path[split + 1..].to_vec();
        } else if path.len() > 100 {
            if gnu {
                w.gnu_long(b'L', &path)?;
            } else {
                pax.push(("path".into(), path.clone()));
            }
            name.truncate(100);
        }
        let mut linkname = link.to_vec();
        if link.len() > 100 {
            if gnu {
                w.gnu_long(b'K', link)?;
            } else {
                pax.push(("linkpath".into(), link.to_vec()));
            }
            linkname.truncate(100);
        }
        let uid = u64::from(self.uid);
        let gid = u64::from(self.gid);
        if uid > MAX_OCTAL7 {
            pax.push(("uid".into(), uid.to_string().into_bytes()));
        }
        if gid > MAX_OCTAL7 {
            pax.push(("gid".into(), gid.to_string().into_bytes()));
        }
        if self.mtime_nanos != 0 {
            let v = format!("{}.{:09}", self.mtime, self.mtime_nanos);
            pax.push(("mtime".into(), v.into_bytes()));
        }
        assert!(size <= MAX_OCTAL11, "sizes above 8 GiB are not supported");
        for (k, v) in &self.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !pax.is_empty() {
            w.pax(&pax)?;
        }
        let header = RawHeader {
            name,
            mode: self.mode,
            uid: if uid > MAX_OCTAL7 { 0 } else { uid },
            gid: if gid > MAX_OCTAL7 { 0 } else { gid },
            size,
            mtime: u64::try_from(self.mtime).expect("negative mtimes are not supported"),
            typeflag,
            linkname,
            devmajor,
            devminor,
            gnu,
            prefix,
        };
        match &self.kind {
            Kind::File(d) => w.entry(&header, d.reader()),
            _ => w.entry(&header, io::empty()),
        }
    }
}
