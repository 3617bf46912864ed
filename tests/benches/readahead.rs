//! Read-ahead window against none, one run: a sequential and a random
//! read pattern replayed on a `LazyImage` over a directory store whose
//! every get first waits a fixed latency (a remote tier's round trip),
//! for read-ahead 0, 2, 4 and 8 chunks, with ratios against read-ahead 0
//! measured in the same run. It chose `ReadConfig::default()`'s
//! `readahead_chunks`.
//!
//! Needs nothing but a temporary directory.
//! Run: `cargo bench -p tests --bench readahead` (optionally
//! `-- --latency-ms N`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cachetiers::testing::GatedStore;
use cachetiers::{ChunkStore, DirStore};
use imagefs::{LazyImage, LazyOptions};
use manifest::DomainSecret;
use tests::imagegen::noise;
use tests::synthetic::encrypted_device;

/// Chunks of the synthetic image (64 KiB each: 32 MiB).
const CHUNKS: u64 = 512;
/// Chunks the sequential pattern reads (from the start).
const SEQUENTIAL_CHUNKS: u64 = 128;
/// Reads of the random pattern: sparse, one in eight chunks touched at
/// most, as a guest's scattered metadata and library reads are.
const RANDOM_READS: usize = 64;
const CHUNK: u64 = 64 * 1024;
/// Read-ahead windows compared; the first is the baseline.
const WINDOWS: [usize; 4] = [0, 2, 4, 8];
/// Runs per cell; the median is reported.
const ROUNDS: usize = 5;

/// A read pattern: (offset, length) pairs.
type Pattern = Vec<(u64, usize)>;

/// The first `SEQUENTIAL_CHUNKS` chunks front to back in 16 KiB reads (a
/// file copied or an executable paged in).
fn sequential() -> Pattern {
    let read = 16 * 1024;
    (0..SEQUENTIAL_CHUNKS * CHUNK / read)
        .map(|i| (i * read, read as usize))
        .collect()
}

/// `RANDOM_READS` reads of 4 KiB scattered over the device (a fixed LCG,
/// so every run replays the same offsets).
fn random() -> Pattern {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..RANDOM_READS)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let block = (x >> 33) % (CHUNKS * CHUNK / 4096);
            (block * 4096, 4096)
        })
        .collect()
}

struct Cell {
    ms: f64,
    gets: u64,
    /// Chunks fetched that the pattern never read.
    wasted: u64,
}

fn main() {
    let latency_ms: u64 = std::env::args()
        .skip_while(|a| a != "--latency-ms")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    if let Err(e) = run(Duration::from_millis(latency_ms)) {
        eprintln!("readahead: {e}");
        std::process::exit(1);
    }
}

fn run(latency: Duration) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let inner = DirStore::create(dir.path().join("store")).map_err(|e| e.to_string())?;
    let chunks = (0..CHUNKS)
        .map(|i| Some(noise(i + 1, CHUNK as usize)))
        .collect();
    let mut failed = None;
    let (manifest, _) = encrypted_device(&DomainSecret::from_bytes([3; 32]), chunks, |enc| {
        if let Err(e) = inner.put(&enc.id, &enc.object) {
            failed.get_or_insert(e.to_string());
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    // Each get waits `latency` (after the directory read).
    let store =
        Arc::new(GatedStore::new(inner).with_get_hook(move |_, _| std::thread::sleep(latency)));
    let defaults = LazyOptions::default();
    println!(
        "{CHUNKS} chunks of {} KiB (sequential: the first {SEQUENTIAL_CHUNKS} in 16 KiB reads; random: {RANDOM_READS} reads of 4 KiB), {} ms per get, read-ahead threads {}, memory chunks {}, dedicated tier on; median of {ROUNDS}\n",
        CHUNK / 1024,
        latency.as_millis(),
        defaults.readahead_threads,
        defaults.memory_chunks
    );
    println!(
        "{:<11} {:>10} {:>10} {:>9} {:>6} {:>7}",
        "pattern", "read-ahead", "ms", "vs 0", "gets", "wasted"
    );
    for (name, pattern) in [("sequential", sequential()), ("random", random())] {
        let read: std::collections::BTreeSet<u64> = pattern
            .iter()
            .flat_map(|&(off, len)| off / CHUNK..=(off + len as u64 - 1) / CHUNK)
            .collect();
        // Rounds interleave the windows, so that load from elsewhere on the
        // machine falls on every window alike.
        let mut cells: Vec<Vec<Cell>> = WINDOWS.iter().map(|_| Vec::new()).collect();
        for round in 0..ROUNDS {
            for (w, &window) in WINDOWS.iter().enumerate() {
                let dedicated = dir.path().join(format!("ded-{name}-{window}-{round}"));
                let options = LazyOptions {
                    readahead_chunks: window,
                    ..defaults.clone()
                };
                let image =
                    LazyImage::open(manifest.clone(), store.clone(), Some(&dedicated), options)
                        .map_err(|e| e.to_string())?;
                let before = store.gets();
                let mut buf = vec![0u8; 16 * 1024];
                let start = Instant::now();
                for &(off, len) in &pattern {
                    image
                        .read_exact_at(&mut buf[..len], off)
                        .map_err(|e| e.to_string())?;
                }
                let ms = start.elapsed().as_secs_f64() * 1e3;
                // Read-ahead still running counts as fetched, not as time.
                image.wait_readahead_idle();
                let gets = store.gets() - before;
                cells[w].push(Cell {
                    ms,
                    gets,
                    wasted: gets.saturating_sub(read.len() as u64),
                });
            }
        }
        let mut baseline = None;
        for (window, mut runs) in WINDOWS.into_iter().zip(cells) {
            runs.sort_by(|a, b| a.ms.total_cmp(&b.ms));
            let cell = &runs[ROUNDS / 2];
            let base = *baseline.get_or_insert(cell.ms);
            println!(
                "{:<11} {:>10} {:>10.1} {:>8.2}x {:>6} {:>7}",
                name,
                window,
                cell.ms,
                cell.ms / base,
                cell.gets,
                cell.wasted
            );
        }
    }
    Ok(())
}
