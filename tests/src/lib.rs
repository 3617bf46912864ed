//! Helpers for the end-to-end tests in `tests/`.
//!
//! - [`imagegen`] builds OCI images from layers of tar entries and writes
//!   them as an OCI layout, an oci-archive or a docker-archive, plus bad
//!   inputs; [`tarw`] is its byte-exact tar writer.
//! - [`cases`] holds the generated test images and the facts their
//!   flattened trees must show (the expected model).
//! - [`treecheck`] lists a tree canonically from a host directory (a mount
//!   or an unpacked rootfs), from an ext4 image through `ext4-view`, or from
//!   `umoci unpack` (the independent reference), and diffs two listings.
//! - [`e2e`] runs every check on a flattened image: `e2fsck -fn`, ext4-view,
//!   a read-only loop mount, a read-write mount of a copy.
//! - [`garage`] starts a real single-node Garage S3 server.
//! - [`registry`] starts a real `docker-registry` (anonymous, htpasswd or
//!   token auth, optionally TLS with a CA made by `openssl`) and pushes
//!   images into it with skopeo; [`tokenissuer`] is the token service of
//!   its `auth: token` mode (ES256 JWTs); [`hostile_registry`] is a peer
//!   that serves a layout and misbehaves (corrupt, truncated, oversized,
//!   silent, redirecting) for the bad-input tests; [`linkshape`] slows
//!   what one loopback port sends to a link's rate (`tc`), for the
//!   `registry_pull` benchmark's registry across a network.
//! - [`qemu`] is the one QEMU `-M microvm` command-line builder;
//!   [`guest`] boots a Linux guest with it against a vhost-user-blk
//!   socket and reads what it printed. The `guest-run` binary does the
//!   same for scripts.
//! - [`blkbench`] is the guest half of the `vhost_guest` benchmark: a
//!   static C program timing raw reads inside the guest, and its output.
//! - [`harness`] finds tools, prints `SKIP:` lines, and mounts/unmounts.
//! - [`fleet`] runs a fleet of `imagefs cache-node` processes (the AZ
//!   tier's tests and benchmark): kill, SIGSTOP, add a node.
//! - [`process`] starts child processes (`imagefs mount`, cache nodes),
//!   waits until they are ready, and stops them with a signal.
//! - [`rng`] is the seeded generator of randomized tests (seed printed,
//!   replayed from an environment variable).
//! - [`synthetic`] encrypts chunk plaintexts into a manifest and a store,
//!   for tests of the lazy layers that need no filesystem.
//!
//! Integration tests: `generator.rs` (the generator against umoci and
//! skopeo), `flatten.rs` (every flattening and ext4 case), `bad_inputs.rs`
//! (errors name the culprit, nothing is left behind), `debian.rs` (the real
//! images from `scripts/build-debian-images.sh`). They need root, e2fsprogs,
//! umoci, skopeo and GNU tar; a test that lacks one prints `SKIP: <reason>`.
#![forbid(unsafe_code)]

pub mod blkbench;
pub mod cases;
pub mod delayproxy;
pub mod e2e;
pub mod fleet;
pub mod garage;
pub mod guest;
pub mod harness;
pub mod hostile_registry;
pub mod imagegen;
pub mod linkshape;
pub mod process;
pub mod qemu;
pub mod registry;
pub mod rng;
pub mod synthetic;
pub mod tarw;
pub mod tokenissuer;
pub mod treecheck;
