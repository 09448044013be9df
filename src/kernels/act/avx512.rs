//! x86_64 AVX-512F activation kernels (16 f32 lanes): the generic algorithms of
//! `generic.rs`, `rows.rs` and `blocked.rs` on `__m512` (the softmax's and the dot
//! products' 16 accumulator lanes of `scalar.rs` are one zmm register).

use core::arch::x86_64::__m512;

use super::generic;
use crate::kernels::detect::Avx512Vnni;

// The `Avx512Vnni` token proves avx512f,avx512bw,fma (`detect.rs`), which cover every
// `__m512` operation of the generic kernels.
generic::act_kernels!(Avx512Vnni, __m512, "avx512f,avx512bw,fma");
