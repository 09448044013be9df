//! Tensor quantizers: pure data transforms from float tensors to compact values and back.
