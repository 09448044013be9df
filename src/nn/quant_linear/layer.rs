//! [`QuantLinear`] itself: its fields, the constructors that quantize float weights
//! (from a `candle_nn::Linear` or tensors, optionally smoothed) and the accessors. Parts
//! (`parts.rs`) and the forward pass (`forward.rs`) are `impl` blocks beside it.

use std::sync::Arc;

use candle_core::Tensor;

use super::config::{ActivationQuant, QuantConfig};
use super::weights::{quantize_weights, PackedWeights};
use crate::error::{Error, Result};
use crate::input::with_f32_slice;

/// A linear layer `y = x · Wᵀ + b` with int8 or int4 weights and int8 activations, run by
/// the crate's integer GEMM kernels. See the [module docs](super) for the
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
    pub(super) weights: PackedWeights,
    pub(super) bias: Option<Arc<[f32]>>,
    /// The smoothing vector `s` as given (weights were built from `W · diag(s)`).
    pub(super) smooth: Option<Arc<[f32]>>,
    /// `1 / s`, what the activation quantization multiplies by.
    pub(super) inv_smooth: Option<Arc<[f32]>>,
    pub(super) config: QuantConfig,
    pub(super) in_features: usize,
    pub(super) out_features: usize,
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
    ///
    /// [`WeightQuant::Int4GroupedAsym`]: super::WeightQuant::Int4GroupedAsym
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

    /// The weight of the function the layer computes, `y = x·Wᵀ + b`, dequantized: an f32
    /// `[out, in]` tensor on the CPU, with any smoothing undone (the stored
    /// `W · diag(s)` of [`QuantLinear::dequantized_weights`] divided by `s` again). What
    /// candle's `QMatMul::dequantize_f16` is to a `QMatMul`: for comparing with the original
    /// weight or running float math. Allocates.
    ///
    /// ```
    /// use candle_compress::{QuantConfig, QuantLinear};
    /// use candle_core::{Device, Tensor};
    /// let w = Tensor::randn(0f32, 1., (8, 64), &Device::Cpu)?;
    /// let q = QuantLinear::new(&w, None, &QuantConfig::w4a8_asym(32)?)?;
    /// let back = q.dequantize_weight()?;
    /// assert_eq!(back.dims(), &[8, 64]);
    /// let err = (back - &w)?.abs()?.max_all()?.to_scalar::<f32>()?;
    /// assert!(err < 0.5); // half a 4-bit step of a unit normal's range
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// Only candle's, building the tensor.
    pub fn dequantize_weight(&self) -> Result<Tensor> {
        let mut w = self.dequantized_weights();
        if let (Some(s), true) = (&self.smooth, self.in_features > 0) {
            for row in w.chunks_exact_mut(self.in_features) {
                for (v, &sk) in row.iter_mut().zip(s.iter()) {
                    *v /= sk;
                }
            }
        }
        let shape = (self.out_features, self.in_features);
        Ok(Tensor::from_vec(w, shape, &candle_core::Device::Cpu)?)
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
}

fn read_bias(b: &Tensor, out_features: usize) -> Result<Arc<[f32]>> {
    if b.dims() != [out_features] {
        return Err(Error::shape("QuantLinear bias", [out_features], b.dims()));
    }
    let data = crate::input::FloatData::from_tensor_finite(b, "QuantLinear bias")?;
    Ok(Arc::from(data.values))
}

/// Validates a smoothing vector and returns `1 / s`.
pub(super) fn check_smooth(s: &[f32], in_features: usize) -> Result<Arc<[f32]>> {
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
