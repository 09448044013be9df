//! aarch64 NEON activation kernels (4 f32 lanes): `exp`, SwiGLU's `silu(gate) · up` and
//! the blocked prompt attention, all the generic algorithms of `generic.rs` and
//! `blocked.rs` on `float32x4_t`. The row softmax and [`super::attend_rows`] run the
//! scalar twin on aarch64.

use core::arch::aarch64::float32x4_t;

use super::generic;
use crate::kernels::detect::Neon;

// A `Neon` token proves Advanced SIMD, which covers every `float32x4_t` operation.
generic::act_kernels!(Neon, float32x4_t, "neon");
