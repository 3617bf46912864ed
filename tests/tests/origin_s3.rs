//! The S3 origin against a real Garage server (started by
//! `tests::garage`): convert into a bucket, open and export from it,
//! dedup on a second convert, a corrupted object, the server going down
//! and coming back, `open_origin` configured from `AWS_*` variables,
//! start profiles stored beside a manifest in the bucket, and garbage
//! collection.
//!
//! Without a `garage` binary each test prints `SKIP:` and returns.

use std::fs;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachetiers::{Catalog, ChunkStore, ObjectOrigin, S3Settings, StoreError, open_origin};
use chunker::convert::{ConvertOptions, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;
use manifest::{ChunkId, LocalKeyProvider};
use object_store::{ObjectStoreExt, PutPayload};
use tests::garage::{Garage, GarageError};
use tests::imagegen::{Compression, Entry, Image, Layer, noise};

const CHUNK: u64 = 64 * 1024;
/// Set in the child process of `open_origin_reads_the_aws_environment`.
const CHILD_ENV: &str = "IMAGEFS_TEST_S3_CHILD";

/// A Garage server, or `None` after a SKIP line when it is not installed.
fn garage() -> Option<Garage> {
    match Garage::start_new() {
        Ok(g) => Some(g),
        Err(GarageError::NotInstalled { looked }) => {
            tests::harness::skip(&format!("garage not installed (looked in {looked})"));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn settings(g: &Garage, prefix: &str) -> S3Settings {
    S3Settings {
        endpoint: Some(g.endpoint.clone()),
        region: Some(g.region.clone()),
        access_key_id: Some(g.key_id.clone()),
        secret_access_key: Some(g.secret.clone()),
        ..S3Settings::new(&g.bucket, prefix)
    }
}

fn image() -> Image {
    Image::new(vec![
        Layer::new(vec![
            Entry::dir("usr/lib"),
            Entry::file("usr/lib/libbig.so", noise(1, 700_000)),
            Entry::file("etc/os-release", b"ID=test\n"),
        ])
        .compressed(Compression::Gzip),
        Layer::new(vec![Entry::file("app/a.bin", noise(7, 300_000))]).compressed(Compression::Zstd),
    ])
}

fn options(tag: Option<&str>) -> ConvertOptions {
    ConvertOptions {
        flatten: FlattenOptions {
            ext4: Ext4Options {
                chunk_size: CHUNK,
                free_bytes: 1 << 20,
                spare_inodes: 64,
            },
            ..FlattenOptions::default()
        },
        domain: "d".into(),
        threads: 2,
        tag: tag.map(str::to_owned),
        progress: false,
        force: false,
        pipeline: Default::default(),
    }
}

/// The test image as an `oci:` layout in a fresh directory, with a key
/// directory beside it.
struct Fixture {
    tmp: tempfile::TempDir,
    keys: LocalKeyProvider,
    source: ImageSource,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let keys = LocalKeyProvider::create(tmp.path().join("keys")).unwrap();
    let layout = tmp.path().join("oci");
    image().write_oci_layout(&layout, "app").unwrap();
    let source = format!("oci:{}:app", layout.display()).parse().unwrap();
    Fixture { tmp, keys, source }
}

/// Runs `f` in a thread and fails the test if it has not returned within
/// 60 s (a hang, not a slow answer).
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: no result within 60 s"))
}

#[test]
fn convert_open_and_export_through_s3() {
    let Some(g) = garage() else { return };
    let Fixture { tmp, keys, source } = fixture();

    let origin = ObjectOrigin::s3(&settings(&g, "images")).unwrap();
    let first = convert(&source, &origin, &keys, &options(Some("app:v1"))).expect("convert");
    assert!(first.new_chunks > 0, "{first:?}");
    assert_eq!(first.new_chunks + first.holes, first.chunks);

    let by_tag = imagefs::open_image(&origin, "app:v1", &keys, "d").unwrap();
    let by_digest = imagefs::open_image(&origin, &first.digest.to_string(), &keys, "d").unwrap();
    assert_eq!(by_tag.digest, first.digest);
    assert_eq!(by_tag.manifest, by_digest.manifest);

    let flat = tmp.path().join("flat.img");
    flatten_to_file(&source, &flat, &options(None).flatten).unwrap();
    let out = tmp.path().join("export.img");
    imagefs::export(&origin, &by_tag.manifest, &out).unwrap();
    assert!(
        fs::read(&flat).unwrap() == fs::read(&out).unwrap(),
        "export from S3 differs from flatten"
    );
    let report = imagefs::verify(&origin, &by_tag.manifest, 2);
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    assert_eq!(report.checked, first.new_chunks);

    // Converted again: the record in the bucket makes it a no-op.
    let again = convert(&source, &origin, &keys, &options(Some("app:v1"))).expect("convert");
    assert!(again.already_converted, "{again:?}");
    assert_eq!(again.digest, first.digest);
    // Forced: every chunk deduplicated.
    let forced = ConvertOptions {
        force: true,
        ..options(Some("app:v1"))
    };
    let second = convert(&source, &origin, &keys, &forced).expect("convert");
    assert!(!second.already_converted);
    assert_eq!(second.new_chunks, 0, "{second:?}");
    assert_eq!(second.bytes_written, 0);
    assert_eq!(second.existing_chunks, first.new_chunks);

    // Another prefix in the same bucket is another origin.
    let other = ObjectOrigin::s3(&settings(&g, "elsewhere")).unwrap();
    let id = *by_tag.manifest.chunks.iter().find_map(|c| c.id()).unwrap();
    assert!(origin.contains(&id).unwrap());
    assert!(!other.contains(&id).unwrap());
    assert!(matches!(
        other.resolve("d", "app:v1"),
        Err(StoreError::UnknownTag { .. })
    ));

    // `open_origin` with the settings in AWS_* variables, in a child
    // process (setting the environment of this multi-threaded one is not
    // sound).
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "--exact",
            "open_origin_reads_the_aws_environment",
            "--nocapture",
        ])
        .env(
            CHILD_ENV,
            format!("s3://{}/images {} {id}", g.bucket, second.digest),
        )
        .env("AWS_ENDPOINT_URL", &g.endpoint)
        .env("AWS_REGION", &g.region)
        .env("AWS_ACCESS_KEY_ID", &g.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &g.secret)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("CHILD OK"), "{text}");
}

#[test]
fn start_profiles_are_stored_beside_the_manifest_in_s3() {
    let Some(g) = garage() else { return };
    let Fixture {
        tmp: _tmp,
        keys,
        source,
    } = fixture();
    let origin = ObjectOrigin::s3(&settings(&g, "profiles")).unwrap();
    let converted = convert(&source, &origin, &keys, &options(None)).expect("convert");
    let opened = imagefs::open_image(&origin, &converted.digest.to_string(), &keys, "d").unwrap();
    let (digest, manifest) = (&opened.digest, &opened.manifest);
    assert_eq!(origin.get_profile(digest).unwrap(), None);

    // A start that read the last present chunk, then the first.
    let present: Vec<u64> = (0..manifest.chunks.len() as u64)
        .filter(|&i| !manifest.chunks[i as usize].is_hole())
        .collect();
    let (first, last) = (present[0], *present.last().unwrap());
    let recorder = imagefs::profile::ProfileRecorder::new(*digest, manifest, None);
    recorder.record_read(last * CHUNK, 4096);
    recorder.record_read(first * CHUNK, 4096);
    recorder.close();
    imagefs::profile::store_profile(&origin, &keys, manifest, &recorder.profile()).unwrap();
    assert_eq!(
        imagefs::profile::load_profile(&origin, digest, &keys, manifest),
        Some(vec![
            manifest::ChunkIndex(last),
            manifest::ChunkIndex(first)
        ])
    );
    // Sealed in the bucket: the plain profile magic is not there.
    let raw = origin.get_profile(digest).unwrap().unwrap();
    assert!(!raw.windows(8).any(|w| w == b"IMGFSPF\0"));
    // Another prefix is another origin, without it.
    let other = ObjectOrigin::s3(&settings(&g, "elsewhere-profiles")).unwrap();
    assert_eq!(other.get_profile(digest).unwrap(), None);
    assert!(origin.remove_profile(digest).unwrap());
    assert!(!origin.remove_profile(digest).unwrap());
    assert_eq!(
        imagefs::profile::load_profile(&origin, digest, &keys, manifest),
        None
    );
}

/// Run by `convert_open_and_export_through_s3` as a child process with
/// `AWS_*` set; on its own (no `IMAGEFS_TEST_S3_CHILD`) it has nothing to
/// check and returns.
#[test]
fn open_origin_reads_the_aws_environment() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split(' ').collect();
    let [url, digest, id] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let origin = open_origin(url, false).unwrap();
    assert_eq!(origin.location(), url);
    assert_eq!(origin.resolve("d", "app:v1").unwrap().to_string(), digest);
    let id: ChunkId = id.parse().unwrap();
    let object = origin.get(&id).unwrap().expect("chunk present");
    assert_eq!(ChunkId::of_object(&object), id);
    println!("CHILD OK");
}

#[test]
fn corrupt_objects_and_an_origin_that_goes_away() {
    let Some(mut g) = garage() else { return };
    let origin = Arc::new(ObjectOrigin::s3(&settings(&g, "p")).unwrap());
    let objects: Vec<Vec<u8>> = (1..=3).map(|seed| noise(seed, 10_000)).collect();
    let ids: Vec<ChunkId> = objects.iter().map(|o| ChunkId::of_object(o)).collect();
    for (id, object) in ids.iter().zip(&objects) {
        assert!(origin.put(id, object).unwrap().is_new());
        assert!(!origin.put(id, object).unwrap().is_new());
    }
    let err = origin.put(&ids[0], &objects[1]).unwrap_err();
    assert!(matches!(err, StoreError::IdMismatch { .. }), "{err}");

    // Overwrite chunk 0 in the bucket with other bytes, behind the
    // origin's back.
    // (Through a client of its own: connections pooled by one runtime are
    // not for another.)
    let key = origin.chunk_key(&ids[0]);
    let raw = ObjectOrigin::s3(&settings(&g, "p")).unwrap();
    let store = raw.object_store().clone();
    let raw_key = object_store::path::Path::from(key.as_str());
    let other = objects[1].clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(store.put(&raw_key, PutPayload::from(other)))
        .unwrap();
    let err = origin.get(&ids[0]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{msg}");
    assert!(msg.contains(&format!("s3://{}/{key}", g.bucket)), "{msg}");
    assert!(msg.contains(&format!("hash to {}", ids[1])), "{msg}");
    // The damaged copy has the right length: a put (a re-convert) must
    // still see it is wrong, and replace it.
    assert_eq!(
        origin.put(&ids[0], &objects[0]).unwrap(),
        cachetiers::PutOutcome::Replaced
    );
    assert_eq!(origin.get(&ids[0]).unwrap(), Some(objects[0].clone()));
    assert!(!origin.put(&ids[0], &objects[0]).unwrap().is_new());
    assert!(origin.remove(&ids[0]).unwrap());
    assert_eq!(origin.get(&ids[0]).unwrap(), None);
    assert!(!origin.remove(&ids[0]).unwrap());

    // The origin goes down: requests fail, naming it, and do not hang.
    g.stop();
    let o = origin.clone();
    let id = ids[1];
    let (result, took) = within_a_minute("get from a stopped origin", move || {
        let start = Instant::now();
        (o.get(&id), start.elapsed())
    });
    let err = result.unwrap_err();
    let msg = imagefs::error_chain(&err);
    eprintln!("origin down: failed after {took:?}: {msg}");
    assert!(matches!(err, StoreError::Backend { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!("s3://{}/p failed", g.bucket)),
        "{msg}"
    );
    assert!(msg.contains(&origin.chunk_key(&id)), "{msg}");

    // And comes back on the same data.
    g.start().unwrap();
    let o = origin.clone();
    let got = within_a_minute("get after restart", move || o.get(&id));
    assert_eq!(got.unwrap(), Some(objects[1].clone()));
    assert!(origin.contains(&ids[2]).unwrap());
}

#[test]
fn tags_and_images_are_listed_and_removed_in_s3() {
    let Some(g) = garage() else { return };
    let Fixture {
        tmp: _tmp,
        keys,
        source,
    } = fixture();
    let origin = ObjectOrigin::s3(&settings(&g, "lifecycle")).unwrap();
    let converted = convert(&source, &origin, &keys, &options(Some("app"))).expect("convert");
    let digest = converted.digest;
    origin.set_tag("e", "x", &digest).unwrap();

    let tags = origin.list_tags().unwrap();
    let names: Vec<_> = tags
        .iter()
        .map(|t| (t.domain.as_str(), t.name.as_str()))
        .collect();
    assert_eq!(names, [("d", "app"), ("e", "x")]);
    assert!(tags.iter().all(|t| t.digest == digest));
    let manifests = origin.list_manifests().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0].digest, digest);
    assert!(manifests[0].size > 0 && manifests[0].stored_at.is_some());

    let list = imagefs::images::list_images(&origin, &keys).unwrap();
    let contents = list.images[0].contents.as_ref().unwrap();
    assert_eq!(contents.domain, "d");
    // The only image holds all of its chunks alone.
    assert_eq!(contents.unique_bytes, contents.stored_bytes);
    assert!(contents.stored_bytes > 0);

    let err = imagefs::images::remove_image(&origin, &digest, false).unwrap_err();
    assert!(err.to_string().contains("d/app, e/x"), "{err}");
    let removed = imagefs::images::remove_image(&origin, &digest, true).unwrap();
    assert_eq!(removed.untagged, ["d/app", "e/x"]);
    assert!(origin.list_manifests().unwrap().is_empty());
    assert!(origin.list_tags().unwrap().is_empty());
    assert!(!origin.remove_tag("d", "app").unwrap());
    assert!(!origin.remove_manifest(&digest).unwrap());
}

/// `imagefs gc` against Garage: two images sharing a base, one removed;
/// the dry run lists exactly that image's own chunks, the real run
/// deletes them and the other still verifies; with the server down, gc
/// refuses and names the store.
#[test]
fn gc_collects_a_removed_images_chunks_in_s3() {
    let Some(mut g) = garage() else { return };
    let Fixture { tmp, keys, source } = fixture();
    // Every reuse rewrites a chunk, so a grace of zero is safe here.
    let origin = ObjectOrigin::s3(&settings(&g, "gc"))
        .unwrap()
        .with_dedup_refresh(Duration::ZERO);
    let a = convert(&source, &origin, &keys, &options(Some("a"))).expect("convert a");
    let mut second = image();
    second.layers[1] = Layer::new(vec![Entry::file("app/b.bin", noise(8, 300_000))]);
    let layout = tmp.path().join("oci-b");
    second.write_oci_layout(&layout, "b").unwrap();
    let source_b = format!("oci:{}:b", layout.display()).parse().unwrap();
    let b = convert(&source_b, &origin, &keys, &options(Some("b"))).expect("convert b");
    let ids = |digest| -> std::collections::BTreeSet<String> {
        let opened = imagefs::open_image(&origin, &format!("{digest}"), &keys, "d").unwrap();
        opened
            .manifest
            .chunks
            .iter()
            .filter_map(|c| match c {
                manifest::ChunkEntry::Present { id, .. } => Some(id.to_hex()),
                manifest::ChunkEntry::Hole => None,
            })
            .collect()
    };
    let (ca, cb) = (ids(a.digest), ids(b.digest));
    let own_b: std::collections::BTreeSet<String> = cb.difference(&ca).cloned().collect();
    assert!(!own_b.is_empty() && own_b.len() < cb.len());
    imagefs::images::remove_image(&origin, &b.digest, true).unwrap();
    // Past the grace (zero) and the one-second slack, by the store's clock.
    std::thread::sleep(Duration::from_secs(3));

    let opts = |dry_run| imagefs::gc::GcOptions {
        grace: Duration::ZERO,
        keep_untagged: None,
        dry_run,
    };
    let dry = imagefs::gc::gc(&origin, &keys, &opts(true)).unwrap();
    let listed: std::collections::BTreeSet<String> =
        dry.items.iter().map(|i| i.name.clone()).collect();
    assert_eq!(listed, own_b, "{dry:?}");
    assert!(
        dry.items
            .iter()
            .all(|i| i.kind == imagefs::gc::GcKind::Chunk)
    );
    let done = imagefs::gc::gc(&origin, &keys, &opts(false)).unwrap();
    assert_eq!(done.deleted, dry.deleted);
    for id in &own_b {
        let id: ChunkId = id.parse().unwrap();
        assert!(!origin.contains(&id).unwrap(), "{id} survived");
    }
    let kept = imagefs::open_image(&origin, "a", &keys, "d").unwrap();
    assert!(imagefs::verify(&origin, &kept.manifest, 2).bad.is_empty());

    // The default refresh (an hour) needs a grace at least that long.
    let slow = ObjectOrigin::s3(&settings(&g, "gc")).unwrap();
    let err = imagefs::gc::gc(&slow, &keys, &opts(false)).unwrap_err();
    assert!(err.to_string().contains("dedup refresh"), "{err}");

    g.stop();
    let err = within_a_minute("gc with garage stopped", move || {
        imagefs::gc::gc(&origin, &keys, &opts(false))
            .map(|_| ())
            .map_err(|e| imagefs::error_chain(&e))
    })
    .unwrap_err();
    let text = err;
    assert!(text.contains("s3://") && text.contains("gc of"), "{text}");
}
