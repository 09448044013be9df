//! aarch64 NEON activation kernels (4 f32 lanes): `exp`, SwiGLU's `silu(gate) · up` and
//! the blocked prompt attention, all the generic algorithms of `generic.rs` and
//! `blocked.rs` on `float32x4_t`. The row softmax and [`super::attend_rows`] run the
//! scalar twin on aarch64.

use core::arch::aarch64::float32x4_t;

use super::blocked::{self, Block, Scratch};
use super::generic;
use crate::kernels::detect::Neon;

/// See [`super::exp_in_place`].
pub(crate) fn exp_in_place(_cpu: Neon, x: &mut [f32]) {
    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    unsafe fn steps(x: &mut [f32]) {
        // SAFETY: the features are enabled here.
        unsafe { generic::exp_in_place::<float32x4_t>(x) }
    }
    // SAFETY: the token proves NEON.
    unsafe { steps(x) }
}

/// See [`super::silu_mul_in_place`]; lengths already checked by the caller.
pub(crate) fn silu_mul_in_place(_cpu: Neon, gate: &mut [f32], up: &[f32]) {
    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    unsafe fn steps(gate: &mut [f32], up: &[f32]) {
        // SAFETY: the features are enabled here.
        unsafe { generic::silu_mul_in_place::<float32x4_t>(gate, up) }
    }
    // SAFETY: the token proves NEON.
    unsafe { steps(gate, up) }
}

/// See [`super::attend_blocked`] and `blocked.rs`; the caller guarantees the block's
/// contract there (`d` a multiple of 4, at most 16 rows, limits below `2^24`).
pub(crate) fn attend_block(
    _cpu: Neon,
    b: &Block,
    s: &mut Scratch,
    out: &mut [f32],
) -> Option<usize> {
    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    unsafe fn steps(b: &Block, s: &mut Scratch, out: &mut [f32]) -> Option<usize> {
        // SAFETY: the features are enabled here.
        unsafe { blocked::attend_block::<float32x4_t>(b, s, out) }
    }
    // SAFETY: the token proves NEON.
    unsafe { steps(b, s, out) }
}
