//! Reassembling the plaintext image into a sparse file.
//!
//! The output is plaintext: it is written 0600 through a temporary file
//! with a random name, created `O_EXCL` beside the output (so nothing
//! planted at a predictable name is followed), then renamed into place.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cachetiers::{ChunkStore, StoreError};
use manifest::{ChunkEntry, ChunkId, ChunkIndex, ConvergentError, Manifest, decrypt_chunk_owned};

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportReport {
    /// Image size in bytes.
    pub size: u64,
    /// Chunks fetched and written.
    pub chunks: u64,
    /// Holes left unwritten.
    pub holes: u64,
}

/// Errors from an export; the output is never left half-written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A chunk is not in the store.
    #[error("chunk {index} ({id}) is missing from the store")]
    Missing {
        /// Its position.
        index: ChunkIndex,
        /// Its id.
        id: ChunkId,
    },
    /// The store failed or holds a corrupt object.
    #[error("reading chunk {index} ({id})")]
    Store {
        /// Its position.
        index: ChunkIndex,
        /// Its id.
        id: ChunkId,
        /// The store's error (boxed: it is large and errors are rare).
        #[source]
        source: Box<StoreError>,
    },
    /// The object does not decrypt with the manifest's key.
    #[error("decrypting chunk {index}")]
    Decrypt {
        /// Its position.
        index: ChunkIndex,
        /// The cause.
        #[source]
        source: ConvergentError,
    },
    /// Writing the output failed.
    #[error("writing {path}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Write the plaintext image of `manifest` to `output`, 0600 (through a
/// temporary file renamed into place when complete; see the module docs).
/// Holes stay sparse.
pub fn export(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    output: &Path,
) -> Result<ExportReport, ExportError> {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(0o600))
        .tempfile_in(parent)
        .map_err(|source| ExportError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    // On an error the temporary file is removed when `tmp` drops.
    let report = write_all(store, manifest, tmp.as_file(), tmp.path())?;
    tmp.persist(output).map_err(|e| ExportError::Io {
        path: output.to_path_buf(),
        source: e.error,
    })?;
    Ok(report)
}

fn write_all(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    file: &File,
    path: &Path,
) -> Result<ExportReport, ExportError> {
    let io_err = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut chunks = 0;
    for (i, entry) in manifest.chunks.iter().enumerate() {
        let index = ChunkIndex(i as u64);
        let ChunkEntry::Present { id, key } = entry else {
            continue;
        };
        // The caller's span names the image; the tiers' events nest here.
        let _span = tracing::debug_span!("chunk", chunk = index.0).entered();
        let object = store
            .get(id)
            .map_err(|source| ExportError::Store {
                index,
                id: *id,
                source: Box::new(source),
            })?
            .ok_or(ExportError::Missing { index, id: *id })?;
        let plain = decrypt_chunk_owned(id, key, object)
            .map_err(|source| ExportError::Decrypt { index, source })?;
        let offset = i as u64 * manifest.chunk_size.as_u64();
        file.write_all_at(&plain, offset).map_err(io_err)?;
        chunks += 1;
    }
    file.set_len(manifest.device_size).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    Ok(ExportReport {
        size: manifest.device_size,
        chunks,
        holes: manifest.hole_count() as u64,
    })
}

#[cfg(test)]
mod tests {
    use ::tests::imagegen::noise;
    use ::tests::synthetic::{CHUNK, encrypted_device};
    use cachetiers::DirStore;
    use manifest::DomainSecret;

    use super::*;

    #[test]
    fn the_export_is_private_and_follows_no_planted_symlink() {
        // The usual umask: a plain create would make the file 0644.
        rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::create(tmp.path().join("store")).unwrap();
        let chunks = vec![Some(noise(1, CHUNK)), None, Some(noise(2, 1000))];
        let (manifest, image) =
            encrypted_device(&DomainSecret::from_bytes([3; 32]), chunks, |enc| {
                store.put(&enc.id, &enc.object).unwrap();
            });
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let output = out.join("image.ext4");
        // Where the old code wrote, predictably, before renaming.
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"do not touch").unwrap();
        let planted = out.join(format!(".image.ext4.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();

        let report = export(&store, &manifest, &output).unwrap();
        assert_eq!(report.size, image.len() as u64);
        assert_eq!(std::fs::read(&output).unwrap(), image);
        let mode = std::fs::metadata(&output).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&victim).unwrap(), b"do not touch");
        // Only the output and the planted link: no temporary file left.
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
