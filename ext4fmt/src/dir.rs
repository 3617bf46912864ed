//! Directory entries (`struct ext4_dir_entry_2`): inode (4), record
//! length (2), name length (1), file type (1), then the name, padded to 4
//! bytes. The last record of a block stretches to the block's end. No
//! checksum tail: images with `metadata_csum` are read without checking
//! it, and the writer does not set the feature.

use crate::bytes::{Fields, put16, put32};
use crate::error::Corrupt;

/// Bytes before the name.
pub const HEADER_SIZE: usize = 8;
/// The longest name.
pub const MAX_NAME_LEN: usize = 255;
/// The shortest record a reader accepts (`EXT4_DIR_REC_LEN(1)`).
pub const MIN_REC_LEN: usize = 12;

/// `EXT4_FT_*`: the file type codes of directory entries.
pub mod file_type {
    /// Unknown.
    pub const UNKNOWN: u8 = 0;
    /// Regular file.
    pub const REG: u8 = 1;
    /// Directory.
    pub const DIR: u8 = 2;
    /// Character device.
    pub const CHRDEV: u8 = 3;
    /// Block device.
    pub const BLKDEV: u8 = 4;
    /// FIFO.
    pub const FIFO: u8 = 5;
    /// Socket.
    pub const SOCK: u8 = 6;
    /// Symbolic link.
    pub const SYMLINK: u8 = 7;
}

/// The record length of an entry with a `name_len`-byte name.
pub fn rec_len(name_len: usize) -> usize {
    (HEADER_SIZE + name_len).next_multiple_of(4)
}

/// One entry's header and name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirEntry {
    /// Inode (0: unused record).
    pub ino: u32,
    /// Bytes to the next record.
    pub rec_len: usize,
    /// Type code ([`file_type`]); 0 without the `filetype` feature.
    pub file_type: u8,
    /// The name.
    pub name: Vec<u8>,
}

impl DirEntry {
    /// Writes the entry at `at` of `block`; the record length is stored
    /// as `ext4_rec_len_to_disk` stores it for blocks of up to 64 KiB.
    pub fn encode(&self, block: &mut [u8], at: usize) {
        let raw = if self.rec_len >= 65536 {
            65535
        } else {
            self.rec_len as u16
        };
        put32(block, at, self.ino);
        put16(block, at + 4, raw);
        block[at + 6] = self.name.len() as u8;
        block[at + 7] = self.file_type;
        block[at + HEADER_SIZE..at + HEADER_SIZE + self.name.len()].copy_from_slice(&self.name);
    }

    /// Decodes the record at `at` of `block` and checks its length: at
    /// least 12, a multiple of 4, room for the name, inside the block.
    /// Without `filetype` the type byte is the name length's high byte
    /// and reads as 0.
    pub fn decode(block: &[u8], at: usize, filetype: bool) -> Result<DirEntry, Corrupt> {
        let f = Fields::new(block, "directory entry");
        let ino = f.u32(at)?;
        let raw = f.u16(at + 4)?;
        // ext4_rec_len_from_disk: 64 KiB blocks store their length as
        // 65535 or 0.
        let len = if block.len() >= 65536 && (raw == 65535 || raw == 0) {
            block.len()
        } else {
            usize::from(raw)
        };
        let name_len = usize::from(f.u8(at + 6)?);
        let file_type = if filetype { f.u8(at + 7)? } else { 0 };
        let room = block.len() - at.min(block.len());
        if len < MIN_REC_LEN || !len.is_multiple_of(4) || len < rec_len(name_len) || len > room {
            return Err(Corrupt::RecordLength {
                offset: at,
                rec_len: len,
                name_len,
                room,
            });
        }
        Ok(DirEntry {
            ino,
            rec_len: len,
            file_type,
            name: f.bytes(at + HEADER_SIZE, name_len)?.to_vec(),
        })
    }
}
