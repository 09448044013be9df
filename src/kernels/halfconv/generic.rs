//! The f32 ⇄ f16 conversions written once over [`F32Vector`] and instantiated per ISA by
//! [`halfconv_kernels!`] (AVX2 + F16C, AVX-512, NEON; see `mod.rs`).
//!
//! Whole steps of four vectors are converted with the vector type's f16 conversions
//! (round to nearest even, like `half::f16::from_f32`; f16 → f32 is exact). The non-finite
//! check is one test per step, on the f32 side: the f16 of `v` is finite exactly when
//! `|v| < 65520` (65520 is the tie between 65504, the largest f16, and 65536, which rounds
//! to even: the overflow to Inf), and a f16 is finite exactly when its f32 is. The lanes'
//! sign-cleared bit patterns are combined by integer max (NaN above ±Inf above every
//! finite value, whatever the order) and compared once. A step that flags is left, with
//! everything after it, to the scalar twin, which names the first bad index; its bits for
//! the good elements are the same, so nothing needs undoing. Tails shorter than a step run
//! through the scalar twin too.
//!
//! Every function is `#[inline(always)]` and `unsafe` only for the CPU features of its
//! vector type; slice accesses are bounds-checked.

use super::scalar;
use crate::kernels::simd::F32Vector;

/// Vectors per step.
const VECTORS: usize = 4;

/// The smallest f32 magnitude whose f16 is ±Inf (see the module docs).
const F16_OVERFLOW: f32 = 65520.0;

/// Whether every lane of the four vectors is below `limit` in magnitude (false for NaN).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn all_below<V: F32Vector>(v: [V; VECTORS], limit: f32) -> bool {
    let all = u32::MAX >> (32 - V::LANES);
    // SAFETY: `V`'s features (caller).
    unsafe {
        let m = v[0].abs().max_bits(v[1].abs());
        let m = m.max_bits(v[2].abs().max_bits(v[3].abs()));
        V::mask_bits(m.lt(V::splat(limit))) == all
    }
}

/// See [`super::f32_to_f16_le`]; lengths already checked by the caller
/// (`out.len() == 2 * x.len()`).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(super) unsafe fn f32_to_f16_le<V: F32Vector>(x: &[f32], out: &mut [u8]) -> Result<(), usize> {
    let (l, step) = (V::LANES, VECTORS * V::LANES);
    let mut done = 0;
    // Whole steps as exact chunks: their lengths are constants, so the vector accesses
    // inside compile without bounds checks (indexed from `x`, the checks made an
    // L2-resident round trip about 30% slower).
    for (xs, os) in x.chunks_exact(step).zip(out.chunks_exact_mut(2 * step)) {
        // SAFETY: `V`'s features (caller).
        unsafe {
            let v = [
                V::load(xs, 0),
                V::load(xs, l),
                V::load(xs, 2 * l),
                V::load(xs, 3 * l),
            ];
            if !all_below(v, F16_OVERFLOW) {
                break;
            }
            for (k, v) in v.into_iter().enumerate() {
                v.store_f16_le(os, k * l);
            }
        }
        done += step;
    }
    scalar::f32_to_f16_le(&x[done..], &mut out[2 * done..]).map_err(|e| done + e)
}

/// See [`super::f16_le_to_f32`]; lengths already checked by the caller
/// (`bytes.len() == 2 * out.len()`).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(super) unsafe fn f16_le_to_f32<V: F32Vector>(
    bytes: &[u8],
    out: &mut [f32],
) -> Result<(), usize> {
    let (l, step) = (V::LANES, VECTORS * V::LANES);
    let mut done = 0;
    for (bs, os) in bytes.chunks_exact(2 * step).zip(out.chunks_exact_mut(step)) {
        // SAFETY: `V`'s features (caller).
        unsafe {
            let v = [
                V::load_f16_le(bs, 0),
                V::load_f16_le(bs, l),
                V::load_f16_le(bs, 2 * l),
                V::load_f16_le(bs, 3 * l),
            ];
            if !all_below(v, f32::INFINITY) {
                break;
            }
            for (k, v) in v.into_iter().enumerate() {
                v.store(os, k * l);
            }
        }
        done += step;
    }
    scalar::f16_le_to_f32(&bytes[2 * done..], &mut out[done..]).map_err(|e| done + e)
}

/// Emits, in the invoking module, one ISA's conversions: `f32_to_f16_le(cpu, x, out)` and
/// `f16_le_to_f32(cpu, bytes, out)`, safe functions taking the ISA's detection token around
/// `#[target_feature]` instantiations for `$vec` (lengths already checked by the caller).
///
/// The invoking module vouches that holding `$token` proves every feature in `$feat`, and
/// that `$feat` covers `$vec`'s [`F32Vector`] operations.
macro_rules! halfconv_kernels {
    ($token:ty, $vec:ty, $feat:literal) => {
        $crate::kernels::simd::target_feature_entries!($token, $feat;
            /// See [`super::f32_to_f16_le`]; lengths already checked by the caller.
            f32_to_f16_le(x: &[f32], out: &mut [u8]) -> Result<(), usize>
                = super::generic::f32_to_f16_le::<$vec>;
            /// See [`super::f16_le_to_f32`]; lengths already checked by the caller.
            f16_le_to_f32(bytes: &[u8], out: &mut [f32]) -> Result<(), usize>
                = super::generic::f16_le_to_f32::<$vec>;
        );
    };
}
pub(super) use halfconv_kernels;
