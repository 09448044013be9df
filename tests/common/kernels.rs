//! Kernel sets the gemm tests compare against.

use candle_compress::kernels::gemm::GemmKernels;
use candle_compress::kernels::Isa;

/// The scalar kernels: the reference every other kernel set must equal bit for bit.
pub fn scalar() -> GemmKernels {
    GemmKernels::for_isa(Isa::Scalar).unwrap()
}
