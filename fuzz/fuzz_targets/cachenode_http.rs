//! The cache node's HTTP handlers: requests built from the input (method,
//! path, headers, body) against the node's router over stores in memory.
//! The harness (`cachenode::server::fuzzing`) panics on a panic, a hang, a
//! 500 or an answer over its size bound.
#![no_main]

use std::sync::OnceLock;

use cachenode::server::fuzzing::Harness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One node for the run: what earlier inputs filled stays, as on a
    // real node.
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    let _ = HARNESS.get_or_init(Harness::new).run(data);
});
