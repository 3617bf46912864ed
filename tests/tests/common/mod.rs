//! The call into the flattener and the end-to-end run of one case, shared
//! by the integration test files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use chunker::flatten::{FlattenOptions, flatten_to_file};
use chunker::oci::ImageSource;
use tests::cases::Case;
use tests::e2e::{self, Reference, dir_names, error_chain, image_digest};

/// Flattens `source` (`oci:DIR[:REF]`, `oci-archive:FILE`, `docker-archive:FILE`)
/// into `output`, returning the full error chain as text on failure.
pub fn flatten(source: &str, output: &Path) -> Result<(), String> {
    flatten_with(source, output, &FlattenOptions::default())
}

/// [`flatten`] with options.
pub fn flatten_with(source: &str, output: &Path, opts: &FlattenOptions) -> Result<(), String> {
    let src: ImageSource = source
        .parse()
        .unwrap_or_else(|e| panic!("image source {source:?} does not parse: {e}"));
    flatten_to_file(&src, output, opts)
        .map(|_| ())
        .map_err(|e| error_chain(&e))
}

/// How a case's image is handed to the flattener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// `oci:DIR:REF`.
    OciDir,
    /// `oci-archive:FILE`.
    OciArchive,
    /// `docker-archive:FILE`.
    DockerArchive,
}

/// Writes the case's image in the given form under `dir`; returns the
/// source string.
pub fn write_source(case: &Case, kind: SourceKind, dir: &Path) -> String {
    match kind {
        SourceKind::OciDir => {
            let layout = dir.join("oci");
            case.image
                .write_oci_layout(&layout, "test")
                .expect("write layout");
            format!("oci:{}:test", layout.display())
        }
        SourceKind::OciArchive => {
            let f = dir.join("image.oci.tar");
            case.image
                .write_oci_archive(&f, "test")
                .expect("write oci-archive");
            format!("oci-archive:{}", f.display())
        }
        SourceKind::DockerArchive => {
            let f = dir.join("image.docker.tar");
            case.image
                .write_docker_archive(&f, "example.com/test:latest")
                .expect("write docker-archive");
            format!("docker-archive:{}", f.display())
        }
    }
}

/// The result of [`flatten_case`]: where the image is and its digest.
pub struct Flattened {
    /// Keeps the work directory alive.
    pub tmp: tempfile::TempDir,
    /// The image file.
    pub image: PathBuf,
    /// Its SHA-256.
    pub digest: String,
}

/// Flattens a case from the given source kind, checks that only the image
/// is left in the output directory, that a second run gives the same bytes,
/// and (with `umoci`) runs every image check against the umoci reference and
/// the expected model. `None` when the checks were skipped (SKIP printed).
pub fn flatten_case(case: &Case, kind: SourceKind) -> Option<Flattened> {
    if !e2e::tools_present() {
        return None;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = write_source(case, kind, tmp.path());
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let image = out_dir.join("disk.img");
    flatten(&src, &image).unwrap_or_else(|e| panic!("flatten {src}: {e}"));
    assert_eq!(
        dir_names(&out_dir),
        ["disk.img"],
        "leftovers next to the image"
    );
    let digest = image_digest(&image);

    let again = out_dir.join("again.img");
    flatten(&src, &again).unwrap_or_else(|e| panic!("second flatten {src}: {e}"));
    assert_eq!(digest, image_digest(&again), "two flattens of {src} differ");
    std::fs::remove_file(&again).unwrap();

    let listing = e2e::umoci_listing(case, tmp.path())?;
    let reference = Reference {
        name: "umoci",
        listing: Some(&listing),
        expect: &case.expect,
        unspecified: &case.unspecified,
    };
    e2e::verify_image(&image, &reference, tmp.path())?;
    Some(Flattened { tmp, image, digest })
}
