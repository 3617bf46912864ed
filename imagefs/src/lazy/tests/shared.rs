//! [`LazyImage`]s of one manifest sharing a [`SharedPlain`]: one store get
//! per chunk between them, pristine chunks only, and only under the
//! manifest's key.

use cachetiers::testing::{GatedStore, wait_for};

use super::*;

/// Opens `f`'s image over `store` with its own dedicated tier `dir`,
/// sharing `shared`.
fn open_shared(
    f: &Fixture,
    manifest: Manifest,
    store: &Arc<GatedStore<Arc<DirStore>>>,
    dir: &str,
    shared: &Arc<SharedPlain>,
) -> LazyImage {
    LazyImage::open_with(
        manifest,
        store.clone(),
        Some(&f.dir.join(dir)),
        options(0),
        Some(Arc::clone(shared)),
    )
    .unwrap()
}

fn counted(f: &Fixture) -> Arc<GatedStore<Arc<DirStore>>> {
    Arc::new(GatedStore::new(f.store.clone()))
}

#[test]
fn two_images_sharing_one_cache_get_each_chunk_once() {
    let f = fixture();
    let store = counted(&f);
    let shared = Arc::new(SharedPlain::new(1 << 20));
    let a = open_shared(&f, f.manifest.clone(), &store, "a", &shared);
    let b = open_shared(&f, f.manifest.clone(), &store, "b", &shared);
    let mut all = vec![0u8; f.image.len()];
    a.read_exact_at(&mut all, 0).unwrap();
    assert!(all == f.image);
    all.fill(0xAA);
    b.read_exact_at(&mut all, 0).unwrap();
    assert!(all == f.image);
    // Four stored chunks (one is a hole), each got once between them.
    assert_eq!(store.gets(), 4);
    let (ma, mb) = (a.metrics(), b.metrics());
    assert_eq!((ma.store_fetches, ma.shared_plain_hits), (4, 0));
    assert_eq!((mb.store_fetches, mb.shared_plain_hits), (0, 4));
    // Each still keeps its own dedicated copy.
    assert_eq!((a.dedicated_present(), b.dedicated_present()), (4, 4));
}

#[test]
fn concurrent_readers_of_two_images_share_one_get() {
    let f = fixture();
    let store = counted(&f);
    let shared = Arc::new(SharedPlain::new(1 << 20));
    let a = open_shared(&f, f.manifest.clone(), &store, "a", &shared);
    let b = open_shared(&f, f.manifest.clone(), &store, "b", &shared);
    store.close();
    std::thread::scope(|s| {
        let (a, b) = (&a, &b);
        let read = |lazy: &LazyImage| {
            let mut buf = vec![0u8; 100];
            lazy.read_exact_at(&mut buf, 10).unwrap();
            assert!(buf == f.image[10..110]);
        };
        let ra = s.spawn(move || read(a));
        let rb = s.spawn(move || read(b));
        wait_for("one get and one waiter", || {
            store.gets() == 1 && shared.waiting() == 1
        });
        store.open();
        ra.join().unwrap();
        rb.join().unwrap();
    });
    assert_eq!(store.gets(), 1);
    let (ma, mb) = (a.metrics(), b.metrics());
    assert_eq!(ma.store_fetches + mb.store_fetches, 1);
    assert_eq!(ma.shared_plain_joins + mb.shared_plain_joins, 1);
}

#[test]
fn a_write_never_reaches_the_shared_cache() {
    let f = fixture();
    let store = counted(&f);
    let shared = Arc::new(SharedPlain::new(1 << 20));
    let a = open_shared(&f, f.manifest.clone(), &store, "a", &shared);
    // A partial write materialises chunk 0 (through the shared cache).
    a.write_at(b"written", 5).unwrap();
    let mut buf = vec![0u8; 20];
    a.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[5..12], b"written");
    // Another image reads the pristine chunk, from the shared cache.
    let b = open_shared(&f, f.manifest.clone(), &store, "b", &shared);
    b.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == f.image[..20]);
    assert_eq!(b.metrics().shared_plain_hits, 1);
    // A whole-chunk write of another chunk, then its read by B: pristine.
    let chunk = vec![0x5A; CHUNK];
    a.write_at(&chunk, CHUNK as u64).unwrap();
    b.read_exact_at(&mut buf, CHUNK as u64).unwrap();
    assert!(buf == f.image[CHUNK..CHUNK + 20]);
    assert_eq!(store.gets(), 2);
}

#[test]
fn a_reader_with_another_key_is_not_served_the_plaintext() {
    let f = fixture();
    let store = counted(&f);
    let shared = Arc::new(SharedPlain::new(1 << 20));
    let a = open_shared(&f, f.manifest.clone(), &store, "a", &shared);
    let mut buf = vec![0u8; 20];
    a.read_exact_at(&mut buf, 0).unwrap();
    // A manifest naming chunk 0's id with a key that is not its key.
    let mut forged = f.manifest.clone();
    let ChunkEntry::Present { key, .. } = &mut forged.chunks[0] else {
        panic!("chunk 0 is stored");
    };
    key.0[0] ^= 1;
    let c = open_shared(&f, forged, &store, "c", &shared);
    let err = c.read_exact_at(&mut buf, 0).unwrap_err();
    assert!(matches!(err, LazyError::Decrypt { .. }), "{err}");
    let m = c.metrics();
    assert_eq!((m.shared_plain_hits, m.shared_plain_joins), (0, 0));
    assert!(shared.stats().key_mismatches > 0);
    // The entry is still A's, and still served to a right key.
    let b = open_shared(&f, f.manifest.clone(), &store, "b", &shared);
    b.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf == f.image[..20]);
    assert_eq!(b.metrics().shared_plain_hits, 1);
}
