//! x86_64 F16C + AVX2 f32 ⇄ f16 conversions, 8 lanes, 4 vectors per step.
//!
//! `vcvtps2ph` with immediate 0 rounds to nearest even, like `half::f16::from_f32`;
//! `vcvtph2ps` is exact. The non-finite check is a 16-bit compare of the f16 exponent
//! field against all ones, OR-ed over a step and tested once per step. When a step flags,
//! the scalar twin re-runs from that step's start to name the first bad index (its output
//! bits for the good elements are the same, so nothing needs undoing). Tails shorter than a
//! step run through the scalar twin.

use core::arch::x86_64::*;

use super::scalar;
use crate::kernels::detect::Avx2;

/// Elements per step: four 8-lane vectors.
const STEP: usize = 32;

/// See [`super::f32_to_f16_le`]; lengths already checked by the caller.
pub(crate) fn f32_to_f16_le(_cpu: Avx2, x: &[f32], out: &mut [u8]) -> Result<(), usize> {
    // SAFETY: holding an `Avx2` token proves the CPU has AVX2 and F16C.
    let done = unsafe { encode_steps(x, out) };
    let tail = scalar::f32_to_f16_le(&x[done..], &mut out[2 * done..]);
    tail.map_err(|i| done + i)
}

/// See [`super::f16_le_to_f32`]; lengths already checked by the caller.
pub(crate) fn f16_le_to_f32(_cpu: Avx2, bytes: &[u8], out: &mut [f32]) -> Result<(), usize> {
    // SAFETY: holding an `Avx2` token proves the CPU has AVX2 and F16C.
    let done = unsafe { decode_steps(bytes, out) };
    let tail = scalar::f16_le_to_f32(&bytes[2 * done..], &mut out[done..]);
    tail.map_err(|i| done + i)
}

/// Converts whole steps of `x` into `out` and returns how many elements were done: all full
/// steps, or fewer when a step holds a non-finite result (that step is left to the caller's
/// scalar pass, which finds the index).
///
/// # Safety
/// The CPU must support AVX2 and F16C, and `out.len() >= 2 * x.len()`.
#[target_feature(enable = "avx2,f16c")]
unsafe fn encode_steps(x: &[f32], out: &mut [u8]) -> usize {
    debug_assert!(out.len() >= 2 * x.len());
    let steps = x.len() / STEP;
    let mask = _mm_set1_epi16(0x7c00);
    let src = x.as_ptr();
    let dst = out.as_mut_ptr();
    for s in 0..steps {
        let i = s * STEP;
        // SAFETY: `i + STEP <= x.len()`, so the four 8-float loads are in bounds, and the
        // four 16-byte stores end at `2 * (i + STEP) <= out.len()`. Unaligned intrinsics.
        unsafe {
            let h0 = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.add(i)));
            let h1 = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.add(i + 8)));
            let h2 = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.add(i + 16)));
            let h3 = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.add(i + 24)));
            let bad = _mm_or_si128(
                _mm_or_si128(
                    _mm_cmpeq_epi16(_mm_and_si128(h0, mask), mask),
                    _mm_cmpeq_epi16(_mm_and_si128(h1, mask), mask),
                ),
                _mm_or_si128(
                    _mm_cmpeq_epi16(_mm_and_si128(h2, mask), mask),
                    _mm_cmpeq_epi16(_mm_and_si128(h3, mask), mask),
                ),
            );
            if _mm_movemask_epi8(bad) != 0 {
                return i;
            }
            let d = dst.add(2 * i).cast::<__m128i>();
            _mm_storeu_si128(d, h0);
            _mm_storeu_si128(d.add(1), h1);
            _mm_storeu_si128(d.add(2), h2);
            _mm_storeu_si128(d.add(3), h3);
        }
    }
    steps * STEP
}

/// Converts whole steps of little-endian f16 `bytes` into `out`; returns the elements done
/// (stops before a step holding NaN/Inf, like [`encode_steps`]).
///
/// # Safety
/// The CPU must support AVX2 and F16C, and `bytes.len() >= 2 * out.len()`.
#[target_feature(enable = "avx2,f16c")]
unsafe fn decode_steps(bytes: &[u8], out: &mut [f32]) -> usize {
    debug_assert!(bytes.len() >= 2 * out.len());
    let steps = out.len() / STEP;
    let mask = _mm_set1_epi16(0x7c00);
    let src = bytes.as_ptr();
    let dst = out.as_mut_ptr();
    for s in 0..steps {
        let i = s * STEP;
        // SAFETY: the four 16-byte loads end at `2 * (i + STEP) <= bytes.len()`, the four
        // 8-float stores at `i + STEP <= out.len()`. Unaligned intrinsics.
        unsafe {
            let p = src.add(2 * i).cast::<__m128i>();
            let h0 = _mm_loadu_si128(p);
            let h1 = _mm_loadu_si128(p.add(1));
            let h2 = _mm_loadu_si128(p.add(2));
            let h3 = _mm_loadu_si128(p.add(3));
            let bad = _mm_or_si128(
                _mm_or_si128(
                    _mm_cmpeq_epi16(_mm_and_si128(h0, mask), mask),
                    _mm_cmpeq_epi16(_mm_and_si128(h1, mask), mask),
                ),
                _mm_or_si128(
                    _mm_cmpeq_epi16(_mm_and_si128(h2, mask), mask),
                    _mm_cmpeq_epi16(_mm_and_si128(h3, mask), mask),
                ),
            );
            if _mm_movemask_epi8(bad) != 0 {
                return i;
            }
            let d = dst.add(i);
            _mm256_storeu_ps(d, _mm256_cvtph_ps(h0));
            _mm256_storeu_ps(d.add(8), _mm256_cvtph_ps(h1));
            _mm256_storeu_ps(d.add(16), _mm256_cvtph_ps(h2));
            _mm256_storeu_ps(d.add(24), _mm256_cvtph_ps(h3));
        }
    }
    steps * STEP
}
