//! `imagefs agent` (the host daemon) and `imagefs vm` (its thin client):
//! calls into [`imagefs::agent`] and [`imagefs::transport::api`].

use std::error::Error;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use imagefs::agent::{Agent, AgentOptions};
use imagefs::transport::api::client::ApiClient;
use imagefs::transport::api::serve_api;
use imagefs::{LazyOptions, PrefetchOptions};
use manifest::agent::{VmInfo, VmSpec};

use crate::signals::Signals;
use crate::tiers::{TierArgs, open_config};

/// Arguments of `imagefs agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// The control API's Unix socket (overrides [agent] api).
    #[arg(long, env = "IMAGEFS_AGENT")]
    api: Option<PathBuf>,
    /// Where the VMs' vhost-user sockets are made (overrides [agent]
    /// run_dir).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// The VM table file (overrides [agent] state).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Stop and forget a VM whose VMM has not connected this long after it
    /// was started (e.g. 60s, 2m; overrides [agent] connect_timeout_secs).
    #[arg(long, value_name = "DURATION", value_parser = crate::profile::parse_duration)]
    connect_timeout: Option<Duration>,
    /// Chunks each VM's start-profile prefetch fetches at once.
    #[arg(long = "prefetch-concurrency", value_name = "N",
          default_value_t = PrefetchOptions::default().concurrency)]
    prefetch_concurrency: usize,
    #[command(flatten)]
    tiers: TierArgs,
}

impl AgentArgs {
    /// Serves until SIGINT or SIGTERM; the VMs stay in the state file for
    /// the next agent.
    pub fn run(self, signals: &Signals) -> Result<(), Box<dyn Error>> {
        let mut config = self.tiers.config()?;
        let section = &mut config.agent;
        if let Some(p) = self.api {
            section.api = p;
        }
        if let Some(p) = self.run_dir {
            section.run_dir = p;
        }
        if let Some(p) = self.state {
            section.state = p;
        }
        if let Some(t) = self.connect_timeout {
            section.connect_timeout_secs = t.as_secs().max(1);
        }
        let (tiers, keys) = open_config(&config, &self.tiers.key_provider)?;
        let opts = AgentOptions {
            section: config.agent.clone(),
            read: LazyOptions::from(&config.read),
            prefetch: PrefetchOptions {
                concurrency: self.prefetch_concurrency,
                ..PrefetchOptions::default()
            },
        };
        let api_path = opts.section.api.clone();
        let agent = Arc::new(Agent::new(tiers, Box::new(keys), opts)?);
        let restored = agent.restore();
        if let Some(why) = &restored.unusable {
            eprintln!("imagefs agent: {why}; set aside as .corrupt, starting with no VMs");
        }
        for (id, why) in &restored.failed {
            eprintln!("imagefs agent: VM {id} could not be restored and is dropped: {why}");
        }
        let armed = signals.arm();
        let api = serve_api(&api_path, Arc::clone(&agent))?;
        let (stop_tx, stop_rx) = channel::<()>();
        armed.stop_with(move || {
            let _ = stop_tx.send(());
        });
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "imagefs agent: listening on {}; {} VM(s) restored{}",
            api_path.display(),
            restored.started.len(),
            if restored.started.is_empty() {
                String::new()
            } else {
                format!(" ({})", restored.started.join(", "))
            }
        );
        let _ = out.flush();
        // The reaper runs here, once a second, until a signal.
        while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(Duration::from_secs(1)) {
            agent.reap();
        }
        api.stop();
        agent.shutdown();
        drop(armed);
        eprintln!("imagefs agent: stopped; the VM table stays for the next start");
        Ok(())
    }
}

/// Arguments of `imagefs vm`.
#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// The agent's control API socket.
    #[arg(long, env = "IMAGEFS_AGENT", default_value = "/run/imagefs/agent.sock")]
    api: PathBuf,
    #[command(subcommand)]
    command: VmCommand,
}

#[derive(Debug, clap::Subcommand)]
enum VmCommand {
    /// Start serving a VM; prints the vhost-user socket for its VMM.
    Start {
        /// The VM's id (letters, digits, `-`, `_`, `.`).
        id: String,
        /// sha256:DIGEST or a tag (pinned to its digest now).
        image: String,
        /// Accept guest writes (copy-on-write into --dedicated).
        #[arg(long, requires = "dedicated")]
        writable: bool,
        /// The VM's own cache and write directory (absolute).
        #[arg(long)]
        dedicated: Option<PathBuf>,
        /// Request queues.
        #[arg(long)]
        queues: Option<u16>,
        /// The tenant's dedup domain: the tag is looked up among its tags,
        /// and an image of another domain is refused (default: `default`).
        #[arg(long)]
        domain: Option<String>,
        /// Print the VM as JSON (`manifest::agent::VmInfo`).
        #[arg(long)]
        json: bool,
    },
    /// Stop serving a VM and forget it (its dedicated directory stays).
    Stop {
        /// The VM's id.
        id: String,
        /// Print its last counters as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the VMs.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one VM and its counters (JSON).
    Show {
        /// The VM's id.
        id: String,
    },
    /// The shared tiers' counters and the shared tier's contents,
    /// host-wide (JSON, `manifest::agent::HostTiers`).
    Tiers,
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Box<dyn Error>> {
    let mut out = std::io::stdout();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// One line per VM, from the same values `--json` prints.
fn table(vms: &[VmInfo]) -> String {
    let mut out = format!(
        "{:<20} {:<12} {:<9} {:>10} {:>12}  {}\n",
        "ID", "PHASE", "MODE", "READS", "BYTES READ", "SOCKET"
    );
    for vm in vms {
        let phase = serde_json::to_value(vm.phase)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        out.push_str(&format!(
            "{:<20} {:<12} {:<9} {:>10} {:>12}  {}\n",
            vm.id,
            phase,
            if vm.writable { "rw" } else { "ro" },
            vm.served.reads,
            vm.served.bytes_read,
            vm.socket.display()
        ));
    }
    out
}

impl VmArgs {
    /// Sends the request and prints the answer.
    pub fn run(self) -> Result<(), Box<dyn Error>> {
        let client = ApiClient::new(&self.api);
        match self.command {
            VmCommand::Start {
                id,
                image,
                writable,
                dedicated,
                queues,
                domain,
                json,
            } => {
                let vm = client.start_vm(&VmSpec {
                    id,
                    image,
                    writable,
                    dedicated,
                    queues,
                    domain,
                })?;
                if json {
                    print_json(&vm)?;
                } else {
                    println!("{} {} {}", vm.id, vm.digest, vm.socket.display());
                }
            }
            VmCommand::Stop { id, json } => {
                let vm = client.stop_vm(&id)?;
                if json {
                    print_json(&vm)?;
                } else {
                    println!("stopped {}: {}", vm.id, vm.served);
                }
            }
            VmCommand::Ls { json } => {
                let vms = client.list()?;
                if json {
                    print_json(&vms)?;
                } else {
                    print!("{}", table(&vms));
                }
            }
            VmCommand::Show { id } => print_json(&client.show(&id)?)?,
            VmCommand::Tiers => print_json(&client.tiers()?)?,
        }
        Ok(())
    }
}
