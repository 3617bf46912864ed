//! Convergent-encrypted chunks, the sealed manifest and the store.
//!
//! Small generated images converted with 64 KiB chunks into a real
//! directory store, then read back through `imagefs` (export, verify) and
//! checked against a plain `flatten` of the same image.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use tests::imagegen::noise;

use cachetiers::{ChunkStore, DirStore};
use chunker::convert::{ConvertOptions, ConvertReport, Pipeline, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;
use manifest::{ChunkEntry, ChunkId, LocalKeyProvider, Manifest};
use tempfile::TempDir;
use tests::imagegen::{Compression, Entry, Image, Layer};

const CHUNK: u64 = 64 * 1024;

fn base_layer() -> Layer {
    Layer::new(vec![
        Entry::dir("usr/lib"),
        Entry::file("usr/lib/libbig.so", noise(1, 700_000)),
        Entry::file("usr/lib/libsmall.so", noise(2, 5_000)),
        Entry::file("etc/os-release", b"ID=test\n"),
    ])
    .compressed(Compression::Gzip)
}

fn app_image(name: &str, seed: u64) -> Image {
    Image::new(vec![
        base_layer(),
        Layer::new(vec![Entry::file(
            format!("app/{name}.bin"),
            noise(seed, 300_000),
        )])
        .compressed(Compression::Zstd),
    ])
}

struct Env {
    dir: TempDir,
    store: DirStore,
    keys: LocalKeyProvider,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::create(dir.path().join("store")).unwrap();
    let keys = LocalKeyProvider::create(dir.path().join("keys")).unwrap();
    Env { dir, store, keys }
}

fn write_layout(env: &Env, image: &Image, name: &str) -> ImageSource {
    let dir = env.dir.path().join(format!("oci-{name}"));
    image.write_oci_layout(&dir, name).unwrap();
    format!("oci:{}:{name}", dir.display()).parse().unwrap()
}

fn options(domain: &str) -> ConvertOptions {
    ConvertOptions {
        flatten: FlattenOptions {
            ext4: Ext4Options {
                chunk_size: CHUNK,
                free_bytes: 1 << 20,
                spare_inodes: 64,
            },
            ..FlattenOptions::default()
        },
        domain: domain.into(),
        threads: 2,
        tag: None,
        progress: false,
        force: false,
        pipeline: Default::default(),
    }
}

fn run(env: &Env, source: &ImageSource, opts: &ConvertOptions) -> ConvertReport {
    convert(source, &env.store, &env.keys, opts).expect("convert")
}

fn manifest_of(env: &Env, r: &ConvertReport) -> Manifest {
    // Whatever the domain: unsealing alone authenticates the manifest.
    let sealed = env.store.get_manifest(&r.digest).unwrap();
    manifest::unseal(&sealed, &env.keys).unwrap()
}

fn ids(m: &Manifest) -> BTreeSet<ChunkId> {
    m.chunks.iter().filter_map(|c| c.id().copied()).collect()
}

/// Every object file in the store, checked against the id it is named by.
fn assert_store_valid(store: &Path) {
    let mut stack = vec![store.join("chunks")];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(path);
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".tmp."), "temp file left: {path:?}");
            let id: ChunkId = name.parse().unwrap_or_else(|_| panic!("odd file {path:?}"));
            manifest::verify_object(&id, &fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{path:?}: {e}"));
        }
    }
}

#[test]
fn export_gives_back_the_flattened_image() {
    let env = env();
    let source = write_layout(&env, &app_image("a", 10), "a");
    let r = run(&env, &source, &options("d"));
    assert!(r.holes > 0, "free space should give holes: {r:?}");
    assert_eq!(r.new_chunks + r.holes, r.chunks);

    let flat = env.dir.path().join("flat.img");
    flatten_to_file(&source, &flat, &options("d").flatten).unwrap();
    let out = env.dir.path().join("export.img");
    let m = manifest_of(&env, &r);
    let e = imagefs::export(&env.store, &m, &out).unwrap();
    assert_eq!(e.size, fs::metadata(&flat).unwrap().len());
    assert!(
        fs::read(&flat).unwrap() == fs::read(&out).unwrap(),
        "export differs from flatten"
    );
    let report = imagefs::verify(&env.store, &m, 2);
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    assert_eq!(report.checked, r.new_chunks);
    assert_eq!(m.config.cmd, ["echo hello"]);
}

#[test]
fn converting_twice_stores_nothing_new() {
    let env = env();
    let source = write_layout(&env, &app_image("a", 10), "a");
    let first = run(&env, &source, &options("d"));
    let second = run(&env, &source, &options("d"));
    assert_eq!(second.new_chunks, 0, "{second:?}");
    assert_eq!(second.bytes_written, 0);
    assert_eq!(second.existing_chunks, first.new_chunks);
    // The plaintext manifest is identical; the sealed bytes differ only
    // because each seal uses a fresh random data key.
    assert_eq!(manifest_of(&env, &first), manifest_of(&env, &second));
}

#[test]
fn both_pipelines_and_any_thread_count_give_the_same_image() {
    let env = env();
    let mut image = app_image("a", 10);
    // An uncompressed layer too: its blob digest is its diff_id, hashed
    // once on the reading thread rather than on the flattening one.
    image.layers.push(Layer::new(vec![Entry::file(
        "app/plain.bin",
        noise(4, 200_000),
    )]));
    let source = write_layout(&env, &image, "a");
    let serial = run(
        &env,
        &source,
        &ConvertOptions {
            pipeline: Pipeline::Serial,
            threads: 1,
            ..options("d")
        },
    );
    let want = manifest_of(&env, &serial);
    for threads in [1, 3] {
        // A store of its own, the same keys.
        let root = env.dir.path().join(format!("store-{threads}"));
        let store = DirStore::create(&root).unwrap();
        let overlapped = convert(
            &source,
            &store,
            &env.keys,
            &ConvertOptions {
                pipeline: Pipeline::Overlapped,
                threads,
                ..options("d")
            },
        )
        .expect("convert");
        let sealed = store.get_manifest(&overlapped.digest).unwrap();
        let got = manifest::unseal(&sealed, &env.keys).unwrap();
        assert_eq!(got, want, "{threads} threads");
        assert_eq!(overlapped.flatten, serial.flatten);
        assert_eq!(overlapped.new_chunks, serial.new_chunks);
        assert_eq!(overlapped.bytes_written, serial.bytes_written);
        assert_eq!(store.ids().unwrap(), env.store.ids().unwrap());
        assert_store_valid(&root);
    }
}

#[test]
fn images_sharing_a_base_share_its_chunks() {
    let env = env();
    let a = run(
        &env,
        &write_layout(&env, &app_image("a", 10), "a"),
        &options("d"),
    );
    let b = run(
        &env,
        &write_layout(&env, &app_image("b", 20), "b"),
        &options("d"),
    );
    let (ma, mb) = (manifest_of(&env, &a), manifest_of(&env, &b));
    let shared = ids(&ma).intersection(&ids(&mb)).count() as u64;
    // The base layer's 705 KB of file data fill at least 10 whole chunks,
    // which must be the same objects in both images.
    let base_chunks = 705_000 / CHUNK;
    assert!(
        shared >= base_chunks,
        "only {shared} shared chunks, want >= {base_chunks}"
    );
    assert_eq!(b.existing_chunks, shared, "{b:?}");
    // The second image stores its own layer and metadata, not the base.
    let own = 300_000u64.div_ceil(CHUNK) + 1;
    assert!(
        b.new_chunks <= own + 4,
        "second image stored {} chunks, its own layer is {own}",
        b.new_chunks
    );
}

#[test]
fn domains_do_not_share_objects() {
    let env = env();
    let source = write_layout(&env, &app_image("a", 10), "a");
    let one = run(&env, &source, &options("one"));
    let two = run(&env, &source, &options("two"));
    assert_eq!(two.existing_chunks, 0, "{two:?}");
    let (m1, m2) = (manifest_of(&env, &one), manifest_of(&env, &two));
    assert!(ids(&m1).is_disjoint(&ids(&m2)));
    // Same plaintext chunks, different keys.
    let keys = |m: &Manifest| -> Vec<[u8; 32]> {
        m.chunks
            .iter()
            .filter_map(|c| match c {
                ChunkEntry::Present { key, .. } => Some(*key.as_bytes()),
                ChunkEntry::Hole => None,
            })
            .collect()
    };
    assert_eq!(keys(&m1).len(), keys(&m2).len());
    assert!(keys(&m1).iter().zip(keys(&m2)).all(|(a, b)| *a != b));
}

#[test]
fn verify_names_a_flipped_chunk() {
    let env = env();
    let r = run(
        &env,
        &write_layout(&env, &app_image("a", 10), "a"),
        &options("d"),
    );
    let m = manifest_of(&env, &r);
    let (index, id) = m
        .chunks
        .iter()
        .enumerate()
        .find_map(|(i, c)| c.id().map(|id| (i as u64, *id)))
        .unwrap();
    let path = env.store.chunk_path(&id);
    let mut bytes = fs::read(&path).unwrap();
    bytes[100] ^= 1;
    fs::write(&path, bytes).unwrap();
    let report = imagefs::verify(&env.store, &m, 2);
    assert_eq!(report.bad.len(), 1, "{:?}", report.bad);
    assert_eq!(report.bad[0].index.0, index);
    assert_eq!(report.bad[0].id, id);
    let err = imagefs::export(&env.store, &m, &env.dir.path().join("x.img")).unwrap_err();
    assert!(err.to_string().contains(&id.to_string()), "{err}");
    assert!(!env.dir.path().join("x.img").exists());
}

fn open_err(store: &DirStore, name: &str, keys: &LocalKeyProvider, domain: &str) -> String {
    let err = imagefs::open_image(store, name, keys, domain).unwrap_err();
    tests::e2e::error_chain(&err)
}

#[test]
fn bad_keys_and_manifests_fail_clearly() {
    let env = env();
    let opts = ConvertOptions {
        tag: Some("app".into()),
        ..options("prod")
    };
    let r = run(&env, &write_layout(&env, &app_image("a", 10), "a"), &opts);
    let digest = r.digest.to_string();

    // Another key directory: its master key is not the one that sealed.
    let other = LocalKeyProvider::create(env.dir.path().join("other-keys")).unwrap();
    let msg = open_err(&env.store, "app", &other, "prod");
    assert!(msg.contains("master key"), "{msg}");

    // A missing key directory.
    let missing = LocalKeyProvider::open(env.dir.path().join("no-such-keys"));
    assert!(missing.is_err());

    // Another domain than the one expected: its tags are not this
    // domain's, and its manifest, named by digest, is refused.
    let msg = open_err(&env.store, "app", &env.keys, "staging");
    assert!(msg.contains("staging/app"), "{msg}");
    let msg = open_err(&env.store, &digest, &env.keys, "staging");
    assert!(msg.contains("prod") && msg.contains("staging"), "{msg}");

    // The manifest file truncated, then altered in place.
    let file = env
        .dir
        .path()
        .join("store/manifests")
        .join(r.digest.to_hex());
    let sealed = fs::read(&file).unwrap();
    fs::write(&file, &sealed[..sealed.len() / 2]).unwrap();
    let msg = open_err(&env.store, &digest, &env.keys, "prod");
    assert!(msg.contains(&r.digest.to_hex()), "{msg}");
    let mut altered = sealed.clone();
    let last = altered.len() - 1;
    altered[last] ^= 0x40;
    fs::write(&file, &altered).unwrap();
    let msg = open_err(&env.store, &digest, &env.keys, "prod");
    assert!(msg.contains(&r.digest.to_hex()), "{msg}");
    // Unsealing altered bytes directly fails authentication.
    assert!(manifest::unseal(&altered, &env.keys).is_err());
    fs::write(&file, &sealed).unwrap();
    assert!(imagefs::open_image(&env.store, "app", &env.keys, "prod").is_ok());
}

#[test]
fn a_failed_convert_leaves_the_store_valid() {
    let env = env();
    // The first layer converts fine; the second is cut short.
    let mut bad = app_image("a", 10);
    bad.layers[1] = Layer::new(vec![Entry::file("app/x.bin", noise(3, 400_000))]);
    bad.layers[1].truncate_tar_at = Some(200_000);
    let source = write_layout(&env, &bad, "bad");
    let opts = ConvertOptions {
        tag: Some("bad".into()),
        ..options("d")
    };
    let err = convert(&source, &env.store, &env.keys, &opts).unwrap_err();
    let text = format!("{err:?}");
    assert!(
        text.contains("sha256:"),
        "error should name the layer: {text}"
    );
    assert_store_valid(&env.dir.path().join("store"));
    assert!(env.store.tags("d").unwrap().is_empty());
    assert!(
        fs::read_dir(env.dir.path().join("store/manifests"))
            .unwrap()
            .next()
            .is_none()
    );
    // The objects that did get stored are real and reused by a good convert.
    let before: Vec<ChunkId> = env.store.ids().unwrap();
    let base_chunks = 705_000 / CHUNK;
    assert!(
        before.len() as u64 >= base_chunks,
        "{} objects",
        before.len()
    );
    let good = run(
        &env,
        &write_layout(&env, &app_image("a", 10), "a"),
        &options("d"),
    );
    assert!(good.existing_chunks >= base_chunks, "{good:?}");
    for id in before {
        assert!(env.store.contains(&id).unwrap());
    }
}

#[test]
fn a_real_debian_image_round_trips() {
    let layout = tests::e2e::debian_layout();
    if !layout.join("index.json").is_file() {
        tests::harness::skip(&format!(
            "no Debian image layout at {} (build it with scripts/build-debian-images.sh)",
            layout.display()
        ));
        return;
    }
    if !tests::harness::require_tool("e2fsck") {
        return;
    }
    let env = env();
    let source: ImageSource = format!("oci:{}:python", layout.display()).parse().unwrap();
    let opts = ConvertOptions {
        tag: Some("python".into()),
        ..ConvertOptions::default()
    };
    let r = run(&env, &source, &opts);
    let m = manifest_of(&env, &r);
    let report = imagefs::verify(&env.store, &m, 2);
    assert!(report.bad.is_empty(), "{:?}", report.bad);
    let flat = env.dir.path().join("flat.img");
    flatten_to_file(&source, &flat, &opts.flatten).unwrap();
    let out = env.dir.path().join("export.img");
    imagefs::export(&env.store, &m, &out).unwrap();
    assert_eq!(
        tests::e2e::image_digest(&flat),
        tests::e2e::image_digest(&out),
        "export differs from flatten"
    );
    tests::harness::assert_fsck_clean(&out);
}
