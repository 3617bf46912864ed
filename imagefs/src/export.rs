//! Reassembling the plaintext image into a sparse file.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
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

fn temp_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    output.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Write the plaintext image of `manifest` to `output` (through a temporary
/// file renamed into place when complete). Holes stay sparse.
pub fn export(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    output: &Path,
) -> Result<ExportReport, ExportError> {
    let tmp = temp_path(output);
    let result = write_all(store, manifest, &tmp).and_then(|report| {
        fs::rename(&tmp, output).map_err(|source| ExportError::Io {
            path: output.to_path_buf(),
            source,
        })?;
        Ok(report)
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_all(
    store: &dyn ChunkStore,
    manifest: &Manifest,
    path: &Path,
) -> Result<ExportReport, ExportError> {
    let io_err = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(io_err)?;
    let mut chunks = 0;
    for (i, entry) in manifest.chunks.iter().enumerate() {
        let index = ChunkIndex(i as u64);
        let ChunkEntry::Present { id, key } = entry else {
            continue;
        };
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
