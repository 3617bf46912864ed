//! What the `imagefs` binary tests share: an image converted into a
//! directory store (`DIR/store`, keys in `DIR/keys`, tag `t`, 64 KiB
//! chunks), the image opened back, and a `serve --record-trace` file
//! written for it.

// Each test binary uses only part of this.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use cachetiers::DirStore;
use chunker::convert::{ConvertOptions, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::FlattenOptions;
use chunker::oci::ImageSource;
use manifest::LocalKeyProvider;
use manifest::trace::{TraceHeader, TraceRecord};
use tempfile::TempDir;
use tests::imagegen::Image;

/// The chunk size of the converted images.
pub const CHUNK: u64 = 64 * 1024;

/// `len` bytes of a fixed, non-repeating-looking pattern.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A store holding `image`, converted, under the tag `t`.
pub fn store_of(image: Image) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    image.write_oci_layout(&layout, "t").unwrap();
    let src: ImageSource = format!("oci:{}:t", layout.display()).parse().unwrap();
    let store = DirStore::create(dir.path().join("store")).unwrap();
    let keys = LocalKeyProvider::create(dir.path().join("keys")).unwrap();
    let opts = ConvertOptions {
        flatten: FlattenOptions {
            ext4: Ext4Options {
                chunk_size: CHUNK,
                free_bytes: 1 << 20,
                spare_inodes: 16,
            },
            ..FlattenOptions::default()
        },
        domain: "default".into(),
        threads: 2,
        tag: Some("t".into()),
        progress: false,
        force: false,
        pipeline: Default::default(),
    };
    convert(&src, &store, &keys, &opts).expect("convert");
    dir
}

/// The image `t` of a store made by [`store_of`], opened.
pub struct Opened {
    pub store: DirStore,
    pub keys: LocalKeyProvider,
    pub image: imagefs::OpenedImage,
    /// Present (non-hole) chunks, in index order.
    pub present: Vec<u64>,
}

pub fn open(dir: &Path) -> Opened {
    let store = DirStore::open(dir.join("store")).unwrap();
    let keys = LocalKeyProvider::open(dir.join("keys")).unwrap();
    let image = imagefs::open_image(&store, "t", &keys, "default").unwrap();
    let present = (0..image.manifest.chunks.len() as u64)
        .filter(|&i| !image.manifest.chunks[i as usize].is_hole())
        .collect();
    Opened {
        store,
        keys,
        image,
        present,
    }
}

/// A trace of reads of `chunks` at `(chunk, ms)`.
pub fn write_trace(path: &Path, o: &Opened, reads: &[(u64, u64)]) {
    let header = TraceHeader::new(&o.image.digest.to_string(), o.image.manifest.device_size, 0);
    let mut text = header.encode() + "\n";
    for &(chunk, ms) in reads {
        let r = TraceRecord {
            // The trace's clock starts before the first read: it must not count.
            t_ns: (1000 + ms) * 1_000_000,
            queue: 0,
            offset: chunk * CHUNK + 512,
            len: 4096,
        };
        text += &(r.encode() + "\n");
    }
    fs::write(path, text).unwrap();
}

/// `imagefs ARGS --store DIR/store --keys DIR/keys` for a store made by
/// [`store_of`], run to its end.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imagefs"))
        .args(args)
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--keys")
        .arg(dir.join("keys"))
        .output()
        .unwrap()
}

/// [`run`], which must succeed; its stdout.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// [`run`], which must fail; its stderr.
pub fn fails(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}
