//! The JSON documents of an image, as far as flattening needs them.
//!
//! Only the fields we use are declared; serde ignores the rest, so newer
//! documents with extra fields still parse.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest::Digest;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list (the Docker name for an index).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The annotation naming an image in an OCI layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The annotation Docker and containerd put the full image name in.
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A content descriptor: what a blob is, its digest and size.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type; older documents may leave it out.
    #[serde(default)]
    pub media_type: String,
    /// The blob's digest.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Platform, in an index.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations, in an index.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The platform an index entry is for.
#[derive(Clone, Debug, Deserialize)]
pub struct Platform {
    /// CPU architecture, as Go names it (`amd64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system (`linux`).
    #[serde(default)]
    pub os: String,
    /// CPU variant (`v8` for arm64), when the index records one.
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image index (also `index.json` of a layout) or Docker manifest list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Its own media type, when stated.
    #[serde(default)]
    pub media_type: String,
    /// The manifests (or nested indexes) it lists.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Its own media type, when stated.
    #[serde(default)]
    pub media_type: String,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<Descriptor>,
}

/// One image of a `docker save` archive's `manifest.json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerArchiveImage {
    /// Path of the config file inside the archive.
    pub config: String,
    /// `name:tag` references.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars, bottom first.
    pub layers: Vec<String>,
}

/// An image config (OCI and Docker share the fields we read).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfigFile {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// How to run it.
    #[serde(default)]
    pub config: Option<RunSection>,
    /// The layers' uncompressed digests.
    pub rootfs: RootFs,
}

/// The `config` section of an image config.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunSection {
    /// `User`.
    #[serde(default)]
    pub user: Option<String>,
    /// `Env`.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// `Entrypoint`.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `WorkingDir`.
    #[serde(default)]
    pub working_dir: Option<String>,
}

/// The `rootfs` section of an image config.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    /// Uncompressed digest of each layer, bottom first.
    pub diff_ids: Vec<Digest>,
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// A media type that is not a layer we can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownMediaType;

/// What a layer media type says about compression. Docker's types name
/// gzip, but tools are known to push plain tars under them, so those are
/// sniffed (`Ok(None)`).
pub fn layer_compression(media_type: &str) -> Result<Option<Compression>, UnknownMediaType> {
    let oci = media_type
        .strip_prefix("application/vnd.oci.image.layer.v1.")
        .or_else(|| {
            media_type.strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.")
        });
    if let Some(rest) = oci {
        return match rest {
            "tar" => Ok(Some(Compression::None)),
            "tar+gzip" => Ok(Some(Compression::Gzip)),
            "tar+zstd" => Ok(Some(Compression::Zstd)),
            _ => Err(UnknownMediaType),
        };
    }
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.diff.tar" => Ok(None),
        _ => Err(UnknownMediaType),
    }
}

/// Recognize a compressed stream by its first bytes.
pub fn sniff_compression(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_media_types() {
        use Compression::*;
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Ok(Some(None))),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Ok(Some(Gzip)),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Ok(Some(Zstd)),
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Ok(Some(Gzip)),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Ok(Option::None),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Ok(Option::None),
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+bzip2",
                Err(UnknownMediaType),
            ),
            ("text/plain", Err(UnknownMediaType)),
        ];
        for (mt, want) in cases {
            assert_eq!(layer_compression(mt), want, "{mt}");
        }
        assert_eq!(sniff_compression(&[0x1f, 0x8b, 8]), Gzip);
        assert_eq!(sniff_compression(&[0x28, 0xb5, 0x2f, 0xfd]), Zstd);
        assert_eq!(sniff_compression(b"etc/"), None);
    }

    #[test]
    fn config_parses_with_missing_sections() {
        let c: ConfigFile = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"history":[]}"#,
        )
        .unwrap();
        assert!(c.config.is_none());
        let c: ConfigFile = serde_json::from_str(
            r#"{"config":{"Env":null,"Cmd":["sh"],"WorkingDir":"/w","Labels":{"a":"b"}},"rootfs":{"diff_ids":[]}}"#,
        )
        .unwrap();
        let run = c.config.unwrap();
        assert_eq!(run.cmd.unwrap(), ["sh"]);
        assert!(run.env.is_none());
    }
}
