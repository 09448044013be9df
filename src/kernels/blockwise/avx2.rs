//! x86_64 AVX2 + F16C blockwise kernels (8 f32 lanes): the algorithms of `generic.rs` on
//! `__m256`, plus the AVX2 forms of the 4-bit code loads, the 16-entry table lookup and the
//! f64 affine decode ([`CodeVector`]).

use core::arch::x86_64::*;

use super::generic::{blockwise_kernels, CodeVector};

impl CodeVector for __m256 {
    /// Entries 0..8 and 8..16.
    type Lut = (__m256, __m256);

    #[inline(always)]
    unsafe fn load_lut(lut: &[f32; 16]) -> Self::Lut {
        let (lo, hi) = lut.split_at(8);
        // SAFETY: `lo` and `hi` are 8 readable f32 each; `loadu` has no alignment
        // requirement. AVX guaranteed by the caller.
        unsafe { (_mm256_loadu_ps(lo.as_ptr()), _mm256_loadu_ps(hi.as_ptr())) }
    }
    #[inline(always)]
    unsafe fn lookup((lo, hi): Self::Lut, codes: __m256i) -> __m256 {
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe {
            let a = _mm256_permutevar8x32_ps(lo, codes);
            let b = _mm256_permutevar8x32_ps(hi, codes);
            // Bit 3 of the code moved to the sign bit selects the upper half of the table.
            _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(codes)))
        }
    }
    #[inline(always)]
    unsafe fn codes_u8(codes: &[u8], i: usize) -> __m256i {
        let src: &[u8; 8] = codes[i..i + 8].try_into().expect("8 bytes");
        // SAFETY: `src` is 8 readable bytes; `loadl_epi64` reads 8 bytes, unaligned. AVX2
        // guaranteed by the caller.
        unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(src.as_ptr().cast())) }
    }
    #[inline(always)]
    unsafe fn codes_u4(packed: &[u8], at: usize) -> __m256i {
        let src: &[u8; 4] = packed[at..at + 4].try_into().expect("4 bytes");
        // SAFETY: register-only operations; AVX2 guaranteed by the caller.
        unsafe { _mm256_cvtepu8_epi32(nibbles(_mm_cvtsi32_si128(i32::from_le_bytes(*src)))[0]) }
    }
    #[inline(always)]
    unsafe fn codes_u4x2(packed: &[u8], at: usize) -> [__m256i; 2] {
        let src: &[u8; 8] = packed[at..at + 8].try_into().expect("8 bytes");
        // SAFETY: `src` is 8 readable bytes; `loadl_epi64` reads 8 bytes, unaligned. AVX2
        // guaranteed by the caller.
        unsafe {
            let [codes, _] = nibbles(_mm_loadl_epi64(src.as_ptr().cast()));
            [
                _mm256_cvtepu8_epi32(codes),
                _mm256_cvtepu8_epi32(_mm_srli_si128::<8>(codes)),
            ]
        }
    }
    #[inline(always)]
    unsafe fn affine(q: __m256i, m: f32, s: f32) -> __m256 {
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe {
            let (m, s) = (_mm256_set1_pd(f64::from(m)), _mm256_set1_pd(f64::from(s)));
            let lo = affine4(_mm256_castsi256_si128(q), m, s);
            let hi = affine4(_mm256_extracti128_si256::<1>(q), m, s);
            _mm256_set_m128(hi, lo)
        }
    }
}

/// The 4-bit codes of the 16 bytes `bytes` in element order, 16 per vector (`[0]` from
/// bytes 0..8, `[1]` from bytes 8..16): byte `k` gives elements `2k` (low nibble) and
/// `2k + 1` (high). SSE2 only, so the AVX-512 kernels share it.
///
/// # Safety
/// SSE2 must be available (always on x86_64).
#[inline(always)]
pub(super) unsafe fn nibbles(bytes: __m128i) -> [__m128i; 2] {
    // SAFETY: SSE2 register operations.
    unsafe {
        let low = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(bytes, low);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), low);
        [_mm_unpacklo_epi8(lo, hi), _mm_unpackhi_epi8(lo, hi)]
    }
}

/// `m + q·s` in f64 for 4 codes, clamped to ±f32::MAX (NaN kept: `min`/`max` return their
/// second operand when one is NaN), rounded to f32 (nearest even, like `as f32`).
///
/// # Safety
/// AVX must be available.
#[inline(always)]
unsafe fn affine4(q: __m128i, m: __m256d, s: __m256d) -> __m128 {
    // SAFETY: AVX guaranteed by the caller.
    unsafe {
        let v = _mm256_add_pd(m, _mm256_mul_pd(_mm256_cvtepi32_pd(q), s));
        let max = _mm256_set1_pd(f64::from(f32::MAX));
        let v = _mm256_max_pd(_mm256_set1_pd(-f64::from(f32::MAX)), _mm256_min_pd(max, v));
        _mm256_cvtpd_ps(v)
    }
}

// `Kernels::on` hands this table out with an `Avx2` token, which proves AVX2 + FMA + F16C
// (`detect.rs`): every `__m256` operation above and in `kernels::simd` needs only these.
blockwise_kernels!(__m256, "avx2,fma,f16c");
