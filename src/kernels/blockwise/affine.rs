//! The safe entry points of the affine decoder: 8- or 4-bit codes with a zero point and a
//! scale per group, computed in f64 (the formula of `quant::affine`).

use super::checks::check_affine;
use super::{kernel_isa, scalar, Kernels};
use crate::kernels::detect::Isa;
use crate::kernels::error::KernelError;

/// Dequantizes asymmetric (affine) 8- or 4-bit codes with a zero point and a scale per
/// group: `out[i] = (m + q·s computed in f64).clamp(±f32::MAX) as f32` with
/// `m = zero_points[i / group]`, `s = scales[i / group]`, `q = code(i)` — the formula of
/// `quant::affine`, bit-identical on every ISA. `bits == 8`: one code per byte;
/// `bits == 4`: two per byte, element `2k` in the low nibble of byte `k`.
///
/// Arguments: `bits` is 4 or 8, `group >= 1`, `codes.len()` is `out.len()` (8 bits) or
/// `out.len().div_ceil(2)` (4 bits), `zero_points.len() == scales.len() ==
/// out.len().div_ceil(group)`.
///
/// # Errors
/// [`KernelError::InvalidArgument`] for `bits` or `group`, [`KernelError::Length`] when a
/// length above does not hold; nothing is written then.
///
/// ```
/// use candle_compress::kernels::blockwise::dequantize_affine;
/// let mut out = [0f32; 3];
/// dequantize_affine(&[0, 255, 10], 8, &[-1.0], &[0.5], 3, &mut out).unwrap();
/// assert_eq!(out, [-1.0, 126.5, 4.0]);
/// assert!(dequantize_affine(&[0, 255], 8, &[-1.0], &[0.5], 3, &mut out).is_err());
/// ```
pub fn dequantize_affine(
    codes: &[u8],
    bits: u8,
    zero_points: &[f32],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_affine(
        "dequantize_affine",
        codes.len(),
        bits,
        zero_points.len(),
        scales.len(),
        group,
        out.len(),
    )?;
    dequantize_affine_run(codes, bits, zero_points, scales, group, out);
    Ok(())
}

/// The dispatch of [`dequantize_affine`] once its arguments were checked.
fn dequantize_affine_run(
    codes: &[u8],
    bits: u8,
    zero_points: &[f32],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) {
    if dequantize_affine_unchecked_on(kernel_isa(), codes, bits, zero_points, scales, group, out)
        .is_none()
    {
        scalar::dequantize_affine(codes, bits, zero_points, scales, group, out)
    }
}

/// [`dequantize_affine`] of `n` values into a new `Vec`, with the huge-page advice of
/// [`dequantize_i8_blocks_to_vec`](super::dequantize_i8_blocks_to_vec) for large
/// outputs.
///
/// # Errors
/// As [`dequantize_affine`] with `out.len() == n`, before anything is allocated.
pub fn dequantize_affine_to_vec(
    codes: &[u8],
    bits: u8,
    zero_points: &[f32],
    scales: &[f32],
    group: usize,
    n: usize,
) -> Result<Vec<f32>, KernelError> {
    check_affine(
        "dequantize_affine_to_vec",
        codes.len(),
        bits,
        zero_points.len(),
        scales.len(),
        group,
        n,
    )?;
    let mut out = vec![0f32; n];
    crate::kernels::hugepage::advise(&mut out);
    dequantize_affine_run(codes, bits, zero_points, scales, group, &mut out);
    Ok(out)
}

/// [`dequantize_affine`] on a chosen instruction set; `Ok(None)` (nothing written) when
/// this CPU lacks `isa` or there is no kernel for it (see
/// [`quantize_i8_blocks_on`](super::quantize_i8_blocks_on)).
///
/// # Errors
/// As [`dequantize_affine`], whether or not the CPU has `isa`.
pub fn dequantize_affine_on(
    isa: Isa,
    codes: &[u8],
    bits: u8,
    zero_points: &[f32],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) -> Result<Option<()>, KernelError> {
    check_affine(
        "dequantize_affine_on",
        codes.len(),
        bits,
        zero_points.len(),
        scales.len(),
        group,
        out.len(),
    )?;
    Ok(dequantize_affine_unchecked_on(
        isa,
        codes,
        bits,
        zero_points,
        scales,
        group,
        out,
    ))
}

fn dequantize_affine_unchecked_on(
    isa: Isa,
    codes: &[u8],
    bits: u8,
    zero_points: &[f32],
    scales: &[f32],
    group: usize,
    out: &mut [f32],
) -> Option<()> {
    Kernels::on(isa)?.dequantize_affine(codes, bits, zero_points, scales, group, out);
    Some(())
}
