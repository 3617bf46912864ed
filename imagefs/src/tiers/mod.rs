//! Building the tier stack (dedicated, shared local, AZ, origin) from one
//! configuration ([`config`]), and reporting on it ([`stats`]).
//!
//! ```text
//! dedicated local   plaintext, this instance      (LazyImage, a directory)
//! shared-local      ciphertext, this host         (RocksStore, capacity-bounded)
//! az                ciphertext, the AZ's nodes    (cachenode::AzTier over HTTP)
//! origin            ciphertext + manifests + tags (directory, file:// or s3://)
//! ```
//!
//! The last three form one [`TieredStore`]; the dedicated tier sits above
//! it inside [`LazyImage`](crate::LazyImage). Manifests are read from the
//! origin only: a host with empty caches opens any image the origin has.

pub mod config;
pub mod stats;

use std::path::PathBuf;
use std::sync::Arc;

use cachetiers::{ChunkStore, Origin, StoreError, TieredError, TieredStore};

pub use config::{ByteSize, ConfigError, TierConfig, parse_size};

/// Tier names, as they appear in metrics and error messages.
pub mod names {
    /// The host's RocksDB cache.
    pub const SHARED: &str = "shared-local";
    /// The AZ cache nodes.
    pub const AZ: &str = "az";
    /// The origin object store.
    pub const ORIGIN: &str = "origin";
}

/// Errors building the tier stack.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TiersError {
    /// No origin was configured.
    #[error("no origin configured: give --store or an [origin] url in the tier configuration")]
    NoOrigin,
    /// The origin could not be opened.
    #[error("opening the origin {url}")]
    Origin {
        /// Its URL.
        url: String,
        /// The cause.
        #[source]
        source: Box<cachetiers::origin::OriginError>,
    },
    /// The shared local tier could not be opened.
    #[error("opening the shared local tier")]
    Shared(#[source] StoreError),
    /// This build has no RocksDB.
    #[error("a [shared] tier is configured but this build of imagefs has no RocksDB support")]
    NoRocksDb,
    /// The AZ tier could not be set up.
    #[error("setting up the AZ cache tier")]
    Az(#[source] cachenode::client::AzError),
    /// The stack itself is invalid.
    #[error("building the tier stack")]
    Stack(#[source] TieredError),
}

/// An opened stack of tiers.
pub struct Tiers {
    /// The origin: chunks, manifests and tags.
    pub origin: Arc<dyn Origin>,
    /// Shared local, AZ and origin, fastest first.
    pub store: Arc<TieredStore>,
    /// The shared local tier, for its usage figures.
    #[cfg(feature = "rocksdb")]
    pub shared: Option<Arc<cachetiers::RocksStore>>,
    /// The AZ tier, for its hedging figures.
    pub az: Option<Arc<cachenode::client::AzTier>>,
    /// Where the dedicated tier lives, if configured.
    pub dedicated: Option<PathBuf>,
}

impl std::fmt::Debug for Tiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiers")
            .field("origin", &self.origin.location())
            .field("store", &self.store)
            .field("dedicated", &self.dedicated)
            .finish_non_exhaustive()
    }
}

/// Opens every configured tier. `create_origin` creates a directory origin
/// that does not exist yet (for `convert`).
pub fn open_tiers(config: &TierConfig, create_origin: bool) -> Result<Tiers, TiersError> {
    let section = config.origin.as_ref().ok_or(TiersError::NoOrigin)?;
    let url = &section.url;
    let origin = cachetiers::origin::open_origin_with(url, create_origin, &section.limits())
        .map_err(|source| TiersError::Origin {
            url: url.clone(),
            source: Box::new(source),
        })?;
    let mut stack: Vec<(String, Arc<dyn ChunkStore>)> = Vec::new();

    #[cfg(feature = "rocksdb")]
    let shared = match &config.shared {
        Some(s) => {
            let store = Arc::new(
                cachetiers::RocksStore::open(&s.path, s.capacity.0).map_err(TiersError::Shared)?,
            );
            stack.push((names::SHARED.into(), store.clone()));
            Some(store)
        }
        None => None,
    };
    #[cfg(not(feature = "rocksdb"))]
    if config.shared.is_some() {
        return Err(TiersError::NoRocksDb);
    }

    let az = match &config.az {
        Some(a) => {
            let c = a.clone();
            let tier = Arc::new(cachenode::client::AzTier::new(c).map_err(TiersError::Az)?);
            stack.push((names::AZ.into(), tier.clone()));
            Some(tier)
        }
        None => None,
    };

    stack.push((names::ORIGIN.into(), origin.clone()));
    let store = Arc::new(TieredStore::new(stack).map_err(TiersError::Stack)?);
    Ok(Tiers {
        origin,
        store,
        #[cfg(feature = "rocksdb")]
        shared,
        az,
        dedicated: config.dedicated.as_ref().map(|d| d.dir.clone()),
    })
}
