//! Little-endian fields at fixed offsets. Reads never panic: a field that
//! does not fit in the buffer is [`Corrupt::Short`] naming the structure.
//! Writes go into buffers the encoder sized for the structure, so a write
//! past the end is a bug in the encoder, not bad input.

use crate::error::Corrupt;

/// The `u16` at `at`, if the buffer holds it.
pub fn le16(b: &[u8], at: usize) -> Option<u16> {
    let bytes = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

/// The `u32` at `at`, if the buffer holds it.
pub fn le32(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// `len` bytes at `at`, if the buffer holds them.
pub fn slice(b: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    b.get(at..at.checked_add(len)?)
}

/// Writes `v` little-endian at `at`.
pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes `v` little-endian at `at`.
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// A reader of one structure's fields: each read past the end is
/// [`Corrupt::Short`] for `what`.
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    /// The structure's bytes.
    pub bytes: &'a [u8],
    /// What the structure is, for errors.
    pub what: &'static str,
}

impl<'a> Fields<'a> {
    /// `bytes` holding a `what`.
    pub fn new(bytes: &'a [u8], what: &'static str) -> Fields<'a> {
        Fields { bytes, what }
    }

    fn short(&self, need: usize) -> Corrupt {
        Corrupt::Short {
            what: self.what,
            len: self.bytes.len(),
            need,
        }
    }

    /// The byte at `at`.
    pub fn u8(&self, at: usize) -> Result<u8, Corrupt> {
        self.bytes
            .get(at)
            .copied()
            .ok_or_else(|| self.short(at + 1))
    }

    /// The `u16` at `at`.
    pub fn u16(&self, at: usize) -> Result<u16, Corrupt> {
        le16(self.bytes, at).ok_or_else(|| self.short(at.saturating_add(2)))
    }

    /// The `u32` at `at`.
    pub fn u32(&self, at: usize) -> Result<u32, Corrupt> {
        le32(self.bytes, at).ok_or_else(|| self.short(at.saturating_add(4)))
    }

    /// `len` bytes at `at`.
    pub fn bytes(&self, at: usize, len: usize) -> Result<&'a [u8], Corrupt> {
        slice(self.bytes, at, len).ok_or_else(|| self.short(at.saturating_add(len)))
    }

    /// `N` bytes at `at`, as an array.
    pub fn array<const N: usize>(&self, at: usize) -> Result<[u8; N], Corrupt> {
        let s = self.bytes(at, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_inside_and_past_the_end() {
        let b = [1, 2, 3, 4, 5];
        assert_eq!(le16(&b, 0), Some(0x0201));
        assert_eq!(le16(&b, 3), Some(0x0504));
        assert_eq!(le16(&b, 4), None);
        assert_eq!(le32(&b, 1), Some(0x0504_0302));
        assert_eq!(le32(&b, 2), None);
        assert_eq!(le32(&b, usize::MAX), None);
        assert_eq!(slice(&b, 5, 0), Some(&[][..]));
        assert_eq!(slice(&b, 4, 2), None);
        assert_eq!(slice(&b, usize::MAX, 2), None);
        let f = Fields::new(&b, "thing");
        assert_eq!(
            f.u32(3),
            Err(Corrupt::Short {
                what: "thing",
                len: 5,
                need: 7
            })
        );
        assert_eq!(f.array::<2>(3), Ok([4, 5]));
        let mut w = [0u8; 6];
        put16(&mut w, 0, 0x0201);
        put32(&mut w, 2, 0x0605_0403);
        assert_eq!(w, [1, 2, 3, 4, 5, 6]);
    }
}
