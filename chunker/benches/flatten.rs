//! Flatten benchmark on the real Debian images.
//!
//! Prints, from one run:
//! - flatten throughput (MB/s of uncompressed layer data) of our writer next
//!   to `tar -x` of the same layers followed by `mke2fs -d`;
//! - the fraction of the base layer's file data blocks that sit in chunks
//!   shared between the `python` and `node` images, for both methods.
//!
//! Needs root (loop mounts for `filefrag`), GNU tar, mke2fs and the layout
//! that `scripts/build-debian-images.sh` builds. Missing pieces are reported
//! and the benchmark stops without printing made-up numbers.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;
use sha2::{Digest, Sha256};

const TAGS: [&str; 3] = ["base", "python", "node"];

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("flatten bench: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn sh(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct Flattened {
    ours: PathBuf,
    mke2fs: PathBuf,
    root: PathBuf,
    layer_bytes: u64,
    ours_secs: f64,
    mke2fs_secs: f64,
}

fn run() -> Result<(), String> {
    let layout = common::layout_dir();
    if !layout.join("index.json").exists() {
        println!(
            "SKIP: no Debian image layout at {} (run scripts/build-debian-images.sh)",
            layout.display()
        );
        return Ok(());
    }
    for tool in ["tar", "mke2fs", "filefrag", "mount"] {
        if sh(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
            println!("SKIP: {tool} is not installed");
            return Ok(());
        }
    }
    let work = tempfile::Builder::new()
        .prefix("imagefs-bench-")
        .tempdir_in("/var/tmp")
        .map_err(|e| format!("tempdir: {e}"))?;
    let opts = FlattenOptions::default();
    let chunk = opts.ext4.chunk_size;

    let mut results = BTreeMap::new();
    for tag in TAGS {
        // Both methods then read the layers from the page cache.
        common::warm(&layout).map_err(|e| format!("reading {}: {e}", layout.display()))?;
        results.insert(tag, flatten_both(&layout, tag, work.path(), &opts)?);
    }

    println!();
    println!("flatten throughput (uncompressed layer data, one run, same machine)");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>14} {:>10} {:>8}",
        "image", "layers MB", "ours s", "ours MB/s", "tar+mke2fs s", "MB/s", "ratio"
    );
    for (tag, r) in &results {
        let mb = r.layer_bytes as f64 / 1e6;
        println!(
            "{:<8} {:>10.1} {:>10.2} {:>10.1} {:>14.2} {:>10.1} {:>7.2}x",
            tag,
            mb,
            r.ours_secs,
            mb / r.ours_secs,
            r.mke2fs_secs,
            mb / r.mke2fs_secs,
            r.mke2fs_secs / r.ours_secs
        );
    }

    let (a, b) = (&results["python"], &results["node"]);
    let base_files = shared_base_files(&results["base"].root, &a.root, &b.root)
        .map_err(|e| format!("listing base files: {e}"))?;
    let base_bytes: u64 = base_files.iter().map(|(_, len)| *len).sum();
    println!();
    println!(
        "base-layer data shared between python and node ({} files, {:.1} MB, {} KiB chunks)",
        base_files.len(),
        base_bytes as f64 / 1e6,
        chunk / 1024
    );
    println!(
        "{:<12} {:>14} {:>14} {:>8}",
        "writer", "base blocks", "in shared chunk", "shared"
    );
    let paths: Vec<&str> = base_files.iter().map(|(p, _)| p.as_str()).collect();
    for (name, img_a, img_b) in [
        ("imagefs", &a.ours, &b.ours),
        ("mke2fs -d", &a.mke2fs, &b.mke2fs),
    ] {
        let (total, shared) = shared_blocks(img_a, img_b, &paths, chunk, work.path())?;
        println!(
            "{:<12} {:>14} {:>14} {:>7.1}%",
            name,
            total,
            shared,
            100.0 * shared as f64 / total.max(1) as f64
        );
    }
    Ok(())
}

/// Flatten `tag` with our writer and with tar + mke2fs, timing both.
fn flatten_both(
    layout: &Path,
    tag: &str,
    work: &Path,
    opts: &FlattenOptions,
) -> Result<Flattened, String> {
    let source: ImageSource = format!("oci:{}:{tag}", layout.display())
        .parse()
        .map_err(|e| format!("{e}"))?;
    let ours = work.join(format!("{tag}-ours.img"));
    let t = Instant::now();
    let report =
        flatten_to_file(&source, &ours, opts).map_err(|e| format!("flatten {tag}: {e}"))?;
    let ours_secs = t.elapsed().as_secs_f64();
    let layer_bytes = report.layers.iter().map(|l| l.uncompressed_bytes).sum();

    // The same layers through tar -x and mke2fs -d, into an image of the same size.
    let root = work.join(format!("{tag}-root"));
    let mke2fs = work.join(format!("{tag}-mke2fs.img"));
    fs::create_dir(&root).map_err(|e| e.to_string())?;
    let t = Instant::now();
    for layer in &report.layers {
        let digest = layer.digest.to_string();
        let hex = digest.trim_start_matches("sha256:");
        let blob = layout.join("blobs/sha256").join(hex);
        sh(Command::new("tar")
            .args([
                "-x",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
                "-p",
                "-f",
            ])
            .arg(&blob)
            .arg("-C")
            .arg(&root))?;
        apply_whiteouts(&root).map_err(|e| format!("whiteouts in {}: {e}", root.display()))?;
    }
    sh(Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-O",
            "^has_journal",
            "-E",
        ])
        .arg("root_owner=0:0")
        .arg("-d")
        .arg(&root)
        .arg(&mke2fs)
        .arg(format!("{}k", report.ext4.size / 1024)))?;
    let mke2fs_secs = t.elapsed().as_secs_f64();
    Ok(Flattened {
        ours,
        mke2fs,
        root,
        layer_bytes,
        ours_secs,
        mke2fs_secs,
    })
}

/// Remove `.wh.NAME` markers and what they hide; `.wh..wh..opq` only drops
/// the marker (the layers here do not rely on opaque directories).
fn apply_whiteouts(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let path = entry.path();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            fs::remove_file(&path)?;
            if hidden != ".wh..opq" {
                let target = dir.join(hidden);
                if let Ok(meta) = fs::symlink_metadata(&target) {
                    if meta.is_dir() {
                        fs::remove_dir_all(&target)?;
                    } else {
                        fs::remove_file(&target)?;
                    }
                }
            }
        } else if entry.file_type()?.is_dir() {
            apply_whiteouts(&path)?;
        }
    }
    Ok(())
}

/// Regular, non-empty files of the base image that both app images still
/// hold with the same content: `(path inside the image, size)`.
fn shared_base_files(base: &Path, a: &Path, b: &Path) -> io::Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(base.join(&rel))? {
            let entry = entry?;
            let rel = rel.join(entry.file_name());
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(rel);
            } else if meta.is_file()
                && meta.len() > 0
                && same_file(&a.join(&rel), &b.join(&rel)).unwrap_or(false)
            {
                out.push((rel.to_string_lossy().into_owned(), meta.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

fn same_file(a: &Path, b: &Path) -> io::Result<bool> {
    let (ma, mb) = (fs::symlink_metadata(a)?, fs::symlink_metadata(b)?);
    if !ma.is_file() || !mb.is_file() || ma.len() != mb.len() {
        return Ok(false);
    }
    Ok(hash_file(a)? == hash_file(b)?)
}

fn hash_file(p: &Path) -> io::Result<Vec<u8>> {
    let mut f = fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().to_vec());
        }
        h.update(&buf[..n]);
    }
}

/// Hash of every chunk of an image.
fn chunk_hashes(img: &Path, chunk: u64) -> io::Result<Vec<[u8; 32]>> {
    let mut f = fs::File::open(img)?;
    let mut buf = vec![0; chunk as usize];
    let mut out = Vec::new();
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(out);
        }
        buf[filled..].fill(0);
        out.push(Sha256::digest(&buf).into());
    }
}

/// Physical 4 KiB blocks of each file in a loop-mounted image, via FIEMAP
/// (`filefrag -e`).
fn file_blocks(img: &Path, paths: &[&str], work: &Path) -> Result<Vec<u64>, String> {
    let mnt = tempfile::tempdir_in(work).map_err(|e| e.to_string())?;
    sh(Command::new("mount")
        .args(["-o", "loop,ro", "-t", "ext4"])
        .arg(img)
        .arg(mnt.path()))?;
    let result = (|| {
        let mut blocks = Vec::new();
        for batch in paths.chunks(400) {
            let mut cmd = Command::new("filefrag");
            cmd.args(["-e", "-b4096"]);
            for p in batch {
                cmd.arg(mnt.path().join(p));
            }
            let out = sh(&mut cmd)?;
            for line in out.lines() {
                // "   0:        0..       3:      34816..     34819:      4: ..."
                let fields: Vec<&str> = line.split(':').map(str::trim).collect();
                if fields.len() < 4
                    || !fields[2].contains("..")
                    || fields[0].parse::<u64>().is_err()
                {
                    continue;
                }
                let start = fields[2].split("..").next().unwrap_or("").trim();
                let (Ok(start), Ok(len)) = (start.parse::<u64>(), fields[3].parse::<u64>()) else {
                    continue;
                };
                blocks.extend(start..start + len);
            }
        }
        Ok(blocks)
    })();
    let _ = Command::new("umount").arg(mnt.path()).status();
    result
}

/// Of the base files' blocks in image `a`, how many lie in a chunk whose
/// bytes also occur as a chunk of image `b` (and so would be stored once).
fn shared_blocks(
    a: &Path,
    b: &Path,
    paths: &[&str],
    chunk: u64,
    work: &Path,
) -> Result<(u64, u64), String> {
    let blocks = file_blocks(a, paths, work)?;
    let ha = chunk_hashes(a, chunk).map_err(|e| e.to_string())?;
    let hb: HashSet<[u8; 32]> = chunk_hashes(b, chunk)
        .map_err(|e| e.to_string())?
        .into_iter()
        .collect();
    let per_chunk = chunk / 4096;
    let shared = blocks
        .iter()
        .filter(|&&blk| {
            ha.get((blk / per_chunk) as usize)
                .is_some_and(|h| hb.contains(h))
        })
        .count() as u64;
    Ok((blocks.len() as u64, shared))
}
