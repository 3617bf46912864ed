//! Manifest and seal decoding: every decoder of the manifest crate on the
//! input (`manifest::fuzzing::decode_all`), with round trips of whatever
//! decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    manifest::fuzzing::decode_all(data);
});
