//! Tensor quantizers: pure data transforms from float tensors to compact values and back.
//!
//! | type | code | scale per block/group | error bound per element |
//! |---|---|---|---|
//! | [`BlockwiseInt8`] | int8 `[-127, 127]` | f16 `amax/127` (GGML Q8_0) | `d/2 + 2⁻¹⁶d + |q|·|d−D| + 2⁻¹²⁶` |
//! | [`Affine`] | uint4 / uint8 | f32 scale + f32 zero point (group min) | `S/2 + 2⁻²³(|m| + qmax·S)` |
//! | [`SymmetricInt4`] | int4 `[-7, 7]` | f16 `amax/7`, rounded up | `D·(1/2 + 2⁻²¹)` |
//! | [`Nf4`] | NormalFloat4 code book | f32 absmax | `amax·(h_q + 2⁻²²)` |
//!
//! Each quantizer is a [`Compressor`](crate::Compressor) whose output implements
//! [`Compressed`](crate::Compressed); [`Scheme`](crate::scheme::Scheme) names them all and
//! [`CompressedTensor`](crate::scheme::CompressedTensor) holds any of their outputs.
//!
//! Shared conventions:
//! - Blocks and groups are consecutive runs of the row-major flattened tensor; the last one
//!   may be shorter.
//! - Input: F32, F16, BF16 or F64, any rank and layout. Integer dtypes give
//!   [`Error::UnsupportedDType`]; NaN/±Inf give [`Error::NonFinite`] naming the first flat
//!   index; a block or group size of 0 gives [`Error::InvalidArgument`].
//! - An empty tensor (a zero-sized dimension) compresses to a value with no payload and no
//!   scales, which decompresses to an empty tensor of the same shape and dtype.
//! - [`Compressed::size_bytes`](crate::Compressed::size_bytes) counts the payload, the
//!   scales and zero points, [`header_bytes`](crate::compressor::header_bytes) for shape and
//!   dtype, and [`SCHEME_BYTES`] for the format tag and block size.
//! - 4-bit codes are packed two per byte by [`int4::pack_nibbles`] (element `2i` in the
//!   low nibble, `2i + 1` in the high nibble): `n` values take `ceil(n / 2)` bytes.

pub mod affine;
pub mod blockwise;
pub mod calib;
pub mod dynamic;
pub mod int4;
pub mod metrics;
pub mod nf4;
pub mod scale;

pub use affine::{Affine, AffineTensor};
pub use blockwise::{BlockwiseInt8, BlockwiseInt8Tensor};
pub use int4::{SymmetricInt4, SymmetricInt4Tensor};
pub use metrics::ErrorStats;
pub use nf4::{Nf4, Nf4Tensor};

use candle_core::{DType, Shape};
use half::f16;

use crate::error::{Error, Result};

/// Bytes every compressed value counts for naming its format: a one-byte format tag
/// (scheme and bit width) and the block or group size as a `u32`.
pub const SCHEME_BYTES: usize = 5;

/// The default block or group size of every quantizer.
pub const DEFAULT_BLOCK: usize = 64;

/// Refuses a block or group size of 0.
pub(crate) fn check_block(name: &'static str, size: usize) -> Result<()> {
    if size == 0 {
        return Err(Error::invalid(name, "must be at least 1, found 0"));
    }
    Ok(())
}

/// Element count of `dims` without overflow.
pub(crate) fn checked_elem_count(dims: &[usize], what: &str) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Corrupt {
            what: what.to_string(),
            reason: format!("element count of shape {dims:?} overflows usize"),
        })
}

/// Checks one part's length against what the shape and block size imply.
pub(crate) fn check_part_len(what: &str, part: &str, expected: usize, found: usize) -> Result<()> {
    if expected != found {
        return Err(Error::metadata(
            format!("{what} {part} length"),
            expected,
            found,
        ));
    }
    Ok(())
}

/// Checks that a value's block size equals the compressor's.
pub(crate) fn check_same_block(what: &str, expected: usize, found: usize) -> Result<()> {
    if expected != found {
        return Err(Error::metadata(
            format!("{what} block/group size"),
            expected,
            found,
        ));
    }
    Ok(())
}

/// Validates the shape and dtype parts common to every `from_parts`; returns the element
/// count.
pub(crate) fn check_header(what: &str, shape: &Shape, dtype: DType) -> Result<usize> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => {}
        found => {
            return Err(Error::metadata(
                format!("{what} dtype"),
                crate::input::FLOAT_DTYPES,
                format!("{found:?}"),
            ))
        }
    }
    checked_elem_count(shape.dims(), what)
}

/// The smallest f16 that is `>= v`, for finite `v >= 0` (infinite when `v > f16::MAX`).
/// Rounding the scale *up* keeps every `|x| / scale` within the code range, so no value is
/// clipped, and keeps a non-zero block's scale non-zero even when `v` underflows f16.
pub(crate) fn f16_round_up(v: f32) -> f16 {
    let h = f16::from_f32(v);
    if f32::from(h) < v {
        f16::from_bits(h.to_bits() + 1)
    } else {
        h
    }
}

/// `round_half_away_from_zero(y)` without a libm call (x86-64's baseline has no rounding
/// instruction); exact for `|y| < 2^24`, where `y - trunc(y)` is exact.
#[inline]
pub(crate) fn round_half_away(y: f32) -> f32 {
    let t = (y as i32) as f32; // truncation toward zero
    let frac = y - t;
    // Branch-free (random data would mispredict a branch half the time).
    t + f32::from(u8::from(frac >= 0.5)) - f32::from(u8::from(frac <= -0.5))
}

/// Maximum absolute value of `x` (0 for an empty slice). Assumes finite input.
pub(crate) fn amax(x: &[f32]) -> f32 {
    // A plain comparison (the input is finite) so the reduction vectorizes.
    x.iter().fold(0f32, |m, v| {
        let a = v.abs();
        if a > m {
            a
        } else {
            m
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_round_up_never_rounds_down() {
        for v in [
            0.0f32,
            1e-30,
            5.9e-8,
            6.0e-8,
            0.1,
            1.0 / 3.0,
            1000.1,
            65504.0,
        ] {
            let h = f16_round_up(v);
            assert!(f32::from(h) >= v, "{v} -> {h}");
            let below = if h.to_bits() == 0 {
                f32::NEG_INFINITY
            } else {
                f32::from(f16::from_bits(h.to_bits() - 1))
            };
            assert!(below < v || v == 0.0, "{v} -> {h} is not the smallest");
        }
        assert!(f16_round_up(65504.5).is_infinite());
        assert_eq!(f16_round_up(0.0), f16::ZERO);
    }

    #[test]
    fn round_half_away_matches_std() {
        let mut y = -20.0f32;
        while y <= 20.0 {
            for v in [y, y + 0.5, y - f32::EPSILON, 0.5 - f32::EPSILON / 4.0, -0.5] {
                assert_eq!(round_half_away(v), v.round(), "{v}");
            }
            y += 0.125;
        }
    }

    #[test]
    fn checks_refuse_bad_values() {
        assert!(matches!(
            check_block("group_size", 0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(checked_elem_count(&[usize::MAX, 2], "x").is_err());
        assert!(matches!(
            check_part_len("t", "scales", 2, 3),
            Err(Error::MetadataMismatch { .. })
        ));
        assert!(check_header("t", &Shape::from(2usize), DType::U8).is_err());
    }
}
