//! Byte-level reading and writing shared by the manifest format and the
//! sealed envelope: little-endian integers at explicit offsets and
//! length-prefixed strings. The reader never panics and never allocates
//! more than the input it was given.

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends before a field does.
    #[error("truncated: {what} at offset {offset} needs {needed} bytes, only {available} left")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// How many bytes it needs.
        needed: u64,
        /// How many bytes were left.
        available: usize,
    },
    /// The magic number is not the expected one.
    #[error(
        "bad magic: expected \"{}\", found \"{}\" (not a {what})",
        expected.escape_ascii(),
        found.escape_ascii()
    )]
    BadMagic {
        /// What the input was expected to be.
        what: &'static str,
        /// The expected magic.
        expected: [u8; 8],
        /// The magic found.
        found: Vec<u8>,
    },
    /// The format version is not one this code reads.
    #[error("unsupported {what} version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// What the input is.
        what: &'static str,
        /// The version found.
        found: u16,
        /// The version supported.
        supported: u16,
    },
    /// A field has a value that is not allowed.
    #[error("corrupt: {what} at offset {offset}: {reason}")]
    Corrupt {
        /// The field.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Bytes remain after the last field.
    #[error("overlong: {count} unexpected bytes after the end, at offset {offset}")]
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
}

/// A cursor over input bytes that remembers its offset.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, offset: 0 }
    }

    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.offset
    }

    /// Takes the next `len` bytes.
    pub(crate) fn take(&mut self, what: &'static str, len: u64) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        let truncated = DecodeError::Truncated {
            what,
            offset: self.offset,
            needed: len,
            available,
        };
        let len = usize::try_from(len).map_err(|_| truncated.clone())?;
        if len > available {
            return Err(truncated);
        }
        let start = self.offset;
        self.offset += len;
        Ok(&self.bytes[start..start + len])
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(what, N as u64)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks an 8-byte magic number.
    pub(crate) fn magic(
        &mut self,
        what: &'static str,
        expected: [u8; 8],
    ) -> Result<(), DecodeError> {
        let available = self.remaining().min(8);
        let found = self.bytes[self.offset..self.offset + available].to_vec();
        if available < 8 && found[..] == expected[..available] {
            return Err(DecodeError::Truncated {
                what: "magic",
                offset: self.offset,
                needed: 8,
                available,
            });
        }
        if found != expected {
            return Err(DecodeError::BadMagic {
                what,
                expected,
                found,
            });
        }
        self.offset += 8;
        Ok(())
    }

    /// Checks a u16 version number.
    pub(crate) fn version(
        &mut self,
        what: &'static str,
        supported: u16,
    ) -> Result<(), DecodeError> {
        let found = self.u16("version")?;
        if found != supported {
            return Err(DecodeError::UnsupportedVersion {
                what,
                found,
                supported,
            });
        }
        Ok(())
    }

    /// A byte string with a u32 length prefix, at most `max` bytes.
    pub(crate) fn bytes_u32(
        &mut self,
        what: &'static str,
        max: u32,
    ) -> Result<&'a [u8], DecodeError> {
        let offset = self.offset;
        let len = self.u32(what)?;
        if len > max {
            return Err(DecodeError::Corrupt {
                what,
                offset,
                reason: format!("length {len} exceeds the limit of {max}"),
            });
        }
        self.take(what, u64::from(len))
    }

    /// A UTF-8 string with a u32 length prefix, at most `max` bytes.
    pub(crate) fn string(&mut self, what: &'static str, max: u32) -> Result<String, DecodeError> {
        let offset = self.offset;
        let bytes = self.bytes_u32(what, max)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| DecodeError::Corrupt {
            what,
            offset,
            reason: format!("not UTF-8 ({e})"),
        })
    }

    /// Fails if any bytes are left.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                offset: self.offset,
                count,
            }),
        }
    }
}

/// An output buffer with little-endian helpers.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) bytes: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(capacity),
        }
    }

    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }

    pub(crate) fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    pub(crate) fn u16(&mut self, value: u16) {
        self.raw(&value.to_le_bytes());
    }

    pub(crate) fn u32(&mut self, value: u32) {
        self.raw(&value.to_le_bytes());
    }

    pub(crate) fn u64(&mut self, value: u64) {
        self.raw(&value.to_le_bytes());
    }

    /// A byte string with a u32 length prefix. The caller has checked that
    /// the length fits (see [`check_len`]).
    pub(crate) fn bytes_u32(&mut self, bytes: &[u8]) {
        self.u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        self.raw(bytes);
    }
}

/// Checks that a field to be encoded is within its limit.
pub(crate) fn check_len(what: &'static str, len: usize, max: u32) -> Result<(), String> {
    if len > max as usize {
        Err(format!("{what} is {len} bytes, over the limit of {max}"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_little_endian_at_offsets() {
        let bytes = [1, 2, 0, 3, 0, 0, 0, 9];
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 2);
        assert_eq!(r.offset(), 3);
        assert_eq!(r.u32("c").unwrap(), 3);
        assert_eq!(
            r.u16("d"),
            Err(DecodeError::Truncated {
                what: "d",
                offset: 7,
                needed: 2,
                available: 1
            })
        );
        assert_eq!(
            r.finish(),
            Err(DecodeError::TrailingBytes {
                offset: 7,
                count: 1
            })
        );
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating() {
        let mut w = Writer::default();
        w.u32(u32::MAX);
        let mut r = Reader::new(&w.bytes);
        assert!(matches!(
            r.bytes_u32("s", 1024),
            Err(DecodeError::Corrupt { offset: 0, .. })
        ));
        let mut r = Reader::new(&w.bytes);
        assert!(matches!(
            r.bytes_u32("s", u32::MAX),
            Err(DecodeError::Truncated { offset: 4, .. })
        ));
    }

    #[test]
    fn short_magic_is_truncated_or_bad() {
        let mut r = Reader::new(b"IMG");
        assert!(matches!(
            r.magic("thing", *b"IMGFSMF\0"),
            Err(DecodeError::Truncated { .. })
        ));
        let mut r = Reader::new(b"IMX");
        assert!(matches!(
            r.magic("thing", *b"IMGFSMF\0"),
            Err(DecodeError::BadMagic { .. })
        ));
    }
}
