//! [`QuantLinear`]: a drop-in replacement for [`candle_nn::Linear`] that stores integer
//! weights and runs an integer matmul (W8A8 or W4A8) on CPU.
//!
//! ```
//! use candle_core::{Device, Module, Tensor};
//! use candle_compress::nn::{QuantConfig, QuantLinear};
//!
//! let w = Tensor::new(&[[1f32, 2.], [3., 4.], [5., 6.]], &Device::Cpu)?;
//! let b = Tensor::new(&[0.5f32, 0., -0.5], &Device::Cpu)?;
//! let lin = candle_nn::Linear::new(w, Some(b));
//! let q = QuantLinear::from_linear(&lin, &QuantConfig::w8a8())?;
//! let xs = Tensor::new(&[[10f32, 100.]], &Device::Cpu)?;
//! let ys = q.forward(&xs)?.to_vec2::<f32>()?;
//! // f32 Linear gives [[210.5, 430.0, 649.5]]; int8 is within a fraction of a percent.
//! for (y, want) in ys[0].iter().zip([210.5f32, 430., 649.5]) {
//!     assert!((y - want).abs() < 0.01 * want.abs());
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Numerics
//!
//! **Weights, int8 (W8A8).** Symmetric, one scale per output channel (row of the
//! `[out, in]` weight): `sw[o] = amax_k |w[o,k]| / 127`, `qw = round_half_away(w / sw)`,
//! clamped to `[-127, 127]`; a zero row gets `sw = 0` and zero codes. This is the same
//! fused kernel ([`kernels::gemm::quantize_rows_i8`]) that quantizes activations.
//!
//! **Weights, int4 (W4A8).** Symmetric, one scale per group of `group` consecutive input
//! columns of an output row: `sw[o,g] = amax_group |w| / 7`,
//! `qw = round_half_away(w / sw)` clamped to `[-7, 7]` (the code −8 is never produced,
//! so the range stays symmetric and the largest weight of each group is exact); a zero
//! group gets `sw = 0`. [`QuantLinear::from_parts`] accepts any code in `[-8, 7]` and
//! any finite group scale, negative ones included (llama.cpp's Q4_0 files have them).
//!
//! **Weights, asymmetric int4 (W4A8, [`WeightQuant::Int4GroupedAsym`]).** One scale and
//! one offset per group: the code `c ∈ [-8, 7]` stands for `sw[o,g]·c + m[o,g]`. Round to
//! nearest over the group's range `[min, max]`: `sw = (max − min) / 15`,
//! `m = min + 8·sw`, `c = clamp(round_half_away((w − m) / sw), −8, 7)`, so `min` and `max`
//! map to the codes −8 and 7 (up to rounding); the scale and offset are computed in f64
//! and rounded to f32, the codes from those f32 values in f64 (so a range wider than
//! `f32::MAX` still gives finite parameters). A constant group gets `sw = 0` and
//! `m` = that value (exact), with codes 0. This is the layout of GGUF's Q4_1
//! (`w = d·q + m`, `q ∈ [0, 15]`: `c = q − 8`, `m' = m + 8d`), which therefore loads
//! without requantization. Non-finite weights are refused as for the other modes.
//!
//! **Activations, int8.** Chosen by [`ActivationQuant`]: per token (one scale per row of
//! the flattened `[rows, in]` input, `sx[t] = amax_k |x[t,k]| / 127`, the default), per
//! tensor (one `sx = amax / 127` for the whole input of the call), or a static scale from
//! calibration (`qx = clamp(round_half_away(x / sx), -127, 127)`, so values beyond
//! `127·sx` saturate), or not at all ([`ActivationQuant::Float`]: weight-only, the
//! dequantized weights times the float input). Quantization is one fused pass of [`kernels::gemm`] (per tensor
//! adds a second pass when the batch has more than one row), split over rayon by rows for
//! large inputs.
//!
//! **Output.** The integer accumulator `acc[t,o] = Σ_k qx[t,k]·qw[o,k]` is exact (i32,
//! blocked into wider accumulators when `in_features` could overflow i32), and the float
//! epilogue is the one documented in [`kernels::gemm`]: for W8A8
//! `y[t,o] = acc[t,o] as f32 · (sx[t] · sw[o]) + b[o]`, for W4A8 one integer accumulator
//! per group, combined in f32 with the group scales. The same bits come out on every ISA.
//!
//! # Smoothing (SmoothQuant)
//!
//! A layer may carry a per-input-channel smoothing vector `s` (length `in_features`, every
//! entry finite and `> 0`). [`QuantLinear::from_linear_smoothed`] multiplies column `k` of
//! the weight by `s[k]` *before* quantizing it, and the forward pass multiplies input
//! column `k` by `1 / s[k]` inside the fused activation-quantization step (the kernel's
//! `smooth` argument: no extra pass, no extra tensor). In exact arithmetic
//! `(x / s) · (W·diag(s))ᵀ = x · Wᵀ`, so the layer computes the same function as the
//! original Linear while activation outliers move into the (per-channel scaled) weights.
//! Use it where no norm precedes the layer to fold `1/s` into; where a norm does precede
//! it, fold `1/s` into the norm instead and build the layer with
//! [`QuantLinear::from_linear`] on the already-scaled weights. A static activation scale
//! (see [`ActivationQuant::Static`]) applies to the *smoothed* activations `x / s`.
//!
//! # Errors and non-finite input
//!
//! Every entry point returns [`crate::Result`] and never panics on user data. Inputs with
//! NaN or ±Inf are refused with [`Error::NonFinite`] naming the first bad element by its
//! flat row-major index in the input tensor (the crate's one policy). Through
//! [`candle_core::Module::forward`] the same error arrives as a [`candle_core::Error`]
//! wrapping ours (`candle_core::Error::Wrapped`, inside `WithBacktrace` when backtraces
//! are enabled; the message is identical); call
//! [`QuantLinear::try_forward`] to receive the typed [`Error`] instead.
//!
//! [`kernels::gemm`]: crate::kernels::gemm
//! [`kernels::gemm::quantize_rows_i8`]: crate::kernels::gemm::quantize_rows_i8

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::with_f32_slice;
use crate::kernels::gemm::{self, PackedW4, PackedW8};
use crate::kernels::KernelError;

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
    weights: WeightQuant,
    activations: ActivationQuant,
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
    fn scales_per_row(&self, in_features: usize) -> usize {
        match self.weights.int4_group() {
            None => 1,
            Some(group) => in_features.div_ceil(group),
        }
    }
}

/// The packed integer weights, shared between clones.
#[derive(Clone)]
enum PackedWeights {
    W8(Arc<PackedW8>),
    W4(Arc<PackedW4>),
}

/// A linear layer `y = x · Wᵀ + b` with int8 or int4 weights and int8 activations, run by
/// the integer kernels of [`crate::kernels::gemm`]. See the [module docs](self) for the
/// numerics, smoothing and the error policy.
///
/// It holds only the packed integer weights, their scales, the optional bias and the
/// optional smoothing vector (all behind [`Arc`]: cloning is cheap) — no f32 copy of the
/// weights. Inputs are `[.., in_features]` with any number of leading dims, in F32, F16,
/// BF16 or F64, contiguous or not; the output is `[.., out_features]` in the input dtype.
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_compress::nn::{ActivationQuant, QuantConfig, QuantLinear};
///
/// let w = Tensor::randn(0f32, 1., (64, 128), &Device::Cpu)?;
/// let lin = candle_nn::Linear::new(w, None);
/// let cfg = QuantConfig::w4a8(64)?.with_activations(ActivationQuant::PerTensor)?;
/// let q = QuantLinear::from_linear(&lin, &cfg)?;
/// assert_eq!((q.in_features(), q.out_features()), (128, 64));
/// // 64×128 int4 codes in 4 KiB, plus 64×2 f32 group scales (and any kernel extras):
/// assert!(q.size_bytes() < 64 * 128 * 4 / 4);
///
/// let xs = Tensor::randn(0f32, 1., (2, 3, 128), &Device::Cpu)?.to_dtype(DType::BF16)?;
/// let ys = q.forward(&xs)?;
/// assert_eq!(ys.dims(), &[2, 3, 64]);
/// assert_eq!(ys.dtype(), DType::BF16);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct QuantLinear {
    weights: PackedWeights,
    bias: Option<Arc<[f32]>>,
    /// The smoothing vector `s` as given (weights were built from `W · diag(s)`).
    smooth: Option<Arc<[f32]>>,
    /// `1 / s`, what the activation quantization multiplies by.
    inv_smooth: Option<Arc<[f32]>>,
    config: QuantConfig,
    in_features: usize,
    out_features: usize,
}

impl std::fmt::Debug for QuantLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantLinear")
            .field("in_features", &self.in_features)
            .field("out_features", &self.out_features)
            .field("config", &self.config)
            .field("bias", &self.bias.is_some())
            .field("smoothed", &self.smooth.is_some())
            .field("size_bytes", &self.size_bytes())
            .finish()
    }
}

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

/// Int8 activations and their scales, exactly as the forward pass feeds them to the
/// integer matmul (see [`QuantLinear::quantize_activations`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedActivations {
    /// Codes, row-major `[rows, cols]`.
    pub values: Vec<i8>,
    /// One scale per row (`x ≈ q · scale`); all equal in per-tensor and static modes.
    pub scales: Vec<f32>,
    /// Rows: the product of the input's leading dims.
    pub rows: usize,
    /// Columns: `in_features`.
    pub cols: usize,
}

impl QuantLinear {
    /// Quantizes a `candle_nn::Linear` (weight `[out, in]`, optional bias `[out]`).
    ///
    /// # Errors
    /// As [`QuantLinear::new`].
    pub fn from_linear(linear: &candle_nn::Linear, config: &QuantConfig) -> Result<Self> {
        Self::build(linear.weight(), linear.bias(), None, config)
    }

    /// Quantizes a `candle_nn::Linear` with a SmoothQuant smoothing vector `smooth`
    /// (`[in]`, finite, `> 0`): the weights quantized are `W · diag(smooth)` and every
    /// forward pass multiplies its input by `1 / smooth` in the fused quantization step,
    /// so the layer still computes `x · Wᵀ + b`. See the module docs, "Smoothing".
    ///
    /// # Errors
    /// As [`QuantLinear::new`], plus [`Error::ShapeMismatch`] when
    /// `smooth.len() != in_features` and [`Error::InvalidArgument`] / [`Error::NonFinite`]
    /// for an entry that is not finite and `> 0` (or whose reciprocal overflows).
    pub fn from_linear_smoothed(
        linear: &candle_nn::Linear,
        smooth: &[f32],
        config: &QuantConfig,
    ) -> Result<Self> {
        Self::build(linear.weight(), linear.bias(), Some(smooth), config)
    }

    /// Quantizes `weight` (`[out, in]`, F32/F16/BF16/F64, any layout) and keeps `bias`
    /// (`[out]`) in f32.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a weight that is not rank 2 with non-zero dims or a
    /// bias that is not `[out]`; [`Error::UnsupportedDType`] for integer tensors;
    /// [`Error::NonFinite`] for NaN/Inf in weight or bias (index flat in that tensor);
    /// [`Error::InvalidArgument`] for an invalid config
    /// (the int4 group must be 32, 64 or 128).
    pub fn new(weight: &Tensor, bias: Option<&Tensor>, config: &QuantConfig) -> Result<Self> {
        Self::build(weight, bias, None, config)
    }

    /// [`QuantLinear::new`] with a smoothing vector, as [`QuantLinear::from_linear_smoothed`].
    ///
    /// # Errors
    /// As [`QuantLinear::from_linear_smoothed`].
    pub fn new_smoothed(
        weight: &Tensor,
        bias: Option<&Tensor>,
        smooth: &[f32],
        config: &QuantConfig,
    ) -> Result<Self> {
        Self::build(weight, bias, Some(smooth), config)
    }

    fn build(
        weight: &Tensor,
        bias: Option<&Tensor>,
        smooth: Option<&[f32]>,
        config: &QuantConfig,
    ) -> Result<Self> {
        const WHAT: &str = "QuantLinear weight";
        let (out_features, in_features) = match *weight.dims() {
            [o, i] if o > 0 && i > 0 => (o, i),
            _ => return Err(Error::shape(WHAT, "[out > 0, in > 0]", weight.dims())),
        };
        config.validate()?;
        let bias = bias.map(|b| read_bias(b, out_features)).transpose()?;
        let (smooth, inv_smooth) = match smooth {
            Some(s) => {
                let inv = check_smooth(s, in_features)?;
                (Some(Arc::from(s)), Some(inv))
            }
            None => (None, None),
        };
        let weights = with_f32_slice(weight, "QuantLinear::new", |w| {
            quantize_weights(w, out_features, in_features, smooth.as_deref(), config)
        })?;
        Ok(Self {
            weights,
            bias,
            smooth,
            inv_smooth,
            config: *config,
            in_features,
            out_features,
        })
    }

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

    /// The same layer (sharing its weights) with another activation mode, e.g. a static
    /// scale found by calibration.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a static scale that is not finite and `> 0`.
    pub fn with_activations(&self, activations: ActivationQuant) -> Result<Self> {
        let config = self.config.with_activations(activations)?;
        Ok(Self {
            config,
            ..self.clone()
        })
    }

    /// Input features (`in` of the `[out, in]` weight).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output features (`out` of the `[out, in]` weight).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// The quantization config.
    pub fn config(&self) -> &QuantConfig {
        &self.config
    }

    /// The weight codes unpacked to row-major `[out, in]`, one per `i8` (int4 codes lie in
    /// `[-8, 7]`). Allocates: the layer itself keeps only the packed form.
    pub fn weights_i8(&self) -> Vec<i8> {
        match &self.weights {
            PackedWeights::W8(p) => p.weights(),
            PackedWeights::W4(p) => p.weights(),
        }
    }

    /// Weight scales: `[out]` for int8, `[out, ceil(in / group)]` row-major for int4.
    pub fn weight_scales(&self) -> &[f32] {
        match &self.weights {
            PackedWeights::W8(p) => p.scales(),
            PackedWeights::W4(p) => p.scales(),
        }
    }

    /// Per-group weight offsets of an asymmetric int4 layer
    /// ([`WeightQuant::Int4GroupedAsym`]), row-major `[out, ceil(in / group)]` like
    /// [`QuantLinear::weight_scales`]; `None` for the other modes.
    pub fn offsets(&self) -> Option<&[f32]> {
        match &self.weights {
            PackedWeights::W8(_) => None,
            PackedWeights::W4(p) => p.offsets(),
        }
    }

    /// The weights the layer computes with, dequantized: row-major `[out, in]`,
    /// `code · scale` (+ `offset` for asymmetric int4), in f32. With smoothing these are
    /// the weights of `W · diag(s)` (the layer divides its inputs by `s`). Allocates.
    pub fn dequantized_weights(&self) -> Vec<f32> {
        let inp = self.in_features;
        let q = self.weights_i8();
        let scales = self.weight_scales();
        let offsets = self.offsets();
        let per_row = self.config.scales_per_row(inp);
        let group = self.config.weights.int4_group().unwrap_or(inp);
        let mut w = vec![0f32; q.len()];
        for (o, (row, dst)) in q.chunks_exact(inp).zip(w.chunks_exact_mut(inp)).enumerate() {
            let s = &scales[o * per_row..(o + 1) * per_row];
            match offsets {
                Some(m) => {
                    let m = &m[o * per_row..(o + 1) * per_row];
                    for (k, (d, &c)) in dst.iter_mut().zip(row).enumerate() {
                        *d = f32::from(c) * s[k / group] + m[k / group];
                    }
                }
                None => {
                    for (k, (d, &c)) in dst.iter_mut().zip(row).enumerate() {
                        *d = f32::from(c) * s[k / group];
                    }
                }
            }
        }
        w
    }

    /// The bias, in f32.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }

    /// The smoothing vector `s` the weights were scaled by, if any.
    pub fn smooth(&self) -> Option<&[f32]> {
        self.smooth.as_deref()
    }

    /// Bytes this layer really holds: the packed weights with their scales and any
    /// per-output sums the kernels precompute (as reported by the kernel's packed type),
    /// the f32 bias, and the smoothing vector and its reciprocal.
    pub fn size_bytes(&self) -> usize {
        let weights = match &self.weights {
            PackedWeights::W8(p) => p.size_bytes(),
            PackedWeights::W4(p) => p.size_bytes(),
        };
        let f32s = self.bias.as_ref().map_or(0, |b| b.len())
            + self.smooth.as_ref().map_or(0, |s| s.len())
            + self.inv_smooth.as_ref().map_or(0, |s| s.len());
        weights + f32s * std::mem::size_of::<f32>()
    }

    /// Runs the layer, returning this crate's typed [`Error`] (the [`candle_core::Module`]
    /// implementation calls this and converts the error).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a rank-0 input or a last dim other than
    /// `in_features`; [`Error::UnsupportedDType`] for integer dtypes;
    /// [`Error::Unsupported`] for a tensor not on the CPU; [`Error::NonFinite`] for
    /// NaN/Inf in the input (flat row-major index) or, with smoothing, an input whose
    /// smoothed value overflows. An input with zero rows gives an empty output
    /// `[.., out_features]`.
    pub fn try_forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x.dims(), x.dtype())?;
        if !x.device().is_cpu() {
            return Err(Error::Unsupported {
                what: "QuantLinear device",
                found: format!("{:?}", x.device().location()),
                supported: "cpu".into(),
            });
        }
        if self.config.activations == ActivationQuant::Float {
            return self.forward_weight_only(x);
        }
        // The op reads contiguous storage; a strided view is copied once (in its dtype).
        let x = if x.is_contiguous() {
            x.clone()
        } else {
            x.contiguous()?
        };
        let op = ForwardOp {
            layer: self,
            error: RefCell::new(None),
        };
        match x.apply_op1_no_bwd(&op) {
            Ok(y) => Ok(y),
            Err(e) => Err(op.error.into_inner().unwrap_or(Error::Candle(e))),
        }
    }

    /// Quantizes `x` (`[.., in_features]`) exactly as [`QuantLinear::try_forward`] does
    /// before the integer matmul, including smoothing: for inspection, calibration checks
    /// and tests.
    ///
    /// # Errors
    /// As [`QuantLinear::try_forward`]; [`Error::Unsupported`] for a weight-only layer
    /// ([`ActivationQuant::Float`]), whose activations are never quantized.
    pub fn quantize_activations(&self, x: &Tensor) -> Result<QuantizedActivations> {
        self.check_input(x.dims(), x.dtype())?;
        let cols = self.in_features;
        let rows = x.elem_count() / cols;
        with_f32_slice(x, "QuantLinear::quantize_activations", |xs| {
            let mut values = vec![0i8; xs.len()];
            let mut scales = vec![0f32; rows];
            self.quantize_into(xs, &mut values, &mut scales)?;
            Ok(QuantizedActivations {
                values,
                scales,
                rows,
                cols,
            })
        })
    }

    /// The weights dequantized ([`QuantLinear::dequantized_weights`]) and transposed:
    /// row-major `[in, out]`.
    fn dequantized_weights_t(&self) -> Vec<f32> {
        let (out, inp) = (self.out_features, self.in_features);
        let w = self.dequantized_weights();
        let mut wt = vec![0f32; out * inp];
        for (o, row) in w.chunks_exact(inp).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                wt[k * out + o] = v;
            }
        }
        wt
    }

    /// [`ActivationQuant::Float`]: `x · (q · s)ᵀ + b` in f32, output in the input dtype.
    fn forward_weight_only(&self, x: &Tensor) -> Result<Tensor> {
        let (inp, out) = (self.in_features, self.out_features);
        let rows = x.elem_count() / inp;
        let mut out_dims = x.dims().to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = out;
        }
        let dev = x.device();
        if rows == 0 {
            return Ok(Tensor::zeros(out_dims, x.dtype(), dev)?);
        }
        let xf = x.to_dtype(DType::F32)?.reshape((rows, inp))?;
        with_f32_slice(&xf, "QuantLinear::forward", |v| {
            crate::input::check_finite(v, "QuantLinear::forward")
        })?;
        let xf = match self.inv_smooth.as_deref() {
            Some(inv) => {
                let xs = xf.broadcast_mul(&Tensor::from_slice(inv, inp, dev)?)?;
                with_f32_slice(&xs, "QuantLinear::forward", |v| {
                    crate::input::check_finite(v, "QuantLinear::forward")
                })?;
                xs
            }
            None => xf,
        };
        let w = Tensor::from_vec(self.dequantized_weights_t(), (inp, out), dev)?;
        let mut y = xf.matmul(&w)?;
        if let Some(b) = self.bias.as_deref() {
            y = y.broadcast_add(&Tensor::from_slice(b, out, dev)?)?;
        }
        Ok(y.reshape(out_dims)?.to_dtype(x.dtype())?)
    }

    fn check_input(&self, dims: &[usize], dtype: DType) -> Result<()> {
        crate::input::ensure_float(dtype, "QuantLinear::forward")?;
        match dims.last() {
            Some(&k) if k == self.in_features => Ok(()),
            _ => Err(Error::shape(
                "QuantLinear input",
                format!("[.., {}]", self.in_features),
                dims,
            )),
        }
    }

    /// Quantizes row-major `x` (`rows × in_features`) into `q` and per-row `scales`.
    fn quantize_into(&self, x: &[f32], q: &mut [i8], scales: &mut [f32]) -> Result<()> {
        let cols = self.in_features;
        let smooth = self.inv_smooth.as_deref();
        let res = match self.config.activations {
            ActivationQuant::Float => {
                return Err(Error::Unsupported {
                    what: "activation quantization",
                    found: "a weight-only layer (ActivationQuant::Float)".into(),
                    supported: "PerToken, PerTensor or Static layers".into(),
                })
            }
            ActivationQuant::PerToken => quantize_rows(x, cols, smooth, q, scales),
            ActivationQuant::Static { scale } => {
                scales.fill(scale);
                quantize_rows_with_scales(x, cols, smooth, scales, q)
            }
            // Per-row scales first; the tensor's scale is their maximum, which equals
            // `max|y| / 127` exactly (correctly rounded division is monotonic). Rows
            // quantized with another scale are then redone with the shared one.
            ActivationQuant::PerTensor => {
                quantize_rows(x, cols, smooth, q, scales).and_then(|()| {
                    let scale = scales.iter().fold(0f32, |m, &s| m.max(s));
                    if scales.iter().all(|&s| s == scale) {
                        return Ok(());
                    }
                    scales.fill(scale);
                    quantize_rows_with_scales(x, cols, smooth, scales, q)
                })
            }
        };
        res.map_err(|e| e.or_non_finite(|i| non_finite(x, smooth, i)))
    }

    /// The forward pass on row-major f32 input: quantize, integer matmul, epilogue.
    /// `out` holds `rows × out_features` values, `x` `rows × in_features`.
    fn forward_f32(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let rows = x.len() / self.in_features;
        if rows == 0 {
            return Ok(());
        }
        let mut scales = vec![0f32; rows];
        with_scratch(&SCRATCH_I8, x.len(), |qx| {
            self.quantize_into(x, qx, &mut scales)?;
            let bias = self.bias.as_deref();
            match &self.weights {
                PackedWeights::W8(w) => gemm::matmul_w8a8(qx, &scales, rows, w, bias, out)?,
                PackedWeights::W4(w) => gemm::matmul_w4a8(qx, &scales, rows, w, bias, out)?,
            }
            Ok(())
        })
    }

    /// Half-precision (or f64) input: widened into a reused f32 buffer, run in f32, the
    /// output narrowed once into the returned vector.
    fn forward_converted<T: Copy + Default>(
        &self,
        x: &[T],
        widen: impl Fn(&[T], &mut [f32]),
        narrow: impl Fn(&[f32], &mut [T]),
    ) -> Result<Vec<T>> {
        let n_out = x.len() / self.in_features * self.out_features;
        let mut out = vec![T::default(); n_out];
        with_scratch(&SCRATCH_F32, x.len() + n_out, |buf| {
            let (xf, yf) = buf.split_at_mut(x.len());
            widen(x, xf);
            self.forward_f32(xf, yf)?;
            narrow(yf, &mut out);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`CustomOp1::cpu_fwd`] body with typed errors.
    fn cpu_forward(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = layout.shape().dims();
        self.check_input(dims, storage.dtype())?;
        let mut out_dims = dims.to_vec();
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_features;
        }
        let out_shape = Shape::from(out_dims);
        // `try_forward` only passes contiguous tensors.
        let Some((start, end)) = layout.contiguous_offsets() else {
            return Err(Error::invalid(
                "QuantLinear input layout",
                format!(
                    "expected a contiguous layout, found strides {:?}",
                    layout.stride()
                ),
            ));
        };
        let n_out = (end - start) / self.in_features * self.out_features;
        let out = match storage {
            CpuStorage::F32(all) => {
                let mut out = vec![0f32; n_out];
                self.forward_f32(&all[start..end], &mut out)?;
                CpuStorage::F32(out)
            }
            CpuStorage::F16(all) => CpuStorage::F16(self.forward_converted(
                &all[start..end],
                |x, xf| x.convert_to_f32_slice(xf),
                |yf, y| y.convert_from_f32_slice(yf),
            )?),
            CpuStorage::BF16(all) => CpuStorage::BF16(self.forward_converted(
                &all[start..end],
                |x, xf| x.convert_to_f32_slice(xf),
                |yf, y| y.convert_from_f32_slice(yf),
            )?),
            CpuStorage::F64(all) => CpuStorage::F64(self.forward_converted(
                &all[start..end],
                |x, xf| xf.iter_mut().zip(x).for_each(|(d, &v)| *d = v as f32),
                |yf, y| y.iter_mut().zip(yf).for_each(|(d, &v)| *d = f64::from(v)),
            )?),
            other => {
                return Err(Error::UnsupportedDType {
                    op: "QuantLinear::forward",
                    expected: crate::input::FLOAT_DTYPES,
                    found: other.dtype(),
                })
            }
        };
        Ok((out, out_shape))
    }
}

impl candle_core::Module for QuantLinear {
    /// Runs [`QuantLinear::try_forward`]; errors arrive as [`candle_core::Error`] wrapping
    /// this crate's [`Error`] (same message).
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.try_forward(x).map_err(candle_core::Error::from)
    }
}

/// The candle graph node of one forward call. `cpu_fwd` must return a candle error; the
/// typed error is parked in `error` so [`QuantLinear::try_forward`] can return it as is.
struct ForwardOp<'a> {
    layer: &'a QuantLinear,
    error: RefCell<Option<Error>>,
}

impl CustomOp1 for ForwardOp<'_> {
    fn name(&self) -> &'static str {
        "quant-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.layer.cpu_forward(storage, layout).map_err(|e| {
            let wrapped = candle_core::Error::Msg(e.to_string());
            *self.error.borrow_mut() = Some(e);
            wrapped
        })
    }
}

thread_local! {
    /// Reused int8 activation buffer: quantized inputs of a call are dead once the matmul
    /// returns, and a fresh multi-MiB allocation per call costs page faults comparable to
    /// the quantization itself. Taken out of the cell while in use, so a nested call on
    /// this thread (rayon work stealing) simply allocates its own.
    static SCRATCH_I8: Cell<Vec<i8>> = const { Cell::new(Vec::new()) };
    /// Reused f32 buffer for widened F16/BF16/F64 inputs and the f32 output before it is
    /// narrowed back (same discipline as `SCRATCH_I8`).
    static SCRATCH_F32: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Buffers above this many bytes are not kept between calls (a one-off huge batch should
/// not pin its memory for the life of the thread).
const SCRATCH_KEEP_MAX_BYTES: usize = 64 << 20;

/// Runs `f` on `len` elements of this thread's scratch buffer `cell` (contents
/// unspecified: `f` must write before it reads).
fn with_scratch<T: Copy + Default + 'static, R>(
    cell: &'static std::thread::LocalKey<Cell<Vec<T>>>,
    len: usize,
    f: impl FnOnce(&mut [T]) -> Result<R>,
) -> Result<R> {
    let mut buf = cell.with(Cell::take);
    if buf.len() < len {
        buf.resize(len, T::default());
    }
    let r = f(&mut buf[..len]);
    if buf.len() * std::mem::size_of::<T>() <= SCRATCH_KEEP_MAX_BYTES {
        cell.with(|c| c.set(buf));
    }
    r
}

/// Inputs below this many elements are quantized on the calling thread: splitting them
/// costs more in rayon scheduling (~µs) than the pass itself.
const QUANT_PARALLEL_MIN: usize = 1 << 16;
/// Elements per rayon task when quantization is split by rows (~64 KiB of f32 input).
const QUANT_TASK_ELEMS: usize = 1 << 14;

/// Runs `kernel` over row chunks of `x`, in parallel when the work is large; returns the
/// first (smallest) flat index of a non-finite value, as the kernel does.
fn for_row_chunks(
    x: &[f32],
    cols: usize,
    q: &mut [i8],
    scales: &mut [f32],
    kernel: impl Fn(&[f32], &mut [i8], &mut [f32]) -> std::result::Result<(), KernelError> + Sync,
) -> std::result::Result<(), KernelError> {
    let rows = scales.len();
    if x.len() < QUANT_PARALLEL_MIN || rows < 2 || rayon::current_num_threads() < 2 {
        return kernel(x, q, scales);
    }
    let rows_per_task = (QUANT_TASK_ELEMS / cols).max(1);
    let chunk = rows_per_task * cols;
    let first_bad = x
        .par_chunks(chunk)
        .zip(q.par_chunks_mut(chunk))
        .zip(scales.par_chunks_mut(rows_per_task))
        .enumerate()
        .filter_map(|(i, ((xc, qc), sc))| kernel(xc, qc, sc).err().map(|e| e.offset(i * chunk)))
        // The smallest non-finite index; an argument error (none: the lengths were
        // checked) would come first.
        .min_by_key(|e| e.non_finite_index().unwrap_or(0));
    match first_bad {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn quantize_rows(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    q: &mut [i8],
    scales: &mut [f32],
) -> std::result::Result<(), KernelError> {
    for_row_chunks(x, cols, q, scales, |xc, qc, sc| {
        gemm::quantize_rows_i8(xc, cols, smooth, qc, sc)
    })
}

fn quantize_rows_with_scales(
    x: &[f32],
    cols: usize,
    smooth: Option<&[f32]>,
    scales: &mut [f32],
    q: &mut [i8],
) -> std::result::Result<(), KernelError> {
    for_row_chunks(x, cols, q, scales, |xc, qc, sc| {
        gemm::quantize_rows_i8_with_scales(xc, cols, smooth, sc, qc)
    })
}

/// Builds the [`Error::NonFinite`] for flat index `i` of the input.
fn non_finite(x: &[f32], smooth: Option<&[f32]>, i: usize) -> Error {
    let value = x.get(i).copied().unwrap_or(f32::NAN);
    let value = match smooth {
        // The input itself is finite: its smoothed value overflowed; report that.
        Some(s) if value.is_finite() => value * s[i % s.len()],
        _ => value,
    };
    Error::NonFinite {
        op: "QuantLinear::forward",
        index: i,
        value,
    }
}

fn read_bias(b: &Tensor, out_features: usize) -> Result<Arc<[f32]>> {
    if b.dims() != [out_features] {
        return Err(Error::shape("QuantLinear bias", [out_features], b.dims()));
    }
    let data = crate::input::FloatData::from_tensor_finite(b, "QuantLinear bias")?;
    Ok(Arc::from(data.values))
}

/// Validates a smoothing vector and returns `1 / s`.
fn check_smooth(s: &[f32], in_features: usize) -> Result<Arc<[f32]>> {
    if s.len() != in_features {
        return Err(Error::shape(
            "QuantLinear smoothing vector",
            [in_features],
            [s.len()],
        ));
    }
    crate::input::check_finite(s, "QuantLinear smoothing vector")?;
    let inv: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    if let Some(i) = s
        .iter()
        .zip(&inv)
        .position(|(v, r)| !(*v > 0.0 && r.is_finite()))
    {
        return Err(Error::invalid(
            "QuantLinear smoothing vector",
            format!(
                "entries must be > 0 with a finite reciprocal, found {} at index {i}",
                s[i]
            ),
        ));
    }
    Ok(Arc::from(inv))
}

/// Quantizes and packs row-major `w` (`[out, inp]`), scaled column-wise by `smooth` first.
fn quantize_weights(
    w: &[f32],
    out: usize,
    inp: usize,
    smooth: Option<&[f32]>,
    config: &QuantConfig,
) -> Result<PackedWeights> {
    let n = out * inp;
    let bad = |i: usize| {
        let value = w.get(i).copied().unwrap_or(f32::NAN);
        Error::NonFinite {
            op: "QuantLinear weight",
            index: i,
            value: match smooth {
                Some(s) if value.is_finite() => value * s[i % inp],
                _ => value,
            },
        }
    };
    match config.weights {
        WeightQuant::Int8PerChannel => {
            let mut q = vec![0i8; n];
            let mut scales = vec![0f32; out];
            quantize_rows(w, inp, smooth, &mut q, &mut scales).map_err(|e| e.or_non_finite(bad))?;
            Ok(PackedWeights::W8(Arc::new(PackedW8::pack(
                &q, &scales, out, inp,
            )?)))
        }
        WeightQuant::Int4Grouped { group } | WeightQuant::Int4GroupedAsym { group } => {
            let asym = config.weights.has_offsets();
            let mut q = vec![0i8; n];
            let groups = config.scales_per_row(inp);
            let mut scales = vec![0f32; out * groups];
            // Written only in the asymmetric mode.
            let mut offsets = vec![0f32; out * groups];
            let first_bad = w
                .par_chunks(inp)
                .zip(q.par_chunks_mut(inp))
                .zip(scales.par_chunks_mut(groups))
                .zip(offsets.par_chunks_mut(groups))
                .enumerate()
                .filter_map(|(row, (((wr, qr), sr), mr))| {
                    let res = if asym {
                        quantize_row_int4_asym(wr, smooth, group, qr, sr, mr)
                    } else {
                        quantize_row_int4(wr, smooth, group, qr, sr)
                    };
                    res.err().map(|c| row * inp + c)
                })
                .min();
            if let Some(i) = first_bad {
                return Err(bad(i));
            }
            let packed = if asym {
                PackedW4::pack_asym(&q, &scales, &offsets, out, inp, group)?
            } else {
                PackedW4::pack(&q, &scales, out, inp, group)?
            };
            Ok(PackedWeights::W4(Arc::new(packed)))
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

/// `y = w · smooth` of one group into `y` (same length as `wg`); the column of the first
/// non-finite value.
fn smoothed_group(
    wg: &[f32],
    smooth: Option<&[f32]>,
    start: usize,
    y: &mut [f32],
) -> std::result::Result<(), usize> {
    match smooth {
        Some(s) => {
            let sg = &s[start..start + wg.len()];
            y.iter_mut()
                .zip(wg.iter().zip(sg))
                .for_each(|(d, (v, k))| *d = v * k);
        }
        None => y.copy_from_slice(wg),
    }
    match y.iter().position(|v| !v.is_finite()) {
        Some(c) => Err(start + c),
        None => Ok(()),
    }
}

/// Asymmetric int4 quantization of one weight row, per group (the module docs' rule):
/// `scale = (max − min) / 15`, `offset = min + 8·scale` (f64, rounded to f32),
/// `q = clamp(round_half_away((y − offset) / scale), −8, 7)`; a constant group gets
/// `scale = 0`, `offset = y`, codes 0. Returns the column of the first non-finite `y`.
fn quantize_row_int4_asym(
    w: &[f32],
    smooth: Option<&[f32]>,
    group: usize,
    q: &mut [i8],
    scales: &mut [f32],
    offsets: &mut [f32],
) -> std::result::Result<(), usize> {
    let mut y = vec![0f32; group];
    for (g, (((wg, qg), scale), offset)) in w
        .chunks(group)
        .zip(q.chunks_mut(group))
        .zip(scales.iter_mut())
        .zip(offsets.iter_mut())
        .enumerate()
    {
        let y = &mut y[..wg.len()];
        smoothed_group(wg, smooth, g * group, y)?;
        let (lo, hi) = y
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v), h.max(v))
            });
        let (s, m) = asym_params(lo, hi);
        (*scale, *offset) = (s, m);
        if s == 0.0 {
            qg.fill(0);
        } else {
            let (s, m) = (f64::from(s), f64::from(m));
            for (qv, &v) in qg.iter_mut().zip(y.iter()) {
                *qv = ((f64::from(v) - m) / s).round().clamp(-8.0, 7.0) as i8;
            }
        }
    }
    Ok(())
}

/// Scale and offset of a group with finite range `[lo, hi]`: `((hi − lo) / 15,
/// lo + 8·scale)` in f64, rounded to f32; `(0, lo)` for a constant group.
pub(crate) fn asym_params(lo: f32, hi: f32) -> (f32, f32) {
    let s = ((f64::from(hi) - f64::from(lo)) / 15.0) as f32;
    if s == 0.0 {
        return (0.0, lo);
    }
    (s, (f64::from(lo) + 8.0 * f64::from(s)) as f32)
}

/// Symmetric int4 quantization of one weight row, per group: `scale = amax / 7`,
/// `q = round_half_away(y / scale)` clamped to `[-7, 7]`, `y = w · smooth`. Returns the
/// column of the first non-finite `y`.
fn quantize_row_int4(
    w: &[f32],
    smooth: Option<&[f32]>,
    group: usize,
    q: &mut [i8],
    scales: &mut [f32],
) -> std::result::Result<(), usize> {
    let mut y = vec![0f32; group];
    for (g, ((wg, qg), scale)) in w
        .chunks(group)
        .zip(q.chunks_mut(group))
        .zip(scales.iter_mut())
        .enumerate()
    {
        let y = &mut y[..wg.len()];
        match smooth {
            Some(s) => {
                let sg = &s[g * group..g * group + wg.len()];
                y.iter_mut()
                    .zip(wg.iter().zip(sg))
                    .for_each(|(d, (v, k))| *d = v * k);
            }
            None => y.copy_from_slice(wg),
        }
        if let Some(c) = y.iter().position(|v| !v.is_finite()) {
            return Err(g * group + c);
        }
        let amax = y.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 7.0;
        *scale = d;
        if d == 0.0 {
            qg.fill(0);
        } else {
            for (qv, v) in qg.iter_mut().zip(y.iter()) {
                *qv = (v / d).round().clamp(-7.0, 7.0) as i8;
            }
        }
    }
    Ok(())
}
