//! One call to the nodes: preference order, hedge, failover, deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachetiers::MAX_OBJECT_LEN;
use manifest::ChunkId;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;

use super::counters::AzCounters;
use super::error::NodeError;
use super::health::Health;
use super::hrw::preference_order;

/// What is asked of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// `GET`: the object.
    Get,
    /// `HEAD`: whether the node (or its origin) has it.
    Head,
}

/// A node's answer: a definite yes or no.
#[derive(Debug)]
pub(super) enum Answer {
    /// 200: the verified object (empty for a HEAD).
    Found(Vec<u8>),
    /// 404: neither the node nor its origin has the chunk.
    Missing,
}

/// What the call needs; cloned into the runtime's task.
#[derive(Debug, Clone)]
pub(super) struct Call {
    pub(super) client: reqwest::Client,
    pub(super) nodes: std::sync::Arc<[String]>,
    pub(super) timeout: Duration,
    pub(super) hedge_after: Duration,
    /// Which nodes have been slow lately (replicated mode).
    pub(super) health: Arc<Health>,
}

/// The longest explanation kept from a node's error body.
const MAX_ERROR_BODY: usize = 300;

/// Asks the nodes for `id` in preference order, each slow node (see
/// [`Health`]) moved behind the next healthy one.
///
/// The first node is asked first. If it has not answered after `hedge_after`,
/// the next node is asked too (once per call); a node that fails is
/// followed by the next one not yet asked. The first answer (200 with a
/// verified object, or 404) wins and the other requests are dropped
/// (which cancels them). When every node asked has failed, or the
/// `timeout` is up, the failures are returned, one per node asked.
pub(super) async fn ask_nodes(
    call: Call,
    counters: &AzCounters,
    id: ChunkId,
    ask: Ask,
) -> Result<Answer, Vec<NodeError>> {
    let mut order = preference_order(&id, &call.nodes);
    if call.health.arrange(&mut order) > 0 {
        counters.slow_passed_over.inc();
    }
    let mut next = 0;
    let mut requests = JoinSet::new();
    // Task id → (node index, was it a hedge, when it was sent).
    let mut in_flight = HashMap::new();
    let mut failures = Vec::new();
    let mut hedged = false;

    // Sends the request to the next node in preference order.
    let launch = |requests: &mut JoinSet<_>,
                  in_flight: &mut HashMap<_, _>,
                  next: &mut usize,
                  hedge: bool| {
        let k = order[*next];
        *next += 1;
        counters.requests.inc();
        counters.nodes[k].requests.inc();
        let client = call.client.clone();
        let url = call.nodes[k].clone();
        let handle = requests.spawn(async move { ask_node(&client, &url, &id, ask).await });
        in_flight.insert(handle.id(), (k, hedge, Instant::now()));
    };
    launch(&mut requests, &mut in_flight, &mut next, false);

    let hedge_timer = tokio::time::sleep(call.hedge_after);
    let deadline = tokio::time::sleep(call.timeout);
    tokio::pin!(hedge_timer, deadline);
    loop {
        tokio::select! {
            // Answers first: one that is ready counts even if a timer
            // fired at the same moment.
            biased;
            joined = requests.join_next_with_id() => {
                let Some(joined) = joined else {
                    // Nothing in flight and every node asked.
                    break;
                };
                let (task, result) = match joined {
                    Ok((task, result)) => (task, result),
                    Err(e) => {
                        let task = e.id();
                        let url = in_flight
                            .get(&task)
                            .map_or_else(String::new, |&(k, _, _)| call.nodes[k].clone());
                        (task, Err(NodeError::Lost { url, reason: e.to_string() }))
                    }
                };
                let Some((k, hedge, sent)) = in_flight.remove(&task) else {
                    continue;
                };
                match result {
                    Ok(answer) => {
                        call.health.answered(k, sent.elapsed(), call.hedge_after);
                        if hedge {
                            counters.hedge_wins.inc();
                        }
                        // The requests still in flight are dropped: those
                        // already past the hedge delay count against
                        // their node.
                        for &(other, _, sent) in in_flight.values() {
                            if sent.elapsed() >= call.hedge_after {
                                call.health.strike(other);
                            }
                        }
                        return Ok(answer);
                    }
                    Err(failure) => {
                        call.health.strike(k);
                        let c = &counters.nodes[k];
                        c.errors.inc();
                        if matches!(failure, NodeError::Corrupt { .. }) {
                            c.corrupt.inc();
                        }
                        failures.push(failure);
                        if next < order.len() {
                            counters.failovers.inc();
                            launch(&mut requests, &mut in_flight, &mut next, false);
                        }
                    }
                }
            }
            () = &mut hedge_timer, if !hedged && next < order.len() => {
                hedged = true;
                counters.hedges_sent.inc();
                launch(&mut requests, &mut in_flight, &mut next, true);
            }
            () = &mut deadline => {
                let timeout_ms = u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX);
                let mut late: Vec<usize> = in_flight.values().map(|&(k, _, _)| k).collect();
                late.sort_unstable_by_key(|k| order.iter().position(|o| o == k));
                for k in late {
                    call.health.strike(k);
                    counters.nodes[k].errors.inc();
                    failures.push(NodeError::TimedOut { url: call.nodes[k].clone(), timeout_ms });
                }
                break;
            }
        }
    }
    // Dropping `requests` aborts whatever is still in flight.
    Err(failures)
}

/// One request to one node.
async fn ask_node(
    client: &reqwest::Client,
    url: &str,
    id: &ChunkId,
    ask: Ask,
) -> Result<Answer, NodeError> {
    let target = format!("{url}/v1/chunks/{id}");
    let request = match ask {
        Ask::Get => client.get(target),
        Ask::Head => client.head(target),
    };
    let failed = |source| NodeError::Request {
        url: url.to_string(),
        source,
    };
    let mut response = request.send().await.map_err(failed)?;
    match response.status() {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => return Ok(Answer::Missing),
        _ => return Err(status_failure(url, response).await),
    }
    if ask == Ask::Head {
        return Ok(Answer::Found(Vec::new()));
    }
    let too_large = || NodeError::TooLarge {
        url: url.to_string(),
        limit: MAX_OBJECT_LEN,
    };
    let announced = response.content_length().unwrap_or(0);
    if announced > MAX_OBJECT_LEN as u64 {
        return Err(too_large());
    }
    // The announced length is only a hint for the allocation (bounded);
    // the bytes that arrive are what is checked. Each piece is hashed as
    // it arrives, while the next ones are still on the wire, rather than
    // all at the end (a quarter of a millisecond for 512 KiB); it is the
    // one place a node's answer is checked.
    let mut object = Vec::with_capacity(usize::try_from(announced).unwrap_or(0));
    let mut hash = Sha256::new();
    while let Some(piece) = response.chunk().await.map_err(failed)? {
        if object.len() + piece.len() > MAX_OBJECT_LEN {
            return Err(too_large());
        }
        hash.update(&piece);
        object.extend_from_slice(&piece);
    }
    let actual = ChunkId(hash.finalize().into());
    if actual != *id {
        return Err(NodeError::Corrupt {
            url: url.to_string(),
            actual,
        });
    }
    Ok(Answer::Found(object))
}

/// A node's answer other than 200 or 404, with the start of its one-line
/// explanation if it sends one quickly (a body that fails to arrive only
/// loses the explanation).
pub(super) async fn status_failure(url: &str, mut response: reqwest::Response) -> NodeError {
    let status = response.status().as_u16();
    let body = match response.chunk().await {
        Ok(Some(bytes)) => one_line(&bytes[..bytes.len().min(MAX_ERROR_BODY)]),
        _ => String::new(),
    };
    NodeError::Status {
        url: url.to_string(),
        status,
        body,
    }
}

/// Text for one log line: lossy UTF-8, line breaks as spaces, trimmed.
pub(super) fn one_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace(['\r', '\n'], " ")
        .trim()
        .to_string()
}
