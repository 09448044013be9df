//! [`F32Vector`] for x86_64's `__m256` (AVX2 + F16C + FMA, 8 lanes) and `__m512`
//! (AVX-512 F/BW, 16 lanes).

use core::arch::x86_64::*;

use super::F32Vector;

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
    unsafe fn load_partial(x: &[f32], i: usize, n: usize) -> Self {
        let src = &x[i..i + n];
        // SAFETY: `vmaskmovps` reads only the lanes its mask selects, `0..min(n, 8)`, all
        // inside `src` (masked-off lanes neither read nor fault). AVX2 guaranteed by the
        // caller.
        unsafe {
            let m = _mm256_castps_si256(Self::first_lanes(n));
            _mm256_maskload_ps(src.as_ptr(), m)
        }
    }
    #[inline(always)]
    unsafe fn store_partial(self, out: &mut [f32], i: usize, n: usize) {
        let dst = &mut out[i..i + n];
        // SAFETY: `vmaskmovps` writes only the lanes its mask selects, `0..min(n, 8)`, all
        // inside `dst`. AVX2 guaranteed by the caller.
        unsafe {
            let m = _mm256_castps_si256(Self::first_lanes(n));
            _mm256_maskstore_ps(dst.as_mut_ptr(), m, self)
        }
    }
    #[inline(always)]
    unsafe fn load_i8(q: &[i8], i: usize) -> Self {
        let src: &[i8; 8] = q[i..i + 8].try_into().expect("8 bytes");
        // SAFETY: `src` is 8 readable bytes; `loadl_epi64` reads 8 bytes, unaligned. AVX2
        // guaranteed by the caller.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(src.as_ptr().cast()))) }
    }
    #[inline(always)]
    unsafe fn load_f16_le(bytes: &[u8], i: usize) -> Self {
        let src: &[u8; 16] = bytes[2 * i..2 * i + 16].try_into().expect("8 halves");
        // SAFETY: `src` is 16 readable bytes; `loadu` has no alignment requirement. F16C
        // guaranteed by the caller.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().cast())) }
    }
    #[inline(always)]
    unsafe fn store_f16_le(self, out: &mut [u8], i: usize) {
        let dst: &mut [u8; 16] = (&mut out[2 * i..2 * i + 16]).try_into().expect("8 halves");
        // SAFETY: `dst` is 16 writable bytes; `storeu` has no alignment requirement. F16C
        // guaranteed by the caller.
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
    unsafe fn reduce_add(self) -> f32 {
        // SAFETY: AVX guaranteed by the caller.
        unsafe {
            let v4 = _mm_add_ps(
                _mm256_castps256_ps128(self),
                _mm256_extractf128_ps::<1>(self),
            );
            let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
            _mm_cvtss_f32(_mm_add_ps(v2, _mm_shuffle_ps::<0b01>(v2, v2)))
        }
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        // SAFETY: AVX guaranteed by the caller.
        unsafe {
            let v4 = _mm_max_ps(
                _mm256_castps256_ps128(self),
                _mm256_extractf128_ps::<1>(self),
            );
            let v2 = _mm_max_ps(v4, _mm_movehl_ps(v4, v4));
            _mm_cvtss_f32(_mm_max_ps(v2, _mm_shuffle_ps::<0b01>(v2, v2)))
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
    unsafe fn min(self, other: Self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_min_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn round_even(self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self) }
    }
    #[inline(always)]
    unsafe fn trunc(self) -> Self {
        // SAFETY: AVX guaranteed by the caller.
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(self) }
    }
    #[inline(always)]
    unsafe fn pow2(self) -> Self {
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe {
            let n = _mm256_add_epi32(_mm256_cvtps_epi32(self), _mm256_set1_epi32(127));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(n))
        }
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
    unsafe fn first_lanes(n: usize) -> __m256 {
        // Lane `k` is true when `n > k`; `n` beyond `i32::MAX` saturates (all lanes).
        let n = n.min(8) as i32;
        // SAFETY: AVX2 guaranteed by the caller.
        unsafe {
            let m = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(n),
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            );
            _mm256_castsi256_ps(m)
        }
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
    unsafe fn load_partial(x: &[f32], i: usize, n: usize) -> Self {
        let src = &x[i..i + n];
        // SAFETY: the masked load reads only the lanes its mask selects, `0..min(n, 16)`,
        // all inside `src` (masked-off lanes neither read nor fault). AVX-512 F
        // guaranteed by the caller.
        unsafe { _mm512_maskz_loadu_ps(Self::first_lanes(n), src.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn store_partial(self, out: &mut [f32], i: usize, n: usize) {
        let dst = &mut out[i..i + n];
        // SAFETY: the masked store writes only the lanes its mask selects, `0..min(n,
        // 16)`, all inside `dst`. AVX-512 F guaranteed by the caller.
        unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr(), Self::first_lanes(n), self) }
    }
    #[inline(always)]
    unsafe fn load_i8(q: &[i8], i: usize) -> Self {
        let src: &[i8; 16] = q[i..i + 16].try_into().expect("16 bytes");
        // SAFETY: `src` is 16 readable bytes; `loadu` has no alignment requirement.
        // AVX-512 F guaranteed by the caller.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(src.as_ptr().cast()))) }
    }
    #[inline(always)]
    unsafe fn load_f16_le(bytes: &[u8], i: usize) -> Self {
        let src: &[u8; 32] = bytes[2 * i..2 * i + 32].try_into().expect("16 halves");
        // SAFETY: `src` is 32 readable bytes; `loadu` has no alignment requirement.
        // AVX-512 F guaranteed by the caller.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(src.as_ptr().cast())) }
    }
    #[inline(always)]
    unsafe fn store_f16_le(self, out: &mut [u8], i: usize) {
        let dst: &mut [u8; 32] = (&mut out[2 * i..2 * i + 32]).try_into().expect("16 halves");
        // SAFETY: `dst` is 32 writable bytes; `storeu` has no alignment requirement.
        // AVX-512 F guaranteed by the caller.
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
    unsafe fn reduce_add(self) -> f32 {
        // SAFETY: AVX-512 F (which implies AVX) guaranteed by the caller.
        unsafe {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self)));
            _mm256_add_ps(_mm512_castps512_ps256(self), hi).reduce_add()
        }
    }
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        // SAFETY: AVX-512 F (which implies AVX) guaranteed by the caller.
        unsafe {
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(self)));
            _mm256_max_ps(_mm512_castps512_ps256(self), hi).reduce_max()
        }
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
    unsafe fn min(self, other: Self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_min_ps(self, other) }
    }
    #[inline(always)]
    unsafe fn round_even(self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(self) }
    }
    #[inline(always)]
    unsafe fn trunc(self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(self) }
    }
    #[inline(always)]
    unsafe fn pow2(self) -> Self {
        // SAFETY: AVX-512 F guaranteed by the caller.
        unsafe {
            let n = _mm512_add_epi32(_mm512_cvtps_epi32(self), _mm512_set1_epi32(127));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(n))
        }
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
    unsafe fn first_lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
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
