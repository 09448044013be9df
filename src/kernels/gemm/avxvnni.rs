//! `vpdpbusd` on 256-bit registers: the ymm tiles of `ymm.rs` instantiated twice, with
//! the VEX-encoded AVX-VNNI instruction (`_mm256_dpbusd_avx_epi32`, Alder Lake and later,
//! Zen 5) and with the EVEX-encoded AVX-512 VNNI + VL one (`_mm256_dpbusd_epi32`). Same
//! arithmetic, so the second instantiation — runnable on any AVX-512 VNNI machine —
//! exercises exactly the code the first runs on AVX-VNNI CPUs.
//!
//! W8 feeds activations as `qx + 128` (u8) and the driver subtracts `128·Σ w`; W4 uses
//! the nibbles `w + 8` as the unsigned operand.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::avx2::ROW_QUANT;
use super::driver::{W4Kernel, W8Kernel};
use super::table::Table;
use super::ymm::{ymm_kernels, Dot4};
use crate::kernels::detect::Isa;

/// VEX `vpdpbusd` (AVX-VNNI).
pub(crate) struct VexDot;

impl Dot4 for VexDot {
    #[inline(always)]
    unsafe fn prep(xb: __m256i) -> (__m256i, __m256i) {
        (xb, xb)
    }
    #[inline(always)]
    unsafe fn w8(acc: __m256i, x: (__m256i, __m256i), w: __m256i) -> __m256i {
        // SAFETY: AVX-VNNI guaranteed by the caller.
        unsafe { _mm256_dpbusd_avx_epi32(acc, x.0, w) }
    }
    #[inline(always)]
    unsafe fn u8s8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: AVX-VNNI guaranteed by the caller.
        unsafe { _mm256_dpbusd_avx_epi32(acc, u, s) }
    }
}

/// EVEX `vpdpbusd` on ymm (AVX-512 VNNI + VL).
pub(crate) struct EvexDot;

impl Dot4 for EvexDot {
    #[inline(always)]
    unsafe fn prep(xb: __m256i) -> (__m256i, __m256i) {
        (xb, xb)
    }
    #[inline(always)]
    unsafe fn w8(acc: __m256i, x: (__m256i, __m256i), w: __m256i) -> __m256i {
        // SAFETY: AVX-512 VNNI + VL guaranteed by the caller.
        unsafe { _mm256_dpbusd_epi32(acc, x.0, w) }
    }
    #[inline(always)]
    unsafe fn u8s8(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: AVX-512 VNNI + VL guaranteed by the caller.
        unsafe { _mm256_dpbusd_epi32(acc, u, s) }
    }
}

ymm_kernels!(VexDot, "avx2,fma,avxvnni", w8_vex, w4_vex, w8_vex_table, w4_vex_table;
    w8: 1 2 3 4 5 6 / 1; w4: 1 2 / 1);
ymm_kernels!(EvexDot, "avx2,fma,avx512f,avx512vl,avx512vnni", w8_evex, w4_evex, w8_evex_table, w4_evex_table;
    w8: 1 2 3 4 5 6 / 1; w4: 1 2 / 1);

/// AVX-VNNI W8 microkernels: 6 rows × 1 panel (12 of 16 ymm registers accumulate).
pub(crate) static W8_VEX: W8Kernel = W8Kernel {
    mr: 6,
    np: 1,
    shifted: true,
    full_range: true,
    tile: w8_vex_table,
    finish: Some(super::avx2::w8_finish),
};
/// AVX-VNNI W4 microkernels: 2 rows × 1 panel.
pub(crate) static W4_VEX: W4Kernel = W4Kernel {
    mr: 2,
    np: 1,
    tile: w4_vex_table,
};
/// The same tiles with EVEX `vpdpbusd` on ymm (AVX-512 VNNI + VL).
pub(crate) static W8_EVEX: W8Kernel = W8Kernel {
    mr: 6,
    np: 1,
    shifted: true,
    full_range: true,
    tile: w8_evex_table,
    finish: Some(super::avx2::w8_finish),
};
/// The same W4 tiles with EVEX `vpdpbusd` on ymm.
pub(crate) static W4_EVEX: W4Kernel = W4Kernel {
    mr: 2,
    np: 1,
    tile: w4_evex_table,
};

/// AVX-VNNI: VEX `vpdpbusd` on ymm, the AVX2 row quantization.
pub(crate) static TABLE_VEX: Table =
    Table::new("avx-vnni", Isa::AvxVnni, ROW_QUANT).with_kernels(&W8_VEX, &W4_VEX);

/// The AVX-VNNI tiles with EVEX `vpdpbusd` (AVX-512 VNNI + VL), for AVX-512 CPUs.
pub(crate) static TABLE_EVEX: Table =
    Table::new("avx512-vnni-ymm", Isa::Avx512Vnni, ROW_QUANT).with_kernels(&W8_EVEX, &W4_EVEX);
