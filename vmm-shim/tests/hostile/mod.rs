//! What the hostile-guest soak and the crash test share: a small image
//! converted with the real `imagefs` binary, `imagefs serve` as a child
//! process, a frontend connection whose guest memory the test writes, a
//! block of requests run to completion (the seeded generator is
//! `tests::rng`).

// Each test binary uses only part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tests::guest::{Proc, imagefs_binary, wait_for_socket};
use tests::imagegen::{Entry, Image as GenImage, Layer, noise};
use vmm_shim::driver::{BlkDriver, Op, S_OK, SLOT_DATA};
use vmm_shim::memory::GuestRam;
use vmm_shim::vhost_blk::VhostBlk;

/// The queue every test sets up (42 three-descriptor slots).
pub const QSIZE: u16 = 128;
/// Guest memory: rings, slots and scratch fit in 16 MiB.
pub const RAM: u64 = 16 << 20;
/// The hang guard on any one wait for the device.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// virtio's EVENT_IDX feature bit.
pub const EVENT_IDX: u64 = 1 << 29;

/// A converted image and the binary that serves it.
pub struct Image {
    /// Scratch space that lives as long as the image.
    pub dir: tempfile::TempDir,
    /// The `imagefs` binary.
    pub bin: PathBuf,
    /// The directory store.
    pub store: PathBuf,
    /// The key directory.
    pub keys: PathBuf,
    /// The manifest digest.
    pub digest: String,
}

/// A small generated image (files, a sparse file, free space) converted
/// into a directory store with 64 KiB chunks by `imagefs convert`; `None`
/// after a `SKIP:` line when the binary is not built.
pub fn image() -> Option<Image> {
    let bin = imagefs_binary()?;
    let dir = tempfile::tempdir().unwrap();
    let image = GenImage::new(vec![Layer::new(vec![
        Entry::dir("etc"),
        Entry::file("etc/hostname", b"hostile\n"),
        Entry::file("big.bin", noise(1, 700_000)),
        Entry::file("small.bin", noise(2, 5_000)),
        Entry::sparse("sparse", 300_000, b"tail"),
    ])]);
    let layout = dir.path().join("layout");
    image.write_oci_layout(&layout, "gen").unwrap();
    let store = dir.path().join("store");
    let keys = dir.path().join("keys");
    let out = Command::new(&bin)
        .arg("convert")
        .arg(format!("oci:{}:gen", layout.display()))
        .arg("--store")
        .arg(&store)
        .arg("--keys")
        .arg(&keys)
        .args(["--chunk-size", "65536", "--free-space", "2097152", "--json"])
        .env_remove("IMAGEFS_CONFIG")
        .output()
        .expect("run imagefs convert");
    assert!(
        out.status.success(),
        "imagefs convert failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The report is data: read the digest from --json, not from the table.
    let report: manifest::report::ConvertStats = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("imagefs convert --json: {e}"));
    let digest = report.digest;
    Some(Image {
        dir,
        bin,
        store,
        keys,
        digest,
    })
}

/// `imagefs serve` running as a child (SIGKILLed if dropped running).
pub struct Serve {
    /// The process.
    pub proc: Proc,
    /// Its socket.
    pub socket: PathBuf,
}

/// Starts `imagefs serve` for `img` on `socket` (a stale socket file is
/// removed first, so waiting for it means waiting for this process) with
/// `extra` arguments; its output goes to `log`.
pub fn serve(img: &Image, socket: &Path, log: &Path, extra: &[&str]) -> Serve {
    let _ = std::fs::remove_file(socket);
    let mut cmd = Command::new(&img.bin);
    cmd.arg("serve")
        .arg(&img.digest)
        .arg("--socket")
        .arg(socket)
        .arg("--store")
        .arg(&img.store)
        .arg("--keys")
        .arg(&img.keys)
        .args(["--queue-size", &QSIZE.to_string(), "--io-threads", "4"])
        .args(extra)
        .env_remove("IMAGEFS_CONFIG");
    let mut proc = Proc::spawn(&mut cmd, log).expect("start imagefs serve");
    wait_for_socket(socket, &mut proc, Duration::from_secs(60)).unwrap();
    Serve {
        proc,
        socket: socket.to_path_buf(),
    }
}

impl Serve {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// (VmRSS, VmHWM) in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read the daemon's /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc status:\n{status}"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }
}

/// Connects to `socket` and starts queue 0 over `drv`'s rings in `ram`,
/// with or without EVENT_IDX, taking available entries from `base` on.
pub fn connect(
    socket: &Path,
    ram: &GuestRam,
    drv: &BlkDriver,
    event_idx: bool,
    base: u16,
) -> VhostBlk {
    let mut blk = VhostBlk::connect(socket, IO_TIMEOUT).expect("vhost-user handshake");
    let mut features = blk.device_features();
    if !event_idx {
        features &= !EVENT_IDX;
    }
    blk.activate_from(ram, features, drv.layout(), base)
        .expect("start the queue");
    blk
}

/// A request's outcome: its status byte and, for a read, its data.
#[derive(Debug)]
pub struct Done {
    /// The slot it ran in.
    pub slot: u16,
    /// The status byte.
    pub status: u8,
    /// Bytes the device says it wrote (used length).
    pub used: u32,
    /// A read's data.
    pub data: Vec<u8>,
}

/// Submits `ops` (one per slot, from slot 0), kicks, and waits for all of
/// them; returns their outcomes in `ops`'s order.
pub fn run_batch(ram: &GuestRam, drv: &mut BlkDriver, blk: &VhostBlk, ops: &[Op]) -> Vec<Done> {
    let heads: Vec<u16> = ops
        .iter()
        .enumerate()
        .map(|(slot, op)| drv.submit(ram, slot as u16, op).unwrap())
        .collect();
    BlkDriver::kick(blk).unwrap();
    let used = drv
        .wait_until(ram, IO_TIMEOUT, "a batch of requests", |got| {
            heads.iter().all(|h| got.iter().any(|g| g.0 == *h))
        })
        .unwrap();
    heads
        .iter()
        .zip(ops)
        .map(|(&head, op)| {
            let slot = BlkDriver::slot_of(head);
            let data = match op {
                Op::Read { len, .. } => drv.data(ram, slot, *len as usize).unwrap(),
                _ => Vec::new(),
            };
            Done {
                slot,
                status: drv.status(ram, slot).unwrap(),
                used: used.iter().find(|u| u.0 == head).map_or(0, |u| u.1),
                data,
            }
        })
        .collect()
}

/// Reads the whole device (`sectors` of 512 bytes) through the queue.
pub fn read_all(ram: &GuestRam, drv: &mut BlkDriver, blk: &VhostBlk, sectors: u64) -> Vec<u8> {
    let per = SLOT_DATA / 512;
    let mut out = Vec::with_capacity((sectors * 512) as usize);
    let mut sector = 0;
    while sector < sectors {
        let ops: Vec<Op> = (0..u64::from(drv.slots()))
            .map(|i| sector + i * per)
            .take_while(|&s| s < sectors)
            .map(|s| Op::Read {
                sector: s,
                len: ((sectors - s).min(per) * 512) as u32,
            })
            .collect();
        for (op, done) in ops.iter().zip(run_batch(ram, drv, blk, &ops)) {
            assert_eq!(done.status, S_OK, "reading {op:?}: status {}", done.status);
            out.extend_from_slice(&done.data);
        }
        sector += ops.len() as u64 * per;
    }
    out
}

/// A seconds count from `var`, else `default`.
pub fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}
