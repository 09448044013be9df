//! The 256-bit microkernels, written once over the 4-byte dot product instruction
//! ([`Dot4`]) and instantiated by `avx2.rs` (`vpmaddubsw` + `vpmaddwd`, sign trick) and
//! `avxvnni.rs` (`vpdpbusd` on ymm, VEX or EVEX encoded). A 16-channel panel line is two
//! ymm vectors (channels 0..8, 8..16).
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::driver::{CTile, Tile, W4Tile, LDC};

/// `acc + Σ_{4 bytes} a·b` per i32 lane, exactly (no saturation for the operand ranges
/// the kernels use).
pub(crate) trait Dot4 {
    /// Prepares a broadcast activation word for [`Dot4::w8`] (the AVX2 sign trick
    /// precomputes `|x|`).
    ///
    /// # Safety
    /// The implementing ISA's features must be available.
    unsafe fn prep(xb: __m256i) -> (__m256i, __m256i);
    /// W8 step: `acc + Σ x·w` with `x` the prepared activations (raw i8 for the sign
    /// trick, `x + 128` as u8 for VNNI — see `W8Kernel::shifted`).
    ///
    /// # Safety
    /// As [`Dot4::prep`].
    unsafe fn w8(acc: __m256i, x: (__m256i, __m256i), w: __m256i) -> __m256i;
    /// `acc + Σ u·s` with `u` unsigned bytes ≤ 15 and `s` signed bytes.
    ///
    /// # Safety
    /// As [`Dot4::prep`].
    unsafe fn u8s8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
}

/// W8 tile, `MR` rows × `NP` panels (2 ymm per panel).
///
/// # Safety
/// `D`'s features (and AVX2) must be available; `t` must describe readable memory with
/// `MR ≤ 8`, `NP ≤ 4`.
#[inline(always)]
pub(crate) unsafe fn w8_tile<D: Dot4, const MR: usize, const NP: usize>(
    t: &Tile,
    c: &mut CTile<i32>,
) {
    // SAFETY: (whole body) reads `MR` rows of `4·k4` bytes from `t.a` and `NP` panels of
    // `64·k4` bytes from `t.b` as the caller vouches; writes inside `c`.
    unsafe {
        let mut acc = [[[_mm256_setzero_si256(); 2]; NP]; MR];
        let (mut a, mut b) = (t.a, t.b);
        for _ in 0..t.k4 {
            let mut wv = [[_mm256_setzero_si256(); 2]; NP];
            for (p, v) in wv.iter_mut().enumerate() {
                v[0] = _mm256_loadu_si256(b.add(p * t.ldb).cast());
                v[1] = _mm256_loadu_si256(b.add(p * t.ldb + 32).cast());
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let x = D::prep(_mm256_set1_epi32(
                    a.add(r * t.lda).cast::<i32>().read_unaligned(),
                ));
                for p in 0..NP {
                    acc_r[p][0] = D::w8(acc_r[p][0], x, wv[p][0]);
                    acc_r[p][1] = D::w8(acc_r[p][1], x, wv[p][1]);
                }
            }
            a = a.add(4);
            b = b.add(64);
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (p, v) in acc_r.iter().enumerate() {
                let dst = c.as_mut_ptr().add(r * LDC + p * 16);
                _mm256_storeu_si256(dst.cast(), v[0]);
                _mm256_storeu_si256(dst.add(8).cast(), v[1]);
            }
        }
    }
}

/// W4 tile, `MR` rows × `NP` panels, every group.
///
/// # Safety
/// As [`w8_tile`], for a [`W4Tile`].
#[inline(always)]
pub(crate) unsafe fn w4_tile<D: Dot4, const MR: usize, const NP: usize>(
    t: &W4Tile,
    c: &mut CTile<f32>,
) {
    // SAFETY: (whole body) reads inside the activation, nibble, scale and correction
    // ranges the caller vouches for; writes inside `c`.
    unsafe {
        let m = _mm256_set1_epi8(0x0F);
        let mut sum = [[[_mm256_setzero_ps(); 2]; NP]; MR];
        let (mut a, mut b) = (t.t.a, t.t.b);
        for g in 0..t.groups {
            let mut acc = [[[_mm256_setzero_si256(); 2]; NP]; MR];
            for _ in 0..t.t.k4 {
                let mut wv = [[_mm256_setzero_si256(); 2]; NP];
                for (p, v) in wv.iter_mut().enumerate() {
                    let raw = _mm256_loadu_si256(b.add(p * t.t.ldb).cast());
                    v[0] = _mm256_and_si256(raw, m);
                    v[1] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m);
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let xb = _mm256_set1_epi32(a.add(r * t.t.lda).cast::<i32>().read_unaligned());
                    for p in 0..NP {
                        acc_r[p][0] = D::u8s8(acc_r[p][0], wv[p][0], xb);
                        acc_r[p][1] = D::u8s8(acc_r[p][1], wv[p][1], xb);
                    }
                }
                a = a.add(4);
                b = b.add(32);
            }
            for r in 0..MR {
                let corr = _mm256_set1_epi32(*t.xcorr.add(r * t.groups + g));
                for p in 0..NP {
                    for h in 0..2 {
                        let sc = _mm256_loadu_ps(t.scales.add(p * t.ldscale + g * 16 + h * 8));
                        let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(acc[r][p][h], corr));
                        sum[r][p][h] = _mm256_add_ps(sum[r][p][h], _mm256_mul_ps(v, sc));
                    }
                }
            }
        }
        for (r, sum_r) in sum.iter().enumerate() {
            for (p, v) in sum_r.iter().enumerate() {
                let dst = c.as_mut_ptr().add(r * LDC + p * 16);
                _mm256_storeu_ps(dst, v[0]);
                _mm256_storeu_ps(dst.add(8), v[1]);
            }
        }
    }
}

/// Declares `#[target_feature]` instantiations of the generic ymm tiles for one [`Dot4`]
/// and the `(mr, np)` tables returning them.
macro_rules! ymm_kernels {
    ($dot:ty, $feat:literal, $w8:ident, $w4:ident, $w8t:ident, $w4t:ident;
     w8: $($m8:literal)* / $($n8:literal)*; w4: $($m4:literal)* / $($n4:literal)*) => {
        /// # Safety
        /// The CPU must have the enabled features; operands as for the generic tile.
        #[target_feature(enable = $feat)]
        unsafe fn $w8<const MR: usize, const NP: usize>(
            t: &super::driver::Tile,
            c: &mut super::driver::CTile<i32>,
        ) {
            // SAFETY: forwarded contract.
            unsafe { super::ymm::w8_tile::<$dot, MR, NP>(t, c) }
        }
        /// # Safety
        /// The CPU must have the enabled features; operands as for the generic tile.
        #[target_feature(enable = $feat)]
        unsafe fn $w4<const MR: usize, const NP: usize>(
            t: &super::driver::W4Tile,
            c: &mut super::driver::CTile<f32>,
        ) {
            // SAFETY: forwarded contract.
            unsafe { super::ymm::w4_tile::<$dot, MR, NP>(t, c) }
        }
        fn $w8t(mr: usize, np: usize) -> super::driver::W8TileFn {
            tile_table!($w8, super::driver::W8TileFn, mr, np; $($m8)*; $($n8)*)
        }
        fn $w4t(mr: usize, np: usize) -> super::driver::W4TileFn {
            tile_table!($w4, super::driver::W4TileFn, mr, np; $($m4)*; $($n4)*)
        }
    };
}
pub(crate) use ymm_kernels;
