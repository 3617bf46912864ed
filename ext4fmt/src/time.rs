//! Inode times: a signed 32-bit seconds field, and with large inodes an
//! `_extra` field whose two low bits extend the seconds past 2038 (epoch
//! bits) and whose upper 30 bits are the nanoseconds.

/// The earliest second ext4 can hold (signed 32-bit base).
pub const MIN_SECS: i64 = -(1 << 31);
/// The latest second: two epoch bits extend the base by 3 × 2^32.
pub const MAX_SECS: i64 = (1 << 34) - (1 << 31) - 1;
/// The epoch bits of an `_extra` field.
pub const EPOCH_MASK: u32 = 3;
/// Bits of the `_extra` field below the nanoseconds.
pub const EPOCH_BITS: u32 = 2;

/// A time: seconds since 1970-01-01 UTC (negative before) and nanoseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nsecs: u32,
}

impl Timestamp {
    /// `ext4_encode_extra_time`: the base field (the seconds truncated to
    /// 32 bits) and the extra field (epoch bits, nanoseconds shifted left
    /// by 2). Times outside ext4's range are clamped to it.
    pub fn encode(self) -> (u32, u32) {
        let secs = self.secs.clamp(MIN_SECS, MAX_SECS);
        let nsecs = self.nsecs.min(999_999_999);
        let lo = secs as i32;
        let epoch = ((secs - i64::from(lo)) >> 32) as u32 & EPOCH_MASK;
        (lo as u32, epoch | (nsecs << EPOCH_BITS))
    }

    /// `ext4_decode_extra_time`; without an extra field (it does not fit
    /// the inode) the base alone, signed.
    pub fn decode(base: u32, extra: Option<u32>) -> Timestamp {
        let secs = i64::from(base as i32);
        match extra {
            None => Timestamp { secs, nsecs: 0 },
            Some(extra) => Timestamp {
                secs: secs + (i64::from(extra & EPOCH_MASK) << 32),
                nsecs: extra >> EPOCH_BITS,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_the_kernel() {
        let t = |secs, nsecs| Timestamp { secs, nsecs }.encode();
        assert_eq!(t(0, 0), (0, 0));
        assert_eq!(t(1, 5), (1, 5 << 2));
        // Negative times stay in epoch 0, read back as signed.
        assert_eq!(t(-1, 0), (u32::MAX, 0));
        // Past 2038: epoch 1.
        assert_eq!(t(1 << 31, 0), (0x8000_0000, 1));
        assert_eq!(t(i64::MAX, u32::MAX), t(MAX_SECS, 999_999_999));
        assert_eq!(t(i64::MIN, 0), t(MIN_SECS, 0));
    }

    #[test]
    fn round_trips_over_the_range() {
        for secs in [
            MIN_SECS,
            -5,
            0,
            1_700_000_000,
            1 << 31,
            5_000_000_000,
            MAX_SECS,
        ] {
            for nsecs in [0, 1, 999_999_999] {
                let t = Timestamp { secs, nsecs };
                let (base, extra) = t.encode();
                assert_eq!(Timestamp::decode(base, Some(extra)), t);
            }
        }
        assert_eq!(
            Timestamp::decode(0x8000_0000, None),
            Timestamp {
                secs: MIN_SECS,
                nsecs: 0
            }
        );
    }
}
