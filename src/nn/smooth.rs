//! SmoothQuant (Xiao et al., 2023) as a model rewrite: per-channel smoothing factors from
//! calibration statistics, folded into the preceding norm and the following linears.
//!
//! Activations of large models have a few *outlier channels* (a handful of hidden
//! dimensions ~50× larger than the rest, on every token). One int8 scale per token or per
//! tensor must cover the outliers, so the ordinary channels get only a few levels. Weights
//! have no such outliers. SmoothQuant divides activation channel `j` by `s_j` and multiplies
//! weight column `j` by `s_j`: `(X · diag(s)⁻¹) · (W · diag(s))ᵀ = X · Wᵀ`, the same
//! function, with the difficulty moved from activations into weights.
//!
//! # Factors
//!
//! For the linears that read one input (Q, K and V; gate and up; or a single layer):
//!
//! ```text
//! s_j = max(max|X_j|^α / max(max|W_j|, 1e-5)^(1−α), 1e-5)
//! ```
//!
//! `max|X_j|` is the calibration maximum of input channel `j` ([`ChannelAbsMax`], e.g. from
//! an [`ObservedLinear`](crate::nn::ObservedLinear)); `max|W_j|` is the largest `|w|` in
//! column `j` over **all** the linears of the group, so every one of them stays well
//! scaled. `α ∈ [0, 1]` sets how much difficulty moves to the weights (0.5 is the paper's
//! default; [`search_alpha`] picks it per layer). The floor `1e-5` on both `max|W_j|` and
//! `s_j` keeps the factors finite and positive for dead channels. Computed in f64, stored
//! as f32.
//!
//! # Where `1/s` goes
//!
//! [`smooth`] rewrites a group given what precedes it ([`Preceding`]):
//!
//! | preceding | you state | the norm | the linears |
//! |---|---|---|---|
//! | LayerNorm / RmsNorm | [`NormUse::OnlySmoothedLinears`] (pre-LN: OPT, Llama) | weight (and bias) `÷ s` | columns `× s` |
//! | LayerNorm / RmsNorm | [`NormUse::AlsoResidual`] (post-LN: BERT) | unchanged | columns `× s`, input `÷ s` |
//! | nothing (out-proj, FFN down) | — | — | columns `× s`, input `÷ s` |
//!
//! Folding into the norm is exact only when the norm's output feeds nothing but the
//! smoothed linears. In a post-LN block the residual also reads the LayerNorm output, and a
//! folded norm would hand the residual `x / s`: a silently different model. You must say
//! which case you have — there is no default — and for [`NormUse::AlsoResidual`] the norm
//! is left alone and the division by `s` happens inside each linear: the f32
//! [`SmoothedLinear`] divides its input, and its [`QuantLinear`] applies `1/s` in the fused
//! activation-quantization step ([`QuantLinear::from_linear_smoothed`]), at no extra cost.
//!
//! ```
//! use candle_compress::nn::smooth::{smooth, NormUse, Preceding, SmoothFactors};
//! use candle_compress::quant::calib::ChannelAbsMax;
//! use candle_core::{Device, Module, Tensor};
//! use candle_nn::{LayerNorm, Linear};
//!
//! let dev = Device::Cpu;
//! let ln = LayerNorm::new(Tensor::new(&[1f32, 30., 1., 1.], &dev)?, Tensor::zeros(4, candle_core::DType::F32, &dev)?, 1e-5);
//! let q = Linear::new(Tensor::randn(0f32, 1., (3, 4), &dev)?, None);
//! let k = Linear::new(Tensor::randn(0f32, 1., (3, 4), &dev)?, None);
//! let x = Tensor::randn(0f32, 1., (8, 4), &dev)?;
//!
//! // Calibrate: max |input| per channel of the linears (the norm's output).
//! let mut obs = ChannelAbsMax::new(4)?;
//! obs.observe(&ln.forward(&x)?)?;
//! let s = SmoothFactors::compute(&obs, &[&q, &k], 0.5)?;
//! let out = smooth(Preceding::LayerNorm(&ln, NormUse::OnlySmoothedLinears), &[&q, &k], &s)?;
//!
//! // The rewritten f32 model computes the same function.
//! let h = out.norm.as_ref().unwrap().forward(&x)?;
//! let before = q.forward(&ln.forward(&x)?)?;
//! let after = out.linears[0].forward(&h)?;
//! let err = (before - after)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(err < 1e-4);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear, RmsNorm};

use crate::error::{Error, Num, Result};
use crate::input::{check_finite, with_f32_slice, FloatData};
use crate::nn::{ActivationQuant, QuantConfig, QuantLinear};
use crate::quant::calib::ChannelAbsMax;
use crate::quant::metrics::compare_slices;

/// Lower bound on `max|W_j|` and on every factor `s_j` (as in the reference
/// implementation): keeps the factors finite and positive for dead channels.
pub const MIN_FACTOR: f32 = 1e-5;

/// The α grid [`search_alpha`] uses by default: 0.0, 0.1, …, 1.0.
pub const DEFAULT_ALPHA_GRID: [f32; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

fn check_alpha(alpha: f32) -> Result<()> {
    if alpha.is_finite() && (0.0..=1.0).contains(&alpha) {
        Ok(())
    } else {
        Err(Error::invalid(
            "alpha",
            format!("must be in [0, 1], found {}", Num(alpha)),
        ))
    }
}

/// Checks that a group of linears is non-empty and shares one input width; returns it.
fn group_in_features(linears: &[&Linear]) -> Result<usize> {
    let Some(first) = linears.first() else {
        return Err(Error::invalid(
            "linears",
            "a smoothing group needs at least one linear layer",
        ));
    };
    let in_f = linear_in_features(first, 0)?;
    for (i, l) in linears.iter().enumerate().skip(1) {
        let k = linear_in_features(l, i)?;
        if k != in_f {
            return Err(Error::shape(
                format!("in_features of linear {i} (all linears of a group share one input)"),
                in_f,
                k,
            ));
        }
    }
    Ok(in_f)
}

fn linear_in_features(l: &Linear, i: usize) -> Result<usize> {
    match *l.weight().dims() {
        [o, k] if o > 0 && k > 0 => Ok(k),
        ref d => Err(Error::shape(
            format!("weight of linear {i}"),
            "[out > 0, in > 0]",
            d,
        )),
    }
}

/// `max |W[o, j]|` over the rows of every linear, per input column `j`.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty group; [`Error::ShapeMismatch`] when the
/// linears' `in_features` differ or a weight is not rank 2; [`Error::UnsupportedDType`];
/// [`Error::NonFinite`] for NaN/±Inf in a weight (flat index in that weight).
pub fn weight_column_max(linears: &[&Linear]) -> Result<Vec<f32>> {
    let in_f = group_in_features(linears)?;
    let mut m = vec![0f32; in_f];
    for l in linears {
        let w = FloatData::from_tensor_finite(l.weight(), "weight_column_max")?;
        for row in w.values.chunks_exact(in_f) {
            for (c, &v) in m.iter_mut().zip(row) {
                *c = c.max(v.abs());
            }
        }
    }
    Ok(m)
}

/// The smoothing factors `s` of one input (see the [module docs](self) for the formula),
/// finite and `≥ 1e-5`.
#[derive(Debug, Clone, PartialEq)]
pub struct SmoothFactors {
    factors: Arc<[f32]>,
    alpha: Option<f32>,
}

impl SmoothFactors {
    /// `s_j = max(max|X_j|^α / max(max|W_j|, 1e-5)^(1−α), 1e-5)` from calibration maxima
    /// `act` and the weights of every linear that reads this input.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for α outside `[0, 1]`, an empty calibration (no rows
    /// observed) or an empty group; [`Error::ShapeMismatch`] when the channel count of
    /// `act` differs from the linears' `in_features` (or those differ among themselves);
    /// [`Error::NonFinite`] for non-finite weights or statistics.
    pub fn compute(act: &ChannelAbsMax, linears: &[&Linear], alpha: f32) -> Result<Self> {
        check_alpha(alpha)?;
        let act_max = act.max_abs()?;
        let in_f = group_in_features(linears)?;
        if act_max.len() != in_f {
            return Err(Error::shape(
                "calibration channels (= in_features of the linears)",
                in_f,
                act_max.len(),
            ));
        }
        check_finite(act_max, "SmoothFactors::compute (activation statistics)")?;
        let w_max = weight_column_max(linears)?;
        Self::from_maxima(act_max, &w_max, alpha)
    }

    /// The factors from per-channel activation and weight maxima (both finite, `≥ 0`, of
    /// equal length). Every factor lies in `[1e-5, max(max|X_j|, 1e5)]` (a weighted
    /// geometric mean of `max|X_j|` and `1 / max|W_j|`), so it is finite and its
    /// reciprocal too.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for α outside `[0, 1]`, empty or negative maxima;
    /// [`Error::ShapeMismatch`] when the lengths differ; [`Error::NonFinite`] for NaN/±Inf
    /// in the maxima.
    pub fn from_maxima(act_max: &[f32], weight_max: &[f32], alpha: f32) -> Result<Self> {
        check_alpha(alpha)?;
        if act_max.is_empty() {
            return Err(Error::invalid("activation maxima", "no channels"));
        }
        if act_max.len() != weight_max.len() {
            return Err(Error::shape(
                "weight column maxima (one per activation channel)",
                act_max.len(),
                weight_max.len(),
            ));
        }
        check_finite(act_max, "SmoothFactors (activation maxima)")?;
        check_finite(weight_max, "SmoothFactors (weight maxima)")?;
        for (name, v) in [
            ("activation maxima", act_max),
            ("weight maxima", weight_max),
        ] {
            if let Some(i) = v.iter().position(|&m| m < 0.0) {
                return Err(Error::invalid(
                    name,
                    format!("channel {i} holds a negative maximum {}", Num(v[i])),
                ));
            }
        }
        let a = f64::from(alpha);
        let floor = f64::from(MIN_FACTOR);
        let factors: Vec<f32> = act_max
            .iter()
            .zip(weight_max)
            .map(|(&x, &w)| {
                let w = f64::from(w).max(floor);
                let s = f64::from(x).powf(a) / w.powf(1.0 - a);
                s.max(floor) as f32
            })
            .collect();
        debug_assert!(factors.iter().all(|f| f.is_finite() && *f >= MIN_FACTOR));
        Ok(Self {
            factors: factors.into(),
            alpha: Some(alpha),
        })
    }

    /// Factors given directly (e.g. loaded from a file): every entry finite and `> 0`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty vector or an entry `≤ 0`;
    /// [`Error::NonFinite`] for NaN/±Inf.
    pub fn from_vec(factors: Vec<f32>) -> Result<Self> {
        if factors.is_empty() {
            return Err(Error::invalid("factors", "no channels"));
        }
        check_finite(&factors, "SmoothFactors::from_vec")?;
        if let Some(i) = factors.iter().position(|&s| s <= 0.0) {
            return Err(Error::invalid(
                "factors",
                format!("entry {i} is {}, must be > 0", Num(factors[i])),
            ));
        }
        Ok(Self {
            factors: factors.into(),
            alpha: None,
        })
    }

    /// The factors, one per input channel.
    #[must_use]
    pub fn as_slice(&self) -> &[f32] {
        &self.factors
    }

    /// Number of channels.
    #[must_use]
    pub fn len(&self) -> usize {
        self.factors.len()
    }

    /// Always false: factors hold at least one channel.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.factors.is_empty()
    }

    /// The α they were computed with (`None` for [`SmoothFactors::from_vec`]).
    #[must_use]
    pub fn alpha(&self) -> Option<f32> {
        self.alpha
    }

    /// `max_j max|X_j| / s_j`: the largest magnitude of the *smoothed* activations
    /// `x / s` over the calibration data behind `act`, exact for those data. Divide by 127
    /// for a static int8 activation scale of the smoothed layer
    /// ([`ActivationQuant::Static`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty calibration; [`Error::ShapeMismatch`] when
    /// the channel counts differ.
    pub fn smoothed_max_abs(&self, act: &ChannelAbsMax) -> Result<f32> {
        let a = act.max_abs()?;
        if a.len() != self.len() {
            return Err(Error::shape(
                "calibration channels (= smoothing factors)",
                self.len(),
                a.len(),
            ));
        }
        Ok(a.iter()
            .zip(self.factors.iter())
            .fold(0f32, |m, (&x, &s)| m.max(x * (1.0 / s))))
    }

    fn tensor(&self, dtype: DType, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_slice(&self.factors, self.len(), device)?.to_dtype(dtype)?)
    }
}

/// Who reads a norm's output, stated by the caller of [`smooth`] (there is no default:
/// the wrong answer silently changes a model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormUse {
    /// The norm's output feeds only the linears being smoothed (pre-LN blocks: OPT, Llama,
    /// GPT-2). `1/s` is folded into the norm's weight and bias.
    OnlySmoothedLinears,
    /// The norm's output also feeds something else, typically the residual of a post-LN
    /// block (BERT). The norm is left unchanged; each linear divides its input by `s`
    /// (in the fused quantization step once quantized).
    AlsoResidual,
}

/// What precedes a group of linears sharing one input.
#[derive(Debug, Clone, Copy)]
pub enum Preceding<'a> {
    /// A `candle_nn::LayerNorm` (with or without bias; also its RMS form), and who reads
    /// its output.
    LayerNorm(&'a LayerNorm, NormUse),
    /// A `candle_nn::RmsNorm`, and who reads its output.
    RmsNorm(&'a RmsNorm, NormUse),
    /// No norm to fold into (attention out-projection, FFN down-projection, …): each
    /// linear divides its input by `s`.
    Nothing,
}

/// A norm returned by [`smooth`]: folded (`weight ÷ s`, `bias ÷ s`) or, for
/// [`NormUse::AlsoResidual`], the original unchanged.
#[derive(Debug, Clone)]
pub enum SmoothedNorm {
    /// A LayerNorm.
    LayerNorm(LayerNorm),
    /// An RmsNorm.
    RmsNorm(RmsNorm),
}

impl Module for SmoothedNorm {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            SmoothedNorm::LayerNorm(n) => n.forward(xs),
            SmoothedNorm::RmsNorm(n) => n.forward(xs),
        }
    }
}

/// Where a [`SmoothedLinear`]'s `1/s` is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputScaling {
    /// Folded into the preceding norm: the layer's input already is `x / s`.
    FoldedIntoNorm,
    /// The layer divides its own input by `s` (f32: an element-wise division; quantized:
    /// inside the fused activation-quantization step).
    InLayer,
}

/// A linear of a smoothed group: weight columns multiplied by `s`, and the matching
/// division by `s` either folded into the norm or done by the layer itself
/// ([`InputScaling`]). As a `Module` it runs in f32 and computes the original layer's
/// function; [`SmoothedLinear::to_quant_linear`] gives the integer layer.
#[derive(Debug, Clone)]
pub struct SmoothedLinear {
    scaled: Linear,
    original: Linear,
    factors: SmoothFactors,
    /// `s` as a tensor `[in]` in the weight's dtype and device, for the f32 `InLayer` path.
    factors_t: Tensor,
    scaling: InputScaling,
}

impl SmoothedLinear {
    /// The rewritten f32 layer (`W · diag(s)`, bias unchanged). Its input must be `x / s`.
    #[must_use]
    pub fn scaled_linear(&self) -> &Linear {
        &self.scaled
    }

    /// The layer before smoothing.
    #[must_use]
    pub fn original(&self) -> &Linear {
        &self.original
    }

    /// The smoothing factors.
    #[must_use]
    pub fn factors(&self) -> &SmoothFactors {
        &self.factors
    }

    /// Where `1/s` is applied.
    #[must_use]
    pub fn input_scaling(&self) -> InputScaling {
        self.scaling
    }

    /// The integer layer: [`QuantLinear::from_linear`] on the scaled weights when `1/s`
    /// is folded into the norm, [`QuantLinear::from_linear_smoothed`] (`1/s` applied in
    /// the fused activation quantization) otherwise.
    ///
    /// # Errors
    /// As [`QuantLinear::from_linear`].
    pub fn to_quant_linear(&self, config: &QuantConfig) -> Result<QuantLinear> {
        match self.scaling {
            InputScaling::FoldedIntoNorm => QuantLinear::from_linear(&self.scaled, config),
            InputScaling::InLayer => {
                QuantLinear::from_linear_smoothed(&self.original, self.factors.as_slice(), config)
            }
        }
    }
}

impl Module for SmoothedLinear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self.scaling {
            InputScaling::FoldedIntoNorm => self.scaled.forward(xs),
            InputScaling::InLayer => {
                let s = self.factors_t.to_dtype(xs.dtype())?;
                self.scaled.forward(&xs.broadcast_div(&s)?)
            }
        }
    }
}

/// The result of [`smooth`]: the new norm (if one preceded), the new linears in the order
/// given, and the factors used.
#[derive(Debug, Clone)]
pub struct Smoothed {
    /// The folded norm, or the original one for [`NormUse::AlsoResidual`]; `None` for
    /// [`Preceding::Nothing`]. Replace the model's norm with it.
    pub norm: Option<SmoothedNorm>,
    /// One per input linear, same order.
    pub linears: Vec<SmoothedLinear>,
    /// The factors applied.
    pub factors: SmoothFactors,
}

impl Smoothed {
    /// Whether `1/s` was folded into the norm.
    #[must_use]
    pub fn folded_into_norm(&self) -> bool {
        self.linears
            .first()
            .is_some_and(|l| l.scaling == InputScaling::FoldedIntoNorm)
    }

    /// Every linear as a [`QuantLinear`] with `config` (see
    /// [`SmoothedLinear::to_quant_linear`]).
    ///
    /// # Errors
    /// As [`QuantLinear::from_linear`].
    pub fn quantize(&self, config: &QuantConfig) -> Result<Vec<QuantLinear>> {
        self.linears
            .iter()
            .map(|l| l.to_quant_linear(config))
            .collect()
    }
}

/// Reads a 1-D parameter of `len` entries as f32, checking shape and finiteness.
fn norm_param(t: &Tensor, len: usize, what: &'static str) -> Result<Tensor> {
    if t.dims() != [len] {
        return Err(Error::shape(
            format!("{what} (one entry per smoothed channel)"),
            [len],
            t.dims(),
        ));
    }
    let data = FloatData::from_tensor_finite(t, what)?;
    Ok(Tensor::from_vec(data.values, len, t.device())?)
}

/// `param ÷ s` in f32, returned in `param`'s dtype; refuses a quotient that overflows
/// that dtype (a factor as small as 1e-5 multiplies the parameter by 1e5, beyond F16).
fn divide_param(t: &Tensor, f: &SmoothFactors, what: &'static str) -> Result<Tensor> {
    let v = norm_param(t, f.len(), what)?;
    let s = f.tensor(DType::F32, t.device())?;
    let q = v.div(&s)?;
    let orig = v.to_vec1::<f32>()?;
    check_fold(&q, t.dtype(), what, |i| {
        format!(
            "channel {i} ({} ÷ factor {})",
            Num(orig[i]),
            Num(f.as_slice()[i])
        )
    })?;
    Ok(q.to_dtype(t.dtype())?)
}

fn fold_layer_norm(ln: &LayerNorm, f: &SmoothFactors) -> Result<LayerNorm> {
    let w = divide_param(ln.weight(), f, "LayerNorm weight")?;
    let b = ln
        .bias()
        .map(|b| divide_param(b, f, "LayerNorm bias"))
        .transpose()?;
    Ok(match (ln.remove_mean(), b) {
        (true, Some(b)) => LayerNorm::new(w, b, ln.eps()),
        (true, None) => LayerNorm::new_no_bias(w, ln.eps()),
        // candle builds a mean-free LayerNorm only without bias.
        (false, None) => LayerNorm::rms_norm(w, ln.eps()),
        (false, Some(_)) => {
            return Err(Error::Unsupported {
                what: "LayerNorm form",
                found: "RMS normalisation with a bias".into(),
                supported: "LayerNorm with or without bias, RMS form without bias".into(),
            })
        }
    })
}

/// `W · diag(s)` (columns × s) in f32, returned in W's dtype; bias unchanged.
///
/// # Errors
/// [`Error::InvalidArgument`] when a product overflows W's dtype (a fold must never turn a
/// finite weight into ±Inf).
fn scale_columns(l: &Linear, f: &SmoothFactors) -> Result<Linear> {
    let w = l.weight();
    let wf = w.to_dtype(DType::F32)?;
    let s = f.tensor(DType::F32, w.device())?.unsqueeze(0)?;
    let scaled = wf.broadcast_mul(&s)?;
    let cols = f.len();
    check_fold(&scaled, w.dtype(), "linear weight", |i| {
        let col = i % cols;
        format!(
            "row {} column {col} (weight {} × factor {})",
            i / cols,
            Num(wf
                .flatten_all()
                .and_then(|t| t.get(i))
                .and_then(|t| t.to_scalar::<f32>())
                .unwrap_or(f32::NAN)),
            Num(f.as_slice()[col])
        )
    })?;
    Ok(Linear::new(scaled.to_dtype(w.dtype())?, l.bias().cloned()))
}

/// Refuses a folded parameter (f32 values, to be stored in `dtype`) holding a value that
/// is not finite in `dtype`; `at(i)` describes flat element `i` for the message.
fn check_fold(
    folded: &Tensor,
    dtype: DType,
    what: &str,
    at: impl Fn(usize) -> String,
) -> Result<()> {
    let max = crate::input::float_max(dtype).unwrap_or(f32::MAX);
    // Values below max + half an ulp round to max; at or above it they become ±Inf.
    let limit = match dtype {
        DType::F16 => 65520.0,
        DType::BF16 => f32::from_bits(max.to_bits() + (1 << 15)),
        _ => f32::INFINITY,
    };
    let v = folded.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = v.iter().position(|x| x.is_nan() || x.abs() >= limit) {
        return Err(Error::invalid(
            "factors",
            format!(
                "folding the smoothing factors into the {what} overflows {dtype:?} at {}: \
                 {} is beyond ±{}; use a smaller alpha or keep the weights in F32",
                at(i),
                Num(v[i]),
                Num(max)
            ),
        ));
    }
    Ok(())
}

/// Rewrites a group of linears that share one input, and the norm before them, with the
/// smoothing factors `factors`. Returns new modules; the originals are untouched. See the
/// [module docs](self) for where `1/s` goes in each case.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty group; [`Error::ShapeMismatch`] when the
/// factors, the norm's weight/bias and the linears' `in_features` do not all have the same
/// channel count; [`Error::NonFinite`] for NaN/±Inf in the norm's parameters or weights;
/// candle errors from tensor ops.
pub fn smooth(
    preceding: Preceding<'_>,
    linears: &[&Linear],
    factors: &SmoothFactors,
) -> Result<Smoothed> {
    let in_f = group_in_features(linears)?;
    if factors.len() != in_f {
        return Err(Error::shape(
            "smoothing factors (= in_features of the linears)",
            in_f,
            factors.len(),
        ));
    }
    let (norm, scaling) = match preceding {
        Preceding::LayerNorm(ln, NormUse::OnlySmoothedLinears) => (
            Some(SmoothedNorm::LayerNorm(fold_layer_norm(ln, factors)?)),
            InputScaling::FoldedIntoNorm,
        ),
        Preceding::RmsNorm(rn, NormUse::OnlySmoothedLinears) => {
            let w = divide_param(rn.weight(), factors, "RmsNorm weight")?;
            (
                Some(SmoothedNorm::RmsNorm(RmsNorm::new(w, rn.eps()))),
                InputScaling::FoldedIntoNorm,
            )
        }
        Preceding::LayerNorm(ln, NormUse::AlsoResidual) => {
            norm_param(ln.weight(), in_f, "LayerNorm weight")?;
            if let Some(b) = ln.bias() {
                norm_param(b, in_f, "LayerNorm bias")?;
            }
            (
                Some(SmoothedNorm::LayerNorm(ln.clone())),
                InputScaling::InLayer,
            )
        }
        Preceding::RmsNorm(rn, NormUse::AlsoResidual) => {
            norm_param(rn.weight(), in_f, "RmsNorm weight")?;
            (
                Some(SmoothedNorm::RmsNorm(rn.clone())),
                InputScaling::InLayer,
            )
        }
        Preceding::Nothing => (None, InputScaling::InLayer),
    };
    let linears = linears
        .iter()
        .map(|l| {
            with_f32_slice(l.weight(), "smooth (linear weight)", |w| {
                check_finite(w, "smooth (linear weight)")
            })?;
            Ok(SmoothedLinear {
                scaled: scale_columns(l, factors)?,
                original: (*l).clone(),
                factors: factors.clone(),
                factors_t: factors.tensor(l.weight().dtype(), l.weight().device())?,
                scaling,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Smoothed {
        norm,
        linears,
        factors: factors.clone(),
    })
}

/// The outcome of [`search_alpha`].
#[derive(Debug, Clone, PartialEq)]
pub struct AlphaSearch {
    /// The α with the best output SQNR.
    pub alpha: f32,
    /// The factors for that α.
    pub factors: SmoothFactors,
    /// Output SQNR (dB) of the quantized group at the chosen α, over all its linears.
    pub sqnr_db: f64,
    /// Output SQNR (dB) of the same quantized group without smoothing.
    pub unsmoothed_sqnr_db: f64,
    /// Every `(α, SQNR dB)` tried, in grid order.
    pub tried: Vec<(f32, f64)>,
}

/// Picks α per layer group: for each α of `grid`, smooths the linears, quantizes them
/// with `config` (the real [`QuantLinear`] integer path), runs them on the calibration
/// input `x` (`[.., in]`, the group's input in the *unsmoothed* model) and measures the
/// output SQNR against the f32 layers over all the group's outputs together. Returns the
/// best α (the first one on ties).
///
/// Smoothing a layer whose activations have no outliers can cost accuracy; compare
/// [`AlphaSearch::sqnr_db`] with [`AlphaSearch::unsmoothed_sqnr_db`] to decide whether to
/// smooth at all.
///
/// Score on *held-out* rows: `x` should not be the data `act` was collected from. On the
/// calibration rows themselves every activation is inside its recorded maximum, so large α
/// looks best and generalises badly (on all-MiniLM-L6-v2, `examples/minilm.rs`, scoring on
/// the calibration sentences picked α = 0.8–1.0 and lost accuracy; held-out sentences gave
/// the best per-tensor result). For the same reason, be careful with inputs that come after
/// a GELU/ReLU (an FFN's down projection): channels that rarely fire during calibration get
/// tiny factors and blow up when they do fire; the paper smooths only norm-fed groups.
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty grid, a grid α outside `[0, 1]`, an empty
/// calibration input or statistics, an empty group, or a static activation scale in
/// `config` (a static scale depends on α: calibrate it after choosing α);
/// [`Error::ShapeMismatch`] when `x`, the statistics and the linears disagree on the
/// channel count; [`Error::NonFinite`] for non-finite input, statistics or weights.
///
/// ```
/// use candle_compress::nn::smooth::{search_alpha, DEFAULT_ALPHA_GRID};
/// use candle_compress::nn::{ActivationQuant, QuantConfig};
/// use candle_compress::quant::calib::ChannelAbsMax;
/// use candle_core::{Device, Tensor};
///
/// let dev = Device::Cpu;
/// // 64 tokens × 128 channels; channel 9 is an outlier on every token.
/// let ramp = Tensor::arange(0f32, 128., &dev)?.affine(0.01, -0.6)?;
/// let spike = Tensor::arange(0u32, 128, &dev)?.eq(9u32)?.to_dtype(candle_core::DType::F32)?;
/// let row = (ramp + (spike * 60.0)?)?;
/// let x = row.unsqueeze(0)?.broadcast_mul(&Tensor::arange(1f32, 65., &dev)?.unsqueeze(1)?)?;
/// let lin = candle_nn::Linear::new(Tensor::randn(0f32, 0.1, (32, 128), &dev)?, None);
/// let mut act = ChannelAbsMax::new(128)?;
/// act.observe(&x)?;
/// let cfg = QuantConfig::w8a8().with_activations(ActivationQuant::PerTensor)?;
/// let found = search_alpha(&x, &act, &[&lin], &DEFAULT_ALPHA_GRID, &cfg)?;
/// assert_eq!(found.tried.len(), DEFAULT_ALPHA_GRID.len());
/// assert!(found.sqnr_db > found.unsmoothed_sqnr_db);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn search_alpha(
    x: &Tensor,
    act: &ChannelAbsMax,
    linears: &[&Linear],
    grid: &[f32],
    config: &QuantConfig,
) -> Result<AlphaSearch> {
    if grid.is_empty() {
        return Err(Error::invalid("alpha grid", "no α to try"));
    }
    for &a in grid {
        check_alpha(a)?;
    }
    if let ActivationQuant::Static { .. } = config.activations() {
        return Err(Error::invalid(
            "config",
            "a static activation scale depends on α: search with PerToken or PerTensor, \
             then calibrate the static scale on the smoothed activations",
        ));
    }
    let in_f = group_in_features(linears)?;
    act.max_abs()?;
    if x.dims().last() != Some(&in_f) || x.rank() == 0 {
        return Err(Error::shape(
            "calibration input",
            format!("[.., {in_f}]"),
            x.dims(),
        ));
    }
    if x.elem_count() == 0 {
        return Err(Error::invalid(
            "calibration input",
            "holds no rows: empty calibration",
        ));
    }
    let xf = FloatData::from_tensor_finite(x, "search_alpha (calibration input)")?;
    let x32 = Tensor::from_vec(xf.values, xf.shape.clone(), x.device())?;
    let reference: Vec<Vec<f32>> = linears
        .iter()
        .map(|l| {
            let lw = Linear::new(
                l.weight().to_dtype(DType::F32)?,
                l.bias().map(|b| b.to_dtype(DType::F32)).transpose()?,
            );
            Ok(lw.forward(&x32)?.flatten_all()?.to_vec1::<f32>()?)
        })
        .collect::<Result<_>>()?;
    let reference_flat: Vec<f32> = reference.concat();
    let sqnr_of = |layers: Vec<QuantLinear>| -> Result<f64> {
        let mut out = Vec::with_capacity(reference_flat.len());
        for q in layers {
            out.extend(q.try_forward(&x32)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(compare_slices(&reference_flat, &out)?.sqnr_db)
    };
    let unsmoothed_sqnr_db = sqnr_of(
        linears
            .iter()
            .map(|l| QuantLinear::from_linear(l, config))
            .collect::<Result<_>>()?,
    )?;
    let mut tried = Vec::with_capacity(grid.len());
    let mut best: Option<(f32, SmoothFactors, f64)> = None;
    for &alpha in grid {
        let f = SmoothFactors::compute(act, linears, alpha)?;
        let layers = linears
            .iter()
            .map(|l| QuantLinear::from_linear_smoothed(l, f.as_slice(), config))
            .collect::<Result<_>>()?;
        let db = sqnr_of(layers)?;
        tried.push((alpha, db));
        let better = match &best {
            None => true,
            Some(b) => db > b.2,
        };
        if better {
            best = Some((alpha, f, db));
        }
    }
    let (alpha, factors, sqnr_db) = best.ok_or_else(|| Error::invalid("alpha grid", "no α"))?;
    Ok(AlphaSearch {
        alpha,
        factors,
        sqnr_db,
        unsmoothed_sqnr_db,
        tried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_follow_the_formula() -> Result<()> {
        let f = SmoothFactors::from_maxima(&[4.0, 0.0, 9.0], &[1.0, 2.0, 0.0], 0.5)?;
        let s = f.as_slice();
        assert!((s[0] - 2.0).abs() < 1e-6);
        assert_eq!(s[1], MIN_FACTOR);
        // w floored to 1e-5: 3 / sqrt(1e-5)
        assert!((s[2] - (3.0 / 1e-5f64.sqrt()) as f32).abs() < 1e-2);
        let f = SmoothFactors::from_maxima(&[4.0], &[2.0], 1.0)?;
        assert_eq!(f.as_slice(), &[4.0]);
        let f = SmoothFactors::from_maxima(&[4.0], &[2.0], 0.0)?;
        assert_eq!(f.as_slice(), &[0.5]);
        Ok(())
    }

    #[test]
    fn refuses_bad_alpha_and_maxima() {
        for a in [-0.1, 1.5, f32::NAN] {
            assert!(SmoothFactors::from_maxima(&[1.0], &[1.0], a).is_err());
        }
        assert!(SmoothFactors::from_maxima(&[1.0, f32::NAN], &[1.0, 1.0], 0.5).is_err());
        assert!(SmoothFactors::from_maxima(&[1.0], &[1.0, 1.0], 0.5).is_err());
        assert!(SmoothFactors::from_maxima(&[-1.0], &[1.0], 0.5).is_err());
        assert!(SmoothFactors::from_vec(vec![1.0, 0.0]).is_err());
        assert!(SmoothFactors::from_vec(vec![]).is_err());
    }
}
