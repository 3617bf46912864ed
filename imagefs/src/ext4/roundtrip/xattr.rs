//! Extended attributes: entries in the inode and in an xattr block, with
//! every name index the writer takes (`user.`, `trusted.`, `security.`,
//! `system.`, both POSIX ACLs), and ACLs in ext4's own on-disk form. The
//! reader lists each with its index, name and value as written; the
//! block's header and hashes and the on-disk ACLs are checked from the
//! raw bytes too.

use ::tests::cases::{acl_xattr, capability};
use ext4fmt::acl::{self, AclEntry, UNDEFINED_ID};
use ext4fmt::xattr::{BlockHeader, Entry, block_hash, entry_hash};

use super::*;
use crate::ext4::Xattr;
use crate::ext4::xattr::{parse_block, parse_ibody};

const U: u32 = UNDEFINED_ID;

/// (index, full name, value as given), in the order the writer stores
/// them: by index, then name length, then name.
type Want = Vec<(u8, &'static str, Vec<u8>)>;

fn with(attrs: &Want) -> Metadata {
    let mut m = meta(0o644, 0, 0, 0, 0);
    for (_, name, value) in attrs {
        m.xattrs.insert(name.as_bytes().to_vec(), value.clone());
    }
    m
}

fn listed(x: &[Xattr]) -> Vec<(u8, String, Vec<u8>)> {
    x.iter()
        .map(|x| {
            (
                x.index,
                String::from_utf8(x.name.clone()).unwrap(),
                x.value.clone(),
            )
        })
        .collect()
}

fn want(w: &[(u8, &str, Vec<u8>)]) -> Vec<(u8, String, Vec<u8>)> {
    w.iter()
        .map(|(i, n, v)| (*i, n.to_string(), v.clone()))
        .collect()
}

/// The attributes in the inode and in the block, each as the reader
/// parses them alone.
fn split(meta: &Ext4Meta, ino: u32) -> (Vec<Xattr>, Vec<Xattr>) {
    let inode = meta.inode(ino).unwrap();
    let mut inline = Vec::new();
    if let Some(area) = &inode.ibody {
        parse_ibody(ino, area, &mut inline).unwrap();
    }
    let mut block = Vec::new();
    if inode.xattr_block != 0 {
        let data = meta.read_block(inode.xattr_block).unwrap();
        parse_block(ino, inode.xattr_block, &data, &mut block).unwrap();
    }
    (inline, block)
}

fn small_acl() -> Vec<u8> {
    acl_xattr(&[(1, 6, U), (4, 4, U), (0x20, 4, U)])
}

fn named_acl() -> Vec<u8> {
    acl_xattr(&[
        (1, 7, U),
        (2, 5, 1000),
        (4, 5, U),
        (8, 6, 70000),
        (0x10, 7, U),
        (0x20, 0, U),
    ])
}

#[test]
fn xattrs_in_the_inode_each_index() {
    let plain: Want = vec![
        (1, "user.a", b"1".to_vec()),
        (4, "trusted.t", b"\0\n".to_vec()),
        (6, "security.s", b"\xff\xfe\0".to_vec()),
    ];
    let acls: Want = vec![
        (2, "system.posix_acl_access", small_acl()),
        (3, "system.posix_acl_default", small_acl()),
    ];
    let mut img = Image::in_memory(opts(0, 0));
    img.file("plain", b"p", with(&plain));
    img.node(
        "acls",
        InodeKind::Dir {
            entries: Default::default(),
        },
        with(&acls),
    );
    img.node("none", InodeKind::Fifo, meta(0o644, 0, 0, 0, 0));
    let (meta, _, _) = img.open();
    for (p, attrs) in [("/plain", &plain), ("/acls", &acls)] {
        let ino = ino_at(&meta, p);
        let inode = meta.inode(ino).unwrap();
        assert_eq!(inode.xattr_block, 0, "{p}: all fit in the inode");
        assert!(inode.ibody.is_some(), "{p}");
        assert_eq!(listed(&meta.xattrs(ino).unwrap()), want(attrs), "{p}");
        let (inline, block) = split(&meta, ino);
        assert_eq!(listed(&inline), want(attrs), "{p}");
        assert!(block.is_empty());
    }
    let none = ino_at(&meta, "/none");
    assert!(meta.xattrs(none).unwrap().is_empty());
    assert_eq!(meta.inode(none).unwrap().xattr_block, 0);
}

#[test]
fn xattrs_in_a_block_each_index() {
    // The first (user.big) fills the inode's area; the rest, one of each
    // index, go to the block.
    let attrs: Want = vec![
        (1, "user.big", vec![0xAB; 60]),
        (1, "user.empty", Vec::new()),
        (1, "user.second", b"2nd".to_vec()),
        (2, "system.posix_acl_access", named_acl()),
        (3, "system.posix_acl_default", small_acl()),
        (4, "trusted.origin", b"t\n".to_vec()),
        (6, "security.capability", capability(13)),
        (7, "system.data", b"sys".to_vec()),
    ];
    let mut img = Image::in_memory(opts(0, 0));
    img.file("f", &[5; 5000], with(&attrs));
    let (meta, _, _) = img.open();
    let ino = ino_at(&meta, "/f");
    let inode = meta.inode(ino).unwrap();
    assert_ne!(inode.xattr_block, 0);
    // Two data blocks and the xattr block.
    assert_eq!(inode.blocks, 3 * 8);
    let (inline, block) = split(&meta, ino);
    assert_eq!(listed(&inline), want(&attrs[..1]));
    assert_eq!(listed(&block), want(&attrs[1..]));
    let all = meta.xattrs(ino).unwrap();
    assert_eq!(listed(&all), want(&attrs));
    // Linux shows all but the plain `system.` one.
    let shown: Vec<bool> = all.iter().map(Xattr::shown_by_linux).collect();
    assert_eq!(shown, [true, true, true, true, true, true, true, false]);

    // The block's header and hashes, from its bytes.
    let data = meta.read_block(inode.xattr_block).unwrap();
    let header = BlockHeader::decode(&data).unwrap();
    assert_eq!((header.refcount, header.blocks), (1, 1));
    let mut hashes = Vec::new();
    let mut at = 32;
    while let Some(e) = Entry::decode(&data, at).unwrap() {
        let offs = usize::from(e.value_offs);
        let value = &data[offs..offs + e.value_size as usize];
        assert_eq!(e.hash, entry_hash(&e.name, value));
        assert_eq!(e.value_inum, 0);
        hashes.push(e.hash);
        at += e.len();
    }
    assert_eq!(hashes.len(), attrs.len() - 1);
    assert_eq!(header.hash, block_hash(&hashes));
}

/// The on-disk ACL values of `area` (entries from `first`, value offsets
/// from `base`), by name index.
fn disk_acls(area: &[u8], first: usize, base: usize) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = first;
    while let Some(e) = Entry::decode(area, at).unwrap() {
        if ext4fmt::xattr::is_acl(e.name_index) {
            let offs = base + usize::from(e.value_offs);
            out.push((
                e.name_index,
                area[offs..offs + e.value_size as usize].to_vec(),
            ));
        }
        at += e.len();
    }
    out
}

#[test]
fn acls_on_disk_in_ext4s_form() {
    let entry = |tag, perm, id| AclEntry { tag, perm, id };
    let named = [
        entry(1, 7, U),
        entry(2, 5, 1000),
        entry(4, 5, U),
        entry(8, 6, 70000),
        entry(0x10, 7, U),
        entry(0x20, 0, U),
    ];
    let small = [entry(1, 6, U), entry(4, 4, U), entry(0x20, 4, U)];
    // Version 1; 4-byte entries without an id, 8-byte ones with one.
    let disk = |entries: &[AclEntry]| -> Vec<u8> {
        let mut v = 1u32.to_le_bytes().to_vec();
        for e in entries {
            v.extend(e.tag.to_le_bytes());
            v.extend(e.perm.to_le_bytes());
            if e.tag == 2 || e.tag == 8 {
                v.extend(e.id.to_le_bytes());
            }
        }
        v
    };
    let inline: Want = vec![(2, "system.posix_acl_access", small_acl())];
    let in_block: Want = vec![
        (1, "user.fill", vec![1; 64]),
        (2, "system.posix_acl_access", named_acl()),
        (3, "system.posix_acl_default", named_acl()),
    ];
    let mut img = Image::in_memory(opts(0, 0));
    img.node("inline", InodeKind::Fifo, with(&inline));
    img.node("block", InodeKind::Fifo, with(&in_block));
    let (meta, _, _) = img.open();

    let small_ino = meta.inode(ino_at(&meta, "/inline")).unwrap();
    let area = small_ino.ibody.as_ref().unwrap();
    // In the inode: entries after the magic, values from the first entry.
    let got = disk_acls(area, 4, 4);
    assert_eq!(got, [(2, disk(&small))]);
    assert_eq!(acl::decode_disk(&got[0].1).unwrap(), small);

    let big = meta.inode(ino_at(&meta, "/block")).unwrap();
    let data = meta.read_block(big.xattr_block).unwrap();
    let got = disk_acls(&data, 32, 0);
    assert_eq!(got, [(2, disk(&named)), (3, disk(&named))]);
    assert_eq!(got[0].1.len(), 4 + 4 * 4 + 2 * 8);
    for (_, value) in &got {
        assert_eq!(acl::decode_disk(value).unwrap(), named);
    }
    // And the reader gives back the VFS form that went in.
    let listed = listed(&meta.xattrs(big.ino).unwrap());
    assert_eq!(listed, want(&in_block));
    assert_eq!(acl::decode_vfs(&listed[1].2).unwrap(), named);
}
