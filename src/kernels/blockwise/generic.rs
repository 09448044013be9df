//! The SIMD blockwise kernels, written once over [`F32Vector`] (plus [`CodeVector`] for the
//! 4-bit and affine decoders) and instantiated per ISA by [`blockwise_kernels!`] in
//! `avx2.rs` (8 lanes) and `avx512.rs` (16 lanes).
//!
//! Same bits as `scalar.rs`. Quantization makes two passes over a *group* of up to
//! `LANES` blocks that stays in L1 between them:
//!
//! 1. per block, `max |x|` as an integer max over the sign-cleared bit patterns (for
//!    non-negative floats integer order is float order, and NaN/±Inf have the largest
//!    patterns, so one compare of the result against `0x7f80_0000` detects non-finite
//!    input reliably — unlike `max_ps`, whose NaN handling depends on operand order);
//! 2. the group's `d = amax / 127`, `id = 1 / d` (IEEE division, as in scalar code) and the
//!    f16 scales (round to nearest even = `half::f16::from_f32`) on one vector;
//! 3. per block, `q = trunc(x·id + copysign(0.49999997, x·id))`, which is
//!    round-half-away-from-zero exactly for `|x·id| < 2^23`
//!    (see [`F32Vector::round_half_away`]).
//!
//! A block whose `d` is subnormal (`amax < ~1.5e-36`) can have `|x·id| > 127.5` or
//! `id == inf`, where the scalar code relies on Rust's saturating `as i8`; such blocks go
//! through the scalar block kernel. Tails shorter than a vector use scalar element code
//! with the same `id` (or scale), which gives the same bits by construction.
//!
//! Every function here is `#[inline(always)]` and `unsafe` only for the CPU features of
//! its vector type: the `#[target_feature]` functions [`blockwise_kernels!`] emits are where
//! they are compiled, and every slice access is bounds-checked.

use half::f16;

use super::scalar;
use crate::kernels::simd::F32Vector;

/// Upper bound on the values of one quantization group (16 KiB), so the second pass reads
/// from L1.
const GROUP_VALUES: usize = 4096;

/// What the 4-bit and affine decoders need beyond [`F32Vector`]: loading packed codes into
/// i32 lanes, a 16-entry table lookup, and the affine formula in f64.
///
/// Every method is `unsafe` for the reason [`F32Vector`]'s are (the ISA's features); byte
/// slices are read at the stated offsets and panic when out of bounds.
pub(crate) trait CodeVector: F32Vector {
    /// A 16-entry f32 table held in registers.
    type Lut: Copy;

    /// Loads `lut` for [`CodeVector::lookup`].
    ///
    /// # Safety
    /// The CPU must have the implementing ISA's features (for every method of the trait).
    unsafe fn load_lut(lut: &[f32; 16]) -> Self::Lut;
    /// `lut[code]` per lane, for codes in `0..=15`.
    ///
    /// # Safety
    /// As [`CodeVector::load_lut`].
    unsafe fn lookup(lut: Self::Lut, codes: Self::I32) -> Self;
    /// The bytes `codes[i..i + LANES]`, zero-extended to i32 lanes.
    ///
    /// # Safety
    /// As [`CodeVector::load_lut`].
    unsafe fn codes_u8(codes: &[u8], i: usize) -> Self::I32;
    /// The `LANES` 4-bit codes of the bytes `packed[at..at + LANES / 2]` in element order
    /// (byte `k` holds elements `2k`, low nibble, and `2k + 1`, high nibble).
    ///
    /// # Safety
    /// As [`CodeVector::load_lut`].
    unsafe fn codes_u4(packed: &[u8], at: usize) -> Self::I32;
    /// The `2·LANES` 4-bit codes of the bytes `packed[at..at + LANES]` in element order,
    /// the first `LANES` in `[0]` (one load for two vectors of [`CodeVector::codes_u4`]).
    ///
    /// # Safety
    /// As [`CodeVector::load_lut`].
    unsafe fn codes_u4x2(packed: &[u8], at: usize) -> [Self::I32; 2];
    /// `scalar::affine_decode(m, s, q)` per lane for codes `q` in `0..=255`: `m + q·s` in
    /// f64 (no fused multiply-add), clamped to ±`f32::MAX` (NaN kept), rounded to f32
    /// (nearest even, like `as f32`).
    ///
    /// # Safety
    /// As [`CodeVector::load_lut`].
    unsafe fn affine(q: Self::I32, m: f32, s: f32) -> Self;
}

/// `$kernel::<V, G, B>(..)` with the block size `B` fixed at compile time for the common
/// sizes 32 and 64 (their loops unroll), `B = 0` (read `block`) otherwise.
macro_rules! by_block {
    ($block:expr, $kernel:ident::<$v:ident, $g:ident>($($arg:expr),*)) => {
        match $block {
            32 => $kernel::<$v, $g, 32>($($arg),*),
            64 => $kernel::<$v, $g, 64>($($arg),*),
            _ => $kernel::<$v, $g, 0>($($arg),*),
        }
    };
}

/// See [`super::quantize_i8_blocks`]; lengths already checked by the caller. `G` must be
/// `V::LANES` (the blocks of one group, whose scales are one vector).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(super) unsafe fn quantize<V: F32Vector, const G: usize>(
    x: &[f32],
    block: usize,
    q: &mut [i8],
    scales: &mut [f16],
) -> Result<(), usize> {
    const { assert!(G == V::LANES) };
    // SAFETY: `V`'s features are guaranteed by the caller.
    unsafe { by_block!(block, quantize_groups::<V, G>(x, block, q, scales)) }
}

/// [`quantize`] for the block size `B` (0: any `block`; see [`by_block!`]).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn quantize_groups<V: F32Vector, const G: usize, const B: usize>(
    x: &[f32],
    block: usize,
    q: &mut [i8],
    scales: &mut [f16],
) -> Result<(), usize> {
    let block = if B == 0 { block } else { B };
    let per_group = (GROUP_VALUES / block).clamp(1, G);
    let group_len = per_group * block;
    for (g, ((xg, qg), sg)) in x
        .chunks(group_len)
        .zip(q.chunks_mut(group_len))
        .zip(scales.chunks_mut(per_group))
        .enumerate()
    {
        let mut amax = [0u32; G];
        for (a, xb) in amax.iter_mut().zip(xg.chunks(block)) {
            // SAFETY: `V`'s features are guaranteed by the caller.
            *a = unsafe { amax_bits::<V, B>(xb) };
        }
        if amax.iter().any(|&a| a >= 0x7f80_0000) {
            if let Some(i) = xg.iter().position(|v| !v.is_finite()) {
                return Err(g * group_len + i);
            }
        }
        // SAFETY: `V`'s features are guaranteed by the caller.
        let (id, slow) = unsafe { group_scales::<V, G>(&amax, sg) };
        for (j, (xb, qb)) in xg.chunks(block).zip(qg.chunks_mut(block)).enumerate() {
            if slow & (1 << j) != 0 {
                // Subnormal d: the scalar kernel (saturating casts) gives the reference
                // bits; its scale equals the one already stored.
                let _ = scalar::quantize_block(xb, qb);
            } else {
                // SAFETY: `V`'s features are guaranteed by the caller.
                unsafe { quantize_block::<V, B>(xb, id[j], qb) };
            }
        }
    }
    Ok(())
}

/// `max |x|` of one block as the bit pattern of the (sign-cleared) f32.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn amax_bits<V: F32Vector, const B: usize>(xb: &[f32]) -> u32 {
    let n = if B == 0 { xb.len() } else { B.min(xb.len()) };
    let xb = &xb[..n];
    let full = n / V::LANES * V::LANES;
    // SAFETY: `V`'s features are guaranteed by the caller.
    let mut m = unsafe {
        let mut acc = V::splat(0.0);
        let mut i = 0;
        while i < full {
            acc = acc.max_bits(V::load(xb, i).abs());
            i += V::LANES;
        }
        acc.reduce_max_bits()
    };
    for v in &xb[full..] {
        m = m.max(v.to_bits() & 0x7fff_ffff);
    }
    m
}

/// From the finite `amax` patterns of up to `G` blocks: stores their f16 scales into `sg`
/// and returns each block's `id = 1/d` (0 when `d == 0`) and a bit mask of the blocks whose
/// `d` is subnormal (these need the scalar kernel).
///
/// # Safety
/// The CPU must have `V`'s features; `G == V::LANES`.
#[inline(always)]
unsafe fn group_scales<V: F32Vector, const G: usize>(
    amax: &[u32; G],
    sg: &mut [f16],
) -> ([f32; G], u32) {
    let (mut bits, mut ids) = ([0u16; G], [0f32; G]);
    // SAFETY: `V`'s features are guaranteed by the caller.
    let subnormal = unsafe {
        let d = V::load(&amax.map(f32::from_bits), 0).div(V::splat(127.0));
        let nonzero = d.ne(V::splat(0.0));
        V::splat(1.0).div(d).zero_unless(nonzero).store(&mut ids, 0);
        d.store_f16(&mut bits, 0);
        V::mask_bits(nonzero) & V::mask_bits(d.lt(V::splat(f32::MIN_POSITIVE)))
    };
    for (s, &b) in sg.iter_mut().zip(&bits) {
        *s = f16::from_bits(b);
    }
    (ids, subnormal)
}

/// Quantizes one block with a scale whose `|x·id| <= 127.5` (d normal or zero).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn quantize_block<V: F32Vector, const B: usize>(xb: &[f32], id: f32, qb: &mut [i8]) {
    let n = if B == 0 { xb.len() } else { B.min(xb.len()) };
    let (xb, qb) = (&xb[..n], &mut qb[..n]);
    let l = V::LANES;
    let mut i = 0;
    // SAFETY: `V`'s features are guaranteed by the caller.
    unsafe {
        let idv = V::splat(id);
        while i + 4 * l <= n {
            let r0 = V::load(xb, i).mul(idv).round_half_away();
            let r1 = V::load(xb, i + l).mul(idv).round_half_away();
            let r2 = V::load(xb, i + 2 * l).mul(idv).round_half_away();
            let r3 = V::load(xb, i + 3 * l).mul(idv).round_half_away();
            V::store_i8x4([r0, r1, r2, r3], qb, i);
            i += 4 * l;
        }
        while i + l <= n {
            V::store_i8(V::load(xb, i).mul(idv).round_half_away(), qb, i);
            i += l;
        }
    }
    for (o, &v) in qb[i..].iter_mut().zip(&xb[i..]) {
        *o = scalar::round_to_i8(v * id);
    }
}

/// See [`super::dequantize_i8_blocks`]; lengths already checked by the caller. `G` as in
/// [`quantize`].
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(super) unsafe fn dequantize<V: F32Vector, const G: usize>(
    q: &[i8],
    scales: &[f16],
    block: usize,
    out: &mut [f32],
) {
    const { assert!(G == V::LANES) };
    // SAFETY: `V`'s features are guaranteed by the caller.
    unsafe { by_block!(block, dequantize_groups::<V, G>(q, scales, block, out)) }
}

/// [`dequantize`] for the block size `B` (0: any `block`; see [`by_block!`]).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn dequantize_groups<V: F32Vector, const G: usize, const B: usize>(
    q: &[i8],
    scales: &[f16],
    block: usize,
    out: &mut [f32],
) {
    let block = if B == 0 { block } else { B };
    let group_len = G * block;
    for ((qg, sg), og) in q
        .chunks(group_len)
        .zip(scales.chunks(G))
        .zip(out.chunks_mut(group_len))
    {
        let (mut bits, mut d) = ([0u16; G], [0f32; G]);
        for (b, s) in bits.iter_mut().zip(sg) {
            *b = s.to_bits();
        }
        // SAFETY: `V`'s features are guaranteed by the caller.
        unsafe { V::load_f16(&bits, 0).store(&mut d, 0) };
        for ((qb, ob), &dj) in qg.chunks(block).zip(og.chunks_mut(block)).zip(&d) {
            // SAFETY: `V`'s features are guaranteed by the caller.
            unsafe { dequantize_block::<V, B>(qb, dj, ob) };
        }
    }
}

/// `ob[i] = qb[i] as f32 * d`.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn dequantize_block<V: F32Vector, const B: usize>(qb: &[i8], d: f32, ob: &mut [f32]) {
    let n = if B == 0 { qb.len() } else { B.min(qb.len()) };
    let (qb, ob) = (&qb[..n], &mut ob[..n]);
    let mut i = 0;
    // SAFETY: `V`'s features are guaranteed by the caller.
    unsafe {
        let dv = V::splat(d);
        while i + V::LANES <= n {
            V::load_i8(qb, i).mul(dv).store(ob, i);
            i += V::LANES;
        }
    }
    for (o, &v) in ob[i..].iter_mut().zip(&qb[i..]) {
        *o = v as f32 * d;
    }
}

/// See [`super::dequantize_u4_lut`]; lengths already checked by the caller.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(super) unsafe fn dequantize_u4<V: CodeVector>(
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
    let l = V::LANES;
    // SAFETY: `V`'s features are guaranteed by the caller.
    let table = unsafe { V::load_lut(lut) };
    for (g, (og, &s)) in out.chunks_mut(group).zip(scales).enumerate() {
        let start = g * group;
        let pg = &packed[start / 2..];
        let mut i = 0;
        // SAFETY: `V`'s features are guaranteed by the caller.
        unsafe {
            let sv = V::splat(s);
            while i + 2 * l <= og.len() {
                let [c0, c1] = V::codes_u4x2(pg, i / 2);
                V::lookup(table, c0).mul(sv).store(og, i);
                V::lookup(table, c1).mul(sv).store(og, i + l);
                i += 2 * l;
            }
        }
        scalar::dequantize_u4_lut_range(packed, lut, s, start + i, &mut og[i..]);
    }
}

/// See [`super::dequantize_affine`]; arguments already checked by the caller.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(super) unsafe fn dequantize_affine<V: CodeVector>(
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
    let l = V::LANES;
    for (g, ((og, &m), &s)) in out
        .chunks_mut(group)
        .zip(zero_points)
        .zip(scales)
        .enumerate()
    {
        let start = g * group;
        let mut i = 0;
        while i + l <= og.len() {
            // SAFETY: `V`'s features are guaranteed by the caller.
            unsafe {
                let q = if bits == 8 {
                    V::codes_u8(codes, start + i)
                } else {
                    V::codes_u4(codes, (start + i) / 2)
                };
                V::affine(q, m, s).store(og, i);
            }
            i += l;
        }
        scalar::dequantize_affine_range(codes, bits, m, s, start + i, &mut og[i..]);
    }
}

/// Emits one ISA's blockwise kernel table in the invoking module: `static TABLE:
/// super::Table`, whose entries are `#[target_feature(enable = $feat)]` instantiations of
/// this file's kernels for `$vec` (`quantize_i8_blocks`, `dequantize_i8_blocks`,
/// `dequantize_u4_lut`, `dequantize_affine`; arguments as checked by the entry points).
///
/// The invoking module vouches that `$feat` covers `$vec`'s [`F32Vector`] and
/// [`CodeVector`] operations, and `Kernels::on` hands the table out only on a CPU with
/// `$feat`.
macro_rules! blockwise_kernels {
    ($vec:ty, $feat:literal) => {
        /// # Safety
        /// The CPU must have the enabled features.
        #[target_feature(enable = $feat)]
        unsafe fn quantize_i8_blocks(
            x: &[f32],
            block: usize,
            q: &mut [i8],
            scales: &mut [::half::f16],
        ) -> Result<(), usize> {
            const G: usize = <$vec as $crate::kernels::simd::F32Vector>::LANES;
            // SAFETY: the enabled features cover the vector type's operations.
            unsafe { super::generic::quantize::<$vec, G>(x, block, q, scales) }
        }

        /// # Safety
        /// As `quantize_i8_blocks`.
        #[target_feature(enable = $feat)]
        unsafe fn dequantize_i8_blocks(
            q: &[i8],
            scales: &[::half::f16],
            block: usize,
            out: &mut [f32],
        ) {
            const G: usize = <$vec as $crate::kernels::simd::F32Vector>::LANES;
            // SAFETY: the enabled features cover the vector type's operations.
            unsafe { super::generic::dequantize::<$vec, G>(q, scales, block, out) }
        }

        /// # Safety
        /// As `quantize_i8_blocks`.
        #[target_feature(enable = $feat)]
        unsafe fn dequantize_u4_lut(
            packed: &[u8],
            lut: &[f32; 16],
            scales: &[f32],
            group: usize,
            out: &mut [f32],
        ) {
            // SAFETY: the enabled features cover the vector type's operations.
            unsafe { super::generic::dequantize_u4::<$vec>(packed, lut, scales, group, out) }
        }

        /// # Safety
        /// As `quantize_i8_blocks`.
        #[target_feature(enable = $feat)]
        unsafe fn dequantize_affine(
            codes: &[u8],
            bits: u8,
            zero_points: &[f32],
            scales: &[f32],
            group: usize,
            out: &mut [f32],
        ) {
            // SAFETY: the enabled features cover the vector type's operations.
            unsafe {
                super::generic::dequantize_affine::<$vec>(
                    codes,
                    bits,
                    zero_points,
                    scales,
                    group,
                    out,
                )
            }
        }

        /// This ISA's kernels (see `blockwise_kernels!`).
        pub(super) static TABLE: super::Table = super::Table {
            quantize_i8_blocks,
            dequantize_i8_blocks,
            dequantize_u4_lut,
            dequantize_affine,
        };
    };
}
pub(super) use blockwise_kernels;
