//! The dedicated tier's boundaries: a disk with guest writes is pinned to
//! its image and never reset without `--reset`; one process per
//! directory; private files that no planted symlink redirects.

use std::os::unix::fs::PermissionsExt;

use super::*;

/// Another image over `f`'s store: same geometry, other bytes.
fn other_manifest(f: &Fixture) -> Manifest {
    let sizes = [CHUNK, CHUNK, CHUNK, CHUNK, 1000];
    let chunks = (0..sizes.len())
        .map(|i| Some(noise(i as u64 + 100, sizes[i])))
        .collect();
    encrypted_device(&DomainSecret::from_bytes([7; 32]), chunks, |enc| {
        f.store.put(&enc.id, &enc.object).unwrap();
    })
    .0
}

fn open_at(
    f: &Fixture,
    manifest: &Manifest,
    dedicated: DedicatedOptions,
) -> Result<LazyImage, LazyError> {
    LazyImage::open(
        manifest.clone(),
        f.store.clone(),
        Some(&f.dir.join("dedicated")),
        LazyOptions {
            dedicated,
            ..options(0)
        },
    )
}

#[test]
fn a_written_disk_is_never_reset_for_another_image_without_reset() {
    let f = fixture();
    let lazy = open(&f, true, options(0));
    lazy.write_at(b"guest data", 10).unwrap();
    lazy.flush().unwrap();
    drop(lazy);
    let data = f.dir.join("dedicated").join("data");
    let before = std::fs::read(&data).unwrap();
    // The tag now names another image: its chunk table differs.
    let other = other_manifest(&f);
    let err = open_at(&f, &other, DedicatedOptions::default()).unwrap_err();
    let text = crate::error_chain(&err);
    assert!(text.contains("--reset"), "{text}");
    assert!(text.contains("dedicated"), "{text}");
    assert_eq!(std::fs::read(&data).unwrap(), before, "the disk was kept");
    // The same image still opens, writes intact.
    let lazy = open(&f, true, options(0));
    let mut buf = [0u8; 10];
    lazy.read_exact_at(&mut buf, 10).unwrap();
    assert_eq!(&buf, b"guest data");
    drop(lazy);
    // --reset discards it, says so, and serves the other image.
    let reset = DedicatedOptions {
        reset: true,
        ..DedicatedOptions::default()
    };
    let lazy = open_at(&f, &other, reset).unwrap();
    assert!(matches!(
        lazy.dedicated_state(),
        Some(DedicatedState::Reset { reason }) if reason.contains("--reset")
    ));
    assert_eq!(lazy.dedicated_present(), 0);
}

#[test]
fn a_written_disk_is_pinned_to_its_manifest_digest() {
    let f = fixture();
    let pinned = |name: &[u8]| DedicatedOptions {
        image: Some(manifest::ManifestDigest::of(name)),
        reset: false,
    };
    let lazy = open_at(&f, &f.manifest, pinned(b"image a")).unwrap();
    lazy.write_at(b"x", 0).unwrap();
    drop(lazy);
    // The same chunk table under another digest (say, a re-seal) is still
    // another image to a disk with writes.
    let err = open_at(&f, &f.manifest, pinned(b"image b")).unwrap_err();
    let text = crate::error_chain(&err);
    assert!(
        text.contains(&manifest::ManifestDigest::of(b"image a").to_string()),
        "{text}"
    );
    assert!(text.contains("--reset"), "{text}");
    let lazy = open_at(&f, &f.manifest, pinned(b"image a")).unwrap();
    assert!(matches!(
        lazy.dedicated_state(),
        Some(DedicatedState::Reused { .. })
    ));
}

#[test]
fn an_unwritten_disk_is_a_cache_reset_on_mismatch_and_reported() {
    let f = fixture();
    let lazy = open(&f, true, options(0));
    let mut buf = [0u8; 100];
    lazy.read_exact_at(&mut buf, 0).unwrap();
    drop(lazy);
    let lazy = open_at(&f, &other_manifest(&f), DedicatedOptions::default()).unwrap();
    assert!(matches!(
        lazy.dedicated_state(),
        Some(DedicatedState::Reset { reason }) if reason.contains("another image")
    ));
}

#[test]
fn an_unreadable_bitmap_of_a_written_disk_is_an_error() {
    let f = fixture();
    let lazy = open(&f, true, options(0));
    lazy.write_at(b"x", 0).unwrap();
    drop(lazy);
    std::fs::write(f.dir.join("dedicated").join("present"), b"garbage").unwrap();
    let err = open_at(&f, &f.manifest, DedicatedOptions::default()).unwrap_err();
    assert!(crate::error_chain(&err).contains("bitmap"), "{err}");
}

#[test]
fn a_second_opener_of_the_directory_is_refused_until_the_first_closes() {
    let f = fixture();
    let first = open(&f, true, options(0));
    let dir = f.dir.join("dedicated");
    let err =
        LazyImage::open(f.manifest.clone(), f.store.clone(), Some(&dir), options(0)).unwrap_err();
    let text = crate::error_chain(&err);
    assert!(text.contains("in use"), "{text}");
    assert!(text.contains(&dir.display().to_string()), "{text}");
    drop(first);
    open(&f, true, options(0));
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_directory_and_files_are_private() {
    // The usual umask: files would be 0644 and directories 0755.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let f = fixture();
    let lazy = open(&f, true, options(0));
    lazy.write_at(b"secret", 0).unwrap();
    lazy.flush().unwrap();
    let dir = f.dir.join("dedicated");
    assert_eq!(mode(&dir), 0o700);
    for name in std::fs::read_dir(&dir).unwrap() {
        let path = name.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    for name in ["data", "present"] {
        assert!(dir.join(name).exists(), "{name}");
    }
}

#[test]
fn a_planted_symlink_at_a_temporary_name_is_not_followed() {
    let f = fixture();
    let dir = f.dir.join("dedicated");
    std::fs::create_dir(&dir).unwrap();
    let victim = f.dir.join("victim");
    std::fs::write(&victim, b"do not touch").unwrap();
    // The names the tier used to write through: predictable from the pid.
    let pid = std::process::id();
    for name in [format!(".present.tmp-{pid}"), "data".to_string()] {
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
    }
    let lazy = open(&f, true, options(0));
    lazy.write_at(b"guest", 0).unwrap();
    lazy.flush().unwrap();
    drop(lazy);
    assert_eq!(std::fs::read(&victim).unwrap(), b"do not touch");
    assert!(
        !std::fs::symlink_metadata(dir.join("data"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}
