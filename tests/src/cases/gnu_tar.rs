//! Cases made by GNU tar itself rather than the generator: its sparse
//! encodings and a whole tree archived with its own choices of headers.

use super::{Case, Expect, capability, pattern, set};
use crate::imagegen::{Compression, Image, Layer};
use crate::treecheck::FileKind;

/// Runs of a sparse test file: (offset, data) written into a file of
/// [`GNU_SPARSE_SIZE`] bytes; everything else is a hole.
pub fn gnu_sparse_runs() -> Vec<(u64, Vec<u8>)> {
    vec![
        (1 << 20, pattern(5000, 11)),
        (7 << 20, pattern(8192, 12)),
        (GNU_SPARSE_SIZE - 100, pattern(100, 13)),
    ]
}

/// Size of the file that [`gnu_tar_sparse`] archives.
pub const GNU_SPARSE_SIZE: u64 = 10 << 20;

/// A one-layer image made by GNU tar with `--sparse` and the given format
/// options (`--format=gnu`, or `--format=posix --sparse-version=X`): GNU
/// tar's own sparse encodings (old GNU headers, PAX 0.0, 0.1, 1.0). `work`
/// holds the file tree tar reads.
pub fn gnu_tar_sparse(work: &std::path::Path, format_args: &[&str]) -> std::io::Result<Case> {
    use std::io::{Seek, SeekFrom, Write};
    let root = work.join("sparse-src");
    std::fs::create_dir_all(&root)?;
    let mut f = std::fs::File::create(root.join("holes"))?;
    f.set_len(GNU_SPARSE_SIZE)?;
    for (off, data) in gnu_sparse_runs() {
        f.seek(SeekFrom::Start(off))?;
        f.write_all(&data)?;
    }
    drop(f);
    std::fs::write(root.join("plain"), b"not sparse")?;
    let out = std::process::Command::new("tar")
        .args([
            "--sparse",
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            "--mtime=@1600000000",
        ])
        .args(format_args)
        .arg("-C")
        .arg(&root)
        .args(["-cf", "-", "holes", "plain"])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let mut layer = Layer::new(Vec::new());
    layer.raw_tar = Some(out.stdout);
    let mut expected = vec![0u8; GNU_SPARSE_SIZE as usize];
    for (off, data) in gnu_sparse_runs() {
        expected[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    Ok(Case {
        name: "gnu-sparse",
        image: Image::new(vec![layer]),
        unspecified: set(&["/"]),
        expect: vec![
            Expect::Content("/holes".into(), expected),
            Expect::Content("/plain".into(), b"not sparse".to_vec()),
        ],
    })
}

/// A one-layer image whose tar GNU tar wrote (`--format=posix --xattrs`)
/// from a real directory tree: `./`-prefixed names, GNU tar's PAX headers
/// (with atime/ctime records), xattrs incl. security.capability, a hard
/// link, a symlink, a FIFO, a device, sub-second mtimes, setuid and sticky
/// bits, big uid/gid. Needs root (mknod, chown, capabilities).
pub fn gnu_tar_tree(work: &std::path::Path) -> std::io::Result<Case> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::process::Command;
    let root = work.join("tree-src");
    let run = |cmd: &mut Command| -> std::io::Result<()> {
        let out = cmd.output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    };
    std::fs::create_dir_all(root.join("etc/sub"))?;
    std::fs::write(root.join("etc/conf"), b"conf")?;
    std::fs::write(root.join("etc/sub/deep"), pattern(70_000, 21))?;
    std::fs::hard_link(root.join("etc/conf"), root.join("etc/conf-link"))?;
    symlink("etc/conf", root.join("link"))?;
    std::fs::write(root.join("ping"), b"\x7fELF ping")?;
    std::fs::set_permissions(root.join("ping"), std::fs::Permissions::from_mode(0o4755))?;
    xattr::set(root.join("ping"), "security.capability", &capability(13))?;
    xattr::set(root.join("etc/conf"), "user.origin", b"gnu tar")?;
    std::fs::create_dir(root.join("tmp"))?;
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    run(Command::new("mkfifo").arg(root.join("fifo")))?;
    run(Command::new("mknod")
        .arg(root.join("null"))
        .args(["c", "1", "3"]))?;
    run(Command::new("chown")
        .arg("3000000:4000000")
        .arg(root.join("etc/sub/deep")))?;
    run(Command::new("touch")
        .args(["-h", "-d", "2021-03-04 05:06:07.123456789 UTC"])
        .arg(root.join("etc/sub/deep")))?;
    let out = Command::new("tar")
        .args([
            "--format=posix",
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
        ])
        .arg("-C")
        .arg(&root)
        .args(["-cf", "-", "."])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let mut layer = Layer::new(Vec::new());
    layer.raw_tar = Some(out.stdout);
    use Expect::*;
    Ok(Case {
        name: "gnu-tar-tree",
        image: Image::new(vec![layer.compressed(Compression::Gzip)]),
        // The root comes from the `./` entry, whose mtime is the work dir's.
        unspecified: set(&["/"]),
        expect: vec![
            Linked(vec!["/etc/conf", "/etc/conf-link"]),
            Xattr("/etc/conf", "user.origin", b"gnu tar".to_vec()),
            Xattr("/ping", "security.capability", capability(13)),
            Mode("/ping", 0o4755),
            Mode("/tmp", 0o1777),
            Kind("/fifo", FileKind::Fifo),
            Rdev("/null", 1, 3),
            Owner("/etc/sub/deep", 3_000_000, 4_000_000),
            Mtime("/etc/sub/deep", 1_614_834_367, 123_456_789),
            Target("/link", b"etc/conf".to_vec()),
        ],
    })
}
