//! A slower link on loopback for one server: what a local server sends
//! from one port is shaped to a rate with `tc` (an HTB class that only
//! that source port's packets join), so a benchmark can put a registry
//! "across a network" while everything else on loopback runs at full
//! speed. Needs root and `tc` (iproute2); [`Shaped::port`] says why not
//! otherwise. Removed when the guard drops.

use std::process::Command;

/// Loopback shaped for one source port; the shaping goes with it.
#[derive(Debug)]
pub struct Shaped {
    dev: &'static str,
}

/// `tc ARGS`; its stdout, or why it failed.
fn tc(args: &[&str]) -> Result<String, String> {
    crate::harness::output(Command::new("tc").args(args))
}

impl Shaped {
    /// Shapes what loopback's `port` sends to `rate` (as `tc` writes it,
    /// e.g. `1gbit`). Refuses when loopback already has a root qdisc of
    /// its own, which it would replace.
    pub fn port(port: u16, rate: &str) -> Result<Shaped, String> {
        let dev = "lo";
        let current = tc(&["qdisc", "show", "dev", dev])
            .map_err(|e| format!("tc (iproute2) is not usable: {e}"))?;
        if !current.trim_start().starts_with("qdisc noqueue") {
            return Err(format!(
                "{dev} already has a root qdisc ({}); if an interrupted run left it, \
                 `tc qdisc del dev {dev} root` removes it",
                current.trim()
            ));
        }
        tc(&[
            "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10",
        ])?;
        let shaped = Shaped { dev };
        // Everything else: far above what loopback does here.
        tc(&[
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate",
            "100gbit", "quantum", "200000",
        ])?;
        tc(&[
            "class", "add", "dev", dev, "parent", "1:", "classid", "1:20", "htb", "rate", rate,
            "ceil", rate, "burst", "512kb", "quantum", "200000",
        ])?;
        tc(&[
            "filter",
            "add",
            "dev",
            dev,
            "parent",
            "1:",
            "protocol",
            "ip",
            "prio",
            "1",
            "u32",
            "match",
            "ip",
            "sport",
            &port.to_string(),
            "0xffff",
            "flowid",
            "1:20",
        ])?;
        Ok(shaped)
    }
}

impl Drop for Shaped {
    fn drop(&mut self) {
        if let Err(e) = tc(&["qdisc", "del", "dev", self.dev, "root"]) {
            eprintln!("removing the shaping of {}: {e}", self.dev);
        }
    }
}
