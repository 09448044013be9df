//! AVX2 kernels (the x86_64 baseline): `vpmaddubsw` (u8 × s8 pairs → i16) then
//! `vpmaddwd` by ones (→ i32), with the sign trick so the i16 pair sums never saturate:
//! the unsigned operand is `|qx|` (≤ 128) and the sign of `qx` moves onto the weight
//! (`vpsignb`), so each pair is at most `2·128·127 = 32512 < 32767`. This needs weights in
//! [-127, 127] (negating -128 wraps); a matrix holding -128 runs on the scalar kernel on
//! AVX2-only CPUs (`PackedW8` records it at pack time). W4 needs no trick: the unsigned
//! operand is the nibble `w + 8 ≤ 15`, pairs ≤ `2·15·128`.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::driver::{W4Kernel, W8Finish, W8Kernel, LDC};
use super::table::Table;
use super::ymm::{ymm_kernels, Dot4};
use crate::kernels::detect::Isa;

/// The AVX2 4-byte dot product (sign trick).
pub(crate) struct MaddSign;

impl Dot4 for MaddSign {
    #[inline(always)]
    unsafe fn prep(xb: __m256i) -> (__m256i, __m256i) {
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe { (_mm256_abs_epi8(xb), xb) }
    }
    #[inline(always)]
    unsafe fn w8(acc: __m256i, x: (__m256i, __m256i), w: __m256i) -> __m256i {
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe {
            let pairs = _mm256_maddubs_epi16(x.0, _mm256_sign_epi8(w, x.1));
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }
    #[inline(always)]
    unsafe fn u8s8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe {
            let pairs = _mm256_maddubs_epi16(u, s);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }
}

ymm_kernels!(MaddSign, "avx2,fma", w8_avx2, w4_avx2, w8_table, w4_table;
    w8: 1 2 3 4 / 1; w4: 1 2 / 1);

/// The W8 epilogue on ymm (also used by the AVX-VNNI kernels): the IEEE operations of
/// `finish_w8_generic` in the same order (`x_scale · w_scale`, then `acc ·` that, then
/// `+ bias`; no fused multiply-add), so the results are bit-identical. A tail of fewer
/// than 8 columns takes the scalar formula.
///
/// # Safety
/// AVX2 must be available; `f` must satisfy the [`W8Finish`] contract.
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn w8_finish(f: &W8Finish) {
    // SAFETY: (whole body) vector accesses cover columns `j..j+8 ≤ cols` of the `mr` rows
    // the caller vouches for; the tail is element-wise inside `cols`.
    unsafe {
        for r in 0..f.mr {
            let x_scale = f.xs.add(r).read();
            let xs = _mm256_set1_ps(x_scale);
            let mut j = 0;
            while j + 8 <= f.cols {
                let mut acc = _mm256_loadu_si256(f.c.add(r * LDC + j).cast());
                if let Some(cs) = f.colsums {
                    let cs = _mm256_loadu_si256(cs.add(j).cast());
                    acc = _mm256_sub_epi32(acc, _mm256_slli_epi32::<7>(cs));
                }
                let scale = _mm256_mul_ps(xs, _mm256_loadu_ps(f.ws.add(j)));
                let mut v = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), scale);
                if let Some(b) = f.bias {
                    v = _mm256_add_ps(v, _mm256_loadu_ps(b.add(j)));
                }
                _mm256_storeu_ps(f.out.add(r * f.ldo + j), v);
                j += 8;
            }
            for j in j..f.cols {
                let mut acc = f.c.add(r * LDC + j).read();
                if let Some(cs) = f.colsums {
                    acc = acc.wrapping_sub(cs.add(j).read().wrapping_mul(128));
                }
                let b = f.bias.map(|b| b.add(j).read());
                let v = super::finish_w8(acc as f32, x_scale, f.ws.add(j).read(), b);
                f.out.add(r * f.ldo + j).write(v);
            }
        }
    }
}

/// AVX2 W8 microkernels: 4 rows × 1 panel (8 accumulators of 16 ymm registers).
pub(crate) static W8: W8Kernel = W8Kernel {
    mr: 4,
    np: 1,
    shifted: false,
    full_range: false,
    tile: w8_table,
    finish: Some(w8_finish),
};
/// AVX2 W4 microkernels: 2 rows × 1 panel (4 integer + 4 float accumulators).
pub(crate) static W4: W4Kernel = W4Kernel {
    mr: 2,
    np: 1,
    tile: w4_table,
};

// The gemm dispatch calls these only on paths whose `Avx2` detection proves AVX2 + FMA +
// F16C: every `__m256` operation of `kernels::simd` needs only these.
super::row_quant::row_quant_kernels!(__m256, "avx2,fma,f16c", false);

/// AVX2 + FMA: `vpmaddubsw` + `vpmaddwd` tiles (weights of -128 run the scalar kernel).
pub(crate) static TABLE: Table = Table::new("avx2", Isa::Avx2, ROW_QUANT).with_kernels(&W8, &W4);
