//! Old-GNU (`S`) sparse entries, read by our tar reader: the map in the
//! header and its extension blocks, the holes skipped.

use super::*;
use crate::fuzzing::{GenEntry, GenPath, layer_tar};

fn err(tar: Vec<u8>) -> FlattenError {
    match flatten_tars_of(vec![tar]) {
        Ok(_) => panic!("flattening succeeded"),
        Err(e) => e,
    }
}

fn sparse(real: u32, shift: u8, runs: Vec<(u32, u16)>) -> Vec<u8> {
    layer_tar(&[GenEntry::GnuSparse {
        path: GenPath {
            parts: vec![0],
            repeat: 0,
            slash: false,
        },
        real,
        shift,
        runs,
    }])
}

#[test]
fn runs_in_header_and_extension_blocks_land_where_the_map_says() {
    // 30 runs: 4 in the header, 21 in one extension block, 5 in another.
    let runs: Vec<(u32, u16)> = (0..30).map(|i| (i * 10_000, 100 + i as u16)).collect();
    let f = flat_tars(vec![sparse(400_000, 0, runs.clone())]);
    let content = f.content("a");
    assert_eq!(content.len(), 400_000);
    let mut want = vec![0u8; 400_000];
    for (off, len) in runs {
        want[off as usize..off as usize + usize::from(len)].fill(9);
    }
    assert!(content == want, "content differs");
}

#[test]
fn a_tib_of_holes_is_skipped() {
    // 2^28 << 12 = 1 TiB, one run at its end: reading the holes as zeros
    // would take minutes.
    let f = flat_tars(vec![sparse(1 << 28, 12, vec![((1 << 28) - 1, 512)])]);
    let InodeKind::File(data) = &f.inode("a").kind else {
        panic!("not a file");
    };
    assert_eq!(data.size, 1 << 40);
    assert_eq!(data.allocated_blocks(), 1);
}

#[test]
fn bad_maps_are_errors_naming_the_entry() {
    // Runs out of order.
    let e = err(sparse(100_000, 0, vec![(5000, 10), (0, 10)]));
    assert!(e.to_string().contains("entry \"a\""), "{e}");
    // Past the real size.
    err(sparse(100, 0, vec![(95, 10)]));
    // Past ext4's largest file.
    let e = err(sparse(u32::MAX, 47, vec![(0, 1)]));
    let FlattenError::Layer(LayerError::Entry { source, .. }) = &e else {
        panic!("{e}");
    };
    assert!(
        matches!(source, EntryError::SparseTooLarge { .. }),
        "{source}"
    );
}
