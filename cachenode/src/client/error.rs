//! Errors of the AZ client tier.

use std::fmt;

use manifest::ChunkId;

/// What went wrong with one request to one cache node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The request failed: connect refused or timed out, connection reset,
    /// body cut short.
    #[error("{url}: {source}")]
    Request {
        /// The node's base URL.
        url: String,
        /// The HTTP client's error.
        source: reqwest::Error,
    },
    /// The node answered with a status that is neither 200 nor 404.
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// The node's base URL.
        url: String,
        /// The status code.
        status: u16,
        /// The start of the node's one-line explanation.
        body: String,
    },
    /// The node sent more than a chunk object can be.
    #[error("{url}: the object is over {limit} bytes")]
    TooLarge {
        /// The node's base URL.
        url: String,
        /// The limit ([`cachetiers::MAX_OBJECT_LEN`]).
        limit: usize,
    },
    /// The node sent bytes that do not hash to the chunk's id.
    #[error("{url}: sent bytes that hash to {actual}")]
    Corrupt {
        /// The node's base URL.
        url: String,
        /// The SHA-256 of what it sent.
        actual: ChunkId,
    },
    /// The node sent a stripe that is not the one asked for, or not a
    /// stripe at all.
    #[error("{url}: bad stripe: {problem}")]
    BadStripe {
        /// The node's base URL.
        url: String,
        /// What is wrong with it.
        problem: crate::stripe::StripeError,
    },
    /// Erasure mode: no 4 of the 5 stripes rebuild the object (more than
    /// one is bad, or four came and the fifth did not).
    #[error("{url}: no 4 of the stripes rebuild an object that hashes to its id")]
    Unrebuildable {
        /// The object's 5 nodes.
        url: String,
    },
    /// The node had not answered when the get's time was up.
    #[error("{url}: no answer within {timeout_ms} ms")]
    TimedOut {
        /// The node's base URL.
        url: String,
        /// The get's timeout.
        timeout_ms: u64,
    },
    /// The request's task died (a bug; reported rather than unwound).
    #[error("{url}: the request was lost: {reason}")]
    Lost {
        /// The node's base URL.
        url: String,
        /// Why.
        reason: String,
    },
}

impl NodeError {
    /// The node the error is about.
    pub fn url(&self) -> &str {
        match self {
            NodeError::Request { url, .. }
            | NodeError::Status { url, .. }
            | NodeError::TooLarge { url, .. }
            | NodeError::Corrupt { url, .. }
            | NodeError::BadStripe { url, .. }
            | NodeError::Unrebuildable { url }
            | NodeError::TimedOut { url, .. }
            | NodeError::Lost { url, .. } => url,
        }
    }
}

/// Errors of [`AzTier`](super::AzTier): bad configuration, or a chunk no
/// node could serve. Chunk-store calls wrap the latter in
/// `StoreError::Backend { tier: "az", .. }`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AzError {
    /// The configuration lists no node.
    #[error("the AZ cache tier needs at least one node URL")]
    NoNodes,
    /// A node URL is not `http://host:port`.
    #[error("AZ cache node URL `{url}` is not usable: {problem}")]
    BadNodeUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        problem: String,
    },
    /// Erasure mode with fewer nodes than stripes.
    #[error(
        "the AZ cache tier's erasure mode needs at least 5 nodes (4 data + 1 parity stripe), \
         {nodes} configured: use mode = \"replicated\" or add nodes"
    )]
    TooFewForErasure {
        /// Nodes configured.
        nodes: usize,
    },
    /// `max_fills_in_flight` is 0.
    #[error("AZ cache setting `max_fills_in_flight` must be at least 1")]
    ZeroFills,
    /// The fleet token could not be read.
    #[error("the AZ cache tier's fleet token: {source}")]
    Token {
        /// The underlying error.
        source: crate::token::TokenError,
    },
    /// Erasure mode without a fleet token: misses could not be filled.
    #[error(
        "the AZ cache tier's erasure mode writes stripes and needs the fleet token: \
         set fleet_token_file or IMAGEFS_FLEET_TOKEN"
    )]
    NoFleetToken,
    /// A node is listed twice.
    #[error("AZ cache node `{url}` is listed twice")]
    DuplicateNode {
        /// The URL.
        url: String,
    },
    /// A timeout setting is zero.
    #[error("AZ cache setting `{field}` must be more than 0 ms")]
    ZeroDuration {
        /// The field's name.
        field: &'static str,
    },
    /// The tier's runtime could not be started.
    #[error("cannot start the AZ cache tier's runtime: {source}")]
    Runtime {
        /// The underlying error.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the AZ cache tier's HTTP client: {source}")]
    Client {
        /// The underlying error.
        source: reqwest::Error,
    },
    /// The tier's runtime stopped before it had an answer.
    #[error("chunk {id}: the AZ cache tier's runtime gave no answer")]
    NoAnswer {
        /// The chunk.
        id: ChunkId,
    },
    /// No node gave an answer for the chunk.
    #[error("chunk {id}: no AZ cache node answered: {}", Failures(failures))]
    Unavailable {
        /// The chunk.
        id: ChunkId,
        /// What each node asked said, in the order asked.
        failures: Vec<NodeError>,
    },
}

struct Failures<'a>(&'a [NodeError]);

impl fmt::Display for Failures<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            // The client's error shows only its own level ("error sending
            // request"); its causes ("connection refused") are in its source
            // chain, so spell them out. The first source is already in
            // `failure`'s own message.
            write!(f, "{failure}")?;
            let mut cause = std::error::Error::source(failure).and_then(|s| s.source());
            while let Some(c) = cause {
                write!(f, ": {c}")?;
                cause = c.source();
            }
        }
        Ok(())
    }
}
