//! Real Debian images (built by `scripts/build-debian-images.sh` into
//! `${IMAGEFS_CACHE:-/var/cache/imagefs}/debian-images/oci`, tags `base`,
//! `python`, `node`): flattened, checked with e2fsck, a loop mount and
//! ext4-view against umoci's unpack of the same tag.

mod common;

use std::collections::BTreeSet;

use common::flatten;
use tests::cases::Expect;
use tests::e2e::{self, Reference, debian_layout, dir_names, image_digest, layout_tags};
use tests::harness::{require_tool, skip};
use tests::treecheck::{FileKind, umoci_reference};

fn debian(tag: &str) {
    let layout = debian_layout();
    if !layout.join("index.json").is_file() {
        skip(&format!(
            "no Debian image layout at {} (build it with scripts/build-debian-images.sh)",
            layout.display()
        ));
        return;
    }
    let tags = layout_tags(&layout).expect("read index.json");
    if !tags.iter().any(|t| t == tag) {
        skip(&format!(
            "{} has no tag {tag:?} (tags: {tags:?})",
            layout.display()
        ));
        return;
    }
    if !e2e::tools_present() || !require_tool("umoci") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = format!("oci:{}:{tag}", layout.display());
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let image = out.join("disk.img");
    flatten(&src, &image).unwrap_or_else(|e| panic!("flatten {src}: {e}"));
    assert_eq!(dir_names(&out), ["disk.img"]);
    let again = out.join("again.img");
    flatten(&src, &again).unwrap_or_else(|e| panic!("flatten {src}: {e}"));
    assert_eq!(
        image_digest(&image),
        image_digest(&again),
        "two flattens of {src} differ"
    );
    std::fs::remove_file(&again).unwrap();

    let reference =
        umoci_reference(&layout, tag, &tmp.path().join("bundle")).expect("umoci unpack");
    std::fs::remove_dir_all(tmp.path().join("bundle")).unwrap();
    let mut expect = vec![
        Expect::Kind("/etc/os-release", FileKind::Symlink),
        Expect::Kind("/usr/bin/dpkg", FileKind::File),
    ];
    match tag {
        "python" => expect.push(Expect::Kind("/usr/bin/python3", FileKind::Symlink)),
        "node" => expect.push(Expect::Kind("/usr/bin/node", FileKind::File)),
        _ => {}
    }
    let unspecified: BTreeSet<String> = ["/".to_string()].into();
    let r = Reference {
        name: "umoci",
        listing: Some(&reference),
        expect: &expect,
        unspecified: &unspecified,
    };
    e2e::verify_image(&image, &r, tmp.path());
}

#[test]
fn debian_base() {
    debian("base");
}

#[test]
fn debian_python() {
    debian("python");
}

#[test]
fn debian_node() {
    debian("node");
}
