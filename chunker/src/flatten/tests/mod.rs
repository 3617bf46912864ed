//! Flattening tests on generated layers, asserted on the resulting tree
//! and the file bytes in the image; shared helpers here.

use std::cell::RefCell;
use std::fs;
use std::io;
use std::rc::Rc;

use super::*;
use crate::ext4::BLOCK_SIZE;
use crate::oci::testimg::{TarWriter, TestImage, TestLayer, header};
use crate::oci::{Compression, Image};
use crate::sink::{ImageSink, VecSink};
use crate::tree::{FileData, InodeKind, Timestamp};

/// A sink whose bytes the test can still read while the builder owns it.
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

struct Flat {
    tree: Tree,
    image: SharedSink,
    reports: Vec<LayerReport>,
}

impl Flat {
    fn id(&self, path: &str) -> Option<crate::tree::InodeId> {
        let comps: Vec<&[u8]> = path.split('/').map(str::as_bytes).collect();
        self.tree.lookup(&comps)
    }

    fn inode(&self, path: &str) -> &crate::tree::Inode {
        self.tree
            .inode(self.id(path).unwrap_or_else(|| panic!("{path} missing")))
    }

    fn exists(&self, path: &str) -> bool {
        self.id(path).is_some()
    }

    fn content(&self, path: &str) -> Vec<u8> {
        let InodeKind::File(data) = &self.inode(path).kind else {
            panic!("{path} is not a file");
        };
        read_file(&self.image.0.borrow(), data)
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

fn flatten_layers_of(layers: Vec<TarWriter>) -> Result<Flat, FlattenError> {
    flatten_tars_of(layers.iter().map(TarWriter::finish).collect())
}

fn flatten_tars_of(tars: Vec<Vec<u8>>) -> Result<Flat, FlattenError> {
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::new(
        tars.into_iter()
            .map(|t| TestLayer::new(t, Compression::Gzip))
            .collect(),
    );
    img.write_layout(tmp.path(), "t");
    let image = Image::open(&ImageSource::OciLayout {
        dir: tmp.path().to_owned(),
        reference: None,
    })?;
    let sink = SharedSink::default();
    let mut b = Ext4Builder::new(sink.clone(), Ext4Options::default())?;
    let (tree, reports) = flatten_layers(&image, &mut b)?;
    Ok(Flat {
        tree,
        image: sink,
        reports,
    })
}

fn flat(layers: Vec<TarWriter>) -> Flat {
    flatten_layers_of(layers).unwrap()
}

fn flat_tars(tars: Vec<Vec<u8>>) -> Flat {
    flatten_tars_of(tars).unwrap()
}

fn layer(f: impl FnOnce(&mut TarWriter)) -> TarWriter {
    let mut t = TarWriter::new();
    f(&mut t);
    t
}

fn entry_error(layers: Vec<TarWriter>) -> (Digest, String, EntryError) {
    match flatten_layers_of(layers) {
        Err(FlattenError::Layer(LayerError::Entry {
            layer,
            entry,
            source,
        })) => (layer, entry, source),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("flattening succeeded"),
    }
}

mod ahead;
mod changesets;
mod errors;
mod gnu_sparse;
