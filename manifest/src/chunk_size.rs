//! The chunk size: a power of two from 64 KiB to 4 MiB.

use std::fmt;
use std::str::FromStr;

/// Why a chunk size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkSizeError {
    /// The size is not a power of two.
    #[error("chunk size {bytes} is not a power of two")]
    NotPowerOfTwo {
        /// The refused size in bytes.
        bytes: u64,
    },
    /// The size is below 64 KiB or above 4 MiB.
    #[error("chunk size {bytes} is outside 64 KiB ..= 4 MiB")]
    OutOfRange {
        /// The refused size in bytes.
        bytes: u64,
    },
    /// The text is not a size such as `512K`, `512KiB`, `1M` or `65536`.
    #[error("`{text}` is not a size (examples: 512K, 512KiB, 1M, 65536)")]
    Syntax {
        /// The text that was given.
        text: String,
    },
}

/// A validated chunk size: a power of two from [`ChunkSize::MIN`] to
/// [`ChunkSize::MAX`]. The default is 512 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkSize(u32);

impl ChunkSize {
    /// The smallest chunk size, 64 KiB.
    pub const MIN: ChunkSize = ChunkSize(64 * 1024);
    /// The largest chunk size, 4 MiB.
    pub const MAX: ChunkSize = ChunkSize(4 * 1024 * 1024);
    /// The default chunk size, 512 KiB.
    pub const DEFAULT: ChunkSize = ChunkSize(512 * 1024);

    /// Validates a size in bytes.
    pub fn new(bytes: u64) -> Result<Self, ChunkSizeError> {
        if !bytes.is_power_of_two() {
            return Err(ChunkSizeError::NotPowerOfTwo { bytes });
        }
        if bytes < u64::from(Self::MIN.0) || bytes > u64::from(Self::MAX.0) {
            return Err(ChunkSizeError::OutOfRange { bytes });
        }
        let bytes = u32::try_from(bytes).map_err(|_| ChunkSizeError::OutOfRange { bytes })?;
        Ok(Self(bytes))
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u32 {
        self.0
    }

    /// The size in bytes, as a `u64` for offset arithmetic.
    pub fn as_u64(self) -> u64 {
        u64::from(self.0)
    }

    /// The size in bytes, as a `usize` for buffer lengths.
    pub fn as_usize(self) -> usize {
        self.0 as usize
    }
}

impl Default for ChunkSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for ChunkSize {
    /// `512 KiB`, `1 MiB`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 >= 1024 * 1024 {
            write!(f, "{} MiB", self.0 / (1024 * 1024))
        } else {
            write!(f, "{} KiB", self.0 / 1024)
        }
    }
}

impl FromStr for ChunkSize {
    type Err = ChunkSizeError;

    /// Accepts a byte count (`65536`) or a count with a binary unit:
    /// `K`, `KiB`, `M`, `MiB` (case-insensitive, optional space).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let syntax = || ChunkSizeError::Syntax {
            text: text.to_owned(),
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let count: u64 = digits.parse().map_err(|_| syntax())?;
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" | "kb" => 1024,
            "m" | "mib" | "mb" => 1024 * 1024,
            _ => return Err(syntax()),
        };
        let bytes = count.checked_mul(multiplier).ok_or_else(syntax)?;
        Self::new(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_powers_of_two_in_range() {
        assert_eq!(ChunkSize::default().bytes(), 512 * 1024);
        for shift in 16..=22 {
            assert_eq!(ChunkSize::new(1 << shift).unwrap().as_u64(), 1 << shift);
        }
    }

    #[test]
    fn refuses_other_sizes() {
        assert_eq!(
            ChunkSize::new(1 << 15),
            Err(ChunkSizeError::OutOfRange { bytes: 1 << 15 })
        );
        assert_eq!(
            ChunkSize::new(1 << 23),
            Err(ChunkSizeError::OutOfRange { bytes: 1 << 23 })
        );
        assert_eq!(
            ChunkSize::new(100_000),
            Err(ChunkSizeError::NotPowerOfTwo { bytes: 100_000 })
        );
        assert!(matches!(
            ChunkSize::new(0),
            Err(ChunkSizeError::NotPowerOfTwo { .. })
        ));
    }

    #[test]
    fn parses_units() {
        let kib512 = ChunkSize::new(512 * 1024).unwrap();
        for text in ["512K", "512KiB", "512 kib", "524288"] {
            assert_eq!(text.parse::<ChunkSize>().unwrap(), kib512, "{text}");
        }
        assert_eq!("4M".parse::<ChunkSize>().unwrap(), ChunkSize::MAX);
        assert!(matches!(
            "big".parse::<ChunkSize>(),
            Err(ChunkSizeError::Syntax { .. })
        ));
        assert!(matches!(
            "512X".parse::<ChunkSize>(),
            Err(ChunkSizeError::Syntax { .. })
        ));
        assert_eq!(kib512.to_string(), "512 KiB");
        assert_eq!(ChunkSize::MAX.to_string(), "4 MiB");
    }
}
