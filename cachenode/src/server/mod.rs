//! The cache-node server: an AZ cache node that serves chunks over HTTP
//! from its local store, filling it from the origin.
//!
//! Routes:
//!
//! - `GET /v1/chunks/{id}`: 200 with the object
//!   (`application/octet-stream`); 400 if `id` is not 64 hex digits; 404
//!   if neither the local store nor the origin has it; 502 with one line
//!   naming the chunk and what kind of answer each tier gave (`miss`,
//!   `failed`, `corrupt copy dropped`) when the origin failed or served a
//!   bad copy. The details (which may name the origin's URL, paths or
//!   credentials) go to the node's stderr, never to the client.
//! - `HEAD /v1/chunks/{id}`: 200 or 404, whether the node or its origin
//!   has the chunk (nothing is fetched).
//! - `GET /metrics`: Prometheus text: the tiers' counters
//!   ([`TieredStore::render_prometheus`]) and HTTP requests by status.
//! - `GET /healthz`: 200 `ok`.
//! - `GET`, `PUT`, `DELETE /v1/stripes/{id}`: the erasure-coded
//!   mode's stripes, kept in memory and never fetched from the origin;
//!   writes need the fleet token (see [`stripes`]).
//!
//! Every request is subject to the node's [`NodeLimits`]: a client over
//! its rate gets 429, a chunk or stripe request past `max_in_flight` gets 503 (both
//! with `Retry-After`, at once, not queued), and at most
//! `max_origin_fetches` origin fetches run at once.
//!
//! The stores are a [`TieredStore`] of `node-local` over `origin`: a miss
//! is fetched once from the origin however many requests wait for it
//! (single-flight), verified, kept locally and served. A hit is read on
//! the runtime's worker and not hashed again (the node hashed it when it
//! filled it; the client hashes what it receives); only misses go to the
//! blocking pool. The server answers HTTP/1.1 and h2c (prior knowledge)
//! on the same port, sets TCP_NODELAY and counts connections
//! ([`CacheNode::connections_accepted`]).
//!
//! Entry points, from most to least managed: [`start`] (a [`RunningNode`]
//! on threads of its own, stopped through a [`NodeStopHandle`] from any
//! thread), [`serve`] (async, on the caller's runtime and listener). The
//! library installs no signal handlers: the program decides what stops a
//! node.

#[doc(hidden)]
pub mod fuzzing;
mod http;
mod limits;
pub mod stripes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use cachetiers::{ChunkStore, TieredError, TieredStore};
use serde::Deserialize;
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;

/// Name of the node's own store in metrics and errors.
pub const LOCAL_TIER: &str = "node-local";
/// Name of the origin in metrics and errors.
pub const ORIGIN_TIER: &str = "origin";

pub use limits::{LimitsError, NodeLimits};

use crate::token::{FleetToken, TokenError};

/// Default bytes of stripes a node keeps in memory.
pub const DEFAULT_STRIPE_CAPACITY: u64 = 1 << 30;

/// Worker threads of the node's runtime. Reads from the node's own store
/// run on them (short local reads); origin fetches run on tokio's
/// blocking pool.
const WORKER_THREADS: usize = 2;

/// How long a stop waits for requests in flight to finish.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Settings of a cache node.
///
/// ```toml
/// listen = "0.0.0.0:8420"
///
/// stripe_capacity = 1073741824          # bytes of stripes kept in memory
/// fleet_token_file = "/etc/imagefs/fleet-token"
///
/// [limits]
/// max_in_flight = 512
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Address and port to listen on; port 0 picks a free port (see
    /// [`RunningNode::addr`]).
    pub listen: SocketAddr,
    /// Load limits.
    pub limits: NodeLimits,
    /// Bytes of erasure-coded stripes kept (in memory; oldest written go
    /// first).
    pub stripe_capacity: u64,
    /// The file holding the fleet token that stripe writes must carry;
    /// without it, [`TOKEN_ENV`](crate::token::TOKEN_ENV) if set; without
    /// either the node refuses every stripe write.
    pub fleet_token_file: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8420)),
            limits: NodeLimits::default(),
            stripe_capacity: DEFAULT_STRIPE_CAPACITY,
            fleet_token_file: None,
        }
    }
}

/// Why a cache node could not be set up or stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The tiered store could not be built.
    #[error("cannot build the cache node's tiers: {source}")]
    Tiers {
        /// The underlying error.
        source: TieredError,
    },
    /// The load limits cannot work.
    #[error("cannot start the cache node: {source}")]
    Limits {
        /// The underlying error.
        source: LimitsError,
    },
    /// The fleet token could not be read.
    #[error("cannot start the cache node: {source}")]
    Token {
        /// The underlying error.
        source: TokenError,
    },
    /// The node's runtime could not be started.
    #[error("cannot start the cache node's runtime: {source}")]
    Runtime {
        /// The underlying error.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The listener does not know its own address.
    #[error("cannot tell which address the cache node listens on: {source}")]
    NoLocalAddr {
        /// The underlying error.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("cache node on {addr} stopped: {source}")]
    Serve {
        /// The address it listened on.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The server's task ended without a result (it panicked).
    #[error("cache node on {addr} died: {reason}")]
    Died {
        /// The address it listened on.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A cache node's state: its tiers and its HTTP counters.
#[derive(Debug)]
pub struct CacheNode {
    store: TieredStore,
    http: http::HttpCounters,
    limits: NodeLimits,
    /// Permits for chunk requests being worked on.
    in_flight: Arc<Semaphore>,
    /// Permits for origin fetches and lookups.
    origin_fetches: Arc<Semaphore>,
    rate: limits::RateLimiter,
    /// Erasure-coded stripes.
    stripes: stripes::StripeStore,
    /// What stripe writes must carry; `None`: no writes.
    fleet_token: Option<FleetToken>,
}

impl CacheNode {
    /// A node with the default [`NodeLimits`] that serves from `local`
    /// and fills it from `origin`.
    pub fn new(
        local: Arc<dyn ChunkStore>,
        origin: Arc<dyn ChunkStore>,
    ) -> Result<Self, ServerError> {
        Self::with_limits(local, origin, NodeLimits::default())
    }

    /// A node under `limits` that serves from `local` and fills it from
    /// `origin`.
    pub fn with_limits(
        local: Arc<dyn ChunkStore>,
        origin: Arc<dyn ChunkStore>,
        limits: NodeLimits,
    ) -> Result<Self, ServerError> {
        limits
            .validate()
            .map_err(|source| ServerError::Limits { source })?;
        let store = TieredStore::new(vec![
            (LOCAL_TIER.to_string(), local),
            (ORIGIN_TIER.to_string(), origin),
        ])
        .map_err(|source| ServerError::Tiers { source })?;
        Ok(Self {
            store,
            http: http::HttpCounters::default(),
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            origin_fetches: Arc::new(Semaphore::new(limits.max_origin_fetches)),
            rate: limits::RateLimiter::new(&limits),
            limits,
            stripes: stripes::StripeStore::new(DEFAULT_STRIPE_CAPACITY),
            fleet_token: None,
        })
    }

    /// The same node keeping up to `capacity` bytes of stripes and taking
    /// stripe writes that carry `token` (none without one).
    pub fn with_stripes(mut self, capacity: u64, token: Option<FleetToken>) -> Self {
        self.stripes = stripes::StripeStore::new(capacity);
        self.fleet_token = token;
        self
    }

    /// (stripes, bytes) the node holds.
    pub fn stripe_usage(&self) -> (usize, u64) {
        self.stripes.usage()
    }

    /// The limits it runs under.
    pub fn limits(&self) -> &NodeLimits {
        &self.limits
    }

    /// The tiered store (tier 0 `node-local`, tier 1 `origin`), for its
    /// metrics.
    pub fn store(&self) -> &TieredStore {
        &self.store
    }

    /// How many TCP connections the node has accepted (clients that keep
    /// their connections alive make few).
    pub fn connections_accepted(&self) -> u64 {
        self.http.connections()
    }

    /// How many requests to `route` (`"chunk"`, `"metrics"`, `"healthz"`,
    /// `"other"`) were answered with `status`.
    pub fn http_count(&self, route: &str, status: u16) -> u64 {
        self.http.count(route, status)
    }

    /// What `GET /metrics` answers.
    pub fn render_metrics(&self) -> String {
        let mut text = self.store.render_prometheus();
        text.push_str(&self.http.to_prometheus());
        text.push_str(&self.stripes.to_prometheus());
        text
    }

    /// The HTTP routes over this node.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        http::router(Arc::clone(self))
    }
}

/// Serves `node` on `listener` until `shutdown` completes, then finishes
/// the requests in flight and returns. Runs on the caller's runtime.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Arc<CacheNode>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::NoLocalAddr { source })?;
    let counting = Arc::clone(&node);
    let listener = listener.tap_io(move |stream: &mut tokio::net::TcpStream| {
        counting.http.accepted();
        // Without it a response's last segment can wait for the client's
        // delayed ACK. Failing to set it costs only latency, so the
        // connection is served either way.
        let _ = stream.set_nodelay(true);
    });
    // The peer's address is what the per-client rate is keyed by.
    let app = node
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServerError::Serve { addr, source })
}

/// A cache node serving on a runtime of its own. Dropping it stops it
/// (like [`RunningNode::stop`], ignoring the result).
#[derive(Debug)]
pub struct RunningNode {
    addr: SocketAddr,
    node: Arc<CacheNode>,
    stop: Option<oneshot::Sender<()>>,
    stop_requested: Arc<Notify>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Binds `config.listen` and serves a node over `local` and `origin` on
/// a new runtime, returning at once. Call it from a plain thread (not
/// from inside a tokio runtime).
pub fn start(
    config: &NodeConfig,
    local: Arc<dyn ChunkStore>,
    origin: Arc<dyn ChunkStore>,
) -> Result<RunningNode, ServerError> {
    let token = FleetToken::load(config.fleet_token_file.as_deref())
        .map_err(|source| ServerError::Token { source })?;
    start_node(
        config,
        Arc::new(
            CacheNode::with_limits(local, origin, config.limits.clone())?
                .with_stripes(config.stripe_capacity, token),
        ),
    )
}

/// [`start`] for a node already built (to share its counters); the node's
/// own limits apply, not `config.limits`.
pub fn start_node(config: &NodeConfig, node: Arc<CacheNode>) -> Result<RunningNode, ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("cache-node")
        .enable_all()
        .build()
        .map_err(|source| ServerError::Runtime { source })?;
    let bind_error = |source| ServerError::Bind {
        addr: config.listen,
        source,
    };
    // Bound with std so that nothing here has to block on the runtime.
    let std_listener = std::net::TcpListener::bind(config.listen).map_err(bind_error)?;
    std_listener.set_nonblocking(true).map_err(bind_error)?;
    let addr = std_listener.local_addr().map_err(bind_error)?;
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener).map_err(bind_error)?
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = runtime.spawn(serve(listener, Arc::clone(&node), async move {
        // A dropped sender stops the node too.
        let _ = stopped.await;
    }));
    Ok(RunningNode {
        addr,
        node,
        stop: Some(stop),
        stop_requested: Arc::new(Notify::new()),
        task: Some(task),
        runtime: Some(runtime),
    })
}

/// Stops a [`RunningNode`] from any thread (see
/// [`RunningNode::stop_handle`]).
#[derive(Debug, Clone)]
pub struct NodeStopHandle(Arc<Notify>);

impl NodeStopHandle {
    /// Asks the node to stop; its [`RunningNode::wait`] then stops it and
    /// returns. A request made before the wait starts is kept.
    pub fn stop(&self) {
        self.0.notify_one();
    }
}

impl RunningNode {
    /// The address actually bound (the real port when `listen` asked for
    /// port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base URL clients use (a wildcard listen address
    /// is shown as the loopback address of its family).
    pub fn url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}")
    }

    /// The node (its store and counters).
    pub fn node(&self) -> &Arc<CacheNode> {
        &self.node
    }

    /// A handle that ends [`RunningNode::wait`].
    pub fn stop_handle(&self) -> NodeStopHandle {
        NodeStopHandle(Arc::clone(&self.stop_requested))
    }

    /// Blocks until a [`NodeStopHandle`] asks (or until the server
    /// fails), then stops.
    pub fn wait(mut self) -> Result<(), ServerError> {
        let requested = Arc::clone(&self.stop_requested);
        self.wait_for(async move {
            requested.notified().await;
            Ok(())
        })?;
        self.stop()
    }

    /// Blocks until `shutdown` completes (or the server fails), then
    /// stops.
    pub fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        self.wait_for(async {
            shutdown.await;
            Ok(())
        })?;
        self.stop()
    }

    /// Waits on the node's runtime for `until` or for the server to end.
    fn wait_for(
        &mut self,
        until: impl Future<Output = Result<(), ServerError>>,
    ) -> Result<(), ServerError> {
        let (Some(runtime), Some(task)) = (&self.runtime, &mut self.task) else {
            return Ok(());
        };
        let addr = self.addr;
        let ended = runtime.block_on(async {
            tokio::select! {
                ended = task => (true, self_task_result(addr, ended)),
                signalled = until => (false, signalled),
            }
        });
        let (task_ended, result) = ended;
        if task_ended {
            // A finished task must not be awaited again by the stop.
            self.task = None;
        }
        result
    }

    /// Stops accepting, lets the requests in flight finish (up to 10 s),
    /// closes the listener and returns how serving ended. Call it from a
    /// plain thread; from inside a tokio runtime it does not wait.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Some(runtime) = self.runtime.take() else {
            return Ok(());
        };
        let task = self.task.take();
        if tokio::runtime::Handle::try_current().is_ok() {
            // Blocking here would panic; the runtime goes down in the
            // background and takes the listener with it.
            runtime.shutdown_background();
            return Ok(());
        }
        let addr = self.addr;
        let result = match task {
            Some(task) => runtime.block_on(async {
                match tokio::time::timeout(STOP_GRACE, task).await {
                    Ok(ended) => self_task_result(addr, ended),
                    // Requests still in flight are cut off below.
                    Err(_) => Ok(()),
                }
            }),
            None => Ok(()),
        };
        runtime.shutdown_timeout(STOP_GRACE);
        result
    }
}

/// The server task's outcome as one result.
fn self_task_result(
    addr: SocketAddr,
    ended: Result<Result<(), ServerError>, tokio::task::JoinError>,
) -> Result<(), ServerError> {
    ended.unwrap_or_else(|e| {
        Err(ServerError::Died {
            addr,
            reason: e.to_string(),
        })
    })
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}
