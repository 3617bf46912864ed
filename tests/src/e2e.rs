//! Checks of a flattened ext4 image, shared by the integration tests:
//! e2fsck, a read-only loop mount and ext4-view each compared with a
//! reference listing, a read-write mount, and helpers for error checks.

use std::error::Error;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cases::{self, Case, Expect};
use crate::harness::{Mount, assert_fsck_clean, require_root, require_tool, run};
use crate::imagegen::file_digest;
use crate::treecheck::{Listing, Mask, assert_same, list_dir, list_ext4_image, umoci_reference};

/// What the image is compared against.
pub struct Reference<'a> {
    /// Name used in diff output ("umoci" or "expected").
    pub name: &'a str,
    /// The listing, if there is one (checked field by field).
    pub listing: Option<&'a Listing>,
    /// Facts the tree must show (the expected model).
    pub expect: &'a [Expect],
    /// Paths whose mode/owner/mtime are implementation-defined.
    pub unspecified: &'a std::collections::BTreeSet<String>,
}

/// True when the tools the image checks need are present and we are root;
/// prints SKIP lines otherwise.
pub fn tools_present() -> bool {
    require_tool("e2fsck") && require_tool("mount") && require_root("loop mounts")
}

/// The umoci reference listing of a case (zstd layers recompressed as gzip
/// and OCI media types, which umoci 0.4 requires; the tar streams are the
/// same). `None` (after a
/// SKIP line) when umoci is missing.
pub fn umoci_listing(case: &Case, work: &Path) -> Option<Listing> {
    if !require_tool("umoci") {
        return None;
    }
    let layout = work.join("reference-oci");
    // umoci 0.4 reads neither zstd layers nor Docker media types.
    let mut image = case.image.without_zstd();
    image.docker_media_types = false;
    image
        .write_oci_layout(&layout, "ref")
        .expect("write reference layout");
    let listing =
        umoci_reference(&layout, "ref", &work.join("reference-bundle")).expect("umoci unpack");
    let bad = cases::check(&listing, &case.expect);
    assert!(
        bad.is_empty(),
        "the umoci reference itself disagrees with the expected model of {}:\n  {}",
        case.name,
        bad.join("\n  ")
    );
    // The reference rootfs can be large; only the listing is needed.
    let _ = fs::remove_dir_all(work.join("reference-bundle"));
    let _ = fs::remove_dir_all(&layout);
    Some(listing)
}

fn check_listing(
    what: &str,
    listing: &Listing,
    reference: &Reference<'_>,
    mask: &Mask,
    ext4_view: bool,
) {
    if let Some(r) = reference.listing {
        assert_same(reference.name, r, what, listing, mask);
    }
    let expect = if ext4_view {
        cases::visible_to_ext4_view(reference.expect)
    } else {
        reference.expect.to_vec()
    };
    let bad = cases::check(listing, &expect);
    assert!(
        bad.is_empty(),
        "{what} listing vs the expected model:\n  {}",
        bad.join("\n  ")
    );
}

/// Runs every check on a flattened image: `e2fsck -fn`, a read-only loop
/// mount and ext4-view against the reference, then a read-write mount of a
/// copy that writes a file, and e2fsck on that copy. Returns the mounted
/// listing, or `None` if mounting is not permitted here (after a SKIP line).
pub fn verify_image(image: &Path, reference: &Reference<'_>, work: &Path) -> Option<Listing> {
    assert_fsck_clean(image);

    let viewed = list_ext4_image(image, &["/lost+found"]).expect("ext4-view reads the image");
    let mask = Mask {
        meta_of: reference.unspecified.clone(),
        ..Mask::ext4_view()
    };
    check_listing("ext4-view", &viewed, reference, &mask, true);

    let mnt = work.join("mnt");
    fs::create_dir_all(&mnt).expect("mount point");
    let m = Mount::loop_mount(image, &mnt, true).expect("read-only mount")?;
    let mounted = list_dir(m.path(), &["/lost+found"]).expect("list mount");
    m.unmount().expect("umount");
    let mask = Mask {
        meta_of: reference.unspecified.clone(),
        ..Mask::default()
    };
    check_listing("mount", &mounted, reference, &mask, false);

    let copy = work.join("rw-copy.img");
    let (ok, out) = run(Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&copy));
    assert!(ok, "cp: {out}");
    let m = Mount::loop_mount(&copy, &mnt, false).expect("read-write mount")?;
    let new_file = m.path().join("written-by-test");
    fs::write(&new_file, vec![0x5a; 300_000]).expect("write a file on the rw mount");
    fs::create_dir(m.path().join("new-dir-by-test")).expect("mkdir on the rw mount");
    m.unmount().expect("umount rw");
    assert_fsck_clean(&copy);
    let _ = fs::remove_file(&copy);
    Some(mounted)
}

/// Blocks (of 512 bytes) allocated to `path` inside the image, read through
/// a read-only mount. `None` if mounting is not permitted.
pub fn allocated_bytes(image: &Path, paths: &[&str], work: &Path) -> Option<Vec<u64>> {
    let mnt = work.join("mnt-alloc");
    fs::create_dir_all(&mnt).expect("mount point");
    let m = Mount::loop_mount(image, &mnt, true).expect("read-only mount")?;
    let out = paths
        .iter()
        .map(|p| {
            fs::symlink_metadata(m.path().join(p.trim_start_matches('/')))
                .expect("stat")
                .blocks()
                * 512
        })
        .collect();
    m.unmount().expect("umount");
    Some(out)
}

/// The whole chain of an error's messages, joined with ": " (what a CLI
/// would print).
pub fn error_chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Names of the entries of `dir` (to check that nothing was left behind).
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// SHA-256 of a file (for determinism checks).
pub fn image_digest(path: &Path) -> String {
    file_digest(path).expect("hash image")
}

/// The cache directory where `scripts/build-debian-images.sh` puts its OCI
/// layout.
pub fn debian_layout() -> PathBuf {
    let cache = std::env::var_os("IMAGEFS_CACHE")
        .map_or_else(|| PathBuf::from("/var/cache/imagefs"), PathBuf::from);
    cache.join("debian-images/oci")
}

/// Reads the tags in an OCI layout's index.json.
pub fn layout_tags(layout: &Path) -> io::Result<Vec<String>> {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    Ok(index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .map(str::to_string)
        .collect())
}
