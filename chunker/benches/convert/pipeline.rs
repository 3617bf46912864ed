//! The pipeline comparison: the same image converted by the serial
//! pipeline and the overlapped one, alternately, in fresh stores, with the
//! CPU each used. With `IMAGEFS_BENCH_BASELINE_BIN=IMAGEFS` (an `imagefs`
//! built from an earlier commit, such as the one before the overlapped
//! pipeline), that binary's `convert` takes its turn too, so "today's
//! pipeline" is measured as it was, not only as the serial option is now.
//! Reports are data: [`PipelineReport`] first, the table made from it.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Run, child_result, common, run_child};

/// Rounds of each pipeline on each image; the median run is reported.
const ROUNDS: usize = 9;

/// One conversion's figures.
#[derive(Clone, Debug, Serialize)]
pub struct PipelineRun {
    /// `serial`, `overlapped` or `baseline`.
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
    /// The median run of the baseline binary, when one was given.
    pub baseline: Option<PipelineRun>,
    /// Overlapped throughput over the baseline binary's.
    pub speedup_vs_baseline: Option<f64>,
    /// The overlapped run against the goals.
    pub goals: Goals,
    /// What this host shows for a job as long as the overlapped run with
    /// every core busy from start to end: the median CPU % of `cores`
    /// threads spinning that long, one spin per round. The CPU goal's
    /// ceiling here.
    pub ceiling_cpu_percent: f64,
}

/// The overlapped pipeline's goals, checked: CPU at least 90 % of the
/// cores, system time at most 25 % of user time, and throughput at least
/// 1.5 times that of the pipeline it replaces (the baseline binary when one
/// was given, otherwise the serial option).
#[derive(Clone, Debug, Serialize)]
pub struct Goals {
    /// CPU % at least 90 % of `cores` × 100.
    pub cpu_met: bool,
    /// sys/user at most 25 %.
    pub sys_per_user_met: bool,
    /// Throughput at least 1.5× `throughput_against`'s.
    pub throughput_met: bool,
    /// `baseline` or `serial`.
    pub throughput_against: String,
}

impl Goals {
    fn check(cores: usize, overlapped: &PipelineRun, against: &PipelineRun) -> Self {
        Goals {
            cpu_met: overlapped.cpu_percent >= 90.0 * cores as f64,
            sys_per_user_met: overlapped.sys_per_user_percent <= 25.0,
            throughput_met: overlapped.mb_per_s >= 1.5 * against.mb_per_s,
            throughput_against: against.pipeline.clone(),
        }
    }
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
    /// The earlier `imagefs` measured as the baseline, if any.
    pub baseline_bin: Option<PathBuf>,
    /// One entry per image.
    pub cases: Vec<PipelineCase>,
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Reads the image's layout (`source`, when one is given) into the page
/// cache, writes back what is dirty, then pauses, so that each run starts
/// from the same state and pays for its own writes only: the virtual disk
/// here is still busy for a moment after `sync` returns, and a run started
/// at once measured more system time than the same run started later.
fn settle(source: Option<&Path>) -> Result<(), String> {
    if let Some(dir) = source {
        common::warm(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    }
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(SETTLE_PAUSE);
    Ok(())
}

/// The pause after each `sync` (see [`settle`]).
const SETTLE_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// `name` as a file name.
fn cases_dir(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

/// CPU seconds (user, system) of the children waited for so far.
fn children_cpu() -> (f64, f64) {
    super::stat_cpu(13)
}

/// One `BIN convert` of `source` into `store`, timed from here; `image`
/// bytes is what the library's runs reported for the same image.
fn run_baseline(bin: &Path, source: &str, store: &Path, keys: &Path) -> Result<Run, String> {
    let (u0, s0) = children_cpu();
    let t = Instant::now();
    let out = Command::new(bin)
        .arg("convert")
        .arg(source)
        .arg("--store")
        .arg(store)
        .arg("--keys")
        .arg(keys)
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "{} convert {source}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let (u1, s1) = children_cpu();
    Ok(Run::timing(secs, u1 - u0, s1 - s0))
}

/// `threads` threads spinning for `secs` (the bench's `--spin`), as a
/// [`PipelineRun`].
fn run_spin(secs: f64, threads: usize) -> Result<PipelineRun, String> {
    let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    cmd.arg("--spin")
        .arg(secs.to_string())
        .arg(threads.to_string());
    Ok(PipelineRun::new(
        "spin",
        &child_result(&mut cmd, "spinning")?,
    ))
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    runs.swap_remove(runs.len() / 2)
}

/// Converts `source` (the image in the layout at `layout`) ROUNDS times
/// with each pipeline, alternating.
fn case(
    name: &str,
    layout: &Path,
    source: &str,
    work: &Path,
    keys: &Path,
    cores: usize,
    baseline: Option<&Path>,
) -> Result<PipelineCase, String> {
    let mut serial = Vec::new();
    let mut overlapped = Vec::new();
    let mut earlier = Vec::new();
    let mut ceiling = Vec::new();
    // Its own keys: an earlier build may not read this one's key files.
    let baseline_keys = work.join("keys-baseline");
    for round in 0..ROUNDS {
        for (pipeline, runs) in [
            ("serial", &mut serial),
            ("overlapped", &mut overlapped),
            ("baseline", &mut earlier),
        ] {
            // A fresh store each time, kept to the end: deleting one
            // makes the next runs' file creation slow (ext4 without a
            // journal steps over recently deleted inodes one by one).
            if pipeline == "baseline" && baseline.is_none() {
                continue;
            }
            let store = work.join(format!("store-{}-{pipeline}-{round}", cases_dir(name)));
            settle(Some(layout))?;
            runs.push(match baseline.filter(|_| pipeline == "baseline") {
                Some(bin) => run_baseline(bin, source, &store, &baseline_keys)?,
                None => run_child(source, &store, keys, cores, pipeline)?,
            });
        }
        settle(None)?;
        ceiling.push(run_spin(overlapped[round].secs, cores)?.cpu_percent);
    }
    ceiling.sort_by(f64::total_cmp);
    let ceiling_cpu_percent = ceiling[ceiling.len() / 2];
    let serial = median(serial);
    let image = serial.image;
    let serial = PipelineRun::new("serial", &serial);
    let overlapped = PipelineRun::new("overlapped", &median(overlapped));
    let baseline = (!earlier.is_empty()).then(|| {
        let mut run = median(earlier);
        run.image = image;
        PipelineRun::new("baseline", &run)
    });
    let goals = Goals::check(cores, &overlapped, baseline.as_ref().unwrap_or(&serial));
    Ok(PipelineCase {
        image: name.to_owned(),
        goals,
        ceiling_cpu_percent,
        speedup: overlapped.mb_per_s / serial.mb_per_s,
        speedup_vs_baseline: baseline.as_ref().map(|b| overlapped.mb_per_s / b.mb_per_s),
        baseline,
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
    let baseline_bin = std::env::var_os("IMAGEFS_BENCH_BASELINE_BIN").map(PathBuf::from);
    let baseline = baseline_bin.as_deref();
    let loadavg_before = loadavg();
    let cases = vec![
        case(
            "python (gzip layers)",
            layout,
            &format!("oci:{}:python", layout.display()),
            work,
            keys,
            cores,
            baseline,
        )?,
        case(
            "python (plain tar layers)",
            &plain,
            &plain_source,
            work,
            keys,
            cores,
            baseline,
        )?,
    ];
    Ok(PipelineReport {
        cores,
        rounds: ROUNDS,
        loadavg_before,
        loadavg_after: loadavg(),
        baseline_bin,
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
        for run in [
            Some(&case.serial),
            Some(&case.overlapped),
            case.baseline.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
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
        if let Some(x) = case.speedup_vs_baseline {
            println!("{:<27} throughput overlapped / baseline: {x:.2}x", "");
        }
        println!(
            "{:<27} ceiling: {} threads spinning as long as the overlapped run: {:.0}% CPU",
            "", report.cores, case.ceiling_cpu_percent
        );
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        let g = &case.goals;
        println!(
            "{:<27} goals: CPU >= {:.0}% {}; sys/user <= 25% {}; throughput >= 1.5x {} {}",
            "",
            90.0 * report.cores as f64,
            verdict(g.cpu_met),
            verdict(g.sys_per_user_met),
            g.throughput_against,
            verdict(g.throughput_met)
        );
    }
    if let Some(bin) = &report.baseline_bin {
        println!("baseline: {} convert (an earlier build)", bin.display());
    }
    println!(
        "goals (overlapped): CPU >= 90% of the {} cores, sys/user <= 25%, throughput >= 1.5x the pipeline it replaces (the baseline binary if given, else serial)",
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
