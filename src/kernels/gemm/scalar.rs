//! Portable reference kernels: the definition of correct. Every SIMD kernel must produce
//! the same bits as these functions (tested in `tests/kernels_gemm.rs`).
//!
//! Integer dot products are accumulated in i64 (so they are exact for any `in_features`),
//! and the float epilogues are the shared [`finish_w8`](super::finish_w8) /
//! [`finish_w4`](super::finish_w4) used by every ISA.

use super::finish_w8;
use super::offsets::{finish_row_w4, group_sums, offset_row_scalar};
use super::pack::{PackedW4, PackedW8, NR};
use super::table::{RowQuant, Table};
use crate::kernels::detect::Isa;

/// `y = x * smooth[c]` when smoothing, else `x`.
#[inline(always)]
pub(crate) fn smoothed(x: f32, smooth: Option<&[f32]>, c: usize) -> f32 {
    match smooth {
        Some(s) => x * s[c],
        None => x,
    }
}

/// `round_half_away_from_zero(y / scale)` clamped to [-127, 127]; 0 when `scale == 0`.
#[inline(always)]
pub(crate) fn quantize_one(y: f32, scale: f32) -> i8 {
    if scale == 0.0 {
        0
    } else {
        (y / scale).round().clamp(-127.0, 127.0) as i8
    }
}

/// Scalar twin of the fused per-row quantization with computed scales.
pub(crate) fn quantize_rows_i8(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    q: &mut [i8],
    scales: &mut [f32],
) -> Result<(), usize> {
    for (r, scale) in scales.iter_mut().enumerate() {
        let xr = &x[r * cols..(r + 1) * cols];
        let mut amax = 0f32;
        for (c, &v) in xr.iter().enumerate() {
            let y = smoothed(v, smooth, c);
            if !y.is_finite() {
                return Err(r * cols + c);
            }
            amax = amax.max(y.abs());
        }
        let s = amax / 127.0;
        *scale = s;
        quantize_row(xr, smooth, s, &mut q[r * cols..(r + 1) * cols]);
    }
    Ok(())
}

/// Scalar twin of the per-row quantization with given scales.
pub(crate) fn quantize_rows_i8_with_scales(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    scales: &[f32],
    q: &mut [i8],
) -> Result<(), usize> {
    for (r, &s) in scales.iter().enumerate() {
        let xr = &x[r * cols..(r + 1) * cols];
        if let Some(c) = xr
            .iter()
            .enumerate()
            .position(|(c, &v)| !smoothed(v, smooth, c).is_finite())
        {
            return Err(r * cols + c);
        }
        quantize_row(xr, smooth, s, &mut q[r * cols..(r + 1) * cols]);
    }
    Ok(())
}

/// Quantizes one (finite) row with scale `s`; also the tail loop of the SIMD kernels.
#[inline]
pub(crate) fn quantize_row(xr: &[f32], smooth: Option<&[f32]>, s: f32, qr: &mut [i8]) {
    for (c, (&v, q)) in xr.iter().zip(qr.iter_mut()).enumerate() {
        *q = quantize_one(smoothed(v, smooth, c), s);
    }
}

/// Reference W8A8: `out[t, o] = finish_w8(Σ_k qx[t,k]·w[o,k], x_scales[t], w.scales[o], bias)`.
pub(crate) fn matmul_w8a8(
    qx: &[i8],
    x_scales: &[f32],
    rows: usize,
    w: &PackedW8,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (n, k) = (w.out_features(), w.in_features());
    let bytes = w.bytes();
    let k4 = w.k4();
    let mut acc = [0i64; NR];
    for t in 0..rows {
        let xr = &qx[t * k..(t + 1) * k];
        for p in 0..w.panels() {
            acc.fill(0);
            let panel = &bytes[p * k4 * 64..(p + 1) * k4 * 64];
            for (kk, &xv) in xr.iter().enumerate() {
                let step = &panel[(kk / 4) * 64..(kk / 4) * 64 + 64];
                for (j, a) in acc.iter_mut().enumerate() {
                    *a += i64::from(xv) * i64::from(step[j * 4 + kk % 4] as i8);
                }
            }
            for (j, &a) in acc.iter().enumerate().take(n.saturating_sub(p * NR)) {
                let o = p * NR + j;
                out[t * n + o] =
                    finish_w8(a as f32, x_scales[t], w.scales()[o], bias.map(|b| b[o]));
            }
        }
    }
}

/// Reference W4A8: per group `g`, `acc_g = Σ_{k in g} qx[t,k]·w[o,k]` (i32, exact);
/// `sum = ((0 + acc_0·s_0) + acc_1·s_1) + …` in f32; with offsets
/// `off = ((0 + S_0·m_0) + S_1·m_1) + …` (`S_g = Σ_{k in g} qx[t,k]`, the shared
/// [`offset_row_scalar`](super::offsets::offset_row_scalar)); `out = finish_w4(sum (+ off), x_scales[t], bias)`.
pub(crate) fn matmul_w4a8(
    qx: &[i8],
    x_scales: &[f32],
    rows: usize,
    w: &PackedW4,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (n, k, group, groups) = (w.out_features(), w.in_features(), w.group(), w.groups());
    let mut sums = vec![0f32; n];
    let mut xsum = vec![0i32; groups];
    let mut off = vec![0f32; n];
    for t in 0..rows {
        let xr = &qx[t * k..(t + 1) * k];
        for (o, sum) in sums.iter_mut().enumerate() {
            *sum = 0.0;
            for g in 0..groups {
                let ks = g * group..((g + 1) * group).min(k);
                let acc: i32 = ks
                    .map(|kk| i32::from(xr[kk]) * i32::from(w.get(o, kk)))
                    .sum();
                *sum += acc as f32 * w.scales()[o * groups + g];
            }
        }
        let off = w.offsets_t().map(|m| {
            group_sums(xr, group, &mut xsum);
            offset_row_scalar(&xsum, m, n, 0, &mut off);
            &off[..]
        });
        finish_row_w4(&mut out[t * n..(t + 1) * n], &sums, off, x_scales[t], bias);
    }
}

/// The scalar row quantizations.
pub(crate) const ROW_QUANT: RowQuant = RowQuant {
    quantize: quantize_rows_i8,
    with_scales: quantize_rows_i8_with_scales,
};

/// The scalar reference: every kernel set must give its bits.
pub(crate) static TABLE: Table = Table::new("scalar", Isa::Scalar, ROW_QUANT);
