//! Running the scenarios: the processes (`imagefs serve`, `cache-node`,
//! `export`, `profile`, qemu-storage-daemon) and the probe runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use manifest::profile::ProfileReport;

use super::fleet::{Fleet, free_port};
use super::{
    ColdstartConfig, ProfileMode, Sample, Scenario, ScenarioResult, read_serve_stats, sample_of,
    tier_bytes,
};
use crate::backend::{BackendProcess, stdout_of};
use crate::error::{Error, Result};
use crate::run::{ProbeRun, RunConfig, run_probe};

/// How one `imagefs serve` run is set up.
struct Serve<'p> {
    dedicated: &'p Path,
    shared: Option<&'p Path>,
    az: Option<&'p str>,
    /// `--config FILE`: the AZ fleet's tier configuration.
    config: Option<&'p Path>,
    /// `--prefetch auto` (else `off`).
    prefetch: bool,
    /// `--record-profile`: store this start's profile at exit.
    record_profile: bool,
}

/// The AZ tier of a run: one cache node (`--az-node`) or a fleet's
/// configuration (`--config`), or neither.
#[derive(Debug, Clone, Copy, Default)]
struct Az<'p> {
    node: Option<&'p str>,
    config: Option<&'p Path>,
}

struct Harness<'a> {
    cfg: &'a ColdstartConfig,
    counter: usize,
    /// The directories made so far and not yet removed: each run's tiers
    /// take tens of megabytes, and a long invocation used to fill the disk.
    made: Vec<PathBuf>,
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
        self.made.push(d.clone());
        Ok(d)
    }

    /// Removes the directories made since `mark` (a length of `made`).
    fn remove_since(&mut self, mark: usize) {
        for d in self.made.drain(mark.min(self.made.len())..) {
            let _ = std::fs::remove_dir_all(d);
        }
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

    /// Runs an `imagefs` command to its end; its stdout.
    fn imagefs_output(&self, args: &[&str], what: &str) -> Result<Vec<u8>> {
        let mut c = self.imagefs();
        c.args(args);
        self.store_args(&mut c);
        stdout_of(c, what)
    }

    /// Starts `imagefs serve` with the given tiers, runs the trace, waits
    /// for the daemon to exit and reads its statistics.
    fn serve_run(&mut self, s: &Serve<'_>) -> Result<Sample> {
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
            .arg(s.dedicated)
            .arg("--stats-json")
            .arg(&report)
            .arg("--record-fetches")
            .arg("--prefetch")
            .arg(if s.prefetch { "auto" } else { "off" });
        if s.record_profile {
            c.arg("--record-profile");
        }
        if let Some(n) = self.cfg.readahead {
            c.arg("--readahead").arg(n.to_string());
        }
        if let Some(n) = self.cfg.prefetch_concurrency {
            c.arg("--prefetch-concurrency").arg(n.to_string());
        }
        if let Some(sh) = s.shared {
            c.arg("--shared").arg(sh).arg("--shared-capacity").arg("8G");
        }
        if let Some(u) = s.az {
            c.arg("--az-node").arg(u);
        }
        if let Some(f) = s.config {
            c.arg("--config").arg(f);
        }
        let mut serve = BackendProcess::spawn(c, "imagefs serve", &sock)?;
        let run = self.probe(&sock);
        let exited = serve.wait_exit(Duration::from_secs(30));
        let log = serve.log();
        let run = run.map_err(|e| {
            Error::process("imagefs serve", format!("{e}; its log: {}", tail(&log, 8)))
        })?;
        let mut sample = sample_of(&run, Duration::ZERO);
        if !exited {
            return Err(Error::process(
                "imagefs serve",
                format!(
                    "did not exit after the VM disconnected; log: {}",
                    tail(&log, 8)
                ),
            ));
        }
        let stats = read_serve_stats(&report)?;
        let (tiers, fetched) = tier_bytes(&stats);
        sample.tiers = tiers;
        sample.fetched = fetched;
        sample.fetches = Some(stats.reader.store_fetches);
        sample.prefetch = stats.prefetch;
        sample.fetch_log = stats.fetches;
        Ok(sample)
    }

    fn probe(&self, sock: &Path) -> Result<ProbeRun> {
        let cfg = RunConfig {
            params: self.cfg.params.clone(),
            timeout: self.cfg.timeout,
            ..RunConfig::new(sock.to_path_buf(), self.cfg.trace.clone())
        };
        run_probe(&cfg)
    }

    /// Records the image's start profile in an unmeasured run on cold
    /// tiers (after dropping any stored one) and returns how many chunks
    /// it names (`imagefs profile show --json`).
    fn record_profile(&mut self) -> Result<u64> {
        // Best effort: it fails when there is none, and the recording
        // replaces any stored profile anyway.
        let _ = self.imagefs_output(&["profile", "rm", &self.cfg.image], "imagefs profile rm");
        let d = self.fresh_dir("dedicated")?;
        let sh = self.fresh_dir("shared")?;
        self.serve_run(&Serve {
            dedicated: &d,
            shared: Some(&sh),
            az: None,
            config: None,
            prefetch: false,
            record_profile: true,
        })?;
        let out = self.imagefs_output(
            &["profile", "show", &self.cfg.image, "--json"],
            "imagefs profile show",
        )?;
        let report: ProfileReport = serde_json::from_slice(&out)
            .map_err(|e| Error::process("imagefs profile show", format!("its JSON report: {e}")))?;
        Ok(report.chunks)
    }

    fn export(&mut self) -> Result<(PathBuf, Duration)> {
        let out = self.fresh_dir("export")?.join("image.raw");
        let out_s = out.display().to_string();
        let start = Instant::now();
        self.imagefs_output(&["export", &self.cfg.image, "-o", &out_s], "imagefs export")?;
        Ok((out, start.elapsed()))
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

    /// A cache-preparing run: `--prefetch off`, not measured.
    fn prime(&mut self, d: &Path, sh: &Path, az: Az<'_>) -> Result<()> {
        self.serve_run(&Serve {
            dedicated: d,
            shared: Some(sh),
            az: az.node,
            config: az.config,
            prefetch: false,
            record_profile: false,
        })
        .map(drop)
    }

    /// The measured runs of one imagefs scenario in one mode (`az` is the
    /// primed cache node of `az-warm`, or the fleet of the fleet
    /// scenarios).
    fn serve_scenario(
        &mut self,
        sc: Scenario,
        mode: ProfileMode,
        az: Az<'_>,
    ) -> Result<Vec<Sample>> {
        let runs = self.cfg.runs.max(1);
        let mut out = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mark = self.made.len();
            let mut d = self.fresh_dir("dedicated")?;
            let mut sh = self.fresh_dir("shared")?;
            match sc {
                Scenario::SharedWarm => {
                    self.prime(&d, &sh, Az::default())?;
                    d = self.fresh_dir("dedicated")?;
                }
                Scenario::DedicatedWarm => {
                    self.prime(&d, &sh, Az::default())?;
                    sh = self.fresh_dir("shared")?;
                }
                _ => {}
            }
            let sample = self.serve_run(&Serve {
                dedicated: &d,
                shared: Some(&sh),
                az: az.node,
                config: az.config,
                prefetch: mode == ProfileMode::With,
                record_profile: false,
            });
            self.remove_since(mark);
            out.push(sample?);
        }
        Ok(out)
    }

    fn plain_scenario(&mut self, sc: Scenario) -> Result<Vec<Sample>> {
        let runs = self.cfg.runs.max(1);
        let mut out = Vec::with_capacity(runs);
        if sc == Scenario::DownloadAll {
            for _ in 0..runs {
                let (raw, took) = self.export()?;
                out.push(self.qsd_run(&raw, took)?);
                let _ = std::fs::remove_file(&raw);
            }
        } else {
            let raw = match &self.cfg.raw {
                Some(r) => r.clone(),
                None => self.export()?.0,
            };
            for _ in 0..runs {
                out.push(self.qsd_run(&raw, Duration::ZERO)?);
            }
        }
        Ok(out)
    }

    /// Starts `imagefs cache-node` on a free loopback port over the origin
    /// and primes it with one (unmeasured) run of the trace.
    fn primed_cache_node(&mut self) -> Result<(BackendProcess, String)> {
        let data = self.fresh_dir("az")?;
        let addr = format!("127.0.0.1:{}", free_port()?);
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
        let url = format!("http://{addr}");
        let d = self.fresh_dir("dedicated")?;
        let sh = self.fresh_dir("shared")?;
        self.prime(
            &d,
            &sh,
            Az {
                node: Some(&url),
                config: None,
            },
        )?;
        Ok((node, url))
    }

    /// Starts a fleet of cache nodes in the scenario's mode, primes it with
    /// one (unmeasured) run of the trace, then stops one node if the
    /// scenario asks.
    fn primed_fleet(&mut self, sc: Scenario) -> Result<Option<Fleet>> {
        let Some((mode, stopped)) = sc.fleet() else {
            return Ok(None);
        };
        let dir = self.fresh_dir("fleet")?;
        let fleet = Fleet::start(&self.cfg.imagefs, &self.cfg.store, &dir, mode)?;
        let d = self.fresh_dir("dedicated")?;
        let sh = self.fresh_dir("shared")?;
        self.prime(
            &d,
            &sh,
            Az {
                node: None,
                config: Some(&fleet.config),
            },
        )?;
        if stopped {
            fleet.stop(0)?;
        }
        Ok(Some(fleet))
    }

    /// One scenario in every mode asked for; the results in report order.
    fn scenario(&mut self, sc: Scenario, modes: &[ProfileMode]) -> Vec<ScenarioResult> {
        let mark = self.made.len();
        let results = self.scenario_runs(sc, modes);
        // The cache node (az-warm) has stopped: its data goes too.
        self.remove_since(mark);
        results
    }

    fn scenario_runs(&mut self, sc: Scenario, modes: &[ProfileMode]) -> Vec<ScenarioResult> {
        if !sc.serves() {
            return vec![result(sc, None, self.plain_scenario(sc))];
        }
        let unavailable = |e: Error| {
            let why = e.to_string();
            modes
                .iter()
                .map(|&m| result(sc, Some(m), Err(Error::process(sc.name(), why.clone()))))
                .collect()
        };
        let node = if sc == Scenario::AzWarm {
            match self.primed_cache_node() {
                Ok(n) => Some(n),
                Err(e) => return unavailable(e),
            }
        } else {
            None
        };
        let fleet = match self.primed_fleet(sc) {
            Ok(f) => f,
            Err(e) => return unavailable(e),
        };
        let url = node.as_ref().map(|n| n.1.clone());
        let config = fleet.as_ref().map(|f| f.config.clone());
        modes
            .iter()
            .map(|&m| {
                eprintln!(
                    "coldstart: {} {} profile ({} runs)",
                    sc.name(),
                    m.name(),
                    self.cfg.runs
                );
                let az = Az {
                    node: url.as_deref(),
                    config: config.as_deref(),
                };
                result(sc, Some(m), self.serve_scenario(sc, m, az))
            })
            .collect()
    }
}

fn result(sc: Scenario, profile: Option<ProfileMode>, r: Result<Vec<Sample>>) -> ScenarioResult {
    match r {
        Ok(samples) => ScenarioResult {
            scenario: sc,
            profile,
            samples,
            unavailable: None,
        },
        Err(e) => {
            eprintln!("coldstart: scenario {} failed: {e}", sc.name());
            ScenarioResult {
                scenario: sc,
                profile,
                samples: Vec::new(),
                unavailable: Some(e.to_string()),
            }
        }
    }
}

pub(super) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// See [`super::run`].
pub(super) fn run(cfg: &ColdstartConfig) -> Result<Vec<ScenarioResult>> {
    std::fs::create_dir_all(&cfg.work).map_err(|source| Error::Io {
        path: cfg.work.clone(),
        source,
    })?;
    let mut h = Harness {
        cfg,
        counter: 0,
        made: Vec::new(),
    };
    let mut modes = cfg.profiles.clone();
    modes.sort();
    modes.dedup();
    if modes.is_empty() {
        modes = ProfileMode::ALL.to_vec();
    }
    let serving = cfg.scenarios.iter().any(|s| s.serves());
    if serving && modes.contains(&ProfileMode::With) {
        eprintln!(
            "coldstart: recording the start profile of {} (unmeasured run)",
            cfg.image
        );
        let recorded = h.record_profile();
        h.remove_since(0);
        match recorded {
            Ok(chunks) => eprintln!("coldstart: profile of {} names {chunks} chunks", cfg.image),
            Err(e) => {
                eprintln!("coldstart: no profile recorded: {e}");
                modes.retain(|&m| m != ProfileMode::With);
                let mut out: Vec<ScenarioResult> = Vec::new();
                for &sc in &cfg.scenarios {
                    if sc.serves() {
                        out.push(result(
                            sc,
                            Some(ProfileMode::With),
                            Err(Error::process("record-profile", e.to_string())),
                        ));
                    }
                }
                let mut rest = run_modes(&mut h, &modes);
                rest.append(&mut out);
                return Ok(rest);
            }
        }
    }
    Ok(run_modes(&mut h, &modes))
}

fn run_modes(h: &mut Harness<'_>, modes: &[ProfileMode]) -> Vec<ScenarioResult> {
    let mut results = Vec::new();
    for &sc in &h.cfg.scenarios {
        eprintln!("coldstart: scenario {} ({} runs)", sc.name(), h.cfg.runs);
        results.extend(h.scenario(sc, modes));
    }
    results
}
