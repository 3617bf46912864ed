//! OCI image sources: where an image comes from and how its blobs are read.
//!
//! - [`source`]: `oci:DIR[:REF]`, `oci-archive:FILE[:REF]`,
//!   `docker-archive:FILE[:REF]` as parsed from the command line;
//! - [`store`]: reading files from a layout directory or an indexed tar;
//! - [`image`]: following index → manifest → config to the layer list;
//! - [`layer`]: a layer's decompressed tar stream with its digests checked;
//! - [`registry`]: `docker://` sources, pulled with parallel downloads
//!   that the flattener reads as they arrive (`arrival`);
//! - [`digest`], [`spec`]: digests and the JSON documents.
//!
//! Every blob is checked against its digest as it streams; a layer's
//! uncompressed stream is also checked against the config's diff_id.

pub(crate) mod arrival;
pub mod digest;
pub mod image;
pub mod layer;
pub mod registry;
pub mod source;
pub mod spec;
pub mod store;

use std::io;
use std::path::PathBuf;

pub use digest::Digest;
pub use image::{Image, ImageConfig, Layer, Located};
pub use layer::{LayerDigests, LayerStream, LimitExceeded};
pub use source::{ImageSource, ParseSourceError};
pub use spec::Compression;

/// Errors from opening an image and reading its blobs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The layout directory or archive cannot be opened.
    #[error("cannot open {}", path.display())]
    Open {
        /// What we tried to open.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// The archive is not a readable tar.
    #[error("cannot read archive {}", path.display())]
    Archive {
        /// The archive.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// A file the format requires is not there.
    #[error("{name} is missing from {}", location.display())]
    MissingFile {
        /// The layout directory or archive.
        location: PathBuf,
        /// The file.
        name: String,
    },
    /// A blob the image refers to is not there.
    #[error("blob {digest} is missing from {}", location.display())]
    MissingBlob {
        /// The missing blob.
        digest: Digest,
        /// The layout directory or archive.
        location: PathBuf,
    },
    /// Reading a metadata file failed.
    #[error("cannot read {what}")]
    ReadFile {
        /// The file (`index.json`, `manifest <digest>`, …).
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// Reading a layer blob failed (truncated, corrupt compression).
    #[error("cannot read blob {digest}")]
    ReadBlob {
        /// The blob (for a legacy `docker save` layer, its diff_id).
        digest: Digest,
        /// Why it failed.
        source: io::Error,
    },
    /// A blob's bytes do not hash to its digest.
    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        /// The digest the blob should have.
        digest: Digest,
        /// The digest of what was read.
        actual: Digest,
    },
    /// A blob's size differs from its descriptor's.
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The size the descriptor records.
        expected: u64,
        /// The size read.
        actual: u64,
    },
    /// A layer's uncompressed stream does not hash to the config's diff_id.
    #[error(
        "layer {layer} does not match the config: diff_id should be {expected}, it is {actual}"
    )]
    DiffIdMismatch {
        /// The layer blob.
        layer: Digest,
        /// The config's diff_id.
        expected: Digest,
        /// The digest of the uncompressed stream.
        actual: Digest,
    },
    /// A metadata document is too large to be one.
    #[error("{what} is {size} bytes, too large for image metadata")]
    TooLarge {
        /// The document.
        what: String,
        /// Its size.
        size: u64,
    },
    /// A metadata document is not the JSON we expect.
    #[error("{what} is not valid")]
    Json {
        /// The document.
        what: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// No image in the source has the requested name.
    #[error("no image named {reference:?} in {}; it has: {available}", location.display())]
    RefNotFound {
        /// The requested name.
        reference: String,
        /// The layout directory or archive.
        location: PathBuf,
        /// The names it does have.
        available: String,
    },
    /// The source holds several images and none was named.
    #[error("{} holds {count} images; name one with :REF, from: {available}", location.display())]
    AmbiguousImage {
        /// The layout directory or archive.
        location: PathBuf,
        /// How many images it holds.
        count: usize,
        /// Their names.
        available: String,
    },
    /// An index or manifest of a kind we cannot use.
    #[error(
        "{digest} has media type {media_type:?}, which is neither an image index nor an image manifest"
    )]
    UnsupportedMediaType {
        /// The media type.
        media_type: String,
        /// The blob.
        digest: Digest,
    },
    /// A layer whose media type we cannot read.
    #[error("layer {digest} has unknown media type {media_type:?}")]
    UnknownLayerMediaType {
        /// The media type.
        media_type: String,
        /// The layer blob.
        digest: Digest,
    },
    /// An index without an image for the wanted platform.
    #[error("index {digest} has no {wanted} image; it has: {available}")]
    NoPlatform {
        /// The index.
        digest: Digest,
        /// The platform asked for.
        wanted: String,
        /// The platforms it has.
        available: String,
    },
    /// Indexes nested too deep.
    #[error("index {digest} nests indexes too deeply")]
    TooDeep {
        /// The index at which we gave up.
        digest: Digest,
    },
    /// Pulling from a registry failed.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// The manifest and config disagree on the number of layers.
    #[error("{digest}: the image has {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCount {
        /// The manifest (or config, for a `docker save` archive).
        digest: Digest,
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
}

#[doc(hidden)]
pub mod testimg;
#[cfg(test)]
mod tests;
