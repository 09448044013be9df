//! Helpers shared by the integration tests: each test file that needs them declares
//! `mod common;` (Cargo does not build `tests/common/` as a test of its own). A helper
//! lives here only when two or more test files use it; one file's helpers stay in it.
//!
//! Every test binary compiles all of this but uses only part of it, hence the
//! `dead_code` allowance for the whole module.
#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod compare;
pub mod kernels;
pub mod models;
pub mod oracle;
pub mod rng;
pub mod safetensors_raw;
pub mod tensors;
