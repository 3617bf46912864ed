//! OCI index, image manifest and config parsing: the bytes as each JSON
//! document the sources read, then as a whole OCI layout opened for real
//! (see `chunker::fuzzing::oci_layout` for the input's shape).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::temp_dir().join(format!("imagefs-oci-parse-{}", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    chunker::fuzzing::oci_parse(dir(), data);
});
