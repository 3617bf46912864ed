//! manifest crate.
#![forbid(unsafe_code)]
