//! x86_64 AVX-512 (F/BW/VL) blockwise int8 kernels (16 f32 lanes).
//!
//! The algorithm of `avx2.rs` on 512-bit registers, groups of up to 16 blocks: integer max
//! of sign-cleared bit patterns for `amax` (reliable non-finite detection), one vector of
//! IEEE divisions and `vcvtps2ph` per group for the scales, and
//! `trunc(x·id + copysign(0.49999997, x·id))` for round-half-away-from-zero (exact for
//! `|x·id| < 2^23`, proof at `avx2::round_half_away`). Blocks with a subnormal scale and
//! tails shorter than a vector use scalar code, which gives the reference bits.

use core::arch::x86_64::*;

use half::f16;

use super::scalar;
use crate::kernels::detect::Avx512Vnni;

/// f32 lanes per vector.
const LANES: usize = 16;
/// Blocks whose scales are computed together (one vector of `amax`).
const GROUP: usize = LANES;
/// Upper bound on the values of one group (16 KiB), so the second pass reads from L1.
const GROUP_VALUES: usize = 4096;
/// The largest f32 below 0.5 (see `avx2::round_half_away`).
const HALF_DOWN: f32 = 0.499_999_97;

/// See [`super::quantize_i8_blocks`]; lengths already checked by the caller.
pub(crate) fn quantize_i8_blocks(
    _cpu: Avx512Vnni,
    x: &[f32],
    block: usize,
    q: &mut [i8],
    scales: &mut [f16],
) -> Result<(), usize> {
    // SAFETY: holding an `Avx512Vnni` token proves AVX-512 F/BW/VL and AVX2/FMA/F16C.
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
    _cpu: Avx512Vnni,
    q: &[i8],
    scales: &[f16],
    block: usize,
    out: &mut [f32],
) {
    // SAFETY: holding an `Avx512Vnni` token proves AVX-512 F/BW/VL and AVX2/FMA/F16C.
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
    _cpu: Avx512Vnni,
    packed: &[u8],
    lut: &[f32; 16],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) {
    // SAFETY: holding an `Avx512Vnni` token proves AVX-512 F/BW/VL and AVX2/FMA/F16C.
    unsafe { dequantize_u4(packed, lut, scales, group, out) }
}

/// See [`super::dequantize_affine`]; arguments already checked by the caller.
pub(crate) fn dequantize_affine(
    _cpu: Avx512Vnni,
    codes: &[u8],
    bits: u8,
    zero_points: &[f32],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) {
    // SAFETY: holding an `Avx512Vnni` token proves AVX-512 F/BW/VL and AVX2/FMA/F16C.
    unsafe { dequantize_affine_impl(codes, bits, zero_points, scales, group, out) }
}

/// Loads `x[i..i + 16]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn load_f32(x: &[f32], i: usize) -> __m512 {
    let v: &[f32; LANES] = x[i..i + LANES].try_into().expect("16 values");
    // SAFETY: `v` is 16 readable f32 (64 bytes); `loadu` has no alignment requirement.
    unsafe { _mm512_loadu_ps(v.as_ptr()) }
}

/// The block kernels, monomorphised for block sizes 32 and 64 (`B`) and generic (`B == 0`).
///
/// # Safety
/// The CPU must support AVX-512 F/BW/VL and AVX2/FMA/F16C. Slice lengths as in
/// [`super::quantize_i8_blocks`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
#[target_feature(enable = "avx512f")]
fn amax_bits<const B: usize>(xb: &[f32]) -> u32 {
    let n = if B == 0 { xb.len() } else { B.min(xb.len()) };
    let xb = &xb[..n];
    let abs = _mm512_set1_epi32(0x7fff_ffff);
    let mut acc = _mm512_setzero_si512();
    let full = n / LANES * LANES;
    let mut i = 0;
    while i < full {
        let v = _mm512_castps_si512(load_f32(xb, i));
        acc = _mm512_max_epi32(acc, _mm512_and_si512(v, abs));
        i += LANES;
    }
    let mut m = _mm512_reduce_max_epi32(acc) as u32;
    for v in &xb[full..] {
        m = m.max(v.to_bits() & 0x7fff_ffff);
    }
    m
}

/// From the finite `amax` patterns of up to 16 blocks: stores their f16 scales into `sg`
/// and returns each block's `id = 1/d` (0 when `d == 0`) and a bit mask of the blocks whose
/// `d` is subnormal (these need the scalar kernel).
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn group_scales(amax: &[u32; GROUP], sg: &mut [f16]) -> ([f32; GROUP], u32) {
    // SAFETY: `amax` is 16 readable u32 (64 bytes); `loadu` has no alignment requirement.
    let a = unsafe { _mm512_loadu_ps(amax.as_ptr().cast::<f32>()) };
    let d = _mm512_div_ps(a, _mm512_set1_ps(127.0));
    let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(d, _mm512_setzero_ps());
    let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d);
    let subnormal =
        nonzero & _mm512_cmp_ps_mask::<_CMP_LT_OQ>(d, _mm512_set1_ps(f32::MIN_POSITIVE));
    let half = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d);
    let mut bits = [0u16; GROUP];
    // SAFETY: `bits` is 16 writable u16 (32 bytes); `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_si256(bits.as_mut_ptr().cast(), half) };
    for (s, &b) in sg.iter_mut().zip(&bits) {
        *s = f16::from_bits(b);
    }
    let mut ids = [0f32; GROUP];
    // SAFETY: `ids` is 16 writable f32 (64 bytes); `storeu` has no alignment requirement.
    unsafe { _mm512_storeu_ps(ids.as_mut_ptr(), id) };
    (ids, u32::from(subnormal))
}

/// Rounds each lane half away from zero and converts to i32 (see `avx2::round_half_away`).
#[inline]
#[target_feature(enable = "avx512f")]
fn round_half_away(v: __m512) -> __m512i {
    let sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN));
    let adj = _mm512_or_si512(sign, _mm512_set1_epi32(HALF_DOWN.to_bits() as i32));
    _mm512_cvttps_epi32(_mm512_add_ps(v, _mm512_castsi512_ps(adj)))
}

/// Quantizes one block with a scale whose `|x·id| <= 127.5` (d normal or zero).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_block<const B: usize>(xb: &[f32], id: f32, qb: &mut [i8]) {
    let n = if B == 0 { xb.len() } else { B.min(xb.len()) };
    let (xb, qb) = (&xb[..n], &mut qb[..n]);
    let idv = _mm512_set1_ps(id);
    // After the two packs, 128-bit lane k holds dwords r0[4k..4k+4] r1[..] r2[..] r3[..];
    // output dword m must be r(m/4)[4(m%4)..], found at dword 4(m%4) + m/4.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let mut i = 0;
    while i + 4 * LANES <= n {
        let r0 = round_half_away(_mm512_mul_ps(load_f32(xb, i), idv));
        let r1 = round_half_away(_mm512_mul_ps(load_f32(xb, i + LANES), idv));
        let r2 = round_half_away(_mm512_mul_ps(load_f32(xb, i + 2 * LANES), idv));
        let r3 = round_half_away(_mm512_mul_ps(load_f32(xb, i + 3 * LANES), idv));
        let p = _mm512_packs_epi16(_mm512_packs_epi32(r0, r1), _mm512_packs_epi32(r2, r3));
        let p = _mm512_permutexvar_epi32(order, p);
        let dst: &mut [i8; 4 * LANES] = (&mut qb[i..i + 4 * LANES]).try_into().expect("64");
        // SAFETY: `dst` is 64 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), p) };
        i += 4 * LANES;
    }
    while i + LANES <= n {
        let r = round_half_away(_mm512_mul_ps(load_f32(xb, i), idv));
        // Values are in [-127, 127]: truncating narrowing is exact.
        let b = _mm512_cvtepi32_epi8(r);
        let dst: &mut [i8; LANES] = (&mut qb[i..i + LANES]).try_into().expect("16");
        // SAFETY: `dst` is 16 writable bytes; `storeu` has no alignment requirement.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), b) };
        i += LANES;
    }
    for (o, &v) in qb[i..].iter_mut().zip(&xb[i..]) {
        *o = scalar::round_to_i8(v * id);
    }
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL and AVX2/FMA/F16C. Slice lengths as in
/// [`super::dequantize_i8_blocks`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
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
        // SAFETY: `bits` is 16 readable u16 (32 bytes); `loadu` has no alignment requirement.
        let h = unsafe { _mm256_loadu_si256(bits.as_ptr().cast()) };
        let mut d = [0f32; GROUP];
        // SAFETY: `d` is 16 writable f32 (64 bytes); `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_ps(d.as_mut_ptr(), _mm512_cvtph_ps(h)) };
        for ((qb, ob), &dj) in qg.chunks(block).zip(og.chunks_mut(block)).zip(&d) {
            dequantize_block::<B>(qb, dj, ob);
        }
    }
}

/// `ob[i] = qb[i] as f32 * d`.
#[inline]
#[target_feature(enable = "avx512f")]
fn dequantize_block<const B: usize>(qb: &[i8], d: f32, ob: &mut [f32]) {
    let n = if B == 0 { qb.len() } else { B.min(qb.len()) };
    let (qb, ob) = (&qb[..n], &mut ob[..n]);
    let dv = _mm512_set1_ps(d);
    let mut i = 0;
    while i + LANES <= n {
        let src: &[i8; LANES] = qb[i..i + LANES].try_into().expect("16");
        // SAFETY: `src` is 16 readable bytes; `loadu` has no alignment requirement.
        let b = unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
        let v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), dv);
        let dst: &mut [f32; LANES] = (&mut ob[i..i + LANES]).try_into().expect("16");
        // SAFETY: `dst` is 16 writable f32 (64 bytes); `storeu` has no alignment requirement.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
        i += LANES;
    }
    for (o, &v) in ob[i..].iter_mut().zip(&qb[i..]) {
        *o = v as f32 * d;
    }
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL and AVX2. Slice lengths as in
/// [`super::dequantize_u4_lut`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
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
    // SAFETY: `lut` is 16 readable f32 (64 bytes); `loadu` has no alignment requirement.
    let table = unsafe { _mm512_loadu_ps(lut.as_ptr()) };
    let low = _mm_set1_epi8(0x0F);
    for (g, (og, &s)) in out.chunks_mut(group).zip(scales).enumerate() {
        let start = g * group;
        let pg = &packed[start / 2..];
        let sv = _mm512_set1_ps(s);
        let mut i = 0;
        while i + 2 * LANES <= og.len() {
            let src: &[u8; LANES] = pg[i / 2..i / 2 + LANES].try_into().expect("16 bytes");
            // SAFETY: `src` is 16 readable bytes; `loadu` has no alignment requirement.
            let bytes = unsafe { _mm_loadu_si128(src.as_ptr().cast()) };
            let lo = _mm_and_si128(bytes, low);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), low);
            // Codes in element order: byte k gives elements 2k (low) and 2k + 1 (high).
            let c0 = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
            let c1 = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(lo, hi));
            let v0 = _mm512_mul_ps(_mm512_permutexvar_ps(c0, table), sv);
            let v1 = _mm512_mul_ps(_mm512_permutexvar_ps(c1, table), sv);
            let dst: &mut [f32; 2 * LANES] = (&mut og[i..i + 2 * LANES]).try_into().expect("32");
            // SAFETY: `dst` is 32 writable f32 (128 bytes); `storeu` has no alignment
            // requirement.
            unsafe {
                _mm512_storeu_ps(dst.as_mut_ptr(), v0);
                _mm512_storeu_ps(dst.as_mut_ptr().add(LANES), v1);
            }
            i += 2 * LANES;
        }
        scalar::dequantize_u4_lut_range(packed, lut, s, start + i, &mut og[i..]);
    }
}

/// `m + q·s` in f64 for 8 codes, clamped to ±f32::MAX (NaN kept: `min`/`max` return their
/// second operand when one is NaN), rounded to f32 (nearest even, like `as f32`).
#[inline]
#[target_feature(enable = "avx512f")]
fn affine8(q: __m256i, m: __m512d, s: __m512d) -> __m256 {
    let v = _mm512_add_pd(m, _mm512_mul_pd(_mm512_cvtepi32_pd(q), s));
    let max = _mm512_set1_pd(f64::from(f32::MAX));
    let v = _mm512_max_pd(_mm512_set1_pd(-f64::from(f32::MAX)), _mm512_min_pd(max, v));
    _mm512_cvtpd_ps(v)
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL and AVX2. Arguments as in
/// [`super::dequantize_affine`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2")]
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
        let (mv, sv) = (_mm512_set1_pd(f64::from(m)), _mm512_set1_pd(f64::from(s)));
        let mut i = 0;
        while i + LANES <= og.len() {
            let q = if bits == 8 {
                let src: &[u8; 16] = codes[start + i..start + i + 16].try_into().expect("16");
                // SAFETY: `src` is 16 readable bytes; `loadu` has no alignment requirement.
                _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(src.as_ptr().cast()) })
            } else {
                let at = (start + i) / 2;
                let src: &[u8; 8] = codes[at..at + 8].try_into().expect("8");
                // SAFETY: `src` is 8 readable bytes; `loadl_epi64` reads 8 bytes, unaligned.
                let bytes = unsafe { _mm_loadl_epi64(src.as_ptr().cast()) };
                let lo = _mm_and_si128(bytes, low);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), low);
                _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi))
            };
            let v0 = affine8(_mm512_castsi512_si256(q), mv, sv);
            let v1 = affine8(_mm512_extracti64x4_epi64::<1>(q), mv, sv);
            let dst: &mut [f32; LANES] = (&mut og[i..i + LANES]).try_into().expect("16");
            // SAFETY: `dst` is 16 writable f32; each store writes 8 of them, unaligned.
            unsafe {
                _mm256_storeu_ps(dst.as_mut_ptr(), v0);
                _mm256_storeu_ps(dst.as_mut_ptr().add(8), v1);
            }
            i += LANES;
        }
        scalar::dequantize_affine_range(codes, bits, m, s, start + i, &mut og[i..]);
    }
}
