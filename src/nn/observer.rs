//! [`ObservedLinear`]: a `candle_nn::Linear` that records statistics of its input during
//! ordinary forward passes, so a model is calibrated by running it on sample data.
//!
//! Swap the model's linears for observed ones (or build the model with them), run a few
//! calibration batches through the unchanged model code, then read the per-channel
//! maxima ([`ObservedLinear::channel_max`]) for SmoothQuant, the value statistics
//! ([`ObservedLinear::stats`]) for a static activation scale, and optionally the first
//! input rows ([`ObservedLinear::sample`]) for [`search_alpha`](crate::nn::smooth::search_alpha).
//!
//! The recorded state sits behind an `Arc<Mutex<_>>`: forward passes may run on several
//! threads at once, and clones of an `ObservedLinear` share one record.
//!
//! ```
//! use candle_compress::nn::ObservedLinear;
//! use candle_core::{Device, Module, Tensor};
//!
//! let dev = Device::Cpu;
//! let lin = candle_nn::Linear::new(Tensor::randn(0f32, 1., (4, 3), &dev)?, None);
//! let obs = ObservedLinear::new(lin.clone())?.with_sample_rows(16);
//! let x = Tensor::new(&[[[1f32, -7., 0.5]], [[-2., 3., 0.25]]], &dev)?; // [2, 1, 3]
//! let y = obs.forward(&x)?;                                            // ordinary forward
//! assert_eq!(y.to_vec3::<f32>()?, lin.forward(&x)?.to_vec3::<f32>()?);
//! assert_eq!(obs.channel_max()?.max_abs()?, &[2.0, 7.0, 0.5]);
//! assert_eq!(obs.stats()?.summary()?.count, 6);
//! assert_eq!(obs.sample()?.dims(), &[2, 3]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{Module, Tensor};
use candle_nn::Linear;

use crate::error::{Error, Result};
use crate::input::with_f32_slice;
use crate::quant::calib::{CalibStats, ChannelAbsMax};

#[derive(Debug)]
struct Record {
    channels: ChannelAbsMax,
    stats: CalibStats,
    /// The first `sample_cap` input rows seen, row-major.
    sample: Vec<f32>,
    sample_cap: usize,
}

/// A linear layer that records its inputs' per-channel `max |x|` ([`ChannelAbsMax`]), the
/// statistics of all input values ([`CalibStats`]) and, if asked, the first input rows,
/// then computes the wrapped layer's output unchanged. See the [module docs](self).
///
/// Every row of the input is recorded, padding tokens included: calibrate on unpadded
/// sequences (one per batch, or batches of equal length) when padding would skew the maxima.
#[derive(Debug, Clone)]
pub struct ObservedLinear {
    linear: Linear,
    in_features: usize,
    record: Arc<Mutex<Record>>,
}

impl ObservedLinear {
    /// Wraps `linear` (weight `[out, in]`), keeping no sample rows.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when the weight is not rank 2 with non-zero dims.
    pub fn new(linear: Linear) -> Result<Self> {
        let in_features = match *linear.weight().dims() {
            [o, i] if o > 0 && i > 0 => i,
            ref d => {
                return Err(Error::shape(
                    "ObservedLinear weight",
                    "[out > 0, in > 0]",
                    d,
                ))
            }
        };
        Ok(Self {
            linear,
            in_features,
            record: Arc::new(Mutex::new(Record {
                channels: ChannelAbsMax::new(in_features)?,
                stats: CalibStats::new(),
                sample: Vec::new(),
                sample_cap: 0,
            })),
        })
    }

    /// Also keeps the first `rows` input rows (for [`search_alpha`]); memory:
    /// `rows · in_features · 4` bytes.
    ///
    /// [`search_alpha`]: crate::nn::smooth::search_alpha
    #[must_use]
    pub fn with_sample_rows(self, rows: usize) -> Self {
        if let Ok(mut r) = self.record.lock() {
            r.sample_cap = rows;
        }
        self
    }

    /// The wrapped layer.
    #[must_use]
    pub fn linear(&self) -> &Linear {
        &self.linear
    }

    /// Input channels of the layer.
    #[must_use]
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    fn lock(&self) -> Result<MutexGuard<'_, Record>> {
        self.record.lock().map_err(|_| Error::Corrupt {
            what: "ObservedLinear record".into(),
            reason: "a thread panicked while recording".into(),
        })
    }

    /// Records `x` (`[.., in_features]`, F32/F16/BF16/F64) without running the layer.
    /// [`Module::forward`] calls this first.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for rank 0 or a wrong last dimension;
    /// [`Error::UnsupportedDType`]; [`Error::NonFinite`] naming the first bad flat index
    /// (nothing is recorded then).
    pub fn observe(&self, x: &Tensor) -> Result<()> {
        if x.dims().last() != Some(&self.in_features) {
            return Err(Error::shape(
                "ObservedLinear input",
                format!("[.., {}]", self.in_features),
                x.dims(),
            ));
        }
        with_f32_slice(x, "ObservedLinear::observe", |v| {
            let mut r = self.lock()?;
            // Checks finiteness before changing anything.
            r.channels.observe_slice(v)?;
            r.stats.observe_slice(v)?;
            let room = (r.sample_cap * self.in_features).saturating_sub(r.sample.len());
            let take = room.min(v.len());
            r.sample.extend_from_slice(&v[..take]);
            Ok(())
        })
    }

    /// A snapshot of the per-channel maxima.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a recording thread panicked.
    pub fn channel_max(&self) -> Result<ChannelAbsMax> {
        Ok(self.lock()?.channels.clone())
    }

    /// A snapshot of the statistics of all input values.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a recording thread panicked.
    pub fn stats(&self) -> Result<CalibStats> {
        Ok(self.lock()?.stats.clone())
    }

    /// The kept input rows as a `[rows, in_features]` f32 tensor on the weight's device.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when no row was kept (no sample rows requested, or no
    /// forward pass yet).
    pub fn sample(&self) -> Result<Tensor> {
        let r = self.lock()?;
        if r.sample.is_empty() {
            return Err(Error::invalid(
                "sample",
                "no input rows kept: use with_sample_rows and run calibration batches",
            ));
        }
        let rows = r.sample.len() / self.in_features;
        Ok(Tensor::from_slice(
            &r.sample,
            (rows, self.in_features),
            self.linear.weight().device(),
        )?)
    }

    /// Forgets everything recorded (the sample size setting stays).
    ///
    /// # Errors
    /// [`Error::Corrupt`] if a recording thread panicked.
    pub fn reset(&self) -> Result<()> {
        let mut r = self.lock()?;
        r.channels = ChannelAbsMax::new(self.in_features)?;
        r.stats = CalibStats::new();
        r.sample.clear();
        Ok(())
    }

    /// Unwraps the layer.
    #[must_use]
    pub fn into_inner(self) -> Linear {
        self.linear
    }
}

impl Module for ObservedLinear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.observe(xs)?;
        self.linear.forward(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn records_across_threads_and_clones() -> Result<()> {
        let dev = Device::Cpu;
        let lin = Linear::new(Tensor::ones((2, 4), candle_core::DType::F32, &dev)?, None);
        let obs = ObservedLinear::new(lin)?;
        std::thread::scope(|s| {
            for t in 0..4 {
                let o = obs.clone();
                let dev = dev.clone();
                s.spawn(move || {
                    let x = Tensor::new(&[[t as f32, 0., -1., 2.]], &dev).unwrap();
                    o.forward(&x).unwrap();
                });
            }
        });
        assert_eq!(obs.channel_max()?.max_abs()?, &[3.0, 0.0, 1.0, 2.0]);
        assert_eq!(obs.channel_max()?.rows(), 4);
        obs.reset()?;
        assert!(obs.channel_max()?.max_abs().is_err());
        Ok(())
    }

    #[test]
    fn refuses_bad_input_without_recording() -> Result<()> {
        let dev = Device::Cpu;
        let lin = Linear::new(Tensor::ones((2, 2), candle_core::DType::F32, &dev)?, None);
        let obs = ObservedLinear::new(lin)?.with_sample_rows(4);
        assert!(obs.forward(&Tensor::new(&[1f32, f32::NAN], &dev)?).is_err());
        assert!(obs.forward(&Tensor::new(&[1f32, 2., 3.], &dev)?).is_err());
        assert!(obs.forward(&Tensor::new(1f32, &dev)?).is_err());
        assert_eq!(obs.channel_max()?.rows(), 0);
        assert!(obs.sample().is_err());
        Ok(())
    }
}
