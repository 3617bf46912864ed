//! The vhost-user frontend for one virtio-blk queue, through the `vhost`
//! crate: session setup at connect time, queue hand-over when the guest's
//! driver sets DRIVER_OK.

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::error::{Error, Result};
use crate::memory::GuestRam;

/// vhost-user's own feature bit: the backend speaks protocol features.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Size of `struct virtio_blk_config` (virtio 1.1, without the zoned fields).
pub const BLK_CONFIG_LEN: usize = 60;

/// Where the guest put queue 0, in guest-physical addresses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLayout {
    /// Entries in the queue.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Driver (avail) ring.
    pub avail: u64,
    /// Device (used) ring.
    pub used: u64,
}

/// A connected vhost-user-blk backend.
pub struct VhostBlk {
    frontend: Frontend,
    path: PathBuf,
    /// The backend's virtio features (with vhost-user's protocol bit).
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    /// The device's config space, as GET_CONFIG returned it.
    config: Vec<u8>,
    /// The largest queue the backend accepts.
    queue_max: u16,
    /// Signalled by the guest's QueueNotify (through an ioeventfd or the VMM).
    pub kick: EventFd,
    /// Signalled by the backend when it puts entries in the used ring.
    pub call: EventFd,
    /// Signalled by the backend when the queue broke (SET_VRING_ERR).
    pub err: EventFd,
    /// A second handle on the socket, for the watchdog to notice a hang-up.
    watch: UnixStream,
    io_timeout: Duration,
}

/// Shuts the socket down if a phase of the conversation takes too long. The
/// `vhost` crate retries reads that time out (SO_RCVTIMEO gives EAGAIN, which
/// it loops on), so a shutdown is the way to make its blocked read return.
struct Deadline {
    tx: Option<mpsc::SyncSender<()>>,
    handle: Option<std::thread::JoinHandle<bool>>,
}

impl Deadline {
    fn arm(sock: &UnixStream, limit: Duration) -> Result<Self> {
        let s = sock.try_clone().map_err(|source| Error::Host {
            what: "dup vhost-user socket",
            source,
        })?;
        // One message at most (the end of the phase): a bounded channel.
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let handle = std::thread::spawn(move || match rx.recv_timeout(limit) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = s.shutdown(Shutdown::Both);
                true
            }
            _ => false,
        });
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Ends the phase; true when the deadline had fired.
    fn disarm(mut self) -> bool {
        drop(self.tx.take());
        self.handle
            .take()
            .map(|h| h.join().unwrap_or(true))
            .unwrap_or(false)
    }
}

impl std::fmt::Debug for VhostBlk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostBlk")
            .field("path", &self.path)
            .field(
                "backend_features",
                &format_args!("{:#x}", self.backend_features),
            )
            .field("protocol", &self.protocol)
            .field("capacity_sectors", &self.capacity_sectors())
            .finish_non_exhaustive()
    }
}

impl VhostBlk {
    /// Connects to the backend at `path`, sets the owner, negotiates protocol
    /// features (CONFIG is required, REPLY_ACK and MQ are taken when offered)
    /// and reads the device config. Every reply must arrive within
    /// `io_timeout`, so a stopped or wedged backend is an error, not a hang.
    pub fn connect(path: &Path, io_timeout: Duration) -> Result<Self> {
        let p = path.to_path_buf();
        // A socket that exists but refuses (bound, not yet listening) is
        // retried briefly; a missing socket is an error at once.
        let mut tries = 0;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(Error::BackendConnect {
                        path: p.clone(),
                        source: e,
                    });
                }
            }
        };
        let watch = stream.try_clone().map_err(|source| Error::Host {
            what: "dup vhost-user socket",
            source,
        })?;
        let deadline = Deadline::arm(&watch, io_timeout)?;
        let res = Self::handshake(stream, &p);
        if deadline.disarm() {
            return Err(Error::BackendTimeout {
                path: p,
                what: "session setup",
                secs: io_timeout.as_secs(),
            });
        }
        let (frontend, backend_features, protocol, config) = res?;
        let kick = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Host {
            what: "kick eventfd",
            source,
        })?;
        let call = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Host {
            what: "call eventfd",
            source,
        })?;
        let err = EventFd::new(EFD_NONBLOCK).map_err(|source| Error::Host {
            what: "error eventfd",
            source,
        })?;
        Ok(Self {
            frontend,
            path: p,
            backend_features,
            protocol,
            config,
            queue_max: 256,
            kick,
            call,
            err,
            watch,
            io_timeout,
        })
    }

    /// SET_OWNER, features, protocol features, queue count, config.
    fn handshake(
        stream: UnixStream,
        p: &Path,
    ) -> Result<(Frontend, u64, VhostUserProtocolFeatures, Vec<u8>)> {
        let mut frontend = Frontend::from_stream(stream, 1);
        let ctx = |what: &'static str| {
            let p = p.to_path_buf();
            move |source| Error::Vhost {
                path: p,
                what,
                source,
            }
        };
        frontend.set_owner().map_err(ctx("SET_OWNER"))?;
        let backend_features = frontend.get_features().map_err(ctx("GET_FEATURES"))?;
        if backend_features & VHOST_USER_F_PROTOCOL_FEATURES == 0 {
            return Err(Error::BackendUnsupported {
                path: p.to_path_buf(),
                what: "no VHOST_USER_F_PROTOCOL_FEATURES (needed for GET_CONFIG)".into(),
            });
        }
        let offered = frontend
            .get_protocol_features()
            .map_err(ctx("GET_PROTOCOL_FEATURES"))?;
        if !offered.contains(VhostUserProtocolFeatures::CONFIG) {
            return Err(Error::BackendUnsupported {
                path: p.to_path_buf(),
                what: format!("protocol feature CONFIG not offered (offered {offered:?})"),
            });
        }
        let wanted = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::MQ;
        let protocol = offered & wanted;
        frontend
            .set_protocol_features(protocol)
            .map_err(ctx("SET_PROTOCOL_FEATURES"))?;
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = frontend.get_queue_num().map_err(ctx("GET_QUEUE_NUM"))?;
            if n == 0 {
                return Err(Error::BackendUnsupported {
                    path: p.to_path_buf(),
                    what: "backend reports 0 queues".into(),
                });
            }
        }
        let (_, config) = frontend
            .get_config(
                0,
                BLK_CONFIG_LEN as u32,
                VhostUserConfigFlags::WRITABLE,
                &[0u8; BLK_CONFIG_LEN],
            )
            .map_err(ctx("GET_CONFIG"))?;
        if config.len() < 8 {
            return Err(Error::BackendUnsupported {
                path: p.to_path_buf(),
                what: format!("GET_CONFIG returned {} bytes", config.len()),
            });
        }
        Ok((frontend, backend_features, protocol, config))
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The virtio features to offer the guest (vhost-user's bit removed).
    pub fn device_features(&self) -> u64 {
        self.backend_features & !VHOST_USER_F_PROTOCOL_FEATURES
    }

    /// The device config space.
    pub fn config(&self) -> &[u8] {
        &self.config
    }

    /// Capacity in 512-byte sectors, from the config space.
    pub fn capacity_sectors(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.config[..8]);
        u64::from_le_bytes(b)
    }

    /// The largest queue the transport advertises.
    pub fn queue_max(&self) -> u16 {
        self.queue_max
    }

    /// The protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// A handle on the socket for hang-up detection (and for a watchdog to
    /// shut it down, which unblocks any pending vhost-user read).
    pub fn watch_socket(&self) -> &UnixStream {
        &self.watch
    }

    /// Hands queue 0 to the backend: features, memory table (the memfd),
    /// vring size/base/addresses, kick, call and error eventfds, and enable.
    /// Every reply must come within the session's I/O timeout.
    pub fn activate(&mut self, ram: &GuestRam, driver_features: u64, q: QueueLayout) -> Result<()> {
        self.activate_from(ram, driver_features, q, 0)
    }

    /// [`activate`](Self::activate) with the device taking available
    /// entries from index `base` on (SET_VRING_BASE): where a queue picks
    /// up after a reconnect.
    pub fn activate_from(
        &mut self,
        ram: &GuestRam,
        driver_features: u64,
        q: QueueLayout,
        base: u16,
    ) -> Result<()> {
        let deadline = Deadline::arm(&self.watch, self.io_timeout)?;
        let res = self.activate_inner(ram, driver_features, q, base);
        if deadline.disarm() {
            return Err(Error::BackendTimeout {
                path: self.path.clone(),
                what: "queue activation",
                secs: self.io_timeout.as_secs(),
            });
        }
        res
    }

    fn activate_inner(
        &mut self,
        ram: &GuestRam,
        driver_features: u64,
        q: QueueLayout,
        base: u16,
    ) -> Result<()> {
        let p = self.path.clone();
        let ctx = |what: &'static str| {
            let p = p.clone();
            move |source| Error::Vhost {
                path: p,
                what,
                source,
            }
        };
        self.frontend
            .set_features(driver_features | VHOST_USER_F_PROTOCOL_FEATURES)
            .map_err(ctx("SET_FEATURES"))?;
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: ram.size(),
            userspace_addr: ram.host_base(),
            mmap_offset: 0,
            mmap_handle: ram.fd(),
        };
        self.frontend
            .set_mem_table(&[region])
            .map_err(ctx("SET_MEM_TABLE"))?;
        self.frontend
            .set_vring_num(0, q.size)
            .map_err(ctx("SET_VRING_NUM"))?;
        self.frontend
            .set_vring_base(0, base)
            .map_err(ctx("SET_VRING_BASE"))?;
        // vhost-user ring addresses are the frontend's virtual addresses; the
        // backend translates them through the memory table.
        let cfg = VringConfigData {
            queue_max_size: self.queue_max,
            queue_size: q.size,
            flags: 0,
            desc_table_addr: ram.host_addr(q.desc)?,
            used_ring_addr: ram.host_addr(q.used)?,
            avail_ring_addr: ram.host_addr(q.avail)?,
            log_addr: None,
        };
        self.frontend
            .set_vring_addr(0, &cfg)
            .map_err(ctx("SET_VRING_ADDR"))?;
        self.frontend
            .set_vring_kick(0, &self.kick)
            .map_err(ctx("SET_VRING_KICK"))?;
        self.frontend
            .set_vring_call(0, &self.call)
            .map_err(ctx("SET_VRING_CALL"))?;
        self.frontend
            .set_vring_err(0, &self.err)
            .map_err(ctx("SET_VRING_ERR"))?;
        self.frontend
            .set_vring_enable(0, true)
            .map_err(ctx("SET_VRING_ENABLE"))?;
        Ok(())
    }

    /// Stops queue 0 (the guest reset the device).
    pub fn deactivate(&mut self) -> Result<()> {
        let p = self.path.clone();
        self.frontend
            .set_vring_enable(0, false)
            .map_err(|source| Error::Vhost {
                path: p.clone(),
                what: "SET_VRING_ENABLE(false)",
                source,
            })?;
        self.frontend
            .get_vring_base(0)
            .map_err(|source| Error::Vhost {
                path: p,
                what: "GET_VRING_BASE",
                source,
            })?;
        Ok(())
    }
}
