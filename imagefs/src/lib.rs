//! imagefs: reading images back from sealed manifests and chunk stores.
//!
//! Layers:
//! - [`open`]: find a manifest by digest or tag and unseal it;
//! - [`verify`]: check every chunk of an image (present, id, decryption);
//! - [`export`]: reassemble the plaintext image into a sparse file;
//! - [`fuse`]: a read-only FUSE view of an image (`imagefs mount`).
#![forbid(unsafe_code)]

pub mod export;
pub mod fuse;
pub mod lazy;
pub mod open;
pub mod verify;

pub use export::{ExportError, ExportReport, export};
pub use lazy::{LazyError, LazyImage, LazyMetrics, LazyOptions};
pub use open::{OpenError, OpenedImage, open_image};
pub use verify::{BadChunk, VerifyReport, verify};
