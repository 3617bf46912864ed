//! Checks of the test-image generator itself, against independent tools:
//! umoci unpacks what it writes into the expected tree, skopeo reads its
//! archives, and its output is byte-for-byte deterministic.

use std::path::Path;
use std::process::Command;

use tests::cases::{self, Case, Expect};
use tests::harness::{require_root, require_tool, run};
use tests::imagegen::{Compression, Entry, file_digest};
use tests::treecheck::{Mask, assert_same, umoci_reference};

fn umoci_listing(case: &Case, dir: &Path) -> tests::treecheck::Listing {
    let layout = dir.join("oci");
    case.image
        .without_zstd()
        .write_oci_layout(&layout, "t")
        .unwrap();
    umoci_reference(&layout, "t", &dir.join("bundle")).unwrap()
}

fn check_case_with_umoci(case: Case) {
    if !require_tool("umoci") || !require_root("umoci unpack with owners and devices") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let listing = umoci_listing(&case, tmp.path());
    let bad = cases::check(&listing, &case.expect);
    assert!(
        bad.is_empty(),
        "umoci's tree of {}:\n  {}",
        case.name,
        bad.join("\n  ")
    );
}

#[test]
fn umoci_unpacks_changeset_as_expected() {
    check_case_with_umoci(cases::changeset());
}

#[test]
fn umoci_unpacks_xattr_newline_as_expected() {
    check_case_with_umoci(cases::xattr_newline());
}

#[test]
fn umoci_unpacks_changeset2_as_expected() {
    check_case_with_umoci(cases::changeset2());
}

#[test]
fn umoci_unpacks_special_hard_links_as_expected() {
    check_case_with_umoci(cases::special_hard_links());
}

#[test]
fn umoci_unpacks_symlinked_parent_as_expected() {
    check_case_with_umoci(cases::symlinked_parent());
}

#[test]
fn umoci_unpacks_boundaries_as_expected() {
    check_case_with_umoci(cases::boundaries());
}

#[test]
fn umoci_unpacks_acl_as_expected() {
    check_case_with_umoci(cases::acl());
}

#[test]
fn umoci_unpacks_root_entry_as_expected() {
    check_case_with_umoci(cases::root_entry());
}

#[test]
fn umoci_unpacks_big_dir_as_expected() {
    check_case_with_umoci(cases::big_dir());
}

#[test]
fn umoci_unpacks_sparse_as_expected() {
    let case = cases::sparse();
    if !require_tool("umoci") || !require_root("umoci unpack") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let listing = umoci_listing(&case, tmp.path());
    assert!(cases::check(&listing, &case.expect).is_empty());
    let f = &listing["/fragmented"];
    assert_eq!(f.size, 2000 * 8192);
    assert_eq!(listing["/zeros-then-tail"].size, (64 << 20) + 10_000);
    assert_eq!(listing["/unaligned"].size, 12_348);
}

fn sha_tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, file_digest(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn generator_output_is_deterministic() {
    let image = cases::changeset().image;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    image.write_oci_layout(&a.path().join("oci"), "t").unwrap();
    image.write_oci_layout(&b.path().join("oci"), "t").unwrap();
    assert_eq!(
        sha_tree(&a.path().join("oci")),
        sha_tree(&b.path().join("oci"))
    );
    for dir in [a.path(), b.path()] {
        image.write_oci_archive(&dir.join("oa.tar"), "t").unwrap();
        image
            .write_docker_archive(&dir.join("da.tar"), "img:t")
            .unwrap();
    }
    for f in ["oa.tar", "da.tar"] {
        assert_eq!(
            file_digest(&a.path().join(f)).unwrap(),
            file_digest(&b.path().join(f)).unwrap(),
            "{f} differs between two runs"
        );
    }
}

/// skopeo (an independent implementation of all three transports) copies
/// each of our archives into a fresh OCI layout; umoci unpacks that into the
/// same tree as our own layout.
#[test]
fn skopeo_reads_all_three_source_kinds() {
    if !require_tool("skopeo") || !require_tool("umoci") || !require_root("umoci unpack") {
        return;
    }
    let case = cases::changeset();
    let tmp = tempfile::tempdir().unwrap();
    let reference = umoci_listing(&case, tmp.path());
    let oa = tmp.path().join("oa.tar");
    let da = tmp.path().join("da.tar");
    // umoci (used to list the copy) cannot read zstd layers.
    case.image
        .without_zstd()
        .write_oci_archive(&oa, "t")
        .unwrap();
    // Docker archives carry plain layers, as `docker save` writes them.
    let mut plain = case.image.clone();
    for l in &mut plain.layers {
        l.compression = Compression::None;
    }
    plain
        .write_docker_archive(&da, "example.com/img:t")
        .unwrap();
    let sources = [
        format!("oci:{}:t", tmp.path().join("oci").display()),
        format!("oci-archive:{}:t", oa.display()),
        format!("docker-archive:{}", da.display()),
    ];
    for (i, src) in sources.iter().enumerate() {
        let dest = tmp.path().join(format!("copy{i}"));
        let (ok, out) = run(Command::new("skopeo")
            .args(["--insecure-policy", "copy", "--quiet", src])
            .arg(format!("oci:{}:t", dest.display())));
        assert!(ok, "skopeo copy {src}: {out}");
        let listing = umoci_reference(&dest, "t", &tmp.path().join(format!("bundle{i}"))).unwrap();
        let mask = Mask {
            meta_of: case.unspecified.clone(),
            ..Mask::default()
        };
        assert_same("reference", &reference, src, &listing, &mask);
    }
}

#[test]
fn escaping_and_long_names_are_written_verbatim() {
    let entries = vec![
        Entry::file("../x", b"up"),
        Entry::file("/abs", b"abs"),
        Entry::file("a".repeat(150), b"pax").owner(3_000_000, 1),
    ];
    let bytes = tests::imagegen::tar_bytes(&entries);
    let mut ar = tar::Archive::new(&bytes[..]);
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path_bytes().into_owned();
        let uid = e
            .pax_extensions()
            .unwrap()
            .map(|exts| {
                exts.filter_map(Result::ok)
                    .find(|x| x.key() == Ok("uid"))
                    .map(|x| x.value().unwrap().to_string())
            })
            .unwrap_or_default();
        seen.push((String::from_utf8(path).unwrap(), uid));
    }
    assert_eq!(
        seen,
        vec![
            ("../x".to_string(), None),
            ("/abs".to_string(), None),
            ("a".repeat(150), Some("3000000".to_string())),
        ]
    );
}

/// The listing producers agree with each other on an image made by
/// `mke2fs -d` from umoci's rootfs: the kernel mount shows the reference
/// tree, ext4-view shows it too (minus what it cannot see).
#[test]
fn listing_producers_agree_on_mke2fs_image() {
    use tests::harness::{Mount, assert_fsck_clean};
    use tests::treecheck::{list_dir, list_ext4_image};
    if !require_tool("umoci")
        || !require_tool("mke2fs")
        || !require_tool("e2fsck")
        || !require_root("umoci unpack and mount")
    {
        return;
    }
    let case = cases::changeset();
    let tmp = tempfile::tempdir().unwrap();
    umoci_listing(&case, tmp.path());
    // mke2fs -d (e2fsprogs 1.47) fails on a 2000-byte xattr; drop it here.
    let rootfs = tmp.path().join("bundle/rootfs");
    xattr::remove(rootfs.join("bigxattr"), "user.big").unwrap();
    let reference = tests::treecheck::unpacked(list_dir(&rootfs, &[]).unwrap());
    let image = tmp.path().join("disk.img");
    let (ok, out) = run(Command::new("mke2fs")
        .args(["-q", "-t", "ext4", "-I", "256", "-O", "^has_journal", "-d"])
        .arg(tmp.path().join("bundle/rootfs"))
        .arg(&image)
        .arg("64M"));
    assert!(ok, "mke2fs: {out}");
    assert_fsck_clean(&image);
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(m) = Mount::loop_mount(&image, &mnt, true).unwrap() else {
        return;
    };
    let mounted = list_dir(m.path(), &["/lost+found"]).unwrap();
    m.unmount().unwrap();
    // mke2fs -d drops sub-second mtimes.
    let mask = Mask {
        meta_of: ["/".to_string()].into(),
        mtime_nanos: true,
        ..Mask::default()
    };
    assert_same("umoci", &reference, "mount", &mounted, &mask);
    let viewed = list_ext4_image(&image, &["/lost+found"]).unwrap();
    let mask = Mask {
        meta_of: ["/".to_string()].into(),
        mtime_nanos: true,
        ..Mask::ext4_view()
    };
    assert_same("umoci", &reference, "ext4-view", &viewed, &mask);
    let expect: Vec<_> = case
        .expect
        .into_iter()
        .filter(|e| !matches!(e, Expect::Mtime(..) | Expect::Xattr(_, "user.big", _)))
        .collect();
    let bad = cases::check(&mounted, &expect);
    assert!(bad.is_empty(), "mount:\n  {}", bad.join("\n  "));
    let bad = cases::check(&viewed, &cases::visible_to_ext4_view(&expect));
    assert!(bad.is_empty(), "ext4-view:\n  {}", bad.join("\n  "));
}
