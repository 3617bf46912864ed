//! Little-endian field writers for on-disk structures.
//!
//! Every structure is encoded by writing each field at its documented byte
//! offset into a zeroed buffer, so the encoding is explicit and independent
//! of Rust's struct layout.

/// Write `v` little-endian at `off`.
pub(crate) fn put_u16(buf: &mut [u8], off: usize, v: u16) {
    buf[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

/// Write `v` little-endian at `off`.
pub(crate) fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Read a little-endian `u32` at `off` (used by tests and hashing).
pub(crate) fn get_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}
