//! The vhost-user protocol of one frontend connection: our own
//! [`VhostUserBackendReqHandlerMut`], in place of vhost-user-backend's
//! daemon, whose handler refuses GET_INFLIGHT_FD/SET_INFLIGHT_FD and
//! cannot be wrapped.
//!
//! A queue is *started* once its kick fd is set and *stopped* by
//! GET_VRING_BASE; it is served (a [`Worker`]) while started and enabled.
//! When a queue starts over an inflight region, the chains the previous
//! backend left in flight are recovered ([`BlkBackend::start_queue`]) and
//! the worker resubmits them first.

use std::fs::File;
use std::io;
use std::sync::Arc;

use vhost::VhostUserMemoryRegionBase;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{
    Error as VhostUserError, GpuBackend, Result as VhostUserResult, VhostUserBackendReqHandlerMut,
};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryMmap, GuestRegionMmap};

use super::backend::{BlkBackend, Memory};
use super::config::BlkGeometry;
use super::inflight::InflightRegion;
use super::log_limited;
use super::worker::Worker;

/// Memory slots offered with CONFIGURE_MEM_SLOTS (what the kernel's vhost
/// long allowed; QEMU uses a handful).
const MAX_MEM_SLOTS: u64 = 509;

/// Where a region of guest memory lies in the frontend's address space
/// (ring addresses come as frontend virtual addresses).
#[derive(Debug, Clone, Copy)]
struct Mapping {
    frontend_addr: u64,
    size: u64,
    guest_addr: u64,
}

/// One queue's protocol state besides its vring.
#[derive(Default)]
struct QueueState {
    worker: Option<Worker>,
    /// Heads to resubmit when the worker starts.
    resubmit: Vec<u16>,
}

/// The request handler of one connection.
pub(super) struct Handler {
    backend: BlkBackend,
    mem: Memory,
    vrings: Vec<VringRwLock>,
    queues: Vec<QueueState>,
    owned: bool,
    acked_features: u64,
    acked_protocol_features: u64,
    mappings: Vec<Mapping>,
}

fn handler_err(e: impl std::fmt::Display) -> VhostUserError {
    VhostUserError::ReqHandlerError(io::Error::other(e.to_string()))
}

impl Handler {
    /// A handler for `backend`, whose guest memory is `mem`.
    pub(super) fn new(backend: BlkBackend, mem: Memory) -> io::Result<Self> {
        let service = backend.service();
        let queues = usize::from(service.geometry.queues);
        let vrings = (0..queues)
            .map(|_| VringRwLock::new(mem.clone(), service.queue_size).map_err(io::Error::other))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            backend,
            mem,
            vrings,
            queues: (0..queues).map(|_| QueueState::default()).collect(),
            owned: false,
            acked_features: 0,
            acked_protocol_features: 0,
            mappings: Vec::new(),
        })
    }

    fn vring(&self, index: u32) -> VhostUserResult<&VringRwLock> {
        self.vrings
            .get(index as usize)
            .ok_or(VhostUserError::InvalidParam)
    }

    /// Starts or stops queue `index`'s worker to match its state.
    fn update_worker(&mut self, index: usize) -> VhostUserResult<()> {
        let (Some(vring), Some(q)) = (self.vrings.get(index), self.queues.get_mut(index)) else {
            return Err(VhostUserError::InvalidParam);
        };
        let run = {
            let state = vring.get_ref();
            state.get_queue().ready() && state.is_enabled() && state.get_kick().is_some()
        };
        match (run, q.worker.is_some()) {
            (true, false) => {
                let worker = Worker::spawn(
                    self.backend.clone(),
                    index as u16,
                    vring.clone(),
                    std::mem::take(&mut q.resubmit),
                )
                .map_err(VhostUserError::ReqHandlerError)?;
                q.worker = Some(worker);
            }
            (false, true) => {
                if let Some(w) = q.worker.take() {
                    w.stop();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn frontend_to_guest(&self, addr: u64) -> VhostUserResult<u64> {
        self.mappings
            .iter()
            .find(|m| addr >= m.frontend_addr && addr - m.frontend_addr < m.size)
            .map(|m| addr - m.frontend_addr + m.guest_addr)
            .ok_or(VhostUserError::InvalidParam)
    }

    fn replace_memory(&self, mem: GuestMemoryMmap) -> VhostUserResult<()> {
        self.mem
            .lock()
            .map_err(|_| handler_err("guest memory lock poisoned"))?
            .replace(mem);
        Ok(())
    }

    /// Stops every worker and waits for every request of the connection
    /// (it ended, or the device was reset).
    pub(super) fn close(&mut self) {
        for q in &mut self.queues {
            if let Some(w) = q.worker.take() {
                w.stop();
            }
            q.resubmit.clear();
        }
        self.backend.wait_idle();
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.close();
    }
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> VhostUserResult<()> {
        if self.owned {
            return Err(VhostUserError::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VhostUserResult<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol_features = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VhostUserResult<()> {
        for vring in &self.vrings {
            vring.set_enabled(false);
            vring.set_queue_ready(false);
        }
        self.close();
        self.acked_features = 0;
        Ok(())
    }

    fn get_features(&mut self) -> VhostUserResult<u64> {
        Ok(self.backend.service().geometry.features())
    }

    fn set_features(&mut self, features: u64) -> VhostUserResult<()> {
        if features & !self.backend.service().geometry.features() != 0 {
            return Err(VhostUserError::InvalidParam);
        }
        self.acked_features = features;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        for vring in &self.vrings {
            vring.set_queue_event_idx(event_idx);
        }
        self.backend.set_event_idx(event_idx);
        // Without PROTOCOL_FEATURES, rings are enabled from the start
        // (vhost-user spec, "Ring states").
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            for index in 0..self.vrings.len() {
                self.vrings[index].set_enabled(true);
                self.update_worker(index)?;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(VhostUserError::InvalidOperation("postcopy not supported"));
        }
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        for (region, file) in ctx.iter().zip(files) {
            let mapped = GuestRegionMmap::new(
                region.mmap_region(file)?,
                GuestAddress(region.guest_phys_addr),
            )
            .ok_or(VhostUserError::InvalidParam)?;
            regions.push(mapped);
            mappings.push(Mapping {
                frontend_addr: region.user_addr,
                size: region.memory_size,
                guest_addr: region.guest_phys_addr,
            });
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(handler_err)?;
        self.replace_memory(mem)?;
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VhostUserResult<()> {
        let max = u32::from(self.backend.service().queue_size);
        if num == 0 || num > max {
            return Err(VhostUserError::InvalidParam);
        }
        self.vring(index)?.set_queue_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VhostUserResult<()> {
        let desc = self.frontend_to_guest(descriptor)?;
        let avail = self.frontend_to_guest(available)?;
        let used = self.frontend_to_guest(used)?;
        let vring = self.vring(index)?;
        vring
            .set_queue_info(desc, avail, used)
            .map_err(|_| VhostUserError::InvalidParam)?;
        // SET_VRING_BASE gives only the available index; the used index
        // is what the guest's used ring says (libvhost-user does the same).
        let used_idx = vring
            .queue_used_idx()
            .map_err(|_| VhostUserError::BackendInternalError)?;
        vring.set_queue_next_used(used_idx);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VhostUserResult<()> {
        self.vring(index)?.set_queue_next_avail(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VhostUserResult<VhostUserVringState> {
        let vring = self.vring(index)?.clone();
        // Stop the ring: no new chain is taken, and every request taken
        // completes before the frontend learns where we are.
        vring.set_queue_ready(false);
        self.update_worker(index as usize)?;
        if let Some(q) = self.queues.get_mut(index as usize) {
            q.resubmit.clear();
        }
        self.backend.stop_vring(index as u16);
        let next_avail = vring.queue_next_avail();
        vring.set_kick(None);
        vring.set_call(None);
        Ok(VhostUserVringState::new(index, u32::from(next_avail)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        let i = usize::from(index);
        let vring = self.vring(u32::from(index))?.clone();
        // A new kick fd for a running queue: its worker waits on the old one.
        if let Some(w) = self.queues.get_mut(i).and_then(|q| q.worker.take()) {
            w.stop();
        }
        vring.set_kick(fd);
        let starts = {
            let state = vring.get_ref();
            !state.get_queue().ready() && state.get_kick().is_some()
        };
        if starts {
            vring.set_queue_ready(true);
            let resubmit = self
                .backend
                .start_queue(u16::from(index), &vring)
                .map_err(VhostUserError::ReqHandlerError)?;
            if !resubmit.is_empty()
                && let Some(q) = self.queues.get_mut(i)
            {
                q.resubmit = resubmit;
            }
        }
        self.update_worker(i)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        self.vring(u32::from(index))?.set_call(fd);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VhostUserResult<()> {
        let vring = self.vring(u32::from(index))?;
        // Our own handle on it: the backend signals it when the guest
        // breaks the queue (the vring keeps its own, unused).
        let ours = fd
            .as_ref()
            .map(File::try_clone)
            .transpose()
            .map_err(VhostUserError::ReqHandlerError)?;
        vring.set_err(fd);
        self.backend.set_err(u16::from(index), ours);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VhostUserResult<VhostUserProtocolFeatures> {
        Ok(BlkGeometry::protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VhostUserResult<()> {
        self.acked_protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VhostUserResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VhostUserResult<()> {
        if self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            return Err(VhostUserError::InactiveFeature(
                VhostUserVirtioFeatures::PROTOCOL_FEATURES,
            ));
        }
        self.vring(index)?.set_enabled(enable);
        self.update_worker(index as usize)
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<Vec<u8>> {
        Ok(self.backend.service().geometry.config_slice(offset, size))
    }

    fn set_config(
        &mut self,
        _offset: u32,
        _buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VhostUserResult<()> {
        // Nothing in the space is writable (CONFIG_WCE is not offered); a
        // write is ignored, as vhost-user-backend's daemon did.
        Ok(())
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("not a GPU device"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VhostUserResult<File> {
        Err(VhostUserError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        inflight: &VhostUserInflight,
    ) -> VhostUserResult<(VhostUserInflight, File)> {
        let (file, region) = InflightRegion::create(inflight.num_queues, inflight.queue_size)
            .map_err(handler_err)?;
        let size = InflightRegion::size_for(region.num_queues(), region.queue_size());
        // The frontend sends the region back with SET_INFLIGHT_FD, which
        // maps it for us; this mapping only zeroed and sized it.
        drop(region);
        Ok((
            VhostUserInflight::new(size, 0, inflight.num_queues, inflight.queue_size),
            file,
        ))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VhostUserResult<()> {
        let region = InflightRegion::map(
            file,
            inflight.mmap_offset,
            inflight.mmap_size,
            inflight.num_queues,
            inflight.queue_size,
        )
        .map_err(handler_err)?;
        if usize::from(region.num_queues()) < self.vrings.len() {
            log_limited(
                &self.backend.service().stats.logged,
                &format!(
                    "the inflight region covers {} of {} queues; the others are not tracked",
                    region.num_queues(),
                    self.vrings.len()
                ),
            );
        }
        self.backend.set_inflight_region(Some(Arc::new(region)));
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VhostUserResult<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        postcopy_listening: Option<bool>,
    ) -> VhostUserResult<Option<VhostUserMemoryRegionBase>> {
        if postcopy_listening.is_some() {
            return Err(VhostUserError::InvalidOperation("postcopy not supported"));
        }
        let mapped = GuestRegionMmap::new(
            region.mmap_region(fd)?,
            GuestAddress(region.guest_phys_addr),
        )
        .ok_or(VhostUserError::InvalidParam)?;
        let mem = self
            .mem
            .memory()
            .insert_region(Arc::new(mapped))
            .map_err(handler_err)?;
        self.replace_memory(mem)?;
        self.mappings.push(Mapping {
            frontend_addr: region.user_addr,
            size: region.memory_size,
            guest_addr: region.guest_phys_addr,
        });
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> VhostUserResult<()> {
        let (mem, _) = self
            .mem
            .memory()
            .remove_region(GuestAddress(region.guest_phys_addr), region.memory_size)
            .map_err(handler_err)?;
        self.replace_memory(mem)?;
        self.mappings
            .retain(|m| m.guest_addr != region.guest_phys_addr);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VhostUserResult<Option<File>> {
        Err(VhostUserError::InvalidOperation("no device state transfer"))
    }

    fn check_device_state(&mut self) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("no device state transfer"))
    }

    fn get_shmem_config(&mut self) -> VhostUserResult<VhostUserShMemConfig> {
        Err(VhostUserError::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VhostUserResult<()> {
        Err(VhostUserError::InvalidOperation("no dirty-page logging"))
    }
}
