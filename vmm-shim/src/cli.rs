//! The `vmm-shim` command line (parsed here, executed by library calls).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::error::Result;
use crate::probe::{Params, WaitMode};
use crate::run::{RunConfig, run_probe};

/// A minimal KVM VMM with a vhost-user-blk disk, for cold-start measurement.
#[derive(Debug, Parser)]
#[command(name = "vmm-shim", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Completion wait mode of the probe guest.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Wait {
    /// Spin on the used ring.
    Poll,
    /// Halt; the VMM resumes the guest on the backend's call eventfd.
    Halt,
}

impl From<Wait> for WaitMode {
    fn from(w: Wait) -> Self {
        match w {
            Wait::Poll => WaitMode::Poll,
            Wait::Halt => WaitMode::Halt,
        }
    }
}

/// Probe-guest options shared by the subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct ProbeOpts {
    /// Requests the probe keeps in flight (at most 14 with 16 segments).
    #[arg(long, default_value_t = 1)]
    pub depth: u32,
    /// How the probe waits for completions.
    #[arg(long, value_enum, default_value_t = Wait::Halt)]
    pub wait: Wait,
    /// Watchdog limit per VM run, seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

impl ProbeOpts {
    /// The probe parameters these options ask for.
    pub fn params(&self) -> Params {
        Params {
            wait: self.wait.into(),
            depth: self.depth,
            ..Params::default()
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay a trace once against a running vhost-user-blk backend and print
    /// each request's latency.
    Probe {
        /// The backend's socket.
        #[arg(long)]
        socket: PathBuf,
        /// The trace (lines of `OFFSET LEN` in bytes).
        #[arg(long)]
        trace: PathBuf,
        /// Write the bytes read, concatenated in trace order, to this file.
        #[arg(long)]
        dump: Option<PathBuf>,
        /// Probe options.
        #[command(flatten)]
        opts: ProbeOpts,
    },
    /// Cold starts of recorded traces against `imagefs serve` in each cache
    /// scenario, with and without a start profile, the
    /// download-everything baseline and qemu-storage-daemon.
    Coldstart {
        /// The image of the traces given without `IMAGE=` (sha256:DIGEST or
        /// a tag).
        #[arg(long)]
        image: Option<String>,
        /// A trace, `IMAGE=FILE` or `FILE` (`imagefs serve --record-trace`
        /// JSON lines, or `OFFSET LEN` lines); repeat for several. Each is
        /// replayed against its image.
        #[arg(long, required = true)]
        trace: Vec<String>,
        /// Measured runs per scenario and profile mode.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// The origin and the imagefs binary.
        #[command(flatten)]
        imagefs: ImagefsArgs,
        /// Scratch directory for tiers, sockets and the exported image.
        #[arg(long, default_value = "/tmp/vmm-shim-coldstart")]
        work: PathBuf,
        /// The image already exported (raw) for the qsd scenario (one
        /// trace only).
        #[arg(long)]
        raw: Option<PathBuf>,
        /// Scenarios (default: all but the AZ-fleet ones, `az-ec`,
        /// `az-ec-1-stopped`, `az-replicated`, `az-replicated-1-stopped`,
        /// which run five cache nodes and only when named).
        #[arg(long, value_enum, value_delimiter = ',')]
        scenarios: Vec<crate::coldstart::Scenario>,
        /// Profile modes of the imagefs scenarios (default: without,with).
        #[arg(long, value_enum, value_delimiter = ',')]
        profiles: Vec<crate::coldstart::ProfileMode>,
        /// `imagefs serve --readahead N` (default: imagefs's own).
        #[arg(long, value_name = "CHUNKS")]
        readahead: Option<usize>,
        /// `imagefs serve --prefetch-concurrency N` (default: imagefs's own).
        #[arg(long, value_name = "FETCHES")]
        prefetch_concurrency: Option<usize>,
        /// Write the report (`coldstart::report::ColdstartReport`) as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Write each trace's and scenario's latency CDF and timeline as
        /// PNGs into this directory.
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
        /// Probe options.
        #[command(flatten)]
        opts: ProbeOpts,
    },
    /// N concurrent cold starts of one image and trace (issue 13): through
    /// one `imagefs agent`, and through N `imagefs serve` processes.
    Concurrent {
        /// The image every VM serves (sha256:DIGEST or a tag).
        #[arg(long)]
        image: String,
        /// The trace every probe replays (`imagefs serve --record-trace`
        /// JSON lines, or `OFFSET LEN` lines).
        #[arg(long)]
        trace: PathBuf,
        /// VMs started at once, one cell each.
        #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 4, 8])]
        vms: Vec<usize>,
        /// How the VMs are served (default: agent,agent-shared,serve).
        #[arg(long, value_enum, value_delimiter = ',')]
        modes: Vec<crate::concurrent::Mode>,
        /// Runs per mode and N.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The origin and the imagefs binary.
        #[command(flatten)]
        imagefs: ImagefsArgs,
        /// Scratch directory for sockets and tiers.
        #[arg(long, default_value = "/tmp/vmm-shim-concurrent")]
        work: PathBuf,
        /// `--readahead N` of every daemon (default: imagefs's own).
        #[arg(long, value_name = "CHUNKS")]
        readahead: Option<usize>,
        /// Write the report (`concurrent::report::ConcurrentReport`) as JSON.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Probe options.
        #[command(flatten)]
        opts: ProbeOpts,
    },
    /// Boot a Linux bzImage with an initramfs until the console shows a
    /// marker (or the limit passes): the Linux-guest path, and the check of
    /// whether this host's KVM boots stock kernels.
    Linux {
        /// The bzImage.
        #[arg(long)]
        kernel: PathBuf,
        /// The initramfs.
        #[arg(long)]
        initramfs: Option<PathBuf>,
        /// Extra kernel command line.
        #[arg(long, default_value = "")]
        cmdline: String,
        /// A vhost-user-blk backend socket for /dev/vda.
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Console text that means success.
        #[arg(long, default_value = "Run /init as init process")]
        marker: String,
        /// Seconds to wait for it.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Guest RAM in MiB.
        #[arg(long, default_value_t = 512)]
        mem: u64,
    },
}

/// The origin and the `imagefs` binary the harnesses run.
#[derive(Debug, clap::Args)]
pub struct ImagefsArgs {
    /// The origin, as imagefs's `--store`.
    #[arg(long, env = "IMAGEFS_STORE")]
    store: String,
    /// The key directory, as imagefs's `--keys`.
    #[arg(long, env = "IMAGEFS_KEYS")]
    keys: Option<PathBuf>,
    /// The imagefs binary (default: $IMAGEFS_BIN, PATH, the one built beside vmm-shim).
    #[arg(long)]
    imagefs: Option<PathBuf>,
}

/// The `imagefs` binary: `$IMAGEFS_BIN`, else `imagefs` on PATH, else the
/// one built beside this program (the same cargo target directory).
pub fn default_imagefs() -> PathBuf {
    if let Some(p) = std::env::var_os("IMAGEFS_BIN") {
        return p.into();
    }
    if let Some(p) = crate::backend::which("imagefs") {
        return p;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("imagefs")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("imagefs"))
}

/// Runs the command line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm-shim: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_json(report: &impl serde::Serialize, path: PathBuf) -> Result<()> {
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| crate::Error::Config(format!("report as JSON: {e}")))?;
    std::fs::write(&path, text).map_err(|source| crate::Error::Io { path, source })
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Probe {
            socket,
            trace,
            dump,
            opts,
        } => {
            let entries = crate::trace::load(&trace)?;
            let cfg = RunConfig {
                params: opts.params(),
                keep_data: dump.is_some(),
                timeout: Duration::from_secs(opts.timeout),
                ..RunConfig::new(socket, entries)
            };
            let run = run_probe(&cfg)?;
            print!("{}", run.console);
            println!(
                "kick path: {:?}; capacity {} sectors; tsc {} kHz; setup {:?}; first completion {:?}; ready {:?}",
                run.kick,
                run.backend_capacity,
                run.tsc_khz,
                run.setup,
                run.to_first_completion(),
                run.to_ready()
            );
            for (i, (e, (r, l))) in cfg
                .trace
                .iter()
                .zip(run.results.iter().zip(run.latencies()))
                .enumerate()
            {
                println!(
                    "{i} offset {} len {} status {} latency {:?}",
                    e.offset, e.len, r.status, l
                );
            }
            if let Some(path) = dump {
                let mut all = Vec::new();
                for i in 0..cfg.trace.len() {
                    all.extend_from_slice(&run.data(i)?);
                }
                std::fs::write(&path, all).map_err(|source| crate::Error::Io { path, source })?;
            }
            Ok(())
        }
        Command::Coldstart {
            image,
            trace,
            runs,
            imagefs,
            work,
            raw,
            scenarios,
            profiles,
            readahead,
            prefetch_concurrency,
            json,
            plots,
            opts,
        } => {
            let cases = trace
                .iter()
                .map(|t| crate::coldstart::parse_case(t, image.as_deref()))
                .collect::<Result<Vec<_>>>()?;
            let cfg = crate::coldstart::ColdstartConfig {
                imagefs: imagefs.imagefs.unwrap_or_else(default_imagefs),
                image: String::new(),
                store: imagefs.store,
                keys: imagefs.keys,
                trace: Vec::new(),
                runs,
                work,
                scenarios: if scenarios.is_empty() {
                    crate::coldstart::Scenario::ALL.to_vec()
                } else {
                    scenarios
                },
                profiles,
                readahead,
                prefetch_concurrency,
                params: opts.params(),
                timeout: Duration::from_secs(opts.timeout),
                raw,
            };
            let report = crate::coldstart::bench(&cfg, &cases)?;
            print!("{}", report.render());
            if let Some(path) = json {
                write_json(&report, path)?;
            }
            if let Some(dir) = plots {
                for p in crate::coldstart::plot::write_pngs(&report, &dir)? {
                    println!("wrote {}", p.display());
                }
            }
            Ok(())
        }
        Command::Concurrent {
            image,
            trace,
            vms,
            modes,
            runs,
            imagefs,
            work,
            readahead,
            json,
            opts,
        } => {
            let cfg = crate::concurrent::ConcurrentConfig {
                imagefs: imagefs.imagefs.unwrap_or_else(default_imagefs),
                image,
                store: imagefs.store,
                keys: imagefs.keys,
                trace: crate::trace::load(&trace)?,
                counts: vms,
                modes: if modes.is_empty() {
                    crate::concurrent::Mode::ALL.to_vec()
                } else {
                    modes
                },
                runs,
                work,
                readahead,
                params: opts.params(),
                timeout: Duration::from_secs(opts.timeout),
            };
            let report = crate::concurrent::bench(&cfg, &trace)?;
            print!("{}", report.render());
            if let Some(path) = json {
                write_json(&report, path)?;
            }
            Ok(())
        }
        Command::Linux {
            kernel,
            initramfs,
            cmdline,
            socket,
            marker,
            timeout,
            mem,
        } => {
            let cfg = crate::linux::LinuxConfig {
                kernel,
                initramfs,
                cmdline,
                socket,
                ram_mib: mem,
                marker,
                timeout: Duration::from_secs(timeout),
            };
            let run = crate::linux::boot(&cfg)?;
            print!("{}", run.console);
            if run.reached_marker {
                println!(
                    "\nvmm-shim: reached {:?} after {:?}",
                    cfg.marker, run.elapsed
                );
                Ok(())
            } else {
                Err(crate::Error::VcpuExit(format!(
                    "this host's KVM did not bring {} to {:?} within {timeout} s ({} console bytes; entry {:#x}, vCPU stopped at rip {})",
                    cfg.kernel.display(),
                    cfg.marker,
                    run.console.len(),
                    run.entry,
                    run.rip.map_or("unknown".into(), |r| format!("{r:#x}"))
                )))
            }
        }
    }
}
