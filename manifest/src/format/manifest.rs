//! The manifest: everything needed to serve and start one converted image.

use crate::chunk_size::ChunkSize;
use crate::ids::{ByteOffset, ChunkId, ChunkIndex, ChunkKey};

/// The parts of an OCI image config a VM needs to start the function.
///
/// Empty strings and lists mean "not set in the image".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, each `NAME=value`, in image order.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `User`.
    pub user: String,
}

/// One entry of the chunk table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkEntry {
    /// An all-zero chunk: recorded here, never stored.
    Hole,
    /// A stored chunk.
    Present {
        /// The id of the encrypted object in the store.
        id: ChunkId,
        /// The key that decrypts it.
        key: ChunkKey,
    },
}

impl ChunkEntry {
    /// Whether this is a hole.
    pub fn is_hole(&self) -> bool {
        matches!(self, ChunkEntry::Hole)
    }

    /// The id of a present chunk.
    pub fn id(&self) -> Option<&ChunkId> {
        match self {
            ChunkEntry::Hole => None,
            ChunkEntry::Present { id, .. } => Some(id),
        }
    }
}

/// A manifest read with one domain in mind turned out to belong to another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("manifest belongs to domain `{found}`, not to the expected domain `{expected}`")]
pub struct DomainMismatch {
    /// The domain the caller expected.
    pub expected: String,
    /// The domain recorded in the manifest.
    pub found: String,
}

/// A converted image: its device geometry, its chunk table and how to start
/// it.
///
/// The device is `device_size` bytes cut into `chunk_size` chunks; the last
/// chunk is shorter when the size is not a multiple of the chunk size, and
/// its plaintext is exactly that shorter length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The digest of the source image (for example `sha256:…` of its
    /// manifest or config), as text.
    pub source_digest: String,
    /// The domain whose secret keyed the chunks.
    pub domain: String,
    /// The filesystem on the device, for example `ext4`.
    pub filesystem: String,
    /// How to start the function.
    pub config: ImageConfig,
    /// The device size in bytes.
    pub device_size: u64,
    /// The chunk size.
    pub chunk_size: ChunkSize,
    /// One entry per chunk, in device order.
    pub chunks: Vec<ChunkEntry>,
}

impl Manifest {
    /// How many chunks a device of `device_size` bytes has.
    pub fn chunk_count_for(device_size: u64, chunk_size: ChunkSize) -> u64 {
        device_size.div_ceil(chunk_size.as_u64())
    }

    /// The chunk at `index`, if the device has one there.
    pub fn chunk(&self, index: ChunkIndex) -> Option<&ChunkEntry> {
        usize::try_from(index.0)
            .ok()
            .and_then(|i| self.chunks.get(i))
    }

    /// The chunk holding the byte at `offset`, if it is inside the device.
    pub fn index_of(&self, offset: ByteOffset) -> Option<ChunkIndex> {
        (offset.0 < self.device_size).then(|| ChunkIndex(offset.0 / self.chunk_size.as_u64()))
    }

    /// Where chunk `index` starts and how many bytes it covers.
    pub fn chunk_span(&self, index: ChunkIndex) -> Option<(ByteOffset, u64)> {
        let start = index.0.checked_mul(self.chunk_size.as_u64())?;
        if start >= self.device_size {
            return None;
        }
        let len = (self.device_size - start).min(self.chunk_size.as_u64());
        Some((ByteOffset(start), len))
    }

    /// How many entries are holes.
    pub fn hole_count(&self) -> usize {
        self.chunks.iter().filter(|c| c.is_hole()).count()
    }

    /// How many entries are stored chunks.
    pub fn present_count(&self) -> usize {
        self.chunks.len() - self.hole_count()
    }

    /// Checks that this manifest belongs to the `expected` domain.
    pub fn check_domain(&self, expected: &str) -> Result<(), DomainMismatch> {
        if self.domain == expected {
            Ok(())
        } else {
            Err(DomainMismatch {
                expected: expected.to_owned(),
                found: self.domain.clone(),
            })
        }
    }

    /// Checks that the chunk table matches the device geometry.
    pub fn check_consistent(&self) -> Result<(), String> {
        let expected = Self::chunk_count_for(self.device_size, self.chunk_size);
        if self.chunks.len() as u64 != expected {
            return Err(format!(
                "chunk table has {} entries, but {} bytes at {} per chunk need {expected}",
                self.chunks.len(),
                self.device_size,
                self.chunk_size
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(device_size: u64) -> Manifest {
        let chunk_size = ChunkSize::MIN;
        let count = Manifest::chunk_count_for(device_size, chunk_size);
        Manifest {
            source_digest: String::new(),
            domain: "d".into(),
            filesystem: "ext4".into(),
            config: ImageConfig::default(),
            device_size,
            chunk_size,
            chunks: (0..count)
                .map(|i| {
                    if i % 2 == 0 {
                        ChunkEntry::Hole
                    } else {
                        ChunkEntry::Present {
                            id: ChunkId([i as u8; 32]),
                            key: ChunkKey([0; 32]),
                        }
                    }
                })
                .collect(),
        }
    }

    #[test]
    fn geometry_with_short_last_chunk() {
        let m = manifest(65536 * 2 + 100);
        m.check_consistent().unwrap();
        assert_eq!(m.chunks.len(), 3);
        assert_eq!(m.index_of(ByteOffset(65535)), Some(ChunkIndex(0)));
        assert_eq!(m.index_of(ByteOffset(65536 * 2 + 99)), Some(ChunkIndex(2)));
        assert_eq!(m.index_of(ByteOffset(65536 * 2 + 100)), None);
        assert_eq!(
            m.chunk_span(ChunkIndex(1)),
            Some((ByteOffset(65536), 65536))
        );
        assert_eq!(m.chunk_span(ChunkIndex(2)), Some((ByteOffset(131072), 100)));
        assert_eq!(m.chunk_span(ChunkIndex(3)), None);
        assert_eq!(m.chunk_span(ChunkIndex(u64::MAX)), None);
        assert_eq!(m.hole_count(), 2);
        assert_eq!(m.present_count(), 1);
        assert!(m.chunk(ChunkIndex(1)).unwrap().id().is_some());
    }

    #[test]
    fn inconsistent_table_is_reported() {
        let mut m = manifest(65536 * 3);
        m.chunks.pop();
        let reason = m.check_consistent().unwrap_err();
        assert!(reason.contains("2 entries"), "{reason}");
    }

    #[test]
    fn domain_check() {
        let m = manifest(0);
        m.check_domain("d").unwrap();
        let err = m.check_domain("prod").unwrap_err();
        assert_eq!(
            err,
            DomainMismatch {
                expected: "prod".into(),
                found: "d".into()
            }
        );
        assert!(err.to_string().contains("`prod`"));
    }
}
