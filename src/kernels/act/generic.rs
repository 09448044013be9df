//! The element-wise activation kernels written once over [`F32Vector`]: `exp` (also the
//! one of the row kernels in `rows.rs` and of `blocked.rs`) and the `exp` and SwiGLU
//! loops, whose tails run the scalar twin; and `act_kernels!`, which instantiates every
//! generic activation kernel for one ISA.
//!
//! Every function is `#[inline(always)]` and `unsafe` only for the CPU features of its
//! vector type; the `#[target_feature]` functions `act_kernels!` emits in `avx2.rs`,
//! `avx512.rs` and `neon.rs` are where it is compiled. Slice accesses are bounds-checked.

use super::scalar::{self, EXP_HI, EXP_LO, EXP_POLY, LN2_HI, LN2_LO, LOG2E};
use crate::kernels::simd::F32Vector;

/// `scalar::exp` on every lane: the same clamps, the same FMA chain, `2^n` from the
/// exponent bits, `+0` below [`EXP_LO`].
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(crate) unsafe fn exp<V: F32Vector>(x: V) -> V {
    // SAFETY: `V`'s features (caller).
    unsafe {
        let xc = V::splat(EXP_HI).min(V::splat(EXP_LO).max(x));
        let n = xc.mul(V::splat(LOG2E)).round_even();
        let r = n.mul_add(V::splat(-LN2_HI), xc);
        let r = n.mul_add(V::splat(-LN2_LO), r);
        let mut p = V::splat(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = p.mul_add(r, V::splat(*c));
        }
        let y = p.mul_add(r.mul(r), r).add(V::splat(1.0));
        let e = y.mul(n.pow2());
        V::select(x.lt(V::splat(EXP_LO)), V::splat(0.0), e)
    }
}

/// See [`super::exp_in_place`]: whole vectors through [`exp`], the tail through the
/// scalar twin.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(crate) unsafe fn exp_in_place<V: F32Vector>(x: &mut [f32]) {
    let full = x.len() / V::LANES * V::LANES;
    for i in (0..full).step_by(V::LANES) {
        // SAFETY: `V`'s features (caller).
        unsafe { exp(V::load(x, i)).store(x, i) };
    }
    for v in &mut x[full..] {
        *v = scalar::exp(*v);
    }
}

/// See [`super::silu_mul_in_place`] (`scalar::silu_mul` per element); lengths already
/// checked by the caller.
///
/// # Safety
/// The CPU must have `V`'s features.
#[inline(always)]
pub(crate) unsafe fn silu_mul_in_place<V: F32Vector>(gate: &mut [f32], up: &[f32]) {
    let full = gate.len() / V::LANES * V::LANES;
    for i in (0..full).step_by(V::LANES) {
        // SAFETY: `V`'s features (caller).
        unsafe {
            let (g, u) = (V::load(gate, i), V::load(up, i));
            let e = exp(V::splat(0.0).sub(g));
            g.div(V::splat(1.0).add(e)).mul(u).store(gate, i);
        }
    }
    scalar::silu_mul_in_place(&mut gate[full..], &up[full..]);
}

/// Emits one ISA's entry points of the generic activation kernels in the invoking module:
/// `exp_in_place`, `silu_mul_in_place`, `softmax_row` and `attend_row` (`rows.rs`) and
/// `attend_block` (`blocked.rs`), each a safe function taking the ISA's detection token
/// around a `#[target_feature]` instantiation for `$vec`.
///
/// The invoking module vouches that holding `$token` proves every feature in `$feat`, and
/// that `$feat` covers `$vec`'s [`F32Vector`] operations.
macro_rules! act_kernels {
    ($token:ty, $vec:ty, $feat:literal) => {
        $crate::kernels::simd::target_feature_entries!($token, $feat;
            /// See [`super::exp_in_place`].
            exp_in_place(x: &mut [f32]) = super::generic::exp_in_place::<$vec>;
            /// See [`super::silu_mul_in_place`]; lengths already checked by the caller.
            silu_mul_in_place(gate: &mut [f32], up: &[f32])
                = super::generic::silu_mul_in_place::<$vec>;
            /// See `scalar::softmax_row`; `len <= row.len()` checked by the caller.
            softmax_row(row: &mut [f32], len: usize, scale: f32) -> f32
                = super::rows::softmax_row::<$vec>;
            /// See `scalar::attend_row`; the caller checked that every key and value row
            /// is inside its slice and that `out.len() == a.q.len()`.
            attend_row(a: &super::scalar::AttendRow, scores: &mut [f32], out: &mut [f32])
                -> f32 = super::rows::attend_row::<$vec>;
            /// See [`super::attend_blocked`] and `blocked.rs`; the caller guarantees the
            /// block's contract there (`d` a multiple of the lanes, at most four vectors
            /// of rows, limits below `2^24`).
            attend_block(b: &super::blocked::Block, s: &mut super::blocked::Scratch,
                out: &mut [f32]) -> Option<usize>
                = super::blocked::attend_block::<$vec>;
        );
    };
}
pub(super) use act_kernels;
