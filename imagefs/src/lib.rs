//! imagefs: reading images back from sealed manifests and chunk stores.
//!
//! Layers, in the order the bytes flow (each module imports only those
//! listed before it; `tests/layering.rs` checks this):
//! - [`device`]: the [`BlockDevice`] seam every byte supplier implements
//!   and every transport and the ext4 reader consume;
//! - [`open`]: find a manifest by digest or tag and unseal it;
//! - [`profile`]: start profiles: recorded from the read path, stored
//!   sealed beside the manifest, merged, and loaded as a prefetch order;
//! - [`tiers`]: the tier stack (shared local, AZ, origin) built from one
//!   TOML configuration, and its statistics;
//! - [`lazy`]: [`LazyImage`], the image as a block device fetched on
//!   demand, writes copy-on-write into the dedicated tier;
//! - [`verify`](mod@verify): check every chunk of an image (present, id, decryption);
//! - [`export`](mod@export): reassemble the plaintext image into a sparse file;
//! - [`images`]: the images of a catalog with their tags, sizes and
//!   unique bytes (`imagefs image ls`), and removing one (`image rm`);
//! - [`gc`]: garbage collection of an origin (`imagefs gc`): what no tag
//!   or retained manifest names, once older than a grace period;
//! - [`rewrap`]: key rotation, the manifests and start profiles of a
//!   catalog re-wrapped under a new master key in place (`imagefs rewrap`);
//! - [`ext4`]: a read-only ext4 reader over a [`BlockDevice`] (inodes,
//!   directories, file maps, symlinks, xattrs), decoding through `ext4fmt`;
//! - [`transport`]: the protocols over the seam: [`transport::fuse`], the
//!   read-only FUSE view (`imagefs mount`), and [`transport::vhost`], the
//!   vhost-user-blk device (`imagefs serve`);
//! - [`agent`]: the host agent, serving every VM of a host from one set
//!   of shared tiers (`imagefs agent`), and above it
//!   [`transport::api`], its control API.
#![forbid(unsafe_code)]

pub mod agent;
pub mod device;
pub mod export;
pub mod ext4;
pub mod gc;
pub mod images;
pub mod lazy;
pub mod open;
pub mod profile;
pub mod rewrap;
pub mod tiers;
pub mod transport;
pub mod verify;

pub use device::BlockDevice;
pub use export::{ExportError, ExportReport, export};
pub use lazy::{
    DedicatedOptions, DedicatedState, LazyError, LazyImage, LazyMetrics, LazyOptions,
    PrefetchHandle, PrefetchMode, PrefetchOptions,
};
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
