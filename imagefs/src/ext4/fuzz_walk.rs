//! The fuzzing walk ([`super::fuzzing::walk`]) over a converted image:
//! it sees the whole tree without errors, and the `ext4_read` fuzz
//! target's seeds come from here (`IMAGEFS_FUZZ_SEEDS=DIR`).

use super::fuzzing::walk;
use super::tests::{flatten, sample};

#[test]
fn the_walk_sees_a_converted_image_whole() {
    let (image, want) = sample();
    let bytes = flatten(&image);
    if let Some(dir) = std::env::var_os("IMAGEFS_FUZZ_SEEDS") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sample.ext4"), &bytes).unwrap();
    }
    let walked = walk(bytes.clone()).unwrap();
    let xattrs: usize = want.values().map(Vec::len).sum();
    // Nothing in our own image is an error, and both symlinks are read.
    assert_eq!((walked.errors, walked.links), (0, 2), "{walked:?}");
    assert!(walked.xattrs >= xattrs, "{walked:?}");
    // Root, lost+found, bin, dev, etc, shared, 8 files and nodes (the
    // hard link is one), 2 symlinks.
    assert_eq!(walked.inodes, 16, "{walked:?}");
    // Every inode but the root has an entry, and the hard link one more.
    assert_eq!(walked.entries, walked.inodes, "{walked:?}");
    assert!(walked.file_bytes > 0, "{walked:?}");
    // Walking twice gives the same (nothing depends on earlier inputs).
    assert_eq!(walk(bytes).unwrap(), walked);
}

#[test]
fn the_walk_refuses_what_is_not_ext4() {
    assert!(walk(Vec::new()).is_err());
    assert!(walk(vec![0; 4096]).is_err());
}
