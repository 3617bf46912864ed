//! Opening an image: from a source to its manifest, config and layers.
//!
//! Every JSON document reached through a digest (index, manifest, config)
//! is checked against it before it is parsed. The layers are only located
//! here; [`Image::open_layer`] streams one.

use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::SourceError;
use super::digest::{Digest, HashReader};
use super::layer::LayerStream;
use super::registry::Platform;
use super::source::ImageSource;
use super::spec::{self, Compression, ConfigFile, Descriptor, DockerArchiveImage, Index, Manifest};
use super::store::{Blob, FileRange, Store};

/// Documents larger than this are not image metadata; refusing them keeps a
/// hostile archive from making us allocate without bound.
const MAX_JSON: u64 = 64 * 1024 * 1024;

/// Indexes nest (a layout's `index.json` pointing at a multi-platform
/// index); deeper than this is a loop or nonsense.
const MAX_INDEX_DEPTH: u32 = 4;

/// The parts of an image config a VM needs to start (the manifest's own
/// [`manifest::ImageConfig`], so conversion carries it over as is), plus
/// the platform and the layer digests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// Entrypoint, cmd, env, working dir and user; empty means not set.
    pub run: manifest::ImageConfig,
    /// CPU architecture (`amd64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// `rootfs.diff_ids`: the uncompressed digest of each layer, bottom first.
    pub diff_ids: Vec<Digest>,
}

impl From<ConfigFile> for ImageConfig {
    fn from(c: ConfigFile) -> Self {
        let run = c.config.unwrap_or_default();
        ImageConfig {
            run: manifest::ImageConfig {
                entrypoint: run.entrypoint.unwrap_or_default(),
                cmd: run.cmd.unwrap_or_default(),
                env: run.env.unwrap_or_default(),
                working_dir: run.working_dir.unwrap_or_default(),
                user: run.user.unwrap_or_default(),
            },
            architecture: c.architecture,
            os: c.os,
            diff_ids: c.rootfs.diff_ids,
        }
    }
}

/// Where a layer's blob is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Blob(Digest),
    Member(String),
}

/// One layer of an image, located but not yet read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The blob digest, when the source records it (a legacy `docker save`
    /// archive does not; [`Layer::name`] is then the diff_id).
    pub digest: Option<Digest>,
    /// The uncompressed digest from the config.
    pub diff_id: Digest,
    /// The media type from the manifest; empty for a `docker save` archive.
    pub media_type: String,
    /// The blob size from the manifest, when recorded.
    pub size: Option<u64>,
    compression: Option<Compression>,
    location: Location,
}

impl Layer {
    /// How errors name this layer: its blob digest, else its diff_id.
    pub fn name(&self) -> &Digest {
        self.digest.as_ref().unwrap_or(&self.diff_id)
    }
}

/// An image whose manifest has been found (and checked against its
/// digest) but whose config and layers have not been read yet
/// ([`Image::locate`]).
#[derive(Debug)]
pub struct Located(Found);

#[derive(Debug)]
enum Found {
    /// An image manifest, its bytes checked against `desc`.
    Manifest {
        store: Store,
        desc: Descriptor,
        bytes: Vec<u8>,
    },
    /// A legacy `docker save` archive, opened whole (it is local, and has
    /// no manifest blob to stop at).
    Opened(Image),
}

impl Located {
    /// The manifest digest ([`Image::digest`] once opened).
    pub fn digest(&self) -> &Digest {
        match &self.0 {
            Found::Manifest { desc, .. } => &desc.digest,
            Found::Opened(image) => &image.digest,
        }
    }

    /// Read the config and locate the layers; from a registry, start
    /// downloading them (before the config is fetched).
    pub fn open(self) -> Result<Image, SourceError> {
        let (store, desc, bytes) = match self.0 {
            Found::Manifest { store, desc, bytes } => (store, desc, bytes),
            Found::Opened(image) => return Ok(image),
        };
        open_manifest(store, &desc, &bytes)
    }
}

/// An opened image: the manifest's digest, the config and the layers.
#[derive(Debug)]
pub struct Image {
    store: Store,
    /// The manifest digest; for a legacy `docker save` archive, which has
    /// no manifest blob, the config digest (Docker's image id).
    pub digest: Digest,
    /// The config.
    pub config: ImageConfig,
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
}

impl Image {
    /// Open the image `source` names, checking every metadata blob (and,
    /// from a registry, start downloading its layers).
    pub fn open(source: &ImageSource) -> Result<Image, SourceError> {
        Image::locate(source)?.open()
    }

    /// Find the image manifest `source` names, following indexes, without
    /// reading its config or layers: from a registry, manifest requests
    /// only, no blob. What a conversion record is keyed by.
    pub fn locate(source: &ImageSource) -> Result<Located, SourceError> {
        let found = match source {
            ImageSource::OciLayout { dir, reference } => {
                if !dir.is_dir() {
                    return Err(SourceError::Open {
                        path: dir.clone(),
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no such directory",
                        ),
                    });
                }
                from_layout(Store::Dir(dir.clone()), reference.as_deref())?
            }
            ImageSource::OciArchive { file, reference } => {
                from_layout(Store::open_tar(file)?, reference.as_deref())?
            }
            ImageSource::Registry(source) => {
                let (pull, root) = super::registry::Pull::open(source)?;
                let wanted = pull.platform();
                let store = Store::Registry(std::sync::Arc::new(pull));
                let (desc, bytes) = find_manifest(&store, &root, 0, Some(&wanted))?;
                Found::Manifest { store, desc, bytes }
            }
            ImageSource::DockerArchive { file, reference } => {
                let store = Store::open_tar(file)?;
                // Docker 25 and later also write an OCI layout into the
                // archive; it carries real manifest digests, so prefer it.
                if store.open_path("index.json")?.is_some() {
                    from_layout(store, reference.as_deref())?
                } else {
                    Found::Opened(from_docker_manifest(store, reference.as_deref())?)
                }
            }
        };
        Ok(Located(found))
    }

    /// How the download of `layer`'s blob failed, once it has ended, when
    /// the image comes from a registry and it did fail; `None` otherwise.
    pub fn download_failure(&self, layer: &Layer) -> Option<std::io::Error> {
        match (&self.store, &layer.location) {
            (Store::Registry(pull), Location::Blob(digest)) => pull.verdict(digest),
            _ => None,
        }
    }

    /// Whether the image comes from a registry whose download spool's
    /// files hold, or will hold, layer bytes not yet read (bytes read as
    /// they arrive are handed over in memory and do not count).
    pub fn spooling(&self) -> bool {
        match &self.store {
            Store::Registry(pull) => pull.spooling(),
            _ => false,
        }
    }

    /// Start streaming `layer` (one of [`Image::layers`]), decompressed.
    /// Its digests are checked by [`LayerStream::finish`].
    pub fn open_layer(&self, layer: &Layer) -> Result<(LayerStream, String), SourceError> {
        let blob = match &layer.location {
            Location::Blob(d) => self.store.open_blob(d)?,
            Location::Member(path) => {
                Blob::Unchecked(self.store.open_path(path)?.ok_or_else(|| {
                    SourceError::MissingFile {
                        location: self.store.location(),
                        name: path.clone(),
                    }
                })?)
            }
        };
        let compression = match layer.compression {
            Some(c) => c,
            None => {
                let mut head = [0u8; 4];
                let n = blob
                    .peek(&mut head)
                    .map_err(|source| SourceError::ReadBlob {
                        digest: layer.name().clone(),
                        source,
                    })?;
                spec::sniff_compression(&head[..n])
            }
        };
        let media_type = if layer.media_type.is_empty() {
            match compression {
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            }
            .to_owned()
        } else {
            layer.media_type.clone()
        };
        let stream = LayerStream::new(
            blob,
            compression,
            layer.name().clone(),
            layer.digest.clone(),
            layer.size,
            layer.diff_id.clone(),
        )?;
        Ok((stream, media_type))
    }
}

/// Read a whole small file, checking its digest when one is given.
fn read_small(
    mut file: FileRange,
    what: &str,
    expected: Option<&Digest>,
) -> Result<(Vec<u8>, Digest), SourceError> {
    if file.remaining() > MAX_JSON {
        return Err(SourceError::TooLarge {
            what: what.to_owned(),
            size: file.remaining(),
        });
    }
    let mut bytes = Vec::with_capacity(file.remaining() as usize);
    let mut hashing = HashReader::new(&mut file);
    hashing
        .read_to_end(&mut bytes)
        .map_err(|source| SourceError::ReadFile {
            what: what.to_owned(),
            source,
        })?;
    let (_, actual, _) = hashing.finish();
    let actual = actual.expect("a hashing reader has a digest");
    if let Some(expected) = expected
        && *expected != actual
    {
        return Err(SourceError::DigestMismatch {
            digest: expected.clone(),
            actual,
        });
    }
    Ok((bytes, actual))
}

fn parse<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|source| SourceError::Json {
        what: what.to_owned(),
        source,
    })
}

/// Read the blob a descriptor names, checking digest and size.
fn read_blob(store: &Store, desc: &Descriptor, what: &str) -> Result<Vec<u8>, SourceError> {
    if let Store::Registry(pull) = store {
        // Manifests and blobs are different endpoints; both are checked.
        return Ok(if what == "manifest" {
            pull.manifest(desc)?
        } else {
            pull.config(desc)?
        });
    }
    let what = format!("{what} {}", desc.digest);
    let (file, _) = store.open_blob(&desc.digest)?.into_parts();
    let (bytes, _) = read_small(file, &what, Some(&desc.digest))?;
    if bytes.len() as u64 != desc.size {
        return Err(SourceError::SizeMismatch {
            digest: desc.digest.clone(),
            expected: desc.size,
            actual: bytes.len() as u64,
        });
    }
    Ok(bytes)
}

fn ref_names(index: &Index) -> String {
    let names: Vec<&str> = index
        .manifests
        .iter()
        .map(|m| {
            // The full name, where recorded, says more than a bare tag.
            m.annotations
                .get(spec::CONTAINERD_NAME)
                .or_else(|| m.annotations.get(spec::REF_NAME))
                .map_or("<unnamed>", String::as_str)
        })
        .collect();
    names.join(", ")
}

/// Whether an index entry is the image `r` names: by its ref name
/// annotation, or by the full name Docker and containerd record
/// (`docker.io/library/app:1`), which `app:1` and `library/app:1` also name.
fn names_ref(desc: &Descriptor, r: &str) -> bool {
    if desc.annotations.get(spec::REF_NAME).map(String::as_str) == Some(r) {
        return true;
    }
    let Some(full) = desc.annotations.get(spec::CONTAINERD_NAME) else {
        return false;
    };
    [full.as_str()]
        .into_iter()
        .chain(full.strip_prefix("docker.io/"))
        .chain(full.strip_prefix("docker.io/library/"))
        .any(|name| name == r)
}

fn from_layout(store: Store, reference: Option<&str>) -> Result<Found, SourceError> {
    let file = store
        .open_path("index.json")?
        .ok_or_else(|| SourceError::MissingFile {
            location: store.location(),
            name: "index.json".into(),
        })?;
    // index.json is the root of trust of a layout: nothing names its digest.
    let (bytes, _) = read_small(file, "index.json", None)?;
    let index: Index = parse(&bytes, "index.json")?;
    let chosen = match reference {
        Some(r) => index
            .manifests
            .iter()
            .find(|m| names_ref(m, r))
            .ok_or_else(|| SourceError::RefNotFound {
                reference: r.to_owned(),
                location: store.location(),
                available: ref_names(&index),
            })?,
        None => match index.manifests.as_slice() {
            [one] => one,
            _ => {
                return Err(SourceError::AmbiguousImage {
                    location: store.location(),
                    count: index.manifests.len(),
                    available: ref_names(&index),
                });
            }
        },
    };
    let chosen = chosen.clone();
    let (desc, bytes) = find_manifest(&store, &chosen, 0, None)?;
    Ok(Found::Manifest { store, desc, bytes })
}

fn is_index(media_type: &str) -> bool {
    media_type == spec::OCI_INDEX || media_type == spec::DOCKER_LIST
}

fn is_manifest(media_type: &str) -> bool {
    media_type == spec::OCI_MANIFEST || media_type == spec::DOCKER_MANIFEST
}

/// Follow a descriptor through indexes to an image manifest: its
/// descriptor and its checked bytes. `wanted` picks from an index;
/// without it, linux/amd64 or the only image.
fn find_manifest(
    store: &Store,
    desc: &Descriptor,
    depth: u32,
    wanted: Option<&Platform>,
) -> Result<(Descriptor, Vec<u8>), SourceError> {
    if depth > MAX_INDEX_DEPTH {
        return Err(SourceError::TooDeep {
            digest: desc.digest.clone(),
        });
    }
    let bytes = read_blob(store, desc, "manifest")?;
    let mut media_type = desc.media_type.clone();
    if media_type.is_empty() {
        // Descriptors without a media type predate the spec making it
        // mandatory; the document itself says what it is.
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            media_type: String,
            manifests: Option<serde_json::Value>,
        }
        let probe: Probe = parse(&bytes, &format!("manifest {}", desc.digest))?;
        media_type = match (probe.media_type.is_empty(), probe.manifests.is_some()) {
            (false, _) => probe.media_type,
            (true, true) => spec::OCI_INDEX.to_owned(),
            (true, false) => spec::OCI_MANIFEST.to_owned(),
        };
    }
    if is_index(&media_type) {
        let index: Index = parse(&bytes, &format!("index {}", desc.digest))?;
        let next = pick_platform(&index, &desc.digest, wanted)?.clone();
        return find_manifest(store, &next, depth + 1, wanted);
    }
    if !is_manifest(&media_type) {
        return Err(SourceError::UnsupportedMediaType {
            media_type,
            digest: desc.digest.clone(),
        });
    }
    Ok((desc.clone(), bytes))
}

/// Open the image manifest `bytes` (checked against `desc`): read its
/// config and locate its layers.
fn open_manifest(store: Store, desc: &Descriptor, bytes: &[u8]) -> Result<Image, SourceError> {
    let manifest: Manifest = parse(bytes, &format!("manifest {}", desc.digest))?;
    // Media types first: a layer we cannot read fails before any download.
    let compressions = manifest
        .layers
        .iter()
        .map(|l| {
            spec::layer_compression(&l.media_type).map_err(|spec::UnknownMediaType| {
                SourceError::UnknownLayerMediaType {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                }
            })
        })
        .collect::<Result<Vec<_>, SourceError>>()?;
    // From a registry, the layers start to download while the config comes
    // (a failure below drops the pull, which cancels them).
    if let Store::Registry(pull) = &store {
        pull.start(
            manifest
                .layers
                .iter()
                .map(|l| (l.digest.clone(), l.size))
                .collect(),
        )?;
    }
    let config_bytes = read_blob(&store, &manifest.config, "config")?;
    let config: ConfigFile = parse(&config_bytes, &format!("config {}", manifest.config.digest))?;
    let config = ImageConfig::from(config);
    if config.diff_ids.len() != manifest.layers.len() {
        return Err(SourceError::LayerCount {
            digest: desc.digest.clone(),
            layers: manifest.layers.len(),
            diff_ids: config.diff_ids.len(),
        });
    }
    let layers = manifest
        .layers
        .iter()
        .zip(&config.diff_ids)
        .zip(compressions)
        .map(|((l, diff_id), compression)| Layer {
            digest: Some(l.digest.clone()),
            diff_id: diff_id.clone(),
            media_type: l.media_type.clone(),
            size: Some(l.size),
            compression,
            location: Location::Blob(l.digest.clone()),
        })
        .collect();
    Ok(Image {
        store,
        digest: desc.digest.clone(),
        config,
        layers,
    })
}

/// From an index, the `wanted` image; without one, the linux/amd64 image
/// or the only one. Entries for the `unknown` platform are attestations,
/// not images.
fn pick_platform<'a>(
    index: &'a Index,
    digest: &Digest,
    wanted: Option<&Platform>,
) -> Result<&'a Descriptor, SourceError> {
    let images: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|m| m.platform.as_ref().is_none_or(|p| p.os != "unknown"))
        .collect();
    let amd64 = Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
    };
    let want = wanted.unwrap_or(&amd64);
    let is_wanted = |m: &&&Descriptor| m.platform.as_ref().is_some_and(|p| want.matches(p));
    if let Some(m) = images.iter().find(is_wanted) {
        return Ok(m);
    }
    match images.as_slice() {
        // A single-image index without platforms is that image.
        [one] if wanted.is_none() || one.platform.is_none() => Ok(one),
        _ => Err(SourceError::NoPlatform {
            digest: digest.clone(),
            wanted: want.to_string(),
            available: images
                .iter()
                .map(|m| {
                    m.platform
                        .as_ref()
                        .map_or("<no platform>".to_owned(), |p| match &p.variant {
                            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                            None => format!("{}/{}", p.os, p.architecture),
                        })
                })
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The digest a `docker save` file name states: `blobs/sha256/<hex>`
/// (Docker 25+) or `<hex>.json` (older configs).
fn digest_in_name(path: &str) -> Option<Digest> {
    let name = Path::new(path).file_name()?.to_str()?;
    let hex = name.strip_suffix(".json").unwrap_or(name);
    let in_blobs = path.trim_start_matches("./").starts_with("blobs/sha256/");
    if in_blobs || name.ends_with(".json") {
        Digest::from_hex(hex)
    } else {
        None
    }
}

fn from_docker_manifest(store: Store, reference: Option<&str>) -> Result<Image, SourceError> {
    let file = store
        .open_path("manifest.json")?
        .ok_or_else(|| SourceError::MissingFile {
            location: store.location(),
            name: "manifest.json (or index.json)".into(),
        })?;
    let (bytes, _) = read_small(file, "manifest.json", None)?;
    let images: Vec<DockerArchiveImage> = parse(&bytes, "manifest.json")?;
    let tags = |i: &DockerArchiveImage| i.repo_tags.clone().unwrap_or_default();
    let available = || {
        images
            .iter()
            .map(|i| {
                let t = tags(i);
                if t.is_empty() {
                    "<untagged>".to_owned()
                } else {
                    t.join(" ")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let image = match reference {
        Some(r) => images
            .iter()
            .find(|i| tags(i).iter().any(|t| t == r))
            .ok_or_else(|| SourceError::RefNotFound {
                reference: r.to_owned(),
                location: store.location(),
                available: available(),
            })?,
        None => match images.as_slice() {
            [one] => one,
            _ => {
                return Err(SourceError::AmbiguousImage {
                    location: store.location(),
                    count: images.len(),
                    available: available(),
                });
            }
        },
    };
    let config_file = store
        .open_path(&image.config)?
        .ok_or_else(|| SourceError::MissingFile {
            location: store.location(),
            name: image.config.clone(),
        })?;
    let named = digest_in_name(&image.config);
    let (config_bytes, config_digest) = read_small(
        config_file,
        &format!("config {}", image.config),
        named.as_ref(),
    )?;
    let config: ConfigFile = parse(&config_bytes, &format!("config {}", image.config))?;
    let config = ImageConfig::from(config);
    if config.diff_ids.len() != image.layers.len() {
        return Err(SourceError::LayerCount {
            digest: config_digest,
            layers: image.layers.len(),
            diff_ids: config.diff_ids.len(),
        });
    }
    let layers = image
        .layers
        .iter()
        .zip(&config.diff_ids)
        .map(|(path, diff_id)| Layer {
            digest: digest_in_name(path),
            diff_id: diff_id.clone(),
            media_type: String::new(),
            size: None,
            compression: None,
            location: Location::Member(path.clone()),
        })
        .collect();
    Ok(Image {
        store,
        digest: config_digest,
        config,
        layers,
    })
}
