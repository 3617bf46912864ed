//! Builds OCI images from a list of layers, each a list of tar entries, and
//! writes them as an OCI layout directory, an oci-archive or a docker-archive.
//!
//! Output is deterministic: no clock, fixed entry order, gzip without a
//! timestamp, JSON with sorted keys. Helpers at the end turn a good image into
//! the bad inputs the flattener must reject.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::tarw::{RawHeader, TarWriter};

mod entry;

pub use entry::{DEFAULT_MTIME, Data, Entry, Kind, LongNames};

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
    /// The Docker layer media type (zstd has the OCI one only).
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.docker.image.rootfs.diff.tar",
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

/// One layer: entries in archive order, and how it is stored.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Entries in the order they appear in the tar.
    pub entries: Vec<Entry>,
    /// Compression of the blob.
    pub compression: Compression,
    /// A media type to write instead of the one `compression` implies.
    pub media_type: Option<String>,
    /// Bad input: cut the tar stream after this many bytes (before compressing).
    pub truncate_tar_at: Option<u64>,
    /// Bad input: damage the compressed stream in its middle (digest stays valid).
    pub corrupt_compressed: bool,
    /// A ready-made tar stream (from another tool) used instead of `entries`.
    pub raw_tar: Option<Vec<u8>>,
}

impl Layer {
    /// An uncompressed layer of these entries.
    pub fn new(entries: Vec<Entry>) -> Self {
        Layer {
            entries,
            compression: Compression::None,
            media_type: None,
            truncate_tar_at: None,
            corrupt_compressed: false,
            raw_tar: None,
        }
    }
    /// Sets the compression.
    pub fn compressed(mut self, c: Compression) -> Self {
        self.compression = c;
        self
    }
}

/// The runtime part of the image config.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// `config.Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `config.Cmd`.
    pub cmd: Vec<String>,
    /// `config.Env`.
    pub env: Vec<String>,
    /// `config.WorkingDir`.
    pub working_dir: String,
    /// `config.User`.
    pub user: String,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["echo hello".into()],
            env: vec![
                "PATH=/usr/local/bin:/usr/bin:/bin".into(),
                "LANG=C.UTF-8".into(),
            ],
            working_dir: "/".into(),
            user: "0:0".into(),
        }
    }
}

/// A whole image.
#[derive(Clone, Debug)]
pub struct Image {
    /// Layers, lowest first.
    pub layers: Vec<Layer>,
    /// Runtime config.
    pub config: RunConfig,
    /// Write Docker media types (manifest, config, layers) in OCI layouts.
    pub docker_media_types: bool,
    /// The config's architecture.
    pub architecture: String,
}

impl Default for Image {
    fn default() -> Self {
        Image {
            layers: Vec::new(),
            config: RunConfig::default(),
            docker_media_types: false,
            architecture: "amd64".into(),
        }
    }
}

/// Digests of what was written (`sha256:<hex>`).
#[derive(Clone, Debug)]
pub struct Written {
    /// The manifest blob.
    pub manifest: String,
    /// The config blob.
    pub config: String,
    /// Each layer blob, lowest first.
    pub layers: Vec<String>,
    /// Each layer's diff_id (digest of the uncompressed tar).
    pub diff_ids: Vec<String>,
}

struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    limit: Option<u64>,
    written: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = match self.limit {
            Some(l) => buf.len().min(l.saturating_sub(self.written) as usize),
            None => buf.len(),
        };
        self.inner.write_all(&buf[..take])?;
        self.hash.update(&buf[..take]);
        self.written += take as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hash_writer<W: Write>(inner: W, limit: Option<u64>) -> HashWriter<W> {
    HashWriter {
        inner,
        hash: Sha256::new(),
        limit,
        written: 0,
    }
}

fn digest_of(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// `sha256:<hex>` of a byte string.
pub fn sha256_digest(bytes: &[u8]) -> String {
    digest_of(Sha256::new_with_prefix(bytes))
}

/// `sha256:<hex>` of a file's content.
pub fn file_digest(path: &Path) -> io::Result<String> {
    let mut h = hash_writer(io::sink(), None);
    io::copy(&mut File::open(path)?, &mut h)?;
    Ok(digest_of(h.hash))
}

/// The hex part of `sha256:<hex>`.
pub fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Path of a blob in an OCI layout.
pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(hex_of(digest))
}

/// Writes a layer blob into `blobs`, returning (digest, diff_id, size).
fn write_layer(layer: &Layer, blobs: &Path) -> io::Result<(String, String, u64)> {
    let tmp = blobs.join(".layer.tmp");
    let file = BufWriter::new(File::create(&tmp)?);
    let outer = hash_writer(file, None);
    let (outer, diff_id) = match layer.compression {
        Compression::None => {
            let inner = hash_writer(outer, layer.truncate_tar_at);
            let inner = write_layer_tar(layer, inner)?;
            (inner.inner, inner.hash)
        }
        Compression::Gzip => {
            let gz = flate2::write::GzEncoder::new(outer, flate2::Compression::new(6));
            let inner = write_layer_tar(layer, hash_writer(gz, layer.truncate_tar_at))?;
            (inner.inner.finish()?, inner.hash)
        }
        Compression::Zstd => {
            let z = zstd::stream::write::Encoder::new(outer, 3)?;
            let inner = write_layer_tar(layer, hash_writer(z, layer.truncate_tar_at))?;
            (inner.inner.finish()?, inner.hash)
        }
    };
    let mut digest = digest_of(outer.hash);
    let mut size = outer.written;
    outer
        .inner
        .into_inner()
        .map_err(|e| e.into_error())?
        .sync_all()?;
    if layer.corrupt_compressed {
        let mut f = fs::OpenOptions::new().read(true).write(true).open(&tmp)?;
        // Past the gzip/zstd header, inside the compressed data.
        let at = (size / 2).max(20);
        assert!(at + 8 < size, "layer too small to corrupt");
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&[0xde, 0xad, 0xbe, 0xef, 0x55, 0xaa, 0x00, 0xff])?;
        drop(f);
        digest = file_digest(&tmp)?;
        size = fs::metadata(&tmp)?.len();
    }
    fs::rename(&tmp, blobs.join(hex_of(&digest)))?;
    Ok((digest, digest_of(diff_id), size))
}

fn write_layer_tar<W: Write>(layer: &Layer, mut w: W) -> io::Result<W> {
    match &layer.raw_tar {
        Some(bytes) => {
            w.write_all(bytes)?;
            w.flush()?;
            Ok(w)
        }
        None => write_entries(&layer.entries, w),
    }
}

fn write_entries<W: Write>(entries: &[Entry], w: W) -> io::Result<W> {
    let mut t = TarWriter::new(w);
    for e in entries {
        e.write_to(&mut t)?;
    }
    t.finish()
}

fn write_index_json(dir: &Path, manifests: Vec<Value>) -> io::Result<()> {
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    fs::write(dir.join("index.json"), to_json(&index))?;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
}

fn write_blob(blobs: &Path, bytes: &[u8]) -> io::Result<String> {
    let d = sha256_digest(bytes);
    fs::write(blobs.join(hex_of(&d)), bytes)?;
    Ok(d)
}

fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

impl Image {
    /// An image of these layers with the default run config.
    pub fn new(layers: Vec<Layer>) -> Self {
        Image {
            layers,
            ..Image::default()
        }
    }

    /// The same image with zstd layers recompressed as gzip (same tar
    /// streams, so the same diff_ids and tree): umoci 0.4 cannot read zstd.
    pub fn without_zstd(&self) -> Image {
        let mut img = self.clone();
        for l in &mut img.layers {
            if l.compression == Compression::Zstd {
                l.compression = Compression::Gzip;
            }
        }
        img
    }

    fn config_json(&self, diff_ids: &[String]) -> Value {
        let c = &self.config;
        json!({
            "architecture": self.architecture,
            "os": "linux",
            "created": "2020-09-13T12:26:40Z",
            "config": {
                "Entrypoint": c.entrypoint,
                "Cmd": c.cmd,
                "Env": c.env,
                "WorkingDir": c.working_dir,
                "User": c.user,
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": diff_ids.iter().map(|_| json!({"created_by": "imagegen"})).collect::<Vec<_>>(),
        })
    }

    /// Writes the image's blobs into `blobs`; returns the manifest's
    /// descriptor and the digests.
    fn write_blobs(&self, blobs: &Path) -> io::Result<(Value, Written)> {
        fs::create_dir_all(blobs)?;
        let (mut layers, mut diff_ids, mut descs) = (Vec::new(), Vec::new(), Vec::new());
        for l in &self.layers {
            let (digest, diff_id, size) = write_layer(l, blobs)?;
            let mt = match (&l.media_type, self.docker_media_types) {
                (Some(m), _) => m.clone(),
                (None, false) => l.compression.oci_media_type().to_string(),
                (None, true) => l.compression.docker_media_type().to_string(),
            };
            descs.push(json!({"mediaType": mt, "digest": digest, "size": size}));
            layers.push(digest);
            diff_ids.push(diff_id);
        }
        let (manifest_mt, config_mt) = if self.docker_media_types {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
            )
        };
        let config = to_json(&self.config_json(&diff_ids));
        let config_digest = write_blob(blobs, &config)?;
        let manifest = to_json(&json!({
            "schemaVersion": 2,
            "mediaType": manifest_mt,
            "config": {"mediaType": config_mt, "digest": config_digest, "size": config.len()},
            "layers": descs,
        }));
        let manifest_digest = write_blob(blobs, &manifest)?;
        let desc = json!({
            "mediaType": manifest_mt,
            "digest": manifest_digest,
            "size": manifest.len(),
        });
        let written = Written {
            manifest: manifest_digest,
            config: config_digest,
            layers,
            diff_ids,
        };
        Ok((desc, written))
    }

    /// Writes an OCI image layout at `dir` (created if needed) with `ref_name`
    /// as the `org.opencontainers.image.ref.name` annotation.
    pub fn write_oci_layout(&self, dir: &Path, ref_name: &str) -> io::Result<Written> {
        let (mut desc, written) = self.write_blobs(&dir.join("blobs/sha256"))?;
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": ref_name});
        write_index_json(dir, vec![desc])?;
        Ok(written)
    }

    /// Writes an OCI layout whose `ref_name` points at an image index (a
    /// blob) listing one image per platform: `(image, architecture)`.
    /// Returns the index digest and each image's digests.
    pub fn write_multi_platform_layout(
        images: &[(&Image, &str)],
        dir: &Path,
        ref_name: &str,
    ) -> io::Result<(String, Vec<Written>)> {
        let blobs = dir.join("blobs/sha256");
        let mut descs = Vec::new();
        let mut all = Vec::new();
        for (image, arch) in images {
            let mut image = (*image).clone();
            image.architecture = arch.to_string();
            let (mut desc, written) = image.write_blobs(&blobs)?;
            desc["platform"] = json!({"architecture": arch, "os": "linux"});
            descs.push(desc);
            all.push(written);
        }
        let index = to_json(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": descs,
        }));
        let digest = write_blob(&blobs, &index)?;
        let desc = json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": digest,
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": ref_name},
        });
        write_index_json(dir, vec![desc])?;
        Ok((digest, all))
    }

    /// Writes an oci-archive (a tar of the OCI layout) at `file`.
    pub fn write_oci_archive(&self, file: &Path, ref_name: &str) -> io::Result<Written> {
        let tmp = tempfile::tempdir()?;
        let written = self.write_oci_layout(tmp.path(), ref_name)?;
        let mut names = vec![
            ("oci-layout".to_string(), false),
            ("index.json".to_string(), false),
            ("blobs/".to_string(), true),
            ("blobs/sha256/".to_string(), true),
        ];
        let mut blob_names: Vec<String> = fs::read_dir(tmp.path().join("blobs/sha256"))?
            .map(|e| e.map(|e| format!("blobs/sha256/{}", e.file_name().to_string_lossy())))
            .collect::<Result<_, _>>()?;
        blob_names.sort();
        names.extend(blob_names.into_iter().map(|n| (n, false)));
        let mut t = TarWriter::new(BufWriter::new(File::create(file)?));
        for (name, is_dir) in names {
            let e = if is_dir {
                Entry::dir(name)
            } else {
                let path = tmp.path().join(&name);
                let size = fs::metadata(&path)?.len();
                let header = RawHeader {
                    name: name.into_bytes(),
                    mode: 0o644,
                    size,
                    mtime: DEFAULT_MTIME as u64,
                    typeflag: b'0',
                    ..RawHeader::default()
                };
                t.entry(&header, File::open(&path)?)?;
                continue;
            };
            e.write_to(&mut t)?;
        }
        t.finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        Ok(written)
    }

    /// Writes a docker-archive (as `docker save` does: `manifest.json`,
    /// `<hex>.json` config and `<hex>/layer.tar` per layer) at `file`.
    /// Layers keep their compression (docker itself writes them plain).
    pub fn write_docker_archive(&self, file: &Path, repo_tag: &str) -> io::Result<Written> {
        let tmp = tempfile::tempdir()?;
        let written = self.write_oci_layout(tmp.path(), "latest")?;
        let config_name = format!("{}.json", hex_of(&written.config));
        let layer_names: Vec<String> = written
            .diff_ids
            .iter()
            .map(|d| format!("{}/layer.tar", hex_of(d)))
            .collect();
        let manifest = to_json(&json!([{
            "Config": config_name,
            "RepoTags": [repo_tag],
            "Layers": layer_names,
        }]));
        let mut t = TarWriter::new(BufWriter::new(File::create(file)?));
        let put = |t: &mut TarWriter<_>, name: &str, src: &mut dyn Read, size: u64| {
            let header = RawHeader {
                name: name.as_bytes().to_vec(),
                mode: 0o644,
                size,
                mtime: DEFAULT_MTIME as u64,
                typeflag: b'0',
                ..RawHeader::default()
            };
            t.entry(&header, src)
        };
        let config_path = blob_path(tmp.path(), &written.config);
        put(
            &mut t,
            &config_name,
            &mut File::open(&config_path)?,
            fs::metadata(&config_path)?.len(),
        )?;
        let mut seen = std::collections::BTreeSet::new();
        for (digest, name) in written.layers.iter().zip(&layer_names) {
            if !seen.insert(name.clone()) {
                continue;
            }
            let dir = name.trim_end_matches("/layer.tar");
            Entry::dir(dir).write_to(&mut t)?;
            // The legacy per-layer files `docker save` also writes.
            put(&mut t, &format!("{dir}/VERSION"), &mut &b"1.0"[..], 3)?;
            let json = to_json(&json!({"id": dir}));
            put(
                &mut t,
                &format!("{dir}/json"),
                &mut &json[..],
                json.len() as u64,
            )?;
            let p = blob_path(tmp.path(), digest);
            put(&mut t, name, &mut File::open(&p)?, fs::metadata(&p)?.len())?;
        }
        put(
            &mut t,
            "manifest.json",
            &mut &manifest[..],
            manifest.len() as u64,
        )?;
        t.finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()?;
        Ok(written)
    }
}

/// Bad input: flips one byte in the middle of a blob after it was written,
/// so its content no longer matches its digest.
pub fn corrupt_blob(layout: &Path, digest: &str) -> io::Result<()> {
    let p = blob_path(layout, digest);
    let mut bytes = fs::read(&p)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&p, bytes)
}

/// Bad input: removes a blob.
pub fn remove_blob(layout: &Path, digest: &str) -> io::Result<()> {
    fs::remove_file(blob_path(layout, digest))
}

/// Bytes of a generated tar of `entries` (uncompressed), for inspection.
pub fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    write_entries(entries, Vec::new()).expect("in-memory tar")
}

/// `len` pseudo-random bytes from `seed` (xorshift): file content that
/// neither compresses nor repeats within a chunk, so no chunk dedupes by
/// accident. The same seed gives the same bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
