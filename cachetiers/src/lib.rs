//! cachetiers: where encrypted chunks live.
//!
//! - [`store`]: the [`ChunkStore`] trait (get, put, contains, remove by
//!   [`ChunkId`](manifest::ChunkId)) that every tier implements, and
//!   [`StoreError`];
//! - [`checked`]: the size and hash checks every store makes on put and
//!   get, and the errors they give;
//! - [`catalog`]: the [`Catalog`] trait (sealed manifests, tags,
//!   conversion records, and the timed object listing garbage collection
//!   needs) and [`Origin`], a chunk store that is also a catalog;
//! - [`dir_store`]: [`DirStore`], the first tier: a local directory of
//!   sharded, atomically written objects, plus the sealed manifests and
//!   the tags that name them;
//! - `rocks` (feature `rocksdb`): `RocksStore`, the shared local tier,
//!   capacity-bounded with LRU eviction;
//! - [`origin`]: [`ObjectOrigin`], the origin tier over `object_store`,
//!   and [`open_origin`], which opens a directory, `file://` or `s3://`;
//! - [`tag`]: tag name rules;
//! - [`tiered`]: the tiered reader and [`SingleFlight`];
//! - `testing` (feature `test-util`): `GatedStore`, a store for tests
//!   whose gets can be held, counted and changed.
//!
//! Every tier holds only ciphertext addressed by its SHA-256, and checks
//! it on the way in and out.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod checked;
pub mod dir_store;
pub mod origin;
#[cfg(feature = "rocksdb")]
pub mod rocks;
pub mod store;
pub mod tag;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod tiered;

pub use catalog::{Catalog, ObjectName, Origin, StoredManifest, StoredObject, TagEntry};
pub use dir_store::DirStore;
pub use origin::{
    ObjectOrigin, OriginError, RequestLimits, S3Settings, open_origin, open_origin_with,
};
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksStore, RocksUsage};
pub use store::{ChunkStore, MAX_OBJECT_LEN, PutOutcome, StoreError};
pub use tag::{TagNameError, tag_path, validate_tag_name};
pub use tiered::{Flight, SingleFlight, TierSnapshot, TieredError, TieredSnapshot, TieredStore};
