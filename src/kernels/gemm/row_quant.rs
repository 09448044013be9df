//! The activation row quantization of the integer GEMM, written once over [`F32Vector`]
//! and instantiated per ISA by [`row_quant_kernels!`] in `avx2.rs` (`__m256`), `avx512.rs`
//! (`__m512`) and `neon.rs` (`float32x4_t`).
//!
//! Same bits as `scalar.rs` (the module docs of `gemm` give the formula): per row,
//!
//! 1. `max |y|` (`y = x` or `x · smooth`, one f32 multiply) as an integer max over the
//!    sign-cleared bit patterns, four independent accumulators: for non-negative floats
//!    integer order is float order and NaN/±Inf have the largest patterns, so one compare
//!    of the row's maximum against `0x7f80_0000` detects a non-finite `y` (then a scalar
//!    scan names the first one, as the contract asks);
//! 2. `scale = amax / 127` (scalar f32 division, as in the twin), or the given scale;
//! 3. `q = round_half_away(clamp(y / scale, -127, 127))`, an IEEE division per lane.
//!    Clamping before rounding gives the twin's `clamp(round(·))`: both are monotone and
//!    ±127 are integers; after the clamp [`F32Vector::round_half_away`] is exact. `y /
//!    scale` is never NaN (`y` finite, `scale > 0`); `±Inf` (a tiny given scale) clamps.
//!
//! With `RECIPROCAL` (the AVX-512 instantiation, where it is faster than `vdivps`) a row
//! whose scale is its own `amax / 127` and normal multiplies by `fl(1 / scale)` instead
//! of dividing, vector by vector, where that provably rounds the same (see
//! [`HALF_GUARD`]); a vector with a lane near a half-integer divides.
//!
//! Tails shorter than a vector run the scalar twin's element formula (the same IEEE
//! operations). Every function is `#[inline(always)]` and `unsafe` only for the CPU
//! features of its vector type: the `#[target_feature]` functions [`row_quant_kernels!`]
//! emits are where it is compiled, and every slice access is bounds-checked.

use super::scalar;
use crate::kernels::simd::F32Vector;

/// Sign-cleared bit pattern of +Inf: a row maximum at or above it means NaN or ±Inf.
const INF_BITS: u32 = 0x7f80_0000;

/// Distance from a half-integer below which the `RECIPROCAL` path falls back to dividing.
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

/// See `scalar::quantize_rows_i8`; lengths already checked by the caller (`x.len() ==
/// q.len() == scales.len() · cols`, `smooth.len() == cols`).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(super) unsafe fn quantize_rows_i8<V: F32Vector, const RECIPROCAL: bool>(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    q: &mut [i8],
    scales: &mut [f32],
) -> Result<(), usize> {
    for (r, scale) in scales.iter_mut().enumerate() {
        let xr = &x[r * cols..(r + 1) * cols];
        // SAFETY: `V`'s features (caller).
        let amax =
            unsafe { row_amax::<V>(xr, smooth) }.ok_or_else(|| first_bad(xr, smooth, r * cols))?;
        let s = amax / 127.0;
        *scale = s;
        let qr = &mut q[r * cols..(r + 1) * cols];
        // SAFETY: `V`'s features (caller).
        unsafe { quantize_row::<V>(xr, smooth, s, RECIPROCAL && s.is_normal(), qr) };
    }
    Ok(())
}

/// See `scalar::quantize_rows_i8_with_scales`; lengths as in [`quantize_rows_i8`],
/// `scales` finite and ≥ 0 (checked by the caller).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(super) unsafe fn quantize_rows_i8_with_scales<V: F32Vector>(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    scales: &[f32],
    q: &mut [i8],
) -> Result<(), usize> {
    for (r, &s) in scales.iter().enumerate() {
        let xr = &x[r * cols..(r + 1) * cols];
        // SAFETY: `V`'s features (caller).
        unsafe { row_amax::<V>(xr, smooth) }.ok_or_else(|| first_bad(xr, smooth, r * cols))?;
        // SAFETY: `V`'s features (caller).
        unsafe { quantize_row::<V>(xr, smooth, s, false, &mut q[r * cols..(r + 1) * cols]) };
    }
    Ok(())
}

/// Flat index of the first non-finite `y` of a row known to hold one (scalar scan).
fn first_bad(xr: &[f32], smooth: Option<&[f32]>, row_start: usize) -> usize {
    let c = (0..xr.len())
        .find(|&c| !scalar::smoothed(xr[c], smooth, c).is_finite())
        .expect("a non-finite lane was detected in this row");
    row_start + c
}

/// `y = x[c..c + LANES] (· smooth[c..c + LANES])`.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn load_y<V: F32Vector>(x: &[f32], smooth: Option<&[f32]>, c: usize) -> V {
    // SAFETY: `V`'s features (caller).
    unsafe {
        let y = V::load(x, c);
        match smooth {
            Some(s) => y.mul(V::load(s, c)),
            None => y,
        }
    }
}

/// The row's `max |y|`, or `None` when some `y` is NaN or ±Inf.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn row_amax<V: F32Vector>(xr: &[f32], smooth: Option<&[f32]>) -> Option<f32> {
    let (n, l) = (xr.len(), V::LANES);
    let mut c = 0;
    // SAFETY: `V`'s features (caller).
    let mut m = unsafe {
        let mut acc = [V::splat(0.0); 4];
        while c + 4 * l <= n {
            acc[0] = acc[0].max_bits(load_y::<V>(xr, smooth, c).abs());
            acc[1] = acc[1].max_bits(load_y::<V>(xr, smooth, c + l).abs());
            acc[2] = acc[2].max_bits(load_y::<V>(xr, smooth, c + 2 * l).abs());
            acc[3] = acc[3].max_bits(load_y::<V>(xr, smooth, c + 3 * l).abs());
            c += 4 * l;
        }
        while c + l <= n {
            acc[0] = acc[0].max_bits(load_y::<V>(xr, smooth, c).abs());
            c += l;
        }
        let m = acc[0].max_bits(acc[1]).max_bits(acc[2].max_bits(acc[3]));
        m.reduce_max_bits()
    };
    for (c, &v) in xr.iter().enumerate().skip(c) {
        m = m.max(scalar::smoothed(v, smooth, c).to_bits() & 0x7fff_ffff);
    }
    if m < INF_BITS {
        Some(f32::from_bits(m))
    } else {
        None
    }
}

/// Quantizes one finite row with scale `s` (`s == 0` gives zeros). `reciprocal`: `s` is
/// the row's own normal `amax / 127`, so the multiply of [`quant`] may be used.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn quantize_row<V: F32Vector>(
    xr: &[f32],
    smooth: Option<&[f32]>,
    s: f32,
    reciprocal: bool,
    qr: &mut [i8],
) {
    if s == 0.0 {
        qr.fill(0);
        return;
    }
    let (n, l) = (xr.len(), V::LANES);
    let mut c = 0;
    // SAFETY: `V`'s features (caller).
    unsafe {
        let div = Divisor {
            s: V::splat(s),
            // (not `bool::then`: a closure would not inline the vector operation)
            inv: if reciprocal {
                Some(V::splat(1.0 / s))
            } else {
                None
            },
        };
        // Four vectors a step, narrowed in registers and stored as one (values are in
        // [-127, 127], so the narrowing is exact): a narrowing store to memory is several
        // times slower on some cores.
        while c + 4 * l <= n {
            let r0 = quant(load_y::<V>(xr, smooth, c), div);
            let r1 = quant(load_y::<V>(xr, smooth, c + l), div);
            let r2 = quant(load_y::<V>(xr, smooth, c + 2 * l), div);
            let r3 = quant(load_y::<V>(xr, smooth, c + 3 * l), div);
            V::store_i8x4([r0, r1, r2, r3], qr, c);
            c += 4 * l;
        }
        while c + l <= n {
            V::store_i8(quant(load_y::<V>(xr, smooth, c), div), qr, c);
            c += l;
        }
    }
    scalar::quantize_row(&xr[c..], smooth.map(|s| &s[c..]), s, &mut qr[c..]);
}

/// The divisor of a row: `s`, and `1/s` when the faster multiply is exact (see
/// [`HALF_GUARD`]).
#[derive(Clone, Copy)]
struct Divisor<V> {
    s: V,
    inv: Option<V>,
}

/// `round_half_away(clamp(y / s, -127, 127))` per lane (see the module docs), through the
/// reciprocal when `div.inv` is set and no lane of `y · inv` is near a half-integer.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn quant<V: F32Vector>(y: V, div: Divisor<V>) -> V::I32 {
    // SAFETY: `V`'s features (caller).
    unsafe {
        if let Some(inv) = div.inv {
            let v = y.mul(inv);
            let d = v.sub(v.trunc()).abs();
            let off = d.sub(V::splat(0.5)).abs();
            if V::mask_bits(off.lt(V::splat(HALF_GUARD))) == 0 {
                return round_clamp(v);
            }
        }
        round_clamp(y.div(div.s))
    }
}

/// `round_half_away(clamp(v, -127, 127))` as i32 lanes, for non-NaN `v`.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn round_clamp<V: F32Vector>(v: V) -> V::I32 {
    // SAFETY: `V`'s features (caller).
    unsafe {
        v.max(V::splat(-127.0))
            .min(V::splat(127.0))
            .round_half_away()
    }
}

/// Emits one ISA's row quantization kernels in the invoking module: `quantize_rows_i8` and
/// `quantize_rows_i8_with_scales`, `#[target_feature(enable = $feat)]` instantiations of
/// this file's algorithm for `$vec` (`$reciprocal`: whether computed scales may use the
/// exact reciprocal multiply, see [`HALF_GUARD`]).
///
/// The invoking module vouches that `$feat` covers `$vec`'s [`F32Vector`] operations; the
/// dispatch in `gemm/mod.rs` calls the kernels only through a table whose features were detected.
macro_rules! row_quant_kernels {
    ($vec:ty, $feat:literal, $reciprocal:literal) => {
        /// This ISA's row quantizations, for its kernel tables.
        pub(crate) const ROW_QUANT: super::table::RowQuant = super::table::RowQuant {
            quantize: quantize_rows_i8,
            with_scales: quantize_rows_i8_with_scales,
        };

        /// Fused per-row quantization; same results as `scalar::quantize_rows_i8` (see
        /// `row_quant.rs`).
        ///
        /// # Safety
        /// The CPU must have the enabled features; lengths as checked by the safe entry
        /// point (`x.len() == q.len() == scales.len() * cols`, `smooth.len() == cols`).
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn quantize_rows_i8(
            x: &[f32],
            cols: usize,
            smooth: Option<&[f32]>,
            q: &mut [i8],
            scales: &mut [f32],
        ) -> Result<(), usize> {
            // SAFETY: the enabled features cover the vector type's operations.
            unsafe {
                super::row_quant::quantize_rows_i8::<$vec, $reciprocal>(x, cols, smooth, q, scales)
            }
        }

        /// Per-row quantization with given scales; same results as the scalar twin.
        ///
        /// # Safety
        /// As [`quantize_rows_i8`], with `scales` finite and ≥ 0.
        #[target_feature(enable = $feat)]
        pub(crate) unsafe fn quantize_rows_i8_with_scales(
            x: &[f32],
            cols: usize,
            smooth: Option<&[f32]>,
            scales: &[f32],
            q: &mut [i8],
        ) -> Result<(), usize> {
            // SAFETY: the enabled features cover the vector type's operations.
            unsafe {
                super::row_quant::quantize_rows_i8_with_scales::<$vec>(x, cols, smooth, scales, q)
            }
        }
    };
}
pub(super) use row_quant_kernels;
