//! The tiered reader: an ordered stack of chunk stores read top-down.
//!
//! - [`flight`]: [`SingleFlight`], which makes concurrent requests for
//!   the same chunk share one fetch.

pub mod flight;

pub use flight::{Flight, SingleFlight};
