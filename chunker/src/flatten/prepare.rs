//! Reading a layer's entries and writing their data: the half of applying
//! a layer that needs no tree.
//!
//! Each entry is read, checked as far as it can be without the layers
//! below (its PAX records, its path as written) and, when it puts a regular
//! file, its data is written ([`DataOut`]). What is left, placing it in
//! the tree ([`super::apply`]), may come at once (a layer read in order)
//! or later (a detached layer, read on another thread while the layers
//! below it are still read: [`super::detached`]). Both ways run the same
//! checks in the same order, so a bad entry gives the same error.

use std::io::{self, Read};

use super::LayerError;
use super::entry::{self, Change, Components, EntryError, PaxAttrs};
use super::limits::{Limits, MAX_FILE_SIZE};
use super::sparse::{self, SparseReader};
use super::tarstream::{TarEntry, TarError, TarReader};
use crate::ext4::DataOut;
use crate::oci::{Digest, LimitExceeded};
use crate::tree::{FileData, Metadata};

/// One entry read, and its data written.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Its headers.
    pub entry: TarEntry,
    /// Its name for errors.
    pub name: String,
    /// Bytes of the layer read once its headers were (the data not yet).
    pub header_end: u64,
    /// Bytes of the layer read once its data was.
    pub data_end: u64,
    /// What there is to apply: `None` for a PAX global header (counted as
    /// read, never applied).
    pub apply: Option<ToApply>,
}

/// An entry as far as it is known without the tree.
#[derive(Debug)]
pub(crate) struct ToApply {
    /// Its attributes and path, or why they are bad.
    pub parsed: Result<Parsed, EntryError>,
    /// A regular file's data: where it went, or why it could not be
    /// written. `None` when nothing was to be written.
    pub data: Option<Result<FileData, EntryError>>,
}

/// An entry's checks that need no tree, passed.
#[derive(Debug)]
pub(crate) struct Parsed {
    /// Its metadata (applying checks it after the path).
    pub meta: Result<Metadata, EntryError>,
    /// The path as written, normalized.
    pub path: Components,
    /// The entry type (a pre-POSIX directory's made a directory).
    pub kind: tar::EntryType,
}

/// An entry's name for an error: lossy UTF-8, at most 256 bytes of it.
pub(crate) fn entry_name(path: &[u8]) -> String {
    const SHOWN: usize = 256;
    if path.len() <= SHOWN {
        return String::from_utf8_lossy(path).into_owned();
    }
    format!(
        "{}... ({} bytes)",
        String::from_utf8_lossy(&path[..SHOWN]),
        path.len()
    )
}

/// The checks of `entry` that need no tree, in the order applying makes
/// them, and its PAX attributes (for its data).
fn parse(entry: &TarEntry, limits: &Limits) -> Result<(Parsed, PaxAttrs), EntryError> {
    let pax = match &entry.pax {
        Some(pairs) => entry::pax_attrs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?,
        None => PaxAttrs::default(),
    };
    // A PAX sparse file's header holds a made-up name; the real one is in
    // its records.
    let raw_path = match pax.sparse.as_ref().and_then(|s| s.name.as_ref()) {
        Some(name) => name,
        None => &entry.path,
    };
    // Checked before anything else is done with the path.
    if raw_path.len() > limits.max_path_bytes {
        return Err(EntryError::PathTooLong {
            bytes: raw_path.len(),
            limit: limits.max_path_bytes,
        });
    }
    let path = entry::normalize_path(raw_path)?;
    entry::check_path(raw_path.len(), &path, limits)?;
    let mut kind = entry.header.entry_type();
    if kind == tar::EntryType::Regular && raw_path.ends_with(b"/") && entry.size == 0 {
        // Pre-POSIX tars mark directories only by the trailing slash.
        kind = tar::EntryType::Directory;
    }
    let meta = entry::metadata(&entry.header, &pax);
    Ok((Parsed { meta, path, kind }, pax))
}

/// Whether `kind` is a regular file, whose data is in the layer.
pub(crate) fn is_file(kind: tar::EntryType) -> bool {
    matches!(
        kind,
        tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
    )
}

/// Whether applying the entry would write its data: a file put at a path
/// (not the root), whose metadata is good. Applying checks the same before
/// it takes the data.
fn writes_data(p: &Parsed) -> bool {
    is_file(p.kind)
        && !p.path.is_empty()
        && matches!(entry::classify(&p.path), Ok(Change::Put))
        && p.meta.is_ok()
}

/// What there is to apply of `entry` (`None` for a PAX global header),
/// its data read from `tar` into `out` when applying it would.
fn prepare_entry<R: Read>(
    tar: &mut TarReader<R>,
    entry: &TarEntry,
    limits: &Limits,
    out: &mut dyn DataOut,
) -> Option<ToApply> {
    if entry.header.entry_type().is_pax_global_extensions() {
        // Global defaults (often just a comment); OCI layers do not rely
        // on them and the spec leaves them to the implementation. Their
        // data is skipped, never held.
        return None;
    }
    Some(match parse(entry, limits) {
        Ok((p, pax)) => {
            let data = writes_data(&p).then(|| write_data(tar, entry, &pax, out));
            ToApply {
                parsed: Ok(p),
                data,
            }
        }
        Err(e) => ToApply {
            parsed: Err(e),
            data: None,
        },
    })
}

/// Stream a regular file's data into `out`. Sparse files (PAX or old GNU)
/// are expanded with their holes skipped, never read.
fn write_data<R: Read>(
    tar: &mut TarReader<R>,
    entry: &TarEntry,
    pax: &PaxAttrs,
    out: &mut dyn DataOut,
) -> Result<FileData, EntryError> {
    let data_err = |e: io::Error| match LimitExceeded::find(&e) {
        Some(limit) => EntryError::TooLarge(limit.clone()),
        None => EntryError::Data(e),
    };
    let mut data = tar.data();
    let (map, size) = match (&pax.sparse, &entry.gnu_sparse) {
        (None, None) => {
            return out.write_file(&mut data, entry.size).map_err(data_err);
        }
        (Some(sp), _) => {
            let size = sp.real_size.ok_or_else(|| EntryError::BadSparse {
                reason: "no real size".into(),
            })?;
            check_sparse_size(size)?;
            let map = if sp.major == Some(1) {
                sparse::read_map_v1(&mut data).map_err(|e| match e {
                    EntryError::Data(io) => data_err(io),
                    other => other,
                })?
            } else {
                sp.map.clone()
            };
            (map, size)
        }
        (None, Some(gnu)) => {
            check_sparse_size(gnu.real_size)?;
            let stored: u64 = gnu.map.iter().map(|&(_, len)| len).sum();
            if stored != entry.size {
                return Err(EntryError::BadSparse {
                    reason: format!("the map holds {stored} bytes, the entry {}", entry.size),
                });
            }
            (gnu.map.clone(), gnu.real_size)
        }
    };
    sparse::check_map(&map, size)?;
    out.write_sparse_file(&mut SparseReader::new(&mut data, &map, size), size)
        .map_err(data_err)
}

fn check_sparse_size(size: u64) -> Result<(), EntryError> {
    if size > MAX_FILE_SIZE {
        return Err(EntryError::SparseTooLarge {
            size,
            limit: MAX_FILE_SIZE,
        });
    }
    Ok(())
}

/// The error for a tar that cannot be read on, after the entry `last`.
pub(crate) fn tar_error(layer: &Digest, err: TarError, last: Option<String>) -> LayerError {
    match err {
        TarError::Header { entry, error } => LayerError::Entry {
            layer: layer.clone(),
            entry: entry_name(&entry),
            source: error,
        },
        TarError::Io(source) => match (LimitExceeded::find(&source), last) {
            // A limit reached while skipping the last entry's data is its.
            (Some(limit), Some(entry)) => LayerError::Entry {
                layer: layer.clone(),
                entry,
                source: EntryError::TooLarge(limit.clone()),
            },
            _ => LayerError::Read {
                layer: layer.clone(),
                source,
            },
        },
    }
}

/// Read every entry of the layer tar from `reader`, writing file data into
/// `out`, and hand each to `each` in order. `pos` says how many bytes the
/// reader has given. Stops at the first error, of the tar or of `each`;
/// an entry whose checks failed is still handed on (applying it gives the
/// error). Returns how many entries were read (PAX global headers not
/// counted).
pub(crate) fn prepare_layer<R: Read>(
    reader: R,
    layer: &Digest,
    limits: &Limits,
    out: &mut dyn DataOut,
    pos: impl Fn(&R) -> u64,
    mut each: impl FnMut(Prepared) -> Result<(), LayerError>,
) -> Result<u64, LayerError> {
    let mut tar = TarReader::new(reader, limits);
    let mut count = 0;
    // The last entry read: a limit reached while skipping its data is its.
    let mut last: Option<String> = None;
    loop {
        let entry = match tar.next_entry() {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(count),
            Err(err) => return Err(tar_error(layer, err, last)),
        };
        let header_end = pos(tar.get_ref());
        let apply = prepare_entry(&mut tar, &entry, limits, out);
        let prepared = Prepared {
            name: entry_name(&entry.path),
            entry,
            header_end,
            data_end: pos(tar.get_ref()),
            apply,
        };
        last = Some(prepared.name.clone());
        let failed = match &prepared.apply {
            None => false,
            Some(a) => {
                count += 1;
                a.parsed.is_err() || matches!(a.data, Some(Err(_)))
            }
        };
        each(prepared)?;
        if failed {
            // Applying it failed with this entry's error (or an earlier
            // one); nothing after it is read, as when applied at once.
            return Err(LayerError::Read {
                layer: layer.clone(),
                source: io::Error::other(format!("entry {last:?} was not applied")),
            });
        }
    }
}
