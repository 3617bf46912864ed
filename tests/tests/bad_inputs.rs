//! Bad inputs each end in an error that names the culprit (blob digest,
//! media type, entry) and leave nothing in the output directory.

mod common;

use std::path::Path;

use common::flatten;
use tests::cases::pattern;
use tests::e2e::dir_names;
use tests::imagegen::{
    Compression, Entry, Image, Layer, Written, corrupt_blob, hex_of, remove_blob,
};

/// A good two-layer image; `damage` changes a layer spec before writing.
fn image(damage: impl FnOnce(&mut Vec<Layer>)) -> Image {
    let text: Vec<u8> = (0..4000)
        .flat_map(|i| format!("line {i}: the quick brown fox\n").into_bytes())
        .collect();
    let mut layers = vec![
        Layer::new(vec![
            Entry::dir("etc"),
            Entry::file("etc/os-release", b"ID=test\n"),
            Entry::file("etc/data", pattern(1000, 1)),
        ])
        .compressed(Compression::Gzip),
        Layer::new(vec![
            Entry::file("big.txt", &text),
            Entry::file("bin", pattern(5000, 2)),
            Entry::file("z", b"last"),
        ]),
    ];
    damage(&mut layers);
    Image::new(layers)
}

/// Writes the image as an OCI layout, applies `after` to the written
/// layout, flattens it and returns the error text; asserts that the output
/// directory is left empty.
fn flatten_err(img: &Image, after: impl FnOnce(&Path, &Written)) -> (String, Written) {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    let written = img.write_oci_layout(&layout, "bad").unwrap();
    after(&layout, &written);
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let result = flatten(
        &format!("oci:{}:bad", layout.display()),
        &out_dir.join("disk.img"),
    );
    let err = match result {
        Ok(()) => panic!("flattening a bad image succeeded"),
        Err(e) => e,
    };
    eprintln!("error: {err}");
    assert_eq!(
        dir_names(&out_dir),
        Vec::<String>::new(),
        "files left behind after: {err}"
    );
    (err, written)
}

fn assert_names(err: &str, what: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "{what}: error does not name {n:?}: {err}");
    }
}

#[test]
fn truncated_layer_tar() {
    // Cut in the middle of big.txt's data.
    let img = image(|l| l[1].truncate_tar_at = Some(512 + 40_000));
    let (err, w) = flatten_err(&img, |_, _| {});
    assert_names(&err, "truncated tar", &[hex_of(&w.layers[1])]);
}

#[test]
fn truncated_tar_inside_gzip() {
    let img = image(|l| {
        l[1].compression = Compression::Gzip;
        l[1].truncate_tar_at = Some(700);
    });
    let (err, w) = flatten_err(&img, |_, _| {});
    assert_names(&err, "truncated tar in gzip", &[hex_of(&w.layers[1])]);
}

#[test]
fn corrupt_gzip_stream() {
    let img = image(|l| {
        l[1].compression = Compression::Gzip;
        l[1].corrupt_compressed = true;
    });
    let (err, w) = flatten_err(&img, |_, _| {});
    assert_names(&err, "corrupt gzip", &[hex_of(&w.layers[1])]);
}

#[test]
fn corrupt_zstd_stream() {
    let img = image(|l| {
        l[1].compression = Compression::Zstd;
        l[1].corrupt_compressed = true;
    });
    let (err, w) = flatten_err(&img, |_, _| {});
    assert_names(&err, "corrupt zstd", &[hex_of(&w.layers[1])]);
}

#[test]
fn layer_digest_mismatch() {
    let (err, w) = flatten_err(&image(|_| {}), |layout, w| {
        corrupt_blob(layout, &w.layers[0]).unwrap()
    });
    assert_names(&err, "digest mismatch", &[hex_of(&w.layers[0])]);
}

#[test]
fn uncompressed_layer_digest_mismatch() {
    let (err, w) = flatten_err(&image(|_| {}), |layout, w| {
        corrupt_blob(layout, &w.layers[1]).unwrap()
    });
    assert_names(&err, "digest mismatch", &[hex_of(&w.layers[1])]);
}

#[test]
fn config_digest_mismatch() {
    let (err, w) = flatten_err(&image(|_| {}), |layout, w| {
        corrupt_blob(layout, &w.config).unwrap()
    });
    assert_names(&err, "config digest mismatch", &[hex_of(&w.config)]);
}

#[test]
fn missing_layer_blob() {
    let (err, w) = flatten_err(&image(|_| {}), |layout, w| {
        remove_blob(layout, &w.layers[1]).unwrap()
    });
    assert_names(&err, "missing blob", &[hex_of(&w.layers[1])]);
}

#[test]
fn missing_manifest_blob() {
    let (err, w) = flatten_err(&image(|_| {}), |layout, w| {
        remove_blob(layout, &w.manifest).unwrap()
    });
    assert_names(&err, "missing manifest", &[hex_of(&w.manifest)]);
}

#[test]
fn unknown_layer_media_type() {
    let mt = "application/vnd.example.layer.v1.tar+lz4";
    let img = image(|l| l[0].media_type = Some(mt.into()));
    let (err, w) = flatten_err(&img, |_, _| {});
    assert_names(&err, "unknown media type", &[mt, hex_of(&w.layers[0])]);
}

/// The error must name the layer and the entry (its path or, for a hard
/// link, its target).
fn escaping(entry: Entry, names: &[&str]) {
    let img = image(|l| l[1].entries.insert(1, entry));
    let (err, w) = flatten_err(&img, |_, _| {});
    assert_names(&err, "escaping path", &[hex_of(&w.layers[1])]);
    assert!(
        names.iter().any(|n| err.contains(n)),
        "escaping path: error names none of {names:?}: {err}"
    );
}

#[test]
fn escaping_dotdot_path() {
    escaping(Entry::file("../escaped", b"x"), &["../escaped"]);
}

#[test]
fn escaping_dotdot_inside_path() {
    escaping(
        Entry::file("etc/../../escaped", b"x"),
        &["etc/../../escaped"],
    );
}

#[test]
fn escaping_absolute_path() {
    escaping(Entry::file("/abs/escaped", b"x"), &["/abs/escaped"]);
}

#[test]
fn escaping_hardlink_target() {
    escaping(
        Entry::hardlink("innocent", b"../../etc/passwd"),
        &["innocent", "../../etc/passwd"],
    );
}

#[test]
fn escaping_whiteout() {
    escaping(Entry::file("../.wh.etc", b""), &["../.wh.etc"]);
}

/// A docker-archive whose layer.tar does not match the config's diff_id.
#[test]
fn docker_archive_diff_id_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("img.tar");
    let img = image(|l| l[0].compression = Compression::None);
    let w = img.write_docker_archive(&archive, "bad:latest").unwrap();
    // Flip a byte inside the first layer's file data ("ID=test" -> "ID=tesu").
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = bytes
        .windows(7)
        .position(|win| win == b"ID=test")
        .expect("layer content in archive");
    bytes[at + 6] = b'u';
    std::fs::write(&archive, bytes).unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let err = flatten(
        &format!("docker-archive:{}", archive.display()),
        &out_dir.join("disk.img"),
    )
    .expect_err("a damaged docker-archive flattened");
    assert_names(&err, "docker diff_id mismatch", &[hex_of(&w.diff_ids[0])]);
    assert_eq!(dir_names(&out_dir), Vec::<String>::new());
}

#[test]
fn unknown_ref() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    image(|_| {}).write_oci_layout(&layout, "present").unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let err = flatten(
        &format!("oci:{}:absent", layout.display()),
        &out_dir.join("disk.img"),
    )
    .expect_err("an unknown ref flattened");
    assert_names(&err, "unknown ref", &["absent", "present"]);
    assert_eq!(dir_names(&out_dir), Vec::<String>::new());
}

#[test]
fn index_without_amd64() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    let img = image(|_| {});
    let (index, _) =
        Image::write_multi_platform_layout(&[(&img, "arm64"), (&img, "riscv64")], &layout, "m")
            .unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let err = flatten(
        &format!("oci:{}:m", layout.display()),
        &out_dir.join("disk.img"),
    )
    .expect_err("an index without amd64 flattened");
    assert_names(&err, "no amd64", &[hex_of(&index), "arm64"]);
    assert_eq!(dir_names(&out_dir), Vec::<String>::new());
}
