//! Lazy reads fetch only what they need. A generated image is
//! converted into a directory origin, opened through the tier stack
//! (RocksDB shared local tier above the origin, a dedicated tier in the
//! reader) and mounted through real FUSE:
//!
//! - listing every directory fetches no chunk that holds only file data;
//! - reading a file fetches exactly the chunks its extents cover (found
//!   with `debugfs` on the exported image), plus at most the configured
//!   read-ahead;
//! - a second reader on a fresh dedicated tier is served by the shared
//!   local tier, not the origin.
//!
//! The counts come from the tier metrics. Needs root, `/dev/fuse` and
//! `debugfs`; says `SKIP:` otherwise.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use chunker::convert::{ConvertOptions, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::FlattenOptions;
use imagefs::tiers::{TierConfig, Tiers, open_tiers};
use imagefs::transport::fuse::{MountOptions, mount};
use imagefs::{LazyImage, LazyOptions, open_image};
use manifest::LocalKeyProvider;
use tempfile::TempDir;
use tests::harness;
use tests::imagegen::{Compression, Entry, Image, Layer, noise};

const CHUNK: u64 = 64 * 1024;
const BLOCK: u64 = 4096;

/// Big files (several chunks each) among many small ones and directories.
fn image() -> Image {
    let mut entries = vec![
        Entry::file("data/one.bin", noise(11, 700_000)),
        Entry::file("data/two.bin", noise(12, 450_000)),
        Entry::file("data/three.bin", noise(13, 1_000_000)),
        Entry::symlink("data/link", "one.bin"),
    ];
    for d in 0..20 {
        for f in 0..30 {
            entries.push(Entry::file(
                format!("tree/d{d:02}/file-{f:02}.txt"),
                format!("{d} {f}\n").repeat(f + 1),
            ));
        }
    }
    Image::new(vec![Layer::new(entries).compressed(Compression::Gzip)])
}

struct Setup {
    dir: TempDir,
    digest: String,
    metadata_start_chunk: u64,
    chunk_count: u64,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    image().write_oci_layout(&layout, "t").unwrap();
    let source = format!("oci:{}:t", layout.display()).parse().unwrap();
    let store = cachetiers::DirStore::create(dir.path().join("origin")).unwrap();
    let keys = LocalKeyProvider::create(dir.path().join("keys")).unwrap();
    let opts = ConvertOptions {
        flatten: FlattenOptions {
            ext4: Ext4Options {
                chunk_size: CHUNK,
                free_bytes: 1 << 20,
                spare_inodes: 64,
            },
            ..FlattenOptions::default()
        },
        tag: Some("t".into()),
        threads: 2,
        ..ConvertOptions::default()
    };
    let report = convert(&source, &store, &keys, &opts).unwrap();
    let opened = open_image(&store, "t", &keys, manifest::DEFAULT_DOMAIN).unwrap();
    imagefs::export(&store, &opened.manifest, &dir.path().join("disk.img")).unwrap();
    Setup {
        digest: report.digest.to_string(),
        metadata_start_chunk: report.flatten.expect("converted").ext4.metadata_start * BLOCK
            / CHUNK,
        chunk_count: report.chunks,
        dir,
    }
}

/// The chunks that hold `path`'s data, from `debugfs` on the exported image.
fn file_chunks(image: &Path, path: &str) -> BTreeSet<u64> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("blocks {path}"))
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs blocks {path}");
    let text = String::from_utf8_lossy(&out.stdout);
    let chunks: BTreeSet<u64> = text
        .split_whitespace()
        .map(|b| b.parse::<u64>().unwrap() * BLOCK / CHUNK)
        .collect();
    assert!(!chunks.is_empty(), "debugfs found no blocks for {path}");
    chunks
}

fn config(dir: &Path, instance: &str) -> TierConfig {
    TierConfig::parse(&format!(
        r#"
        keys = "{d}/keys"
        [dedicated]
        dir = "{d}/{instance}"
        [shared]
        path = "{d}/shared"
        capacity = "64M"
        [origin]
        url = "{d}/origin"
        "#,
        d = dir.display()
    ))
    .unwrap()
}

fn hits(tiers: &Tiers, name: &str) -> u64 {
    tiers
        .store
        .metrics()
        .tiers
        .iter()
        .find(|t| t.tier == name)
        .map_or(0, |t| t.hits)
}

fn open_lazy(s: &Setup, tiers: &Tiers, config: &TierConfig, readahead: usize) -> Arc<LazyImage> {
    let keys = LocalKeyProvider::open(s.dir.path().join("keys")).unwrap();
    let opened = open_image(
        tiers.origin.as_ref(),
        &s.digest,
        &keys,
        manifest::DEFAULT_DOMAIN,
    )
    .unwrap();
    let opts = LazyOptions {
        readahead_chunks: readahead,
        memory_chunks: 0,
        ..LazyOptions::from(&config.read)
    };
    Arc::new(
        LazyImage::open(
            opened.manifest,
            tiers.store.clone(),
            tiers.dedicated.as_deref(),
            opts,
        )
        .unwrap(),
    )
}

fn can_run() -> bool {
    if !Path::new("/dev/fuse").exists() {
        harness::skip("/dev/fuse does not exist");
        return false;
    }
    harness::require_root("mounting FUSE") && harness::require_tool("debugfs")
}

fn walk(dir: &Path, seen: &mut usize) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        *seen += 1;
        if meta.is_dir() {
            walk(&entry.path(), seen);
        } else if meta.file_type().is_symlink() {
            fs::read_link(entry.path()).unwrap();
        }
    }
}

#[test]
fn listing_fetches_metadata_only_and_a_file_read_fetches_its_extents() {
    if !can_run() {
        return;
    }
    let s = setup();
    let image = s.dir.path().join("disk.img");
    let big = ["/data/one.bin", "/data/two.bin", "/data/three.bin"];
    let per_file: Vec<BTreeSet<u64>> = big.iter().map(|p| file_chunks(&image, p)).collect();
    for (p, chunks) in big.iter().zip(&per_file) {
        assert!(
            chunks.iter().all(|&c| c > 0 && c < s.metadata_start_chunk),
            "{p} has chunks {chunks:?} outside the data region (metadata from chunk {})",
            s.metadata_start_chunk
        );
    }

    let config = config(s.dir.path(), "instance-a");
    let tiers = open_tiers(&config, false).unwrap();
    let lazy = open_lazy(&s, &tiers, &config, 0);
    let mnt = s.dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = match mount(lazy.clone(), &mnt, &MountOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            harness::skip(&format!("FUSE mount refused: {}", imagefs::error_chain(&e)));
            return;
        }
    };
    let at_mount = hits(&tiers, "origin");
    let mut entries = 0;
    walk(&mnt, &mut entries);
    assert!(entries > 600, "walked {entries} entries");
    let after_listing = hits(&tiers, "origin");
    let metadata_chunks = s.chunk_count - s.metadata_start_chunk + 1;
    println!(
        "mount fetched {at_mount} chunks, listing {} more ({entries} entries); \
         the image has {} chunks, {metadata_chunks} of them metadata",
        after_listing - at_mount,
        s.chunk_count
    );
    assert!(after_listing <= metadata_chunks);

    // Each file's chunks are fetched now and only now: the listing took
    // none of them, and nothing else is fetched. Files are packed, so a
    // file may share its first chunk with the one read before it.
    let mut before = after_listing;
    let mut read_so_far = BTreeSet::new();
    for (p, chunks) in big.iter().zip(&per_file) {
        let bytes = fs::read(mnt.join(&p[1..])).unwrap();
        assert!(!bytes.is_empty());
        let now = hits(&tiers, "origin");
        let new = chunks.difference(&read_so_far).count() as u64;
        println!(
            "{p}: {} chunks by its extents, {new} not read before, {} fetched",
            chunks.len(),
            now - before
        );
        assert_eq!(now - before, new, "{p}");
        read_so_far.extend(chunks.iter().copied());
        before = now;
    }
    // Reading them again fetches nothing: the dedicated tier has them.
    for p in big {
        fs::read(mnt.join(&p[1..])).unwrap();
    }
    assert_eq!(hits(&tiers, "origin"), before);
    mounted.unmount().unwrap();
    drop(lazy);

    // A second instance (fresh dedicated tier) on the same host is served
    // by the shared local tier.
    drop(tiers);
    let config_b = config_for(&s, "instance-b");
    let tiers = open_tiers(&config_b, false).unwrap();
    let lazy = open_lazy(&s, &tiers, &config_b, 0);
    let mut buf = vec![0; 700_000];
    let offset = first_chunk_offset(&per_file[0]);
    lazy.read_exact_at(&mut buf[..CHUNK as usize], offset)
        .unwrap();
    assert_eq!(hits(&tiers, "origin"), 0);
    assert_eq!(hits(&tiers, "shared-local"), 1);
}

fn config_for(s: &Setup, instance: &str) -> TierConfig {
    config(s.dir.path(), instance)
}

fn first_chunk_offset(chunks: &BTreeSet<u64>) -> u64 {
    chunks.first().unwrap() * CHUNK
}

#[test]
fn readahead_fetches_at_most_the_configured_extra_chunks() {
    if !can_run() {
        return;
    }
    let s = setup();
    let image = s.dir.path().join("disk.img");
    let chunks = file_chunks(&image, "/data/three.bin");
    let config = config(s.dir.path(), "instance-ra");
    let tiers = open_tiers(&config, false).unwrap();
    let lazy = open_lazy(&s, &tiers, &config, 2);
    let mnt = s.dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mounted = match mount(lazy.clone(), &mnt, &MountOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            harness::skip(&format!("FUSE mount refused: {}", imagefs::error_chain(&e)));
            return;
        }
    };
    let mut n = 0;
    walk(&mnt, &mut n);
    lazy.wait_readahead_idle();
    let before = hits(&tiers, "origin");
    fs::read(mnt.join("data/three.bin")).unwrap();
    lazy.wait_readahead_idle();
    let fetched = hits(&tiers, "origin") - before;
    println!(
        "three.bin: {} chunks by its extents, {fetched} fetched with read-ahead 2",
        chunks.len()
    );
    // Every chunk of the file (the listing fetched none of them), plus at
    // most two past its end and two after the metadata chunk the open
    // reads (read-ahead follows every read, metadata included).
    assert!(fetched >= chunks.len() as u64, "{fetched}");
    assert!(fetched <= chunks.len() as u64 + 4, "{fetched}");
    mounted.unmount().unwrap();
}
