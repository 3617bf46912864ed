//! Child processes of the tests and benchmarks (`imagefs mount`, cache
//! nodes): started and waited on until they print that they are ready,
//! stopped with a signal and checked for a clean exit, and killed if a
//! test ends early.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

/// A running child; SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub struct Running {
    child: Child,
    what: String,
}

impl Running {
    /// Starts `cmd` with stdout and stderr piped and waits for its first
    /// stdout line, which must start with `ready`; returns the process and
    /// that line. Otherwise the error holds the line and the stderr.
    pub fn spawn_until(
        mut cmd: Command,
        ready: &str,
        what: &str,
    ) -> Result<(Running, String), String> {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {what}: {e}"))?;
        let mut running = Running {
            child,
            what: what.to_string(),
        };
        let mut line = String::new();
        let stdout = running
            .child
            .stdout
            .take()
            .ok_or_else(|| format!("{what}: no stdout"))?;
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("reading the stdout of {what}: {e}"))?;
        if !line.starts_with(ready) {
            let _ = running.child.kill();
            let _ = running.child.wait();
            return Err(format!("{what} did not start: {line}{}", running.stderr()));
        }
        Ok((running, line))
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (as `kill` takes it: `-INT`, `-TERM`), waits, and
    /// returns what the process wrote to stderr; an error when it did not
    /// exit with status 0.
    pub fn stop(self, signal: &str) -> Result<String, String> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([signal, &pid])
            .status()
            .map_err(|e| format!("kill {signal} {pid}: {e}"))?;
        if !sent.success() {
            return Err(format!("kill {signal} {pid}: {sent}"));
        }
        self.wait()
    }

    /// Waits for the process to end by itself and returns its stderr; an
    /// error when it did not exit with status 0.
    pub fn wait(mut self) -> Result<String, String> {
        let status = self
            .child
            .wait()
            .map_err(|e| format!("waiting for {}: {e}", self.what))?;
        let err = self.stderr();
        if !status.success() {
            return Err(format!("{} exited with {status}: {err}", self.what));
        }
        Ok(err)
    }

    /// Whatever is left of its stderr (all of it once it has exited).
    fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
