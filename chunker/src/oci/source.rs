//! Where an image comes from, as written on the command line.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::registry::{Reference, ReferenceError, RegistryOptions, RegistrySource};

/// An image source: a transport, a path and optionally which image in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageSource {
    /// `oci:DIR[:REF]`: an OCI image layout directory.
    OciLayout {
        /// The layout directory (holding `index.json` and `blobs/`).
        dir: PathBuf,
        /// Matched against `org.opencontainers.image.ref.name`.
        reference: Option<String>,
    },
    /// `oci-archive:FILE[:REF]`: a tar of an OCI image layout.
    OciArchive {
        /// The tar file.
        file: PathBuf,
        /// Matched against `org.opencontainers.image.ref.name`.
        reference: Option<String>,
    },
    /// `docker-archive:FILE[:REF]`: the tar that `docker save` writes.
    DockerArchive {
        /// The tar file.
        file: PathBuf,
        /// Matched against the archive's `RepoTags` (or, for archives that
        /// hold an OCI layout, the ref name annotations).
        reference: Option<String>,
    },
    /// `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`: a registry
    /// (boxed: its options are much larger than a path).
    Registry(Box<RegistrySource>),
}

impl ImageSource {
    /// The registry options, when this is a registry source (for the
    /// command line to fill in from its flags).
    pub fn registry_options_mut(&mut self) -> Option<&mut RegistryOptions> {
        match self {
            ImageSource::Registry(r) => Some(&mut r.options),
            _ => None,
        }
    }
}

/// A source string we cannot read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseSourceError {
    /// No known transport prefix.
    #[error(
        "unknown image source {0:?}: expected oci:DIR[:REF], oci-archive:FILE[:REF], docker-archive:FILE[:REF] or docker://HOST/REPO[:TAG|@DIGEST]"
    )]
    UnknownTransport(String),
    /// A `docker://` reference that does not parse.
    #[error(transparent)]
    Registry(#[from] ReferenceError),
    /// The transport is given but the path is empty.
    #[error("image source {0:?} names no path")]
    EmptyPath(String),
}

/// Split `PATH[:REF]`. A reference may itself hold colons (`app:1`), so,
/// as skopeo does, the path ends at the first colon; but a path that exists
/// wins, so a directory or file whose name contains a colon still works.
fn split_ref(rest: &str) -> (PathBuf, Option<String>) {
    if Path::new(rest).exists() {
        return (PathBuf::from(rest), None);
    }
    let colons = rest.match_indices(':').map(|(i, _)| i);
    let mut first = None;
    for i in colons {
        let (path, reference) = (&rest[..i], &rest[i + 1..]);
        if path.is_empty() || reference.is_empty() {
            continue;
        }
        first.get_or_insert(i);
        if Path::new(path).exists() {
            return (PathBuf::from(path), Some(reference.to_owned()));
        }
    }
    match first {
        Some(i) => (PathBuf::from(&rest[..i]), Some(rest[i + 1..].to_owned())),
        None => (PathBuf::from(rest), None),
    }
}

impl FromStr for ImageSource {
    type Err = ParseSourceError;

    fn from_str(s: &str) -> Result<Self, ParseSourceError> {
        if s.starts_with("docker://") {
            return Ok(ImageSource::Registry(Box::new(RegistrySource {
                reference: Reference::parse(s)?,
                options: RegistryOptions::default(),
            })));
        }
        let (transport, rest) = s
            .split_once(':')
            .ok_or_else(|| ParseSourceError::UnknownTransport(s.into()))?;
        if rest.is_empty() {
            return Err(ParseSourceError::EmptyPath(s.into()));
        }
        let (path, reference) = split_ref(rest);
        Ok(match transport {
            "oci" => ImageSource::OciLayout {
                dir: path,
                reference,
            },
            "oci-archive" => ImageSource::OciArchive {
                file: path,
                reference,
            },
            "docker-archive" => ImageSource::DockerArchive {
                file: path,
                reference,
            },
            _ => return Err(ParseSourceError::UnknownTransport(s.into())),
        })
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (transport, path, reference) = match self {
            ImageSource::OciLayout { dir, reference } => ("oci", dir, reference),
            ImageSource::OciArchive { file, reference } => ("oci-archive", file, reference),
            ImageSource::DockerArchive { file, reference } => ("docker-archive", file, reference),
            ImageSource::Registry(r) => return write!(f, "{}", r.reference),
        };
        write!(f, "{transport}:{}", path.display())?;
        if let Some(r) = reference {
            write!(f, ":{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_transports_and_refs() {
        assert_eq!(
            "oci:/nonexistent/layout:v1".parse::<ImageSource>().unwrap(),
            ImageSource::OciLayout {
                dir: "/nonexistent/layout".into(),
                reference: Some("v1".into())
            }
        );
        assert_eq!(
            "oci:/nonexistent/layout".parse::<ImageSource>().unwrap(),
            ImageSource::OciLayout {
                dir: "/nonexistent/layout".into(),
                reference: None
            }
        );
        assert_eq!(
            "docker-archive:img.tar".parse::<ImageSource>().unwrap(),
            ImageSource::DockerArchive {
                file: "img.tar".into(),
                reference: None
            }
        );
        assert_eq!(
            "oci-archive:/x/img.tar:latest"
                .parse::<ImageSource>()
                .unwrap(),
            ImageSource::OciArchive {
                file: "/x/img.tar".into(),
                reference: Some("latest".into())
            }
        );
        assert!(matches!(
            "docker:busybox".parse::<ImageSource>(),
            Err(ParseSourceError::UnknownTransport(_))
        ));
        let s = "docker://localhost:5000/app:v1";
        assert!(matches!(
            s.parse::<ImageSource>(),
            Ok(ImageSource::Registry(_))
        ));
        assert_eq!(s.parse::<ImageSource>().unwrap().to_string(), s);
        assert!(matches!(
            "docker://localhost:5000/".parse::<ImageSource>(),
            Err(ParseSourceError::Registry(_))
        ));
        assert!(matches!(
            "oci:".parse::<ImageSource>(),
            Err(ParseSourceError::EmptyPath(_))
        ));
        assert!("plainpath".parse::<ImageSource>().is_err());
        assert_eq!(
            "docker-archive:/nonexistent/a.tar:app:1"
                .parse::<ImageSource>()
                .unwrap(),
            ImageSource::DockerArchive {
                file: "/nonexistent/a.tar".into(),
                reference: Some("app:1".into())
            }
        );
    }

    #[test]
    fn existing_path_with_colon_is_the_whole_path() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout:v2");
        std::fs::create_dir(&dir).unwrap();
        let s = format!("oci:{}", dir.display());
        assert_eq!(
            s.parse::<ImageSource>().unwrap(),
            ImageSource::OciLayout {
                dir: dir.clone(),
                reference: None
            }
        );
        assert_eq!(s.parse::<ImageSource>().unwrap().to_string(), s);
        // An existing path with a colon, then a reference with one.
        let with_ref = format!("oci:{}:app:1", dir.display());
        assert_eq!(
            with_ref.parse::<ImageSource>().unwrap(),
            ImageSource::OciLayout {
                dir,
                reference: Some("app:1".into())
            }
        );
    }
}
