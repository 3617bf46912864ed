//! The cold-start harness: one trace replayed by the probe guest in a fresh
//! KVM microVM against `imagefs serve`, with the caches prepared for each
//! scenario, and against the reference backend (qemu-storage-daemon serving
//! the exported raw image).
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
//!   cache warm): the backend comparison's reference.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use manifest::report::ServeStats;

use crate::backend::BackendProcess;
use crate::error::{Error, Result};
use crate::probe::{Params, TraceEntry};
use crate::run::{ProbeRun, RunConfig, run_probe};

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

    /// The scenario's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Origin => "origin",
            Scenario::AzWarm => "az-warm",
            Scenario::SharedWarm => "shared-warm",
            Scenario::DedicatedWarm => "dedicated-warm",
            Scenario::DownloadAll => "download-all",
            Scenario::Qsd => "qsd",
        }
    }
}

/// What to measure.
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
    /// The whole report of `imagefs serve`, for imagefs scenarios.
    pub serve: Option<ServeStats>,
}

/// All runs of one scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    /// Which.
    pub scenario: Scenario,
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
    Sample {
        first: extra + run.to_first_completion(),
        ready: extra + run.to_ready(),
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        bytes_read: run.bytes_read(),
        tiers: Vec::new(),
        fetched: None,
        serve: None,
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

struct Harness<'a> {
    cfg: &'a ColdstartConfig,
    counter: usize,
}

impl Harness<'_> {
    fn fresh_dir(&mut self, what: &str) -> Result<PathBuf> {
        self.counter += 1;
        let d = self.cfg.work.join(format!("{what}-{}", self.counter));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).map_err(|source| Error::Io {
            path: d.clone(),
            source,
        })?;
        Ok(d)
    }

    fn imagefs(&self) -> Command {
        let mut c = Command::new(&self.cfg.imagefs);
        c.env("RUST_BACKTRACE", "0");
        c
    }

    fn store_args(&self, c: &mut Command) {
        c.arg("--store").arg(&self.cfg.store);
        if let Some(k) = &self.cfg.keys {
            c.arg("--keys").arg(k);
        }
    }

    /// Starts `imagefs serve` with the given tiers, runs the trace, waits
    /// for the daemon to exit and reads its statistics.
    fn serve_run(
        &mut self,
        dedicated: &Path,
        shared: Option<&Path>,
        az: Option<&str>,
    ) -> Result<Sample> {
        let sock_dir = self.fresh_dir("sock")?;
        let sock = sock_dir.join("serve.sock");
        let report = sock_dir.join("serve-stats.json");
        let mut c = self.imagefs();
        c.arg("serve")
            .arg(&self.cfg.image)
            .arg("--socket")
            .arg(&sock);
        self.store_args(&mut c);
        c.arg("--dedicated")
            .arg(dedicated)
            .arg("--stats-json")
            .arg(&report);
        if let Some(s) = shared {
            c.arg("--shared").arg(s).arg("--shared-capacity").arg("8G");
        }
        if let Some(u) = az {
            c.arg("--az-node").arg(u);
        }
        let mut serve = BackendProcess::spawn(c, "imagefs serve", &sock)?;
        let run = self.probe(&sock);
        let exited = serve.wait_exit(Duration::from_secs(30));
        let log = serve.log();
        let run = run.map_err(|e| Error::Process {
            program: "imagefs serve".into(),
            reason: format!("{e}; its log: {}", tail(&log, 8)),
        })?;
        let mut s = sample_of(&run, Duration::ZERO);
        if !exited {
            return Err(Error::Process {
                program: "imagefs serve".into(),
                reason: format!(
                    "did not exit after the VM disconnected; log: {}",
                    tail(&log, 8)
                ),
            });
        }
        let stats = read_serve_stats(&report)?;
        let (tiers, fetched) = tier_bytes(&stats);
        s.tiers = tiers;
        s.fetched = fetched;
        s.serve = Some(stats);
        Ok(s)
    }

    fn probe(&self, sock: &Path) -> Result<ProbeRun> {
        let cfg = RunConfig {
            params: self.cfg.params.clone(),
            timeout: self.cfg.timeout,
            ..RunConfig::new(sock.to_path_buf(), self.cfg.trace.clone())
        };
        run_probe(&cfg)
    }

    fn export(&mut self) -> Result<(PathBuf, Duration)> {
        let out = self.fresh_dir("export")?.join("image.raw");
        let mut c = self.imagefs();
        c.arg("export").arg(&self.cfg.image).arg("-o").arg(&out);
        self.store_args(&mut c);
        let start = Instant::now();
        let o = c.output().map_err(|e| Error::Process {
            program: "imagefs export".into(),
            reason: format!("cannot start {}: {e}", self.cfg.imagefs.display()),
        })?;
        let took = start.elapsed();
        if !o.status.success() {
            return Err(Error::Process {
                program: "imagefs export".into(),
                reason: format!(
                    "{}: {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            });
        }
        Ok((out, took))
    }

    fn qsd_run(&mut self, raw: &Path, extra: Duration) -> Result<Sample> {
        let sock = self.fresh_dir("sock")?.join("qsd.sock");
        let qsd = BackendProcess::qemu_storage_daemon(raw, &sock)?;
        let run = self.probe(&sock)?;
        drop(qsd);
        let mut s = sample_of(&run, extra);
        let allocated = allocated_bytes(raw);
        s.tiers = vec![("raw-file-allocated".into(), allocated)];
        Ok(s)
    }

    fn scenario(&mut self, sc: Scenario) -> Result<Vec<Sample>> {
        let runs = self.cfg.runs.max(1);
        let mut out = Vec::with_capacity(runs);
        match sc {
            Scenario::Origin => {
                for _ in 0..runs {
                    let d = self.fresh_dir("dedicated")?;
                    let sh = self.fresh_dir("shared")?;
                    out.push(self.serve_run(&d, Some(&sh), None)?);
                }
            }
            Scenario::SharedWarm => {
                for _ in 0..runs {
                    let sh = self.fresh_dir("shared")?;
                    let d = self.fresh_dir("dedicated")?;
                    self.serve_run(&d, Some(&sh), None)?;
                    let d = self.fresh_dir("dedicated")?;
                    out.push(self.serve_run(&d, Some(&sh), None)?);
                }
            }
            Scenario::DedicatedWarm => {
                for _ in 0..runs {
                    let d = self.fresh_dir("dedicated")?;
                    let sh = self.fresh_dir("shared")?;
                    self.serve_run(&d, Some(&sh), None)?;
                    let sh = self.fresh_dir("shared")?;
                    out.push(self.serve_run(&d, Some(&sh), None)?);
                }
            }
            Scenario::AzWarm => {
                let node = self.start_cache_node()?;
                let url = node.1.clone();
                let d = self.fresh_dir("dedicated")?;
                let sh = self.fresh_dir("shared")?;
                self.serve_run(&d, Some(&sh), Some(&url))?;
                for _ in 0..runs {
                    let d = self.fresh_dir("dedicated")?;
                    let sh = self.fresh_dir("shared")?;
                    out.push(self.serve_run(&d, Some(&sh), Some(&url))?);
                }
                drop(node);
            }
            Scenario::DownloadAll => {
                for _ in 0..runs {
                    let (raw, took) = self.export()?;
                    out.push(self.qsd_run(&raw, took)?);
                    let _ = std::fs::remove_file(&raw);
                }
            }
            Scenario::Qsd => {
                let raw = match &self.cfg.raw {
                    Some(r) => r.clone(),
                    None => self.export()?.0,
                };
                for _ in 0..runs {
                    out.push(self.qsd_run(&raw, Duration::ZERO)?);
                }
            }
        }
        Ok(out)
    }

    /// Starts `imagefs cache-node` on a free loopback port over the origin.
    fn start_cache_node(&mut self) -> Result<(BackendProcess, String)> {
        let data = self.fresh_dir("az")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|source| Error::Host {
                what: "pick a free port",
                source,
            })?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut c = self.imagefs();
        c.arg("cache-node")
            .arg("--listen")
            .arg(&addr)
            .arg("--data")
            .arg(&data)
            .arg("--capacity")
            .arg("8G")
            .arg("--origin")
            .arg(&self.cfg.store);
        // The node is "ready" when its port accepts; BackendProcess waits on
        // a Unix socket, so use a marker path that never appears and poll TCP.
        let marker = data.join("unused.sock");
        let node = BackendProcess::spawn_tcp(c, "imagefs cache-node", &marker, &addr)?;
        Ok((node, format!("http://{addr}")))
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// Runs every scenario; a scenario that cannot run is reported, not fatal.
pub fn run(cfg: &ColdstartConfig) -> Result<Vec<ScenarioResult>> {
    std::fs::create_dir_all(&cfg.work).map_err(|source| Error::Io {
        path: cfg.work.clone(),
        source,
    })?;
    let mut h = Harness { cfg, counter: 0 };
    let mut results = Vec::new();
    for &sc in &cfg.scenarios {
        eprintln!("coldstart: scenario {} ({} runs)", sc.name(), cfg.runs);
        match h.scenario(sc) {
            Ok(samples) => results.push(ScenarioResult {
                scenario: sc,
                samples,
                unavailable: None,
            }),
            Err(e) => {
                eprintln!("coldstart: scenario {} failed: {e}", sc.name());
                results.push(ScenarioResult {
                    scenario: sc,
                    samples: Vec::new(),
                    unavailable: Some(e.to_string()),
                });
            }
        }
    }
    Ok(results)
}

fn med_spread(v: &[Duration]) -> String {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return "-".into();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:.2} [{:.2}-{:.2}]",
        ms(percentile(&v, 0.5)),
        ms(v[0]),
        ms(v[v.len() - 1])
    )
}

/// The report table (times in ms: median [min-max] over runs).
pub fn render(results: &[ScenarioResult]) -> String {
    let mut out = format!(
        "{:<15} {:>4} {:>26} {:>26} {:>9} {:>9} {:>10} {:>11} {:>7}  {}\n",
        "scenario",
        "runs",
        "first read ms",
        "ready ms",
        "p50 ms",
        "p99 ms",
        "read MB",
        "fetched MB",
        "amplif",
        "bytes by tier (median run)"
    );
    for r in results {
        if let Some(why) = &r.unavailable {
            let why = why
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" | ");
            out.push_str(&format!("{:<15} not run: {why}\n", r.scenario.name()));
            continue;
        }
        let s = &r.samples;
        let col = |f: fn(&Sample) -> Duration| s.iter().map(f).collect::<Vec<_>>();
        let med = |f: fn(&Sample) -> Duration| {
            let mut v = col(f);
            v.sort();
            percentile(&v, 0.5).as_secs_f64() * 1e3
        };
        // The run with the median ready time stands for the byte counts.
        let mut by_ready: Vec<&Sample> = s.iter().collect();
        by_ready.sort_by_key(|x| x.ready);
        let mid = by_ready[(by_ready.len() - 1) / 2];
        let read = mid.bytes_read as f64 / 1e6;
        let fetched = mid.fetched.or(match r.scenario {
            Scenario::DownloadAll => mid.tiers.first().map(|t| t.1),
            _ => None,
        });
        let (fetched_s, amp) = match fetched {
            Some(f) => (
                format!("{:.2}", f as f64 / 1e6),
                format!("{:.2}", f as f64 / mid.bytes_read.max(1) as f64),
            ),
            None => ("-".into(), "-".into()),
        };
        let tiers = mid
            .tiers
            .iter()
            .map(|(n, b)| format!("{n}={b}"))
            .collect::<Vec<_>>()
            .join(" ");
        out.push_str(&format!(
            "{:<15} {:>4} {:>26} {:>26} {:>9.3} {:>9.3} {:>10.2} {:>11} {:>7}  {}\n",
            r.scenario.name(),
            s.len(),
            med_spread(&col(|x| x.first)),
            med_spread(&col(|x| x.ready)),
            med(|x| x.p50),
            med(|x| x.p99),
            read,
            fetched_s,
            amp,
            tiers
        ));
    }
    let ready = |sc: Scenario| {
        results
            .iter()
            .find(|r| r.scenario == sc && r.unavailable.is_none() && !r.samples.is_empty())
            .map(|r| {
                let mut v: Vec<Duration> = r.samples.iter().map(|x| x.ready).collect();
                v.sort();
                percentile(&v, 0.5)
            })
    };
    if let (Some(q), Some(d)) = (ready(Scenario::Qsd), ready(Scenario::DedicatedWarm)) {
        out.push_str(&format!(
            "backend comparison (median ready): qemu-storage-daemon {:.2} ms, imagefs serve dedicated-warm {:.2} ms: ratio {:.3}x (goal >= 0.95x)\n",
            q.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e3,
            q.as_secs_f64() / d.as_secs_f64().max(1e-9)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_serve_stats() {
        let mut stats = ServeStats::default();
        for (tier, bytes) in [("shared", 1_572_864), ("origin", 2_621_440)] {
            stats.tiers.tiers.push(manifest::report::TierSnapshot {
                tier: tier.into(),
                hits: 1,
                misses: 0,
                bytes,
                verification_failures: 0,
                errors: 0,
                fills: 0,
                fill_failures: 0,
                latency_buckets: vec![1],
                latency_sum_seconds: 0.0,
                last_error: None,
            });
        }
        stats.reader.store_bytes = 4_194_304;
        let text = serde_json::to_string(&stats).unwrap();
        let (tiers, fetched) = tier_bytes(&serde_json::from_str(&text).unwrap());
        assert_eq!(
            tiers,
            vec![
                ("shared".to_owned(), 1_572_864),
                ("origin".to_owned(), 2_621_440)
            ]
        );
        assert_eq!(fetched, Some(4_194_304));
    }

    #[test]
    fn percentiles_of_no_samples_are_zero() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
