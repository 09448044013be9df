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

// The kernel families are public for the benches, the examples and the integration tests
// (which compare every ISA against its scalar twin through them), but they are not the
// crate's API: users reach the kernels through `QuantLinear`, the quantizers and the codecs.
// Hidden from the docs, so the documented surface is what a candle user needs; the ISA
// choice (`active_isa`, `Isa`, `features`) and `KernelError` stay documented below.
#[doc(hidden)]
pub mod act;
#[doc(hidden)]
pub mod blockwise;
#[doc(hidden)]
pub mod detect;
mod error;
#[doc(hidden)]
pub mod gemm;
#[doc(hidden)]
pub mod halfconv;
pub(crate) mod hugepage;
#[doc(hidden)]
pub mod peak;
mod simd;

pub use detect::{active_isa, features, CpuFeatures, Isa, UnknownIsa, ISA_ENV};
pub use error::KernelError;
