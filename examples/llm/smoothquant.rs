//! SmoothQuant for the pre-LN decoder: calibrate the f32 model on a text, then move each
//! linear group's activation outliers into its weights and quantize.
//!
//! Per group (see `candle_compress::nn::smooth` for the algebra):
//!
//! | group | input | where `1/s` goes |
//! |---|---|---|
//! | q, k, v | `rms_norm(x, attn_norm)` | folded into `attn_norm` (exact: only q/k/v read it) |
//! | gate, up | `rms_norm(x, ffn_norm)` | folded into `ffn_norm` |
//! | attn_output | the attention output | inside the layer's activation quantization |
//! | down | `silu(gate) · up` | inside the layer's activation quantization |
//! | LM head | `rms_norm(x, output_norm)` | folded into `output_norm` (the head holds its own copy of the tied embedding) |
//!
//! Calibration runs the f32 decoder over a text in windows: four windows of five give the
//! per-channel maxima `max|X_j|`, the fifth gives held-out rows on which
//! [`search_alpha`] scores each α with the real integer layers (scoring on the
//! calibration rows themselves favours large α, which generalises badly). A group whose
//! best smoothed output SQNR is below its unsmoothed SQNR is quantized unsmoothed.

use std::collections::HashMap;
use std::time::Instant;

use candle_compress::nn::gptq::{gptq, gptq_smoothed, GptqConfig};
use candle_compress::nn::gram::InputGram;
use candle_compress::nn::smooth::{
    search_alpha, smooth, NormUse, Preceding, SmoothFactors, SmoothedNorm, DEFAULT_ALPHA_GRID,
};
use candle_compress::nn::{QuantConfig, QuantLinear};
use candle_compress::quant::calib::ChannelAbsMax;
use candle_core::{Result, Tensor};
use candle_nn::{Linear, RmsNorm};

use crate::model::{Kind, Lin, Llama, Site};

/// Held-out rows kept per linear group for the α search.
const HELD_OUT_ROWS: usize = 1024;

/// Every fifth calibration window is held out for scoring α.
const HELD_OUT_EVERY: usize = 5;

/// What one linear group's input looked like during calibration.
struct SiteStats {
    max: ChannelAbsMax,
    /// `XᵀX` of the calibration rows, for GPTQ (when asked for).
    gram: Option<InputGram>,
    held_out: Vec<Tensor>,
    held_rows: usize,
}

/// Per-group activation statistics of the f32 decoder on a calibration text.
pub struct Calibration {
    sites: HashMap<Site, SiteStats>,
    tokens: usize,
}

impl Calibration {
    /// Runs `model` (the f32 decoder) over `tokens` in windows of `window` tokens, each
    /// from an empty cache. Needs at least [`HELD_OUT_EVERY`] windows (one held out).
    /// `grams`: also accumulate each group's input Gram matrix (for [`Weights::Gptq`]).
    pub fn run(model: &mut Llama, tokens: &[u32], window: usize, grams: bool) -> Result<Self> {
        let chunks: Vec<&[u32]> = tokens.chunks(window).filter(|c| c.len() > 1).collect();
        if chunks.len() < HELD_OUT_EVERY {
            candle_core::bail!(
                "calibration text too short: {} windows of {window} tokens, need at least \
                 {HELD_OUT_EVERY} (every {HELD_OUT_EVERY}th is held out for the α search)",
                chunks.len()
            );
        }
        let mut sites: HashMap<Site, SiteStats> = HashMap::new();
        let start = Instant::now();
        for (w, chunk) in chunks.iter().enumerate() {
            let held = w % HELD_OUT_EVERY == HELD_OUT_EVERY - 1;
            model.clear_cache();
            model.forward_observed(chunk, &mut |site, x| {
                let stats = match sites.get_mut(&site) {
                    Some(s) => s,
                    None => sites.entry(site).or_insert(SiteStats {
                        max: ChannelAbsMax::new(x.dim(1)?)?,
                        gram: if grams {
                            Some(InputGram::new(x.dim(1)?)?)
                        } else {
                            None
                        },
                        held_out: Vec::new(),
                        held_rows: 0,
                    }),
                };
                if held {
                    let take = x.dim(0)?.min(HELD_OUT_ROWS - stats.held_rows);
                    if take > 0 {
                        stats.held_out.push(x.narrow(0, 0, take)?.copy()?);
                        stats.held_rows += take;
                    }
                } else {
                    stats.max.observe(x)?;
                    if let Some(g) = stats.gram.as_mut() {
                        g.observe(x)?;
                    }
                }
                Ok(())
            })?;
            eprintln!(
                "  calibration: window {}/{} ({:.0} s)",
                w + 1,
                chunks.len(),
                start.elapsed().as_secs_f64()
            );
        }
        model.clear_cache();
        Ok(Self {
            sites,
            tokens: chunks.iter().map(|c| c.len()).sum(),
        })
    }

    /// Tokens the calibration ran.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    fn site(&self, site: Site) -> Result<&SiteStats> {
        self.sites
            .get(&site)
            .ok_or_else(|| candle_core::Error::Msg(format!("no calibration data for {site:?}")))
    }
}

/// How α is chosen for each group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Alpha {
    /// No smoothing (the rewrite then only quantizes, e.g. with GPTQ).
    Off,
    /// The same α everywhere (0.5 is the paper's default).
    Fixed(f32),
    /// Per group, the best of 0.0, 0.1, …, 1.0 on held-out rows, or no smoothing when that
    /// scores better.
    Search,
}

/// How the (smoothed) weights are rounded.
#[derive(Debug, Clone, Copy)]
pub enum Weights {
    /// Round to nearest (what `QuantLinear::from_linear` does).
    Rtn,
    /// GPTQ against the calibration Gram matrices (the calibration must have them); the
    /// smoothing factors are then applied inside each layer's activation quantization
    /// rather than folded into the norms.
    Gptq(GptqConfig),
}

/// What was done to one group.
#[derive(Debug, Clone, Copy)]
pub struct Choice {
    /// The group.
    pub site: Site,
    /// The α used, `None` when the group was left unsmoothed.
    pub alpha: Option<f32>,
}

/// The SmoothQuant rewrite of `reference` (every linear f32) with the statistics `calib`:
/// block linears quantized with `config`, the LM head with `head`, weights rounded as
/// `weights` says. Returns the model and the choice made for each group.
pub fn smoothquant(
    reference: &Llama,
    calib: &Calibration,
    alpha: Alpha,
    weights: Weights,
    config: &QuantConfig,
    head: &QuantConfig,
) -> Result<(Llama, Vec<Choice>)> {
    let mut model = reference.clone();
    model.clear_cache();
    let plan = Plan {
        alpha,
        weights,
        config,
        eps: model.cfg.eps,
    };
    let mut choices = Vec::new();
    // Rewrites one group and records the choice made.
    let mut group = |site: Site, norm: Option<&Tensor>, lins: &[&Lin], plan: &Plan| {
        let (norm, lins, alpha) = rewrite(calib, site, norm, lins, plan)?;
        choices.push(Choice { site, alpha });
        Ok::<_, candle_core::Error>((norm, lins))
    };
    for (i, b) in model.blocks.iter_mut().enumerate() {
        let site = |k| Site::Block(i, k);
        let (norm, lins) = group(
            site(Kind::Qkv),
            Some(&b.attn_norm),
            &[&b.q, &b.k, &b.v],
            &plan,
        )?;
        if let Some(n) = norm {
            b.attn_norm = n;
        }
        [b.q, b.k, b.v] = take(lins)?;
        [b.o] = take(group(site(Kind::Out), None, &[&b.o], &plan)?.1)?;
        let (norm, lins) = group(
            site(Kind::GateUp),
            Some(&b.ffn_norm),
            &[&b.gate, &b.up],
            &plan,
        )?;
        if let Some(n) = norm {
            b.ffn_norm = n;
        }
        [b.gate, b.up] = take(lins)?;
        [b.down] = take(group(site(Kind::Down), None, &[&b.down], &plan)?.1)?;
    }
    let head_plan = Plan {
        config: head,
        ..plan
    };
    let (norm, lins) = group(Site::Head, Some(&model.norm), &[&model.head], &head_plan)?;
    if let Some(n) = norm {
        model.norm = n;
    }
    [model.head] = take(lins)?;
    Ok((model, choices))
}

/// The `N` layers of a rewritten group.
fn take<const N: usize>(lins: Vec<Lin>) -> Result<[Lin; N]> {
    let n = lins.len();
    <[Lin; N]>::try_from(lins)
        .map_err(|_| candle_core::Error::Msg(format!("a group of {N} linears came back as {n}")))
}

/// How every group is rewritten.
#[derive(Clone, Copy)]
struct Plan<'a> {
    alpha: Alpha,
    weights: Weights,
    config: &'a QuantConfig,
    /// The RmsNorm epsilon.
    eps: f64,
}

/// Smooths and quantizes one group. `norm`: the RmsNorm weight before it, if any (the
/// fold target). Returns the new norm weight (`None`: unchanged), the integer layers and
/// the α used.
fn rewrite(
    calib: &Calibration,
    site: Site,
    norm: Option<&Tensor>,
    lins: &[&Lin],
    plan: &Plan,
) -> Result<(Option<Tensor>, Vec<Lin>, Option<f32>)> {
    let Plan {
        alpha,
        weights,
        config,
        eps,
    } = *plan;
    let floats: Vec<&Linear> = lins
        .iter()
        .map(|l| match l {
            Lin::F32(l) => Ok(l),
            Lin::Quant(_) => candle_core::bail!("SmoothQuant starts from the f32 decoder"),
        })
        .collect::<Result<_>>()?;
    let stats = calib.site(site)?;
    let factors = match alpha {
        Alpha::Off => None,
        Alpha::Fixed(a) => Some((SmoothFactors::compute(&stats.max, &floats, a)?, a)),
        Alpha::Search => {
            let x = Tensor::cat(&stats.held_out, 0)?;
            let found = search_alpha(&x, &stats.max, &floats, &DEFAULT_ALPHA_GRID, config)?;
            (found.sqnr_db > found.unsmoothed_sqnr_db).then_some((found.factors, found.alpha))
        }
    };
    if let Weights::Gptq(cfg) = weights {
        let gram = stats.gram.as_ref().ok_or_else(|| {
            candle_core::Error::Msg("GPTQ needs a calibration run with grams".into())
        })?;
        let quant = floats
            .iter()
            .map(|l| {
                let out = match &factors {
                    Some((f, _)) => gptq_smoothed(l, f.as_slice(), gram, config, &cfg)?,
                    None => gptq(l, gram, config, &cfg)?,
                };
                Ok(Lin::Quant(out.layer))
            })
            .collect::<Result<_>>()?;
        return Ok((None, quant, factors.map(|(_, a)| a)));
    }
    let Some((factors, a)) = factors else {
        let quant = floats
            .iter()
            .map(|l| Ok(Lin::Quant(QuantLinear::from_linear(l, config)?)))
            .collect::<Result<_>>()?;
        return Ok((None, quant, None));
    };
    let rms = norm.map(|w| RmsNorm::new(w.clone(), eps));
    let preceding = match &rms {
        Some(r) => Preceding::RmsNorm(r, NormUse::OnlySmoothedLinears),
        None => Preceding::Nothing,
    };
    let smoothed = smooth(preceding, &floats, &factors)?;
    let new_norm = match smoothed.norm.as_ref() {
        Some(SmoothedNorm::RmsNorm(r)) => Some(r.weight().clone()),
        Some(SmoothedNorm::LayerNorm(_)) => candle_core::bail!("an RmsNorm came back as LayerNorm"),
        None => None,
    };
    let quant = smoothed
        .quantize(config)?
        .into_iter()
        .map(Lin::Quant)
        .collect();
    Ok((new_norm, quant, Some(a)))
}
