//! A layer written by GNU tar itself (PAX format: sub-second mtimes, long
//! names, xattrs, 1.0 sparse files, hard links), flattened through the
//! public API and checked against the files it was made from.

use std::cell::RefCell;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::rc::Rc;

use chunker::ext4::{BLOCK_SIZE, Ext4Builder, Ext4Options};
use chunker::flatten::flatten_layers;
use chunker::oci::{Digest, Image, ImageSource};
use chunker::sink::ImageSink;
use chunker::tree::{FileData, InodeKind, Timestamp, Tree};
use serde_json::json;

#[derive(Clone, Default)]
struct SharedSink(Rc<RefCell<Vec<u8>>>);

impl ImageSink for SharedSink {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut v = self.0.borrow_mut();
        let end = offset as usize + buf.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn finish(&mut self, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

fn read_file(image: &[u8], data: &FileData) -> Vec<u8> {
    let bs = u64::from(BLOCK_SIZE);
    let mut out = vec![0u8; data.size as usize];
    for e in &data.extents {
        for i in 0..u64::from(e.len) {
            let from = ((e.physical + i) * bs) as usize;
            let to = ((e.logical + i) * bs) as usize;
            let n = (bs as usize).min(out.len() - to);
            out[to..to + n].copy_from_slice(&image[from..from + n]);
        }
    }
    out
}

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?} failed");
}

/// Write a one-layer OCI layout around `layer` (gzip-compressed here).
fn layout(dir: &Path, layer: &[u8]) {
    let blob = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        let p = dir.join("blobs/sha256").join(d.hex());
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
        (d, bytes.len())
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(layer).unwrap();
    let (ld, ls) = blob(&gz.finish().unwrap());
    let config = json!({"architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(layer).to_string()]}});
    let (cd, cs) = blob(&serde_json::to_vec(&config).unwrap());
    let manifest = json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.to_string(), "size": ls}]});
    let (md, ms) = blob(&serde_json::to_vec(&manifest).unwrap());
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": ms}]});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn lookup(tree: &Tree, path: &str) -> chunker::tree::InodeId {
    let comps: Vec<&[u8]> = path.split('/').map(str::as_bytes).collect();
    tree.lookup(&comps)
        .unwrap_or_else(|| panic!("{path} missing"))
}

#[test]
fn gnu_tar_posix_layer_flattens_faithfully() {
    if Command::new("tar").arg("--version").output().is_err() {
        eprintln!("SKIP: GNU tar is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let long_dir = "d".repeat(140);
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::create_dir_all(src.join("data").join(&long_dir)).unwrap();
    fs::write(src.join("bin/app"), b"#!/bin/app\n").unwrap();
    fs::set_permissions(src.join("bin/app"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(src.join("data"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::hard_link(src.join("bin/app"), src.join("data/app-link")).unwrap();
    std::os::unix::fs::symlink("../bin/app", src.join("data/sym")).unwrap();
    fs::write(src.join("data").join(&long_dir).join("file"), b"deep").unwrap();
    let sparse = fs::File::create(src.join("data/sparse")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    sparse.write_all_at(b"start", 0).unwrap();
    sparse.write_all_at(b"middle", 6 << 20).unwrap();
    drop(sparse);
    run(Command::new("mkfifo").arg(src.join("data/fifo")));
    run(Command::new("touch")
        .args(["-h", "-d", "@1700000000.123456789"])
        .arg(src.join("bin/app")));
    let has_xattr = xattr::set(src.join("bin/app"), "user.note", b"hello").is_ok();
    if !has_xattr {
        eprintln!("note: this filesystem refuses user xattrs; not checking them");
    }

    let layer = tmp.path().join("layer.tar");
    run(Command::new("tar")
        .args([
            "--format=posix",
            "--sparse",
            "--xattrs",
            "--numeric-owner",
            "--sort=name",
        ])
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&layer)
        .arg("."));
    // GNU tar stored the file sparse (PAX 1.0 form), not 8 MiB of zeros.
    assert!(fs::metadata(&layer).unwrap().len() < 1 << 20);
    let dir = tmp.path().join("layout");
    layout(&dir, &fs::read(&layer).unwrap());

    let image = Image::open(&ImageSource::OciLayout {
        dir,
        reference: None,
    })
    .unwrap();
    let sink = SharedSink::default();
    let mut builder = Ext4Builder::new(sink.clone(), Ext4Options::default()).unwrap();
    let (tree, reports) = flatten_layers(&image, &mut builder).unwrap();
    let bytes = sink.0.borrow();
    let content = |path: &str| match &tree.inode(lookup(&tree, path)).kind {
        InodeKind::File(d) => read_file(&bytes, d),
        other => panic!("{path} is {other:?}"),
    };

    assert_eq!(reports[0].diff_id, Digest::of(&fs::read(&layer).unwrap()));
    let app = tree.inode(lookup(&tree, "bin/app"));
    assert_eq!(app.meta.mode, 0o4755);
    assert_eq!(
        app.meta.mtime,
        Timestamp {
            secs: 1_700_000_000,
            nanos: 123_456_789
        }
    );
    assert_eq!(app.names, 2);
    assert_eq!(lookup(&tree, "bin/app"), lookup(&tree, "data/app-link"));
    if has_xattr {
        assert_eq!(app.meta.xattrs[&b"user.note".to_vec()], b"hello");
    }
    assert_eq!(content("bin/app"), b"#!/bin/app\n");
    assert_eq!(tree.inode(lookup(&tree, "data")).meta.mode, 0o1777);
    assert_eq!(
        tree.inode(lookup(&tree, "data/sym")).kind,
        InodeKind::Symlink {
            target: b"../bin/app".to_vec()
        }
    );
    assert_eq!(tree.inode(lookup(&tree, "data/fifo")).kind, InodeKind::Fifo);
    assert_eq!(content(&format!("data/{long_dir}/file")), b"deep");
    let s = content("data/sparse");
    assert_eq!(s.len(), 8 << 20);
    assert_eq!(&s[..5], b"start");
    assert_eq!(&s[6 << 20..(6 << 20) + 6], b"middle");
    assert_eq!(s.iter().filter(|&&b| b != 0).count(), 11);
    let InodeKind::File(d) = &tree.inode(lookup(&tree, "data/sparse")).kind else {
        unreachable!()
    };
    assert_eq!(d.allocated_blocks(), 2, "holes stay holes");
}
