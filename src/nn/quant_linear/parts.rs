//! [`QuantLinearParts`]: the plain parts of a layer (codes, scales, offsets, bias,
//! smoothing, config), what files store. [`QuantLinear::from_parts`] validates them all
//! before packing; [`QuantLinear::to_parts`] gives them back.

use std::sync::Arc;

use super::config::{QuantConfig, WeightQuant};
use super::layer::{check_smooth, QuantLinear};
use super::weights::PackedWeights;
use crate::error::{Error, Result};
use crate::kernels::gemm::{PackedW4, PackedW8};

/// The plain parts of a [`QuantLinear`]: what a file stores and
/// [`QuantLinear::from_parts`] rebuilds a layer from.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantLinearParts {
    /// Output channels (rows of the weight).
    pub out_features: usize,
    /// Input channels (columns of the weight).
    pub in_features: usize,
    /// Weight codes, row-major `[out_features, in_features]`, one code per `i8`:
    /// `[-127, 127]` for int8, `[-8, 7]` for int4.
    pub weights: Vec<i8>,
    /// Weight scales: `[out_features]` for int8; `[out_features, ceil(in_features / group)]`
    /// row-major for int4. Finite; `≥ 0` for int8 (int4 group scales may be negative, as
    /// in llama.cpp's Q4_0 files; quantizing in this crate never produces one).
    pub scales: Vec<f32>,
    /// Per-group offsets, laid out as `scales`, finite: required (`Some`) for
    /// [`WeightQuant::Int4GroupedAsym`] and `None` for the other modes. The code `c` of
    /// group `g` stands for `scales[o,g]·c + offsets[o,g]`.
    pub offsets: Option<Vec<f32>>,
    /// Bias `[out_features]`, finite.
    pub bias: Option<Vec<f32>>,
    /// Smoothing vector `s` `[in_features]`, finite and `> 0`: the weights are those of
    /// `W · diag(s)` and inputs are multiplied by `1 / s` (see the module docs).
    pub smooth: Option<Vec<f32>>,
    /// The quantization config.
    pub config: QuantConfig,
}

impl QuantLinear {
    /// Rebuilds a layer from stored parts (for loaders): validates every length, code,
    /// scale, offset, bias and smoothing entry, then packs the weights for the active
    /// kernels.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for zero dims, an invalid config, codes outside the
    /// config's range, negative int8 scales, smoothing entries out of range, or offsets
    /// given for a
    /// symmetric config / missing for [`WeightQuant::Int4GroupedAsym`];
    /// [`Error::MetadataMismatch`] when a length disagrees with the dims and config;
    /// [`Error::NonFinite`] for NaN/Inf in scales, offsets, bias or smoothing.
    ///
    /// ```
    /// use candle_compress::nn::{QuantConfig, QuantLinear, QuantLinearParts};
    /// let parts = QuantLinearParts {
    ///     out_features: 1,
    ///     in_features: 32,
    ///     weights: (0..32).map(|k| (k % 16) as i8 - 8).collect(),
    ///     scales: vec![0.5],
    ///     offsets: Some(vec![-1.0]),
    ///     bias: None,
    ///     smooth: None,
    ///     config: QuantConfig::w4a8_asym(32)?,
    /// };
    /// let q = QuantLinear::from_parts(parts.clone())?;
    /// assert_eq!(q.offsets(), Some(&[-1.0f32][..]));
    /// assert_eq!(q.dequantized_weights()[0], 0.5 * -8.0 - 1.0);
    /// assert_eq!(q.to_parts(), parts);
    /// let sym = QuantLinearParts { config: QuantConfig::w4a8(32)?, ..parts };
    /// assert!(QuantLinear::from_parts(sym).is_err()); // offsets need the asym config
    /// # Ok::<(), candle_compress::Error>(())
    /// ```
    pub fn from_parts(parts: QuantLinearParts) -> Result<Self> {
        let QuantLinearParts {
            out_features,
            in_features,
            weights,
            scales,
            offsets,
            bias,
            smooth,
            config,
        } = parts;
        if out_features == 0 || in_features == 0 {
            return Err(Error::invalid(
                "QuantLinear dims",
                format!("must be non-zero, found out={out_features}, in={in_features}"),
            ));
        }
        config.validate()?;
        let n = out_features
            .checked_mul(in_features)
            .ok_or_else(|| Error::invalid("QuantLinear dims", "out × in overflows usize"))?;
        if weights.len() != n {
            return Err(Error::metadata(
                "QuantLinear weight codes",
                n,
                weights.len(),
            ));
        }
        let (lo, hi) = match config.weights {
            WeightQuant::Int8PerChannel => (-127i8, 127i8),
            WeightQuant::Int4Grouped { .. } | WeightQuant::Int4GroupedAsym { .. } => (-8, 7),
        };
        let n_scales = out_features * config.scales_per_row(in_features);
        if let Some(i) = weights.iter().position(|&q| q < lo || q > hi) {
            return Err(Error::invalid(
                "QuantLinear weight codes",
                format!(
                    "must lie in [{lo}, {hi}], found {} at index {i}",
                    weights[i]
                ),
            ));
        }
        if scales.len() != n_scales {
            return Err(Error::metadata(
                "QuantLinear weight scales",
                n_scales,
                scales.len(),
            ));
        }
        crate::input::check_finite(&scales, "QuantLinear::from_parts scales")?;
        // Int4 groups take negative scales (llama.cpp's Q4_0 rule gives them, and the
        // kernels only multiply by them); int8 per-channel scales stay >= 0.
        if config.weights.int4_group().is_none() {
            if let Some(i) = scales.iter().position(|&s| s < 0.0) {
                return Err(Error::invalid(
                    "QuantLinear weight scales",
                    format!(
                        "must be >= 0 for int8 weights, found {} at index {i}",
                        scales[i]
                    ),
                ));
            }
        }
        check_offsets(offsets.as_deref(), &config, n_scales)?;
        let bias = match bias {
            Some(b) => {
                if b.len() != out_features {
                    return Err(Error::metadata("QuantLinear bias", out_features, b.len()));
                }
                crate::input::check_finite(&b, "QuantLinear::from_parts bias")?;
                Some(Arc::from(b))
            }
            None => None,
        };
        let (smooth, inv_smooth) = match smooth {
            Some(s) => {
                let inv = check_smooth(&s, in_features)?;
                (Some(Arc::from(s)), Some(inv))
            }
            None => (None, None),
        };
        let weights = match config.weights {
            WeightQuant::Int8PerChannel => PackedWeights::W8(Arc::new(PackedW8::pack(
                &weights,
                &scales,
                out_features,
                in_features,
            )?)),
            WeightQuant::Int4Grouped { group } => PackedWeights::W4(Arc::new(PackedW4::pack(
                &weights,
                &scales,
                out_features,
                in_features,
                group,
            )?)),
            WeightQuant::Int4GroupedAsym { group } => {
                PackedWeights::W4(Arc::new(PackedW4::pack_asym(
                    &weights,
                    &scales,
                    offsets.as_deref().unwrap_or_default(),
                    out_features,
                    in_features,
                    group,
                )?))
            }
        };
        Ok(Self {
            weights,
            bias,
            smooth,
            inv_smooth,
            config,
            in_features,
            out_features,
        })
    }

    /// The plain parts of this layer (unpacked codes, scales, bias, smoothing, config);
    /// [`QuantLinear::from_parts`] of the result rebuilds an identical layer.
    pub fn to_parts(&self) -> QuantLinearParts {
        QuantLinearParts {
            out_features: self.out_features,
            in_features: self.in_features,
            weights: self.weights_i8(),
            scales: self.weight_scales().to_vec(),
            offsets: self.offsets().map(<[f32]>::to_vec),
            bias: self.bias.as_deref().map(<[f32]>::to_vec),
            smooth: self.smooth.as_deref().map(<[f32]>::to_vec),
            config: self.config,
        }
    }
}

/// The offsets rule of [`QuantLinearParts`]: `Some` (with one finite value per scale)
/// exactly for [`WeightQuant::Int4GroupedAsym`].
fn check_offsets(offsets: Option<&[f32]>, config: &QuantConfig, n_scales: usize) -> Result<()> {
    match (offsets, config.weights.has_offsets()) {
        (None, false) => Ok(()),
        (Some(m), true) => {
            if m.len() != n_scales {
                return Err(Error::metadata(
                    "QuantLinear weight offsets",
                    n_scales,
                    m.len(),
                ));
            }
            crate::input::check_finite(m, "QuantLinear::from_parts offsets")
        }
        (None, true) => Err(Error::invalid(
            "QuantLinear weight offsets",
            format!(
                "{:?} needs one offset per scale, found none",
                config.weights
            ),
        )),
        (Some(_), false) => Err(Error::invalid(
            "QuantLinear weight offsets",
            format!(
                "only Int4GroupedAsym weights carry offsets, found offsets with {:?}",
                config.weights
            ),
        )),
    }
}
