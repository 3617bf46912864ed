//! Small shared pieces for reports and metrics, at the bottom of the
//! dependency graph so every crate (and the benchmarks) can use them:
//!
//! - [`counter`]: event counts bumped from many threads, read as totals;
//! - [`histogram`]: percentiles of samples and of bucketed histograms;
//! - [`prometheus`]: rendering Prometheus text exposition lines.
#![forbid(unsafe_code)]

pub mod counter;
pub mod histogram;
pub mod prometheus;
