//! The AZ fleet of the `az-ec*` and `az-replicated*` scenarios: five
//! `imagefs cache-node` processes on loopback sharing a fleet token, the
//! tier configuration that points `imagefs serve --config` at them, and
//! SIGSTOP of one node.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backend::BackendProcess;
use crate::error::{Error, Result};

/// Nodes in the fleet: the erasure-coded layout's 4 data stripes and 1
/// parity stripe, one per node.
pub(super) const FLEET_NODES: usize = 5;

/// How the fleet keeps chunks (`[az] mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FleetMode {
    /// 4+1 stripes, every get asks all five nodes.
    Erasure,
    /// Whole chunks on their rendezvous owner, hedged to the second.
    Replicated,
}

impl FleetMode {
    fn config_name(self) -> &'static str {
        match self {
            FleetMode::Erasure => "erasure",
            FleetMode::Replicated => "replicated",
        }
    }
}

/// Running cache nodes; dropping the fleet kills them (a stopped process
/// dies of SIGKILL too).
pub(super) struct Fleet {
    nodes: Vec<BackendProcess>,
    /// The `imagefs serve --config` file with the fleet's `[az]` section.
    pub(super) config: PathBuf,
}

/// A free TCP port on loopback (free when asked; the node binds it next).
pub(super) fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| Error::Host {
            what: "pick a free port",
            source,
        })
}

/// A TOML basic string: JSON's string escapes are TOML's.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl Fleet {
    /// Starts [`FLEET_NODES`] nodes with the `imagefs` binary over the
    /// origin `store`, keeping their data and the configuration in `dir`.
    pub(super) fn start(imagefs: &Path, store: &str, dir: &Path, mode: FleetMode) -> Result<Fleet> {
        let token_file = dir.join("fleet-token");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        write(
            &token_file,
            &format!("coldstart-{}-{nanos}\n", std::process::id()),
        )?;
        let mut nodes = Vec::with_capacity(FLEET_NODES);
        let mut urls = Vec::with_capacity(FLEET_NODES);
        for k in 0..FLEET_NODES {
            let data = dir.join(format!("node-{k}"));
            let addr = format!("127.0.0.1:{}", free_port()?);
            let mut c = Command::new(imagefs);
            c.env("RUST_BACKTRACE", "0")
                .arg("cache-node")
                .arg("--listen")
                .arg(&addr)
                .arg("--data")
                .arg(&data)
                .arg("--capacity")
                .arg("8G")
                .arg("--origin")
                .arg(store)
                .arg("--fleet-token-file")
                .arg(&token_file)
                // Every request comes from 127.0.0.1: no per-client limit.
                .args(["--client-rate", "0"]);
            let marker = dir.join(format!("node-{k}.unused.sock"));
            nodes.push(BackendProcess::spawn_tcp(
                c,
                &format!("imagefs cache-node {k}"),
                &marker,
                &addr,
            )?);
            urls.push(toml_string(&format!("http://{addr}")));
        }
        let config = dir.join("tiers.toml");
        write(
            &config,
            &format!(
                "[az]\nnodes = [{}]\nmode = {}\nfleet_token_file = {}\n",
                urls.join(", "),
                toml_string(mode.config_name()),
                toml_string(&token_file.display().to_string()),
            ),
        )?;
        Ok(Fleet { nodes, config })
    }

    /// SIGSTOPs node `k`: its port still accepts connections (the kernel
    /// completes them), but it never answers.
    pub(super) fn stop(&self, k: usize) -> Result<()> {
        self.nodes[k].signal(libc::SIGSTOP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        assert_eq!(toml_string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(toml_string("/tmp/x y"), "\"/tmp/x y\"");
    }
}
