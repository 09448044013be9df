//! Int8 quantization of row-major `[rows, cols]` f32 data through the fused kernels, split
//! over rayon by rows when the input is large: activations in the forward pass, int8
//! weights per output channel at construction.

use rayon::prelude::*;

use crate::kernels::gemm;
use crate::kernels::KernelError;

/// Inputs below this many elements are quantized on the calling thread: splitting them
/// costs more in rayon scheduling (~µs) than the pass itself.
const QUANT_PARALLEL_MIN: usize = 1 << 16;
/// Elements per rayon task when quantization is split by rows (~64 KiB of f32 input).
const QUANT_TASK_ELEMS: usize = 1 << 14;

/// Runs `kernel` over row chunks of `x`, in parallel when the work is large; returns the
/// first (smallest) flat index of a non-finite value, as the kernel does.
fn for_row_chunks(
    x: &[f32],
    cols: usize,
    q: &mut [i8],
    scales: &mut [f32],
    kernel: impl Fn(&[f32], &mut [i8], &mut [f32]) -> std::result::Result<(), KernelError> + Sync,
) -> std::result::Result<(), KernelError> {
    let rows = scales.len();
    if x.len() < QUANT_PARALLEL_MIN || rows < 2 || rayon::current_num_threads() < 2 {
        return kernel(x, q, scales);
    }
    let rows_per_task = (QUANT_TASK_ELEMS / cols).max(1);
    let chunk = rows_per_task * cols;
    let first_bad = x
        .par_chunks(chunk)
        .zip(q.par_chunks_mut(chunk))
        .zip(scales.par_chunks_mut(rows_per_task))
        .enumerate()
        .filter_map(|(i, ((xc, qc), sc))| kernel(xc, qc, sc).err().map(|e| e.offset(i * chunk)))
        // The smallest non-finite index; an argument error (none: the lengths were
        // checked) would come first.
        .min_by_key(|e| e.non_finite_index().unwrap_or(0));
    match first_bad {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

pub(super) fn quantize_rows(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    q: &mut [i8],
    scales: &mut [f32],
) -> std::result::Result<(), KernelError> {
    for_row_chunks(x, cols, q, scales, |xc, qc, sc| {
        gemm::quantize_rows_i8(xc, cols, smooth, qc, sc)
    })
}

pub(super) fn quantize_rows_with_scales(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    scales: &mut [f32],
    q: &mut [i8],
) -> std::result::Result<(), KernelError> {
    for_row_chunks(x, cols, q, scales, |xc, qc, sc| {
        gemm::quantize_rows_i8_with_scales(xc, cols, smooth, sc, qc)
    })
}
