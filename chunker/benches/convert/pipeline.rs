//! The pipeline comparison: the same image converted by the serial
//! pipeline and the overlapped one, alternately, in fresh stores, with the
//! CPU each used. Reports are data: [`PipelineReport`] first, the table
//! made from it.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Run, run_child};

/// Rounds of each pipeline on each image; the median run is reported.
const ROUNDS: usize = 5;

/// One conversion's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineRun {
    /// `serial` or `overlapped`.
    pub pipeline: String,
    /// Wall time of the conversion.
    pub secs: f64,
    /// User and system CPU time of the converting process.
    pub user_secs: f64,
    /// See `user_secs`.
    pub sys_secs: f64,
    /// Image bytes converted, in MB.
    pub image_mb: f64,
    /// Image MB per wall second.
    pub mb_per_s: f64,
    /// (user + sys) / wall, in percent of one core.
    pub cpu_percent: f64,
    /// sys / user, in percent.
    pub sys_per_user_percent: f64,
}

impl PipelineRun {
    fn new(pipeline: &str, r: &Run) -> Self {
        let image_mb = r.image as f64 / 1e6;
        PipelineRun {
            pipeline: pipeline.to_owned(),
            secs: r.secs,
            user_secs: r.user_secs,
            sys_secs: r.sys_secs,
            image_mb,
            mb_per_s: image_mb / r.secs,
            cpu_percent: 100.0 * (r.user_secs + r.sys_secs) / r.secs,
            sys_per_user_percent: 100.0 * r.sys_secs / r.user_secs.max(1e-9),
        }
    }
}

/// Both pipelines on one image.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineCase {
    /// Which image.
    pub image: String,
    /// The median (by wall time) of the serial runs.
    pub serial: PipelineRun,
    /// The median of the overlapped runs.
    pub overlapped: PipelineRun,
    /// Overlapped throughput over serial throughput.
    pub speedup: f64,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineReport {
    /// Cores the converter may use.
    pub cores: usize,
    /// Runs of each pipeline per image.
    pub rounds: usize,
    /// `/proc/loadavg` before and after: the machine may be shared.
    pub loadavg_before: String,
    /// See `loadavg_before`.
    pub loadavg_after: String,
    /// One entry per image.
    pub cases: Vec<PipelineCase>,
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Writes back what is dirty, so that each run starts from the same state
/// and pays for its own writes only.
fn settle() {
    let _ = std::process::Command::new("sync").status();
}

/// `name` as a file name.
fn cases_dir(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    runs.swap_remove(runs.len() / 2)
}

/// Converts `source` ROUNDS times with each pipeline, alternating.
fn case(
    name: &str,
    source: &str,
    work: &Path,
    keys: &Path,
    cores: usize,
) -> Result<PipelineCase, String> {
    let mut serial = Vec::new();
    let mut overlapped = Vec::new();
    for round in 0..ROUNDS {
        for (pipeline, runs) in [("serial", &mut serial), ("overlapped", &mut overlapped)] {
            // A fresh store each time, kept to the end: deleting one
            // makes the next runs' file creation slow (ext4 without a
            // journal steps over recently deleted inodes one by one).
            let store = work.join(format!("store-{}-{pipeline}-{round}", cases_dir(name)));
            settle();
            runs.push(run_child(source, &store, keys, cores, pipeline)?);
        }
    }
    let serial = PipelineRun::new("serial", &median(serial));
    let overlapped = PipelineRun::new("overlapped", &median(overlapped));
    Ok(PipelineCase {
        image: name.to_owned(),
        speedup: overlapped.mb_per_s / serial.mb_per_s,
        serial,
        overlapped,
    })
}

/// Runs the comparison on the python image as stored (gzip layers) and
/// with its layers uncompressed.
pub fn compare(layout: &Path, work: &Path, keys: &Path) -> Result<PipelineReport, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let plain = work.join("python-plain");
    let plain_source = uncompressed_copy(layout, "python", &plain)
        .map_err(|e| format!("uncompressing the python image: {e}"))?;
    let loadavg_before = loadavg();
    let cases = vec![
        case(
            "python (gzip layers)",
            &format!("oci:{}:python", layout.display()),
            work,
            keys,
            cores,
        )?,
        case(
            "python (plain tar layers)",
            &plain_source,
            work,
            keys,
            cores,
        )?,
    ];
    Ok(PipelineReport {
        cores,
        rounds: ROUNDS,
        loadavg_before,
        loadavg_after: loadavg(),
        cases,
    })
}

/// Prints the table made from `report`.
pub fn print(report: &PipelineReport) {
    println!();
    println!(
        "convert pipeline: overlapped vs serial, same image, same run (median of {} rounds each, {} cores, load average {} before, {} after)",
        report.rounds, report.cores, report.loadavg_before, report.loadavg_after
    );
    println!(
        "{:<27} {:<11} {:>7} {:>8} {:>7} {:>7} {:>7} {:>9}",
        "image", "pipeline", "secs", "MB/s", "user s", "sys s", "CPU %", "sys/user"
    );
    for case in &report.cases {
        for run in [&case.serial, &case.overlapped] {
            println!(
                "{:<27} {:<11} {:>7.2} {:>8.1} {:>7.2} {:>7.2} {:>6.0}% {:>8.0}%",
                case.image,
                run.pipeline,
                run.secs,
                run.mb_per_s,
                run.user_secs,
                run.sys_secs,
                run.cpu_percent,
                run.sys_per_user_percent
            );
        }
        println!(
            "{:<27} throughput overlapped / serial: {:.2}x",
            "", case.speedup
        );
    }
    println!(
        "goals (overlapped): CPU >= {:.0}% on {} cores, sys/user <= 25%, throughput >= 1.5x serial",
        90.0 * report.cores as f64,
        report.cores
    );
}

/// An OCI layout at `dir` holding image `tag` of `layout` with every gzip
/// layer stored uncompressed (same config, so the same diff_ids and the
/// same ext4 image); its source string.
fn uncompressed_copy(layout: &Path, tag: &str, dir: &Path) -> io::Result<String> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let read_blob = |digest: &str| fs::read(layout.join("blobs/sha256").join(&digest[7..]));
    let put = |bytes: &[u8]| -> io::Result<(String, usize)> {
        let d = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        fs::write(blobs.join(&d[7..]), bytes)?;
        Ok((d, bytes.len()))
    };
    let bad = |what: &str| io::Error::other(format!("{tag}: {what}"));
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let entry = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == tag)
        })
        .ok_or_else(|| bad("not in index.json"))?;
    let digest = entry["digest"].as_str().ok_or_else(|| bad("no digest"))?;
    let mut manifest: serde_json::Value = serde_json::from_slice(&read_blob(digest)?)?;
    let config = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| bad("no config"))?
        .to_owned();
    put(&read_blob(&config)?)?;
    let layers = manifest["layers"]
        .as_array_mut()
        .ok_or_else(|| bad("no layers"))?;
    for layer in layers {
        let digest = layer["digest"]
            .as_str()
            .ok_or_else(|| bad("no layer digest"))?;
        let blob = read_blob(digest)?;
        if !layer["mediaType"]
            .as_str()
            .is_some_and(|t| t.ends_with("+gzip"))
        {
            // Uncompressed already (or zstd, left as it is).
            put(&blob)?;
            continue;
        }
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..]).read_to_end(&mut tar)?;
        let (d, n) = put(&tar)?;
        layer["digest"] = d.into();
        layer["size"] = n.into();
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into();
    }
    let (d, n) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": d, "size": n,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    let mut f = fs::File::create(dir.join("oci-layout"))?;
    f.write_all(br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(format!("oci:{}:{tag}", dir.display()))
}
