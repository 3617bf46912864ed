use ::tests::synthetic::{CHUNK, encrypted_device};
use cachetiers::{ChunkStore, DirStore};
use manifest::{DomainSecret, LocalKeyProvider, seal};

use super::*;

/// Seals a synthetic device of `chunks` with `keys` into `store`.
fn image(
    store: &DirStore,
    keys: &LocalKeyProvider,
    chunks: Vec<Option<Vec<u8>>>,
) -> ManifestDigest {
    let (manifest, _) = encrypted_device(&DomainSecret::from_bytes([1; 32]), chunks, |enc| {
        store.put(&enc.id, &enc.object).unwrap();
    });
    store.put_manifest(&seal(&manifest, keys).unwrap()).unwrap()
}

fn summary<'a>(list: &'a ImageList, digest: &ManifestDigest) -> &'a ImageSummary {
    let digest = digest.to_string();
    list.images.iter().find(|i| i.digest == digest).unwrap()
}

#[test]
fn images_list_their_tags_sizes_and_unique_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::create(tmp.path().join("store")).unwrap();
    let keys = LocalKeyProvider::create(tmp.path().join("keys")).unwrap();
    let other_keys = LocalKeyProvider::create(tmp.path().join("other-keys")).unwrap();
    let shared = vec![1; CHUNK];
    // A: shared, its own full chunk, a hole, a short last chunk.
    let a = image(
        &store,
        &keys,
        vec![
            Some(shared.clone()),
            Some(vec![2; CHUNK]),
            None,
            Some(vec![3; 100]),
        ],
    );
    // B: shared and its own chunk.
    let b = image(&store, &keys, vec![Some(shared), Some(vec![4; CHUNK])]);
    // C: sealed under keys this host does not have.
    let c = image(&store, &other_keys, vec![Some(vec![5; CHUNK])]);
    store.set_tag("test", "app", &a).unwrap();
    store.set_tag("other", "x", &a).unwrap();

    let list = list_images(&store, &keys).unwrap();
    assert_eq!(list.images.len(), 3);
    let sa = summary(&list, &a);
    assert_eq!(sa.tags, ["other/x", "test/app"]);
    let ca = sa.contents.as_ref().unwrap();
    assert_eq!(ca.domain, "test");
    assert_eq!(ca.device_size, 3 * CHUNK as u64 + 100);
    assert_eq!(ca.stored_bytes, 2 * CHUNK as u64 + 100);
    assert_eq!(ca.unique_bytes, CHUNK as u64 + 100);
    assert!(sa.stored_at.is_some() && sa.manifest_bytes > 0);
    let cb = summary(&list, &b).contents.as_ref().unwrap();
    assert_eq!(
        (cb.stored_bytes, cb.unique_bytes),
        (2 * CHUNK as u64, CHUNK as u64)
    );
    assert!(summary(&list, &b).tags.is_empty());
    let sc = summary(&list, &c);
    assert!(sc.contents.is_none());
    assert!(
        sc.unreadable.as_deref().unwrap().contains("master key"),
        "{sc:?}"
    );
    // The report is data: it round-trips through JSON.
    let json = serde_json::to_string(&list).unwrap();
    assert_eq!(serde_json::from_str::<ImageList>(&json).unwrap(), list);
}

#[test]
fn a_tagged_image_is_removed_only_with_its_tags() {
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::create(tmp.path().join("store")).unwrap();
    let keys = LocalKeyProvider::create(tmp.path().join("keys")).unwrap();
    let a = image(&store, &keys, vec![Some(vec![7; CHUNK])]);
    let b = image(&store, &keys, vec![Some(vec![8; CHUNK])]);
    store.set_tag("test", "app", &a).unwrap();
    store.set_tag("other", "x", &a).unwrap();
    store.set_tag("test", "keep", &b).unwrap();

    let err = remove_image(&store, &a, false).unwrap_err();
    assert!(matches!(&err, ImagesError::Tagged { tags, .. } if tags == &["other/x", "test/app"]));
    assert!(err.to_string().contains("--untag"), "{err}");
    assert!(
        store.has_manifest(&a).unwrap(),
        "a refused rm removed the manifest"
    );

    let removed = remove_image(&store, &a, true).unwrap();
    assert_eq!(removed.untagged, ["other/x", "test/app"]);
    assert!(!store.has_manifest(&a).unwrap());
    let tags = store.list_tags().unwrap();
    assert_eq!(tags.len(), 1);
    assert_eq!((tags[0].name.as_str(), tags[0].digest), ("keep", b));
    // Its chunks stay for gc; the other image still opens.
    assert!(crate::open::open_image(&store, "keep", &keys, "test").is_ok());

    let err = remove_image(&store, &a, true).unwrap_err();
    assert!(matches!(err, ImagesError::NotFound { .. }), "{err:?}");
    let list = list_images(&store, &keys).unwrap();
    assert_eq!(list.images.len(), 1);
}
