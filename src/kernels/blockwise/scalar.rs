//! Portable blockwise int8 kernels: the definition of correct.
//!
//! The formula is GGML's Q8_0 (`quantize_row_q8_0` / `dequantize_row_q8_0`), written the
//! way candle 0.11 writes it in `BlockQ8_0::from_float` / `to_float`, so that a block size
//! of 32 gives candle's bytes exactly. Every SIMD file in this folder must produce the same
//! bits as these functions for every input.

use half::f16;

/// `f32::round(v) as i8`: round half away from zero, then Rust's saturating cast
/// (values beyond ±127/-128 saturate, NaN becomes 0). Only reachable beyond ±127.5 when
/// the block scale is subnormal; kept literal so the SIMD files have one thing to match.
#[inline(always)]
pub(crate) fn round_to_i8(v: f32) -> i8 {
    f32::round(v) as i8
}

/// The per-block scale: `d = amax / 127` and its reciprocal (`0` for an all-zero block).
#[inline(always)]
pub(crate) fn scale_of(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

/// Quantizes one block (`x.len() == q.len() >= 1`), returning the f16 scale, or the index
/// within the block of the first non-finite value.
#[inline]
pub(crate) fn quantize_block(x: &[f32], q: &mut [i8]) -> Result<f16, usize> {
    let mut amax = 0f32;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_finite() {
            return Err(i);
        }
        amax = amax.max(v.abs());
    }
    let (d, id) = scale_of(amax);
    for (o, &v) in q.iter_mut().zip(x) {
        *o = round_to_i8(v * id);
    }
    Ok(f16::from_f32(d))
}

/// See [`super::quantize_i8_blocks`]; the caller has checked the slice lengths.
pub(crate) fn quantize_i8_blocks(
    x: &[f32],
    block: usize,
    q: &mut [i8],
    scales: &mut [f16],
) -> Result<(), usize> {
    for (b, ((xb, qb), s)) in x
        .chunks(block)
        .zip(q.chunks_mut(block))
        .zip(scales.iter_mut())
        .enumerate()
    {
        *s = quantize_block(xb, qb).map_err(|i| b * block + i)?;
    }
    Ok(())
}

/// Dequantizes one block (`q.len() == out.len()`).
#[inline]
pub(crate) fn dequantize_block(q: &[i8], scale: f16, out: &mut [f32]) {
    let d = f32::from(scale);
    for (o, &v) in out.iter_mut().zip(q) {
        *o = v as f32 * d;
    }
}

/// See [`super::dequantize_i8_blocks`]; the caller has checked the slice lengths.
pub(crate) fn dequantize_i8_blocks(q: &[i8], scales: &[f16], block: usize, out: &mut [f32]) {
    for ((qb, &s), ob) in q.chunks(block).zip(scales).zip(out.chunks_mut(block)) {
        dequantize_block(qb, s, ob);
    }
}

/// The 4-bit code of element `i`: low nibble of byte `i / 2` for even `i`, high for odd.
#[inline(always)]
pub(crate) fn u4_at(packed: &[u8], i: usize) -> usize {
    usize::from((packed[i / 2] >> (4 * (i % 2))) & 0x0F)
}

/// See [`super::dequantize_u4_lut`]; the caller has checked the slice lengths.
pub(crate) fn dequantize_u4_lut(
    packed: &[u8],
    lut: &[f32; 16],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) {
    for (g, (og, &s)) in out.chunks_mut(group).zip(scales).enumerate() {
        dequantize_u4_lut_range(packed, lut, s, g * group, og);
    }
}

/// `og[k] = lut[code(start + k)] * s`: one group or the tail of one.
#[inline]
pub(crate) fn dequantize_u4_lut_range(
    packed: &[u8],
    lut: &[f32; 16],
    s: f32,
    start: usize,
    og: &mut [f32],
) {
    for (k, o) in og.iter_mut().enumerate() {
        *o = lut[u4_at(packed, start + k)] * s;
    }
}

/// The affine decode of one code: `m + q·s` in f64, clamped to the finite f32 range, then
/// rounded to f32 (nearest even). The crate's `quant::affine` formula.
#[inline(always)]
pub(crate) fn affine_decode(m: f32, s: f32, q: u8) -> f32 {
    let v = f64::from(m) + f64::from(q) * f64::from(s);
    v.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
}

/// The code of element `i` for `bits` 8 (one per byte) or 4 (two per byte, low first).
#[inline(always)]
pub(crate) fn code_at(codes: &[u8], bits: u8, i: usize) -> u8 {
    if bits == 8 {
        codes[i]
    } else {
        (codes[i / 2] >> (4 * (i % 2))) & 0x0F
    }
}

/// See [`super::dequantize_affine`]; the caller has checked the arguments.
pub(crate) fn dequantize_affine(
    codes: &[u8],
    bits: u8,
    zero_points: &[f32],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) {
    for (g, ((og, &m), &s)) in out
        .chunks_mut(group)
        .zip(zero_points)
        .zip(scales)
        .enumerate()
    {
        dequantize_affine_range(codes, bits, m, s, g * group, og);
    }
}

/// `og[k] = affine_decode(m, s, code(start + k))`: one group or the tail of one.
#[inline]
pub(crate) fn dequantize_affine_range(
    codes: &[u8],
    bits: u8,
    m: f32,
    s: f32,
    start: usize,
    og: &mut [f32],
) {
    for (k, o) in og.iter_mut().enumerate() {
        *o = affine_decode(m, s, code_at(codes, bits, start + k));
    }
}
