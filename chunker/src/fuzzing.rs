//! Harness pieces the fuzz targets and the regression tests share: a
//! structured layer (a list of tar entries, derivable with `arbitrary`
//! under the `fuzzing` feature) serialised to real tar bytes, and the real
//! flatten run on in-memory layers into a sink that keeps nothing.
//!
//! Hidden from the docs: not an API.

use std::io;

use crate::ext4::{Ext4Builder, Ext4Options, Ext4Summary};
use crate::flatten::{FlattenError, Limits, apply_layer};
use crate::oci::Digest;
use crate::sink::ImageSink;
use crate::tree::Tree;

/// Path components the generator draws from: few, so entries collide, and
/// whiteout forms among them.
const NAMES: [&str; 10] = [
    "a",
    "b",
    "dir",
    ".wh.a",
    ".wh.dir",
    ".wh..wh..opq",
    ".",
    "..",
    "lnk",
    ".wh..wh.plnk",
];

/// A path: indexes into the name table, and how often to repeat the whole
/// list (deep paths).
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct GenPath {
    /// Components, as indexes into a fixed table of names.
    pub parts: Vec<u8>,
    /// Repeat the components this many extra times.
    pub repeat: u16,
    /// Written with a trailing slash.
    pub slash: bool,
}

impl GenPath {
    /// The path bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let one: Vec<&str> = self
            .parts
            .iter()
            .map(|&i| NAMES[usize::from(i) % NAMES.len()])
            .collect();
        let one = one.join("/");
        let mut out = one.clone();
        // Deep enough to pass every path limit, bounded for the fuzzer.
        for _ in 0..self.repeat.min(2100) {
            out.push('/');
            out.push_str(&one);
        }
        if self.slash {
            out.push('/');
        }
        out.into_bytes()
    }
}

/// How an entry's path is carried.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum PathForm {
    /// In the ustar header (cut at 100 bytes).
    Header,
    /// In a PAX `path` record.
    Pax,
    /// In a GNU long-name record.
    GnuLong,
}

/// One tar entry.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum GenEntry {
    /// A regular file of `len` bytes of `fill` (0 makes zero blocks).
    File {
        /// Where.
        path: GenPath,
        /// How the path is written.
        form: PathForm,
        /// Size.
        len: u16,
        /// Byte value.
        fill: u8,
    },
    /// A directory.
    Dir {
        /// Where.
        path: GenPath,
        /// How the path is written.
        form: PathForm,
    },
    /// A symbolic link.
    Symlink {
        /// Where.
        path: GenPath,
        /// Its target (may be absolute).
        target: GenPath,
        /// Make the target absolute.
        absolute: bool,
    },
    /// A hard link.
    HardLink {
        /// Where.
        path: GenPath,
        /// Its target.
        target: GenPath,
        /// How the link name is written (PAX linkpath or GNU long link).
        form: PathForm,
    },
    /// A device, fifo or other raw type flag, no data.
    Special {
        /// Where.
        path: GenPath,
        /// The type flag.
        kind: u8,
        /// Device numbers.
        major: u16,
        /// Device numbers.
        minor: u16,
    },
    /// A PAX 1.0 sparse file: map in the data, runs after it.
    PaxSparse {
        /// Where.
        path: GenPath,
        /// `GNU.sparse.realsize` (scaled up by 2^shift).
        real: u32,
        /// Shift of the real size.
        shift: u8,
        /// Runs `(offset, len)`, offsets scaled like the real size.
        runs: Vec<(u32, u16)>,
    },
    /// An old-GNU `S` sparse file.
    GnuSparse {
        /// Where.
        path: GenPath,
        /// Real size (scaled up by 2^shift).
        real: u32,
        /// Shift of the real size and offsets.
        shift: u8,
        /// Runs `(offset, len)`.
        runs: Vec<(u32, u16)>,
    },
    /// Arbitrary PAX records before an entry of `kind`.
    PaxRecords {
        /// Where.
        path: GenPath,
        /// Records.
        records: Vec<(u8, Vec<u8>)>,
        /// The type flag of the entry.
        kind: u8,
    },
    /// A PAX global header.
    Global {
        /// Its data.
        body: Vec<u8>,
    },
    /// An extension header whose size field lies (claims `claim` KiB).
    Oversized {
        /// `x`, `L` or `K` (by index).
        kind: u8,
        /// Claimed size in KiB.
        claim: u32,
    },
}

const PAX_KEYS: [&str; 10] = [
    "path",
    "linkpath",
    "size",
    "mtime",
    "uid",
    "gid",
    "SCHILY.xattr.user.x",
    "GNU.sparse.realsize",
    "GNU.sparse.map",
    "GNU.sparse.name",
];

/// Tar bytes written block by block.
#[derive(Default)]
struct Writer {
    out: Vec<u8>,
}

fn header(path: &[u8], kind: u8, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let n = path.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&path[..n]);
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// A 12-byte numeric field: octal when it fits, else GNU base-256.
fn numeric(field: &mut [u8; 12], v: u64) {
    let s = format!("{v:011o}");
    if s.len() == 11 {
        field[..11].copy_from_slice(s.as_bytes());
        field[11] = 0;
    } else {
        field.fill(0);
        field[4..].copy_from_slice(&v.to_be_bytes());
        field[0] = 0x80;
    }
}

impl Writer {
    fn raw(&mut self, mut h: tar::Header, data: &[u8]) {
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = data.len().next_multiple_of(512) - data.len();
        self.out.extend(std::iter::repeat_n(0, pad));
    }

    fn pax(&mut self, records: &[(&[u8], &[u8])]) {
        let mut body = Vec::new();
        for (k, v) in records {
            body.extend(crate::oci::testimg::pax_record(k, v));
        }
        self.raw(header(b"PaxHeaders/x", b'x', body.len() as u64), &body);
    }

    fn gnu_long(&mut self, kind: u8, name: &[u8]) {
        let mut data = name.to_vec();
        data.push(0);
        self.raw(header(b"././@LongLink", kind, data.len() as u64), &data);
    }

    /// The path in the header, or announced by a record first.
    fn named(&mut self, path: &[u8], form: PathForm) -> Vec<u8> {
        match form {
            PathForm::Header => {}
            PathForm::Pax => self.pax(&[(b"path", path)]),
            PathForm::GnuLong => self.gnu_long(b'L', path),
        }
        path.to_vec()
    }

    fn entry(&mut self, e: &GenEntry) {
        match e {
            GenEntry::File {
                path,
                form,
                len,
                fill,
            } => {
                let p = self.named(&path.bytes(), *form);
                let data = vec![*fill; usize::from(*len)];
                self.raw(header(&p, b'0', data.len() as u64), &data);
            }
            GenEntry::Dir { path, form } => {
                let p = self.named(&path.bytes(), *form);
                self.raw(header(&p, b'5', 0), b"");
            }
            GenEntry::Symlink {
                path,
                target,
                absolute,
            } => {
                let mut t = target.bytes();
                if *absolute {
                    t.insert(0, b'/');
                }
                self.pax(&[(b"linkpath", &t)]);
                self.raw(header(&path.bytes(), b'2', 0), b"");
            }
            GenEntry::HardLink { path, target, form } => {
                let t = target.bytes();
                match form {
                    PathForm::Header => {}
                    PathForm::Pax => self.pax(&[(b"linkpath", &t)]),
                    PathForm::GnuLong => self.gnu_long(b'K', &t),
                }
                let mut h = header(&path.bytes(), b'1', 0);
                let n = t.len().min(100);
                h.as_old_mut().linkname[..n].copy_from_slice(&t[..n]);
                self.raw(h, b"");
            }
            GenEntry::Special {
                path,
                kind,
                major,
                minor,
            } => {
                let mut h = header(&path.bytes(), *kind, 0);
                let _ = h.set_device_major(u32::from(*major));
                let _ = h.set_device_minor(u32::from(*minor));
                self.raw(h, b"");
            }
            GenEntry::PaxSparse {
                path,
                real,
                shift,
                runs,
            } => {
                let shift = u32::from(*shift % 48);
                let real = u64::from(*real) << shift;
                let mut data = format!("{}\n", runs.len()).into_bytes();
                for (off, len) in runs {
                    data.extend(format!("{}\n{len}\n", u64::from(*off) << shift).bytes());
                }
                data.resize(data.len().next_multiple_of(512), 0);
                for (_, len) in runs {
                    data.extend(std::iter::repeat_n(7u8, usize::from(*len)));
                }
                let real_s = real.to_string();
                self.pax(&[
                    (b"GNU.sparse.major", b"1"),
                    (b"GNU.sparse.minor", b"0"),
                    (b"GNU.sparse.name", &path.bytes()),
                    (b"GNU.sparse.realsize", real_s.as_bytes()),
                ]);
                self.raw(header(b"GNUSparseFile.0/f", b'0', data.len() as u64), &data);
            }
            GenEntry::GnuSparse {
                path,
                real,
                shift,
                runs,
            } => {
                let shift = u32::from(*shift % 48);
                let stored: u64 = runs.iter().map(|&(_, l)| u64::from(l)).sum();
                let mut h = header(&path.bytes(), b'S', stored);
                let gnu = h.as_gnu_mut().expect("a GNU header");
                let real = u64::from(*real) << shift;
                numeric(&mut gnu.realsize, real);
                let (first, rest) = runs.split_at(runs.len().min(4));
                for (slot, (off, len)) in gnu.sparse.iter_mut().zip(first) {
                    numeric(&mut slot.offset, u64::from(*off) << shift);
                    numeric(&mut slot.numbytes, u64::from(*len));
                }
                gnu.isextended[0] = u8::from(!rest.is_empty());
                h.set_cksum();
                self.out.extend_from_slice(h.as_bytes());
                let groups: Vec<_> = rest.chunks(21).collect();
                for (i, group) in groups.iter().enumerate() {
                    let mut ext = tar::GnuExtSparseHeader::new();
                    for (slot, (off, len)) in ext.sparse.iter_mut().zip(group.iter()) {
                        numeric(&mut slot.offset, u64::from(*off) << shift);
                        numeric(&mut slot.numbytes, u64::from(*len));
                    }
                    ext.isextended[0] = u8::from(i + 1 < groups.len());
                    self.out.extend_from_slice(ext.as_bytes());
                }
                let data = vec![9u8; stored as usize];
                self.out.extend_from_slice(&data);
                let pad = data.len().next_multiple_of(512) - data.len();
                self.out.extend(std::iter::repeat_n(0, pad));
            }
            GenEntry::PaxRecords {
                path,
                records,
                kind,
            } => {
                let recs: Vec<(&[u8], &[u8])> = records
                    .iter()
                    .map(|(k, v)| {
                        (
                            PAX_KEYS[usize::from(*k) % PAX_KEYS.len()].as_bytes(),
                            v.as_slice(),
                        )
                    })
                    .collect();
                self.pax(&recs);
                self.raw(header(&path.bytes(), *kind, 0), b"");
            }
            GenEntry::Global { body } => {
                self.raw(header(b"pax_global_header", b'g', body.len() as u64), body);
            }
            GenEntry::Oversized { kind, claim } => {
                let kind = [b'x', b'L', b'K'][usize::from(*kind) % 3];
                let h = header(b"PaxHeaders/big", kind, u64::from(*claim) << 10);
                self.raw(h, b"");
            }
        }
    }
}

/// The tar bytes of a layer of these entries, end-of-archive included.
pub fn layer_tar(entries: &[GenEntry]) -> Vec<u8> {
    let mut w = Writer::default();
    for e in entries {
        w.entry(e);
    }
    w.out.extend(std::iter::repeat_n(0, 1024));
    w.out
}

/// A sink that keeps nothing (fuzzing needs the work, not the bytes).
#[derive(Debug, Default)]
pub struct NullSink;

impl ImageSink for NullSink {
    fn write_at(&mut self, _offset: u64, _buf: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn finish(&mut self, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Limits small enough that every fuzz input ends quickly.
pub fn small_limits() -> Limits {
    Limits {
        max_header_bytes: 64 << 10,
        max_layer_bytes: 16 << 20,
        max_image_bytes: 32 << 20,
        ..Limits::default()
    }
}

/// The real flatten of in-memory layer tars, bottom first: each layer
/// applied to one tree, then the ext4 metadata written into a
/// [`NullSink`].
pub fn flatten_tars(
    layers: &[Vec<u8>],
    limits: &Limits,
) -> Result<(Tree, Ext4Summary), FlattenError> {
    let opts = Ext4Options {
        chunk_size: 64 << 10,
        free_bytes: 0,
        spare_inodes: 0,
    };
    let mut builder = Ext4Builder::new(NullSink, opts)?;
    let mut tree = Tree::new();
    for (i, tar) in layers.iter().enumerate() {
        builder.begin_layer();
        let name = Digest::of(format!("layer {i}").as_bytes());
        apply_layer(&tar[..], &name, limits, &mut tree, &mut builder)?;
    }
    let (_, summary) = builder.finish(&tree)?;
    Ok((tree, summary))
}

/// Separates the index, manifest and config in an [`oci_layout`] input
/// (never valid in JSON, which is UTF-8).
pub const PART_SEPARATOR: u8 = 0xff;

/// Replace every `from` in `bytes` by `to`.
fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Write an OCI layout into `dir` (emptied first) from fuzz bytes: an
/// index, a manifest and a config separated by [`PART_SEPARATOR`]. So that
/// inputs get past the digest checks, `@MANIFEST@` and `@MSIZE@` in the
/// index become the manifest blob's digest and size, and `@CONFIG@` and
/// `@CSIZE@` in the manifest the config's.
pub fn oci_layout(dir: &std::path::Path, data: &[u8]) -> io::Result<()> {
    let mut parts = data.splitn(3, |&b| b == PART_SEPARATOR);
    let index = parts.next().unwrap_or_default();
    let manifest = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or_default();
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let config_digest = Digest::of(config);
    let manifest = replace(manifest, b"@CONFIG@", config_digest.to_string().as_bytes());
    let manifest = replace(&manifest, b"@CSIZE@", config.len().to_string().as_bytes());
    let manifest_digest = Digest::of(&manifest);
    let index = replace(index, b"@MANIFEST@", manifest_digest.to_string().as_bytes());
    let index = replace(&index, b"@MSIZE@", manifest.len().to_string().as_bytes());
    std::fs::write(blobs.join(config_digest.hex()), config)?;
    std::fs::write(blobs.join(manifest_digest.hex()), &manifest)?;
    std::fs::write(dir.join("index.json"), index)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

/// Parse `data` as each of the image JSON documents the sources read, then
/// open it as an OCI layout (see [`oci_layout`]) in `dir`. Errors are
/// fine; panics and hangs are what the fuzzer looks for.
pub fn oci_parse(dir: &std::path::Path, data: &[u8]) {
    use crate::oci::spec;
    let _ = serde_json::from_slice::<spec::Index>(data);
    let _ = serde_json::from_slice::<spec::Manifest>(data);
    let _ = serde_json::from_slice::<spec::ConfigFile>(data);
    let _ = serde_json::from_slice::<Vec<spec::DockerArchiveImage>>(data);
    if oci_layout(dir, data).is_ok() {
        let source = crate::oci::ImageSource::OciLayout {
            dir: dir.to_owned(),
            reference: None,
        };
        if let Ok(image) = crate::oci::Image::open(&source) {
            // The config a VM gets is derived too.
            let _ = format!("{:?}", image.config);
        }
    }
}

/// The seed for [`oci_parse`] made from a test image: its index, manifest
/// and config with the digests and sizes turned into placeholders.
pub fn oci_seed(image: &crate::oci::testimg::TestImage) -> Vec<u8> {
    let (files, written) = image.layout_files("seed");
    let get = |name: &str| {
        files
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    };
    let config = get(written.config.hex());
    let manifest = get(written.manifest.hex());
    let manifest = replace(
        &manifest,
        written.config.to_string().as_bytes(),
        b"@CONFIG@",
    );
    let manifest = replace(
        &manifest,
        format!("\"size\":{}", config.len()).as_bytes(),
        b"\"size\":@CSIZE@",
    );
    let index = get("index.json");
    let index = replace(
        &index,
        written.manifest.to_string().as_bytes(),
        b"@MANIFEST@",
    );
    let index = replace(
        &index,
        format!("\"size\":{}", get(written.manifest.hex()).len()).as_bytes(),
        b"\"size\":@MSIZE@",
    );
    [index, manifest, config].join(&PART_SEPARATOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Compression;
    use crate::oci::testimg::{TarWriter, TestImage, TestLayer};

    fn path(parts: &[u8], repeat: u16) -> GenPath {
        GenPath {
            parts: parts.to_vec(),
            repeat,
            slash: false,
        }
    }

    /// The generator's layers go through the real flatten: the findings'
    /// shapes, built the way the fuzzer builds them.
    #[test]
    fn generated_layers_hit_the_limits_and_the_link_check() {
        let limits = small_limits();
        // `dir/`, `dir/a`, then a hard link `dir` -> `dir/a`.
        let tar = layer_tar(&[
            GenEntry::Dir {
                path: path(&[2], 0),
                form: PathForm::Header,
            },
            GenEntry::File {
                path: path(&[2, 0], 0),
                form: PathForm::Pax,
                len: 10,
                fill: 1,
            },
            GenEntry::HardLink {
                path: path(&[2], 0),
                target: path(&[2, 0], 0),
                form: PathForm::GnuLong,
            },
        ]);
        let err = flatten_tars(&[tar], &limits).unwrap_err().to_string();
        assert!(err.contains("entry \"dir\""), "{err}");
        // 2101 components.
        let deep = GenEntry::File {
            path: path(&[0], 2100),
            form: PathForm::GnuLong,
            len: 1,
            fill: 1,
        };
        let err = flatten_tars(&[layer_tar(&[deep])], &limits).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(chain.contains("path of 4201 bytes"), "{chain}");
        // An extension header claiming 1 GiB is refused unread.
        let big = GenEntry::Oversized {
            kind: 1,
            claim: 1 << 20,
        };
        let err = flatten_tars(&[layer_tar(&[big])], &limits).unwrap_err();
        let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            chain.contains("'L' extension header of 1073741824 bytes"),
            "{chain}"
        );
    }

    fn seed_image() -> TestImage {
        let mut t = TarWriter::new();
        t.file("f", b"x");
        TestImage::new(vec![TestLayer::new(t.finish(), Compression::Gzip)])
    }

    /// The seed's placeholders make a layout that opens, so the fuzzer
    /// starts past the digest checks. With `OCI_PARSE_SEED_OUT` set, the
    /// seed is also written there (how `fuzz/seeds/oci_parse` was made).
    #[test]
    fn oci_seed_opens_as_a_layout() {
        let seed = oci_seed(&seed_image());
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        oci_layout(&dir, &seed).unwrap();
        let image = crate::oci::Image::open(&crate::oci::ImageSource::OciLayout {
            dir: dir.clone(),
            reference: None,
        })
        .unwrap();
        assert_eq!(image.layers.len(), 1);
        // Runs without panicking on the seed and on garbage.
        oci_parse(&dir, &seed);
        oci_parse(&dir, b"\xff\xff{");
        if let Ok(out) = std::env::var("OCI_PARSE_SEED_OUT") {
            std::fs::write(out, &seed).unwrap();
        }
    }
}
