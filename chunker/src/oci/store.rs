//! Reading the files of an image: from a layout directory, or from the
//! members of a tar archive without extracting it.
//!
//! An archive is indexed once (member name to byte range); a blob is then a
//! [`FileRange`] reading straight from the archive file, so an archive of
//! any size costs neither disk space nor memory beyond its member list.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::SourceError;
use super::arrival::{Ahead, Arrival, Arriving};
use super::digest::Digest;

/// A `Read` over a byte range of a shared file, using positioned reads so
/// several ranges of one archive can be open at once. A range over a blob
/// still being downloaded reads what has arrived (`arrival::Arriving`).
#[derive(Debug)]
pub struct FileRange {
    file: Arc<File>,
    pos: u64,
    end: u64,
    arriving: Option<Arriving>,
    _on_drop: Option<OnDrop>,
}

/// Punches `len` bytes at `offset` out of a file that will not be read
/// there again, so its pages (and blocks) go back now for what is written
/// next to reuse. Only an optimisation: a file system without holes keeps
/// them.
pub(crate) fn free_pages(file: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fallocate(
        file,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        offset,
        len,
    );
}

/// Where [`FileRange::fill`] put the next bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// They are in memory: [`FileRange::in_memory`].
    InMemory,
    /// This many were read into the buffer.
    Read(usize),
}

/// What to do once a [`FileRange`] has been read and dropped: the
/// registry spool gives the layer's share of its budget back.
pub(crate) struct OnDrop(Option<Box<dyn FnOnce() + Send + Sync>>);

impl OnDrop {
    pub(crate) fn new(f: impl FnOnce() + Send + Sync + 'static) -> Self {
        OnDrop(Some(Box::new(f)))
    }
}

impl Drop for OnDrop {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl std::fmt::Debug for OnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnDrop")
    }
}

impl FileRange {
    /// The bytes `start..start + len` of `file`.
    pub fn new(file: Arc<File>, start: u64, len: u64) -> Self {
        FileRange {
            file,
            pos: start,
            end: start + len,
            arriving: None,
            _on_drop: None,
        }
    }

    /// This range, a whole blob from its start, read as its download
    /// arrives, in `file` or handed over in memory: reads wait for its
    /// bytes, and its end for the download to end well.
    pub(crate) fn arriving(mut self, arrival: Arc<Arrival>) -> Self {
        debug_assert_eq!(self.pos, 0, "an arriving blob is read from its start");
        self.arriving = Some(Arriving::new(arrival));
        self
    }

    /// This range, running `on_drop` when it is dropped.
    pub(crate) fn on_drop(mut self, on_drop: OnDrop) -> Self {
        self._on_drop = Some(on_drop);
        self
    }

    /// The next bytes, waiting for them to arrive: left in memory, to be
    /// read in place ([`FileRange::in_memory`]), when a download handed
    /// them over; otherwise read into `buf` (0 at the end).
    pub(crate) fn fill(&mut self, buf: &mut [u8]) -> io::Result<Fill> {
        let Some(a) = &mut self.arriving else {
            return self.read(buf).map(Fill::Read);
        };
        match a.ready(&self.file, self.pos, self.end)? {
            Ahead::InMemory => Ok(Fill::InMemory),
            Ahead::InFile(in_file) => a
                .read_file(&self.file, &mut self.pos, in_file, buf)
                .map(Fill::Read),
            Ahead::End => Ok(Fill::Read(0)),
        }
    }

    /// The bytes [`FileRange::fill`] left in memory.
    pub(crate) fn in_memory(&self) -> &[u8] {
        self.arriving.as_ref().map_or(&[], Arriving::held)
    }

    /// Moves past `n` of the [`FileRange::in_memory`] bytes.
    pub(crate) fn consume_in_memory(&mut self, n: usize) {
        if let Some(a) = &mut self.arriving {
            self.pos += a.consume_held(n) as u64;
        }
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> u64 {
        self.end - self.pos
    }

    /// Up to `buf.len()` bytes from the start of the range, without moving.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.remaining()) as usize;
        if let Some(a) = &self.arriving {
            return a.peek(&self.file, self.pos, &mut buf[..n]);
        }
        let mut got = 0;
        while got < n {
            match self.file.read_at(&mut buf[got..n], self.pos + got as u64)? {
                0 => break,
                k => got += k,
            }
        }
        Ok(got)
    }
}

impl Read for FileRange {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(a) = &mut self.arriving {
            // At the end this waits for the download's check, so a range
            // never ends on bytes that did not match.
            return a.read(&self.file, &mut self.pos, self.end, buf);
        }
        let n = (buf.len() as u64).min(self.remaining()) as usize;
        if n == 0 {
            return Ok(0);
        }
        let k = self.file.read_at(&mut buf[..n], self.pos)?;
        if k == 0 {
            // The file is shorter than the range the archive promised.
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive member ends before its recorded size",
            ));
        }
        self.pos += k as u64;
        Ok(k)
    }
}

/// A blob the registry's spool hashes as it arrives, so reading it need
/// not hash it again: its bytes can be read as they come, and its end is
/// reached only once they all matched `digest` (a mismatch is a read
/// error instead). Only the spool makes one.
#[derive(Debug)]
pub struct VerifiedBlob {
    range: FileRange,
    digest: Digest,
}

impl VerifiedBlob {
    /// For bytes checked against `digest` (before `range` ends), and
    /// nothing else.
    pub(crate) fn checked(range: FileRange, digest: Digest) -> Self {
        VerifiedBlob { range, digest }
    }

    /// The digest its bytes were checked against.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

/// A layer's stored bytes: to be hashed as they are read, or already
/// verified ([`VerifiedBlob`]).
#[derive(Debug)]
pub enum Blob {
    /// Not checked yet: the reader hashes them for the blob digest.
    Unchecked(FileRange),
    /// Checked against their digest as they arrive, before they end.
    Verified(VerifiedBlob),
}

impl Blob {
    /// Up to `buf.len()` bytes from the start, without moving.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Blob::Unchecked(r) => r.peek(buf),
            Blob::Verified(v) => v.range.peek(buf),
        }
    }

    /// The bytes, checked or not, and the digest they were checked
    /// against if they were.
    pub fn into_parts(self) -> (FileRange, Option<Digest>) {
        match self {
            Blob::Unchecked(r) => (r, None),
            Blob::Verified(v) => (v.range, Some(v.digest)),
        }
    }
}

/// Where the files of an image live.
#[derive(Debug)]
pub enum Store {
    /// An OCI layout directory.
    Dir(PathBuf),
    /// A registry: metadata fetched on demand, layers from the spool.
    Registry(Arc<super::registry::Pull>),
    /// A tar archive, indexed.
    Tar {
        /// The archive, for messages.
        path: PathBuf,
        /// The archive, open.
        file: Arc<File>,
        /// Normalized member name to (data offset, size).
        members: BTreeMap<String, (u64, u64)>,
    },
}

/// Member names as `docker save` and friends write them (`./x`, `x`) all
/// become `x`; `..` is resolved so symlinked layers can be followed.
fn normalize_member(name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

impl Store {
    /// Index the regular members of the tar at `path`. Symbolic and hard
    /// links between members (`docker save` links repeated layers) resolve
    /// to their targets.
    pub fn open_tar(path: &Path) -> Result<Store, SourceError> {
        let err = |source| SourceError::Archive {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|source| SourceError::Open {
            path: path.to_owned(),
            source,
        })?;
        let mut members = BTreeMap::new();
        let mut links = Vec::new();
        {
            let mut archive = tar::Archive::new(&file);
            for entry in archive.entries_with_seek().map_err(err)? {
                let entry = entry.map_err(err)?;
                let name = normalize_member(&String::from_utf8_lossy(&entry.path_bytes()));
                let kind = entry.header().entry_type();
                if kind.is_file() || kind.is_contiguous() {
                    members.insert(name, (entry.raw_file_position(), entry.size()));
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let target = entry.link_name_bytes().unwrap_or_default();
                    let target = String::from_utf8_lossy(&target).into_owned();
                    // A symlink is relative to its own directory, a hard
                    // link to the archive root.
                    let target = if kind.is_symlink() && !target.starts_with('/') {
                        let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                        normalize_member(&format!("{dir}/{target}"))
                    } else {
                        normalize_member(&target)
                    };
                    links.push((name, target));
                }
                // Directories and anything else are not needed to find blobs.
            }
        }
        // Links may point at links; a few rounds settle any sane archive.
        for _ in 0..8 {
            for (name, target) in &links {
                if let Some(&range) = members.get(target) {
                    members.entry(name.clone()).or_insert(range);
                }
            }
        }
        Ok(Store::Tar {
            path: path.to_owned(),
            file: Arc::new(file),
            members,
        })
    }

    /// Open the file at `rel` (relative to the layout root or archive root),
    /// or `None` when there is no such file.
    pub fn open_path(&self, rel: &str) -> Result<Option<FileRange>, SourceError> {
        match self {
            Store::Dir(dir) => {
                let path = dir.join(rel);
                match File::open(&path) {
                    Ok(file) => {
                        let len = file
                            .metadata()
                            .map_err(|source| SourceError::Open {
                                path: path.clone(),
                                source,
                            })?
                            .len();
                        Ok(Some(FileRange::new(Arc::new(file), 0, len)))
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(SourceError::Open { path, source }),
                }
            }
            Store::Tar { file, members, .. } => Ok(members
                .get(&normalize_member(rel))
                .map(|&(start, len)| FileRange::new(file.clone(), start, len))),
            // A registry has no files by path, only blobs.
            Store::Registry(_) => Ok(None),
        }
    }

    /// Open the blob named `digest` under `blobs/sha256/`; from a
    /// registry, the layer blob its spool is downloading and verifying.
    pub fn open_blob(&self, digest: &Digest) -> Result<Blob, SourceError> {
        if let Store::Registry(pull) = self {
            return Ok(Blob::Verified(pull.layer(digest)?));
        }
        self.open_path(&blob_path(digest))?
            .map(Blob::Unchecked)
            .ok_or_else(|| SourceError::MissingBlob {
                digest: digest.clone(),
                location: self.location(),
            })
    }

    /// The directory or archive, for messages.
    pub fn location(&self) -> PathBuf {
        match self {
            Store::Dir(dir) => dir.clone(),
            Store::Tar { path, .. } => path.clone(),
            Store::Registry(pull) => pull.location(),
        }
    }
}

/// Where a blob lives inside a layout.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_members_are_ranges_and_links_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "./dir/one/layer.tar", &b"hello"[..])
            .unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "dir/two/layer.tar", "../one/layer.tar")
            .unwrap();
        b.into_inner().unwrap();

        let store = Store::open_tar(&path).unwrap();
        for name in ["dir/one/layer.tar", "./dir/two/layer.tar"] {
            let mut s = String::new();
            store
                .open_path(name)
                .unwrap()
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
            assert_eq!(s, "hello");
        }
        assert!(store.open_path("dir/three").unwrap().is_none());
        let missing = store.open_blob(&Digest::of(b"x")).unwrap_err();
        assert!(matches!(missing, SourceError::MissingBlob { .. }));
        assert!(missing.to_string().contains(Digest::of(b"x").as_str()));
    }

    #[test]
    fn short_file_is_unexpected_eof() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let mut r = FileRange::new(Arc::new(File::open(&path).unwrap()), 1, 5);
        let mut peek = [0; 8];
        assert_eq!(r.peek(&mut peek).unwrap(), 2);
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
