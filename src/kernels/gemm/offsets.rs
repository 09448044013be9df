//! Per-group weight offsets of asymmetric int4 weights: the one routine every W4A8 path
//! (scalar reference, SIMD driver, AMX driver) uses to add them, so the bits agree by
//! construction.
//!
//! With offsets `m[o, g]` a weight is `w[o, k] = s[o, g]·c[o, k] + m[o, g]`, and
//!
//! ```text
//! Σ_k qx[t,k]·w[o,k] = Σ_g s[o,g]·acc_g + Σ_g m[o,g]·S_g,   S_g = Σ_{k in g} qx[t,k]
//! ```
//!
//! The first sum is the symmetric kernels' `sum`; this module computes the second one,
//! `off = ((0 + S_0·m_0) + S_1·m_1) + …` in f32, group by group in order (`S_g` exact in
//! i32, converted to f32 once), and the epilogue is `finish_w4(sum + off, x_scale, bias)`.
//! Offsets are stored `[groups][out]` ([`PackedW4`](super::PackedW4)), so the loop over
//! output channels is contiguous: the compiler vectorizes it across channels without
//! reordering any channel's additions.

use super::finish_w4;

/// `dst[g] = Σ_{k in group g} xr[k]` (exact i32) for the `dst.len()` groups of one row;
/// the last group may be short (only its real columns are summed).
///
/// `|S_g| ≤ 128 · group`, exact in i32 for any group below 2^24 inputs.
#[inline]
pub(crate) fn group_sums(xr: &[i8], group: usize, dst: &mut [i32]) {
    dst.fill(0);
    for (d, part) in dst.iter_mut().zip(xr.chunks(group.max(1))) {
        *d = part.iter().map(|&v| i32::from(v)).sum();
    }
}

/// `dst[j] = ((0 + S_0·m_0[o0 + j]) + S_1·m_1[o0 + j]) + …` for `j < dst.len()`, where
/// `S_g = sums[g]` and `m_g` is row `g` of `offsets_t` (`[groups][n]`, `n` floats per
/// group). Runs [`offset_row_avx2`] when the CPU has AVX2 (detected once): the same
/// multiplies and adds per element, in the same order (no FMA), so the same bits.
#[inline]
pub(crate) fn offset_row(sums: &[i32], offsets_t: &[f32], n: usize, o0: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if let Some(t) = crate::kernels::detect::Avx2::detect() {
        offset_row_avx2(t, sums, offsets_t, n, o0, dst);
        return;
    }
    offset_row_scalar(sums, offsets_t, n, o0, dst);
}

/// The scalar twin of [`offset_row`] (and the scalar reference's own path).
#[inline]
pub(crate) fn offset_row_scalar(
    sums: &[i32],
    offsets_t: &[f32],
    n: usize,
    o0: usize,
    dst: &mut [f32],
) {
    dst.fill(0.0);
    let cols = dst.len();
    for (g, &s) in sums.iter().enumerate() {
        let sf = s as f32;
        let m = &offsets_t[g * n + o0..g * n + o0 + cols];
        for (d, &mv) in dst.iter_mut().zip(m) {
            *d += sf * mv;
        }
    }
}

/// [`offset_row_scalar`] on AVX2: eight columns at a time, each lane accumulating its
/// column over the groups in a register (`add(acc, mul(S_g, m))`, two roundings as in the
/// scalar code); the last `cols % 8` columns go through the scalar code. Falls back to
/// the scalar code (which then reports the bad range) when `offsets_t` is too short.
#[cfg(target_arch = "x86_64")]
pub(crate) fn offset_row_avx2(
    _proof: crate::kernels::detect::Avx2,
    sums: &[i32],
    offsets_t: &[f32],
    n: usize,
    o0: usize,
    dst: &mut [f32],
) {
    let cols = dst.len();
    let need = match sums.len() {
        0 => 0,
        g => (g - 1) * n + o0 + cols,
    };
    if need > offsets_t.len() {
        offset_row_scalar(sums, offsets_t, n, o0, dst);
        return;
    }
    // SAFETY: the token proves AVX2; every load reads `offsets_t[g·n + o0 + j ..][..8]`
    // with `g < sums.len()` and `j + 8 ≤ cols`, inside the `need` floats checked above;
    // the stores write `dst[j..j + 8]`, `j + 8 ≤ cols = dst.len()`.
    let full = unsafe { offset_cols_avx2(sums, offsets_t, n, o0, dst) };
    let tail = &mut dst[full..];
    if !tail.is_empty() {
        offset_row_scalar(sums, offsets_t, n, o0 + full, tail);
    }
}

/// The whole blocks of eight columns of [`offset_row_avx2`]; returns how many columns it
/// wrote.
///
/// # Safety
/// AVX2 must be available and `offsets_t` hold `(sums.len() − 1)·n + o0 + dst.len()`
/// floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn offset_cols_avx2(
    sums: &[i32],
    offsets_t: &[f32],
    n: usize,
    o0: usize,
    dst: &mut [f32],
) -> usize {
    use std::arch::x86_64::*;
    let full = dst.len() / 8 * 8;
    let base = offsets_t.as_ptr();
    for j in (0..full).step_by(8) {
        let mut acc = _mm256_setzero_ps();
        for (g, &s) in sums.iter().enumerate() {
            // SAFETY: in bounds by the caller's contract (see `offset_row_avx2`).
            let m = unsafe { _mm256_loadu_ps(base.add(g * n + o0 + j)) };
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(s as f32), m));
        }
        // SAFETY: `j + 8 ≤ full ≤ dst.len()`.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr().add(j), acc) };
    }
    full
}

/// The W4A8 epilogue of one output row segment, shared by every path:
/// `dst[j] = finish_w4(sums[j] + off[j], x_scale, bias[j])` with offsets, else
/// `finish_w4(sums[j], x_scale, bias[j])` (the symmetric bits, no `+ 0.0`).
#[inline]
pub(crate) fn finish_row_w4(
    dst: &mut [f32],
    sums: &[f32],
    off: Option<&[f32]>,
    x_scale: f32,
    bias: Option<&[f32]>,
) {
    match (off, bias) {
        (None, None) => {
            for (d, &s) in dst.iter_mut().zip(sums) {
                *d = finish_w4(s, x_scale, None);
            }
        }
        (None, Some(bs)) => {
            for ((d, &s), &b) in dst.iter_mut().zip(sums).zip(bs) {
                *d = finish_w4(s, x_scale, Some(b));
            }
        }
        (Some(off), None) => {
            for ((d, &s), &m) in dst.iter_mut().zip(sums).zip(off) {
                *d = finish_w4(s + m, x_scale, None);
            }
        }
        (Some(off), Some(bs)) => {
            for (((d, &s), &m), &b) in dst.iter_mut().zip(sums).zip(off).zip(bs) {
                *d = finish_w4(s + m, x_scale, Some(b));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_sums_cover_short_last_group() {
        let x: Vec<i8> = (0..70).map(|i| (i % 7) as i8 - 3).collect();
        let mut s = [7i32; 3];
        group_sums(&x, 32, &mut s);
        let want: Vec<i32> = x
            .chunks(32)
            .map(|c| c.iter().map(|&v| i32::from(v)).sum())
            .collect();
        assert_eq!(s.to_vec(), want);
        let mut ext = [1i32; 2];
        group_sums(&[-128; 64], 32, &mut ext);
        assert_eq!(ext, [-4096, -4096]);
    }

    #[test]
    fn offset_row_adds_groups_in_order() {
        // 3 outputs, 2 groups; offsets_t is [groups][out].
        let m = [0.5f32, -1.0, 1e30, 0.25, 2.0, -1e30];
        let mut d = [9f32; 2];
        offset_row(&[4, -2], &m, 3, 1, &mut d);
        let (s0, s1) = (4f32, -2f32);
        assert_eq!(
            d,
            [(0.0 + s0 * m[1]) + s1 * m[4], (0.0 + s0 * m[2]) + s1 * m[5]]
        );
        let mut y = [0f32; 2];
        finish_row_w4(
            &mut y,
            &[1.0, 2.0],
            Some(&[0.5, -2.0]),
            2.0,
            Some(&[1.0, 0.0]),
        );
        assert_eq!(y, [(1.0 + 0.5) * 2.0 + 1.0, 0.0]);
        finish_row_w4(&mut y, &[1.0, -0.0], None, 2.0, None);
        assert_eq!(bits(&y), bits(&[2.0, -0.0]));
    }

    #[test]
    fn avx2_offset_row_equals_scalar_bit_for_bit() {
        #[cfg(not(target_arch = "x86_64"))]
        crate::kernels::detect::report_skipped(
            crate::kernels::detect::Isa::Avx2,
            "offsets::avx2_offset_row_equals_scalar_bit_for_bit",
        );
        #[cfg(target_arch = "x86_64")]
        {
            use crate::kernels::detect::{report_skipped, Avx2, Isa};
            let Some(t) = Avx2::detect() else {
                report_skipped(
                    Isa::Avx2,
                    "offsets::avx2_offset_row_equals_scalar_bit_for_bit",
                );
                return;
            };
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for groups in [0usize, 1, 2, 5, 48] {
                for n in [1usize, 7, 8, 33, 70] {
                    let m: Vec<f32> = (0..groups * n)
                        .map(|k| match k % 11 {
                            0 => 1e30,
                            1 => -1e-30,
                            2 => -0.0,
                            _ => (next() % 20001) as f32 / 1000.0 - 10.0,
                        })
                        .collect();
                    let sums: Vec<i32> = (0..groups)
                        .map(|g| match g % 4 {
                            0 => -127 * 128,
                            1 => 0,
                            _ => (next() % 8001) as i32 - 4000,
                        })
                        .collect();
                    for o0 in 0..n {
                        for cols in 0..=n - o0 {
                            let mut a = vec![7f32; cols];
                            let mut b = vec![-7f32; cols];
                            offset_row_scalar(&sums, &m, n, o0, &mut a);
                            offset_row_avx2(t, &sums, &m, n, o0, &mut b);
                            assert_eq!(
                                bits(&a),
                                bits(&b),
                                "groups {groups} n {n} o0 {o0} cols {cols}"
                            );
                        }
                    }
                }
            }
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|f| f.to_bits()).collect()
    }
}
