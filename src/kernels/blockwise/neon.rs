//! aarch64 NEON blockwise kernels (4 f32 lanes): the algorithms of `generic.rs` on
//! `float32x4_t`, plus the NEON forms of the 4-bit code loads, the 16-entry table lookup
//! (one `tbl` over the table's 64 bytes) and the f64 affine decode ([`CodeVector`]).

use core::arch::aarch64::*;

use super::generic::{blockwise_kernels, CodeVector};

impl CodeVector for float32x4_t {
    /// The table's 64 bytes in four registers.
    type Lut = uint8x16x4_t;

    #[inline(always)]
    unsafe fn load_lut(lut: &[f32; 16]) -> Self::Lut {
        let p = lut.as_ptr().cast::<u8>();
        // SAFETY: `lut` is 64 readable bytes, read as four 16-byte loads at offsets 0, 16,
        // 32 and 48; `ld1` has no alignment requirement. NEON guaranteed by the caller.
        unsafe {
            uint8x16x4_t(
                vld1q_u8(p),
                vld1q_u8(p.add(16)),
                vld1q_u8(p.add(32)),
                vld1q_u8(p.add(48)),
            )
        }
    }
    #[inline(always)]
    unsafe fn lookup(lut: Self::Lut, codes: int32x4_t) -> float32x4_t {
        // SAFETY: NEON guaranteed by the caller.
        unsafe {
            // Lane bytes 4c, 4c+1, 4c+2, 4c+3 (c ≤ 15, so every index is below 64).
            let c4 = vshlq_n_u32::<2>(vreinterpretq_u32_s32(codes));
            let idx = vmlaq_u32(vdupq_n_u32(0x0302_0100), c4, vdupq_n_u32(0x0101_0101));
            vreinterpretq_f32_u8(vqtbl4q_u8(lut, vreinterpretq_u8_u32(idx)))
        }
    }
    #[inline(always)]
    unsafe fn codes_u8(codes: &[u8], i: usize) -> int32x4_t {
        let src: &[u8; 4] = codes[i..i + 4].try_into().expect("4 bytes");
        // SAFETY: register-only operations; NEON guaranteed by the caller.
        unsafe {
            let b = vcreate_u8(u64::from(u32::from_le_bytes(*src)));
            vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))))
        }
    }
    #[inline(always)]
    unsafe fn codes_u4(packed: &[u8], at: usize) -> int32x4_t {
        let src: &[u8; 2] = packed[at..at + 2].try_into().expect("2 bytes");
        // SAFETY: register-only operations; NEON guaranteed by the caller.
        unsafe {
            let z = nibbles(vcreate_u8(u64::from(u16::from_le_bytes(*src))));
            vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(vmovl_u8(z))))
        }
    }
    #[inline(always)]
    unsafe fn codes_u4x2(packed: &[u8], at: usize) -> [int32x4_t; 2] {
        let src: &[u8; 4] = packed[at..at + 4].try_into().expect("4 bytes");
        // SAFETY: register-only operations; NEON guaranteed by the caller.
        unsafe {
            let w = vmovl_u8(nibbles(vcreate_u8(u64::from(u32::from_le_bytes(*src)))));
            [
                vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(w))),
                vreinterpretq_s32_u32(vmovl_high_u16(w)),
            ]
        }
    }
    #[inline(always)]
    unsafe fn affine(q: int32x4_t, m: f32, s: f32) -> float32x4_t {
        // SAFETY: NEON guaranteed by the caller.
        unsafe {
            let (m, s) = (vdupq_n_f64(f64::from(m)), vdupq_n_f64(f64::from(s)));
            let lo = affine2(vget_low_s32(q), m, s);
            vcombine_f32(lo, affine2(vget_high_s32(q), m, s))
        }
    }
}

/// The 4-bit codes of the low 4 bytes of `bytes` in element order (byte `k` gives
/// elements `2k`, low nibble, and `2k + 1`, high).
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn nibbles(bytes: uint8x8_t) -> uint8x8_t {
    // SAFETY: NEON guaranteed by the caller.
    unsafe { vzip1_u8(vand_u8(bytes, vdup_n_u8(0x0F)), vshr_n_u8::<4>(bytes)) }
}

/// `m + q·s` in f64 for 2 codes, clamped to ±f32::MAX (NaN kept), rounded to f32 (nearest
/// even, like `as f32`).
///
/// # Safety
/// NEON must be available.
#[inline(always)]
unsafe fn affine2(q: int32x2_t, m: float64x2_t, s: float64x2_t) -> float32x2_t {
    // SAFETY: NEON guaranteed by the caller.
    unsafe {
        let v = vaddq_f64(m, vmulq_f64(vcvtq_f64_s64(vmovl_s32(q)), s));
        let max = vdupq_n_f64(f64::from(f32::MAX));
        vcvt_f32_f64(vmaxq_f64(vnegq_f64(max), vminq_f64(max, v)))
    }
}

// `Kernels::on` hands this table out with a `Neon` token, which proves Advanced SIMD:
// every operation above and in `kernels::simd` needs only that.
blockwise_kernels!(float32x4_t, "neon");
