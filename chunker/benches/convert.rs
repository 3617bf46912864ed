//! Convert benchmark, one run, ratios against baselines
//! measured in the same run:
//! - convert throughput (MB/s of image data) with 1 thread and with all
//!   cores, next to `sha256sum` over the same image bytes;
//! - peak memory (VmHWM) of a conversion of the Debian image and of a
//!   synthetic multi-GiB image, to show it does not grow with size;
//! - sealed manifest bytes per GiB of image;
//! - bytes the second of two images sharing a base adds to the store,
//!   beyond its own application layer;
//! - the overlapped pipeline against the serial one on the same image
//!   (as stored, and with uncompressed layers): wall time, CPU use and
//!   system time against user time ([`pipeline`]), next to the CPU %
//!   that threads spinning as long show on this host (`--spin`).
//!
//! Each conversion runs in a child process (this binary, re-executed) so
//! its peak memory and CPU time are its own.
//!
//! `IMAGEFS_BENCH_ONLY=pipeline` runs the pipeline comparison alone;
//! `IMAGEFS_BENCH_JSON=FILE` also writes its report there as JSON.

mod common;
#[path = "convert/pipeline.rs"]
mod pipeline;

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Instant;

use cachetiers::DirStore;
use chunker::convert::{ConvertOptions, Pipeline, convert};
use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;
use manifest::LocalKeyProvider;
use sha2::{Digest, Sha256};

const GIB: f64 = (1u64 << 30) as f64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("--child") => child(&args[2..]),
        Some("--spin") => spin(&args[2..]),
        _ => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("convert bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Two CPU-time fields of `/proc/self/stat` in seconds (USER_HZ, 100 a
/// second on Linux), counted from the first field after the command name
/// (which is in parentheses): 11 and 12 are this process's user and
/// system time, all its threads (ended ones too); 13 and 14 those of the
/// children waited for.
pub fn stat_cpu(at: usize) -> (f64, f64) {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(f64::NAN))
        .collect();
    match (f.get(at), f.get(at + 1)) {
        (Some(u), Some(s)) => (u / 100.0, s / 100.0),
        _ => (f64::NAN, f64::NAN),
    }
}

/// User and system CPU seconds of this process so far.
fn cpu_times() -> (f64, f64) {
    stat_cpu(11)
}

/// `--child SOURCE STORE KEYS THREADS PIPELINE`: convert once and print
/// one result line, `RESULT` and a [`Run`] as JSON.
fn child(args: &[String]) -> Result<(), String> {
    let [source, store, keys, threads, pipeline] = args else {
        return Err("child: SOURCE STORE KEYS THREADS PIPELINE".into());
    };
    let source: ImageSource = source.parse().map_err(|e| format!("{e}"))?;
    let store = DirStore::create(store).map_err(|e| e.to_string())?;
    let keys = LocalKeyProvider::create(keys).map_err(|e| e.to_string())?;
    let opts = ConvertOptions {
        threads: threads.parse().map_err(|_| "threads")?,
        pipeline: pipeline.parse::<Pipeline>().map_err(|e| e.to_string())?,
        ..ConvertOptions::default()
    };
    let (user0, sys0) = cpu_times();
    let t = Instant::now();
    let r = convert(&source, &store, &keys, &opts).map_err(|e| format!("{e:?}"))?;
    let secs = t.elapsed().as_secs_f64();
    let (user1, sys1) = cpu_times();
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    let app_layer: u64 = r
        .flatten
        .as_ref()
        .and_then(|f| f.layers.last())
        .map_or(0, |l| l.uncompressed_bytes);
    Run {
        secs,
        image: r.image_bytes,
        written: r.bytes_written,
        manifest: r.manifest_bytes,
        hwm_kib: hwm,
        app_layer,
        user_secs: user1 - user0,
        sys_secs: sys1 - sys0,
    }
    .print()
}

/// `--spin SECS THREADS`: THREADS threads each busy for SECS of wall
/// time, measured as a conversion child measures itself, then one result
/// line as [`child`] prints it. What this host lets a job that long show
/// as CPU %: the ceiling for the pipeline's figure.
fn spin(args: &[String]) -> Result<(), String> {
    let [secs, threads] = args else {
        return Err("spin: SECS THREADS".into());
    };
    let secs: f64 = secs.parse().map_err(|_| "spin: SECS")?;
    let threads: usize = threads.parse().map_err(|_| "spin: THREADS")?;
    let (user0, sys0) = cpu_times();
    let t = Instant::now();
    let spinners: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let mut x = 0u64;
                while t.elapsed().as_secs_f64() < secs {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            })
        })
        .collect();
    for s in spinners {
        s.join().map_err(|_| "a spinning thread panicked")?;
    }
    let (user1, sys1) = cpu_times();
    Run::timing(t.elapsed().as_secs_f64(), user1 - user0, sys1 - sys0).print()
}

/// What one child conversion reported (one JSON line on its stdout).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Run {
    secs: f64,
    image: u64,
    written: u64,
    manifest: u64,
    hwm_kib: u64,
    app_layer: u64,
    user_secs: f64,
    sys_secs: f64,
}

impl Run {
    /// Times alone, for a run that converted nothing this bench counts
    /// (a spin, an earlier build's `convert`).
    pub fn timing(secs: f64, user_secs: f64, sys_secs: f64) -> Self {
        Run {
            secs,
            image: 0,
            written: 0,
            manifest: 0,
            hwm_kib: 0,
            app_layer: 0,
            user_secs,
            sys_secs,
        }
    }

    /// The child's one result line: `RESULT` and this run as JSON, which
    /// [`child_result`] reads.
    fn print(&self) -> Result<(), String> {
        let json = serde_json::to_string(self).map_err(|e| e.to_string())?;
        println!("RESULT {json}");
        Ok(())
    }
}

fn run_child(
    source: &str,
    store: &Path,
    keys: &Path,
    threads: usize,
    pipeline: &str,
) -> Result<Run, String> {
    let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    cmd.arg("--child")
        .arg(source)
        .arg(store)
        .arg(keys)
        .arg(threads.to_string())
        .arg(pipeline);
    child_result(&mut cmd, &format!("converting {source}"))
}

/// Runs this bench as a child (`--child`, `--spin`) and reads the [`Run`]
/// it prints; `what` names it in an error.
fn child_result(cmd: &mut Command, what: &str) -> Result<Run, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or("child printed no result")?;
    serde_json::from_str(line).map_err(|e| format!("the child's result: {e}"))
}

fn sha256sum_secs(path: &Path) -> Result<f64, String> {
    let t = Instant::now();
    let st = Command::new("sha256sum")
        .arg(path)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("sha256sum: {e}"))?;
    if !st.success() {
        return Err("sha256sum failed".into());
    }
    Ok(t.elapsed().as_secs_f64())
}

/// An uncompressed single-layer OCI image holding `gib` GiB of
/// incompressible, non-repeating file data, written as a stream.
fn synthetic_image(dir: &Path, gib: u64) -> io::Result<String> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let tmp = blobs.join("layer.tmp");
    struct Hashing<W: Write>(W, Sha256);
    impl<W: Write> Write for Hashing<W> {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = self.0.write(b)?;
            self.1.update(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.0.flush()
        }
    }
    struct Noise(u64, u64);
    impl Read for Noise {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1 as usize) & !7;
            let n = if n == 0 {
                (self.1 as usize).min(buf.len())
            } else {
                n
            };
            for c in buf[..n].chunks_mut(8) {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                c.copy_from_slice(&self.0.to_le_bytes()[..c.len()]);
            }
            self.1 -= n as u64;
            Ok(n)
        }
    }
    let file = io::BufWriter::with_capacity(1 << 20, fs::File::create(&tmp)?);
    let mut tar = tar::Builder::new(Hashing(file, Sha256::new()));
    for i in 0..gib {
        let size = 1u64 << 30;
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mtime(0);
        tar.append_data(
            &mut h,
            format!("data/blob{i}.bin"),
            Noise(i * 7919 + 1, size),
        )?;
    }
    let Hashing(mut file, hash) = tar.into_inner()?;
    file.flush()?;
    let size = fs::metadata(&tmp)?.len();
    let layer = format!("sha256:{}", hex::encode(hash.finalize()));
    fs::rename(&tmp, blobs.join(&layer[7..]))?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    });
    let put = |bytes: Vec<u8>| -> io::Result<(String, usize)> {
        let d = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        fs::write(blobs.join(&d[7..]), &bytes)?;
        Ok((d, bytes.len()))
    };
    let (cfg, cfg_len) = put(serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": cfg_len},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": size}],
    });
    let (man, man_len) = put(serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": man, "size": man_len,
            "annotations": {"org.opencontainers.image.ref.name": "big"},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(format!("oci:{}:big", dir.display()))
}

fn parent() -> Result<(), String> {
    let layout = common::layout_dir();
    if !layout.join("index.json").exists() {
        println!(
            "SKIP: no Debian image layout at {} (run scripts/build-debian-images.sh)",
            layout.display()
        );
        return Ok(());
    }
    let work = tempfile::Builder::new()
        .prefix("imagefs-convert-bench-")
        .tempdir_in("/var/tmp")
        .map_err(|e| e.to_string())?;
    let w = work.path();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let python = format!("oci:{}:python", layout.display());
    let node = format!("oci:{}:node", layout.display());
    let keys = w.join("keys");

    let report = pipeline::compare(&layout, w, &keys)?;
    pipeline::print(&report);
    if let Ok(path) = std::env::var("IMAGEFS_BENCH_JSON") {
        let json = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
        fs::write(&path, json).map_err(|e| format!("{path}: {e}"))?;
    }
    if std::env::var("IMAGEFS_BENCH_ONLY").as_deref() == Ok("pipeline") {
        return Ok(());
    }

    // Baseline: sha256sum over the very image bytes convert chunks.
    let flat = w.join("python.img");
    let source: ImageSource = python.parse().map_err(|e| format!("{e}"))?;
    flatten_to_file(&source, &flat, &FlattenOptions::default()).map_err(|e| e.to_string())?;
    sha256sum_secs(&flat)?; // warm the page cache
    let sha = sha256sum_secs(&flat)?;
    let img_mb = fs::metadata(&flat).map_err(|e| e.to_string())?.len() as f64 / 1e6;

    let one = run_child(&python, &w.join("store-1"), &keys, 1, "overlapped")?;
    let all = run_child(&python, &w.join("store-n"), &keys, cores, "overlapped")?;
    println!();
    println!("convert throughput, python image ({img_mb:.1} MB of image data)");
    println!(
        "{:<22} {:>8} {:>10} {:>12}",
        "", "secs", "MB/s", "vs sha256sum"
    );
    println!(
        "{:<22} {:>8.2} {:>10.1} {:>11.2}x",
        "sha256sum",
        sha,
        img_mb / sha,
        1.0
    );
    for (name, r) in [
        ("convert, 1 thread", &one),
        (&*format!("convert, {cores} threads"), &all),
    ] {
        let mbs = r.image as f64 / 1e6 / r.secs;
        println!(
            "{:<22} {:>8.2} {:>10.1} {:>11.2}x",
            name,
            r.secs,
            mbs,
            mbs / (img_mb / sha)
        );
    }

    // The second image sharing the base, into the store that has python.
    let second = run_child(&node, &w.join("store-n"), &keys, cores, "overlapped")?;
    let beyond = second.written.saturating_sub(second.app_layer);
    println!();
    println!("node image after python, same store (sharing the base layer)");
    println!(
        "image {:.1} MB, own app layer {:.1} MB, new bytes stored {:.1} MB, beyond its app layer {:.1} MB = {:.1}% of the image (goal <= 10%)",
        second.image as f64 / 1e6,
        second.app_layer as f64 / 1e6,
        second.written as f64 / 1e6,
        beyond as f64 / 1e6,
        100.0 * beyond as f64 / second.image as f64
    );

    // Memory does not grow with image size.
    let big_dir = w.join("big-oci");
    let gib = std::env::var("IMAGEFS_BENCH_GIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3u64);
    let big = synthetic_image(&big_dir, gib).map_err(|e| format!("synthetic image: {e}"))?;
    let big_run = run_child(&big, &w.join("store-big"), &keys, cores, "overlapped")?;
    println!();
    println!("peak memory (VmHWM of the converting process)");
    println!(
        "{:<28} {:>12} {:>12} {:>16}",
        "image", "image MB", "peak MiB", "manifest B/GiB"
    );
    for (name, r) in [
        ("python (Debian)", &all),
        (&*format!("synthetic {gib} GiB"), &big_run),
    ] {
        println!(
            "{:<28} {:>12.1} {:>12.1} {:>16.0}",
            name,
            r.image as f64 / 1e6,
            r.hwm_kib as f64 / 1024.0,
            r.manifest as f64 / (r.image as f64 / GIB)
        );
    }
    println!(
        "synthetic convert: {:.1} MB/s with {cores} threads",
        big_run.image as f64 / 1e6 / big_run.secs
    );
    Ok(())
}
