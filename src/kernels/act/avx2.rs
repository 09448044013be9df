//! x86_64 AVX2 + FMA activation kernels (8 f32 lanes): the generic algorithms of
//! `generic.rs`, `rows.rs` and `blocked.rs` on `__m256` (the softmax's and the dot
//! products' 16 accumulator lanes of `scalar.rs` are two ymm registers).

use core::arch::x86_64::__m256;

use super::generic;
use crate::kernels::detect::Avx2;

// The `Avx2` token proves avx2,fma,f16c (`detect.rs`), which cover every `__m256` operation
// of the generic kernels.
generic::act_kernels!(Avx2, __m256, "avx2,fma,f16c");
