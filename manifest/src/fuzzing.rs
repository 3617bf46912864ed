//! Harness for the `manifest_decode` fuzz target (and its regression
//! tests): every decoder of this crate fed the same bytes, and a
//! round trip for whatever decodes. Not part of the API.

use crate::convergent::DomainSecret;
use crate::keys::{DataKey, KeyError, KeyProvider, WrappedKey};
use crate::{Manifest, ManifestDigest, StartProfile, seal, unseal, unseal_for_domain};

/// The one master key id [`FixedKeys`] knows.
pub const FIXED_KEY_ID: &str = "fuzz-master";

/// A key provider with one fixed master key whose "wrapping" is the
/// identity: a fuzzer can then build envelopes that get past the key
/// unwrap and reach decryption, which a real provider would refuse.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedKeys;

impl KeyProvider for FixedKeys {
    fn wrap_key(&self, data_key: &DataKey) -> Result<WrappedKey, KeyError> {
        Ok(WrappedKey {
            key_id: FIXED_KEY_ID.to_string(),
            wrapped: data_key.as_bytes().to_vec(),
        })
    }

    fn unwrap_key(&self, key_id: &str, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        if key_id != FIXED_KEY_ID {
            return Err(KeyError::UnknownMasterKey {
                key_id: key_id.to_string(),
            });
        }
        let key: [u8; 32] = wrapped.try_into().map_err(|_| KeyError::UnwrapFailed {
            key_id: key_id.to_string(),
        })?;
        Ok(DataKey::from_bytes(key))
    }

    fn domain_secret(&self, _domain: &str) -> Result<DomainSecret, KeyError> {
        Ok(DomainSecret::from_bytes([0x5a; 32]))
    }

    fn current_key_id(&self) -> Result<String, KeyError> {
        Ok(FIXED_KEY_ID.to_string())
    }
}

/// Feeds `data` to every decoder. Whatever decodes must encode again and
/// decode to the same value, and seal and unseal to it. Panics (for the
/// fuzzer) only when a round trip breaks; decoders must return errors.
pub fn decode_all(data: &[u8]) {
    let keys = FixedKeys;
    if let Ok(manifest) = Manifest::decode(data) {
        round_trip_manifest(&manifest, data, &keys);
    }
    let _ = unseal(data, &keys);
    let _ = unseal_for_domain(data, &keys, "fuzz");
    if let Ok(profile) = StartProfile::decode(data) {
        let encoded = profile.encode().expect("a decoded profile encodes");
        assert_eq!(
            StartProfile::decode(&encoded).expect("a re-encoded profile decodes"),
            profile
        );
        let sealed = crate::seal_profile(&profile, &keys).expect("seal a decoded profile");
        let unsealed =
            crate::unseal_profile(&sealed, &keys, &profile.manifest).expect("unseal it again");
        assert_eq!(unsealed, profile);
    }
    // The digest a sealed profile must name: taken from the input when it
    // is long enough to hold one where a real envelope has it.
    let digest = data
        .get(10..42)
        .and_then(|d| <[u8; 32]>::try_from(d).ok())
        .map_or(ManifestDigest([0; 32]), ManifestDigest);
    let _ = crate::unseal_profile(data, &keys, &digest);
    if let Ok(state) = crate::agent::AgentState::decode(data) {
        assert_eq!(
            crate::agent::AgentState::decode(&state.encode()).expect("re-encoded state decodes"),
            state
        );
    }
    let _ = crate::trace::decode(data);
}

fn round_trip_manifest(manifest: &Manifest, data: &[u8], keys: &FixedKeys) {
    let encoded = manifest.encode().expect("a decoded manifest encodes");
    // One canonical form: what decodes encodes back to the same bytes.
    assert_eq!(encoded, data, "manifest decode/encode is not canonical");
    assert_eq!(
        &Manifest::decode(&encoded).expect("a re-encoded manifest decodes"),
        manifest
    );
    let sealed = seal(manifest, keys).expect("seal a decoded manifest");
    assert_eq!(&unseal(&sealed, keys).expect("unseal it again"), manifest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{AgentState, VmRecord, VmSpec};
    use crate::chunk_size::ChunkSize;
    use crate::format::{ChunkEntry, ImageConfig};
    use crate::ids::{ChunkId, ChunkKey};
    use crate::profile::ProfileEntry;
    use crate::trace::{TraceHeader, TraceRecord};

    /// Real encodings of every format the target decodes: its seeds
    /// (written to `$IMAGEFS_FUZZ_SEEDS` when set).
    fn encodings() -> Vec<(&'static str, Vec<u8>)> {
        let manifest = Manifest {
            source_digest: "sha256:feed".into(),
            domain: "fuzz".into(),
            filesystem: "ext4".into(),
            config: ImageConfig {
                cmd: vec!["/bin/true".into()],
                env: vec!["PATH=/bin".into()],
                ..ImageConfig::default()
            },
            device_size: 3 * 65536 - 100,
            chunk_size: ChunkSize::MIN,
            chunks: vec![
                ChunkEntry::Hole,
                ChunkEntry::Present {
                    id: ChunkId([1; 32]),
                    key: ChunkKey([2; 32]),
                },
                ChunkEntry::Present {
                    id: ChunkId([3; 32]),
                    key: ChunkKey([4; 32]),
                },
            ],
        };
        let profile = StartProfile {
            manifest: ManifestDigest([9; 32]),
            entries: vec![
                ProfileEntry {
                    chunk: 2,
                    first_access_us: 10,
                },
                ProfileEntry {
                    chunk: 0,
                    first_access_us: 30,
                },
            ],
        };
        let state = AgentState::new(vec![VmRecord {
            spec: VmSpec {
                id: "vm-a".into(),
                image: "python:3".into(),
                writable: true,
                dedicated: Some("/var/lib/imagefs/vm-a".into()),
                queues: Some(2),
                domain: Some("default".into()),
            },
            digest: format!("sha256:{}", "ab".repeat(32)),
            created_unix_ms: 1_700_000_000_000,
        }]);
        let mut trace = TraceHeader::new("sha256:feed", 3 * 65536, 1).encode();
        trace.push('\n');
        for (t, offset) in [(5u64, 0u64), (9, 65536)] {
            trace.push_str(
                &TraceRecord {
                    t_ns: t,
                    queue: 0,
                    offset,
                    len: 4096,
                }
                .encode(),
            );
            trace.push('\n');
        }
        let keys = FixedKeys;
        vec![
            ("manifest", manifest.encode().unwrap()),
            ("sealed-manifest", seal(&manifest, &keys).unwrap()),
            ("profile", profile.encode().unwrap()),
            (
                "sealed-profile",
                crate::seal_profile(&profile, &keys).unwrap(),
            ),
            ("agent-state", state.encode()),
            ("trace", trace.into_bytes()),
        ]
    }

    #[test]
    fn real_encodings_decode_and_round_trip() {
        let seeds = encodings();
        if let Some(dir) = std::env::var_os("IMAGEFS_FUZZ_SEEDS") {
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in &seeds {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
        let keys = FixedKeys;
        let [manifest, sealed, profile, sealed_profile, state, trace] = &seeds[..] else {
            unreachable!()
        };
        assert!(Manifest::decode(&manifest.1).is_ok());
        assert!(unseal_for_domain(&sealed.1, &keys, "fuzz").is_ok());
        let profile = StartProfile::decode(&profile.1).unwrap();
        assert!(crate::unseal_profile(&sealed_profile.1, &keys, &profile.manifest).is_ok());
        assert!(AgentState::decode(&state.1).is_ok());
        let (_, records) = crate::trace::decode(&trace.1[..]).unwrap();
        assert_eq!(records.len(), 2);
        for (_, bytes) in &seeds {
            decode_all(bytes);
        }
    }

    #[test]
    fn empty_and_garbage_inputs_are_errors() {
        decode_all(b"");
        decode_all(&[0xff; 300]);
        decode_all(b"{\"format\":1}\n");
    }
}
