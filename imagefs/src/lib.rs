//! imagefs: reading images back from sealed manifests and chunk stores.
//!
//! Layers, in the order the bytes flow:
//! - [`device`]: the [`BlockDevice`] seam every byte supplier implements
//!   and every transport and the ext4 reader consume;
//! - [`open`]: find a manifest by digest or tag and unseal it;
//! - [`verify`]: check every chunk of an image (present, id, decryption);
//! - [`export`]: reassemble the plaintext image into a sparse file;
//! - [`fuse`]: a read-only FUSE view of an image (`imagefs mount`);
//! - [`ext4`]: the ext4 metadata the FUSE view needs beyond `ext4-view`
//!   (inode numbers, link counts, device numbers, xattrs);
//! - [`vhost`]: the image as a vhost-user-blk device (`imagefs serve`);
//! - [`tiers`]: the tier stack (shared local, AZ, origin) built from one
//!   TOML configuration, and its statistics.
#![forbid(unsafe_code)]

pub mod device;
pub mod export;
pub mod ext4;
pub mod fuse;
pub mod lazy;
pub mod open;
pub mod tiers;
pub mod verify;
pub mod vhost;

pub use device::BlockDevice;
pub use export::{ExportError, ExportReport, export};
pub use lazy::{LazyError, LazyImage, LazyMetrics, LazyOptions};
pub use open::{OpenError, OpenedImage, open_image};
pub use verify::{BadChunk, VerifyReport, verify};

/// An error and its causes on one line (a cause already quoted by its
/// parent is not repeated), for log lines and the command line.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}
