//! The node's HTTP routes, their handlers and the request counters.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::stripes::{delete_stripe, get_stripe, put_stripe};
use cachetiers::tiered::TierOutcome;
use cachetiers::{ChunkStore, TieredError};
use manifest::ChunkId;
use telemetry::counter::Counter;
use telemetry::prometheus::{Kind, Text};
use tracing::Instrument;

use super::CacheNode;

/// Requests served, by route and status code, and connections accepted.
#[derive(Debug, Default)]
pub(super) struct HttpCounters {
    by_route: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    connections: Counter,
}

impl HttpCounters {
    /// Counts one accepted TCP connection.
    pub(super) fn accepted(&self) {
        self.connections.inc();
    }

    /// TCP connections accepted so far.
    pub(super) fn connections(&self) -> u64 {
        self.connections.get()
    }

    fn record(&self, method: &'static str, route: &'static str, status: StatusCode) {
        *self
            .by_route
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((method, route, status.as_u16()))
            .or_default() += 1;
    }

    /// The number of requests to `route` answered with `status`.
    pub(super) fn count(&self, route: &str, status: u16) -> u64 {
        self.by_route
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|((_, r, s), _)| *r == route && *s == status)
            .map(|(_, n)| n)
            .sum()
    }

    /// `imagefs_node_http_requests_total{method,route,code}`.
    pub(super) fn to_prometheus(&self) -> String {
        let counts = self
            .by_route
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut text = Text::new();
        let mut family = text.family(
            "imagefs_node_http_requests_total",
            Kind::Counter,
            "HTTP requests answered by the cache node.",
        );
        for ((method, route, code), n) in counts {
            let code = code.to_string();
            family.sample(&[("method", method), ("route", route), ("code", &code)], n);
        }
        text.family(
            "imagefs_node_http_connections_total",
            Kind::Counter,
            "TCP connections the cache node accepted (clients keep theirs open).",
        )
        .sample(&[], self.connections());
        text.finish()
    }
}

/// The node's routes (see the [module docs](super)).
pub(super) fn router(node: Arc<CacheNode>) -> Router {
    Router::new()
        .route("/v1/chunks/{id}", get(get_chunk).head(head_chunk))
        .route(
            "/v1/stripes/{id}",
            get(get_stripe).put(put_stripe).delete(delete_stripe),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .layer(middleware::from_fn_with_state(Arc::clone(&node), admit))
        .layer(middleware::from_fn_with_state(Arc::clone(&node), count))
        .with_state(node)
}

/// A fixed label for a request path (unbounded paths would make
/// unbounded metric series).
fn route_of(path: &str) -> &'static str {
    if path.starts_with("/v1/chunks/") {
        "chunk"
    } else if path.starts_with("/v1/stripes/") {
        "stripe"
    } else {
        match path {
            "/metrics" => "metrics",
            "/healthz" => "healthz",
            _ => "other",
        }
    }
}

fn method_of(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// Middleware: counts every answer by method, route and status, and
/// logs each request in a span of its own (method and path; never a
/// header, so never the fleet token).
async fn count(State(node): State<Arc<CacheNode>>, request: Request, next: Next) -> Response {
    let method = method_of(request.method());
    let route = route_of(request.uri().path());
    let span = tracing::debug_span!("http", method, path = %request.uri().path());
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            status = response.status().as_u16(),
            us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "answered"
        );
    });
    node.http.record(method, route, response.status());
    response
}

/// Middleware: the per-client rate for every request, and the in-flight
/// limit for chunk and stripe requests (the others are cheap and bounded). Over
/// either, the answer comes at once with `Retry-After`.
async fn admit(State(node): State<Arc<CacheNode>>, request: Request, next: Next) -> Response {
    // Without a peer address (the router driven in-process) every
    // request counts as one client.
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    if let Err(wait) = node.rate.take(peer, Instant::now()) {
        return busy(
            StatusCode::TOO_MANY_REQUESTS,
            wait,
            "too many requests from this client",
        );
    }
    if !matches!(route_of(request.uri().path()), "chunk" | "stripe") {
        return next.run(request).await;
    }
    // Held until the answer is ready; an origin fetch holds a permit of
    // its own (see `get_chunk`).
    let Ok(_permit) = Arc::clone(&node.in_flight).try_acquire_owned() else {
        return busy(StatusCode::SERVICE_UNAVAILABLE, 1, "the cache node is busy");
    };
    next.run(request).await
}

/// A refusal with `Retry-After: seconds`.
fn busy(status: StatusCode, seconds: u64, message: &str) -> Response {
    let mut response = text(status, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// A plain-text answer of one line.
pub(super) fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut line: String = message.into().replace(['\r', '\n'], " ");
    line.push('\n');
    (status, line).into_response()
}

/// The longest part of a bad id echoed in a 400 (a path may be huge).
const MAX_ECHOED_ID: usize = 80;

/// The chunk id in a request path, or the 400 answer.
pub(super) fn parse_id(text_id: &str) -> Result<ChunkId, Box<Response>> {
    text_id.parse().map_err(|e| {
        let shown: String = text_id.chars().take(MAX_ECHOED_ID).collect();
        let more = if shown.len() < text_id.len() {
            "…"
        } else {
            ""
        };
        Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("`{shown}{more}` is not a chunk id (64 hex digits): {e}"),
        ))
    })
}

/// What a client is told about a failed fetch: the chunk and the kind of
/// answer each tier gave. The tiers' own words can carry the origin's
/// URL, credentials in it, or local paths, so they go to stderr only.
fn public_failure(id: &ChunkId, error: &TieredError) -> String {
    tracing::warn!("{error}");
    match error {
        TieredError::Unavailable { attempts, .. } => {
            let tiers: Vec<String> = attempts
                .iter()
                .map(|a| {
                    let kind = match a.outcome {
                        TierOutcome::Miss => "miss",
                        TierOutcome::Corrupt(_) => "corrupt copy dropped",
                        TierOutcome::Quarantined(_) => "corrupt copy quarantined",
                        TierOutcome::Failed(_) => "failed",
                    };
                    format!("{}: {kind}", a.tier)
                })
                .collect();
            format!("chunk {id} is unavailable: {}", tiers.join("; "))
        }
        _ => format!("chunk {id}: the fetch failed"),
    }
}

/// A 200 carrying `object`, moved into the body (not copied).
fn object_response(object: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(object));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// `GET /v1/chunks/{id}`: from the node's store, else from the origin
/// (once for concurrent requests), verified and kept.
///
/// A hit in the node's own store is read right here on the runtime's
/// worker: it is a local read of well under a millisecond, and handing
/// it to the blocking pool would cost a thread switch each way on every
/// warm request. Only a miss, which waits on the origin for as long as
/// the origin takes, goes to the blocking pool.
///
/// The hit is not hashed again here ([`ChunkStore::get_to_forward`]):
/// the node hashed the object when it filled it from the origin, and the
/// client hashes what it receives, so hashing here as well would verify
/// the same hop twice (0.29 ms of a 512 KiB get on this kind of
/// machine). A copy damaged at rest is refused by the client, which then
/// asks the next node.
async fn get_chunk(State(node): State<Arc<CacheNode>>, Path(text_id): Path<String>) -> Response {
    let id = match parse_id(&text_id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    if let Some(fetched) = node.store.fetch_fastest_to_forward(&id) {
        return object_response(fetched.object);
    }
    let Some(permit) = origin_permit(&node).await else {
        return internal(&id);
    };
    let fetching = Arc::clone(&node);
    // The permit moves into the fetch: a client that goes away drops
    // this future, not the blocking fetch, which still counts.
    let fetch = move || {
        let _permit = permit;
        fetching.store.fetch(&id)
    };
    match tokio::task::spawn_blocking(fetch).await {
        Ok(Ok(fetched)) => object_response(fetched.object),
        Ok(Err(e)) if e.is_clean_miss() => text(
            StatusCode::NOT_FOUND,
            format!("chunk {id} is not in the origin"),
        ),
        Ok(Err(e)) => text(StatusCode::BAD_GATEWAY, public_failure(&id, &e)),
        Err(e) => {
            tracing::warn!("chunk {id}: the fetch died: {e}");
            internal(&id)
        }
    }
}

/// A turn at the origin (waits for one; the wait is bounded by the
/// in-flight limit). `None` only if the semaphore was closed, which the
/// node never does.
async fn origin_permit(node: &CacheNode) -> Option<tokio::sync::OwnedSemaphorePermit> {
    Arc::clone(&node.origin_fetches).acquire_owned().await.ok()
}

/// A 500 that says nothing about the node's insides.
fn internal(id: &ChunkId) -> Response {
    text(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("chunk {id}: internal error"),
    )
}

/// `HEAD /v1/chunks/{id}`: 200 if the node or its origin has the chunk,
/// 404 if neither does; nothing is fetched.
async fn head_chunk(State(node): State<Arc<CacheNode>>, Path(text_id): Path<String>) -> Response {
    let id = match parse_id(&text_id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let Some(permit) = origin_permit(&node).await else {
        return internal(&id);
    };
    let asking = Arc::clone(&node);
    let lookup = move || {
        let _permit = permit;
        asking.store.contains(&id)
    };
    match tokio::task::spawn_blocking(lookup).await {
        Ok(Ok(true)) => StatusCode::OK.into_response(),
        Ok(Ok(false)) => StatusCode::NOT_FOUND.into_response(),
        Ok(Err(e)) => {
            tracing::warn!("chunk {id}: lookup: {e}");
            text(
                StatusCode::BAD_GATEWAY,
                format!("chunk {id}: the lookup failed"),
            )
        }
        Err(e) => {
            tracing::warn!("chunk {id}: the lookup died: {e}");
            internal(&id)
        }
    }
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(node): State<Arc<CacheNode>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        node.render_metrics(),
    )
        .into_response()
}

/// `GET /healthz`: the node is serving.
async fn healthz() -> &'static str {
    "ok"
}
