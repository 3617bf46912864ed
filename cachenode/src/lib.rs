//! cachenode: the AZ cache tier over HTTP, both sides.
//!
//! - [`client`]: what an instance uses. [`AzTier`] is a
//!   [`ChunkStore`](cachetiers::ChunkStore) over the AZ's cache nodes,
//!   in one of two modes ([`AzMode`], by configuration):
//!   - replicated: [`client::hrw`] (rendezvous hashing) picks each
//!     chunk's owner, a get goes to the owner, hedges to the second
//!     choice when the owner is slow and fails over down the preference
//!     order; nodes fill themselves from the origin;
//!   - erasure: each chunk is 4 data + 1 XOR parity stripe on its top 5
//!     nodes; a get asks all 5 and rebuilds from the first 4, and a miss
//!     is filled by the client, behind the read, with the fleet token.
//!
//!   Objects are checked against their id. Configured by [`AzConfig`]
//!   (TOML-readable).
//! - [`stripe`]: the stripe layout and its wire format (encode and
//!   decode side by side).
//! - [`token`]: [`FleetToken`], the shared secret stripe writes carry
//!   (redacted in `Debug`, never logged).
//! - [`server`]: what runs on a cache node. [`server::start`] /
//!   [`server::serve`] serve `GET /v1/chunks/{id}` from the node's local
//!   store, filled once per chunk from the origin
//!   (a [`TieredStore`](cachetiers::TieredStore) of `node-local` over
//!   `origin`), plus `/metrics` and `/healthz`. Configured by
//!   [`NodeConfig`].
//!
//! Both sides speak plain HTTP (HTTP/1.1, or h2c when the client is
//! configured for it) over kept-alive connections with TCP_NODELAY: the
//! nodes live on the AZ network and carry only ciphertext addressed by its
//! SHA-256, which every reader checks. Each hop hashes an object once: the
//! node when it fills from the origin, the client when it receives (as
//! the bytes arrive); a node serves its own copy without hashing it again.
#![forbid(unsafe_code)]

pub mod client;
pub mod server;
pub mod stripe;
pub mod token;

pub use client::{AzConfig, AzError, AzMode, AzSnapshot, AzTier, NodeError, NodeSnapshot};
pub use server::{CacheNode, NodeConfig, RunningNode, ServerError};
pub use token::FleetToken;
