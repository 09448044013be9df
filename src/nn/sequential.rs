//! Sequential (layer-by-layer) calibration: quantizes a model block by block, and inside
//! a block group by group, so every layer is calibrated on the inputs the *already
//! quantized* earlier layers produce — what GPTQ implementations do, and what lets each
//! layer compensate the errors before it.
//!
//! A model describes itself through [`SequentialModel`]: its blocks (e.g. transformer
//! layers), each block's linears, the groups of linears that read one input (Q/K/V, then
//! attention-out, FFN-up, FFN-down), and a forward pass of one block with given linear
//! modules over a calibration state (hidden states, masks). [`quantize_sequential`] then,
//! for each block and each group in order:
//!
//! 1. runs the block over every calibration batch with the earlier groups already
//!    quantized, the current group's first linear wrapped in a [`GramLinear`] (padding rows
//!    masked out with [`SequentialModel::row_mask`]) and the later groups in f32;
//! 2. quantizes the group with its [`InputGram`] ([`LayerQuantizer`]: RTN, GPTQ, AWQ +
//!    RTN or AWQ + GPTQ);
//!
//! and finally runs the fully quantized block to produce the next block's inputs.
//! Only the current block's states are held, one per calibration batch.
//!
//! A runnable use is `examples/minilm.rs` (a 6-layer BERT).

use std::sync::Arc;
use std::time::Instant;

use candle_core::Module;
use candle_nn::Linear;

use crate::error::{Error, Result};
use crate::nn::awq::awq_search;
use crate::nn::gptq::{dequantize, gptq, gptq_smoothed, output_error, GptqConfig};
use crate::nn::gram::{GramLinear, InputGram};
use crate::nn::quant_linear::{QuantConfig, QuantLinear};

/// A model split into blocks whose linears [`quantize_sequential`] quantizes in order.
pub trait SequentialModel {
    /// What flows between blocks for one calibration batch (hidden states, masks, …).
    type State;

    /// Number of blocks.
    fn blocks(&self) -> usize;

    /// The f32 linears of block `block`, in a fixed order (indices used by
    /// [`SequentialModel::groups`] and [`SequentialModel::forward`]).
    fn linears(&self, block: usize) -> Vec<Linear>;

    /// The linears of the block (indices into [`SequentialModel::linears`]) grouped by the
    /// input they read, in the order the block computes them. Every linear belongs to
    /// exactly one group.
    fn groups(&self, block: usize) -> Vec<Vec<usize>>;

    /// Runs block `block` on `state` with `linears[i]` in place of linear `i`.
    ///
    /// # Errors
    /// Whatever the model's tensor code returns.
    fn forward(
        &self,
        block: usize,
        linears: &[&dyn Module],
        state: &Self::State,
    ) -> candle_core::Result<Self::State>;

    /// Runs block `block` on `state` like [`SequentialModel::forward`], but only as far
    /// as needed: the observation passes of [`quantize_sequential`] record the input of
    /// linear `linear` (the first of the group being calibrated) and discard the rest.
    /// The default runs the whole block; a model that stops right after calling
    /// `linears[linear]` saves the remaining work (about half of the calibration's model
    /// time on a BERT block).
    ///
    /// # Errors
    /// Whatever the model's tensor code returns.
    fn forward_until(
        &self,
        block: usize,
        linears: &[&dyn Module],
        state: &Self::State,
        linear: usize,
    ) -> candle_core::Result<()> {
        let _ = linear;
        self.forward(block, linears, state).map(drop)
    }

    /// Which rows of the linears' inputs (flattened to `[rows, in]`) are real tokens for
    /// this batch; `None`: all of them.
    fn row_mask(&self, state: &Self::State) -> Option<Arc<[bool]>>;
}

/// How one group of linears (sharing an input) is quantized.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LayerQuantizer {
    /// Round to nearest ([`QuantLinear::from_linear`]).
    Rtn,
    /// GPTQ on each linear.
    Gptq(GptqConfig),
    /// AWQ factors searched over `grid` for the group, applied inside each
    /// [`QuantLinear`], then RTN (`gptq: None`) or GPTQ on the scaled weights.
    Awq {
        /// α grid, e.g. [`DEFAULT_AWQ_GRID`](crate::nn::awq::DEFAULT_AWQ_GRID).
        grid: Vec<f32>,
        /// GPTQ after scaling, or RTN.
        gptq: Option<GptqConfig>,
    },
}

/// What happened to one linear.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// Block index.
    pub block: usize,
    /// Linear index within the block.
    pub linear: usize,
    /// Calibration rows its Gram matrix holds.
    pub rows: u64,
    /// `‖XWᵀ − XŴᵀ‖²` of the chosen weights on its (sequential) calibration inputs.
    pub error: f64,
    /// The same for round-to-nearest weights.
    pub rtn_error: f64,
    /// The AWQ α of its group, if AWQ ran.
    pub awq_alpha: Option<f32>,
}

/// Progress after each quantized group, for long runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Block just handled (0-based) and the total.
    pub block: usize,
    /// Number of blocks.
    pub blocks: usize,
    /// Group within the block (0-based) and the total.
    pub group: usize,
    /// Groups in the block.
    pub groups: usize,
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// Of those, the seconds spent quantizing (the rest runs the model and accumulates
    /// the statistics).
    pub quantize_s: f64,
}

/// The quantized linears (`[block][linear]`) and one report per linear.
pub type SequentialOutput = (Vec<Vec<QuantLinear>>, Vec<LayerReport>);

/// Quantizes every linear of `model`, block by block, on calibration `inputs` (the first
/// block's input states, one per batch). See the [module docs](self). `progress` is
/// called after each group.
///
/// # Errors
/// [`Error::InvalidArgument`] for no inputs, a block without linears, or groups that do
/// not cover each linear exactly once; errors of the model's forward pass, of the Gram
/// accumulation (a mask whose length differs from the rows, non-finite activations) and
/// of the quantizer (too few rows, singular `H`, a group that does not divide).
pub fn quantize_sequential<M: SequentialModel>(
    model: &M,
    inputs: Vec<M::State>,
    quantizer: &LayerQuantizer,
    quant: &QuantConfig,
    mut progress: impl FnMut(&Progress),
) -> Result<SequentialOutput> {
    if inputs.is_empty() {
        return Err(Error::invalid("calibration inputs", "no batches given"));
    }
    let start = Instant::now();
    let blocks = model.blocks();
    let mut states = inputs;
    let mut out = Vec::with_capacity(blocks);
    let mut reports = Vec::new();
    let mut quantize_s = 0.0;
    for b in 0..blocks {
        let linears = model.linears(b);
        let groups = model.groups(b);
        check_groups(b, linears.len(), &groups)?;
        let mut modules: Vec<Box<dyn Module>> = linears
            .iter()
            .map(|l| Box::new(l.clone()) as Box<dyn Module>)
            .collect();
        let mut quantized: Vec<Option<QuantLinear>> = vec![None; linears.len()];
        for (gi, group) in groups.iter().enumerate() {
            let observer = GramLinear::new(linears[group[0]].clone())?;
            modules[group[0]] = Box::new(observer.clone());
            for s in &states {
                observer.set_row_mask(model.row_mask(s))?;
                let refs: Vec<&dyn Module> = modules.iter().map(|m| m.as_ref()).collect();
                model.forward_until(b, &refs, s, group[0])?;
            }
            let gram = observer.gram()?;
            let members: Vec<&Linear> = group.iter().map(|&i| &linears[i]).collect();
            let q_start = Instant::now();
            let (layers, errs, alpha) = quantize_group(&members, &gram, quantizer, quant)?;
            quantize_s += q_start.elapsed().as_secs_f64();
            for ((&i, layer), (error, rtn_error)) in group.iter().zip(layers).zip(errs) {
                modules[i] = Box::new(layer.clone());
                quantized[i] = Some(layer);
                reports.push(LayerReport {
                    block: b,
                    linear: i,
                    rows: gram.rows(),
                    error,
                    rtn_error,
                    awq_alpha: alpha,
                });
            }
            progress(&Progress {
                block: b,
                blocks,
                group: gi,
                groups: groups.len(),
                elapsed_s: start.elapsed().as_secs_f64(),
                quantize_s,
            });
        }
        let refs: Vec<&dyn Module> = modules.iter().map(|m| m.as_ref()).collect();
        states = states
            .iter()
            .map(|s| model.forward(b, &refs, s))
            .collect::<candle_core::Result<Vec<_>>>()?;
        out.push(quantized.into_iter().flatten().collect());
    }
    Ok((out, reports))
}

fn check_groups(block: usize, n: usize, groups: &[Vec<usize>]) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid(
            "SequentialModel linears",
            format!("block {block} has none"),
        ));
    }
    let mut seen = vec![false; n];
    for &i in groups.iter().flatten() {
        if i >= n || seen[i] {
            return Err(Error::invalid(
                "SequentialModel groups",
                format!("block {block}: linear {i} is out of range or in two groups"),
            ));
        }
        seen[i] = true;
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(Error::invalid(
            "SequentialModel groups",
            format!("block {block}: linear {i} is in no group"),
        ));
    }
    Ok(())
}

/// Per linear `(error, rtn_error)`.
type GroupOutput = (Vec<QuantLinear>, Vec<(f64, f64)>, Option<f32>);

/// Quantizes one group of linears reading the input behind `gram`.
///
/// # Errors
/// As the quantizer chosen.
pub fn quantize_group(
    linears: &[&Linear],
    gram: &InputGram,
    quantizer: &LayerQuantizer,
    quant: &QuantConfig,
) -> Result<GroupOutput> {
    match quantizer {
        LayerQuantizer::Rtn => {
            let mut layers = Vec::new();
            let mut errs = Vec::new();
            for l in linears {
                let q = QuantLinear::from_linear(l, quant)?;
                let e = rtn_error(l, &q, gram, quant)?;
                layers.push(q);
                errs.push((e, e));
            }
            Ok((layers, errs, None))
        }
        LayerQuantizer::Gptq(cfg) => {
            let mut layers = Vec::new();
            let mut errs = Vec::new();
            for l in linears {
                let o = gptq(l, gram, quant, cfg)?;
                errs.push((o.error, o.rtn_error));
                layers.push(o.layer);
            }
            Ok((layers, errs, None))
        }
        LayerQuantizer::Awq { grid, gptq: cfg } => {
            let found = awq_search(linears, gram, quant, grid)?;
            let s = found.factors.as_slice();
            let mut layers = Vec::new();
            let mut errs = Vec::new();
            for l in linears {
                // Errors are reported against the unscaled layer's plain RTN.
                let plain = rtn_error(l, &QuantLinear::from_linear(l, quant)?, gram, quant)?;
                match cfg {
                    Some(c) => {
                        let o = gptq_smoothed(l, s, gram, quant, c)?;
                        errs.push((o.error, plain));
                        layers.push(o.layer);
                    }
                    None => {
                        let q = QuantLinear::from_linear_smoothed(l, s, quant)?;
                        errs.push((rtn_error(l, &q, gram, quant)?, plain));
                        layers.push(q);
                    }
                }
            }
            Ok((layers, errs, Some(found.alpha)))
        }
    }
}

/// `‖XWᵀ − XŴᵀ‖²` of quantized `q` (possibly smoothed) against `l` on `gram`.
fn rtn_error(l: &Linear, q: &QuantLinear, gram: &InputGram, quant: &QuantConfig) -> Result<f64> {
    let inp = q.in_features();
    let out = q.out_features();
    let w: Vec<f64> = crate::input::with_f32_slice(l.weight(), "rtn_error (weight)", |w| {
        Ok(w.iter().map(|&v| f64::from(v)).collect())
    })?;
    let mut w_hat = dequantize(
        &q.weights_i8(),
        q.weight_scales(),
        q.offsets(),
        out,
        inp,
        quant.weights(),
    );
    if let Some(s) = q.smooth() {
        for (k, v) in w_hat.iter_mut().enumerate() {
            *v /= f64::from(s[k % inp]);
        }
    }
    output_error(&w, &w_hat, gram.matrix(), out, inp)
}
