//! Bad layers: each error names the layer and the entry, and a failed
//! flatten leaves no output.

use super::*;

#[test]
fn escaping_paths_are_refused_naming_layer_and_entry() {
    let cases: Vec<(&[u8], tar::EntryType, &[u8])> = vec![
        (b"../evil", tar::EntryType::Regular, b""),
        (b"a/../../evil", tar::EntryType::Regular, b""),
        (b"/etc/passwd", tar::EntryType::Regular, b""),
        (b"a/../../.wh.x", tar::EntryType::Regular, b""),
        (b"ok", tar::EntryType::Link, b"../../etc/shadow"),
        (b"ok", tar::EntryType::Link, b"/etc/shadow"),
    ];
    for (path, kind, link) in cases {
        let mut t = TarWriter::new();
        let mut h = header(path, kind, 0o644, 0);
        h.set_link_name_literal(link).unwrap();
        t.raw(h, b"");
        let tmp_first = TarWriter::new();
        let (layer, entry, err) = entry_error(vec![tmp_first, t]);
        assert_eq!(entry.as_bytes(), path);
        let msg = FlattenError::from(LayerError::Entry {
            layer: layer.clone(),
            entry: entry.clone(),
            source: err,
        });
        // The message names both the layer and the entry.
        let text = msg.to_string();
        assert!(
            text.contains(layer.as_str()) && text.contains(&entry),
            "{text}"
        );
        let cause = std::error::Error::source(&msg).unwrap().to_string();
        assert!(
            cause.contains("root") || cause.contains("absolute"),
            "{cause}"
        );
    }
}

#[test]
fn bad_entries_name_the_problem() {
    let (_, entry, err) = entry_error(vec![layer(|t| {
        t.raw(header(b"vol", tar::EntryType::new(b'V'), 0o644, 0), b"");
    })]);
    assert_eq!(entry, "vol");
    assert!(matches!(err, EntryError::UnknownType('V')), "{err}");
    let (_, _, err) = entry_error(vec![layer(|t| {
        t.hardlink("l", "missing");
    })]);
    assert!(matches!(err, EntryError::Tree(_)), "{err}");
    let (_, _, err) = entry_error(vec![layer(|t| {
        t.file("f", b"x").file("f/under", b"y");
    })]);
    assert!(matches!(err, EntryError::Tree(_)), "{err}");
}

#[test]
fn truncated_layer_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = TarWriter::new();
    t.file("big", &vec![7u8; 10_000]);
    let mut tar = t.finish();
    tar.truncate(3000);
    let w =
        TestImage::new(vec![TestLayer::new(tar, Compression::None)]).write_layout(tmp.path(), "x");
    let err = flatten_into(
        &ImageSource::OciLayout {
            dir: tmp.path().to_owned(),
            reference: None,
        },
        VecSink::default(),
        &FlattenOptions::default(),
    )
    .unwrap_err();
    match &err {
        FlattenError::Layer(LayerError::Entry {
            layer,
            source: EntryError::Data(e),
            ..
        }) => {
            assert_eq!(layer, &w.layers[0]);
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn flatten_to_file_leaves_nothing_on_error() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let mut img = TestImage::new(vec![TestLayer::new(
        layer(|t| {
            t.file("etc/os-release", b"ID=test\n");
        })
        .finish(),
        Compression::Zstd,
    )]);
    let w = img.write_layout(&layout, "x");
    let source: ImageSource = format!("oci:{}", layout.display()).parse().unwrap();
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("disk.img");
    let report = flatten_to_file(&source, &out, &FlattenOptions::default()).unwrap();
    assert_eq!(report.image_digest, w.manifest);
    assert_eq!(report.config.run.cmd, ["echo hi"]);
    assert_eq!(report.layers[0].digest, w.layers[0]);
    assert_eq!(report.layers[0].diff_id, w.diff_ids[0]);
    assert_eq!(fs::metadata(&out).unwrap().len(), report.ext4.size);
    assert_eq!(fs::read_dir(&out_dir).unwrap().count(), 1);

    // A diff_id mismatch is found only after the layer streamed out; the
    // output must still not appear.
    img.layers[0].diff_id = Some(Digest::of(b"other"));
    fs::remove_dir_all(&layout).unwrap();
    img.write_layout(&layout, "x");
    let out2 = out_dir.join("disk2.img");
    let err = flatten_to_file(&source, &out2, &FlattenOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            FlattenError::Source(SourceError::DiffIdMismatch { .. })
        ),
        "{err}"
    );
    let names: Vec<_> = fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["disk.img"]);
}

#[test]
fn corrupt_gzip_layer_fails_naming_the_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut t = TarWriter::new();
    t.file("a", &vec![1u8; 100_000]).file("b", b"b");
    let w = TestImage::new(vec![TestLayer::new(t.finish(), Compression::Gzip)])
        .write_layout(tmp.path(), "x");
    let blob = tmp.path().join("blobs/sha256").join(w.layers[0].hex());
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    fs::write(&blob, bytes).unwrap();
    let source = ImageSource::OciLayout {
        dir: tmp.path().to_owned(),
        reference: None,
    };
    let err = flatten_into(&source, VecSink::default(), &FlattenOptions::default()).unwrap_err();
    let named = match &err {
        FlattenError::Layer(LayerError::Read { layer, .. })
        | FlattenError::Layer(LayerError::Entry { layer, .. }) => layer == &w.layers[0],
        FlattenError::Source(SourceError::ReadBlob { digest, .. }) => digest == &w.layers[0],
        _ => false,
    };
    assert!(named, "{err}");
}
