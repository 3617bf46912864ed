//! Reading every regular file of a real image through imagefs's FUSE view
//! against the kernel's loop mount of the same ext4 image, in one run.
//!
//! For each Debian image (python, node): `imagefs convert` into a
//! directory store, `imagefs export` back to an ext4 file, then that file
//! is mounted both ways:
//! - loop: `mount -t ext4 -o loop,ro`;
//! - imagefs: `imagefs::transport::fuse::mount` (what `imagefs mount` runs), in this
//!   process, with the exported file as its block device and no
//!   passthrough. Both sides then read the same bytes from the same file on
//!   the same disk, so the ratio is the FUSE view's own per-file and
//!   per-byte cost; the tiers' cost is `lazy_read`'s subject. In process,
//!   the mount's request counters ([`imagefs::transport::fuse::FuseStats`]) are read
//!   as data.
//!
//! One read of the tree: walk it from the mount point (`readdir`, types
//! from the entries, no `stat`), and read each regular file start to end
//! with 128 KiB `read`s into one buffer (as `cat` does), in this one
//! process. Cold: every page cache dropped (`echo 3 >
//! /proc/sys/vm/drop_caches`) right after a fresh mount, then one read;
//! the median of three, the two sides taking turns. Warm: the best of
//! three further reads on the last of those mounts.
//!
//! Needs root, `/dev/fuse`, the Debian images
//! (`scripts/build-debian-images.sh`) and a release `imagefs` for the
//! conversion (`cargo build --release -p tools`); says `SKIP:` otherwise.
//! Run: `cargo bench -p tests --bench every_file` (`-- --json` prints the
//! rows as JSON instead of a table; `-- --image PATH` measures an ext4
//! image file of your own instead, with no conversion).

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use imagefs::BlockDevice;
use imagefs::transport::fuse::{FuseStats, MountOptions};
use tests::harness::{self, Mount};

/// The images read, by tag in the Debian layout.
const TAGS: [&str; 2] = ["python", "node"];
/// Cold reads (each on a fresh mount) per side; the median counts.
const COLD_ROUNDS: usize = 3;
/// Warm reads per side; the best counts.
const WARM_ROUNDS: usize = 3;
/// Bytes per `read`.
const READ_SIZE: usize = 128 << 10;

type Res<T> = Result<T, String>;

fn main() {
    if let Err(e) = run() {
        eprintln!("every_file: {e}");
        std::process::exit(1);
    }
}

/// One side's figures for one image and cache state.
#[derive(Clone, Copy, Debug, Default)]
struct Side {
    ms: f64,
    files: u64,
    bytes: u64,
}

impl Side {
    fn files_per_s(&self) -> f64 {
        self.files as f64 / (self.ms / 1e3)
    }
}

/// One image, cold or warm: both sides and the FUSE requests per read of
/// the tree.
#[derive(Debug)]
struct Row {
    image: String,
    state: &'static str,
    loop_mount: Side,
    imagefs: Side,
    requests: FuseStats,
}

impl Row {
    fn ratio(&self) -> f64 {
        // Speed ratio: loop time over imagefs time.
        self.loop_mount.ms / self.imagefs.ms
    }

    fn per_file(&self, n: u64) -> f64 {
        n as f64 / self.imagefs.files.max(1) as f64
    }

    fn json(&self) -> serde_json::Value {
        let side = |s: &Side| {
            serde_json::json!({"ms": s.ms, "files": s.files, "bytes": s.bytes,
                "files_per_s": s.files_per_s()})
        };
        serde_json::json!({
            "image": self.image,
            "state": self.state,
            "loop": side(&self.loop_mount),
            "imagefs": side(&self.imagefs),
            "ratio": self.ratio(),
            "fuse_requests": serde_json::to_value(self.requests).unwrap_or_default(),
        })
    }
}

fn run() -> Res<()> {
    if !harness::require_root("loop mounts, FUSE and dropping the page cache") {
        return Ok(());
    }
    if !Path::new("/dev/fuse").exists() {
        harness::skip("/dev/fuse does not exist");
        return Ok(());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let json = args.iter().any(|a| a == "--json");
    if let Some(i) = args.iter().position(|a| a == "--image") {
        let image = PathBuf::from(args.get(i + 1).ok_or("--image needs a path")?);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let name = image
            .file_name()
            .map_or_else(|| "image".to_string(), |n| n.to_string_lossy().into_owned());
        if let Some(rows) = measure(&name, &image, dir.path())? {
            report(&rows, json);
        }
        return Ok(());
    }
    let layout = tests::e2e::debian_layout();
    let have = tests::e2e::layout_tags(&layout).unwrap_or_default();
    let tags: Vec<&str> = TAGS
        .into_iter()
        .filter(|t| have.iter().any(|h| h == t))
        .collect();
    if tags.is_empty() {
        harness::skip(&format!(
            "no Debian python or node image at {} (scripts/build-debian-images.sh)",
            layout.display()
        ));
        return Ok(());
    }
    let Some(imagefs) = harness::release_imagefs() else {
        return Ok(());
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (store, keys) = (dir.path().join("store"), dir.path().join("keys"));
    let mut rows = Vec::new();
    for tag in tags {
        let source = format!("oci:{}:{tag}", layout.display());
        let mut convert = Command::new(&imagefs);
        convert
            .args(["convert", &source, "--tag", tag, "--store"])
            .arg(&store)
            .arg("--keys")
            .arg(&keys);
        harness::output(&mut convert)?;
        let image = dir.path().join(format!("{tag}.img"));
        let mut export = Command::new(&imagefs);
        export
            .args(["export", tag, "--store"])
            .arg(&store)
            .arg("--keys")
            .arg(&keys)
            .arg("--output")
            .arg(&image);
        harness::output(&mut export)?;
        let Some(measured) = measure(tag, &image, dir.path())? else {
            return Ok(());
        };
        rows.extend(measured);
        fs::remove_file(&image).map_err(|e| e.to_string())?;
    }
    report(&rows, json);
    Ok(())
}

fn report(rows: &[Row], json: bool) {
    if json {
        let all: Vec<_> = rows.iter().map(Row::json).collect();
        println!("{}", serde_json::Value::Array(all));
    } else {
        print_table(rows);
    }
}

fn drop_caches() -> Res<()> {
    let _ = Command::new("sync").status();
    fs::write("/proc/sys/vm/drop_caches", "3").map_err(|e| format!("drop_caches: {e}"))
}

/// Opens `path` and reads it to its end into `buf`; the bytes read.
fn read_file(path: &Path, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut f = File::open(path)?;
    let mut total = 0;
    loop {
        match f.read(buf)? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// One read of the tree under `root` (see the file comment).
fn read_all(root: &Path) -> Res<Side> {
    let mut buf = vec![0u8; READ_SIZE];
    let mut side = Side::default();
    let t = Instant::now();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| format!("{}: {e}", d.display()))? {
            let e = e.map_err(|e| format!("{}: {e}", d.display()))?;
            let kind = e.file_type().map_err(|e| e.to_string())?;
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_file() {
                let path = e.path();
                side.bytes +=
                    read_file(&path, &mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
                side.files += 1;
            }
        }
    }
    side.ms = t.elapsed().as_secs_f64() * 1e3;
    Ok(side)
}

/// What one mount gave: a cold read, the best of `warm_rounds` warm
/// ones (if any), and the FUSE requests of each (per warm read).
struct Measured {
    cold: Side,
    warm: Option<Side>,
    requests: [FuseStats; 2],
}

/// One fresh mount made by `mount`: caches dropped, a cold read, then the
/// warm reads; `None` (after a SKIP line) when it cannot be mounted here.
fn one_mount(
    mount: impl FnOnce() -> Res<Option<Box<dyn Mounted>>>,
    warm_rounds: usize,
) -> Res<Option<Measured>> {
    let Some(m) = mount()? else {
        return Ok(None);
    };
    drop_caches()?;
    let before = m.stats();
    let cold = read_all(m.root())?;
    let after_cold = m.stats();
    let mut warm: Option<Side> = None;
    for _ in 0..warm_rounds {
        let s = read_all(m.root())?;
        if warm.is_none_or(|w| s.ms < w.ms) {
            warm = Some(s);
        }
    }
    let per_warm = divide(diff(m.stats(), after_cold), warm_rounds as u64);
    m.unmount()?;
    Ok(Some(Measured {
        cold,
        warm,
        requests: [diff(after_cold, before), per_warm],
    }))
}

/// A mount being measured.
trait Mounted {
    fn root(&self) -> &Path;
    fn stats(&self) -> FuseStats;
    fn unmount(self: Box<Self>) -> Res<()>;
}

struct LoopSide(Mount);

impl Mounted for LoopSide {
    fn root(&self) -> &Path {
        self.0.path()
    }
    fn stats(&self) -> FuseStats {
        FuseStats::default()
    }
    fn unmount(self: Box<Self>) -> Res<()> {
        self.0.unmount()
    }
}

struct FuseSide(imagefs::transport::fuse::Mounted);

impl Mounted for FuseSide {
    fn root(&self) -> &Path {
        self.0.mountpoint()
    }
    fn stats(&self) -> FuseStats {
        self.0.stats()
    }
    fn unmount(self: Box<Self>) -> Res<()> {
        self.0.unmount().map_err(|e| e.to_string())
    }
}

fn diff(a: FuseStats, b: FuseStats) -> FuseStats {
    FuseStats {
        lookups: a.lookups - b.lookups,
        getattrs: a.getattrs - b.getattrs,
        opens: a.opens - b.opens,
        releases: a.releases - b.releases,
        reads: a.reads - b.reads,
        read_bytes: a.read_bytes - b.read_bytes,
        opendirs: a.opendirs - b.opendirs,
        readdirs: a.readdirs - b.readdirs,
        dir_entries: a.dir_entries - b.dir_entries,
        readlinks: a.readlinks - b.readlinks,
        xattrs: a.xattrs - b.xattrs,
    }
}

fn divide(a: FuseStats, n: u64) -> FuseStats {
    let d = |x: u64| x / n.max(1);
    FuseStats {
        lookups: d(a.lookups),
        getattrs: d(a.getattrs),
        opens: d(a.opens),
        releases: d(a.releases),
        reads: d(a.reads),
        read_bytes: d(a.read_bytes),
        opendirs: d(a.opendirs),
        readdirs: d(a.readdirs),
        dir_entries: d(a.dir_entries),
        readlinks: d(a.readlinks),
        xattrs: d(a.xattrs),
    }
}

/// Both sides of one image, cold and warm.
fn measure(tag: &str, image: &Path, work: &Path) -> Res<Option<Vec<Row>>> {
    let (loop_dir, fuse_dir) = (work.join("loop"), work.join("fuse"));
    for d in [&loop_dir, &fuse_dir] {
        fs::create_dir_all(d).map_err(|e| e.to_string())?;
    }
    let loop_side = || {
        Ok(Mount::loop_mount(image, &loop_dir, true)?
            .map(|m| Box::new(LoopSide(m)) as Box<dyn Mounted>))
    };
    let fuse_side = || {
        let file = File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
        let source: Arc<dyn BlockDevice> = Arc::new(file);
        let opts = MountOptions {
            fs_name: Some(format!("imagefs-bench-{tag}")),
            ..MountOptions::default()
        };
        let m = imagefs::transport::fuse::mount(source, &fuse_dir, &opts).map_err(|e| {
            format!(
                "mounting {} with FUSE: {}",
                image.display(),
                imagefs::error_chain(&e)
            )
        })?;
        Ok(Some(Box::new(FuseSide(m)) as Box<dyn Mounted>))
    };
    // The sides take turns, so that whatever else the machine is doing
    // falls on both; the last mount of each also does the warm reads.
    let (mut los, mut fus) = (Vec::new(), Vec::new());
    for round in 0..COLD_ROUNDS {
        let warm = if round + 1 == COLD_ROUNDS {
            WARM_ROUNDS
        } else {
            0
        };
        let (Some(lo), Some(fu)) = (one_mount(loop_side, warm)?, one_mount(fuse_side, warm)?)
        else {
            return Ok(None);
        };
        los.push(lo);
        fus.push(fu);
    }
    let (lo_cold, fu_cold) = (median_cold(&los), median_cold(&fus));
    let lo_last = los.last().ok_or("no rounds")?;
    let fu_last = fus.last().ok_or("no rounds")?;
    let lo = [lo_cold.cold, lo_last.warm.ok_or("no warm read")?];
    let fu = [fu_cold.cold, fu_last.warm.ok_or("no warm read")?];
    let requests = [fu_cold.requests[0], fu_last.requests[1]];
    let mut rows = Vec::new();
    for (k, state) in ["cold", "warm"].into_iter().enumerate() {
        if (lo[k].files, lo[k].bytes) != (fu[k].files, fu[k].bytes) {
            return Err(format!(
                "{tag} ({state}): the loop mount read {} files, {} bytes; imagefs {} files, {} bytes",
                lo[k].files, lo[k].bytes, fu[k].files, fu[k].bytes
            ));
        }
        rows.push(Row {
            image: tag.to_string(),
            state,
            loop_mount: lo[k],
            imagefs: fu[k],
            requests: requests[k],
        });
    }
    Ok(Some(rows))
}

/// The measurement whose cold read is the median.
fn median_cold(runs: &[Measured]) -> &Measured {
    let mut by_ms: Vec<&Measured> = runs.iter().collect();
    by_ms.sort_by(|a, b| a.cold.ms.total_cmp(&b.cold.ms));
    by_ms[by_ms.len() / 2]
}

fn print_table(rows: &[Row]) {
    println!(
        "Every regular file read once per round: walk with readdir, then open and read each \
         file to its end in {} KiB reads, one process.",
        READ_SIZE >> 10
    );
    println!(
        "loop = kernel ext4 on a loop device over the exported image; imagefs = imagefs::transport::fuse::mount \
         (as `imagefs mount`) over the same file, no passthrough, in the benchmark's process."
    );
    println!(
        "cold = fresh mount, every page cache dropped, one read (median of {COLD_ROUNDS} mounts, \
         the sides taking turns); warm = best of {WARM_ROUNDS} further reads on the last mount. \
         ratio = loop ms / imagefs ms (1.0 = as fast as the kernel); requests per file are \
         imagefs's, per read of the tree.\n"
    );
    println!(
        "| image | state | files | MB | loop ms | loop files/s | imagefs ms | imagefs files/s | \
         ratio | lookups/file | getattrs/file | opens/file | reads/file | readdirs |"
    );
    println!(
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            r.image,
            r.state,
            r.imagefs.files,
            r.imagefs.bytes as f64 / 1e6,
            r.loop_mount.ms,
            r.loop_mount.files_per_s(),
            r.imagefs.ms,
            r.imagefs.files_per_s(),
            r.ratio(),
            r.per_file(r.requests.lookups),
            r.per_file(r.requests.getattrs),
            r.per_file(r.requests.opens),
            r.per_file(r.requests.reads),
            r.requests.readdirs,
        );
    }
}
