//! The guest-physical memory map shared by the VMM and the probe guest.
//!
//! Everything below 4 GiB is identity-mapped with 2 MiB pages; RAM starts at
//! 0 and the device windows sit at 0xd000_0000, above any RAM we create.

/// The 64-bit GDT (null, code 0x08, data 0x10).
pub const GDT: u64 = 0x500;
/// PML4 table; the PDPT and four page directories follow it.
pub const PML4: u64 = 0x1000;
/// The page-directory-pointer table.
pub const PDPT: u64 = 0x2000;
/// First of four page directories (4 GiB of 2 MiB pages).
pub const PD: u64 = 0x3000;
/// Where the probe guest's flat binary is loaded and entered.
pub const PROBE_LOAD: u64 = 0x10_0000;
/// The most probe code we accept (it is under 4 KiB today).
pub const PROBE_MAX: u64 = 0x8_0000;
/// Top of the probe guest's stack (grows down towards the code).
pub const STACK_TOP: u64 = 0x1f_f000;
/// The parameter block ([`crate::probe::Params`]).
pub const PARAMS: u64 = 0x20_0000;
/// The virtqueue: descriptors here, avail ring +4 KiB, used ring +8 KiB.
pub const QUEUE: u64 = 0x20_1000;
/// Request headers and status bytes, 32 bytes per in-flight slot.
pub const HDRS: u64 = 0x20_4000;
/// The trace entries, then the results.
pub const TRACE: u64 = 0x40_0000;
/// The virtio-mmio block device's register window (4 KiB).
pub const VIRTIO_MMIO: u64 = 0xd000_0000;
/// The VMM control page: +0 doorbell (guest done), +8 console byte.
pub const CONTROL: u64 = 0xd000_1000;
/// Highest RAM size we create (stays below the device windows).
pub const RAM_MAX: u64 = 0xc000_0000;
/// The 2 MiB page size used by the identity map.
pub const HUGE: u64 = 0x20_0000;
/// Start of the device windows; pages from here on are mapped uncached.
pub const MMIO_START: u64 = 0xc000_0000;
