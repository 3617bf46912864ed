//! `imagefs key` and `imagefs rewrap`, the binary, on images converted
//! into a directory store: local → local rotation (after `key new`),
//! local → PKCS#11 (a SoftHSM2 token initialised here), and convert +
//! export through the token alone. Re-wrapping keeps digests, tags, start
//! profiles and every chunk byte; a second run does nothing; a run
//! stopped half way (`--limit`) leaves every image readable and the next
//! run finishes; a key retired before its images were re-wrapped gives a
//! clear error naming the image and the key.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use imagefs::images::ImageList;
use imagefs::rewrap::{RewrapOutcome, RewrapReport};
use manifest::keys::pkcs11::testing::{CONF_ENV, SoftHsm, unavailable};
use tests::imagegen::{Entry, Image, Layer, noise};

mod common;
use common::{fails, ok, open, pattern, store_of, write_trace};

/// A store with two images sharing a base layer: `t` (by the library)
/// and `u` (by the binary), and a start profile stored for `t`.
fn two_images() -> tempfile::TempDir {
    let base = || Layer::new(vec![Entry::file("base.bin", noise(1, 300_000))]);
    let tmp = store_of(Image::new(vec![
        base(),
        Layer::new(vec![Entry::file("a.bin", pattern(200_000))]),
    ]));
    let dir = tmp.path();
    let layout = dir.join("oci-u");
    Image::new(vec![
        base(),
        Layer::new(vec![Entry::file("b.bin", noise(3, 100_000))]),
    ])
    .write_oci_layout(&layout, "u")
    .unwrap();
    let src = format!("oci:{}:u", layout.display());
    ok(
        dir,
        &[
            "convert",
            &src,
            "--tag",
            "u",
            "--chunk-size",
            "64K",
            "--free-space",
            "1M",
        ],
    );
    let o = open(dir);
    let trace = dir.join("t.jsonl");
    write_trace(&trace, &o, &[(o.present[0], 0), (o.present[1], 10)]);
    let prof = dir.join("t.prof");
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
    ok(dir, &["profile", "merge", "t", prof.to_str().unwrap()]);
    tmp
}

/// Every file under the store's chunk area, by path (manifests are
/// re-wrapped, profiles re-sealed, tags may be added; chunks may not
/// change).
fn chunk_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, at: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&dir.join("store"), &dir.join("store/chunks"), &mut out);
    out
}

fn exported(dir: &Path, image: &str, extra: &[&str]) -> Vec<u8> {
    let out = dir.join(format!("{image}.img"));
    let mut args = vec!["export", image, "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    ok(dir, &args);
    let bytes = fs::read(&out).unwrap();
    fs::remove_file(&out).unwrap();
    bytes
}

fn rewrap(dir: &Path, args: &[&str]) -> RewrapReport {
    let mut all = vec!["rewrap", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(dir, &all)).unwrap()
}

fn list(dir: &Path, extra: &[&str]) -> ImageList {
    let mut args = vec!["image", "ls", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(dir, &args)).unwrap()
}

/// `imagefs key ARGS --keys DIR/keys` (key commands take no store).
fn key(dir: &Path, conf: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imagefs"));
    cmd.arg("key")
        .args(args)
        .arg("--keys")
        .arg(dir.join("keys"));
    if let Some(conf) = conf {
        cmd.env(CONF_ENV, conf);
    }
    cmd.output().unwrap()
}

fn key_ok(dir: &Path, args: &[&str]) -> String {
    let out = key(dir, None, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "key {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn current_key(dir: &Path) -> String {
    let keys = key_ok(dir, &["ls"]);
    keys.lines()
        .find_map(|l| l.strip_suffix("\tcurrent"))
        .unwrap_or_else(|| panic!("no current key in {keys}"))
        .to_owned()
}

#[test]
fn local_rotation_rewraps_in_place_resumably_and_retires_the_old_key() {
    let tmp = two_images();
    let dir = tmp.path();
    let before = list(dir, &[]);
    let chunks = chunk_files(dir);
    assert!(!chunks.is_empty());
    let (t, u) = (exported(dir, "t", &[]), exported(dir, "u", &[]));
    let old = current_key(dir);

    let new = key_ok(dir, &["new"]).trim().to_owned();
    assert_ne!(new, old);
    assert_eq!(current_key(dir), new);
    // Retiring the current key is refused.
    let out = key(dir, None, &["retire", &new]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("current key"),
        "{err}"
    );

    // Stopped after one image: both still open, one under each key.
    let first = rewrap(dir, &["--to", &new, "--limit", "1"]);
    assert_eq!((first.rewrapped, first.failed), (1, 0), "{first:?}");
    assert!(first.stopped_early);
    assert!(
        first
            .images
            .iter()
            .any(|i| i.outcome == RewrapOutcome::NotReached),
        "{first:?}"
    );
    let middle = list(dir, &[]);
    assert!(
        middle.images.iter().all(|i| i.contents.is_some()),
        "{middle:?}"
    );
    assert_eq!(exported(dir, "t", &[]), t);
    assert_eq!(exported(dir, "u", &[]), u);

    // The rerun finishes; the one after does nothing.
    let second = rewrap(dir, &["--to", &new]);
    assert_eq!(
        (second.rewrapped, second.already_done),
        (1, 1),
        "{second:?}"
    );
    assert!(!second.stopped_early);
    let third = rewrap(dir, &["--to", &new]);
    assert_eq!((third.rewrapped, third.already_done), (0, 2), "{third:?}");
    assert_eq!(third.profiles_rewrapped, 0);
    let text = ok(dir, &["rewrap", "--to", &new]);
    assert!(
        text.contains("rewrapped 0") && text.contains("already done 2"),
        "{text}"
    );
    // t's profile was re-wrapped with its manifest.
    assert_eq!(first.profiles_rewrapped + second.profiles_rewrapped, 1);
    // The domain secret moved with the first run.
    assert_eq!(first.domain_secrets_rewrapped, 1, "{first:?}");
    assert_eq!(second.domain_secrets_rewrapped, 0, "{second:?}");

    // Retire the old key: everything still opens, byte for byte, under
    // the same digests and tags; no chunk changed.
    key_ok(dir, &["retire", &old]);
    assert!(key_ok(dir, &["ls"]).contains(&format!("{old}\tretired")));
    let after = list(dir, &[]);
    let names = |l: &ImageList| -> Vec<(String, Vec<String>)> {
        l.images
            .iter()
            .map(|i| (i.digest.clone(), i.tags.clone()))
            .collect()
    };
    assert_eq!(names(&after), names(&before));
    assert!(
        after.images.iter().all(|i| i.contents.is_some()),
        "{after:?}"
    );
    assert_eq!(exported(dir, "t", &[]), t);
    assert_eq!(exported(dir, "u", &[]), u);
    assert!(ok(dir, &["profile", "show", "t"]).contains("2 chunks"));
    assert_eq!(chunk_files(dir), chunks);
    // Converting still works: the domain secret moved to the new key.
    let layout = dir.join("oci-u");
    let src = format!("oci:{}:u", layout.display());
    ok(
        dir,
        &[
            "convert",
            &src,
            "--tag",
            "u2",
            "--chunk-size",
            "64K",
            "--free-space",
            "1M",
        ],
    );
    assert_eq!(exported(dir, "u2", &[]), u);
    assert_eq!(
        chunk_files(dir),
        chunks,
        "a convert after rotation deduplicates"
    );
}

#[test]
fn a_key_retired_before_rewrap_names_the_image_and_the_key() {
    let tmp = two_images();
    let dir = tmp.path();
    let old = current_key(dir);
    let new = key_ok(dir, &["new"]).trim().to_owned();
    // Only `t` moves to the new key.
    let report = rewrap(dir, &["--to", &new, "t"]);
    assert_eq!(
        (report.rewrapped, report.images.len()),
        (1, 1),
        "{report:?}"
    );
    key_ok(dir, &["retire", &old]);
    exported(dir, "t", &[]);
    let err = fails(
        dir,
        &["export", "u", "-o", dir.join("u.img").to_str().unwrap()],
    );
    let u = list(dir, &[])
        .images
        .into_iter()
        .find(|i| i.tags == ["default/u"])
        .unwrap();
    assert!(
        err.contains(&u.digest) && err.contains(&old) && err.contains("retired"),
        "{err}"
    );
    assert!(u.unreadable.unwrap().contains("retired"));
    // A rewrap cannot help now, and says so per image.
    let out = common::run(dir, &["rewrap", "--to", &new, "--json"]);
    assert!(!out.status.success());
    let report: RewrapReport = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report.failed, report.already_done), (1, 1), "{report:?}");
}

/// `imagefs ARGS --store … --keys …` with SoftHSM2's configuration.
fn run_hsm(dir: &Path, hsm: &SoftHsm, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imagefs"))
        .args(args)
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--keys")
        .arg(dir.join("keys"))
        .env(CONF_ENV, &hsm.conf)
        .output()
        .unwrap()
}

fn ok_hsm(dir: &Path, hsm: &SoftHsm, args: &[&str]) -> String {
    let out = run_hsm(dir, hsm, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn hsm_or_skip(test: &str, dir: &Path) -> Option<SoftHsm> {
    if let Some(why) = unavailable() {
        eprintln!("SKIP {test}: {why}");
        return None;
    }
    Some(SoftHsm::new(&dir.join("hsm"), &["imagefs"]).unwrap())
}

#[test]
fn local_images_move_into_the_token_and_serve_from_it_alone() {
    let tmp = two_images();
    let dir = tmp.path();
    let Some(hsm) = hsm_or_skip("local_images_move_into_the_token", dir) else {
        return;
    };
    let pin = hsm.pin_file.to_str().unwrap().to_owned();
    let p11 = [
        "--pkcs11-token-label",
        "imagefs",
        "--pkcs11-pin-file",
        pin.as_str(),
    ];
    let chunks = chunk_files(dir);
    let (t, u) = (exported(dir, "t", &[]), exported(dir, "u", &[]));

    let secrets = dir.join("secrets");
    let secrets_arg = ["--domain-secrets", secrets.to_str().unwrap()];
    let mut args = vec!["rewrap", "--json", "--to", "p11:hsm-master"];
    args.extend_from_slice(&p11);
    args.extend_from_slice(&secrets_arg);
    let report: RewrapReport = serde_json::from_str(&ok_hsm(dir, &hsm, &args)).unwrap();
    assert_eq!((report.rewrapped, report.failed), (2, 0), "{report:?}");
    assert_eq!(report.domain_secrets_rewrapped, 1, "{report:?}");
    assert_eq!(report.target_key, "p11:hsm-master");
    assert_eq!(chunk_files(dir), chunks);

    // Without the local key directory, through the token only.
    fs::rename(dir.join("keys"), dir.join("keys-away")).unwrap();
    let mut serve_only = vec![
        "--key-provider",
        "pkcs11",
        "--pkcs11-key-label",
        "hsm-master",
    ];
    serve_only.extend_from_slice(&p11);
    for (name, bytes) in [("t", &t), ("u", &u)] {
        let out = dir.join(format!("{name}.img"));
        let mut args = vec!["export", name, "-o", out.to_str().unwrap()];
        args.extend_from_slice(&serve_only);
        ok_hsm(dir, &hsm, &args);
        assert_eq!(&fs::read(&out).unwrap(), bytes, "{name}");
    }
    // Again: nothing to do.
    let mut args = vec!["rewrap", "--json", "--to", "p11:hsm-master"];
    args.extend_from_slice(&serve_only);
    args.extend_from_slice(&secrets_arg);
    let again: RewrapReport = serde_json::from_str(&ok_hsm(dir, &hsm, &args)).unwrap();
    assert_eq!((again.rewrapped, again.already_done), (0, 2), "{again:?}");
    assert_eq!(again.domain_secrets_rewrapped, 0, "{again:?}");
    // Converting through the token uses the moved domain secret: the
    // same image again stores no new chunk.
    let src = format!("oci:{}:u", dir.join("oci-u").display());
    let mut args = vec!["convert", &src, "--tag", "u2", "--chunk-size", "64K"];
    args.extend_from_slice(&["--free-space", "1M"]);
    args.extend_from_slice(&serve_only);
    args.extend_from_slice(&secrets_arg);
    ok_hsm(dir, &hsm, &args);
    assert_eq!(chunk_files(dir), chunks);
}

#[test]
fn convert_and_export_through_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(hsm) = hsm_or_skip("convert_and_export_through_the_token", dir) else {
        return;
    };
    let pin = hsm.pin_file.to_str().unwrap().to_owned();
    let secrets = dir.join("secrets");
    let base = [
        "--key-provider",
        "pkcs11",
        "--pkcs11-token-label",
        "imagefs",
        "--pkcs11-pin-file",
        pin.as_str(),
    ];
    let layout = dir.join("oci");
    let data = pattern(300_000);
    Image::new(vec![Layer::new(vec![Entry::file(
        "data/blob",
        data.clone(),
    )])])
    .write_oci_layout(&layout, "t")
    .unwrap();
    let src = format!("oci:{}:t", layout.display());
    let mut args = vec![
        "convert",
        &src,
        "--tag",
        "t",
        "--chunk-size",
        "64K",
        "--free-space",
        "1M",
    ];
    args.extend_from_slice(&base);
    args.extend_from_slice(&["--domain-secrets", secrets.to_str().unwrap()]);
    ok_hsm(dir, &hsm, &args);
    // The domain secret is on disk only wrapped.
    assert!(secrets.join("default.wrapped").exists());
    assert!(!dir.join("keys").exists(), "a local key directory was made");

    // A serving host: the token, no domain secrets.
    let out = dir.join("t.img");
    let mut args = vec!["export", "t", "-o", out.to_str().unwrap()];
    args.extend_from_slice(&base);
    ok_hsm(dir, &hsm, &args);
    let image = fs::read(&out).unwrap();
    assert!(
        image
            .windows(data.len().min(4096))
            .any(|w| w == &data[..4096])
    );
    let keys = key(dir, Some(&hsm.conf), &[&["ls"][..], &base].concat());
    let listed = String::from_utf8_lossy(&keys.stdout);
    assert_eq!(listed.trim(), "p11:imagefs-master\tcurrent");

    // A wrong PIN and a missing token are named.
    let wrong = dir.join("wrong-pin");
    fs::write(&wrong, "0000\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&wrong, fs::Permissions::from_mode(0o600)).unwrap();
    let mut args = vec!["export", "t", "-o", out.to_str().unwrap()];
    args.extend_from_slice(&[
        "--key-provider",
        "pkcs11",
        "--pkcs11-token-label",
        "imagefs",
    ]);
    args.extend_from_slice(&["--pkcs11-pin-file", wrong.to_str().unwrap()]);
    let failed = run_hsm(dir, &hsm, &args);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success() && err.contains("refused the PIN"),
        "{err}"
    );
    let mut args = vec!["export", "t", "-o", out.to_str().unwrap()];
    args.extend_from_slice(&["--key-provider", "pkcs11", "--pkcs11-token-label", "nope"]);
    args.extend_from_slice(&["--pkcs11-pin-file", pin.as_str()]);
    let failed = run_hsm(dir, &hsm, &args);
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(
        !failed.status.success() && err.contains("`nope`") && err.contains("`imagefs`"),
        "{err}"
    );
}
