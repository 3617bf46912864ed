//! Layer application on structured tars: a few layers of entries (PAX
//! records, GNU long names, both sparse forms, deep paths, hard links,
//! symlinks, whiteouts and opaque markers), serialised by
//! `chunker::fuzzing`, optionally with bytes overwritten, then flattened
//! for real with small limits. Errors are fine; panics, hangs and memory
//! growth are findings.
#![no_main]

use chunker::fuzzing::{GenEntry, flatten_tars, layer_tar, small_limits};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    layers: Vec<Vec<GenEntry>>,
    /// `(offset, byte)` overwrites in the first layer's tar.
    corrupt: Vec<(u16, u8)>,
}

fuzz_target!(|input: Input| {
    let mut tars: Vec<Vec<u8>> = input.layers.iter().take(4).map(|l| layer_tar(l)).collect();
    if let Some(first) = tars.first_mut() {
        for &(at, byte) in &input.corrupt {
            if let Some(b) = first.get_mut(usize::from(at)) {
                *b = byte;
            }
        }
    }
    let _ = flatten_tars(&tars, &small_limits());
});
