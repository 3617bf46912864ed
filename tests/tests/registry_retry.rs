//! Converting again, and pulling through a flaky registry, against the
//! hostile server of `tests::hostile_registry` (which records every
//! request before it answers, so counts are exact):
//! - a second convert of the same source and options is a no-op that
//!   says so and asks for no blob; other options, `--force`, or the
//!   result removed from the store convert again; `oci:` sources too;
//! - a 503 on a blob's first request is retried, and a connection cut
//!   mid-blob resumes with a Range request from the byte it stopped at;
//!   both give the image a clean pull gives;
//! - a layer is read while it downloads: its first half decompresses
//!   while the registry holds back the rest, and its end (with the digest
//!   check) comes once the rest has arrived.

use std::io::Read;
use std::time::Duration;

use cachetiers::DirStore;
use chunker::convert::{ConvertOptions, ConvertReport, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::FlattenOptions;
use chunker::oci::ImageSource;
use chunker::oci::registry::RegistryOptions;
use manifest::{LocalKeyProvider, Manifest, ManifestDigest};
use tests::e2e::error_chain;
use tests::hostile_registry::{Gate, HostileRegistry, Trick};
use tests::imagegen::{Compression, Entry, Image, Layer, noise};

fn image() -> Image {
    Image::new(vec![
        Layer::new(vec![Entry::file("lib/big.so", noise(13, 700_000))])
            .compressed(Compression::Gzip),
        Layer::new(vec![Entry::file("app/x", noise(14, 300_000))]),
    ])
}

fn source(host: &str, opts: RegistryOptions) -> ImageSource {
    let mut src: ImageSource = format!("docker://{host}/flaky/app:v1").parse().unwrap();
    *src.registry_options_mut().unwrap() = opts;
    src
}

fn patient() -> RegistryOptions {
    RegistryOptions {
        retries: 3,
        backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(10),
        ..RegistryOptions::default()
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    store: DirStore,
    keys: LocalKeyProvider,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        image()
            .write_oci_layout(&tmp.path().join("layout"), "v1")
            .unwrap();
        let store = DirStore::create(tmp.path().join("store")).unwrap();
        let keys = LocalKeyProvider::create(tmp.path().join("keys")).unwrap();
        Fixture { tmp, store, keys }
    }

    fn registry(&self, trick: Trick) -> HostileRegistry {
        HostileRegistry::start(&self.tmp.path().join("layout"), "v1", [127, 0, 0, 1], trick)
            .unwrap()
    }

    /// The manifest stored under `digest`, unsealed (sealing uses a random
    /// data key, so equal images have equal manifests, not equal digests).
    fn manifest(&self, digest: &ManifestDigest) -> Manifest {
        manifest::unseal(&self.store.get_manifest(digest).unwrap(), &self.keys).unwrap()
    }

    fn convert(&self, src: &ImageSource, opts: &ConvertOptions) -> ConvertReport {
        convert(src, &self.store, &self.keys, opts)
            .unwrap_or_else(|e| panic!("convert {src}: {}", error_chain(&e)))
    }
}

fn opts(tag: &str) -> ConvertOptions {
    ConvertOptions {
        threads: 2,
        tag: Some(tag.into()),
        ..ConvertOptions::default()
    }
}

#[test]
fn converting_the_same_registry_image_again_is_a_no_op() {
    let f = Fixture::new();
    let reg = f.registry(Trick::None);
    let src = source(&reg.host(), patient());
    let first = f.convert(&src, &opts("first"));
    assert!(
        !first.already_converted && first.new_chunks > 0,
        "{first:?}"
    );
    let blobs = reg.blob_requests();
    assert!(blobs >= 3, "config and two layers: {:?}", reg.seen());

    let again = f.convert(&src, &opts("again"));
    assert!(again.already_converted, "{again:?}");
    assert_eq!(again.digest, first.digest);
    assert_eq!((again.chunks, again.holes), (first.chunks, first.holes));
    assert_eq!((again.new_chunks, again.bytes_written), (0, 0));
    assert!(again.flatten.is_none());
    assert_eq!(reg.blob_requests(), blobs, "{:?}", reg.seen());
    // The tag asked for is set all the same.
    assert_eq!(f.store.resolve("default", "again").unwrap(), first.digest);

    // Another layout option: another image, converted.
    let mut other = opts("other");
    other.flatten = FlattenOptions {
        ext4: Ext4Options {
            spare_inodes: 100,
            ..Ext4Options::default()
        },
        ..FlattenOptions::default()
    };
    let changed = f.convert(&src, &other);
    assert!(!changed.already_converted);
    assert_ne!(changed.digest, first.digest);
    assert!(reg.blob_requests() > blobs);

    // --force: converted again, to the same manifest.
    let blobs = reg.blob_requests();
    let forced = f.convert(
        &src,
        &ConvertOptions {
            force: true,
            ..opts("forced")
        },
    );
    assert!(!forced.already_converted);
    assert_eq!(f.manifest(&forced.digest), f.manifest(&first.digest));
    assert!(reg.blob_requests() > blobs);

    // The result (the record now names the forced one) removed from the
    // store: converted again.
    let want = f.manifest(&forced.digest);
    imagefs::images::remove_image(&f.store, &forced.digest, true).unwrap();
    let blobs = reg.blob_requests();
    let after = f.convert(&src, &opts("after-rm"));
    assert!(!after.already_converted, "{after:?}");
    assert_eq!(f.manifest(&after.digest), want);
    assert!(reg.blob_requests() > blobs);
    assert!(f.convert(&src, &opts("after-rm")).already_converted);
}

#[test]
fn converting_the_same_layout_again_is_a_no_op() {
    let f = Fixture::new();
    let src: ImageSource = format!("oci:{}:v1", f.tmp.path().join("layout").display())
        .parse()
        .unwrap();
    let first = f.convert(&src, &opts("a"));
    assert!(!first.already_converted);
    let again = f.convert(&src, &opts("b"));
    assert!(again.already_converted);
    assert_eq!(again.digest, first.digest);
    // Another domain is another record (and other chunks).
    let other = f.convert(
        &src,
        &ConvertOptions {
            domain: "elsewhere".into(),
            ..opts("a")
        },
    );
    assert!(!other.already_converted);
    assert_ne!(other.digest, first.digest);
}

/// The manifest a clean pull gives, for the flaky ones to match.
fn clean(f: &Fixture) -> Manifest {
    let reg = f.registry(Trick::None);
    f.manifest(
        &f.convert(&source(&reg.host(), patient()), &opts("clean"))
            .digest,
    )
}

#[test]
fn a_503_is_retried_with_backoff_and_the_result_is_identical() {
    let f = Fixture::new();
    let want = clean(&f);
    let reg = f.registry(Trick::FailFirst);
    let got = f.convert(
        &source(&reg.host(), patient()),
        &ConvertOptions {
            force: true,
            ..opts("flaky")
        },
    );
    assert_eq!(f.manifest(&got.digest), want);
    let requests = reg.requests();
    let failed: Vec<_> = requests.iter().filter(|r| r.status == 503).collect();
    // The two layers, and the ping that learns how to authenticate.
    assert_eq!(failed.len(), 3, "one 503 per layer and /v2/: {requests:?}");
    for r in failed {
        assert!(
            requests.iter().any(|s| s.path == r.path && s.status == 200),
            "{} was not retried: {requests:?}",
            r.path
        );
    }
}

#[test]
fn a_cut_connection_resumes_with_a_range_request() {
    let f = Fixture::new();
    let want = clean(&f);
    let reg = f.registry(Trick::CutFirst);
    let got = f.convert(
        &source(&reg.host(), patient()),
        &ConvertOptions {
            force: true,
            ..opts("cut")
        },
    );
    assert_eq!(f.manifest(&got.digest), want);
    let requests = reg.requests();
    let cuts: Vec<_> = requests.iter().filter(|r| r.cut_at.is_some()).collect();
    assert_eq!(cuts.len(), 2, "one cut per layer: {requests:?}");
    for cut in cuts {
        let at = cut.cut_at.unwrap();
        assert!(at > 0);
        assert!(
            requests
                .iter()
                .any(|r| r.path == cut.path && r.range_from == at && r.status == 206),
            "no Range request from byte {at} for {}: {requests:?}",
            cut.path
        );
    }
}

#[test]
fn a_layer_is_read_while_it_downloads() {
    let f = Fixture::new();
    let gate = Gate::default();
    let reg = f.registry(Trick::HoldHalf(gate.clone()));
    let image = chunker::oci::Image::open(&source(&reg.host(), patient())).unwrap();
    let layer = image.layers[0].clone();
    let want = layer.digest.clone().expect("a layout names its blobs");
    // The gzip layer (700 kB of noise): its first half is all the
    // registry sends until the gate opens (or 30 s pass).
    let (first, read) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = image.open_layer(&layer).unwrap();
        let mut head = vec![0u8; 100_000];
        stream.read_exact(&mut head).unwrap();
        first.send(head).unwrap();
        // The image too: dropping it cancels its downloads.
        (image, stream)
    });
    // A tar header, then the file's first bytes, read with half the blob
    // still held back. (Without streaming this waits for the whole blob,
    // which the registry sends only after 30 s.)
    let head = read
        .recv_timeout(Duration::from_secs(20))
        .expect("the layer's first half was not readable while the rest was held back");
    assert_eq!(&head[..10], b"lib/big.so");
    gate.open();
    let (_image, stream) = reader.join().unwrap();
    let digests = stream.finish().unwrap();
    assert_eq!(digests.digest, want);
}
