//! Bad registries: each failure names the registry, the repository and
//! what failed; no output file is left, and a store that already holds an
//! image keeps its manifests and tags as they were. The misbehaving peer
//! is `tests::hostile_registry` (things `docker-registry` will not do);
//! unknown names and wrong credentials are tested against the real one in
//! `registry.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use cachetiers::DirStore;
use chunker::convert::{ConvertOptions, convert};
use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;
use chunker::oci::registry::{CredentialSource, Credentials, RegistryOptions};
use manifest::LocalKeyProvider;
use tests::e2e::{error_chain, image_digest};
use tests::hostile_registry::{HostileRegistry, Trick};
use tests::imagegen::{Compression, Entry, Image, Layer, noise};

fn image() -> Image {
    Image::new(vec![
        Layer::new(vec![Entry::file("lib/big.so", noise(3, 600_000))])
            .compressed(Compression::Gzip),
        Layer::new(vec![Entry::file("app/x", noise(4, 200_000))]),
    ])
}

fn source(host: &str, opts: RegistryOptions) -> ImageSource {
    let mut src: ImageSource = format!("docker://{host}/bad/app:v1").parse().unwrap();
    *src.registry_options_mut().unwrap() = opts;
    src
}

fn quick() -> RegistryOptions {
    RegistryOptions {
        retries: 1,
        backoff: Duration::from_millis(10),
        timeout: Duration::from_secs(2),
        ..RegistryOptions::default()
    }
}

/// Every file of the store outside `chunks/` with its content.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if rel.starts_with("chunks") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Flatten and convert from a registry playing `trick` both fail with an
/// error holding every one of `want`; nothing is left, the store is as it
/// was.
fn fails(trick: Trick, opts: RegistryOptions, want: &[&str]) {
    fails_on(image(), trick, opts, want);
}

/// [`fails`] with `image` served.
fn fails_on(image: Image, trick: Trick, opts: RegistryOptions, want: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    image.write_oci_layout(&layout, "v1").unwrap();
    let reg = HostileRegistry::start(&layout, "v1", [127, 0, 0, 1], trick).unwrap();
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let src = source(
        &reg.host(),
        RegistryOptions {
            spool_dir: Some(spool.clone()),
            ..opts
        },
    );
    let out = tmp.path().join("out.img");
    let err = flatten_to_file(&src, &out, &FlattenOptions::default()).unwrap_err();
    let msg = error_chain(&err);
    for w in want.iter().chain(&[reg.host().as_str(), "bad/app"]) {
        assert!(msg.contains(w), "{w:?} not in: {msg}");
    }
    assert!(!out.exists(), "output left behind");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
    // Gone by the time the error is back, downloads still running or not.
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0, "spool left");

    let store = DirStore::create(tmp.path().join("store")).unwrap();
    let keys = LocalKeyProvider::create(tmp.path().join("keys")).unwrap();
    let oci: ImageSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    let opts = ConvertOptions {
        threads: 2,
        tag: Some("app".into()),
        ..ConvertOptions::default()
    };
    convert(&oci, &store, &keys, &opts).unwrap();
    let before = snapshot(&tmp.path().join("store"));
    // Forced: the store records this image (from the layout) as converted.
    let forced = ConvertOptions {
        force: true,
        ..opts
    };
    let err = convert(&src, &store, &keys, &forced).unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains(&reg.host()) && msg.contains("bad/app"),
        "{msg}"
    );
    assert_eq!(snapshot(&tmp.path().join("store")), before, "store changed");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0, "spool left");
}

#[test]
fn corrupt_blob() {
    fails(
        Trick::CorruptBlobs,
        quick(),
        &["does not match its digest", "blob sha256:"],
    );
}

/// The tar of a layer still downloading breaks before its digest can be
/// checked: the error is still the download's, naming the registry. (The
/// uncompressed layer is large enough that its first half holds whole
/// blocks for the flattener.)
#[test]
fn corrupt_blob_that_breaks_the_tar_before_it_has_arrived() {
    let image = Image::new(vec![
        Layer::new(vec![Entry::file("lib/big.so", noise(3, 300_000))])
            .compressed(Compression::Gzip),
        Layer::new(vec![Entry::file("app/x", noise(4, 2_000_000))]),
    ]);
    fails_on(
        image,
        Trick::CorruptHeaderThenHold(Duration::from_millis(700)),
        quick(),
        &["does not match its digest", "blob sha256:"],
    );
}

/// The config is fetched while the layers already download: its failure
/// stops them, and their spool goes at once.
#[test]
fn corrupt_config_while_the_layers_download() {
    fails(
        Trick::CorruptConfig,
        quick(),
        &["does not match its digest", "config sha256:"],
    );
}

#[test]
fn truncated_blob() {
    fails(Trick::TruncateBlobs, quick(), &["blob sha256:"]);
}

#[test]
fn manifest_over_four_mib() {
    fails(
        Trick::HugeManifest,
        quick(),
        &["manifest v1", "4194304-byte limit"],
    );
}

#[test]
fn registry_that_stops_answering() {
    fails(Trick::StallBlobs, quick(), &["blob sha256:", "timed out"]);
}

#[test]
fn unknown_tag() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    image().write_oci_layout(&layout, "v1").unwrap();
    let reg = HostileRegistry::start(&layout, "v1", [127, 0, 0, 1], Trick::None).unwrap();
    let mut src: ImageSource = format!("docker://{}/bad/app:v2", reg.host())
        .parse()
        .unwrap();
    *src.registry_options_mut().unwrap() = quick();
    let err = flatten_to_file(&src, &tmp.path().join("o"), &FlattenOptions::default()).unwrap_err();
    let msg = error_chain(&err);
    assert!(
        msg.contains("manifest v2 not found") && msg.contains("bad/app"),
        "{msg}"
    );
}

#[test]
fn redirect_to_another_host_carries_no_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    image().write_oci_layout(&layout, "v1").unwrap();
    // The blob store on another loopback address: another host.
    let blobs = HostileRegistry::start(&layout, "v1", [127, 0, 0, 2], Trick::None).unwrap();
    let reg = HostileRegistry::start(
        &layout,
        "v1",
        [127, 0, 0, 1],
        Trick::BasicThenRedirect(
            "u".into(),
            "redirect-secret".into(),
            format!("http://{}", blobs.host()),
        ),
    )
    .unwrap();
    let src = source(
        &reg.host(),
        RegistryOptions {
            credentials: CredentialSource::Given(
                "u:redirect-secret".parse::<Credentials>().unwrap(),
            ),
            ..quick()
        },
    );
    let out = tmp.path().join("out.img");
    flatten_to_file(&src, &out, &FlattenOptions::default())
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    let oci: ImageSource = format!("oci:{}:v1", layout.display()).parse().unwrap();
    let via_registry = image_digest(&out);
    flatten_to_file(&oci, &out, &FlattenOptions::default()).unwrap();
    assert_eq!(via_registry, image_digest(&out));

    let seen = blobs.seen();
    assert!(seen.iter().any(|(p, _)| p.contains("/blobs/")), "{seen:?}");
    assert!(
        seen.iter().all(|(_, auth)| auth.is_none()),
        "credentials sent on: {seen:?}"
    );
    assert!(reg.seen().iter().any(|(_, auth)| auth.is_some()));
}
