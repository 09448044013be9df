//! One kernel set of the integer GEMM as data: every entry point [`GemmKernels`] runs.
//!
//! Each ISA module defines its sets as statics of [`Table`] (`scalar::TABLE`,
//! `avx2::TABLE`, `avx512::TABLE`, …); [`GemmKernels`] holds a reference to one. Only the
//! constructors in `mod.rs` hand one out, each after detecting the features the table's
//! kernels need (the portable tables need none), so calling through a table is sound. The
//! constructors are the only place that chooses by `cfg(target_arch)`.
//!
//! [`GemmKernels`]: super::GemmKernels

use super::amx_driver::AmxKernels;
use super::driver::{W4Kernel, W8Kernel};
use crate::kernels::detect::Isa;

/// Fused per-row quantization (`quantize_rows_i8`): `x`, `cols`, `smooth`, `q`, `scales`;
/// lengths already checked and `cols > 0`. `Err` holds the flat index of the first
/// non-finite value.
pub(crate) type QuantizeRowsFn =
    unsafe fn(&[f32], usize, Option<&[f32]>, &mut [i8], &mut [f32]) -> Result<(), usize>;
/// Row quantization with given scales (`quantize_rows_i8_with_scales`): `x`, `cols`,
/// `smooth`, `scales`, `q`; lengths and scales already checked, `cols > 0`.
pub(crate) type QuantizeRowsWithScalesFn =
    unsafe fn(&[f32], usize, Option<&[f32]>, &[f32], &mut [i8]) -> Result<(), usize>;

/// One kernel set: what [`GemmKernels`](super::GemmKernels) dispatches to.
pub(crate) struct Table {
    /// Short name for logs and benchmark labels.
    pub name: &'static str,
    /// The ISA whose features the kernels need.
    pub isa: Isa,
    /// The fused row quantization.
    pub quantize_rows: QuantizeRowsFn,
    /// The row quantization with given scales.
    pub quantize_rows_with_scales: QuantizeRowsWithScalesFn,
    /// The W8A8 microkernels; `None` runs the scalar reference.
    pub w8: Option<&'static W8Kernel>,
    /// The W4A8 microkernels; `None` runs the scalar reference.
    pub w4: Option<&'static W4Kernel>,
    /// The AMX tiles, for the sets that use them.
    pub amx: Option<AmxUse>,
}

/// How a kernel set uses AMX tiles.
pub(crate) struct AmxUse {
    /// The tile entry points (the hardware's or the emulation's).
    pub kernels: &'static AmxKernels,
    /// `Some(isa)`: the tiles run from `AMX_MIN_ROWS` rows (W4A8: `AMX_MIN_ROWS_W4`) and
    /// fewer rows run the table's `w8` / `w4` kernels, which are `isa`'s. `None`: every
    /// row count runs on the tiles.
    pub below: Option<Isa>,
}
