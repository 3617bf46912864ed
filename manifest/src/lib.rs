//! manifest: the formats and the cryptography of imagefs.
//!
//! Everything that is written to disk or sent between machines is defined
//! here, and nowhere else. The layers, from the bottom up:
//!
//! - [`ids`]: [`ChunkId`], [`ChunkKey`], [`ChunkIndex`], [`ByteOffset`],
//!   [`ManifestDigest`]; [`chunk_size`]: [`ChunkSize`].
//! - [`convergent`]: per-chunk convergent encryption. A chunk's key is
//!   HMAC-SHA-256(domain secret, plaintext), its object is AES-256-GCM of
//!   the plaintext under that key, and its id is SHA-256 of the object.
//! - [`conversion`]: the record of which sealed manifest a source image
//!   (and options) became, under a [`ConversionKey`] keyed by the domain
//!   secret, so a second `convert` of it is a no-op.
//! - [`format`](mod@format): the [`Manifest`] (device geometry, chunk table, OCI start
//!   config, domain) and its compact v1 binary encoding.
//! - [`keys`]: the [`KeyProvider`] trait; [`LocalKeyProvider`], master
//!   keys (with rotation and retirement) in a private key directory;
//!   [`Pkcs11KeyProvider`], master keys inside a PKCS#11 token;
//!   [`DomainSecrets`], domain secrets kept wrapped under a master key.
//! - [`seal`](mod@seal): the sealed envelope: the encoded manifest encrypted under a
//!   random data key, that key wrapped by a key provider, outside the
//!   digested part so that [`rewrap_sealed`] keeps the manifest's name.
//! - [`profile`]: [`StartProfile`], the chunks a start touched, in
//!   order, sealed like the manifest and bound to its digest.
//! - [`agent`]: the host agent's API bodies and state file.
//! - [`report`]: what the commands report (`--json`), as serde types;
//!   [`trace`]: the guest access trace (`serve --record-trace`).
//! - [`wire`]: the byte reader shared by both decoders, and its
//!   [`DecodeError`].
#![forbid(unsafe_code)]

pub mod agent;
pub mod chunk_size;
pub mod convergent;
pub mod conversion;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod keys;
pub mod profile;
pub mod report;
pub mod seal;
pub mod trace;
pub mod wire;

pub use chunk_size::{ChunkSize, ChunkSizeError};
pub use convergent::{
    ConvergentError, DomainSecret, EncryptedChunk, decrypt_checked_chunk_owned, decrypt_chunk,
    decrypt_chunk_owned, derive_chunk_key, derive_chunk_keys, encrypt_chunk,
    encrypt_chunk_in_place, encrypt_chunk_owned, encrypt_chunks_in_place, verify_object,
};
pub use conversion::{ConversionInputs, ConversionKey};
pub use format::{ChunkEntry, DomainMismatch, FormatError, ImageConfig, Manifest};
pub use ids::{ByteOffset, ChunkId, ChunkIndex, ChunkKey, IdParseError, ManifestDigest};
pub use keys::{
    DEFAULT_DOMAIN, DataKey, DomainSecrets, KeyError, KeyProvider, LocalKeyProvider, PinSource,
    Pkcs11Config, Pkcs11Error, Pkcs11KeyProvider, ProviderSpec, TokenSelector, WrappedKey,
    validate_domain,
};
pub use profile::{
    ProfileEntry, ProfileError, ProfileReport, StartProfile, seal_profile, sealed_profile_key_id,
    unseal_profile,
};
pub use seal::{SealError, rewrap_sealed, seal, sealed_key_id, unseal, unseal_for_domain};
pub use wire::DecodeError;
