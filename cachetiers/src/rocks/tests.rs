use manifest::{DomainSecret, EncryptedChunk, encrypt_chunk};

use super::*;

/// A 4 KiB chunk; its object is 4096 + 16 bytes.
fn chunk(seed: u8) -> EncryptedChunk {
    let plain: Vec<u8> = (0..4096u32)
        .map(|i| (i as u8).wrapping_mul(seed | 1))
        .collect();
    encrypt_chunk(&DomainSecret::from_bytes([seed; 32]), &plain)
}

const OBJ: u64 = 4096 + 16;

fn open(dir: &tempfile::TempDir, capacity: u64) -> RocksStore {
    RocksStore::open(dir.path().join("db"), capacity).unwrap()
}

#[test]
fn put_get_contains_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 1 << 20);
    let c = chunk(1);
    assert_eq!(store.get(&c.id).unwrap(), None);
    assert!(!store.contains(&c.id).unwrap());
    assert_eq!(store.put(&c.id, &c.object).unwrap(), PutOutcome::Stored);
    assert_eq!(
        store.put(&c.id, &c.object).unwrap(),
        PutOutcome::AlreadyPresent
    );
    assert_eq!(store.get(&c.id).unwrap(), Some(c.object.clone()));
    assert!(store.contains(&c.id).unwrap());
    assert_eq!(store.usage().objects, 1);
    assert_eq!(store.usage().bytes, OBJ);
    assert!(store.remove(&c.id).unwrap());
    assert!(!store.remove(&c.id).unwrap());
    assert_eq!(store.get(&c.id).unwrap(), None);
    assert_eq!(store.usage().bytes, 0);
}

#[test]
fn refuses_bytes_that_are_not_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 1 << 20);
    let (a, b) = (chunk(1), chunk(2));
    let err = store.put(&a.id, &b.object).unwrap_err();
    assert!(matches!(err, StoreError::IdMismatch { .. }), "{err}");
    assert!(!store.contains(&a.id).unwrap());
}

#[test]
fn evicts_least_recently_used_to_stay_under_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 3 * OBJ);
    let c: Vec<_> = (1..=5).map(chunk).collect();
    for x in &c[..3] {
        store.put(&x.id, &x.object).unwrap();
    }
    // Use the oldest one, so the second becomes least recently used.
    assert!(store.get(&c[0].id).unwrap().is_some());
    store.put(&c[3].id, &c[3].object).unwrap();
    assert!(store.contains(&c[0].id).unwrap());
    assert!(!store.contains(&c[1].id).unwrap(), "LRU entry kept");
    assert!(store.contains(&c[2].id).unwrap());
    store.put(&c[4].id, &c[4].object).unwrap();
    assert!(!store.contains(&c[2].id).unwrap());
    let usage = store.usage();
    assert_eq!(usage.objects, 3);
    assert!(usage.bytes <= usage.capacity);
    assert_eq!(usage.evictions, 2);
}

#[test]
fn reopening_keeps_objects_and_order_and_trims_to_a_smaller_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let c: Vec<_> = (1..=4).map(chunk).collect();
    {
        let store = open(&dir, 4 * OBJ);
        for x in &c {
            store.put(&x.id, &x.object).unwrap();
        }
        store.get(&c[0].id).unwrap();
    }
    let store = open(&dir, 4 * OBJ);
    assert_eq!(store.usage().objects, 4);
    assert_eq!(store.usage().bytes, 4 * OBJ);
    for x in &c {
        assert_eq!(store.get(&x.id).unwrap().as_deref(), Some(&x.object[..]));
    }
    drop(store);
    // Order now (oldest first): 0 1 2 3 (each read once above, in order).
    let store = open(&dir, 2 * OBJ);
    assert_eq!(store.usage().objects, 2);
    assert!(!store.contains(&c[0].id).unwrap());
    assert!(!store.contains(&c[1].id).unwrap());
    assert!(store.contains(&c[3].id).unwrap());
}

#[test]
fn a_corrupt_value_is_reported_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 1 << 20);
    let c = chunk(7);
    store.put(&c.id, &c.object).unwrap();
    let mut bad = c.object.clone();
    bad[100] ^= 1;
    let objects = store.cf(OBJECTS).unwrap();
    store.db.put_cf(objects, c.id.as_bytes(), &bad).unwrap();
    let err = store.get(&c.id).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&c.id.to_hex()), "{err}");
    assert!(store.remove(&c.id).unwrap());
    assert_eq!(store.usage().bytes, 0);
}

#[test]
fn put_replaces_a_corrupt_value_instead_of_keeping_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 1 << 20);
    let c = chunk(8);
    store.put(&c.id, &c.object).unwrap();
    let mut bad = c.object.clone();
    bad[9] ^= 1;
    let objects = store.cf(OBJECTS).unwrap();
    store.db.put_cf(objects, c.id.as_bytes(), &bad).unwrap();
    assert_eq!(store.put(&c.id, &c.object).unwrap(), PutOutcome::Replaced);
    assert_eq!(store.get(&c.id).unwrap(), Some(c.object.clone()));
    assert_eq!((store.usage().objects, store.usage().bytes), (1, OBJ));
    assert_eq!(
        store
            .put_verified(Verified::trusted(&c.id, &c.object))
            .unwrap(),
        PutOutcome::AlreadyPresent
    );
}

#[test]
fn an_object_larger_than_the_capacity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 100);
    let c = chunk(3);
    let err = store.put(&c.id, &c.object).unwrap_err();
    assert!(
        err.to_string().contains("larger than the capacity"),
        "{err}"
    );
}

#[test]
fn a_second_open_of_the_same_database_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(&dir, 1 << 20);
    let err = RocksStore::open(dir.path().join("db"), 1 << 20).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
}

/// `get` hashes what it read from disk; `get_to_forward` does not (its
/// reader hashes it), so a byte flipped on disk under RocksDB is `Corrupt`
/// for the one and passed on, for the reader to refuse, by the other.
#[test]
fn damage_at_rest_is_caught_by_get_and_left_to_the_reader_when_forwarding() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir, 1 << 20);
    let (good, bad) = (chunk(8), chunk(9));
    store.put(&bad.id, &bad.object).unwrap();
    let objects = store.cf(OBJECTS).unwrap();
    // The object goes to a blob file of its own at this flush.
    store.db.flush_cf(objects).unwrap();
    store.put(&good.id, &good.object).unwrap();
    assert_eq!(
        store.get_to_forward(&bad.id).unwrap(),
        Some(bad.object.clone())
    );
    let blobs: Vec<_> = std::fs::read_dir(dir.path().join("db"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "blob"))
        .collect();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    let mut bytes = std::fs::read(&blobs[0]).unwrap();
    // The middle of the file is the middle of the object's value.
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&blobs[0], &bytes).unwrap();
    let forwarded = store.get_to_forward(&bad.id).unwrap().unwrap();
    assert_ne!(ChunkId::of_object(&forwarded), bad.id);
    let err = store.get(&bad.id).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { id, .. } if *id == bad.id),
        "{err}"
    );
    // The other object (still in the memtable) is untouched.
    assert_eq!(store.get_to_forward(&good.id).unwrap(), Some(good.object));
}
