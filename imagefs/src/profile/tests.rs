//! Recording, merging, storing and loading start profiles against a real
//! directory origin and a real key directory.

use std::fs;

use cachetiers::DirStore;
use manifest::{ChunkId, ChunkKey, ChunkSize, ImageConfig, LocalKeyProvider, seal};

use super::*;

const CHUNK: u64 = 64 * 1024;

/// Six chunks; chunk 2 is a hole.
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
        device_size: 6 * CHUNK,
        chunk_size: ChunkSize::MIN,
        chunks: vec![
            present(1),
            present(2),
            ChunkEntry::Hole,
            present(3),
            present(4),
            present(5),
        ],
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: DirStore,
    keys: LocalKeyProvider,
    manifest: Manifest,
    digest: ManifestDigest,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let store = DirStore::create(dir.join("store")).unwrap();
    let keys = LocalKeyProvider::create(dir.join("keys")).unwrap();
    let manifest = manifest();
    let digest = store
        .put_manifest(&seal(&manifest, &keys).unwrap())
        .unwrap();
    Setup {
        _tmp: tmp,
        dir,
        store,
        keys,
        manifest,
        digest,
    }
}

fn entry(chunk: u64, first_access_us: u64) -> ProfileEntry {
    ProfileEntry {
        chunk,
        first_access_us,
    }
}

fn profile(digest: ManifestDigest, entries: &[(u64, u64)]) -> StartProfile {
    StartProfile {
        manifest: digest,
        entries: entries.iter().map(|&(c, t)| entry(c, t)).collect(),
    }
}

#[test]
fn the_recorder_keeps_first_accesses_of_present_chunks() {
    let s = setup();
    let r = ProfileRecorder::new(s.digest, &s.manifest, None);
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    r.record_at(ms(0), 3 * CHUNK + 512, 4096); // chunk 3
    r.record_at(ms(1), 3 * CHUNK, 512); // chunk 3 again: not repeated
    r.record_at(ms(2), CHUNK - 512, 2 * CHUNK); // chunks 0, 1, hole 2 skipped
    r.record_at(ms(3), 5 * CHUNK, 4 * CHUNK); // chunk 5, then past the device
    r.record_at(ms(4), 4 * CHUNK, 0); // empty: nothing
    r.record_at(ms(5), 40 * CHUNK, 512); // past the device
    let p = r.profile();
    assert_eq!(p.manifest, s.digest);
    assert_eq!(
        p.entries,
        [entry(3, 0), entry(0, 2000), entry(1, 2000), entry(5, 3000)]
    );
    r.close();
    r.record_at(ms(6), 4 * CHUNK, 512);
    assert_eq!(r.profile().entries.len(), 4);
    // Closed: returns at once.
    r.wait_done();
}

#[test]
fn the_window_starts_at_the_first_read_and_ends_recording() {
    let s = setup();
    let r = ProfileRecorder::new(s.digest, &s.manifest, Some(Duration::from_millis(10)));
    let t0 = Instant::now();
    let ms = |n| t0 + Duration::from_millis(n);
    r.record_at(ms(100), 0, 512); // time zero, however late the guest starts
    r.record_at(ms(105), CHUNK, 512);
    r.record_at(ms(110), 3 * CHUNK, 512); // the window has passed
    r.record_at(ms(111), 4 * CHUNK, 512);
    assert_eq!(r.profile().entries, [entry(0, 0), entry(1, 5000)]);
    r.wait_done();
}

#[test]
fn recorded_stored_and_loaded_back_in_order() {
    let s = setup();
    assert_eq!(
        load_profile(&s.store, &s.digest, &s.keys, &s.manifest),
        None
    );
    let r = ProfileRecorder::new(s.digest, &s.manifest, None);
    for chunk in [4u64, 0, 4, 1] {
        r.record_read(chunk * CHUNK, 4096);
    }
    r.close();
    store_profile(&s.store, &s.keys, &s.manifest, &r.profile()).unwrap();
    assert_eq!(
        load_profile(&s.store, &s.digest, &s.keys, &s.manifest),
        Some(vec![ChunkIndex(4), ChunkIndex(0), ChunkIndex(1)])
    );
    let stored = stored_profile(&s.store, &s.digest, &s.keys, &s.manifest)
        .unwrap()
        .unwrap();
    assert_eq!(stored, r.profile());
    // Sealed: the stored bytes are not the plain encoding.
    let raw = s.store.get_profile(&s.digest).unwrap().unwrap();
    assert_eq!(&raw[..8], b"IMGFSPS\0");
    assert!(!raw.windows(8).any(|w| w == b"IMGFSPF\0"));

    assert!(remove_profile(&s.store, &s.digest).unwrap());
    assert!(!remove_profile(&s.store, &s.digest).unwrap());
    assert_eq!(
        load_profile(&s.store, &s.digest, &s.keys, &s.manifest),
        None
    );
}

/// What `stored_profile` says about the sealed bytes put under the image.
fn stored_error(s: &Setup, sealed: &[u8]) -> ProfileError {
    s.store.put_profile(&s.digest, sealed).unwrap();
    assert_eq!(
        load_profile(&s.store, &s.digest, &s.keys, &s.manifest),
        None
    );
    match stored_profile(&s.store, &s.digest, &s.keys, &s.manifest) {
        Err(ProfileOpError::Profile { source, what }) => {
            assert!(what.contains(&s.digest.to_string()), "{what}");
            source
        }
        other => panic!("expected a profile error, got {other:?}"),
    }
}

#[test]
fn foreign_corrupt_and_out_of_manifest_profiles_are_not_loaded() {
    let s = setup();
    let good = profile(s.digest, &[(3, 0), (0, 10)]);

    // Sealed with another key directory's master key.
    let other_keys = LocalKeyProvider::create(s.dir.join("other-keys")).unwrap();
    let sealed = seal_profile(&good, &other_keys).unwrap();
    assert!(matches!(
        stored_error(&s, &sealed),
        ProfileError::ForeignKey { .. }
    ));

    // Another image's profile, copied next to this one.
    let elsewhere = ManifestDigest::of(b"another image");
    let sealed = seal_profile(&profile(elsewhere, &[(0, 0)]), &s.keys).unwrap();
    assert!(matches!(
        stored_error(&s, &sealed),
        ProfileError::ForeignImage { found, .. } if found == elsewhere
    ));

    // A flipped byte in the ciphertext, and a truncated file.
    let sealed = seal_profile(&good, &s.keys).unwrap();
    let mut flipped = sealed.clone();
    let at = flipped.len() - 20;
    flipped[at] ^= 0x10;
    assert!(matches!(
        stored_error(&s, &flipped),
        ProfileError::Authentication
    ));
    assert!(matches!(
        stored_error(&s, &sealed[..sealed.len() - 7]),
        ProfileError::Envelope(manifest::DecodeError::Truncated { .. })
    ));

    // Properly sealed, but naming chunk 6 of 6, or the hole.
    let past = seal_profile(&profile(s.digest, &[(0, 0), (6, 1)]), &s.keys).unwrap();
    assert!(matches!(
        stored_error(&s, &past),
        ProfileError::OutsideManifest {
            chunk: ChunkIndex(6),
            chunk_count: 6
        }
    ));
    let hole = seal_profile(&profile(s.digest, &[(2, 0)]), &s.keys).unwrap();
    assert!(matches!(
        stored_error(&s, &hole),
        ProfileError::Hole {
            chunk: ChunkIndex(2)
        }
    ));
    // And such a profile is not stored in the first place.
    let err = store_profile(
        &s.store,
        &s.keys,
        &s.manifest,
        &profile(s.digest, &[(9, 0)]),
    )
    .unwrap_err();
    assert!(err.to_string().contains(&s.digest.to_string()), "{err}");

    // The good one, put back, loads.
    s.store.put_profile(&s.digest, &sealed).unwrap();
    assert_eq!(
        load_profile(&s.store, &s.digest, &s.keys, &s.manifest),
        Some(vec![ChunkIndex(3), ChunkIndex(0)])
    );
}

#[test]
fn merge_keeps_the_union_ordered_by_median_first_access() {
    let d = ManifestDigest::of(b"image");
    let runs = [
        profile(d, &[(0, 0), (1, 100), (3, 900)]),
        profile(d, &[(0, 0), (3, 200), (1, 700)]),
        profile(d, &[(0, 0), (3, 300), (1, 800), (5, 5000)]),
        profile(d, &[(4, 50)]),
    ];
    let merged = merge(&runs).unwrap();
    // Chunk 3: median of 200, 300, 900 = 300. Chunk 1: of 100, 700, 800 =
    // 700. Chunk 4 and 5: seen once each.
    assert_eq!(
        merged,
        profile(d, &[(0, 0), (4, 50), (3, 300), (1, 700), (5, 5000)])
    );
    // An even count takes the lower middle: 100 and 700 give 100.
    let two = merge(&runs[..2]).unwrap();
    assert_eq!(two, profile(d, &[(0, 0), (1, 100), (3, 200)]));
    // Merging one run changes nothing; merging is order-independent.
    assert_eq!(merge(&runs[..1]).unwrap(), runs[0]);
    let mut reversed = runs.to_vec();
    reversed.reverse();
    assert_eq!(merge(&reversed).unwrap(), merged);

    assert!(matches!(merge(&[]), Err(ProfileOpError::NothingToMerge)));
    let other = profile(ManifestDigest::of(b"other"), &[(0, 0)]);
    let err = merge(&[runs[0].clone(), other]).unwrap_err();
    assert!(err.to_string().contains("to merge"), "{err}");
}

#[test]
fn profile_files_round_trip_and_refuse_other_images() {
    let s = setup();
    let p = profile(s.digest, &[(5, 0), (1, 40)]);
    let path = s.dir.join("run1.profile");
    write_profile_file(&path, &s.keys, &s.manifest, &p).unwrap();
    assert_eq!(
        read_profile_file(&path, &s.digest, &s.keys, &s.manifest).unwrap(),
        p
    );
    let other = ManifestDigest::of(b"another image");
    let err = read_profile_file(&path, &other, &s.keys, &s.manifest).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let err =
        read_profile_file(&s.dir.join("absent"), &s.digest, &s.keys, &s.manifest).unwrap_err();
    assert!(matches!(err, ProfileOpError::Io { .. }), "{err}");
    fs::write(&path, b"not a profile").unwrap();
    assert!(read_profile_file(&path, &s.digest, &s.keys, &s.manifest).is_err());
}

#[test]
fn a_trace_gives_the_same_profile_as_recording() {
    let s = setup();
    let header = TraceHeader::new(&s.digest.to_string(), 6 * CHUNK, 0);
    let rec = |t_ns, offset, len| TraceRecord {
        t_ns,
        queue: 0,
        offset,
        len,
    };
    let records = [
        rec(5_000_000, 4 * CHUNK, 4096),
        rec(5_000_000, 4 * CHUNK + 4096, 4096),
        rec(7_500_000, 2 * CHUNK, 2 * CHUNK), // hole 2, then chunk 3
        rec(9_000_000, 0, 512),
    ];
    let p = from_trace(&s.digest, &s.manifest, &header, &records).unwrap();
    assert_eq!(p, profile(s.digest, &[(4, 0), (3, 2500), (0, 4000)]));

    let foreign = TraceHeader::new("sha256:00", 6 * CHUNK, 0);
    assert!(matches!(
        from_trace(&s.digest, &s.manifest, &foreign, &records),
        Err(ProfileOpError::TraceOfAnotherImage { .. })
    ));
}

#[test]
fn render_names_every_chunk() {
    let s = setup();
    let text = render(&profile(s.digest, &[(3, 0), (1, 1500)]), &s.manifest);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].contains("2 chunks (131072 bytes)"), "{text}");
    assert!(lines[0].contains("1.500 ms"), "{text}");
    assert!(
        lines[1].contains("chunk        3  offset         196608"),
        "{text}"
    );
}
