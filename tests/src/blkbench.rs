//! The guest half of `benches/vhost_guest.rs`: `guest/blkbench.c`, a
//! static program that times O_DIRECT reads of `/dev/vda` from inside the
//! guest (spawning a process per read under TCG would measure the
//! emulator, not the disk), what it prints, and the checksums the host
//! expects from the raw image. It keeps time with the TSC at the host's
//! rate ([`tsc_khz`]): the guest kernel's own clock under TCG is jiffies.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::find_tool;

/// The program's source.
pub fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/blkbench.c")
}

/// Builds the program into `dir` with `gcc -O2 -static`; `Err` says why
/// not (no gcc, no static libc, a compile error).
pub fn build(dir: &Path) -> Result<PathBuf, String> {
    let gcc = find_tool("gcc").ok_or("gcc is not installed (package gcc, libc6-dev)")?;
    let out = dir.join("blkbench");
    let o = Command::new(gcc)
        .args(["-O2", "-static", "-Wall", "-o"])
        .arg(&out)
        .arg(source())
        .output()
        .map_err(|e| format!("running gcc: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "gcc -static {} failed: {}",
            source().display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    Ok(out)
}

/// The host's TSC rate in kHz, measured by the program itself
/// (`blkbench calibrate`): in the guest it converts TSC ticks to time,
/// as QEMU's emulated RDTSC returns the host's TSC (see the program).
pub fn tsc_khz(program: &Path) -> Result<u64, String> {
    let o = Command::new(program)
        .arg("calibrate")
        .output()
        .map_err(|e| format!("running {} calibrate: {e}", program.display()))?;
    let text = String::from_utf8_lossy(&o.stdout);
    text.trim()
        .strip_prefix("BLKBENCH tsc_khz=")
        .and_then(|k| k.parse().ok())
        .filter(|&k| o.status.success() && k > 0)
        .ok_or_else(|| format!("blkbench calibrate printed {:?}", text.trim()))
}

/// Which reads a run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The whole device in 1 MiB requests.
    Seq,
    /// Random 4 KiB reads.
    Rand,
}

/// One run's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Which reads.
    pub phase: Phase,
    /// The device size the guest saw.
    pub size: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Read calls.
    pub requests: u64,
    /// Time inside the read calls, nanoseconds.
    pub ns: u64,
    /// Median read time (random reads only).
    pub p50_ns: u64,
    /// 99th percentile read time (random reads only).
    pub p99_ns: u64,
    /// Checksum of the bytes read (see [`Sum`]).
    pub sum: u64,
}

impl Run {
    /// Throughput, MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / (self.ns.max(1) as f64 / 1e9)
    }

    /// Read calls per second.
    pub fn iops(&self) -> f64 {
        self.requests as f64 / (self.ns.max(1) as f64 / 1e9)
    }

    /// Mean time per read call, microseconds.
    pub fn mean_us(&self) -> f64 {
        self.ns as f64 / 1e3 / self.requests.max(1) as f64
    }
}

/// The guest script: `rounds` times, a sequential pass (if `seq`) and
/// then the random reads (if `random` is `Some((reads, seed))`), timed
/// with the TSC at `tsc_khz`; `set -e` so a failed run fails the script.
pub fn script(rounds: usize, seq: bool, random: Option<(u32, u64)>, tsc_khz: u64) -> String {
    let mut s = String::from("set -e\n");
    for _ in 0..rounds {
        if seq {
            s.push_str(&format!("/blkbench /dev/vda seq {tsc_khz}\n"));
        }
        if let Some((n, seed)) = random {
            s.push_str(&format!("/blkbench /dev/vda rand {n} {seed} {tsc_khz}\n"));
        }
    }
    s
}

/// The `BLKBENCH` lines among a guest's output; `Err` on an error line
/// or a line that does not parse.
pub fn parse(lines: &[String]) -> Result<Vec<Run>, String> {
    let mut runs = Vec::new();
    for line in lines {
        let Some(rest) = line.trim().strip_prefix("BLKBENCH ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let phase = match words.next() {
            Some("seq") => Phase::Seq,
            Some("rand") => Phase::Rand,
            _ => return Err(format!("blkbench: {rest}")),
        };
        let mut run = Run {
            phase,
            size: 0,
            bytes: 0,
            requests: 0,
            ns: 0,
            p50_ns: 0,
            p99_ns: 0,
            sum: 0,
        };
        for word in words {
            let bad = || format!("bad blkbench line {line:?}");
            let (key, value) = word.split_once('=').ok_or_else(bad)?;
            let num = || value.parse::<u64>().map_err(|_| bad());
            match key {
                "size" => run.size = num()?,
                "bytes" => run.bytes = num()?,
                "requests" => run.requests = num()?,
                "ns" => run.ns = num()?,
                "p50_ns" => run.p50_ns = num()?,
                "p99_ns" => run.p99_ns = num()?,
                "sum" => run.sum = u64::from_str_radix(value, 16).map_err(|_| bad())?,
                _ => return Err(bad()),
            }
        }
        runs.push(run);
    }
    Ok(runs)
}

/// The program's checksum: each 8-byte little-endian word, in read order.
#[derive(Debug, Clone, Copy)]
pub struct Sum(pub u64);

impl Default for Sum {
    fn default() -> Self {
        Sum(0xcbf2_9ce4_8422_2325)
    }
}

impl Sum {
    /// Adds `bytes` (a multiple of 8 long).
    pub fn add(&mut self, bytes: &[u8]) {
        for w in bytes.chunks_exact(8) {
            let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            self.0 = (self.0 ^ w).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// The program's offset stream (splitmix64), for `blocks` 4 KiB blocks.
pub fn random_offsets(seed: u64, blocks: u64, n: u32) -> Vec<u64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z % blocks.max(1)) * 4096
        })
        .collect()
}

/// What the program must print for the raw image `raw`: (size, the
/// sequential pass's sum, the random reads' sum).
pub fn expected(raw: &Path, random_reads: u32, seed: u64) -> std::io::Result<(u64, u64, u64)> {
    let f = File::open(raw)?;
    let size = f.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut seq = Sum::default();
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        f.read_exact_at(&mut buf[..n], off)?;
        seq.add(&buf[..n]);
        off += n as u64;
    }
    let mut rand = Sum::default();
    for off in random_offsets(seed, size / 4096, random_reads) {
        f.read_exact_at(&mut buf[..4096], off)?;
        rand.add(&buf[..4096]);
    }
    Ok((size, seq.0, rand.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_lines_and_rejects_errors() {
        let lines = [
            "noise".to_string(),
            "BLKBENCH seq size=4096 bytes=4096 requests=1 ns=1000 sum=00000000000000ff".into(),
            "BLKBENCH rand size=4096 bytes=8192 requests=2 ns=2000 p50_ns=900 p99_ns=1100 sum=a"
                .into(),
        ];
        let runs = parse(&lines).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].phase, Phase::Seq);
        assert_eq!(runs[0].sum, 0xff);
        assert_eq!(runs[1].p99_ns, 1100);
        assert!((runs[1].iops() - 1e6).abs() < 1.0);
        let err = parse(&["BLKBENCH error pread at offset 0: EIO".to_string()]).unwrap_err();
        assert!(err.contains("EIO"), "{err}");
    }

    #[test]
    fn offsets_stay_inside_the_device_and_are_aligned() {
        let offs = random_offsets(42, 100, 1000);
        assert!(offs.iter().all(|o| o % 4096 == 0 && *o < 100 * 4096));
        assert_eq!(offs, random_offsets(42, 100, 1000));
    }
}
