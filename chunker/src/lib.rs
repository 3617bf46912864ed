//! chunker crate.
#![forbid(unsafe_code)]
