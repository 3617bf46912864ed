//! `imagefs mount` the binary: an image converted into a store mounts by
//! tag, reads lazily through the store, and unmounts cleanly on SIGTERM
//! and on SIGINT (exit status 0, mount gone).
//!
//! Needs root and `/dev/fuse`; says `SKIP: <reason>` and returns without.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use cachetiers::DirStore;
use chunker::convert::{ConvertOptions, convert};
use chunker::ext4::Ext4Options;
use chunker::flatten::FlattenOptions;
use chunker::oci::ImageSource;
use manifest::LocalKeyProvider;
use tempfile::TempDir;
use tests::harness;
use tests::imagegen::{Entry, Image, Layer};

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A store holding one converted image under the tag `t`.
fn store() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let image = Image::new(vec![Layer::new(vec![
        Entry::file("etc/hostname", "imagefs\n"),
        Entry::file("data/blob", pattern(900_000)),
        Entry::symlink("data/link", "blob"),
    ])]);
    let layout = dir.path().join("oci");
    image.write_oci_layout(&layout, "t").unwrap();
    let src: ImageSource = format!("oci:{}:t", layout.display()).parse().unwrap();
    let store = DirStore::create(dir.path().join("store")).unwrap();
    let keys = LocalKeyProvider::create(dir.path().join("keys")).unwrap();
    let opts = ConvertOptions {
        flatten: FlattenOptions {
            ext4: Ext4Options {
                chunk_size: 64 * 1024,
                free_bytes: 1 << 20,
                spare_inodes: 16,
            },
        },
        domain: "default".into(),
        threads: 2,
        tag: Some("t".into()),
        progress: false,
    };
    convert(&src, &store, &keys, &opts).expect("convert");
    dir
}

fn is_mounted(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = dir.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

/// The running `imagefs mount`; killed and the mount detached on drop if
/// the test did not end them.
struct Running {
    child: Child,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Starts `imagefs mount t DIR [extra]` and waits for its "mounted" line;
/// `None` after a SKIP line when FUSE is not available.
fn start(store: &Path, dir: &Path, extra: &[&str]) -> Option<Running> {
    if !Path::new("/dev/fuse").exists() {
        harness::skip("/dev/fuse does not exist");
        return None;
    }
    if !harness::require_root("mounting FUSE") {
        return None;
    }
    let child = Command::new(env!("CARGO_BIN_EXE_imagefs"))
        .arg("mount")
        .arg("t")
        .arg(dir)
        .args(extra)
        .arg("--store")
        .arg(store.join("store"))
        .arg("--keys")
        .arg(store.join("keys"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running {
        child,
        dir: dir.to_path_buf(),
    };
    let mut line = String::new();
    BufReader::new(running.child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if !line.starts_with("mounted sha256:") {
        let status = running.child.wait().unwrap();
        let mut err = String::new();
        running
            .child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        if err.contains("Permission denied") || err.contains("Operation not permitted") {
            harness::skip(&format!("FUSE mount not permitted here: {err}"));
            return None;
        }
        panic!("imagefs mount did not come up ({status}): {line}{err}");
    }
    assert!(is_mounted(dir), "{} is not in mountinfo", dir.display());
    Some(running)
}

/// Sends `signal`, waits for a clean exit and returns what went to stderr.
fn stop_with(running: Running, signal: &str) -> String {
    let pid = running.child.id().to_string();
    let ok = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(ok.success(), "kill {signal} {pid}");
    wait_clean(running, signal)
}

/// Waits for a clean exit (status 0, mount gone) and returns what went to
/// stderr.
fn wait_clean(mut running: Running, after: &str) -> String {
    let status = running.child.wait().unwrap();
    let mut err = String::new();
    running
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "imagefs mount exited with {status}: {err}"
    );
    assert!(!is_mounted(&running.dir), "still mounted after {after}");
    err
}

#[test]
fn mount_by_tag_reads_lazily_and_unmounts_on_sigterm() {
    let s = store();
    let dir = s.path().join("mnt");
    fs::create_dir(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let Some(running) = start(s.path(), &dir, &[]) else {
        return;
    };
    assert_eq!(
        fs::read_to_string(dir.join("etc/hostname")).unwrap(),
        "imagefs\n"
    );
    assert_eq!(fs::read(dir.join("data/blob")).unwrap(), pattern(900_000));
    assert_eq!(
        fs::read_link(dir.join("data/link")).unwrap(),
        Path::new("blob")
    );
    stop_with(running, "-TERM");
}

#[test]
fn raw_mount_unmounts_on_sigint() {
    let s = store();
    let dir = s.path().join("raw");
    fs::create_dir(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let Some(running) = start(s.path(), &dir, &["--raw"]) else {
        return;
    };
    let disk = fs::read(dir.join("disk.img")).unwrap();
    // The ext4 magic at offset 1080.
    assert_eq!(&disk[1080..1082], &[0x53, 0xEF]);
    stop_with(running, "-INT");
}

#[test]
fn an_external_umount_ends_the_process_cleanly() {
    let s = store();
    let dir = s.path().join("ext");
    fs::create_dir(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let Some(running) = start(s.path(), &dir, &[]) else {
        return;
    };
    let (ok, out) = harness::run(Command::new("umount").arg(&dir));
    assert!(ok, "umount {}: {out}", dir.display());
    let err = wait_clean(running, "umount");
    assert!(err.contains("unmounted from outside"), "stderr: {err}");
}

#[test]
fn a_chunk_missing_from_the_store_is_eio_with_a_log_line_naming_it() {
    let s = store();
    let dir = s.path().join("eio");
    fs::create_dir(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let Some(running) = start(s.path(), &dir, &[]) else {
        return;
    };
    // The metadata is read; then every chunk object goes away.
    assert_eq!(fs::metadata(dir.join("data/blob")).unwrap().len(), 900_000);
    fs::remove_dir_all(s.path().join("store/chunks")).unwrap();
    let err = fs::read(dir.join("data/blob")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(5), "EIO expected, got {err}");
    let log = stop_with(running, "-TERM");
    let line = log
        .lines()
        .find(|l| l.contains("/data/blob"))
        .unwrap_or_else(|| panic!("no log line naming the file: {log}"));
    assert!(
        line.contains("chunk") && line.contains("not in the store"),
        "log line does not name the chunk and the tiers: {line}"
    );
}
