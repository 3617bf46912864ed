//! LazyImage over a TieredStore of real directory stores, with a real
//! converted image (64 KiB chunks).

use std::path::Path;
use std::sync::Arc;
use tests::imagegen::noise;

use cachetiers::testing::{GatedStore, wait_for};
use cachetiers::{ChunkStore, DirStore, TieredStore};
use chunker::convert::{ConvertOptions, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::FlattenOptions;
use imagefs::lazy::DedicatedState;
use imagefs::{LazyImage, LazyOptions};
use manifest::{ChunkEntry, ChunkId, LocalKeyProvider, Manifest};
use tests::imagegen::{Compression, Entry, Image, Layer};

const CHUNK: u64 = 64 * 1024;

struct Env {
    dir: tempfile::TempDir,
    /// Tier 1 (fast, starts empty) and tier 2 (the origin, filled by
    /// convert).
    fast: Arc<DirStore>,
    origin: Arc<DirStore>,
    manifest: Manifest,
    image: Vec<u8>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let origin = Arc::new(DirStore::create(dir.path().join("origin")).unwrap());
    let fast = Arc::new(DirStore::create(dir.path().join("fast")).unwrap());
    let keys = LocalKeyProvider::create(dir.path().join("keys")).unwrap();
    let image = Image::new(vec![
        Layer::new(vec![
            Entry::dir("usr/lib"),
            Entry::file("usr/lib/libbig.so", noise(1, 400_000)),
            Entry::file("etc/os-release", b"ID=test\n"),
        ])
        .compressed(Compression::Gzip),
    ]);
    let layout = dir.path().join("oci");
    image.write_oci_layout(&layout, "app").unwrap();
    let source = format!("oci:{}:app", layout.display()).parse().unwrap();
    let options = ConvertOptions {
        flatten: FlattenOptions {
            ext4: Ext4Options {
                chunk_size: CHUNK,
                free_bytes: 1 << 20,
                spare_inodes: 64,
            },
            ..FlattenOptions::default()
        },
        domain: "test".into(),
        threads: 2,
        tag: None,
        progress: false,
        force: false,
        pipeline: Default::default(),
    };
    let report = convert(&source, origin.as_ref(), &keys, &options).unwrap();
    let manifest = imagefs::open_image(&origin, &report.digest.to_string(), &keys, "test")
        .unwrap()
        .manifest;
    let exported = dir.path().join("image.ext4");
    imagefs::export(origin.as_ref(), &manifest, &exported).unwrap();
    let image = std::fs::read(&exported).unwrap();
    Env {
        dir,
        fast,
        origin,
        manifest,
        image,
    }
}

fn tiered(e: &Env) -> Arc<TieredStore> {
    Arc::new(
        TieredStore::new(vec![
            ("fast".into(), Arc::clone(&e.fast) as Arc<dyn ChunkStore>),
            (
                "origin".into(),
                Arc::clone(&e.origin) as Arc<dyn ChunkStore>,
            ),
        ])
        .unwrap(),
    )
}

fn no_cache() -> LazyOptions {
    // Read-ahead off: the tests count fetches exactly.
    LazyOptions {
        memory_chunks: 0,
        readahead_chunks: 0,
        ..LazyOptions::default()
    }
}

fn lazy(e: &Env, store: Arc<dyn ChunkStore>, dedicated: Option<&Path>) -> LazyImage {
    LazyImage::open(e.manifest.clone(), store, dedicated, no_cache()).unwrap()
}

fn present(m: &Manifest) -> Vec<(usize, ChunkId)> {
    m.chunks
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.id().map(|id| (i, *id)))
        .collect()
}

#[test]
fn whole_image_equals_the_export_and_fills_the_fast_tier() {
    let e = env();
    let store = tiered(&e);
    let image = lazy(&e, store.clone(), None);
    let mut all = vec![0u8; image.size() as usize];
    image.read_exact_at(&mut all, 0).unwrap();
    assert!(all == e.image, "lazy read differs from the export");
    let stored = present(&e.manifest).len() as u64;
    assert!(e.manifest.hole_count() > 0, "the image should have holes");
    let m = store.metrics();
    assert_eq!((m.tiers[0].misses, m.tiers[0].fills), (stored, stored));
    assert_eq!(m.tiers[1].hits, stored);
    assert_eq!(image.metrics().hole_reads, e.manifest.hole_count() as u64);
    assert_eq!(e.fast.ids().unwrap().len() as u64, stored);
}

#[test]
fn a_range_fetches_exactly_the_chunks_it_covers() {
    let e = env();
    let store = tiered(&e);
    let image = lazy(&e, store.clone(), None);
    // The first two stored chunks that are neighbours.
    let p = present(&e.manifest);
    let first = p.windows(2).find(|w| w[1].0 == w[0].0 + 1).unwrap()[0].0 as u64;
    let mut buf = vec![0u8; CHUNK as usize];
    let offset = first * CHUNK + CHUNK / 2;
    image.read_exact_at(&mut buf, offset).unwrap();
    assert!(buf[..] == e.image[offset as usize..(offset + CHUNK) as usize]);
    assert_eq!(store.metrics().tiers[1].hits, 2);
    assert_eq!(image.metrics().store_fetches, 2);
    // A hole: no fetch at all.
    let hole = e
        .manifest
        .chunks
        .iter()
        .position(ChunkEntry::is_hole)
        .unwrap() as u64;
    image.read_exact_at(&mut buf[..100], hole * CHUNK).unwrap();
    assert!(buf[..100].iter().all(|&b| b == 0));
    assert_eq!(image.metrics().store_fetches, 2);
    let m = store.metrics();
    assert_eq!(m.tiers[0].misses + m.tiers[0].hits, 2);
}

#[test]
fn corrupt_fast_copy_is_dropped_refetched_and_refilled() {
    let e = env();
    let (index, id) = present(&e.manifest)[1];
    let good = e.origin.get(&id).unwrap().unwrap();
    e.fast.put(&id, &good).unwrap();
    let mut bad = good.clone();
    bad[5] ^= 0xff;
    std::fs::write(e.fast.chunk_path(&id), &bad).unwrap();
    let store = tiered(&e);
    let image = lazy(&e, store.clone(), None);
    let mut buf = vec![0u8; 4096];
    image.read_exact_at(&mut buf, index as u64 * CHUNK).unwrap();
    let at = index * CHUNK as usize;
    assert!(buf[..] == e.image[at..at + 4096]);
    let m = store.metrics();
    assert_eq!(m.tiers[0].verification_failures, 1);
    assert_eq!((m.tiers[1].hits, m.tiers[0].fills), (1, 1));
    assert_eq!(e.fast.get(&id).unwrap(), Some(good));
}

#[test]
fn a_chunk_missing_everywhere_names_its_id() {
    let e = env();
    let (index, id) = present(&e.manifest)[0];
    e.origin.remove(&id).unwrap();
    let image = lazy(&e, tiered(&e), None);
    let mut buf = vec![0u8; 10];
    let err = image
        .read_exact_at(&mut buf, index as u64 * CHUNK)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&id.to_hex()) && err.contains(&format!("chunk #{index}")),
        "{err}"
    );
    // A corrupt origin copy: the error names the tier and what it said.
    let (index, id) = present(&e.manifest)[1];
    let mut bad = e.origin.get(&id).unwrap().unwrap();
    bad[0] ^= 1;
    std::fs::write(e.origin.chunk_path(&id), &bad).unwrap();
    let err = image
        .read_exact_at(&mut buf, index as u64 * CHUNK)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("chunk #{index}")), "{err}");
    assert!(
        err.contains("fast: miss") && err.contains("origin: corrupt copy quarantined"),
        "{err}"
    );
    assert!(err.contains(&id.to_hex()), "{err}");
    // Readers never delete from the origin.
    assert_eq!(std::fs::read(e.origin.chunk_path(&id)).unwrap(), bad);
    let mut past = [0u8; 1];
    let err = image.read_exact_at(&mut past, image.size()).unwrap_err();
    assert!(err.to_string().contains("outside"), "{err}");
}

#[test]
fn eight_readers_of_a_cold_chunk_cause_one_fetch() {
    let e = env();
    // The origin, held until one reader fetches and seven wait for it.
    let gate = Arc::new(GatedStore::new(Arc::clone(&e.origin)));
    gate.close();
    let image = Arc::new(lazy(&e, gate.clone(), None));
    let (index, _) = present(&e.manifest)[2];
    let at = index * CHUNK as usize;
    std::thread::scope(|s| {
        for t in 0..8usize {
            let image = &image;
            let expected = &e.image[at + t * 100..at + t * 100 + 100];
            s.spawn(move || {
                let mut buf = [0u8; 100];
                image
                    .read_exact_at(&mut buf, (at + t * 100) as u64)
                    .unwrap();
                assert!(buf[..] == *expected);
            });
        }
        wait_for("eight readers gathering", || {
            gate.gets() == 1 && image.waiting_readers() == 7
        });
        gate.open();
    });
    assert_eq!(gate.gets(), 1);
    let m = image.metrics();
    assert_eq!((m.store_fetches, m.shared_fetches), (1, 7));
}

#[test]
fn dedicated_tier_serves_a_restarted_process_without_fetches() {
    let e = env();
    let dedicated = e.dir.path().join("dedicated");
    {
        let image = lazy(&e, tiered(&e), Some(&dedicated));
        let mut all = vec![0u8; image.size() as usize];
        image.read_exact_at(&mut all, 0).unwrap();
        assert!(all == e.image);
    }
    let store = tiered(&e);
    let image = lazy(&e, store.clone(), Some(&dedicated));
    let stored = present(&e.manifest).len() as u64;
    assert_eq!(
        image.dedicated_state(),
        Some(&DedicatedState::Reused { present: stored })
    );
    let mut all = vec![0u8; image.size() as usize];
    image.read_exact_at(&mut all, 0).unwrap();
    assert!(all == e.image);
    assert_eq!(image.metrics().store_fetches, 0);
    assert_eq!(image.metrics().dedicated_hits, stored);
    let m = store.metrics();
    assert!(m.tiers.iter().all(|t| t.hits + t.misses == 0));
}

#[test]
fn a_damaged_bitmap_is_not_trusted() {
    let e = env();
    let dedicated = e.dir.path().join("dedicated");
    let stored = present(&e.manifest).len() as u64;
    let fill = || {
        let image = lazy(&e, tiered(&e), Some(&dedicated));
        let mut all = vec![0u8; image.size() as usize];
        image.read_exact_at(&mut all, 0).unwrap();
        assert!(all == e.image);
        image.metrics().store_fetches
    };
    assert_eq!(fill(), stored);
    let bitmap = dedicated.join("present");
    let full = std::fs::read(&bitmap).unwrap();
    let damages: Vec<Vec<u8>> = vec![
        full[..full.len() - 1].to_vec(),
        noise(9, full.len()),
        Vec::new(),
        {
            let mut wrong = full.clone();
            wrong[20] ^= 1; // the fingerprint: another image
            wrong
        },
    ];
    for damaged in damages {
        std::fs::write(&bitmap, &damaged).unwrap();
        let image = lazy(&e, tiered(&e), Some(&dedicated));
        assert!(
            matches!(image.dedicated_state(), Some(DedicatedState::Reset { .. })),
            "{:?}",
            image.dedicated_state()
        );
        drop(image);
        // Everything is fetched again, and the data is right.
        assert_eq!(fill(), stored);
    }
}
