//! Finding and unsealing a manifest.

use cachetiers::{Catalog, StoreError};
use manifest::{KeyProvider, Manifest, ManifestDigest, SealError, unseal_for_domain};

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

/// Resolve `name` (a `sha256:` digest, or a tag among `domain`'s) in
/// `store` and unseal it; a manifest of another domain than `domain` is
/// refused ([`SealError::DomainMismatch`](manifest::SealError)), so a
/// tenant reads only its own domain's images whatever a name points at.
pub fn open_image(
    store: &dyn Catalog,
    name: &str,
    keys: &dyn KeyProvider,
    domain: &str,
) -> Result<OpenedImage, OpenError> {
    let store_err = |source| OpenError::Store {
        name: name.to_string(),
        source,
    };
    let digest = store.resolve(domain, name).map_err(store_err)?;
    let sealed = store.get_manifest(&digest).map_err(store_err)?;
    let manifest = unseal_for_domain(&sealed, keys, domain)
        .map_err(|source| OpenError::Unseal { digest, source })?;
    Ok(OpenedImage {
        digest,
        manifest,
        sealed_bytes: sealed.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use ::tests::synthetic::encrypted_device;
    use cachetiers::{DirStore, StoreError};
    use manifest::{DomainSecret, LocalKeyProvider, seal};

    use super::*;

    /// A store holding one sealed image of domain `test` (the synthetic
    /// device's), tagged `app` in that domain.
    fn store() -> (
        tempfile::TempDir,
        DirStore,
        LocalKeyProvider,
        ManifestDigest,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let store = DirStore::create(tmp.path().join("store")).unwrap();
        let keys = LocalKeyProvider::create(tmp.path().join("keys")).unwrap();
        let (manifest, _) = encrypted_device(
            &DomainSecret::from_bytes([1; 32]),
            vec![Some(vec![5; 4096])],
            |enc| {
                cachetiers::ChunkStore::put(&store, &enc.id, &enc.object).unwrap();
            },
        );
        assert_eq!(manifest.domain, "test");
        let digest = store
            .put_manifest(&seal(&manifest, &keys).unwrap())
            .unwrap();
        store.set_tag("test", "app", &digest).unwrap();
        (tmp, store, keys, digest)
    }

    #[test]
    fn images_open_only_in_their_own_domain() {
        let (_tmp, store, keys, digest) = store();
        let opened = open_image(&store, "app", &keys, "test").unwrap();
        assert_eq!(opened.digest, digest);
        // Another tenant's domain has no such tag...
        let err = open_image(&store, "app", &keys, "tenant-b").unwrap_err();
        assert!(
            matches!(&err, OpenError::Store { source: StoreError::UnknownTag { name }, .. } if name == "tenant-b/app"),
            "{err:?}"
        );
        // ...and naming the manifest by digest is refused by its domain.
        let err = open_image(&store, &digest.to_string(), &keys, "tenant-b").unwrap_err();
        assert!(
            matches!(
                &err,
                OpenError::Unseal {
                    source: SealError::DomainMismatch(_),
                    ..
                }
            ),
            "{err:?}"
        );
        // A tag tenant b points at this image resolves, but to an image
        // tenant b cannot open.
        store.set_tag("tenant-b", "app", &digest).unwrap();
        assert!(open_image(&store, "app", &keys, "tenant-b").is_err());
    }
}
