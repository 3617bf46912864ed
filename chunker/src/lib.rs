//! chunker: from an OCI image to a deterministic ext4 image.
//!
//! Layers, from input to output:
//! - [`tree`]: the flattened file tree that layers add up to;
//! - [`ext4`]: the ext4 writer (file data streamed, metadata at the end);
//! - [`sink`]: where image bytes go.
#![forbid(unsafe_code)]

pub mod ext4;
pub mod sink;
pub mod tree;
