//! [`F32Vector`] for aarch64 NEON's `float32x4_t` (4 lanes).
//!
//! NEON's own rules differ from the x86 ones the trait states in a few places, and each is
//! spelled out here so the generic algorithms give their scalar twins' bits: `fmax`
//! returns NaN where `maxps` returns its second operand (so [`F32Vector::max`] and
//! [`F32Vector::min`] are a compare and a select, and [`F32Vector::reduce_max`] is one by
//! halves rather than `fmaxv`), `fcvtzs` saturates where `cvttps2dq` gives `i32::MIN` (so
//! [`F32Vector::trunc_i32`] masks), `fcmeq`'s complement is true on NaN (so
//! [`F32Vector::ne`] is `<` or `>`), there is no lane movemask (so
//! [`F32Vector::mask_bits`] adds lane weights) and no masked load or store (so
//! [`F32Vector::load_partial`] and [`F32Vector::store_partial`] copy through a stack
//! buffer). [`F32Vector::round_half_away`] is overridden with `fcvtas` (ties away,
//! straight to i32), one instruction for the trait's add-and-truncate. The f16
//! conversions are the base-ISA `fcvtl`/`fcvtn` instructions in `asm!`: Rust's NEON f16
//! intrinsics are not stable.

use core::arch::aarch64::*;
use core::arch::asm;

use super::F32Vector;

/// NEON: 4 lanes. Every instruction used is in the aarch64 base Advanced SIMD set.
impl F32Vector for float32x4_t {
    const LANES: usize = 4;
    type I32 = int32x4_t;
    /// All-ones or all-zeros lanes (`fcmgt` and friends).
    type Mask = uint32x4_t;

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vdupq_n_f32(v) }
    }
    #[inline(always)]
    unsafe fn load(x: &[f32], i: usize) -> Self {
        let v: &[f32; 4] = x[i..i + 4].try_into().expect("4 values");
        // SAFETY: `v` is 4 readable f32 (16 bytes); `ld1` has no alignment requirement.
        unsafe { vld1q_f32(v.as_ptr()) }
    }
    #[inline(always)]
    unsafe fn store(self, out: &mut [f32], i: usize) {
        let dst: &mut [f32; 4] = (&mut out[i..i + 4]).try_into().expect("4 values");
        // SAFETY: `dst` is 4 writable f32 (16 bytes); `st1` has no alignment requirement.
        unsafe { vst1q_f32(dst.as_mut_ptr(), self) }
    }
    /// Through a zeroed stack buffer: NEON has no masked load.
    #[inline(always)]
    unsafe fn load_partial(x: &[f32], i: usize, n: usize) -> Self {
        let src = &x[i..i + n];
        let mut buf = [0f32; 4];
        let n = n.min(4);
        buf[..n].copy_from_slice(&src[..n]);
        // SAFETY: `buf` is 4 readable f32; NEON guaranteed by the caller.
        unsafe { vld1q_f32(buf.as_ptr()) }
    }
    /// Through a stack buffer: NEON has no masked store.
    #[inline(always)]
    unsafe fn store_partial(self, out: &mut [f32], i: usize, n: usize) {
        let dst = &mut out[i..i + n];
        let mut buf = [0f32; 4];
        // SAFETY: `buf` is 4 writable f32; NEON guaranteed by the caller.
        unsafe { vst1q_f32(buf.as_mut_ptr(), self) };
        let n = n.min(4);
        dst[..n].copy_from_slice(&buf[..n]);
    }
    #[inline(always)]
    unsafe fn load_i8(q: &[i8], i: usize) -> Self {
        let src: &[i8; 4] = q[i..i + 4].try_into().expect("4 bytes");
        let word = u32::from_le_bytes(src.map(|b| b as u8));
        // SAFETY: register-only operations; NEON guaranteed by the caller.
        unsafe {
            let w = vmovl_s8(vcreate_s8(u64::from(word)));
            vcvtq_f32_s32(vmovl_s16(vget_low_s16(w)))
        }
    }
    #[inline(always)]
    unsafe fn load_f16_le(bytes: &[u8], i: usize) -> Self {
        let src: &[u8; 8] = bytes[2 * i..2 * i + 8].try_into().expect("4 halves");
        // The u64 of the 8 bytes holds lane `k` in bits `16k..16k + 16` (`vcreate`),
        // whatever the target's byte order; on little-endian aarch64 this is one `ldr d`.
        let word = u64::from_le_bytes(*src);
        // SAFETY: register-only operations; `fcvtl` is a base NEON instruction and NEON is
        // guaranteed by the caller.
        unsafe {
            let v = vcreate_u16(word);
            let out: float32x4_t;
            asm!("fcvtl {out:v}.4s, {v:v}.4h", v = in(vreg) v, out = lateout(vreg) out,
                options(pure, nomem, nostack, preserves_flags));
            out
        }
    }
    #[inline(always)]
    unsafe fn store_f16_le(self, out: &mut [u8], i: usize) {
        let dst: &mut [u8; 8] = (&mut out[2 * i..2 * i + 8]).try_into().expect("4 halves");
        // SAFETY: register-only operations; `fcvtn` is a base NEON instruction (NEON
        // guaranteed by the caller); it rounds by FPCR, which Rust code runs with at
        // round-to-nearest-even.
        let word = unsafe {
            let h: uint16x4_t;
            asm!("fcvtn {h:v}.4h, {v:v}.4s", v = in(vreg) self, h = lateout(vreg) h,
                options(pure, nomem, nostack, preserves_flags));
            vget_lane_u64::<0>(vreinterpret_u64_u16(h))
        };
        *dst = word.to_le_bytes();
    }

    #[inline(always)]
    unsafe fn abs(self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { bits(vandq_u32(lanes(self), vdupq_n_u32(0x7fff_ffff))) }
    }
    #[inline(always)]
    unsafe fn sign(self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { bits(vandq_u32(lanes(self), vdupq_n_u32(0x8000_0000))) }
    }
    #[inline(always)]
    unsafe fn or(self, other: Self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { bits(vorrq_u32(lanes(self), lanes(other))) }
    }
    #[inline(always)]
    unsafe fn max_bits(self, other: Self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe {
            let m = vmaxq_s32(vreinterpretq_s32_f32(self), vreinterpretq_s32_f32(other));
            vreinterpretq_f32_s32(m)
        }
    }
    #[inline(always)]
    unsafe fn reduce_max_bits(self) -> u32 {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vmaxvq_s32(vreinterpretq_s32_f32(self)) as u32 }
    }
    #[inline(always)]
    unsafe fn reduce_add(self) -> f32 {
        // SAFETY: NEON guaranteed by the caller.
        unsafe {
            let h = vadd_f32(vget_low_f32(self), vget_high_f32(self));
            vget_lane_f32::<0>(vpadd_f32(h, h))
        }
    }
    /// The x86 rule by halves: a compare and a select on the 2-lane halves (not `fmaxv`,
    /// which returns NaN), then the last two lanes as scalars.
    #[inline(always)]
    unsafe fn reduce_max(self) -> f32 {
        // SAFETY: NEON guaranteed by the caller.
        let (a, b) = unsafe {
            let (lo, hi) = (vget_low_f32(self), vget_high_f32(self));
            let h = vbsl_f32(vcgt_f32(lo, hi), lo, hi);
            (vget_lane_f32::<0>(h), vget_lane_f32::<1>(h))
        };
        if a > b {
            a
        } else {
            b
        }
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vaddq_f32(self, other) }
    }
    #[inline(always)]
    unsafe fn mul(self, other: Self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vmulq_f32(self, other) }
    }
    #[inline(always)]
    unsafe fn div(self, other: Self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vdivq_f32(self, other) }
    }
    #[inline(always)]
    unsafe fn sub(self, other: Self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vsubq_f32(self, other) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vfmaq_f32(b, self, a) }
    }
    #[inline(always)]
    unsafe fn max(self, other: Self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vbslq_f32(vcgtq_f32(self, other), self, other) }
    }
    #[inline(always)]
    unsafe fn min(self, other: Self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vbslq_f32(vcltq_f32(self, other), self, other) }
    }
    #[inline(always)]
    unsafe fn round_even(self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vrndnq_f32(self) }
    }
    #[inline(always)]
    unsafe fn trunc(self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vrndq_f32(self) }
    }
    #[inline(always)]
    unsafe fn pow2(self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe {
            let n = vaddq_s32(vcvtnq_s32_f32(self), vdupq_n_s32(127));
            vreinterpretq_f32_s32(vshlq_n_s32::<23>(n))
        }
    }
    #[inline(always)]
    unsafe fn select(m: uint32x4_t, yes: Self, no: Self) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vbslq_f32(m, yes, no) }
    }
    #[inline(always)]
    unsafe fn trunc_i32(self) -> int32x4_t {
        // SAFETY: NEON guaranteed by the caller.
        unsafe {
            let t = vcvtq_s32_f32(self);
            let in_range = vcltq_f32(vabsq_f32(self), vdupq_n_f32(2_147_483_648.0));
            vbslq_s32(in_range, t, vdupq_n_s32(i32::MIN))
        }
    }

    /// `fcvtas`: round to nearest, ties away from zero, straight to i32 (exact for every
    /// `|v| < 2^31`, so it meets the trait's `|v| < 2^23` contract; saturating beyond).
    #[inline(always)]
    unsafe fn round_half_away(self) -> int32x4_t {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vcvtaq_s32_f32(self) }
    }

    #[inline(always)]
    unsafe fn ne(self, other: Self) -> uint32x4_t {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vorrq_u32(vcltq_f32(self, other), vcgtq_f32(self, other)) }
    }
    #[inline(always)]
    unsafe fn lt(self, other: Self) -> uint32x4_t {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { vcltq_f32(self, other) }
    }
    #[inline(always)]
    unsafe fn zero_unless(self, m: uint32x4_t) -> Self {
        // SAFETY: NEON guaranteed by the caller.
        unsafe { bits(vandq_u32(lanes(self), m)) }
    }
    #[inline(always)]
    unsafe fn mask_bits(m: uint32x4_t) -> u32 {
        const WEIGHTS: [u32; 4] = [1, 2, 4, 8];
        // SAFETY: `WEIGHTS` is 4 readable u32; NEON guaranteed by the caller.
        unsafe { vaddvq_u32(vandq_u32(m, vld1q_u32(WEIGHTS.as_ptr()))) }
    }
    #[inline(always)]
    unsafe fn first_lanes(n: usize) -> uint32x4_t {
        const INDEX: [u32; 4] = [0, 1, 2, 3];
        let n = n.min(4) as u32;
        // SAFETY: `INDEX` is 4 readable u32; NEON guaranteed by the caller.
        unsafe { vcltq_u32(vld1q_u32(INDEX.as_ptr()), vdupq_n_u32(n)) }
    }

    #[inline(always)]
    unsafe fn store_i8(v: int32x4_t, out: &mut [i8], i: usize) {
        let dst: &mut [i8; 4] = (&mut out[i..i + 4]).try_into().expect("4 bytes");
        // SAFETY: register-only operations; NEON guaranteed by the caller. The saturating
        // narrowings (`sqxtn`) are exact for the values allowed.
        let word = unsafe {
            let h = vqmovn_s32(v);
            let b = vqmovn_s16(vcombine_s16(h, h));
            vget_lane_u32::<0>(vreinterpret_u32_s8(b))
        };
        *dst = word.to_le_bytes().map(|b| b as i8);
    }
    #[inline(always)]
    unsafe fn store_i8x4(v: [int32x4_t; 4], out: &mut [i8], i: usize) {
        let dst: &mut [i8; 16] = (&mut out[i..i + 16]).try_into().expect("16 bytes");
        // SAFETY: `dst` is 16 writable bytes; `st1` has no alignment requirement. NEON
        // guaranteed by the caller.
        unsafe {
            let lo = vcombine_s16(vqmovn_s32(v[0]), vqmovn_s32(v[1]));
            let hi = vcombine_s16(vqmovn_s32(v[2]), vqmovn_s32(v[3]));
            vst1q_s8(
                dst.as_mut_ptr(),
                vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)),
            )
        }
    }
}

/// The lanes' bit patterns.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn lanes(v: float32x4_t) -> uint32x4_t {
    // SAFETY: NEON guaranteed by the caller.
    unsafe { vreinterpretq_u32_f32(v) }
}

/// Bit patterns as f32 lanes.
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn bits(v: uint32x4_t) -> float32x4_t {
    // SAFETY: NEON guaranteed by the caller.
    unsafe { vreinterpretq_f32_u32(v) }
}
