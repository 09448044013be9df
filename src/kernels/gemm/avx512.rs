//! AVX-512 VNNI kernels on zmm registers: `vpdpbusd` (u8 × s8 → i32, 4 products per
//! lane, no saturation) over the 64-byte panel lines, plus the `__m512` instantiation of
//! the fused row quantization (`row_quant.rs`).
//!
//! W8: activations enter as `qx + 128` (u8) and the driver subtracts `128·Σ w` (exact).
//! W4: the nibbles `w + 8` (u8, 0..=15) are the unsigned operand and the raw activations
//! the signed one; each group's sum is corrected by `8·Σ qx` before the float combine.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::driver::{CTile, Tile, W4Kernel, W4Tile, W4TileFn, W8Finish, W8Kernel, W8TileFn, LDC};
use super::table::Table;
use crate::kernels::detect::Isa;

/// Bytes ahead of the current weight step that the W8 tile prefetches (64 steps): the
/// hardware prefetcher alone leaves batch-8 layers whose weights come from DRAM
/// 10–25% slower (4096×4096, 11008×4096 at batch 8 on Zen 4).
const PREFETCH_AHEAD: usize = 4096;
/// Tiles with fewer rows do not prefetch: a GEMV tile already streams at the memory's
/// rate and the extra load-port work did not help it.
const PREFETCH_MIN_ROWS: usize = 4;

/// W8 tile, `MR` rows × `NP` panels; 8 × 3 = 24 accumulators + 3 weight registers.
/// (8 × 3 beat 6 × 4 and 12 × 2 on Zen 4 at every batch: fewer weight loads per
/// `vpdpbusd` than 6 × 4, fewer broadcasts than 12 × 2.)
///
/// # Safety
/// AVX-512 F and VNNI must be available; `t` must describe readable memory (see
/// [`Tile`]) with `MR ≤ 8`, `NP ≤ 3`.
#[inline(always)]
unsafe fn w8_tile<const MR: usize, const NP: usize>(t: &Tile, c: &mut CTile<i32>) {
    // SAFETY: (whole body) reads stay inside the ranges the caller vouches for: `MR` rows
    // of `4·k4` bytes from `t.a` (stride `t.lda`) and `NP` panels of `64·k4` bytes from
    // `t.b` (stride `t.ldb`); writes stay inside `c` (`MR·LDC` values).
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); NP]; MR];
        let (mut a, mut b) = (t.a, t.b);
        for _ in 0..t.k4 {
            let mut wv = [_mm512_setzero_si512(); NP];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(b.add(p * t.ldb).cast());
                if MR >= PREFETCH_MIN_ROWS {
                    // A hint only (never faults), so the address may pass the panel's end.
                    _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(p * t.ldb + PREFETCH_AHEAD).cast());
                }
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_epi32(a.add(r * t.lda).cast::<i32>().read_unaligned());
                for p in 0..NP {
                    acc_r[p] = _mm512_dpbusd_epi32(acc_r[p], xb, wv[p]);
                }
            }
            a = a.add(4);
            b = b.add(64);
        }
        for (r, acc_r) in acc.iter().enumerate() {
            for (p, v) in acc_r.iter().enumerate() {
                _mm512_storeu_si512(c.as_mut_ptr().add(r * LDC + p * 16).cast(), *v);
            }
        }
    }
}

/// Unpacks 32 nibble bytes (one k4 step of an int4 panel) to the 64 unsigned bytes
/// `w + 8`, in the int8 panel order.
#[inline(always)]
unsafe fn unpack_nibbles(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 32 readable bytes at `p` and the CPU features.
    unsafe {
        let v = _mm256_loadu_si256(p.cast());
        let m = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(v, m);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m);
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
    }
}

/// W4 tile, `MR` rows × `NP` panels, every group.
///
/// # Safety
/// AVX-512 F/BW/VNNI must be available; `t` must describe readable memory (see
/// [`W4Tile`]) with `MR ≤ 8`, `NP ≤ 4`.
#[inline(always)]
unsafe fn w4_tile<const MR: usize, const NP: usize>(t: &W4Tile, c: &mut CTile<f32>) {
    // SAFETY: (whole body) reads `MR` rows of `groups·group` activation bytes, `NP`
    // panels of `groups·group·8` nibble bytes, `NP × groups × 16` scales and
    // `MR × groups` corrections, all vouched for by the caller; writes inside `c`.
    unsafe {
        let mut sum = [[_mm512_setzero_ps(); NP]; MR];
        let (mut a, mut b) = (t.t.a, t.t.b);
        for g in 0..t.groups {
            let mut acc = [[_mm512_setzero_si512(); NP]; MR];
            for _ in 0..t.t.k4 {
                let mut wv = [_mm512_setzero_si512(); NP];
                for (p, v) in wv.iter_mut().enumerate() {
                    *v = unpack_nibbles(b.add(p * t.t.ldb));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let xb = _mm512_set1_epi32(a.add(r * t.t.lda).cast::<i32>().read_unaligned());
                    for p in 0..NP {
                        acc_r[p] = _mm512_dpbusd_epi32(acc_r[p], wv[p], xb);
                    }
                }
                a = a.add(4);
                b = b.add(32);
            }
            add_group(t, g, &acc, &mut sum);
        }
        store_sums(&sum, c);
    }
}

/// `sum += (acc − 8·Σ_g qx) as f32 · scale_g` for group `g` of a W4 tile: the float
/// combine of the twin, in group order.
///
/// # Safety
/// AVX-512 F; `t` as for [`w4_tile`], `g < t.groups`, `MR` rows and `NP` panels inside it.
#[inline(always)]
unsafe fn add_group<const MR: usize, const NP: usize>(
    t: &W4Tile,
    g: usize,
    acc: &[[__m512i; NP]; MR],
    sum: &mut [[__m512; NP]; MR],
) {
    // SAFETY: `NP` panels of 16 scales for group `g` and `MR` rows of corrections are
    // inside the tile's ranges (caller).
    unsafe {
        let mut sc = [_mm512_setzero_ps(); NP];
        for (p, s) in sc.iter_mut().enumerate() {
            *s = _mm512_loadu_ps(t.scales.add(p * t.ldscale + g * 16));
        }
        for r in 0..MR {
            let corr = _mm512_set1_epi32(*t.xcorr.add(r * t.groups + g));
            for p in 0..NP {
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][p], corr));
                sum[r][p] = _mm512_add_ps(sum[r][p], _mm512_mul_ps(v, sc[p]));
            }
        }
    }
}

/// Stores a W4 tile's float sums into `c`.
///
/// # Safety
/// AVX-512 F; `MR ≤ MR_MAX` and `NP · 16 ≤ LDC` (the tile shapes of the table).
#[inline(always)]
unsafe fn store_sums<const MR: usize, const NP: usize>(
    sum: &[[__m512; NP]; MR],
    c: &mut CTile<f32>,
) {
    for (r, sum_r) in sum.iter().enumerate() {
        for (p, v) in sum_r.iter().enumerate() {
            let dst = &mut c[r * LDC + p * 16..r * LDC + p * 16 + 16];
            // SAFETY: `dst` is 16 writable floats; unaligned store.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), *v) };
        }
    }
}

/// Inputs per exact chunk of [`w4_tile_few_rows`]: its high-nibble sums carry a factor
/// 16, so a lane may add at most `2^31 / (16 · 15 · 128)` ≈ 69 900 products before the
/// factor could wrap; a chunk of 65 536 inputs gives each lane half of them.
const W4_CHUNK_INPUTS: usize = 65536;

/// W4 tile for 1 or 2 rows (GEMV, decoding): the same sums as [`w4_tile`] with about a
/// third fewer vector operations per weight byte, because a register tile this small
/// leaves room for two accumulators per panel.
///
/// One 64-byte load holds two k4 steps of a panel (`[step s | step s+1]`, each with
/// channels 0–7 in the low nibbles and 8–15 in the high ones). `v & 0x0F` is
/// `[s: ch 0–7 | s+1: ch 0–7]` and `v & 0xF0` the same for channels 8–15 times 16,
/// so no shift and no cross-lane insert: the activations are broadcast as
/// `[x_s ×8 | x_{s+1} ×8]` (one permute per row, shared by the panels). At the end of a
/// chunk the high sums are divided by 16 (exact: every term is a multiple of 16 and the
/// chunk is short enough not to wrap, see [`W4_CHUNK_INPUTS`]) and the halves of both
/// accumulators are added into channel order. Integer sums are exact, so the float
/// combine sees the very integers `w4_tile` computes: bit-identical results.
///
/// # Safety
/// As [`w4_tile`], with `MR ≤ 2` (`t.t.k4` is even: groups are multiples of 8 inputs).
#[inline(always)]
unsafe fn w4_tile_few_rows<const MR: usize, const NP: usize>(t: &W4Tile, c: &mut CTile<f32>) {
    // SAFETY: (whole body) the reads and writes of `w4_tile`: two k4 steps are read as one
    // 64-byte panel load and one 8-byte activation load, inside the group because its
    // step count is even.
    unsafe {
        let lo_mask = _mm512_set1_epi8(0x0F);
        let hi_mask = _mm512_set1_epi8(0xF0u8 as i8);
        // Lanes 0–7 take the pair's first activation dword, lanes 8–15 the second.
        let pair = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        let chunk_pairs = W4_CHUNK_INPUTS / 8;
        let mut sum = [[_mm512_setzero_ps(); NP]; MR];
        let (mut a, mut b) = (t.t.a, t.t.b);
        for g in 0..t.groups {
            let mut acc = [[_mm512_setzero_si512(); NP]; MR];
            let mut pairs_left = t.t.k4 / 2;
            while pairs_left > 0 {
                let pairs = pairs_left.min(chunk_pairs);
                let mut lo = [[_mm512_setzero_si512(); NP]; MR];
                let mut hi = [[_mm512_setzero_si512(); NP]; MR];
                for _ in 0..pairs {
                    let mut wl = [_mm512_setzero_si512(); NP];
                    let mut wh = [_mm512_setzero_si512(); NP];
                    for p in 0..NP {
                        let v = _mm512_loadu_si512(b.add(p * t.t.ldb).cast());
                        wl[p] = _mm512_and_si512(v, lo_mask);
                        wh[p] = _mm512_and_si512(v, hi_mask);
                    }
                    for r in 0..MR {
                        let x2 = _mm_loadl_epi64(a.add(r * t.t.lda).cast());
                        let xb = _mm512_permutexvar_epi32(pair, _mm512_castsi128_si512(x2));
                        for p in 0..NP {
                            lo[r][p] = _mm512_dpbusd_epi32(lo[r][p], wl[p], xb);
                            hi[r][p] = _mm512_dpbusd_epi32(hi[r][p], wh[p], xb);
                        }
                    }
                    a = a.add(8);
                    b = b.add(64);
                }
                for r in 0..MR {
                    for p in 0..NP {
                        let (l, h) = (lo[r][p], _mm512_srai_epi32::<4>(hi[r][p]));
                        // [l.low, h.low] + [l.high, h.high]: channels 0–7 | 8–15.
                        let low = _mm512_shuffle_i64x2::<0x44>(l, h);
                        let high = _mm512_shuffle_i64x2::<0xEE>(l, h);
                        acc[r][p] = _mm512_add_epi32(acc[r][p], _mm512_add_epi32(low, high));
                    }
                }
                pairs_left -= pairs;
            }
            add_group(t, g, &acc, &mut sum);
        }
        store_sums(&sum, c);
    }
}

macro_rules! instantiate {
    ($name:ident, $inner:ident, $args:ty, $out:ty, $feat:literal) => {
        /// # Safety
        /// The CPU must have the enabled features; the operands must satisfy the tile's
        /// contract.
        #[target_feature(enable = $feat)]
        unsafe fn $name<const MR: usize, const NP: usize>(t: &$args, c: &mut CTile<$out>) {
            // SAFETY: forwarded contract.
            unsafe { $inner::<MR, NP>(t, c) }
        }
    };
}

instantiate!(w8_zmm, w8_tile, Tile, i32, "avx512f,avx512bw,avx512vnni");
instantiate!(w4_zmm, w4_tile, W4Tile, f32, "avx512f,avx512bw,avx512vnni");
instantiate!(
    w4_zmm_few_rows,
    w4_tile_few_rows,
    W4Tile,
    f32,
    "avx512f,avx512bw,avx512vnni"
);

fn w8_table(mr: usize, np: usize) -> W8TileFn {
    tile_table!(w8_zmm, W8TileFn, mr, np; 1 2 3 4 5 6 7 8; 1 2 3)
}

fn w4_table(mr: usize, np: usize) -> W4TileFn {
    if mr <= 2 {
        return tile_table!(w4_zmm_few_rows, W4TileFn, mr, np; 1 2; 1 2);
    }
    tile_table!(w4_zmm, W4TileFn, mr, np; 3 4 5 6; 1 2)
}

/// The W8 epilogue on zmm: the IEEE operations of `finish_w8_generic` in the same order
/// (`x_scale · w_scale`, then `acc ·` that, then `+ bias`; no fused multiply-add), so the
/// results are bit-identical.
///
/// # Safety
/// AVX-512 F must be available; `f` must satisfy the [`W8Finish`] contract.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn w8_finish(f: &W8Finish) {
    // SAFETY: (whole body) loads of `c` stay inside the tile (`j < cols ≤ LDC`); loads of
    // `colsums` / `ws` / `bias` and stores to `out` are masked to the `cols` valid
    // columns of the `mr` rows the caller vouches for.
    unsafe {
        for r in 0..f.mr {
            let xs = _mm512_set1_ps(f.xs.add(r).read());
            let mut j = 0;
            while j < f.cols {
                let m = mask(f.cols - j);
                let mut acc = _mm512_loadu_si512(f.c.add(r * LDC + j).cast());
                if let Some(cs) = f.colsums {
                    let cs = _mm512_maskz_loadu_epi32(m, cs.add(j));
                    acc = _mm512_sub_epi32(acc, _mm512_slli_epi32::<7>(cs));
                }
                let scale = _mm512_mul_ps(xs, _mm512_maskz_loadu_ps(m, f.ws.add(j)));
                let mut v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), scale);
                if let Some(b) = f.bias {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, b.add(j)));
                }
                _mm512_mask_storeu_ps(f.out.add(r * f.ldo + j), m, v);
                j += 16;
            }
        }
    }
}

/// The zmm W8 microkernels (8 rows × 3 panels of 16 channels).
pub(crate) static W8: W8Kernel = W8Kernel {
    mr: 8,
    np: 3,
    shifted: true,
    full_range: true,
    tile: w8_table,
    finish: Some(w8_finish),
};
/// The zmm W4 microkernels (6 rows × 2 panels: 12 integer + 12 float accumulators).
pub(crate) static W4: W4Kernel = W4Kernel {
    mr: 6,
    np: 2,
    tile: w4_table,
};

/// The first `min(n, 16)` lanes (masked loads and stores of a tile's last columns).
fn mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

// The gemm dispatch calls these only on paths whose detection proves AVX-512 F/BW/VL:
// every `__m512` operation of `kernels::simd` needs only F/BW. Computed scales use the
// exact reciprocal multiply (`row_quant.rs`): `vdivps zmm` costs more than it.
super::row_quant::row_quant_kernels!(__m512, "avx512f,avx512bw,avx512vl", true);

/// AVX-512 VNNI: zmm tiles and row quantization.
pub(crate) static TABLE: Table =
    Table::new("avx512-vnni", Isa::Avx512Vnni, ROW_QUANT).with_kernels(&W8, &W4);
