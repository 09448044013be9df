//! x86_64 AVX2 + F16C blockwise int8 kernels (8 f32 lanes).
//!
//! Same bits as `scalar.rs`, computed in two passes over a *group* of up to 8 blocks that
//! stays in L1 between them:
//!
//! 1. per block, `max |x|` as an integer max over the sign-cleared bit patterns (for
//!    non-negative floats integer order is float order, and NaN/±Inf have the largest
//!    patterns, so one compare of the result against `0x7f80_0000` detects non-finite
//!    input reliably — unlike `max_ps`, whose NaN handling depends on operand order);
//! 2. the group's `d = amax / 127`, `id = 1 / d` (IEEE division, as in scalar code) and the
//!    f16 scales (`vcvtps2ph`, round to nearest even = `half::f16::from_f32`) on one vector;
//! 3. per block, `q = trunc(x·id + copysign(0.49999997, x·id))`, which is
//!    round-half-away-from-zero exactly for `|x·id| < 2^23` (see [`round_half_away`]).
//!
//! A block whose `d` is subnormal (`amax < ~1.5e-36`) can have `|x·id| > 127.5` or
//! `id == inf`, where the scalar code relies on Rust's saturating `as i8`; such blocks go
//! through the scalar block kernel. Tails shorter than a vector use scalar element code
//! with the same `id`, which gives the same bits by construction.

use core::arch::x86_64::*;

use half::f16;

use super::scalar;
use crate::kernels::detect::Avx2;

/// f32 lanes per vector.
const LANES: usize = 8;
/// Blocks whose scales are computed together (one vector of `amax`).
const GROUP: usize = LANES;
/// Upper bound on the values of one group (16 KiB), so the second pass reads from L1.
const GROUP_VALUES: usize = 4096;
/// The largest f32 below 0.5: `trunc(v + copysign(HALF_DOWN, v))` rounds half away from zero.
const HALF_DOWN: f32 = 0.499_999_97;

/// See [`super::quantize_i8_blocks`]; lengths already checked by the caller.
pub(crate) fn quantize_i8_blocks(
    _cpu: Avx2,
    x: &[f32],
    block: usize,
    q: &mut [i8],
    scales: &mut [f16],
) -> Result<(), usize> {
    // SAFETY: holding an `Avx2` token proves the CPU has AVX2, FMA and F16C.
    unsafe {
        match block {
            32 => quantize::<32>(x, block, q, scales),
            64 => quantize::<64>(x, block, q, scales),
            _ => quantize::<0>(x, block, q, scales),
        }
    }
}

/// See [`super::dequantize_i8_blocks`]; lengths already checked by the caller.
pub(crate) fn dequantize_i8_blocks(
    _cpu: Avx2,
    q: &[i8],
    scales: &[f16],
    block: usize,
    out: &mut [f32],
) {
    // SAFETY: holding an `Avx2` token proves the CPU has AVX2, FMA and F16C.
    unsafe {
        match block {
            32 => dequantize::<32>(q, scales, block, out),
            64 => dequantize::<64>(q, scales, block, out),
            _ => dequantize::<0>(q, scales, block, out),
        }
    }
}

/// See [`super::dequantize_u4_lut`]; lengths already checked by the caller.
pub(crate) fn dequantize_u4_lut(
    _cpu: Avx2,
    packed: &[u8],
    lut: &[f32; 16],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) {
    // SAFETY: holding an `Avx2` token proves the CPU has AVX2, FMA and F16C.
    unsafe { dequantize_u4(packed, lut, scales, group, out) }
}

/// See [`super::dequantize_affine`]; arguments already checked by the caller.
pub(crate) fn dequantize_affine(
    _cpu: Avx2,
    codes: &[u8],
    bits: u8,
    zero_points: &[f32],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) {
    // SAFETY: holding an `Avx2` token proves the CPU has AVX2, FMA and F16C.
    unsafe { dequantize_affine_impl(codes, bits, zero_points, scales, group, out) }
}

/// Loads `x[i..i + 8]`.
#[inline]
#[target_feature(enable = "avx2")]
fn load_f32(x: &[f32], i: usize) -> __m256 {
    let v: &[f32; LANES] = x[i..i + LANES].try_into().expect("8 values");
    // SAFETY: `v` is 8 readable f32 (32 bytes); `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

/// The block kernels, monomorphised for block sizes 32 and 64 (`B`) and generic (`B == 0`).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C. Slice lengths as in
/// [`super::quantize_i8_blocks`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize<const B: usize>(
    x: &[f32],
    block: usize,
    q: &mut [i8],
    scales: &mut [f16],
) -> Result<(), usize> {
    let block = if B == 0 { block } else { B };
    let per_group = (GROUP_VALUES / block).clamp(1, GROUP);
    let group_len = per_group * block;
    for (g, ((xg, qg), sg)) in x
        .chunks(group_len)
        .zip(q.chunks_mut(group_len))
        .zip(scales.chunks_mut(per_group))
        .enumerate()
    {
        let mut amax = [0u32; GROUP];
        for (a, xb) in amax.iter_mut().zip(xg.chunks(block)) {
            *a = amax_bits::<B>(xb);
        }
        if amax.iter().any(|&a| a >= 0x7f80_0000) {
            if let Some(i) = xg.iter().position(|v| !v.is_finite()) {
                return Err(g * group_len + i);
            }
        }
        let (id, slow) = group_scales(&amax, sg);
        for (j, (xb, qb)) in xg.chunks(block).zip(qg.chunks_mut(block)).enumerate() {
            if slow & (1 << j) != 0 {
                // Subnormal d: the scalar kernel (saturating casts) gives the reference
                // bits; its scale equals the one already stored.
                let _ = scalar::quantize_block(xb, qb);
            } else {
                quantize_block::<B>(xb, id[j], qb);
            }
        }
    }
    Ok(())
}

/// `max |x|` of one block as the bit pattern of the (sign-cleared) f32.
#[inline]
#[target_feature(enable = "avx2")]
fn amax_bits<const B: usize>(xb: &[f32]) -> u32 {
    let n = if B == 0 { xb.len() } else { B.min(xb.len()) };
    let xb = &xb[..n];
    let abs = _mm256_set1_epi32(0x7fff_ffff);
    let mut acc = _mm256_setzero_si256();
    let full = n / LANES * LANES;
    let mut i = 0;
    while i < full {
        let v = _mm256_castps_si256(load_f32(xb, i));
        acc = _mm256_max_epi32(acc, _mm256_and_si256(v, abs));
        i += LANES;
    }
    let m = _mm_max_epi32(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
    let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m));
    let mut m = _mm_cvtsi128_si32(m) as u32;
    for v in &xb[full..] {
        m = m.max(v.to_bits() & 0x7fff_ffff);
    }
    m
}

/// From the finite `amax` patterns of up to 8 blocks: stores their f16 scales into `sg`
/// and returns each block's `id = 1/d` (0 when `d == 0`) and a bit mask of the blocks whose
/// `d` is subnormal (these need the scalar kernel).
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn group_scales(amax: &[u32; GROUP], sg: &mut [f16]) -> ([f32; GROUP], u32) {
    // SAFETY: `amax` is 8 readable u32 (32 bytes); `loadu` has no alignment requirement.
    let a = unsafe { _mm256_loadu_ps(amax.as_ptr().cast::<f32>()) };
    let d = _mm256_div_ps(a, _mm256_set1_ps(127.0));
    let nonzero = _mm256_cmp_ps::<_CMP_NEQ_OQ>(d, _mm256_setzero_ps());
    let id = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(1.0), d), nonzero);
    let subnormal = _mm256_and_ps(
        nonzero,
        _mm256_cmp_ps::<_CMP_LT_OQ>(d, _mm256_set1_ps(f32::MIN_POSITIVE)),
    );
    let half = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d);
    let mut bits = [0u16; GROUP];
    // SAFETY: `bits` is 8 writable u16 (16 bytes); `storeu` has no alignment requirement.
    unsafe { _mm_storeu_si128(bits.as_mut_ptr().cast(), half) };
    for (s, &b) in sg.iter_mut().zip(&bits) {
        *s = f16::from_bits(b);
    }
    let mut ids = [0f32; GROUP];
    // SAFETY: `ids` is 8 writable f32 (32 bytes); `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(ids.as_mut_ptr(), id) };
    (ids, _mm256_movemask_ps(subnormal) as u32)
}

/// Rounds each lane half away from zero and converts to i32: `trunc(v + copysign(0.49999997, v))`.
///
/// Exact for `|v| < 2^23`: below 0.5 the sum stays below 1 (at most `1 - 2^-24`); at 0.5
/// it is `1 - 2^-25`, a tie that rounds to even, 1.0; from 0.5 up the fraction `f` of `v`
/// is a multiple of `ulp(v) >= 2^-24`, so `f + 0.49999997` is below `1 - ulp/2` when
/// `f < 0.5` and at least `1 - 2^-25` (rounding to 1) when `f >= 0.5`.
#[inline]
#[target_feature(enable = "avx2")]
fn round_half_away(v: __m256) -> __m256i {
    let sign = _mm256_and_ps(v, _mm256_set1_ps(-0.0));
    let adj = _mm256_or_ps(sign, _mm256_set1_ps(HALF_DOWN));
    _mm256_cvttps_epi32(_mm256_add_ps(v, adj))
}

/// Quantizes one block with a scale whose `|x·id| <= 127.5` (d normal or zero).
#[inline]
#[target_feature(enable = "avx2")]
fn quantize_block<const B: usize>(xb: &[f32], id: f32, qb: &mut [i8]) {
    let n = if B == 0 { xb.len() } else { B.min(xb.len()) };
    let (xb, qb) = (&xb[..n], &mut qb[..n]);
    let idv = _mm256_set1_ps(id);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut i = 0;
    while i + 4 * LANES <= n {
        let r0 = round_half_away(_mm256_mul_ps(load_f32(xb, i), idv));
        let r1 = round_half_away(_mm256_mul_ps(load_f32(xb, i + LANES), idv));
        let r2 = round_half_away(_mm256_mul_ps(load_f32(xb, i + 2 * LANES), idv));
        let r3 = round_half_away(_mm256_mul_ps(load_f32(xb, i + 3 * LANES), idv));
        // packs work per 128-bit lane: bytes come out as 4-byte groups
        // r0[0..4] r1[0..4] r2[0..4] r3[0..4] | r0[4..8] r1[4..8] ..., put back in order.
        let p = _mm256_packs_epi16(_mm256_packs_epi32(r0, r1), _mm256_packs_epi32(r2, r3));
        let p = _mm256_permutevar8x32_epi32(p, order);
        let dst: &mut [i8; 4 * LANES] = (&mut qb[i..i + 4 * LANES]).try_into().expect("32");
        // SAFETY: `dst` is 32 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), p) };
        i += 4 * LANES;
    }
    while i + LANES <= n {
        let r = round_half_away(_mm256_mul_ps(load_f32(xb, i), idv));
        let w = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
        let b = _mm_packs_epi16(w, w);
        let dst: &mut [i8; LANES] = (&mut qb[i..i + LANES]).try_into().expect("8");
        // SAFETY: `dst` is 8 writable bytes; `storel_epi64` writes 8 bytes, unaligned.
        unsafe { _mm_storel_epi64(dst.as_mut_ptr().cast(), b) };
        i += LANES;
    }
    for (o, &v) in qb[i..].iter_mut().zip(&xb[i..]) {
        *o = scalar::round_to_i8(v * id);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C. Slice lengths as in
/// [`super::dequantize_i8_blocks`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize<const B: usize>(q: &[i8], scales: &[f16], block: usize, out: &mut [f32]) {
    let block = if B == 0 { block } else { B };
    let group_len = GROUP * block;
    for ((qg, sg), og) in q
        .chunks(group_len)
        .zip(scales.chunks(GROUP))
        .zip(out.chunks_mut(group_len))
    {
        let mut bits = [0u16; GROUP];
        for (b, s) in bits.iter_mut().zip(sg) {
            *b = s.to_bits();
        }
        // SAFETY: `bits` is 8 readable u16 (16 bytes); `loadu` has no alignment requirement.
        let h = unsafe { _mm_loadu_si128(bits.as_ptr().cast()) };
        let mut d = [0f32; GROUP];
        // SAFETY: `d` is 8 writable f32 (32 bytes); `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(d.as_mut_ptr(), _mm256_cvtph_ps(h)) };
        for ((qb, ob), &dj) in qg.chunks(block).zip(og.chunks_mut(block)).zip(&d) {
            dequantize_block::<B>(qb, dj, ob);
        }
    }
}

/// `ob[i] = qb[i] as f32 * d`.
#[inline]
#[target_feature(enable = "avx2")]
fn dequantize_block<const B: usize>(qb: &[i8], d: f32, ob: &mut [f32]) {
    let n = if B == 0 { qb.len() } else { B.min(qb.len()) };
    let (qb, ob) = (&qb[..n], &mut ob[..n]);
    let dv = _mm256_set1_ps(d);
    let mut i = 0;
    while i + LANES <= n {
        let src: &[i8; LANES] = qb[i..i + LANES].try_into().expect("8");
        // SAFETY: `src` is 8 readable bytes; `loadl_epi64` reads 8 bytes, unaligned.
        let b = unsafe { _mm_loadl_epi64(src.as_ptr().cast()) };
        let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), dv);
        let dst: &mut [f32; LANES] = (&mut ob[i..i + LANES]).try_into().expect("8");
        // SAFETY: `dst` is 8 writable f32 (32 bytes); `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) };
        i += LANES;
    }
    for (o, &v) in ob[i..].iter_mut().zip(&qb[i..]) {
        *o = v as f32 * d;
    }
}

/// `lut[code]` for 8 codes (0..=15) in i32 lanes: two 8-entry permutes, chosen by bit 3.
#[inline]
#[target_feature(enable = "avx2")]
fn lookup16(codes: __m256i, lut_lo: __m256, lut_hi: __m256) -> __m256 {
    let a = _mm256_permutevar8x32_ps(lut_lo, codes);
    let b = _mm256_permutevar8x32_ps(lut_hi, codes);
    // Bit 3 of the code moved to the sign bit selects the upper half of the table.
    _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(codes)))
}

/// # Safety
/// The CPU must support AVX2. Slice lengths as in [`super::dequantize_u4_lut`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_u4(
    packed: &[u8],
    lut: &[f32; 16],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) {
    if group % 2 == 1 {
        // Odd groups start mid-byte every other group: rare, keep them simple.
        return scalar::dequantize_u4_lut(packed, lut, scales, group, out);
    }
    // SAFETY: `lut` is 16 readable f32; each load reads 8 of them, unaligned.
    let (lut_lo, lut_hi) = unsafe {
        (
            _mm256_loadu_ps(lut.as_ptr()),
            _mm256_loadu_ps(lut.as_ptr().add(8)),
        )
    };
    let low = _mm_set1_epi8(0x0F);
    for (g, (og, &s)) in out.chunks_mut(group).zip(scales).enumerate() {
        let start = g * group;
        let pg = &packed[start / 2..];
        let sv = _mm256_set1_ps(s);
        let mut i = 0;
        while i + 2 * LANES <= og.len() {
            let src: &[u8; LANES] = pg[i / 2..i / 2 + LANES].try_into().expect("8 bytes");
            // SAFETY: `src` is 8 readable bytes; `loadl_epi64` reads 8 bytes, unaligned.
            let bytes = unsafe { _mm_loadl_epi64(src.as_ptr().cast()) };
            let lo = _mm_and_si128(bytes, low);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), low);
            // 16 codes in element order: byte k gives elements 2k (low) and 2k + 1 (high).
            let codes = _mm_unpacklo_epi8(lo, hi);
            let c0 = _mm256_cvtepu8_epi32(codes);
            let c1 = _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(codes));
            let v0 = _mm256_mul_ps(lookup16(c0, lut_lo, lut_hi), sv);
            let v1 = _mm256_mul_ps(lookup16(c1, lut_lo, lut_hi), sv);
            let dst: &mut [f32; 2 * LANES] = (&mut og[i..i + 2 * LANES]).try_into().expect("16");
            // SAFETY: `dst` is 16 writable f32 (64 bytes); `storeu` has no alignment
            // requirement.
            unsafe {
                _mm256_storeu_ps(dst.as_mut_ptr(), v0);
                _mm256_storeu_ps(dst.as_mut_ptr().add(LANES), v1);
            }
            i += 2 * LANES;
        }
        scalar::dequantize_u4_lut_range(packed, lut, s, start + i, &mut og[i..]);
    }
}

/// `m + q·s` in f64 for 4 codes, clamped to ±f32::MAX (NaN kept: `min`/`max` return their
/// second operand when one is NaN), rounded to f32 (nearest even, like `as f32`).
#[inline]
#[target_feature(enable = "avx2")]
fn affine4(q: __m128i, m: __m256d, s: __m256d) -> __m128 {
    let v = _mm256_add_pd(m, _mm256_mul_pd(_mm256_cvtepi32_pd(q), s));
    let max = _mm256_set1_pd(f64::from(f32::MAX));
    let v = _mm256_max_pd(_mm256_set1_pd(-f64::from(f32::MAX)), _mm256_min_pd(max, v));
    _mm256_cvtpd_ps(v)
}

/// # Safety
/// The CPU must support AVX2. Arguments as in [`super::dequantize_affine`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_affine_impl(
    codes: &[u8],
    bits: u8,
    zero_points: &[f32],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) {
    if bits == 4 && group % 2 == 1 {
        // Odd groups start mid-byte every other group: rare, keep them simple.
        return scalar::dequantize_affine(codes, bits, zero_points, scales, group, out);
    }
    let low = _mm_set1_epi8(0x0F);
    for (g, ((og, &m), &s)) in out
        .chunks_mut(group)
        .zip(zero_points)
        .zip(scales)
        .enumerate()
    {
        let start = g * group;
        let (mv, sv) = (_mm256_set1_pd(f64::from(m)), _mm256_set1_pd(f64::from(s)));
        let mut i = 0;
        while i + LANES <= og.len() {
            let q = if bits == 8 {
                let src: &[u8; 8] = codes[start + i..start + i + 8].try_into().expect("8");
                // SAFETY: `src` is 8 readable bytes; `loadl_epi64` reads 8 bytes, unaligned.
                _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(src.as_ptr().cast()) })
            } else {
                let at = (start + i) / 2;
                let src: &[u8; 4] = codes[at..at + 4].try_into().expect("4");
                let bytes = _mm_cvtsi32_si128(i32::from_le_bytes(*src));
                let lo = _mm_and_si128(bytes, low);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), low);
                _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi))
            };
            let v0 = affine4(_mm256_castsi256_si128(q), mv, sv);
            let v1 = affine4(_mm256_extracti128_si256::<1>(q), mv, sv);
            let dst: &mut [f32; LANES] = (&mut og[i..i + LANES]).try_into().expect("8");
            // SAFETY: `dst` is 8 writable f32; each store writes 4 of them, unaligned.
            unsafe {
                _mm_storeu_ps(dst.as_mut_ptr(), v0);
                _mm_storeu_ps(dst.as_mut_ptr().add(4), v1);
            }
            i += LANES;
        }
        scalar::dequantize_affine_range(codes, bits, m, s, start + i, &mut og[i..]);
    }
}
