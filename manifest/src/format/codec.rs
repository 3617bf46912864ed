//! The v1 binary encoding of a [`Manifest`].
//!
//! All integers are little-endian. Strings are a u32 byte length followed by
//! UTF-8; string lists are a u32 count followed by strings.
//!
//! ```text
//! offset  size  field
//!  0       8    magic "IMGFSMF\0"
//!  8       2    version = 1
//! 10       2    flags = 0 (reserved, must be zero)
//! 12       8    device size in bytes
//! 20       4    chunk size in bytes (power of two, 64 KiB ..= 4 MiB)
//! 24       …    domain, source digest, filesystem type (strings)
//!          …    entrypoint, cmd, env (string lists)
//!          …    working dir, user (strings)
//!          8    chunk count (must be ceil(device size / chunk size))
//!          …    chunk table: per chunk a tag byte,
//!                 0 = hole,
//!                 1 = present, followed by 32-byte id and 32-byte key
//! ```
//!
//! Nothing may follow the chunk table.

use super::FormatError;
use super::manifest::{ChunkEntry, ImageConfig, Manifest};
use crate::chunk_size::ChunkSize;
use crate::ids::{ChunkId, ChunkKey};
use crate::wire::{DecodeError, Reader, Writer, check_len};

/// The first 8 bytes of an encoded manifest.
pub const MANIFEST_MAGIC: [u8; 8] = *b"IMGFSMF\0";
/// The manifest format version this build writes and reads.
pub const MANIFEST_VERSION: u16 = 1;

/// Longest string field, in bytes.
const MAX_STRING: u32 = 1024 * 1024;
/// Most entries in one string list.
const MAX_LIST: u32 = 65536;

const TAG_HOLE: u8 = 0;
const TAG_PRESENT: u8 = 1;

fn invalid(reason: String) -> FormatError {
    FormatError::Invalid { reason }
}

fn write_string(w: &mut Writer, what: &'static str, s: &str) -> Result<(), FormatError> {
    check_len(what, s.len(), MAX_STRING).map_err(invalid)?;
    w.bytes_u32(s.as_bytes());
    Ok(())
}

fn write_list(w: &mut Writer, what: &'static str, list: &[String]) -> Result<(), FormatError> {
    check_len(what, list.len(), MAX_LIST).map_err(invalid)?;
    w.u32(list.len() as u32);
    for s in list {
        write_string(w, what, s)?;
    }
    Ok(())
}

fn read_list(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<String>, DecodeError> {
    let offset = r.offset();
    let count = r.u32(what)?;
    if count > MAX_LIST {
        return Err(DecodeError::Corrupt {
            what,
            offset,
            reason: format!("{count} entries exceed the limit of {MAX_LIST}"),
        });
    }
    // Each string needs at least its 4-byte length, so `count` is bounded by
    // the input before anything is allocated.
    if u64::from(count) * 4 > r.remaining() as u64 {
        return Err(DecodeError::Truncated {
            what,
            offset: r.offset(),
            needed: u64::from(count) * 4,
            available: r.remaining(),
        });
    }
    let mut list = Vec::with_capacity(count as usize);
    for _ in 0..count {
        list.push(r.string(what, MAX_STRING)?);
    }
    Ok(list)
}

impl Manifest {
    /// Encodes the manifest in the v1 binary format.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        self.check_consistent().map_err(invalid)?;
        let present = self.present_count();
        let mut w = Writer::with_capacity(256 + self.chunks.len() + present * 64);
        w.raw(&MANIFEST_MAGIC);
        w.u16(MANIFEST_VERSION);
        w.u16(0);
        w.u64(self.device_size);
        w.u32(self.chunk_size.bytes());
        write_string(&mut w, "domain", &self.domain)?;
        write_string(&mut w, "source digest", &self.source_digest)?;
        write_string(&mut w, "filesystem type", &self.filesystem)?;
        write_list(&mut w, "entrypoint", &self.config.entrypoint)?;
        write_list(&mut w, "cmd", &self.config.cmd)?;
        write_list(&mut w, "env", &self.config.env)?;
        write_string(&mut w, "working dir", &self.config.working_dir)?;
        write_string(&mut w, "user", &self.config.user)?;
        w.u64(self.chunks.len() as u64);
        for entry in &self.chunks {
            match entry {
                ChunkEntry::Hole => w.u8(TAG_HOLE),
                ChunkEntry::Present { id, key } => {
                    w.u8(TAG_PRESENT);
                    w.raw(id.as_bytes());
                    w.raw(key.as_bytes());
                }
            }
        }
        Ok(w.bytes)
    }

    /// Decodes a v1 manifest. Truncated, garbage or overlong input gives an
    /// error naming the field and its offset; it never panics.
    pub fn decode(bytes: &[u8]) -> Result<Manifest, FormatError> {
        Ok(decode_fields(&mut Reader::new(bytes))?)
    }
}

fn decode_fields(r: &mut Reader<'_>) -> Result<Manifest, DecodeError> {
    r.magic("manifest", MANIFEST_MAGIC)?;
    r.version("manifest", MANIFEST_VERSION)?;
    let flags_at = r.offset();
    let flags = r.u16("flags")?;
    if flags != 0 {
        return Err(DecodeError::Corrupt {
            what: "flags",
            offset: flags_at,
            reason: format!("reserved flags {flags:#06x} are not zero"),
        });
    }
    let device_size = r.u64("device size")?;
    let chunk_size_at = r.offset();
    let chunk_size =
        ChunkSize::new(u64::from(r.u32("chunk size")?)).map_err(|e| DecodeError::Corrupt {
            what: "chunk size",
            offset: chunk_size_at,
            reason: e.to_string(),
        })?;
    let domain = r.string("domain", MAX_STRING)?;
    let source_digest = r.string("source digest", MAX_STRING)?;
    let filesystem = r.string("filesystem type", MAX_STRING)?;
    let config = ImageConfig {
        entrypoint: read_list(r, "entrypoint")?,
        cmd: read_list(r, "cmd")?,
        env: read_list(r, "env")?,
        working_dir: r.string("working dir", MAX_STRING)?,
        user: r.string("user", MAX_STRING)?,
    };
    let count_at = r.offset();
    let count = r.u64("chunk count")?;
    let expected = Manifest::chunk_count_for(device_size, chunk_size);
    if count != expected {
        return Err(DecodeError::Corrupt {
            what: "chunk count",
            offset: count_at,
            reason: format!(
                "{count} entries, but {device_size} bytes at {chunk_size} per chunk need {expected}"
            ),
        });
    }
    // Every entry takes at least one byte: refuse before allocating.
    if count > r.remaining() as u64 {
        return Err(DecodeError::Truncated {
            what: "chunk table",
            offset: r.offset(),
            needed: count,
            available: r.remaining(),
        });
    }
    let mut chunks = Vec::with_capacity(count as usize);
    for index in 0..count {
        let tag_at = r.offset();
        match r.u8("chunk tag")? {
            TAG_HOLE => chunks.push(ChunkEntry::Hole),
            TAG_PRESENT => chunks.push(ChunkEntry::Present {
                id: ChunkId(r.array("chunk id")?),
                key: ChunkKey(r.array("chunk key")?),
            }),
            other => {
                return Err(DecodeError::Corrupt {
                    what: "chunk tag",
                    offset: tag_at,
                    reason: format!("chunk #{index} has unknown tag {other}"),
                });
            }
        }
    }
    r.finish()?;
    Ok(Manifest {
        source_digest,
        domain,
        filesystem,
        config,
        device_size,
        chunk_size,
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let chunk_size = ChunkSize::MIN;
        let device_size = 65536 * 5 + 4096;
        Manifest {
            source_digest: "sha256:0123abcd".into(),
            domain: "tenant-a".into(),
            filesystem: "ext4".into(),
            config: ImageConfig {
                entrypoint: vec!["/bin/sh".into(), "-c".into()],
                cmd: vec!["echo héllo".into()],
                env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
                working_dir: "/srv".into(),
                user: "1000:1000".into(),
            },
            device_size,
            chunk_size,
            chunks: (0..6u8)
                .map(|i| {
                    if i == 2 {
                        ChunkEntry::Hole
                    } else {
                        ChunkEntry::Present {
                            id: ChunkId([i; 32]),
                            key: ChunkKey([i ^ 0xff; 32]),
                        }
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = m.encode().unwrap();
        assert_eq!(&bytes[..8], b"IMGFSMF\0");
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        // Re-encoding is byte-identical (determinism).
        assert_eq!(Manifest::decode(&bytes).unwrap().encode().unwrap(), bytes);
    }

    #[test]
    fn header_is_at_fixed_offsets() {
        let bytes = sample().encode().unwrap();
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1);
        assert_eq!(
            u64::from_le_bytes(bytes[12..20].try_into().unwrap()),
            65536 * 5 + 4096
        );
        assert_eq!(u32::from_le_bytes(bytes[20..24].try_into().unwrap()), 65536);
    }

    #[test]
    fn empty_device_round_trips() {
        let mut m = sample();
        m.device_size = 0;
        m.chunks.clear();
        m.config = ImageConfig::default();
        assert_eq!(Manifest::decode(&m.encode().unwrap()).unwrap(), m);
    }

    #[test]
    fn every_prefix_is_an_error() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            match Manifest::decode(&bytes[..len]) {
                Err(FormatError::Decode(DecodeError::Truncated { .. })) => {}
                other => panic!("prefix of {len} bytes gave {other:?}"),
            }
        }
    }

    #[test]
    fn overlong_input_is_an_error() {
        let mut bytes = sample().encode().unwrap();
        let end = bytes.len();
        bytes.push(0);
        assert_eq!(
            Manifest::decode(&bytes),
            Err(FormatError::Decode(DecodeError::TrailingBytes {
                offset: end,
                count: 1
            }))
        );
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let valid = sample().encode().unwrap();
        // Flip every byte in turn: each result is Ok or a clean error.
        for i in 0..valid.len() {
            let mut bytes = valid.clone();
            bytes[i] ^= 0xa5;
            let _ = Manifest::decode(&bytes);
        }
        // Pseudo-random garbage behind a valid header.
        let mut state = 0x1234_5678_u32;
        for _ in 0..200 {
            let mut bytes = valid[..24].to_vec();
            for _ in 0..300 {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                bytes.push(state as u8);
            }
            assert!(Manifest::decode(&bytes).is_err());
        }
        assert!(matches!(
            Manifest::decode(b"not a manifest at all"),
            Err(FormatError::Decode(DecodeError::BadMagic { .. }))
        ));
    }

    #[test]
    fn bad_fields_name_their_offset() {
        let valid = sample().encode().unwrap();
        let mut bytes = valid.clone();
        bytes[8] = 2;
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(FormatError::Decode(DecodeError::UnsupportedVersion {
                found: 2,
                ..
            }))
        ));
        let mut bytes = valid.clone();
        bytes[20..24].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            Manifest::decode(&bytes),
            Err(FormatError::Decode(DecodeError::Corrupt {
                what: "chunk size",
                offset: 20,
                ..
            }))
        ));
        // Device size that needs more chunks than the table has.
        let mut bytes = valid.clone();
        bytes[12..20].copy_from_slice(&(65536u64 * 100).to_le_bytes());
        let err = Manifest::decode(&bytes).unwrap_err();
        assert!(err.to_string().contains("chunk count"), "{err}");
        // An unknown chunk tag (the first entry starts 1 + 64 bytes before
        // the second, so find the table from the end).
        let mut bytes = valid.clone();
        let first_tag = valid.len() - (5 * 65 + 1);
        bytes[first_tag] = 7;
        let err = Manifest::decode(&bytes).unwrap_err();
        assert!(
            matches!(
                &err,
                FormatError::Decode(DecodeError::Corrupt { what: "chunk tag", offset, .. })
                    if *offset == first_tag
            ),
            "{err}"
        );
        assert!(err.to_string().contains("chunk #0"), "{err}");
    }

    #[test]
    fn inconsistent_manifest_is_not_encoded() {
        let mut m = sample();
        m.chunks.push(ChunkEntry::Hole);
        assert!(matches!(m.encode(), Err(FormatError::Invalid { .. })));
    }

    #[test]
    fn size_is_compact() {
        // 16 GiB at 512 KiB: 32768 entries, about 2 MiB.
        let chunk_size = ChunkSize::DEFAULT;
        let device_size = 16u64 << 30;
        let count = Manifest::chunk_count_for(device_size, chunk_size);
        let mut m = sample();
        m.device_size = device_size;
        m.chunk_size = chunk_size;
        m.chunks = (0..count)
            .map(|_| ChunkEntry::Present {
                id: ChunkId([1; 32]),
                key: ChunkKey([2; 32]),
            })
            .collect();
        let bytes = m.encode().unwrap();
        assert!(bytes.len() < 2_200_000, "{}", bytes.len());
        assert_eq!(Manifest::decode(&bytes).unwrap().chunks.len(), 32768);
    }
}
