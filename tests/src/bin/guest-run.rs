//! `guest-run`: boots the project's Linux guest (Debian's kernel and the
//! initramfs from `scripts/guest-kernel.sh`) under QEMU `-M microvm`,
//! with the command line from [`tests::qemu::Microvm`], so that scripts
//! never write their own. The guest mounts `/dev/vda` on `/mnt` and runs
//! SCRIPT (sh); its lines go to stdout and its exit status is ours.
//!
//! ```text
//! guest-run (--socket PATH [--queues N] | --raw FILE) [--rw] [--mem MIB]
//!           [--cpus N] [--timeout SECS] [--qemu-trace SPEC] [--console FILE]
//!           SCRIPT
//! ```
//!
//! - `--socket`: the disk is `vhost-user-blk` on a backend's socket
//!   (`imagefs serve --socket PATH`), with `--queues` request queues;
//!   waits up to a minute for the backend to create it;
//! - `--raw`: the disk is QEMU's own read-only virtio-blk over FILE;
//! - `--qemu-trace SPEC`: a QEMU trace event (`-trace SPEC`);
//! - `--console FILE`: keep the serial console there (else a temporary
//!   file, whose tail is printed on failure).
//!
//! The accelerator is KVM where the host's KVM boots a stock kernel, else
//! TCG (`IMAGEFS_GUEST_ACCEL=kvm|tcg` decides); it is named on stderr.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tests::guest::{self, Microvm};

const USAGE: &str = "usage: guest-run (--socket PATH [--queues N] | --raw FILE) [--rw] \
                     [--mem MIB] [--cpus N] [--timeout SECS] [--qemu-trace SPEC] \
                     [--console FILE] SCRIPT";

/// How long a backend may take to create its socket.
const SOCKET_WAIT: Duration = Duration::from_secs(60);

/// Waits until `path` is a socket (a backend started just before us).
fn wait_for_socket(path: &Path, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if Instant::now() >= deadline {
            return Err(format!("no socket at {} after {limit:?}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The disk the guest sees as `/dev/vda`.
enum Disk {
    Socket { path: PathBuf, queues: u16 },
    Raw(PathBuf),
}

struct Args {
    disk: Disk,
    rw: bool,
    mem_mib: u32,
    cpus: u32,
    timeout: Duration,
    trace: Vec<String>,
    console: Option<PathBuf>,
    script: String,
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut socket = None;
    let mut raw = None;
    let mut queues = 1u16;
    let mut rw = false;
    let mut mem_mib = 512u32;
    let mut cpus = 2u32;
    let mut timeout = 900u64;
    let mut trace = Vec::new();
    let mut console = None;
    let mut script = None;
    while let Some(a) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name} takes a number, not {v:?}"))
        };
        match a.as_str() {
            "--socket" => socket = Some(PathBuf::from(value("--socket")?)),
            "--raw" => raw = Some(PathBuf::from(value("--raw")?)),
            "--queues" => {
                let v = value("--queues")?;
                queues = u16::try_from(number("--queues", v)?)
                    .map_err(|_| "--queues is too large".to_string())?;
            }
            "--rw" => rw = true,
            "--mem" => {
                let v = value("--mem")?;
                mem_mib = u32::try_from(number("--mem", v)?)
                    .map_err(|_| "--mem is too large".to_string())?;
            }
            "--cpus" => {
                let v = value("--cpus")?;
                cpus = u32::try_from(number("--cpus", v)?)
                    .map_err(|_| "--cpus is too large".to_string())?;
            }
            "--timeout" => {
                let v = value("--timeout")?;
                timeout = number("--timeout", v)?;
            }
            "--qemu-trace" => trace.push(value("--qemu-trace")?),
            "--console" => console = Some(PathBuf::from(value("--console")?)),
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ if script.is_some() => return Err(format!("one SCRIPT only\n{USAGE}")),
            _ => script = Some(a),
        }
    }
    let disk = match (socket, raw) {
        (Some(path), None) => Disk::Socket { path, queues },
        (None, Some(path)) => Disk::Raw(path),
        _ => return Err(format!("give exactly one of --socket and --raw\n{USAGE}")),
    };
    Ok(Args {
        disk,
        rw,
        mem_mib,
        cpus,
        timeout: Duration::from_secs(timeout),
        trace,
        console,
        script: script.ok_or_else(|| format!("no SCRIPT\n{USAGE}"))?,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("guest-run: {e}");
            return ExitCode::from(2);
        }
    };
    // Each of these prints why on stderr when it is missing.
    let (Some(qemu), Some(kernel)) = (guest::qemu(), guest::guest_kernel()) else {
        eprintln!("guest-run: cannot boot a guest (see above)");
        return ExitCode::from(2);
    };
    let (accel, why) = guest::accel();
    eprintln!("guest-run: accelerator {} ({why})", accel.name());
    let mut vm = Microvm::new(qemu, accel)
        .memory_mib(args.mem_mib)
        .cpus(args.cpus)
        .kernel(&kernel.kernel, &kernel.initrd)
        .append(&guest::script_append(&args.script, args.rw));
    vm = match &args.disk {
        Disk::Socket { path, queues } => vm.vhost_user_blk(path, *queues),
        Disk::Raw(path) => vm.raw_disk(path),
    };
    for t in &args.trace {
        vm = vm.trace(t);
    }
    if let Disk::Socket { path, .. } = &args.disk
        && let Err(e) = wait_for_socket(path, SOCKET_WAIT)
    {
        eprintln!("guest-run: {e}");
        return ExitCode::FAILURE;
    }
    let tmp;
    let console = match &args.console {
        Some(c) => c.clone(),
        None => match tempfile::Builder::new().prefix("guest-run.").tempdir() {
            Ok(d) => {
                tmp = d;
                tmp.path().join("console.log")
            }
            Err(e) => {
                eprintln!("guest-run: cannot create a temporary directory: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let out = match guest::run(&vm, args.timeout, &console) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("guest-run: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !out.mounted {
        eprintln!(
            "guest-run: /dev/vda did not mount; console:\n{}",
            guest::tail(&out.console, 40)
        );
    }
    for line in &out.lines {
        println!("{line}");
    }
    eprintln!(
        "guest-run: the guest's script ended with status {} after {:.1} s",
        out.rc,
        out.took.as_secs_f64()
    );
    ExitCode::from(u8::try_from(out.rc).unwrap_or(1))
}
