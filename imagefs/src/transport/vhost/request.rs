//! Parsing a virtio-blk descriptor chain into a [`Request`]: a pure
//! function of the walked chain ([`super::chain::walk`]), the guest memory
//! and the device's [`Limits`], which touches guest memory only to read
//! the 16-byte request header. [`read`] walks and parses; a chain that
//! cannot be walked is rejected without a status byte.
//!
//! Layout (virtio 1.2, 5.2.6; any framing, as VERSION_1 implies
//! ANY_LAYOUT): the device-readable descriptors come first and hold the
//! header (`type: le32, reserved: le32, sector: le64`) followed, for a
//! write, by the data; the device-writable descriptors follow and hold,
//! for a read or GET_ID, the data, and as their very last byte the
//! status. A chain that breaks this (a readable descriptor after a
//! writable one, a buffer outside guest memory, data in the wrong
//! direction, a length that is not whole sectors, sectors past the end)
//! is rejected with IOERR; an unknown type with UNSUPP. The status byte is
//! only ever written when its own descriptor lies inside guest memory.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::chain::{Desc, WalkError, walk};
use super::config::SECTOR_SIZE;

/// Size of the request header.
pub const HEADER_LEN: u64 = 16;

/// A piece of guest memory a request reads or writes, checked to lie
/// inside guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `data_len` bytes from byte offset `sector * 512` into the data
    /// segments.
    Read {
        /// First sector.
        sector: u64,
    },
    /// Write the data segments at byte offset `sector * 512`.
    Write {
        /// First sector.
        sector: u64,
    },
    /// Make earlier writes durable.
    Flush,
    /// Write the device serial (up to 20 bytes) into the data segments.
    GetId,
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The chain's head index (what the used ring reports).
    pub head: u16,
    /// What to do.
    pub kind: RequestKind,
    /// Data segments, in order: device-writable for a read or GET_ID,
    /// device-readable for a write, none otherwise.
    pub data: Vec<Segment>,
    /// Their total length.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

impl Request {
    /// The byte offset on the device of a read or write.
    pub fn offset(&self) -> Option<u64> {
        match self.kind {
            RequestKind::Read { sector } | RequestKind::Write { sector } => {
                Some(sector * SECTOR_SIZE)
            }
            RequestKind::Flush | RequestKind::GetId => None,
        }
    }
}

/// Why a chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// A descriptor's buffer is not entirely inside guest memory.
    #[error("descriptor {position} ({len} bytes at {addr:#x}) is outside guest memory")]
    OutsideMemory {
        /// Its position in the chain.
        position: usize,
        /// Its guest address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("descriptor {position} is device-readable but follows a device-writable one")]
    ReadableAfterWritable {
        /// Its position in the chain.
        position: usize,
    },
    /// The chain is longer than the device accepts.
    #[error("chain has more than {max} descriptors")]
    TooManyDescriptors {
        /// The limit.
        max: usize,
    },
    /// Fewer than 16 device-readable bytes: no complete header.
    #[error("chain has {readable} device-readable bytes, less than the 16-byte header")]
    ShortHeader {
        /// Device-readable bytes in the chain.
        readable: u64,
    },
    /// The header could not be read.
    #[error("cannot read the request header: {0}")]
    Header(String),
    /// No device-writable byte for the status.
    #[error("chain has no device-writable byte for the status")]
    NoStatus,
    /// A request carries data in the direction its type does not use.
    #[error("{kind} request carries {len} bytes of {direction} data")]
    WrongDirection {
        /// The request type.
        kind: &'static str,
        /// "device-readable" or "device-writable".
        direction: &'static str,
        /// How many bytes.
        len: u64,
    },
    /// A read or write of no bytes, or not of whole sectors.
    #[error("{kind} of {len} bytes is not a whole, non-zero number of 512-byte sectors")]
    BadLength {
        /// "read" or "write".
        kind: &'static str,
        /// The data length.
        len: u64,
    },
    /// A request larger than the device accepts.
    #[error("{kind} of {len} bytes is larger than the {max}-byte limit")]
    TooLong {
        /// "read" or "write".
        kind: &'static str,
        /// The data length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Sectors past the end of the device.
    #[error(
        "{kind} of {sectors} sectors at sector {sector} ends past the device's {capacity} sectors"
    )]
    OutOfRange {
        /// "read" or "write".
        kind: &'static str,
        /// First sector.
        sector: u64,
        /// Sectors.
        sectors: u64,
        /// Device capacity in sectors.
        capacity: u64,
    },
    /// A write to a read-only device.
    #[error("write to a read-only device")]
    ReadOnly,
    /// A GET_ID with no room for the serial.
    #[error("GET_ID request has no device-writable data buffer")]
    NoIdBuffer,
    /// A request type the device does not implement.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// The chain could not be walked (a loop, a bad index or table).
    #[error("malformed chain: {0}")]
    Chain(#[source] WalkError),
}

impl ParseError {
    /// The status the guest gets: UNSUPP for an unknown type, IOERR for
    /// everything else.
    pub fn status(&self) -> u8 {
        match self {
            ParseError::Unsupported(_) => VIRTIO_BLK_S_UNSUPP as u8,
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A rejected chain: why, and where its status byte goes (when the chain
/// has one inside guest memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The chain's head index.
    pub head: u16,
    /// Why.
    pub error: ParseError,
    /// The status byte's address, if the chain has a valid one.
    pub status: Option<GuestAddress>,
}

/// What the device accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Device capacity in sectors.
    pub capacity_sectors: u64,
    /// Most descriptors in one chain (SEG_MAX plus header and status).
    pub max_descriptors: usize,
    /// Largest read or write in bytes.
    pub max_data_len: u64,
    /// Whether writes are accepted.
    pub writable: bool,
}

/// One descriptor's buffer, after the memory check.
#[derive(Clone, Copy)]
struct Buf {
    addr: GuestAddress,
    len: u64,
}

/// Takes up to `want` bytes off the front of `bufs` (advancing it),
/// returning the pieces.
fn take(bufs: &mut std::collections::VecDeque<Buf>, mut want: u64) -> Vec<Buf> {
    let mut out = Vec::new();
    while want > 0 {
        let Some(front) = bufs.front_mut() else { break };
        let n = front.len.min(want);
        if n > 0 {
            out.push(Buf {
                addr: front.addr,
                len: n,
            });
        }
        // The descriptor was checked to lie inside guest memory, so its
        // address plus a length within it cannot overflow.
        front.addr = GuestAddress(front.addr.0 + n);
        front.len -= n;
        want -= n;
        if front.len == 0 {
            bufs.pop_front();
        }
    }
    out
}

fn segments(bufs: &[Buf]) -> Vec<Segment> {
    bufs.iter()
        .filter(|b| b.len > 0)
        // Each piece comes from one descriptor, whose length is a u32.
        .map(|b| Segment {
            addr: b.addr,
            len: b.len as u32,
        })
        .collect()
}

/// Walks the chain at `head` (descriptor table `table`, `queue_size`
/// entries) and parses it.
pub fn read<M: GuestMemory + ?Sized>(
    mem: &M,
    table: GuestAddress,
    queue_size: u16,
    head: u16,
    limits: &Limits,
) -> Result<Request, Rejected> {
    match walk(mem, table, queue_size, head, limits.max_descriptors) {
        Ok(descs) => parse(head, &descs, mem, limits),
        Err(e) => Err(Rejected {
            head,
            error: match e {
                WalkError::TooMany { max } => ParseError::TooManyDescriptors { max },
                other => ParseError::Chain(other),
            },
            status: None,
        }),
    }
}

/// Parses the chain with head `head` and descriptors `descs` into a
/// request (see the module docs).
pub fn parse<M: GuestMemory + ?Sized>(
    head: u16,
    descs: &[Desc],
    mem: &M,
    limits: &Limits,
) -> Result<Request, Rejected> {
    let mut readable = std::collections::VecDeque::new();
    let mut writable: Vec<Buf> = Vec::new();
    let mut first_error: Option<ParseError> = None;
    // Whether the chain's last descriptor is device-writable: only then
    // does it hold a status byte.
    let mut ends_writable = false;
    let reject = |error, status| Rejected {
        head,
        error,
        status,
    };
    for (position, desc) in descs.iter().enumerate() {
        if position >= limits.max_descriptors {
            first_error.get_or_insert(ParseError::TooManyDescriptors {
                max: limits.max_descriptors,
            });
            break;
        }
        let (addr, len) = (desc.addr, desc.len);
        ends_writable = desc.write;
        let inside = len == 0
            || mem.check_range(
                addr,
                len as usize,
                if desc.write {
                    Permissions::Write
                } else {
                    Permissions::Read
                },
            );
        if !inside {
            first_error.get_or_insert(ParseError::OutsideMemory {
                position,
                addr: addr.0,
                len,
            });
            // Keep going only to find a valid status byte; never use this
            // buffer.
            if desc.write {
                writable.push(Buf { addr, len: 0 });
            }
            continue;
        }
        if desc.write {
            writable.push(Buf {
                addr,
                len: u64::from(len),
            });
        } else {
            if !writable.is_empty() {
                first_error.get_or_insert(ParseError::ReadableAfterWritable { position });
            }
            readable.push_back(Buf {
                addr,
                len: u64::from(len),
            });
        }
    }
    // The status is the last byte of the last writable descriptor, if that
    // descriptor is a valid (inside-memory, non-empty) one.
    let status = writable
        .last()
        .filter(|b| ends_writable && b.len > 0)
        .map(|b| GuestAddress(b.addr.0 + b.len - 1));
    if let Some(error) = first_error {
        return Err(reject(error, status));
    }
    let Some(status_addr) = status else {
        return Err(reject(ParseError::NoStatus, None));
    };
    if let Some(last) = writable.last_mut() {
        last.len -= 1;
    }

    let readable_len: u64 = readable.iter().map(|b| b.len).sum();
    if readable_len < HEADER_LEN {
        return Err(reject(
            ParseError::ShortHeader {
                readable: readable_len,
            },
            status,
        ));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    let mut at = 0usize;
    for piece in take(&mut readable, HEADER_LEN) {
        let n = piece.len as usize;
        mem.read_slice(&mut header[at..at + n], piece.addr)
            .map_err(|e| reject(ParseError::Header(e.to_string()), status))?;
        at += n;
    }
    let code = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    let out_data: Vec<Buf> = readable.into_iter().filter(|b| b.len > 0).collect();
    let in_data: Vec<Buf> = writable.into_iter().filter(|b| b.len > 0).collect();
    let out_len: u64 = out_data.iter().map(|b| b.len).sum();
    let in_len: u64 = in_data.iter().map(|b| b.len).sum();

    let no_data = |kind: &'static str, direction: &'static str, len: u64| {
        if len == 0 {
            Ok(())
        } else {
            Err(reject(
                ParseError::WrongDirection {
                    kind,
                    direction,
                    len,
                },
                status,
            ))
        }
    };
    let check_range = |kind: &'static str, len: u64| {
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
            return Err(reject(ParseError::BadLength { kind, len }, status));
        }
        if len > limits.max_data_len {
            return Err(reject(
                ParseError::TooLong {
                    kind,
                    len,
                    max: limits.max_data_len,
                },
                status,
            ));
        }
        let sectors = len / SECTOR_SIZE;
        if sector
            .checked_add(sectors)
            .is_none_or(|end| end > limits.capacity_sectors)
        {
            return Err(reject(
                ParseError::OutOfRange {
                    kind,
                    sector,
                    sectors,
                    capacity: limits.capacity_sectors,
                },
                status,
            ));
        }
        Ok(())
    };
    let (kind, data, data_len) = match code {
        VIRTIO_BLK_T_IN => {
            no_data("read", "device-readable", out_len)?;
            check_range("read", in_len)?;
            (RequestKind::Read { sector }, segments(&in_data), in_len)
        }
        VIRTIO_BLK_T_OUT => {
            no_data("write", "device-writable", in_len)?;
            if !limits.writable {
                return Err(reject(ParseError::ReadOnly, status));
            }
            check_range("write", out_len)?;
            (RequestKind::Write { sector }, segments(&out_data), out_len)
        }
        VIRTIO_BLK_T_FLUSH => {
            no_data("flush", "device-readable", out_len)?;
            no_data("flush", "device-writable", in_len)?;
            (RequestKind::Flush, Vec::new(), 0)
        }
        VIRTIO_BLK_T_GET_ID => {
            no_data("GET_ID", "device-readable", out_len)?;
            if in_len == 0 {
                return Err(reject(ParseError::NoIdBuffer, status));
            }
            (RequestKind::GetId, segments(&in_data), in_len)
        }
        other => return Err(reject(ParseError::Unsupported(other), status)),
    };
    Ok(Request {
        head,
        kind,
        data,
        data_len,
        status: status_addr,
    })
}
