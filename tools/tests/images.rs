//! `imagefs tag` and `imagefs image` against a directory store holding two
//! images that share a base layer.

mod common;

use common::{fails, ok, store_of};
use imagefs::images::ImageList;
use tests::imagegen::{Entry, Image, Layer, noise};

fn base() -> Layer {
    Layer::new(vec![Entry::file("base.bin", noise(1, 300_000))])
}

fn list(dir: &std::path::Path) -> ImageList {
    serde_json::from_str(&ok(dir, &["image", "ls", "--json"])).unwrap()
}

#[test]
fn tags_and_images_are_listed_and_removed() {
    let dir = store_of(Image::new(vec![
        base(),
        Layer::new(vec![Entry::file("a.bin", noise(2, 200_000))]),
    ]));
    // A second image on the same base, converted by the binary.
    let second = Image::new(vec![
        base(),
        Layer::new(vec![Entry::file("b.bin", noise(3, 100_000))]),
    ]);
    let layout = dir.path().join("oci-b");
    second.write_oci_layout(&layout, "b").unwrap();
    let src = format!("oci:{}:b", layout.display());
    ok(
        dir.path(),
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

    let images = list(dir.path());
    assert_eq!(images.images.len(), 2, "{images:?}");
    let find = |tag: &str| {
        images
            .images
            .iter()
            .find(|i| i.tags == [format!("default/{tag}")])
            .unwrap_or_else(|| panic!("no image tagged {tag}: {images:?}"))
    };
    let (a, b) = (find("t"), find("u"));
    for i in [a, b] {
        let c = i.contents.as_ref().unwrap();
        assert_eq!(c.domain, "default");
        // The shared base layer's chunks belong to neither alone.
        assert!(
            c.unique_bytes > 0 && c.unique_bytes < c.stored_bytes,
            "{i:?}"
        );
        assert!(c.stored_bytes <= c.device_size);
        assert!(i.stored_at.is_some());
    }
    let table = ok(dir.path(), &["image", "ls"]);
    assert!(
        table.contains("default/u") && table.contains(&a.digest[..19]),
        "{table}"
    );

    // Tags: list, a second name, remove.
    ok(dir.path(), &["tag", "set", "again", "u"]);
    let tags = ok(dir.path(), &["tag", "ls"]);
    assert!(
        tags.contains(&format!("default/again\t{}", b.digest)),
        "{tags}"
    );
    ok(dir.path(), &["tag", "rm", "again"]);
    assert!(fails(dir.path(), &["tag", "rm", "again"]).contains("no tag default/again"));
    assert!(ok(dir.path(), &["tag", "ls", "--domain", "other"]).is_empty());

    // A tagged image is removed only with --untag.
    let err = fails(dir.path(), &["image", "rm", &b.digest]);
    assert!(
        err.contains("still tagged (default/u)") && err.contains("--untag"),
        "{err}"
    );
    assert_eq!(list(dir.path()).images.len(), 2);
    let out = ok(dir.path(), &["image", "rm", &b.digest, "--untag"]);
    assert!(out.contains("removed tag default/u"), "{out}");
    let left = list(dir.path());
    assert_eq!(left.images.len(), 1);
    assert_eq!(left.images[0].digest, a.digest);
    // With b gone, a holds the base alone.
    let c = left.images[0].contents.as_ref().unwrap();
    assert_eq!(c.unique_bytes, c.stored_bytes);
    assert!(fails(dir.path(), &["image", "rm", &b.digest]).contains("no image"));
    // The remaining image still opens.
    ok(dir.path(), &["verify", "t"]);
}
