//! Raw reads inside a real Linux guest (QEMU `-M
//! microvm`, `vhost-user-blk`) served by `imagefs serve`, against the same
//! reads served by `qemu-storage-daemon --export type=vhost-user-blk` from
//! the exported raw image (the reference backend), in one run.
//!
//! The guest runs `tests/guest/blkbench.c` (built here with `gcc -O2
//! -static`, added to a copy of the cached initramfs): an O_DIRECT
//! sequential read of the whole `/dev/vda` in 1 MiB requests, and random
//! 4 KiB reads at offsets from a fixed-seed stream, each timed inside the
//! guest with the TSC (QEMU's TCG returns the host's; the guest kernel's
//! clock is jiffies there). Every run's checksum is checked against the
//! raw image. Each scenario is a fresh guest boot:
//!
//! - `qsd`: qemu-storage-daemon on the raw image (the baseline);
//! - `imagefs warm`: the dedicated tier already holds every chunk (the
//!   directory left by the cold sequential boot);
//! - `imagefs cold`: origin only (a directory store on this host, so
//!   "cold" is fetch + verify + decrypt + fill, not a network), a fresh
//!   dedicated directory; the sequential and random reads in separate
//!   boots, so that neither warms the other;
//! - `imagefs shared warm`: the shared local tier filled by `imagefs
//!   fetch`, a fresh dedicated directory; again one boot per phase.
//!
//! The two warm scenarios (qsd, imagefs warm) boot twice, alternating
//! (first and last, so drift shows), with [`WARM_ROUNDS`] rounds per
//! boot, and report the median round. The table gives MB/s and IOPS and
//! their ratio to qsd (goal for warm: at least 0.95), then the backend's
//! own request service time
//! (p50/p99 of reads, from the `served` report of `imagefs serve`): under
//! TCG the guest is slow, so that is the number that says what imagefs
//! itself costs. Each boot also prints the request limits the guest took
//! from the device (qsd and imagefs advertise different segment limits,
//! which decide how a 1 MiB read is split into requests).
//!
//! Needs the release `imagefs` (`cargo build --release -p tools`), QEMU,
//! qemu-storage-daemon, gcc with a static libc, cpio, the guest kernel
//! (scripts/guest-kernel.sh) and the Debian python image
//! (scripts/build-debian-images.sh); prints `SKIP:` without one of them.
//! `cargo bench -p tests --bench vhost_guest`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use imagefs::tiers::stats::render;
use manifest::report::ServeStats;

use tests::blkbench::{self, Phase, Run};
use tests::guest::{self, Accel, BootOptions, GuestKernel, Proc, boot, wait_for_socket};
use tests::harness::{find_tool, skip};

/// Random 4 KiB reads per run.
const RANDOM_READS: u32 = 2000;
/// Seed of the random offsets (the host checks the same offsets).
const SEED: u64 = 42;
/// Rounds of each phase in a warm scenario's boot (median reported).
const WARM_ROUNDS: usize = 4;
/// A hang watchdog per boot, not a measurement.
const BOOT_TIMEOUT: Duration = Duration::from_secs(1200);
/// The image.
const TAG: &str = "python";

struct Setup {
    qemu: PathBuf,
    qsd: PathBuf,
    imagefs: PathBuf,
    kernel: GuestKernel,
    accel: Accel,
    work: tempfile::TempDir,
    store: PathBuf,
    keys: PathBuf,
    raw: PathBuf,
    /// (size, sequential sum, random sum) of the raw image.
    expected: (u64, u64, u64),
    /// The host's TSC rate, the guest program's clock.
    tsc_khz: u64,
}

/// The release `imagefs` next to this benchmark (target/release), or
/// `IMAGEFS_BIN`.
fn release_imagefs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IMAGEFS_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    // target/release/deps/vhost_guest-HASH -> target/release/imagefs
    let bin = exe.parent()?.parent()?.join("imagefs");
    if bin.is_file() && bin.parent()?.file_name()? == "release" {
        Some(bin)
    } else {
        skip(&format!(
            "no release imagefs at {} (cargo build --release -p tools; a debug build would \
             make the comparison meaningless)",
            bin.display()
        ));
        None
    }
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout.
fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn setup() -> Option<Setup> {
    let imagefs = release_imagefs()?;
    let qemu = guest::qemu()?;
    let Some(qsd) = find_tool("qemu-storage-daemon") else {
        skip("qemu-storage-daemon is not installed (package qemu-system-x86)");
        return None;
    };
    let layout = tests::e2e::debian_layout();
    let tags = tests::e2e::layout_tags(&layout).unwrap_or_default();
    if !tags.iter().any(|t| t == TAG) {
        skip(&format!(
            "no Debian {TAG} image at {} (scripts/build-debian-images.sh)",
            layout.display()
        ));
        return None;
    }
    let base = guest::guest_kernel()?;
    let (accel, why) = guest::accel();
    let work = tempfile::Builder::new()
        .prefix("imagefs-vhost-bench.")
        .tempdir()
        .expect("a temporary directory");
    let program = match blkbench::build(work.path()) {
        Ok(p) => p,
        Err(e) => {
            skip(&format!("cannot build the guest program: {e}"));
            return None;
        }
    };
    let tsc_khz = match blkbench::tsc_khz(&program) {
        Ok(k) => k,
        Err(e) => {
            skip(&format!("cannot measure the TSC rate: {e}"));
            return None;
        }
    };
    let kernel = match base.with_files(&[("blkbench", &program)], work.path()) {
        Ok(k) => k,
        Err(e) => {
            skip(&format!(
                "cannot add the guest program to the initramfs: {e}"
            ));
            return None;
        }
    };
    println!("guest accelerator: {} ({why})", accel.name());
    println!("imagefs: {}", imagefs.display());
    println!(
        "guest clock: the TSC at the host's {:.3} GHz",
        tsc_khz as f64 / 1e6
    );

    let store = work.path().join("store");
    let keys = work.path().join("keys");
    let source = format!("oci:{}:{TAG}", layout.display());
    let out = run_ok(
        Command::new(&imagefs)
            .args(["convert", &source, "--store"])
            .arg(&store)
            .arg("--keys")
            .arg(&keys)
            .args(["--tag", TAG])
            .env_remove("IMAGEFS_CONFIG"),
        "imagefs convert",
    );
    println!("converted {source}: {}", out.trim().replace('\n', "; "));
    let raw = work.path().join("raw.img");
    let out = run_ok(
        Command::new(&imagefs)
            .args(["export", TAG, "--store"])
            .arg(&store)
            .arg("--keys")
            .arg(&keys)
            .arg("-o")
            .arg(&raw),
        "imagefs export",
    );
    println!("{}", out.trim());
    // Reading it also leaves the raw image in the host's page cache:
    // qsd's baseline is warm too.
    let expected = blkbench::expected(&raw, RANDOM_READS, SEED).expect("checksum the raw image");
    Some(Setup {
        qemu,
        qsd,
        imagefs,
        kernel,
        accel,
        work,
        store,
        keys,
        raw,
        expected,
        tsc_khz,
    })
}

/// What `imagefs serve` reported at exit (from `--stats-json`).
#[derive(Debug, Default, Clone)]
struct Served {
    /// Reads' service time p50 and p99, microseconds.
    read_p50_us: u64,
    read_p99_us: u64,
    /// The `--stats` table made from the report: each tier's counters,
    /// then where the reader found its chunks.
    stats: String,
}

fn read_served(report: &Path) -> Result<Served, String> {
    let text = fs::read_to_string(report).map_err(|e| format!("{}: {e}", report.display()))?;
    let stats: ServeStats =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", report.display()))?;
    let served = stats
        .served
        .as_ref()
        .ok_or_else(|| format!("{}: no served report", report.display()))?;
    Ok(Served {
        read_p50_us: served.read_p50_us,
        read_p99_us: served.read_p99_us,
        stats: render(&stats.tiers, &stats.reader)
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect(),
    })
}

enum Backend<'a> {
    Qsd,
    Imagefs(&'a [String]),
}

/// Prints the request limits the guest's block layer took from the
/// device (they decide how a 1 MiB read is split).
const QUEUE_LINE: &str = "q=/sys/block/vda/queue; echo \"QUEUE max_hw_sectors_kb=$(cat $q/max_hw_sectors_kb) \
     max_segments=$(cat $q/max_segments) max_segment_size=$(cat $q/max_segment_size)\"\n";

/// Boots one guest against `backend` running `script`; returns the runs
/// (checked against the raw image) and, for imagefs, its report.
fn scenario(s: &Setup, name: &str, backend: Backend<'_>, script: &str) -> (Vec<Run>, Served) {
    let script = format!("{QUEUE_LINE}{script}");
    let script = script.as_str();
    let slug: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let socket = s.work.path().join(format!("{slug}.sock"));
    let log = s.work.path().join(format!("{slug}.backend.log"));
    let report = s.work.path().join(format!("{slug}.stats.json"));
    let _ = fs::remove_file(&socket);
    let mut cmd = match backend {
        Backend::Qsd => {
            let mut c = Command::new(&s.qsd);
            c.arg("--blockdev")
                .arg(format!(
                    "driver=file,node-name=disk,filename={},read-only=on",
                    s.raw.display()
                ))
                .arg("--export")
                .arg(format!(
                    "type=vhost-user-blk,id=e,node-name=disk,addr.type=unix,addr.path={},\
                     writable=off",
                    socket.display()
                ));
            c
        }
        Backend::Imagefs(args) => {
            let mut c = Command::new(&s.imagefs);
            c.args(["serve", TAG, "--socket"])
                .arg(&socket)
                .arg("--store")
                .arg(&s.store)
                .arg("--keys")
                .arg(&s.keys)
                .arg("--stats-json")
                .arg(&report)
                .args(args)
                .env_remove("IMAGEFS_CONFIG");
            c
        }
    };
    let mut daemon = Proc::spawn(&mut cmd, &log).unwrap_or_else(|e| panic!("{name}: {e}"));
    wait_for_socket(&socket, &mut daemon, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let started = Instant::now();
    let out = boot(
        &s.qemu,
        &s.kernel,
        s.accel,
        &BootOptions {
            socket: &socket,
            rw: false,
            script,
            queues: 1,
            mem_mib: 512,
            timeout: BOOT_TIMEOUT,
        },
        &s.work.path().join(format!("{slug}.console.log")),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}\nbackend said:\n{}", daemon.output()));
    assert_eq!(
        out.rc,
        0,
        "{name}: the guest's reads failed:\n{}",
        out.lines.join("\n")
    );
    let runs = blkbench::parse(&out.lines).unwrap_or_else(|e| panic!("{name}: {e}"));
    let queue = out
        .lines
        .iter()
        .find_map(|l| l.strip_prefix("QUEUE "))
        .unwrap_or("?")
        .to_string();
    let (size, seq_sum, rand_sum) = s.expected;
    for r in &runs {
        let want = match r.phase {
            Phase::Seq => seq_sum,
            Phase::Rand => rand_sum,
        };
        assert!(
            r.size == size && r.sum == want,
            "{name}: the guest read other bytes than the raw image's ({r:?}; want size {size}, \
             sum {want:016x})"
        );
    }
    let served = match backend {
        // qsd serves reconnecting frontends until it is stopped.
        Backend::Qsd => Served::default(),
        Backend::Imagefs(_) => {
            let status = daemon
                .wait_timeout(Duration::from_secs(60))
                .unwrap_or_else(|| panic!("{name}: imagefs serve still running after QEMU exited"));
            let text = daemon.output();
            assert!(status.success(), "{name}: imagefs serve failed:\n{text}");
            read_served(&report)
                .unwrap_or_else(|e| panic!("{name}: no report from imagefs ({e}):\n{text}"))
        }
    };
    println!(
        "  {name}: boot and reads took {:.1} s, {} run(s) checked against the raw image; \
         guest queue: {queue}",
        started.elapsed().as_secs_f64(),
        runs.len()
    );
    (runs, served)
}

/// The median run of `phase` (by time).
fn median(runs: &[Run], phase: Phase) -> Option<Run> {
    let mut v: Vec<&Run> = runs.iter().filter(|r| r.phase == phase).collect();
    v.sort_by_key(|r| r.ns);
    v.get(v.len().checked_sub(1)? / 2).map(|r| (*r).clone())
}

/// One row of the table.
struct Row {
    name: &'static str,
    seq: Run,
    rand: Run,
    /// Backend read service time (p50/p99 µs) for the boot(s): one entry
    /// for a boot with both phases, seq then rand otherwise.
    served: Vec<Served>,
}

fn fmt_served(served: &[Served]) -> String {
    if served.is_empty() {
        return "-".into();
    }
    served
        .iter()
        .map(|s| format!("{}/{}", s.read_p50_us, s.read_p99_us))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn print_table(rows: &[Row]) {
    let base = &rows[0];
    println!();
    println!(
        "{:<26} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>7}  backend reads p50/p99 us",
        "scenario", "seq MB/s", "vs qsd", "rand IOPS", "mean us", "p50 us", "p99 us", "vs qsd"
    );
    for r in rows {
        println!(
            "{:<26} {:>9.1} {:>6.2}x {:>10.0} {:>9.0} {:>9.0} {:>9.0} {:>6.2}x  {}",
            r.name,
            r.seq.mb_per_s(),
            r.seq.mb_per_s() / base.seq.mb_per_s(),
            r.rand.iops(),
            r.rand.mean_us(),
            r.rand.p50_ns as f64 / 1e3,
            r.rand.p99_ns as f64 / 1e3,
            r.rand.iops() / base.rand.iops(),
            fmt_served(&r.served),
        );
    }
    println!(
        "(guest-side: O_DIRECT preads timed in the guest, {} MB device, 1 MiB sequential \
         requests, {RANDOM_READS} random 4 KiB reads; qsd and warm rows: median of \
         2 boots x {WARM_ROUNDS} rounds; backend: imagefs's own service time per read \
         request, per boot (warm: boot 1 | boot 2; cold, shared: seq boot | rand boot); \
         goal for imagefs warm: >= 0.95x qsd)",
        rows[0].seq.size / 1_000_000
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours means
    // another benchmark was asked for.
    if let Some(filter) = std::env::args().skip(1).find(|a| !a.starts_with('-'))
        && !"vhost_guest".contains(&filter)
    {
        return;
    }
    let Some(s) = setup() else { return };
    let total = Instant::now();
    let both = blkbench::script(WARM_ROUNDS, true, Some((RANDOM_READS, SEED)), s.tsc_khz);
    let seq_only = blkbench::script(1, true, None, s.tsc_khz);
    let rand_only = blkbench::script(1, false, Some((RANDOM_READS, SEED)), s.tsc_khz);
    let dir = |name: &str| s.work.path().join(name).to_str().unwrap().to_string();

    println!("scenarios (one guest boot each):");
    let (mut qsd, _) = scenario(&s, "qsd (reference) 1", Backend::Qsd, &both);

    let warm_dedicated = dir("dedicated-warm");
    let cold_seq_args = ["--dedicated".to_string(), warm_dedicated.clone()];
    let (cold_seq, cold_seq_served) = scenario(
        &s,
        "imagefs cold, seq",
        Backend::Imagefs(&cold_seq_args),
        &seq_only,
    );
    let cold_rand_args = ["--dedicated".to_string(), dir("dedicated-cold-rand")];
    let (cold_rand, cold_rand_served) = scenario(
        &s,
        "imagefs cold, rand",
        Backend::Imagefs(&cold_rand_args),
        &rand_only,
    );
    // The cold sequential boot left every chunk in this dedicated tier.
    let (mut warm, warm_served) = scenario(
        &s,
        "imagefs warm 1",
        Backend::Imagefs(&cold_seq_args),
        &both,
    );

    let shared = dir("shared");
    let out = run_ok(
        Command::new(&s.imagefs)
            .args(["fetch", TAG, "--store"])
            .arg(&s.store)
            .arg("--keys")
            .arg(&s.keys)
            .args(["--shared", &shared, "--shared-capacity", "2G"])
            .env_remove("IMAGEFS_CONFIG"),
        "imagefs fetch (filling the shared tier)",
    );
    println!("  shared tier filled: {}", out.trim().replace('\n', "; "));
    let shared_args = |name: &str| {
        vec![
            "--shared".to_string(),
            shared.clone(),
            "--shared-capacity".into(),
            "2G".into(),
            "--dedicated".into(),
            dir(name),
        ]
    };
    let (shared_seq, shared_seq_served) = scenario(
        &s,
        "imagefs shared warm, seq",
        Backend::Imagefs(&shared_args("dedicated-shared-seq")),
        &seq_only,
    );
    let (shared_rand, shared_rand_served) = scenario(
        &s,
        "imagefs shared warm, rand",
        Backend::Imagefs(&shared_args("dedicated-shared-rand")),
        &rand_only,
    );

    // The second boots of the warm pair, in the other order.
    let (warm2, warm2_served) = scenario(
        &s,
        "imagefs warm 2",
        Backend::Imagefs(&cold_seq_args),
        &both,
    );
    warm.extend(warm2);
    let (qsd2, _) = scenario(&s, "qsd (reference) 2", Backend::Qsd, &both);
    qsd.extend(qsd2);

    let pick = |runs: &[Run], phase: Phase| median(runs, phase).expect("a run of each phase");
    let rows = [
        Row {
            name: "qsd raw (reference)",
            seq: pick(&qsd, Phase::Seq),
            rand: pick(&qsd, Phase::Rand),
            served: Vec::new(),
        },
        Row {
            name: "imagefs warm (dedicated)",
            seq: pick(&warm, Phase::Seq),
            rand: pick(&warm, Phase::Rand),
            served: vec![warm_served.clone(), warm2_served.clone()],
        },
        Row {
            name: "imagefs cold (origin)",
            seq: pick(&cold_seq, Phase::Seq),
            rand: pick(&cold_rand, Phase::Rand),
            served: vec![cold_seq_served.clone(), cold_rand_served.clone()],
        },
        Row {
            name: "imagefs shared warm",
            seq: pick(&shared_seq, Phase::Seq),
            rand: pick(&shared_rand, Phase::Rand),
            served: vec![shared_seq_served.clone(), shared_rand_served.clone()],
        },
    ];
    print_table(&rows);
    println!();
    println!("where imagefs found the chunks (serve --stats-json):");
    for (name, served) in [
        ("warm 1", &warm_served),
        ("warm 2", &warm2_served),
        ("cold, seq", &cold_seq_served),
        ("cold, rand", &cold_rand_served),
        ("shared warm, seq", &shared_seq_served),
        ("shared warm, rand", &shared_rand_served),
    ] {
        print!("  {name}:\n{}", served.stats);
    }
    for (name, runs) in [("qsd", &qsd), ("imagefs warm", &warm)] {
        let per = |phase: Phase, f: fn(&Run) -> f64| {
            runs.iter()
                .filter(|r| r.phase == phase)
                .map(|r| format!("{:.0}", f(r)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  {name} rounds: seq MB/s {}; rand IOPS {}",
            per(Phase::Seq, Run::mb_per_s),
            per(Phase::Rand, Run::iops)
        );
    }
    println!("total {:.0} s", total.elapsed().as_secs_f64());
}
