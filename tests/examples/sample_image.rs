//! Writes the sample OCI image that `scripts/demo.sh` converts: two layers,
//! a small base and an app on top of it, built from nothing but this
//! repository (no registry, no network).
//!
//! Usage: `sample_image DIR` writes an OCI layout at DIR with the ref
//! `sample`.

use std::path::PathBuf;
use std::process::ExitCode;

use tests::imagegen::{Compression, Entry, Image, Layer, RunConfig};

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: sample_image DIR");
        return ExitCode::FAILURE;
    };
    let base = Layer::new(vec![
        Entry::dir("etc"),
        Entry::file("etc/os-release", "ID=imagefs-sample\nVERSION_ID=1\n"),
        Entry::file("etc/motd", "built by scripts/demo.sh\n"),
        Entry::file("bin/hello", "#!/bin/sh\necho hello from imagefs\n").mode(0o755),
        Entry::hardlink("bin/hi", "bin/hello"),
        Entry::symlink("bin/greet", "hello"),
        Entry::file("usr/share/doc/README", include_str!("../../README.md")),
        Entry::file(
            "usr/lib/data.bin",
            (0..200_000u32)
                .flat_map(u32::to_le_bytes)
                .collect::<Vec<u8>>(),
        ),
        Entry::char_dev("dev/null", 1, 3).mode(0o666),
        Entry::dir("tmp").mode(0o1777),
    ])
    .compressed(Compression::Gzip);
    let app = Layer::new(vec![
        Entry::whiteout("etc/motd"),
        Entry::file("app/main.sh", "#!/bin/sh\nexec /bin/hello\n").mode(0o755),
        Entry::file("app/ping", "capable\n").mode(0o755).xattr(
            "security.capability",
            [
                1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        ),
    ])
    .compressed(Compression::Zstd);
    let mut image = Image::new(vec![base, app]);
    image.config = RunConfig {
        entrypoint: vec!["/app/main.sh".into()],
        cmd: vec![],
        env: vec!["PATH=/app:/bin".into()],
        working_dir: "/app".into(),
        user: "0:0".into(),
    };
    match image.write_oci_layout(&dir, "sample") {
        Ok(w) => {
            println!("sample image {} at {}", w.manifest, dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sample_image: writing {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
