//! Tests of the vhost-user-blk device: the configuration space, chain
//! parsing on `virtio_queue::mock` queues (well-formed and hostile), and
//! the backend driving a real `VringRwLock` over mock guest memory
//! (completion, statuses, out-of-order completion around a blocked fetch,
//! writes, the trace), and `serve` ending on a frontend disconnect.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::tests::imagegen::noise;
use ::tests::synthetic::{CHUNK, encrypted_device};
use cachetiers::{ChunkStore, DirStore};
use manifest::DomainSecret;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use super::chain::{Desc, WalkError, walk};
use super::config::{BlkGeometry, CONFIG_LEN};
use super::request::{Limits, ParseError, RequestKind, parse, read};
use super::*;
use crate::lazy::{LazyImage, LazyOptions};

const MEM_SIZE: u64 = 0x100_0000; // 16 MiB of guest memory
const QSIZE: u16 = 64;
const HDR: u64 = 0x10_0000; // where request headers go
const DATA: u64 = 0x20_0000; // data buffers
const STATUS: u64 = 0x30_0000; // status bytes

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap()
}

fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// Writes a request header for request `n` and returns its descriptor.
fn header(mem: &GuestMemoryMmap, n: u64, code: u32, sector: u64) -> RawDescriptor {
    let addr = HDR + n * 16;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&code.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(addr)).unwrap();
    desc(addr, 16, false)
}

fn status_desc(n: u64) -> RawDescriptor {
    desc(STATUS + n, 1, true)
}

fn limits(writable: bool) -> Limits {
    Limits {
        capacity_sectors: 100,
        max_descriptors: 16,
        max_data_len: 1 << 20,
        writable,
    }
}

fn parse_one(
    mem: &GuestMemoryMmap,
    descs: &[RawDescriptor],
    writable: bool,
) -> Result<request::Request, request::Rejected> {
    let q = MockSplitQueue::new(mem, QSIZE);
    let chain = q.build_desc_chain(descs).unwrap();
    read(
        mem,
        q.desc_table_addr(),
        QSIZE,
        chain.head_index(),
        &limits(writable),
    )
}

#[test]
fn config_space_and_features() {
    let g = BlkGeometry {
        size: 1 << 20,
        block_size: 512,
        size_max: 1 << 20,
        seg_max: 254,
        queues: 4,
        writable: false,
    };
    let c = g.config_bytes();
    assert_eq!(u64::from_le_bytes(c[0..8].try_into().unwrap()), 2048);
    assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
    assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
    assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 4);
    assert_ne!(g.features() & (1 << VIRTIO_BLK_F_RO), 0);
    let w = BlkGeometry {
        writable: true,
        ..g.clone()
    };
    assert_eq!(w.features() & (1 << VIRTIO_BLK_F_RO), 0);
    // Reads past the end of the structure are cut short, never a panic.
    assert_eq!(g.config_slice(0, 8), c[0..8]);
    let tail = g.config_slice(56, 100);
    assert_eq!(tail.len(), 100);
    assert_eq!(tail[..CONFIG_LEN - 56], c[56..]);
    assert!(tail[CONFIG_LEN - 56..].iter().all(|&b| b == 0));
    assert!(g.config_slice(u32::MAX, u32::MAX).iter().all(|&b| b == 0));
    assert_eq!(
        &serial_of("0123456789abcdef0123456789"),
        b"0123456789abcdef0123"
    );
}

#[test]
fn parses_reads_writes_flush_and_get_id() {
    let mem = guest_memory();
    let r = parse_one(
        &mem,
        &[
            header(&mem, 0, VIRTIO_BLK_T_IN, 7),
            desc(DATA, 1024, true),
            desc(DATA + 4096, 512, true),
            status_desc(0),
        ],
        false,
    )
    .unwrap();
    assert_eq!(r.kind, RequestKind::Read { sector: 7 });
    assert_eq!(r.data_len, 1536);
    assert_eq!(r.data.len(), 2);
    assert_eq!(r.offset(), Some(7 * 512));
    assert_eq!(r.status, GuestAddress(STATUS));

    // Any layout: the header split over two descriptors, and the status
    // byte sharing the last data descriptor.
    let h = header(&mem, 1, VIRTIO_BLK_T_IN, 3);
    let hd = SplitDescriptor::from(h);
    let r = parse_one(
        &mem,
        &[
            desc(hd.addr().0, 6, false),
            desc(hd.addr().0 + 6, 10, false),
            desc(DATA, 513, true),
        ],
        false,
    )
    .unwrap();
    assert_eq!(r.kind, RequestKind::Read { sector: 3 });
    assert_eq!(r.data_len, 512);
    assert_eq!(r.status, GuestAddress(DATA + 512));

    let w = [
        header(&mem, 2, VIRTIO_BLK_T_OUT, 99),
        desc(DATA, 512, false),
        status_desc(2),
    ];
    assert_eq!(
        parse_one(&mem, &w, true).unwrap().kind,
        RequestKind::Write { sector: 99 }
    );
    let flush = [header(&mem, 3, VIRTIO_BLK_T_FLUSH, 0), status_desc(3)];
    assert_eq!(
        parse_one(&mem, &flush, false).unwrap().kind,
        RequestKind::Flush
    );
    let id = [
        header(&mem, 4, VIRTIO_BLK_T_GET_ID, 0),
        desc(DATA, 20, true),
        status_desc(4),
    ];
    let r = parse_one(&mem, &id, false).unwrap();
    assert_eq!((r.kind, r.data_len), (RequestKind::GetId, 20));
}

/// Name, chain, device writable, expected error, whether it has a status.
type HostileCase = (
    &'static str,
    Vec<RawDescriptor>,
    bool,
    fn(&ParseError) -> bool,
    bool,
);

/// Every hostile chain gets the right error and, when it has a valid status
/// byte, a status address.
#[test]
fn hostile_chains_are_rejected() {
    let mem = guest_memory();
    let h = |n, code, sector| header(&mem, n, code, sector);
    let cases: Vec<HostileCase> = vec![
        (
            "data outside guest memory",
            vec![
                h(0, VIRTIO_BLK_T_IN, 0),
                desc(MEM_SIZE - 256, 512, true),
                status_desc(0),
            ],
            false,
            |e| matches!(e, ParseError::OutsideMemory { position: 1, .. }),
            true,
        ),
        (
            "address that wraps around",
            vec![
                h(1, VIRTIO_BLK_T_IN, 0),
                desc(u64::MAX - 100, 512, true),
                status_desc(1),
            ],
            false,
            |e| matches!(e, ParseError::OutsideMemory { .. }),
            true,
        ),
        (
            "status outside guest memory",
            vec![
                h(2, VIRTIO_BLK_T_IN, 0),
                desc(DATA, 512, true),
                desc(MEM_SIZE + 5, 1, true),
            ],
            false,
            |e| matches!(e, ParseError::OutsideMemory { .. }),
            false,
        ),
        (
            "read with device-readable data",
            vec![
                h(3, VIRTIO_BLK_T_IN, 0),
                desc(DATA, 512, false),
                status_desc(3),
            ],
            false,
            |e| matches!(e, ParseError::WrongDirection { .. }),
            true,
        ),
        (
            "write with device-writable data",
            vec![
                h(4, VIRTIO_BLK_T_OUT, 0),
                desc(DATA, 512, true),
                status_desc(4),
            ],
            true,
            |e| matches!(e, ParseError::WrongDirection { .. }),
            true,
        ),
        (
            "readable after writable",
            vec![
                h(5, VIRTIO_BLK_T_IN, 0),
                desc(DATA, 512, true),
                desc(DATA + 512, 1, false),
            ],
            false,
            |e| matches!(e, ParseError::ReadableAfterWritable { position: 2 }),
            false,
        ),
        (
            "sectors past the end",
            vec![
                h(6, VIRTIO_BLK_T_IN, 99),
                desc(DATA, 1024, true),
                status_desc(6),
            ],
            false,
            |e| {
                matches!(
                    e,
                    ParseError::OutOfRange {
                        sector: 99,
                        sectors: 2,
                        ..
                    }
                )
            },
            true,
        ),
        (
            "sector number that overflows",
            vec![
                h(7, VIRTIO_BLK_T_IN, u64::MAX),
                desc(DATA, 512, true),
                status_desc(7),
            ],
            false,
            |e| matches!(e, ParseError::OutOfRange { .. }),
            true,
        ),
        (
            "not whole sectors",
            vec![
                h(8, VIRTIO_BLK_T_IN, 0),
                desc(DATA, 100, true),
                status_desc(8),
            ],
            false,
            |e| matches!(e, ParseError::BadLength { len: 100, .. }),
            true,
        ),
        (
            "no data",
            vec![h(9, VIRTIO_BLK_T_IN, 0), status_desc(9)],
            false,
            |e| matches!(e, ParseError::BadLength { len: 0, .. }),
            true,
        ),
        (
            "write to a read-only device",
            vec![
                h(10, VIRTIO_BLK_T_OUT, 0),
                desc(DATA, 512, false),
                status_desc(10),
            ],
            false,
            |e| matches!(e, ParseError::ReadOnly),
            true,
        ),
        (
            "unknown type",
            vec![h(11, 0x77, 0), desc(DATA, 512, true), status_desc(11)],
            false,
            |e| matches!(e, ParseError::Unsupported(0x77)),
            true,
        ),
        (
            "no status",
            vec![h(12, VIRTIO_BLK_T_FLUSH, 0)],
            false,
            |e| matches!(e, ParseError::NoStatus),
            false,
        ),
        (
            "short header",
            vec![desc(HDR, 8, false), status_desc(13)],
            false,
            |e| matches!(e, ParseError::ShortHeader { readable: 8 }),
            true,
        ),
        (
            "too long",
            vec![
                h(14, VIRTIO_BLK_T_IN, 0),
                desc(DATA, 2 << 20, true),
                status_desc(14),
            ],
            false,
            |e| matches!(e, ParseError::TooLong { .. }),
            true,
        ),
        (
            "GET_ID without a buffer",
            vec![h(15, VIRTIO_BLK_T_GET_ID, 0), status_desc(15)],
            false,
            |e| matches!(e, ParseError::NoIdBuffer),
            true,
        ),
    ];
    for (name, descs, writable, check, has_status) in cases {
        let rejected = parse_one(&mem, &descs, writable).expect_err(name);
        assert!(check(&rejected.error), "{name}: got {:?}", rejected.error);
        assert_eq!(
            rejected.status.is_some(),
            has_status,
            "{name}: {rejected:?}"
        );
        let expected = if matches!(rejected.error, ParseError::Unsupported(_)) {
            VIRTIO_BLK_S_UNSUPP
        } else {
            VIRTIO_BLK_S_IOERR
        };
        assert_eq!(u32::from(rejected.error.status()), expected, "{name}");
    }
}

#[test]
fn chains_longer_than_the_limit_are_rejected() {
    let mem = guest_memory();
    let mut descs = vec![header(&mem, 0, VIRTIO_BLK_T_IN, 0)];
    descs.extend((0..15).map(|i| desc(DATA + i * 512, 512, true)));
    descs.push(status_desc(0));
    let rejected = parse_one(&mem, &descs, false).unwrap_err();
    assert!(
        matches!(rejected.error, ParseError::TooManyDescriptors { max: 16 }),
        "{rejected:?}"
    );
}

/// Where the walker tests put their descriptor tables.
const TABLE: u64 = 0x40_0000;
const INDIRECT: u64 = 0x50_0000;

fn put(mem: &GuestMemoryMmap, table: u64, index: u16, d: SplitDescriptor) {
    mem.write_obj(d, GuestAddress(table + 16 * u64::from(index)))
        .unwrap();
}

fn split(addr: u64, len: u32, flags: u32, next: u16) -> SplitDescriptor {
    SplitDescriptor::new(addr, len, flags as u16, next)
}

#[test]
fn walker_follows_next_and_one_indirect_table() {
    let mem = guest_memory();
    let n = VRING_DESC_F_NEXT;
    // 5 -> 2 -> indirect table [0 -> 1 (writable)]... an indirect
    // descriptor ends the main chain, so the main chain is 5 -> 2(indirect).
    put(&mem, TABLE, 5, split(HDR, 16, n, 2));
    put(
        &mem,
        TABLE,
        2,
        split(INDIRECT, 32, VRING_DESC_F_INDIRECT, 0),
    );
    put(
        &mem,
        INDIRECT,
        0,
        split(DATA, 512, n | VRING_DESC_F_WRITE, 1),
    );
    put(&mem, INDIRECT, 1, split(STATUS, 1, VRING_DESC_F_WRITE, 0));
    let descs = walk(&mem, GuestAddress(TABLE), 8, 5, 16).unwrap();
    assert_eq!(
        descs,
        [
            Desc {
                addr: GuestAddress(HDR),
                len: 16,
                write: false
            },
            Desc {
                addr: GuestAddress(DATA),
                len: 512,
                write: true
            },
            Desc {
                addr: GuestAddress(STATUS),
                len: 1,
                write: true
            },
        ]
    );
    // The same chain parses into a read.
    header(&mem, 0, VIRTIO_BLK_T_IN, 4);
    let r = parse(5, &descs, &mem, &limits(false)).unwrap();
    assert_eq!(
        (r.head, r.kind, r.data_len),
        (5, RequestKind::Read { sector: 4 }, 512)
    );
}

#[test]
fn walker_rejects_hostile_tables() {
    let mem = guest_memory();
    let n = VRING_DESC_F_NEXT;
    let ind = VRING_DESC_F_INDIRECT;
    let w = |table: u64, head: u16, max: usize| walk(&mem, GuestAddress(table), 8, head, max);
    assert_eq!(
        w(TABLE, 8, 16),
        Err(WalkError::HeadOutOfRange { head: 8, size: 8 })
    );
    // 0 -> 1 -> 0: a loop.
    put(&mem, TABLE, 0, split(DATA, 1, n, 1));
    put(&mem, TABLE, 1, split(DATA, 1, n, 0));
    assert_eq!(w(TABLE, 0, 100), Err(WalkError::Loop { len: 8 }));
    // A limit below the loop's length stops it first.
    assert_eq!(w(TABLE, 0, 3), Err(WalkError::TooMany { max: 3 }));
    // next past the table.
    put(&mem, TABLE, 2, split(DATA, 1, n, 9));
    assert_eq!(
        w(TABLE, 2, 16),
        Err(WalkError::NextOutOfRange { next: 9, len: 8 })
    );
    // A table outside guest memory.
    assert!(matches!(
        walk(&mem, GuestAddress(MEM_SIZE - 16), 8, 3, 16),
        Err(WalkError::Unreadable { .. })
    ));
    assert!(matches!(
        walk(&mem, GuestAddress(u64::MAX - 8), 8, 3, 16),
        Err(WalkError::Unreadable { .. })
    ));
    // Indirect with NEXT, nested indirect, bad indirect lengths, and an
    // indirect table that loops.
    put(&mem, TABLE, 3, split(INDIRECT, 32, ind | n, 4));
    assert_eq!(w(TABLE, 3, 16), Err(WalkError::IndirectWithNext));
    put(&mem, TABLE, 4, split(INDIRECT, 32, ind, 0));
    put(&mem, INDIRECT, 0, split(INDIRECT + 0x1000, 16, ind, 0));
    assert_eq!(w(TABLE, 4, 16), Err(WalkError::NestedIndirect));
    for len in [0u32, 24, 16 * 32769] {
        put(&mem, TABLE, 5, split(INDIRECT, len, ind, 0));
        assert_eq!(w(TABLE, 5, 16), Err(WalkError::BadIndirectTable { len }));
    }
    put(&mem, TABLE, 6, split(INDIRECT, 32, ind, 0));
    put(&mem, INDIRECT, 0, split(DATA, 1, n, 1));
    put(&mem, INDIRECT, 1, split(DATA, 1, n, 0));
    assert_eq!(w(TABLE, 6, 100), Err(WalkError::Loop { len: 2 }));
    put(&mem, INDIRECT, 1, split(DATA, 1, n, 2));
    assert_eq!(
        w(TABLE, 6, 100),
        Err(WalkError::NextOutOfRange { next: 2, len: 2 })
    );
    // An indirect table outside guest memory.
    put(&mem, TABLE, 7, split(MEM_SIZE, 32, ind, 0));
    assert!(matches!(w(TABLE, 7, 16), Err(WalkError::Unreadable { .. })));
    // Through `read`, a walk error is a rejection without a status byte.
    let rejected = read(&mem, GuestAddress(TABLE), 8, 0, &limits(false)).unwrap_err();
    assert!(
        matches!(rejected.error, ParseError::Chain(WalkError::Loop { .. })),
        "{rejected:?}"
    );
    assert_eq!(rejected.status, None);
}

mod backend;
