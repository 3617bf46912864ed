//! The `imagefs` command line: parses arguments and calls library functions.
#![forbid(unsafe_code)]

fn main() {}
