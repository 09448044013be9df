//! SIMD kernels and their scalar twins: the only module with `unsafe` and `core::arch`.
//!
//! Layout: one folder per algorithm family, one file per ISA inside it, plus a safe entry
//! point (the folder's `mod.rs`) that picks the ISA from [`active_isa`] (detected once,
//! cached). `scalar.rs` in each family is the definition of correct; every SIMD file
//! implements the same functions and is tested against it exactly.
//!
//! Kernels work on plain slices; candle types stay outside this module. Every public entry
//! point checks its arguments and returns [`KernelError`] rather than panicking.

#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

pub mod act;
pub mod blockwise;
pub mod detect;
mod error;
pub mod gemm;
pub mod halfconv;
pub(crate) mod hugepage;
pub mod peak;
mod simd;

pub use detect::{active_isa, features, CpuFeatures, Isa, UnknownIsa, ISA_ENV};
pub use error::KernelError;
