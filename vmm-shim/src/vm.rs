//! KVM setup: the VM, its memory slot, one vCPU put straight into 64-bit long
//! mode with identity-mapped 2 MiB pages.
//!
//! Every page-table entry has the user bit set: this machine's `kvm_pvm`
//! (pagetable-based nested virtualization) only runs guests whose pages are
//! user-accessible, and on ordinary KVM the bit is harmless at CPL 0.

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::error::{Result, kvm};
use crate::layout;
use crate::memory::GuestRam;

const PTE_PRESENT: u64 = 1;
const PTE_WRITE: u64 = 1 << 1;
const PTE_USER: u64 = 1 << 2;
const PTE_PWT: u64 = 1 << 3;
const PTE_PCD: u64 = 1 << 4;
const PTE_HUGE: u64 = 1 << 7;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// A VM with its RAM registered and one vCPU.
#[derive(Debug)]
pub struct Machine {
    /// The KVM system fd (kept for capability checks).
    pub kvm: Kvm,
    /// The VM.
    pub vm: VmFd,
    /// The single vCPU.
    pub vcpu: VcpuFd,
    /// Guest RAM.
    pub ram: GuestRam,
}

impl Machine {
    /// Opens /dev/kvm, creates a VM with `ram` as slot 0, and one vCPU.
    pub fn new(ram: GuestRam) -> Result<Self> {
        Self::build(ram, false)
    }

    /// Like [`Machine::new`], with KVM's in-kernel interrupt controllers and
    /// PIT (what a Linux guest needs) and the host's CPUID passed through.
    pub fn with_irqchip(ram: GuestRam) -> Result<Self> {
        Self::build(ram, true)
    }

    fn build(ram: GuestRam, irqchip: bool) -> Result<Self> {
        let kvm_sys = Kvm::new().map_err(kvm("open /dev/kvm"))?;
        let vm = kvm_sys.create_vm().map_err(kvm("create VM"))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: ram.size(),
            userspace_addr: ram.host_base(),
            flags: 0,
        };
        // SAFETY: the region describes `ram`'s mapping, which stays mapped
        // for as long as the VM exists: both live in this struct, and `vm` is
        // declared before `ram`, so the VM fd closes first on drop.
        unsafe { vm.set_user_memory_region(region) }.map_err(kvm("register guest RAM"))?;
        if irqchip {
            vm.set_tss_address(0xfffb_d000)
                .map_err(kvm("set TSS address"))?;
            vm.create_irq_chip().map_err(kvm("create irqchip"))?;
            let pit = kvm_bindings::kvm_pit_config {
                flags: kvm_bindings::KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm.create_pit2(pit).map_err(kvm("create PIT"))?;
        }
        let vcpu = vm.create_vcpu(0).map_err(kvm("create vCPU"))?;
        if irqchip {
            let cpuid = kvm_sys
                .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .map_err(kvm("get supported CPUID"))?;
            vcpu.set_cpuid2(&cpuid).map_err(kvm("set CPUID"))?;
        }
        Ok(Self {
            kvm: kvm_sys,
            vm,
            vcpu,
            ram,
        })
    }

    /// Writes the GDT and identity-mapped page tables for the first 4 GiB and
    /// puts the vCPU in 64-bit mode at `rip` with `rsp`, `rdi` and `rsi` set.
    pub fn enter_long_mode(&self, rip: u64, rsp: u64, rdi: u64, rsi: u64) -> Result<()> {
        write_page_tables(&self.ram)?;
        write_gdt(&self.ram)?;
        let mut sregs = self.vcpu.get_sregs().map_err(kvm("get sregs"))?;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: 0x08,
            type_: 0xb, // execute/read, accessed
            present: 1,
            dpl: 0,
            db: 0,
            s: 1,
            l: 1,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        let data = kvm_segment {
            selector: 0x10,
            type_: 0x3, // read/write, accessed
            db: 1,
            l: 0,
            ..code
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.gdt.base = layout::GDT;
        sregs.gdt.limit = 3 * 8 - 1;
        sregs.cr3 = layout::PML4;
        sregs.cr4 = CR4_PAE;
        sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        sregs.efer = EFER_LME | EFER_LMA;
        self.vcpu
            .set_sregs(&sregs)
            .map_err(kvm("set sregs (long mode)"))?;
        let regs = kvm_bindings::kvm_regs {
            rip,
            rsp,
            rdi,
            rsi,
            rflags: 0x2,
            ..Default::default()
        };
        self.vcpu.set_regs(&regs).map_err(kvm("set regs"))?;
        Ok(())
    }

    /// The guest TSC frequency in kHz (to turn probe timestamps into time).
    pub fn tsc_khz(&self) -> Result<u32> {
        self.vcpu.get_tsc_khz().map_err(kvm("get TSC frequency"))
    }
}

/// PML4[0] → PDPT; PDPT[0..4] → four page directories of 2 MiB pages.
fn write_page_tables(ram: &GuestRam) -> Result<()> {
    let table = PTE_PRESENT | PTE_WRITE | PTE_USER;
    ram.write_u64(layout::PML4, layout::PDPT | table)?;
    for i in 0..4u64 {
        ram.write_u64(layout::PDPT + i * 8, (layout::PD + i * 0x1000) | table)?;
    }
    let mut pd = vec![0u8; 4 * 512 * 8];
    for (i, e) in pd.chunks_exact_mut(8).enumerate() {
        let addr = i as u64 * layout::HUGE;
        let mut flags = table | PTE_HUGE;
        if addr >= layout::MMIO_START {
            // Device windows: uncached, as a real driver would map them.
            flags |= PTE_PCD | PTE_PWT;
        }
        e.copy_from_slice(&(addr | flags).to_le_bytes());
    }
    ram.write(layout::PD, &pd)
}

fn write_gdt(ram: &GuestRam) -> Result<()> {
    let gdt: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
    let bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    ram.write(layout::GDT, &bytes)
}

/// Checks whether /dev/kvm can be opened (for tests and the CLI to skip with
/// a reason instead of failing).
pub fn kvm_available() -> std::result::Result<(), String> {
    match Kvm::new() {
        Ok(k) => {
            if k.get_api_version() == 12 {
                Ok(())
            } else {
                Err(format!("KVM API version {} (want 12)", k.get_api_version()))
            }
        }
        Err(e) => Err(format!("/dev/kvm: {e}")),
    }
}
