//! Finding and unsealing a manifest.

use cachetiers::{Catalog, StoreError};
use manifest::{KeyProvider, Manifest, ManifestDigest, SealError, unseal, unseal_for_domain};

/// A manifest read from a store, with the digest it was found under.
#[derive(Debug)]
pub struct OpenedImage {
    /// The sealed manifest's digest.
    pub digest: ManifestDigest,
    /// The unsealed manifest.
    pub manifest: Manifest,
    /// Size of the sealed manifest in bytes.
    pub sealed_bytes: u64,
}

/// Errors from opening an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The digest or tag is not in the store, or the manifest is damaged.
    #[error("looking up {name}")]
    Store {
        /// What was asked for.
        name: String,
        /// Why it failed.
        #[source]
        source: StoreError,
    },
    /// The manifest could not be unsealed.
    #[error("unsealing manifest {digest}")]
    Unseal {
        /// The manifest's digest.
        digest: ManifestDigest,
        /// Why it failed.
        #[source]
        source: SealError,
    },
}

/// Resolve `name` (a `sha256:` digest or a tag) in `store` and unseal it.
/// With `domain`, a manifest of another domain is refused.
pub fn open_image(
    store: &dyn Catalog,
    name: &str,
    keys: &dyn KeyProvider,
    domain: Option<&str>,
) -> Result<OpenedImage, OpenError> {
    let store_err = |source| OpenError::Store {
        name: name.to_string(),
        source,
    };
    let digest = store.resolve(name).map_err(store_err)?;
    let sealed = store.get_manifest(&digest).map_err(store_err)?;
    let manifest = match domain {
        Some(d) => unseal_for_domain(&sealed, keys, d),
        None => unseal(&sealed, keys),
    }
    .map_err(|source| OpenError::Unseal { digest, source })?;
    Ok(OpenedImage {
        digest,
        manifest,
        sealed_bytes: sealed.len() as u64,
    })
}
