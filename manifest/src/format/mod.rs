//! Manifest v1: the types and their compact binary encoding.
//!
//! - [`manifest`]: [`Manifest`], [`ImageConfig`], [`ChunkEntry`];
//! - [`codec`]: [`Manifest::encode`] and [`Manifest::decode`], with the
//!   byte layout.

pub mod codec;
mod json;
pub mod manifest;

pub use codec::{MANIFEST_MAGIC, MANIFEST_VERSION};
pub use manifest::{ChunkEntry, DomainMismatch, ImageConfig, Manifest};

use crate::wire::DecodeError;

/// Why a manifest could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes are not a valid v1 manifest (truncated, garbage, overlong,
    /// or a field out of range); the cause names the field and its offset.
    #[error("cannot decode manifest: {0}")]
    Decode(#[from] DecodeError),
    /// The manifest value cannot be encoded (a field over its limit, or a
    /// chunk table that does not match the device size).
    #[error("cannot encode manifest: {reason}")]
    Invalid {
        /// What is wrong.
        reason: String,
    },
}
