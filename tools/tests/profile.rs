//! `imagefs profile` and `imagefs serve --record-profile`, the binary, on
//! a converted image in a directory store: profiles derived from traces
//! are written to files, merged (union, median first access) into the
//! origin, shown as text and JSON, loaded back as a prefetch order, and
//! removed; a foreign profile file is refused; and a serve that records
//! but is never read from stores nothing and says so. `serve` prefetches
//! the stored profile's chunks (`--prefetch auto`), not with
//! `--prefetch off`, and starts without prefetch, after one line, when the
//! profile is missing or corrupt.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use manifest::profile::ProfileReport;
use manifest::report::ServeStats;
use manifest::{ChunkIndex, LocalKeyProvider};
use tempfile::TempDir;
use tests::imagegen::{Entry, Image, Layer};

mod common;
use common::{fails, ok, open, pattern, store_of, write_trace};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_imagefs"))
}

/// A store holding one converted image under the tag `t`.
fn store() -> TempDir {
    store_of(Image::new(vec![Layer::new(vec![
        Entry::file("etc/hostname", "imagefs\n"),
        Entry::file("data/blob", pattern(600_000)),
    ])]))
}

#[test]
fn traces_merge_into_the_stored_profile_which_shows_loads_and_is_removed() {
    let tmp = store();
    let dir = tmp.path();
    let o = open(dir);
    assert!(o.present.len() >= 4, "{:?}", o.present);
    let [a, b, c, d] = [o.present[0], o.present[1], o.present[2], o.present[3]];
    let (t1, t2) = (dir.join("t1.jsonl"), dir.join("t2.jsonl"));
    write_trace(&t1, &o, &[(a, 0), (c, 10), (b, 40)]);
    write_trace(&t2, &o, &[(a, 0), (b, 20), (c, 30), (d, 50)]);
    let (p1, p2) = (dir.join("run1.prof"), dir.join("run2.prof"));
    let said = ok(
        dir,
        &[
            "profile",
            "from-trace",
            "t",
            t1.to_str().unwrap(),
            "-o",
            p1.to_str().unwrap(),
        ],
    );
    assert!(said.contains("3 chunks, written to"), "{said}");
    ok(
        dir,
        &[
            "profile",
            "from-trace",
            "t",
            t2.to_str().unwrap(),
            "-o",
            p2.to_str().unwrap(),
        ],
    );
    // Nothing stored yet.
    let err = fails(dir, &["profile", "show", "t"]);
    assert!(err.contains("has no start profile"), "{err}");

    let said = ok(
        dir,
        &[
            "profile",
            "merge",
            "t",
            p1.to_str().unwrap(),
            p2.to_str().unwrap(),
        ],
    );
    assert!(said.contains("merged 2 runs"), "{said}");
    assert!(said.contains("4 chunks, stored in"), "{said}");

    // Medians (lower middle of two): a 0, c min(10,30)=10, b min(40,20)=20, d 50.
    let json = ok(dir, &["profile", "show", "t", "--json"]);
    let report: ProfileReport = serde_json::from_str(&json).unwrap();
    assert_eq!(report.image, o.image.digest.to_string());
    let got: Vec<(u64, u64)> = report
        .entries
        .iter()
        .map(|e| (e.chunk, e.first_access_us))
        .collect();
    assert_eq!(got, [(a, 0), (c, 10_000), (b, 20_000), (d, 50_000)]);
    let text = ok(dir, &["profile", "show", "t"]);
    assert!(text.contains("4 chunks"), "{text}");
    assert_eq!(text.lines().count(), 5, "{text}");

    // The loader sees the same order.
    let order =
        imagefs::profile::load_profile(&o.store, &o.image.digest, &o.keys, &o.image.manifest);
    assert_eq!(
        order,
        Some(vec![
            ChunkIndex(a),
            ChunkIndex(c),
            ChunkIndex(b),
            ChunkIndex(d)
        ])
    );

    // The stored one merged with a run again.
    let said = ok(
        dir,
        &[
            "profile",
            "merge",
            "t",
            p1.to_str().unwrap(),
            "--with-stored",
        ],
    );
    assert!(said.contains("merged 2 runs"), "{said}");

    let said = ok(dir, &["profile", "rm", "t"]);
    assert!(said.contains("removed"), "{said}");
    let err = fails(dir, &["profile", "rm", "t"]);
    assert!(err.contains("has no start profile"), "{err}");
}

#[test]
fn foreign_profiles_and_traces_are_refused_by_name() {
    let tmp = store();
    let dir = tmp.path();
    let o = open(dir);
    let trace = dir.join("t.jsonl");
    write_trace(&trace, &o, &[(o.present[0], 0)]);
    let prof = dir.join("run.prof");
    ok(
        dir,
        &[
            "profile",
            "from-trace",
            "t",
            trace.to_str().unwrap(),
            "-o",
            prof.to_str().unwrap(),
        ],
    );
    // Another key directory cannot open it (the binary would not get this
    // far: the manifest itself is sealed under the same key).
    let other = tempfile::tempdir().unwrap();
    let other_keys = LocalKeyProvider::create(other.path().join("keys")).unwrap();
    let err =
        imagefs::profile::read_profile_file(&prof, &o.image.digest, &other_keys, &o.image.manifest)
            .unwrap_err();
    let text = imagefs::error_chain(&err);
    assert!(text.contains("foreign"), "{text}");
    assert!(text.contains(&prof.display().to_string()), "{text}");

    // A corrupt file, through the binary.
    let mut bytes = fs::read(&prof).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&prof, bytes).unwrap();
    let err = fails(
        dir,
        &["profile", "show", "t", "--file", prof.to_str().unwrap()],
    );
    assert!(err.contains("failed authentication"), "{err}");
    assert!(err.contains("run.prof"), "{err}");

    // A trace of another image.
    let text =
        fs::read_to_string(&trace)
            .unwrap()
            .replacen(&o.image.digest.to_string(), "sha256:0000", 1);
    fs::write(&trace, text).unwrap();
    let err = fails(
        dir,
        &["profile", "from-trace", "t", trace.to_str().unwrap()],
    );
    assert!(err.contains("recorded from image sha256:0000"), "{err}");

    let err = fails(dir, &["profile", "merge", "t"]);
    assert!(err.contains("nothing to merge"), "{err}");
}

#[test]
fn serve_records_a_profile_flag_checks_and_an_unread_start_stores_nothing() {
    let tmp = store();
    let dir = tmp.path();
    let err = String::from_utf8(
        bin()
            .args([
                "serve",
                "t",
                "--socket",
                "/nonexistent",
                "--record-profile-window",
                "30s",
            ])
            .output()
            .unwrap()
            .stderr,
    )
    .unwrap();
    assert!(err.contains("--record-profile"), "{err}");
    let err = String::from_utf8(
        bin()
            .args([
                "serve",
                "t",
                "--socket",
                "/x",
                "--record-profile",
                "--record-profile-window",
                "30w",
            ])
            .output()
            .unwrap()
            .stderr,
    )
    .unwrap();
    assert!(err.contains("unknown unit `w`"), "{err}");

    let (_, stderr) = serve_once(dir, &["--record-profile"]);
    assert!(stderr.contains("no start profile saved"), "{stderr}");
    assert!(!dir.join("store/profiles").exists());
}

/// Runs `imagefs serve t [extra]` until a frontend connects and leaves,
/// and returns its JSON report and stderr.
fn serve_once(dir: &Path, extra: &[&str]) -> (ServeStats, String) {
    let socket: PathBuf = dir.join("prefetch.sock");
    let json = dir.join("serve.json");
    let _ = fs::remove_file(&json);
    let child = bin()
        .args(["serve", "t", "--socket", socket.to_str().unwrap()])
        .arg("--stats-json")
        .arg(&json)
        .args(extra)
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--keys")
        .arg(dir.join("keys"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&socket) {
            break s;
        }
        assert!(Instant::now() < deadline, "serve never listened");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stream);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let report = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
    (report, stderr)
}

#[test]
fn serve_prefetches_the_stored_profile_unless_off_or_absent() {
    let tmp = store();
    let dir = tmp.path();
    let o = open(dir);
    let order = [o.present[2], o.present[0], o.present[1]];
    let trace = dir.join("t.jsonl");
    write_trace(&trace, &o, &[(order[0], 0), (order[1], 5), (order[2], 9)]);
    let said = ok(
        dir,
        &["profile", "from-trace", "t", trace.to_str().unwrap()],
    );
    assert!(said.contains("3 chunks, stored in"), "{said}");

    // auto (the default): the stored profile's three chunks are queued;
    // whatever the prefetch reached before the frontend left is accounted
    // for, chunk by chunk.
    let (report, stderr) = serve_once(dir, &[]);
    let p = report
        .prefetch
        .unwrap_or_else(|| panic!("no prefetch: {stderr}"));
    assert_eq!(p.queued, 3, "{p:?}");
    assert_eq!(p.errors, 0, "{p:?}");
    assert!(p.prefetched + p.skipped <= 3, "{p:?}");
    if !p.stopped {
        assert_eq!(p.prefetched + p.skipped, 3, "{p:?}");
    }
    assert_eq!(p.used, 0, "no guest read anything: {p:?}");

    // off: the profile is not even read.
    let (report, stderr) = serve_once(dir, &["--prefetch", "off"]);
    assert_eq!(report.prefetch, None, "{stderr}");
    assert!(!stderr.contains("start profile"), "{stderr}");

    // None stored: one line, and a start without prefetch.
    ok(dir, &["profile", "rm", "t"]);
    let (report, stderr) = serve_once(dir, &[]);
    assert_eq!(report.prefetch, None, "{stderr}");
    assert_eq!(
        stderr.matches("no start profile for").count(),
        1,
        "{stderr}"
    );

    // A corrupt one: the same.
    fs::create_dir_all(dir.join("store/profiles")).unwrap();
    fs::write(
        dir.join("store/profiles").join(o.image.digest.to_hex()),
        b"not a sealed profile",
    )
    .unwrap();
    let (report, stderr) = serve_once(dir, &[]);
    assert_eq!(report.prefetch, None, "{stderr}");
    assert!(stderr.contains("ignoring the start profile"), "{stderr}");
}
