//! vmm-shim: a minimal KVM VMM whose only disk is a virtio-mmio (v2) block
//! device served by a vhost-user backend (`imagefs serve` or
//! `qemu-storage-daemon`), a freestanding probe guest that replays block
//! access traces, and the cold-start harness built on them.
//!
//! Under a pagetable-based nested KVM (`kvm_pvm`) a stock Linux kernel
//! does not boot, so the probe guest (which needs only long mode and
//! user-accessible page tables) is what runs here; [`linux`] holds the Linux
//! guest path for hosts whose KVM boots stock kernels.

pub mod backend;
pub mod cli;
pub mod coldstart;
pub mod concurrent;
pub mod driver;
pub mod error;
pub mod layout;
pub mod linux;
pub mod memory;
pub mod probe;
pub mod run;
pub mod trace;
pub mod vhost_blk;
pub mod virtio_mmio;
pub mod vm;

pub use error::{Error, Result};
pub use probe::{Params, TraceEntry, WaitMode};
pub use run::{KickPath, ProbeRun, RunConfig, run_probe};
