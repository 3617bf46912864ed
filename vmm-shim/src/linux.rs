//! The Linux guest: a bzImage with an initramfs and a command line (through
//! `linux-loader`), entered at its 64-bit entry point, with an 8250 console
//! on port 0x3f8 and the virtio-mmio block device announced on the command
//! line (`virtio_mmio.device=4K@0xd0000000:5`), completions delivered by
//! irqfd on GSI 5.
//!
//! This machine's `kvm_pvm` does not boot stock kernels, so
//! [`boot`] is also the check: it runs the kernel until a console marker
//! appears or a time limit passes, and reports which.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvm_ioctls::VcpuExit;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{KernelLoader, bzimage::BzImage, load_cmdline};
use vm_memory::{Bytes, GuestAddress};

use crate::error::{Error, Result, kvm};
use crate::layout;
use crate::memory::GuestRam;
use crate::vhost_blk::VhostBlk;
use crate::virtio_mmio::{Action, MmioBlk};
use crate::vm::Machine;

const ZERO_PAGE: u64 = 0x7000;
const BOOT_STACK: u64 = 0x8ff0;
const CMDLINE: u64 = 0x2_0000;
const CMDLINE_MAX: usize = 4096;
const HIGH_MEM: u64 = 0x10_0000;
const E820_RAM: u32 = 1;
/// The GSI the block device interrupts on.
pub const BLK_IRQ: u32 = 5;

/// What to boot.
#[derive(Debug, Clone)]
pub struct LinuxConfig {
    /// The bzImage.
    pub kernel: PathBuf,
    /// An initramfs (cpio, optionally compressed).
    pub initramfs: Option<PathBuf>,
    /// Appended to the built-in command line.
    pub cmdline: String,
    /// A vhost-user-blk backend for `/dev/vda`.
    pub socket: Option<PathBuf>,
    /// Guest RAM.
    pub ram_mib: u64,
    /// Stop when the console shows this.
    pub marker: String,
    /// Give up after this long.
    pub timeout: Duration,
}

/// How a boot attempt ended.
#[derive(Debug, Clone)]
pub struct LinuxRun {
    /// Whether the marker appeared.
    pub reached_marker: bool,
    /// Everything the guest printed.
    pub console: String,
    /// From VM creation to the marker or the time limit.
    pub elapsed: Duration,
    /// Where the vCPU was when the run stopped (for a hang: where it hung).
    pub rip: Option<u64>,
    /// Where the kernel's 64-bit entry point was.
    pub entry: u64,
}

impl LinuxRun {
    /// The last `n` lines of console output (for skip reasons).
    pub fn console_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A minimal 8250 UART: transmit only, always ready, no interrupts. Only the
/// line control register is kept, so divisor-latch writes (DLAB set) are not
/// taken for output.
#[derive(Default)]
struct Uart {
    lcr: u8,
}

impl Uart {
    fn out(&mut self, port: u16, data: &[u8], console: &mut Vec<u8>) {
        let dlab = self.lcr & 0x80 != 0;
        match port - 0x3f8 {
            0 if !dlab => console.extend_from_slice(data),
            3 => self.lcr = data.first().copied().unwrap_or(0),
            _ => {}
        }
    }

    fn input(&self, port: u16, data: &mut [u8]) {
        let v = match port - 0x3f8 {
            3 => self.lcr,
            2 => 0x01, // IIR: no interrupt pending
            5 => 0x60, // LSR: transmitter empty
            6 => 0xb0, // MSR: DCD, DSR, CTS
            _ => 0,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }
}

fn load(ram: &GuestRam, cfg: &LinuxConfig) -> Result<u64> {
    let mut f = File::open(&cfg.kernel).map_err(|source| Error::Io {
        path: cfg.kernel.clone(),
        source,
    })?;
    let loaded =
        BzImage::load(ram.mem(), None, &mut f, Some(GuestAddress(HIGH_MEM))).map_err(|source| {
            Error::KernelLoad {
                path: cfg.kernel.clone(),
                source,
            }
        })?;
    let mut cmdline =
        Cmdline::new(CMDLINE_MAX).map_err(|e| Error::Config(format!("command line: {e}")))?;
    let mut text =
        "console=ttyS0 earlyprintk=serial,ttyS0,115200 reboot=k panic=-1 pci=off nomodules \
         i8042.noaux i8042.nomux i8042.dumbkbd tsc=reliable"
            .to_string();
    if cfg.socket.is_some() {
        text.push_str(&format!(
            " virtio_mmio.device=4K@{:#x}:{BLK_IRQ}",
            layout::VIRTIO_MMIO
        ));
    }
    if !cfg.cmdline.is_empty() {
        text.push(' ');
        text.push_str(&cfg.cmdline);
    }
    cmdline
        .insert_str(&text)
        .map_err(|e| Error::Config(format!("command line {text:?}: {e}")))?;
    load_cmdline(ram.mem(), GuestAddress(CMDLINE), &cmdline).map_err(|source| {
        Error::KernelLoad {
            path: cfg.kernel.clone(),
            source,
        }
    })?;

    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = text.len() as u32 + 1;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = 0x100_0000;
    }
    if let Some(initrd) = &cfg.initramfs {
        let data = std::fs::read(initrd).map_err(|source| Error::Io {
            path: initrd.clone(),
            source,
        })?;
        // Highest 2 MiB-aligned spot that fits, under the 896 MiB that
        // older boot protocols allow for the initrd.
        let top = ram.size().min(0x3800_0000);
        let at = (top - data.len() as u64) & !(layout::HUGE - 1);
        if at <= loaded.kernel_end {
            return Err(Error::Config(format!(
                "initramfs {} ({} bytes) does not fit in {} MiB of RAM",
                initrd.display(),
                data.len(),
                cfg.ram_mib
            )));
        }
        ram.write(at, &data)?;
        params.hdr.ramdisk_image = at as u32;
        params.hdr.ramdisk_size = data.len() as u32;
    }
    params.e820_table[0] = boot_e820_entry {
        addr: 0,
        size: 0x9_fc00,
        r#type: E820_RAM,
    };
    params.e820_table[1] = boot_e820_entry {
        addr: HIGH_MEM,
        size: ram.size() - HIGH_MEM,
        r#type: E820_RAM,
    };
    params.e820_entries = 2;
    ram.mem().write_obj(params, GuestAddress(ZERO_PAGE))?;
    // The 64-bit entry point of a bzImage is 0x200 past its load address.
    Ok(loaded.kernel_load.0 + 0x200)
}

/// Boots the kernel until the console shows `cfg.marker` or `cfg.timeout`
/// passes. Not reaching the marker is a result, not an error: on hosts whose
/// KVM cannot run a stock kernel that is the expected outcome.
pub fn boot(cfg: &LinuxConfig) -> Result<LinuxRun> {
    let start = Instant::now();
    let ram = GuestRam::new(cfg.ram_mib << 20)?;
    let mut machine = Machine::with_irqchip(ram)?;
    let entry = load(&machine.ram, cfg)?;
    machine.enter_long_mode(entry, BOOT_STACK, 0, ZERO_PAGE)?;
    let mut dev = match &cfg.socket {
        Some(sock) => {
            let backend = VhostBlk::connect(sock, Duration::from_secs(10))?;
            machine
                .vm
                .register_irqfd(&backend.call, BLK_IRQ)
                .map_err(kvm("register irqfd for the block device"))?;
            let mut d = MmioBlk::new(backend);
            d.set_irqfd(true);
            Some(d)
        }
        None => None,
    };
    super::run::install_signal()?;
    let stop = AtomicBool::new(false);
    let found = AtomicBool::new(false);
    let tid = AtomicU64::new(0);
    let console = std::sync::Mutex::new(Vec::<u8>::new());
    let Machine { vcpu, ram, .. } = &mut machine;
    let ram: &GuestRam = ram;
    let result: Result<()> = std::thread::scope(|s| {
        let handle = s.spawn(|| -> Result<()> {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            tid.store(me as u64, Ordering::SeqCst);
            let mut out = Vec::new();
            let mut uart = Uart::default();
            let res = loop {
                if stop.load(Ordering::SeqCst) {
                    break Ok(());
                }
                match vcpu.run() {
                    Ok(VcpuExit::IoOut(port, data)) if (0x3f8..0x400).contains(&port) => {
                        uart.out(port, data, &mut out);
                        if data.contains(&b'\n') {
                            let mut c = console.lock().unwrap_or_else(|p| p.into_inner());
                            c.extend_from_slice(&out);
                            out.clear();
                            if String::from_utf8_lossy(&c).contains(&cfg.marker) {
                                found.store(true, Ordering::SeqCst);
                                break Ok(());
                            }
                        }
                    }
                    Ok(VcpuExit::IoIn(port, data)) if (0x3f8..0x400).contains(&port) => {
                        uart.input(port, data);
                    }
                    Ok(VcpuExit::IoOut(..)) => {}
                    Ok(VcpuExit::IoIn(_, data)) => data.fill(0xff),
                    Ok(VcpuExit::MmioRead(addr, data)) => match &dev {
                        Some(d)
                            if (layout::VIRTIO_MMIO..layout::VIRTIO_MMIO + 0x1000)
                                .contains(&addr) =>
                        {
                            d.read(addr - layout::VIRTIO_MMIO, data)
                        }
                        _ => data.fill(0xff),
                    },
                    Ok(VcpuExit::MmioWrite(addr, data)) => {
                        if let Some(d) = dev.as_mut()
                            && (layout::VIRTIO_MMIO..layout::VIRTIO_MMIO + 0x1000).contains(&addr)
                            && d.write(ram, addr - layout::VIRTIO_MMIO, data)? == Action::Kick
                        {
                            d.backend().kick.write(1).map_err(|source| Error::Host {
                                what: "signal kick eventfd",
                                source,
                            })?;
                        }
                    }
                    Ok(VcpuExit::Hlt) | Ok(VcpuExit::Shutdown) => {
                        break Err(Error::VcpuExit("Linux guest halted or shut down".into()));
                    }
                    Ok(VcpuExit::Intr) => {}
                    Ok(other) => break Err(Error::VcpuExit(format!("unhandled exit {other:?}"))),
                    Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                    Err(e) => break Err(kvm("KVM_RUN")(e)),
                }
            };
            console
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&out);
            res
        });
        while !handle.is_finished() && start.elapsed() < cfg.timeout {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::SeqCst);
        while !handle.is_finished() {
            let t = tid.load(Ordering::SeqCst);
            if t != 0 {
                // SAFETY: the vCPU thread is not joined before this loop
                // ends, so its pthread_t stays valid.
                unsafe { libc::pthread_kill(t as libc::pthread_t, super::run::vcpu_signal()) };
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        handle
            .join()
            .unwrap_or_else(|_| Err(Error::VcpuExit("vCPU thread panicked".into())))
    });
    let console = String::from_utf8_lossy(&console.into_inner().unwrap_or_else(|p| p.into_inner()))
        .into_owned();
    let reached_marker = found.load(Ordering::SeqCst);
    match result {
        Err(e) if !reached_marker => Err(Error::VcpuExit(format!(
            "{e}; console tail: {:?}",
            console.lines().rev().take(5).collect::<Vec<_>>()
        ))),
        _ => Ok(LinuxRun {
            reached_marker,
            console,
            elapsed: start.elapsed(),
            rip: machine.vcpu.get_regs().ok().map(|r| r.rip),
            entry,
        }),
    }
}
