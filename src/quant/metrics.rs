//! Error metrics between a reference and its approximation: MAE, MSE, max abs error,
//! SQNR (dB) and cosine similarity.
//!
//! All sums run in f64. Both inputs must have the same length (slices) or shape (tensors)
//! and be finite. Edge cases, chosen so that "no error" always reads as perfect:
//!
//! | case | MAE / MSE / max | SQNR dB | cosine |
//! |---|---|---|---|
//! | empty inputs | 0 | `+∞` | 1 |
//! | zero error (identical inputs, any signal) | 0 | `+∞` | 1 if both norms are 0, else the cosine (1 up to rounding) |
//! | reference all zero, approx not | > 0 | `-∞` | 0 |
//! | approx all zero, reference not | > 0 | 0 | 0 |
//!
//! SQNR is `10·log10(Σ ref² / Σ (ref − approx)²)`. Cosine similarity is
//! `Σ ref·approx / (‖ref‖·‖approx‖)`, defined as 1 when both norms are 0 and 0 when exactly
//! one is.
//!
//! ```
//! use candle_compress::quant::metrics::{compare_slices, sqnr_db};
//! let a = [1.0f32, 2.0, 3.0];
//! let b = [1.0f32, 2.0, 3.5];
//! let s = compare_slices(&a, &b)?;
//! assert_eq!(s.max_abs_error, 0.5);
//! assert!((s.sqnr_db - 10.0 * (14.0f64 / 0.25).log10()).abs() < 1e-12);
//! assert_eq!(sqnr_db(&a, &a)?, f64::INFINITY);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::input::{check_finite, FloatData};

/// All metrics between a reference and an approximation, computed in one pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorStats {
    /// Number of elements compared.
    pub len: usize,
    /// Mean absolute error (0 for empty inputs).
    pub mae: f64,
    /// Mean squared error (0 for empty inputs).
    pub mse: f64,
    /// Largest absolute element-wise error (0 for empty inputs).
    pub max_abs_error: f64,
    /// Signal-to-quantization-noise ratio in dB; `+∞` when the error is zero, `-∞` when the
    /// signal is zero and the error is not.
    pub sqnr_db: f64,
    /// Cosine similarity; 1 when both inputs are all zero, 0 when exactly one is.
    pub cosine_similarity: f64,
}

/// Compares two slices of equal length.
///
/// # Errors
/// [`Error::ShapeMismatch`] when the lengths differ; [`Error::NonFinite`] naming the first
/// non-finite element (of `reference`, then of `approx`).
pub fn compare_slices(reference: &[f32], approx: &[f32]) -> Result<ErrorStats> {
    if reference.len() != approx.len() {
        return Err(Error::shape(
            "metrics: approx length",
            reference.len(),
            approx.len(),
        ));
    }
    check_finite(reference, "metrics (reference)")?;
    check_finite(approx, "metrics (approx)")?;
    let (mut abs_sum, mut sq_err, mut max_err) = (0f64, 0f64, 0f64);
    let (mut sig, mut dot, mut approx_sq) = (0f64, 0f64, 0f64);
    for (&r, &a) in reference.iter().zip(approx) {
        let (r, a) = (f64::from(r), f64::from(a));
        let e = (r - a).abs();
        abs_sum += e;
        sq_err += e * e;
        max_err = max_err.max(e);
        sig += r * r;
        dot += r * a;
        approx_sq += a * a;
    }
    let n = reference.len();
    let (mae, mse) = if n == 0 {
        (0.0, 0.0)
    } else {
        (abs_sum / n as f64, sq_err / n as f64)
    };
    let sqnr_db = if sq_err == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (sig / sq_err).log10()
    };
    let cosine_similarity = match (sig == 0.0, approx_sq == 0.0) {
        (true, true) => 1.0,
        (true, false) | (false, true) => 0.0,
        (false, false) => (dot / (sig.sqrt() * approx_sq.sqrt())).clamp(-1.0, 1.0),
    };
    Ok(ErrorStats {
        len: n,
        mae,
        mse,
        max_abs_error: max_err,
        sqnr_db,
        cosine_similarity,
    })
}

/// Compares two float tensors of the same shape (any float dtype each, any layout; both
/// are read as f32).
///
/// # Errors
/// [`Error::UnsupportedDType`] for integer tensors; [`Error::ShapeMismatch`] when the shapes
/// differ; [`Error::NonFinite`] as in [`compare_slices`].
pub fn compare_tensors(reference: &Tensor, approx: &Tensor) -> Result<ErrorStats> {
    if reference.shape() != approx.shape() {
        return Err(Error::shape(
            "metrics: approx tensor",
            reference.dims(),
            approx.dims(),
        ));
    }
    let r = FloatData::from_tensor(reference, "metrics (reference)")?;
    let a = FloatData::from_tensor(approx, "metrics (approx)")?;
    compare_slices(&r.values, &a.values)
}

/// Mean absolute error between two slices. Errors as in [`compare_slices`].
pub fn mae(reference: &[f32], approx: &[f32]) -> Result<f64> {
    Ok(compare_slices(reference, approx)?.mae)
}

/// Mean squared error between two slices. Errors as in [`compare_slices`].
pub fn mse(reference: &[f32], approx: &[f32]) -> Result<f64> {
    Ok(compare_slices(reference, approx)?.mse)
}

/// Largest absolute element-wise error. Errors as in [`compare_slices`].
pub fn max_abs_error(reference: &[f32], approx: &[f32]) -> Result<f64> {
    Ok(compare_slices(reference, approx)?.max_abs_error)
}

/// SQNR in dB (`+∞` for zero error). Errors as in [`compare_slices`].
pub fn sqnr_db(reference: &[f32], approx: &[f32]) -> Result<f64> {
    Ok(compare_slices(reference, approx)?.sqnr_db)
}

/// Cosine similarity (1 when both are all zero). Errors as in [`compare_slices`].
pub fn cosine_similarity(reference: &[f32], approx: &[f32]) -> Result<f64> {
    Ok(compare_slices(reference, approx)?.cosine_similarity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn known_values() -> Result<()> {
        let s = compare_slices(&[3.0, -4.0], &[3.0, -2.0])?;
        assert_eq!(s.len, 2);
        assert_eq!(s.mae, 1.0);
        assert_eq!(s.mse, 2.0);
        assert_eq!(s.max_abs_error, 2.0);
        assert!((s.sqnr_db - 10.0 * (25.0f64 / 4.0).log10()).abs() < 1e-12);
        assert!((s.cosine_similarity - 17.0 / (5.0 * 13f64.sqrt())).abs() < 1e-12);
        Ok(())
    }

    #[test]
    fn edge_cases() -> Result<()> {
        let empty = compare_slices(&[], &[])?;
        assert_eq!(
            (empty.mae, empty.sqnr_db, empty.cosine_similarity),
            (0.0, f64::INFINITY, 1.0)
        );
        let zeros = compare_slices(&[0.0; 3], &[0.0; 3])?;
        assert_eq!(
            (zeros.sqnr_db, zeros.cosine_similarity),
            (f64::INFINITY, 1.0)
        );
        let noise_only = compare_slices(&[0.0; 2], &[0.0, 1.0])?;
        assert_eq!(
            (noise_only.sqnr_db, noise_only.cosine_similarity),
            (f64::NEG_INFINITY, 0.0)
        );
        assert_eq!(cosine_similarity(&[1.0, 0.0], &[-2.0, 0.0])?, -1.0);
        assert!(matches!(
            mae(&[1.0], &[1.0, 2.0]),
            Err(Error::ShapeMismatch { .. })
        ));
        match mse(&[1.0, 2.0], &[1.0, f32::NAN]) {
            Err(Error::NonFinite { index: 1, .. }) => {}
            other => panic!("expected NonFinite at 1, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn tensors_checked_for_shape_and_dtype() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &dev)?;
        let b = a.to_dtype(DType::F16)?;
        assert_eq!(compare_tensors(&a, &b)?.max_abs_error, 0.0);
        let c = a.t()?; // non-contiguous, same shape [2, 2]
        assert_eq!(compare_tensors(&a, &c)?.max_abs_error, 1.0);
        assert!(matches!(
            compare_tensors(&a, &a.flatten_all()?),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            compare_tensors(&a, &a.to_dtype(DType::U32)?),
            Err(Error::UnsupportedDType { .. })
        ));
        assert_eq!(max_abs_error(&[1.0], &[1.5])?, 0.5);
        assert_eq!(sqnr_db(&[1.0], &[1.0])?, f64::INFINITY);
        Ok(())
    }
}
