//! What the imagefs-backed vmm-shim tests share: the imagefs binary to
//! run and the Debian base image to convert.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// This workspace's debug build, which `cargo test --workspace` has just
/// built (a release binary elsewhere could be stale).
pub fn imagefs() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("IMAGEFS_BIN") {
        return Some(p.into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let p = target.join("debug/imagefs");
    p.is_file().then_some(p)
}

/// `oci:LAYOUT:base` when `scripts/build-debian-images.sh` has built it.
pub fn debian_base() -> Option<String> {
    let cache = std::env::var_os("IMAGEFS_CACHE").unwrap_or("/var/cache/imagefs".into());
    let layout = Path::new(&cache).join("debian-images/oci");
    let index = std::fs::read_to_string(layout.join("index.json")).ok()?;
    index
        .contains("\"base\"")
        .then(|| format!("oci:{}:base", layout.display()))
}
