//! `imagefs gc` end to end through the binary: a store with two images
//! sharing a base layer, one removed; the dry run lists exactly that
//! image's own chunks, the real run deletes them, the other still reads.

mod common;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::Path;
use std::time::{Duration, SystemTime};

use cachetiers::DirStore;
use common::{fails, ok, store_of};
use imagefs::gc::{GcKind, GcReport};
use manifest::{ChunkEntry, LocalKeyProvider, ManifestDigest, unseal};
use tests::imagegen::{Entry, Image, Layer, noise};

fn image(seed: u64) -> Image {
    Image::new(vec![
        Layer::new(vec![Entry::file("base.bin", noise(1, 300_000))]),
        Layer::new(vec![Entry::file("own.bin", noise(seed, 200_000))]),
    ])
}

/// The hex ids of the chunks manifest `digest` names.
fn chunks(dir: &Path, digest: &ManifestDigest) -> BTreeSet<String> {
    let store = DirStore::open(dir.join("store")).unwrap();
    let keys = LocalKeyProvider::open(dir.join("keys")).unwrap();
    let manifest = unseal(&store.get_manifest(digest).unwrap(), &keys).unwrap();
    manifest
        .chunks
        .iter()
        .filter_map(|c| match c {
            ChunkEntry::Present { id, .. } => Some(id.to_hex()),
            ChunkEntry::Hole => None,
        })
        .collect()
}

/// Sets every file under `root` an hour back, as if written then.
fn age(root: &Path) {
    let then = SystemTime::now() - Duration::from_secs(3600);
    for entry in fs::read_dir(root).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            age(&path);
        } else {
            let file = File::options().write(true).open(&path).unwrap();
            file.set_modified(then).unwrap();
        }
    }
}

fn gc_json(dir: &Path, extra: &[&str]) -> GcReport {
    let mut args = vec!["gc", "--json", "--grace", "30m"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(dir, &args)).unwrap()
}

#[test]
fn gc_dry_run_lists_a_removed_images_own_chunks_then_deletes_them() {
    let dir = store_of(image(2));
    let layout = dir.path().join("oci-b");
    image(3).write_oci_layout(&layout, "b").unwrap();
    let src = format!("oci:{}:b", layout.display());
    let convert = [
        "convert",
        &src,
        "--tag",
        "u",
        "--chunk-size",
        "64K",
        "--free-space",
        "1M",
    ];
    ok(dir.path(), &convert);
    let store = DirStore::open(dir.path().join("store")).unwrap();
    let a = store.tag("default", "t").unwrap();
    let b = store.tag("default", "u").unwrap();
    let (ca, cb) = (chunks(dir.path(), &a), chunks(dir.path(), &b));
    let own_b: BTreeSet<String> = cb.difference(&ca).cloned().collect();
    assert!(!own_b.is_empty());
    age(&dir.path().join("store"));

    // Both tagged: nothing to collect.
    assert!(gc_json(dir.path(), &["--dry-run"]).items.is_empty());

    ok(dir.path(), &["image", "rm", &b.to_string(), "--untag"]);
    let dry = gc_json(dir.path(), &["--dry-run"]);
    assert!(dry.dry_run);
    let listed: BTreeSet<String> = dry
        .items
        .iter()
        .filter(|i| i.kind == GcKind::Chunk)
        .map(|i| i.name.clone())
        .collect();
    assert_eq!(listed, own_b);
    assert_eq!(dry.items.len(), own_b.len());
    assert!(dry.deleted.chunk_bytes > 0);
    let table = ok(dir.path(), &["gc", "--dry-run", "--grace", "30m"]);
    assert!(
        table.contains(&format!(
            "would delete {} manifests, {} chunks",
            0,
            own_b.len()
        )),
        "{table}"
    );

    let done = gc_json(dir.path(), &[]);
    assert_eq!(done.deleted, dry.deleted);
    for id in &own_b {
        let path = dir
            .path()
            .join("store/chunks")
            .join(&id[0..2])
            .join(&id[2..4])
            .join(id);
        assert!(!path.exists(), "{id} survived");
    }
    ok(dir.path(), &["verify", "t"]);
    assert!(gc_json(dir.path(), &[]).items.is_empty());
}

#[test]
fn gc_refuses_what_it_cannot_do_safely() {
    let dir = store_of(image(2));
    // Not a duration, and a store that is not one.
    let err = fails(dir.path(), &["gc", "--grace", "soon"]);
    assert!(err.contains("`soon` is not a duration"), "{err}");
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_imagefs"))
        .args(["gc", "--store"])
        .arg(&file)
        .arg("--keys")
        .arg(dir.path().join("keys"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("plain-file"), "{err}");
    // A chunk stamped a day ahead: ages mean nothing, nothing is deleted.
    let chunk = fs::read_dir(dir.path().join("store/chunks"))
        .unwrap()
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .next()
        .unwrap();
    File::options()
        .write(true)
        .open(&chunk)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(86_400))
        .unwrap();
    let err = fails(dir.path(), &["gc", "--grace", "30m"]);
    assert!(err.contains("refused") && err.contains("stamped"), "{err}");
}
