//! What a [`QuantLinear`](super::QuantLinear) quantizes and how: [`WeightQuant`],
//! [`ActivationQuant`] and the [`QuantConfig`] that pairs them (presets, validation). Apart
//! from the layer because files, loaders and calibration pass configs around on their own.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Group sizes accepted for int4 weights.
pub const INT4_GROUPS: [usize; 3] = [32, 64, 128];

/// How the weights are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WeightQuant {
    /// Symmetric int8, one f32 scale per output channel.
    Int8PerChannel,
    /// Symmetric int4 (codes in `[-8, 7]`, packed two per byte), one f32 scale per
    /// `group` consecutive input columns of each output channel. `group` is one of
    /// [`INT4_GROUPS`]; when it does not divide `in_features` the last group of each row
    /// is shorter.
    Int4Grouped {
        /// Input columns per scale: 32, 64 or 128.
        group: usize,
    },
    /// Asymmetric int4: codes in `[-8, 7]` as for [`WeightQuant::Int4Grouped`], plus one
    /// f32 offset per group, so the code `c` of group `g` stands for
    /// `scale[o,g]·c + offset[o,g]` (GGUF Q4_1's layout; see the module docs for the
    /// rounding rule). Costs 4 bytes more per group than the symmetric layout.
    Int4GroupedAsym {
        /// Input columns per scale and offset: 32, 64 or 128.
        group: usize,
    },
}

impl WeightQuant {
    /// The int4 group size, or `None` for int8 weights.
    pub fn int4_group(&self) -> Option<usize> {
        match *self {
            WeightQuant::Int8PerChannel => None,
            WeightQuant::Int4Grouped { group } | WeightQuant::Int4GroupedAsym { group } => {
                Some(group)
            }
        }
    }

    /// Whether the weights carry per-group offsets ([`WeightQuant::Int4GroupedAsym`]).
    pub fn has_offsets(&self) -> bool {
        matches!(self, WeightQuant::Int4GroupedAsym { .. })
    }
}

/// How activations are quantized to int8 at run time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum ActivationQuant {
    /// One scale per token (row of the flattened `[rows, in_features]` input),
    /// `amax / 127`, computed at run time. The default and the most accurate.
    #[default]
    PerToken,
    /// One scale for the whole input of a call, `amax / 127`, computed at run time.
    /// Results for a row then depend on the other rows of the batch.
    PerTensor,
    /// A fixed scale from calibration (for example the calibrated `amax / 127`).
    /// Activations beyond `127 · scale` saturate to ±127. Must be finite and `> 0`.
    Static {
        /// The activation scale: `x ≈ q · scale`.
        scale: f32,
    },
    /// No activation quantization: a weight-only layer (W8A16 / W4A16, what
    /// compressed-tensors checkpoints with `input_activations: null` describe). Each call
    /// dequantizes the stored weights to f32 (`q · scale`) and multiplies them with the
    /// float input in f32 (candle's matmul), then adds the bias: the result is the float
    /// layer of the stored weights, with no activation rounding. Memory stays that of the
    /// integer weights between calls; a call is slower than the integer kernels (one
    /// dequantization of the weights plus an f32 matmul).
    Float,
}

/// What to quantize and how: weights ([`WeightQuant`]) and activations
/// ([`ActivationQuant`]). Build it from a preset, [`QuantConfig::w8a8`] or
/// [`QuantConfig::w4a8`], then optionally [`QuantConfig::with_activations`].
///
/// Serialises in the one form our files store it in (`{"weights": "int4-grouped",
/// "group": 64, "activations": "per-token"}`, see [`crate::io::safetensors`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(
    into = "crate::io::safetensors::QuantConfigRepr",
    try_from = "crate::io::safetensors::QuantConfigRepr"
)]
pub struct QuantConfig {
    pub(super) weights: WeightQuant,
    pub(super) activations: ActivationQuant,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self::w8a8()
    }
}

impl QuantConfig {
    /// Int8 weights per output channel × int8 activations per token.
    #[must_use]
    pub fn w8a8() -> Self {
        Self {
            weights: WeightQuant::Int8PerChannel,
            activations: ActivationQuant::PerToken,
        }
    }

    /// Int4 weights with one scale per `group` input columns × int8 activations per token.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `group` is 32, 64 or 128.
    pub fn w4a8(group: usize) -> Result<Self> {
        let cfg = Self {
            weights: WeightQuant::Int4Grouped { group },
            activations: ActivationQuant::PerToken,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Asymmetric int4 weights (one scale and one offset per `group` input columns, see
    /// [`WeightQuant::Int4GroupedAsym`]) × int8 activations per token.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless `group` is 32, 64 or 128.
    ///
    /// ```
    /// use candle_compress::nn::{QuantConfig, WeightQuant};
    /// let c = QuantConfig::w4a8_asym(32)?;
    /// assert_eq!(c.weights(), WeightQuant::Int4GroupedAsym { group: 32 });
    /// assert!(QuantConfig::w4a8_asym(48).is_err());
    /// # Ok::<(), candle_compress::Error>(())
    /// ```
    pub fn w4a8_asym(group: usize) -> Result<Self> {
        let cfg = Self {
            weights: WeightQuant::Int4GroupedAsym { group },
            activations: ActivationQuant::PerToken,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// A config of these modes, unchecked: what deserialization builds (validate it with
    /// [`QuantConfig::validate`] before use).
    pub(crate) fn from_modes_unchecked(weights: WeightQuant, activations: ActivationQuant) -> Self {
        Self {
            weights,
            activations,
        }
    }

    /// The same weights with another activation mode.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a static scale that is not finite and `> 0`.
    pub fn with_activations(self, activations: ActivationQuant) -> Result<Self> {
        let cfg = Self {
            activations,
            ..self
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// How the weights are quantized.
    pub fn weights(&self) -> WeightQuant {
        self.weights
    }

    /// How activations are quantized.
    pub fn activations(&self) -> ActivationQuant {
        self.activations
    }

    /// Checks the configuration on its own (the constructors of [`QuantLinear`] also check
    /// it against the layer's shape). A deserialized config should be validated.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an int4 group outside [`INT4_GROUPS`] or a static
    /// scale that is not finite and `> 0`.
    ///
    /// [`QuantLinear`]: super::QuantLinear
    pub fn validate(&self) -> Result<()> {
        if let Some(group) = self.weights.int4_group() {
            if !INT4_GROUPS.contains(&group) {
                return Err(Error::invalid(
                    "int4 group",
                    format!("must be one of {INT4_GROUPS:?}, found {group}"),
                ));
            }
        }
        if let ActivationQuant::Static { scale } = self.activations {
            if !(scale.is_finite() && scale > 0.0) {
                return Err(Error::invalid(
                    "static activation scale",
                    format!("must be finite and > 0, found {scale}"),
                ));
            }
        }
        Ok(())
    }

    /// Scales per output channel for a layer with `in_features` inputs.
    pub(super) fn scales_per_row(&self, in_features: usize) -> usize {
        match self.weights.int4_group() {
            None => 1,
            Some(group) => in_features.div_ceil(group),
        }
    }
}
