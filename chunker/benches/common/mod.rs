//! Shared by the benchmarks: where the real Debian images are.

use std::path::{Path, PathBuf};

/// The OCI layout `scripts/build-debian-images.sh` builds (tags `base`,
/// `python`, `node`), or `$IMAGEFS_DEBIAN_OCI`.
pub fn layout_dir() -> PathBuf {
    if let Ok(p) = std::env::var("IMAGEFS_DEBIAN_OCI") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("IMAGEFS_CACHE").unwrap_or_else(|_| "/var/cache/imagefs".into());
    Path::new(&cache).join("debian-images/oci")
}
