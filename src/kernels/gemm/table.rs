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

/// An ISA's two row quantizations (emitted by `row_quant_kernels!`, or the scalar twins).
#[derive(Clone, Copy)]
pub(crate) struct RowQuant {
    /// The fused row quantization.
    pub quantize: QuantizeRowsFn,
    /// The row quantization with given scales.
    pub with_scales: QuantizeRowsWithScalesFn,
}

/// One kernel set: what [`GemmKernels`](super::GemmKernels) dispatches to.
pub(crate) struct Table {
    /// Short name for logs and benchmark labels.
    pub name: &'static str,
    /// The ISA whose features the kernels need.
    pub isa: Isa,
    /// The row quantizations.
    pub rows: RowQuant,
    /// The W8A8 microkernels; `None` runs the scalar reference.
    pub w8: Option<&'static W8Kernel>,
    /// The W4A8 microkernels; `None` runs the scalar reference.
    pub w4: Option<&'static W4Kernel>,
    /// The AMX tiles, for the sets that use them.
    pub amx: Option<AmxUse>,
}

impl Table {
    /// A set with the given row quantization whose matrix products run the scalar
    /// reference; [`Table::with_kernels`] and [`Table::with_amx`] add the rest.
    pub(crate) const fn new(name: &'static str, isa: Isa, rows: RowQuant) -> Table {
        Table {
            name,
            isa,
            rows,
            w8: None,
            w4: None,
            amx: None,
        }
    }

    /// The same set with these W8A8 and W4A8 microkernels.
    pub(crate) const fn with_kernels(self, w8: &'static W8Kernel, w4: &'static W4Kernel) -> Table {
        Table {
            w8: Some(w8),
            w4: Some(w4),
            ..self
        }
    }

    /// The same set on AMX tiles (`below`: see [`AmxUse::below`]).
    pub(crate) const fn with_amx(self, kernels: &'static AmxKernels, below: Option<Isa>) -> Table {
        Table {
            amx: Some(AmxUse { kernels, below }),
            ..self
        }
    }
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
