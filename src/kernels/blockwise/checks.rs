//! The argument rules of every blockwise entry point (block or group `>= 1`, the length
//! of each slice), in one place: the `unsafe` kernels behind the entry points rely on
//! exactly these checks, so they can be read and audited together.

use crate::kernels::error::{expect_len, expect_positive, KernelError};

/// The length rules of the int8 block kernels: `block >= 1`, the value slice `(name, n)`
/// and the code (or output) slice `other` of the same length, one scale per block.
pub(super) fn check_i8(
    op: &'static str,
    (n_name, n): (&'static str, usize),
    block: usize,
    (other_name, other): (&'static str, usize),
    scales: usize,
) -> Result<(), KernelError> {
    expect_positive(op, "block", block)?;
    expect_len(op, other_name, other, n, || format!("{n_name}.len()"))?;
    expect_len(op, "scales", scales, n.div_ceil(block), || {
        format!("one per block of {block} over {n} values: ⌈{n} / {block}⌉")
    })
}

/// The length rules of [`dequantize_u4_lut`] for `n` values.
pub(super) fn check_u4(
    op: &'static str,
    packed: usize,
    scales: usize,
    group: usize,
    n: usize,
) -> Result<(), KernelError> {
    expect_positive(op, "group", group)?;
    expect_len(op, "packed", packed, n.div_ceil(2), || {
        format!("{n} codes two per byte: ⌈{n} / 2⌉")
    })?;
    expect_len(op, "scales", scales, n.div_ceil(group), || {
        format!("one per group of {group} over {n} values: ⌈{n} / {group}⌉")
    })
}

/// The argument rules of [`dequantize_affine`] for `n` values.
pub(super) fn check_affine(
    op: &'static str,
    codes: usize,
    bits: u8,
    zero_points: usize,
    scales: usize,
    group: usize,
    n: usize,
) -> Result<(), KernelError> {
    if bits != 4 && bits != 8 {
        return Err(KernelError::invalid(
            op,
            "bits",
            format!("must be 4 or 8, found {bits}"),
        ));
    }
    expect_positive(op, "group", group)?;
    if bits == 8 {
        expect_len(op, "codes", codes, n, || "one byte per 8-bit code".into())?;
    } else {
        expect_len(op, "codes", codes, n.div_ceil(2), || {
            format!("{n} 4-bit codes two per byte: ⌈{n} / 2⌉")
        })?;
    }
    let groups = n.div_ceil(group);
    let how = || format!("one per group of {group} over {n} values: ⌈{n} / {group}⌉");
    expect_len(op, "zero_points", zero_points, groups, how)?;
    expect_len(op, "scales", scales, groups, how)
}
