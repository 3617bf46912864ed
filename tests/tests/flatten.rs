//! End-to-end flatten tests on generated images: every flattening case
//! (whiteouts, hard links, xattrs, devices, long names …), from each
//! source kind and compression, checked with e2fsck, a loop mount and
//! ext4-view against umoci's unpack of the same image and against the
//! expected model, plus determinism.

mod common;

use std::collections::BTreeSet;

use common::{SourceKind, flatten, flatten_case, write_source};
use tests::cases::{self, Case, Expect};
use tests::e2e::{self, Reference, allocated_bytes, dir_names, image_digest};
use tests::harness::{assert_fsck_clean, require_tool};
use tests::imagegen::{Compression, Data, Entry, Image, Kind, Layer};
use tests::treecheck::{FileKind, Mask, assert_same, list_ext4_image};

#[test]
fn changeset_from_oci_dir() {
    flatten_case(&cases::changeset(), SourceKind::OciDir);
}

#[test]
fn changeset_from_oci_archive_matches_oci_dir() {
    let case = cases::changeset();
    let Some(archive) = flatten_case(&case, SourceKind::OciArchive) else {
        return;
    };
    // Same blobs in another container: the very same image.
    let tmp = tempfile::tempdir().unwrap();
    let src = write_source(&case, SourceKind::OciDir, tmp.path());
    let out = tmp.path().join("disk.img");
    flatten(&src, &out).unwrap();
    assert_eq!(
        image_digest(&out),
        archive.digest,
        "oci-archive and oci dir of the same blobs differ"
    );
}

/// `docker save` writes plain layers; the tree must be the same as from the
/// OCI layout (compression differs, so the bytes may too).
#[test]
fn changeset_from_docker_archive() {
    let mut case = cases::changeset();
    for l in &mut case.image.layers {
        l.compression = Compression::None;
    }
    flatten_case(&case, SourceKind::DockerArchive);
}

/// Layers stored gzip-compressed in a docker-archive (as some tools write
/// them): the reader must detect the compression.
#[test]
fn changeset_from_docker_archive_with_gzip_layers() {
    let mut case = cases::changeset();
    for l in &mut case.image.layers {
        l.compression = Compression::Gzip;
    }
    flatten_case(&case, SourceKind::DockerArchive);
}

/// An OCI layout whose manifest, config and layers use Docker media types.
#[test]
fn changeset_with_docker_media_types() {
    let mut case = cases::changeset();
    case.image.docker_media_types = true;
    for l in &mut case.image.layers {
        if l.compression == Compression::Zstd {
            l.compression = Compression::Gzip;
        }
    }
    flatten_case(&case, SourceKind::OciDir);
}

/// Every layer in each one compression, so each decoder sees every entry type.
#[test]
fn changeset_each_compression_throughout() {
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let mut case = cases::changeset();
        for l in &mut case.image.layers {
            l.compression = c;
        }
        eprintln!("compression {c:?}");
        if flatten_case(&case, SourceKind::OciDir).is_none() {
            return;
        }
    }
}

#[test]
fn changeset2_from_oci_dir() {
    flatten_case(&cases::changeset2(), SourceKind::OciDir);
}

#[test]
fn hard_links_to_symlink_fifo_and_device() {
    flatten_case(&cases::special_hard_links(), SourceKind::OciDir);
}

/// A layer writes below a lower layer's symlink to a directory; like
/// docker, containerd and umoci, the flattener must resolve it in the root.
#[test]
fn entry_below_symlinked_parent() {
    flatten_case(&cases::symlinked_parent(), SourceKind::OciDir);
}

#[test]
fn name_symlink_xattr_and_link_boundaries() {
    flatten_case(&cases::boundaries(), SourceKind::OciDir);
}

/// POSIX ACLs given as PAX xattrs must read back as the same ACLs.
#[test]
fn posix_acls() {
    flatten_case(&cases::acl(), SourceKind::OciDir);
}

/// Sparse files as GNU tar writes them with `--sparse`: old GNU sparse
/// headers and PAX sparse versions 0.0, 0.1 and 1.0. Each must read back
/// with its holes as zeros and take no blocks for them. umoci 0.4 rejects
/// the old GNU type `S`, so these are checked against the expected model.
#[test]
fn gnu_tar_sparse_formats() {
    if !require_tool("tar") || !e2e::tools_present() {
        return;
    }
    let formats: [&[&str]; 4] = [
        &["--format=gnu"],
        &["--format=posix", "--sparse-version=0.0"],
        &["--format=posix", "--sparse-version=0.1"],
        &["--format=posix", "--sparse-version=1.0"],
    ];
    for args in formats {
        let work = tempfile::tempdir().unwrap();
        let case = cases::gnu_tar_sparse(work.path(), args).unwrap();
        let src = write_source(&case, SourceKind::OciDir, work.path());
        let image = work.path().join("disk.img");
        flatten(&src, &image).unwrap_or_else(|e| panic!("GNU tar {args:?}: flatten: {e}"));
        let reference = Reference {
            name: "expected",
            listing: None,
            expect: &case.expect,
            unspecified: &case.unspecified,
        };
        if e2e::verify_image(&image, &reference, work.path()).is_none() {
            return;
        }
        if let Some(alloc) = allocated_bytes(&image, &["/holes"], work.path()) {
            assert!(
                alloc[0] <= 64 << 10,
                "GNU tar {args:?}: /holes allocates {} bytes",
                alloc[0]
            );
        }
    }
}

/// A layer written by GNU tar from a real directory tree.
#[test]
fn gnu_tar_written_layer() {
    if !require_tool("tar") || !e2e::tools_present() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let case = cases::gnu_tar_tree(work.path()).unwrap();
    flatten_case(&case, SourceKind::OciDir);
}

/// `./` entries set the root directory's attributes.
#[test]
fn root_directory_entry() {
    flatten_case(&cases::root_entry(), SourceKind::OciDir);
}

/// PAX records are length-prefixed: xattr values may contain newlines
/// (the `tar` crate alone splits records on newlines; chunker reads them by
/// their length prefixes).
#[test]
fn xattr_values_with_newlines() {
    flatten_case(&cases::xattr_newline(), SourceKind::OciDir);
}

#[test]
fn directory_with_100000_entries() {
    flatten_case(&cases::big_dir(), SourceKind::OciDir);
}

/// Mostly-zero files flatten to holes: they read back right and take no
/// blocks for their zeros; a file alternating data and holes block by block
/// needs a deep extent tree.
#[test]
fn sparse_files() {
    let case = cases::sparse();
    let Some(f) = flatten_case(&case, SourceKind::OciDir) else {
        return;
    };
    let paths = ["/zeros-then-tail", "/all-zeros", "/fragmented", "/dense"];
    let Some(alloc) = allocated_bytes(&f.image, &paths, f.tmp.path()) else {
        return;
    };
    let limits = [
        16 << 10,                   // 10,000 bytes of data: 3 blocks
        0,                          // nothing but zeros
        (2000 * 4096) + (64 << 10), // 2000 data blocks plus extent tree blocks
        (3 << 20) + (8 << 10),      // dense: all of it
    ];
    for ((p, a), limit) in paths.iter().zip(&alloc).zip(limits) {
        assert!(
            *a <= limit,
            "{p} allocates {a} bytes, expected at most {limit}"
        );
    }
    assert!(
        alloc[3] >= 3 << 20,
        "/dense allocates only {} bytes",
        alloc[3]
    );
}

/// A file over 4 GiB (zeros then data). umoci would write all 4 GiB, so
/// this case is checked against the expected model only: the sha256 of the
/// content streamed from the generator.
#[test]
fn file_over_4_gib() {
    if !e2e::tools_present() {
        return;
    }
    let case = cases::huge();
    let tmp = tempfile::tempdir().unwrap();
    // Streamed to disk, never held in memory.
    let src = write_source(&case, SourceKind::OciDir, tmp.path());
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let image = out.join("disk.img");
    flatten(&src, &image).unwrap_or_else(|e| panic!("flatten {src}: {e}"));
    assert_eq!(dir_names(&out), ["disk.img"]);
    std::fs::remove_dir_all(tmp.path().join("oci")).unwrap();

    let Kind::File(data @ Data::Sparse(_)) = &case.image.layers[0].entries[1].kind else {
        panic!("case layout changed");
    };
    let mut expect = case.expect.clone();
    expect.push(Expect::Sha256(
        "/huge".into(),
        data.sha256(),
        cases::HUGE_SIZE,
    ));
    let reference = Reference {
        name: "expected",
        listing: None,
        expect: &expect,
        unspecified: &case.unspecified,
    };
    e2e::verify_image(&image, &reference, tmp.path());
    if let Some(alloc) = allocated_bytes(&image, &["/huge"], tmp.path()) {
        assert!(
            alloc[0] <= 64 << 10,
            "/huge allocates {} bytes for 8 KiB of data",
            alloc[0]
        );
    }
}

/// Two images sharing their first layers: the ext4-view listing of each
/// matches its own reference, and the images differ (their upper layers do).
#[test]
fn shared_base_different_uppers() {
    if !e2e::tools_present() {
        return;
    }
    let base = cases::changeset().image.layers;
    let mut digests = BTreeSet::new();
    for (i, extra) in ["python", "node"].iter().enumerate() {
        let mut layers = base.clone();
        layers.push(Layer::new(vec![
            Entry::dir("app"),
            Entry::file(
                format!("app/{extra}"),
                cases::pattern(100_000 + i * 4096, i as u8),
            ),
        ]));
        let case = Case {
            name: "shared",
            image: Image::new(layers),
            unspecified: cases::changeset().unspecified,
            expect: vec![Expect::Kind("/app", FileKind::Dir)],
        };
        let Some(f) = flatten_case(&case, SourceKind::OciDir) else {
            return;
        };
        let viewed = list_ext4_image(&f.image, &["/lost+found"]).unwrap();
        assert_eq!(
            viewed[&format!("/app/{extra}")].size,
            100_000 + i as u64 * 4096
        );
        digests.insert(f.digest);
    }
    assert_eq!(digests.len(), 2);
}

/// The flattened tree does not depend on the source kind: oci dir,
/// oci-archive and docker-archive of the same layers list the same through
/// ext4-view.
#[test]
fn source_kinds_agree() {
    let mut case = cases::changeset();
    for l in &mut case.image.layers {
        l.compression = Compression::Gzip;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut listings = Vec::new();
    for kind in [
        SourceKind::OciDir,
        SourceKind::OciArchive,
        SourceKind::DockerArchive,
    ] {
        let dir = tmp.path().join(format!("{kind:?}"));
        std::fs::create_dir(&dir).unwrap();
        let src = write_source(&case, kind, &dir);
        let image = dir.join("disk.img");
        flatten(&src, &image).unwrap_or_else(|e| panic!("flatten {src}: {e}"));
        listings.push((kind, list_ext4_image(&image, &["/lost+found"]).unwrap()));
    }
    for (kind, l) in &listings[1..] {
        assert_same(
            "oci dir",
            &listings[0].1,
            &format!("{kind:?}"),
            l,
            &Mask::default(),
        );
    }
}

/// Dedup-aware layout: two images sharing two base layers (about 8 MiB of
/// file data in files of odd sizes) but with different upper layers, one of
/// which deletes one base file and replaces another, have the base layers'
/// data in identical 512 KiB chunks at identical offsets (deleted data stays
/// where it was, its blocks marked free: e2fsck checks the bitmaps).
#[test]
fn base_layer_data_is_shared() {
    const CHUNK: usize = 512 << 10;
    if !require_tool("e2fsck") {
        return;
    }
    let file_len = |i: usize| (512 << 10) + 1000 * i + 77;
    let base: Vec<Layer> = (0..2u8)
        .map(|l| {
            let files = (0..8u8).map(|i| {
                let data = cases::pattern(file_len(usize::from(i)), l * 16 + i);
                Entry::file(format!("base{l}-{i}"), data)
            });
            Layer::new(files.collect()).compressed(Compression::Gzip)
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for (i, upper) in ["python", "node"].iter().enumerate() {
        let mut layers = base.clone();
        let mut entries = vec![Entry::file(
            format!("app-{upper}"),
            cases::pattern(300_000 + i * 70_001, 200 + i as u8),
        )];
        if i == 1 {
            entries.push(Entry::whiteout("base0-3"));
            entries.push(Entry::file("base1-5", b"replaced"));
        }
        layers.push(Layer::new(entries));
        let dir = tmp.path().join(upper);
        let layout = dir.join("oci");
        Image::new(layers).write_oci_layout(&layout, "t").unwrap();
        let image = dir.join("disk.img");
        flatten(&format!("oci:{}:t", layout.display()), &image).unwrap();
        assert_fsck_clean(&image);
        images.push(std::fs::read(&image).unwrap());
    }
    let chunks = |b: &[u8]| -> Vec<Vec<u8>> { b.chunks(CHUNK).map(<[u8]>::to_vec).collect() };
    let (a, b) = (chunks(&images[0]), chunks(&images[1]));
    let same_nonzero = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x == y && x.iter().any(|&v| v != 0))
        .count();
    let layer_bytes: usize = (0..8).map(file_len).sum();
    // Each base layer fills at least this many whole chunks.
    let needed = 2 * (layer_bytes / CHUNK);
    assert!(
        same_nonzero >= needed,
        "only {same_nonzero} non-zero chunks are identical at the same offset; \
         the two base layers' data fill at least {needed}"
    );
}

fn one_file_image(content: &str) -> Image {
    Image::new(vec![Layer::new(vec![Entry::file("arch", content)])])
}

/// A tag naming an image index picks the linux/amd64 image from it.
#[test]
fn multi_platform_index_picks_amd64() {
    if !require_tool("e2fsck") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    let (arm, amd) = (one_file_image("arm64"), one_file_image("amd64"));
    Image::write_multi_platform_layout(&[(&arm, "arm64"), (&amd, "amd64")], &layout, "multi")
        .unwrap();
    let image = tmp.path().join("disk.img");
    flatten(&format!("oci:{}:multi", layout.display()), &image).unwrap();
    assert_fsck_clean(&image);
    let listing = list_ext4_image(&image, &["/lost+found"]).unwrap();
    let bad = cases::check(
        &listing,
        &[Expect::Content("/arch".into(), b"amd64".to_vec())],
    );
    assert!(bad.is_empty(), "{bad:?}");
}

/// `oci:DIR` without `:REF` works when the layout holds one image.
#[test]
fn oci_dir_without_ref() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("oci");
    one_file_image("only")
        .write_oci_layout(&layout, "whatever")
        .unwrap();
    let image = tmp.path().join("disk.img");
    flatten(&format!("oci:{}", layout.display()), &image).unwrap();
    let listing = list_ext4_image(&image, &["/lost+found"]).unwrap();
    let bad = cases::check(
        &listing,
        &[Expect::Content("/arch".into(), b"only".to_vec())],
    );
    assert!(bad.is_empty(), "{bad:?}");
}
