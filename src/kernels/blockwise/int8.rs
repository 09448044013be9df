//! The safe entry points of absmax int8 blocks (GGML Q8_0's formula, any block size):
//! quantize, dequantize (in place or into a new `Vec`) and their `*_on(isa, ..)` forms,
//! each checking its lengths before dispatching to the kernel of the ISA.

use half::f16;

use super::checks::check_i8;
use super::{kernel_isa, scalar, Kernels};
use crate::kernels::detect::Isa;
use crate::kernels::error::KernelError;

/// Quantizes `x` to int8 in blocks of `block` values with one f16 scale per block.
///
/// Lengths: `block >= 1`, `q.len() == x.len()`, `scales.len() == x.len().div_ceil(block)`.
/// The last block may be shorter than `block`.
///
/// Per block: `amax = max|x|`; `d = amax / 127` (f32); `id = 1/d` (`0` when `d == 0`);
/// `q = round_half_away_from_zero(x * id) as i8`; `scales[b] = f16::from_f32(d)` — GGML
/// Q8_0's formula, bit-exact with candle's `BlockQ8_0::from_float` for `block == 32`.
///
/// # Errors
/// [`KernelError::InvalidArgument`] for `block == 0`, [`KernelError::Length`] when a
/// length above does not hold (nothing written), [`KernelError::NonFinite`] with the flat
/// index of the first NaN or ±Inf in `x` (the contents of `q` and `scales` are then
/// unspecified).
///
/// ```
/// use candle_compress::kernels::blockwise::{dequantize_i8_blocks, quantize_i8_blocks};
/// use half::f16;
/// let x = [1.0f32, -0.5, 0.25, 2.0, 0.0];
/// let (mut q, mut s) = ([0i8; 5], [f16::ZERO; 2]);
/// quantize_i8_blocks(&x, 4, &mut q, &mut s).unwrap();
/// assert_eq!(q, [64, -32, 16, 127, 0]); // block 0: d = 2/127; block 1 is all zero
/// let mut back = [0f32; 5];
/// dequantize_i8_blocks(&q, &s, 4, &mut back).unwrap();
/// assert!((back[3] - 2.0).abs() < 1e-3);
/// let e = quantize_i8_blocks(&[0.0, f32::NAN], 4, &mut q[..2], &mut s[..1]).unwrap_err();
/// assert_eq!(e.non_finite_index(), Some(1));
/// ```
pub fn quantize_i8_blocks(
    x: &[f32],
    block: usize,
    q: &mut [i8],
    scales: &mut [f16],
) -> Result<(), KernelError> {
    const OP: &str = "quantize_i8_blocks";
    check_i8(OP, ("x", x.len()), block, ("q", q.len()), scales.len())?;
    quantize_unchecked_on(kernel_isa(), x, block, q, scales)
        .unwrap_or_else(|| scalar::quantize_i8_blocks(x, block, q, scales))
        .map_err(|index| non_finite(OP, index))
}

/// Dequantizes int8 blocks: `out[i] = q[i] as f32 * f32::from(scales[i / block])`.
///
/// Lengths: `block >= 1`, `out.len() == q.len()`, `scales.len() == q.len().div_ceil(block)`.
///
/// # Errors
/// [`KernelError::InvalidArgument`] for `block == 0`, [`KernelError::Length`] when a
/// length above does not hold; nothing is written then.
pub fn dequantize_i8_blocks(
    q: &[i8],
    scales: &[f16],
    block: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_i8(
        "dequantize_i8_blocks",
        ("q", q.len()),
        block,
        ("out", out.len()),
        scales.len(),
    )?;
    dequantize_i8_run(q, scales, block, out);
    Ok(())
}

/// The dispatch of [`dequantize_i8_blocks`] once its lengths were checked.
fn dequantize_i8_run(q: &[i8], scales: &[f16], block: usize, out: &mut [f32]) {
    if dequantize_unchecked_on(kernel_isa(), q, scales, block, out).is_none() {
        scalar::dequantize_i8_blocks(q, scales, block, out)
    }
}

/// [`dequantize_i8_blocks`] into a new `Vec` of `q.len()` values, for callers that hand the
/// result on (e.g. to `Tensor::from_vec`).
///
/// Use this rather than `vec![0.0; n]` + [`dequantize_i8_blocks`] for large outputs: a
/// fresh multi-MiB allocation is page-faulted in 4 KiB at a time on first touch, which
/// costs far more than the dequantization (64 MiB: ~30 ms of faults vs ~4 ms of work on our
/// machines). Buffers of 4 MiB and more are advised to use transparent huge pages
/// (`madvise(MADV_HUGEPAGE)` on Linux, a no-op elsewhere or when THP is disabled), which
/// removes most of that cost. The values are the same as [`dequantize_i8_blocks`]'s.
///
/// # Errors
/// As [`dequantize_i8_blocks`] (`block >= 1`, `scales.len() == q.len().div_ceil(block)`),
/// before anything is allocated.
pub fn dequantize_i8_blocks_to_vec(
    q: &[i8],
    scales: &[f16],
    block: usize,
) -> Result<Vec<f32>, KernelError> {
    check_i8(
        "dequantize_i8_blocks_to_vec",
        ("q", q.len()),
        block,
        ("q", q.len()),
        scales.len(),
    )?;
    // `vec![0.0; n]` is `calloc`: large zeroed allocations come untouched from `mmap`, so
    // the advice is in place before the first write faults the pages in.
    let mut out = vec![0f32; q.len()];
    crate::kernels::hugepage::advise(&mut out);
    dequantize_i8_run(q, scales, block, &mut out);
    Ok(out)
}

/// [`quantize_i8_blocks`] on a chosen instruction set, for tests and benchmarks that compare
/// kernels. Returns `Ok(None)` (nothing written) when this CPU lacks `isa` or there is no
/// kernel for it ([`Isa::Amx`]); [`Isa::AvxVnni`] runs the AVX2 kernels.
///
/// # Errors
/// As [`quantize_i8_blocks`]; the argument errors whether or not the CPU has `isa`.
pub fn quantize_i8_blocks_on(
    isa: Isa,
    x: &[f32],
    block: usize,
    q: &mut [i8],
    scales: &mut [f16],
) -> Result<Option<()>, KernelError> {
    const OP: &str = "quantize_i8_blocks_on";
    check_i8(OP, ("x", x.len()), block, ("q", q.len()), scales.len())?;
    quantize_unchecked_on(isa, x, block, q, scales)
        .transpose()
        .map_err(|index| non_finite(OP, index))
}

/// [`dequantize_i8_blocks`] on a chosen instruction set; `Ok(None)` (nothing written) when
/// this CPU lacks `isa` or there is no kernel for it (see [`quantize_i8_blocks_on`]).
///
/// # Errors
/// As [`dequantize_i8_blocks`], whether or not the CPU has `isa`.
pub fn dequantize_i8_blocks_on(
    isa: Isa,
    q: &[i8],
    scales: &[f16],
    block: usize,
    out: &mut [f32],
) -> Result<Option<()>, KernelError> {
    check_i8(
        "dequantize_i8_blocks_on",
        ("q", q.len()),
        block,
        ("out", out.len()),
        scales.len(),
    )?;
    Ok(dequantize_unchecked_on(isa, q, scales, block, out))
}

fn non_finite(op: &'static str, index: usize) -> KernelError {
    KernelError::NonFinite {
        op,
        what: "value",
        index,
    }
}

fn quantize_unchecked_on(
    isa: Isa,
    x: &[f32],
    block: usize,
    q: &mut [i8],
    scales: &mut [f16],
) -> Option<Result<(), usize>> {
    Some(Kernels::on(isa)?.quantize_i8_blocks(x, block, q, scales))
}

fn dequantize_unchecked_on(
    isa: Isa,
    q: &[i8],
    scales: &[f16],
    block: usize,
    out: &mut [f32],
) -> Option<()> {
    Kernels::on(isa)?.dequantize_i8_blocks(q, scales, block, out);
    Some(())
}
