//! A JSON view of a manifest for people and scripts (`imagefs inspect
//! --json`). Not a storage format: the binary encoding is the only one read
//! back. Chunk keys appear only when asked for.

use serde_json::{Value, json};

use super::manifest::{ChunkEntry, Manifest};

impl Manifest {
    /// The manifest as JSON; keys included only with `show_keys`.
    pub fn to_json(&self, show_keys: bool) -> Value {
        let chunks: Vec<Value> = self
            .chunks
            .iter()
            .map(|c| match c {
                ChunkEntry::Hole => Value::Null,
                ChunkEntry::Present { id, key } if show_keys => {
                    json!({ "id": id.to_hex(), "key": key.reveal_hex() })
                }
                ChunkEntry::Present { id, .. } => json!({ "id": id.to_hex() }),
            })
            .collect();
        json!({
            "source_digest": self.source_digest,
            "domain": self.domain,
            "filesystem": self.filesystem,
            "device_size": self.device_size,
            "chunk_size": self.chunk_size.as_u64(),
            "chunk_count": self.chunks.len(),
            "holes": self.hole_count(),
            "config": {
                "entrypoint": self.config.entrypoint,
                "cmd": self.config.cmd,
                "env": self.config.env,
                "working_dir": self.config.working_dir,
                "user": self.config.user,
            },
            "chunks": chunks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkId, ChunkKey, ChunkSize, ImageConfig};

    #[test]
    fn keys_only_when_asked() {
        let m = Manifest {
            source_digest: "sha256:00".into(),
            domain: "d".into(),
            filesystem: "ext4".into(),
            config: ImageConfig::default(),
            device_size: 2 * 65536,
            chunk_size: ChunkSize::new(65536).unwrap(),
            chunks: vec![
                ChunkEntry::Hole,
                ChunkEntry::Present {
                    id: ChunkId([1; 32]),
                    key: ChunkKey([0xab; 32]),
                },
            ],
        };
        let hidden = m.to_json(false).to_string();
        assert!(!hidden.contains("abababab"), "{hidden}");
        assert!(hidden.contains(&"01".repeat(32)));
        let shown = m.to_json(true).to_string();
        assert!(shown.contains(&"ab".repeat(32)), "{shown}");
        assert_eq!(m.to_json(false)["holes"], 1);
    }
}
