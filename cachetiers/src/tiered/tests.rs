//! Tests of [`TieredStore`] over real directory stores in a tempdir.

use super::*;
use crate::DirStore;
use crate::testing::{GatedStore, wait_for};

struct Env {
    _dir: tempfile::TempDir,
    stores: Vec<Arc<DirStore>>,
    tiered: Arc<TieredStore>,
}

fn env(n: usize) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<DirStore>> = (0..n)
        .map(|i| Arc::new(DirStore::create(dir.path().join(format!("t{i}"))).unwrap()))
        .collect();
    let tiers = stores
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("t{i}"), Arc::clone(s) as Arc<dyn ChunkStore>))
        .collect();
    Env {
        _dir: dir,
        tiered: Arc::new(TieredStore::new(tiers).unwrap()),
        stores,
    }
}

fn object(seed: u8) -> (ChunkId, Vec<u8>) {
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i as u8) ^ seed).collect();
    (ChunkId::of_object(&bytes), bytes)
}

#[test]
fn a_hit_below_fills_every_tier_above() {
    let e = env(3);
    let (id, bytes) = object(1);
    e.stores[2].put(&id, &bytes).unwrap();
    let fetched = e.tiered.fetch(&id).unwrap();
    assert_eq!(
        (fetched.object.as_slice(), fetched.tier),
        (bytes.as_slice(), 2)
    );
    assert!(e.stores[0].contains(&id).unwrap() && e.stores[1].contains(&id).unwrap());
    let m = e.tiered.metrics();
    let t: Vec<(u64, u64, u64, u64)> = m
        .tiers
        .iter()
        .map(|t| (t.hits, t.misses, t.fills, t.bytes))
        .collect();
    assert_eq!(t, vec![(0, 1, 1, 0), (0, 1, 1, 0), (1, 0, 0, 1000)]);
    // Now tier 0 serves it.
    assert_eq!(e.tiered.fetch(&id).unwrap().tier, 0);
    assert_eq!(e.tiered.metrics().tiers[0].hits, 1);
    assert_eq!(m.tiers[0].latency_buckets.iter().sum::<u64>(), 1);
}

#[test]
fn a_corrupt_copy_is_dropped_refetched_and_refilled() {
    let e = env(2);
    let (id, bytes) = object(2);
    e.stores[0].put(&id, &bytes).unwrap();
    e.stores[1].put(&id, &bytes).unwrap();
    let mut bad = bytes.clone();
    bad[10] ^= 1;
    std::fs::write(e.stores[0].chunk_path(&id), &bad).unwrap();
    let fetched = e.tiered.fetch(&id).unwrap();
    assert_eq!((fetched.tier, fetched.object == bytes), (1, true));
    let m = e.tiered.metrics();
    assert_eq!(m.tiers[0].verification_failures, 1);
    assert_eq!(m.tiers[0].fills, 1);
    assert!(
        m.tiers[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains(&id.to_hex())
    );
    // Tier 0 holds the good object again.
    assert_eq!(e.stores[0].get(&id).unwrap(), Some(bytes));
}

#[test]
fn a_failing_tier_is_skipped() {
    let e = env(2);
    let (id, bytes) = object(3);
    e.stores[1].put(&id, &bytes).unwrap();
    // A directory where tier 0's object should be: reading it fails.
    std::fs::create_dir_all(e.stores[0].chunk_path(&id)).unwrap();
    assert_eq!(e.tiered.get(&id).unwrap(), Some(bytes));
    let m = e.tiered.metrics();
    assert_eq!((m.tiers[0].errors, m.tiers[0].fill_failures), (1, 1));
}

#[test]
fn unavailable_everywhere_names_the_id_and_each_tier() {
    let e = env(2);
    let (id, bytes) = object(4);
    assert_eq!(e.tiered.get(&id).unwrap(), None);
    let err = e.tiered.fetch(&id).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&id.to_hex()), "{text}");
    assert!(
        text.contains("t0: miss") && text.contains("t1: miss"),
        "{text}"
    );
    // A corrupt copy in a cache and nothing else: an error, not a miss.
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    std::fs::create_dir_all(e.stores[0].chunk_path(&id).parent().unwrap()).unwrap();
    std::fs::write(e.stores[0].chunk_path(&id), &bad).unwrap();
    let err = e.tiered.get(&id).unwrap_err().to_string();
    assert!(err.contains("t0: corrupt copy dropped"), "{err}");
    assert!(!e.stores[0].chunk_path(&id).exists());
    assert_eq!(e.tiered.metrics().unavailable, 3);
}

/// Plants `bad` as tier `k`'s copy of `id`.
fn plant(e: &Env, k: usize, id: &ChunkId, bad: &[u8]) {
    let path = e.stores[k].chunk_path(id);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bad).unwrap();
}

#[test]
fn a_corrupt_origin_copy_is_quarantined_never_deleted() {
    let e = env(2);
    let (id, bytes) = object(11);
    let mut bad = bytes.clone();
    bad[5] ^= 1;
    plant(&e, 1, &id, &bad);
    let origin_path = e.stores[1].chunk_path(&id);
    let err = e.tiered.fetch(&id).unwrap_err().to_string();
    assert!(err.contains("t1: corrupt copy quarantined"), "{err}");
    assert!(err.contains(&id.to_hex()), "{err}");
    // The origin's object (shared by every image that has the chunk) is
    // left alone: readers never delete from the origin.
    assert_eq!(std::fs::read(&origin_path).unwrap(), bad);
    let m = e.tiered.metrics();
    assert_eq!(m.tiers[1].verification_failures, 1);
    assert!(
        m.tiers[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains(&id.to_hex())
    );
    let quarantined = "imagefs_tiered_quarantined_total 1\n";
    assert!(e.tiered.render_prometheus().contains(quarantined));
    // Asked again, the quarantined id is not served, and the error says
    // why; it is counted once.
    let err = e.tiered.fetch(&id).unwrap_err().to_string();
    assert!(err.contains("quarantined"), "{err}");
    assert_eq!(std::fs::read(&origin_path).unwrap(), bad);
    assert!(e.tiered.render_prometheus().contains(quarantined));
    assert!(!e.stores[0].contains(&id).unwrap());
    // Putting the right bytes (a re-convert) repairs the origin and lifts
    // the quarantine.
    assert!(e.tiered.put(&id, &bytes).unwrap().is_new());
    assert_eq!(e.tiered.fetch(&id).unwrap().object, bytes);
}

#[test]
fn concurrent_gets_share_one_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let (id, bytes) = object(5);
    let origin = DirStore::create(dir.path().join("origin")).unwrap();
    origin.put(&id, &bytes).unwrap();
    let gate = Arc::new(GatedStore::new(origin));
    gate.close();
    let tiered = Arc::new(
        TieredStore::new(vec![(
            "origin".into(),
            Arc::clone(&gate) as Arc<dyn ChunkStore>,
        )])
        .unwrap(),
    );
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8).map(|_| s.spawn(|| tiered.get(&id))).collect();
        // Hold the origin until one get is fetching and the other seven
        // wait for it: then they all were concurrent.
        wait_for("eight gets gathering", || {
            gate.gets() == 1 && tiered.waiting() == 7
        });
        gate.open();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap().as_deref() == Some(&bytes[..]))
    );
    assert_eq!(gate.gets(), 1);
    let m = tiered.metrics();
    assert_eq!((m.tiers[0].hits, m.shared_fetches), (1, 7));
}

#[test]
fn put_goes_to_the_origin_and_metrics_render() {
    let e = env(2);
    let (id, bytes) = object(6);
    assert!(e.tiered.put(&id, &bytes).unwrap().is_new());
    assert!(!e.stores[0].contains(&id).unwrap() && e.stores[1].contains(&id).unwrap());
    assert!(e.tiered.contains(&id).unwrap());
    e.tiered.get(&id).unwrap();
    let text = e.tiered.render_prometheus();
    assert!(
        text.contains("imagefs_tier_hits_total{tier=\"t1\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("imagefs_tier_misses_total{tier=\"t0\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("imagefs_tier_get_seconds_bucket{tier=\"t0\",le=\"+Inf\"} 1\n"));
    assert!(text.contains("imagefs_tier_get_seconds_count{tier=\"t1\"} 1\n"));
    assert!(e.tiered.remove(&id).unwrap());
    assert!(!e.tiered.contains(&id).unwrap());
    assert!(matches!(
        TieredStore::new(vec![]),
        Err(TieredError::NoTiers)
    ));
}

#[test]
fn a_tier_that_does_not_check_its_gets_is_checked_here() {
    let dir = tempfile::tempdir().unwrap();
    let (id, bytes) = object(9);
    let (other, other_bytes) = object(10);
    // A store that does not hash what it returns (it does not claim
    // `checks_gets`), and returns one object's bytes flipped.
    let unchecked = GatedStore::new(DirStore::create(dir.path().join("t0")).unwrap())
        .with_get_hook(move |got_id, got| {
            if *got_id == id
                && let Some(bytes) = got.as_mut()
            {
                bytes[0] ^= 1;
            }
        });
    unchecked.put(&id, &bytes).unwrap();
    unchecked.put(&other, &other_bytes).unwrap();
    let origin = Arc::new(DirStore::create(dir.path().join("t1")).unwrap());
    origin.put(&id, &bytes).unwrap();
    let tiered = TieredStore::new(vec![
        ("t0".into(), Arc::new(unchecked) as Arc<dyn ChunkStore>),
        ("t1".into(), Arc::clone(&origin) as Arc<dyn ChunkStore>),
    ])
    .unwrap();
    assert!(tiered.checks_gets() && origin.checks_gets());
    // The flipped copy is caught by the tiered store's own hash, counted
    // and dropped; the origin's copy is returned.
    let fetched = tiered.fetch(&id).unwrap();
    assert_eq!((fetched.object, fetched.tier), (bytes, 1));
    let m = tiered.metrics();
    assert_eq!(m.tiers[0].verification_failures, 1);
    // A good copy from the same tier passes.
    assert_eq!(tiered.fetch(&other).unwrap().tier, 0);
}
