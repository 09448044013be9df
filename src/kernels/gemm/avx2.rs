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
use super::scalar;
use super::ymm::{ymm_kernels, Dot4};

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
    tile: w8_table,
    finish: Some(w8_finish),
};
/// AVX2 W4 microkernels: 2 rows × 1 panel (4 integer + 4 float accumulators).
pub(crate) static W4: W4Kernel = W4Kernel {
    mr: 2,
    np: 1,
    tile: w4_table,
};

/// `clamp(round_half_away(v), -127, 127)` as i32 lanes; bit-equal to the scalar twin for
/// finite `v` (`t = trunc(v)`, `d = v - t` exact, `t ± 1` where `|d| ≥ 0.5`).
#[inline(always)]
unsafe fn round_clamp(v: __m256) -> __m256i {
    // SAFETY: register-only AVX operations; the caller guarantees AVX2.
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        let d = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
        let big = _mm256_cmp_ps::<_CMP_GE_OQ>(d, _mm256_set1_ps(0.5));
        let one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0));
        let r = _mm256_add_ps(t, _mm256_and_ps(big, one));
        let r = _mm256_min_ps(
            _mm256_max_ps(r, _mm256_set1_ps(-127.0)),
            _mm256_set1_ps(127.0),
        );
        _mm256_cvttps_epi32(r)
    }
}

/// 8 i32 lanes in [-127, 127] → 8 bytes stored at `dst`.
#[inline(always)]
unsafe fn store8(dst: *mut i8, q: __m256i) {
    // SAFETY: the caller guarantees 8 writable bytes at `dst` and AVX2.
    unsafe {
        let w = _mm256_packs_epi32(q, q); // per 128-bit lane: a0..a3 a0..a3 | a4..a7 a4..a7
        let b = _mm256_packs_epi16(w, w);
        let lo = _mm256_castsi256_si128(b);
        let hi = _mm256_extracti128_si256::<1>(b);
        _mm_storel_epi64(dst.cast(), _mm_unpacklo_epi32(lo, hi));
    }
}

#[inline(always)]
unsafe fn load_y(x: *const f32, s: Option<*const f32>) -> __m256 {
    // SAFETY: the caller guarantees 8 readable floats at `x` (and `s`).
    unsafe {
        let y = _mm256_loadu_ps(x);
        match s {
            Some(s) => _mm256_mul_ps(y, _mm256_loadu_ps(s)),
            None => y,
        }
    }
}

/// Quantizes one finite row with scale `s`; the tail (< 8) uses the scalar formula,
/// which is the same IEEE operations.
#[inline(always)]
unsafe fn quantize_row(xr: &[f32], smooth: Option<&[f32]>, s: f32, qr: &mut [i8]) {
    if s == 0.0 {
        qr.fill(0);
        return;
    }
    let body = xr.len() / 8 * 8;
    // SAFETY: full 8-lane chunks inside `xr`, `smooth` and `qr` (all the same length).
    unsafe {
        let vs = _mm256_set1_ps(s);
        for c in (0..body).step_by(8) {
            let y = load_y(xr.as_ptr().add(c), smooth.map(|s| s.as_ptr().add(c)));
            store8(qr.as_mut_ptr().add(c), round_clamp(_mm256_div_ps(y, vs)));
        }
    }
    for c in body..xr.len() {
        qr[c] = scalar::quantize_one(scalar::smoothed(xr[c], smooth, c), s);
    }
}

/// Returns `Err(flat index)` of the first non-finite smoothed value of the row, else the
/// row's `max |y|`.
#[inline(always)]
unsafe fn row_amax(xr: &[f32], smooth: Option<&[f32]>, row_start: usize) -> Result<f32, usize> {
    let body = xr.len() / 8 * 8;
    let bad = || {
        let c = (0..xr.len())
            .find(|&c| !scalar::smoothed(xr[c], smooth, c).is_finite())
            .expect("a non-finite lane was detected in this row");
        row_start + c
    };
    // SAFETY: full 8-lane chunks inside `xr` and `smooth`.
    let mut amax = unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let inf = _mm256_set1_ps(f32::INFINITY);
        let mut vmax = _mm256_setzero_ps();
        for c in (0..body).step_by(8) {
            let y = _mm256_andnot_ps(
                sign,
                load_y(xr.as_ptr().add(c), smooth.map(|s| s.as_ptr().add(c))),
            );
            if _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(y, inf)) != 0xFF {
                return Err(bad());
            }
            vmax = _mm256_max_ps(vmax, y);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), vmax);
        lanes.iter().fold(0f32, |m, &v| m.max(v))
    };
    for (c, &v) in xr.iter().enumerate().skip(body) {
        let y = scalar::smoothed(v, smooth, c);
        if !y.is_finite() {
            return Err(row_start + c);
        }
        amax = amax.max(y.abs());
    }
    Ok(amax)
}

/// Fused per-row quantization (ymm); same results as `scalar::quantize_rows_i8`.
///
/// # Safety
/// AVX2 must be available; lengths as checked by the safe entry point.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_rows_i8(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    q: &mut [i8],
    scales: &mut [f32],
) -> Result<(), usize> {
    for (r, scale) in scales.iter_mut().enumerate() {
        let xr = &x[r * cols..(r + 1) * cols];
        // SAFETY: AVX2 guaranteed by the caller.
        let amax = unsafe { row_amax(xr, smooth, r * cols)? };
        let s = amax / 127.0;
        *scale = s;
        // SAFETY: AVX2 guaranteed by the caller; `q`'s row is as long as `xr`.
        unsafe { quantize_row(xr, smooth, s, &mut q[r * cols..(r + 1) * cols]) };
    }
    Ok(())
}

/// Per-row quantization with given scales (ymm); same results as the scalar twin.
///
/// # Safety
/// As [`quantize_rows_i8`], with `scales` finite and ≥ 0.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_rows_i8_with_scales(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    scales: &[f32],
    q: &mut [i8],
) -> Result<(), usize> {
    for (r, &s) in scales.iter().enumerate() {
        let xr = &x[r * cols..(r + 1) * cols];
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe {
            row_amax(xr, smooth, r * cols)?;
            quantize_row(xr, smooth, s, &mut q[r * cols..(r + 1) * cols]);
        }
    }
    Ok(())
}
