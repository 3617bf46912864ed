//! The images in a catalog, as an operator sees them: each manifest with
//! its tags, domain, size, the bytes only it holds and when it was stored
//! (`imagefs image ls`), and removing one (`imagefs image rm`).
//!
//! Removing an image drops its manifest, start profile and (when asked)
//! its tags; its chunks stay until garbage collection finds nothing names
//! them, since other images may share them and a convert may be about to.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use cachetiers::{Catalog, StoreError, TagEntry};
use manifest::{ChunkEntry, ChunkId, KeyProvider, Manifest, ManifestDigest, unseal};
use serde::{Deserialize, Serialize};

/// Every image of a catalog (`imagefs image ls --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageList {
    /// Where the catalog is.
    pub store: String,
    /// One entry per stored manifest, by digest.
    pub images: Vec<ImageSummary>,
}

/// One stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSummary {
    /// `sha256:…` of the sealed manifest.
    pub digest: String,
    /// The tags that point at it, as `DOMAIN/NAME`.
    pub tags: Vec<String>,
    /// The sealed manifest's size in bytes.
    pub manifest_bytes: u64,
    /// When the store wrote the manifest, in seconds since the epoch.
    pub stored_at: Option<u64>,
    /// What only the unsealed manifest tells: `None` when these keys
    /// cannot unseal it (then `unreadable` says why).
    pub contents: Option<ImageContents>,
    /// Why the manifest could not be unsealed.
    pub unreadable: Option<String>,
}

/// The part of a summary read from the unsealed manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageContents {
    /// The dedup domain its chunks were encrypted in.
    pub domain: String,
    /// The block device's size in bytes.
    pub device_size: u64,
    /// Plaintext bytes of its distinct stored chunks (holes excluded).
    pub stored_bytes: u64,
    /// Of those, the bytes of chunks no other readable manifest names:
    /// what removing this image (and a gc after) would free.
    pub unique_bytes: u64,
}

/// Why an image could not be listed or removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImagesError {
    /// The catalog failed.
    #[error("image catalog {location}")]
    Store {
        /// Where the catalog is.
        location: String,
        /// What failed.
        source: StoreError,
    },
    /// `image rm` of an image a tag still points at, without `--untag`.
    #[error(
        "image {digest} is still tagged ({}): remove the tags first or pass --untag",
        tags.join(", ")
    )]
    Tagged {
        /// The image.
        digest: ManifestDigest,
        /// Its tags, as `DOMAIN/NAME`.
        tags: Vec<String>,
    },
    /// No manifest with this digest is stored.
    #[error("no image {digest} in {location}")]
    NotFound {
        /// The digest asked for.
        digest: ManifestDigest,
        /// Where the catalog is.
        location: String,
    },
}

/// What `image rm` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedImage {
    /// The removed manifest.
    pub digest: String,
    /// The tags removed with it (`--untag`), as `DOMAIN/NAME`.
    pub untagged: Vec<String>,
}

fn store_err(catalog: &dyn Catalog) -> impl Fn(StoreError) -> ImagesError + '_ {
    move |source| ImagesError::Store {
        location: catalog.location(),
        source,
    }
}

fn qualified(tag: &TagEntry) -> String {
    format!("{}/{}", tag.domain, tag.name)
}

/// Lists every stored manifest with its tags, unsealing each with `keys`
/// for its domain, size and unique bytes. A manifest these keys cannot
/// unseal is listed with the reason, not an error: one host's keys need
/// not open every image of a shared origin.
pub fn list_images(
    catalog: &dyn Catalog,
    keys: &dyn KeyProvider,
) -> Result<ImageList, ImagesError> {
    let err = store_err(catalog);
    let tags = catalog.list_tags().map_err(&err)?;
    let stored = catalog.list_manifests().map_err(&err)?;
    let mut images = Vec::with_capacity(stored.len());
    let mut chunk_sets = Vec::with_capacity(stored.len());
    for m in &stored {
        let opened = catalog
            .get_manifest(&m.digest)
            .map_err(|e| e.to_string())
            .and_then(|sealed| unseal(&sealed, keys).map_err(|e| crate::error_chain(&e)));
        let (contents, unreadable, chunks) = match opened {
            Ok(manifest) => {
                let chunks = distinct_chunks(&manifest);
                let contents = ImageContents {
                    domain: manifest.domain.clone(),
                    device_size: manifest.device_size,
                    stored_bytes: chunks.values().sum(),
                    unique_bytes: 0,
                };
                (Some(contents), None, chunks)
            }
            Err(why) => (None, Some(why), HashMap::new()),
        };
        chunk_sets.push(chunks);
        images.push(ImageSummary {
            digest: m.digest.to_string(),
            tags: tags
                .iter()
                .filter(|t| t.digest == m.digest)
                .map(qualified)
                .collect(),
            manifest_bytes: m.size,
            stored_at: m
                .stored_at
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            contents,
            unreadable,
        });
    }
    // How many images name each chunk (each image counted once).
    let mut owners: HashMap<ChunkId, u32> = HashMap::new();
    for chunks in &chunk_sets {
        for id in chunks.keys() {
            *owners.entry(*id).or_default() += 1;
        }
    }
    for (image, chunks) in images.iter_mut().zip(&chunk_sets) {
        if let Some(contents) = &mut image.contents {
            contents.unique_bytes = chunks
                .iter()
                .filter(|(id, _)| owners.get(*id) == Some(&1))
                .map(|(_, len)| len)
                .sum();
        }
    }
    Ok(ImageList {
        store: catalog.location(),
        images,
    })
}

/// The distinct stored chunks of a manifest with their plaintext lengths
/// (the last chunk of a device may be short).
pub(crate) fn distinct_chunks(manifest: &Manifest) -> HashMap<ChunkId, u64> {
    let size = manifest.chunk_size.as_u64();
    let mut chunks = HashMap::new();
    for (i, entry) in manifest.chunks.iter().enumerate() {
        if let ChunkEntry::Present { id, .. } = entry {
            let start = i as u64 * size;
            let len = size.min(manifest.device_size.saturating_sub(start));
            chunks.insert(*id, len);
        }
    }
    chunks
}

/// Removes image `digest`: refused while a tag (of any domain) points at
/// it, unless `untag`, which removes those tags first. The manifest goes
/// after its tags, so no tag is ever left naming a missing manifest.
pub fn remove_image(
    catalog: &dyn Catalog,
    digest: &ManifestDigest,
    untag: bool,
) -> Result<RemovedImage, ImagesError> {
    let err = store_err(catalog);
    let not_found = || ImagesError::NotFound {
        digest: *digest,
        location: catalog.location(),
    };
    if !catalog
        .list_manifests()
        .map_err(&err)?
        .iter()
        .any(|m| m.digest == *digest)
    {
        return Err(not_found());
    }
    let tags: Vec<TagEntry> = catalog
        .list_tags()
        .map_err(&err)?
        .into_iter()
        .filter(|t| t.digest == *digest)
        .collect();
    if !tags.is_empty() && !untag {
        return Err(ImagesError::Tagged {
            digest: *digest,
            tags: tags.iter().map(qualified).collect(),
        });
    }
    for tag in &tags {
        catalog.remove_tag(&tag.domain, &tag.name).map_err(&err)?;
    }
    if !catalog.remove_manifest(digest).map_err(&err)? {
        return Err(not_found());
    }
    Ok(RemovedImage {
        digest: digest.to_string(),
        untagged: tags.iter().map(qualified).collect(),
    })
}

#[cfg(test)]
mod tests;
