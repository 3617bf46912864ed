//! What the real-guest tests share: the tools they need (QEMU, the guest
//! kernel, the `imagefs` binary), an image converted into a directory
//! store with the listing its guest must print, and `imagefs agent` as a
//! child process.

// Each test binary uses only part of this.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chunker::convert::{ConvertOptions, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;

use tests::delayproxy::DelayProxy;
use tests::garage::Garage;
use tests::guest::{
    self, Accel, DeviceFacts, GuestKernel, GuestOutput, Proc, compare, parse_listing,
};
use tests::imagegen::{Entry, Image, Layer, noise};
use tests::treecheck::{Listing, list_ext4_image};

/// What booting a guest against imagefs takes.
pub struct Tools {
    /// qemu-system-x86_64.
    pub qemu: PathBuf,
    /// The guest kernel and initramfs.
    pub kernel: GuestKernel,
    /// The `imagefs` binary.
    pub imagefs: PathBuf,
    /// KVM or TCG.
    pub accel: Accel,
}

/// The tools, or `None` after a `SKIP:` line naming what is missing.
pub fn tools() -> Option<Tools> {
    let qemu = guest::qemu()?;
    let imagefs = guest::imagefs_binary()?;
    let kernel = guest::guest_kernel()?;
    let (accel, why) = guest::accel();
    eprintln!("guest accelerator: {} ({why})", accel.name());
    Some(Tools {
        qemu,
        kernel,
        imagefs,
        accel,
    })
}

/// A converted image: store, keys, digest and the reference listing of
/// its flattened tree.
pub struct Converted {
    /// Scratch space that lives as long as the image.
    pub dir: tempfile::TempDir,
    /// The origin as `--store` takes it: a directory or `s3://BUCKET/PREFIX`.
    pub store: String,
    /// What the origin needs in the environment (`AWS_*` for S3).
    pub env: Vec<(&'static str, String)>,
    /// The key directory.
    pub keys: PathBuf,
    /// The manifest digest.
    pub digest: String,
    /// What the guest's listing must equal.
    pub reference: Listing,
}

/// Flatten options with `chunk_size` chunks and `free` bytes free.
pub fn flatten_options(chunk_size: u64, free: u64) -> FlattenOptions {
    FlattenOptions {
        ext4: Ext4Options {
            chunk_size,
            free_bytes: free,
            spare_inodes: 256,
        },
        ..FlattenOptions::default()
    }
}

/// The flattened image's listing, the reference the guest is compared with.
pub fn reference_listing(source: &ImageSource, flatten: &FlattenOptions, dir: &Path) -> Listing {
    let flat = dir.join("flat.img");
    flatten_to_file(source, &flat, flatten).expect("flatten");
    let reference = list_ext4_image(&flat, &["/lost+found"]).expect("list the flattened image");
    let _ = fs::remove_file(&flat);
    reference
}

/// `source` converted into a new directory store.
pub fn convert_source(source: &ImageSource, chunk_size: u64, free: u64) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let keys_dir = dir.path().join("keys");
    let store = cachetiers::DirStore::create(&store_dir).unwrap();
    let keys = manifest::LocalKeyProvider::create(&keys_dir).unwrap();
    let flatten = flatten_options(chunk_size, free);
    let opts = ConvertOptions {
        flatten: flatten.clone(),
        domain: "default".into(), // what serve and the agent open without --domain
        threads: 2,
        tag: None,
        progress: false,
        force: false,
        pipeline: Default::default(),
    };
    let report = convert(source, &store, &keys, &opts).expect("convert");
    let reference = reference_listing(source, &flatten, dir.path());
    Converted {
        store: store_dir.to_str().unwrap().to_string(),
        env: Vec::new(),
        keys: keys_dir,
        digest: report.digest.to_string(),
        reference,
        dir,
    }
}

/// The generated test image as an OCI layout (kept while the directory
/// lives): the directory, the source and its `oci:` argument.
pub fn generated_source() -> (tempfile::TempDir, ImageSource, String) {
    let image = Image::new(vec![
        Layer::new(vec![
            Entry::dir("etc"),
            Entry::file("etc/hostname", b"imagefs-guest\n"),
            Entry::dir("usr/lib"),
            Entry::file("usr/lib/libbig.so", noise(1, 900_000)).mode(0o755),
            Entry::file("usr/lib/libsmall.so", noise(2, 5_000)),
            Entry::symlink("usr/lib/libbig.so.1", "libbig.so"),
            Entry::file("empty", b""),
        ]),
        Layer::new(vec![
            Entry::dir("app").owner(1000, 1000).mode(0o750),
            Entry::file("app/data.bin", noise(3, 300_000)).owner(1000, 1000),
            Entry::file("app/run.sh", b"#!/bin/sh\necho hi\n").mode(0o755),
            Entry::sparse("app/sparse", 400_000, b"tail"),
        ]),
    ]);
    let layout = tempfile::tempdir().unwrap();
    image.write_oci_layout(layout.path(), "gen").unwrap();
    let arg = format!("oci:{}:gen", layout.path().display());
    (layout, arg.parse().unwrap(), arg)
}

/// The generated test image converted into a directory store (64 KiB
/// chunks).
pub fn generated() -> Converted {
    let (_layout, source, _) = generated_source();
    convert_source(&source, 64 * 1024, 4 << 20)
}

/// The AWS_* variables `--store s3://…` reads, for Garage `g`.
pub fn s3_env(g: &Garage) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", g.endpoint.clone()),
        ("AWS_REGION", g.region.clone()),
        ("AWS_ACCESS_KEY_ID", g.key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", g.secret.clone()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

/// Converts `source` into Garage's bucket (prefix `prefix`) with `imagefs
/// convert --store s3://…`, as a user would.
pub fn convert_into_garage(
    t: &Tools,
    g: &Garage,
    source: &ImageSource,
    source_arg: &str,
    prefix: &str,
    chunk_size: u64,
    free: u64,
) -> Converted {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let store = format!("s3://{}/{prefix}", g.bucket);
    let env = s3_env(g);
    let out = Command::new(&t.imagefs)
        .args(["convert", source_arg, "--store", &store, "--keys"])
        .arg(&keys)
        .args(["--chunk-size", &chunk_size.to_string()])
        .args(["--free-space", &free.to_string()])
        .args(["--spare-inodes", "256"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("IMAGEFS_CONFIG")
        .output()
        .expect("run imagefs convert");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "imagefs convert into {store} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = stdout
        .lines()
        .find(|l| l.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("imagefs convert printed no digest:\n{stdout}"))
        .trim()
        .to_string();
    eprintln!(
        "converted into {store}: {}",
        stdout.trim().replace('\n', "; ")
    );
    let reference = reference_listing(source, &flatten_options(chunk_size, free), dir.path());
    Converted {
        dir,
        store,
        env,
        keys,
        digest,
        reference,
    }
}

/// `imagefs agent` serving a converted image's store, its output in a log.
pub struct AgentProc {
    /// The process (killed on drop).
    pub proc: Proc,
    /// The control API's socket.
    pub api: PathBuf,
}

/// Where an agent of `dir` keeps its API socket, sockets and state.
pub fn agent_paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("agent/api.sock"),
        dir.join("agent/vms"),
        dir.join("agent/state.json"),
    )
}

impl AgentProc {
    /// Starts `imagefs agent` on `c`'s store with its API, sockets and
    /// state under `c.dir/agent`, plus `extra` arguments; its output goes
    /// to `log` (replaced). Waits until the API answers.
    pub fn start(t: &Tools, c: &Converted, extra: &[&str], log: &Path) -> Result<Self, String> {
        let (api, run_dir, state) = agent_paths(c.dir.path());
        let mut cmd = Command::new(&t.imagefs);
        cmd.arg("agent")
            .arg("--store")
            .arg(&c.store)
            .arg("--keys")
            .arg(&c.keys)
            .arg("--api")
            .arg(&api)
            .arg("--run-dir")
            .arg(&run_dir)
            .arg("--state")
            .arg(&state)
            .args(extra)
            .envs(c.env.iter().map(|(k, v)| (k, v)))
            .env_remove("IMAGEFS_CONFIG");
        let mut proc =
            Proc::spawn(&mut cmd, log).map_err(|e| format!("starting imagefs agent: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if proc.output().contains("imagefs agent: listening on") {
                return Ok(Self { proc, api });
            }
            if let Ok(Some(status)) = proc.child.try_wait() {
                return Err(format!(
                    "imagefs agent exited ({status}):\n{}",
                    proc.output()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("imagefs agent did not start:\n{}", proc.output()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The guest's listing (`LIST_SCRIPT`) equals the flattened image's;
/// its device facts.
pub fn check_listing(name: &str, c: &Converted, out: &GuestOutput) -> DeviceFacts {
    assert_eq!(
        out.rc,
        0,
        "{name}: the listing script failed:\n{}",
        out.lines.join("\n")
    );
    let (listing, facts) = parse_listing(&out.lines).unwrap();
    let diff = compare(&c.reference, &listing);
    assert!(
        diff.is_empty(),
        "{name}: the guest's view differs from the flattened image:\n  {}",
        diff.join("\n  ")
    );
    let files = listing.values().filter(|e| e.sha256.is_some()).count();
    eprintln!(
        "{name}: the guest listed {} paths ({files} files hashed), all equal to the flattened image, in {:.1} s",
        listing.len(),
        out.took.as_secs_f64()
    );
    facts
}

/// A Garage S3 server, or `None` after a `SKIP:` line saying why not.
pub fn garage() -> Option<Garage> {
    match Garage::start_new() {
        Ok(g) => Some(g),
        Err(e) => {
            tests::harness::skip(&format!("no Garage S3 server: {e}"));
            None
        }
    }
}

/// The origin of `c` behind a proxy holding every request 150 ms, so a
/// guest's reads wait on fetches and a kill finds some in flight.
pub fn slow_origin(c: &mut Converted, g: &Garage) -> DelayProxy {
    let upstream = g
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("Garage's endpoint is http://IP:PORT");
    let proxy =
        DelayProxy::start(upstream, Duration::from_millis(150)).expect("start the delaying proxy");
    for (k, v) in &mut c.env {
        if *k == "AWS_ENDPOINT_URL" {
            *v = proxy.endpoint();
        }
    }
    proxy
}
