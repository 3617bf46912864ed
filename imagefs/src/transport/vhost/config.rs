//! The virtio-blk configuration space and the feature bits the device
//! offers (virtio 1.2, section 5.2).

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The size of a virtio-blk sector (the unit of request offsets and of
/// `capacity`), whatever the block size.
pub const SECTOR_SIZE: u64 = 512;

/// Length of the configuration structure this device exposes (up to and
/// including the write-zeroes fields).
pub const CONFIG_LEN: usize = 60;

/// What the configuration space and the feature bits are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkGeometry {
    /// Device size in bytes (rounded down to whole sectors for `capacity`).
    pub size: u64,
    /// Logical block size advertised with BLK_SIZE.
    pub block_size: u32,
    /// Largest data segment the driver should send (SIZE_MAX).
    pub size_max: u32,
    /// Most data segments in one request (SEG_MAX).
    pub seg_max: u32,
    /// Request queues (MQ).
    pub queues: u16,
    /// Whether guest writes are accepted (RO is offered otherwise).
    pub writable: bool,
}

impl BlkGeometry {
    /// Capacity in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    /// The virtio feature bits offered: VERSION_1, RO (read-only),
    /// BLK_SIZE, SEG_MAX, SIZE_MAX, FLUSH, MQ, EVENT_IDX, INDIRECT_DESC and
    /// vhost-user's PROTOCOL_FEATURES (which CONFIG and MQ need).
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_MQ)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if !self.writable {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    /// The vhost-user protocol features offered: CONFIG (the frontend
    /// reads the configuration space from us), MQ, REPLY_ACK, and
    /// INFLIGHT_SHMFD (the frontend keeps our inflight region across our
    /// restarts, see [`super::inflight`]).
    pub fn protocol_features() -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    /// The configuration structure, little-endian, as the driver reads it.
    pub fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.capacity_sectors().to_le_bytes());
        c[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        c[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // 16..20 geometry: unused (no GEOMETRY feature).
        c[20..24].copy_from_slice(&self.block_size.to_le_bytes());
        // 24..32 topology: unused (no TOPOLOGY feature).
        // 32 writeback, 33 unused.
        c[34..36].copy_from_slice(&self.queues.to_le_bytes());
        // 36..60 discard and write-zeroes: not offered.
        c
    }

    /// `size` bytes of the configuration space from `offset` (at most 256,
    /// vhost-user's limit). Bytes past this structure read as zeros: the
    /// frontend asks for its own idea of the structure's size (QEMU 7.2
    /// asks for the zoned fields too), whose further fields belong to
    /// features not offered. Never panics.
    pub fn config_slice(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.config_bytes();
        let size = (size as usize).min(256);
        let mut out = vec![0u8; size];
        let start = (offset as usize).min(CONFIG_LEN);
        let end = start.saturating_add(size).min(CONFIG_LEN);
        out[..end - start].copy_from_slice(&bytes[start..end]);
        out
    }
}

/// The GET_ID serial of an image: the first 20 characters of its
/// manifest digest's hex (`VIRTIO_BLK_ID_BYTES`; Linux shows it in
/// `/sys/block/vdX/serial`).
pub fn serial_of(digest_hex: &str) -> [u8; 20] {
    let mut s = [0u8; 20];
    for (d, b) in s.iter_mut().zip(digest_hex.bytes()) {
        *d = b;
    }
    s
}
