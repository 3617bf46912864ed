//! Unit tests of [`LazyImage`] over a real directory store holding a
//! synthetic image (64 KiB chunks; chunk 2 is a hole; the last chunk is
//! short).

use ::tests::imagegen::noise;
use ::tests::synthetic::{CHUNK, encrypted_device};
use std::sync::Arc;

use cachetiers::{ChunkStore, DirStore};
use manifest::{DomainSecret, Manifest};

use super::*;

mod dedicated;
mod shared;

struct Fixture {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    store: Arc<DirStore>,
    manifest: Manifest,
    image: Vec<u8>,
}

/// Five chunks: 0, 1, 3 data, 2 a hole, 4 a 1000-byte tail.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let store = Arc::new(DirStore::create(dir.join("store")).unwrap());
    let sizes = [CHUNK, CHUNK, CHUNK, CHUNK, 1000];
    let chunks = (0..sizes.len())
        .map(|i| (i != 2).then(|| noise(i as u64 + 1, sizes[i])))
        .collect();
    let (manifest, image) = encrypted_device(&DomainSecret::from_bytes([7; 32]), chunks, |enc| {
        store.put(&enc.id, &enc.object).unwrap();
    });
    Fixture {
        _dir: tmp,
        dir,
        store,
        manifest,
        image,
    }
}

fn options(memory_chunks: usize) -> LazyOptions {
    // Read-ahead off: the tests count fetches exactly.
    LazyOptions {
        memory_chunks,
        readahead_chunks: 0,
        ..LazyOptions::default()
    }
}

fn open(f: &Fixture, dedicated: bool, opts: LazyOptions) -> LazyImage {
    let dir = f.dir.join("dedicated");
    LazyImage::open(
        f.manifest.clone(),
        f.store.clone(),
        dedicated.then_some(dir.as_path()),
        opts,
    )
    .unwrap()
}

#[test]
fn whole_image_and_odd_ranges_match() {
    let f = fixture();
    for dedicated in [false, true] {
        let lazy = open(&f, dedicated, options(0));
        assert_eq!(lazy.size(), f.image.len() as u64);
        let mut all = vec![0xAA; f.image.len()];
        lazy.read_exact_at(&mut all, 0).unwrap();
        assert!(all == f.image);
        for (off, len) in [
            (0, 1),
            (CHUNK - 3, 7),
            (CHUNK * 2 - 5, CHUNK + 10),
            (f.image.len() - 1, 1),
        ] {
            let mut buf = vec![0x55; len];
            lazy.read_exact_at(&mut buf, off as u64).unwrap();
            assert!(buf == f.image[off..off + len], "{off}+{len}");
        }
    }
}

#[test]
fn reads_past_the_end_fail_and_read_nothing() {
    let f = fixture();
    let lazy = open(&f, false, options(0));
    let size = lazy.size();
    let mut buf = [0u8; 2];
    let err = lazy.read_exact_at(&mut buf, size - 1).unwrap_err();
    assert!(matches!(err, LazyError::OutOfRange { offset, len: 2, .. } if offset == size - 1));
    assert!(err.to_string().contains("outside"), "{err}");
    assert!(lazy.read_exact_at(&mut buf, u64::MAX).is_err());
    lazy.read_exact_at(&mut [], size).unwrap();
    assert_eq!(lazy.metrics().store_fetches, 0);
}

#[test]
fn a_range_fetches_exactly_its_chunks_and_holes_fetch_nothing() {
    let f = fixture();
    let lazy = open(&f, false, options(0));
    let mut buf = vec![0u8; CHUNK];
    // Spans chunk 0's end and chunk 1's start.
    lazy.read_exact_at(&mut buf, CHUNK as u64 / 2).unwrap();
    assert_eq!(lazy.metrics().store_fetches, 2);
    // The hole.
    lazy.read_exact_at(&mut buf, 2 * CHUNK as u64).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let m = lazy.metrics();
    assert_eq!((m.store_fetches, m.hole_reads), (2, 1));
    assert_eq!(m.bytes_read, 2 * CHUNK as u64);
}

#[test]
fn memory_cache_serves_repeated_reads() {
    let f = fixture();
    let lazy = open(&f, false, options(2));
    let mut buf = [0u8; 512];
    for i in 0..10 {
        lazy.read_exact_at(&mut buf, i * 512).unwrap();
    }
    let m = lazy.metrics();
    assert_eq!((m.store_fetches, m.memory_hits), (1, 9));
}

#[test]
fn missing_chunk_names_index_and_id() {
    let f = fixture();
    let ChunkEntry::Present { id, .. } = &f.manifest.chunks[3] else {
        unreachable!()
    };
    f.store.remove(id).unwrap();
    let lazy = open(&f, false, options(0));
    let mut buf = [0u8; 10];
    let err = lazy.read_exact_at(&mut buf, 3 * CHUNK as u64).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("chunk #3") && text.contains(&id.to_hex()),
        "{text}"
    );
    assert_eq!(lazy.metrics().fetch_errors, 1);
}

#[test]
fn dedicated_tier_survives_a_restart() {
    let f = fixture();
    {
        let lazy = open(&f, true, options(0));
        assert_eq!(lazy.dedicated_state(), Some(&DedicatedState::Created));
        let mut all = vec![0u8; f.image.len()];
        lazy.read_exact_at(&mut all, 0).unwrap();
        assert_eq!(lazy.metrics().store_fetches, 4);
        assert_eq!(lazy.dedicated_present(), 4);
    }
    let lazy = open(&f, true, options(0));
    assert_eq!(
        lazy.dedicated_state(),
        Some(&DedicatedState::Reused { present: 4 })
    );
    let mut all = vec![0u8; f.image.len()];
    lazy.read_exact_at(&mut all, 0).unwrap();
    assert!(all == f.image);
    let m = lazy.metrics();
    assert_eq!((m.store_fetches, m.dedicated_hits), (0, 4));
}

/// Opens the dedicated tier of `f` directly (no `LazyImage`, so no
/// persisting thread).
fn dedicated(f: &Fixture) -> (DedicatedTier, DedicatedState) {
    DedicatedTier::open(&f.dir.join("dedicated"), &f.manifest).unwrap()
}

#[test]
fn a_crash_keeps_only_the_fills_persisted_before_it() {
    let f = fixture();
    let chunk = |i: usize| &f.image[i * CHUNK..(i + 1) * CHUNK];
    let (tier, state) = dedicated(&f);
    assert_eq!(state, DedicatedState::Created);
    tier.store_chunk(ChunkIndex(0), 0, chunk(0)).unwrap();
    tier.persist().unwrap();
    tier.store_chunk(ChunkIndex(1), CHUNK as u64, chunk(1))
        .unwrap();
    // This process reads the unpersisted fill at once.
    assert!(tier.is_present(ChunkIndex(1)));
    let mut buf = vec![0u8; CHUNK];
    tier.read_at(ChunkIndex(1), &mut buf, CHUNK as u64).unwrap();
    assert!(buf == chunk(1));
    // A crash (no drop, so no last persist): the disk has chunk 0 only.
    tier.crash();
    let (tier, state) = dedicated(&f);
    assert_eq!(state, DedicatedState::Reused { present: 1 });
    assert!(tier.is_present(ChunkIndex(0)) && !tier.is_present(ChunkIndex(1)));
    tier.read_at(ChunkIndex(0), &mut buf, 0).unwrap();
    assert!(buf == chunk(0));
    // A clean close persists what is pending.
    tier.store_chunk(ChunkIndex(3), 3 * CHUNK as u64, chunk(3))
        .unwrap();
    drop(tier);
    let (_, state) = dedicated(&f);
    assert_eq!(state, DedicatedState::Reused { present: 2 });
}

#[test]
fn the_image_persists_fills_while_it_runs() {
    let f = fixture();
    let lazy = open(&f, true, options(0));
    let mut buf = vec![0u8; 100];
    lazy.read_exact_at(&mut buf, 0).unwrap();
    // The persisting thread writes the bit within a period or two; read
    // the bitmap from disk, as a crash would leave it, until it does.
    let present = f.dir.join("dedicated").join("present");
    ::cachetiers::testing::wait_for("the fill persisted", || {
        std::fs::read(&present).unwrap()[64] & 1 == 1
    });
    drop(lazy);
}

#[test]
fn readahead_fetches_the_next_chunks() {
    let f = fixture();
    let opts = LazyOptions {
        readahead_chunks: 2,
        readahead_threads: 2,
        memory_chunks: 8,
        parallel_fetches: 1,
        ..LazyOptions::default()
    };
    let lazy = open(&f, false, opts);
    let mut buf = [0u8; 100];
    lazy.read_exact_at(&mut buf, 0).unwrap();
    lazy.wait_readahead_idle();
    // Chunk 0 read; chunk 1 read ahead; chunk 2 is a hole (skipped).
    let m = lazy.metrics();
    assert_eq!((m.store_fetches, m.readahead_fetches), (2, 1));
    lazy.read_exact_at(&mut buf, CHUNK as u64).unwrap();
    lazy.wait_readahead_idle();
    let m = lazy.metrics();
    // Chunk 1 came from memory; chunk 3 was read ahead (2 is a hole).
    assert_eq!(
        (m.store_fetches, m.memory_hits, m.readahead_fetches),
        (3, 1, 2)
    );
}

/// Objects in the store (to show writes never reach it).
fn store_objects(f: &Fixture) -> usize {
    let mut n = 0;
    let mut stack = vec![f.dir.join("store")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                n += 1;
            }
        }
    }
    n
}

fn open_at(f: &Fixture, dir: &str) -> LazyImage {
    LazyImage::open(
        f.manifest.clone(),
        f.store.clone(),
        Some(&f.dir.join(dir)),
        options(2),
    )
    .unwrap()
}

#[test]
fn writes_are_copy_on_write_into_the_dedicated_tier_only() {
    let f = fixture();
    let objects = store_objects(&f);
    let mut expect = f.image.clone();
    {
        let lazy = open_at(&f, "instance-a");
        assert!(lazy.writable());
        // Partial writes: inside chunk 0, across chunks 1|2 (2 is a hole),
        // the short tail chunk; and a whole chunk (3) that needs no fetch.
        let writes: Vec<(usize, Vec<u8>)> = vec![
            (100, vec![0xA1; 300]),
            (2 * CHUNK - 10, vec![0xB2; 20]),
            (4 * CHUNK + 10, vec![0xC3; 5]),
            (3 * CHUNK, vec![0xD4; CHUNK]),
        ];
        for (off, data) in &writes {
            lazy.write_at(data, *off as u64).unwrap();
            expect[*off..*off + data.len()].copy_from_slice(data);
        }
        let m = lazy.metrics();
        // Chunks 0, 1 and 4 were fetched to be materialised; 2 (a hole)
        // and 3 (covered whole) were not.
        assert_eq!(m.store_fetches, 3, "{m:?}");
        assert_eq!(m.write_materialised, 5, "{m:?}");
        let mut all = vec![0u8; f.image.len()];
        lazy.read_exact_at(&mut all, 0).unwrap();
        assert!(all == expect, "read-back differs from the writes");
        lazy.flush().unwrap();
        assert_eq!(lazy.metrics().flushes, 1);
    }
    assert_eq!(store_objects(&f), objects, "a write reached the store");
    // The same instance after a restart keeps its writes.
    let again = open_at(&f, "instance-a");
    let mut all = vec![0u8; f.image.len()];
    again.read_exact_at(&mut all, 0).unwrap();
    assert!(all == expect, "flushed writes lost across a restart");
    assert_eq!(again.metrics().store_fetches, 0);
    // A fresh instance sees the pristine image.
    let fresh = open_at(&f, "instance-b");
    fresh.read_exact_at(&mut all, 0).unwrap();
    assert!(all == f.image, "a fresh instance sees another's writes");
}

#[test]
fn writes_need_a_dedicated_tier_and_stay_inside_the_device() {
    let f = fixture();
    let lazy = open(&f, false, options(0));
    assert!(!lazy.writable());
    let err = lazy.write_at(&[1, 2, 3], 0).unwrap_err();
    assert!(
        matches!(err, LazyError::ReadOnly { offset: 0, len: 3 }),
        "{err}"
    );
    let lazy = open_at(&f, "instance");
    let size = lazy.size();
    let err = lazy.write_at(&[1, 2], size - 1).unwrap_err();
    assert!(matches!(err, LazyError::OutOfRange { .. }), "{err}");
    assert!(lazy.write_at(&[1], u64::MAX).is_err());
    assert_eq!(
        lazy.dedicated_present(),
        0,
        "a failed write materialised a chunk"
    );
    let mut last = [0u8; 1];
    lazy.read_exact_at(&mut last, size - 1).unwrap();
    assert_eq!(last[0], f.image[f.image.len() - 1]);
}

#[test]
fn concurrent_readers_never_undo_a_write() {
    let f = fixture();
    let lazy = Arc::new(open_at(&f, "instance"));
    // Readers fetch chunk 1 while a writer materialises and writes it: the
    // fetch's fill must not overwrite the written bytes.
    std::thread::scope(|s| {
        for _ in 0..4 {
            let lazy = Arc::clone(&lazy);
            s.spawn(move || {
                let mut buf = vec![0u8; 4096];
                for _ in 0..20 {
                    lazy.read_exact_at(&mut buf, CHUNK as u64).unwrap();
                }
            });
        }
        lazy.write_at(&[0xEE; 64], CHUNK as u64 + 8).unwrap();
    });
    let mut buf = [0u8; 64];
    lazy.read_exact_at(&mut buf, CHUNK as u64 + 8).unwrap();
    assert_eq!(buf, [0xEE; 64]);
}

#[test]
fn is_local_only_when_no_chunk_needs_a_fetch() {
    let f = fixture();
    let c = CHUNK as u64;
    let img = open(&f, true, options(0));
    // Chunk 2 is a hole: local without any read.
    assert!(img.is_local(2 * c + 10, 100));
    assert!(!img.is_local(0, 1));
    assert!(!img.is_local(2 * c, c + 1), "spans the hole and chunk 3");
    let mut buf = vec![0u8; CHUNK];
    img.read_exact_at(&mut buf, 3 * c).unwrap();
    assert!(
        img.is_local(2 * c, 2 * c),
        "chunk 3 is now in the dedicated tier"
    );
    assert!(!img.is_local(3 * c, c + 1), "chunk 4 is not");
    // Nothing past the end, and no empty range, counts as local.
    assert!(!img.is_local(f.image.len() as u64 - 1, 2));
    assert!(!img.is_local(0, 0));
    // Without a dedicated tier only holes are local.
    let plain = open(&f, false, options(0));
    plain.read_exact_at(&mut buf, 0).unwrap();
    assert!(!plain.is_local(0, 1));
    assert!(plain.is_local(2 * c, c));
}

#[test]
fn the_fetch_log_has_each_fetch_with_its_cause_and_respects_its_limit() {
    let f = fixture();
    let lazy = open(&f, false, options(8));
    let mut buf = vec![0u8; CHUNK];
    lazy.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(lazy.fetch_log(), None, "not recording yet");
    lazy.record_fetches(2);
    // Chunks 1, 3 and 4 (the hole, 2, fetches nothing; 0 is in memory).
    for chunk in [1u64, 2, 3, 4, 0] {
        lazy.read_exact_at(&mut buf[..1000], chunk * CHUNK as u64)
            .unwrap();
    }
    let log = lazy.fetch_log().unwrap();
    assert_eq!(log.dropped, 1);
    let chunks: Vec<u64> = log.events.iter().map(|e| e.chunk).collect();
    assert_eq!(chunks, vec![1, 3]);
    for e in &log.events {
        assert_eq!(e.cause, manifest::report::FetchCause::Demand);
        assert!(e.start_us <= e.end_us && e.bytes > CHUNK as u64);
    }
}
