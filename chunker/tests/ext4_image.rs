//! The ext4 writer against e2fsck, ext4-view and the Linux kernel.

mod ext4_support;

use chunker::ext4::Ext4Options;
use chunker::tree::{InodeKind, Metadata, Timestamp};
use ext4_support::{ImageBuilder, meta};

fn opts() -> Ext4Options {
    Ext4Options {
        chunk_size: 64 * 1024,
        free_bytes: 1 << 20,
        spare_inodes: 64,
    }
}

#[test]
fn empty_tree() {
    let built = ImageBuilder::new(opts()).build();
    built.check_all();
}

#[test]
fn every_file_type() {
    let mut b = ImageBuilder::new(opts());
    b.file("etc/hello", b"hello, world\n", meta(0o644));
    b.file("empty", b"", meta(0o600));
    b.node("dir", InodeKind::Dir { entries: Default::default() }, meta(0o750));
    b.node("link", InodeKind::Symlink { target: b"etc/hello".to_vec() }, meta(0o777));
    b.node("dev/null", InodeKind::CharDev { major: 1, minor: 3 }, meta(0o666));
    b.node("dev/sda", InodeKind::BlockDev { major: 8, minor: 0 }, meta(0o660));
    b.node("fifo", InodeKind::Fifo, meta(0o644));
    b.node("sock", InodeKind::Socket, meta(0o755));
    b.build().check_all();
}
