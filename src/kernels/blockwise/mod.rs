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

/// The kernel family an [`Isa`] runs, holding the detection token that allows it.
#[derive(Clone, Copy)]
enum Kernels {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2(Avx2),
    #[cfg(target_arch = "x86_64")]
    Avx512(Avx512Vnni),
    #[cfg(target_arch = "aarch64")]
    Neon(Neon),
}

impl Kernels {
    /// The kernels of `isa`, or `None` when this CPU lacks it or there are none for it
    /// (AMX). AVX-VNNI CPUs run the AVX2 kernels: these use no VNNI instruction.
    fn on(isa: Isa) -> Option<Kernels> {
        match isa {
            Isa::Scalar => Some(Kernels::Scalar),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Avx2::detect().map(Kernels::Avx2),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => AvxVnni::detect().and(Avx2::detect()).map(Kernels::Avx2),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Avx512Vnni::detect().map(Kernels::Avx512),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => Neon::detect().map(Kernels::Neon),
            _ => None,
        }
    }
}
