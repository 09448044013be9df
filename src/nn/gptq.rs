//! GPTQ (Frantar et al., 2023): quantizes a linear layer's weights column by column and
//! feeds each column's rounding error forward into the columns not yet quantized, so the
//! *output* `x·Wᵀ` on calibration data stays close, not just each weight.
//!
//! For one output row `w` the layer's output error on calibration rows `X` is
//! `(w − ŵ) H (w − ŵ)ᵀ` with `H = XᵀX` (an [`InputGram`]). GPTQ quantizes column `j`,
//! then updates the remaining columns by `−err_j · U[j, j+1..] / U[j, j]`, where `U` is the
//! upper Cholesky factor of `(H + λI)⁻¹`. The implementation follows the paper:
//!
//! - **Dampening** `λ = damp · mean(diag H)` (`damp = 0.01` by default) keeps `H`
//!   invertible when calibration rows are few or channels are dead.
//! - **`U` without an explicit inverse**: the Cholesky factor `L'` of `H` with rows and
//!   columns reversed gives `H = R·Rᵀ` with `R` upper triangular, so `H⁻¹ = UᵀU` with
//!   `U = R⁻¹` (one Cholesky and one triangular inverse, all in f64).
//! - **Blocks** of `block` columns (128): inside a block the update is applied column by
//!   column; the rest of the matrix receives the whole block's errors at once, as one f64
//!   GEMM (the "lazy batch" update).
//! - **Activation order** (optional): columns are processed by decreasing `diag H`. The
//!   codes are stored back in the original column order, so the result is an ordinary
//!   [`QuantLinear`] for the unchanged kernels. Because the kernels' int4 groups are
//!   contiguous in the *original* order, each group's scale is then computed up front from
//!   the original weights of that group ("static groups"); without activation order a
//!   group's scale is computed when its first column is reached, from the weights as
//!   updated so far (the paper's choice).
//! - **Group scales** ([`GroupScales`]): RTN's `amax / qmax`, or (the default) a small
//!   search over shrunk scales minimizing the `diag H`-weighted squared error of the group.
//! - **Triangular work** (the Cholesky factor and its inverse) is blocked by 128 columns
//!   so that most of it runs as f64 GEMMs.
//!
//! - **Asymmetric int4** ([`QuantConfig::w4a8_asym`]): each group gets a scale and an
//!   offset (`w ≈ c·s + m`, the layout of GGUF's Q4_1), RTN's min-max grid or the best
//!   of ranges shrunk about their centre; on small models whose weight groups are not
//!   centred on zero it keeps far more than the symmetric grid (see the README).
//!
//! Codes and scales follow the [`QuantLinear`] numerics (f32 scales and offsets, rounding
//! half away from zero, computed exactly as round-to-nearest does), so with
//! `H = I` (no correlation, no feedback) and RTN scales ([`GroupScales::Rtn`]; the default
//! searches them) GPTQ returns exactly RTN's codes. Int4 codes use
//! the full `[-8, 7]` range (error feedback can push a weight past its group's maximum);
//! int8 codes stay in `[-127, 127]`.
//!
//! ```
//! use candle_compress::nn::gptq::{gptq, GptqConfig};
//! use candle_compress::nn::gram::InputGram;
//! use candle_compress::nn::QuantConfig;
//! use candle_core::{Device, Tensor};
//!
//! let dev = Device::Cpu;
//! let lin = candle_nn::Linear::new(Tensor::randn(0f32, 1., (16, 64), &dev)?, None);
//! // Calibration inputs with correlated columns.
//! let base = Tensor::randn(0f32, 1., (256, 8), &dev)?;
//! let mix = Tensor::randn(0f32, 1., (8, 64), &dev)?;
//! let x = (base.matmul(&mix)? + Tensor::randn(0f32, 0.1, (256, 64), &dev)?)?;
//! let mut h = InputGram::new(64)?;
//! h.observe(&x)?;
//! let out = gptq(&lin, &h, &QuantConfig::w4a8(32)?, &GptqConfig::default())?;
//! assert!(out.error < out.rtn_error); // ‖XWᵀ − XŴᵀ‖² on the calibration rows
//! let y = candle_core::Module::forward(&out.layer, &x)?; // an ordinary QuantLinear
//! assert_eq!(y.dims(), &[256, 16]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{Device, Tensor};
use candle_nn::Linear;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::input::with_f32_slice;
use crate::nn::gram::InputGram;
use crate::nn::quant_linear::{
    asym_params, QuantConfig, QuantLinear, QuantLinearParts, WeightQuant,
};

/// Default dampening: `λ = 0.01 · mean(diag H)`, as in the paper.
pub const DEFAULT_DAMP: f64 = 0.01;
/// Default block of columns for the lazy batch update.
pub const DEFAULT_BLOCK: usize = 128;
/// Default group scales: 16 shrink factors from 1 down to 0.7 (on all-MiniLM-L6-v2 W4A8
/// group 32 this lifts the mean embedding cosine from 0.98735 to 0.98892; see the README).
pub const DEFAULT_SCALES: GroupScales = GroupScales::Search {
    steps: 16,
    min_shrink: 0.7,
};
/// Default minimum number of calibration rows.
pub const DEFAULT_MIN_ROWS: u64 = 128;

/// Pivots of the Cholesky factorization below this fraction of the matrix diagonal mean
/// a numerically singular matrix (condition number beyond what f64 resolves usefully).
const PIVOT_RTOL: f64 = 1e-13;

/// How each group's (or, for int8, each row's) scale is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum GroupScales {
    /// `amax / qmax` of the group, as round-to-nearest.
    Rtn,
    /// The best of `steps` scales `amax · p / qmax`, `p` evenly spaced from 1 down to
    /// `min_shrink`, by the `diag H`-weighted squared rounding error of the group.
    Search {
        /// Candidates tried (≥ 1).
        steps: usize,
        /// Smallest shrink factor, in `(0, 1]`.
        min_shrink: f64,
    },
}

/// GPTQ settings. Build with [`GptqConfig::default`] and the `with_*` methods.
///
/// The default is what measured best on a real model (all-MiniLM-L6-v2, W4A8 group 32):
/// dampening [`DEFAULT_DAMP`], blocks of [`DEFAULT_BLOCK`], activation order on, group
/// scales searched ([`DEFAULT_SCALES`]). With `H = I` GPTQ returns exactly RTN's codes
/// when the scales are RTN's too (`with_scales(GroupScales::Rtn)`); the search may pick
/// a smaller scale, which is its point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GptqConfig {
    damp: f64,
    block: usize,
    act_order: bool,
    scales: GroupScales,
    min_rows: u64,
}

impl Default for GptqConfig {
    fn default() -> Self {
        Self {
            damp: DEFAULT_DAMP,
            block: DEFAULT_BLOCK,
            act_order: true,
            scales: DEFAULT_SCALES,
            min_rows: DEFAULT_MIN_ROWS,
        }
    }
}

impl GptqConfig {
    /// Dampening as a fraction of `mean(diag H)` (finite, `≥ 0`; `0` disables it).
    #[must_use]
    pub fn with_damp(self, damp: f64) -> Self {
        Self { damp, ..self }
    }

    /// Columns per lazy-update block (`≥ 1`; rounded up to a multiple of the int4 group,
    /// so a group never straddles two blocks).
    #[must_use]
    pub fn with_block(self, block: usize) -> Self {
        Self { block, ..self }
    }

    /// Process columns by decreasing `diag H` (the stored layout stays the original one);
    /// on by default.
    #[must_use]
    pub fn with_act_order(self, act_order: bool) -> Self {
        Self { act_order, ..self }
    }

    /// How scales are chosen (default [`DEFAULT_SCALES`]).
    #[must_use]
    pub fn with_scales(self, scales: GroupScales) -> Self {
        Self { scales, ..self }
    }

    /// The fewest calibration rows accepted (default 128).
    #[must_use]
    pub fn with_min_rows(self, min_rows: u64) -> Self {
        Self { min_rows, ..self }
    }

    /// The dampening fraction.
    #[must_use]
    pub fn damp(&self) -> f64 {
        self.damp
    }

    /// Whether activation order is on.
    #[must_use]
    pub fn act_order(&self) -> bool {
        self.act_order
    }

    fn validate(&self) -> Result<()> {
        if !(self.damp.is_finite() && self.damp >= 0.0) {
            return Err(Error::invalid(
                "GPTQ damp",
                format!("must be finite and >= 0, found {}", self.damp),
            ));
        }
        if self.block == 0 {
            return Err(Error::invalid("GPTQ block", "must be >= 1, found 0"));
        }
        if let GroupScales::Search { steps, min_shrink } = self.scales {
            if steps == 0 || !(min_shrink > 0.0 && min_shrink <= 1.0) {
                return Err(Error::invalid(
                    "GPTQ scale search",
                    format!(
                        "needs steps >= 1 and min_shrink in (0, 1], found {steps}, {min_shrink}"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The result of [`gptq`]: the layer and the calibration errors behind it.
#[derive(Debug, Clone)]
pub struct GptqOutcome {
    /// The quantized layer, codes in the original column order.
    pub layer: QuantLinear,
    /// `Σ_o (w_o − ŵ_o) H (w_o − ŵ_o)ᵀ = ‖XWᵀ − XŴᵀ‖²` on the calibration rows (undamped
    /// `H`; weights only, activations in float).
    pub error: f64,
    /// The same for round-to-nearest weights (what [`QuantLinear::from_linear`] builds).
    pub rtn_error: f64,
    /// The `λ` added to the diagonal.
    pub lambda: f64,
}

/// GPTQ on one linear (weight `[out, in]`, optional bias) with calibration statistics
/// `gram` of its inputs; `quant` selects W8A8 or W4A8 (group, activation mode).
///
/// # Errors
/// [`Error::ShapeMismatch`] when `gram` has another channel count than `in`;
/// [`Error::InvalidArgument`] for fewer rows than [`GptqConfig::with_min_rows`] or an
/// invalid config (an int4 group that does not divide `in` is fine: the last group of
/// each row is shorter, as in [`QuantLinear`]); [`Error::NonFinite`] for NaN/Inf
/// in the weights or in `H + λI`; [`Error::NotPositiveDefinite`] when `H + λI` is
/// (numerically) singular.
pub fn gptq(
    linear: &Linear,
    gram: &InputGram,
    quant: &QuantConfig,
    cfg: &GptqConfig,
) -> Result<GptqOutcome> {
    gptq_impl(linear, None, gram, quant, cfg)
}

/// GPTQ on `linear` smoothed by `smooth` (`[in]`, finite, `> 0`; e.g. AWQ scales): the
/// weights quantized are `W·diag(s)` against the Gram matrix of the smoothed inputs
/// `x / s`, and the layer divides its input by `s` inside the fused activation
/// quantization (as [`QuantLinear::from_linear_smoothed`]). `gram` is of the *unsmoothed*
/// inputs.
///
/// # Errors
/// As [`gptq`], plus [`Error::ShapeMismatch`] / [`Error::InvalidArgument`] for a
/// smoothing vector of the wrong length or with entries that are not finite and `> 0`.
pub fn gptq_smoothed(
    linear: &Linear,
    smooth: &[f32],
    gram: &InputGram,
    quant: &QuantConfig,
    cfg: &GptqConfig,
) -> Result<GptqOutcome> {
    gptq_impl(linear, Some(smooth), gram, quant, cfg)
}

fn gptq_impl(
    linear: &Linear,
    smooth: Option<&[f32]>,
    gram: &InputGram,
    quant: &QuantConfig,
    cfg: &GptqConfig,
) -> Result<GptqOutcome> {
    cfg.validate()?;
    quant.validate()?;
    let (out, inp) = match *linear.weight().dims() {
        [o, i] if o > 0 && i > 0 => (o, i),
        ref d => return Err(Error::shape("GPTQ weight", "[out > 0, in > 0]", d)),
    };
    if gram.channels() != inp {
        return Err(Error::shape(
            "GPTQ calibration Gram matrix (channels = in_features)",
            inp,
            gram.channels(),
        ));
    }
    if gram.rows() < cfg.min_rows {
        return Err(Error::invalid(
            "calibration rows",
            format!(
                "GPTQ needs at least {} rows (GptqConfig::with_min_rows), found {}",
                cfg.min_rows,
                gram.rows()
            ),
        ));
    }
    if let Some(s) = smooth {
        if s.len() != inp {
            return Err(Error::shape("GPTQ smoothing vector", inp, s.len()));
        }
        if let Some(i) = s.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::invalid(
                "smoothing vector",
                format!("entry {i} is {}, must be finite and > 0", s[i]),
            ));
        }
    }
    // Weights as the quantizer sees them (W·diag(s) rounded to f32, as QuantLinear does).
    let w: Vec<f64> = with_f32_slice(linear.weight(), "gptq (weight)", |w| {
        crate::input::check_finite(w, "gptq (weight)")?;
        Ok(match smooth {
            Some(s) => w
                .iter()
                .enumerate()
                .map(|(i, &v)| f64::from(v * s[i % inp]))
                .collect(),
            None => w.iter().map(|&v| f64::from(v)).collect(),
        })
    })?;
    let h: Vec<f64> = match smooth {
        Some(s) => {
            let m = gram.matrix();
            (0..inp * inp)
                .map(|k| m[k] / (f64::from(s[k / inp]) * f64::from(s[k % inp])))
                .collect()
        }
        None => gram.matrix().to_vec(),
    };
    let wq = quant.weights();
    let (codes, grids, lambda) = quantize_weights(&w, &h, out, inp, wq, cfg)?;
    let scales: Vec<f32> = grids.iter().map(|g| g.scale).collect();
    let offsets: Option<Vec<f32>> = codes_of(wq)
        .asym
        .then(|| grids.iter().map(|g| g.offset).collect());
    let bias = match linear.bias() {
        Some(b) => Some(with_f32_slice(b, "gptq (bias)", |b| Ok(b.to_vec()))?),
        None => None,
    };
    let error = output_error(
        &w,
        &dequantize(&codes, &scales, offsets.as_deref(), out, inp, wq),
        &h,
        out,
        inp,
    )?;
    let rtn = match smooth {
        Some(s) => QuantLinear::from_linear_smoothed(linear, s, quant)?,
        None => QuantLinear::from_linear(linear, quant)?,
    };
    let rtn_error = output_error(
        &w,
        &dequantize(
            &rtn.weights_i8(),
            rtn.weight_scales(),
            rtn.offsets(),
            out,
            inp,
            wq,
        ),
        &h,
        out,
        inp,
    )?;
    let layer = QuantLinear::from_parts(QuantLinearParts {
        out_features: out,
        in_features: inp,
        weights: codes,
        scales,
        offsets,
        bias,
        smooth: smooth.map(<[f32]>::to_vec),
        config: *quant,
    })?;
    Ok(GptqOutcome {
        layer,
        error,
        rtn_error,
        lambda,
    })
}

/// A weight mode's codes: their range, the divisor of `amax` (symmetric modes) and
/// whether groups carry an offset ([`WeightQuant::Int4GroupedAsym`]).
#[derive(Debug, Clone, Copy)]
struct Codes {
    lo: f32,
    hi: f32,
    qmax: f32,
    asym: bool,
}

fn codes_of(wq: WeightQuant) -> Codes {
    let (lo, hi, qmax, asym) = match wq {
        WeightQuant::Int4Grouped { .. } => (-8.0, 7.0, 7.0, false),
        WeightQuant::Int4GroupedAsym { .. } => (-8.0, 7.0, 7.0, true),
        _ => (-127.0, 127.0, 127.0, false),
    };
    Codes { lo, hi, qmax, asym }
}

/// Columns per scale: the int4 group, or the whole row for int8.
fn scale_span(wq: WeightQuant, inp: usize) -> usize {
    match wq {
        WeightQuant::Int4Grouped { group } | WeightQuant::Int4GroupedAsym { group } => group,
        _ => inp,
    }
}

/// One group's (for int8, one row's) grid: a code `c` stands for `c · scale + offset`
/// (`offset` is 0 in the symmetric modes).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Grid {
    scale: f32,
    offset: f32,
}

impl Grid {
    /// The weight a code stands for, in f64.
    #[inline]
    fn value(self, q: f32) -> f64 {
        f64::from(q) * f64::from(self.scale) + f64::from(self.offset)
    }
}

/// The code of `w` on grid `g`, computed exactly as round-to-nearest computes it:
/// symmetric `round_half_away(w / d)` in f32, asymmetric `round_half_away((w − m) / d)`
/// in f64 (as [`QuantLinear`]'s asymmetric rule); clamped to the code range.
#[inline]
fn quantize_one(w: f64, g: Grid, c: Codes) -> f32 {
    if g.scale == 0.0 {
        0.0
    } else if c.asym {
        ((w - f64::from(g.offset)) / f64::from(g.scale))
            .round()
            .clamp(f64::from(c.lo), f64::from(c.hi)) as f32
    } else {
        ((w as f32) / g.scale).round().clamp(c.lo, c.hi)
    }
}

/// Round-to-nearest of row-major `[rows, inp]` weights `w` (f32 values held in f64) for
/// weight mode `wq`, dequantized (`code · scale`): exactly the codes and scales of
/// [`QuantLinear::from_linear`] on those weights (the `H = I` test pins this), without
/// building a layer. For searches that score many candidate weight transforms.
pub(crate) fn rtn_dequantized(w: &[f64], inp: usize, wq: WeightQuant) -> Vec<f64> {
    let span = scale_span(wq, inp);
    let c = codes_of(wq);
    let mut out = vec![0f64; w.len()];
    out.par_chunks_mut(inp)
        .zip(w.par_chunks(inp))
        .for_each(|(orow, wrow)| {
            for (og, wg) in orow.chunks_mut(span).zip(wrow.chunks(span)) {
                let g = choose_grid(wg, &[], c, GroupScales::Rtn);
                for (o, &v) in og.iter_mut().zip(wg) {
                    *o = g.value(quantize_one(v, g, c));
                }
            }
        });
    out
}

/// The grid for weights `vals` (diag-H weights `hd`, same length; unused for
/// [`GroupScales::Rtn`]). Symmetric: RTN's `amax / qmax`, or the best shrunk `amax`.
/// Asymmetric: RTN's min-max grid, or the best range shrunk about its centre.
fn choose_grid(vals: &[f64], hd: &[f64], c: Codes, how: GroupScales) -> Grid {
    let rtn = rtn_grid(vals, c);
    let GroupScales::Search { steps, min_shrink } = how else {
        return rtn;
    };
    if rtn.scale == 0.0 {
        return rtn;
    }
    let cost = |g: Grid| -> f64 {
        vals.iter()
            .zip(hd)
            .map(|(&v, &h)| {
                let e = v - g.value(quantize_one(v, g, c));
                h.max(f64::MIN_POSITIVE) * e * e
            })
            .sum()
    };
    let mut best = (rtn, cost(rtn));
    for k in 1..steps {
        let p = 1.0 - (1.0 - min_shrink) * k as f64 / (steps - 1).max(1) as f64;
        let g = shrunk_grid(vals, c, p);
        if g.scale > 0.0 {
            let e = cost(g);
            if e < best.1 {
                best = (g, e);
            }
        }
    }
    best.0
}

/// Round-to-nearest's grid of a group: `amax / qmax` (symmetric) or the min-max grid of
/// [`QuantLinear`]'s asymmetric rule.
fn rtn_grid(vals: &[f64], c: Codes) -> Grid {
    shrunk_grid(vals, c, 1.0)
}

/// The grid of a group whose range is scaled by `p` (`p = 1`: RTN's, bit for bit):
/// symmetric `amax·p / qmax`; asymmetric the range `[lo, hi]` shrunk about its centre.
fn shrunk_grid(vals: &[f64], c: Codes, p: f64) -> Grid {
    if c.asym {
        let (lo, hi) = vals
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| {
                (l.min(v as f32), h.max(v as f32))
            });
        let (lo, hi) = if p == 1.0 {
            (lo, hi)
        } else {
            let mid = (f64::from(lo) + f64::from(hi)) / 2.0;
            let half = (f64::from(hi) - f64::from(lo)) / 2.0 * p;
            ((mid - half) as f32, (mid + half) as f32)
        };
        let (scale, offset) = asym_params(lo, hi);
        return Grid { scale, offset };
    }
    let amax = vals.iter().fold(0f32, |m, &v| m.max((v as f32).abs()));
    // At p = 1 the f64 round trip is exact: RTN's `amax / qmax`.
    let scale = ((f64::from(amax) * p) as f32) / c.qmax;
    Grid { scale, offset: 0.0 }
}

/// The GPTQ core on row-major f64 weights `w` (`[out, inp]`) and Gram matrix `h`
/// (`[inp, inp]`): returns codes (original column order), grids (`[out]` or
/// `[out, ⌈inp / group⌉]`) and `λ`.
fn quantize_weights(
    w: &[f64],
    h: &[f64],
    out: usize,
    inp: usize,
    wq: WeightQuant,
    cfg: &GptqConfig,
) -> Result<(Vec<i8>, Vec<Grid>, f64)> {
    let diag: Vec<f64> = (0..inp).map(|i| h[i * inp + i]).collect();
    if let Some(i) = h.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            op: "GPTQ Hessian H",
            index: i,
            value: h[i] as f32,
        });
    }
    let lambda = cfg.damp * diag.iter().sum::<f64>() / inp as f64;
    let perm: Vec<usize> = if cfg.act_order {
        act_order_permutation(&diag)
    } else {
        (0..inp).collect()
    };
    // H + λI, permuted.
    let mut hp = vec![0f64; inp * inp];
    for (i, &pi) in perm.iter().enumerate() {
        for (j, &pj) in perm.iter().enumerate() {
            hp[i * inp + j] = h[pi * inp + pj];
        }
        hp[i * inp + i] += lambda;
    }
    if let Some(i) = hp.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            op: "GPTQ dampened Hessian H + λI",
            index: i,
            value: hp[i] as f32,
        });
    }
    let u = inverse_upper_cholesky(&hp, inp)?;
    let wp = permute_columns(w, inp, &perm)?;
    let span = scale_span(wq, inp);
    // When the group does not divide `inp` the last group of each row is shorter, as in
    // QuantLinear's layout.
    let groups = inp.div_ceil(span);
    let c = codes_of(wq);
    // Static scales (int8 rows, or int4 groups with act-order) from the original weights.
    let static_scales = cfg.act_order || groups == 1;
    let zero = Grid {
        scale: 0.0,
        offset: 0.0,
    };
    let mut scales = vec![zero; out * groups];
    if static_scales {
        scales
            .par_chunks_mut(groups)
            .zip(w.par_chunks(inp))
            .for_each(|(sr, wr)| {
                for (g, s) in sr.iter_mut().enumerate() {
                    let r = g * span..((g + 1) * span).min(inp);
                    *s = choose_grid(&wr[r.clone()], &diag[r], c, cfg.scales);
                }
            });
    }
    // A multiple of the group, so a group's columns are all updated when it starts.
    let block = if groups == 1 {
        cfg.block
    } else {
        cfg.block.div_ceil(span) * span
    };
    // The processing-order diagonal of H for the scale search.
    let diag_p: Vec<f64> = perm.iter().map(|&p| diag[p]).collect();
    let mut wp = wp;
    let mut codes_p = vec![0i8; out * inp];
    let mut b0 = 0;
    while b0 < inp {
        let b1 = (b0 + block).min(inp);
        let nb = b1 - b0;
        let mut errs = vec![0f64; out * nb];
        wp.par_chunks_mut(inp)
            .zip(codes_p.par_chunks_mut(inp))
            .zip(scales.par_chunks_mut(groups))
            .zip(errs.par_chunks_mut(nb))
            .for_each(|(((wr, qr), sr), er)| {
                for j in b0..b1 {
                    let orig = perm[j];
                    let g = orig / span;
                    if !static_scales && j % span == 0 {
                        let r = j..(j + span).min(inp);
                        sr[g] = choose_grid(&wr[r.clone()], &diag_p[r], c, cfg.scales);
                    }
                    let grid = sr[g];
                    let q = quantize_one(wr[j], grid, c);
                    qr[j] = q as i8;
                    let e = (wr[j] - grid.value(q)) / u[j * inp + j];
                    er[j - b0] = e;
                    let urow = &u[j * inp + j + 1..j * inp + b1];
                    for (wk, uk) in wr[j + 1..b1].iter_mut().zip(urow) {
                        *wk -= e * uk;
                    }
                }
            });
        if b1 < inp {
            lazy_update(&mut wp, &errs, &u, out, inp, b0, b1)?;
        }
        b0 = b1;
    }
    let inv = inverse_permutation(&perm)?;
    let codes = permute_columns(&codes_p, inp, &inv)?;
    Ok((codes, scales, lambda))
}

/// `W[:, b1..] −= E · U[b0..b1, b1..]` as one f64 GEMM.
fn lazy_update(
    wp: &mut [f64],
    errs: &[f64],
    u: &[f64],
    out: usize,
    inp: usize,
    b0: usize,
    b1: usize,
) -> Result<()> {
    let nb = b1 - b0;
    let rest = inp - b1;
    let mut ub = Vec::with_capacity(nb * rest);
    for j in b0..b1 {
        ub.extend_from_slice(&u[j * inp + b1..(j + 1) * inp]);
    }
    let e = Tensor::from_slice(errs, (out, nb), &Device::Cpu)?;
    let ub = Tensor::from_vec(ub, (nb, rest), &Device::Cpu)?;
    let upd = e.matmul(&ub)?.flatten_all()?.to_vec1::<f64>()?;
    wp.par_chunks_mut(inp)
        .zip(upd.par_chunks(rest))
        .for_each(|(wr, ur)| {
            for (wk, uk) in wr[b1..].iter_mut().zip(ur) {
                *wk -= uk;
            }
        });
    Ok(())
}

/// Dequantized weights `q · scale + offset` (row-major `[out, inp]`; no offsets: 0), for
/// the error reports (here and in [`crate::nn::sequential`]).
pub(crate) fn dequantize(
    codes: &[i8],
    scales: &[f32],
    offsets: Option<&[f32]>,
    out: usize,
    inp: usize,
    wq: WeightQuant,
) -> Vec<f64> {
    let span = scale_span(wq, inp);
    let groups = inp.div_ceil(span);
    (0..out * inp)
        .map(|k| {
            let (o, c) = (k / inp, k % inp);
            let i = o * groups + c / span;
            let m = offsets.map_or(0.0, |m| f64::from(m[i]));
            f64::from(codes[k]) * f64::from(scales[i]) + m
        })
        .collect()
}

/// `Σ_o (w_o − ŵ_o) H (w_o − ŵ_o)ᵀ`: the squared output error `‖XWᵀ − XŴᵀ‖²` of weights
/// `w_hat` in place of `w` (both row-major `[out, inp]`) on the rows behind `h = XᵀX`.
///
/// # Errors
/// [`Error::ShapeMismatch`] for inconsistent lengths; candle errors.
pub fn output_error(w: &[f64], w_hat: &[f64], h: &[f64], out: usize, inp: usize) -> Result<f64> {
    if w.len() != out * inp || w_hat.len() != out * inp || h.len() != inp * inp {
        return Err(Error::shape(
            "output_error operands",
            format!("[{out}, {inp}] weights and [{inp}, {inp}] H"),
            format!("{}, {}, {}", w.len(), w_hat.len(), h.len()),
        ));
    }
    let d: Vec<f64> = w.iter().zip(w_hat).map(|(a, b)| a - b).collect();
    let dt = Tensor::from_slice(&d, (out, inp), &Device::Cpu)?;
    let ht = Tensor::from_slice(h, (inp, inp), &Device::Cpu)?;
    let dh = dt.matmul(&ht)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(dh.iter().zip(&d).map(|(a, b)| a * b).sum())
}

/// Activation order: column indices by decreasing `diag` (ties by index), as GPTQ's
/// `act_order` / `desc_act`.
#[must_use]
pub fn act_order_permutation(diag: &[f64]) -> Vec<usize> {
    let mut p: Vec<usize> = (0..diag.len()).collect();
    p.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]).then(a.cmp(&b)));
    p
}

/// The inverse of permutation `perm` (`inv[perm[i]] = i`).
///
/// # Errors
/// [`Error::InvalidArgument`] when `perm` is not a permutation of `0..perm.len()`.
pub fn inverse_permutation(perm: &[usize]) -> Result<Vec<usize>> {
    let mut inv = vec![usize::MAX; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        if p >= perm.len() || inv[p] != usize::MAX {
            return Err(Error::invalid(
                "permutation",
                format!("entry {i} ({p}) is out of range or repeated"),
            ));
        }
        inv[p] = i;
    }
    Ok(inv)
}

/// Row-major `[rows, cols]` values with columns reordered: `out[r][i] = m[r][perm[i]]`.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `m.len()` is not a multiple of `cols` or `perm.len() !=
/// cols`; [`Error::InvalidArgument`] when `perm` is not a permutation.
pub fn permute_columns<T: Copy + Send + Sync>(
    m: &[T],
    cols: usize,
    perm: &[usize],
) -> Result<Vec<T>> {
    if cols == 0 || !m.len().is_multiple_of(cols) || perm.len() != cols {
        return Err(Error::shape(
            "permute_columns",
            format!("[rows, {cols}] values and {cols} indices"),
            format!("{} values and {} indices", m.len(), perm.len()),
        ));
    }
    inverse_permutation(perm)?;
    Ok(m.chunks_exact(cols)
        .flat_map(|row| perm.iter().map(move |&p| row[p]))
        .collect())
}

/// `U`, upper triangular with `A⁻¹ = UᵀU`, for symmetric positive definite `a` (`[n, n]`
/// row-major): the Cholesky factor of `a` with rows and columns reversed gives
/// `a = R·Rᵀ` (R upper), and `U = R⁻¹`.
fn inverse_upper_cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let rev: Vec<f64> = (0..n * n)
        .map(|k| a[(n - 1 - k / n) * n + (n - 1 - k % n)])
        .collect();
    let l = cholesky_lower(&rev, n)?;
    let li = invert_lower(&l, n)?;
    Ok((0..n * n)
        .map(|k| li[(n - 1 - k / n) * n + (n - 1 - k % n)])
        .collect())
}

/// `x · y` with four partial sums (vectorizable).
#[inline]
fn dot(x: &[f64], y: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let (xc, yc) = (x.chunks_exact(4), y.chunks_exact(4));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for k in 0..4 {
            acc[k] += a[k] * b[k];
        }
    }
    let tail: f64 = xr.iter().zip(yr).map(|(a, b)| a * b).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// Lower Cholesky factor `L` (`a = L·Lᵀ`) of symmetric `a`: blocked by [`TRI_BLOCK`]
/// columns (each diagonal block factored column by column, the panel below it by forward
/// substitution, the trailing matrix updated by one f64 GEMM), so the `n³/6`
/// multiply-adds run mostly in the GEMM. Pivots are checked against the whole matrix's
/// mean diagonal.
fn cholesky_lower(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mean_diag = (0..n).map(|i| a[i * n + i]).sum::<f64>() / n as f64;
    let mut w = a.to_vec();
    let mut l = vec![0f64; n * n];
    for k0 in (0..n).step_by(TRI_BLOCK) {
        let k1 = (k0 + TRI_BLOCK).min(n);
        let nb = k1 - k0;
        let d: Vec<f64> = (0..nb * nb)
            .map(|t| w[(k0 + t / nb) * n + k0 + t % nb])
            .collect();
        let ld = cholesky_unblocked(&d, nb, mean_diag, k0)?;
        for r in 0..nb {
            l[(k0 + r) * n + k0..(k0 + r) * n + k1].copy_from_slice(&ld[r * nb..(r + 1) * nb]);
        }
        let m = n - k1;
        if m == 0 {
            break;
        }
        // Panel P (rows k1..n): P · L_kkᵀ = W[k1.., k0..k1].
        let mut p = vec![0f64; m * nb];
        p.par_chunks_mut(nb).enumerate().for_each(|(r, pr)| {
            let wr = &w[(k1 + r) * n + k0..(k1 + r) * n + k1];
            for c in 0..nb {
                let v = wr[c] - dot(&pr[..c], &ld[c * nb..c * nb + c]);
                pr[c] = v / ld[c * nb + c];
            }
        });
        for r in 0..m {
            l[(k1 + r) * n + k0..(k1 + r) * n + k1].copy_from_slice(&p[r * nb..(r + 1) * nb]);
        }
        // Trailing update W[k1.., k1..] −= P·Pᵀ (lower triangle used).
        let pt = Tensor::from_vec(p, (m, nb), &Device::Cpu)?;
        let upd = pt.matmul(&pt.t()?)?.flatten_all()?.to_vec1::<f64>()?;
        w.par_chunks_mut(n)
            .skip(k1)
            .zip(upd.par_chunks(m))
            .enumerate()
            .for_each(|(r, (wr, ur))| {
                for (x, u) in wr[k1..=k1 + r].iter_mut().zip(ur) {
                    *x -= u;
                }
            });
    }
    Ok(l)
}

/// Columns per block of [`cholesky_lower`] and [`invert_lower`].
const TRI_BLOCK: usize = 128;

/// Column-by-column Cholesky of the `[n, n]` block `a`, the block's first column being
/// column `offset` of the whole matrix (for the error message).
fn cholesky_unblocked(a: &[f64], n: usize, mean_diag: f64, offset: usize) -> Result<Vec<f64>> {
    let mut l = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let s = a[i * n + j] - dot(&l[i * n..i * n + j], &l[j * n..j * n + j]);
            if i == j {
                if s.is_nan() || s <= PIVOT_RTOL * mean_diag || !s.is_finite() {
                    return Err(Error::NotPositiveDefinite {
                        what: "GPTQ Hessian H + λI".into(),
                        reason: format!(
                            "pivot {s:e} at column {} (mean diagonal {mean_diag:e}); the \
                             calibration inputs are (nearly) linearly dependent: use more \
                             rows or a larger damp",
                            offset + i
                        ),
                    });
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Ok(l)
}

/// The inverse `X` of a lower-triangular matrix with a positive diagonal, by blocks of
/// [`TRI_BLOCK`] rows: `X_II = L_II⁻¹` column by column, then
/// `X[I, ..i0] = −X_II · (L[I, ..i0] · X[..i0, ..i0])` as two f64 GEMMs.
fn invert_lower(l: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut x = vec![0f64; n * n];
    for i0 in (0..n).step_by(TRI_BLOCK) {
        let i1 = (i0 + TRI_BLOCK).min(n);
        let nb = i1 - i0;
        let d: Vec<f64> = (0..nb * nb)
            .map(|t| l[(i0 + t / nb) * n + i0 + t % nb])
            .collect();
        let xd = invert_lower_unblocked(&d, nb);
        for r in 0..nb {
            x[(i0 + r) * n + i0..(i0 + r) * n + i1].copy_from_slice(&xd[r * nb..(r + 1) * nb]);
        }
        if i0 == 0 {
            continue;
        }
        let lp: Vec<f64> = (0..nb)
            .flat_map(|r| l[(i0 + r) * n..(i0 + r) * n + i0].iter().copied())
            .collect();
        let xp: Vec<f64> = (0..i0)
            .flat_map(|r| x[r * n..r * n + i0].iter().copied())
            .collect();
        let lp = Tensor::from_vec(lp, (nb, i0), &Device::Cpu)?;
        let xp = Tensor::from_vec(xp, (i0, i0), &Device::Cpu)?;
        let xdt = Tensor::from_vec(xd, (nb, nb), &Device::Cpu)?;
        let t = xdt
            .matmul(&lp.matmul(&xp)?)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        for r in 0..nb {
            for (dst, v) in x[(i0 + r) * n..(i0 + r) * n + i0]
                .iter_mut()
                .zip(&t[r * i0..(r + 1) * i0])
            {
                *dst = -v;
            }
        }
    }
    Ok(x)
}

/// [`invert_lower`] column by column (for one diagonal block).
fn invert_lower_unblocked(l: &[f64], n: usize) -> Vec<f64> {
    let mut li = vec![0f64; n * n];
    let mut acc = vec![0f64; n];
    for i in 0..n {
        let d = l[i * n + i];
        acc[..i].fill(0.0);
        for k in 0..i {
            let c = l[i * n + k];
            if c != 0.0 {
                for (a, v) in acc[..=k].iter_mut().zip(&li[k * n..k * n + k + 1]) {
                    *a += c * v;
                }
            }
        }
        for j in 0..i {
            li[i * n + j] = -acc[j] / d;
        }
        li[i * n + i] = 1.0 / d;
    }
    li
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_upper_cholesky_inverts() -> Result<()> {
        // 7: one block; 300: three blocks (panel, trailing update and block inverse run).
        for n in [7, 300] {
            // A = BᵀB/n + I, symmetric positive definite.
            let b: Vec<f64> = (0..n * n)
                .map(|k| ((k * 37 % 11) as f64 - 5.0) / 3.0 + ((k % 13) as f64) / 7.0)
                .collect();
            let bt = Tensor::from_slice(&b, (n, n), &Device::Cpu)?;
            let a = (bt.t()?.matmul(&bt)? / n as f64)?
                .add(&Tensor::eye(n, candle_core::DType::F64, &Device::Cpu)?)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let u = inverse_upper_cholesky(&a, n)?;
            for i in 0..n {
                for j in 0..i {
                    assert_eq!(u[i * n + j], 0.0, "U must be upper triangular");
                }
            }
            // (UᵀU)·A = I
            let ut = Tensor::from_slice(&u, (n, n), &Device::Cpu)?;
            let at = Tensor::from_slice(&a, (n, n), &Device::Cpu)?;
            let p = ut
                .t()?
                .matmul(&ut)?
                .matmul(&at)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            for i in 0..n {
                for j in 0..n {
                    let want = if i == j { 1.0 } else { 0.0 };
                    let v = p[i * n + j];
                    assert!((v - want).abs() < 1e-9, "n {n}: ({i},{j}) = {v}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn blocked_cholesky_reports_the_singular_column() {
        // Rank 200 of 300: the pivot fails in the second block.
        let n = 300;
        let mut a = vec![0f64; n * n];
        for i in 0..200 {
            a[i * n + i] = 1.0;
        }
        for i in 200..n {
            a[i * n + i] = 1e-20;
        }
        match cholesky_lower(&a, n) {
            Err(Error::NotPositiveDefinite { reason, .. }) => {
                assert!(reason.contains("column 200"), "{reason}")
            }
            other => panic!("expected NotPositiveDefinite, got {other:?}"),
        }
    }

    #[test]
    fn rtn_dequantized_matches_quant_linear_exactly() -> Result<()> {
        // 80 inputs: the int4 group of 32 leaves a ragged last group of 16.
        let (out, inp) = (6, 80);
        let w: Vec<f32> = (0..out * inp)
            .map(|k| (((k * 7919) % 2003) as f32 / 1001.0 - 1.0) * (1.0 + (k % 5) as f32))
            .collect();
        let lin = Linear::new(Tensor::from_slice(&w, (out, inp), &Device::Cpu)?, None);
        let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        for cfg in [
            QuantConfig::w4a8(32)?,
            QuantConfig::w4a8_asym(32)?,
            QuantConfig::w8a8(),
        ] {
            let q = QuantLinear::from_linear(&lin, &cfg)?;
            let wq = cfg.weights();
            let want = dequantize(
                &q.weights_i8(),
                q.weight_scales(),
                q.offsets(),
                out,
                inp,
                wq,
            );
            assert_eq!(rtn_dequantized(&w64, inp, wq), want, "{cfg:?}");
        }
        Ok(())
    }

    #[test]
    fn singular_matrix_is_refused() {
        // Rank 1.
        let a = [1.0, 2.0, 2.0, 4.0];
        assert!(matches!(
            cholesky_lower(&a, 2),
            Err(Error::NotPositiveDefinite { .. })
        ));
    }

    #[test]
    fn grid_search_never_worse_than_rtn_and_starts_from_it() {
        let vals = [0.9, -0.05, 0.12, 0.3, -0.22, 0.07, 0.01, -0.4];
        let hd = [1.0; 8];
        let search = GroupScales::Search {
            steps: 20,
            min_shrink: 0.7,
        };
        for wq in [
            WeightQuant::Int4Grouped { group: 32 },
            WeightQuant::Int4GroupedAsym { group: 32 },
        ] {
            let c = codes_of(wq);
            let rtn = choose_grid(&vals, &hd, c, GroupScales::Rtn);
            assert_eq!(rtn, shrunk_grid(&vals, c, 1.0));
            let g = choose_grid(&vals, &hd, c, search);
            let err = |g: Grid| -> f64 {
                vals.iter()
                    .map(|&v| (v - g.value(quantize_one(v, g, c))).powi(2))
                    .sum()
            };
            assert!(err(g) <= err(rtn), "{wq:?}");
        }
    }

    #[test]
    fn asymmetric_grid_is_exact_on_a_sixteen_level_group() {
        // Values already on a 16-level grid (as a Q4_1 block): RTN's asymmetric grid
        // reproduces every one, the symmetric grid cannot.
        let (d, m) = (0.125f32, -0.3f32);
        let vals: Vec<f64> = (0..32)
            .map(|k| f64::from(d * (k % 16) as f32 + m))
            .collect();
        let c = codes_of(WeightQuant::Int4GroupedAsym { group: 32 });
        let g = rtn_grid(&vals, c);
        for &v in &vals {
            assert!((g.value(quantize_one(v, g, c)) - v).abs() < 1e-6, "{v}");
        }
        let cs = codes_of(WeightQuant::Int4Grouped { group: 32 });
        let gs = rtn_grid(&vals, cs);
        let worst = vals
            .iter()
            .map(|&v| (gs.value(quantize_one(v, gs, cs)) - v).abs())
            .fold(0f64, f64::max);
        assert!(worst > 0.01, "{worst}");
    }
}
