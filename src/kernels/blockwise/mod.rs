//! Blockwise absmax int8 quantization (GGML Q8_0's formula, any block size).
//!
//! Safe entry points that check slice lengths and run the kernel for this process's ISA
//! ([`kernel_isa`], from [`crate::kernels::active_isa`]: detected once and cached, so a
//! plain `cargo build` runs the AVX2 / AVX-512 code). `scalar.rs` is the definition of
//! correct; every SIMD version produces the same bits (q bytes, scale bits, dequantized f32
//! bits) and is tested against it at every tail length, block size and extreme value.
//!
//! Per block of `block` values (the last block may be shorter):
//!
//! ```text
//! amax = max |x|            d  = amax / 127   (f32)
//! id   = 1 / d  (0 if d==0)  q  = round_half_away_from_zero(x * id) as i8
//! scale = f16::from_f32(d)   x' = q as f32 * f32::from(scale)
//! ```
//!
//! With `block == 32` the `q` bytes and f16 scales are exactly candle's
//! `GgmlDType::Q8_0` blocks (`BlockQ8_0::from_float` / `to_float`).
//!
//! The folder also holds the decoders of the other weight formats, one formula each:
//! [`dequantize_u4_lut`] (4-bit codes through a 16-entry table: NF4 and symmetric int4) and
//! [`dequantize_affine`] (zero point + code × scale in f64). Every decoder has a `*_to_vec`
//! form for callers that build a tensor from the result: a large fresh allocation is
//! page-faulted in on first touch, which costs more than the decoding itself, so those
//! buffers are advised to use transparent huge pages (Linux; see `kernels/hugepage.rs`).
//!
//! Each entry point also has an `*_on(isa, ..)` form that runs a chosen ISA (or returns
//! `Ok(None)` when the CPU lacks it), for tests and benchmarks that compare kernels.
//!
//! Every entry point checks its slice lengths and parameters first and returns
//! [`KernelError`] on a mismatch (never panics); the checks are a few comparisons per call.
//!
//! [`KernelError`]: crate::kernels::KernelError
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

#[cfg(target_arch = "aarch64")]
use super::detect::Neon;
use half::f16;

use super::detect::{active_isa, Isa};
#[cfg(target_arch = "x86_64")]
use super::detect::{Avx2, Avx512Vnni, AvxVnni};

mod affine;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod checks;
mod generic;
mod int8;
#[cfg(target_arch = "aarch64")]
mod neon;
mod scalar;
#[cfg(test)]
mod tests;
mod u4_lut;

pub use affine::{dequantize_affine, dequantize_affine_on, dequantize_affine_to_vec};
pub use int8::{
    dequantize_i8_blocks, dequantize_i8_blocks_on, dequantize_i8_blocks_to_vec, quantize_i8_blocks,
    quantize_i8_blocks_on,
};
pub use u4_lut::{dequantize_u4_lut, dequantize_u4_lut_on, dequantize_u4_lut_to_vec};

/// The instruction set the blockwise kernels run on in this process: [`Isa::Avx512Vnni`]
/// when the CPU reaches the crate's AVX-512 level (F/BW/VL + VNNI; these kernels use only
/// F/BW/VL), [`Isa::Avx2`] on AVX2 + FMA + F16C CPUs (including AVX-VNNI ones and AVX-512
/// CPUs without VNNI), [`Isa::Neon`] on aarch64, otherwise [`Isa::Scalar`].
pub fn kernel_isa() -> Isa {
    match active_isa() {
        Isa::Avx512Vnni | Isa::Amx => Isa::Avx512Vnni,
        Isa::Avx2 | Isa::AvxVnni => Isa::Avx2,
        Isa::Neon => Isa::Neon,
        Isa::Scalar => Isa::Scalar,
    }
}

/// One ISA's blockwise kernels: each SIMD module's `TABLE` (emitted by
/// `blockwise_kernels!`: its `#[target_feature]` functions) and [`SCALAR`]. Calling a SIMD
/// entry is sound only on a CPU with the table's features, so tables are reached only
/// through [`Kernels::on`], which detects them first.
struct Table {
    quantize_i8_blocks: QuantizeI8,
    dequantize_i8_blocks: DequantizeI8,
    dequantize_u4_lut: DequantizeU4Lut,
    dequantize_affine: DequantizeAffine,
}

/// `(x, block, q, scales)`: see [`quantize_i8_blocks`].
type QuantizeI8 = unsafe fn(&[f32], usize, &mut [i8], &mut [f16]) -> Result<(), usize>;
/// `(q, scales, block, out)`: see [`dequantize_i8_blocks`].
type DequantizeI8 = unsafe fn(&[i8], &[f16], usize, &mut [f32]);
/// `(packed, lut, scales, group, out)`: see [`dequantize_u4_lut`].
type DequantizeU4Lut = unsafe fn(&[u8], &[f32; 16], &[f32], usize, &mut [f32]);
/// `(codes, bits, zero_points, scales, group, out)`: see [`dequantize_affine`].
type DequantizeAffine = unsafe fn(&[u8], u8, &[f32], &[f32], usize, &mut [f32]);

/// The scalar kernels (the definition of correct), on every CPU.
static SCALAR: Table = Table {
    quantize_i8_blocks: scalar::quantize_i8_blocks,
    dequantize_i8_blocks: scalar::dequantize_i8_blocks,
    dequantize_u4_lut: scalar::dequantize_u4_lut,
    dequantize_affine: scalar::dequantize_affine,
};

/// The table of an ISA this CPU has: the proof that its entries may run (only
/// [`Kernels::on`] makes one). Its methods are the kernels, arguments already checked by
/// the entry points (the kernels rely on the rules of `checks.rs`).
#[derive(Clone, Copy)]
struct Kernels(&'static Table);

impl Kernels {
    /// The kernels of `isa`, or `None` when this CPU lacks it or there are none for it
    /// (AMX). AVX-VNNI CPUs run the AVX2 kernels: these use no VNNI instruction. The one
    /// place with the per-ISA (and per-architecture) choice of the blockwise kernels.
    fn on(isa: Isa) -> Option<Kernels> {
        let table = match isa {
            Isa::Scalar => Some(&SCALAR),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Avx2::detect().map(|_| &avx2::TABLE),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => AvxVnni::detect().and(Avx2::detect()).map(|_| &avx2::TABLE),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Avx512Vnni::detect().map(|_| &avx512::TABLE),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Neon::detect().map(|_| &neon::TABLE),
            _ => None,
        };
        table.map(Kernels)
    }

    fn quantize_i8_blocks(
        self,
        x: &[f32],
        block: usize,
        q: &mut [i8],
        scales: &mut [f16],
    ) -> Result<(), usize> {
        // SAFETY: `on` made `self` only after detecting the table's features.
        unsafe { (self.0.quantize_i8_blocks)(x, block, q, scales) }
    }

    fn dequantize_i8_blocks(self, q: &[i8], scales: &[f16], block: usize, out: &mut [f32]) {
        // SAFETY: as in `quantize_i8_blocks`.
        unsafe { (self.0.dequantize_i8_blocks)(q, scales, block, out) }
    }

    fn dequantize_u4_lut(
        self,
        packed: &[u8],
        lut: &[f32; 16],
        scales: &[f32],
        group: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as in `quantize_i8_blocks`.
        unsafe { (self.0.dequantize_u4_lut)(packed, lut, scales, group, out) }
    }

    fn dequantize_affine(
        self,
        codes: &[u8],
        bits: u8,
        zero_points: &[f32],
        scales: &[f32],
        group: usize,
        out: &mut [f32],
    ) {
        // SAFETY: as in `quantize_i8_blocks`.
        unsafe { (self.0.dequantize_affine)(codes, bits, zero_points, scales, group, out) }
    }
}
