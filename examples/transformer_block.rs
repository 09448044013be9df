//! SmoothQuant on a transformer block, end to end.
//!
//! A pre-LN block (LayerNorm → Q/K/V → attention → out-proj → LayerNorm → FFN) with random
//! weights and outlier channels injected the way they appear in OPT-style models (four
//! LayerNorm weights ×50). The example
//!
//! 1. calibrates by running the block with [`ObservedLinear`]s on sample batches,
//! 2. picks α per layer group with [`search_alpha`] on the observed inputs (and keeps a
//!    group unsmoothed when smoothing does not help it),
//! 3. folds the factors into the LayerNorms and linears (checking the f32 block still
//!    computes the same function),
//! 4. swaps every linear for a W8A8 [`QuantLinear`] and compares with f32 on held-out
//!    inputs: plain W8A8, SmoothQuant with the paper's α = 0.5, and per-layer α.
//!
//! Run: `cargo run --example transformer_block` (the dev profile already optimises
//! dependencies).

use candle_compress::nn::smooth::{
    search_alpha, smooth, NormUse, Preceding, SmoothFactors, Smoothed, DEFAULT_ALPHA_GRID,
};
use candle_compress::nn::{ActivationQuant, ObservedLinear, QuantConfig, QuantLinear};
use candle_compress::quant::metrics::compare_tensors;
use candle_compress::Result;
use candle_core::{Device, Module, Tensor};
use candle_nn::{LayerNorm, Linear};

const D: usize = 256;
const FF: usize = 1024;
const HEADS: usize = 8;
const OUTLIER_CHANNELS: [usize; 4] = [7, 64, 150, 201];

/// splitmix64 + Box–Muller, so the example is reproducible without extra dependencies.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-12), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    }

    fn tensor(&mut self, dims: &[usize], std: f32) -> Result<Tensor> {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.normal() * std).collect();
        Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
    }

    fn linear(&mut self, out: usize, inp: usize) -> Result<Linear> {
        let w = self.tensor(&[out, inp], 1.0 / (inp as f32).sqrt())?;
        Ok(Linear::new(w, Some(self.tensor(&[out], 0.02)?)))
    }

    fn layer_norm(&mut self) -> Result<LayerNorm> {
        let mut g: Vec<f32> = (0..D).map(|_| 1.0 + 0.1 * self.normal()).collect();
        for &c in &OUTLIER_CHANNELS {
            g[c] *= 50.0;
        }
        let g = Tensor::from_vec(g, D, &Device::Cpu)?;
        Ok(LayerNorm::new(g, self.tensor(&[D], 0.1)?, 1e-5))
    }
}

/// The block, generic over how each piece is implemented (f32, observed, quantized).
struct Block {
    ln1: Box<dyn Module>,
    q: Box<dyn Module>,
    k: Box<dyn Module>,
    v: Box<dyn Module>,
    o: Box<dyn Module>,
    ln2: Box<dyn Module>,
    up: Box<dyn Module>,
    down: Box<dyn Module>,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let dh = d / HEADS;
        let h = self.ln1.forward(x)?;
        let heads = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, HEADS, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (
            heads(self.q.forward(&h)?)?,
            heads(self.k.forward(&h)?)?,
            heads(self.v.forward(&h)?)?,
        );
        let att = (q.matmul(&k.t()?.contiguous()?)? / (dh as f64).sqrt())?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let a = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        let x = (x + self.o.forward(&a)?)?;
        let f = self
            .down
            .forward(&self.up.forward(&self.ln2.forward(&x)?)?.gelu()?)?;
        Ok((x + f)?)
    }
}

struct Weights {
    ln1: LayerNorm,
    ln2: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    up: Linear,
    down: Linear,
}

fn boxed<M: Module + 'static>(m: M) -> Box<dyn Module> {
    Box::new(m)
}

/// How one group of linears sharing an input ends up: smoothed (with its α) or not.
struct GroupChoice {
    smoothed: Option<Smoothed>,
    label: String,
}

/// Smooths one group with α chosen per layer on its observed input, or leaves it alone
/// when no α beats the unsmoothed layer.
fn choose(
    obs: &ObservedLinear,
    linears: &[&Linear],
    preceding: Preceding<'_>,
    cfg: &QuantConfig,
) -> Result<GroupChoice> {
    let x = obs.sample()?;
    let found = search_alpha(&x, &obs.channel_max()?, linears, &DEFAULT_ALPHA_GRID, cfg)?;
    if found.sqnr_db <= found.unsmoothed_sqnr_db {
        return Ok(GroupChoice {
            smoothed: None,
            label: format!("off ({:.1} dB)", found.unsmoothed_sqnr_db),
        });
    }
    Ok(GroupChoice {
        label: format!(
            "α={:.1} ({:.1} -> {:.1} dB)",
            found.alpha, found.unsmoothed_sqnr_db, found.sqnr_db
        ),
        smoothed: Some(smooth(preceding, linears, &found.factors)?),
    })
}

/// Quantized block from (optional) smoothing results per group.
fn quantized_block(
    w: &Weights,
    qkv: Option<&Smoothed>,
    o: Option<&Smoothed>,
    up: Option<&Smoothed>,
    down: Option<&Smoothed>,
    cfg: &QuantConfig,
) -> Result<Block> {
    let group = |s: Option<&Smoothed>, originals: &[&Linear]| -> Result<Vec<Box<dyn Module>>> {
        match s {
            Some(s) => s.quantize(cfg)?.into_iter().map(|q| Ok(boxed(q))).collect(),
            None => originals
                .iter()
                .map(|l| Ok(boxed(QuantLinear::from_linear(l, cfg)?)))
                .collect(),
        }
    };
    let norm = |s: Option<&Smoothed>, orig: &LayerNorm| -> Box<dyn Module> {
        match s.and_then(|s| s.norm.clone()) {
            Some(n) => boxed(n),
            None => boxed(orig.clone()),
        }
    };
    let mut qkv_l = group(qkv, &[&w.q, &w.k, &w.v])?.into_iter();
    let (q, k, v) = (
        qkv_l.next().unwrap(),
        qkv_l.next().unwrap(),
        qkv_l.next().unwrap(),
    );
    Ok(Block {
        ln1: norm(qkv, &w.ln1),
        q,
        k,
        v,
        o: group(o, &[&w.o])?.remove(0),
        ln2: norm(up, &w.ln2),
        up: group(up, &[&w.up])?.remove(0),
        down: group(down, &[&w.down])?.remove(0),
    })
}

fn main() -> Result<()> {
    let mut rng = Rng(2024);
    let w = Weights {
        ln1: rng.layer_norm()?,
        ln2: rng.layer_norm()?,
        q: rng.linear(D, D)?,
        k: rng.linear(D, D)?,
        v: rng.linear(D, D)?,
        o: rng.linear(D, D)?,
        up: rng.linear(FF, D)?,
        down: rng.linear(D, FF)?,
    };
    let f32_block = Block {
        ln1: boxed(w.ln1.clone()),
        q: boxed(w.q.clone()),
        k: boxed(w.k.clone()),
        v: boxed(w.v.clone()),
        o: boxed(w.o.clone()),
        ln2: boxed(w.ln2.clone()),
        up: boxed(w.up.clone()),
        down: boxed(w.down.clone()),
    };

    // 1. Calibrate: the same block code, run with observing linears.
    let observe = |l: &Linear| -> Result<ObservedLinear> {
        Ok(ObservedLinear::new(l.clone())?.with_sample_rows(256))
    };
    let (oq, ok, ov, oo, oup, odown) = (
        observe(&w.q)?,
        observe(&w.k)?,
        observe(&w.v)?,
        observe(&w.o)?,
        observe(&w.up)?,
        observe(&w.down)?,
    );
    let observed = Block {
        ln1: boxed(w.ln1.clone()),
        q: boxed(oq.clone()),
        k: boxed(ok.clone()),
        v: boxed(ov.clone()),
        o: boxed(oo.clone()),
        ln2: boxed(w.ln2.clone()),
        up: boxed(oup.clone()),
        down: boxed(odown.clone()),
    };
    for _ in 0..8 {
        observed.forward(&rng.tensor(&[4, 32, D], 1.0)?)?;
    }
    let ln1_out = oq.stats()?.summary()?;
    println!(
        "calibration: {} rows; LN1 output |x| max {:.1}, p99 {:.2}, std {:.2}",
        oq.channel_max()?.rows(),
        ln1_out.max_abs,
        ln1_out.p99_abs,
        ln1_out.std
    );

    let x = rng.tensor(&[4, 64, D], 1.0)?; // held-out evaluation batch
    let y = f32_block.forward(&x)?;
    let pre_ln = |ln| Preceding::LayerNorm(ln, NormUse::OnlySmoothedLinears);

    // 3. The folded f32 block computes the same function (α = 0.5 everywhere).
    let fixed = |o: &ObservedLinear, ls: &[&Linear], p: Preceding<'_>| -> Result<Smoothed> {
        smooth(p, ls, &SmoothFactors::compute(&o.channel_max()?, ls, 0.5)?)
    };
    let s_qkv = fixed(&oq, &[&w.q, &w.k, &w.v], pre_ln(&w.ln1))?;
    let s_o = fixed(&oo, &[&w.o], Preceding::Nothing)?;
    let s_up = fixed(&oup, &[&w.up], pre_ln(&w.ln2))?;
    let s_down = fixed(&odown, &[&w.down], Preceding::Nothing)?;
    let folded = Block {
        ln1: boxed(s_qkv.norm.clone().expect("LayerNorm folded")),
        q: boxed(s_qkv.linears[0].clone()),
        k: boxed(s_qkv.linears[1].clone()),
        v: boxed(s_qkv.linears[2].clone()),
        o: boxed(s_o.linears[0].clone()),
        ln2: boxed(s_up.norm.clone().expect("LayerNorm folded")),
        up: boxed(s_up.linears[0].clone()),
        down: boxed(s_down.linears[0].clone()),
    };
    let yf = folded.forward(&x)?;
    let max_y = y.abs()?.max_all()?.to_scalar::<f32>()?;
    let max_d = (&y - &yf)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!(
        "folded f32 block vs original: max relative difference {:.2e}",
        max_d / max_y
    );

    // 4. W8A8 variants against f32.
    println!("\n| activations | variant | cosine | SQNR (dB) |");
    println!("|---|---|---|---|");
    for (name, act) in [
        ("per-tensor", ActivationQuant::PerTensor),
        ("per-token", ActivationQuant::PerToken),
    ] {
        let cfg = QuantConfig::w8a8().with_activations(act)?;
        let plain = quantized_block(&w, None, None, None, None, &cfg)?;
        let half = quantized_block(
            &w,
            Some(&s_qkv),
            Some(&s_o),
            Some(&s_up),
            Some(&s_down),
            &cfg,
        )?;
        // 2. Per-layer α from the observed inputs.
        let c_qkv = choose(&oq, &[&w.q, &w.k, &w.v], pre_ln(&w.ln1), &cfg)?;
        let c_o = choose(&oo, &[&w.o], Preceding::Nothing, &cfg)?;
        let c_up = choose(&oup, &[&w.up], pre_ln(&w.ln2), &cfg)?;
        let c_down = choose(&odown, &[&w.down], Preceding::Nothing, &cfg)?;
        let searched = quantized_block(
            &w,
            c_qkv.smoothed.as_ref(),
            c_o.smoothed.as_ref(),
            c_up.smoothed.as_ref(),
            c_down.smoothed.as_ref(),
            &cfg,
        )?;
        for (variant, block) in [
            ("W8A8", &plain),
            ("SmoothQuant α=0.5 + W8A8", &half),
            ("SmoothQuant per-layer α + W8A8", &searched),
        ] {
            let s = compare_tensors(&y, &block.forward(&x)?)?;
            println!(
                "| {name} | {variant} | {:.6} | {:.1} |",
                s.cosine_similarity, s.sqnr_db
            );
        }
        println!(
            "|   | per-layer α ({name}) | qkv {} · o {} · up {} · down {} | |",
            c_qkv.label, c_o.label, c_up.label, c_down.label
        );
    }
    Ok(())
}
