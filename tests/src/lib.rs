//! Helpers for the end-to-end tests in `tests/`: a generator of OCI test
//! images, a canonical tree listing with three producers and a diff, and
//! small process/mount utilities.
#![forbid(unsafe_code)]

pub mod cases;
pub mod e2e;
pub mod harness;
pub mod imagegen;
pub mod tarw;
pub mod treecheck;
