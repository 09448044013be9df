//! x86_64 AVX2 + FMA activation kernels (8 f32 lanes): the operations of `scalar.rs` on
//! ymm registers. The softmax keeps two accumulators, so element `j` of a row meets the
//! same partial sum (`j % 16`) as in the scalar twin; tails use `vmaskmovps` and blends,
//! which leave masked-off accumulator lanes untouched.

use core::arch::x86_64::*;

use super::generic;
use super::scalar::AttendRow;
use crate::kernels::detect::Avx2;

/// f32 lanes per vector; two vectors make `scalar::LANES`.
const LANES: usize = 8;

/// See [`super::scalar::softmax_row`]; `len <= row.len()` checked by the caller.
pub(crate) fn softmax_row(_cpu: Avx2, row: &mut [f32], len: usize, scale: f32) -> f32 {
    debug_assert!(len <= row.len());
    // SAFETY: holding the token proves the features `softmax_steps` enables; `len <=
    // row.len()`.
    unsafe { softmax_steps(row, len, scale) }
}

/// All-ones in lanes `0..n` (`n <= 8`), zero elsewhere.
#[target_feature(enable = "avx2,fma")]
fn tail_mask(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// `scalar::exp` on 8 lanes.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp8(x: __m256) -> __m256 {
    // SAFETY: the enabled features cover `__m256`'s operations.
    unsafe { generic::exp::<__m256>(x) }
}

/// Horizontal maximum of the 16 lanes `a ‖ b` by halves (`scalar::reduce`).
#[target_feature(enable = "avx2,fma")]
fn reduce_max16(a: __m256, b: __m256) -> f32 {
    let v8 = _mm256_max_ps(a, b);
    let v4 = _mm_max_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
    let v2 = _mm_max_ps(v4, _mm_movehl_ps(v4, v4));
    _mm_cvtss_f32(_mm_max_ps(v2, _mm_shuffle_ps::<0b01>(v2, v2)))
}

/// Horizontal sum of the 16 lanes `a ‖ b` by halves (`scalar::reduce`).
#[target_feature(enable = "avx2,fma")]
fn reduce_add16(a: __m256, b: __m256) -> f32 {
    let v8 = _mm256_add_ps(a, b);
    let v4 = _mm_add_ps(_mm256_castps256_ps128(v8), _mm256_extractf128_ps::<1>(v8));
    let v2 = _mm_add_ps(v4, _mm_movehl_ps(v4, v4));
    _mm_cvtss_f32(_mm_add_ps(v2, _mm_shuffle_ps::<0b01>(v2, v2)))
}

/// # Safety
/// The CPU must support AVX2 and FMA; `len <= row.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_steps(row: &mut [f32], len: usize, scale: f32) -> f32 {
    row[len..].fill(0.0);
    if len == 0 {
        return 1.0;
    }
    let p = row.as_mut_ptr();
    let full = len / LANES * LANES;
    let rem = tail_mask(len - full);
    let remf = _mm256_castsi256_ps(rem);
    // The accumulator of the 8 elements starting at `i` (a multiple of 8).
    let slot = |i: usize| (i / LANES) % 2;
    let s = _mm256_set1_ps(scale);
    // Pass 1: the maximum of the scaled scores.
    let mut acc = [_mm256_set1_ps(f32::NEG_INFINITY); 2];
    for i in (0..full).step_by(LANES) {
        // SAFETY: `i + 8 <= len <= row.len()`.
        let x = unsafe { _mm256_loadu_ps(p.add(i)) };
        acc[slot(i)] = _mm256_max_ps(acc[slot(i)], _mm256_mul_ps(x, s));
    }
    if full < len {
        // SAFETY: the masked load reads only lanes `full..len`.
        let x = unsafe { _mm256_maskload_ps(p.add(full), rem) };
        let a = acc[slot(full)];
        acc[slot(full)] = _mm256_blendv_ps(a, _mm256_max_ps(a, _mm256_mul_ps(x, s)), remf);
    }
    let m = _mm256_set1_ps(reduce_max16(acc[0], acc[1]));
    // Pass 2: exponentials, stored, and their sum.
    let mut acc = [_mm256_setzero_ps(); 2];
    for i in (0..full).step_by(LANES) {
        // SAFETY: as in pass 1; the store covers the same 8 elements.
        unsafe {
            let e = exp8(_mm256_sub_ps(
                _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), s),
                m,
            ));
            _mm256_storeu_ps(p.add(i), e);
            acc[slot(i)] = _mm256_add_ps(acc[slot(i)], e);
        }
    }
    if full < len {
        // SAFETY: masked load and store of lanes `full..len` only.
        unsafe {
            let x = _mm256_maskload_ps(p.add(full), rem);
            let e = exp8(_mm256_sub_ps(_mm256_mul_ps(x, s), m));
            _mm256_maskstore_ps(p.add(full), rem, e);
            let a = acc[slot(full)];
            acc[slot(full)] = _mm256_blendv_ps(a, _mm256_add_ps(a, e), remf);
        }
    }
    let sum = reduce_add16(acc[0], acc[1]);
    // Pass 3: normalise.
    let inv = _mm256_set1_ps(1.0 / sum);
    for i in (0..full).step_by(LANES) {
        // SAFETY: as in pass 1.
        unsafe { _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv)) };
    }
    if full < len {
        // SAFETY: masked load and store of lanes `full..len` only.
        unsafe {
            let x = _mm256_maskload_ps(p.add(full), rem);
            _mm256_maskstore_ps(p.add(full), rem, _mm256_mul_ps(x, inv));
        }
    }
    sum
}

/// See [`super::scalar::attend_row`]; the caller checked that every key and value row
/// (`j < scores.len()`, at `j · stride`, `q.len()` floats) is inside its slice and that
/// `out.len() == q.len()`.
pub(crate) fn attend_row(_cpu: Avx2, a: &AttendRow, scores: &mut [f32], out: &mut [f32]) -> f32 {
    let (d, len) = (a.q.len(), scores.len());
    debug_assert_eq!(out.len(), d);
    debug_assert!(len == 0 || ((len - 1) * a.stride + d <= a.keys.len().min(a.values.len())));
    // SAFETY: the token proves AVX2 and FMA; the rows are in bounds (caller).
    unsafe {
        for (j, s) in scores.iter_mut().enumerate() {
            *s = dot_steps(a.q.as_ptr(), a.keys.as_ptr().add(j * a.stride), d);
        }
        let sum = softmax_steps(scores, len, a.scale);
        axpy_rows(scores, a.values.as_ptr(), a.stride, out);
        sum
    }
}

/// `scalar::dot` of `d` floats at `a` and `b`: two 8-lane accumulators (the 8 elements
/// from `i` in accumulator `(i / 8) % 2`, so element `i` meets partial sum `i % 16`), the
/// tail through masked loads and a blend that keeps the other lanes.
///
/// # Safety
/// AVX2 and FMA; `a` and `b` valid for `d` float reads.
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_steps(a: *const f32, b: *const f32, d: usize) -> f32 {
    let full = d / LANES * LANES;
    let mut acc = [_mm256_setzero_ps(); 2];
    for i in (0..full).step_by(LANES) {
        let s = (i / LANES) % 2;
        // SAFETY: `i + 8 <= d`.
        unsafe {
            acc[s] = _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(b.add(i)), acc[s])
        };
    }
    if full < d {
        let m = tail_mask(d - full);
        let s = (full / LANES) % 2;
        // SAFETY: masked loads of lanes `full..d` only.
        unsafe {
            let (x, y) = (
                _mm256_maskload_ps(a.add(full), m),
                _mm256_maskload_ps(b.add(full), m),
            );
            acc[s] = _mm256_blendv_ps(
                acc[s],
                _mm256_fmadd_ps(x, y, acc[s]),
                _mm256_castsi256_ps(m),
            );
        }
    }
    reduce_add16(acc[0], acc[1])
}

/// `out[i] = Σ_j p[j] · v_j[i]` (row `j` at `v + j · stride`), one FMA chain per element in
/// increasing `j` from 0. Up to [`AXPY_VECS`] registers of `out` (8 elements each) are
/// summed side by side, so their independent chains hide the FMA latency.
///
/// # Safety
/// AVX2 and FMA; `v + j · stride` valid for `out.len()` float reads for every
/// `j < p.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_rows(p: &[f32], v: *const f32, stride: usize, out: &mut [f32]) {
    let d = out.len();
    let mut i0 = 0;
    while i0 < d {
        let n = (d - i0).div_ceil(LANES).min(AXPY_VECS);
        // SAFETY: forwarded contract; the block covers elements `i0..min(i0 + n · 8, d)`.
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
/// As [`axpy_rows`]; `i0 + (N - 1) · 8 < out.len()`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn axpy_block<const N: usize>(
    p: &[f32],
    v: *const f32,
    stride: usize,
    out: &mut [f32],
    i0: usize,
) {
    let d = out.len();
    let masks: [__m256i; N] = core::array::from_fn(|k| tail_mask((d - i0 - k * LANES).min(LANES)));
    let mut acc = [_mm256_setzero_ps(); N];
    for (j, &pj) in p.iter().enumerate() {
        let pv = _mm256_set1_ps(pj);
        // SAFETY: row `j` from element `i0` (caller); the loads below are masked to `d`.
        let row = unsafe { v.add(j * stride + i0) };
        for k in 0..N {
            // SAFETY: lanes `i0 + k · 8..` of row `j`, masked to `d`.
            let x = unsafe { _mm256_maskload_ps(row.add(k * LANES), masks[k]) };
            acc[k] = _mm256_fmadd_ps(pv, x, acc[k]);
        }
    }
    let o = out.as_mut_ptr();
    for k in 0..N {
        // SAFETY: lanes `i0 + k · 8..` of `out`, masked to `d`.
        unsafe { _mm256_maskstore_ps(o.add(i0 + k * LANES), masks[k], acc[k]) };
    }
}

// The `Avx2` token proves avx2,fma,f16c (`detect.rs`), which cover every `__m256` operation
// of the generic kernels.
generic::act_kernels!(Avx2, __m256, "avx2,fma,f16c");
