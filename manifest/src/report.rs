//! Reports as data: what the long-running commands did, as serde types.
//!
//! `imagefs serve`, `mount`, `fetch`, `convert` and `cache-node` write
//! these as JSON (`--json` or `--stats-json FILE`), and their human
//! tables are rendered from the same values. They live here, beside the
//! other formats, so that programs reading them (the vmm-shim, the
//! benchmarks) share the types without depending on the daemon.
//!
//! The counters themselves are kept where they are counted (the tiered
//! store, the lazy image, the vhost-user device, FUSE passthrough); each
//! hands out a snapshot of one of the types below.

use serde::{Deserialize, Serialize};

/// The counters of one tier at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierSnapshot {
    /// The tier's name.
    pub tier: String,
    /// Gets that returned a verified object.
    pub hits: u64,
    /// Gets that found nothing.
    pub misses: u64,
    /// Bytes of verified objects returned.
    pub bytes: u64,
    /// Objects that failed their id check (each was dropped from the tier).
    pub verification_failures: u64,
    /// Gets that failed (I/O, unreachable, ...).
    pub errors: u64,
    /// Objects written into this tier after a hit further down.
    pub fills: u64,
    /// Fills that failed (not fatal to the read).
    pub fill_failures: u64,
    /// Gets per latency bucket (non-cumulative), one per
    /// `cachetiers::LATENCY_BUCKETS` entry then `+Inf`.
    pub latency_buckets: Vec<u64>,
    /// Total time spent in gets, in seconds.
    pub latency_sum_seconds: f64,
    /// The most recent error or fill failure, for logs.
    pub last_error: Option<String>,
}

/// Counters of a lazily fetched image (`imagefs::LazyImage::metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazyMetrics {
    /// Bytes returned to readers.
    pub bytes_read: u64,
    /// Chunk reads served by the dedicated tier.
    pub dedicated_hits: u64,
    /// Chunk reads served by the memory cache.
    pub memory_hits: u64,
    /// Chunk fetches served by the host-wide plaintext cache (the
    /// agent's), without a store get.
    #[serde(default)]
    pub shared_plain_hits: u64,
    /// Chunk fetches that waited for another image's fetch through the
    /// host-wide plaintext cache.
    #[serde(default)]
    pub shared_plain_joins: u64,
    /// Chunk reads of holes (zeros, no fetch).
    pub hole_reads: u64,
    /// Objects fetched from the store (one per `ChunkStore::get`).
    pub store_fetches: u64,
    /// Bytes of those objects.
    pub store_bytes: u64,
    /// Chunk reads that waited for another reader's fetch.
    pub shared_fetches: u64,
    /// Fetches started by read-ahead.
    pub readahead_fetches: u64,
    /// Fetches that failed.
    pub fetch_errors: u64,
    /// Bytes written by `write_at`.
    pub bytes_written: u64,
    /// Chunks materialised in the dedicated tier for a write.
    pub write_materialised: u64,
    /// Flushes.
    pub flushes: u64,
}

/// What passthrough did during a mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassthroughStats {
    /// Whether the kernel accepts passthrough: agreed at INIT, and no
    /// backing file refused since.
    pub active: bool,
    /// Opens handed to the kernel with a backing file.
    pub passthrough_opens: u64,
    /// Opens served by the daemon's reads.
    pub cached_opens: u64,
    /// Files copied into backing files.
    pub materialized_files: u64,
    /// Bytes copied into backing files.
    pub materialized_bytes: u64,
    /// Backing files deleted to stay under the capacity.
    pub evicted_files: u64,
    /// Bytes of backing files kept now.
    pub stored_bytes: u64,
}

/// What an `imagefs serve` run did (`imagefs::transport::vhost::serve`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServeReport {
    /// Frontend connections served.
    pub connections: u64,
    /// Requests an earlier backend left in flight (a crash, an upgrade)
    /// that this one resubmitted after the frontend reconnected.
    #[serde(default)]
    pub resubmitted: u64,
    /// Of those, the ones completed.
    #[serde(default)]
    pub resubmitted_completed: u64,
    /// Read requests.
    pub reads: u64,
    /// Write requests.
    pub writes: u64,
    /// Flush requests.
    pub flushes: u64,
    /// GET_ID requests.
    pub get_ids: u64,
    /// Chains rejected (malformed, out of range, unsupported).
    pub rejected: u64,
    /// Requests that failed in the image (IOERR).
    pub io_errors: u64,
    /// Queues the guest broke (an available index past the window, a
    /// head outside the queue or still in flight): not processed again
    /// until the frontend reset them.
    #[serde(default)]
    pub broken_queues: u64,
    /// Bytes read by the guest.
    pub bytes_read: u64,
    /// Bytes written by the guest.
    pub bytes_written: u64,
    /// Service time (request taken off the queue to completion), all
    /// requests, median, microseconds (histogram bucket, about 12% wide).
    pub p50_us: u64,
    /// The same, 99th percentile.
    pub p99_us: u64,
    /// Service time of reads only, median, microseconds.
    pub read_p50_us: u64,
    /// Service time of reads only, 99th percentile.
    pub read_p99_us: u64,
}

impl std::fmt::Display for ServeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} connection(s); requests: {} reads ({} bytes), {} writes ({} bytes), {} flushes, \
             {} get-id, {} rejected, {} I/O errors; service time p50 {} us p99 {} us \
             (reads p50 {} us p99 {} us)",
            self.connections,
            self.reads,
            self.bytes_read,
            self.writes,
            self.bytes_written,
            self.flushes,
            self.get_ids,
            self.rejected,
            self.io_errors,
            self.p50_us,
            self.p99_us,
            self.read_p50_us,
            self.read_p99_us
        )?;
        if self.resubmitted > 0 {
            write!(
                f,
                "; {} requests resubmitted after a reconnect, {} completed",
                self.resubmitted, self.resubmitted_completed
            )?;
        }
        if self.broken_queues > 0 {
            write!(f, "; {} queues broken by the guest", self.broken_queues)?;
        }
        Ok(())
    }
}

/// Every tier of a tiered store at one moment, with the bounds of the
/// latency buckets (so a reader can compute percentiles).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TiersReport {
    /// One entry per tier, fastest first.
    pub tiers: Vec<TierSnapshot>,
    /// Gets that shared another thread's fetch (single-flight).
    pub shared_fetches: u64,
    /// Gets that no tier could serve.
    pub unavailable: u64,
    /// Chunks whose origin copy failed verification and was quarantined
    /// (not served, never deleted by a reader).
    #[serde(default)]
    pub quarantined: u64,
    /// Upper bounds (seconds) of the latency buckets of every tier; each
    /// tier's `latency_buckets` has one more entry, past the last bound.
    pub latency_bounds_seconds: Vec<f64>,
}

/// The report of `imagefs serve`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServeStats {
    /// The manifest digest served.
    pub image: String,
    /// What the vhost-user device did (absent when serving failed).
    pub served: Option<ServeReport>,
    /// Where the chunks came from.
    pub tiers: TiersReport,
    /// The lazy image's own counters.
    pub reader: LazyMetrics,
    /// What prefetching did (absent when prefetch was off or had no
    /// order to follow).
    #[serde(default)]
    pub prefetch: Option<PrefetchStats>,
    /// Every fetch from the chunk store, with when it ran (`serve
    /// --record-fetches`; absent otherwise).
    #[serde(default)]
    pub fetches: Option<FetchLog>,
}

/// Why a chunk was fetched from the chunk store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FetchCause {
    /// A guest (or FUSE) read needed it.
    Demand,
    /// Read-ahead after a read.
    Readahead,
    /// The start profile's prefetch.
    Prefetch,
}

/// One completed fetch of a chunk from the chunk store (all its tiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchEvent {
    /// The chunk's index in the image.
    pub chunk: u64,
    /// Who asked for it.
    pub cause: FetchCause,
    /// When the fetch started, µs after recording started.
    pub start_us: u64,
    /// When the object had arrived, µs after recording started.
    pub end_us: u64,
    /// Bytes of the object.
    pub bytes: u64,
}

/// The fetches of one run, in the order they completed
/// (`imagefs::LazyImage::record_fetches`). Times count from when recording
/// started (for `serve`, right after the image was opened, before any
/// prefetch or guest read). At most `limit` events are kept; later ones
/// are only counted in `dropped`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchLog {
    /// Completed fetches, in completion order.
    pub events: Vec<FetchEvent>,
    /// Fetches past the limit, not kept.
    pub dropped: u64,
}

/// The report of `imagefs mount`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MountStats {
    /// The manifest digest mounted.
    pub image: String,
    /// Where the chunks came from.
    pub tiers: TiersReport,
    /// The lazy image's own counters.
    pub reader: LazyMetrics,
    /// What FUSE passthrough did, when it was on.
    pub passthrough: Option<PassthroughStats>,
    /// What prefetching did (absent when prefetch was off or had no
    /// order to follow).
    #[serde(default)]
    pub prefetch: Option<PrefetchStats>,
}

/// What prefetching an ordered list of chunks did
/// (`imagefs::lazy::prefetch::PrefetchHandle::stats`). "Used" and
/// "unused" are as of the moment of the report: a chunk prefetched but not
/// yet read may still be read later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchStats {
    /// Chunks in the order (duplicates dropped).
    pub queued: u64,
    /// Chunks the prefetch fetched from the store itself.
    pub prefetched: u64,
    /// Prefetched chunks that a demand read then read (each counted once).
    pub used: u64,
    /// Prefetched chunks no demand read has read (yet).
    pub unused: u64,
    /// Demand misses that joined a fetch the prefetch had in flight
    /// instead of fetching the chunk themselves.
    pub demand_waited: u64,
    /// Chunks of the order it did not fetch: already local, holes, or
    /// fetched by a demand read first.
    pub skipped: u64,
    /// Prefetch fetches that failed (a demand read of the chunk retries).
    pub errors: u64,
    /// Whether it was stopped before reaching the end of the order.
    pub stopped: bool,
}

/// One chunk `imagefs fetch` (or `verify`) could not get or check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadChunkReport {
    /// Its position in the image.
    pub index: u64,
    /// The chunk id the manifest expects (hex).
    pub id: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The report of `imagefs fetch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FetchStats {
    /// The manifest digest fetched.
    pub image: String,
    /// Chunks fetched and checked (holes excluded).
    pub checked: u64,
    /// Holes in the image.
    pub holes: u64,
    /// The chunks that failed, in image order.
    pub bad: Vec<BadChunkReport>,
    /// Where the chunks came from.
    pub tiers: TiersReport,
}

/// The report of `imagefs convert`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConvertStats {
    /// The sealed manifest's digest (`sha256:…`).
    pub digest: String,
    /// The store had converted this source with these options already, so
    /// nothing was converted (`--force` converts anyway).
    #[serde(default)]
    pub already_converted: bool,
    /// How the image's chunks were stored.
    pub chunks: ChunkCounts,
    /// Sizes, in bytes.
    pub bytes: ConvertBytes,
    /// How long the conversion took, in seconds.
    pub elapsed_seconds: f64,
}

/// The chunks of a converted image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkCounts {
    /// All of them, holes included.
    pub total: u64,
    /// All-zero ones: recorded in the manifest, never stored.
    pub holes: u64,
    /// Objects this conversion added to the store.
    pub new: u64,
    /// Objects the store held already (dedup).
    pub existing: u64,
}

/// The sizes of a conversion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConvertBytes {
    /// The ext4 image.
    pub image: u64,
    /// The new objects.
    pub written: u64,
    /// The sealed manifest.
    pub manifest: u64,
}

/// The report of `imagefs cache-node`, written when it stops.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheNodeStats {
    /// The base URL it served on.
    pub url: String,
    /// Its local tier and the origin behind it.
    pub tiers: TiersReport,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serve_report_round_trips_through_json() {
        let stats = ServeStats {
            image: "sha256:00".into(),
            served: Some(ServeReport {
                connections: 1,
                resubmitted: 2,
                reads: 3,
                read_p99_us: 7,
                ..ServeReport::default()
            }),
            tiers: TiersReport {
                tiers: vec![TierSnapshot {
                    tier: "origin".into(),
                    hits: 2,
                    misses: 0,
                    bytes: 1 << 20,
                    verification_failures: 0,
                    errors: 0,
                    fills: 0,
                    fill_failures: 0,
                    latency_buckets: vec![1, 1, 0],
                    latency_sum_seconds: 0.5,
                    last_error: Some("boom".into()),
                }],
                shared_fetches: 1,
                unavailable: 0,
                quarantined: 0,
                latency_bounds_seconds: vec![0.1, 1.0],
            },
            reader: LazyMetrics {
                store_bytes: 1 << 20,
                ..LazyMetrics::default()
            },
            fetches: Some(FetchLog {
                events: vec![FetchEvent {
                    chunk: 3,
                    cause: FetchCause::Prefetch,
                    start_us: 10,
                    end_us: 250,
                    bytes: 1 << 19,
                }],
                dropped: 0,
            }),
            prefetch: Some(PrefetchStats {
                queued: 3,
                prefetched: 2,
                used: 1,
                unused: 1,
                ..PrefetchStats::default()
            }),
        };
        let text = serde_json::to_string(&stats).unwrap();
        assert_eq!(serde_json::from_str::<ServeStats>(&text).unwrap(), stats);
    }

    #[test]
    fn a_report_from_before_prefetch_still_reads() {
        let mut stats = ServeStats::default();
        let mut value = serde_json::to_value(&stats).unwrap();
        value.as_object_mut().unwrap().remove("prefetch");
        stats.prefetch = None;
        assert_eq!(serde_json::from_value::<ServeStats>(value).unwrap(), stats);
    }
}
