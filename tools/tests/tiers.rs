//! The whole tier stack with real processes: Garage as the S3
//! origin, `imagefs cache-node` processes as the AZ tier, RocksDB as the
//! shared local tier, and `imagefs mount` reading through all of them.
//!
//! - an image converted into Garage mounts from an empty host and reads
//!   correctly through two cache nodes, one of which is killed mid-read;
//! - a corrupted object in the shared local tier is detected, dropped and
//!   refetched (the read still returns the right bytes);
//! - with the origin stopped and nothing cached, a read fails with EIO
//!   (no hang);
//! - the shared local tier stays under its capacity and survives
//!   `kill -9` of the process filling it;
//! - a real Debian image, converted into Garage, mounts and reads
//!   correctly through a cache node.
//!
//! Needs root, `/dev/fuse` and Garage; says `SKIP:` otherwise.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cachetiers::ChunkStore;
use manifest::report::MountStats;
use tests::garage::Garage;
use tests::harness;
use tests::imagegen::{Compression, Entry, Image, Layer, noise};
use tests::process::Running;
use tests::treecheck::{Mask, assert_same, list_dir, list_ext4_image};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imagefs"))
}

fn with_s3(cmd: &mut Command, g: &Garage) {
    cmd.env("AWS_ENDPOINT_URL", &g.endpoint)
        .env("AWS_REGION", &g.region)
        .env("AWS_ACCESS_KEY_ID", &g.key_id)
        .env("AWS_SECRET_ACCESS_KEY", &g.secret)
        .env("AWS_ALLOW_HTTP", "true");
}

fn garage() -> Option<Garage> {
    match Garage::start_new() {
        Ok(g) => Some(g),
        Err(e) => {
            harness::skip(&format!("no Garage S3 server: {e}"));
            None
        }
    }
}

fn can_mount() -> bool {
    if !Path::new("/dev/fuse").exists() {
        harness::skip("/dev/fuse does not exist");
        return false;
    }
    harness::require_root("mounting FUSE")
}

/// Starts `cmd` and waits for a stdout line starting with `ready`;
/// returns the process and that line.
fn spawn_until(cmd: Command, ready: &str, what: &str) -> (Running, String) {
    Running::spawn_until(cmd, ready, what).unwrap_or_else(|e| panic!("{e}"))
}

fn start_node(g: &Garage, dir: &Path, name: &str, origin: &str) -> (Running, String) {
    let mut cmd = bin();
    cmd.args([
        "cache-node",
        "--listen",
        "127.0.0.1:0",
        "--capacity",
        "256M",
    ])
    .arg("--data")
    .arg(dir.join(name))
    .args(["--origin", origin]);
    with_s3(&mut cmd, g);
    let (p, line) = spawn_until(cmd, "cache node listening on ", name);
    let url = line
        .trim_start_matches("cache node listening on ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    (p, url)
}

struct Mounted {
    proc: Running,
    dir: PathBuf,
    report: PathBuf,
}

/// What a stopped mount reported: its stderr (the --stats table, to show)
/// and its --stats-json report (to check).
struct Stopped {
    table: String,
    report: MountStats,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.table)
    }
}

impl Mounted {
    /// SIGINT, wait, and read what it reported.
    fn stop(self) -> Stopped {
        let table = self.proc.stop("-INT").unwrap_or_else(|e| panic!("{e}"));
        let text = fs::read_to_string(&self.report)
            .unwrap_or_else(|e| panic!("{}: {e}\n{table}", self.report.display()));
        let report = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}\n{text}", self.report.display()));
        Stopped { table, report }
    }
}

#[allow(clippy::too_many_arguments)]
fn mount(
    g: &Garage,
    image: &str,
    mnt: &Path,
    origin: &str,
    keys: &Path,
    shared: &Path,
    dedicated: &Path,
    nodes: &[String],
) -> Mounted {
    fs::create_dir_all(mnt).unwrap();
    let report = dedicated.with_extension("stats.json");
    let mut cmd = bin();
    cmd.args(["mount", image])
        .arg(mnt)
        .arg("--stats-json")
        .arg(&report)
        .args(["--store", origin, "--stats", "--shared-capacity", "256M"])
        .arg("--keys")
        .arg(keys)
        .arg("--shared")
        .arg(shared)
        .arg("--dedicated")
        .arg(dedicated);
    for n in nodes {
        cmd.args(["--az-node", n]);
    }
    with_s3(&mut cmd, g);
    let (proc, _) = spawn_until(cmd, "mounted sha256:", "imagefs mount");
    Mounted {
        proc,
        dir: mnt.to_path_buf(),
        report,
    }
}

/// A tier's counters in the report: (hits, misses, corrupt, errors).
fn stats_row(stats: &Stopped, tier: &str) -> (u64, u64, u64, u64) {
    let t = stats
        .report
        .tiers
        .tiers
        .iter()
        .find(|t| t.tier == tier)
        .unwrap_or_else(|| panic!("no {tier} tier in:\n{stats}"));
    (t.hits, t.misses, t.verification_failures, t.errors)
}

fn sample() -> Image {
    let mut entries = vec![
        Entry::file("etc/os-release", "ID=tiers\n"),
        Entry::symlink("bin/sh", "busybox"),
    ];
    for i in 0..12u64 {
        entries.push(Entry::file(
            format!("lib/big-{i:02}.so"),
            noise(100 + i, 300_000 + i as usize * 7_000),
        ));
    }
    for i in 0..200 {
        entries.push(Entry::file(format!("share/doc/{i:03}"), format!("{i}\n")));
    }
    Image::new(vec![Layer::new(entries).compressed(Compression::Gzip)])
}

/// Writes the sample image, converts it into `origin` with tag `t` and
/// flattens it to `flat.img` for reference.
fn convert_sample(g: &Garage, dir: &Path, origin: &str) -> PathBuf {
    let layout = dir.join("oci");
    sample().write_oci_layout(&layout, "t").unwrap();
    let source = format!("oci:{}:t", layout.display());
    let mut cmd = bin();
    cmd.args(["convert", &source, "--store", origin, "--tag", "t"])
        .args(["--chunk-size", "64K", "--free-space", "1M"])
        .arg("--keys")
        .arg(dir.join("keys"));
    with_s3(&mut cmd, g);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flat = dir.join("flat.img");
    let out = bin()
        .args(["flatten", &source, "-o"])
        .arg(&flat)
        .args(["--chunk-size", "64K", "--free-space", "1M"])
        .output()
        .unwrap();
    assert!(out.status.success());
    flat
}

fn read_all(root: &Path) -> usize {
    let mut n = 0;
    for e in walk(root) {
        if fs::symlink_metadata(&e).unwrap().is_file() {
            fs::read(&e).unwrap();
            n += 1;
        }
    }
    n
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn assert_tree(mnt: &Path, flat: &Path) {
    let ignore = ["/lost+found"];
    let got = list_dir(mnt, &ignore).unwrap();
    let want = list_ext4_image(flat, &ignore).unwrap();
    assert_same("fuse", &got, "flattened", &want, &Mask::ext4_view());
}

#[test]
fn mounts_from_garage_through_cache_nodes_with_failover_and_corruption() {
    if !can_mount() {
        return;
    }
    let Some(mut g) = garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let origin = format!("s3://{}/tiers", g.bucket);
    let flat = convert_sample(&g, d, &origin);
    let (node_a, url_a) = start_node(&g, d, "node-a", &origin);
    let (_node_b, url_b) = start_node(&g, d, "node-b", &origin);
    let nodes = [url_a, url_b];

    // From an empty host: read half, kill one node, read the rest.
    let m = mount(
        &g,
        "t",
        &d.join("mnt"),
        &origin,
        &d.join("keys"),
        &d.join("shared"),
        &d.join("inst-1"),
        &nodes,
    );
    let files = walk(&m.dir);
    for f in files.iter().take(files.len() / 2) {
        if fs::symlink_metadata(f).unwrap().is_file() {
            fs::read(f).unwrap();
        }
    }
    drop(node_a);
    let n = read_all(&m.dir);
    assert_tree(&m.dir, &flat);
    let stats = m.stop();
    println!("first mount, {n} files, node A killed half way:\n{stats}");
    let (az_hits, ..) = stats_row(&stats, "az");
    let (origin_hits, ..) = stats_row(&stats, "origin");
    assert!(
        az_hits > 0,
        "no chunk came through the cache nodes:\n{stats}"
    );
    assert_eq!(
        origin_hits, 0,
        "the origin was read directly although a node was up:\n{stats}"
    );

    // Corrupt one object in the shared local tier behind its back.
    let corrupted = corrupt_one(&d.join("shared"));
    let m = mount(
        &g,
        "t",
        &d.join("mnt"),
        &origin,
        &d.join("keys"),
        &d.join("shared"),
        &d.join("inst-2"),
        &nodes,
    );
    read_all(&m.dir);
    assert_tree(&m.dir, &flat);
    let stats = m.stop();
    println!("second mount, chunk {corrupted} corrupted in the shared tier:\n{stats}");
    let (_, _, corrupt, _) = stats_row(&stats, "shared-local");
    assert_eq!(corrupt, 1, "{stats}");

    // Origin stopped, nothing cached, no nodes: EIO, not a hang.
    let m = mount(
        &g,
        "t",
        &d.join("mnt"),
        &origin,
        &d.join("keys"),
        &d.join("shared-empty"),
        &d.join("inst-3"),
        &[],
    );
    g.stop();
    let target = m.dir.join("lib/big-05.so");
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(fs::read(target));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the read hung with the origin down");
    let err = result.expect_err("read succeeded with the origin down and nothing cached");
    assert_eq!(err.raw_os_error(), Some(libc_eio()), "{err}");
    println!(
        "origin down: read failed with {err} after {:?}",
        started.elapsed()
    );
    let stats = m.stop();
    stats_row(&stats, "origin");
    g.start().unwrap();
}

fn libc_eio() -> i32 {
    5
}

/// Flips a byte of the first object in the RocksDB at `path`; returns its
/// id (hex).
fn corrupt_one(path: &Path) -> String {
    let cfs = ["objects", "meta", "lru"];
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), path, cfs).unwrap();
    let objects = db.cf_handle("objects").unwrap();
    let (key, value) = db
        .iterator_cf(objects, rocksdb::IteratorMode::Start)
        .next()
        .unwrap()
        .unwrap();
    let mut bad = value.to_vec();
    bad[10] ^= 0x40;
    db.put_cf(objects, &key, bad).unwrap();
    hex::encode(&key)
}

#[test]
fn shared_tier_stays_under_capacity_and_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let layout = d.join("oci");
    sample().write_oci_layout(&layout, "t").unwrap();
    let out = bin()
        .args([
            "convert",
            &format!("oci:{}:t", layout.display()),
            "--tag",
            "t",
        ])
        .args(["--chunk-size", "64K", "--free-space", "1M", "--store"])
        .arg(d.join("origin"))
        .arg("--keys")
        .arg(d.join("keys"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let capacity: u64 = 1 << 20;
    let fetch = || {
        let mut cmd = bin();
        cmd.args(["fetch", "t", "--threads", "2", "--shared-capacity", "1M"])
            .arg("--store")
            .arg(d.join("origin"))
            .arg("--keys")
            .arg(d.join("keys"))
            .arg("--shared")
            .arg(d.join("shared"));
        cmd
    };
    // Kill the filling process at a different moment each round.
    for round in 0..6u64 {
        let mut child = fetch()
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + round * 40));
        let _ = child.kill();
        child.wait().unwrap();
        let store = cachetiers::RocksStore::open(d.join("shared"), capacity).unwrap();
        let usage = store.usage();
        assert!(usage.bytes <= capacity, "round {round}: {usage:?}");
        for id in store.ids().unwrap() {
            let got = store.get(&id).unwrap();
            assert!(got.is_some(), "round {round}: {id} listed but unreadable");
        }
        println!("after kill -9 in round {round}: {usage:?}");
    }
    let out = fetch().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = cachetiers::RocksStore::open(d.join("shared"), capacity).unwrap();
    let usage = store.usage();
    println!("after a full fetch: {usage:?}");
    assert!(
        usage.bytes <= capacity && usage.bytes > capacity / 2,
        "{usage:?}"
    );
}

#[test]
fn debian_image_from_garage_through_a_cache_node() {
    if !can_mount() {
        return;
    }
    let layout = tests::e2e::debian_layout();
    if !layout.join("index.json").exists() {
        harness::skip(&format!(
            "no Debian images at {} (scripts/build-debian-images.sh builds them)",
            layout.display()
        ));
        return;
    }
    let Some(g) = garage() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let origin = format!("s3://{}/debian", g.bucket);
    let source = format!("oci:{}:python", layout.display());
    let mut cmd = bin();
    cmd.args(["convert", &source, "--store", &origin, "--tag", "python"])
        .arg("--keys")
        .arg(d.join("keys"));
    with_s3(&mut cmd, &g);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let flat = d.join("flat.img");
    assert!(
        bin()
            .args(["flatten", &source, "-o"])
            .arg(&flat)
            .status()
            .unwrap()
            .success()
    );

    let (_node, url) = start_node(&g, d, "node", &origin);
    let m = mount(
        &g,
        "python",
        &d.join("mnt"),
        &origin,
        &d.join("keys"),
        &d.join("shared"),
        &d.join("inst"),
        &[url],
    );
    assert!(m.dir.join("usr/bin/python3").exists() || m.dir.join("usr/bin").exists());
    assert_tree(&m.dir, &flat);
    let stats = m.stop();
    println!("Debian python image, every file read through FUSE:\n{stats}");
    let (az_hits, ..) = stats_row(&stats, "az");
    assert!(az_hits > 0, "{stats}");
}
