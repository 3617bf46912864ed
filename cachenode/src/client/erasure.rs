//! The erasure-coded mode: one get asks the object's 5 nodes for their
//! stripes at once and rebuilds from the first 4; a miss is filled by
//! writing the 5 stripes behind the read.
//!
//! Constant work: every get sends exactly 5 requests, with no hedge
//! timer and no retry. A slow or stopped node is simply the fifth to
//! answer, and its request is dropped when the other four are in, so it
//! delays nothing; a dead node fails at once and the other four suffice.
//! That is the whole of "health" here: the client keeps each node's
//! recent latency and how often it was the one dropped
//! ([`NodeSnapshot`](super::NodeSnapshot)) to show which node is slow,
//! but no weighting is needed for it to stop delaying reads, and it keeps
//! its stripes (it is still written to and still answers when it can).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use manifest::ChunkId;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::counters::AzCounters;
use super::error::NodeError;
use super::fetch::{Answer, Call, status_failure};
use super::hrw::preference_order;
use crate::stripe::{self, DATA_STRIPES, MAX_STRIPE_LEN, STRIPES, Stripe, decode_of};
use crate::token::FleetToken;

/// What the erasure mode adds to a call: the token its writes carry and
/// the bound on writes in flight.
#[derive(Debug, Clone)]
pub(super) struct Writer {
    pub(super) token: FleetToken,
    pub(super) fills: Arc<Semaphore>,
    pub(super) max_fills: usize,
}

/// The nodes that hold `id`'s stripes, by stripe index: its top 5 by
/// rendezvous hashing.
pub(super) fn placement(id: &ChunkId, nodes: &[String]) -> [usize; STRIPES] {
    let order = preference_order(id, nodes);
    let mut out = [0; STRIPES];
    out.copy_from_slice(&order[..STRIPES]);
    out
}

/// One node's answer.
enum Got {
    /// 200 and a stripe of this object (its index in its header).
    Stripe { index: usize, bytes: Vec<u8> },
    /// 404.
    Missing,
}

/// What came back from the 5 nodes so far, by position in the placement.
#[derive(Default)]
struct Slots {
    /// (stripe index, encoded stripe) from each node that sent one.
    got: [Option<(usize, Vec<u8>)>; STRIPES],
    /// Positions whose node should get a stripe once the object is
    /// known: it said 404 or sent a bad one.
    to_repair: Vec<usize>,
}

impl Slots {
    fn count(&self) -> usize {
        self.got.iter().flatten().count()
    }

    /// The object rebuilt from 4 stripes of distinct indices, leaving out
    /// position `without`, if it hashes to `id`.
    fn rebuild_verified(
        &self,
        id: &ChunkId,
        without: Option<usize>,
        counters: &AzCounters,
    ) -> Option<Vec<u8>> {
        let mut seen = [false; STRIPES];
        let mut chosen: Vec<Stripe<'_>> = Vec::with_capacity(DATA_STRIPES);
        for (p, slot) in self.got.iter().enumerate() {
            let Some((index, bytes)) = slot else { continue };
            if Some(p) == without || seen[*index] || chosen.len() == DATA_STRIPES {
                continue;
            }
            // Checked on arrival; decoding again only borrows the body.
            let Ok(stripe) = decode_of(bytes, id) else {
                continue;
            };
            seen[*index] = true;
            chosen.push(stripe);
        }
        if chosen.len() < DATA_STRIPES {
            return None;
        }
        let object = stripe::rebuild(&chosen).ok()?;
        if ChunkId(Sha256::digest(&object).into()) != *id {
            return None;
        }
        if chosen.iter().any(|s| s.index == stripe::PARITY) {
            counters.rebuilt_with_parity.inc();
        }
        Some(object)
    }

    /// (position, index) pairs to write back: a bad stripe's node gets the
    /// right stripe of the same index; a node without one gets an index
    /// no other node of the 5 has.
    fn repairs(&self, bad: Option<usize>) -> Vec<(usize, usize)> {
        let mut held = [false; STRIPES];
        for (p, slot) in self.got.iter().enumerate() {
            if let Some((index, _)) = slot
                && Some(p) != bad
            {
                held[*index] = true;
            }
        }
        let mut free = (0..STRIPES).filter(|&i| !held[i]);
        let mut out = Vec::new();
        if let Some(p) = bad
            && let Some((index, _)) = &self.got[p]
        {
            out.push((p, *index));
        }
        for &p in &self.to_repair {
            if let Some(index) = free.next() {
                out.push((p, index));
            }
        }
        out
    }
}

/// Gets `id`: asks its 5 nodes at once, rebuilds from the first 4
/// stripes, verifies by SHA-256 and drops the fifth request.
///
/// - 4 stripes that rebuild the object: the object (a node that answered
///   404 or sent a bad stripe meanwhile gets the right one written back,
///   if a write slot is free).
/// - 4 that do not: the fifth is awaited, and each 4 of the 5 is tried;
///   the one left out of the combination that verifies is the bad
///   stripe: counted, and replaced on its node.
/// - fewer than 4 stripes can still come: [`Answer::Missing`] if any node
///   said 404 (the caller then fetches the object from the next tier and
///   [`fill`]s), else the failures.
pub(super) async fn get(
    call: Call,
    writer: Option<Writer>,
    counters: Arc<AzCounters>,
    id: ChunkId,
) -> Result<Answer, Vec<NodeError>> {
    let nodes = placement(&id, &call.nodes);
    let started = Instant::now();
    let mut requests = JoinSet::new();
    let mut position_of = HashMap::new();
    for (p, &k) in nodes.iter().enumerate() {
        counters.requests.inc();
        counters.nodes[k].requests.inc();
        let client = call.client.clone();
        let url = call.nodes[k].clone();
        let handle = requests.spawn(async move { ask_stripe(&client, &url, &id).await });
        position_of.insert(handle.id(), p);
    }
    let mut slots = Slots::default();
    let mut failures = Vec::new();
    let mut missing = 0;
    // How many stripes the last rebuild was tried with (a duplicate index
    // after the fleet changed can make 4 stripes too few).
    let mut tried_with = 0;
    let deadline = tokio::time::sleep(call.timeout);
    tokio::pin!(deadline);
    loop {
        let have = slots.count();
        if have >= DATA_STRIPES && have > tried_with {
            tried_with = have;
            if let Some(object) = slots.rebuild_verified(&id, None, &counters) {
                // The requests still in flight are the slow ones: dropped.
                for &p in position_of.values() {
                    counters.nodes[nodes[p]].dropped_slow.inc();
                }
                let repairs = slots.repairs(None);
                repair(&call, writer.as_ref(), &counters, &id, &object, &repairs);
                return Ok(Answer::Found(object));
            }
        }
        if tried_with > 0 && (have == STRIPES || requests.is_empty()) {
            // Four did not verify: find the one whose absence does.
            for (bad, &k) in nodes.iter().enumerate() {
                if slots.got[bad].is_none() {
                    continue;
                }
                if let Some(object) = slots.rebuild_verified(&id, Some(bad), &counters) {
                    counters.bad_stripes.inc();
                    counters.nodes[k].corrupt.inc();
                    counters.nodes[k].errors.inc();
                    let repairs = slots.repairs(Some(bad));
                    repair(&call, writer.as_ref(), &counters, &id, &object, &repairs);
                    return Ok(Answer::Found(object));
                }
            }
            failures.push(unrebuildable(&call, &nodes));
            return Err(failures);
        }
        if have + requests.len() < DATA_STRIPES {
            // Not enough stripes can come any more.
            if missing > 0 {
                return Ok(Answer::Missing);
            }
            return Err(failures);
        }
        tokio::select! {
            biased;
            joined = requests.join_next_with_id() => {
                let Some(joined) = joined else { continue };
                let (task, result) = match joined {
                    Ok((task, result)) => (task, result),
                    Err(e) => {
                        let task = e.id();
                        let url = position_of
                            .get(&task)
                            .map_or_else(String::new, |&p| call.nodes[nodes[p]].clone());
                        (task, Err(NodeError::Lost { url, reason: e.to_string() }))
                    }
                };
                let Some(p) = position_of.remove(&task) else { continue };
                let c = &counters.nodes[nodes[p]];
                match result {
                    Ok(Got::Stripe { index, bytes }) => {
                        c.observe(started.elapsed());
                        slots.got[p] = Some((index, bytes));
                    }
                    Ok(Got::Missing) => {
                        c.observe(started.elapsed());
                        missing += 1;
                        slots.to_repair.push(p);
                    }
                    Err(failure) => {
                        c.errors.inc();
                        if matches!(failure, NodeError::BadStripe { .. }) {
                            c.corrupt.inc();
                            counters.bad_stripes.inc();
                            slots.to_repair.push(p);
                        }
                        failures.push(failure);
                    }
                }
            }
            () = &mut deadline => {
                let timeout_ms = u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX);
                for &p in position_of.values() {
                    let k = nodes[p];
                    counters.nodes[k].errors.inc();
                    failures.push(NodeError::TimedOut { url: call.nodes[k].clone(), timeout_ms });
                }
                return Err(failures);
            }
        }
    }
    // Dropping `requests` on return aborts whatever is still in flight.
}

/// No 4 of the stripes rebuild the object: more than one is bad.
fn unrebuildable(call: &Call, nodes: &[usize; STRIPES]) -> NodeError {
    let urls: Vec<&str> = nodes.iter().map(|&k| call.nodes[k].as_str()).collect();
    NodeError::Unrebuildable {
        url: urls.join(", "),
    }
}

/// One stripe from one node.
async fn ask_stripe(client: &reqwest::Client, url: &str, id: &ChunkId) -> Result<Got, NodeError> {
    let failed = |source| NodeError::Request {
        url: url.to_string(),
        source,
    };
    let mut response = client
        .get(format!("{url}/v1/stripes/{id}"))
        .send()
        .await
        .map_err(failed)?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(Got::Missing),
        _ => return Err(status_failure(url, response).await),
    }
    let announced = response.content_length().unwrap_or(0);
    let too_large = || NodeError::TooLarge {
        url: url.to_string(),
        limit: MAX_STRIPE_LEN,
    };
    if announced > MAX_STRIPE_LEN as u64 {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
    while let Some(piece) = response.chunk().await.map_err(failed)? {
        if bytes.len() + piece.len() > MAX_STRIPE_LEN {
            return Err(too_large());
        }
        bytes.extend_from_slice(&piece);
    }
    match decode_of(&bytes, id) {
        Ok(stripe) => Ok(Got::Stripe {
            index: stripe.index,
            bytes,
        }),
        Err(problem) => Err(NodeError::BadStripe {
            url: url.to_string(),
            problem,
        }),
    }
}

/// Writes `object`'s 5 stripes to its nodes (stripe `i` to the `i`-th
/// of its top 5), behind the read that fetched it from the next tier:
/// spawned on the tier's runtime (call it inside the runtime's context),
/// at most `max_fills_in_flight` objects at once (one more is skipped,
/// counted).
pub(super) fn fill(
    call: &Call,
    writer: &Writer,
    counters: &Arc<AzCounters>,
    id: &ChunkId,
    object: &[u8],
) {
    counters.fills_started.inc();
    let all: Vec<(usize, usize)> = (0..STRIPES).map(|i| (i, i)).collect();
    write_stripes(call, writer, counters, id, object, &all, false);
}

/// Rewrites stripes of a verified object: (position in the placement,
/// stripe index) pairs.
fn repair(
    call: &Call,
    writer: Option<&Writer>,
    counters: &Arc<AzCounters>,
    id: &ChunkId,
    object: &[u8],
    repairs: &[(usize, usize)],
) {
    if repairs.is_empty() {
        return;
    }
    let Some(writer) = writer else { return };
    write_stripes(call, writer, counters, id, object, repairs, true);
}

fn write_stripes(
    call: &Call,
    writer: &Writer,
    counters: &Arc<AzCounters>,
    id: &ChunkId,
    object: &[u8],
    writes: &[(usize, usize)],
    repair: bool,
) {
    let Ok(permit) = Arc::clone(&writer.fills).try_acquire_owned() else {
        counters.fills_skipped.inc();
        return;
    };
    let nodes = placement(id, &call.nodes);
    let stripes = stripe::split(id, object);
    let mut set = JoinSet::new();
    for &(p, index) in writes {
        let client = call.client.clone();
        let url = format!("{}/v1/stripes/{id}", call.nodes[nodes[p]]);
        let bearer = writer.token.bearer();
        let body = stripes[index].clone();
        let timeout = call.timeout;
        set.spawn(async move {
            let sent = client
                .put(url)
                .header(reqwest::header::AUTHORIZATION, bearer)
                .body(body)
                .timeout(timeout)
                .send()
                .await;
            matches!(sent, Ok(r) if r.status().is_success())
        });
    }
    let counters = Arc::clone(counters);
    // The permit is held until every write is answered (or timed out).
    tokio::spawn(async move {
        let _permit = permit;
        while let Some(done) = set.join_next().await {
            match done {
                Ok(true) if repair => counters.stripes_repaired.inc(),
                Ok(true) => {}
                _ => counters.stripe_writes_failed.inc(),
            }
        }
    });
}
