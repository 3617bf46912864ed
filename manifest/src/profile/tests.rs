//! The profile format and its envelope: round trips, foreign profiles
//! (another image, another key), altered and truncated bytes, and
//! profiles that name chunks the manifest does not have.

use super::*;
use crate::chunk_size::ChunkSize;
use crate::format::ImageConfig;
use crate::ids::{ChunkId, ChunkKey};
use crate::keys::LocalKeyProvider;

fn digest(seed: u8) -> ManifestDigest {
    ManifestDigest::of(&[seed])
}

fn entry(chunk: u64, first_access_us: u64) -> ProfileEntry {
    ProfileEntry {
        chunk,
        first_access_us,
    }
}

fn profile() -> StartProfile {
    StartProfile {
        manifest: digest(1),
        entries: vec![
            entry(3, 0),
            entry(0, 250),
            entry(1, 250),
            entry(u64::MAX, u64::MAX),
        ],
    }
}

fn provider(tmp: &tempfile::TempDir, name: &str) -> LocalKeyProvider {
    LocalKeyProvider::create(tmp.path().join(name)).unwrap()
}

/// Chunks 0, 1 and 3 present, 2 a hole.
fn manifest() -> Manifest {
    let present = |n: u8| ChunkEntry::Present {
        id: ChunkId([n; 32]),
        key: ChunkKey([n; 32]),
    };
    Manifest {
        source_digest: "sha256:feed".into(),
        domain: "default".into(),
        filesystem: "ext4".into(),
        config: ImageConfig::default(),
        device_size: 4 * 65536,
        chunk_size: ChunkSize::MIN,
        chunks: vec![present(1), present(2), ChunkEntry::Hole, present(3)],
    }
}

#[test]
fn encoding_round_trips_at_fixed_offsets() {
    let p = profile();
    let bytes = p.encode().unwrap();
    assert_eq!(bytes.len(), 50 + 4 * 16);
    assert_eq!(&bytes[0..8], b"IMGFSPF\0");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1);
    assert_eq!(&bytes[10..42], digest(1).as_bytes());
    assert_eq!(bytes[42..50], 4u64.to_le_bytes());
    // Second entry: chunk 0 at 250 µs.
    assert_eq!(bytes[66..74], 0u64.to_le_bytes());
    assert_eq!(bytes[74..82], 250u64.to_le_bytes());
    assert_eq!(StartProfile::decode(&bytes).unwrap(), p);
    let empty = StartProfile {
        manifest: digest(2),
        entries: vec![],
    };
    assert_eq!(
        StartProfile::decode(&empty.encode().unwrap()).unwrap(),
        empty
    );
}

#[test]
fn malformed_profiles_are_refused_on_both_sides() {
    let mut p = profile();
    p.entries.swap(0, 1);
    let err = p.encode().unwrap_err();
    assert!(
        err.to_string().contains("before the previous entry"),
        "{err}"
    );
    let mut p = profile();
    p.entries[1].chunk = 3;
    let err = p.encode().unwrap_err();
    assert!(
        err.to_string().contains("chunk #3 is listed twice"),
        "{err}"
    );

    // The same faults written by hand are caught by decode, at their offset.
    let mut bytes = profile().encode().unwrap();
    bytes[66..74].copy_from_slice(&3u64.to_le_bytes());
    assert!(matches!(
        StartProfile::decode(&bytes),
        Err(ProfileError::Format(DecodeError::Corrupt {
            offset: 66,
            ..
        }))
    ));
    // A count far larger than the input: truncated, nothing allocated.
    let mut bytes = profile().encode().unwrap();
    bytes[42..50].copy_from_slice(&(u64::MAX / 8).to_le_bytes());
    assert!(matches!(
        StartProfile::decode(&bytes),
        Err(ProfileError::Format(_))
    ));
    let bytes = profile().encode().unwrap();
    assert!(matches!(
        StartProfile::decode(&bytes[..bytes.len() - 1]),
        Err(ProfileError::Format(DecodeError::Truncated { .. }))
    ));
}

#[test]
fn sealed_round_trip_reveals_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = provider(&tmp, "k");
    let p = profile();
    let sealed = seal_profile(&p, &keys).unwrap();
    assert_eq!(&sealed[..8], b"IMGFSPS\0");
    assert_eq!(&sealed[10..42], digest(1).as_bytes());
    assert_eq!(unseal_profile(&sealed, &keys, &digest(1)).unwrap(), p);
    // The plaintext magic and entries are not visible.
    let plain = p.encode().unwrap();
    assert!(!sealed.windows(8).any(|w| w == b"IMGFSPF\0"));
    assert!(!sealed.windows(16).any(|w| w == &plain[66..82]));
    // A fresh data key and nonce each time.
    assert_ne!(sealed, seal_profile(&p, &keys).unwrap());
}

#[test]
fn foreign_profiles_are_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = provider(&tmp, "k");
    let other_keys = provider(&tmp, "other");
    let sealed = seal_profile(&profile(), &keys).unwrap();

    let err = unseal_profile(&sealed, &keys, &digest(9)).unwrap_err();
    assert!(
        matches!(&err, ProfileError::ForeignImage { expected, found }
            if *expected == digest(9) && *found == digest(1)),
        "{err:?}"
    );
    assert!(err.to_string().contains("foreign"), "{err}");

    let err = unseal_profile(&sealed, &other_keys, &digest(1)).unwrap_err();
    let id = keys.current_key_id().unwrap();
    assert!(
        matches!(&err, ProfileError::ForeignKey { key_id, .. } if *key_id == id),
        "{err:?}"
    );
    assert!(err.to_string().contains("foreign"), "{err}");
}

#[test]
fn altered_and_truncated_envelopes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let keys = provider(&tmp, "k");
    let sealed = seal_profile(&profile(), &keys).unwrap();
    // A byte of the ciphertext: authentication fails.
    let mut bad = sealed.clone();
    let at = sealed.len() - 30;
    bad[at] ^= 0x40;
    assert!(matches!(
        unseal_profile(&bad, &keys, &digest(1)),
        Err(ProfileError::Authentication)
    ));
    // A byte of the nonce (authenticated data): authentication fails.
    let mut bad = sealed.clone();
    let id_len = keys.current_key_id().unwrap().len();
    let wrapped_len_at = 42 + 4 + id_len;
    let wrapped_len = u32::from_le_bytes(
        sealed[wrapped_len_at..wrapped_len_at + 4]
            .try_into()
            .unwrap(),
    ) as usize;
    bad[wrapped_len_at + 4 + wrapped_len] ^= 1;
    assert!(matches!(
        unseal_profile(&bad, &keys, &digest(1)),
        Err(ProfileError::Authentication)
    ));
    // Every single-byte change is caught one way or another.
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert!(
            unseal_profile(&bad, &keys, &digest(1)).is_err(),
            "flip at {i} went unnoticed"
        );
    }
    for len in 0..sealed.len() {
        match unseal_profile(&sealed[..len], &keys, &digest(1)) {
            Err(ProfileError::Envelope(DecodeError::Truncated { .. })) => {}
            other => panic!("prefix of {len} bytes gave {other:?}"),
        }
    }
    let mut long = sealed.clone();
    long.push(0);
    assert!(matches!(
        unseal_profile(&long, &keys, &digest(1)),
        Err(ProfileError::Envelope(DecodeError::TrailingBytes { .. }))
    ));
    let err = unseal_profile(b"IMGFSSL\0 a sealed manifest", &keys, &digest(1)).unwrap_err();
    assert!(err.to_string().contains("bad magic"), "{err}");
}

#[test]
fn profiles_must_stay_inside_the_manifest() {
    let m = manifest();
    let ok = StartProfile {
        manifest: digest(1),
        entries: vec![entry(3, 0), entry(0, 10), entry(1, 20)],
    };
    ok.check_against(&m).unwrap();
    assert_eq!(ok.order(), [ChunkIndex(3), ChunkIndex(0), ChunkIndex(1)]);

    let past = StartProfile {
        manifest: digest(1),
        entries: vec![entry(0, 0), entry(4, 10)],
    };
    let err = past.check_against(&m).unwrap_err();
    assert!(
        matches!(
            err,
            ProfileError::OutsideManifest {
                chunk: ChunkIndex(4),
                chunk_count: 4
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("chunk #4"), "{err}");

    let hole = StartProfile {
        manifest: digest(1),
        entries: vec![entry(2, 0)],
    };
    assert!(matches!(
        hole.check_against(&m),
        Err(ProfileError::Hole {
            chunk: ChunkIndex(2)
        })
    ));
}

#[test]
fn report_lists_entries_in_order() {
    let r = profile().report();
    assert_eq!(r.format, "imagefs-start-profile");
    assert_eq!(r.image, digest(1).to_string());
    assert_eq!(r.chunks, 4);
    assert_eq!(r.last_first_access_us, u64::MAX);
    let json = serde_json::to_string(&r).unwrap();
    let back: ProfileReport = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);
}
