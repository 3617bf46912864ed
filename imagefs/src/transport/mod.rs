//! The transports: thin adapters from a protocol to the block-device seam
//! ([`crate::device::BlockDevice`]) and the ext4 reader. They sit at the top
//! of the data flow: nothing below imports them.
//!
//! - [`fuse`]: the read-only FUSE view of an image's files (`imagefs mount`);
//! - [`vhost`]: the vhost-user-blk device a VMM connects to (`imagefs serve`);
//! - [`api`]: the host agent's control API (HTTP on a Unix socket) and
//!   its client (`imagefs agent`, `imagefs vm`).

pub mod api;
pub mod fuse;
pub mod vhost;
