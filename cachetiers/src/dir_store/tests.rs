use std::sync::Arc;

use manifest::{DomainSecret, EncryptedChunk, encrypt_chunk};

use super::*;

fn chunk(seed: u8) -> EncryptedChunk {
    let plain: Vec<u8> = (0..4096u32).map(|i| (i as u8).wrapping_mul(seed)).collect();
    encrypt_chunk(&DomainSecret::from_bytes([seed; 32]), &plain)
}

fn store() -> (tempfile::TempDir, DirStore) {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::create(tmp.path().join("store")).unwrap();
    (tmp, store)
}

#[test]
fn put_get_round_trip_with_sharded_path() {
    let (_tmp, store) = store();
    let c = chunk(1);
    assert!(!store.contains(&c.id).unwrap());
    assert_eq!(store.get(&c.id).unwrap(), None);
    assert_eq!(store.put(&c.id, &c.object).unwrap(), PutOutcome::Stored);
    assert!(store.contains(&c.id).unwrap());
    assert_eq!(store.get(&c.id).unwrap(), Some(c.object.clone()));
    let hex = c.id.to_hex();
    let expected = store
        .root()
        .join("chunks")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(&hex);
    assert_eq!(store.chunk_path(&c.id), expected);
    assert_eq!(fs::read(expected).unwrap(), c.object);
    assert_eq!(store.ids().unwrap(), vec![c.id]);
}

#[test]
fn second_put_reports_already_present() {
    use std::os::unix::fs::MetadataExt;
    let (_tmp, store) = store();
    let c = chunk(2);
    assert!(store.put(&c.id, &c.object).unwrap().is_new());
    let before = fs::metadata(store.chunk_path(&c.id)).unwrap();
    assert_eq!(
        store.put(&c.id, &c.object).unwrap(),
        PutOutcome::AlreadyPresent
    );
    assert!(!PutOutcome::AlreadyPresent.is_new());
    let after = fs::metadata(store.chunk_path(&c.id)).unwrap();
    // Not written again (the same file), only made young again for gc.
    assert_eq!(before.ino(), after.ino());
    assert!(after.modified().unwrap() >= before.modified().unwrap());
}

#[test]
fn put_refuses_bytes_that_do_not_match_the_id() {
    let (_tmp, store) = store();
    let c = chunk(3);
    let mut wrong = c.object.clone();
    wrong[0] ^= 1;
    let err = store.put(&c.id, &wrong).unwrap_err();
    assert!(matches!(&err, StoreError::IdMismatch { id, .. } if *id == c.id));
    assert!(err.to_string().contains(&c.id.to_hex()), "{err}");
    assert!(!store.contains(&c.id).unwrap());
    assert_eq!(store.ids().unwrap(), vec![]);
}

#[test]
fn corrupt_file_on_disk_is_an_error_naming_the_id() {
    let (_tmp, store) = store();
    let c = chunk(4);
    store.put(&c.id, &c.object).unwrap();
    let path = store.chunk_path(&c.id);
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    let err = store.get(&c.id).unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt { id, .. } if *id == c.id));
    assert!(err.to_string().contains(&c.id.to_hex()), "{err}");
    // Dropping the bad copy lets a good one be stored again.
    assert!(store.remove(&c.id).unwrap());
    assert!(!store.remove(&c.id).unwrap());
    assert!(store.put(&c.id, &c.object).unwrap().is_new());
    assert_eq!(store.get(&c.id).unwrap(), Some(c.object));
}

#[test]
fn truncated_file_on_disk_is_replaced_by_put() {
    let (_tmp, store) = store();
    let c = chunk(5);
    store.put(&c.id, &c.object).unwrap();
    fs::write(store.chunk_path(&c.id), &c.object[..10]).unwrap();
    assert!(matches!(store.get(&c.id), Err(StoreError::Corrupt { .. })));
    assert_eq!(store.put(&c.id, &c.object).unwrap(), PutOutcome::Replaced);
    assert_eq!(store.get(&c.id).unwrap(), Some(c.object));
}

#[test]
fn leftover_temp_file_is_not_an_object() {
    let (_tmp, store) = store();
    let c = chunk(6);
    // What an interrupted put leaves behind: the full bytes, under a
    // temporary name in the final directory.
    let shard = store.chunk_path(&c.id).parent().unwrap().to_path_buf();
    fs::create_dir_all(&shard).unwrap();
    let temp = shard.join(format!("{TEMP_PREFIX}{}.1234.0", c.id.to_hex()));
    fs::write(&temp, &c.object).unwrap();
    assert!(!store.contains(&c.id).unwrap());
    assert_eq!(store.get(&c.id).unwrap(), None);
    assert_eq!(store.ids().unwrap(), vec![]);
    assert!(store.put(&c.id, &c.object).unwrap().is_new());
    assert_eq!(store.ids().unwrap(), vec![c.id]);
}

#[test]
fn no_temp_files_remain_after_puts() {
    let (_tmp, store) = store();
    for seed in 1..20 {
        let c = chunk(seed);
        store.put(&c.id, &c.object).unwrap();
    }
    let mut stack = vec![store.root().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().unwrap();
            assert!(!name.starts_with(TEMP_PREFIX), "{name}");
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
}

#[test]
fn concurrent_puts_of_the_same_objects() {
    let (_tmp, store) = store();
    let store = Arc::new(store);
    let chunks: Arc<Vec<_>> = Arc::new((1..=16).map(chunk).collect());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            let chunks = Arc::clone(&chunks);
            std::thread::spawn(move || {
                for c in chunks.iter() {
                    store.put(&c.id, &c.object).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for c in chunks.iter() {
        assert_eq!(store.get(&c.id).unwrap().as_ref(), Some(&c.object));
    }
    assert_eq!(store.ids().unwrap().len(), 16);
}

#[test]
fn works_as_a_shared_trait_object() {
    let (_tmp, store) = store();
    let shared: Arc<dyn ChunkStore> = Arc::new(store);
    let c = chunk(7);
    assert!(shared.put(&c.id, &c.object).unwrap().is_new());
    // `Arc<dyn ChunkStore>` is itself a ChunkStore.
    fn contains_via<S: ChunkStore>(s: &S, id: &ChunkId) -> bool {
        s.contains(id).unwrap()
    }
    assert!(contains_via(&shared, &c.id));
}

#[test]
fn open_refuses_a_directory_that_is_not_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let err = DirStore::open(tmp.path()).unwrap_err();
    assert!(matches!(err, StoreError::NotAStore { .. }));
    DirStore::create(tmp.path()).unwrap();
    DirStore::open(tmp.path()).unwrap();
}

#[test]
fn manifests_are_stored_under_their_digest() {
    let (_tmp, store) = store();
    let sealed = b"sealed manifest bytes".to_vec();
    let digest = store.put_manifest(&sealed).unwrap();
    assert_eq!(digest, manifest::ManifestDigest::of(&sealed));
    assert_eq!(store.put_manifest(&sealed).unwrap(), digest);
    assert_eq!(store.get_manifest(&digest).unwrap(), sealed);
    assert!(
        store
            .root()
            .join("manifests")
            .join(digest.to_hex())
            .is_file()
    );
    let missing = manifest::ManifestDigest::of(b"other");
    assert!(matches!(
        store.get_manifest(&missing),
        Err(StoreError::ManifestNotFound { digest }) if digest == missing
    ));
}

#[test]
fn corrupt_manifest_is_reported() {
    let (_tmp, store) = store();
    let digest = store.put_manifest(b"abc").unwrap();
    fs::write(store.root().join("manifests").join(digest.to_hex()), b"abd").unwrap();
    let err = store.get_manifest(&digest).unwrap_err();
    assert!(matches!(err, StoreError::ManifestCorrupt { .. }));
    assert!(err.to_string().contains(&digest.to_string()), "{err}");
}

#[test]
fn tags_name_manifests() {
    let (_tmp, store) = store();
    let one = store.put_manifest(b"one").unwrap();
    let two = store.put_manifest(b"two").unwrap();
    store.set_tag("default", "app:latest", &one).unwrap();
    assert_eq!(store.resolve("default", "app:latest").unwrap(), one);
    store.set_tag("default", "app:latest", &two).unwrap();
    assert_eq!(store.resolve("default", "app:latest").unwrap(), two);
    assert_eq!(store.resolve("default", &one.to_string()).unwrap(), one);
    assert_eq!(
        store.tags("default").unwrap(),
        vec![("app:latest".to_owned(), two)]
    );

    assert!(matches!(
        store.resolve("default", "nope"),
        Err(StoreError::UnknownTag { name }) if name == "default/nope"
    ));
    assert!(matches!(
        store.resolve("default", "sha256:xyz"),
        Err(StoreError::BadDigest { .. })
    ));
    let absent = manifest::ManifestDigest::of(b"absent");
    assert!(matches!(
        store.resolve("default", &absent.to_string()),
        Err(StoreError::ManifestNotFound { .. })
    ));
    assert!(matches!(
        store.set_tag("default", "x", &absent),
        Err(StoreError::ManifestNotFound { .. })
    ));
}

#[test]
fn bad_tag_names_are_refused() {
    let (_tmp, store) = store();
    let digest = store.put_manifest(b"m").unwrap();
    for name in ["a/b", "..", "../escape", "", ".hidden"] {
        assert!(
            matches!(
                store.set_tag("default", name, &digest),
                Err(StoreError::InvalidTag(_))
            ),
            "{name:?}"
        );
        assert!(matches!(
            store.resolve("default", name),
            Err(StoreError::InvalidTag(_))
        ));
    }
    assert_eq!(store.tags("default").unwrap(), vec![]);
}

#[test]
fn garbage_tag_file_is_reported() {
    let (_tmp, store) = store();
    fs::create_dir_all(store.root().join("tags/default")).unwrap();
    fs::write(store.root().join("tags/default/broken"), b"hello").unwrap();
    let err = store.resolve("default", "broken").unwrap_err();
    assert!(matches!(&err, StoreError::BadTag { name, .. } if name == "default/broken"));
}

#[test]
fn start_profiles_are_stored_beside_their_manifest() {
    let (_tmp, store) = store();
    let digest = store.put_manifest(b"sealed manifest").unwrap();
    let other = manifest::ManifestDigest::of(b"never stored");
    assert_eq!(store.get_profile(&digest).unwrap(), None);
    assert!(!store.remove_profile(&digest).unwrap());

    store.put_profile(&digest, b"profile one").unwrap();
    assert_eq!(
        fs::read(store.root().join("profiles").join(digest.to_hex())).unwrap(),
        b"profile one"
    );
    assert_eq!(
        store.get_profile(&digest).unwrap().as_deref(),
        Some(&b"profile one"[..])
    );
    // A second put replaces the first.
    store.put_profile(&digest, b"profile two").unwrap();
    assert_eq!(
        store.get_profile(&digest).unwrap().as_deref(),
        Some(&b"profile two"[..])
    );
    assert!(store.remove_profile(&digest).unwrap());
    assert_eq!(store.get_profile(&digest).unwrap(), None);
    // The manifest is untouched by all of it.
    assert_eq!(store.get_manifest(&digest).unwrap(), b"sealed manifest");

    // A profile needs its manifest.
    let err = store.put_profile(&other, b"orphan").unwrap_err();
    assert!(
        matches!(err, StoreError::ManifestNotFound { digest } if digest == other),
        "{err}"
    );
    assert_eq!(store.get_profile(&other).unwrap(), None);
}

#[test]
fn oversized_start_profiles_are_refused_both_ways() {
    let (_tmp, store) = store();
    let digest = store.put_manifest(b"sealed manifest").unwrap();
    let limit = crate::checked::MAX_PROFILE_LEN;
    let big = vec![0u8; limit as usize + 1];
    let err = store.put_profile(&digest, &big).unwrap_err();
    assert!(
        matches!(err, StoreError::ProfileTooLarge { len, .. } if len == limit + 1),
        "{err}"
    );
    // One placed behind the store's back is not read into memory.
    let path = store.profile_path(&digest);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::File::create(&path).unwrap().set_len(limit + 1).unwrap();
    let err = store.get_profile(&digest).unwrap_err();
    assert!(err.to_string().contains(&digest.to_string()), "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
}

#[test]
fn put_replaces_a_corrupt_copy_of_the_right_length() {
    let (_tmp, store) = store();
    let c = chunk(7);
    store.put(&c.id, &c.object).unwrap();
    let path = store.chunk_path(&c.id);
    let mut bad = c.object.clone();
    bad[100] ^= 0x40;
    fs::write(&path, &bad).unwrap();
    // Re-converting is how a damaged origin object gets repaired: the put
    // must not take a same-length copy on trust.
    assert!(store.put(&c.id, &c.object).unwrap().is_new());
    assert_eq!(fs::read(&path).unwrap(), c.object);
    assert_eq!(store.get(&c.id).unwrap(), Some(c.object.clone()));
    // A good copy is still deduplicated.
    assert_eq!(
        store.put(&c.id, &c.object).unwrap(),
        PutOutcome::AlreadyPresent
    );
}

#[test]
fn tags_are_namespaced_per_domain() {
    let (_tmp, store) = store();
    let theirs = store.put_manifest(b"tenant a's image").unwrap();
    let mine = store.put_manifest(b"tenant b's image").unwrap();
    store.set_tag("tenant-a", "app", &theirs).unwrap();
    // Tenant b sets the same name in its own domain: a's tag is untouched.
    store.set_tag("tenant-b", "app", &mine).unwrap();
    assert_eq!(store.resolve("tenant-a", "app").unwrap(), theirs);
    assert_eq!(store.resolve("tenant-b", "app").unwrap(), mine);
    assert!(matches!(
        store.resolve("tenant-c", "app"),
        Err(StoreError::UnknownTag { name }) if name == "tenant-c/app"
    ));
    assert_eq!(
        store.tags("tenant-a").unwrap(),
        vec![("app".to_owned(), theirs)]
    );
    for domain in ["", "../x", "a/b", ".hidden"] {
        assert!(
            matches!(
                store.set_tag(domain, "app", &mine),
                Err(StoreError::InvalidTag(_))
            ),
            "{domain:?}"
        );
        assert!(matches!(
            store.resolve(domain, "app"),
            Err(StoreError::InvalidTag(_))
        ));
    }
    assert_eq!(store.resolve("tenant-a", "app").unwrap(), theirs);
}
