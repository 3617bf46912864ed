//! Synthetic encrypted devices for unit and integration tests of the lazy
//! layers: chunk plaintexts (or holes) in, the manifest and the plaintext
//! image out, each chunk's object handed to the caller to store.

use manifest::{
    ChunkEntry, ChunkSize, DomainSecret, EncryptedChunk, ImageConfig, Manifest, encrypt_chunk,
};

/// The chunk size of every synthetic device ([`ChunkSize::MIN`], 64 KiB).
pub const CHUNK: usize = 64 * 1024;

/// A device of `chunks` in order, each a plaintext (at most [`CHUNK`]
/// bytes; only the last may be shorter) or `None` for a hole of [`CHUNK`]
/// zeros, encrypted under `secret`; `store` receives each stored chunk.
/// Returns the manifest (domain `test`, filesystem `ext4`) and the
/// device's plaintext.
pub fn encrypted_device(
    secret: &DomainSecret,
    chunks: Vec<Option<Vec<u8>>>,
    mut store: impl FnMut(&EncryptedChunk),
) -> (Manifest, Vec<u8>) {
    let mut image = Vec::new();
    let mut entries = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        match chunk {
            None => {
                image.resize(image.len() + CHUNK, 0);
                entries.push(ChunkEntry::Hole);
            }
            Some(plain) => {
                let enc = encrypt_chunk(secret, &plain);
                store(&enc);
                image.extend_from_slice(&plain);
                entries.push(ChunkEntry::Present {
                    id: enc.id,
                    key: enc.key,
                });
            }
        }
    }
    let manifest = Manifest {
        source_digest: String::new(),
        domain: "test".into(),
        filesystem: "ext4".into(),
        config: ImageConfig::default(),
        device_size: image.len() as u64,
        chunk_size: ChunkSize::MIN,
        chunks: entries,
    };
    (manifest, image)
}
