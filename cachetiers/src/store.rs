//! The chunk store trait every tier implements, and its error type.

use std::path::PathBuf;
use std::sync::Arc;

use manifest::{ChunkId, IdParseError, ManifestDigest};

use crate::checked::Verified;
use crate::tag::TagNameError;

/// Largest object any store accepts or returns: the largest chunk plus its
/// GCM tag.
pub const MAX_OBJECT_LEN: usize =
    manifest::ChunkSize::MAX.bytes() as usize + manifest::convergent::TAG_LEN;

/// What a [`ChunkStore::put`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was new and is now stored.
    Stored,
    /// The object was already there and matched its id; nothing was
    /// written (dedup).
    AlreadyPresent,
    /// A copy was there but did not match its id (damaged); the good
    /// object replaced it.
    Replaced,
}

impl PutOutcome {
    /// Whether this put wrote the object (new, or over a damaged copy).
    pub fn is_new(self) -> bool {
        matches!(self, PutOutcome::Stored | PutOutcome::Replaced)
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The directory is not a chunk store.
    #[error("{} is not a chunk store (no `chunks` directory); create one with `convert`", path.display())]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },
    /// A stored object does not match its id. It was not returned.
    #[error("chunk {id} is corrupt in {location}: {problem}")]
    Corrupt {
        /// The id the object is stored under.
        id: ChunkId,
        /// Where it is (a path, a URL, a tier name).
        location: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A put was refused because the bytes do not hash to the id.
    #[error("refusing to store chunk {id}: the bytes given hash to {actual}")]
    IdMismatch {
        /// The id the caller gave.
        id: ChunkId,
        /// The SHA-256 of the bytes the caller gave.
        actual: ChunkId,
    },
    /// A put was refused because the object is too large to be a chunk.
    #[error("refusing to store chunk {id}: {len} bytes is over the {MAX_OBJECT_LEN}-byte limit")]
    TooLarge {
        /// The id the caller gave.
        id: ChunkId,
        /// The object's length.
        len: usize,
    },
    /// No manifest with this digest is stored.
    #[error("manifest {digest} is not in the store")]
    ManifestNotFound {
        /// The digest asked for.
        digest: ManifestDigest,
    },
    /// A stored manifest does not match its digest.
    #[error("manifest {digest} is corrupt in {}: {problem}", path.display())]
    ManifestCorrupt {
        /// The digest it is stored under.
        digest: ManifestDigest,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// A start profile is larger than any store keeps (on put, or found
    /// so in the store on get).
    #[error(
        "start profile of manifest {digest} in {location} is {len} bytes, over the {limit}-byte limit"
    )]
    ProfileTooLarge {
        /// The manifest it belongs to.
        digest: ManifestDigest,
        /// Where (a path or a URL).
        location: String,
        /// Its length.
        len: u64,
        /// The limit ([`MAX_PROFILE_LEN`](crate::checked::MAX_PROFILE_LEN)).
        limit: u64,
    },
    /// Text that starts like a digest is not a valid digest.
    #[error("`{text}` is not a valid manifest digest: {source}")]
    BadDigest {
        /// The text given.
        text: String,
        /// What is wrong with it.
        source: IdParseError,
    },
    /// No tag with this name exists.
    #[error("no tag named `{name}` in the store")]
    UnknownTag {
        /// The tag name.
        name: String,
    },
    /// A tag name is not allowed.
    #[error(transparent)]
    InvalidTag(#[from] TagNameError),
    /// A tag file does not contain a digest.
    #[error("tag `{name}` ({}) does not contain a manifest digest: {source}", path.display())]
    BadTag {
        /// The tag name.
        name: String,
        /// The tag file.
        path: PathBuf,
        /// What is wrong with its content.
        source: IdParseError,
    },
    /// A domain name that is not one (where a conversion record goes).
    #[error(
        "invalid domain `{domain}`: 1 to 64 characters from A-Z a-z 0-9 . _ -, not starting with `.`"
    )]
    InvalidDomain {
        /// The name given.
        domain: String,
    },
    /// A conversion record does not contain a manifest digest.
    #[error("conversion record {} does not contain a manifest digest: {source}", path.display())]
    BadConversionRecord {
        /// The record (a path or a URL).
        path: PathBuf,
        /// What is wrong with its content.
        source: IdParseError,
    },
    /// A remote tier failed (network, service, protocol).
    #[error("{tier} failed: {source}")]
    Backend {
        /// Which tier.
        tier: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A store of encrypted chunk objects, addressed by [`ChunkId`].
///
/// Every tier implements this: a local directory, the shared host cache,
/// the AZ cache nodes, the origin object store. It is object-safe
/// (`Arc<dyn ChunkStore>`) and implementations are `Send + Sync`, so one
/// store serves many threads.
///
/// The methods block. Async code calls them through
/// `tokio::task::spawn_blocking` with an `Arc<dyn ChunkStore>`; they take
/// `&self` and own nothing borrowed across the call, which is what that
/// needs.
///
/// A store only ever holds ciphertext, and checks it: `put` refuses bytes
/// that do not hash to the id, and `get` never returns such bytes.
pub trait ChunkStore: Send + Sync {
    /// The object stored under `id`.
    ///
    /// `Ok(None)` is a miss (normal for a cache: fill from the next tier).
    /// An object that fails its hash check is an error
    /// ([`StoreError::Corrupt`]), never returned as data.
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError>;

    /// The object stored under `id`, for a caller that only passes it on
    /// to a reader who checks it against `id` itself (a cache node
    /// answering an instance), so that the object is hashed once per hop
    /// rather than at both ends of it.
    ///
    /// A store that hashed every object on its way in may skip hashing it
    /// here. A copy damaged at rest then reaches the reader, who refuses
    /// it (and asks elsewhere) instead of this store dropping it. The
    /// default is `get`, which checks.
    fn get_to_forward(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(id)
    }

    /// Stores `object` under `id` after checking that SHA-256(object) is
    /// `id`. Idempotent: an object already present is not written again,
    /// and [`PutOutcome::AlreadyPresent`] says so. A put that fails leaves
    /// nothing visible under `id`.
    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError>;

    /// [`ChunkStore::put`] of an object already checked against its id (a
    /// tiered store filling the tiers above the one that served it). A
    /// store that hashes on put may skip that here; the default is `put`,
    /// which hashes again.
    fn put_verified(&self, verified: Verified<'_>) -> Result<PutOutcome, StoreError> {
        self.put(verified.id(), verified.object())
    }

    /// Stores `object` under its id, SHA-256(object), which it returns
    /// with what the put did: for a writer that has not hashed the object
    /// (a converter fresh from encrypting it), so that it is hashed once,
    /// here, and that stores many objects before one thing naming them
    /// all (its manifest). The object may become durable only at the next
    /// [`ChunkStore::sync`], so a store can make a whole batch durable at
    /// once instead of syncing each object; until then it reads like any
    /// stored object. The default is `put`, durable at once.
    fn put_batched(&self, object: &[u8]) -> Result<(ChunkId, PutOutcome), StoreError> {
        let id = ChunkId::of_object(object);
        let outcome = self.put_verified(Verified::trusted(&id, object))?;
        Ok((id, outcome))
    }

    /// [`ChunkStore::put_batched`] of several objects, in order, hashed
    /// together ([`ChunkId::of_objects`], faster than one by one); stops
    /// at the first that fails. The default puts each as `put_batched`'s
    /// default does.
    fn put_batched_all(&self, objects: &[&[u8]]) -> Result<Vec<(ChunkId, PutOutcome)>, StoreError> {
        ChunkId::of_objects(objects)
            .into_iter()
            .zip(objects)
            .map(|(id, object)| Ok((id, self.put_verified(Verified::trusted(&id, object))?)))
            .collect()
    }

    /// Makes every object stored through this handle durable, those of
    /// [`ChunkStore::put_batched`] included. A stored manifest must not
    /// name an object put before it unless this has returned `Ok` since
    /// (an origin's `put_manifest` calls it first). The default does
    /// nothing: the default `put_batched` is durable already.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Starts making what was stored so far durable, so that a later
    /// [`ChunkStore::sync`] has less left to do (and less to wait for).
    /// Promises nothing; the default does nothing.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether an object is stored under `id` (without reading or checking
    /// it).
    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError>;

    /// Drops the object stored under `id`, for example a copy found
    /// corrupt. Returns whether there was one.
    fn remove(&self, id: &ChunkId) -> Result<bool, StoreError>;

    /// Whether this store promises the `get` contract above by hashing
    /// every object itself, so callers need not hash it again (a 512 KiB
    /// object costs about a quarter of a millisecond to hash). Every store
    /// in this workspace does; the default, false, makes the tiered store
    /// and `LazyImage` check a store that does not say so.
    fn checks_gets(&self) -> bool {
        false
    }
}

/// Smart pointers and references to a store are stores.
macro_rules! forward_store {
    ($($ptr:ty),*) => {$(
        impl<T: ChunkStore + ?Sized> ChunkStore for $ptr {
            fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
                (**self).get(id)
            }
            fn get_to_forward(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
                (**self).get_to_forward(id)
            }
            fn put(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
                (**self).put(id, object)
            }
            fn put_verified(&self, verified: Verified<'_>) -> Result<PutOutcome, StoreError> {
                (**self).put_verified(verified)
            }
            fn put_batched(&self, object: &[u8]) -> Result<(ChunkId, PutOutcome), StoreError> {
                (**self).put_batched(object)
            }
            fn put_batched_all(
                &self,
                objects: &[&[u8]],
            ) -> Result<Vec<(ChunkId, PutOutcome)>, StoreError> {
                (**self).put_batched_all(objects)
            }
            fn sync(&self) -> Result<(), StoreError> {
                (**self).sync()
            }
            fn flush(&self) -> Result<(), StoreError> {
                (**self).flush()
            }
            fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
                (**self).contains(id)
            }
            fn remove(&self, id: &ChunkId) -> Result<bool, StoreError> {
                (**self).remove(id)
            }
            fn checks_gets(&self) -> bool {
                (**self).checks_gets()
            }
        }
    )*};
}

forward_store!(Arc<T>, Box<T>, &T);
