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
    #[arg(long, value_enum, default_value_t = Wait::Poll)]
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
    }
}
