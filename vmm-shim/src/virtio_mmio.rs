//! A virtio-mmio (version 2) transport for one block device whose queue is
//! served by a vhost-user backend. The VMM only keeps the register state; when
//! the driver sets DRIVER_OK the queue is handed to the backend, which then
//! reads the rings from the shared guest memory directly.

use crate::error::{Error, Result};
use crate::memory::GuestRam;
use crate::vhost_blk::{QueueLayout, VhostBlk};

/// "virt" in little-endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The virtio device id of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// Our vendor id ("VMMS").
pub const VENDOR_ID: u32 = 0x534d_4d56;
/// Offset of the QueueNotify register (the kick).
pub const QUEUE_NOTIFY: u64 = 0x050;
/// Offset of the device config space.
pub const CONFIG: u64 = 0x100;

const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 128;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// What the VMM must do after a register write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// The guest kicked queue 0 through an MMIO exit: signal the kick eventfd.
    Kick,
    /// The device was just handed to the backend.
    Activated,
}

/// The device's register state.
#[derive(Debug)]
pub struct MmioBlk {
    backend: VhostBlk,
    device_features: u64,
    dev_sel: u32,
    drv_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queue: QueueLayout,
    queue_ready: bool,
    status: u32,
    interrupt_status: u32,
    activated: bool,
    irqfd: bool,
}

fn set_lo(v: &mut u64, lo: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(lo);
}
fn set_hi(v: &mut u64, hi: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(hi) << 32);
}

impl MmioBlk {
    /// A device in reset state fronting `backend`.
    pub fn new(backend: VhostBlk) -> Self {
        let device_features = backend.device_features();
        Self {
            backend,
            device_features,
            dev_sel: 0,
            drv_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queue: QueueLayout::default(),
            queue_ready: false,
            status: 0,
            interrupt_status: 0,
            activated: false,
            irqfd: false,
        }
    }

    /// Completions reach the guest as an interrupt through an irqfd (the
    /// backend's call eventfd), which the VMM never sees; InterruptStatus then
    /// always reports "used buffer" once the queue is live, so the driver
    /// checks its rings on every interrupt.
    pub fn set_irqfd(&mut self, on: bool) {
        self.irqfd = on;
    }

    /// The backend behind the transport.
    pub fn backend(&self) -> &VhostBlk {
        &self.backend
    }

    /// Whether the queue has been handed to the backend.
    pub fn activated(&self) -> bool {
        self.activated
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// A guest read of `data.len()` bytes at register `offset`.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            let cfg = self.backend.config();
            for (i, b) in data.iter_mut().enumerate() {
                let at = (offset - CONFIG) as usize + i;
                *b = cfg.get(at).copied().unwrap_or(0);
            }
            return;
        }
        let v: u32 = match offset {
            0x000 => MAGIC,
            0x004 => 2,
            0x008 => DEVICE_ID_BLOCK,
            0x00c => VENDOR_ID,
            0x010 => match self.dev_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            0x034 if self.queue_sel == 0 => u32::from(self.backend.queue_max()),
            0x044 => u32::from(self.queue_sel == 0 && self.queue_ready),
            0x060 => {
                if self.irqfd && self.activated {
                    self.interrupt_status | 1
                } else {
                    self.interrupt_status
                }
            }
            0x070 => self.status,
            0x0fc => 0, // config generation: the config never changes
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// A guest write at register `offset`. Activation errors (the backend
    /// refused or went away) are returned; the VMM stops the VM on them.
    pub fn write(&mut self, ram: &GuestRam, offset: u64, data: &[u8]) -> Result<Action> {
        if offset >= CONFIG {
            // Block config is read-only for our purposes (no writeback toggle).
            return Ok(Action::None);
        }
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        match offset {
            0x014 => self.dev_sel = v,
            0x020 if self.status & STATUS_FEATURES_OK == 0 => match self.drv_sel {
                0 => set_lo(&mut self.driver_features, v),
                1 => set_hi(&mut self.driver_features, v),
                _ => {}
            },
            0x024 => self.drv_sel = v,
            0x030 => self.queue_sel = v,
            0x038 if self.queue_sel == 0 => self.queue.size = v as u16,
            0x044 if self.queue_sel == 0 => self.queue_ready = v == 1,
            0x050 if v == 0 && self.activated => {
                return Ok(Action::Kick);
            }
            0x064 => self.interrupt_status &= !v,
            0x070 => return self.write_status(ram, v),
            0x080 if self.queue_sel == 0 => set_lo(&mut self.queue.desc, v),
            0x084 if self.queue_sel == 0 => set_hi(&mut self.queue.desc, v),
            0x090 if self.queue_sel == 0 => set_lo(&mut self.queue.avail, v),
            0x094 if self.queue_sel == 0 => set_hi(&mut self.queue.avail, v),
            0x0a0 if self.queue_sel == 0 => set_lo(&mut self.queue.used, v),
            0x0a4 if self.queue_sel == 0 => set_hi(&mut self.queue.used, v),
            _ => {}
        }
        Ok(Action::None)
    }

    fn write_status(&mut self, ram: &GuestRam, v: u32) -> Result<Action> {
        if v == 0 {
            // Device reset.
            if self.activated {
                self.backend.deactivate()?;
            }
            let backend_features = self.device_features;
            self.dev_sel = 0;
            self.drv_sel = 0;
            self.driver_features = 0;
            self.queue_sel = 0;
            self.queue = QueueLayout::default();
            self.queue_ready = false;
            self.status = 0;
            self.interrupt_status = 0;
            self.activated = false;
            self.device_features = backend_features;
            return Ok(Action::None);
        }
        let newly = v & !self.status;
        if newly & STATUS_FEATURES_OK != 0 {
            let ok = self.driver_features & !self.device_features == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !ok {
                // Leave FEATURES_OK clear: the driver sees the refusal.
                self.status = v & !STATUS_FEATURES_OK;
                return Ok(Action::None);
            }
        }
        self.status = v;
        if newly & STATUS_DRIVER_OK != 0 && v & STATUS_FAILED == 0 && !self.activated {
            if !self.queue_ready || self.queue.size == 0 {
                return Err(Error::Config(
                    "guest set DRIVER_OK without a ready queue 0".into(),
                ));
            }
            if self.queue.size > self.backend.queue_max() || !self.queue.size.is_power_of_two() {
                return Err(Error::Config(format!(
                    "guest chose queue size {} (max {}, power of two)",
                    self.queue.size,
                    self.backend.queue_max()
                )));
            }
            self.backend
                .activate(ram, self.driver_features, self.queue)?;
            self.activated = true;
            return Ok(Action::Activated);
        }
        Ok(Action::None)
    }
}
