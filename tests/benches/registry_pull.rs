//! Converting straight from a registry against the two-step path users
//! take today, in one run: the Debian `python` image pushed into a local
//! `docker-registry` (HTTP on loopback), then
//! - direct: `imagefs convert docker://127.0.0.1:PORT/debian:python`;
//! - two-step: `skopeo copy docker://… oci:DIR:python` followed by
//!   `imagefs convert oci:DIR:python`;
//!
//! each into a fresh store, three rounds taking turns, the median counting.
//! Prints wall times and the ratio direct / two-step (goal: ≤ 0.7).
//!
//! Needs the Debian images (`scripts/build-debian-images.sh`), skopeo,
//! docker-registry and a release `imagefs` (`cargo build --release -p
//! tools`); says `SKIP:` otherwise. Run: `cargo bench -p tests --bench
//! registry_pull`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tests::e2e::{debian_layout, layout_tags};
use tests::harness::{self, require_tool, skip};
use tests::registry::{Auth, Registry, RegistryStartError};

const TAG: &str = "python";
/// Rounds per side (`IMAGEFS_BENCH_ROUNDS` overrides).
const ROUNDS: usize = 3;

type Res<T> = Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("registry_pull: {e}");
        std::process::exit(1);
    }
}

fn timed(cmd: &mut Command) -> Res<Duration> {
    let start = Instant::now();
    harness::output(cmd)?;
    Ok(start.elapsed())
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
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
    let (mut direct, mut copy, mut two_step) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let work = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = work.path().join("direct");
        direct.push(timed(&mut convert(&bin, &remote, &d))?);

        let t = work.path().join("two-step");
        std::fs::create_dir_all(&t).map_err(|e| e.to_string())?;
        let oci = format!("oci:{}:{TAG}", t.join("oci").display());
        let c = timed(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &remote,
            &oci,
        ]))?;
        let v = timed(&mut convert(&bin, &oci, &t))?;
        copy.push(c);
        two_step.push(c + v);
    }
    let (d, c, t) = (median(direct), median(copy), median(two_step));
    println!("convert the Debian {TAG} image from a local registry (median of {rounds})");
    println!("{:<40} {:>10}", "path", "seconds");
    println!(
        "{:<40} {:>10.2}",
        "imagefs convert docker://",
        d.as_secs_f64()
    );
    println!(
        "{:<40} {:>10.2}",
        "skopeo copy docker:// oci:",
        c.as_secs_f64()
    );
    println!(
        "{:<40} {:>10.2}",
        "skopeo copy + imagefs convert oci:",
        t.as_secs_f64()
    );
    println!(
        "ratio direct / two-step: {:.2} (goal <= 0.70)",
        d.as_secs_f64() / t.as_secs_f64()
    );
    Ok(())
}
