//! Concurrent cold starts (issue 13): N probe VMs start at the same moment,
//! each replaying the same trace against its own vhost-user socket on the
//! same image, from cold tiers, served either by one `imagefs agent` (one
//! host-wide single-flight and origin client) or by N separate `imagefs
//! serve` processes.
//!
//! Each round (one run of one mode at one N) starts from nothing: a fresh
//! directory with the agent's API socket, run dir and state file (or the
//! serves' sockets and reports) and one empty dedicated directory per VM.
//! No mode has a shared local tier except `agent-shared`, which gives its
//! agent an empty one: without one, a chunk that one VM fetched is in no
//! cache another VM can read, so only fetches that overlap in time are
//! shared; with one (how the agent is deployed), a later miss finds it
//! there.
//!
//! Every daemon runs with `--prefetch auto` semantics (the agent always
//! prefetches a stored start profile; the serves are asked to), so the
//! modes differ only in how they are served; the report counts the VMs
//! whose prefetch ran.
//!
//! [`report`] turns the rounds into the serde report and its table.

pub mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Barrier;
use std::time::Duration;

use manifest::agent::{HostTiers, VmInfo};
use manifest::report::{ServeStats, TiersReport};

use crate::backend::{BackendProcess, stdout_of};
use crate::error::{Error, Result};
use crate::probe::{Params, TraceEntry};
use crate::run::{RunConfig, run_probe};

/// The origin tier's name in a [`TiersReport`].
const ORIGIN_TIER: &str = "origin";

/// How the N VMs are served.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One `imagefs agent`, no shared local tier.
    #[default]
    Agent,
    /// One `imagefs agent` with an empty shared local tier.
    AgentShared,
    /// N `imagefs serve` processes, no shared local tier.
    Serve,
}

impl Mode {
    /// The modes `vmm-shim concurrent` runs by default, in report order.
    pub const ALL: [Mode; 3] = [Mode::Agent, Mode::AgentShared, Mode::Serve];

    /// The mode's name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Agent => "agent",
            Mode::AgentShared => "agent-shared",
            Mode::Serve => "serve",
        }
    }

    /// Whether one agent serves every VM.
    pub fn is_agent(self) -> bool {
        !matches!(self, Mode::Serve)
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct ConcurrentConfig {
    /// The `imagefs` binary.
    pub imagefs: PathBuf,
    /// sha256:DIGEST or a tag.
    pub image: String,
    /// The origin (`--store` of imagefs).
    pub store: String,
    /// The key directory, when not imagefs's default.
    pub keys: Option<PathBuf>,
    /// The reads every probe replays.
    pub trace: Vec<TraceEntry>,
    /// VMs started at once, one cell each.
    pub counts: Vec<usize>,
    /// Modes, one cell per N each.
    pub modes: Vec<Mode>,
    /// Rounds per cell.
    pub runs: usize,
    /// Scratch directory (sockets, tiers).
    pub work: PathBuf,
    /// `--readahead N` (chunks) of every daemon, when not imagefs's
    /// default (tests that count origin bytes set 0: read-ahead depends on
    /// timing).
    pub readahead: Option<usize>,
    /// Probe parameters.
    pub params: Params,
    /// Watchdog limit per VM run.
    pub timeout: Duration,
}

/// One VM of one round.
#[derive(Debug, Clone, Default)]
pub struct VmSample {
    /// VM creation to the last read of the trace.
    pub ready: Duration,
    /// Bytes the guest read.
    pub bytes_read: u64,
    /// Whether its start-profile prefetch ran.
    pub prefetched: bool,
}

/// One round: N VMs started at once.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// Each VM, in start order.
    pub vms: Vec<VmSample>,
    /// Bytes fetched from the origin, all VMs together.
    pub origin_bytes: u64,
    /// Objects fetched from the origin, all VMs together.
    pub origin_objects: u64,
    /// Gets that joined another's fetch (single-flight), all together.
    pub shared_fetches: u64,
    /// Chunks the VMs got from the store, checked and decrypted, all
    /// together (their readers' `store_fetches`): the per-chunk CPU work a
    /// host-wide plaintext cache saves.
    pub decrypts: u64,
}

/// All rounds of one mode at one N.
#[derive(Debug, Clone, Default)]
pub struct CellResult {
    /// The mode.
    pub mode: Mode,
    /// N.
    pub vms: usize,
    /// Its rounds.
    pub rounds: Vec<Round>,
    /// Why it could not run, if a round failed.
    pub unavailable: Option<String>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The origin's bytes and objects in a tiers report (zero when absent).
pub fn origin_of(t: &TiersReport) -> (u64, u64) {
    t.tiers
        .iter()
        .find(|s| s.tier == ORIGIN_TIER)
        .map_or((0, 0), |s| (s.bytes, s.hits))
}

struct Harness<'a> {
    cfg: &'a ConcurrentConfig,
    /// Absolute (the agent wants absolute dedicated directories).
    work: PathBuf,
    counter: usize,
}

impl Harness<'_> {
    fn imagefs(&self) -> Command {
        let mut c = Command::new(&self.cfg.imagefs);
        // A configuration file could add a shared tier or AZ nodes; every
        // tier here comes from the flags.
        c.env_remove("IMAGEFS_CONFIG").env("RUST_BACKTRACE", "0");
        c
    }

    fn tier_args(&self, c: &mut Command) {
        c.arg("--store").arg(&self.cfg.store);
        if let Some(k) = &self.cfg.keys {
            c.arg("--keys").arg(k);
        }
        if let Some(n) = self.cfg.readahead {
            c.arg("--readahead").arg(n.to_string());
        }
    }

    /// A new empty round directory.
    fn round_dir(&mut self, mode: Mode, n: usize) -> Result<PathBuf> {
        self.counter += 1;
        let d = self
            .work
            .join(format!("{}-n{n}-{}", mode.name(), self.counter));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).map_err(io_error(&d))?;
        Ok(d)
    }

    fn vm_cli(&self, api: &Path, args: &[&str]) -> Command {
        let mut c = self.imagefs();
        c.arg("vm").arg("--api").arg(api).args(args);
        c
    }

    /// One round with one agent serving every VM.
    fn agent_round(&mut self, n: usize, shared: bool) -> Result<Round> {
        let mode = if shared {
            Mode::AgentShared
        } else {
            Mode::Agent
        };
        let dir = self.round_dir(mode, n)?;
        let api = dir.join("api.sock");
        let run_dir = dir.join("run");
        std::fs::create_dir_all(&run_dir).map_err(io_error(&run_dir))?;
        let mut c = self.imagefs();
        c.arg("agent")
            .arg("--api")
            .arg(&api)
            .arg("--run-dir")
            .arg(&run_dir)
            .arg("--state")
            .arg(dir.join("state.json"));
        self.tier_args(&mut c);
        if shared {
            c.arg("--shared")
                .arg(dir.join("shared"))
                .arg("--shared-capacity")
                .arg("8G");
        }
        let mut agent = BackendProcess::spawn(c, "imagefs agent", &api)?;
        let mut sockets = Vec::with_capacity(n);
        for i in 0..n {
            let ded = dir.join(format!("dedicated-{i}"));
            std::fs::create_dir_all(&ded).map_err(io_error(&ded))?;
            let mut c = self.vm_cli(
                &api,
                &["start", &format!("vm-{i}"), &self.cfg.image, "--json"],
            );
            c.arg("--dedicated").arg(&ded);
            let out = stdout_of(c, "imagefs vm start")?;
            let info: VmInfo = serde_json::from_slice(&out)
                .map_err(|e| Error::process("imagefs vm start", format!("its JSON: {e}")))?;
            sockets.push(info.socket);
        }
        let probes = self.probes(&sockets).map_err(|e| {
            Error::process(
                "imagefs agent",
                format!("{e}; its log: {}", agent.log_tail()),
            )
        })?;
        let out = stdout_of(self.vm_cli(&api, &["tiers"]), "imagefs vm tiers")?;
        let host: HostTiers = serde_json::from_slice(&out)
            .map_err(|e| Error::process("imagefs vm tiers", format!("its JSON: {e}")))?;
        let tiers = host.tiers;
        let out = stdout_of(self.vm_cli(&api, &["ls", "--json"]), "imagefs vm ls")?;
        let infos: Vec<VmInfo> = serde_json::from_slice(&out)
            .map_err(|e| Error::process("imagefs vm ls", format!("its JSON: {e}")))?;
        // SIGTERM: the agent stops its VMs and exits (SIGKILL on drop if not).
        let _ = agent.signal(libc::SIGTERM);
        agent.wait_exit(Duration::from_secs(10));
        drop(agent);
        let (origin_bytes, origin_objects) = origin_of(&tiers);
        let vms = probes
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                let id = format!("vm-{i}");
                s.prefetched = infos
                    .iter()
                    .find(|v| v.id == id)
                    .and_then(|v| v.prefetch.as_ref())
                    .is_some_and(|p| p.queued > 0);
                s
            })
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Round {
            vms,
            origin_bytes,
            origin_objects,
            shared_fetches: tiers.shared_fetches,
            decrypts: infos.iter().map(|v| v.reader.store_fetches).sum(),
        })
    }

    /// One round with one `imagefs serve` per VM.
    fn serve_round(&mut self, n: usize) -> Result<Round> {
        let dir = self.round_dir(Mode::Serve, n)?;
        let mut serves = Vec::with_capacity(n);
        let mut sockets = Vec::with_capacity(n);
        let mut reports = Vec::with_capacity(n);
        for i in 0..n {
            let sock = dir.join(format!("vm-{i}.sock"));
            let report = dir.join(format!("vm-{i}.stats.json"));
            let ded = dir.join(format!("dedicated-{i}"));
            std::fs::create_dir_all(&ded).map_err(io_error(&ded))?;
            let mut c = self.imagefs();
            c.arg("serve")
                .arg(&self.cfg.image)
                .arg("--socket")
                .arg(&sock)
                .arg("--dedicated")
                .arg(&ded)
                .arg("--stats-json")
                .arg(&report)
                .arg("--prefetch")
                .arg("auto");
            self.tier_args(&mut c);
            serves.push(BackendProcess::spawn(c, "imagefs serve", &sock)?);
            sockets.push(sock);
            reports.push(report);
        }
        let probes = self.probes(&sockets);
        // Each serve exits when its VM has gone, writing its report.
        let mut logs = Vec::new();
        for s in &mut serves {
            if !s.wait_exit(Duration::from_secs(30)) {
                logs.push(format!("did not exit after its VM: {}", s.log_tail()));
            }
        }
        let mut vms = probes.map_err(|e| {
            let log = serves.first().map(BackendProcess::log_tail);
            Error::process("imagefs serve", format!("{e}; log of the first: {log:?}"))
        })?;
        if let Some(why) = logs.first() {
            return Err(Error::process("imagefs serve", why.clone()));
        }
        drop(serves);
        let mut round = Round::default();
        for (vm, path) in vms.iter_mut().zip(&reports) {
            let text = std::fs::read_to_string(path).map_err(io_error(path))?;
            let stats: ServeStats = serde_json::from_str(&text).map_err(|e| {
                Error::process(
                    "imagefs serve",
                    format!("its report {}: {e}", path.display()),
                )
            })?;
            let (bytes, objects) = origin_of(&stats.tiers);
            round.origin_bytes += bytes;
            round.origin_objects += objects;
            round.shared_fetches += stats.tiers.shared_fetches;
            round.decrypts += stats.reader.store_fetches;
            vm.prefetched = stats.prefetch.is_some_and(|p| p.queued > 0);
        }
        round.vms = vms;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(round)
    }

    /// One probe VM per socket, all released at once by a barrier; each
    /// VM's figures in socket order (the first error if any failed).
    fn probes(&self, sockets: &[PathBuf]) -> Result<Vec<VmSample>> {
        let barrier = Barrier::new(sockets.len());
        let results: Vec<Result<VmSample>> = std::thread::scope(|s| {
            let handles: Vec<_> = sockets
                .iter()
                .map(|sock| {
                    let barrier = &barrier;
                    let cfg = RunConfig {
                        params: self.cfg.params.clone(),
                        timeout: self.cfg.timeout,
                        ..RunConfig::new(sock.clone(), self.cfg.trace.clone())
                    };
                    s.spawn(move || {
                        barrier.wait();
                        let run = run_probe(&cfg)?;
                        Ok(VmSample {
                            ready: run.to_ready(),
                            bytes_read: run.bytes_read(),
                            prefetched: false,
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(Error::process("probe VM", "its thread panicked".into()))
                    })
                })
                .collect()
        });
        results.into_iter().collect()
    }

    fn cell(&mut self, mode: Mode, n: usize) -> CellResult {
        let mut cell = CellResult {
            mode,
            vms: n,
            ..CellResult::default()
        };
        for run in 0..self.cfg.runs.max(1) {
            eprintln!(
                "concurrent: {} N={n} run {}/{}",
                mode.name(),
                run + 1,
                self.cfg.runs.max(1)
            );
            let round = match mode {
                Mode::Agent => self.agent_round(n, false),
                Mode::AgentShared => self.agent_round(n, true),
                Mode::Serve => self.serve_round(n),
            };
            match round {
                Ok(r) => cell.rounds.push(r),
                Err(e) => {
                    eprintln!("concurrent: {} N={n} failed: {e}", mode.name());
                    cell.unavailable = Some(e.to_string());
                    break;
                }
            }
        }
        cell
    }
}

/// Runs every mode at every N (N ascending within a mode); a cell that
/// cannot run is reported, not fatal.
pub fn run(cfg: &ConcurrentConfig) -> Result<Vec<CellResult>> {
    if cfg.counts.contains(&0) {
        return Err(Error::Config("N must be at least 1".into()));
    }
    std::fs::create_dir_all(&cfg.work).map_err(io_error(&cfg.work))?;
    let work = std::fs::canonicalize(&cfg.work).map_err(io_error(&cfg.work))?;
    let mut h = Harness {
        cfg,
        work,
        counter: 0,
    };
    let mut counts = cfg.counts.clone();
    counts.sort_unstable();
    counts.dedup();
    let mut out = Vec::new();
    for &mode in &cfg.modes {
        for &n in &counts {
            out.push(h.cell(mode, n));
        }
    }
    Ok(out)
}

/// Runs `cfg` and makes its report (`trace_path` names the trace in it).
pub fn bench(cfg: &ConcurrentConfig, trace_path: &Path) -> Result<report::ConcurrentReport> {
    let results = run(cfg)?;
    let header = report::ReportHeader {
        image: cfg.image.clone(),
        trace: trace_path.display().to_string(),
        reads: cfg.trace.len() as u64,
        bytes: cfg.trace.iter().map(|e| u64::from(e.len)).sum(),
        runs: cfg.runs.max(1),
        probe: format!("depth {}, wait {:?}", cfg.params.depth, cfg.params.wait),
        imagefs: cfg.imagefs.display().to_string(),
        host_cpus: std::thread::available_parallelism().map_or(0, usize::from),
    };
    Ok(report::ConcurrentReport::new(header, &results))
}

#[cfg(test)]
mod tests;
