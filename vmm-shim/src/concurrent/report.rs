//! The concurrent cold-start report: serde types first
//! ([`ConcurrentReport`], written by `vmm-shim concurrent --json FILE`),
//! then the aggregation of measured rounds into it, then the text table
//! made from it.
//!
//! Per mode × N: the median and maximum ready time over every VM of every
//! run, its ratio to N = 1 of the same mode in the same invocation (the
//! host is shared and noisy, so ratios, not absolute times, carry the
//! comparison), and the bytes (and objects) fetched from the origin, the
//! median over runs. Issue 13's goals are checked on the agent modes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{CellResult, Mode};
use crate::coldstart::percentile;

/// `format` of a [`ConcurrentReport`].
pub const REPORT_FORMAT: &str = "vmm-shim-concurrent";

/// Issue 13: the agent's median ready time at N = 8 over N = 1's.
pub const READY_GOAL_N: usize = 8;
/// ... is at most this.
pub const READY_GOAL_RATIO: f64 = 1.5;

/// The whole report of one `vmm-shim concurrent` invocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConcurrentReport {
    /// Always [`REPORT_FORMAT`].
    pub format: String,
    /// What was measured, how often, on what (flattened into the
    /// report's own fields in JSON).
    #[serde(flatten)]
    pub header: ReportHeader,
    /// One per mode and N, modes in the order asked, N ascending.
    pub cells: Vec<CellReport>,
    /// Issue 13's goals, checked.
    pub goals: Vec<GoalCheck>,
}

/// All runs of N concurrent cold starts in one mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellReport {
    /// How the VMs were served.
    pub mode: Mode,
    /// VMs started at once.
    pub vms: usize,
    /// Runs measured.
    pub runs: usize,
    /// Why it did not run (or a run failed).
    pub unavailable: Option<String>,
    /// Median ready time over every VM of every run, ms.
    pub ready_median_ms: f64,
    /// The slowest VM of any run, ms.
    pub ready_max_ms: f64,
    /// `ready_median_ms` over N = 1's of the same mode.
    pub ready_vs_n1: Option<f64>,
    /// Bytes fetched from the origin, the median over runs (each run's
    /// total over all its VMs).
    pub origin_bytes: u64,
    /// `origin_bytes` over N = 1's of the same mode.
    pub origin_vs_n1: Option<f64>,
    /// Objects fetched from the origin, the median over runs.
    pub origin_objects: u64,
    /// Gets that joined another get's fetch (single-flight), the median
    /// over runs.
    pub shared_fetches: u64,
    /// Chunks got from the store, checked and decrypted by the VMs'
    /// readers, all VMs together, the median over runs.
    #[serde(default)]
    pub decrypts: u64,
    /// VMs (over all runs) whose start-profile prefetch ran.
    pub prefetching_vms: usize,
    /// Every VM's ready time, ms, per run (in VM order).
    pub ready_ms: Vec<Vec<f64>>,
    /// Each run's origin bytes.
    pub origin_bytes_runs: Vec<u64>,
}

/// What a goal limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GoalMetric {
    /// Origin bytes at N over origin bytes at N = 1 (must not grow).
    OriginVsN1,
    /// Median ready at N over median ready at N = 1.
    ReadyVsN1,
}

/// One goal checked on one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalCheck {
    /// The mode.
    pub mode: Mode,
    /// N.
    pub vms: usize,
    /// What is limited.
    pub metric: GoalMetric,
    /// The largest value that meets it.
    pub limit: f64,
    /// The measured value (absent when the cell or N = 1 did not run).
    pub value: Option<f64>,
    /// Whether it is within the limit (absent when not measured).
    pub met: Option<bool>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median_u64(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    // Nearest rank, as the durations (the lower middle of an even count).
    v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0)
}

impl CellReport {
    /// The figures of one cell's rounds (ratios are filled in by
    /// [`ConcurrentReport::new`], which sees N = 1).
    pub fn from_result(r: &CellResult) -> Self {
        let mut all: Vec<Duration> = r
            .rounds
            .iter()
            .flat_map(|x| x.vms.iter().map(|v| v.ready))
            .collect();
        all.sort();
        let col = |f: fn(&super::Round) -> u64| r.rounds.iter().map(f).collect::<Vec<_>>();
        let origin_bytes_runs = col(|x| x.origin_bytes);
        Self {
            mode: r.mode,
            vms: r.vms,
            runs: r.rounds.len(),
            unavailable: r.unavailable.clone(),
            ready_median_ms: ms(percentile(&all, 0.5)),
            ready_max_ms: all.last().copied().map_or(0.0, ms),
            ready_vs_n1: None,
            origin_bytes: median_u64(&origin_bytes_runs),
            origin_vs_n1: None,
            origin_objects: median_u64(&col(|x| x.origin_objects)),
            shared_fetches: median_u64(&col(|x| x.shared_fetches)),
            decrypts: median_u64(&col(|x| x.decrypts)),
            prefetching_vms: r
                .rounds
                .iter()
                .flat_map(|x| &x.vms)
                .filter(|v| v.prefetched)
                .count(),
            ready_ms: r
                .rounds
                .iter()
                .map(|x| x.vms.iter().map(|v| ms(v.ready)).collect())
                .collect(),
            origin_bytes_runs,
        }
    }

    /// Whether it has figures (it ran at least once and did not fail).
    pub fn measured(&self) -> bool {
        self.unavailable.is_none() && self.runs > 0
    }
}

impl ConcurrentReport {
    /// The report of these cells: ratios to N = 1 of the same mode, and the
    /// goals checked on the agent modes.
    pub fn new(header: ReportHeader, results: &[CellResult]) -> Self {
        let mut cells: Vec<CellReport> = results.iter().map(CellReport::from_result).collect();
        let base: Vec<Option<(f64, u64)>> = cells
            .iter()
            .map(|c| {
                cells
                    .iter()
                    .find(|b| b.mode == c.mode && b.vms == 1 && b.measured())
                    .map(|b| (b.ready_median_ms, b.origin_bytes))
            })
            .collect();
        for (c, b) in cells.iter_mut().zip(base) {
            if let (Some((ready, origin)), true) = (b, c.measured()) {
                c.ready_vs_n1 = (ready > 0.0).then(|| c.ready_median_ms / ready);
                c.origin_vs_n1 = (origin > 0).then(|| c.origin_bytes as f64 / origin as f64);
            }
        }
        let goals = goals(&cells);
        Self {
            format: REPORT_FORMAT.into(),
            header,
            cells,
            goals,
        }
    }

    /// The table and the goals, as `vmm-shim concurrent` prints them.
    pub fn render(&self) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        let h = &self.header;
        let mut out = format!(
            "image {}, trace {} ({} reads, {:.2} MB); {} runs per cell; probe {}; {} host CPUs shared by every VM and daemon\n",
            h.image,
            h.trace,
            h.reads,
            mb(h.bytes),
            h.runs,
            h.probe,
            h.host_cpus
        );
        out.push_str(&format!(
            "{:<13} {:>3} {:>4} {:>12} {:>12} {:>7} {:>10} {:>7} {:>11} {:>8} {:>8} {:>9}\n",
            "mode",
            "N",
            "runs",
            "ready med ms",
            "ready max ms",
            "vs N=1",
            "origin MB",
            "vs N=1",
            "origin objs",
            "joined",
            "decrypts",
            "prefetch"
        ));
        let ratio = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
        for c in &self.cells {
            if let Some(why) = &c.unavailable {
                let why = why.lines().map(str::trim).collect::<Vec<_>>().join(" | ");
                out.push_str(&format!(
                    "{:<13} {:>3} not run: {why}\n",
                    c.mode.name(),
                    c.vms
                ));
                continue;
            }
            out.push_str(&format!(
                "{:<13} {:>3} {:>4} {:>12.1} {:>12.1} {:>7} {:>10.2} {:>7} {:>11} {:>8} {:>8} {:>9}\n",
                c.mode.name(),
                c.vms,
                c.runs,
                c.ready_median_ms,
                c.ready_max_ms,
                ratio(c.ready_vs_n1),
                mb(c.origin_bytes),
                ratio(c.origin_vs_n1),
                c.origin_objects,
                c.shared_fetches,
                c.decrypts,
                format!("{}/{}", c.prefetching_vms, c.vms * c.runs)
            ));
        }
        if !self.goals.is_empty() {
            out.push_str("\ngoals (issue 13; ratios against N=1 of the same mode, this run)\n");
            out.push_str(&render_goals(&self.goals));
        }
        out
    }
}

/// What the report says about the invocation (beside its cells).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportHeader {
    /// The image (tag or digest) every VM served.
    pub image: String,
    /// The trace file every probe replayed.
    pub trace: String,
    /// Reads in the trace.
    pub reads: u64,
    /// Bytes the trace reads.
    pub bytes: u64,
    /// Runs per cell.
    pub runs: usize,
    /// How the probe guests ran (queue depth, completion wait).
    pub probe: String,
    /// The imagefs binary measured.
    pub imagefs: String,
    /// CPUs of the host (every probe VM and daemon shares them).
    pub host_cpus: usize,
}

/// Issue 13's goals on every agent mode: origin bytes at each N > 1 no
/// more than at N = 1, and median ready at N = 8 at most 1.5× N = 1's.
fn goals(cells: &[CellReport]) -> Vec<GoalCheck> {
    let check = |c: &CellReport, metric, limit: f64, value: Option<f64>| GoalCheck {
        mode: c.mode,
        vms: c.vms,
        metric,
        limit,
        value,
        met: value.map(|v| v <= limit),
    };
    let mut out = Vec::new();
    for c in cells.iter().filter(|c| c.mode.is_agent() && c.vms > 1) {
        out.push(check(c, GoalMetric::OriginVsN1, 1.0, c.origin_vs_n1));
        if c.vms == READY_GOAL_N {
            out.push(check(
                c,
                GoalMetric::ReadyVsN1,
                READY_GOAL_RATIO,
                c.ready_vs_n1,
            ));
        }
    }
    out
}

/// The goals as a table.
pub fn render_goals(goals: &[GoalCheck]) -> String {
    let mut out = format!(
        "{:<13} {:>3} {:<28} {:>8} {:>9}  {}\n",
        "mode", "N", "metric", "goal", "measured", "result"
    );
    for g in goals {
        let metric = match g.metric {
            GoalMetric::OriginVsN1 => "origin bytes / N=1",
            GoalMetric::ReadyVsN1 => "median ready / N=1",
        };
        out.push_str(&format!(
            "{:<13} {:>3} {:<28} {:>8} {:>9}  {}\n",
            g.mode.name(),
            g.vms,
            metric,
            format!("<= {:.2}x", g.limit),
            g.value.map_or("-".into(), |v| format!("{v:.2}x")),
            match g.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            }
        ));
    }
    out
}
