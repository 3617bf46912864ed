//! Flatten options: chunk size (layer data starts on chunk boundaries, read
//! with debugfs), free space and spare inodes (usable on a read-write mount),
//! and invalid options rejected without output.

mod common;

use std::process::Command;

use chunker::ext4::Ext4Options;
use chunker::flatten::FlattenOptions;
use common::flatten_with;
use tests::cases::pattern;
use tests::e2e::{self, dir_names};
use tests::harness::{Mount, assert_fsck_clean, require_tool, run};
use tests::imagegen::{Compression, Entry, Image, Layer};

fn three_layers() -> Image {
    Image::new(vec![
        Layer::new(vec![
            Entry::file("a", pattern(5000, 1)),
            Entry::file("b", pattern(70_000, 2)),
        ]),
        Layer::new(vec![Entry::file("c", pattern(3000, 3))]).compressed(Compression::Gzip),
        Layer::new(vec![Entry::file("d", pattern(100_000, 4))]).compressed(Compression::Zstd),
    ])
}

/// First physical block of a file's data, from `debugfs -R "bmap PATH 0"`.
fn first_block(image: &std::path::Path, path: &str) -> u64 {
    let (ok, out) = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("bmap {path} 0"))
        .arg(image));
    assert!(ok, "debugfs bmap {path}: {out}");
    out.lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("debugfs bmap {path}: no block number in {out:?}"))
}

fn opts(chunk_size: u64, free_bytes: u64, spare_inodes: u32) -> FlattenOptions {
    FlattenOptions {
        ext4: Ext4Options {
            chunk_size,
            free_bytes,
            spare_inodes,
        },
        ..FlattenOptions::default()
    }
}

#[test]
fn each_layer_starts_on_a_chunk_boundary() {
    if !require_tool("debugfs") || !require_tool("e2fsck") {
        return;
    }
    for chunk in [64 << 10, 512 << 10, 4 << 20] {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("oci");
        three_layers().write_oci_layout(&layout, "t").unwrap();
        let image = tmp.path().join("disk.img");
        flatten_with(
            &format!("oci:{}:t", layout.display()),
            &image,
            &opts(chunk, 8 << 20, 64),
        )
        .unwrap();
        assert_fsck_clean(&image);
        let blocks: Vec<u64> = ["/a", "/b", "/c", "/d"]
            .iter()
            .map(|p| first_block(&image, p))
            .collect();
        for (p, b) in [("/a", blocks[0]), ("/c", blocks[2]), ("/d", blocks[3])] {
            assert_eq!(
                (b * 4096) % chunk,
                0,
                "chunk size {chunk}: first file of a layer, {p}, starts at block {b}, not on a chunk boundary"
            );
        }
        assert_eq!(
            blocks[1],
            blocks[0] + 2,
            "/b should follow /a's two blocks: {blocks:?}"
        );
        assert!(
            blocks[0] < blocks[2] && blocks[2] < blocks[3],
            "data not in layer order: {blocks:?}"
        );
    }
}

/// `free_bytes` and `spare_inodes` are there to use: a read-write mount
/// can write that much data and that many files, and e2fsck stays clean.
#[test]
fn free_space_and_spare_inodes_are_usable() {
    if !e2e::tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    three_layers().write_oci_layout(&layout, "t").unwrap();
    let image = tmp.path().join("disk.img");
    let free = 48u64 << 20;
    flatten_with(
        &format!("oci:{}:t", layout.display()),
        &image,
        &opts(512 << 10, free, 3000),
    )
    .unwrap();
    assert_fsck_clean(&image);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(m) = Mount::loop_mount(&image, &mnt, false).unwrap() else {
        return;
    };
    let (ok, df) = run(Command::new("df")
        .args(["-B1", "--output=avail,iavail"])
        .arg(m.path()));
    assert!(ok, "df: {df}");
    let nums: Vec<u64> = df
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(nums.len() == 2, "df output: {df}");
    assert!(
        nums[0] >= free * 9 / 10,
        "only {} bytes free, asked for {free}",
        nums[0]
    );
    assert!(
        nums[1] >= 3000,
        "only {} inodes free, asked for 3000 spare",
        nums[1]
    );
    std::fs::write(m.path().join("big"), vec![0xa5u8; (free * 8 / 10) as usize]).unwrap();
    std::fs::create_dir(m.path().join("many")).unwrap();
    for i in 0..2900 {
        std::fs::write(m.path().join(format!("many/{i}")), b"x").unwrap();
    }
    m.unmount().unwrap();
    assert_fsck_clean(&image);
}

#[test]
fn invalid_chunk_size_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    three_layers().write_oci_layout(&layout, "t").unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let err = flatten_with(
        &format!("oci:{}:t", layout.display()),
        &out.join("disk.img"),
        &opts(100_000, 0, 0),
    )
    .expect_err("chunk size 100000 accepted");
    assert!(
        err.contains("100000"),
        "error does not name the chunk size: {err}"
    );
    assert_eq!(dir_names(&out), Vec::<String>::new());
}
