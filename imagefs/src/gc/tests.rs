//! gc against a directory store holding images made by the real converter.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use cachetiers::{ChunkStore, DirStore};
use chunker::convert::{ConvertOptions, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::FlattenOptions;
use manifest::{ChunkEntry, LocalKeyProvider, seal};
use ::tests::imagegen::{Entry, Image, Layer, noise};

use super::*;
use crate::images::remove_image;

const HOUR: Duration = Duration::from_secs(3600);

struct Fixture {
    dir: tempfile::TempDir,
    store: DirStore,
    keys: LocalKeyProvider,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::create(dir.path().join("store")).unwrap();
    let keys = LocalKeyProvider::create(dir.path().join("keys")).unwrap();
    Fixture { dir, store, keys }
}

/// An image of a base layer every image shares and a layer of its own.
pub(super) fn image(seed: u64) -> Image {
    Image::new(vec![
        Layer::new(vec![Entry::file("base.bin", noise(1, 300_000))]),
        Layer::new(vec![Entry::file("own.bin", noise(seed, 200_000))]),
    ])
}

/// Converts `image(seed)` into `store` (tagged `tag` in domain `test`).
pub(super) fn convert_into(
    store: &dyn cachetiers::Origin,
    keys: &LocalKeyProvider,
    work: &Path,
    seed: u64,
    tag: Option<&str>,
) -> ManifestDigest {
    let layout = work.join(format!("oci-{seed}"));
    image(seed).write_oci_layout(&layout, "x").unwrap();
    let source = format!("oci:{}:x", layout.display()).parse().unwrap();
    let opts = ConvertOptions {
        flatten: FlattenOptions {
            ext4: Ext4Options {
                chunk_size: 64 * 1024,
                free_bytes: 1 << 20,
                spare_inodes: 16,
            },
            ..FlattenOptions::default()
        },
        domain: "test".into(),
        threads: 1,
        tag: tag.map(str::to_owned),
        progress: false,
        pipeline: Default::default(),
    };
    let digest = convert(&source, store, keys, &opts).unwrap().digest;
    fs::remove_dir_all(&layout).unwrap();
    digest
}

/// The chunk ids a manifest names, read straight from its chunk table.
pub(super) fn chunks_of(
    store: &dyn Catalog,
    keys: &LocalKeyProvider,
    digest: &ManifestDigest,
) -> BTreeSet<ChunkId> {
    let manifest = unseal(&store.get_manifest(digest).unwrap(), keys).unwrap();
    manifest
        .chunks
        .iter()
        .filter_map(|c| match c {
            ChunkEntry::Present { id, .. } => Some(*id),
            ChunkEntry::Hole => None,
        })
        .collect()
}

/// Sets the modification time of every file under `root` to `by` ago.
fn age(root: &Path, by: Duration) {
    let when = SystemTime::now() - by;
    for entry in fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            age(&path, by);
        } else {
            set_mtime(&path, when);
        }
    }
}

fn set_mtime(path: &Path, when: SystemTime) {
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

fn opts(grace: Duration, keep_untagged: Option<Duration>, dry_run: bool) -> GcOptions {
    GcOptions {
        grace,
        keep_untagged,
        dry_run,
    }
}

fn items(report: &GcReport, kind: GcKind) -> BTreeSet<String> {
    report
        .items
        .iter()
        .filter(|i| i.kind == kind)
        .map(|i| i.name.clone())
        .collect()
}

fn hexes(ids: &BTreeSet<ChunkId>) -> BTreeSet<String> {
    ids.iter().map(ChunkId::to_hex).collect()
}

#[test]
fn gc_deletes_exactly_a_removed_images_unique_chunks() {
    let f = fixture();
    let a = convert_into(&f.store, &f.keys, f.dir.path(), 2, Some("a"));
    let b = convert_into(&f.store, &f.keys, f.dir.path(), 3, Some("b"));
    let (ca, cb) = (
        chunks_of(&f.store, &f.keys, &a),
        chunks_of(&f.store, &f.keys, &b),
    );
    let unique_b: BTreeSet<ChunkId> = cb.difference(&ca).copied().collect();
    assert!(!unique_b.is_empty() && unique_b.len() < cb.len());
    let a_objects: Vec<Vec<u8>> = ca.iter().map(|id| f.store.get(id).unwrap().unwrap()).collect();

    // Nothing is garbage while both are tagged, however old.
    age(f.store.root(), 2 * HOUR);
    let none = gc(&f.store, &f.keys, &opts(HOUR, None, true)).unwrap();
    assert!(none.items.is_empty(), "{none:?}");
    assert_eq!(none.kept.tagged_manifests, 2);
    assert_eq!(none.kept.chunks as usize, ca.union(&cb).count());

    remove_image(&f.store, &b, true).unwrap();
    let dry = gc(&f.store, &f.keys, &opts(HOUR, None, true)).unwrap();
    assert!(dry.dry_run);
    assert_eq!(items(&dry, GcKind::Chunk), hexes(&unique_b));
    assert_eq!(dry.items.len(), unique_b.len(), "{dry:?}");
    assert_eq!(dry.deleted.chunks as usize, unique_b.len());
    let bytes: u64 = unique_b
        .iter()
        .map(|id| fs::metadata(f.store.chunk_path(id)).unwrap().len())
        .sum();
    assert_eq!(dry.deleted.chunk_bytes, bytes);
    // A dry run deletes nothing.
    for id in &unique_b {
        assert!(f.store.contains(id).unwrap());
    }

    let done = gc(&f.store, &f.keys, &opts(HOUR, None, false)).unwrap();
    assert!(!done.dry_run);
    assert_eq!(done.deleted, dry.deleted);
    assert_eq!(done.items, dry.items);
    for id in &unique_b {
        assert!(!f.store.contains(id).unwrap(), "{id} survived");
    }
    // The other image is whole, byte for byte, and reads back.
    for (id, object) in ca.iter().zip(&a_objects) {
        assert_eq!(&f.store.get(id).unwrap().unwrap(), object);
    }
    let opened = crate::open_image(&f.store, "a", &f.keys, "test").unwrap();
    let checked = crate::verify(&f.store, &opened.manifest, 2);
    assert!(checked.bad.is_empty(), "{checked:?}");
    // And a second run finds nothing more.
    let again = gc(&f.store, &f.keys, &opts(HOUR, None, false)).unwrap();
    assert!(again.items.is_empty(), "{again:?}");
}

#[test]
fn untagged_manifests_follow_the_retention_rule_and_young_objects_stay() {
    let f = fixture();
    let a = convert_into(&f.store, &f.keys, f.dir.path(), 2, Some("a"));
    let u = convert_into(&f.store, &f.keys, f.dir.path(), 3, None);
    f.store.put_profile(&u, &[7; 64]).unwrap();
    let unique_u: BTreeSet<ChunkId> = chunks_of(&f.store, &f.keys, &u)
        .difference(&chunks_of(&f.store, &f.keys, &a))
        .copied()
        .collect();
    // Old leftovers: a temporary, a profile whose manifest is gone.
    let root = f.store.root();
    let temp = "chunks/00/00/.tmp.0000.1.1";
    fs::create_dir_all(root.join("chunks/00/00")).unwrap();
    fs::write(root.join(temp), b"half a chunk").unwrap();
    let orphan = ManifestDigest::of(b"gone");
    fs::write(root.join("profiles").join(orphan.to_hex()), [1; 40]).unwrap();
    age(root, 2 * HOUR);
    // Young garbage: a chunk no manifest names, written just now.
    let young = f.store.put_batched(b"young, unnamed").unwrap().0;
    f.store.sync().unwrap();

    // Untagged manifests are kept by default (and their chunks).
    let kept = gc(&f.store, &f.keys, &opts(HOUR, None, false)).unwrap();
    assert_eq!(kept.kept.untagged_manifests, 1);
    assert_eq!(kept.kept.profiles, 1);
    assert_eq!(kept.kept.young, 1);
    assert_eq!(items(&kept, GcKind::Temporary), BTreeSet::from([temp.to_owned()]));
    assert_eq!(items(&kept, GcKind::Profile), BTreeSet::from([orphan.to_string()]));
    assert!(items(&kept, GcKind::Chunk).is_empty() && items(&kept, GcKind::Manifest).is_empty());
    assert!(!root.join(temp).exists());

    // Kept for 3 hours: still kept; for 30 minutes: gone, with its
    // profile and the chunks only it named. The tagged one stays.
    let three_hours = gc(&f.store, &f.keys, &opts(HOUR, Some(3 * HOUR), true)).unwrap();
    assert!(three_hours.items.is_empty(), "{three_hours:?}");
    let half = gc(&f.store, &f.keys, &opts(HOUR, Some(HOUR / 2), false)).unwrap();
    assert_eq!(items(&half, GcKind::Manifest), BTreeSet::from([u.to_string()]));
    assert_eq!(items(&half, GcKind::Chunk), hexes(&unique_u));
    assert_eq!(half.kept.tagged_manifests, 1);
    assert_eq!(half.kept.young, 1);
    assert!(f.store.get_profile(&u).unwrap().is_none());
    assert!(f.store.contains(&young).unwrap());

    // A tagged manifest stays whatever the retention and age.
    let zero = gc(&f.store, &f.keys, &opts(HOUR, Some(Duration::ZERO), false)).unwrap();
    assert!(zero.items.is_empty(), "{zero:?}");
    assert!(f.store.has_manifest(&a).unwrap());

    // An untagged manifest younger than the grace stays, retention or not.
    let v = convert_into(&f.store, &f.keys, f.dir.path(), 4, None);
    let fresh = gc(&f.store, &f.keys, &opts(HOUR, Some(Duration::ZERO), false)).unwrap();
    assert!(fresh.items.is_empty(), "{fresh:?}");
    assert!(f.store.has_manifest(&v).unwrap());
}

#[test]
fn a_reused_chunk_is_young_again() {
    let f = fixture();
    let a = convert_into(&f.store, &f.keys, f.dir.path(), 2, Some("a"));
    let ca = chunks_of(&f.store, &f.keys, &a);
    remove_image(&f.store, &a, true).unwrap();
    age(f.store.root(), 2 * HOUR);
    // A convert reusing every chunk of the removed image, its manifest
    // not stored yet: the puts alone make them young.
    for id in &ca {
        let object = f.store.get(id).unwrap().unwrap();
        f.store.put_batched(&object).unwrap();
    }
    let report = gc(&f.store, &f.keys, &opts(HOUR, None, true)).unwrap();
    assert!(report.items.is_empty(), "{report:?}");
    assert_eq!(report.kept.young as usize, ca.len());
}

#[test]
fn a_kept_manifest_these_keys_cannot_open_stops_gc() {
    let f = fixture();
    let other = LocalKeyProvider::create(f.dir.path().join("other-keys")).unwrap();
    let a = convert_into(&f.store, &other, f.dir.path(), 2, Some("a"));
    let garbage = f.store.put_batched(b"unnamed").unwrap().0;
    f.store.sync().unwrap();
    age(f.store.root(), 2 * HOUR);
    let err = gc(&f.store, &f.keys, &opts(HOUR, None, false)).unwrap_err();
    assert!(
        matches!(&err, GcError::Unreadable { digest, .. } if *digest == a),
        "{err:?}"
    );
    assert!(err.to_string().contains("cannot be unsealed"), "{err}");
    assert!(f.store.contains(&garbage).unwrap());
}

#[test]
fn a_store_that_cannot_be_listed_is_refused() {
    let f = fixture();
    let garbage = f.store.put_batched(b"unnamed").unwrap().0;
    f.store.sync().unwrap();
    age(f.store.root(), 2 * HOUR);
    // A shard that is a file: listing it fails (even as root).
    fs::write(f.store.root().join("chunks/ff"), b"not a directory").unwrap();
    let err = gc(&f.store, &f.keys, &opts(HOUR, None, false)).unwrap_err();
    let text = crate::error_chain(&err);
    assert!(
        matches!(err, GcError::Store { .. }) && text.contains("chunks/ff"),
        "{text}"
    );
    assert!(f.store.contains(&garbage).unwrap());
}

#[test]
fn an_object_stamped_in_the_future_is_refused() {
    let f = fixture();
    let garbage = f.store.put_batched(b"unnamed").unwrap().0;
    let ahead = f.store.put_batched(b"from a fast clock").unwrap().0;
    f.store.sync().unwrap();
    age(f.store.root(), 2 * HOUR);
    set_mtime(&f.store.chunk_path(&ahead), SystemTime::now() + 24 * HOUR);
    let err = gc(&f.store, &f.keys, &opts(HOUR, None, false)).unwrap_err();
    assert!(matches!(err, GcError::FutureObject { .. }), "{err:?}");
    assert!(err.to_string().contains(&ahead.to_string()), "{err}");
    assert!(f.store.contains(&garbage).unwrap());
}

#[test]
fn clock_limits() {
    assert_eq!(clock_limit(Duration::ZERO), Duration::from_secs(2));
    assert_eq!(clock_limit(Duration::from_secs(60)), Duration::from_secs(30));
    assert_eq!(clock_limit(24 * HOUR), MAX_CLOCK_SKEW);
}

#[test]
fn an_unreadable_manifest_that_goes_needs_no_keys() {
    let f = fixture();
    let other = LocalKeyProvider::create(f.dir.path().join("other-keys")).unwrap();
    let (manifest, _) = ::tests::synthetic::encrypted_device(
        &manifest::DomainSecret::from_bytes([1; 32]),
        vec![Some(vec![9; ::tests::synthetic::CHUNK])],
        |enc| {
            f.store.put(&enc.id, &enc.object).unwrap();
        },
    );
    let d = f.store.put_manifest(&seal(&manifest, &other).unwrap()).unwrap();
    age(f.store.root(), 2 * HOUR);
    let report = gc(&f.store, &f.keys, &opts(HOUR, Some(HOUR), false)).unwrap();
    assert_eq!(items(&report, GcKind::Manifest), BTreeSet::from([d.to_string()]));
    assert_eq!(report.deleted.chunks, 1);
}
