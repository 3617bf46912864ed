//! Hostile layers: each one ends with a clear error (or, where the layer is
//! legal, a result) in bounded time and memory, leaves no output behind and
//! never panics.
//!
//! Each case runs in a child process (this test binary, re-executed with
//! `HOSTILE_CASE` set) under `ulimit -v`, so a panic, a stack overflow or
//! runaway memory fails the case instead of the whole run (or the machine),
//! and its peak memory (VmHWM) is its own. The parent kills a child that
//! does not finish within [`HANG_GUARD`].

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chunker::flatten::{
    FlattenError, FlattenOptions, FlattenReport, flatten_into, flatten_to_file,
};
use chunker::oci::testimg::{TarWriter, TestImage, TestLayer, header, noise};
use chunker::oci::{Digest, ImageSource};
use chunker::sink::VecSink;

/// A case that runs longer than this is hung (a guard, not a speed claim).
const HANG_GUARD: Duration = Duration::from_secs(60);
/// Address space a child may use, in KiB.
const CHILD_VM_KIB: u64 = 3 << 20;

/// Peak resident memory of this process in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What a child reports: its output lines and its peak memory growth.
struct ChildReport {
    lines: Vec<String>,
    growth_mib: u64,
}

/// Run `case` in a child process (see the module doc); `name` is the test
/// calling this. In the child, this calls `case` and returns `None`; in the
/// parent, it returns what the child said.
fn isolated(name: &str, case: fn() -> String) -> Option<ChildReport> {
    if std::env::var("HOSTILE_CASE").as_deref() == Ok(name) {
        let before = vm_hwm_kib();
        let out = case();
        let after = vm_hwm_kib();
        println!("\nCASE-RESULT {}", out.replace('\n', " | "));
        println!("\nCASE-GROWTH-KIB {}", after.saturating_sub(before));
        return None;
    }
    if !Path::new("/proc/self/status").exists() {
        println!("SKIP: no /proc/self/status to measure memory");
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    let start = Instant::now();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {CHILD_VM_KIB}; exec \"$0\" \"$@\""))
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("HOSTILE_CASE", name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > HANG_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name}: still running after {HANG_GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success(),
        "{name}: the child failed ({status}):\n{stdout}\n{stderr}"
    );
    let lines: Vec<String> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CASE-RESULT ").map(str::to_owned))
        .collect();
    let growth_kib: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CASE-GROWTH-KIB "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name}: no memory figure:\n{stdout}\n{stderr}"));
    assert!(!lines.is_empty(), "{name}: no result:\n{stdout}\n{stderr}");
    Some(ChildReport {
        lines,
        growth_mib: growth_kib >> 10,
    })
}

/// `layers` written as a layout and flattened into a file in a fresh
/// directory: the result, the layers' digests and what was left in the
/// output directory.
fn flatten_layers(layers: Vec<TestLayer>, opts: &FlattenOptions) -> Flattened {
    let src = tempfile::tempdir().unwrap();
    let written = TestImage::new(layers).write_layout(src.path(), "t");
    let out = tempfile::tempdir().unwrap();
    let source = ImageSource::OciLayout {
        dir: src.path().to_owned(),
        reference: None,
    };
    let result = flatten_to_file(&source, &out.path().join("disk.img"), opts);
    // A file is written in order; a sink that takes detached layers gets
    // the layers parsed at once and applied afterwards, and must end the
    // same way: the same report, or the same error.
    let detached = flatten_into(&source, VecSink::default(), opts);
    match (&result, &detached) {
        (Ok(a), Ok((_, b))) => assert_eq!(a, b, "detached: another report"),
        (Err(a), Err(b)) => assert_eq!(chain(a), chain(b), "detached: another error"),
        (a, b) => panic!(
            "in order: {:?}; detached: {:?}",
            a.as_ref().map(|_| ()).map_err(chain),
            b.as_ref().map(|_| ()).map_err(chain)
        ),
    }
    let left = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    Flattened {
        result,
        layers: written.layers,
        left,
    }
}

struct Flattened {
    result: Result<FlattenReport, FlattenError>,
    layers: Vec<Digest>,
    left: Vec<std::ffi::OsString>,
}

/// Flatten `layers`, which must fail: the error's whole chain as text,
/// after checking nothing was left in the output directory.
fn flatten_err(layers: Vec<TestLayer>, opts: &FlattenOptions) -> String {
    let f = flatten_layers(layers, opts);
    let err = match f.result {
        Ok(r) => panic!("flattening succeeded: {:?}", r.ext4),
        Err(e) => e,
    };
    assert!(f.left.is_empty(), "output left behind: {:?}", f.left);
    let text = chain(&err);
    // Every error names the layer it came from.
    assert!(f.layers.iter().any(|l| text.contains(l.as_str())), "{text}");
    text
}

fn chain(err: &FlattenError) -> String {
    let mut text = err.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(err);
    while let Some(e) = cur {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cur = e.source();
    }
    text
}

fn gz(t: &TarWriter) -> TestLayer {
    TestLayer::new(t.finish(), chunker::oci::Compression::Gzip)
}

/// A ustar header whose name is `name`, as an owned block.
fn raw_header(name: &[u8], kind: u8, size: u64) -> [u8; 512] {
    let mut h = header(name, tar::EntryType::new(kind), 0o644, size);
    h.set_cksum();
    let mut b = [0u8; 512];
    b.copy_from_slice(h.as_bytes());
    b
}

fn link_to_own_parent_case() -> String {
    let mut out = Vec::new();
    for (dir, file, link) in [("d/", "d/f", "d"), ("a/b/", "a/b/f", "a")] {
        let mut t = TarWriter::new();
        t.dir(dir).file(file, b"data").hardlink(link, file);
        let text = flatten_err(vec![gz(&t)], &FlattenOptions::default());
        out.push(text);
    }
    out.join("\n")
}

#[test]
fn link_to_own_parent_is_refused() {
    let Some(r) = isolated("link_to_own_parent_is_refused", link_to_own_parent_case) else {
        return;
    };
    for (line, entry) in r.lines.iter().zip(["d", "a"]) {
        assert!(line.contains(&format!("entry {entry:?}")), "{line}");
        assert!(line.contains("would remove its own target"), "{line}");
    }
}

fn huge_path_case() -> String {
    // 20,000 components, 40 KB of path, in a PAX record.
    let path = "a/".repeat(20_000) + "f";
    let mut t = TarWriter::new();
    t.pax(&[("path", path.as_bytes())]).file("short", b"x");
    flatten_err(vec![gz(&t)], &FlattenOptions::default())
}

#[test]
fn huge_pax_path_is_refused() {
    let Some(r) = isolated("huge_pax_path_is_refused", huge_path_case) else {
        return;
    };
    let line = &r.lines[0];
    assert!(line.contains("entry \"a/a/a/"), "{line}");
    assert!(line.contains("path of 40001 bytes"), "{line}");
    assert!(r.growth_mib < 64, "{} MiB", r.growth_mib);
}

fn many_deep_paths_case() -> String {
    // Paths at the caps (256 components of 15 bytes), each in a new top
    // directory, so every entry adds a whole new chain.
    let mut t = TarWriter::new();
    for i in 0..400 {
        let mut path = format!("{i:015}");
        for _ in 1..255 {
            path.push_str("/ccccccccccccccc");
        }
        path.push_str("/f");
        assert!(path.len() <= 4096);
        t.pax(&[("path", path.as_bytes())]).file("x", b"1");
    }
    // An opaque marker at the root of a second layer prunes everything.
    let mut t2 = TarWriter::new();
    t2.file(".wh..wh..opq", b"");
    let r = flatten_layers(vec![gz(&t), gz(&t2)], &FlattenOptions::default())
        .result
        .unwrap();
    format!("entries {}", r.layers[0].entries)
}

#[test]
fn deep_paths_cost_linear_memory() {
    let Some(r) = isolated("deep_paths_cost_linear_memory", many_deep_paths_case) else {
        return;
    };
    assert_eq!(r.lines[0], "entries 400");
    // The tree itself is ~100k directories; marking paths by prefix cost
    // ~1.7 MB an entry (700 MB here).
    assert!(r.growth_mib < 300, "{} MiB", r.growth_mib);
}

/// A layer whose first header is an extension of `kind` claiming `size`
/// bytes (all of them there, and compressible).
fn huge_extension_layer(kind: u8, size: u64) -> TestLayer {
    TestLayer::precompressed(|w| {
        w.write_all(&raw_header(b"PaxHeaders/big", kind, size))
            .unwrap();
        // One valid record (PAX) or one name (GNU), mostly filler.
        let prefix = if kind == b'x' {
            format!("{size} comment=")
        } else {
            String::new()
        };
        w.write_all(prefix.as_bytes()).unwrap();
        let block = [b'a'; 1 << 16];
        let mut left = size - prefix.len() as u64 - 1;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            w.write_all(&block[..n]).unwrap();
            left -= n as u64;
        }
        w.write_all(if kind == b'x' { b"\n" } else { b"\0" })
            .unwrap();
        let pad = (512 - size % 512) % 512;
        w.write_all(&vec![0u8; pad as usize]).unwrap();
        w.write_all(&raw_header(b"f", b'0', 0)).unwrap();
        w.write_all(&[0u8; 1024]).unwrap();
    })
}

fn huge_headers_case() -> String {
    let mut out = Vec::new();
    for kind in [b'x', b'L', b'K'] {
        out.push(flatten_err(
            vec![huge_extension_layer(kind, 300 << 20)],
            &FlattenOptions::default(),
        ));
    }
    out.join("\n")
}

#[test]
fn huge_extension_headers_are_refused_unread() {
    let Some(r) = isolated(
        "huge_extension_headers_are_refused_unread",
        huge_headers_case,
    ) else {
        return;
    };
    for line in &r.lines {
        assert!(line.contains("entry \"PaxHeaders/big\""), "{line}");
        assert!(line.contains("header of 314572800 bytes"), "{line}");
    }
    assert!(r.growth_mib < 64, "{} MiB", r.growth_mib);
}

/// A PAX 1.0 sparse file of `real` bytes whose one 512-byte run is at
/// the end.
fn sparse_layer(real: u64) -> TarWriter {
    let mut data = format!("1\n{}\n512\n", real - 512).into_bytes();
    data.resize(512, 0);
    data.extend_from_slice(&[7u8; 512]);
    let mut t = TarWriter::new();
    let real_s = real.to_string();
    t.pax(&[
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", b"sparse"),
        ("GNU.sparse.realsize", real_s.as_bytes()),
    ]);
    let h = header(
        b"GNUSparseFile.0/sparse",
        tar::EntryType::Regular,
        0o644,
        data.len() as u64,
    );
    t.raw(h, &data);
    t
}

fn sparse_huge_case() -> String {
    flatten_err(vec![gz(&sparse_layer(1 << 62))], &FlattenOptions::default())
}

#[test]
fn sparse_real_size_past_ext4_limit_is_refused() {
    let Some(r) = isolated(
        "sparse_real_size_past_ext4_limit_is_refused",
        sparse_huge_case,
    ) else {
        return;
    };
    let line = &r.lines[0];
    assert!(line.contains("entry \"GNUSparseFile.0/sparse\""), "{line}");
    assert!(line.contains("4611686018427387904"), "{line}");
}

fn sparse_tib_case() -> String {
    // One TiB of holes: legal, and must not be scanned.
    let r = flatten_layers(vec![gz(&sparse_layer(1 << 40))], &FlattenOptions::default())
        .result
        .unwrap();
    format!("ok {} blocks", r.ext4.size / 4096)
}

#[test]
fn sparse_holes_are_skipped_not_scanned() {
    let Some(r) = isolated("sparse_holes_are_skipped_not_scanned", sparse_tib_case) else {
        return;
    };
    assert!(r.lines[0].starts_with("ok "), "{}", r.lines[0]);
}

fn limited(f: impl FnOnce(&mut chunker::flatten::Limits)) -> FlattenOptions {
    let mut opts = FlattenOptions::default();
    f(&mut opts.limits);
    opts
}

#[test]
fn layer_and_image_byte_limits_name_the_entry() {
    let mut t = TarWriter::new();
    t.file("small", b"x").file("big", &noise(1, 2 << 20));
    let text = flatten_err(vec![gz(&t)], &limited(|l| l.max_layer_bytes = 1 << 20));
    assert!(text.contains("entry \"big\""), "{text}");
    assert!(
        text.contains("more than 1048576 uncompressed bytes (the layer limit)"),
        "{text}"
    );

    let mut a = TarWriter::new();
    a.file("one", &noise(2, 700 << 10));
    let mut b = TarWriter::new();
    b.file("two", &noise(3, 700 << 10));
    let text = flatten_err(
        vec![gz(&a), gz(&b)],
        &limited(|l| l.max_image_bytes = 1 << 20),
    );
    assert!(text.contains("entry \"two\""), "{text}");
    assert!(text.contains("(the image limit)"), "{text}");

    // Bytes after the end of the archive count too (they are hashed).
    let mut tail = TarWriter::new().file("f", b"x").finish();
    tail.extend(noise(4, 2 << 20));
    let text = flatten_err(
        vec![TestLayer::new(tail, chunker::oci::Compression::Gzip)],
        &limited(|l| l.max_layer_bytes = 1 << 20),
    );
    assert!(text.contains("(the layer limit)"), "{text}");
}

/// The image limit, which depends on the layers below, passed at each
/// place a layer's bytes can pass it: in a header, in a file's data, in
/// the blocks that end the tar, and after them. A layer read detached
/// (before the layers below are done) gets it applied afterwards, and
/// must fail as the in-order flattener does (`flatten_layers` compares).
#[test]
fn the_image_limit_fails_a_detached_layer_where_it_fails_in_order() {
    let mut a = TarWriter::new();
    a.file("base", &noise(5, 600 << 10));
    let a_len = a.finish().len() as u64;
    let mut b = TarWriter::new();
    b.dir("d")
        .file("d/one", &noise(6, 10_000))
        .file("d/two", &noise(7, 10_000))
        .file("d/three", &noise(8, 10_000));
    let b_tar = b.finish();
    let mut b_tail = b_tar.clone();
    b_tail.extend(noise(9, 4096));
    // Where b's headers and data end: 512-byte headers, padded data.
    let hdr = 512u64;
    let padded = 10_240u64;
    let ends = [
        ("in the header of d/one", hdr + 100, "entry \"d\""),
        ("in the data of d/one", 2 * hdr + 100, "entry \"d/one\""),
        (
            "in the header of d/two",
            2 * hdr + padded + 100,
            "entry \"d/one\"",
        ),
        (
            "in the blocks that end the tar",
            4 * hdr + 3 * padded + 100,
            "entry \"d/three\"",
        ),
    ];
    for (what, into_b, names) in ends {
        let limit = a_len + into_b;
        let text = flatten_err(
            vec![
                gz(&a),
                TestLayer::new(b_tar.clone(), chunker::oci::Compression::Gzip),
            ],
            &limited(|l| l.max_image_bytes = limit),
        );
        assert!(text.contains(names), "{what}: {text}");
        assert!(text.contains("(the image limit)"), "{what}: {text}");
    }
    // Past the tar's end, in what is read for the digests only.
    let limit = a_len + b_tar.len() as u64 + 100;
    let text = flatten_err(
        vec![
            gz(&a),
            TestLayer::new(b_tail, chunker::oci::Compression::Gzip),
        ],
        &limited(|l| l.max_image_bytes = limit),
    );
    assert!(text.contains("(the image limit)"), "after the tar: {text}");
    // Exactly at the limit is fine.
    let mut c = TarWriter::new();
    c.file("c", b"x");
    let c_tar = c.finish();
    let limit = a_len + c_tar.len() as u64;
    let opts = limited(|l| l.max_image_bytes = limit);
    let f = flatten_layers(
        vec![
            gz(&a),
            TestLayer::new(c_tar, chunker::oci::Compression::Gzip),
        ],
        &opts,
    );
    assert!(f.result.is_ok(), "at the limit: {:?}", f.result.err());
}

#[test]
fn path_limits_are_configurable_and_checked_after_symlinks() {
    // 11 components: over a depth limit of 10.
    let mut t = TarWriter::new();
    t.file("a/b/c/d/e/f/g/h/i/j/k", b"x");
    let text = flatten_err(vec![gz(&t)], &limited(|l| l.max_depth = 10));
    assert!(
        text.contains("path of 11 components is over the limit of 10"),
        "{text}"
    );
    // A symlink that leads deeper than the limit: `l/x` is 2 components
    // as written, 10 once `l` is followed.
    let mut t = TarWriter::new();
    t.dir("a/b/c/d/e/f/g/h/i/")
        .symlink("l", "a/b/c/d/e/f/g/h/i")
        .file("l/x", b"x");
    let text = flatten_err(vec![gz(&t)], &limited(|l| l.max_depth = 9));
    assert!(text.contains("entry \"l/x\""), "{text}");
    assert!(text.contains("path of 10 components"), "{text}");
}

#[test]
fn failed_convert_leaves_no_manifest_or_tag() {
    let src = tempfile::tempdir().unwrap();
    let mut t = TarWriter::new();
    t.dir("d/")
        .file("d/f", &noise(5, 300 << 10))
        .hardlink("d", "d/f");
    TestImage::new(vec![gz(&t)]).write_layout(src.path(), "t");
    let store_dir = tempfile::tempdir().unwrap();
    let store = cachetiers::DirStore::create(store_dir.path().join("store")).unwrap();
    let keys = manifest::LocalKeyProvider::create(store_dir.path().join("keys")).unwrap();
    let opts = chunker::convert::ConvertOptions {
        tag: Some("hostile".into()),
        threads: 1,
        ..Default::default()
    };
    let source = ImageSource::OciLayout {
        dir: src.path().to_owned(),
        reference: None,
    };
    let err = chunker::convert::convert(&source, &store, &keys, &opts).unwrap_err();
    assert!(err.to_string().contains("entry \"d\""), "{err}");
    assert!(store.tags(&opts.domain).unwrap().is_empty());
    let manifests = store_dir.path().join("store/manifests");
    let count = std::fs::read_dir(&manifests).map_or(0, |d| d.count());
    assert_eq!(count, 0, "a manifest was stored");
}
