//! `imagefs mount` the binary: an image converted into a store mounts by
//! tag, reads lazily through the store, shows the same tree, xattrs
//! included, as the kernel's ext4 shows for the exported image, and
//! unmounts cleanly on SIGTERM and on SIGINT (exit status 0, mount gone);
//! with a stored start profile it prefetches the profile's chunks, unless
//! `--prefetch off`; with `--log-format json` and `RUST_LOG=debug` each
//! fetch logs a span naming the image's digest and the chunk index, and no
//! key material.
//!
//! Needs root and `/dev/fuse`; says `SKIP: <reason>` and returns without.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use manifest::report::MountStats;
use tempfile::TempDir;
use tests::cases::{acl_xattr, capability};
use tests::harness::{self, Mount};
use tests::imagegen::{Entry, Image, Layer};
use tests::process;
use tests::treecheck::{Mask, assert_same, list_dir};

mod common;
use common::{ok, open, pattern, store_of, write_trace};

/// A store holding one converted image under the tag `t`.
fn store() -> TempDir {
    store_of(Image::new(vec![Layer::new(vec![
        Entry::file("etc/hostname", "imagefs\n"),
        Entry::file("data/blob", pattern(900_000)),
        Entry::symlink("data/link", "blob"),
    ])]))
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
    process: Option<process::Running>,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.process.take());
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

impl Running {
    fn id(&self) -> u32 {
        self.process.as_ref().map_or(0, process::Running::id)
    }
}

/// Starts `imagefs mount t DIR [extra]` and waits for its "mounted" line;
/// `None` after a SKIP line when FUSE is not available.
fn start(store: &Path, dir: &Path, extra: &[&str]) -> Option<Running> {
    start_with(store, dir, extra, &[])
}

/// [`start`] with environment variables set.
fn start_with(store: &Path, dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Option<Running> {
    if !Path::new("/dev/fuse").exists() {
        harness::skip("/dev/fuse does not exist");
        return None;
    }
    if !harness::require_root("mounting FUSE") {
        return None;
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagefs"));
    cmd.arg("mount")
        .arg("t")
        .arg(dir)
        .args(extra)
        .arg("--store")
        .arg(store.join("store"))
        .arg("--keys")
        .arg(store.join("keys"))
        .envs(env.iter().copied());
    match process::Running::spawn_until(cmd, "mounted sha256:", "imagefs mount") {
        Ok((process, _)) => {
            assert!(is_mounted(dir), "{} is not in mountinfo", dir.display());
            Some(Running {
                process: Some(process),
                dir: dir.to_path_buf(),
            })
        }
        Err(e) if e.contains("Permission denied") || e.contains("Operation not permitted") => {
            harness::skip(&format!("FUSE mount not permitted here: {e}"));
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// Sends `signal`, waits for a clean exit and returns what went to stderr.
fn stop_with(mut running: Running, signal: &str) -> String {
    let p = running.process.take().unwrap();
    let err = p
        .stop(signal)
        .unwrap_or_else(|e| panic!("after {signal}: {e}"));
    assert!(!is_mounted(&running.dir), "still mounted after {signal}");
    err
}

/// Waits for a clean exit (status 0, mount gone) and returns what went to
/// stderr.
fn wait_clean(mut running: Running, after: &str) -> String {
    let p = running.process.take().unwrap();
    let err = p.wait().unwrap_or_else(|e| panic!("after {after}: {e}"));
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

/// Files with every kind of xattr ext4 keeps: user ones with binary
/// values and newlines, an empty one, security.capability, trusted ones,
/// POSIX access and default ACLs (named users and groups too), so many
/// that they spill from the inode into the xattr block, one large value;
/// plus a hard link and devices.
fn xattr_image() -> (Image, Vec<(&'static str, String)>) {
    const U: u32 = u32::MAX;
    let access = acl_xattr(&[
        (1, 6, U),
        (2, 6, 1000),
        (4, 4, U),
        (8, 4, 50),
        (0x10, 6, U),
        (0x20, 0, U),
    ]);
    let default = acl_xattr(&[
        (1, 7, U),
        (2, 7, 1001),
        (4, 5, U),
        (0x10, 7, U),
        (0x20, 5, U),
    ]);
    let dir_access = acl_xattr(&[(1, 7, U), (4, 5, U), (8, 7, 60), (0x10, 7, U), (0x20, 1, U)]);
    let mut many = Entry::file("data/many", "many\n");
    let mut expect = Vec::new();
    for i in 0..40u8 {
        let name = format!("user.many.{i:02}");
        many = many.xattr(&name, pattern(10 + usize::from(i) * 3));
        expect.push(("/data/many", name));
    }
    let entries = vec![
        Entry::file("bin/ping", "ping\n")
            .mode(0o755)
            .xattr("security.capability", capability(13))
            .xattr("trusted.origin", "layer one\n"),
        Entry::hardlink("bin/ping6", "bin/ping"),
        Entry::file("etc/conf", "conf\n")
            .xattr("user.nl", b"a\nb=c\n")
            .xattr("user.bin", [0u8, 1, 2, 255, 10, 13, 0])
            .xattr("user.empty", b""),
        Entry::file("etc/acl", "acl\n")
            .mode(0o660)
            .xattr("system.posix_acl_access", &access),
        Entry::dir("srv/shared")
            .mode(0o2770)
            .xattr("system.posix_acl_default", &default)
            .xattr("system.posix_acl_access", &dir_access)
            .xattr("user.note", "shared dir"),
        Entry::file("data/big", "big\n").xattr("user.big", pattern(3000)),
        many,
        Entry::symlink("data/link", "big").xattr("trusted.link", "on a symlink"),
        Entry::char_dev("dev/null", 1, 3),
        Entry::block_dev("dev/wide", 259, 70000),
    ];
    expect.extend([
        ("/bin/ping", "security.capability".into()),
        ("/bin/ping", "trusted.origin".into()),
        ("/bin/ping6", "security.capability".into()),
        ("/etc/conf", "user.nl".into()),
        ("/etc/conf", "user.bin".into()),
        ("/etc/conf", "user.empty".into()),
        ("/etc/acl", "system.posix_acl_access".into()),
        ("/srv/shared", "system.posix_acl_default".into()),
        ("/srv/shared", "system.posix_acl_access".into()),
        ("/srv/shared", "user.note".into()),
        ("/data/big", "user.big".into()),
        ("/data/link", "trusted.link".into()),
    ]);
    (Image::new(vec![Layer::new(entries)]), expect)
}

#[test]
fn mount_shows_every_xattr_as_the_kernel_does() {
    let (image, expect) = xattr_image();
    let s = store_of(image);
    let dir = s.path().join("xmnt");
    let kdir = s.path().join("kernel");
    fs::create_dir(&dir).unwrap();
    fs::create_dir(&kdir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let Some(running) = start(s.path(), &dir, &[]) else {
        return;
    };
    if !harness::require_tool("mount") {
        return;
    }
    // The kernel reads the exported image: the same bytes, whole.
    let exported = s.path().join("image.ext4");
    let (ok, out) = harness::run(
        Command::new(env!("CARGO_BIN_EXE_imagefs"))
            .args(["export", "t", "--output"])
            .arg(&exported)
            .arg("--store")
            .arg(s.path().join("store"))
            .arg("--keys")
            .arg(s.path().join("keys")),
    );
    assert!(ok, "imagefs export: {out}");
    let Some(kernel) = Mount::loop_mount(&exported, &kdir, true).unwrap() else {
        return;
    };
    let ignore = ["/lost+found"];
    let want = list_dir(kernel.path(), &ignore).unwrap();
    let got = list_dir(&dir, &ignore).unwrap();
    // The reference itself: every xattr the image was made with.
    for (path, name) in &expect {
        assert!(
            want[*path].xattrs.contains_key(name),
            "the kernel does not show {name} on {path}"
        );
    }
    // listxattr and getxattr, path by path.
    let mut differ = Vec::new();
    for (path, k) in &want {
        let f = got.get(path).map(|e| &e.xattrs);
        if f != Some(&k.xattrs) {
            differ.push(format!(
                "{path}: kernel {:?}, imagefs mount {f:?}",
                k.xattrs
            ));
        }
    }
    assert!(differ.is_empty(), "xattrs differ:\n{}", differ.join("\n"));
    // And everything else: devices, the hard link, modes, contents.
    assert_same("kernel", &want, "imagefs mount", &got, &Mask::default());
    stop_with(running, "-TERM");
    kernel.unmount().unwrap();
}

#[test]
fn a_file_the_dedicated_tier_holds_is_passed_through_and_its_copy_removed_at_exit() {
    let s = store();
    let dir = s.path().join("pt");
    let dedicated = s.path().join("dedicated");
    fs::create_dir(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let report = s.path().join("pt-stats.json");
    let flags = [
        "--stats",
        "--dedicated",
        dedicated.to_str().unwrap(),
        "--stats-json",
        report.to_str().unwrap(),
    ];
    let Some(running) = start(s.path(), &dir, &flags) else {
        return;
    };
    let copies = dedicated.join(format!("imagefs-passthrough-{}", running.id()));
    let blob = dir.join("data/blob");
    // The first read fetches the file into the dedicated tier; a later
    // open (once the first one's release has reached the daemon) copies
    // it out and passes it through.
    let mut passed = false;
    for _ in 0..100 {
        assert_eq!(fs::read(&blob).unwrap(), pattern(900_000));
        if fs::read_dir(&copies).unwrap().next().is_some() {
            passed = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(fs::read(&blob).unwrap(), pattern(900_000));
    let err = stop_with(running, "-TERM");
    if err.contains("passthrough off") || err.contains("refused a passthrough") {
        harness::skip(&format!("no FUSE passthrough here: {err}"));
        return;
    }
    assert!(
        passed,
        "no passthrough copy appeared in {}: {err}",
        copies.display()
    );
    let stats: MountStats = serde_json::from_str(&fs::read_to_string(&report).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", report.display()));
    let p = stats
        .passthrough
        .unwrap_or_else(|| panic!("no passthrough in the report: {err}"));
    assert!(
        p.materialized_files == 1 && p.materialized_bytes == 900_000 && p.passthrough_opens > 0,
        "{p:?}"
    );
    assert!(!copies.exists(), "{} left after exit", copies.display());
}

/// Stores a start profile naming the image's first three stored chunks
/// (last first), through `imagefs profile from-trace`; returns how many.
fn store_profile(s: &Path) -> u64 {
    let o = open(s);
    let reads: Vec<(u64, u64)> = o.present[..3]
        .iter()
        .rev()
        .enumerate()
        .map(|(n, &c)| (c, n as u64))
        .collect();
    let trace = s.join("start.jsonl");
    write_trace(&trace, &o, &reads);
    ok(s, &["profile", "from-trace", "t", trace.to_str().unwrap()]);
    reads.len() as u64
}

#[test]
fn mount_prefetches_the_stored_profile_unless_off() {
    let s = store();
    let chunks = store_profile(s.path());
    assert_eq!(chunks, 3);
    let dir = s.path().join("mnt");
    fs::create_dir(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let json = s.path().join("mount.json");
    let dedicated = s.path().join("dedicated");
    let args = |mode: &'static str| {
        vec![
            "--prefetch".to_string(),
            mode.to_string(),
            "--readahead".to_string(),
            "0".to_string(),
            "--stats-json".to_string(),
            json.to_str().unwrap().to_string(),
            "--dedicated".to_string(),
            dedicated.to_str().unwrap().to_string(),
        ]
    };
    let auto = args("auto");
    let auto: Vec<&str> = auto.iter().map(String::as_str).collect();
    let Some(running) = start(s.path(), &dir, &auto) else {
        return;
    };
    assert_eq!(fs::read(dir.join("data/blob")).unwrap(), pattern(900_000));
    stop_with(running, "-TERM");
    let report: MountStats = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    let p = report.prefetch.expect("a prefetch report");
    assert_eq!(p.queued, chunks, "{p:?}");
    assert_eq!(p.errors, 0, "{p:?}");
    if !p.stopped {
        assert_eq!(p.prefetched + p.skipped, chunks, "{p:?}");
    }
    assert!(p.used <= p.prefetched, "{p:?}");

    // off: no prefetch, even with the profile stored.
    let _ = fs::remove_dir_all(&dedicated);
    let off = args("off");
    let off: Vec<&str> = off.iter().map(String::as_str).collect();
    let running = start(s.path(), &dir, &off).expect("mounted before");
    assert_eq!(fs::read(dir.join("data/blob")).unwrap(), pattern(900_000));
    stop_with(running, "-TERM");
    let report: MountStats = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    assert_eq!(report.prefetch, None);
}

/// Every secret of the store made by [`store`] in the forms a log could
/// carry it (hex either case, base64): the master keys, the domain
/// secrets and every chunk key.
fn secrets(s: &Path) -> Vec<String> {
    use base64::Engine;
    let mut raw: Vec<Vec<u8>> = Vec::new();
    for sub in ["keys/master", "keys/domains"] {
        for e in fs::read_dir(s.join(sub)).unwrap() {
            raw.push(fs::read(e.unwrap().path()).unwrap());
        }
    }
    for c in &open(s).image.manifest.chunks {
        if let manifest::ChunkEntry::Present { key, .. } = c {
            raw.push(key.as_bytes().to_vec());
        }
    }
    assert!(raw.len() > 2, "no secrets found");
    raw.iter()
        .flat_map(|b| {
            let h = hex::encode(b);
            [
                h.to_uppercase(),
                h,
                base64::engine::general_purpose::STANDARD.encode(b),
            ]
        })
        .collect()
}

#[test]
fn json_logs_have_a_span_per_fetch_naming_image_and_chunk_and_no_secrets() {
    let s = store();
    let dir = s.path().join("logs");
    fs::create_dir(&dir).unwrap();
    let dir = fs::canonicalize(&dir).unwrap();
    let env = [("RUST_LOG", "debug")];
    let Some(running) = start_with(
        s.path(),
        &dir,
        &["--log-format", "json", "--prefetch", "off"],
        &env,
    ) else {
        return;
    };
    assert_eq!(fs::read(dir.join("data/blob")).unwrap(), pattern(900_000));
    let err = stop_with(running, "-TERM");
    let digest = open(s.path()).image.digest.to_string();
    // The JSON lines (the exit report after them is a human table).
    let events: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let fetches: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["span"]["name"] == "fetch")
        .collect();
    assert!(!fetches.is_empty(), "no event in a fetch span:\n{err}");
    let mut chunks = std::collections::BTreeSet::new();
    for e in &fetches {
        assert_eq!(e["span"]["image"], digest.as_str(), "{e}");
        chunks.insert(e["span"]["chunk"].as_u64().expect("a chunk index"));
    }
    // The blob spans many 64 KiB chunks; each fetch said which.
    assert!(chunks.len() > 5, "{chunks:?}");
    // The tier that answered logged inside the fetch's span.
    assert!(
        fetches.iter().any(|e| e["fields"]["message"] == "hit"),
        "{err}"
    );
    for secret in secrets(s.path()) {
        assert!(!err.contains(&secret), "a key is in the log");
    }

    // RUST_LOG=warn: no debug or info events at all.
    let env = [("RUST_LOG", "warn")];
    let Some(running) = start_with(s.path(), &dir, &["--log-format", "json"], &env) else {
        return;
    };
    assert_eq!(fs::read(dir.join("data/blob")).unwrap(), pattern(900_000));
    let err = stop_with(running, "-TERM");
    for l in err.lines().filter(|l| l.starts_with('{')) {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(e["level"] == "WARN" || e["level"] == "ERROR", "{l}");
    }
}
