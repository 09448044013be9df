//! AVX-512 VNNI kernels on zmm registers: `vpdpbusd` (u8 × s8 → i32, 4 products per
//! lane, no saturation) over the 64-byte panel lines, plus the fused row quantization.
//!
//! W8: activations enter as `qx + 128` (u8) and the driver subtracts `128·Σ w` (exact).
//! W4: the nibbles `w + 8` (u8, 0..=15) are the unsigned operand and the raw activations
//! the signed one; each group's sum is corrected by `8·Σ qx` before the float combine.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::driver::{CTile, Tile, W4Kernel, W4Tile, W4TileFn, W8Finish, W8Kernel, W8TileFn, LDC};
use super::scalar;

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
        for (r, sum_r) in sum.iter().enumerate() {
            for (p, v) in sum_r.iter().enumerate() {
                _mm512_storeu_ps(c.as_mut_ptr().add(r * LDC + p * 16), *v);
            }
        }
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

fn w8_table(mr: usize, np: usize) -> W8TileFn {
    tile_table!(w8_zmm, W8TileFn, mr, np; 1 2 3 4 5 6 7 8; 1 2 3)
}

fn w4_table(mr: usize, np: usize) -> W4TileFn {
    tile_table!(w4_zmm, W4TileFn, mr, np; 1 2 3 4 5 6; 1 2)
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
    tile: w8_table,
    finish: Some(w8_finish),
};
/// The zmm W4 microkernels (6 rows × 2 panels: 12 integer + 12 float accumulators).
pub(crate) static W4: W4Kernel = W4Kernel {
    mr: 6,
    np: 2,
    tile: w4_table,
};

/// `round_half_away(v)` clamped to [-127, 127] as i32 lanes, bit-equal to
/// `scalar::quantize_one` for finite `v`: `t = trunc(v)`, `d = v - t` (exact), `t ± 1`
/// where `|d| ≥ 0.5`.
#[inline(always)]
unsafe fn round_clamp(v: __m512) -> __m512i {
    // SAFETY: register-only AVX-512 F operations; the caller guarantees the features.
    unsafe {
        let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
        round_clamp_from(v, t, _mm512_abs_ps(_mm512_sub_ps(v, t)))
    }
}

/// [`round_clamp`] given `t = trunc(v)` and `d = |v - t|`.
#[inline(always)]
unsafe fn round_clamp_from(v: __m512, t: __m512, d: __m512) -> __m512i {
    // SAFETY: register-only AVX-512 F operations; the caller guarantees the features.
    unsafe {
        let big = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(d, _mm512_set1_ps(0.5));
        // ±1.0 with v's sign, by integer ops: the float and/or forms need AVX-512 DQ,
        // which these functions do not enable (they would become out-of-line calls).
        let sign = _mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(i32::MIN));
        let one = _mm512_castsi512_ps(_mm512_or_si512(sign, _mm512_set1_epi32(0x3F80_0000)));
        let r = _mm512_mask_add_ps(t, big, t, one);
        let r = _mm512_min_ps(
            _mm512_max_ps(r, _mm512_set1_ps(-127.0)),
            _mm512_set1_ps(127.0),
        );
        _mm512_cvttps_epi32(r)
    }
}

/// Distance from a half-integer below which [`quant16`] falls back to dividing.
///
/// Why multiplying by `inv = fl(1/s)` is then exact: for normal `s`, `inv` is normal with
/// relative error ≤ 2⁻²⁴, and `|y/s| ≤ 127·(1 + 2⁻²³)` because `s = fl(amax/127)` (given
/// scales promise no such bound, so they always divide). So
/// `|fl(y·inv) − y/s| ≤ 128·(2⁻²³ + 2⁻⁴⁸) < 2⁻¹⁶·1.01` and `|fl(y/s) − y/s| ≤ 2⁻¹⁸`:
/// the two quotients differ by less than 2⁻¹⁵. If `fl(y·inv)` is at least 2⁻¹⁴ away from
/// every half-integer, both lie strictly between the same two half-integers and round to
/// the same integer. `d − 0.5` is exact for `d ∈ [0.25, 1)` (Sterbenz) and far from the
/// guard below that.
const HALF_GUARD: f32 = 1.0 / 16384.0;

/// Loads `y = x[c..c+n] (* smooth[c..c+n])`, `n ≤ 16` lanes (the rest 0).
#[inline(always)]
unsafe fn load_y(x: *const f32, s: Option<*const f32>, m: __mmask16) -> __m512 {
    // SAFETY: the caller guarantees the masked lanes are readable.
    unsafe {
        let y = _mm512_maskz_loadu_ps(m, x);
        match s {
            Some(s) => _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, s)),
            None => y,
        }
    }
}

fn mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// Flat index of the first non-finite smoothed value of a row (scalar scan).
fn first_bad(xr: &[f32], smooth: Option<&[f32]>, row_start: usize) -> usize {
    let c = (0..xr.len())
        .find(|&c| !scalar::smoothed(xr[c], smooth, c).is_finite())
        .expect("a non-finite lane was detected in this row");
    row_start + c
}

/// The divisor of a row: `s`, and `1/s` when the faster multiply is exact (see
/// [`HALF_GUARD`]): `s` normal and `|y/s| ≤ 128` for the row, which holds for computed
/// scales; given scales pass `inv: None`.
#[derive(Clone, Copy)]
struct Divisor {
    s: __m512,
    inv: Option<__m512>,
}

/// `round_clamp(y / s)` of the 16 lanes at offset `c` (masked by `m`), bit-equal to the
/// division. A function, not a closure: closures do not inherit the caller's target
/// features, so the intrinsics in one become out-of-line calls.
#[inline(always)]
unsafe fn quant16(
    x: *const f32,
    sm: Option<*const f32>,
    c: usize,
    div: Divisor,
    m: __mmask16,
) -> __m512i {
    // SAFETY: the caller guarantees the masked lanes are readable and the features.
    unsafe {
        let y = load_y(x.add(c), sm.map(|s| s.add(c)), m);
        if let Some(inv) = div.inv {
            let v = _mm512_mul_ps(y, inv);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let d = _mm512_abs_ps(_mm512_sub_ps(v, t));
            let off = _mm512_abs_ps(_mm512_sub_ps(d, _mm512_set1_ps(0.5)));
            if _mm512_cmp_ps_mask::<_CMP_LT_OQ>(off, _mm512_set1_ps(HALF_GUARD)) == 0 {
                return round_clamp_from(v, t, d);
            }
        }
        round_clamp(_mm512_div_ps(y, div.s))
    }
}

/// `|y|` of the 16 lanes at offset `c` (masked by `m`); see [`quant16`].
#[inline(always)]
unsafe fn abs16(x: *const f32, sm: Option<*const f32>, c: usize, m: __mmask16) -> __m512 {
    // SAFETY: the caller guarantees the masked lanes are readable and the features.
    unsafe { _mm512_abs_ps(load_y(x.add(c), sm.map(|s| s.add(c)), m)) }
}

/// Quantizes one finite row with scale `s` (`s == 0` gives zeros).
///
/// `computed` says `s` is the row's own `amax / 127`, so `|y/s| ≤ 128` and the exact
/// reciprocal multiply of [`quant16`] may be used when `s` is normal.
#[inline(always)]
unsafe fn quantize_row(xr: &[f32], smooth: Option<&[f32]>, s: f32, computed: bool, qr: &mut [i8]) {
    if s == 0.0 {
        qr.fill(0);
        return;
    }
    // SAFETY: full-vector accesses stay below `n`; the tail is masked to the row's
    // `n = xr.len()` (= `qr.len()`) elements.
    unsafe {
        let vs = Divisor {
            s: _mm512_set1_ps(s),
            // (not `bool::then`: a closure would not inline the intrinsic)
            inv: if computed && s.is_normal() {
                Some(_mm512_set1_ps(1.0 / s))
            } else {
                None
            },
        };
        let (x, sm, q) = (xr.as_ptr(), smooth.map(|s| s.as_ptr()), qr.as_mut_ptr());
        let n = xr.len();
        // 64 values a step, narrowed in registers (values are already in [-127, 127], so
        // the saturating packs are exact) and stored as one vector: a narrowing store to
        // memory (`vpmovsdb m, zmm`) is several times slower on some cores.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let mut c = 0;
        while c + 64 <= n {
            let ab = _mm512_packs_epi32(
                quant16(x, sm, c, vs, 0xFFFF),
                quant16(x, sm, c + 16, vs, 0xFFFF),
            );
            let cd = _mm512_packs_epi32(
                quant16(x, sm, c + 32, vs, 0xFFFF),
                quant16(x, sm, c + 48, vs, 0xFFFF),
            );
            // Per 128-bit lane l: a[4l..4l+4] b[4l..] c[4l..] d[4l..]; regroup the dwords.
            let v = _mm512_permutexvar_epi32(order, _mm512_packs_epi16(ab, cd));
            _mm512_storeu_si512(q.add(c).cast(), v);
            c += 64;
        }
        while c < n {
            let m = mask(n - c);
            _mm512_mask_cvtsepi32_storeu_epi8(q.add(c).cast(), m, quant16(x, sm, c, vs, m));
            c += 16;
        }
    }
}

/// `max |y|` over a row (`y` = `x` or `x·smooth`), or `Err(())` if some `y` is not finite.
#[inline(always)]
unsafe fn row_absmax(xr: &[f32], smooth: Option<&[f32]>) -> Result<f32, ()> {
    // SAFETY: full-vector loads stay below `n = xr.len()` (= `smooth.len()`); the tail
    // is masked.
    unsafe {
        let (x, sm, n) = (xr.as_ptr(), smooth.map(|s| s.as_ptr()), xr.len());
        let inf = _mm512_set1_ps(f32::INFINITY);
        let mut vmax = [_mm512_setzero_ps(); 4];
        let mut c = 0;
        // Four independent maxima, one finiteness test per 64 values (`|y| < inf` is
        // false for NaN and ±inf).
        while c + 64 <= n {
            let mut finite: __mmask16 = 0xFFFF;
            for (j, m) in vmax.iter_mut().enumerate() {
                let y = abs16(x, sm, c + 16 * j, 0xFFFF);
                finite &= _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, inf);
                *m = _mm512_max_ps(*m, y);
            }
            if finite != 0xFFFF {
                return Err(());
            }
            c += 64;
        }
        while c < n {
            let y = abs16(x, sm, c, mask(n - c));
            if _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, inf) != 0xFFFF {
                return Err(());
            }
            vmax[0] = _mm512_max_ps(vmax[0], y);
            c += 16;
        }
        let m = _mm512_max_ps(
            _mm512_max_ps(vmax[0], vmax[1]),
            _mm512_max_ps(vmax[2], vmax[3]),
        );
        Ok(_mm512_reduce_max_ps(m))
    }
}

/// Fused per-row quantization (zmm); same results as `scalar::quantize_rows_i8`.
///
/// # Safety
/// AVX-512 F/BW/VL must be available; slice lengths as checked by the safe entry point
/// (`x.len() == q.len() == scales.len() * cols`, `smooth.len() == cols`, `cols > 0`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize_rows_i8(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    q: &mut [i8],
    scales: &mut [f32],
) -> Result<(), usize> {
    for (r, scale) in scales.iter_mut().enumerate() {
        let xr = &x[r * cols..(r + 1) * cols];
        // SAFETY: features guaranteed by the caller; `smooth` is `cols` long.
        let amax =
            unsafe { row_absmax(xr, smooth) }.map_err(|()| first_bad(xr, smooth, r * cols))?;
        let s = amax / 127.0;
        *scale = s;
        // SAFETY: features guaranteed by the caller; `qr` is as long as `xr`.
        unsafe { quantize_row(xr, smooth, s, true, &mut q[r * cols..(r + 1) * cols]) };
    }
    Ok(())
}

/// Per-row quantization with given scales (zmm); same results as the scalar twin.
///
/// # Safety
/// As [`quantize_rows_i8`], with `scales` finite and ≥ 0.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize_rows_i8_with_scales(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    scales: &[f32],
    q: &mut [i8],
) -> Result<(), usize> {
    for (r, &s) in scales.iter().enumerate() {
        let xr = &x[r * cols..(r + 1) * cols];
        // SAFETY: features guaranteed by the caller; `smooth` and `qr` are `cols` long.
        unsafe {
            row_absmax(xr, smooth).map_err(|()| first_bad(xr, smooth, r * cols))?;
            quantize_row(xr, smooth, s, false, &mut q[r * cols..(r + 1) * cols]);
        }
    }
    Ok(())
}
