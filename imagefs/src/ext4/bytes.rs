//! Little-endian fields at fixed offsets, read without panicking: a field
//! that does not fit in the buffer is `None`, which the caller turns into
//! an error naming the structure.

/// The `u16` at `at`, if the buffer holds it.
pub(crate) fn le16(b: &[u8], at: usize) -> Option<u16> {
    let bytes = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

/// The `u32` at `at`, if the buffer holds it.
pub(crate) fn le32(b: &[u8], at: usize) -> Option<u32> {
    let bytes = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// `len` bytes at `at`, if the buffer holds them.
pub(crate) fn slice(b: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    b.get(at..at.checked_add(len)?)
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
    }
}
