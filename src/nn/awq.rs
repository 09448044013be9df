//! AWQ-style activation-aware scaling (Lin et al., 2024): per-input-channel factors
//! `s_j = mean|x_j|^α` searched on calibration statistics, so the weight columns that
//! meet large activations get finer quantization steps.
//!
//! The layer computes `(x / s) · Q(W·diag(s))ᵀ`, exactly the SmoothQuant form, so the
//! factors are a [`SmoothFactors`] and are applied the same way: folded into the
//! preceding LayerNorm/RmsNorm ([`crate::nn::smooth::smooth`]) or, where the norm's output
//! is also read elsewhere, inside the [`QuantLinear`](crate::nn::QuantLinear)
//! ([`QuantLinear::from_linear_smoothed`](crate::nn::QuantLinear::from_linear_smoothed), [`gptq_smoothed`](crate::nn::gptq::gptq_smoothed)).
//!
//! The search scores each α of a grid by the output error of the whole group of linears
//! that share the input, `Σ_o (w_o − ŵ_o) H (w_o − ŵ_o)ᵀ = ‖XWᵀ − XŴᵀ‖²`, computed from
//! the [`InputGram`] `H` (no stored activations), with `Ŵ = Q(W·diag(s))·diag(s)⁻¹` the
//! round-to-nearest weights of the scaled layer (the product `(W − Ŵ)·H` in f32, enough to
//! rank the candidates and twice as fast as f64). As in the paper the factors are
//! normalized by `sqrt(max s · min s)`; `α = 0` (all ones) is always tried, so the search
//! never does worse than plain round-to-nearest on the calibration data.
//!
//! ```
//! use candle_compress::nn::awq::{awq_search, DEFAULT_AWQ_GRID};
//! use candle_compress::nn::gram::InputGram;
//! use candle_compress::nn::QuantConfig;
//! use candle_core::{Device, Tensor};
//!
//! let dev = Device::Cpu;
//! let lin = candle_nn::Linear::new(Tensor::randn(0f32, 1., (32, 64), &dev)?, None);
//! // Inputs with a few large channels.
//! let gain = Tensor::arange(0f32, 64., &dev)?.affine(0.1, 0.1)?.sqr()?;
//! let x = Tensor::randn(0f32, 1., (256, 64), &dev)?.broadcast_mul(&gain)?;
//! let mut h = InputGram::new(64)?;
//! h.observe(&x)?;
//! let found = awq_search(&[&lin], &h, &QuantConfig::w4a8(32)?, &DEFAULT_AWQ_GRID)?;
//! assert!(found.error <= found.unscaled_error);
//! assert_eq!(found.factors.len(), 64);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{Device, Tensor};
use candle_nn::Linear;

use crate::error::{Error, Result};
use crate::input::with_f32_slice;
use crate::nn::gptq::rtn_dequantized;
use crate::nn::gram::InputGram;
use crate::nn::quant_linear::QuantConfig;
use crate::nn::smooth::{SmoothFactors, MIN_FACTOR};

/// The α grid of the paper's search: 0, 0.05, …, 0.95.
pub const DEFAULT_AWQ_GRID: [f32; 20] = [
    0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
    0.85, 0.9, 0.95,
];

/// The outcome of [`awq_search`].
#[derive(Debug, Clone, PartialEq)]
pub struct AwqSearch {
    /// The best α (0 when no scaling helped: the factors are then all 1).
    pub alpha: f32,
    /// The factors `s` for that α.
    pub factors: SmoothFactors,
    /// The group's calibration output error with those factors (round-to-nearest).
    pub error: f64,
    /// The same without scaling.
    pub unscaled_error: f64,
    /// Every α tried with its error.
    pub tried: Vec<(f32, f64)>,
}

/// The factors `s_j = m_j^α / sqrt(max m^α · min m^α)` for mean absolute activations `m`
/// (channels that never fired get the smallest non-zero mean), floored at
/// [`MIN_FACTOR`].
///
/// # Errors
/// [`Error::InvalidArgument`] for α outside `[0, 1]`, an empty or all-zero `mean_abs`, or
/// negative / non-finite entries.
pub fn awq_factors(mean_abs: &[f64], alpha: f32) -> Result<SmoothFactors> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::invalid(
            "AWQ alpha",
            format!("must lie in [0, 1], found {alpha}"),
        ));
    }
    if let Some(i) = mean_abs.iter().position(|m| !(m.is_finite() && *m >= 0.0)) {
        return Err(Error::invalid(
            "AWQ mean |x|",
            format!("entry {i} is {}, must be finite and >= 0", mean_abs[i]),
        ));
    }
    let floor = mean_abs
        .iter()
        .copied()
        .filter(|&m| m > 0.0)
        .fold(f64::INFINITY, f64::min);
    if !floor.is_finite() {
        return Err(Error::invalid(
            "AWQ mean |x|",
            "no channel has a non-zero mean (empty or all-zero calibration)",
        ));
    }
    let a = f64::from(alpha);
    let raw: Vec<f64> = mean_abs.iter().map(|&m| m.max(floor).powf(a)).collect();
    let (lo, hi) = raw
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), &v| (l.min(v), h.max(v)));
    let norm = (lo * hi).sqrt();
    let floor_s = f64::from(MIN_FACTOR);
    SmoothFactors::from_vec(
        raw.iter()
            .map(|v| ((v / norm).max(floor_s) as f32).max(MIN_FACTOR))
            .collect(),
    )
}

/// Searches α over `grid` (each in `[0, 1]`; `0` is added when missing) for the linears
/// of `linears`, which all read the input whose statistics `gram` holds, quantized with
/// `quant`. See the [module docs](self).
///
/// # Errors
/// [`Error::InvalidArgument`] for an empty group, an α outside `[0, 1]` or an empty
/// calibration; [`Error::ShapeMismatch`] when a linear's `in_features` differs from the
/// Gram matrix's channels; [`QuantConfig::validate`]'s errors.
pub fn awq_search(
    linears: &[&Linear],
    gram: &InputGram,
    quant: &QuantConfig,
    grid: &[f32],
) -> Result<AwqSearch> {
    if linears.is_empty() {
        return Err(Error::invalid("AWQ group", "no linears"));
    }
    quant.validate()?;
    let inp = gram.channels();
    let mut weights = Vec::with_capacity(linears.len());
    for l in linears {
        match *l.weight().dims() {
            [o, i] if o > 0 && i == inp => {}
            ref d => {
                return Err(Error::shape(
                    "AWQ linear weight",
                    format!("[out, {inp}]"),
                    d,
                ))
            }
        }
        weights.push(with_f32_slice(l.weight(), "awq_search (weight)", |w| {
            crate::input::check_finite(w, "awq_search (weight)")?;
            Ok(w.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>())
        })?);
    }
    let mean = gram.mean_abs()?;
    let mut alphas: Vec<f32> = grid.to_vec();
    if !alphas.contains(&0.0) {
        alphas.insert(0, 0.0);
    }
    // H in f32 once for the whole grid: the scores only rank the α (f32 GEMMs are about
    // twice as fast as f64 ones on one core, which keeps AWQ on the 1536-input FFN-down
    // of a small BERT within a second per layer).
    let h32: Vec<f32> = gram.matrix().iter().map(|&v| v as f32).collect();
    let h32 = Tensor::from_vec(h32, (inp, inp), &Device::Cpu)?;
    let mut tried = Vec::with_capacity(alphas.len());
    let mut best: Option<(f32, SmoothFactors, f64)> = None;
    let mut unscaled = f64::NAN;
    for &alpha in &alphas {
        let f = awq_factors(&mean, alpha)?;
        let err = group_error(&weights, &h32, quant, &f)?;
        if alpha == 0.0 {
            unscaled = err;
        }
        tried.push((alpha, err));
        if best.as_ref().is_none_or(|b| err < b.2) {
            best = Some((alpha, f, err));
        }
    }
    let (alpha, factors, error) = best.ok_or_else(|| Error::invalid("AWQ grid", "empty"))?;
    Ok(AwqSearch {
        alpha,
        factors,
        error,
        unscaled_error: unscaled,
        tried,
    })
}

/// The group's output error with round-to-nearest weights of `W·diag(s)`, unscaled back:
/// the RTN of each linear exactly as
/// [`QuantLinear::from_linear_smoothed`](crate::nn::QuantLinear::from_linear_smoothed) computes it
/// (without building the layers), all linears' `D = W − Ŵ` stacked into one f32 GEMM
/// `D·H`, then `Σ (D·H) ∘ D` in f64.
fn group_error(
    weights: &[Vec<f64>],
    h32: &Tensor,
    quant: &QuantConfig,
    f: &SmoothFactors,
) -> Result<f64> {
    let inp = h32.dim(0)?;
    let s = f.as_slice();
    let mut d: Vec<f32> = Vec::with_capacity(weights.iter().map(Vec::len).sum());
    for w in weights {
        // W·diag(s) rounded to f32, as QuantLinear does.
        let ws: Vec<f64> = w
            .iter()
            .enumerate()
            .map(|(k, &v)| f64::from((v as f32) * s[k % inp]))
            .collect();
        let deq = rtn_dequantized(&ws, inp, quant.weights());
        d.extend(
            w.iter()
                .zip(&deq)
                .enumerate()
                .map(|(k, (&v, &q))| (v - q / f64::from(s[k % inp])) as f32),
        );
    }
    let rows = d.len() / inp;
    let dt = Tensor::from_slice(&d, (rows, inp), &Device::Cpu)?;
    let dh = dt.matmul(h32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(dh
        .iter()
        .zip(&d)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_are_normalized_and_alpha_zero_is_ones() -> Result<()> {
        let m = [0.5, 2.0, 0.0, 8.0];
        let ones = awq_factors(&m, 0.0)?;
        assert!(ones.as_slice().iter().all(|&v| v == 1.0));
        let f = awq_factors(&m, 1.0)?;
        // geometric middle of the range is 1: sqrt(0.5 · 8) = 2 → s = m / 2.
        assert_eq!(f.as_slice(), &[0.25, 1.0, 0.25, 4.0]);
        assert!(awq_factors(&m, 1.5).is_err());
        assert!(awq_factors(&[0.0, 0.0], 0.5).is_err());
        assert!(awq_factors(&[f64::NAN], 0.5).is_err());
        Ok(())
    }
}
