//! Shared by the benchmarks: where the real Debian images are.

use std::io::{self, Read};
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

/// Reads every file under `dir`, so that a timed run finds its source in
/// the page cache whatever the host's memory reclaim (DAMON's pageout, on
/// this VM) took meanwhile: the runs compared then differ in what they
/// do, not in which of them waited for the disk.
pub fn warm(dir: &Path) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            warm(&entry.path())?;
        } else if kind.is_file() {
            let mut file = std::fs::File::open(entry.path())?;
            while file.read(&mut buf)? > 0 {}
        }
    }
    Ok(())
}
