//! The cold-start harness: recorded guest traces replayed by the probe
//! guest in a fresh KVM microVM against `imagefs serve`, with the caches
//! prepared for each scenario, with and without a start profile, and
//! against the reference backend (qemu-storage-daemon serving the exported
//! raw image).
//!
//! Scenarios (each run starts a fresh `imagefs serve` process):
//! - `origin`: empty shared and dedicated tiers, no AZ node: everything comes
//!   from the origin;
//! - `az-warm`: a cache node primed by one earlier run of the trace; empty
//!   shared and dedicated tiers;
//! - `shared-warm`: the shared local tier primed by an earlier run; empty
//!   dedicated tier;
//! - `dedicated-warm`: the instance's dedicated tier primed by an earlier run;
//! - `download-all`: the baseline that fetches every chunk before the VM
//!   starts (`imagefs export` from the origin), then serves the raw file with
//!   qemu-storage-daemon; its times include the download;
//! - `qsd`: qemu-storage-daemon serving the already-exported raw image (page
//!   cache warm): the backend comparison's reference;
//! - `az-ec`, `az-ec-1-stopped`, `az-replicated`, `az-replicated-1-stopped`
//!   (only when asked for): like `az-warm`, but a fleet of five cache nodes
//!   (`fleet`) in the erasure-coded or the replicated mode, primed by one
//!   earlier run, with all nodes healthy or with one SIGSTOPped after the
//!   priming.
//!
//! Start profiles ([`ProfileMode`]): the imagefs scenarios run without a
//! profile (`serve --prefetch off`) and with one (`serve --prefetch auto`).
//! The profile is recorded once per image by a separate, unmeasured run
//! (`serve --record-profile` on cold tiers, after `imagefs profile rm`), so
//! no measured run replays its own recording. Every run that only prepares
//! a cache uses `--prefetch off`, so both modes start from the same caches.
//!
//! [`report`] turns the results into the serde report and its table,
//! [`plot`] draws its PNGs.

mod fleet;
mod harness;
pub mod plot;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use manifest::report::{FetchLog, PrefetchStats, ServeStats};

use crate::error::{Error, Result};
use crate::probe::{Params, TraceEntry};
use crate::run::ProbeRun;

/// A cache preparation to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Everything cold: chunks come from the origin.
    Origin,
    /// The AZ cache node holds the trace's chunks.
    AzWarm,
    /// The host's shared local tier holds them.
    SharedWarm,
    /// The instance's dedicated tier holds them (plaintext).
    DedicatedWarm,
    /// Download every chunk first, then boot from the raw image.
    DownloadAll,
    /// qemu-storage-daemon serving the exported raw image (reference).
    Qsd,
    /// Five cache nodes, erasure-coded (4+1 stripes), all healthy.
    AzEc,
    /// The same with one node SIGSTOPped.
    #[value(name = "az-ec-1-stopped")]
    AzEcStopped,
    /// Five cache nodes, replicated with hedging, all healthy.
    AzReplicated,
    /// The same with one node SIGSTOPped.
    #[value(name = "az-replicated-1-stopped")]
    AzReplicatedStopped,
}

impl Scenario {
    /// All scenarios, in report order.
    pub const ALL: [Scenario; 6] = [
        Scenario::Origin,
        Scenario::AzWarm,
        Scenario::SharedWarm,
        Scenario::DedicatedWarm,
        Scenario::DownloadAll,
        Scenario::Qsd,
    ];

    /// The AZ-fleet scenarios, run only when asked for.
    pub const FLEET: [Scenario; 4] = [
        Scenario::AzEc,
        Scenario::AzEcStopped,
        Scenario::AzReplicated,
        Scenario::AzReplicatedStopped,
    ];

    /// The scenario's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Origin => "origin",
            Scenario::AzWarm => "az-warm",
            Scenario::SharedWarm => "shared-warm",
            Scenario::DedicatedWarm => "dedicated-warm",
            Scenario::DownloadAll => "download-all",
            Scenario::Qsd => "qsd",
            Scenario::AzEc => "az-ec",
            Scenario::AzEcStopped => "az-ec-1-stopped",
            Scenario::AzReplicated => "az-replicated",
            Scenario::AzReplicatedStopped => "az-replicated-1-stopped",
        }
    }

    /// Whether it runs `imagefs serve` (and so has a with/without-profile
    /// variant).
    pub fn serves(self) -> bool {
        !matches!(self, Scenario::DownloadAll | Scenario::Qsd)
    }

    /// For the AZ-fleet scenarios: the fleet's mode and whether one node
    /// is stopped.
    fn fleet(self) -> Option<(fleet::FleetMode, bool)> {
        use fleet::FleetMode::{Erasure, Replicated};
        match self {
            Scenario::AzEc => Some((Erasure, false)),
            Scenario::AzEcStopped => Some((Erasure, true)),
            Scenario::AzReplicated => Some((Replicated, false)),
            Scenario::AzReplicatedStopped => Some((Replicated, true)),
            _ => None,
        }
    }
}

/// Whether the measured `imagefs serve` runs prefetch a start profile.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum ProfileMode {
    /// `--prefetch off`.
    Without,
    /// `--prefetch auto`, the image's profile recorded by an earlier,
    /// unmeasured run.
    With,
}

impl ProfileMode {
    /// Both, in report order.
    pub const ALL: [ProfileMode; 2] = [ProfileMode::Without, ProfileMode::With];

    /// The mode's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            ProfileMode::Without => "without",
            ProfileMode::With => "with",
        }
    }
}

/// What to measure for one trace.
#[derive(Debug, Clone)]
pub struct ColdstartConfig {
    /// The `imagefs` binary.
    pub imagefs: PathBuf,
    /// sha256:DIGEST or a tag.
    pub image: String,
    /// The origin (`--store` of imagefs).
    pub store: String,
    /// The key directory, when not imagefs's default.
    pub keys: Option<PathBuf>,
    /// The reads to replay.
    pub trace: Vec<TraceEntry>,
    /// Measured runs per scenario.
    pub runs: usize,
    /// Scratch directory (tiers, sockets, the exported image).
    pub work: PathBuf,
    /// Scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// Profile modes for the imagefs scenarios (empty: both, as the
    /// command line's default).
    pub profiles: Vec<ProfileMode>,
    /// `imagefs serve --readahead N` (chunks), when not imagefs's default
    /// (tests that count where chunks came from set 0: read-ahead depends
    /// on timing).
    pub readahead: Option<usize>,
    /// `imagefs serve --prefetch-concurrency N`, when not imagefs's
    /// default.
    pub prefetch_concurrency: Option<usize>,
    /// Probe parameters.
    pub params: Params,
    /// Watchdog limit per VM run.
    pub timeout: Duration,
    /// An already-exported raw image for the `qsd` scenario (else it is
    /// exported once with `imagefs export`).
    pub raw: Option<PathBuf>,
}

/// One measured run.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// VM creation (or download start) to the first completed read.
    pub first: Duration,
    /// VM creation (or download start) to the last read of the trace.
    pub ready: Duration,
    /// Median request latency.
    pub p50: Duration,
    /// 99th-percentile request latency.
    pub p99: Duration,
    /// Bytes the guest read.
    pub bytes_read: u64,
    /// Per tier: name and bytes it served (from `imagefs serve
    /// --stats-json`).
    pub tiers: Vec<(String, u64)>,
    /// Bytes fetched from the chunk stores, when known.
    pub fetched: Option<u64>,
    /// Objects fetched from the chunk stores, when known.
    pub fetches: Option<u64>,
    /// What prefetching did (imagefs with a profile only).
    pub prefetch: Option<PrefetchStats>,
    /// Per request, in trace order: submitted and completed, both since
    /// VM creation (or download start).
    pub requests: Vec<(Duration, Duration)>,
    /// Every fetch from the chunk store with its times (`imagefs serve
    /// --record-fetches`).
    pub fetch_log: Option<FetchLog>,
}

/// All runs of one scenario in one profile mode.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// Which.
    pub scenario: Scenario,
    /// With or without a profile; `None` for the scenarios that do not
    /// run imagefs (download-all, qsd).
    pub profile: Option<ProfileMode>,
    /// Its measured runs.
    pub samples: Vec<Sample>,
    /// Why it could not run, if it could not.
    pub unavailable: Option<String>,
}

/// Percentile `q` (0..=1) of a sorted slice (nearest rank), zero when
/// empty.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    telemetry::histogram::percentile(sorted, q).unwrap_or_default()
}

fn sample_of(run: &ProbeRun, extra: Duration) -> Sample {
    let mut lat = run.latencies();
    lat.sort();
    let start = run.outcome.tsc_start;
    let since = |tsc: u64| extra + run.setup + run.tsc_to_duration(tsc.saturating_sub(start));
    Sample {
        first: extra + run.to_first_completion(),
        ready: extra + run.to_ready(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        bytes_read: run.bytes_read(),
        requests: run
            .results
            .iter()
            .map(|r| (since(r.tsc_submit), since(r.tsc_complete)))
            .collect(),
        ..Sample::default()
    }
}

/// From the report of `imagefs serve --stats-json`: (tier, bytes) for
/// each tier, and the bytes fetched from the stores.
pub fn tier_bytes(stats: &ServeStats) -> (Vec<(String, u64)>, Option<u64>) {
    let tiers = stats
        .tiers
        .tiers
        .iter()
        .map(|t| (t.tier.clone(), t.bytes))
        .collect();
    (tiers, Some(stats.reader.store_bytes))
}

/// Reads the report `imagefs serve --stats-json` wrote.
fn read_serve_stats(path: &Path) -> Result<ServeStats> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Process {
        program: "imagefs serve".into(),
        reason: format!("its report {}: {e}", path.display()),
    })
}

/// Runs every scenario of one trace, in each profile mode; a scenario that
/// cannot run is reported, not fatal.
pub fn run(cfg: &ColdstartConfig) -> Result<Vec<ScenarioResult>> {
    harness::run(cfg)
}

/// One trace to measure.
#[derive(Debug, Clone)]
pub struct Case {
    /// Short name in the report and the PNG names (e.g. `python`).
    pub name: String,
    /// The image it was recorded on (tag or sha256:DIGEST).
    pub image: String,
    /// Where the trace came from.
    pub trace_path: PathBuf,
    /// Its reads.
    pub trace: Vec<TraceEntry>,
}

/// A `--trace` argument: `IMAGE=FILE`, or `FILE` with `default_image`.
/// The case is named after the image (or, for a digest, the file).
pub fn parse_case(arg: &str, default_image: Option<&str>) -> Result<Case> {
    let (image, file) = match arg.split_once('=') {
        Some((i, f)) if !i.is_empty() && !i.contains('/') => (i.to_owned(), f),
        _ => match default_image {
            Some(i) => (i.to_owned(), arg),
            None => {
                return Err(Error::Config(format!(
                    "trace {arg}: give it as IMAGE=FILE or give --image"
                )));
            }
        },
    };
    let trace_path = PathBuf::from(file);
    let name = if image.starts_with("sha256:") {
        trace_path.file_name().map_or("trace".into(), |n| {
            n.to_string_lossy()
                .split('.')
                .next()
                .unwrap_or("trace")
                .to_owned()
        })
    } else {
        image.clone()
    };
    let trace = crate::trace::load(&trace_path)?;
    Ok(Case {
        name,
        image,
        trace_path,
        trace,
    })
}

/// Runs `common` (its `image`, `trace` and `raw` replaced) for each case,
/// each in its own scratch directory under `common.work`, and makes the
/// report.
pub fn bench(common: &ColdstartConfig, cases: &[Case]) -> Result<report::ColdstartReport> {
    let mut reports = Vec::with_capacity(cases.len());
    for case in cases {
        eprintln!(
            "coldstart: trace {} ({} reads) on image {}",
            case.name,
            case.trace.len(),
            case.image
        );
        let cfg = ColdstartConfig {
            image: case.image.clone(),
            trace: case.trace.clone(),
            work: common.work.join(&case.name),
            raw: if cases.len() == 1 {
                common.raw.clone()
            } else {
                None
            },
            ..common.clone()
        };
        let results = run(&cfg)?;
        let mut r = report::CaseReport::from_results(&case.name, &case.image, &results);
        r.trace = case.trace_path.display().to_string();
        r.reads = case.trace.len() as u64;
        r.bytes = case.trace.iter().map(|e| u64::from(e.len)).sum();
        reports.push(r);
    }
    Ok(report::ColdstartReport::new(
        common.runs,
        format!(
            "depth {}, wait {:?}",
            common.params.depth, common.params.wait
        ),
        common.imagefs.display().to_string(),
        reports,
    ))
}

/// The report table of one trace's results (see [`report`]).
pub fn render(results: &[ScenarioResult]) -> String {
    report::CaseReport::from_results("trace", "image", results).render()
}

#[cfg(test)]
mod tests;
