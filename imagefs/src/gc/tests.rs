//! gc against a directory store holding images made by the real converter.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use ::tests::imagegen::{Entry, Image, Layer, noise};
use cachetiers::{ChunkStore, DirStore};
use chunker::convert::{ConvertOptions, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::FlattenOptions;
use manifest::{ChunkEntry, LocalKeyProvider, seal};

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
        // Every call writes its chunks (the race test needs real writes,
        // even for a seed converted before).
        force: true,
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
    let a_objects: Vec<Vec<u8>> = ca
        .iter()
        .map(|id| f.store.get(id).unwrap().unwrap())
        .collect();

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
    let opened = crate::open::open_image(&f.store, "a", &f.keys, "test").unwrap();
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
    assert_eq!(
        items(&kept, GcKind::Temporary),
        BTreeSet::from([temp.to_owned()])
    );
    assert_eq!(
        items(&kept, GcKind::Profile),
        BTreeSet::from([orphan.to_string()])
    );
    assert!(items(&kept, GcKind::Chunk).is_empty() && items(&kept, GcKind::Manifest).is_empty());
    assert!(!root.join(temp).exists());

    // Kept for 3 hours: still kept; for 30 minutes: gone, with its
    // profile and the chunks only it named. The tagged one stays.
    let three_hours = gc(&f.store, &f.keys, &opts(HOUR, Some(3 * HOUR), true)).unwrap();
    assert!(three_hours.items.is_empty(), "{three_hours:?}");
    let half = gc(&f.store, &f.keys, &opts(HOUR, Some(HOUR / 2), false)).unwrap();
    assert_eq!(
        items(&half, GcKind::Manifest),
        BTreeSet::from([u.to_string()])
    );
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
    assert_eq!(
        clock_limit(Duration::from_secs(60)),
        Duration::from_secs(30)
    );
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
    let d = f
        .store
        .put_manifest(&seal(&manifest, &other).unwrap())
        .unwrap();
    age(f.store.root(), 2 * HOUR);
    let report = gc(&f.store, &f.keys, &opts(HOUR, Some(HOUR), false)).unwrap();
    assert_eq!(
        items(&report, GcKind::Manifest),
        BTreeSet::from([d.to_string()])
    );
    assert_eq!(report.deleted.chunks, 1);
}

/// The Done-when of gc: converts run in threads (each with its own store
/// handle, as separate processes would) while gc runs in a loop with a
/// 2 s grace, deleting every untagged manifest it may. Each writer
/// re-points its tag at each new image, so the one before becomes garbage
/// that gc deletes while later converts reuse its chunks. Every image is
/// opened and checked in full right after it is tagged, and every tagged
/// image at the end. The writers go on until gc has deleted images from
/// under them a few times. With gc ignoring the grace, the chunks (and
/// batch temporaries) of a convert whose manifest is not stored yet would
/// go, and a convert or a check would fail.
#[test]
fn gc_in_a_loop_beside_converts_never_breaks_an_image() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Instant;

    const WRITERS: u64 = 2;
    /// Manifests and chunks gc must have deleted before the writers stop.
    const ENOUGH: (u64, u64) = (4, 20);
    /// A bound on the run, so a gc that never deletes ends the test.
    const LIMIT: Duration = Duration::from_secs(40);
    let f = fixture();
    let root = f.store.root().to_path_buf();
    let keys_dir = f.dir.path().join("keys");
    let deleted = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let enough = {
        let deleted = deleted.clone();
        move || {
            deleted[0].load(Ordering::SeqCst) >= ENOUGH.0
                && deleted[1].load(Ordering::SeqCst) >= ENOUGH.1
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let race = opts(Duration::from_secs(2), Some(Duration::ZERO), false);
    let start = Instant::now();

    let collector = {
        let (root, keys_dir, done, race) =
            (root.clone(), keys_dir.clone(), done.clone(), race.clone());
        let deleted = deleted.clone();
        std::thread::spawn(move || {
            let store = DirStore::open(&root).unwrap();
            let keys = LocalKeyProvider::open(&keys_dir).unwrap();
            let mut runs = 0u64;
            while !done.load(Ordering::SeqCst) {
                let report = gc(&store, &keys, &race).expect("gc beside converts");
                runs += 1;
                deleted[0].fetch_add(report.deleted.manifests, Ordering::SeqCst);
                deleted[1].fetch_add(report.deleted.chunks, Ordering::SeqCst);
            }
            runs
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (root, keys_dir) = (root.clone(), keys_dir.clone());
            let work = f.dir.path().join(format!("w{w}"));
            let enough = enough.clone();
            std::thread::spawn(move || {
                fs::create_dir_all(&work).unwrap();
                let store = DirStore::open(&root).unwrap();
                let keys = LocalKeyProvider::open(&keys_dir).unwrap();
                let tag = format!("w{w}");
                let mut k = 0;
                while !enough() && start.elapsed() < LIMIT {
                    // A new image, then one converted about twice as long
                    // ago: gc may be deleting its chunks as they are
                    // reused.
                    let seed = 1000 * (w + 1) + if k % 2 == 0 { k } else { k / 2 };
                    let digest = convert_into(&store, &keys, &work, seed, Some(&tag));
                    let opened =
                        crate::open::open_image(&store, &digest.to_string(), &keys, "test")
                            .unwrap_or_else(|e| panic!("{tag} #{k}: {e}"));
                    let checked = crate::verify(&store, &opened.manifest, 1);
                    assert!(checked.bad.is_empty(), "{tag} #{k}: {:?}", checked.bad);
                    k += 1;
                }
                k
            })
        })
        .collect();
    let converts: u64 = writers
        .into_iter()
        .map(|w| w.join().expect("a writer failed"))
        .sum();
    done.store(true, Ordering::SeqCst);
    let runs = collector.join().expect("gc failed");
    let (manifests, chunks) = (
        deleted[0].load(Ordering::SeqCst),
        deleted[1].load(Ordering::SeqCst),
    );
    eprintln!(
        "{converts} converts beside {runs} gc runs, which deleted {manifests} manifests and {chunks} chunks"
    );
    assert!(
        enough(),
        "gc deleted {manifests} manifests and {chunks} chunks in {LIMIT:?}: the race was not exercised"
    );

    // Once everything is old, one more run deletes every untagged image,
    // and every tagged one still reads back whole.
    age(&root, HOUR);
    let last = gc(&f.store, &f.keys, &race).unwrap();
    assert_eq!(last.kept.tagged_manifests, WRITERS);
    assert_eq!(last.kept.untagged_manifests, 0);
    assert_eq!(f.store.list_manifests().unwrap().len() as u64, WRITERS);
    for tag in f.store.list_tags().unwrap() {
        let opened = crate::open::open_image(&f.store, &tag.name, &f.keys, "test").unwrap();
        let checked = crate::verify(&f.store, &opened.manifest, 2);
        assert!(checked.bad.is_empty(), "{}: {:?}", tag.name, checked.bad);
        assert!(checked.checked > 0);
    }
}
