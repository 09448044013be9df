//! The safe entry points of the 4-bit table decoder (NF4, symmetric int4 stored as
//! `q + 8`): two codes per byte through a 16-entry table, one f32 scale per group.

use super::checks::check_u4;
use super::{kernel_isa, scalar, Kernels};
use crate::kernels::detect::Isa;
use crate::kernels::error::KernelError;

/// Dequantizes 4-bit codes through a 16-entry table with one f32 scale per group:
/// `out[i] = lut[code(i)] * scales[i / group]`, where `code(i)` is the low nibble of
/// `packed[i / 2]` for even `i` and the high nibble for odd `i` (two codes per byte, low
/// first; an odd count leaves the last high nibble unused).
///
/// One kernel for every table-driven 4-bit format: NF4 (`lut` = the NF4 code book, scales =
/// block absmax) and symmetric int4 stored as `q + 8` (`lut[k] = k as f32 - 8.0`, scales =
/// the group scales as f32). One f32 multiply per value, so the result is bit-identical to
/// the plain Rust expression on every ISA.
///
/// Lengths: `group >= 1`, `packed.len() == out.len().div_ceil(2)`,
/// `scales.len() == out.len().div_ceil(group)`.
///
/// # Errors
/// [`KernelError::InvalidArgument`] for `group == 0`, [`KernelError::Length`] when a
/// length above does not hold; nothing is written then.
///
/// ```
/// use candle_compress::kernels::blockwise::dequantize_u4_lut;
/// let lut: [f32; 16] = std::array::from_fn(|k| k as f32 - 8.0); // int4 stored as q + 8
/// let mut out = [0f32; 3];
/// dequantize_u4_lut(&[0x9F, 0x08], &lut, &[0.5, 2.0], 2, &mut out).unwrap();
/// assert_eq!(out, [3.5, 0.5, 0.0]); // codes 15, 9 (scale 0.5) then 8 (scale 2)
/// ```
pub fn dequantize_u4_lut(
    packed: &[u8],
    lut: &[f32; 16],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_u4(
        "dequantize_u4_lut",
        packed.len(),
        scales.len(),
        group,
        out.len(),
    )?;
    dequantize_u4_run(packed, lut, scales, group, out);
    Ok(())
}

/// The dispatch of [`dequantize_u4_lut`] once its lengths were checked.
fn dequantize_u4_run(
    packed: &[u8],
    lut: &[f32; 16],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) {
    if dequantize_u4_unchecked_on(kernel_isa(), packed, lut, scales, group, out).is_none() {
        scalar::dequantize_u4_lut(packed, lut, scales, group, out)
    }
}

/// [`dequantize_u4_lut`] of `n` values into a new `Vec`, with the huge-page advice of
/// [`dequantize_i8_blocks_to_vec`](super::dequantize_i8_blocks_to_vec) for large
/// outputs.
///
/// # Errors
/// As [`dequantize_u4_lut`] with `out.len() == n`, before anything is allocated.
pub fn dequantize_u4_lut_to_vec(
    packed: &[u8],
    lut: &[f32; 16],
    scales: &[f32],
    group: usize,
    n: usize,
) -> Result<Vec<f32>, KernelError> {
    check_u4(
        "dequantize_u4_lut_to_vec",
        packed.len(),
        scales.len(),
        group,
        n,
    )?;
    let mut out = vec![0f32; n];
    crate::kernels::hugepage::advise(&mut out);
    dequantize_u4_run(packed, lut, scales, group, &mut out);
    Ok(out)
}

/// [`dequantize_u4_lut`] on a chosen instruction set; `Ok(None)` (nothing written) when
/// this CPU lacks `isa` or there is no kernel for it (see
/// [`quantize_i8_blocks_on`](super::quantize_i8_blocks_on)).
///
/// # Errors
/// As [`dequantize_u4_lut`], whether or not the CPU has `isa`.
pub fn dequantize_u4_lut_on(
    isa: Isa,
    packed: &[u8],
    lut: &[f32; 16],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) -> Result<Option<()>, KernelError> {
    check_u4(
        "dequantize_u4_lut_on",
        packed.len(),
        scales.len(),
        group,
        out.len(),
    )?;
    Ok(dequantize_u4_unchecked_on(
        isa, packed, lut, scales, group, out,
    ))
}

fn dequantize_u4_unchecked_on(
    isa: Isa,
    packed: &[u8],
    lut: &[f32; 16],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) -> Option<()> {
    Kernels::on(isa)?.dequantize_u4_lut(packed, lut, scales, group, out);
    Some(())
}
