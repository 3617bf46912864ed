//! cachetiers crate.
#![forbid(unsafe_code)]
