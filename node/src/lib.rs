//! The parts of the `veil` node that other targets (benchmarks, tools) use as a library. The
//! server itself is the `veil` binary (src/main.rs).
#![warn(missing_docs)]

pub mod parse;
pub mod pii;
