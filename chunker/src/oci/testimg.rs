//! Test images built by hand: tars with every kind of entry, compressed
//! layers, and the three source formats, with knobs to break them.
//!
//! Public but hidden: the integration tests and the fuzz targets build
//! their images with it too. Not for production use (it panics on I/O
//! errors).

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::Digest;
use super::spec::Compression;

/// A tar written header by header, so tests can put anything in it
/// (including paths the `tar` crate's builder would refuse).
#[derive(Default)]
pub struct TarWriter {
    buf: Vec<u8>,
}

/// `len` pseudo-random bytes from `seed` (xorshift): file content that
/// neither compresses nor repeats within a chunk, so no chunk dedupes by
/// accident and layers are as big stored as read. The same seed gives the
/// same bytes.
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

/// One PAX extended-header record, `"LEN key=value\n"`, where LEN counts
/// the whole record including itself.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    let mut record = format!("{len} ").into_bytes();
    record.extend_from_slice(key);
    record.push(b'=');
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// A ustar header for `path` (at most 100 bytes are stored; use PAX or GNU
/// records for more), owned by root, mtime 0.
pub fn header(path: &[u8], kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let n = path.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&path[..n]);
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

impl TarWriter {
    /// An empty tar.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append `h` (checksum set here) and `data`, padded.
    pub fn raw(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.buf.extend_from_slice(h.as_bytes());
        self.buf.extend_from_slice(data);
        let pad = data.len().next_multiple_of(512) - data.len();
        self.buf.extend(std::iter::repeat_n(0, pad));
        self
    }

    /// A regular file, mode 0644.
    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        let h = header(
            path.as_bytes(),
            tar::EntryType::Regular,
            0o644,
            data.len() as u64,
        );
        self.raw(h, data)
    }

    /// A directory, mode 0755.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        let h = header(path.as_bytes(), tar::EntryType::Directory, 0o755, 0);
        self.raw(h, b"")
    }

    /// A symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(path.as_bytes(), tar::EntryType::Symlink, 0o777, 0);
        h.set_link_name_literal(target).unwrap();
        self.raw(h, b"")
    }

    /// A hard link to `target`.
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(path.as_bytes(), tar::EntryType::Link, 0o644, 0);
        h.set_link_name_literal(target).unwrap();
        self.raw(h, b"")
    }

    /// PAX records for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend(pax_record(k.as_bytes(), v));
        }
        let h = header(
            b"PaxHeaders/x",
            tar::EntryType::XHeader,
            0o644,
            body.len() as u64,
        );
        self.raw(h, &body)
    }

    /// A PAX global header.
    pub fn pax_global(&mut self, body: &[u8]) -> &mut Self {
        let h = header(
            b"pax_global_header",
            tar::EntryType::XGlobalHeader,
            0o644,
            body.len() as u64,
        );
        self.raw(h, body)
    }

    /// A GNU long name (`L`) or long link name (`K`) record for the next entry.
    pub fn gnu_long(&mut self, kind: u8, name: &[u8]) -> &mut Self {
        let mut data = name.to_vec();
        data.push(0);
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        self.raw(h, &data)
    }

    /// The tar, with its end-of-archive blocks.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.buf.clone();
        out.extend(std::iter::repeat_n(0, 1024));
        out
    }
}

/// Compress a layer.
pub fn compress(tar: &[u8], c: Compression) -> Vec<u8> {
    match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(tar, 1).unwrap(),
    }
}

/// One layer of a test image.
pub struct TestLayer {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// How it is stored.
    pub compression: Compression,
    /// A media type to write instead of the right one.
    pub media_type: Option<String>,
    /// A diff_id to write into the config instead of the right one.
    pub diff_id: Option<Digest>,
    /// The blob as stored and its real diff_id, when the tar was never
    /// held in memory (see [`TestLayer::precompressed`]); `tar` is empty.
    pub stored: Option<(Vec<u8>, Digest)>,
}

impl TestLayer {
    /// A layer stored as `compression`.
    pub fn new(tar: Vec<u8>, compression: Compression) -> Self {
        TestLayer {
            tar,
            compression,
            media_type: None,
            diff_id: None,
            stored: None,
        }
    }

    /// A layer whose tar `write` streams into a gzip encoder, so a huge
    /// but compressible tar costs only its compressed size in memory.
    pub fn precompressed(write: impl FnOnce(&mut dyn Write)) -> Self {
        struct Hashing<W> {
            inner: W,
            hash: sha2::Sha256,
        }
        impl<W: Write> Write for Hashing<W> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let n = self.inner.write(buf)?;
                sha2::Digest::update(&mut self.hash, &buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.inner.flush()
            }
        }
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut w = Hashing {
            inner: gz,
            hash: <sha2::Sha256 as sha2::Digest>::new(),
        };
        write(&mut w);
        let hex = hex::encode(sha2::Digest::finalize(w.hash));
        let diff_id: Digest = format!("sha256:{hex}").parse().unwrap();
        let stored = w.inner.finish().unwrap();
        TestLayer {
            tar: Vec::new(),
            compression: Compression::Gzip,
            media_type: None,
            diff_id: None,
            stored: Some((stored, diff_id)),
        }
    }

    fn real_diff_id(&self) -> Digest {
        match &self.stored {
            Some((_, d)) => d.clone(),
            None => Digest::of(&self.tar),
        }
    }

    fn media_type(&self) -> String {
        self.media_type.clone().unwrap_or_else(|| {
            match self.compression {
                Compression::None => "application/vnd.oci.image.layer.v1.tar",
                Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            }
            .to_owned()
        })
    }
}

/// What was written, to check against.
#[derive(Clone, Debug)]
pub struct Written {
    /// The manifest blob.
    pub manifest: Digest,
    /// The config blob.
    pub config: Digest,
    /// Each layer's blob.
    pub layers: Vec<Digest>,
    /// Each layer's uncompressed digest (the real one).
    pub diff_ids: Vec<Digest>,
}

/// A test image: layers plus a fixed run config.
pub struct TestImage {
    /// Bottom first.
    pub layers: Vec<TestLayer>,
}

/// Files of a layout or archive, by path.
pub type Files = Vec<(String, Vec<u8>)>;

fn blob(files: &mut Files, bytes: Vec<u8>) -> Digest {
    let d = Digest::of(&bytes);
    let path = format!("blobs/sha256/{}", d.hex());
    if !files.iter().any(|(p, _)| *p == path) {
        files.push((path, bytes));
    }
    d
}

impl TestImage {
    /// An image of these layers.
    pub fn new(layers: Vec<TestLayer>) -> Self {
        TestImage { layers }
    }

    fn config_json(&self) -> Vec<u8> {
        let diff_ids: Vec<String> = self
            .layers
            .iter()
            .map(|l| {
                l.diff_id
                    .clone()
                    .unwrap_or_else(|| l.real_diff_id())
                    .to_string()
            })
            .collect();
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": ["/bin/sh", "-c"],
                "Cmd": ["echo hi"],
                "Env": ["PATH=/usr/bin:/bin", "A=b"],
                "WorkingDir": "/srv",
                "User": "1000:1000",
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    /// The blobs of an OCI layout plus the manifest's descriptor bytes.
    fn add_image_blobs(&self, files: &mut Files) -> (serde_json::Value, Written) {
        let config = blob(files, self.config_json());
        let mut layers = Vec::new();
        let mut descs = Vec::new();
        for l in &self.layers {
            let stored = match &l.stored {
                Some((blob, _)) => blob.clone(),
                None => compress(&l.tar, l.compression),
            };
            let size = stored.len();
            let d = blob(files, stored);
            descs.push(json!({"mediaType": l.media_type(), "digest": d.to_string(), "size": size}));
            layers.push(d);
        }
        let config_size = files
            .iter()
            .find(|(p, _)| p.ends_with(config.hex()))
            .unwrap()
            .1
            .len();
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
            "layers": descs,
        }))
        .unwrap();
        let manifest_size = manifest.len();
        let manifest = blob(files, manifest);
        let written = Written {
            manifest: manifest.clone(),
            config,
            layers,
            diff_ids: self.layers.iter().map(TestLayer::real_diff_id).collect(),
        };
        let desc = json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.to_string(),
            "size": manifest_size,
            "platform": {"architecture": "amd64", "os": "linux"},
        });
        (desc, written)
    }

    /// The files of an OCI layout holding this image under `ref_name`.
    pub fn layout_files(&self, ref_name: &str) -> (Files, Written) {
        let mut files = Files::new();
        let (mut desc, written) = self.add_image_blobs(&mut files);
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": ref_name});
        files.push((
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        let index = json!({"schemaVersion": 2, "manifests": [desc]});
        files.push(("index.json".into(), serde_json::to_vec(&index).unwrap()));
        (files, written)
    }

    /// Write an OCI layout into `dir`.
    pub fn write_layout(&self, dir: &Path, ref_name: &str) -> Written {
        let (files, written) = self.layout_files(ref_name);
        write_dir(dir, &files);
        written
    }

    /// Write a tar of an OCI layout.
    pub fn write_oci_archive(&self, file: &Path, ref_name: &str) -> Written {
        let (files, written) = self.layout_files(ref_name);
        write_tar(file, &files);
        written
    }

    /// Write what `docker save` writes (the pre-25 layout): manifest.json,
    /// `<hex>.json` config, `<id>/layer.tar` layers as stored.
    pub fn docker_files(&self, tag: &str) -> (Files, Written) {
        let mut files = Files::new();
        let config = self.config_json();
        let config_digest = Digest::of(&config);
        let config_name = format!("{}.json", config_digest.hex());
        files.push((config_name.clone(), config));
        let mut paths = Vec::new();
        let mut layers = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let stored = match &l.stored {
                Some((blob, _)) => blob.clone(),
                None => compress(&l.tar, l.compression),
            };
            layers.push(Digest::of(&stored));
            let path = format!("{:064x}/layer.tar", i + 1);
            files.push((format!("{:064x}/VERSION", i + 1), b"1.0".to_vec()));
            files.push((path.clone(), stored));
            paths.push(path);
        }
        let manifest = json!([{"Config": config_name, "RepoTags": [tag], "Layers": paths}]);
        files.push((
            "manifest.json".into(),
            serde_json::to_vec(&manifest).unwrap(),
        ));
        let written = Written {
            manifest: config_digest.clone(),
            config: config_digest,
            layers,
            diff_ids: self.layers.iter().map(TestLayer::real_diff_id).collect(),
        };
        (files, written)
    }
}

/// Write `files` under `dir`.
pub fn write_dir(dir: &Path, files: &Files) {
    for (path, bytes) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }
}

/// Write `files` as a tar (with `./` prefixes, as many tools do).
pub fn write_tar(file: &Path, files: &Files) {
    let mut b = tar::Builder::new(fs::File::create(file).unwrap());
    for (path, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("./{path}"), bytes.as_slice())
            .unwrap();
    }
    b.into_inner().unwrap();
}

#[cfg(test)]
mod tests {
    use super::pax_record;

    #[test]
    fn a_pax_record_counts_its_own_length() {
        // 9 + 1 digit, then a record whose length gains a digit.
        for value_len in [0, 1, 80, 90, 91, 92, 989, 990, 995] {
            let record = pax_record(b"path", &vec![b'a'; value_len]);
            let text = String::from_utf8(record.clone()).unwrap();
            let (len, rest) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), record.len(), "{text:?}");
            assert!(rest.starts_with("path=") && rest.ends_with('\n'));
        }
    }
}
