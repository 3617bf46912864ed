//! The cold-start report: serde types first ([`ColdstartReport`], written
//! by `vmm-shim coldstart --json FILE`), and the text tables made from
//! them.
//!
//! Per trace × scenario × profile mode: the median ready time over the
//! runs (with its range), the ratio to dedicated-warm of the same trace and
//! mode measured in the same invocation, the request latency p50/p99
//! (medians over runs), bytes the guest read against bytes fetched from
//! the chunk stores, and the prefetched-but-unused bytes (from
//! `ServeStats::prefetch`). The goals of issue 12 are checked against those
//! figures ([`GOALS`]).

use std::time::Duration;

use manifest::report::{FetchEvent, PrefetchStats};
use serde::{Deserialize, Serialize};

use super::{ProfileMode, Sample, Scenario, ScenarioResult, percentile};

/// `format` of a [`ColdstartReport`].
pub const REPORT_FORMAT: &str = "vmm-shim-coldstart";

/// The whole report of one `vmm-shim coldstart` invocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColdstartReport {
    /// Always [`REPORT_FORMAT`].
    pub format: String,
    /// Measured runs per scenario and mode.
    pub runs: usize,
    /// How the probe guest ran (queue depth, completion wait).
    pub probe: String,
    /// The imagefs binary measured.
    pub imagefs: String,
    /// One per trace.
    pub cases: Vec<CaseReport>,
    /// The goals, checked.
    pub goals: Vec<GoalCheck>,
}

/// The results of one trace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaseReport {
    /// Short name (the image tag, e.g. `python`).
    pub name: String,
    /// The image (tag or digest) served.
    pub image: String,
    /// The trace file.
    pub trace: String,
    /// Reads in the trace.
    pub reads: u64,
    /// Bytes the trace reads.
    pub bytes: u64,
    /// One per scenario and mode, in run order.
    pub rows: Vec<RowReport>,
}

/// Median, minimum and maximum over runs, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// Median (nearest rank).
    pub median: f64,
    /// Fastest run.
    pub min: f64,
    /// Slowest run.
    pub max: f64,
}

/// Bytes one tier served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierBytes {
    /// The tier's name in `ServeStats::tiers`.
    pub tier: String,
    /// Bytes it served.
    pub bytes: u64,
}

/// One scenario in one profile mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RowReport {
    /// The scenario's name.
    pub scenario: String,
    /// With or without a start profile (`None`: not an imagefs scenario).
    pub profile: Option<ProfileMode>,
    /// Measured runs.
    pub runs: usize,
    /// Why it did not run.
    pub unavailable: Option<String>,
    /// VM creation (or download start) to the first completed read, ms.
    pub first_ms: Spread,
    /// VM creation (or download start) to the trace's last read, ms.
    pub ready_ms: Spread,
    /// Median ready time over dedicated-warm's of the same trace and mode
    /// (without a profile for the scenarios that have no mode).
    pub vs_dedicated: Option<f64>,
    /// Request latency p50, ms (median over runs).
    pub p50_ms: f64,
    /// Request latency p99, ms (median over runs).
    pub p99_ms: f64,
    /// Bytes the guest read.
    pub bytes_read: u64,
    /// Bytes fetched from the chunk stores (the run with the median ready
    /// time), when known.
    pub fetched_bytes: Option<u64>,
    /// Objects fetched (same run).
    pub fetches: Option<u64>,
    /// What prefetching did (same run).
    pub prefetch: Option<PrefetchStats>,
    /// Prefetched chunks no read used, in bytes: `prefetch.unused` times
    /// the mean fetched object size of the run.
    pub unused_bytes: Option<u64>,
    /// Bytes per tier (same run).
    pub tiers: Vec<TierBytes>,
    /// Every request latency of every run, ms, sorted (the CDF).
    pub latencies_ms: Vec<f64>,
    /// The median run's requests: [submitted, completed], ms since VM
    /// creation (or download start), in trace order (the timeline).
    pub timeline_ms: Vec<[f64; 2]>,
    /// The median run's fetches from the chunk store, in completion
    /// order, µs since `imagefs serve` opened the image (empty when the
    /// scenario does not run imagefs).
    #[serde(default)]
    pub fetch_timeline: Vec<FetchEvent>,
}

impl RowReport {
    /// `unused_bytes` over `fetched_bytes`.
    pub fn unused_fraction(&self) -> Option<f64> {
        let (u, f) = (self.unused_bytes?, self.fetched_bytes?);
        (f > 0).then(|| u as f64 / f as f64)
    }

    /// Name and mode, as the tables and plots show it.
    pub fn label(&self) -> String {
        match self.profile {
            Some(m) => format!("{} ({} profile)", self.scenario, m.name()),
            None => self.scenario.clone(),
        }
    }
}

/// What a goal limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GoalMetric {
    /// Median ready time over dedicated-warm's.
    ReadyVsDedicated,
    /// Prefetched-but-unused bytes over bytes fetched.
    UnusedOverFetched,
}

/// One goal of issue 12: a limit on a metric of a scenario in a mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goal {
    /// The scenario.
    pub scenario: Scenario,
    /// The mode.
    pub profile: ProfileMode,
    /// What is limited.
    pub metric: GoalMetric,
    /// The largest value that meets it.
    pub limit: f64,
}

const fn goal(scenario: Scenario, profile: ProfileMode, metric: GoalMetric, limit: f64) -> Goal {
    Goal {
        scenario,
        profile,
        metric,
        limit,
    }
}

/// Issue 12's goals (median ready time, in one run, against dedicated-warm;
/// prefetched-but-unused bytes against bytes fetched, profile from another
/// run).
pub const GOALS: [Goal; 9] = {
    use GoalMetric::{ReadyVsDedicated as R, UnusedOverFetched as U};
    use ProfileMode::{With as W, Without as N};
    use Scenario::{AzWarm as A, Origin as O, SharedWarm as S};
    [
        goal(O, W, R, 1.5),
        goal(O, N, R, 4.0),
        goal(A, W, R, 1.2),
        goal(A, N, R, 2.0),
        goal(S, W, R, 1.1),
        goal(S, N, R, 1.5),
        goal(O, W, U, 0.25),
        goal(A, W, U, 0.25),
        goal(S, W, U, 0.25),
    ]
};

/// One goal checked on one trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoalCheck {
    /// The trace's name.
    pub case: String,
    /// The scenario.
    pub scenario: String,
    /// The mode.
    pub profile: ProfileMode,
    /// What is limited.
    pub metric: GoalMetric,
    /// The limit.
    pub limit: f64,
    /// The measured value (absent when the scenario did not run).
    pub value: Option<f64>,
    /// Whether the value is within the limit (absent when not measured).
    pub met: Option<bool>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn spread(mut v: Vec<Duration>) -> Spread {
    v.sort();
    match (v.first(), v.last()) {
        (Some(&lo), Some(&hi)) => Spread {
            median: ms(percentile(&v, 0.5)),
            min: ms(lo),
            max: ms(hi),
        },
        _ => Spread::default(),
    }
}

fn row_of(r: &ScenarioResult) -> RowReport {
    let s = &r.samples;
    let mut row = RowReport {
        scenario: r.scenario.name().into(),
        profile: r.profile,
        runs: s.len(),
        unavailable: r.unavailable.clone(),
        ..RowReport::default()
    };
    if s.is_empty() {
        return row;
    }
    let col = |f: fn(&Sample) -> Duration| s.iter().map(f).collect::<Vec<_>>();
    row.first_ms = spread(col(|x| x.first));
    row.ready_ms = spread(col(|x| x.ready));
    row.p50_ms = spread(col(|x| x.p50)).median;
    row.p99_ms = spread(col(|x| x.p99)).median;
    // The run with the median ready time stands for the byte counts.
    let mut by_ready: Vec<&Sample> = s.iter().collect();
    by_ready.sort_by_key(|x| x.ready);
    let mid = by_ready[(by_ready.len() - 1) / 2];
    row.bytes_read = mid.bytes_read;
    row.fetched_bytes = mid.fetched.or(match r.scenario {
        Scenario::DownloadAll => mid.tiers.first().map(|t| t.1),
        _ => None,
    });
    row.fetches = mid.fetches;
    row.prefetch = mid.prefetch.clone();
    row.unused_bytes = match (&mid.prefetch, mid.fetched, mid.fetches) {
        (Some(p), Some(bytes), Some(n)) if n > 0 => Some(p.unused * (bytes / n)),
        (Some(_), _, _) => Some(0),
        _ => None,
    };
    row.tiers = mid
        .tiers
        .iter()
        .map(|(tier, bytes)| TierBytes {
            tier: tier.clone(),
            bytes: *bytes,
        })
        .collect();
    let mut lat: Vec<f64> = s
        .iter()
        .flat_map(|x| x.requests.iter().map(|(a, b)| ms(b.saturating_sub(*a))))
        .collect();
    lat.sort_by(f64::total_cmp);
    row.latencies_ms = lat;
    row.timeline_ms = mid.requests.iter().map(|(a, b)| [ms(*a), ms(*b)]).collect();
    row.fetch_timeline = mid
        .fetch_log
        .as_ref()
        .map(|l| l.events.clone())
        .unwrap_or_default();
    row
}

impl CaseReport {
    /// The report of one trace's results (ratios filled in).
    pub fn from_results(name: &str, image: &str, results: &[ScenarioResult]) -> Self {
        let mut rows: Vec<RowReport> = results.iter().map(row_of).collect();
        let dedicated = |mode: ProfileMode| {
            rows.iter()
                .find(|r| {
                    r.scenario == Scenario::DedicatedWarm.name()
                        && r.profile == Some(mode)
                        && r.runs > 0
                })
                .map(|r| r.ready_ms.median)
        };
        let base: Vec<(ProfileMode, Option<f64>)> = ProfileMode::ALL
            .iter()
            .map(|&m| (m, dedicated(m)))
            .collect();
        for r in &mut rows {
            let mode = r.profile.unwrap_or(ProfileMode::Without);
            let b = base.iter().find(|(m, _)| *m == mode).and_then(|x| x.1);
            r.vs_dedicated = match b {
                Some(b) if r.runs > 0 && b > 0.0 => Some(r.ready_ms.median / b),
                _ => None,
            };
        }
        let first = results.iter().find_map(|r| r.samples.first());
        Self {
            name: name.into(),
            image: image.into(),
            trace: String::new(),
            reads: first.map_or(0, |s| s.requests.len() as u64),
            bytes: first.map_or(0, |s| s.bytes_read),
            rows,
        }
    }

    /// The row of a scenario in a mode.
    pub fn row(&self, sc: Scenario, mode: Option<ProfileMode>) -> Option<&RowReport> {
        self.rows
            .iter()
            .find(|r| r.scenario == sc.name() && r.profile == mode)
    }

    /// The goals checked on this trace.
    pub fn goals(&self) -> Vec<GoalCheck> {
        GOALS
            .iter()
            .map(|g| {
                let row = self.row(g.scenario, Some(g.profile)).filter(|r| r.runs > 0);
                let value = row.and_then(|r| match g.metric {
                    GoalMetric::ReadyVsDedicated => r.vs_dedicated,
                    GoalMetric::UnusedOverFetched => r.unused_fraction(),
                });
                GoalCheck {
                    case: self.name.clone(),
                    scenario: g.scenario.name().into(),
                    profile: g.profile,
                    metric: g.metric,
                    limit: g.limit,
                    value,
                    met: value.map(|v| v <= g.limit),
                }
            })
            .collect()
    }

    /// The table of this trace.
    pub fn render(&self) -> String {
        // The longest scenario name (az-replicated-1-stopped) sets the
        // first column's width.
        let w = self
            .rows
            .iter()
            .map(|r| r.scenario.len())
            .max()
            .unwrap_or(0)
            .max(15);
        let mut out = format!(
            "{:<w$} {:>7} {:>4} {:>24} {:>8} {:>8} {:>8} {:>8} {:>9} {:>7} {:>16}  {}\n",
            "scenario",
            "profile",
            "runs",
            "ready ms med [min-max]",
            "vs ded",
            "p50 ms",
            "p99 ms",
            "read MB",
            "fetch MB",
            "amplif",
            "unused MB (%)",
            "bytes by tier (median run)"
        );
        let mb = |b: u64| b as f64 / 1e6;
        for r in &self.rows {
            let mode = r.profile.map_or("-", ProfileMode::name);
            if let Some(why) = &r.unavailable {
                let why = why
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" | ");
                out.push_str(&format!("{:<w$} {mode:>7} not run: {why}\n", r.scenario));
                continue;
            }
            let ready = format!(
                "{:.1} [{:.1}-{:.1}]",
                r.ready_ms.median, r.ready_ms.min, r.ready_ms.max
            );
            let vs = r.vs_dedicated.map_or("-".into(), |v| format!("{v:.2}x"));
            let (fetched, amp) = match r.fetched_bytes {
                Some(f) => (
                    format!("{:.2}", mb(f)),
                    format!("{:.2}", f as f64 / r.bytes_read.max(1) as f64),
                ),
                None => ("-".into(), "-".into()),
            };
            let unused = match (r.unused_bytes, r.unused_fraction()) {
                (Some(u), Some(f)) => format!("{:.2} ({:.0}%)", mb(u), f * 100.0),
                (Some(u), None) => format!("{:.2}", mb(u)),
                _ => "-".into(),
            };
            let tiers = r
                .tiers
                .iter()
                .map(|t| format!("{}={}", t.tier, t.bytes))
                .collect::<Vec<_>>()
                .join(" ");
            out.push_str(&format!(
                "{:<w$} {mode:>7} {:>4} {ready:>24} {vs:>8} {:>8.3} {:>8.2} {:>8.2} {fetched:>9} {amp:>7} {unused:>16}  {tiers}\n",
                r.scenario,
                r.runs,
                r.p50_ms,
                r.p99_ms,
                mb(r.bytes_read),
            ));
        }
        let ready = |sc| {
            self.row(sc, None)
                .or(self.row(sc, Some(ProfileMode::Without)))
        };
        if let (Some(q), Some(d)) = (ready(Scenario::Qsd), ready(Scenario::DedicatedWarm))
            && q.runs > 0
            && d.runs > 0
        {
            out.push_str(&format!(
                "backend comparison (median ready): qemu-storage-daemon {:.2} ms, imagefs serve dedicated-warm {:.2} ms: ratio {:.3}x (goal >= 0.95x)\n",
                q.ready_ms.median,
                d.ready_ms.median,
                q.ready_ms.median / d.ready_ms.median.max(1e-9)
            ));
        }
        out
    }
}

/// The goals table.
pub fn render_goals(goals: &[GoalCheck]) -> String {
    let mut out = format!(
        "{:<8} {:<13} {:<8} {:<24} {:>8} {:>9}  {}\n",
        "trace", "scenario", "profile", "metric", "goal", "measured", "result"
    );
    for g in goals {
        let (metric, fmt): (&str, fn(f64) -> String) = match g.metric {
            GoalMetric::ReadyVsDedicated => ("ready / dedicated-warm", |v| format!("{v:.2}x")),
            GoalMetric::UnusedOverFetched => {
                ("unused / fetched bytes", |v| format!("{:.0}%", v * 100.0))
            }
        };
        out.push_str(&format!(
            "{:<8} {:<13} {:<8} {:<24} {:>8} {:>9}  {}\n",
            g.case,
            g.scenario,
            g.profile.name(),
            metric,
            format!("<= {}", fmt(g.limit)),
            g.value.map_or("-".into(), fmt),
            match g.met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "not measured",
            }
        ));
    }
    out
}

impl ColdstartReport {
    /// A report of these traces' reports, with the goals checked.
    pub fn new(runs: usize, probe: String, imagefs: String, cases: Vec<CaseReport>) -> Self {
        let goals = cases.iter().flat_map(CaseReport::goals).collect();
        Self {
            format: REPORT_FORMAT.into(),
            runs,
            probe,
            imagefs,
            cases,
            goals,
        }
    }

    /// Every table: one per trace, then the goals.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for c in &self.cases {
            out.push_str(&format!(
                "\ntrace {} ({}): image {}, {} reads, {:.2} MB; {} runs per row; probe {}\n",
                c.name,
                c.trace,
                c.image,
                c.reads,
                c.bytes as f64 / 1e6,
                self.runs,
                self.probe
            ));
            out.push_str(&c.render());
        }
        out.push_str("\ngoals (issue 12; ratios against dedicated-warm of the same trace and mode, this run)\n");
        out.push_str(&render_goals(&self.goals));
        out
    }
}
