//! Checking every chunk of an image: present, matching its id, decrypting.

use std::sync::Mutex;

use cachetiers::ChunkStore;
use manifest::{ChunkEntry, ChunkId, ChunkIndex, Manifest, decrypt_chunk_owned};

/// One chunk that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadChunk {
    /// Its position in the image.
    pub index: ChunkIndex,
    /// The id the manifest expects.
    pub id: ChunkId,
    /// What is wrong with it.
    pub problem: String,
}

/// The result of a verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Chunks checked (holes excluded).
    pub checked: u64,
    /// Holes in the image.
    pub holes: u64,
    /// The chunks that failed, in image order.
    pub bad: Vec<BadChunk>,
}

/// Check one chunk; `Err` says what is wrong.
fn check(store: &dyn ChunkStore, manifest: &Manifest, index: u64) -> Result<(), String> {
    let ChunkEntry::Present { id, key } = &manifest.chunks[index as usize] else {
        return Ok(());
    };
    let object = store
        .get(id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "missing from the store".to_string())?;
    let plain = decrypt_chunk_owned(id, key, object).map_err(|e| e.to_string())?;
    let expected = manifest
        .chunk_span(ChunkIndex(index))
        .map_or(0, |(_, len)| len);
    if plain.len() as u64 != expected {
        return Err(format!(
            "decrypts to {} bytes, expected {expected}",
            plain.len()
        ));
    }
    Ok(())
}

/// Check every chunk of `manifest` in `store`, using `threads` threads.
pub fn verify(store: &dyn ChunkStore, manifest: &Manifest, threads: usize) -> VerifyReport {
    let total = manifest.chunks.len() as u64;
    let next = Mutex::new(0u64);
    let bad = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                loop {
                    let index = {
                        let Ok(mut n) = next.lock() else { return };
                        let i = *n;
                        *n += 1;
                        i
                    };
                    if index >= total {
                        return;
                    }
                    if let Err(problem) = check(store, manifest, index) {
                        let id = *manifest.chunks[index as usize]
                            .id()
                            .expect("only present chunks fail");
                        if let Ok(mut b) = bad.lock() {
                            b.push(BadChunk {
                                index: ChunkIndex(index),
                                id,
                                problem,
                            });
                        }
                    }
                }
            });
        }
    });
    let mut bad = bad.into_inner().unwrap_or_default();
    bad.sort_by_key(|b| b.index);
    let holes = manifest.hole_count() as u64;
    VerifyReport {
        checked: total - holes,
        holes,
        bad,
    }
}
