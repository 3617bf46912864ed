//! Converting straight from a registry against the two-step path users
//! take today, in one run: the Debian `python` image pushed into a local
//! `docker-registry` (HTTP on loopback), then
//! - direct: `imagefs convert docker://127.0.0.1:PORT/debian:python`;
//! - two-step: `skopeo copy docker://… oci:DIR:python` followed by
//!   `imagefs convert oci:DIR:python`;
//!
//! each into a fresh store. The rounds take turns at which side goes
//! first, and every store is kept to the end: deleting one slows the next
//! run's file creation (ext4 without a journal steps over recently deleted
//! inodes), which would fall on whichever side ran next.
//!
//! Two links: loopback as it is (the bar), and loopback with what
//! the registry sends shaped to a network's rate (`IMAGEFS_BENCH_LINK`,
//! default `1gbit`; `tc`, root; skipped with the reason otherwise), where
//! the download takes time of its own for the direct path to hide.
//! Prints wall and CPU times, the CPU the registry used meanwhile (on
//! loopback it shares the two cores with the conversion), and the ratio
//! direct / two-step (goal: ≤ 0.7) for each; `IMAGEFS_BENCH_JSON=FILE`
//! writes the report.
//!
//! Needs the Debian images (`scripts/build-debian-images.sh`), skopeo,
//! docker-registry and a release `imagefs` (`cargo build --release -p
//! tools`); says `SKIP:` otherwise. Run: `cargo bench -p tests --bench
//! registry_pull`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde::Serialize;
use tests::e2e::{debian_layout, layout_tags};
use tests::harness::{self, require_tool, skip};
use tests::linkshape::Shaped;
use tests::registry::{Auth, Registry, RegistryStartError};

const TAG: &str = "python";
/// Rounds per side (`IMAGEFS_BENCH_ROUNDS` overrides).
const ROUNDS: usize = 3;

type Res<T> = Result<T, String>;

/// One path's figures: the median round by wall time.
#[derive(Clone, Copy, Debug, Default, Serialize)]
struct Timing {
    /// Wall seconds.
    secs: f64,
    /// CPU seconds (user + system) of the commands themselves, not the
    /// registry's.
    cpu_secs: f64,
    /// CPU seconds the registry used while they ran.
    registry_cpu_secs: f64,
}

/// Both paths over one link.
#[derive(Debug, Serialize)]
struct LinkResult {
    /// `loopback`, or the rate the registry's answers were shaped to.
    link: String,
    /// `imagefs convert docker://…`.
    direct: Timing,
    /// `skopeo copy docker://… oci:…` alone.
    skopeo: Timing,
    /// skopeo copy, then `imagefs convert oci:…`.
    two_step: Timing,
    /// direct / two-step wall time (goal ≤ 0.7).
    ratio: f64,
    /// Every round: direct, skopeo, two-step.
    runs: Vec<[Timing; 3]>,
}

/// The comparison.
#[derive(Debug, Serialize)]
struct PullReport {
    rounds: usize,
    links: Vec<LinkResult>,
    /// Why a link was not measured.
    skipped: Vec<String>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("registry_pull: {e}");
        std::process::exit(1);
    }
}

/// CPU seconds of the children waited for so far.
fn children_cpu() -> Res<f64> {
    harness::proc_cpu_secs("self", true)
}

/// Runs `cmd`: its wall time, its CPU, and the CPU `reg` used meanwhile.
fn timed(cmd: &mut Command, reg: &Registry) -> Res<Timing> {
    let (start, cpu, reg_cpu) = (Instant::now(), children_cpu()?, reg.cpu_secs()?);
    harness::output(cmd)?;
    Ok(Timing {
        secs: start.elapsed().as_secs_f64(),
        cpu_secs: children_cpu()? - cpu,
        registry_cpu_secs: reg.cpu_secs()? - reg_cpu,
    })
}

fn convert(bin: &Path, src: &str, work: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("convert")
        .arg(src)
        .arg("--store")
        .arg(work.join("store"))
        .arg("--keys")
        .arg(work.join("keys"))
        .arg("--json");
    cmd
}

fn median(mut v: Vec<Timing>) -> Timing {
    v.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    v[v.len() / 2]
}

/// Reads the registry's storage (`served`) into the page cache, so that
/// neither side waits for the disk because the host's memory reclaim
/// (DAMON's pageout, on this VM) took the blobs; then writes back what the
/// previous run left dirty and pauses: the virtual disk here is still busy
/// for a moment after `sync` returns, and a run started at once pays for
/// some of the last one's writes.
fn settle(served: &Path) -> Res<()> {
    harness::output(
        Command::new("find")
            .arg(served)
            .args(["-type", "f", "-exec", "cat", "{}", "+"])
            .stdout(std::process::Stdio::null()),
    )?;
    let _ = Command::new("sync").status();
    std::thread::sleep(std::time::Duration::from_secs(2));
    Ok(())
}

fn run() -> Res<()> {
    let layout = debian_layout();
    if !layout_tags(&layout)
        .unwrap_or_default()
        .iter()
        .any(|t| t == TAG)
    {
        skip(&format!(
            "no Debian layout with tag {TAG} at {} (scripts/build-debian-images.sh)",
            layout.display()
        ));
        return Ok(());
    }
    if !require_tool("skopeo") {
        return Ok(());
    }
    let Some(bin) = harness::release_imagefs() else {
        return Ok(());
    };
    let reg = match Registry::start(Auth::None, None) {
        Ok(r) => r,
        Err(RegistryStartError::NotInstalled) => {
            skip("docker-registry is not installed (scripts/install-deps.sh)");
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    reg.push(
        &format!("oci:{}:{TAG}", layout.display()),
        "debian:python",
        &[],
    )?;
    let remote = format!("docker://{}/debian:python", reg.host());
    let rounds = std::env::var("IMAGEFS_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS)
        .max(1);
    let rate = std::env::var("IMAGEFS_BENCH_LINK").unwrap_or_else(|_| "1gbit".into());
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut report = PullReport {
        rounds,
        links: vec![measure(
            &bin,
            &remote,
            &reg,
            rounds,
            &work.path().join("loopback"),
            "loopback",
        )?],
        skipped: Vec::new(),
    };
    match Shaped::port(reg.addr().port(), &rate) {
        Ok(_shaped) => report.links.push(measure(
            &bin,
            &remote,
            &reg,
            rounds,
            &work.path().join("shaped"),
            &rate,
        )?),
        Err(why) => {
            let why = format!("the {rate} link: {why}");
            skip(&why);
            report.skipped.push(why);
        }
    }
    if let Ok(path) = std::env::var("IMAGEFS_BENCH_JSON") {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&path, json).map_err(|e| format!("{path}: {e}"))?;
    }
    print_report(&report);
    Ok(())
}

/// `rounds` rounds of both paths from `remote` (served by `reg`), in fresh
/// stores under `work`.
fn measure(
    bin: &Path,
    remote: &str,
    reg: &Registry,
    rounds: usize,
    work: &Path,
    link: &str,
) -> Res<LinkResult> {
    let (mut direct, mut copy, mut two_step) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let d = work.join(format!("direct-{round}"));
        let t = work.join(format!("two-step-{round}"));
        std::fs::create_dir_all(&t).map_err(|e| e.to_string())?;
        let oci = format!("oci:{}:{TAG}", t.join("oci").display());
        for side in [round % 2, 1 - round % 2] {
            settle(reg.dir())?;
            if side == 0 {
                direct.push(timed(&mut convert(bin, remote, &d), reg)?);
                continue;
            }
            let c = timed(
                Command::new("skopeo").args([
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    remote,
                    &oci,
                ]),
                reg,
            )?;
            let v = timed(&mut convert(bin, &oci, &t), reg)?;
            copy.push(c);
            two_step.push(Timing {
                secs: c.secs + v.secs,
                cpu_secs: c.cpu_secs + v.cpu_secs,
                registry_cpu_secs: c.registry_cpu_secs + v.registry_cpu_secs,
            });
        }
    }
    let runs = (0..rounds)
        .map(|i| [direct[i], copy[i], two_step[i]])
        .collect();
    let (direct, skopeo, two_step) = (median(direct), median(copy), median(two_step));
    Ok(LinkResult {
        link: link.to_owned(),
        ratio: direct.secs / two_step.secs,
        direct,
        skopeo,
        two_step,
        runs,
    })
}

fn print_report(r: &PullReport) {
    println!(
        "convert the Debian {TAG} image from a local registry (median of {} rounds)",
        r.rounds
    );
    println!(
        "{:<12} {:<36} {:>8} {:>8} {:>15}",
        "link", "path", "seconds", "CPU s", "registry CPU s"
    );
    for l in &r.links {
        for (name, t) in [
            ("imagefs convert docker://", l.direct),
            ("skopeo copy docker:// oci:", l.skopeo),
            ("skopeo copy + imagefs convert oci:", l.two_step),
        ] {
            println!(
                "{:<12} {name:<36} {:>8.2} {:>8.2} {:>15.2}",
                l.link, t.secs, t.cpu_secs, t.registry_cpu_secs
            );
        }
    }
    for l in &r.links {
        println!(
            "ratio direct / two-step, {}: {:.2} (goal <= 0.70)",
            l.link, l.ratio
        );
    }
    for s in &r.skipped {
        println!("not measured: {s}");
    }
}
