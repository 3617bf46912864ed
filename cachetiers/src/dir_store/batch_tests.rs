//! Batched puts: stored at once, in place and durable after the sync.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use manifest::{DomainSecret, EncryptedChunk, encrypt_chunk};

use super::*;

fn chunk(seed: u8) -> EncryptedChunk {
    let plain: Vec<u8> = (0..8192u32)
        .map(|i| (i as u8).wrapping_mul(seed) ^ seed)
        .collect();
    encrypt_chunk(&DomainSecret::from_bytes([seed; 32]), &plain)
}

fn store() -> (tempfile::TempDir, DirStore) {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::create(tmp.path().join("store")).unwrap();
    (tmp, store)
}

/// Temporary files anywhere under `dir`.
fn temps(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else if name.starts_with(TEMP_PREFIX) {
                found.push(name);
            }
        }
    }
    found
}

#[test]
fn objects_batched_together_are_each_stored_under_their_own_id() {
    let (_tmp, store) = store();
    let chunks: Vec<EncryptedChunk> = (1..=6).map(chunk).collect();
    // The third twice: the second copy dedups against the first.
    let mut objects: Vec<&[u8]> = chunks.iter().map(|c| c.object.as_slice()).collect();
    objects.push(&chunks[2].object);
    let put = store.put_batched_all(&objects).unwrap();
    let ids: Vec<ChunkId> = put.iter().map(|(id, _)| *id).collect();
    let mut expected: Vec<ChunkId> = chunks.iter().map(|c| c.id).collect();
    expected.push(chunks[2].id);
    assert_eq!(ids, expected, "each id is its object's SHA-256, in order");
    let outcomes: Vec<PutOutcome> = put.iter().map(|(_, o)| *o).collect();
    let mut stored = vec![PutOutcome::Stored; 6];
    stored.push(PutOutcome::AlreadyPresent);
    assert_eq!(outcomes, stored);
    assert_eq!(temps(store.root()).len(), 6);
    ChunkStore::sync(&store).unwrap();
    for c in &chunks {
        assert_eq!(fs::read(store.chunk_path(&c.id)).unwrap(), c.object);
    }
    assert!(store.put_batched_all(&[]).unwrap().is_empty());
}

#[test]
fn a_batched_object_is_stored_at_once_and_in_place_after_sync() {
    let (_tmp, store) = store();
    let c = chunk(1);
    let (id, outcome) = store.put_batched(&c.object).unwrap();
    assert_eq!(id, c.id, "the id is the object's SHA-256");
    assert_eq!(outcome, PutOutcome::Stored);
    // Not under its final name until synced, but stored for every reader.
    assert!(!store.chunk_path(&id).exists());
    assert_eq!(temps(store.root()).len(), 1);
    assert!(store.contains(&id).unwrap());
    assert_eq!(store.get(&id).unwrap(), Some(c.object.clone()));
    assert_eq!(store.ids().unwrap(), vec![id]);

    ChunkStore::sync(&store).unwrap();
    assert_eq!(fs::read(store.chunk_path(&id)).unwrap(), c.object);
    assert!(temps(store.root()).is_empty());
    assert_eq!(store.get(&id).unwrap(), Some(c.object));
    assert_eq!(store.ids().unwrap(), vec![id]);
}

#[test]
fn batched_puts_dedup_against_the_batch_and_the_store() {
    let (_tmp, store) = store();
    let (a, b) = (chunk(2), chunk(3));
    assert!(store.put_batched(&a.object).unwrap().1.is_new());
    assert_eq!(
        store.put_batched(&a.object).unwrap().1,
        PutOutcome::AlreadyPresent
    );
    store.put(&b.id, &b.object).unwrap();
    assert_eq!(
        store.put_batched(&b.object).unwrap().1,
        PutOutcome::AlreadyPresent
    );
    // One temporary: the second put of `a` and the put of `b` wrote none.
    assert_eq!(temps(store.root()).len(), 1);
    store.sync().unwrap();
    assert_eq!(store.ids().unwrap().len(), 2);
}

#[test]
fn a_batched_put_repairs_a_damaged_copy() {
    let (_tmp, store) = store();
    let c = chunk(4);
    store.put(&c.id, &c.object).unwrap();
    let mut bad = c.object.clone();
    bad[10] ^= 1;
    fs::write(store.chunk_path(&c.id), &bad).unwrap();
    assert_eq!(
        store.put_batched(&c.object).unwrap().1,
        PutOutcome::Replaced
    );
    assert_eq!(store.get(&c.id).unwrap(), Some(c.object));
}

#[test]
fn an_oversized_object_is_refused() {
    let (_tmp, store) = store();
    let big = vec![7u8; MAX_OBJECT_LEN + 1];
    let err = store.put_batched(&big).unwrap_err();
    assert!(
        matches!(err, StoreError::TooLarge { len, .. } if len == big.len()),
        "{err}"
    );
    assert!(temps(store.root()).is_empty());
}

#[test]
fn removing_a_batched_object_drops_it_for_good() {
    let (_tmp, store) = store();
    let c = chunk(5);
    store.put_batched(&c.object).unwrap();
    assert!(store.remove(&c.id).unwrap());
    assert!(!store.contains(&c.id).unwrap());
    assert_eq!(store.get(&c.id).unwrap(), None);
    store.sync().unwrap();
    assert!(!store.chunk_path(&c.id).exists());
    assert!(temps(store.root()).is_empty());
    assert!(!store.remove(&c.id).unwrap());
}

#[test]
fn a_manifest_is_stored_only_after_the_batch_it_names() {
    let (_tmp, store) = store();
    let c = chunk(6);
    store.put_batched(&c.object).unwrap();
    store.put_manifest(b"names the chunk").unwrap();
    assert_eq!(fs::read(store.chunk_path(&c.id)).unwrap(), c.object);
    assert!(temps(store.root()).is_empty());
}

#[test]
fn dropping_the_handle_puts_the_batch_in_place() {
    let (tmp, store) = store();
    let c = chunk(7);
    store.put_batched(&c.object).unwrap();
    drop(store);
    let store = DirStore::open(tmp.path().join("store")).unwrap();
    assert_eq!(store.get(&c.id).unwrap(), Some(c.object));
    assert!(temps(store.root()).is_empty());
}

#[test]
fn a_sync_that_cannot_rename_fails_and_keeps_the_object_batched() {
    let (_tmp, store) = store();
    let c = chunk(8);
    store.put_batched(&c.object).unwrap();
    // A directory where the object should go: the rename fails.
    fs::create_dir(store.chunk_path(&c.id)).unwrap();
    fs::write(store.chunk_path(&c.id).join("x"), b"x").unwrap();
    let err = store.sync().unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Io {
                action: "rename",
                ..
            }
        ),
        "{err}"
    );
    // Still batched (its temporary kept), and the next sync tries again;
    // until one succeeds, no manifest is stored.
    assert_eq!(temps(store.root()).len(), 1);
    assert!(store.put_manifest(b"must not be stored").is_err());
    assert!(
        fs::read_dir(store.root().join("manifests"))
            .unwrap()
            .next()
            .is_none()
    );
    fs::remove_dir_all(store.chunk_path(&c.id)).unwrap();
    store.sync().unwrap();
    assert_eq!(fs::read(store.chunk_path(&c.id)).unwrap(), c.object);
}

#[test]
fn a_flush_puts_the_objects_it_made_durable_in_place() {
    let (_tmp, store) = store();
    let (a, b, c) = (chunk(9), chunk(10), chunk(11));
    store.put_batched(&a.object).unwrap();
    store.put_batched(&b.object).unwrap();
    ChunkStore::flush(&store).unwrap();
    for x in [&a, &b] {
        assert_eq!(fs::read(store.chunk_path(&x.id)).unwrap(), x.object);
        assert!(!store.is_batched(&x.id));
    }
    assert!(temps(store.root()).is_empty());
    // One put after the flush stays batched until the sync.
    store.put_batched(&c.object).unwrap();
    assert!(!store.chunk_path(&c.id).exists());
    assert_eq!(store.get(&c.id).unwrap(), Some(c.object.clone()));
    store.put_manifest(b"names all three").unwrap();
    assert_eq!(fs::read(store.chunk_path(&c.id)).unwrap(), c.object);
    assert!(temps(store.root()).is_empty());
    let mut want = vec![a.id, b.id, c.id];
    want.sort();
    assert_eq!(store.ids().unwrap(), want);
}

#[test]
fn a_flush_that_cannot_rename_fails_and_keeps_the_object_batched() {
    let (_tmp, store) = store();
    let c = chunk(12);
    store.put_batched(&c.object).unwrap();
    fs::create_dir(store.chunk_path(&c.id)).unwrap();
    fs::write(store.chunk_path(&c.id).join("x"), b"x").unwrap();
    let err = ChunkStore::flush(&store).unwrap_err();
    assert!(err.to_string().contains("rename"), "{err}");
    assert!(store.is_batched(&c.id));
    assert!(store.put_manifest(b"must not be stored").is_err());
    fs::remove_dir_all(store.chunk_path(&c.id)).unwrap();
    store.sync().unwrap();
    assert_eq!(fs::read(store.chunk_path(&c.id)).unwrap(), c.object);
}

#[test]
fn concurrent_batched_puts_then_one_sync() {
    let (_tmp, store) = store();
    let store = Arc::new(store);
    let chunks: Arc<Vec<_>> = Arc::new((1..=32).map(chunk).collect());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (store, chunks) = (Arc::clone(&store), Arc::clone(&chunks));
            std::thread::spawn(move || {
                for c in chunks.iter() {
                    store.put_batched(&c.object).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    store.sync().unwrap();
    assert!(temps(store.root()).is_empty());
    let mut want: Vec<_> = chunks.iter().map(|c| c.id).collect();
    want.sort();
    assert_eq!(store.ids().unwrap(), want);
    for c in chunks.iter() {
        assert_eq!(fs::read(store.chunk_path(&c.id)).unwrap(), c.object);
    }
}

#[test]
fn a_fan_out_directory_removed_behind_the_cache_is_made_again() {
    let (_tmp, store) = store();
    let (a, b) = (chunk(40), chunk(41));
    store.put_batched(&a.object).unwrap();
    store.sync().unwrap();
    // Another process (a cleaner) removes the whole fan-out; this handle
    // still believes the directories are there.
    fs::remove_dir_all(store.root().join("chunks")).unwrap();
    fs::create_dir(store.root().join("chunks")).unwrap();
    let fresh = chunk(40);
    assert_eq!(
        store.put_batched(&fresh.object).unwrap().1,
        PutOutcome::Stored
    );
    store.put_batched(&b.object).unwrap();
    store.sync().unwrap();
    assert_eq!(fs::read(store.chunk_path(&a.id)).unwrap(), a.object);
    assert_eq!(fs::read(store.chunk_path(&b.id)).unwrap(), b.object);
}

#[test]
fn the_fan_out_cache_tracks_each_directory() {
    let mut f = batch::Fanout::default();
    assert!(!f.has_parent(0xab) && !f.has_shard(0xab, 0xcd));
    f.set_parent(0xab);
    f.set_shard(0xab, 0xcd);
    f.set_shard(0xac, 0x00);
    assert!(f.has_parent(0xab) && f.has_shard(0xab, 0xcd) && f.has_shard(0xac, 0));
    assert!(!f.has_shard(0xab, 0xce) && !f.has_parent(0xac));
    f.forget(0xab);
    assert!(!f.has_parent(0xab) && !f.has_shard(0xab, 0xcd));
    assert!(f.has_shard(0xac, 0));
}
