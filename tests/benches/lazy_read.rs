//! Lazy reads through the tiers, one run, ratios
//! against baselines measured in the same run.
//!
//! 1. Chunk fetch latency (p50/p99) of every stored chunk of the Debian
//!    python image from each tier: the shared local tier (RocksDB), an
//!    `imagefs cache-node` on loopback (cold, then warm over HTTP/1.1 and
//!    h2c) and Garage (S3), against a plain axum + reqwest GET of an
//!    object of the same size (`--json=FILE` also writes the figures).
//! 2. Sequential read of the image's largest file through `imagefs mount`
//!    (FUSE, dedicated tier warm), with reads served by imagefs
//!    (`--no-passthrough`) and with FUSE passthrough, against the same file
//!    on a kernel loop mount of the exported image: with only the file's
//!    own pages evicted before each read (what backs it stays in memory:
//!    the loop device's image file, imagefs's dedicated tier or its
//!    passthrough copy), and with every page cache dropped.
//! 3. Bytes fetched against bytes read: a cold mount, `find` over the whole
//!    tree, then a handful of files read.
//!
//! Needs root, `/dev/fuse`, Garage, the Debian images
//! (`scripts/build-debian-images.sh`) and a release `imagefs`
//! (`cargo build --release -p tools`); says `SKIP:` otherwise.
//! Run: `cargo bench -p tests --bench lazy_read`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use cachetiers::{ChunkStore, ObjectOrigin, S3Settings};
use manifest::report::MountStats;
use manifest::{ChunkId, LocalKeyProvider};
use telemetry::histogram::percentile;
use tests::garage::Garage;
use tests::harness::{self, Mount};
use tests::process::Running;

// Part 1 lives in a file of its own (the report type and its table).
#[path = "lazy_read/latency.rs"]
mod latency;

/// Timed reads per side in part 2 (medians are reported).
const ROUNDS: usize = 9;
/// Files read after the `find` in part 3.
const HANDFUL: usize = 5;

fn main() {
    if let Err(e) = run() {
        eprintln!("lazy_read: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, String>;

fn run() -> Res<()> {
    let Some(mut setup) = Setup::new()? else {
        return Ok(());
    };
    let ids = setup.chunk_ids()?;
    println!(
        "image: Debian python, {} stored chunks (unique), {} MB of objects in Garage\n",
        ids.len(),
        setup.stored_bytes / 1_000_000
    );
    // `cargo bench -p tests --bench lazy_read -- fuse` runs only the parts
    // whose names contain an argument.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |part: &str| wanted.is_empty() || wanted.iter().any(|w| part.contains(w.as_str()));
    if want("latency") {
        let json = std::env::args().find_map(|a| a.strip_prefix("--json=").map(str::to_owned));
        latency::fetch_latency(&setup, &ids, json.as_deref())?;
    }
    if want("fuse") {
        fuse_vs_loop(&setup)?;
    }
    if want("fetched") {
        fetched_vs_read(&setup)?;
    }
    Ok(())
}

/// Everything the parts share: Garage holding the converted image, its
/// keys, and the release binary.
struct Setup {
    dir: tempfile::TempDir,
    garage: Garage,
    imagefs: PathBuf,
    origin_url: String,
    stored_bytes: u64,
}

impl Setup {
    fn new() -> Res<Option<Setup>> {
        if !harness::require_root("loop mounts, FUSE and dropping the page cache") {
            return Ok(None);
        }
        if !Path::new("/dev/fuse").exists() {
            harness::skip("/dev/fuse does not exist");
            return Ok(None);
        }
        let layout = tests::e2e::debian_layout();
        let tags = tests::e2e::layout_tags(&layout).unwrap_or_default();
        if !tags.iter().any(|t| t == "python") {
            harness::skip(&format!(
                "no Debian python image at {} (scripts/build-debian-images.sh)",
                layout.display()
            ));
            return Ok(None);
        }
        let Some(imagefs) = harness::release_imagefs() else {
            return Ok(None);
        };
        let garage = match Garage::start_new() {
            Ok(g) => g,
            Err(e) => {
                harness::skip(&format!("no Garage S3 server: {e}"));
                return Ok(None);
            }
        };
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let origin_url = format!("s3://{}/bench", garage.bucket);
        let setup = Setup {
            dir,
            garage,
            imagefs,
            origin_url,
            stored_bytes: 0,
        };
        let source = format!("oci:{}:python", layout.display());
        let started = Instant::now();
        let out = setup.output(
            setup
                .cmd()
                .args(["convert", &source, "--tag", "python", "--store"])
                .arg(&setup.origin_url)
                .arg("--keys")
                .arg(setup.keys()),
        )?;
        println!(
            "converted into Garage in {:.1} s: {}",
            started.elapsed().as_secs_f64(),
            out.lines().last().unwrap_or("")
        );
        Ok(Some(setup))
    }

    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `imagefs` with Garage's credentials in its environment.
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.imagefs);
        c.env("AWS_ENDPOINT_URL", &self.garage.endpoint)
            .env("AWS_REGION", &self.garage.region)
            .env("AWS_ACCESS_KEY_ID", &self.garage.key_id)
            .env("AWS_SECRET_ACCESS_KEY", &self.garage.secret)
            .env("AWS_ALLOW_HTTP", "true")
            .env_remove("IMAGEFS_CONFIG");
        c
    }

    fn output(&self, cmd: &mut Command) -> Res<String> {
        harness::output(cmd)
    }

    fn origin(&self) -> Res<ObjectOrigin> {
        let s = S3Settings {
            endpoint: Some(self.garage.endpoint.clone()),
            region: Some(self.garage.region.clone()),
            access_key_id: Some(self.garage.key_id.clone()),
            secret_access_key: Some(self.garage.secret.clone()),
            ..S3Settings::new(self.garage.bucket.clone(), "bench")
        };
        ObjectOrigin::s3(&s).map_err(|e| format!("open Garage as the origin: {e}"))
    }

    /// Every distinct stored chunk of the image, in device order.
    fn chunk_ids(&mut self) -> Res<Vec<ChunkId>> {
        let origin = self.origin()?;
        let keys = LocalKeyProvider::open(self.keys()).map_err(|e| e.to_string())?;
        let opened = imagefs::open_image(&origin, "python", &keys, manifest::DEFAULT_DOMAIN)
            .map_err(|e| format!("open the image in Garage: {e}"))?;
        let mut seen = std::collections::HashSet::new();
        let ids: Vec<ChunkId> = opened
            .manifest
            .chunks
            .iter()
            .filter_map(|c| c.id().copied())
            .filter(|id| seen.insert(*id))
            .collect();
        self.stored_bytes = 0;
        for id in &ids {
            let o = origin.get(id).map_err(|e| e.to_string())?;
            self.stored_bytes += o.map_or(0, |o| o.len() as u64);
        }
        Ok(ids)
    }

    /// `imagefs mount python DIR` with the given tier flags, `--stats` and
    /// `--stats-json`; returns once it has mounted.
    fn mount(&self, mnt: &Path, tier_flags: &[&str]) -> Res<FuseMount> {
        fs::create_dir_all(mnt).map_err(|e| e.to_string())?;
        let report = mnt.with_extension("stats.json");
        let mut cmd = self.cmd();
        cmd.args(["mount", "python"])
            .arg(mnt)
            .arg("--stats-json")
            .arg(&report)
            .args(["--stats", "--store", &self.origin_url])
            .arg("--keys")
            .arg(self.keys())
            .args(tier_flags);
        let (child, _) = Running::spawn_until(cmd, "mounted ", "imagefs mount")?;
        Ok(FuseMount {
            child: Some(child),
            dir: mnt.to_path_buf(),
            report,
        })
    }
}

/// A running `imagefs mount`; `stop` unmounts it and returns its stats
/// (the `--stats` table, to show, and the `--stats-json` report).
struct FuseMount {
    child: Option<Running>,
    dir: PathBuf,
    report: PathBuf,
}

impl FuseMount {
    fn stop(mut self) -> Res<(String, MountStats)> {
        let child = self.child.take().ok_or("already stopped")?;
        let table = child.stop("-INT")?;
        let text = fs::read_to_string(&self.report)
            .map_err(|e| format!("{}: {e}", self.report.display()))?;
        let report =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", self.report.display()))?;
        Ok((table, report))
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5).unwrap_or(f64::NAN)
}

/// Every regular file under `dir` with its size (symlinks not followed).
fn regular_files(dir: &Path) -> Res<Vec<(PathBuf, u64)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let m = fs::symlink_metadata(e.path()).map_err(|e| e.to_string())?;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                out.push((e.path(), m.len()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// `find DIR`: lstat of every entry; returns how many.
fn find(dir: &Path) -> Res<usize> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let e = e.map_err(|e| e.to_string())?;
            let m = fs::symlink_metadata(e.path()).map_err(|e| e.to_string())?;
            n += 1;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Ok(n)
}

/// What is cached before each timed read.
#[derive(Clone, Copy)]
enum Cold {
    /// Only the file read loses its pages (`dd iflag=nocache`): what
    /// backs it (the loop device's image file, imagefs's dedicated tier)
    /// stays in memory, so the read measures the two stacks' own cost.
    FileOnly,
    /// Every page cache dropped: everything comes from the disk.
    Everything,
}

fn evict(path: &Path, cold: Cold) -> Res<()> {
    match cold {
        Cold::FileOnly => {
            let st = Command::new("dd")
                .arg(format!("if={}", path.display()))
                .args(["iflag=nocache", "count=0", "status=none"])
                .status()
                .map_err(|e| format!("dd: {e}"))?;
            if !st.success() {
                return Err(format!("dd iflag=nocache {}: {st}", path.display()));
            }
            Ok(())
        }
        Cold::Everything => {
            let _ = Command::new("sync").status();
            fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))
        }
    }
}

/// Reads `path` start to end in 1 MiB reads; seconds taken.
fn read_through(path: &Path) -> Res<f64> {
    let mut f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Part 2: the largest file through FUSE (dedicated tier warm) against a
/// loop mount of the exported image, page cache dropped before each read.
fn fuse_vs_loop(s: &Setup) -> Res<()> {
    let raw = s.path("python.img");
    let mut export = s.cmd();
    export
        .args(["export", "python", "--store", &s.origin_url])
        .arg("--keys")
        .arg(s.keys())
        .arg("--output")
        .arg(&raw);
    s.output(&mut export)?;
    let loop_dir = s.path("loop");
    fs::create_dir_all(&loop_dir).map_err(|e| e.to_string())?;
    let Some(lo) = Mount::loop_mount(&raw, &loop_dir, true)? else {
        return Ok(());
    };
    let (rel, size) = regular_files(&loop_dir)?
        .into_iter()
        .max_by_key(|(_, len)| *len)
        .map(|(p, len)| (p.strip_prefix(&loop_dir).unwrap().to_path_buf(), len))
        .ok_or("no regular file in the image")?;

    let mnt = s.path("fuse");
    let dedicated = s.path("dedicated-warm");
    let (lo_file, fuse_file) = (loop_dir.join(&rel), mnt.join(&rel));
    let conditions = [
        (
            Cold::FileOnly,
            "the file's pages evicted, its backing data in memory",
        ),
        (Cold::Everything, "every page cache dropped"),
    ];
    // Seconds per condition: [loop mount, FUSE by reads, FUSE passthrough].
    let mut times = vec![[Vec::new(), Vec::new(), Vec::new()]; conditions.len()];
    let mut reports = Vec::new();
    let mut first_open = 0.0;
    for passthrough in [false, true] {
        let mut flags = vec!["--dedicated", dedicated.to_str().unwrap()];
        if !passthrough {
            flags.push("--no-passthrough");
        }
        let m = s.mount(&mnt, &flags)?;
        // Warms the dedicated tier (first mount) or makes the passthrough
        // copy (second), and checks the two sides agree.
        evict(&fuse_file, Cold::FileOnly)?;
        let t = Instant::now();
        let via_fuse = fs::read(&fuse_file).map_err(|e| format!("FUSE read: {e}"))?;
        if passthrough {
            first_open = t.elapsed().as_secs_f64();
        }
        let via_loop = fs::read(&lo_file).map_err(|e| e.to_string())?;
        if via_fuse != via_loop {
            return Err(format!(
                "/{} differs between FUSE and the loop mount",
                rel.display()
            ));
        }
        for (k, &(cold, _)) in conditions.iter().enumerate() {
            for _ in 0..ROUNDS {
                evict(&lo_file, cold)?;
                let l = read_through(&lo_file)?;
                evict(&fuse_file, cold)?;
                let f = read_through(&fuse_file)?;
                // The loop mount is read next to each FUSE read, in both
                // passes, so both share one baseline.
                times[k][0].push(l);
                times[k][1 + usize::from(passthrough)].push(f);
            }
        }
        reports.push(m.stop()?.0);
    }
    lo.unmount()?;
    let mb = size as f64 / 1e6;
    println!(
        "## Sequential read of /{} ({mb:.1} MB), imagefs's dedicated tier warm, median of {} (loop) and {ROUNDS} (FUSE)\n",
        rel.display(),
        2 * ROUNDS
    );
    println!(
        "| before each read | loop mount MB/s | FUSE, reads served by imagefs MB/s | / loop | FUSE passthrough MB/s | / loop |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for ((_, what), [loops, reads, pass]) in conditions.iter().zip(times) {
        let (l, by_reads, by_pass) = (median(loops), median(reads), median(pass));
        println!(
            "| {what} | {:.0} | {:.0} | {:.2}x | {:.0} | {:.2}x |",
            mb / l,
            mb / by_reads,
            l / by_reads,
            mb / by_pass,
            l / by_pass
        );
    }
    println!(
        "\nFirst read with passthrough (the open copies the file out of the dedicated tier): {:.1} ms, {:.0} MB/s",
        first_open * 1e3,
        mb / first_open
    );
    println!("\n(goal: FUSE >= 0.9x the loop mount)");
    println!(
        "\nimagefs mount --stats, reads served by imagefs:\n{}\nimagefs mount --stats, passthrough:\n{}",
        reports[0], reports[1]
    );
    Ok(())
}

/// Part 3: cold mount, `find`, a handful of files; bytes fetched against
/// bytes read.
fn fetched_vs_read(s: &Setup) -> Res<()> {
    let mnt = s.path("cold");
    let dedicated = s.path("dedicated-cold");
    let m = s.mount(&mnt, &["--dedicated", dedicated.to_str().unwrap()])?;
    let entries = find(&mnt)?;
    let files = regular_files(&mnt)?;
    // The largest file and evenly spaced others (by path): a mix of big
    // libraries and small scripts, chosen the same way every run.
    let mut pick: Vec<&(PathBuf, u64)> = vec![files.iter().max_by_key(|(_, l)| *l).ok_or("empty")?];
    let step = files.len() / HANDFUL;
    pick.extend(files.iter().step_by(step.max(1)).skip(1).take(HANDFUL - 1));
    let mut app_bytes = 0u64;
    for (p, _) in &pick {
        app_bytes += fs::read(p)
            .map_err(|e| format!("{}: {e}", p.display()))?
            .len() as u64;
    }
    let (stats, report) = m.stop()?;
    let (device_bytes, chunks, fetched_bytes) = (
        report.reader.bytes_read,
        report.reader.store_fetches,
        report.reader.store_bytes,
    );
    println!(
        "## Cold mount: find over {entries} entries, then {} files read\n",
        pick.len()
    );
    for (p, len) in &pick {
        println!(
            "- {} ({len} bytes)",
            p.strip_prefix(&mnt).unwrap_or(p).display()
        );
    }
    println!(
        "\n| measure | bytes | vs files read |\n| --- | ---: | ---: |\n\
         | file bytes the reader asked for | {app_bytes} | 1.00x |\n\
         | device bytes FUSE read (metadata + data) | {device_bytes} | {:.2}x |\n\
         | fetched: {chunks} chunks (ciphertext) | {fetched_bytes} | {:.2}x |\n\
         | the whole image's stored objects | {} | {:.2}x |",
        device_bytes as f64 / app_bytes as f64,
        fetched_bytes as f64 / app_bytes as f64,
        s.stored_bytes,
        s.stored_bytes as f64 / app_bytes as f64,
    );
    println!("\nimagefs mount --stats:\n{stats}");
    Ok(())
}
