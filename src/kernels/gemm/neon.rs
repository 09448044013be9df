//! aarch64 NEON kernels (baseline Armv8-A Advanced SIMD, present on every aarch64 CPU):
//! widening multiply-accumulate by lane (`smlal` / `smlal2` on i16 operands), plus the
//! `float32x4_t` instantiation of the fused row quantization (`row_quant.rs`).
//!
//! A k4 step of a panel (16 channels × 4 inputs, channel-major, see `pack.rs`) is
//! de-interleaved into four vectors `w[kk][0..16]`, one per input `kk` (`ld4` for int8;
//! `uzp1`/`uzp2` after the nibble unpack for int4), and widened to i16. Each row's four
//! activations are widened to i16 lanes, and `acc[j] += w[kk][j] · x[kk]` runs as
//! `smlal`/`smlal2` by lane into four i32x4 accumulators per row (channels 0..4, 4..8,
//! 8..12, 12..16). Every i16 × i16 product of two i8 values is exact in i32, so there is
//! no saturation anywhere: activations are the raw i8 bytes (`shifted: false`) and
//! weights of -128 are exact. Sums wrap modulo 2^32 like the other ISAs' (exact within a
//! [`K_BLOCK`](super::K_BLOCK) block).
//!
//! W4: the nibbles are unpacked to the signed weights `w = nibble - 8`, so a group's sum
//! is the exact `Σ qx·w` and the driver's `8·Σ qx` correction is not needed; the groups
//! are combined in f32 exactly as the scalar reference does (`sum + (acc_g as f32) ·
//! scale`, separate multiply and add, group order from 0.0).
//!
//! The dot-product extension (`sdot`) is not used: its intrinsics are unstable in the
//! Rust versions this crate supports.
#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

use super::driver::{CTile, Tile, W4Kernel, W4Tile, W4TileFn, W8Kernel, W8TileFn, LDC};
use super::table::Table;
use crate::kernels::detect::Isa;

/// One k4 step of one panel as i16: `w[kk][h]` holds channels `8h..8h + 8` of input `kk`.
type StepI16 = [[int16x8_t; 2]; 4];

/// Widens four de-interleaved i8 vectors (input `kk`, channels 0..16) to i16.
///
/// # Safety
/// NEON must be available (as for every function here).
#[inline(always)]
unsafe fn widen_step(v: [int8x16_t; 4]) -> StepI16 {
    // SAFETY: register-only NEON operations; the caller guarantees NEON.
    v.map(|x| unsafe { [vmovl_s8(vget_low_s8(x)), vmovl_high_s8(x)] })
}

/// Loads the four activations of one row at one k4 step as i16 lanes.
///
/// # Safety
/// NEON; 4 readable bytes at `a`.
#[inline(always)]
unsafe fn load_x4(a: *const u8) -> int16x4_t {
    // SAFETY: the caller guarantees 4 readable bytes (unaligned reads are allowed) and NEON.
    unsafe {
        let word = a.cast::<u32>().read_unaligned();
        vget_low_s16(vmovl_s8(vcreate_s8(u64::from(word))))
    }
}

/// `acc[q] += w[LANE][channels 4q..4q+4] · x[LANE]` for the four channel quarters.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn mac_lane<const LANE: i32>(acc: &mut [int32x4_t; 4], w: &[int16x8_t; 2], x: int16x4_t) {
    // SAFETY: register-only NEON operations; the caller guarantees NEON.
    unsafe {
        acc[0] = vmlal_lane_s16::<LANE>(acc[0], vget_low_s16(w[0]), x);
        acc[1] = vmlal_high_lane_s16::<LANE>(acc[1], w[0], x);
        acc[2] = vmlal_lane_s16::<LANE>(acc[2], vget_low_s16(w[1]), x);
        acc[3] = vmlal_high_lane_s16::<LANE>(acc[3], w[1], x);
    }
}

/// One k4 step of one row against one panel: `acc[j] += Σ_kk w[kk][j] · x[kk]`.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn mac_step(acc: &mut [int32x4_t; 4], w: &StepI16, x: int16x4_t) {
    // SAFETY: the caller guarantees NEON.
    unsafe {
        mac_lane::<0>(acc, &w[0], x);
        mac_lane::<1>(acc, &w[1], x);
        mac_lane::<2>(acc, &w[2], x);
        mac_lane::<3>(acc, &w[3], x);
    }
}

/// Loads one k4 step of an int8 panel (64 bytes) de-interleaved per input and widened.
///
/// # Safety
/// NEON; 64 readable bytes at `b`.
#[inline(always)]
unsafe fn load_w8_step(b: *const u8) -> StepI16 {
    // SAFETY: the caller guarantees 64 readable bytes (`ld4` needs no alignment) and NEON.
    unsafe {
        let v = vld4q_s8(b.cast::<i8>());
        widen_step([v.0, v.1, v.2, v.3])
    }
}

/// Loads one k4 step of an int4 panel (32 nibble bytes) as the signed weights
/// `nibble - 8`, de-interleaved per input and widened.
///
/// # Safety
/// NEON; 32 readable bytes at `b`.
#[inline(always)]
unsafe fn load_w4_step(b: *const u8) -> StepI16 {
    // SAFETY: the caller guarantees 32 readable bytes at `b` and NEON.
    unsafe {
        let (r0, r1) = (vld1q_u8(b), vld1q_u8(b.add(16)));
        let (m, eight) = (vdupq_n_u8(0x0F), vdupq_n_s8(8));
        let signed = |v: uint8x16_t| vsubq_s8(vreinterpretq_s8_u8(v), eight);
        // Elements 0..64 of the step in the int8 order: channels 0..4, 4..8, 8..12, 12..16.
        let e = [
            signed(vandq_u8(r0, m)),
            signed(vandq_u8(r1, m)),
            signed(vshrq_n_u8::<4>(r0)),
            signed(vshrq_n_u8::<4>(r1)),
        ];
        // Element `c*4 + kk`: even/odd bytes twice select `kk` = 0, 2 / 1, 3 in `c` order.
        let (ev01, od01) = (vuzp1q_s8(e[0], e[1]), vuzp2q_s8(e[0], e[1]));
        let (ev23, od23) = (vuzp1q_s8(e[2], e[3]), vuzp2q_s8(e[2], e[3]));
        widen_step([
            vuzp1q_s8(ev01, ev23),
            vuzp1q_s8(od01, od23),
            vuzp2q_s8(ev01, ev23),
            vuzp2q_s8(od01, od23),
        ])
    }
}

/// W8 tile, `MR` rows × `NP` panels: exact (wrapping) i32 sums into `c`.
///
/// # Safety
/// NEON must be available; `t` must describe readable memory (see [`Tile`]) with
/// `MR ≤ 8`, `NP ≤ 4`.
#[inline(always)]
unsafe fn w8_tile<const MR: usize, const NP: usize>(t: &Tile, c: &mut CTile<i32>) {
    // SAFETY: (whole body) reads stay inside the ranges the caller vouches for: `MR` rows
    // of `4·k4` bytes from `t.a` (stride `t.lda`) and `NP` panels of `64·k4` bytes from
    // `t.b` (stride `t.ldb`); stores go to `c[r·LDC + p·16 + q·4 ..][..4]` with `r < MR ≤ 8`,
    // `p < NP ≤ 4`, `q < 4`, inside the `MR_MAX·LDC` tile; NEON is guaranteed.
    unsafe {
        let mut acc = [[[vdupq_n_s32(0); 4]; NP]; MR];
        let (mut a, mut b) = (t.a, t.b);
        for _ in 0..t.k4 {
            let mut wv = [[[vdupq_n_s16(0); 2]; 4]; NP];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = load_w8_step(b.add(p * t.ldb));
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let x = load_x4(a.add(r * t.lda));
                for (acc_rp, w) in acc_r.iter_mut().zip(&wv) {
                    mac_step(acc_rp, w, x);
                }
            }
            a = a.add(4);
            b = b.add(64);
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (p, v) in acc_r.iter().enumerate() {
                for (q, &lanes) in v.iter().enumerate() {
                    vst1q_s32(c.as_mut_ptr().add(r * LDC + p * 16 + q * 4), lanes);
                }
            }
        }
    }
}

/// W4 tile, `MR` rows × `NP` panels, every group: `Σ_g (acc_g as f32) · scale` into `c`.
///
/// # Safety
/// NEON must be available; `t` must describe readable memory (see [`W4Tile`]) with
/// `MR ≤ 8`, `NP ≤ 4`.
#[inline(always)]
unsafe fn w4_tile<const MR: usize, const NP: usize>(t: &W4Tile, c: &mut CTile<f32>) {
    // SAFETY: (whole body) reads `MR` rows of `groups·group` activation bytes, `NP`
    // panels of `groups·group·8` nibble bytes and `NP × groups × 16` scales (stride
    // `t.ldscale`), all vouched for by the caller; stores stay inside `c` as in `w8_tile`;
    // NEON is guaranteed.
    unsafe {
        let mut sum = [[[vdupq_n_f32(0.0); 4]; NP]; MR];
        let (mut a, mut b) = (t.t.a, t.t.b);
        for g in 0..t.groups {
            let mut acc = [[[vdupq_n_s32(0); 4]; NP]; MR];
            for _ in 0..t.t.k4 {
                let mut wv = [[[vdupq_n_s16(0); 2]; 4]; NP];
                for (p, v) in wv.iter_mut().enumerate() {
                    *v = load_w4_step(b.add(p * t.t.ldb));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let x = load_x4(a.add(r * t.t.lda));
                    for (acc_rp, w) in acc_r.iter_mut().zip(&wv) {
                        mac_step(acc_rp, w, x);
                    }
                }
                a = a.add(4);
                b = b.add(32);
            }
            for (sum_r, acc_r) in sum.iter_mut().zip(&acc) {
                for (p, (sum_rp, acc_rp)) in sum_r.iter_mut().zip(acc_r).enumerate() {
                    for (q, (s, &v)) in sum_rp.iter_mut().zip(acc_rp).enumerate() {
                        let sc = vld1q_f32(t.scales.add(p * t.ldscale + g * 16 + q * 4));
                        // `acc as f32` (`scvtf`, nearest-even), then separate mul and add.
                        *s = vaddq_f32(*s, vmulq_f32(vcvtq_f32_s32(v), sc));
                    }
                }
            }
        }
        for (r, sum_r) in sum.iter().enumerate() {
            for (p, v) in sum_r.iter().enumerate() {
                for (q, &lanes) in v.iter().enumerate() {
                    vst1q_f32(c.as_mut_ptr().add(r * LDC + p * 16 + q * 4), lanes);
                }
            }
        }
    }
}

/// The `MR × NP` W8 tile as a `neon`-enabled function.
///
/// # Safety
/// The CPU must have NEON; operands as for [`w8_tile`].
#[target_feature(enable = "neon")]
unsafe fn w8_neon<const MR: usize, const NP: usize>(t: &Tile, c: &mut CTile<i32>) {
    // SAFETY: forwarded contract.
    unsafe { w8_tile::<MR, NP>(t, c) }
}

/// The `MR × NP` W4 tile as a `neon`-enabled function.
///
/// # Safety
/// The CPU must have NEON; operands as for [`w4_tile`].
#[target_feature(enable = "neon")]
unsafe fn w4_neon<const MR: usize, const NP: usize>(t: &W4Tile, c: &mut CTile<f32>) {
    // SAFETY: forwarded contract.
    unsafe { w4_tile::<MR, NP>(t, c) }
}

fn w8_table(mr: usize, np: usize) -> W8TileFn {
    tile_table!(w8_neon, W8TileFn, mr, np; 1 2 3 4; 1)
}

fn w4_table(mr: usize, np: usize) -> W4TileFn {
    tile_table!(w4_neon, W4TileFn, mr, np; 1 2 3 4; 1)
}

/// NEON W8 microkernels: 4 rows × 1 panel (16 i32x4 accumulators, 8 i16x8 weights);
/// the driver's portable epilogue.
pub(crate) static W8: W8Kernel = W8Kernel {
    mr: 4,
    np: 1,
    shifted: false,
    full_range: true,
    tile: w8_table,
    finish: None,
};

/// NEON W4 microkernels: 4 rows × 1 panel (the float group sums beside the integer
/// accumulators; the compiler may keep them in memory between groups).
pub(crate) static W4: W4Kernel = W4Kernel {
    mr: 4,
    np: 1,
    tile: w4_table,
};

// The gemm dispatch calls these only through `TABLE`, handed out after NEON was detected:
// every `float32x4_t` operation of `kernels::simd` needs only Advanced SIMD.
super::row_quant::row_quant_kernels!(float32x4_t, "neon", false);

/// aarch64 NEON: `smlal` tiles and row quantization.
pub(crate) static TABLE: Table = Table::new("neon", Isa::Neon, ROW_QUANT).with_kernels(&W8, &W4);
