//! A vector of f32 lanes: the operations the kernels written once per algorithm (not once
//! per register width) are built from, implemented for each ISA's register.
//!
//! An algorithm is a generic `#[inline(always)] unsafe fn` over [`F32Vector`] (see
//! `blockwise/generic.rs`); each ISA instantiates it inside a `#[target_feature]` function,
//! so after inlining every operation below compiles to the instruction it names, in a
//! function that has the features enabled. The methods are `unsafe` only because of those
//! features: every memory access goes through a bounds-checked slice.
//!
//! Implemented for `__m256` (AVX2 + F16C, and FMA for [`F32Vector::mul_add`]; 8 lanes) and
//! `__m512` (AVX-512 F/BW, 16 lanes).
//! The operations are chosen so that one generic algorithm gives the same bits on every
//! ISA: IEEE lane arithmetic, exact conversions, and comparisons and rounding that are
//! defined per lane.

use core::arch::x86_64::*;

/// The largest f32 below 0.5: `trunc(v + copysign(HALF_DOWN, v))` rounds half away from
/// zero (see [`F32Vector::round_half_away`]).
const HALF_DOWN: f32 = 0.499_999_97;

/// A vector of [`F32Vector::LANES`] f32 lanes with its i32 and mask companions.
///
/// Every method is `unsafe` for one reason: the CPU must have the implementing ISA's
/// features (callers are `#[target_feature]` functions reached through a detection token).
/// Slice arguments are read or written at `[i..i + LANES]` (or the stated width) and
/// panic when that range is out of bounds, like slice indexing.
pub(crate) trait F32Vector: Copy {
    /// f32 lanes per vector.
    const LANES: usize;
    /// [`Self::LANES`] i32 lanes.
    type I32: Copy;
    /// One boolean per lane, from a comparison.
    type Mask: Copy;

    /// Every lane `v`.
    ///
    /// # Safety
    /// The CPU must have the implementing ISA's features (for every method of the trait).
    unsafe fn splat(v: f32) -> Self;
    /// Loads `x[i..i + LANES]`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn load(x: &[f32], i: usize) -> Self;
    /// Stores the lanes into `out[i..i + LANES]`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn store(self, out: &mut [f32], i: usize);
    /// Loads `q[i..i + LANES]` converted to f32 (exact).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn load_i8(q: &[i8], i: usize) -> Self;
    /// Loads the f16 bit patterns `h[i..i + LANES]` converted to f32 (exact, like
    /// `f32::from(half::f16)`; NaN payloads kept).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn load_f16(h: &[u16], i: usize) -> Self;
    /// Stores the lanes rounded to f16 (nearest even, like `half::f16::from_f32`) as bit
    /// patterns into `out[i..i + LANES]`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn store_f16(self, out: &mut [u16], i: usize);

    /// Clears the sign bit of every lane (`f32::abs`, NaN stays NaN).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn abs(self) -> Self;
    /// Keeps only the sign bit of every lane (`-0.0` or `+0.0`).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn sign(self) -> Self;
    /// Bitwise or.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn or(self, other: Self) -> Self;
    /// Lane-wise maximum of the bit patterns read as i32. On sign-cleared lanes
    /// ([`F32Vector::abs`]) this is the f32 maximum with NaN above +Inf, whatever the
    /// operand order (unlike `maxps`).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn max_bits(self, other: Self) -> Self;
    /// The largest lane bit pattern read as i32, returned as u32 (the lanes are expected
    /// to be sign-cleared, so the value is their [`F32Vector::max_bits`] maximum).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn reduce_max_bits(self) -> u32;

    /// Lane-wise IEEE `+`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn add(self, other: Self) -> Self;
    /// Lane-wise IEEE `·` (never fused with a following add).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn mul(self, other: Self) -> Self;
    /// Lane-wise IEEE `/`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn div(self, other: Self) -> Self;
    /// Lane-wise IEEE `−`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn sub(self, other: Self) -> Self;
    /// Lane-wise `self · a + b` with one rounding (FMA, like `f32::mul_add`).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    /// Lane-wise `if self > other { self } else { other }` (the `maxps` rule: `other` when
    /// either is NaN).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn max(self, other: Self) -> Self;
    /// `self` in the lanes where `m` is true, `other` elsewhere.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn select(m: Self::Mask, yes: Self, no: Self) -> Self;
    /// Converts to i32 rounding toward zero; lanes outside the i32 range and NaN give
    /// `i32::MIN` (the x86 "integer indefinite").
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn trunc_i32(self) -> Self::I32;

    /// `self != other` per lane, false when either is NaN.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn ne(self, other: Self) -> Self::Mask;
    /// `self < other` per lane, false when either is NaN.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn lt(self, other: Self) -> Self::Mask;
    /// The lanes where `m` is true, `+0.0` elsewhere.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn zero_unless(self, m: Self::Mask) -> Self;
    /// `m` as bits: bit `j` is lane `j`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn mask_bits(m: Self::Mask) -> u32;

    /// Stores i32 lanes in `[-128, 127]` as i8 into `out[i..i + LANES]` (exact in that
    /// range; outside it the ISAs differ).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn store_i8(v: Self::I32, out: &mut [i8], i: usize);
    /// Stores four vectors of i32 lanes in `[-128, 127]` as i8, `v[k]` into
    /// `out[i + k·LANES..]`, `4·LANES` bytes in all (the fast form of four
    /// [`F32Vector::store_i8`]).
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    unsafe fn store_i8x4(v: [Self::I32; 4], out: &mut [i8], i: usize);

    /// Rounds each lane half away from zero (`f32::round`) and converts to i32:
    /// `trunc(v + copysign(0.49999997, v))`.
    ///
    /// Exact for `|v| < 2^23`: below 0.5 the sum stays below 1 (at most `1 - 2^-24`); at 0.5
    /// it is `1 - 2^-25`, a tie that rounds to even, 1.0; from 0.5 up the fraction `f` of `v`
    /// is a multiple of `ulp(v) >= 2^-24`, so `f + 0.49999997` is below `1 - ulp/2` when
    /// `f < 0.5` and at least `1 - 2^-25` (rounding to 1) when `f >= 0.5`.
    ///
    /// # Safety
    /// As [`F32Vector::splat`].
    #[inline(always)]
    unsafe fn round_half_away(self) -> Self::I32 {
        // SAFETY: the caller guarantees the features of `Self`'s ISA.
        unsafe { self.add(self.sign().or(Self::splat(HALF_DOWN))).trunc_i32() }
    }
}

/// AVX2 + F16C (+ FMA for `mul_add`): 8 lanes.
impl F32Vector for __m256 {
    const LANES: usize = 8;
    type I32 = __m256i;
    /// All-ones or all-zeros lanes (`vcmpps`).
    type Mask = __m256;

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(x: &[f32], i: usize) -> Self {
        let v: &[f32; 8] = x[i..i + 8].try_into().expect("8 values");
        // SAFETY: `v` is 8 readable f32 (32 bytes); `loadu` has no alignment requirement.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn store(self, out: &mut [f32], i: usize) {
        let dst: &mut [f32; 8] = (&mut out[i..i + 8]).try_into().expect("8 values");
        // SAFETY: `dst` is 8 writable f32 (32 bytes); `storeu` has no alignment requirement.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), self) }
    }
    #[inline(always)]
    unsafe fn load_i8(q: &[i8], i: usize) -> Self {
        let src: &[i8; 8] = q[i..i + 8].try_into().expect("8 bytes");
        // SAFETY: `src` is 8 readable bytes; `loadl_epi64` reads 8 bytes, unaligned. AVX2
        // guaranteed by the caller.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(src.as_ptr().cast()))) }
    }
    #[inline(always)]
    unsafe fn load_f16(h: &[u16], i: usize) -> Self {
        let src: &[u16; 8] = h[i..i + 8].try_into().expect("8 halves");
        // SAFETY: `src` is 8 readable u16 (16 bytes); `loadu` has no alignment requirement.
        // F16C guaranteed by the caller.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().cast())) }
    }
    #[inline(always)]
    unsafe fn store_f16(self, out: &mut [u16], i: usize) {
        let dst: &mut [u16; 8] = (&mut out[i..i + 8]).try_into().expect("8 halves");
        // SAFETY: `dst` is 8 writable u16 (16 bytes); `storeu` has no alignment
        // requirement. F16C guaranteed by the caller.
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(self);
            _mm_storeu_si128(dst.as_mut_ptr().cast(), h)
        }
    }

    #[inline(always)]
    unsafe fn abs(self) -> Self {
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe {
            let abs = _mm256_set1_epi32(0x7fff_ffff);
            _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(self), abs))
        }
    }
    #[inline(always)]
    unsafe fn sign(self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_and_ps(self, _mm256_set1_ps(-0.0)) }
    }
    #[inline(always)]
    unsafe fn or(self, other: Self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_or_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn max_bits(self, other: Self) -> Self {
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe {
            let m = _mm256_max_epi32(_mm256_castps_si256(self), _mm256_castps_si256(other));
            _mm256_castsi256_ps(m)
        }
    }
    #[inline(always)]
    unsafe fn reduce_max_bits(self) -> u32 {
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe {
            let v = _mm256_castps_si256(self);
            let m = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
            let m = _mm_max_epi32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m));
            _mm_cvtsi128_si32(m) as u32
        }
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_add_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn mul(self, other: Self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_mul_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn div(self, other: Self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_div_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn sub(self, other: Self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_sub_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        // SAFETY: FMA guaranteed by the caller.
        unsafe { _mm256_fmadd_ps(self, a, b) }
    }
    #[inline(always)]
    unsafe fn max(self, other: Self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_max_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn select(m: __m256, yes: Self, no: Self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_blendv_ps(no, yes, m) }
    }
    #[inline(always)]
    unsafe fn trunc_i32(self) -> __m256i {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_cvttps_epi32(self) }
    }

    #[inline(always)]
    unsafe fn ne(self, other: Self) -> __m256 {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_cmp_ps::<_CMP_NEQ_OQ>(self, other) }
    }
    #[inline(always)]
    unsafe fn lt(self, other: Self) -> __m256 {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(self, other) }
    }
    #[inline(always)]
    unsafe fn zero_unless(self, m: __m256) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_and_ps(self, m) }
    }
    #[inline(always)]
    unsafe fn mask_bits(m: __m256) -> u32 {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_movemask_ps(m) as u32 }
    }

    #[inline(always)]
    unsafe fn store_i8(v: __m256i, out: &mut [i8], i: usize) {
        let dst: &mut [i8; 8] = (&mut out[i..i + 8]).try_into().expect("8 bytes");
        // SAFETY: `dst` is 8 writable bytes; `storel_epi64` writes 8 bytes, unaligned.
        // AVX2 guaranteed by the caller.
        unsafe {
            let w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            _mm_storel_epi64(dst.as_mut_ptr().cast(), _mm_packs_epi16(w, w))
        }
    }
    #[inline(always)]
    unsafe fn store_i8x4(v: [__m256i; 4], out: &mut [i8], i: usize) {
        let dst: &mut [i8; 32] = (&mut out[i..i + 32]).try_into().expect("32 bytes");
        // SAFETY: `dst` is 32 writable bytes; `storeu` has no alignment requirement. AVX2
        // guaranteed by the caller.
        unsafe {
            // packs work per 128-bit lane: bytes come out as 4-byte groups
            // v0[0..4] v1[0..4] v2[0..4] v3[0..4] | v0[4..8] v1[4..8] ..., put back in order.
            let p = _mm256_packs_epi16(
                _mm256_packs_epi32(v[0], v[1]),
                _mm256_packs_epi32(v[2], v[3]),
            );
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let p = _mm256_permutevar8x32_epi32(p, order);
            _mm256_storeu_si256(dst.as_mut_ptr().cast(), p)
        }
    }
}

/// AVX-512 F/BW: 16 lanes. The bitwise operations are integer ones (`vpandd`, `vpord`):
/// their float forms need AVX-512 DQ, which the kernels do not require.
impl F32Vector for __m512 {
    const LANES: usize = 16;
    type I32 = __m512i;
    /// A `k` register.
    type Mask = __mmask16;

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn load(x: &[f32], i: usize) -> Self {
        let v: &[f32; 16] = x[i..i + 16].try_into().expect("16 values");
        // SAFETY: `v` is 16 readable f32 (64 bytes); `loadu` has no alignment requirement.
        unsafe { _mm512_loadu_ps(v.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn store(self, out: &mut [f32], i: usize) {
        let dst: &mut [f32; 16] = (&mut out[i..i + 16]).try_into().expect("16 values");
        // SAFETY: `dst` is 16 writable f32 (64 bytes); `storeu` has no alignment
        // requirement.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), self) }
    }
    #[inline(always)]
    unsafe fn load_i8(q: &[i8], i: usize) -> Self {
        let src: &[i8; 16] = q[i..i + 16].try_into().expect("16 bytes");
        // SAFETY: `src` is 16 readable bytes; `loadu` has no alignment requirement.
        // AVX-512 F guaranteed by the caller.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(src.as_ptr().cast()))) }
    }
    #[inline(always)]
    unsafe fn load_f16(h: &[u16], i: usize) -> Self {
        let src: &[u16; 16] = h[i..i + 16].try_into().expect("16 halves");
        // SAFETY: `src` is 16 readable u16 (32 bytes); `loadu` has no alignment
        // requirement. AVX-512 F guaranteed by the caller.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().cast())) }
    }
    #[inline(always)]
    unsafe fn store_f16(self, out: &mut [u16], i: usize) {
        let dst: &mut [u16; 16] = (&mut out[i..i + 16]).try_into().expect("16 halves");
        // SAFETY: `dst` is 16 writable u16 (32 bytes); `storeu` has no alignment
        // requirement. AVX-512 F guaranteed by the caller.
        unsafe {
            let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(self);
            _mm256_storeu_si256(dst.as_mut_ptr().cast(), h)
        }
    }

    #[inline(always)]
    unsafe fn abs(self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe {
            let abs = _mm512_set1_epi32(0x7fff_ffff);
            _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(self), abs))
        }
    }
    #[inline(always)]
    unsafe fn sign(self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe {
            let sign = _mm512_set1_epi32(i32::MIN);
            _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(self), sign))
        }
    }
    #[inline(always)]
    unsafe fn or(self, other: Self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe {
            let v = _mm512_or_si512(_mm512_castps_si512(self), _mm512_castps_si512(other));
            _mm512_castsi512_ps(v)
        }
    }
    #[inline(always)]
    unsafe fn max_bits(self, other: Self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe {
            let m = _mm512_max_epi32(_mm512_castps_si512(self), _mm512_castps_si512(other));
            _mm512_castsi512_ps(m)
        }
    }
    #[inline(always)]
    unsafe fn reduce_max_bits(self) -> u32 {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_reduce_max_epi32(_mm512_castps_si512(self)) as u32 }
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_add_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn mul(self, other: Self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_mul_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn div(self, other: Self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_div_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn sub(self, other: Self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_sub_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_fmadd_ps(self, a, b) }
    }
    #[inline(always)]
    unsafe fn max(self, other: Self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_max_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn select(m: __mmask16, yes: Self, no: Self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_mask_blend_ps(m, no, yes) }
    }
    #[inline(always)]
    unsafe fn trunc_i32(self) -> __m512i {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_cvttps_epi32(self) }
    }

    #[inline(always)]
    unsafe fn ne(self, other: Self) -> __mmask16 {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(self, other) }
    }
    #[inline(always)]
    unsafe fn lt(self, other: Self) -> __mmask16 {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self, other) }
    }
    #[inline(always)]
    unsafe fn zero_unless(self, m: __mmask16) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_maskz_mov_ps(m, self) }
    }
    #[inline(always)]
    unsafe fn mask_bits(m: __mmask16) -> u32 {
        u32::from(m)
    }

    #[inline(always)]
    unsafe fn store_i8(v: __m512i, out: &mut [i8], i: usize) {
        let dst: &mut [i8; 16] = (&mut out[i..i + 16]).try_into().expect("16 bytes");
        // SAFETY: `dst` is 16 writable bytes; `storeu` has no alignment requirement.
        // AVX-512 F guaranteed by the caller. Truncating narrowing (`vpmovdb`) is exact
        // for the values allowed.
        unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(v)) }
    }
    #[inline(always)]
    unsafe fn store_i8x4(v: [__m512i; 4], out: &mut [i8], i: usize) {
        let dst: &mut [i8; 64] = (&mut out[i..i + 64]).try_into().expect("64 bytes");
        // SAFETY: `dst` is 64 writable bytes; `storeu` has no alignment requirement.
        // AVX-512 F/BW guaranteed by the caller.
        unsafe {
            let p = _mm512_packs_epi16(
                _mm512_packs_epi32(v[0], v[1]),
                _mm512_packs_epi32(v[2], v[3]),
            );
            // After the two packs, 128-bit lane k holds dwords v0[4k..4k+4] v1[..] v2[..]
            // v3[..]; output dword m must be v(m/4)[4(m%4)..], found at dword 4(m%4) + m/4.
            let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            _mm512_storeu_si512(dst.as_mut_ptr().cast(), _mm512_permutexvar_epi32(order, p))
        }
    }
}
