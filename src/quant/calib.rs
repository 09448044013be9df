//! Calibration statistics that stream over batches: [`CalibStats`] for a whole tensor's
//! values and [`ChannelAbsMax`] for the running `max |x|` of every input channel.
//!
//! Neither keeps the values it has seen: a user runs the model over as many calibration
//! batches as they like and memory stays constant.
//!
//! # Accuracy
//!
//! - `count`, `min`, `max` and `max |x|` are exact.
//! - `mean` and `std` (population standard deviation, divided by `n`) are accumulated in
//!   f64: each batch's mean and sum of squared deviations are computed in two passes and
//!   merged with Chan et al.'s parallel update (the batch form of Welford's algorithm), so
//!   streaming and all-at-once agree to f64 rounding (relative ~1e-12 for realistic data).
//! - Percentiles of `|x|` come from a histogram with one bin per f32 exponent and leading
//!   7 mantissa bits (the top 16 bits of the f32 bit pattern, 32 640 bins, 255 KiB, allocated
//!   on the first value). The estimate of the nearest-rank percentile (same definition as
//!   [`scale`](crate::quant::scale)) is the largest value of the bin that holds the exact
//!   percentile, capped at the observed `max |x|`. Hence `exact ≤ estimate` and both lie in
//!   the same bin: `estimate < exact · (1 + 2⁻⁷)` for normal numbers (relative error
//!   < 0.79 %), and `estimate − exact < 2⁻¹³³` for subnormals. Bin counts add, so the
//!   estimate after streaming is *identical* to the estimate over all values at once.
//!
//! ```
//! use candle_compress::quant::calib::CalibStats;
//! use candle_compress::quant::scale::ScaleMode;
//! use candle_core::{Device, Tensor};
//!
//! let mut stats = CalibStats::new();
//! for batch in 0..4 {
//!     let x = Tensor::arange(0f32, 100., &Device::Cpu)?.affine(1.0, batch as f64 * 100.0)?;
//!     stats.observe(&x)?;
//! }
//! let s = stats.summary()?;
//! assert_eq!((s.count, s.min, s.max), (400, 0.0, 399.0));
//! assert!((s.mean - 199.5).abs() < 1e-9);
//! let p99 = stats.abs_percentile(99.0)?; // exact value: 395
//! assert!(p99 >= 395.0 && p99 < 395.0 * (1.0 + 1.0 / 128.0));
//! assert!(stats.suggested_scale(ScaleMode::Percentile(99.0), 127)? >= 395.0 / 127.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::input::{check_finite, with_f32_slice};
use crate::quant::scale::{check_percentile, percentile_rank, symmetric_scale, ScaleMode};

/// Number of low f32 bits dropped to form a histogram bin (23 mantissa bits − 7 kept).
const BIN_SHIFT: u32 = 16;
/// Bins needed for every finite non-negative f32: `f32::MAX.to_bits() >> 16` is 0x7F7F.
const N_BINS: usize = (0x7F7F_FFFF_u32 >> BIN_SHIFT) as usize + 1;

fn bin_of(mag: f32) -> usize {
    (mag.to_bits() >> BIN_SHIFT) as usize
}

fn bin_upper_edge(bin: usize) -> f32 {
    // Largest f32 whose top 16 bits are `bin` (bin < N_BINS, so the result is finite).
    f32::from_bits(((bin as u32) << BIN_SHIFT) | ((1 << BIN_SHIFT) - 1))
}

/// Streaming statistics of every value seen: count, min, max, mean, std, and percentiles
/// of `|x|` from a fixed-resolution histogram. See the [module docs](self) for accuracy.
#[derive(Debug, Clone, Default)]
pub struct CalibStats {
    count: u64,
    min: f32,
    max: f32,
    max_abs: f32,
    mean: f64,
    /// Sum of squared deviations from the mean.
    m2: f64,
    /// Counts of `|x|` per bin; empty until the first value.
    hist: Vec<u64>,
}

/// A snapshot of [`CalibStats`] with at least one value observed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibSummary {
    /// Number of values observed.
    pub count: u64,
    /// Smallest value.
    pub min: f32,
    /// Largest value.
    pub max: f32,
    /// `max |x|`.
    pub max_abs: f32,
    /// Mean, accumulated in f64.
    pub mean: f64,
    /// Population standard deviation (divided by `count`).
    pub std: f64,
    /// Histogram estimate of the 99th percentile of `|x|` (see the [module docs](self)).
    pub p99_abs: f32,
}

impl CalibStats {
    /// Empty statistics.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every value of `x` (any rank and layout; F32, F16, BF16 or F64).
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for integer tensors; [`Error::NonFinite`] naming the
    /// first NaN/±Inf by its flat index, in which case nothing is recorded.
    pub fn observe(&mut self, x: &Tensor) -> Result<()> {
        with_f32_slice(x, "CalibStats::observe", |v| self.observe_slice(v))
    }

    /// Adds `values`. An empty slice changes nothing.
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the first NaN/±Inf, in which case nothing is recorded.
    pub fn observe_slice(&mut self, values: &[f32]) -> Result<()> {
        check_finite(values, "CalibStats::observe")?;
        if values.is_empty() {
            return Ok(());
        }
        if self.hist.is_empty() {
            self.hist = vec![0; N_BINS];
        }
        let (mut lo, mut hi, mut amax) = (f32::INFINITY, f32::NEG_INFINITY, 0f32);
        let mut sum = 0f64;
        for &v in values {
            lo = lo.min(v);
            hi = hi.max(v);
            let a = v.abs();
            amax = amax.max(a);
            sum += f64::from(v);
            self.hist[bin_of(a)] += 1;
        }
        let n = values.len() as f64;
        let mean = sum / n;
        let m2: f64 = values
            .iter()
            .map(|&v| {
                let d = f64::from(v) - mean;
                d * d
            })
            .sum();
        self.merge_moments(values.len() as u64, lo, hi, amax, mean, m2);
        Ok(())
    }

    /// Merges statistics gathered elsewhere (another thread, another shard of the data),
    /// as if all of `other`'s values had been observed here.
    pub fn merge(&mut self, other: &CalibStats) {
        if other.count == 0 {
            return;
        }
        if self.hist.is_empty() {
            self.hist = vec![0; N_BINS];
        }
        for (a, b) in self.hist.iter_mut().zip(&other.hist) {
            *a += b;
        }
        self.merge_moments(
            other.count,
            other.min,
            other.max,
            other.max_abs,
            other.mean,
            other.m2,
        );
    }

    /// Chan et al.'s pairwise update of (count, mean, M2) plus min/max.
    fn merge_moments(&mut self, n_b: u64, lo: f32, hi: f32, amax: f32, mean_b: f64, m2_b: f64) {
        if self.count == 0 {
            self.count = n_b;
            self.min = lo;
            self.max = hi;
            self.max_abs = amax;
            self.mean = mean_b;
            self.m2 = m2_b;
            return;
        }
        let n_a = self.count as f64;
        let nb = n_b as f64;
        let n = n_a + nb;
        let delta = mean_b - self.mean;
        self.mean += delta * nb / n;
        self.m2 += m2_b + delta * delta * n_a * nb / n;
        self.count += n_b;
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        self.max_abs = self.max_abs.max(amax);
    }

    /// Number of values observed so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether no value has been observed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn ensure_nonempty(&self) -> Result<()> {
        if self.count == 0 {
            Err(Error::invalid(
                "calibration",
                "no values observed: run at least one non-empty batch first",
            ))
        } else {
            Ok(())
        }
    }

    /// Count, min, max, `max |x|`, mean, std and the 99th percentile of `|x|`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when nothing has been observed (empty calibration).
    pub fn summary(&self) -> Result<CalibSummary> {
        self.ensure_nonempty()?;
        Ok(CalibSummary {
            count: self.count,
            min: self.min,
            max: self.max,
            max_abs: self.max_abs,
            mean: self.mean,
            std: (self.m2.max(0.0) / self.count as f64).sqrt(),
            p99_abs: self.abs_percentile(99.0)?,
        })
    }

    /// Histogram estimate of the nearest-rank `p`-th percentile of `|x|`: at least the
    /// exact value and in the same histogram bin (see the [module docs](self)).
    /// `p = 100` returns the exact `max |x|`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `p` outside `(0, 100]` or when nothing has been
    /// observed.
    pub fn abs_percentile(&self, p: f32) -> Result<f32> {
        check_percentile(p)?;
        self.ensure_nonempty()?;
        let want = percentile_rank(self.count as usize, p) as u64 + 1;
        let mut seen = 0u64;
        for (bin, &c) in self.hist.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Ok(bin_upper_edge(bin).min(self.max_abs));
            }
        }
        // Unreachable while the histogram holds `count` values; max |x| is the safe answer.
        Ok(self.max_abs)
    }

    /// The clip value a symmetric quantizer would use under `mode`: the exact `max |x|`,
    /// or the histogram estimate of the `p`-th percentile of `|x|`.
    ///
    /// # Errors
    /// As [`CalibStats::abs_percentile`].
    pub fn clip_value(&self, mode: ScaleMode) -> Result<f32> {
        mode.validate()?;
        self.ensure_nonempty()?;
        match mode {
            ScaleMode::MaxAbs => Ok(self.max_abs),
            ScaleMode::Percentile(p) => self.abs_percentile(p),
        }
    }

    /// A static symmetric scale for values like these: `clip_value(mode) / qmax` (127 for
    /// int8, 7 for int4).
    ///
    /// # Errors
    /// As [`CalibStats::abs_percentile`], and [`Error::InvalidArgument`] for `qmax == 0`.
    pub fn suggested_scale(&self, mode: ScaleMode, qmax: u8) -> Result<f32> {
        if qmax == 0 {
            return Err(Error::invalid("qmax", "must be at least 1, found 0"));
        }
        Ok(symmetric_scale(self.clip_value(mode)?, qmax))
    }
}

/// Running `max |x|` of every channel (the last dimension) of the activations seen: the
/// statistic SmoothQuant's factors are computed from.
///
/// ```
/// use candle_compress::quant::calib::ChannelAbsMax;
/// use candle_core::{Device, Tensor};
///
/// let mut obs = ChannelAbsMax::new(3)?;
/// obs.observe(&Tensor::new(&[[1f32, -5., 0.], [2., 1., -0.5]], &Device::Cpu)?)?;
/// obs.observe(&Tensor::new(&[[[-3f32, 0., 0.]]], &Device::Cpu)?)?; // any leading dims
/// assert_eq!(obs.max_abs()?, &[3.0, 5.0, 0.5]);
/// assert_eq!(obs.rows(), 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelAbsMax {
    max_abs: Vec<f32>,
    rows: u64,
}

impl ChannelAbsMax {
    /// An observer of `channels` channels with nothing observed yet.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `channels` is 0.
    pub fn new(channels: usize) -> Result<Self> {
        if channels == 0 {
            return Err(Error::invalid("channels", "must be at least 1, found 0"));
        }
        Ok(Self {
            max_abs: vec![0.0; channels],
            rows: 0,
        })
    }

    /// Builds an observer from known per-channel maxima (e.g. statistics saved from an
    /// earlier calibration run), counted as `rows` observed rows.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty vector, `rows == 0` or a negative value;
    /// [`Error::NonFinite`] for NaN/±Inf.
    pub fn from_max_abs(max_abs: Vec<f32>, rows: u64) -> Result<Self> {
        if max_abs.is_empty() {
            return Err(Error::invalid("max_abs", "must hold at least one channel"));
        }
        if rows == 0 {
            return Err(Error::invalid(
                "rows",
                "statistics must come from at least one observed row",
            ));
        }
        check_finite(&max_abs, "ChannelAbsMax::from_max_abs")?;
        if let Some(i) = max_abs.iter().position(|&m| m < 0.0) {
            return Err(Error::invalid(
                "max_abs",
                format!("channel {i} holds a negative maximum {}", max_abs[i]),
            ));
        }
        Ok(Self { max_abs, rows })
    }

    /// Number of channels.
    #[must_use]
    pub fn channels(&self) -> usize {
        self.max_abs.len()
    }

    /// Number of rows (tokens) observed.
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Records a tensor whose last dimension is the channel dimension (rank ≥ 1; F32,
    /// F16, BF16 or F64; any layout).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for rank 0 or a last dimension other than
    /// [`channels`](Self::channels); [`Error::UnsupportedDType`]; [`Error::NonFinite`]
    /// naming the first bad flat index, in which case nothing is recorded.
    pub fn observe(&mut self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        match dims.last() {
            Some(&c) if c == self.channels() => {}
            _ => {
                return Err(Error::shape(
                    "ChannelAbsMax input (last dimension = channels)",
                    format!("[.., {}]", self.channels()),
                    dims,
                ))
            }
        }
        with_f32_slice(x, "ChannelAbsMax::observe", |v| self.observe_slice(v))
    }

    /// Records row-major values, `channels` per row.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `values.len()` is not a multiple of the channel count;
    /// [`Error::NonFinite`] naming the first bad index, in which case nothing is recorded.
    pub fn observe_slice(&mut self, values: &[f32]) -> Result<()> {
        let c = self.channels();
        if !values.len().is_multiple_of(c) {
            return Err(Error::shape(
                "ChannelAbsMax input length (a multiple of channels)",
                format!("k * {c}"),
                values.len(),
            ));
        }
        check_finite(values, "ChannelAbsMax::observe")?;
        for row in values.chunks_exact(c) {
            for (m, &v) in self.max_abs.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        self.rows += (values.len() / c) as u64;
        Ok(())
    }

    /// Merges another observer of the same channels.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the channel counts differ.
    pub fn merge(&mut self, other: &ChannelAbsMax) -> Result<()> {
        if other.channels() != self.channels() {
            return Err(Error::shape(
                "ChannelAbsMax::merge channels",
                self.channels(),
                other.channels(),
            ));
        }
        for (m, &o) in self.max_abs.iter_mut().zip(&other.max_abs) {
            *m = m.max(o);
        }
        self.rows += other.rows;
        Ok(())
    }

    /// The per-channel `max |x|`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when no row has been observed (empty calibration): the
    /// zeros held then are not statistics.
    pub fn max_abs(&self) -> Result<&[f32]> {
        if self.rows == 0 {
            return Err(Error::invalid(
                "calibration",
                "no rows observed: run at least one calibration batch first",
            ));
        }
        Ok(&self.max_abs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_every_finite_magnitude() {
        assert_eq!(bin_of(f32::MAX), N_BINS - 1);
        assert_eq!(bin_upper_edge(N_BINS - 1), f32::MAX);
        assert_eq!(bin_of(0.0), 0);
        for v in [1e-40f32, 1e-3, 1.0, 3.7, 1e20] {
            let b = bin_of(v);
            assert!(bin_upper_edge(b) >= v);
            assert_eq!(bin_of(bin_upper_edge(b)), b);
        }
    }

    #[test]
    fn empty_calibration_is_an_error() {
        let s = CalibStats::new();
        assert!(s.summary().is_err());
        assert!(s.suggested_scale(ScaleMode::MaxAbs, 127).is_err());
        let o = ChannelAbsMax::new(4).unwrap();
        assert!(o.max_abs().is_err());
        assert!(ChannelAbsMax::new(0).is_err());
    }

    #[test]
    fn non_finite_records_nothing() {
        let mut s = CalibStats::new();
        s.observe_slice(&[1.0, 2.0]).unwrap();
        match s.observe_slice(&[3.0, f32::NAN]) {
            Err(Error::NonFinite { index: 1, .. }) => {}
            other => panic!("expected NonFinite, got {other:?}"),
        }
        assert_eq!(s.count(), 2);
        let mut o = ChannelAbsMax::new(2).unwrap();
        assert!(o.observe_slice(&[1.0, 2.0, f32::INFINITY, 0.0]).is_err());
        assert_eq!(o.rows(), 0);
    }

    #[test]
    fn merge_equals_single_pass() {
        let v: Vec<f32> = (0..1000).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let mut all = CalibStats::new();
        all.observe_slice(&v).unwrap();
        let mut a = CalibStats::new();
        let mut b = CalibStats::new();
        a.observe_slice(&v[..300]).unwrap();
        b.observe_slice(&v[300..]).unwrap();
        a.merge(&b);
        let (x, y) = (a.summary().unwrap(), all.summary().unwrap());
        assert_eq!(
            (x.count, x.min, x.max, x.p99_abs),
            (y.count, y.min, y.max, y.p99_abs)
        );
        assert!((x.mean - y.mean).abs() < 1e-12);
        assert!((x.std - y.std).abs() < 1e-12);
    }
}
