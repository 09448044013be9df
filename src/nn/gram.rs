//! [`InputGram`]: the Gram matrix `H = Σ xᵀx` of a linear layer's inputs (f64, streaming,
//! mergeable), the calibration statistic of [GPTQ](crate::nn::gptq) and
//! [AWQ](crate::nn::awq); and [`GramLinear`], a `candle_nn::Linear` that accumulates it
//! during ordinary forward passes, skipping padding rows.
//!
//! For a layer `y = x·Wᵀ` and calibration rows `X` (`[rows, in]`), the output error of
//! any replacement weight `Ŵ` is `‖XWᵀ − XŴᵀ‖² = Σ_o (w_o − ŵ_o) H (w_o − ŵ_o)ᵀ` with
//! `H = XᵀX`: `H` is all a weight quantizer needs to know about the data. It is
//! accumulated in f64 by blocks of rows, so the order and split of the batches changes
//! it only by f64 rounding (relative `~1e-15`), and two accumulators over disjoint data
//! [merge](InputGram::merge) into the accumulator of their union.
//!
//! ```
//! use candle_compress::nn::gram::InputGram;
//! use candle_core::{Device, Tensor};
//!
//! let x = Tensor::new(&[[1f32, 2.], [3., -4.], [0.5, 0.]], &Device::Cpu)?;
//! let mut h = InputGram::new(2)?;
//! h.observe_masked(&x, &[true, true, false])?; // the last row is padding
//! assert_eq!(h.rows(), 2);
//! assert_eq!(h.matrix(), &[10.0, -10.0, -10.0, 20.0]); // [1,2]ᵀ[1,2] + [3,-4]ᵀ[3,-4]
//! assert_eq!(h.mean_abs()?, vec![2.0, 3.0]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{Device, Module, Tensor};
use candle_nn::Linear;

use crate::error::{Error, Result};
use crate::input::with_f32_slice;

/// Rows multiplied together per f64 matmul when accumulating (bounds the temporary).
const ROW_BLOCK: usize = 4096;
/// Channels per band of the upper-triangle accumulation.
const SYM_BAND: usize = 128;

/// The streaming Gram matrix `H = Σ xᵀx` of input rows `x` (`in` channels), the sum of
/// `|x|` per channel and the row count, all in f64. See the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct InputGram {
    channels: usize,
    rows: u64,
    /// Row-major `[channels, channels]`, symmetric.
    h: Vec<f64>,
    abs_sum: Vec<f64>,
}

impl InputGram {
    /// An empty accumulator for inputs with `channels` columns. Memory: `8·channels²`
    /// bytes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero channels or a matrix size that overflows.
    pub fn new(channels: usize) -> Result<Self> {
        if channels == 0 {
            return Err(Error::invalid("InputGram channels", "must be > 0, found 0"));
        }
        let n = channels
            .checked_mul(channels)
            .ok_or_else(|| Error::invalid("InputGram channels", "channels² overflows usize"))?;
        Ok(Self {
            channels,
            rows: 0,
            h: vec![0.0; n],
            abs_sum: vec![0.0; channels],
        })
    }

    /// Builds an accumulator from stored parts: `h` row-major `[channels, channels]`
    /// (symmetric), `abs_sum` `[channels]`, `rows` rows behind them.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for wrong lengths; [`Error::InvalidArgument`] for an
    /// asymmetric `h`, a negative diagonal or `abs_sum` entry, or non-finite entries.
    pub fn from_parts(channels: usize, rows: u64, h: Vec<f64>, abs_sum: Vec<f64>) -> Result<Self> {
        let empty = Self::new(channels)?;
        if h.len() != empty.h.len() {
            return Err(Error::shape("InputGram matrix", empty.h.len(), h.len()));
        }
        if abs_sum.len() != channels {
            return Err(Error::shape("InputGram abs sums", channels, abs_sum.len()));
        }
        if let Some(i) = h.iter().chain(&abs_sum).position(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "InputGram parts",
                format!("non-finite value at flat index {i}"),
            ));
        }
        for i in 0..channels {
            if h[i * channels + i] < 0.0 || abs_sum[i] < 0.0 {
                return Err(Error::invalid(
                    "InputGram parts",
                    format!("negative diagonal or |x| sum in channel {i}"),
                ));
            }
            for j in 0..i {
                if h[i * channels + j] != h[j * channels + i] {
                    return Err(Error::invalid(
                        "InputGram matrix",
                        format!("not symmetric at ({i}, {j})"),
                    ));
                }
            }
        }
        Ok(Self {
            channels,
            rows,
            h,
            abs_sum,
        })
    }

    /// Input channels (`in_features` of the layer).
    #[must_use]
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Rows accumulated.
    #[must_use]
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// `H = Σ xᵀx`, row-major `[channels, channels]`, exactly symmetric.
    #[must_use]
    pub fn matrix(&self) -> &[f64] {
        &self.h
    }

    /// `Σ |x|` per channel.
    #[must_use]
    pub fn abs_sum(&self) -> &[f64] {
        &self.abs_sum
    }

    /// Mean `|x|` per channel (AWQ's activation statistic).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when no row was accumulated.
    pub fn mean_abs(&self) -> Result<Vec<f64>> {
        if self.rows == 0 {
            return Err(Error::invalid("InputGram", "no rows accumulated"));
        }
        let n = self.rows as f64;
        Ok(self.abs_sum.iter().map(|s| s / n).collect())
    }

    /// Accumulates every row of `x` (`[.., channels]`, F32/F16/BF16/F64, any layout).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for rank 0 or a wrong last dim; [`Error::UnsupportedDType`];
    /// [`Error::NonFinite`] with the first bad flat index (nothing is accumulated then).
    pub fn observe(&mut self, x: &Tensor) -> Result<()> {
        self.observe_tensor(x, None)
    }

    /// Accumulates the rows of `x` (`[.., channels]`, flattened to `[rows, channels]`)
    /// whose entry in `keep` (`[rows]`) is true: padding tokens are left out.
    ///
    /// # Errors
    /// As [`InputGram::observe`], plus [`Error::ShapeMismatch`] when `keep.len()` differs
    /// from the number of rows. Non-finite values in skipped rows are ignored.
    pub fn observe_masked(&mut self, x: &Tensor, keep: &[bool]) -> Result<()> {
        self.observe_tensor(x, Some(keep))
    }

    fn observe_tensor(&mut self, x: &Tensor, keep: Option<&[bool]>) -> Result<()> {
        if x.dims().last() != Some(&self.channels) {
            return Err(Error::shape(
                "InputGram input",
                format!("[.., {}]", self.channels),
                x.dims(),
            ));
        }
        with_f32_slice(x, "InputGram::observe", |v| self.observe_rows(v, keep))
    }

    /// Accumulates row-major rows `v` (`[rows, channels]` flattened) selected by `keep`
    /// (all rows when `None`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `v.len()` is not a multiple of `channels` or `keep`
    /// has the wrong length; [`Error::NonFinite`] for NaN/±Inf in a kept row (nothing is
    /// accumulated then).
    pub fn observe_rows(&mut self, v: &[f32], keep: Option<&[bool]>) -> Result<()> {
        let n = self.channels;
        if !v.len().is_multiple_of(n) {
            return Err(Error::shape(
                "InputGram rows",
                format!("a multiple of {n} values"),
                v.len(),
            ));
        }
        let rows = v.len() / n;
        if let Some(k) = keep {
            if k.len() != rows {
                return Err(Error::shape("InputGram row mask", rows, k.len()));
            }
        }
        let kept = |r: usize| keep.is_none_or(|k| k[r]);
        for r in (0..rows).filter(|&r| kept(r)) {
            let row = &v[r * n..(r + 1) * n];
            if let Some(c) = row.iter().position(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    op: "InputGram::observe",
                    index: r * n + c,
                    value: row[c],
                });
            }
        }
        let mut block: Vec<f64> = Vec::with_capacity(ROW_BLOCK.min(rows) * n);
        let mut in_block = 0usize;
        for r in (0..rows).filter(|&r| kept(r)) {
            block.extend(v[r * n..(r + 1) * n].iter().map(|&x| f64::from(x)));
            in_block += 1;
            if in_block == ROW_BLOCK {
                self.add_block(&block, in_block)?;
                block.clear();
                in_block = 0;
            }
        }
        if in_block > 0 {
            self.add_block(&block, in_block)?;
        }
        Ok(())
    }

    /// `H += BᵀB` for a block `B` of `rows` f64 rows (one f64 GEMM), plus the |x| sums.
    fn add_block(&mut self, block: &[f64], rows: usize) -> Result<()> {
        let n = self.channels;
        let b = Tensor::from_slice(block, (rows, n), &Device::Cpu)?;
        // Only the upper triangle by bands of `SYM_BAND` channels: band `[i0, i1)` times
        // channels `[i0, n)` (about half the multiply-adds of the full `bᵀb`), then
        // mirrored, so H stays exactly symmetric.
        for i0 in (0..n).step_by(SYM_BAND) {
            let w = SYM_BAND.min(n - i0);
            let band = b.narrow(1, i0, w)?.t()?.contiguous()?;
            let rest = b.narrow(1, i0, n - i0)?.contiguous()?;
            let prod = band.matmul(&rest)?.flatten_all()?.to_vec1::<f64>()?;
            let m = n - i0;
            for di in 0..w {
                let i = i0 + di;
                for j in i..n {
                    let v = self.h[i * n + j] + prod[di * m + (j - i0)];
                    self.h[i * n + j] = v;
                    self.h[j * n + i] = v;
                }
            }
        }
        for row in block.chunks_exact(n) {
            for (s, x) in self.abs_sum.iter_mut().zip(row) {
                *s += x.abs();
            }
        }
        self.rows += rows as u64;
        Ok(())
    }

    /// Adds the rows `other` accumulated (over other data) to this accumulator.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the channel counts differ.
    pub fn merge(&mut self, other: &InputGram) -> Result<()> {
        if other.channels != self.channels {
            return Err(Error::shape(
                "InputGram::merge channels",
                self.channels,
                other.channels,
            ));
        }
        for (a, b) in self.h.iter_mut().zip(&other.h) {
            *a += b;
        }
        for (a, b) in self.abs_sum.iter_mut().zip(&other.abs_sum) {
            *a += b;
        }
        self.rows += other.rows;
        Ok(())
    }

    /// `H` as a `[channels, channels]` F64 tensor on the CPU.
    ///
    /// # Errors
    /// Candle errors.
    pub fn to_tensor(&self) -> Result<Tensor> {
        Ok(Tensor::from_slice(
            &self.h,
            (self.channels, self.channels),
            &Device::Cpu,
        )?)
    }
}

#[derive(Debug)]
struct GramRecord {
    gram: InputGram,
    /// Which flattened input rows of the next forward passes are real (not padding).
    keep: Option<Arc<[bool]>>,
}

/// A `candle_nn::Linear` that accumulates the [`InputGram`] of its inputs during forward
/// passes (then computes the unchanged output), skipping the rows that
/// [`GramLinear::set_row_mask`] marks as padding. Clones share one record, so a model
/// built with clones can be read out afterwards.
///
/// ```
/// use candle_compress::nn::gram::GramLinear;
/// use candle_core::{Device, Module, Tensor};
///
/// let lin = candle_nn::Linear::new(Tensor::ones((2, 3), candle_core::DType::F32, &Device::Cpu)?, None);
/// let obs = GramLinear::new(lin)?;
/// obs.set_row_mask(Some(vec![true, false].into()))?; // 2 rows: the second is padding
/// obs.forward(&Tensor::new(&[[[1f32, 0., 2.], [9., 9., 9.]]], &Device::Cpu)?)?;
/// let g = obs.gram()?;
/// assert_eq!(g.rows(), 1);
/// assert_eq!(g.matrix()[8], 4.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct GramLinear {
    linear: Linear,
    record: Arc<Mutex<GramRecord>>,
}

impl GramLinear {
    /// Wraps `linear` (weight `[out, in]`).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a weight that is not rank 2 with non-zero dims.
    pub fn new(linear: Linear) -> Result<Self> {
        let in_features = match *linear.weight().dims() {
            [o, i] if o > 0 && i > 0 => i,
            ref d => return Err(Error::shape("GramLinear weight", "[out > 0, in > 0]", d)),
        };
        Ok(Self {
            linear,
            record: Arc::new(Mutex::new(GramRecord {
                gram: InputGram::new(in_features)?,
                keep: None,
            })),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, GramRecord>> {
        self.record.lock().map_err(|_| Error::Corrupt {
            what: "GramLinear record".into(),
            reason: "a thread panicked while recording".into(),
        })
    }

    /// Marks which rows of the following inputs (flattened to `[rows, in]`) are real;
    /// `None` keeps every row. A later input with another row count is refused.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a recording thread panicked.
    pub fn set_row_mask(&self, keep: Option<Arc<[bool]>>) -> Result<()> {
        self.lock()?.keep = keep;
        Ok(())
    }

    /// Records `x` without running the layer ([`Module::forward`] calls this first).
    ///
    /// # Errors
    /// As [`InputGram::observe_masked`].
    pub fn observe(&self, x: &Tensor) -> Result<()> {
        let mut r = self.lock()?;
        let keep = r.keep.clone();
        match keep {
            Some(k) => r.gram.observe_masked(x, &k),
            None => r.gram.observe(x),
        }
    }

    /// A snapshot of the accumulated statistics.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a recording thread panicked.
    pub fn gram(&self) -> Result<InputGram> {
        Ok(self.lock()?.gram.clone())
    }

    /// The wrapped layer.
    #[must_use]
    pub fn linear(&self) -> &Linear {
        &self.linear
    }
}

impl Module for GramLinear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.observe(xs)?;
        self.linear.forward(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_rows_without_recording() -> Result<()> {
        let mut g = InputGram::new(2)?;
        let x = Tensor::new(&[[1f32, 2.], [f32::NAN, 0.]], &Device::Cpu)?;
        assert!(matches!(
            g.observe(&x),
            Err(Error::NonFinite { index: 2, .. })
        ));
        assert_eq!(g.rows(), 0);
        // The NaN row is padding: skipped, not an error.
        g.observe_masked(&x, &[true, false])?;
        assert_eq!(g.rows(), 1);
        assert!(g.observe_masked(&x, &[true]).is_err());
        assert!(g
            .observe(&Tensor::new(&[1f32, 2., 3.], &Device::Cpu)?)
            .is_err());
        assert!(InputGram::new(0).is_err());
        Ok(())
    }

    #[test]
    fn from_parts_checks_symmetry() {
        assert!(InputGram::from_parts(2, 1, vec![1., 2., 3., 1.], vec![0., 0.]).is_err());
        assert!(InputGram::from_parts(2, 1, vec![1., 2., 2., 1.], vec![0., 0.]).is_ok());
        assert!(InputGram::from_parts(2, 1, vec![1., 2., 2.], vec![0., 0.]).is_err());
    }
}
