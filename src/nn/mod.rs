//! candle modules built on the quantizers and kernels.
