//! A real Linux guest under QEMU whose only disk is served over
//! vhost-user: `imagefs serve` (or `qemu-storage-daemon`) on a socket,
//! QEMU `-M microvm` with a `vhost-user-blk` device on it, Debian's kernel
//! and the initramfs from `scripts/guest-kernel.sh`.
//!
//! The guest's `/init` mounts `/dev/vda` on `/mnt` and runs a shell
//! script passed base64-encoded on the kernel command line; its output is
//! read from the serial console between `IMAGEFS-GUEST: BEGIN` and
//! `IMAGEFS-GUEST: END rc=N`. [`LIST_SCRIPT`] prints one line per file
//! (type and mode, owner, size, SHA-256 or link target, path), which
//! [`parse_listing`] turns into a [`Listing`] to compare with the image's
//! flattened tree.
//!
//! The QEMU command line comes from [`Microvm`] (module [`crate::qemu`]).
//! Accelerator: KVM where it boots a stock kernel, else TCG. This
//! machine's `/dev/kvm` is `kvm_pvm`, under which Linux hangs in early
//! boot, so it is TCG here; [`accel`] says which and why.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{find_tool, skip};
pub use crate::qemu::{Accel, Microvm, accel};
use crate::treecheck::{Entry, FileKind, Listing};

/// The guest kernel and initramfs.
#[derive(Debug, Clone)]
pub struct GuestKernel {
    /// vmlinuz.
    pub kernel: PathBuf,
    /// The initramfs (cpio.gz).
    pub initrd: PathBuf,
}

impl GuestKernel {
    /// The same kernel with `files` (a name in the guest's `/`, and the
    /// host file to copy there, mode kept) added to its initramfs, without
    /// rebuilding the cached one: a copy of it with a second `newc` archive
    /// appended (Linux unpacks concatenated archives), written under `dir`.
    /// Needs the `cpio` tool (scripts/install-deps.sh installs it).
    pub fn with_files(&self, files: &[(&str, &Path)], dir: &Path) -> Result<GuestKernel, String> {
        use std::io::Write;
        let stage = dir.join("initrd-extra");
        fs::create_dir_all(&stage).map_err(|e| format!("creating {}: {e}", stage.display()))?;
        let mut list = String::new();
        for (name, from) in files {
            if name.is_empty() || name.contains('/') || name.starts_with('.') {
                return Err(format!(
                    "{name:?} is not a plain file name for the guest's /"
                ));
            }
            fs::copy(from, stage.join(name))
                .map_err(|e| format!("copying {} into the initramfs: {e}", from.display()))?;
            list.push_str(name);
            list.push('\n');
        }
        let cpio = find_tool("cpio").ok_or("`cpio` is not installed (scripts/install-deps.sh)")?;
        let mut child = Command::new(cpio)
            .args(["-o", "-H", "newc", "--quiet"])
            .current_dir(&stage)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting cpio: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(list.as_bytes())
                .map_err(|e| format!("writing cpio's file list: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("running cpio: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cpio failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let mut initrd = fs::read(&self.initrd)
            .map_err(|e| format!("reading {}: {e}", self.initrd.display()))?;
        // An uncompressed archive must start 4-byte aligned; the kernel
        // skips the zeros in between.
        initrd.resize(initrd.len().next_multiple_of(512), 0);
        initrd.extend_from_slice(&out.stdout);
        let path = dir.join("initramfs-extra.img");
        fs::write(&path, &initrd).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(GuestKernel {
            kernel: self.kernel.clone(),
            initrd: path,
        })
    }
}

/// The workspace root (for `scripts/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Runs `scripts/guest-kernel.sh` (cached after the first run) and returns
/// the kernel and initramfs; `None` after a SKIP line when it cannot.
pub fn guest_kernel() -> Option<GuestKernel> {
    let script = workspace_root().join("scripts/guest-kernel.sh");
    let out = match Command::new("bash").arg(&script).output() {
        Ok(o) => o,
        Err(e) => {
            skip(&format!("cannot run {}: {e}", script.display()));
            return None;
        }
    };
    if !out.status.success() {
        skip(&format!(
            "no guest kernel: {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(PathBuf::from)
    };
    match (get("KERNEL="), get("INITRD=")) {
        (Some(kernel), Some(initrd)) => Some(GuestKernel { kernel, initrd }),
        _ => {
            skip(&format!(
                "{} printed no KERNEL=/INITRD= lines",
                script.display()
            ));
            None
        }
    }
}

/// `qemu-system-x86_64`, or `None` after a SKIP line.
pub fn qemu() -> Option<PathBuf> {
    let q = find_tool("qemu-system-x86_64");
    if q.is_none() {
        skip(
            "qemu-system-x86_64 is not installed (package qemu-system-x86; scripts/install-deps.sh)",
        );
    }
    q
}

/// The `imagefs` binary next to the test executables (`cargo build -p
/// tools`), or `IMAGEFS_BIN`; `None` after a SKIP line.
pub fn imagefs_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IMAGEFS_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test> -> target/<profile>/imagefs
    let bin = exe.parent()?.parent()?.join("imagefs");
    if bin.is_file() {
        Some(bin)
    } else {
        skip(&format!(
            "the imagefs binary is not built at {} (cargo build -p tools, or set IMAGEFS_BIN)",
            bin.display()
        ));
        None
    }
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(cmd: &mut Command, log: &Path) -> std::io::Result<Self> {
        let out = File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn()?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
        })
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
        s
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Waits (up to `timeout`) until `socket` exists and accepts connections
/// is not checked (a probe connection would be the daemon's one frontend):
/// only that the path is a socket.
pub fn wait_for_socket(socket: &Path, daemon: &mut Proc, timeout: Duration) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let deadline = Instant::now() + timeout;
    loop {
        if fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
            return Ok(());
        }
        if let Ok(Some(status)) = daemon.child.try_wait() {
            return Err(format!(
                "the daemon exited ({status}) before listening:\n{}",
                daemon.output()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no socket at {} after {timeout:?}:\n{}",
                socket.display(),
                daemon.output()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One guest boot.
#[derive(Debug, Clone)]
pub struct BootOptions<'a> {
    /// The vhost-user socket.
    pub socket: &'a Path,
    /// Mount `/dev/vda` read-write.
    pub rw: bool,
    /// The script the guest runs (sh) with the device mounted on `/mnt`.
    pub script: &'a str,
    /// `num-queues` of the device.
    pub queues: u16,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// Give up after this long.
    pub timeout: Duration,
}

/// What a guest printed.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// Everything on the serial console (and QEMU's own messages).
    pub console: String,
    /// The script's lines (between BEGIN and END).
    pub lines: Vec<String>,
    /// The script's exit status.
    pub rc: i32,
    /// Whether `/dev/vda` mounted.
    pub mounted: bool,
    /// Wall-clock time from starting QEMU to its exit.
    pub took: Duration,
}

/// The kernel command line words that hand `script` to the initramfs's
/// `/init` (base64, `imagefs.cmd=`), and `imagefs.rw=1` to mount
/// `/dev/vda` read-write.
pub fn script_append(script: &str, rw: bool) -> String {
    let mut words = format!("imagefs.cmd={}", base64(script.as_bytes()));
    if rw {
        words.push_str(" imagefs.rw=1");
    }
    words
}

/// Boots the guest against `opts.socket` and returns what it printed;
/// `Err` with the console when QEMU fails, times out, or the guest never
/// reaches the end of its script.
pub fn boot(
    qemu: &Path,
    kernel: &GuestKernel,
    accel: Accel,
    opts: &BootOptions<'_>,
    log: &Path,
) -> Result<GuestOutput, String> {
    let vm = Microvm::new(qemu, accel)
        .memory_mib(opts.mem_mib)
        .kernel(&kernel.kernel, &kernel.initrd)
        .vhost_user_blk(opts.socket, opts.queues)
        .append(&script_append(opts.script, opts.rw));
    run(&vm, opts.timeout, log)
}

/// Runs `vm` (a guest kernel with this project's initramfs and a
/// [`script_append`] line) until QEMU exits, with its console in `log`;
/// returns what the script printed. `Err` with the console when QEMU
/// fails, times out, or the guest never reaches the end of its script.
pub fn run(vm: &Microvm, timeout: Duration, log: &Path) -> Result<GuestOutput, String> {
    let mut cmd = vm.command();
    let started = Instant::now();
    let mut proc = Proc::spawn(&mut cmd, log).map_err(|e| format!("cannot start QEMU: {e}"))?;
    let status = proc.wait_timeout(timeout);
    let took = started.elapsed();
    let console = proc.output();
    let Some(status) = status else {
        return Err(format!(
            "the guest did not finish within {timeout:?}; console:\n{}",
            tail(&console, 60)
        ));
    };
    let mut lines = Vec::new();
    let mut rc = None;
    let mut inside = false;
    for line in console.lines() {
        let line = line.trim_end_matches('\r');
        if line == "IMAGEFS-GUEST: BEGIN" {
            inside = true;
        } else if let Some(n) = line.strip_prefix("IMAGEFS-GUEST: END rc=") {
            rc = n.trim().parse().ok();
            inside = false;
        } else if inside {
            lines.push(line.to_string());
        }
    }
    let Some(rc) = rc else {
        return Err(format!(
            "QEMU exited ({status}) before the guest's script ended; console:\n{}",
            tail(&console, 60)
        ));
    };
    Ok(GuestOutput {
        mounted: console.contains("IMAGEFS-GUEST: mounted /dev/vda"),
        console,
        lines,
        rc,
        took,
    })
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Standard base64 (the guest decodes with busybox `base64 -d`).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The guest script that lists every object under `/mnt` (but
/// `lost+found`): `IMAGEFS-FILE <raw mode hex> <uid> <gid> <size>
/// <sha256 | link target | -> <path>`, then the device's serial, read-only
/// flag and hardware queue count.
pub const LIST_SCRIPT: &str = r#"cd /mnt
find . -xdev | sort | while read -r p; do
  case "$p" in ./lost+found|./lost+found/*) continue ;; esac
  set -- $(stat -c '%f %u %g %s' "$p")
  if [ -L "$p" ]; then h=$(readlink "$p")
  elif [ -f "$p" ]; then h=$(sha256sum "$p" | cut -d' ' -f1)
  else h=-; fi
  echo "IMAGEFS-FILE $1 $2 $3 $4 $h ${p#.}"
done
echo "IMAGEFS-SERIAL $(cat /sys/block/vda/serial 2>/dev/null)"
echo "IMAGEFS-RO $(cat /sys/block/vda/ro)"
echo "IMAGEFS-QUEUES $(ls /sys/block/vda/mq | wc -l)"
"#;

/// What [`LIST_SCRIPT`] printed about the device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    /// `/sys/block/vda/serial`.
    pub serial: String,
    /// `/sys/block/vda/ro`.
    pub read_only: bool,
    /// Hardware queues.
    pub queues: u32,
}

/// Parses [`LIST_SCRIPT`]'s lines into a listing (kind, mode, owner, size
/// of files and symlinks, SHA-256 of files, symlink targets; mtimes,
/// xattrs and link groups are not printed and left empty) and the device
/// facts. `Err` names a line that does not parse.
pub fn parse_listing(lines: &[String]) -> Result<(Listing, DeviceFacts), String> {
    let mut listing = BTreeMap::new();
    let mut facts = DeviceFacts::default();
    for line in lines {
        if let Some(s) = line.strip_prefix("IMAGEFS-SERIAL ") {
            facts.serial = s.trim().to_string();
            continue;
        }
        if let Some(s) = line.strip_prefix("IMAGEFS-RO ") {
            facts.read_only = s.trim() == "1";
            continue;
        }
        if let Some(s) = line.strip_prefix("IMAGEFS-QUEUES ") {
            facts.queues = s.trim().parse().map_err(|_| format!("bad line {line:?}"))?;
            continue;
        }
        let Some(rest) = line.strip_prefix("IMAGEFS-FILE ") else {
            continue;
        };
        let mut f = rest.splitn(6, ' ');
        let bad = || format!("bad listing line {line:?}");
        let raw = u32::from_str_radix(f.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
        let uid: u32 = f.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let gid: u32 = f.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let size: u64 = f.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let hash = f.next().ok_or_else(bad)?;
        let path = f.next().ok_or_else(bad)?;
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path.to_string()
        };
        let kind = match raw & 0o170000 {
            0o040000 => FileKind::Dir,
            0o100000 => FileKind::File,
            0o120000 => FileKind::Symlink,
            0o020000 => FileKind::CharDev,
            0o060000 => FileKind::BlockDev,
            0o010000 => FileKind::Fifo,
            0o140000 => FileKind::Socket,
            _ => return Err(bad()),
        };
        listing.insert(
            path,
            Entry {
                kind,
                mode: raw & 0o7777,
                uid,
                gid,
                mtime: 0,
                mtime_nanos: 0,
                ctime: None,
                blocks: None,
                size: if matches!(kind, FileKind::File | FileKind::Symlink) {
                    size
                } else {
                    0
                },
                sha256: (kind == FileKind::File).then(|| hash.to_string()),
                target: (kind == FileKind::Symlink).then(|| hash.as_bytes().to_vec()),
                xattrs: BTreeMap::new(),
                rdev: None,
                link_group: None,
            },
        );
    }
    Ok((listing, facts))
}

/// Differences between the guest's listing and a reference, comparing
/// only what the guest prints (kind, mode, owner, size, content hash,
/// link target). Empty when they agree.
pub fn compare(reference: &Listing, guest: &Listing) -> Vec<String> {
    let mut out = Vec::new();
    for (path, r) in reference {
        let Some(g) = guest.get(path) else {
            out.push(format!("{path}: missing in the guest"));
            continue;
        };
        let size = |e: &Entry| {
            if matches!(e.kind, FileKind::File | FileKind::Symlink) {
                e.size
            } else {
                0
            }
        };
        let want = (r.kind, r.mode, r.uid, r.gid, size(r), &r.sha256, &r.target);
        let got = (g.kind, g.mode, g.uid, g.gid, size(g), &g.sha256, &g.target);
        if want != got {
            out.push(format!("{path}: reference {want:?}, guest {got:?}"));
        }
    }
    for path in guest.keys() {
        if !reference.contains_key(path) {
            out.push(format!("{path}: only in the guest"));
        }
    }
    out
}
