//! Flattening: an image's layers, applied in order, into one ext4 image.
//!
//! [`flatten_into`] and [`flatten_to_file`] are the entry points: open the
//! source, stream each layer's files into an [`Ext4Builder`] (each layer
//! starting on a chunk boundary) while the changesets build the [`Tree`],
//! check each layer's digests once it has been read, then write the
//! metadata. A digest mismatch found at the end of a layer is still an
//! error: the output is discarded ([`flatten_to_file`] removes it).
//! Layers are read and decompressed on threads of their own ahead of the
//! flattener ([`readahead`]) unless [`FlattenOptions::read_ahead`] is off;
//! then, when the sink takes detached layers, they are also parsed and
//! written at once, each into a layer of its own, and applied to the tree
//! and placed in order (`detached`). Applying an entry is two steps either
//! way: what needs no tree (`prepare`: checks, file data written), then
//! the tree ([`apply`]).

pub mod apply;
mod detached;
pub mod entry;
mod limits;
mod output;
mod pax;
mod pipe;
mod prepare;
pub mod readahead;
pub mod resolve;
pub mod sparse;
pub mod tarstream;

use std::io;
use std::path::PathBuf;

pub use apply::{LayerError, apply_layer};
pub use entry::EntryError;
pub use limits::{Limits, MAX_FILE_SIZE};
pub use output::flatten_to_file;

use crate::ext4::{Ext4Builder, Ext4Error, Ext4Options, Ext4Summary};
use crate::oci::{Digest, Image, ImageConfig, ImageSource, LayerDigests, LayerStream, SourceError};
use crate::sink::ImageSink;
use crate::tree::Tree;

/// How to flatten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlattenOptions {
    /// Options of the ext4 image.
    pub ext4: Ext4Options,
    /// Caps on what a layer may ask for.
    pub limits: Limits,
    /// Read and decompress layers on a thread of their own, ahead of the
    /// flattener ([`readahead`]); the image is the same either way.
    pub read_ahead: bool,
}

impl Default for FlattenOptions {
    fn default() -> Self {
        FlattenOptions {
            ext4: Ext4Options::default(),
            limits: Limits::default(),
            read_ahead: true,
        }
    }
}

/// What one layer contributed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerReport {
    /// The blob digest (computed, and checked where the source records it).
    pub digest: Digest,
    /// The uncompressed digest (checked against the config).
    pub diff_id: Digest,
    /// The media type; for a `docker save` layer, the OCI type of what
    /// its magic bytes showed.
    pub media_type: String,
    /// Bytes of the blob as stored.
    pub compressed_bytes: u64,
    /// Bytes of the uncompressed tar.
    pub uncompressed_bytes: u64,
    /// Tar entries (whiteouts included, PAX global headers not).
    pub entries: u64,
}

/// What a flattening produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlattenReport {
    /// The manifest digest (for a legacy `docker save` archive, which has
    /// no manifest blob, the config digest).
    pub image_digest: Digest,
    /// What a VM needs to start the image.
    pub config: ImageConfig,
    /// The layers, bottom first.
    pub layers: Vec<LayerReport>,
    /// The ext4 image.
    pub ext4: Ext4Summary,
}

/// Errors from flattening an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlattenError {
    /// Opening the image or checking a blob failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A layer's tar or one of its entries is bad.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// The ext4 image cannot be written.
    #[error("cannot build the ext4 image")]
    Ext4(#[from] Ext4Error),
    /// The thread reading layers ahead stopped without saying why (it
    /// panicked).
    #[error("the layer reader thread stopped")]
    ReaderStopped,
    /// The output file cannot be created or put in place.
    #[error("cannot write {}", path.display())]
    Output {
        /// The output (or its temporary) path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Apply every layer of `image` to a new tree, streaming file data into
/// `builder`, with the default [`Limits`]. Each layer's digests are checked
/// after it is read. The tree is returned for [`Ext4Builder::finish`] (and
/// for tests to inspect).
pub fn flatten_layers<S: ImageSink>(
    image: &Image,
    builder: &mut Ext4Builder<S>,
) -> Result<(Tree, Vec<LayerReport>), FlattenError> {
    flatten_layers_limited(image, builder, &Limits::default())
}

/// [`flatten_layers`] with the given limits.
pub fn flatten_layers_limited<S: ImageSink>(
    image: &Image,
    builder: &mut Ext4Builder<S>,
    limits: &Limits,
) -> Result<(Tree, Vec<LayerReport>), FlattenError> {
    let mut tree = Tree::new();
    let mut reports = Vec::with_capacity(image.layers.len());
    let mut image_bytes = 0u64;
    for layer in &image.layers {
        builder.begin_layer();
        let (mut stream, media_type) = image.open_layer(layer)?;
        set_layer_limit(&mut stream, limits, image_bytes);
        let entries = apply_layer(&mut stream, layer.name(), limits, &mut tree, builder)
            .map_err(|e| explain(image, layer, e))?;
        let digests = stream.finish().map_err(|e| explain(image, layer, e))?;
        image_bytes += digests.uncompressed_bytes;
        reports.push(LayerReport::new(digests, media_type, entries));
    }
    Ok((tree, reports))
}

/// `err`, from reading or applying `layer`, or the failure of the layer's
/// download when it failed: a blob from a registry is read as it arrives,
/// so a corrupt or short one can break the decompressor or the tar before
/// its digest is checked at its end, and the download says what happened.
fn explain(image: &Image, layer: &crate::oci::Layer, err: impl Into<FlattenError>) -> FlattenError {
    match image.download_failure(layer) {
        Some(source) => FlattenError::Source(SourceError::ReadBlob {
            digest: layer.name().clone(),
            source,
        }),
        None => err.into(),
    }
}

/// Caps a layer's uncompressed bytes at the layer limit, or at what is
/// left of the image limit after the `image_bytes` of the layers below.
fn set_layer_limit(stream: &mut LayerStream, limits: &Limits, image_bytes: u64) {
    let image_left = limits.max_image_bytes.saturating_sub(image_bytes);
    if image_left < limits.max_layer_bytes {
        stream.set_limit("image", image_left);
    } else {
        stream.set_limit("layer", limits.max_layer_bytes);
    }
}

impl LayerReport {
    fn new(digests: LayerDigests, media_type: String, entries: u64) -> Self {
        LayerReport {
            digest: digests.digest,
            diff_id: digests.diff_id,
            media_type,
            compressed_bytes: digests.compressed_bytes,
            uncompressed_bytes: digests.uncompressed_bytes,
            entries,
        }
    }
}

/// Flatten an opened image into `sink`.
pub fn flatten_image<S: ImageSink>(
    image: &Image,
    sink: S,
    opts: &FlattenOptions,
) -> Result<(S, FlattenReport), FlattenError> {
    let mut builder = Ext4Builder::new(sink, opts.ext4.clone())?;
    let (tree, layers) = if opts.read_ahead {
        readahead::flatten_layers_ahead(image, &mut builder, &opts.limits)?
    } else {
        flatten_layers_limited(image, &mut builder, &opts.limits)?
    };
    // The filesystem UUID follows the layers' content, not just metadata.
    for layer in &layers {
        builder.identify(layer.diff_id.to_string().as_bytes());
    }
    let (sink, ext4) = builder.finish(&tree)?;
    let report = FlattenReport {
        image_digest: image.digest.clone(),
        config: image.config.clone(),
        layers,
        ext4,
    };
    Ok((sink, report))
}

/// Flatten the image `source` names into `sink`. On error the sink's
/// contents are meaningless and should be discarded.
pub fn flatten_into<S: ImageSink>(
    source: &ImageSource,
    sink: S,
    opts: &FlattenOptions,
) -> Result<(S, FlattenReport), FlattenError> {
    let image = Image::open(source)?;
    flatten_image(&image, sink, opts)
}

#[cfg(test)]
mod tests;
