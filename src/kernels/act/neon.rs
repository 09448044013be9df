//! aarch64 NEON activation kernels (4 f32 lanes): the generic algorithms of `generic.rs`,
//! `rows.rs` and `blocked.rs` on `float32x4_t` (the softmax's and the dot products' 16
//! accumulator lanes of `scalar.rs` are four registers).

use core::arch::aarch64::float32x4_t;

use super::generic;
use crate::kernels::detect::Neon;

// A `Neon` token proves Advanced SIMD, which covers every `float32x4_t` operation.
generic::act_kernels!(Neon, float32x4_t, "neon");
