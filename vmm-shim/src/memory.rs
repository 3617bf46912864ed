//! Guest RAM: one memfd, mapped shared into the VMM, registered with KVM and
//! handed (by fd) to the vhost-user backend, which maps the same pages.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::error::{Error, Result};

/// Guest RAM backed by a memfd.
#[derive(Debug)]
pub struct GuestRam {
    file: File,
    mem: GuestMemoryMmap,
    host: u64,
    size: u64,
}

impl GuestRam {
    /// Creates `size` bytes of zeroed guest RAM at guest-physical 0.
    pub fn new(size: u64) -> Result<Self> {
        let name = c"vmm-shim-guest-ram";
        // SAFETY: `name` is a valid NUL-terminated string; memfd_create has no
        // other memory-safety preconditions and we check its result.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Memory {
                what: "memfd_create".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size).map_err(|source| Error::Memory {
            what: format!("resize memfd to {size} bytes"),
            source,
        })?;
        let len = usize::try_from(size).map_err(|_| Error::Config(format!("RAM size {size}")))?;
        let map_file = file.try_clone().map_err(|source| Error::Memory {
            what: "dup memfd".into(),
            source,
        })?;
        // MmapRegion::from_file maps MAP_SHARED, so the backend's mapping of
        // the same memfd sees the guest's writes and vice versa.
        let region = MmapRegion::from_file(FileOffset::new(map_file, 0), len).map_err(|e| {
            Error::Memory {
                what: "mmap memfd".into(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        let host = region.as_ptr() as u64;
        let region = GuestRegionMmap::new(region, GuestAddress(0))
            .ok_or_else(|| Error::Config("guest RAM region overflows".into()))?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|e| Error::Memory {
            what: "guest memory map".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(Self {
            file,
            mem,
            host,
            size,
        })
    }

    /// The vm-memory view (for loaders that take a `GuestMemoryBackend`).
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The VMM's virtual address of guest-physical 0.
    pub fn host_base(&self) -> u64 {
        self.host
    }

    /// The memfd, for SET_MEM_TABLE.
    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Translates a guest-physical address into the VMM's virtual address
    /// (what vhost-user's SET_VRING_ADDR expects).
    pub fn host_addr(&self, gpa: u64) -> Result<u64> {
        if gpa >= self.size {
            return Err(Error::GuestMemory(
                vm_memory::GuestMemoryError::InvalidGuestAddress(GuestAddress(gpa)),
            ));
        }
        Ok(self.host + gpa)
    }

    /// Writes `data` at guest-physical `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        Ok(self.mem.write_slice(data, GuestAddress(gpa))?)
    }

    /// Reads `buf.len()` bytes from guest-physical `gpa`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.mem.read_slice(buf, GuestAddress(gpa))?)
    }

    /// Reads a little-endian u64.
    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian u64.
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<()> {
        self.write(gpa, &v.to_le_bytes())
    }
}
