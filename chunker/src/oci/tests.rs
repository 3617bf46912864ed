//! Opening images from each source format, and every way a blob can be
//! wrong.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::testimg::{self, TarWriter, TestImage, TestLayer};
use super::*;

fn one_layer(c: Compression) -> TestImage {
    let mut t = TarWriter::new();
    t.dir("etc").file("etc/hostname", b"box\n");
    TestImage::new(vec![TestLayer::new(t.finish(), c)])
}

fn two_layers() -> TestImage {
    let mut a = TarWriter::new();
    a.dir("bin").file("bin/sh", b"#!shell");
    let mut b = TarWriter::new();
    b.file("etc/motd", b"hello");
    TestImage::new(vec![
        TestLayer::new(a.finish(), Compression::Gzip),
        TestLayer::new(b.finish(), Compression::Zstd),
    ])
}

/// Read every layer to the end and check its digests, as flattening does.
fn read_all_layers(image: &Image) -> Result<Vec<(LayerDigests, String)>, SourceError> {
    image
        .layers
        .iter()
        .map(|l| {
            let (mut s, media_type) = image.open_layer(l)?;
            let mut first = [0u8; 512];
            s.read_exact(&mut first).unwrap();
            Ok((s.finish()?, media_type))
        })
        .collect()
}

fn oci(dir: &Path, reference: Option<&str>) -> ImageSource {
    ImageSource::OciLayout {
        dir: dir.to_owned(),
        reference: reference.map(str::to_owned),
    }
}

#[test]
fn layout_opens_with_config_and_checked_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let w = two_layers().write_layout(tmp.path(), "v1");
    for reference in [None, Some("v1")] {
        let image = Image::open(&oci(tmp.path(), reference)).unwrap();
        assert_eq!(image.digest, w.manifest);
        let c = &image.config;
        assert_eq!(c.run.entrypoint, ["/bin/sh", "-c"]);
        assert_eq!(c.run.cmd, ["echo hi"]);
        assert_eq!(c.run.env, ["PATH=/usr/bin:/bin", "A=b"]);
        assert_eq!(c.run.working_dir, "/srv");
        assert_eq!(c.run.user, "1000:1000");
        assert_eq!(c.diff_ids, w.diff_ids);
        let layers = read_all_layers(&image).unwrap();
        assert_eq!(layers.len(), 2);
        for (i, (d, mt)) in layers.iter().enumerate() {
            assert_eq!(d.digest, w.layers[i]);
            assert_eq!(d.diff_id, w.diff_ids[i]);
            assert_eq!(mt, &image.layers[i].media_type);
        }
        assert!(layers[0].1.ends_with("+gzip"));
        assert!(layers[1].1.ends_with("+zstd"));
    }
}

#[test]
fn refs_select_and_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut files, _) = one_layer(Compression::None).layout_files("a");
    let (more, w2) = two_layers().layout_files("b");
    // Merge the two layouts: blobs from both, both manifests in the index.
    let idx_a: serde_json::Value =
        serde_json::from_slice(&files.iter().find(|(p, _)| p == "index.json").unwrap().1).unwrap();
    let idx_b: serde_json::Value =
        serde_json::from_slice(&more.iter().find(|(p, _)| p == "index.json").unwrap().1).unwrap();
    files.retain(|(p, _)| p != "index.json");
    files.extend(more.into_iter().filter(|(p, _)| p != "index.json"));
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [idx_a["manifests"][0], idx_b["manifests"][0]]});
    files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
    testimg::write_dir(tmp.path(), &files);

    assert_eq!(
        Image::open(&oci(tmp.path(), Some("b"))).unwrap().digest,
        w2.manifest
    );
    let err = Image::open(&oci(tmp.path(), None)).unwrap_err();
    assert!(
        matches!(err, SourceError::AmbiguousImage { count: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("a, b"), "{err}");
    let err = Image::open(&oci(tmp.path(), Some("c"))).unwrap_err();
    assert!(matches!(err, SourceError::RefNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("\"c\"") && err.to_string().contains("a, b"),
        "{err}"
    );
    // The whole source string form works too.
    let s: ImageSource = format!("oci:{}:b", tmp.path().display()).parse().unwrap();
    assert_eq!(Image::open(&s).unwrap().digest, w2.manifest);
}

#[test]
fn nested_index_picks_linux_amd64() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut files, w) = two_layers().layout_files("x");
    let idx: serde_json::Value =
        serde_json::from_slice(&files.iter().find(|(p, _)| p == "index.json").unwrap().1).unwrap();
    let amd64 = idx["manifests"][0].clone();
    let mut arm = amd64.clone();
    arm["platform"]["architecture"] = "arm64".into();
    let mut attestation = amd64.clone();
    attestation["platform"] = serde_json::json!({"os": "unknown", "architecture": "unknown"});
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [arm, amd64, attestation],
    }))
    .unwrap();
    let nested_digest = Digest::of(&nested);
    let nested_size = nested.len();
    files.push((format!("blobs/sha256/{}", nested_digest.hex()), nested));
    files.retain(|(p, _)| p != "index.json");
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": nested_digest.to_string(), "size": nested_size,
        "annotations": {"org.opencontainers.image.ref.name": "x"}}]});
    files.push(("index.json".into(), serde_json::to_vec(&top).unwrap()));
    testimg::write_dir(tmp.path(), &files);
    assert_eq!(
        Image::open(&oci(tmp.path(), None)).unwrap().digest,
        w.manifest
    );
}

#[test]
fn oci_archive_reads_members_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("img.tar");
    let w = two_layers().write_oci_archive(&file, "latest");
    let source: ImageSource = format!("oci-archive:{}:latest", file.display())
        .parse()
        .unwrap();
    let image = Image::open(&source).unwrap();
    assert_eq!(image.digest, w.manifest);
    let layers = read_all_layers(&image).unwrap();
    assert_eq!(layers[1].0.digest, w.layers[1]);
    // Nothing was extracted next to the archive.
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
}

#[test]
fn docker_archive_legacy_and_sniffed_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("save.tar");
    let (mut files, w) = two_layers().docker_files("app:1");
    // docker save links a repeated layer to the first copy.
    let first = files
        .iter()
        .find(|(p, _)| p.ends_with("layer.tar"))
        .unwrap()
        .0
        .clone();
    testimg::write_tar(&file, &files);
    let image = Image::open(
        &format!("docker-archive:{}", file.display())
            .parse()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(image.digest, w.config);
    assert_eq!(image.config.run.cmd, ["echo hi"]);
    let layers = read_all_layers(&image).unwrap();
    assert_eq!(layers[0].1, "application/vnd.oci.image.layer.v1.tar+gzip");
    assert_eq!(layers[1].1, "application/vnd.oci.image.layer.v1.tar+zstd");
    assert_eq!(layers[0].0.digest, w.layers[0]);
    assert_eq!(layers[1].0.diff_id, w.diff_ids[1]);
    // Layer names in errors fall back to the diff_id.
    assert_eq!(image.layers[0].name(), &w.diff_ids[0]);

    // A symlinked layer member resolves.
    files.retain(|(p, _)| !p.ends_with("2/layer.tar"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&files.iter().find(|(p, _)| p == "manifest.json").unwrap().1)
            .unwrap();
    let second = manifest[0]["Layers"][1].as_str().unwrap().to_owned();
    let link = tmp.path().join("linked.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&link).unwrap());
        for (path, bytes) in &files {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, bytes.as_slice()).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, &second, format!("../{first}"))
            .unwrap();
        b.into_inner().unwrap();
    }
    let image = Image::open(
        &format!("docker-archive:{}:app:1", link.display())
            .parse()
            .unwrap(),
    )
    .unwrap();
    // The second layer now reads the first layer's bytes, whose diff_id
    // does not match the config's second diff_id: caught.
    let err = read_all_layers(&image).unwrap_err();
    assert!(matches!(err, SourceError::DiffIdMismatch { .. }), "{err}");
    let err = Image::open(
        &format!("docker-archive:{}:other:2", link.display())
            .parse()
            .unwrap(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("app:1"), "{err}");
}

#[test]
fn docker_archive_with_oci_layout_uses_the_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("save.tar");
    let (mut files, w) = two_layers().layout_files("1");
    // Docker 25+ records the full name too.
    let index = files.iter_mut().find(|(p, _)| p == "index.json").unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&index.1).unwrap();
    v["manifests"][0]["annotations"]["io.containerd.image.name"] = "docker.io/library/app:1".into();
    index.1 = serde_json::to_vec(&v).unwrap();
    let (docker, _) = two_layers().docker_files("app:1");
    files.extend(docker.into_iter().filter(|(p, _)| p == "manifest.json"));
    testimg::write_tar(&file, &files);
    let image = Image::open(
        &format!("docker-archive:{}", file.display())
            .parse()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(image.digest, w.manifest);
    read_all_layers(&image).unwrap();
}

#[test]
fn corrupt_layer_blob_names_the_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let w = one_layer(Compression::None).write_layout(tmp.path(), "x");
    let path = tmp.path().join("blobs/sha256").join(w.layers[0].hex());
    let mut bytes = fs::read(&path).unwrap();
    // Change file content but keep it a valid tar of the same size.
    let at = bytes.windows(4).position(|w| w == b"box\n").unwrap();
    bytes[at] = b'f';
    fs::write(&path, bytes).unwrap();
    let image = Image::open(&oci(tmp.path(), None)).unwrap();
    let err = read_all_layers(&image).unwrap_err();
    match &err {
        SourceError::DigestMismatch { digest, actual } => {
            assert_eq!(digest, &w.layers[0]);
            assert_ne!(actual, &w.layers[0]);
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains(w.layers[0].as_str()));
}

#[test]
fn diff_id_mismatch_names_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut img = one_layer(Compression::Gzip);
    img.layers[0].diff_id = Some(Digest::of(b"not this"));
    let w = img.write_layout(tmp.path(), "x");
    let image = Image::open(&oci(tmp.path(), None)).unwrap();
    let err = read_all_layers(&image).unwrap_err();
    match &err {
        SourceError::DiffIdMismatch {
            layer,
            expected,
            actual,
        } => {
            assert_eq!(layer, &w.layers[0]);
            assert_eq!(expected, &Digest::of(b"not this"));
            assert_eq!(actual, &w.diff_ids[0]);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn corrupt_manifest_and_missing_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let w = one_layer(Compression::None).write_layout(tmp.path(), "x");
    let manifest = tmp.path().join("blobs/sha256").join(w.manifest.hex());
    let good = fs::read(&manifest).unwrap();
    let mut bad = good.clone();
    bad[0] = b' ';
    fs::write(&manifest, &bad).unwrap();
    let err = Image::open(&oci(tmp.path(), None)).unwrap_err();
    assert!(
        matches!(&err, SourceError::DigestMismatch { digest, .. } if *digest == w.manifest),
        "{err}"
    );
    fs::write(&manifest, &good).unwrap();

    let config = tmp.path().join("blobs/sha256").join(w.config.hex());
    fs::remove_file(&config).unwrap();
    let err = Image::open(&oci(tmp.path(), None)).unwrap_err();
    assert!(
        matches!(&err, SourceError::MissingBlob { digest, .. } if *digest == w.config),
        "{err}"
    );
    assert!(err.to_string().contains(w.config.as_str()));

    let w = one_layer(Compression::None).write_layout(tmp.path(), "x");
    fs::remove_file(tmp.path().join("blobs/sha256").join(w.layers[0].hex())).unwrap();
    let image = Image::open(&oci(tmp.path(), None)).unwrap();
    let err = image.open_layer(&image.layers[0]).unwrap_err();
    assert!(
        matches!(&err, SourceError::MissingBlob { digest, .. } if *digest == w.layers[0]),
        "{err}"
    );

    let err = Image::open(&oci(&tmp.path().join("nope"), None)).unwrap_err();
    assert!(matches!(err, SourceError::Open { .. }), "{err}");
    fs::remove_file(tmp.path().join("index.json")).unwrap();
    let err = Image::open(&oci(tmp.path(), None)).unwrap_err();
    assert!(matches!(err, SourceError::MissingFile { .. }), "{err}");
}

#[test]
fn unknown_layer_media_type_names_type_and_blob() {
    let tmp = tempfile::tempdir().unwrap();
    let mut img = one_layer(Compression::Gzip);
    img.layers[0].media_type = Some("application/vnd.oci.image.layer.v1.tar+lz4".into());
    let w = img.write_layout(tmp.path(), "x");
    let err = Image::open(&oci(tmp.path(), None)).unwrap_err();
    match &err {
        SourceError::UnknownLayerMediaType { media_type, digest } => {
            assert_eq!(media_type, "application/vnd.oci.image.layer.v1.tar+lz4");
            assert_eq!(digest, &w.layers[0]);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn docker_media_types_and_nondistributable_read() {
    for (mt, c) in [
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::None,
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            Compression::Zstd,
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let mut img = one_layer(c);
        img.layers[0].media_type = Some(mt.into());
        let w = img.write_layout(tmp.path(), "x");
        let image = Image::open(&oci(tmp.path(), None)).unwrap();
        let layers = read_all_layers(&image).unwrap();
        assert_eq!(layers[0].0.diff_id, w.diff_ids[0]);
        assert_eq!(layers[0].1, mt);
    }
}

#[test]
fn corrupt_gzip_is_a_read_error_naming_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let w = one_layer(Compression::Gzip).write_layout(tmp.path(), "x");
    let path = tmp.path().join("blobs/sha256").join(w.layers[0].hex());
    let mut bytes = fs::read(&path).unwrap();
    let n = bytes.len();
    for b in &mut bytes[12..n - 8] {
        *b ^= 0x5a;
    }
    fs::write(&path, bytes).unwrap();
    let image = Image::open(&oci(tmp.path(), None)).unwrap();
    let (mut s, _) = image.open_layer(&image.layers[0]).unwrap();
    let _ = s.read(&mut [0u8; 512]);
    let err = s.finish().unwrap_err();
    assert!(
        matches!(&err, SourceError::ReadBlob { digest, .. } if *digest == w.layers[0]),
        "{err}"
    );
}

/// A blob in a temporary file, as a range the way the spool opens it.
fn range_of(dir: &Path, bytes: &[u8]) -> store::FileRange {
    let path = dir.join("blob");
    fs::write(&path, bytes).unwrap();
    let file = std::sync::Arc::new(fs::File::open(&path).unwrap());
    store::FileRange::new(file, 0, bytes.len() as u64)
}

#[test]
fn a_verified_blob_is_trusted_for_its_digest_and_hashed_for_its_diff_id() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = TarWriter::new();
    t.file("etc/motd", b"hello");
    let tar = t.finish();
    let diff_id = Digest::of(&tar);
    for c in [Compression::None, Compression::Gzip] {
        let blob = testimg::compress(&tar, c);
        let digest = Digest::of(&blob);
        let open = |bytes: &[u8], verified_as: &Digest| {
            let blob = store::Blob::Verified(store::VerifiedBlob::checked(
                range_of(tmp.path(), bytes),
                verified_as.clone(),
            ));
            LayerStream::new(
                blob,
                c,
                digest.clone(),
                Some(digest.clone()),
                Some(bytes.len() as u64),
                diff_id.clone(),
            )
            .unwrap()
        };
        let got = open(&blob, &digest).finish().unwrap();
        assert_eq!((&got.digest, &got.diff_id), (&digest, &diff_id));
        // The spool's verification stands for the blob digest: not hashed
        // again (so a verified blob is taken at its word)...
        let mut other = blob.clone();
        if c == Compression::Gzip {
            // A gzip header byte the decoder ignores (OS).
            other[9] ^= 1;
            assert_ne!(Digest::of(&other), digest);
            assert!(open(&other, &digest).finish().is_ok());
        }
        // ...but it must be the digest the manifest names,
        let err = open(&blob, &Digest::of(b"else")).finish().unwrap_err();
        assert!(matches!(err, SourceError::DigestMismatch { .. }), "{err}");
        // and the tar is still hashed for its diff_id.
        let mut t = TarWriter::new();
        t.file("etc/motd", b"HELLO");
        let wrong = testimg::compress(&t.finish(), c);
        let err = open(&wrong, &digest).finish().unwrap_err();
        assert!(matches!(err, SourceError::DiffIdMismatch { .. }), "{err}");
    }
}
