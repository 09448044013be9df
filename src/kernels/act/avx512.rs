//! x86_64 AVX-512F activation kernels (16 f32 lanes): the operations of `scalar.rs` on
//! zmm registers, tails through masked loads and stores (masked-off lanes leave the
//! reduction accumulators untouched, as the scalar twin's lanes that get no element).

use core::arch::x86_64::*;

use super::generic;
use super::scalar::AttendRow;
use crate::kernels::detect::Avx512Vnni;

/// f32 lanes per vector (equal to `scalar::LANES`).
const LANES: usize = 16;

/// See [`super::scalar::softmax_row`]; `len <= row.len()` checked by the caller.
pub(crate) fn softmax_row(_cpu: Avx512Vnni, row: &mut [f32], len: usize, scale: f32) -> f32 {
    debug_assert!(len <= row.len());
    // SAFETY: holding the token proves the features `softmax_steps` enables; `len <=
    // row.len()`.
    unsafe { softmax_steps(row, len, scale) }
}

/// Lanes `0..n` of a mask (`n <= 16`).
#[inline(always)]
fn tail_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// `scalar::exp` on 16 lanes.
#[target_feature(enable = "avx512f,fma")]
#[inline]
fn exp16(x: __m512) -> __m512 {
    // SAFETY: the enabled features cover `__m512`'s operations.
    unsafe { generic::exp::<__m512>(x) }
}

/// Horizontal maximum by halves (`scalar::reduce` with `max_op`): 16 → 8 → 4 → 2 → 1.
#[target_feature(enable = "avx512f,fma")]
fn reduce_max16(v: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let v8 = _mm256_max_ps(_mm512_castps512_ps256(v), hi);
    let v4 = _mm_max_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
    let v2 = _mm_max_ps(v4, _mm_movehl_ps(v4, v4));
    _mm_cvtss_f32(_mm_max_ps(v2, _mm_shuffle_ps::<0b01>(v2, v2)))
}

/// Horizontal sum by halves (`scalar::reduce` with `+`): 16 → 8 → 4 → 2 → 1.
#[target_feature(enable = "avx512f,fma")]
fn reduce_add16(v: __m512) -> f32 {
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
    let v8 = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
    let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    _mm_cvtss_f32(_mm_add_ps(v2, _mm_shuffle_ps::<0b01>(v2, v2)))
}

/// # Safety
/// The CPU must support AVX-512F and FMA; `len <= row.len()`.
#[target_feature(enable = "avx512f,fma")]
unsafe fn softmax_steps(row: &mut [f32], len: usize, scale: f32) -> f32 {
    row[len..].fill(0.0);
    if len == 0 {
        return 1.0;
    }
    let p = row.as_mut_ptr();
    let full = len / LANES * LANES;
    let rem = tail_mask(len - full);
    let s = _mm512_set1_ps(scale);
    // Pass 1: the maximum of the scaled scores.
    let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
    for i in (0..full).step_by(LANES) {
        // SAFETY: `i + 16 <= len <= row.len()`.
        let x = unsafe { _mm512_loadu_ps(p.add(i)) };
        acc = _mm512_max_ps(acc, _mm512_mul_ps(x, s));
    }
    if full < len {
        // SAFETY: the masked load reads only lanes `full..len`.
        let x = unsafe { _mm512_maskz_loadu_ps(rem, p.add(full)) };
        acc = _mm512_mask_max_ps(acc, rem, acc, _mm512_mul_ps(x, s));
    }
    let m = _mm512_set1_ps(reduce_max16(acc));
    // Pass 2: exponentials, stored, and their sum.
    let mut acc = _mm512_setzero_ps();
    for i in (0..full).step_by(LANES) {
        // SAFETY: as in pass 1; the store covers the same 16 elements.
        unsafe {
            let e = exp16(_mm512_sub_ps(
                _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), s),
                m,
            ));
            _mm512_storeu_ps(p.add(i), e);
            acc = _mm512_add_ps(acc, e);
        }
    }
    if full < len {
        // SAFETY: masked load and store of lanes `full..len` only.
        unsafe {
            let x = _mm512_maskz_loadu_ps(rem, p.add(full));
            let e = exp16(_mm512_sub_ps(_mm512_mul_ps(x, s), m));
            _mm512_mask_storeu_ps(p.add(full), rem, e);
            acc = _mm512_mask_add_ps(acc, rem, acc, e);
        }
    }
    let sum = reduce_add16(acc);
    // Pass 3: normalise.
    let inv = _mm512_set1_ps(1.0 / sum);
    for i in (0..full).step_by(LANES) {
        // SAFETY: as in pass 1.
        unsafe { _mm512_storeu_ps(p.add(i), _mm512_mul_ps(_mm512_loadu_ps(p.add(i)), inv)) };
    }
    if full < len {
        // SAFETY: masked load and store of lanes `full..len` only.
        unsafe {
            let x = _mm512_maskz_loadu_ps(rem, p.add(full));
            _mm512_mask_storeu_ps(p.add(full), rem, _mm512_mul_ps(x, inv));
        }
    }
    sum
}

/// See [`super::scalar::attend_row`]; the caller checked that every key and value row
/// (`j < scores.len()`, at `j · stride`, `q.len()` floats) is inside its slice and that
/// `out.len() == q.len()`.
pub(crate) fn attend_row(
    _cpu: Avx512Vnni,
    a: &AttendRow,
    scores: &mut [f32],
    out: &mut [f32],
) -> f32 {
    let (d, len) = (a.q.len(), scores.len());
    debug_assert_eq!(out.len(), d);
    debug_assert!(len == 0 || ((len - 1) * a.stride + d <= a.keys.len().min(a.values.len())));
    // SAFETY: the token proves AVX-512F and FMA; the rows are in bounds (caller).
    unsafe {
        for (j, s) in scores.iter_mut().enumerate() {
            *s = dot_steps(a.q.as_ptr(), a.keys.as_ptr().add(j * a.stride), d);
        }
        let sum = softmax_steps(scores, len, a.scale);
        axpy_rows(scores, a.values.as_ptr(), a.stride, out);
        sum
    }
}

/// `scalar::dot` of `d` floats at `a` and `b`: one 16-lane accumulator (element `i` in
/// lane `i % 16`), the tail by a masked FMA that leaves the other lanes as they are.
///
/// # Safety
/// AVX-512F and FMA; `a` and `b` valid for `d` float reads.
#[target_feature(enable = "avx512f,fma")]
unsafe fn dot_steps(a: *const f32, b: *const f32, d: usize) -> f32 {
    let full = d / LANES * LANES;
    let mut acc = _mm512_setzero_ps();
    for i in (0..full).step_by(LANES) {
        // SAFETY: `i + 16 <= d`.
        unsafe { acc = _mm512_fmadd_ps(_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(b.add(i)), acc) };
    }
    if full < d {
        let m = tail_mask(d - full);
        // SAFETY: masked loads of lanes `full..d` only.
        unsafe {
            let (x, y) = (
                _mm512_maskz_loadu_ps(m, a.add(full)),
                _mm512_maskz_loadu_ps(m, b.add(full)),
            );
            acc = _mm512_mask3_fmadd_ps(x, y, acc, m);
        }
    }
    reduce_add16(acc)
}

/// `out[i] = Σ_j p[j] · v_j[i]` (row `j` at `v + j · stride`), one FMA chain per element in
/// increasing `j` from 0. Up to [`AXPY_VECS`] registers of `out` (16 elements each) are
/// summed side by side, so their independent chains hide the FMA latency.
///
/// # Safety
/// AVX-512F and FMA; `v + j · stride` valid for `out.len()` float reads for every
/// `j < p.len()`.
#[target_feature(enable = "avx512f,fma")]
unsafe fn axpy_rows(p: &[f32], v: *const f32, stride: usize, out: &mut [f32]) {
    let d = out.len();
    let mut i0 = 0;
    while i0 < d {
        let n = (d - i0).div_ceil(LANES).min(AXPY_VECS);
        // SAFETY: forwarded contract; the block covers elements `i0..min(i0 + n · 16, d)`.
        unsafe { by_vecs!(n, axpy_block(p, v, stride, out, i0)) };
        i0 += n * LANES;
    }
}

/// Registers of `out` that [`axpy_rows`] keeps in flight.
const AXPY_VECS: usize = 8;

/// [`axpy_rows`] on the `N` registers of `out` from element `i0` (the last one masked to
/// `out.len()`).
///
/// # Safety
/// As [`axpy_rows`]; `i0 + (N - 1) · 16 < out.len()`.
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn axpy_block<const N: usize>(
    p: &[f32],
    v: *const f32,
    stride: usize,
    out: &mut [f32],
    i0: usize,
) {
    let d = out.len();
    let masks: [__mmask16; N] =
        core::array::from_fn(|k| tail_mask((d - i0 - k * LANES).min(LANES)));
    let mut acc = [_mm512_setzero_ps(); N];
    for (j, &pj) in p.iter().enumerate() {
        let pv = _mm512_set1_ps(pj);
        // SAFETY: row `j` from element `i0` (caller); the loads below are masked to `d`.
        let row = unsafe { v.add(j * stride + i0) };
        for k in 0..N {
            // SAFETY: lanes `i0 + k · 16..` of row `j`, masked to `d`.
            let x = unsafe { _mm512_maskz_loadu_ps(masks[k], row.add(k * LANES)) };
            acc[k] = _mm512_fmadd_ps(pv, x, acc[k]);
        }
    }
    let o = out.as_mut_ptr();
    for k in 0..N {
        // SAFETY: lanes `i0 + k · 16..` of `out`, masked to `d`.
        unsafe { _mm512_mask_storeu_ps(o.add(i0 + k * LANES), masks[k], acc[k]) };
    }
}

// The `Avx512Vnni` token proves avx512f,avx512bw,fma (`detect.rs`), which cover every `__m512` operation
// of the generic kernels.
generic::act_kernels!(Avx512Vnni, __m512, "avx512f,avx512bw,fma");
