//! The one place that writes a QEMU `-M microvm` command line.
//!
//! [`Microvm`] is a builder: the machine (microvm with modern virtio-mmio,
//! guest memory from a shared memfd so a vhost-user backend can map it),
//! the accelerator, a direct kernel boot with an initramfs and a kernel
//! command line, and the disks: `vhost-user-blk` on a socket (the
//! backend under test) or QEMU's own virtio-blk on a raw file (for
//! recording what a guest's driver reads). The tests ([`crate::guest`]),
//! the benchmarks and, through the `guest-run` binary, the scripts all
//! start QEMU from here.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// The `-accel`/`accel=` value.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator to use and why: `IMAGEFS_GUEST_ACCEL=kvm|tcg` decides;
/// otherwise TCG without a usable `/dev/kvm` or under `kvm_pvm` (which
/// does not boot stock kernels), KVM otherwise.
pub fn accel() -> (Accel, String) {
    match std::env::var("IMAGEFS_GUEST_ACCEL").as_deref() {
        Ok("kvm") => return (Accel::Kvm, "IMAGEFS_GUEST_ACCEL=kvm".into()),
        Ok("tcg") => return (Accel::Tcg, "IMAGEFS_GUEST_ACCEL=tcg".into()),
        _ => {}
    }
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return (Accel::Tcg, "no usable /dev/kvm".into());
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return (
            Accel::Tcg,
            "/dev/kvm is kvm_pvm, under which a stock Linux kernel hangs in early boot".into(),
        );
    }
    (Accel::Kvm, "/dev/kvm is available".into())
}

/// The kernel command line every guest starts with. `tsc_early_khz` and
/// `lpj`: under TCG the kernel cannot calibrate its clocks against
/// microvm's timers and stalls; a fixed value lets it on. `reboot=t` and
/// QEMU's `-no-reboot` turn the guest's reboot into QEMU's exit.
pub const BASE_APPEND: &str =
    "console=ttyS0 quiet panic=-1 reboot=t tsc_early_khz=2000000 lpj=4000000 no_timer_check";

/// A disk of the guest, in `/dev/vda`, `/dev/vdb` … order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Disk {
    /// `-device vhost-user-blk` on a backend's socket.
    VhostUser { socket: PathBuf, queues: u16 },
    /// QEMU's own read-only virtio-blk over a raw file.
    Raw { path: PathBuf },
}

/// A QEMU `-M microvm` command line (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Microvm {
    qemu: PathBuf,
    accel: Accel,
    mem_mib: u32,
    cpus: u32,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: String,
    disks: Vec<Disk>,
    trace: Vec<String>,
    reconnect: Option<u32>,
}

impl Microvm {
    /// A machine run by the `qemu` binary (`qemu-system-x86_64`) with
    /// `accel`, 512 MiB, 2 CPUs, no disks and [`BASE_APPEND`].
    pub fn new(qemu: impl Into<PathBuf>, accel: Accel) -> Self {
        Self {
            qemu: qemu.into(),
            accel,
            mem_mib: 512,
            cpus: 2,
            kernel: None,
            initrd: None,
            append: BASE_APPEND.to_string(),
            disks: Vec::new(),
            trace: Vec::new(),
            reconnect: None,
        }
    }

    /// Boots `kernel` (a bzImage/vmlinuz) with `initrd`.
    pub fn kernel(mut self, kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        self.kernel = Some(kernel.into());
        self.initrd = Some(initrd.into());
        self
    }

    /// Guest memory in MiB (a shared memfd).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.mem_mib = mib;
        self
    }

    /// Virtual CPUs.
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n;
        self
    }

    /// Adds `words` (space-separated) to the kernel command line.
    pub fn append(mut self, words: &str) -> Self {
        if !words.is_empty() {
            self.append.push(' ');
            self.append.push_str(words);
        }
        self
    }

    /// Adds a `vhost-user-blk` disk on `socket` with `queues` request
    /// queues.
    pub fn vhost_user_blk(mut self, socket: impl Into<PathBuf>, queues: u16) -> Self {
        self.disks.push(Disk::VhostUser {
            socket: socket.into(),
            queues,
        });
        self
    }

    /// Has QEMU reconnect to a `vhost-user-blk` socket every `secs`
    /// seconds after the backend goes away (`reconnect=` of the chardev),
    /// instead of giving the device up.
    pub fn reconnect(mut self, secs: u32) -> Self {
        self.reconnect = Some(secs);
        self
    }

    /// Adds QEMU's own read-only virtio-blk disk over the raw file `path`.
    pub fn raw_disk(mut self, path: impl Into<PathBuf>) -> Self {
        self.disks.push(Disk::Raw { path: path.into() });
        self
    }

    /// Enables a QEMU trace event (`-trace SPEC`, for example
    /// `virtio_blk_handle_read,file=OUT`).
    pub fn trace(mut self, spec: &str) -> Self {
        self.trace.push(spec.to_string());
        self
    }

    /// The accelerator.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The arguments after the program name.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        let mem = format!("{}M", self.mem_mib);
        push("-M");
        push(&format!("microvm,accel={}", self.accel.name()));
        push("-m");
        push(&mem);
        push("-smp");
        push(&self.cpus.to_string());
        push("-cpu");
        push(if self.accel == Accel::Kvm {
            "host"
        } else {
            "max"
        });
        // Modern (virtio 1.x) MMIO transport: vhost-user-blk needs it.
        push("-global");
        push("virtio-mmio.force-legacy=false");
        // A vhost-user backend maps guest memory: it must be a shared fd.
        push("-object");
        push(&format!("memory-backend-memfd,id=mem,size={mem},share=on"));
        push("-numa");
        push("node,memdev=mem");
        for (i, disk) in self.disks.iter().enumerate() {
            match disk {
                Disk::VhostUser { socket, queues } => {
                    a.push("-chardev".into());
                    let mut chardev = path_arg(&format!("socket,id=blk{i},path="), socket);
                    if let Some(secs) = self.reconnect {
                        chardev.push(format!(",reconnect={secs}"));
                    }
                    a.push(chardev);
                    a.push("-device".into());
                    a.push(format!("vhost-user-blk,chardev=blk{i},num-queues={queues}").into());
                }
                Disk::Raw { path } => {
                    a.push("-drive".into());
                    let mut d = path_arg(&format!("id=d{i},file="), path);
                    d.push(",format=raw,if=none,readonly=on,cache=none,aio=threads");
                    a.push(d);
                    a.push("-device".into());
                    a.push(format!("virtio-blk-device,drive=d{i}").into());
                }
            }
        }
        if let (Some(k), Some(i)) = (&self.kernel, &self.initrd) {
            a.push("-kernel".into());
            a.push(k.into());
            a.push("-initrd".into());
            a.push(i.into());
        }
        a.push("-append".into());
        a.push(self.append.clone().into());
        for t in &self.trace {
            a.push("-trace".into());
            a.push(t.into());
        }
        a.push("-nographic".into());
        a.push("-no-reboot".into());
        a
    }

    /// The command, ready to spawn.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(self.args());
        cmd
    }
}

/// `prefix` then `path`, with QEMU's option escaping (a `,` is doubled).
fn path_arg(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str().to_string_lossy().replace(',', ",,"));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(m: &Microvm) -> Vec<String> {
        m.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The value after the `n`th occurrence of `flag`.
    fn after<'a>(args: &'a [String], flag: &str, n: usize) -> Option<&'a str> {
        args.iter()
            .enumerate()
            .filter(|(_, a)| *a == flag)
            .nth(n)
            .and_then(|(i, _)| args.get(i + 1))
            .map(String::as_str)
    }

    #[test]
    fn a_vhost_user_guest_has_shared_memory_and_modern_mmio() {
        let m = Microvm::new("/usr/bin/qemu-system-x86_64", Accel::Tcg)
            .memory_mib(256)
            .kernel("/k/vmlinuz", "/k/initrd")
            .vhost_user_blk("/run/a,b.sock", 2)
            .append("imagefs.rw=1");
        let a = strings(&m);
        assert_eq!(after(&a, "-M", 0), Some("microvm,accel=tcg"));
        assert_eq!(after(&a, "-cpu", 0), Some("max"));
        assert_eq!(
            after(&a, "-global", 0),
            Some("virtio-mmio.force-legacy=false")
        );
        assert_eq!(
            after(&a, "-object", 0),
            Some("memory-backend-memfd,id=mem,size=256M,share=on")
        );
        assert_eq!(
            after(&a, "-chardev", 0),
            Some("socket,id=blk0,path=/run/a,,b.sock")
        );
        assert_eq!(
            after(&a, "-device", 0),
            Some("vhost-user-blk,chardev=blk0,num-queues=2")
        );
        assert_eq!(after(&a, "-kernel", 0), Some("/k/vmlinuz"));
        assert_eq!(after(&a, "-initrd", 0), Some("/k/initrd"));
        assert_eq!(
            after(&a, "-append", 0),
            Some(format!("{BASE_APPEND} imagefs.rw=1").as_str())
        );
        assert!(a.ends_with(&["-nographic".into(), "-no-reboot".into()]));
    }

    #[test]
    fn a_raw_disk_and_trace_events_follow_the_vhost_disk() {
        let m = Microvm::new("qemu", Accel::Kvm)
            .vhost_user_blk("/s", 1)
            .raw_disk("/img.raw")
            .trace("virtio_blk_handle_read,file=/t");
        let a = strings(&m);
        assert_eq!(after(&a, "-cpu", 0), Some("host"));
        assert_eq!(
            after(&a, "-drive", 0),
            Some("id=d1,file=/img.raw,format=raw,if=none,readonly=on,cache=none,aio=threads")
        );
        assert_eq!(after(&a, "-device", 1), Some("virtio-blk-device,drive=d1"));
        assert_eq!(
            after(&a, "-trace", 0),
            Some("virtio_blk_handle_read,file=/t")
        );
        assert!(after(&a, "-kernel", 0).is_none());
    }

    #[test]
    fn reconnect_goes_on_the_vhost_user_chardev() {
        let m = Microvm::new("qemu", Accel::Tcg)
            .vhost_user_blk("/s", 1)
            .reconnect(1);
        assert_eq!(
            after(&strings(&m), "-chardev", 0),
            Some("socket,id=blk0,path=/s,reconnect=1")
        );
    }
}
