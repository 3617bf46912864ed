//! The probe guest: its embedded binary and the parameter block, trace and
//! result layouts it shares with the VMM (`probe/probe.h`).

use crate::error::{Error, Result};
use crate::layout;
use crate::memory::GuestRam;

/// The probe guest as a flat binary, built by `build.rs` from `probe/probe.c`.
pub static PROBE_BIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/probe.bin"));

/// "VMMPROBE" little-endian.
pub const MAGIC: u64 = 0x4542_4f52_504d_4d56;
/// Layout version; `probe.h` has the same number.
pub const ABI: u32 = 1;
/// Bytes per trace entry / per result.
pub const ENTRY_LEN: u64 = 24;

/// Field offsets in `struct probe_params`.
mod off {
    pub const MAGIC: u64 = 0;
    pub const ABI: u64 = 8;
    pub const WAIT: u64 = 12;
    pub const MMIO: u64 = 16;
    pub const CONTROL: u64 = 24;
    pub const QUEUE: u64 = 32;
    pub const HDRS: u64 = 40;
    pub const QSIZE: u64 = 48;
    pub const DEPTH: u64 = 52;
    pub const SEG_BYTES: u64 = 56;
    pub const MAX_SEGS: u64 = 60;
    pub const TRACE: u64 = 64;
    pub const COUNT: u64 = 72;
    pub const RESULTS: u64 = 80;
    pub const STATUS: u64 = 88;
    pub const DETAIL: u64 = 96;
    pub const DEV_FEATURES: u64 = 104;
    pub const DRV_FEATURES: u64 = 112;
    pub const CAPACITY: u64 = 120;
    pub const QSIZE_USED: u64 = 128;
    pub const TSC_START: u64 = 136;
    pub const TSC_READY: u64 = 144;
    pub const TSC_END: u64 = 152;
    pub const COMPLETED: u64 = 160;
}

/// How the probe waits for completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitMode {
    /// Spin on the used ring (keeps a host core busy, which on a small
    /// host slows the backend it waits for).
    Poll,
    /// `hlt` between checks; the VMM resumes the vCPU when the backend
    /// signals the call eventfd (an interrupt without an interrupt
    /// controller). The default: like a real guest, it leaves the CPU to the
    /// backend while it waits.
    #[default]
    Halt,
}

/// One read of the trace: `len` bytes at byte `offset` of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEntry {
    /// Byte offset, a multiple of 512.
    pub offset: u64,
    /// Length in bytes, a positive multiple of 512.
    pub len: u32,
}

/// What the VMM asks of the probe.
#[derive(Debug, Clone)]
pub struct Params {
    /// Completion wait mode.
    pub wait: WaitMode,
    /// Queue entries wanted (clamped by the device).
    pub queue_size: u32,
    /// Requests in flight at most.
    pub depth: u32,
    /// Bytes per data descriptor at most.
    pub seg_bytes: u32,
    /// Data descriptors per request at most.
    pub max_segs: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            wait: WaitMode::Halt,
            queue_size: 256,
            depth: 1,
            seg_bytes: 128 * 1024,
            max_segs: 16,
        }
    }
}

/// What the probe wrote back into its parameter block.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Raw status code (1 = done).
    pub status: u64,
    /// Detail word for failures.
    pub detail: u64,
    /// Features the device offered.
    pub device_features: u64,
    /// Features the probe accepted.
    pub driver_features: u64,
    /// Device capacity in 512-byte sectors, read from the config space.
    pub capacity_sectors: u64,
    /// Queue size the probe used.
    pub queue_size: u64,
    /// TSC at the probe's first instruction.
    pub tsc_start: u64,
    /// TSC after DRIVER_OK.
    pub tsc_ready: u64,
    /// TSC at the last completion.
    pub tsc_end: u64,
    /// Requests completed.
    pub completed: u64,
}

/// One request's result as the probe recorded it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestResult {
    /// TSC when the request was placed in the avail ring.
    pub tsc_submit: u64,
    /// TSC when the probe saw it in the used ring.
    pub tsc_complete: u64,
    /// virtio-blk status byte (0 = OK).
    pub status: u8,
    /// Bytes the device reported written.
    pub used_len: u32,
}

/// Meaning of a probe status code.
pub fn status_reason(status: u64) -> &'static str {
    match status {
        0 => "still running",
        1 => "done",
        2 => "bad parameter block",
        3 => "no virtio-mmio v2 block device at the MMIO window",
        4 => "device refused the features",
        5 => "queue 0 unavailable",
        6 => "a trace entry the probe cannot express (alignment or too many segments)",
        7 => "device returned an unknown descriptor id",
        _ => "unknown status",
    }
}

/// Guest-physical placement of one run's trace, results and buffers.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Trace entries.
    pub trace: u64,
    /// Results.
    pub results: u64,
    /// Destination buffer of each entry.
    pub bufs: Vec<u64>,
    /// RAM needed.
    pub ram_size: u64,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Most RAM given to read buffers when they are recycled.
pub const RECYCLED_WINDOW: u64 = 64 << 20;

/// Places the trace; with `keep_data` every entry gets its own buffer (so its
/// data can be read back), else buffers are recycled in a 64 MiB window.
pub fn place(trace: &[TraceEntry], params: &Params, keep_data: bool) -> Result<Placement> {
    let max_len = u64::from(params.seg_bytes) * u64::from(params.max_segs);
    for (i, e) in trace.iter().enumerate() {
        if e.offset % 512 != 0 || e.len % 512 != 0 || e.len == 0 {
            return Err(Error::Config(format!(
                "trace entry {i} ({} +{}) is not a positive multiple of 512 bytes at a 512-byte offset",
                e.offset, e.len
            )));
        }
        if u64::from(e.len) > max_len {
            return Err(Error::Config(format!(
                "trace entry {i} reads {} bytes; the probe sends at most {max_len} per request",
                e.len
            )));
        }
    }
    let n = trace.len() as u64;
    let results = layout::TRACE + n * ENTRY_LEN;
    let data = align_up(results + n * ENTRY_LEN, layout::HUGE);
    let total: u64 = trace.iter().map(|e| align_up(u64::from(e.len), 4096)).sum();
    let window = if keep_data {
        total
    } else {
        total.min(RECYCLED_WINDOW)
    };
    let ram_size = align_up((data + window).max(8 << 20), layout::HUGE);
    if ram_size > layout::RAM_MAX {
        return Err(Error::Config(format!(
            "trace needs {ram_size} bytes of guest RAM (limit {})",
            layout::RAM_MAX
        )));
    }
    let mut bufs = Vec::with_capacity(trace.len());
    let mut at = 0u64;
    for e in trace {
        let l = align_up(u64::from(e.len), 4096);
        if at + l > window {
            at = 0;
        }
        bufs.push(data + at);
        at += l;
    }
    Ok(Placement {
        trace: layout::TRACE,
        results,
        bufs,
        ram_size,
    })
}

/// Loads the probe binary and writes the parameter block and the trace.
pub fn write_guest(
    ram: &GuestRam,
    trace: &[TraceEntry],
    params: &Params,
    placement: &Placement,
) -> Result<()> {
    if PROBE_BIN.len() as u64 > layout::PROBE_MAX {
        return Err(Error::Config("probe binary too large".into()));
    }
    ram.write(layout::PROBE_LOAD, PROBE_BIN)?;
    let p = layout::PARAMS;
    ram.write_u64(p + off::MAGIC, MAGIC)?;
    let wait = match params.wait {
        WaitMode::Poll => 0u32,
        WaitMode::Halt => 1,
    };
    ram.write(p + off::ABI, &ABI.to_le_bytes())?;
    ram.write(p + off::WAIT, &wait.to_le_bytes())?;
    ram.write_u64(p + off::MMIO, layout::VIRTIO_MMIO)?;
    ram.write_u64(p + off::CONTROL, layout::CONTROL)?;
    ram.write_u64(p + off::QUEUE, layout::QUEUE)?;
    ram.write_u64(p + off::HDRS, layout::HDRS)?;
    ram.write(p + off::QSIZE, &params.queue_size.to_le_bytes())?;
    ram.write(p + off::DEPTH, &params.depth.to_le_bytes())?;
    ram.write(p + off::SEG_BYTES, &params.seg_bytes.to_le_bytes())?;
    ram.write(p + off::MAX_SEGS, &params.max_segs.to_le_bytes())?;
    ram.write_u64(p + off::TRACE, placement.trace)?;
    ram.write_u64(p + off::COUNT, trace.len() as u64)?;
    ram.write_u64(p + off::RESULTS, placement.results)?;
    let mut bytes = Vec::with_capacity(trace.len() * ENTRY_LEN as usize);
    for (e, buf) in trace.iter().zip(&placement.bufs) {
        bytes.extend_from_slice(&e.offset.to_le_bytes());
        bytes.extend_from_slice(&buf.to_le_bytes());
        bytes.extend_from_slice(&e.len.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
    }
    ram.write(placement.trace, &bytes)
}

/// Reads the probe's outputs from its parameter block.
pub fn read_outcome(ram: &GuestRam) -> Result<Outcome> {
    let p = layout::PARAMS;
    Ok(Outcome {
        status: ram.read_u64(p + off::STATUS)?,
        detail: ram.read_u64(p + off::DETAIL)?,
        device_features: ram.read_u64(p + off::DEV_FEATURES)?,
        driver_features: ram.read_u64(p + off::DRV_FEATURES)?,
        capacity_sectors: ram.read_u64(p + off::CAPACITY)?,
        queue_size: ram.read_u64(p + off::QSIZE_USED)?,
        tsc_start: ram.read_u64(p + off::TSC_START)?,
        tsc_ready: ram.read_u64(p + off::TSC_READY)?,
        tsc_end: ram.read_u64(p + off::TSC_END)?,
        completed: ram.read_u64(p + off::COMPLETED)?,
    })
}

/// Reads the probe's completed-request counter (it changes while it runs).
pub fn read_completed(ram: &GuestRam) -> Result<u64> {
    ram.read_u64(layout::PARAMS + off::COMPLETED)
}

/// Reads the per-request results.
pub fn read_results(ram: &GuestRam, placement: &Placement, n: usize) -> Result<Vec<RequestResult>> {
    let mut bytes = vec![0u8; n * ENTRY_LEN as usize];
    ram.read(placement.results, &mut bytes)?;
    let u64_at = |c: &[u8], i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&c[i..i + 8]);
        u64::from_le_bytes(b)
    };
    Ok(bytes
        .chunks_exact(ENTRY_LEN as usize)
        .map(|c| RequestResult {
            tsc_submit: u64_at(c, 0),
            tsc_complete: u64_at(c, 8),
            status: c[16],
            used_len: u32::from_le_bytes([c[20], c[21], c[22], c[23]]),
        })
        .collect())
}
