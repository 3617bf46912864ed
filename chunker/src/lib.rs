//! chunker: from an OCI image to a deterministic ext4 image.
//!
//! Layers, from input to output:
//! - [`oci`]: image sources, blobs and layer streams, digests checked;
//! - [`flatten`]: layers applied to the tree, file data streamed to ext4
//!   (in order, or parsed at once into detached layers placed in order);
//! - [`tree`]: the flattened file tree that layers add up to;
//! - [`ext4`]: the ext4 writer (file data streamed, metadata at the end);
//! - [`sink`]: where image bytes go (and detached layers, placed later);
//! - [`chunking`]: the image stream cut into chunks, holes skipped;
//! - [`convert`]: the whole pipeline, chunks encrypted in parallel into a
//!   store and a sealed manifest; `priority`: its encrypting workers give
//!   way to the chain before them.
#![forbid(unsafe_code)]

pub mod chunking;
pub mod convert;
pub mod ext4;
pub mod flatten;
#[doc(hidden)]
pub mod fuzzing;
pub mod oci;
mod pool;
mod priority;
pub mod sink;
pub mod tree;

pub use flatten::{
    FlattenError, FlattenOptions, FlattenReport, LayerReport, flatten_into, flatten_to_file,
};
pub use oci::{ImageConfig, ImageSource};
