//! A fleet of real `imagefs cache-node` processes on loopback, for the
//! AZ tier's tests and benchmark: started with a shared fleet token,
//! killed, stopped (SIGSTOP) and continued one by one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::Running;

/// One node of a [`Fleet`].
#[derive(Debug)]
pub struct FleetNode {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: std::net::SocketAddr,
    /// `None` once killed.
    proc: Option<Running>,
    stopped: bool,
}

/// Cache-node processes sharing one origin directory and one token.
#[derive(Debug)]
pub struct Fleet {
    bin: PathBuf,
    dir: PathBuf,
    origin: PathBuf,
    /// The file holding the fleet token (mode 0600).
    pub token_file: PathBuf,
    /// The token itself (the tests send it, or not, by hand).
    pub token: String,
    /// The nodes, in start order.
    pub nodes: Vec<FleetNode>,
}

impl Fleet {
    /// Starts `n` nodes under `dir` (which must exist) with the `imagefs`
    /// binary `bin`, over the directory store `origin` (which only the
    /// replicated mode reads: nodes never fetch stripes from it). Each
    /// node keeps its data in `dir/node-K`.
    pub fn start(bin: &Path, dir: &Path, origin: &Path, n: usize) -> Result<Fleet, String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let token = format!("fleet-{}-{nanos:09}", std::process::id());
        let token_file = dir.join("fleet-token");
        fs::write(&token_file, format!("{token}\n")).map_err(|e| format!("token file: {e}"))?;
        let mut fleet = Fleet {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            origin: origin.to_path_buf(),
            token_file,
            token,
            nodes: Vec::new(),
        };
        for _ in 0..n {
            fleet.add()?;
        }
        Ok(fleet)
    }

    /// Starts one more node; returns its index.
    pub fn add(&mut self) -> Result<usize, String> {
        let k = self.nodes.len();
        let data = self.dir.join(format!("node-{k}"));
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "cache-node",
            "--listen",
            "127.0.0.1:0",
            "--capacity",
            "256M",
        ])
        .arg("--data")
        .arg(&data)
        .arg("--origin")
        .arg(&self.origin)
        .arg("--fleet-token-file")
        .arg(&self.token_file)
        // Every request of a test or benchmark comes from 127.0.0.1.
        .args(["--client-rate", "0"]);
        let (proc, line) =
            Running::spawn_until(cmd, "cache node listening on ", &format!("cache node {k}"))?;
        let url = line
            .trim_start_matches("cache node listening on ")
            .split_whitespace()
            .next()
            .ok_or("no URL in the node's first line")?
            .to_string();
        let addr = url
            .trim_start_matches("http://")
            .parse()
            .map_err(|e| format!("{url}: {e}"))?;
        self.nodes.push(FleetNode {
            url,
            addr,
            proc: Some(proc),
            stopped: false,
        });
        Ok(k)
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    fn signal(&self, k: usize, signal: &str) -> Result<(), String> {
        let proc = self.nodes[k].proc.as_ref().ok_or("the node was killed")?;
        let pid = proc.id().to_string();
        let status = Command::new("kill")
            .args([signal, &pid])
            .status()
            .map_err(|e| format!("kill {signal} {pid}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill {signal} {pid}: {status}"))
        }
    }

    /// SIGKILLs node `k` (and reaps it).
    pub fn kill(&mut self, k: usize) {
        // Dropping a `Running` kills and reaps it.
        self.nodes[k].proc = None;
    }

    /// SIGSTOPs node `k`: its port still accepts connections (the kernel
    /// does that), but nothing answers.
    pub fn stop(&mut self, k: usize) -> Result<(), String> {
        self.signal(k, "-STOP")?;
        self.nodes[k].stopped = true;
        Ok(())
    }

    /// SIGCONTs node `k`.
    pub fn cont(&mut self, k: usize) -> Result<(), String> {
        self.signal(k, "-CONT")?;
        self.nodes[k].stopped = false;
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // A stopped process would still die of SIGKILL, but continue it
        // so that nothing is left half-suspended if the kill fails.
        for k in 0..self.nodes.len() {
            if self.nodes[k].stopped {
                let _ = self.cont(k);
            }
        }
    }
}
