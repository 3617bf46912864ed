//! The node's stripe routes (the erasure-coded mode of the AZ tier) and
//! the bounded store behind them.
//!
//! A node holds at most one stripe of an object, whichever index the
//! client gave it: the index travels in the stripe's header. So when the
//! fleet changes, the nodes that stay in an object's top 5 keep their
//! stripes as they are, and only the newcomer needs one (the index none
//! of the others has); nothing moves between the nodes that stayed.
//!
//! - `GET /v1/stripes/{id}`: 200 with the stripe (header and body, see
//!   [`crate::stripe`]), 404 if the node has none. Anonymous.
//!   A node never asks the origin for a stripe: the client that missed
//!   fetches the object once and writes the stripes itself, so one miss
//!   costs one origin GET, not five.
//! - `PUT /v1/stripes/{id}`: stores the body (replacing the node's
//!   stripe of that object) after checking it is a stripe of that object;
//!   204. Needs
//!   `Authorization: Bearer <fleet token>`: 401 without it or with a
//!   wrong one, 403 if the node has no token configured (it takes no
//!   writes at all).
//! - `DELETE /v1/stripes/{id}`: drops the stripe (a reader found
//!   it bad); 204, or 404. Same token rule.
//!
//! Stripes are kept in memory, up to a byte capacity; past it the oldest
//! written go first. A node that restarts comes back empty, which in this
//! mode costs no hit rate: 4 of an object's 5 nodes still answer, and the
//! next miss rewrites all five.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, to_bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use manifest::ChunkId;
use telemetry::counter::Counter;
use telemetry::prometheus::{Kind, Text};

use super::CacheNode;
use super::http::{parse_id, text};
use crate::stripe::{MAX_STRIPE_LEN, decode_of};

type Key = ChunkId;

/// Stripes in memory, bounded by bytes; oldest written evicted first.
#[derive(Debug)]
pub(super) struct StripeStore {
    capacity: u64,
    inner: Mutex<Inner>,
    pub(super) stored: Counter,
    pub(super) deleted: Counter,
    pub(super) evicted: Counter,
    pub(super) hits: Counter,
    pub(super) misses: Counter,
}

#[derive(Debug, Default)]
struct Inner {
    /// The stripe and the number of the write that stored it.
    map: HashMap<Key, (u64, Arc<[u8]>)>,
    /// Write order: key and write number. A record whose key has since
    /// been rewritten or deleted no longer matches and is skipped.
    order: VecDeque<(Key, u64)>,
    writes: u64,
    bytes: u64,
}

impl StripeStore {
    pub(super) fn new(capacity: u64) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
            stored: Counter::new(),
            deleted: Counter::new(),
            evicted: Counter::new(),
            hits: Counter::new(),
            misses: Counter::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn get(&self, key: &Key) -> Option<Arc<[u8]>> {
        self.lock().map.get(key).map(|(_, s)| Arc::clone(s))
    }

    pub(super) fn put(&self, key: Key, stripe: Vec<u8>) {
        let len = stripe.len();
        if len as u64 > self.capacity {
            return;
        }
        let mut inner = self.lock();
        inner.writes += 1;
        let write = inner.writes;
        if let Some((_, old)) = inner.map.insert(key, (write, stripe.into())) {
            inner.bytes -= old.len() as u64;
        }
        inner.bytes += len as u64;
        inner.order.push_back((key, write));
        while inner.bytes > self.capacity {
            let Some((old_key, old_write)) = inner.order.pop_front() else {
                break;
            };
            if inner
                .map
                .get(&old_key)
                .is_some_and(|(w, _)| *w == old_write)
                && let Some((_, gone)) = inner.map.remove(&old_key)
            {
                inner.bytes -= gone.len() as u64;
                self.evicted.inc();
            }
        }
        // Stale records (rewritten or deleted keys) are dropped once they
        // outnumber the live ones, so the order stays bounded too.
        if inner.order.len() > 2 * inner.map.len() + 64 {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|(k, w)| map.get(k).is_some_and(|(live, _)| live == w));
        }
        drop(inner);
        self.stored.inc();
    }

    pub(super) fn delete(&self, key: &Key) -> bool {
        let mut inner = self.lock();
        match inner.map.remove(key) {
            Some((_, gone)) => {
                inner.bytes -= gone.len() as u64;
                drop(inner);
                self.deleted.inc();
                true
            }
            None => false,
        }
    }

    /// (stripes, bytes) held now.
    pub(super) fn usage(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.map.len(), inner.bytes)
    }

    pub(super) fn to_prometheus(&self) -> String {
        let (count, bytes) = self.usage();
        let mut text = Text::new();
        text.family(
            "imagefs_node_stripes",
            Kind::Gauge,
            "Erasure-coded stripes the node holds.",
        )
        .sample(&[], count as u64);
        text.family(
            "imagefs_node_stripe_bytes",
            Kind::Gauge,
            "Bytes of the stripes the node holds.",
        )
        .sample(&[], bytes);
        let mut f = text.family(
            "imagefs_node_stripe_events_total",
            Kind::Counter,
            "Stripe reads, writes and drops.",
        );
        for (event, c) in [
            ("hit", &self.hits),
            ("miss", &self.misses),
            ("stored", &self.stored),
            ("deleted", &self.deleted),
            ("evicted", &self.evicted),
        ] {
            f.sample(&[("event", event)], c.get());
        }
        text.finish()
    }
}

/// The refusal for a write without the right token, if it is one.
fn refuse_write(node: &CacheNode, request: &Request) -> Option<Response> {
    let Some(token) = &node.fleet_token else {
        return Some(text(
            StatusCode::FORBIDDEN,
            "this cache node takes no stripe writes (no fleet token is configured)",
        ));
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    if token.admits(given) {
        return None;
    }
    let mut response = text(
        StatusCode::UNAUTHORIZED,
        "a stripe write needs the fleet token",
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(response)
}

/// The chunk id of a write that carries the token, or the refusal.
fn authorized_key(
    node: &CacheNode,
    request: &Request,
    text_id: &str,
) -> Result<ChunkId, Box<Response>> {
    if let Some(refused) = refuse_write(node, request) {
        return Err(Box::new(refused));
    }
    parse_id(text_id)
}

/// `GET /v1/stripes/{id}`.
pub(super) async fn get_stripe(
    State(node): State<Arc<CacheNode>>,
    Path(text_id): Path<String>,
) -> Response {
    let key = match parse_id(&text_id) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match node.stripes.get(&key) {
        Some(stripe) => {
            node.stripes.hits.inc();
            let mut response = Response::new(Body::from(bytes_of(stripe)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        None => {
            node.stripes.misses.inc();
            text(
                StatusCode::NOT_FOUND,
                format!("no stripe of chunk {key} is here"),
            )
        }
    }
}

/// The stripe as a body without copying it out of the store's `Arc`.
fn bytes_of(stripe: Arc<[u8]>) -> axum::body::Bytes {
    axum::body::Bytes::from_owner(ArcBytes(stripe))
}

struct ArcBytes(Arc<[u8]>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// `PUT /v1/stripes/{id}`.
pub(super) async fn put_stripe(
    State(node): State<Arc<CacheNode>>,
    Path(text_id): Path<String>,
    request: Request,
) -> Response {
    // The token first: nothing of an unauthenticated body is read.
    let key = match authorized_key(&node, &request, &text_id) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let body = match to_bytes(request.into_body(), MAX_STRIPE_LEN).await {
        Ok(body) => body,
        Err(_) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a stripe is at most {MAX_STRIPE_LEN} bytes (or the body was cut short)"),
            );
        }
    };
    if let Err(e) = decode_of(&body, &key) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("not a stripe for this path: {e}"),
        );
    }
    node.stripes.put(key, body.to_vec());
    StatusCode::NO_CONTENT.into_response()
}

/// `DELETE /v1/stripes/{id}`.
pub(super) async fn delete_stripe(
    State(node): State<Arc<CacheNode>>,
    Path(text_id): Path<String>,
    request: Request,
) -> Response {
    let key = match authorized_key(&node, &request, &text_id) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    if node.stripes.delete(&key) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_stays_under_capacity_and_evicts_oldest() {
        let s = StripeStore::new(100);
        let id = |n: u8| ChunkId([n; 32]);
        for n in 0..5 {
            s.put(id(n), vec![n; 30]);
        }
        let (count, bytes) = s.usage();
        assert_eq!((count, bytes), (3, 90));
        assert!(s.get(&id(0)).is_none() && s.get(&id(1)).is_none());
        assert_eq!(&*s.get(&id(4)).unwrap(), &[4u8; 30][..]);
        // Rewriting a key keeps one copy, counted once.
        s.put(id(4), vec![9; 10]);
        assert_eq!(s.usage(), (3, 70));
        assert!(s.delete(&id(4)));
        assert!(!s.delete(&id(4)));
        assert_eq!(s.usage(), (2, 60));
        // Larger than the whole capacity: not kept.
        s.put(id(7), vec![0; 101]);
        assert!(s.get(&id(7)).is_none());
    }
}
