//! Every decoder of a stored or exchanged format in `manifest/` on arbitrary
//! bytes: each returns a value or an error, and never panics or allocates
//! more than its input justifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use manifest::agent::AgentState;
use manifest::{Manifest, StartProfile};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        // What decodes must encode back to the same bytes (one canonical form).
        let again = m.encode().expect("a decoded manifest encodes");
        assert_eq!(again, data, "manifest decode/encode is not canonical");
    }
    let _ = StartProfile::decode(data);
    let _ = AgentState::decode(data);
    let _ = manifest::trace::decode(data);
});
