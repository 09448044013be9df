//! AVX-512 VNNI kernels on zmm registers: `vpdpbusd` (u8 × s8 → i32, 4 products per
//! lane, no saturation) over the 64-byte panel lines, plus the fused row quantization.
//!
//! W8: activations enter as `qx + 128` (u8) and the driver subtracts `128·Σ w` (exact).
//! W4: the nibbles `w + 8` (u8, 0..=15) are the unsigned operand and the raw activations
//! the signed one; each group's sum is corrected by `8·Σ qx` before the float combine.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::driver::{CTile, Tile, W4Kernel, W4Tile, W4TileFn, W8Kernel, W8TileFn, LDC};
use super::scalar;

/// W8 tile, `MR` rows × `NP` panels; 6 × 4 = 24 accumulators + 4 weight registers.
///
/// # Safety
/// AVX-512 F and VNNI must be available; `t` must describe readable memory (see
/// [`Tile`]) with `MR ≤ 8`, `NP ≤ 4`.
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
    tile_table!(w8_zmm, W8TileFn, mr, np; 1 2 3 4 5 6; 1 2 3 4)
}

fn w4_table(mr: usize, np: usize) -> W4TileFn {
    tile_table!(w4_zmm, W4TileFn, mr, np; 1 2 3 4 5 6; 1 2)
}

/// The zmm W8 microkernels (6 rows × 4 panels of 16 channels).
pub(crate) static W8: W8Kernel = W8Kernel {
    mr: 6,
    np: 4,
    shifted: true,
    tile: w8_table,
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
        let d = _mm512_sub_ps(v, t);
        let big = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(d), _mm512_set1_ps(0.5));
        let one = _mm512_or_ps(_mm512_and_ps(v, _mm512_set1_ps(-0.0)), _mm512_set1_ps(1.0));
        let r = _mm512_mask_add_ps(t, big, t, one);
        let r = _mm512_min_ps(
            _mm512_max_ps(r, _mm512_set1_ps(-127.0)),
            _mm512_set1_ps(127.0),
        );
        _mm512_cvttps_epi32(r)
    }
}

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

/// Quantizes one finite row with scale `s` (`s == 0` gives zeros).
#[inline(always)]
unsafe fn quantize_row(xr: &[f32], smooth: Option<&[f32]>, s: f32, qr: &mut [i8]) {
    if s == 0.0 {
        qr.fill(0);
        return;
    }
    // SAFETY: every access is masked to the row's `xr.len()` (= `qr.len()`) elements.
    unsafe {
        let vs = _mm512_set1_ps(s);
        let mut c = 0;
        while c < xr.len() {
            let m = mask(xr.len() - c);
            let y = load_y(xr.as_ptr().add(c), smooth.map(|s| s.as_ptr().add(c)), m);
            let q = round_clamp(_mm512_div_ps(y, vs));
            _mm512_mask_cvtsepi32_storeu_epi8(qr.as_mut_ptr().add(c).cast(), m, q);
            c += 16;
        }
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
        // SAFETY: masked loads inside `xr` / `smooth` (both `cols` long).
        let amax = unsafe {
            let inf = _mm512_set1_ps(f32::INFINITY);
            let mut vmax = _mm512_setzero_ps();
            let mut c = 0;
            while c < cols {
                let m = mask(cols - c);
                let y = _mm512_abs_ps(load_y(
                    xr.as_ptr().add(c),
                    smooth.map(|s| s.as_ptr().add(c)),
                    m,
                ));
                if _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, inf) != 0xFFFF {
                    return Err(first_bad(xr, smooth, r * cols));
                }
                vmax = _mm512_max_ps(vmax, y);
                c += 16;
            }
            _mm512_reduce_max_ps(vmax)
        };
        let s = amax / 127.0;
        *scale = s;
        // SAFETY: features guaranteed by the caller; `qr` is as long as `xr`.
        unsafe { quantize_row(xr, smooth, s, &mut q[r * cols..(r + 1) * cols]) };
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
        // SAFETY: masked loads inside `xr` / `smooth`.
        unsafe {
            let inf = _mm512_set1_ps(f32::INFINITY);
            let mut c = 0;
            while c < cols {
                let m = mask(cols - c);
                let y = _mm512_abs_ps(load_y(
                    xr.as_ptr().add(c),
                    smooth.map(|s| s.as_ptr().add(c)),
                    m,
                ));
                if _mm512_cmp_ps_mask::<_CMP_LT_OQ>(y, inf) != 0xFFFF {
                    return Err(first_bad(xr, smooth, r * cols));
                }
                c += 16;
            }
            quantize_row(xr, smooth, s, &mut q[r * cols..(r + 1) * cols]);
        }
    }
    Ok(())
}
