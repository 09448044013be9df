//! The row softmax and one query row's attention ([`super::softmax_rows`],
//! [`super::attend_rows`]), written once over [`F32Vector`] and instantiated per ISA by
//! `act_kernels!` (`generic.rs`) in `avx2.rs` (`__m256`), `avx512.rs` (`__m512`) and
//! `neon.rs` (`float32x4_t`).
//!
//! Same bits as `scalar.rs` on every width. The twin's softmax passes and dot products
//! reduce into `scalar::LANES` (16) accumulators, element `j` into accumulator `j % 16`,
//! combined by halves (`scalar::reduce`). Here those 16 lanes are a *group* of
//! `16 / LANES` vectors (one `__m512`, two `__m256`, four `float32x4_t`): the vector of
//! the elements from `i` goes into vector `(i / LANES) % (16 / LANES)` of the group, so
//! every element meets the same partial sum, in the same order, as in the twin
//! ([`fold`]). The group is then combined by halves across its vectors and inside the
//! last one ([`F32Vector::reduce_add`], [`F32Vector::reduce_max`]): the twin's steps in
//! its order ([`reduce`]). A row's last, partial vector is read with
//! [`F32Vector::load_partial`] and merged into its accumulator under
//! [`F32Vector::first_lanes`], so the lanes that get no element keep their value, as the
//! twin's accumulators do.
//!
//! The weighted sum of the values ([`axpy_rows`]) is one FMA chain per output element in
//! increasing key order from `+0`, the twin's; blocks of up to [`AXPY_VECS`] vectors of
//! the output are summed side by side, so their independent chains hide the FMA latency.
//!
//! Every function is `#[inline(always)]` and `unsafe` only for the CPU features of its
//! vector type; the `#[target_feature]` entry points `act_kernels!` emits are where it is
//! compiled. Slice accesses are bounds-checked.

use super::generic::exp;
use super::scalar::{self, AttendRow};
use crate::kernels::simd::F32Vector;

/// Vectors in the largest group (`float32x4_t`: 4 vectors of 4 lanes).
const MAX_GROUP: usize = 4;

/// Vectors of `V` that hold the twin's `scalar::LANES` accumulators.
#[inline(always)]
fn group<V: F32Vector>() -> usize {
    const {
        let (lanes, width) = (scalar::LANES, V::LANES);
        assert!(lanes.is_multiple_of(width) && lanes / width <= MAX_GROUP)
    };
    scalar::LANES / V::LANES
}

/// Registers of `out` that [`axpy_rows`] keeps in flight.
const AXPY_VECS: usize = 8;

/// `x[i..i + n]` as a vector: [`F32Vector::load`] when `n == LANES`, else
/// [`F32Vector::load_partial`].
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn load_n<V: F32Vector>(x: &[f32], i: usize, n: usize) -> V {
    // SAFETY: `V`'s features (caller).
    unsafe {
        if n == V::LANES {
            V::load(x, i)
        } else {
            V::load_partial(x, i, n)
        }
    }
}

/// Lanes `0..n` of `v` into `out[i..i + n]`: [`F32Vector::store`] when `n == LANES`, else
/// [`F32Vector::store_partial`].
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn store_n<V: F32Vector>(v: V, out: &mut [f32], i: usize, n: usize) {
    // SAFETY: `V`'s features (caller).
    unsafe {
        if n == V::LANES {
            v.store(out, i)
        } else {
            v.store_partial(out, i, n)
        }
    }
}

/// What one pass of a row kernel does with the vector of a row's elements from `i`.
trait Step<V: F32Vector> {
    /// `acc` updated with the `n` elements from `i` (`n == V::LANES`, or fewer for the
    /// row's last vector: then the lanes from `n` on of the result are ignored).
    ///
    /// # Safety
    /// The CPU must have `V`'s features.
    unsafe fn step(&mut self, acc: V, i: usize, n: usize) -> V;
}

/// Runs `s` over the elements `0..len`, each vector into its accumulator of the group
/// (see the module docs), every accumulator starting at `init`; the group's vectors (the
/// first [`group`] of the array).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn fold<V: F32Vector>(len: usize, init: V, s: &mut impl Step<V>) -> [V; MAX_GROUP] {
    let (l, g) = (V::LANES, group::<V>());
    let mut acc = [init; MAX_GROUP];
    let mut i = 0;
    // SAFETY: `V`'s features (caller).
    unsafe {
        while i + g * l <= len {
            for (k, a) in acc.iter_mut().take(g).enumerate() {
                *a = s.step(*a, i + k * l, l);
            }
            i += g * l;
        }
        // Less than a group is left: whole vectors, then at most one partial one, into
        // the next accumulators in turn (no `break`: each accumulator stays a register).
        for a in acc.iter_mut().take(g) {
            let n = (len - i).min(l);
            if n == l {
                *a = s.step(*a, i, l);
            } else if n > 0 {
                *a = V::select(V::first_lanes(n), s.step(*a, i, n), *a);
            }
            i += n;
        }
    }
    acc
}

/// The twin's `scalar::reduce` of the group's accumulators with `max` (`MAX`, the
/// `maxps` rule) or `+`: the vectors by halves (`k` with `k + half`), then the lanes of
/// the first.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn reduce<V: F32Vector, const MAX: bool>(mut acc: [V; MAX_GROUP]) -> f32 {
    let mut half = group::<V>() / 2;
    // SAFETY: `V`'s features (caller).
    unsafe {
        while half >= 1 {
            for k in 0..half {
                acc[k] = if MAX {
                    acc[k].max(acc[k + half])
                } else {
                    acc[k].add(acc[k + half])
                };
            }
            half /= 2;
        }
        if MAX {
            acc[0].reduce_max()
        } else {
            acc[0].reduce_add()
        }
    }
}

/// The softmax's first pass: `max(acc, scale · x)` (the `maxps` rule, `scalar::max_op`).
struct ScaledMax<'a, V> {
    row: &'a [f32],
    scale: V,
}

impl<V: F32Vector> Step<V> for ScaledMax<'_, V> {
    #[inline(always)]
    unsafe fn step(&mut self, acc: V, i: usize, n: usize) -> V {
        // SAFETY: `V`'s features (caller).
        unsafe { acc.max(load_n::<V>(self.row, i, n).mul(self.scale)) }
    }
}

/// The softmax's second pass: `e = exp(scale · x − max)` stored over `x`, `acc + e`.
struct ScaledExp<'a, V> {
    row: &'a mut [f32],
    scale: V,
    max: V,
}

impl<V: F32Vector> Step<V> for ScaledExp<'_, V> {
    #[inline(always)]
    unsafe fn step(&mut self, acc: V, i: usize, n: usize) -> V {
        // SAFETY: `V`'s features (caller).
        unsafe {
            let e = exp(load_n::<V>(self.row, i, n).mul(self.scale).sub(self.max));
            store_n(e, self.row, i, n);
            acc.add(e)
        }
    }
}

/// A dot product's step: `a_i · b_i + acc` (one rounding, `f32::mul_add`).
struct Dot<'a> {
    a: &'a [f32],
    b: &'a [f32],
}

impl<V: F32Vector> Step<V> for Dot<'_> {
    #[inline(always)]
    unsafe fn step(&mut self, acc: V, i: usize, n: usize) -> V {
        // SAFETY: `V`'s features (caller).
        unsafe { load_n::<V>(self.a, i, n).mul_add(load_n::<V>(self.b, i, n), acc) }
    }
}

/// See `scalar::softmax_row`; `len <= row.len()` (checked by the callers; it panics
/// otherwise).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(crate) unsafe fn softmax_row<V: F32Vector>(row: &mut [f32], len: usize, scale: f32) -> f32 {
    let (live, dead) = row.split_at_mut(len);
    dead.fill(0.0);
    if live.is_empty() {
        return 1.0;
    }
    // SAFETY: `V`'s features (caller).
    unsafe {
        let s = V::splat(scale);
        let mut first = ScaledMax {
            row: live,
            scale: s,
        };
        let m = reduce::<V, true>(fold(len, V::splat(f32::NEG_INFINITY), &mut first));
        let mut second = ScaledExp {
            row: live,
            scale: s,
            max: V::splat(m),
        };
        let sum = reduce::<V, false>(fold(len, V::splat(0.0), &mut second));
        let (l, inv) = (V::LANES, V::splat(1.0 / sum));
        let full = len / l * l;
        for i in (0..full).step_by(l) {
            V::load(live, i).mul(inv).store(live, i);
        }
        if full < len {
            let n = len - full;
            V::load_partial(live, full, n)
                .mul(inv)
                .store_partial(live, full, n);
        }
        sum
    }
}

/// `scalar::dot` of `a` and `b[..a.len()]`.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn dot<V: F32Vector>(a: &[f32], b: &[f32]) -> f32 {
    let b = &b[..a.len()];
    // SAFETY: `V`'s features (caller).
    unsafe { reduce::<V, false>(fold(a.len(), V::splat(0.0), &mut Dot { a, b })) }
}

/// See `scalar::attend_row`; the caller checked that every key and value row
/// (`j < scores.len()`, at `j · stride`, `q.len()` floats) is inside its slice and that
/// `out.len() == q.len()` (it panics otherwise).
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(crate) unsafe fn attend_row<V: F32Vector>(
    a: &AttendRow,
    scores: &mut [f32],
    out: &mut [f32],
) -> f32 {
    let (d, len) = (a.q.len(), scores.len());
    debug_assert_eq!(out.len(), d);
    // SAFETY: `V`'s features (caller).
    unsafe {
        for (j, s) in scores.iter_mut().enumerate() {
            *s = dot::<V>(a.q, &a.keys[j * a.stride..][..d]);
        }
        let sum = softmax_row::<V>(scores, len, a.scale);
        axpy_rows::<V>(scores, a.values, a.stride, out);
        sum
    }
}

/// `out[i] = Σ_j p[j] · v_j[i]` (row `j` is `v[j · stride..][..out.len()]`), one FMA
/// chain per element in increasing `j` from `+0`: blocks of up to [`AXPY_VECS`] vectors
/// of `out`.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn axpy_rows<V: F32Vector>(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    let (l, d) = (V::LANES, out.len());
    let mut i0 = 0;
    while i0 < d {
        let n = (d - i0).div_ceil(l).min(AXPY_VECS);
        // SAFETY: `V`'s features (caller); `i0 < d`, so the block has `n >= 1` vectors.
        unsafe {
            match n {
                1 => axpy_block::<V, 1>(p, v, stride, out, i0),
                2 => axpy_block::<V, 2>(p, v, stride, out, i0),
                3 => axpy_block::<V, 3>(p, v, stride, out, i0),
                4 => axpy_block::<V, 4>(p, v, stride, out, i0),
                5 => axpy_block::<V, 5>(p, v, stride, out, i0),
                6 => axpy_block::<V, 6>(p, v, stride, out, i0),
                7 => axpy_block::<V, 7>(p, v, stride, out, i0),
                _ => axpy_block::<V, AXPY_VECS>(p, v, stride, out, i0),
            }
        }
        i0 += n * l;
    }
}

/// [`axpy_rows`] on the `N` vectors of `out` from element `i0` (`i0 + (N − 1) · LANES <
/// out.len()`): the last one partial when `out` ends inside it.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn axpy_block<V: F32Vector, const N: usize>(
    p: &[f32],
    v: &[f32],
    stride: usize,
    out: &mut [f32],
    i0: usize,
) {
    // SAFETY: `V`'s features (caller).
    unsafe {
        if out.len() - i0 >= N * V::LANES {
            axpy_tile::<V, N, false>(p, v, stride, out, i0)
        } else {
            axpy_tile::<V, N, true>(p, v, stride, out, i0)
        }
    }
}

/// [`axpy_block`] with its last vector partial (`PARTIAL`, decided once per block rather
/// than per key) or whole.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
unsafe fn axpy_tile<V: F32Vector, const N: usize, const PARTIAL: bool>(
    p: &[f32],
    v: &[f32],
    stride: usize,
    out: &mut [f32],
    i0: usize,
) {
    let l = V::LANES;
    let (head, width) = ((N - 1) * l, (out.len() - i0).min(N * l));
    let last = width - head;
    // SAFETY: `V`'s features (caller), as for every unsafe block below.
    let zero = unsafe { V::splat(0.0) };
    let mut acc = [zero; N];
    for (j, &pj) in p.iter().enumerate() {
        let (whole, part) = v[j * stride + i0..][..width].split_at(head);
        // SAFETY: as above.
        unsafe {
            let pv = V::splat(pj);
            for (k, a) in acc[..N - 1].iter_mut().enumerate() {
                *a = pv.mul_add(V::load(whole, k * l), *a);
            }
            let x = if PARTIAL {
                V::load_partial(part, 0, last)
            } else {
                V::load(part, 0)
            };
            acc[N - 1] = pv.mul_add(x, acc[N - 1]);
        }
    }
    // SAFETY: as above.
    unsafe {
        for (k, a) in acc[..N - 1].iter().enumerate() {
            a.store(out, i0 + k * l);
        }
        if PARTIAL {
            acc[N - 1].store_partial(out, i0 + head, last)
        } else {
            acc[N - 1].store(out, i0 + head)
        }
    }
}
