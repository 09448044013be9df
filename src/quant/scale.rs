//! How a symmetric quantization scale is chosen from data: [`ScaleMode`].
//!
//! A symmetric quantizer with `qmax` levels on each side (127 for int8, 7 for int4) maps
//! `x` to `round(x / scale)` with `scale = clip / qmax`. The *clip value* decides the
//! trade-off between resolution and saturation:
//!
//! - [`ScaleMode::MaxAbs`]: `clip = max |x|`. Nothing saturates; one outlier stretches
//!   the step for every other value.
//! - [`ScaleMode::Percentile`]`(p)`: `clip` = the `p`-th percentile of `|x|`. The few
//!   values above it saturate to `±qmax`; the rest get a finer step.
//!
//! # Percentile definition
//!
//! The *nearest-rank* percentile: with the `n` values of `|x|` sorted ascending as
//! `a[0] ≤ … ≤ a[n-1]`, the `p`-th percentile (`0 < p ≤ 100`) is `a[r]` with
//! `r = ceil(p / 100 · n) − 1` (computed in f64, then clamped to `[0, n − 1]`). It is
//! always one of the data values; `p = 100` is the maximum. [`abs_percentile`] finds it by
//! selection (`select_nth_unstable`, O(n) expected), not by sorting.
//!
//! ```
//! use candle_compress::quant::scale::{abs_percentile, ScaleMode};
//!
//! let x: Vec<f32> = (1..=100).map(|v| v as f32).collect();
//! assert_eq!(abs_percentile(&x, 99.0)?, 99.0);
//! assert_eq!(ScaleMode::MaxAbs.clip_value(&x)?, 100.0);
//! assert_eq!(ScaleMode::Percentile(50.0).scale(&x, 127)?, 50.0 / 127.0);
//! # Ok::<(), candle_compress::Error>(())
//! ```

use crate::error::{Error, Num, Result};
use crate::input::check_finite;

/// How the clip value (and so the scale) of a symmetric quantizer is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum ScaleMode {
    /// `clip = max |x|`: no value saturates.
    #[default]
    MaxAbs,
    /// `clip` = the nearest-rank `p`-th percentile of `|x|`, `0 < p ≤ 100` (see the
    /// [module docs](self)); values above it saturate.
    Percentile(f32),
}

impl ScaleMode {
    /// Checks the mode's parameter.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a percentile is not finite or not in `(0, 100]`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            ScaleMode::MaxAbs => Ok(()),
            ScaleMode::Percentile(p) => check_percentile(p),
        }
    }

    /// The clip value of `values` under this mode: `max |x|` or the `p`-th percentile of
    /// `|x|`. Zero for an all-zero input.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty slice or a bad percentile;
    /// [`Error::NonFinite`] naming the first NaN/±Inf.
    pub fn clip_value(&self, values: &[f32]) -> Result<f32> {
        self.validate()?;
        match *self {
            ScaleMode::MaxAbs => max_abs(values),
            ScaleMode::Percentile(p) => abs_percentile(values, p),
        }
    }

    /// The symmetric scale `clip_value(values) / qmax` (0 for an all-zero input, which
    /// quantizes to zeros).
    ///
    /// # Errors
    /// As [`ScaleMode::clip_value`], and [`Error::InvalidArgument`] when `qmax` is 0.
    pub fn scale(&self, values: &[f32], qmax: u8) -> Result<f32> {
        if qmax == 0 {
            return Err(Error::invalid("qmax", "must be at least 1, found 0"));
        }
        Ok(symmetric_scale(self.clip_value(values)?, qmax))
    }
}

/// `clip / qmax`, the step of a symmetric quantizer with `qmax` levels per side.
///
/// `clip` is expected finite and non-negative (as [`ScaleMode::clip_value`] returns); a
/// `qmax` of 0 returns 0.
#[must_use]
pub fn symmetric_scale(clip: f32, qmax: u8) -> f32 {
    if qmax == 0 {
        0.0
    } else {
        clip / qmax as f32
    }
}

/// `max |x|` over `values`.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty slice; [`Error::NonFinite`] naming the first
/// NaN/±Inf.
pub fn max_abs(values: &[f32]) -> Result<f32> {
    if values.is_empty() {
        return Err(Error::invalid(
            "values",
            "cannot compute a scale of zero values",
        ));
    }
    let mut m = 0f32;
    for (i, &v) in values.iter().enumerate() {
        if !v.is_finite() {
            return Err(Error::NonFinite {
                op: "max_abs",
                index: i,
                value: v,
            });
        }
        m = m.max(v.abs());
    }
    Ok(m)
}

/// The rank (0-based index into `|x|` sorted ascending) of the nearest-rank `p`-th
/// percentile of `n` values: `ceil(p / 100 · n) − 1`, clamped to `[0, n − 1]`.
///
/// `n` must be at least 1 and `p` in `(0, 100]` (callers validate; out-of-range inputs are
/// clamped, never a panic).
#[must_use]
pub fn percentile_rank(n: usize, p: f32) -> usize {
    if n == 0 {
        return 0;
    }
    let r = (f64::from(p) / 100.0 * n as f64).ceil();
    // `as usize` saturates (NaN -> 0), so this never panics.
    (r as usize).clamp(1, n) - 1
}

/// The nearest-rank `p`-th percentile of `|x|` (see the [module docs](self)), found by
/// selection in O(n) expected time on a copy of the magnitudes.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty slice or `p` outside `(0, 100]`;
/// [`Error::NonFinite`] naming the first NaN/±Inf.
pub fn abs_percentile(values: &[f32], p: f32) -> Result<f32> {
    check_percentile(p)?;
    if values.is_empty() {
        return Err(Error::invalid(
            "values",
            "cannot compute a percentile of zero values",
        ));
    }
    check_finite(values, "abs_percentile")?;
    let mut mags: Vec<f32> = values.iter().map(|v| v.abs()).collect();
    Ok(select_abs_percentile(&mut mags, p))
}

/// Selection on finite, non-negative `mags` (reordered in place): the value at
/// [`percentile_rank`]. `mags` must not be empty.
pub(crate) fn select_abs_percentile(mags: &mut [f32], p: f32) -> f32 {
    let r = percentile_rank(mags.len(), p);
    let (_, v, _) = mags.select_nth_unstable_by(r, f32::total_cmp);
    *v
}

pub(crate) fn check_percentile(p: f32) -> Result<()> {
    if p.is_finite() && p > 0.0 && p <= 100.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "percentile",
            format!("must be in (0, 100], found {}", Num(p)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_nearest_rank_definition() {
        assert_eq!(percentile_rank(1, 0.1), 0);
        assert_eq!(percentile_rank(100, 99.0), 98);
        assert_eq!(percentile_rank(100, 100.0), 99);
        assert_eq!(percentile_rank(10, 50.0), 4);
        assert_eq!(percentile_rank(10, 51.0), 5);
        assert_eq!(percentile_rank(3, 1.0), 0);
    }

    #[test]
    fn percentile_uses_magnitudes() -> Result<()> {
        let x = [-10.0, 1.0, -2.0, 3.0];
        assert_eq!(abs_percentile(&x, 100.0)?, 10.0);
        assert_eq!(abs_percentile(&x, 75.0)?, 3.0);
        assert_eq!(abs_percentile(&x, 25.0)?, 1.0);
        Ok(())
    }

    #[test]
    fn refuses_bad_input() {
        assert!(abs_percentile(&[], 50.0).is_err());
        assert!(abs_percentile(&[1.0], 0.0).is_err());
        assert!(abs_percentile(&[1.0], 100.5).is_err());
        assert!(abs_percentile(&[1.0], f32::NAN).is_err());
        match abs_percentile(&[1.0, 2.0, f32::INFINITY], 50.0) {
            Err(Error::NonFinite { index: 2, .. }) => {}
            other => panic!("expected NonFinite at 2, got {other:?}"),
        }
        match max_abs(&[0.0, f32::NAN]) {
            Err(Error::NonFinite { index: 1, .. }) => {}
            other => panic!("expected NonFinite at 1, got {other:?}"),
        }
        assert!(ScaleMode::MaxAbs.scale(&[1.0], 0).is_err());
    }

    #[test]
    fn zero_input_gives_zero_scale() -> Result<()> {
        assert_eq!(ScaleMode::MaxAbs.scale(&[0.0; 4], 127)?, 0.0);
        assert_eq!(ScaleMode::Percentile(99.0).scale(&[0.0; 4], 7)?, 0.0);
        Ok(())
    }
}
