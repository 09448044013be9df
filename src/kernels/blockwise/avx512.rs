//! x86_64 AVX-512 (F/BW) blockwise kernels (16 f32 lanes): the algorithms of `generic.rs`
//! on `__m512`, plus the AVX-512 forms of the 4-bit code loads, the 16-entry table lookup
//! (one `vpermps`) and the f64 affine decode ([`CodeVector`]).

use core::arch::x86_64::*;

use super::avx2::nibbles;
use super::generic::{blockwise_kernels, CodeVector};

impl CodeVector for __m512 {
    /// The whole table in one register.
    type Lut = __m512;

    #[inline(always)]
    unsafe fn load_lut(lut: &[f32; 16]) -> __m512 {
        // SAFETY: `lut` is 16 readable f32 (64 bytes); `loadu` has no alignment
        // requirement. AVX-512 F guaranteed by the caller.
        unsafe { _mm512_loadu_ps(lut.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn lookup(lut: __m512, codes: __m512i) -> __m512 {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_permutexvar_ps(codes, lut) }
    }
    #[inline(always)]
    unsafe fn codes_u8(codes: &[u8], i: usize) -> __m512i {
        let src: &[u8; 16] = codes[i..i + 16].try_into().expect("16 bytes");
        // SAFETY: `src` is 16 readable bytes; `loadu` has no alignment requirement.
        // AVX-512 F guaranteed by the caller.
        unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(src.as_ptr().cast())) }
    }
    #[inline(always)]
    unsafe fn codes_u4(packed: &[u8], at: usize) -> __m512i {
        let src: &[u8; 8] = packed[at..at + 8].try_into().expect("8 bytes");
        // SAFETY: `src` is 8 readable bytes; `loadl_epi64` reads 8 bytes, unaligned.
        // AVX-512 F guaranteed by the caller.
        unsafe { _mm512_cvtepu8_epi32(nibbles(_mm_loadl_epi64(src.as_ptr().cast()))[0]) }
    }
    #[inline(always)]
    unsafe fn codes_u4x2(packed: &[u8], at: usize) -> [__m512i; 2] {
        let src: &[u8; 16] = packed[at..at + 16].try_into().expect("16 bytes");
        // SAFETY: `src` is 16 readable bytes; `loadu` has no alignment requirement.
        // AVX-512 F guaranteed by the caller.
        unsafe {
            let [c0, c1] = nibbles(_mm_loadu_si128(src.as_ptr().cast()));
            [_mm512_cvtepu8_epi32(c0), _mm512_cvtepu8_epi32(c1)]
        }
    }
    #[inline(always)]
    unsafe fn affine(q: __m512i, m: f32, s: f32) -> __m512 {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe {
            let (m, s) = (_mm512_set1_pd(f64::from(m)), _mm512_set1_pd(f64::from(s)));
            let lo = affine8(_mm512_castsi512_si256(q), m, s);
            let hi = affine8(_mm512_extracti64x4_epi64::<1>(q), m, s);
            // `vinsertf32x8` needs AVX-512 DQ; the 64-bit form is F.
            let v = _mm512_castpd256_pd512(_mm256_castps_pd(lo));
            _mm512_castpd_ps(_mm512_insertf64x4::<1>(v, _mm256_castps_pd(hi)))
        }
    }
}

/// `m + q·s` in f64 for 8 codes, clamped to ±f32::MAX (NaN kept: `min`/`max` return their
/// second operand when one is NaN), rounded to f32 (nearest even, like `as f32`).
///
/// # Safety
/// AVX-512 F must be available.
#[inline(always)]
unsafe fn affine8(q: __m256i, m: __m512d, s: __m512d) -> __m256 {
    // SAFETY: AVX-512 F guaranteed by the caller.
    unsafe {
        let v = _mm512_add_pd(m, _mm512_mul_pd(_mm512_cvtepi32_pd(q), s));
        let max = _mm512_set1_pd(f64::from(f32::MAX));
        let v = _mm512_max_pd(_mm512_set1_pd(-f64::from(f32::MAX)), _mm512_min_pd(max, v));
        _mm512_cvtpd_ps(v)
    }
}

// `Kernels::on` hands this table out with an `Avx512Vnni` token, which proves AVX-512
// F/BW/VL/VNNI and AVX2 + FMA + F16C (`detect.rs`); the `__m512` operations above and in
// `kernels::simd` need F and BW only (VL and the AVX2 features are enabled for the
// 128/256-bit helpers; VNNI is not used).
blockwise_kernels!(__m512, "avx512f,avx512bw,avx512vl,avx2,fma,f16c");
