//! The AZ cache tier as seen by an instance: [`AzTier`], a
//! [`ChunkStore`] over the AZ's cache nodes.
//!
//! - [`hrw`]: rendezvous hashing, which node owns which chunk;
//! - [`AzConfig`]: node URLs and timeouts (TOML-readable);
//! - [`AzTier`]: get with hedge and failover, slow nodes asked after
//!   healthy ones (replicated mode, `health`), or from
//!   4 of 5 stripes with fills and repairs behind the read (erasure mode,
//!   `erasure`), over a small runtime of its own;
//! - [`AzSnapshot`]: its counters; [`AzError`], [`NodeError`]: its errors.

mod config;
mod counters;
mod erasure;
mod error;
mod fetch;
mod health;
pub mod hrw;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use cachetiers::checked::check_put;
use cachetiers::{ChunkStore, PutOutcome, StoreError};
use manifest::ChunkId;

use crate::token::FleetToken;

pub use config::{AzConfig, AzMode};
pub use counters::{AzSnapshot, NodeSnapshot};
pub use error::{AzError, NodeError};

use counters::AzCounters;
use fetch::{Answer, Ask, Call, ask_nodes};

/// The tier name used in errors (`StoreError::Backend { tier: "az", .. }`).
pub const TIER_NAME: &str = "az";

/// Worker threads of the tier's runtime: the work is waiting on sockets,
/// so two serve any number of calling threads.
const WORKER_THREADS: usize = 2;

/// Idle connections kept open to each node: one per get in flight, so
/// the usual few concurrent gets all find one.
const POOL_PER_NODE: usize = 32;

/// How long an idle connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// HTTP/2 receive windows: a whole largest object (4 MiB) per stream,
/// several per connection.
const H2_STREAM_WINDOW: u32 = 4 << 20;
const H2_CONNECTION_WINDOW: u32 = 16 << 20;

/// How much longer than the configured timeout a blocking call waits for
/// the runtime's answer before giving up on it (the runtime enforces the
/// timeout itself; this only guards against a runtime that stopped).
const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// The AZ cache nodes as one [`ChunkStore`] tier.
///
/// Each chunk has an owner among the nodes, chosen by rendezvous hashing
/// ([`hrw`]), so the AZ keeps one copy of each chunk and every instance
/// asks the same node. A get asks the owner, hedges to the second choice
/// if the owner is slow, and fails over down the preference order when a
/// node fails (see [`AzTier::get`](ChunkStore::get)).
///
/// The tier owns a small tokio runtime; its [`ChunkStore`] methods block
/// the calling thread until the answer is in (never longer than the
/// configured timeout plus a grace). They may be called from any thread,
/// including from inside a tokio runtime (nothing panics), but async code
/// should call them through `spawn_blocking` so as not to stall a worker.
pub struct AzTier {
    config: AzConfig,
    call: Call,
    counters: Arc<AzCounters>,
    /// Erasure mode: what stripe writes need (`None` in replicated mode).
    writer: Option<erasure::Writer>,
    handle: tokio::runtime::Handle,
    /// `Some` until drop, which shuts it down without blocking.
    runtime: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for AzTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzTier")
            .field("nodes", &self.call.nodes)
            .field("timeout", &self.call.timeout)
            .field("hedge_after", &self.call.hedge_after)
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

impl AzTier {
    /// A tier over the nodes of `config`, after checking it (at least one
    /// node, `http://host:port` URLs without duplicates, non-zero
    /// timeouts). Sends nothing yet.
    ///
    /// In [`AzMode::Erasure`] it also needs at least 5 nodes and the
    /// fleet token (`fleet_token_file`, else `IMAGEFS_FLEET_TOKEN`).
    pub fn new(config: AzConfig) -> Result<Self, AzError> {
        let nodes = config.validated_nodes()?;
        let writer = match config.mode {
            AzMode::Replicated => None,
            AzMode::Erasure => {
                let token = FleetToken::load(config.fleet_token_file.as_deref())
                    .map_err(|source| AzError::Token { source })?
                    .ok_or(AzError::NoFleetToken)?;
                Some(erasure::Writer {
                    token,
                    fills: Arc::new(tokio::sync::Semaphore::new(config.max_fills_in_flight)),
                    max_fills: config.max_fills_in_flight,
                })
            }
        };
        // reqwest's TLS (enabled in this workspace for the S3 origin, with
        // no bundled crypto provider) panics at build without a
        // process-wide provider. No TLS is ever used here; ring is the one
        // cachetiers installs too, and an error means one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // No proxy: the nodes are on the AZ network, and an HTTP_PROXY
        // meant for the outside world must not be used to reach them. No
        // request timeout either: each call's deadline (`timeout_ms`)
        // covers all its requests and cancels those still in flight.
        //
        // Connections stay open between gets (a new one per get costs a
        // handshake and a cold TCP window), and TCP_NODELAY keeps a
        // request's last segment from waiting for a delayed ACK.
        let builder = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(config.connect_timeout())
            .tcp_nodelay(true)
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_PER_NODE);
        let builder = if config.http2 {
            // The default 64 KiB stream window would make a 512 KiB
            // answer wait for several window updates.
            builder
                .http2_prior_knowledge()
                .http2_initial_stream_window_size(H2_STREAM_WINDOW)
                .http2_initial_connection_window_size(H2_CONNECTION_WINDOW)
        } else {
            builder.http1_only()
        };
        let client = builder
            .build()
            .map_err(|source| AzError::Client { source })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("az-tier")
            .enable_all()
            .build()
            .map_err(|source| AzError::Runtime { source })?;
        let nodes_len = nodes.len();
        let counters = Arc::new(AzCounters::new(nodes_len));
        Ok(Self {
            call: Call {
                client,
                nodes: nodes.into(),
                timeout: config.timeout(),
                hedge_after: config.hedge_after(),
                health: Arc::new(health::Health::new(nodes_len, health::PROBE_EVERY)),
            },
            config,
            counters,
            writer,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &AzConfig {
        &self.config
    }

    /// The node URLs (normalized), in configuration order.
    pub fn nodes(&self) -> &[String] {
        &self.call.nodes
    }

    /// Erasure mode: the nodes holding `id`'s stripes, by stripe index
    /// (its top 5 by rendezvous hashing); `None` in replicated mode.
    pub fn stripe_nodes(&self, id: &ChunkId) -> Option<[&str; crate::stripe::STRIPES]> {
        self.writer.as_ref()?;
        let nodes = erasure::placement(id, &self.call.nodes);
        Some(nodes.map(|k| self.call.nodes[k].as_str()))
    }

    /// Erasure mode: waits until no stripe write is in flight, or until
    /// `within` is up; whether none is. (Writes go behind the reads; a
    /// caller that wants to read what it just filled waits here.)
    pub fn wait_for_writes(&self, within: Duration) -> bool {
        let Some(writer) = &self.writer else {
            return true;
        };
        let until = std::time::Instant::now() + within;
        loop {
            if writer.fills.available_permits() == writer.max_fills {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The nodes in the order they are asked for `id`: the owner first.
    pub fn preference(&self, id: &ChunkId) -> Vec<&str> {
        hrw::preference_order(id, &self.call.nodes)
            .into_iter()
            .map(|k| self.call.nodes[k].as_str())
            .collect()
    }

    /// The counters, now.
    pub fn counters(&self) -> AzSnapshot {
        self.counters.snapshot(&self.call.nodes)
    }

    /// Asks the nodes on the tier's runtime and waits for the answer.
    fn ask(&self, id: &ChunkId, ask: Ask) -> Result<Answer, StoreError> {
        self.counters.calls.inc();
        let call = self.call.clone();
        let counters = Arc::clone(&self.counters);
        let id = *id;
        let answer = match &self.writer {
            Some(writer) => {
                let writer = Some(writer.clone());
                self.block_on(async move { erasure::get(call, writer, counters, id).await })
            }
            None => self.block_on(async move { ask_nodes(call, &counters, id, ask).await }),
        };
        let failures = match answer {
            Some(Ok(answer)) => return Ok(answer),
            Some(Err(failures)) => failures,
            None => {
                self.counters.unavailable.inc();
                return Err(StoreError::Backend {
                    tier: TIER_NAME.into(),
                    source: Box::new(AzError::NoAnswer { id }),
                });
            }
        };
        self.counters.unavailable.inc();
        let corrupt: Vec<String> = failures
            .iter()
            .filter(|f| {
                matches!(
                    f,
                    NodeError::Corrupt { .. } | NodeError::Unrebuildable { .. }
                )
            })
            .map(|f| f.url().to_string())
            .collect();
        let unavailable = AzError::Unavailable { id, failures };
        if corrupt.is_empty() {
            return Err(StoreError::Backend {
                tier: TIER_NAME.into(),
                source: Box::new(unavailable),
            });
        }
        // A node served bad bytes: report it as corruption so the tiered
        // store counts a verification failure for this tier.
        Err(StoreError::Corrupt {
            id,
            location: corrupt.join(", "),
            problem: unavailable.to_string(),
        })
    }

    /// Runs `future` on the tier's runtime and waits for its output;
    /// `None` if the runtime did not deliver it in time (it was shut down).
    ///
    /// The output comes back over a std channel rather than through
    /// `Runtime::block_on`, which panics when called from inside another
    /// runtime: this way any thread may call.
    fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            // The caller may have given up; nothing to do then.
            let _ = tx.send(future.await);
        });
        rx.recv_timeout(self.call.timeout + ANSWER_GRACE).ok()
    }
}

impl Drop for AzTier {
    fn drop(&mut self) {
        // Dropping a runtime blocks on its workers, which panics inside
        // another runtime; nothing of ours needs waiting for.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl ChunkStore for AzTier {
    /// `get` hashes every object a node sends.
    fn checks_gets(&self) -> bool {
        true
    }

    /// Gets the object from the nodes.
    ///
    /// Erasure mode: from 4 of the object's 5 stripes, all 5 asked at once
    /// (see [`AzMode::Erasure`]); `Ok(None)` when fewer than 4 can come
    /// and a node said 404 (the caller fetches from the next tier and
    /// `put`s, which writes the stripes); [`StoreError::Corrupt`] when no
    /// 4 of them rebuild the object. The rest of this describes the
    /// replicated mode.
    ///
    /// GET `{node}/v1/chunks/{id}`, to the owner first; if it has not
    /// answered after `hedge_after`, to the second choice too; a node
    /// that fails (connect error, 5xx, wrong bytes) is followed by the
    /// next one. The first answer wins:
    /// - 200 with bytes that hash to `id` (at most `MAX_OBJECT_LEN`):
    ///   the object;
    /// - 404: `Ok(None)`. A node that misses asks the origin itself, so a
    ///   404 means the origin does not have the chunk either.
    ///
    /// When no node answers within `timeout`: [`StoreError::Corrupt`]
    /// (location: the nodes' URLs) if a node sent bytes that do not hash
    /// to `id`, else [`StoreError::Backend`] with [`AzError::Unavailable`],
    /// naming each node asked and what it said.
    fn get(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        match self.ask(id, Ask::Get)? {
            Answer::Found(object) => Ok(Some(object)),
            Answer::Missing => Ok(None),
        }
    }

    /// Checks the object, then writes nothing and answers
    /// [`PutOutcome::AlreadyPresent`].
    ///
    /// Nodes fill themselves: the owner of a chunk fetches it from the
    /// origin on its first miss, so any chunk in the origin is already
    /// reachable through this tier. Instances never write shared tiers
    /// (shared tiers are read-only to instances): a node serves only what it verified from
    /// the origin. The fill a tiered store attempts after an origin hit is
    /// therefore done (by the node) rather than refused.
    ///
    /// In erasure mode the nodes do not fill themselves: the put splits
    /// the object into its 5 stripes and writes them to its nodes behind
    /// the read (bounded, see [`AzConfig::max_fills_in_flight`]) and
    /// answers [`PutOutcome::Stored`] at once.
    fn put(&self, id: &ChunkId, object: &[u8]) -> Result<PutOutcome, StoreError> {
        check_put(id, object)?;
        let Some(writer) = &self.writer else {
            return Ok(PutOutcome::AlreadyPresent);
        };
        let _context = self.handle.enter();
        erasure::fill(&self.call, writer, &self.counters, id, object);
        Ok(PutOutcome::Stored)
    }

    /// Erasure mode: whether a get finds the object (the stripes are
    /// fetched; nothing lighter proves 4 of them rebuild it).
    ///
    /// Replicated mode:
    /// HEAD `{node}/v1/chunks/{id}` with the same hedge and failover as
    /// `get`: whether the owner node or its origin has the chunk.
    fn contains(&self, id: &ChunkId) -> Result<bool, StoreError> {
        Ok(matches!(self.ask(id, Ask::Head)?, Answer::Found(_)))
    }

    /// Does nothing and answers `false`: an instance cannot drop a node's
    /// copy. A node hashes every object it fills from the origin, and
    /// bytes that fail the id check here (a copy damaged on the node) are
    /// never returned: the next node is asked instead.
    fn remove(&self, _id: &ChunkId) -> Result<bool, StoreError> {
        Ok(false)
    }
}
