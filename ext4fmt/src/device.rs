//! Device numbers of character and block device inodes, in `i_block`: the
//! old 8:8 form (`old_encode_dev`) in word 0 when both numbers fit a byte,
//! else the new 12:20 form (`new_encode_dev`) in word 1.

use crate::bytes::{le32, put32};

/// The largest major and minor Linux can represent.
pub const MAX_MAJOR: u32 = 0xFFF;
/// See [`MAX_MAJOR`].
pub const MAX_MINOR: u32 = 0xF_FFFF;

/// `new_encode_dev`: the 32-bit form FUSE and `stat` carry.
pub fn new_encode(major: u32, minor: u32) -> u32 {
    (minor & 0xFF) | (major << 8) | ((minor & !0xFF) << 12)
}

/// The `i_block` of a device inode; `None` when the numbers exceed what
/// Linux can represent.
pub fn encode(major: u32, minor: u32) -> Option<[u8; 60]> {
    if major > MAX_MAJOR || minor > MAX_MINOR {
        return None;
    }
    let mut b = [0u8; 60];
    if major < 256 && minor < 256 {
        put32(&mut b, 0, (major << 8) | minor);
    } else {
        put32(&mut b, 4, new_encode(major, minor));
    }
    Some(b)
}

/// The device number in `i_block`, in the [`new_encode`] form, as
/// `ext4_iget` reads it.
pub fn decode(i_block: &[u8; 60]) -> u32 {
    let old = le32(i_block, 0).unwrap_or(0);
    if old != 0 {
        // Old minors fit 8 bits, so the new form is just major:minor.
        return new_encode((old >> 8) & 0xFF, old & 0xFF);
    }
    le32(i_block, 4).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_and_new_forms_round_trip() {
        let small = encode(1, 3).unwrap();
        assert_eq!(&small[..4], &0x0103u32.to_le_bytes());
        assert_eq!(decode(&small), 0x0103);
        let big = encode(300, 70000).unwrap();
        assert_eq!(&big[..4], &[0; 4]);
        assert_eq!(decode(&big), new_encode(300, 70000));
        assert_eq!(decode(&encode(0, 0).unwrap()), 0);
        assert_eq!(encode(4096, 0), None);
        assert_eq!(encode(0, 1 << 20), None);
    }
}
