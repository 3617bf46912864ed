//! Layers read ahead through pipes that spill, applied in order or
//! detached: the same image and reports as reading each layer on the
//! flattening thread.

use super::*;
use crate::flatten::readahead::{Ahead, flatten_layers_with};
use crate::oci::testimg::noise;

/// `layers` gzip layers of a few blocks each, some files replaced or
/// removed by later layers.
fn image(dir: &std::path::Path, layers: u64) -> Image {
    let tars = (0..layers)
        .map(|i| {
            let mut t = TarWriter::new();
            t.file(&format!("l{i}/data"), &noise(i, 700 << 10))
                .file("shared", &noise(100 + i, 300 << 10));
            if i > 0 {
                t.file(&format!("l{}/.wh.data", i - 1), b"");
            }
            TestLayer::new(t.finish(), Compression::Gzip)
        })
        .collect();
    TestImage::new(tars).write_layout(dir, "t");
    Image::open(&ImageSource::OciLayout {
        dir: dir.to_owned(),
        reference: None,
    })
    .unwrap()
}

fn flatten(image: &Image, ahead: Option<&Ahead>) -> (Vec<u8>, Vec<LayerReport>) {
    let sink = SharedSink::default();
    let mut b = Ext4Builder::new(sink.clone(), Ext4Options::default()).unwrap();
    let limits = Limits::default();
    let (tree, reports) = match ahead {
        Some(ahead) => flatten_layers_with(image, &mut b, &limits, ahead).unwrap(),
        None => flatten_layers_limited(image, &mut b, &limits).unwrap(),
    };
    b.finish(&tree).unwrap();
    let bytes = trimmed(sink.0.borrow().clone());
    (bytes, reports)
}

/// The image without the zeros at its end (which a sink may not write).
fn trimmed(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

/// As [`flatten`] read ahead, into a sink that takes detached layers.
fn flatten_detached(image: &Image, ahead: &Ahead) -> (Vec<u8>, Vec<LayerReport>) {
    let mut b = Ext4Builder::new(VecSink::default(), Ext4Options::default()).unwrap();
    let (tree, reports) = flatten_layers_with(image, &mut b, &Limits::default(), ahead).unwrap();
    let (sink, summary) = b.finish(&tree).unwrap();
    assert_eq!(sink.bytes.len() as u64, summary.size);
    (trimmed(sink.bytes), reports)
}

#[test]
fn read_ahead_through_small_pipes_gives_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let image = image(tmp.path(), 6);
    let serial = flatten(&image, None);
    let spill = tempfile::tempdir().unwrap();
    for (readers, mem_blocks, budget) in [
        // Every reader ahead spills, without a budget to speak of.
        (4, 1, 1 << 30),
        // A budget of one block: readers ahead wait for the flattener.
        (3, 1, 256 << 10),
        // One reader, the old read-ahead.
        (1, 16, 0),
    ] {
        let ahead = Ahead::new(readers, mem_blocks, spill.path().to_owned(), budget);
        let got = flatten(&image, Some(&ahead));
        assert!(
            got == serial,
            "{readers} readers, {mem_blocks} blocks, budget {budget}: a different image"
        );
        let got = flatten_detached(&image, &ahead);
        assert!(
            got.1 == serial.1,
            "detached, {readers} readers: other reports"
        );
        assert!(
            got.0 == serial.0,
            "detached, {readers} readers, {mem_blocks} blocks, budget {budget}: a different image"
        );
    }
}

#[test]
fn a_bad_layer_ahead_stops_every_reader_with_its_error() {
    let tmp = tempfile::tempdir().unwrap();
    let image = image(tmp.path(), 5);
    // Corrupt the fourth layer's blob: the flattener reports it when it
    // gets there, and no reader is left waiting.
    let blob = tmp
        .path()
        .join("blobs/sha256")
        .join(image.layers[3].name().hex());
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    let spill = tempfile::tempdir().unwrap();
    let ahead = Ahead::new(4, 1, spill.path().to_owned(), 1 << 30);
    let sink = SharedSink::default();
    let mut b = Ext4Builder::new(sink, Ext4Options::default()).unwrap();
    let err = flatten_layers_with(&image, &mut b, &Limits::default(), &ahead).unwrap_err();
    let text = format!("{err}: {:?}", err);
    assert!(text.contains(&image.layers[3].name().hex()[..12]), "{text}");
    // Detached: the same error, however far the other layers got.
    let mut b = Ext4Builder::new(VecSink::default(), Ext4Options::default()).unwrap();
    let err = flatten_layers_with(&image, &mut b, &Limits::default(), &ahead).unwrap_err();
    assert_eq!(format!("{err}: {:?}", err), text);
}
