//! vhost-user-blk requests through a real split virtqueue in guest
//! memory the fuzzer writes: the available ring, the chain walker, the
//! request parser and the backend against an in-memory device (see
//! `imagefs::transport::vhost::fuzzing`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    imagefs::transport::vhost::fuzzing::vhost_request(data);
});
