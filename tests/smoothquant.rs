//! SmoothQuant (issue 5): exact folding (must show 1), the W8A8 accuracy gain on a layer
//! with outlier channels (2), a calibrated transformer block (3) and bad input (5).
//!
//! Print the README table with
//! `cargo test --release --test smoothquant -- --nocapture sqnr_table`.

use candle_compress::nn::smooth::{
    search_alpha, smooth, weight_column_max, InputScaling, NormUse, Preceding, SmoothFactors,
    DEFAULT_ALPHA_GRID,
};
use candle_compress::nn::{ActivationQuant, ObservedLinear, QuantConfig, QuantLinear};
use candle_compress::quant::calib::ChannelAbsMax;
use candle_compress::quant::metrics::{compare_slices, compare_tensors};
use candle_compress::{Error, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear, RmsNorm};

mod common;

use common::rng::SplitMix64;

/// This file's builders on the shared generator (splitmix64 + Box–Muller normals).
impl SplitMix64 {
    /// A tensor of shape `dims` of normals scaled by `std`.
    fn tensor(&mut self, dims: &[usize], std: f32) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.normal() * std).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }

    /// A `Linear` `[out, inp]`: weights are normals scaled by `1/√inp`, then, when `bias`,
    /// a bias of normals scaled by 0.1.
    fn linear(&mut self, out: usize, inp: usize, bias: bool) -> Linear {
        let w = self.tensor(&[out, inp], 1.0 / (inp as f32).sqrt());
        let b = bias.then(|| self.tensor(&[out], 0.1));
        Linear::new(w, b)
    }
}

/// Norm weights ~ 1 ± 0.1 with the given channels ×50: the LayerNorm-weight outliers
/// that make activation outlier channels in OPT-style models.
fn outlier_gamma(rng: &mut SplitMix64, d: usize, outliers: &[usize]) -> Tensor {
    let mut g: Vec<f32> = (0..d).map(|_| 1.0 + 0.1 * rng.normal()).collect();
    for &c in outliers {
        g[c] *= 50.0;
    }
    Tensor::from_vec(g, d, &Device::Cpu).unwrap()
}

/// max |a − b| / max |a|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let max_a = a.iter().fold(0f64, |m, v| m.max(f64::from(v.abs())));
    let max_d = a
        .iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    max_d / max_a
}

fn observe(x: &Tensor) -> ChannelAbsMax {
    let mut obs = ChannelAbsMax::new(x.dim(D::Minus1).unwrap()).unwrap();
    obs.observe(x).unwrap();
    obs
}

const OUTLIERS: [usize; 4] = [3, 17, 40, 61];

// ---------------------------------------------------------------- must show 1: exactness

#[test]
fn layer_norm_fold_is_exact() -> Result<()> {
    let mut rng = SplitMix64(1);
    let d = 64;
    let ln = LayerNorm::new(
        outlier_gamma(&mut rng, d, &OUTLIERS),
        rng.tensor(&[d], 0.5),
        1e-5,
    );
    let lin = rng.linear(48, d, true);
    let x = rng.tensor(&[2, 5, d], 1.0);
    let before = lin.forward(&ln.forward(&x)?)?;
    for alpha in [0.0, 0.5, 0.85, 1.0] {
        let f = SmoothFactors::compute(&observe(&ln.forward(&x)?), &[&lin], alpha)?;
        let out = smooth(
            Preceding::LayerNorm(&ln, NormUse::OnlySmoothedLinears),
            &[&lin],
            &f,
        )?;
        assert!(out.folded_into_norm());
        let after = out.linears[0].forward(&out.norm.as_ref().unwrap().forward(&x)?)?;
        let e = rel_err(&before, &after);
        assert!(e <= 1e-5, "alpha {alpha}: relative error {e:e}");
        // The folded pieces really are plain candle modules with the scaled parameters.
        let lin_after = out.linears[0]
            .scaled_linear()
            .forward(&out.norm.as_ref().unwrap().forward(&x)?)?;
        assert!(rel_err(&before, &lin_after) <= 1e-5);
    }
    // A LayerNorm without bias folds too.
    let ln_nb = LayerNorm::new_no_bias(outlier_gamma(&mut rng, d, &OUTLIERS), 1e-5);
    let f = SmoothFactors::compute(&observe(&ln_nb.forward(&x)?), &[&lin], 0.5)?;
    let out = smooth(
        Preceding::LayerNorm(&ln_nb, NormUse::OnlySmoothedLinears),
        &[&lin],
        &f,
    )?;
    let after = out.linears[0].forward(&out.norm.as_ref().unwrap().forward(&x)?)?;
    assert!(rel_err(&lin.forward(&ln_nb.forward(&x)?)?, &after) <= 1e-5);
    Ok(())
}

#[test]
fn rms_norm_fold_is_exact() -> Result<()> {
    let mut rng = SplitMix64(2);
    let d = 64;
    let rn = RmsNorm::new(outlier_gamma(&mut rng, d, &OUTLIERS), 1e-6);
    let gate = rng.linear(96, d, false);
    let up = rng.linear(96, d, false);
    let x = rng.tensor(&[3, 7, d], 2.0);
    let h = rn.forward(&x)?;
    let f = SmoothFactors::compute(&observe(&h), &[&gate, &up], 0.5)?;
    let out = smooth(
        Preceding::RmsNorm(&rn, NormUse::OnlySmoothedLinears),
        &[&gate, &up],
        &f,
    )?;
    let h2 = out.norm.as_ref().unwrap().forward(&x)?;
    for (orig, new) in [&gate, &up].into_iter().zip(&out.linears) {
        let e = rel_err(&orig.forward(&h)?, &new.forward(&h2)?);
        assert!(e <= 1e-5, "relative error {e:e}");
    }
    Ok(())
}

#[test]
fn shared_input_of_three_linears_is_exact_and_uses_the_joint_weight_max() -> Result<()> {
    let mut rng = SplitMix64(3);
    let d = 64;
    let ln = LayerNorm::new(
        outlier_gamma(&mut rng, d, &OUTLIERS),
        rng.tensor(&[d], 0.2),
        1e-5,
    );
    let (q, k, v) = (
        rng.linear(64, d, true),
        rng.linear(32, d, true),
        rng.linear(32, d, true),
    );
    // Make V's column 5 the largest of all three, so the joint maximum differs from Q's.
    let mut vw = v.weight().to_vec2::<f32>()?;
    vw[0][5] = 9.0;
    let v = Linear::new(Tensor::new(vw, &Device::Cpu)?, v.bias().cloned());
    let x = rng.tensor(&[4, 6, d], 1.0);
    let h = ln.forward(&x)?;
    let obs = observe(&h);
    let f = SmoothFactors::compute(&obs, &[&q, &k, &v], 0.5)?;

    // W's column maximum is taken over all three linears.
    let joint = weight_column_max(&[&q, &k, &v])?;
    assert_eq!(joint[5], 9.0);
    let expect = SmoothFactors::from_maxima(obs.max_abs()?, &joint, 0.5)?;
    assert_eq!(f, expect);
    assert_ne!(f, SmoothFactors::compute(&obs, &[&q], 0.5)?);

    let out = smooth(
        Preceding::LayerNorm(&ln, NormUse::OnlySmoothedLinears),
        &[&q, &k, &v],
        &f,
    )?;
    let h2 = out.norm.as_ref().unwrap().forward(&x)?;
    assert_eq!(out.linears.len(), 3);
    for (orig, new) in [&q, &k, &v].into_iter().zip(&out.linears) {
        let e = rel_err(&orig.forward(&h)?, &new.forward(&h2)?);
        assert!(e <= 1e-5, "relative error {e:e}");
    }
    Ok(())
}

/// A BERT-style post-LN sub-block: `h = LN1(x)`, `y = LN2(h + W2·relu(W1·h))`. The
/// residual reads LN1's output, so `1/s` must not be folded into LN1.
struct PostLn {
    ln1: Box<dyn Module>,
    w1: Box<dyn Module>,
    w2: Linear,
    ln2: LayerNorm,
}

impl PostLn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.ln1.forward(x)?;
        let f = self.w2.forward(&self.w1.forward(&h)?.relu()?)?;
        Ok(self.ln2.forward(&(h + f)?)?)
    }
}

#[test]
fn post_ln_block_stays_exact_and_the_naive_fold_is_caught() -> Result<()> {
    let mut rng = SplitMix64(4);
    let d = 64;
    let ln1 = LayerNorm::new(
        outlier_gamma(&mut rng, d, &OUTLIERS),
        rng.tensor(&[d], 0.2),
        1e-5,
    );
    let w1 = rng.linear(128, d, true);
    let w2 = rng.linear(d, 128, true);
    let ln2 = LayerNorm::new(
        rng.tensor(&[d], 0.1).affine(1.0, 1.0)?,
        rng.tensor(&[d], 0.1),
        1e-5,
    );
    let x = rng.tensor(&[2, 8, d], 1.0);
    let original = PostLn {
        ln1: Box::new(ln1.clone()),
        w1: Box::new(w1.clone()),
        w2: w2.clone(),
        ln2: ln2.clone(),
    };
    let y = original.forward(&x)?;
    let f = SmoothFactors::compute(&observe(&ln1.forward(&x)?), &[&w1], 0.5)?;

    // The naive fold (telling `smooth` that only W1 reads LN1) silently changes the model:
    // the residual now receives h / s.
    let naive = smooth(
        Preceding::LayerNorm(&ln1, NormUse::OnlySmoothedLinears),
        &[&w1],
        &f,
    )?;
    let naive_block = PostLn {
        ln1: Box::new(naive.norm.clone().unwrap()),
        w1: Box::new(naive.linears[0].clone()),
        w2: w2.clone(),
        ln2: ln2.clone(),
    };
    let e_naive = rel_err(&y, &naive_block.forward(&x)?);
    assert!(
        e_naive > 1e-2,
        "naive fold should break a post-LN block, error {e_naive:e}"
    );

    // Stating the residual keeps LN1 unchanged and moves 1/s into the linear: exact.
    let safe = smooth(
        Preceding::LayerNorm(&ln1, NormUse::AlsoResidual),
        &[&w1],
        &f,
    )?;
    assert!(!safe.folded_into_norm());
    assert_eq!(safe.linears[0].input_scaling(), InputScaling::InLayer);
    let new_ln1 = safe.norm.clone().unwrap();
    assert_eq!(rel_err(&ln1.forward(&x)?, &new_ln1.forward(&x)?), 0.0);
    let safe_block = PostLn {
        ln1: Box::new(new_ln1),
        w1: Box::new(safe.linears[0].clone()),
        w2: w2.clone(),
        ln2: ln2.clone(),
    };
    let e_safe = rel_err(&y, &safe_block.forward(&x)?);
    assert!(e_safe <= 1e-5, "post-LN relative error {e_safe:e}");

    // Quantized, 1/s is applied in QuantLinear's fused activation step: the block stays
    // close to f32 and the smoothing vector is carried by the layer.
    let cfg = QuantConfig::w8a8();
    let q1 = safe.linears[0].to_quant_linear(&cfg)?;
    assert_eq!(q1.smooth(), Some(f.as_slice()));
    let quant_block = PostLn {
        ln1: Box::new(ln1.clone()),
        w1: Box::new(q1),
        w2: w2.clone(),
        ln2: ln2.clone(),
    };
    let s = compare_tensors(&y, &quant_block.forward(&x)?)?;
    assert!(
        s.sqnr_db > 30.0,
        "quantized post-LN block SQNR {:.1} dB",
        s.sqnr_db
    );
    Ok(())
}

#[test]
fn no_preceding_norm_puts_the_division_in_the_layer() -> Result<()> {
    let mut rng = SplitMix64(5);
    let lin = rng.linear(32, 64, true);
    let mut x = rng.tensor(&[10, 64], 1.0).to_vec2::<f32>()?;
    for row in &mut x {
        row[7] *= 40.0;
    }
    let x = Tensor::new(x, &Device::Cpu)?;
    let f = SmoothFactors::compute(&observe(&x), &[&lin], 0.5)?;
    let out = smooth(Preceding::Nothing, &[&lin], &f)?;
    assert!(out.norm.is_none());
    let e = rel_err(&lin.forward(&x)?, &out.linears[0].forward(&x)?);
    assert!(e <= 1e-5, "relative error {e:e}");
    Ok(())
}

// ------------------------------------------------- must show 2: outlier layer, real W8A8

struct OutlierLayer {
    x: Tensor,
    lin: Linear,
    obs: ChannelAbsMax,
}

/// 256 tokens × 512 channels of N(0, 1) activations whose channels 3, 17, 40, 61 are ×50
/// on every token (the LLM.int8 / SmoothQuant observation), and a 512 → 512 linear layer.
fn outlier_layer() -> OutlierLayer {
    let mut rng = SplitMix64(42);
    let (tokens, d) = (256, 512);
    let mut x: Vec<f32> = (0..tokens * d).map(|_| rng.normal()).collect();
    for t in 0..tokens {
        for &c in &OUTLIERS {
            x[t * d + c] *= 50.0;
        }
    }
    let x = Tensor::from_vec(x, (tokens, d), &Device::Cpu).unwrap();
    let lin = rng.linear(512, d, true);
    let obs = observe(&x);
    OutlierLayer { x, lin, obs }
}

fn quant_sqnr(layer: &QuantLinear, x: &Tensor, reference: &Tensor) -> f64 {
    compare_tensors(reference, &layer.forward(x).unwrap())
        .unwrap()
        .sqnr_db
}

/// Fake-quant oracle of the smoothed per-tensor W8A8 layer, written from the formulas:
/// activations `x / s` per tensor, weights `W · diag(s)` per output row, f32 matmul.
fn fake_quant_oracle(x: &Tensor, lin: &Linear, s: &[f32]) -> Vec<f32> {
    let fq = |v: &[f32], amax: f32| -> Vec<f32> {
        let scale = amax / 127.0;
        v.iter()
            .map(|&a| {
                if scale == 0.0 {
                    0.0
                } else {
                    (a / scale).round().clamp(-127.0, 127.0) * scale
                }
            })
            .collect()
    };
    let d = s.len();
    let xs: Vec<f32> = x
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, &v)| v * (1.0 / s[i % d]))
        .collect();
    let xq = fq(&xs, xs.iter().fold(0f32, |m, v| m.max(v.abs())));
    let w = lin.weight().to_vec2::<f32>().unwrap();
    let wq: Vec<Vec<f32>> = w
        .iter()
        .map(|row| {
            let r: Vec<f32> = row.iter().zip(s).map(|(a, b)| a * b).collect();
            fq(&r, r.iter().fold(0f32, |m, v| m.max(v.abs())))
        })
        .collect();
    let b = lin.bias().unwrap().to_vec1::<f32>().unwrap();
    let mut out = Vec::new();
    for row in xq.chunks(d) {
        for (o, wr) in wq.iter().enumerate() {
            let acc: f64 = row.iter().zip(wr).map(|(a, b)| f64::from(a * b)).sum();
            out.push(acc as f32 + b[o]);
        }
    }
    out
}

#[test]
fn smoothquant_gains_at_least_10_db_with_per_tensor_activations() -> Result<()> {
    let l = outlier_layer();
    let reference = l.lin.forward(&l.x)?;
    let per_tensor = QuantConfig::w8a8().with_activations(ActivationQuant::PerTensor)?;
    let plain = QuantLinear::from_linear(&l.lin, &per_tensor)?;
    let f = SmoothFactors::compute(&l.obs, &[&l.lin], 0.5)?;
    let smoothed = QuantLinear::from_linear_smoothed(&l.lin, f.as_slice(), &per_tensor)?;
    let (base, sq) = (
        quant_sqnr(&plain, &l.x, &reference),
        quant_sqnr(&smoothed, &l.x, &reference),
    );
    assert!(sq - base >= 10.0, "per-tensor: {base:.1} dB -> {sq:.1} dB");

    // The integer path agrees with the fake-quant oracle written from the formulas.
    let oracle = fake_quant_oracle(&l.x, &l.lin, f.as_slice());
    let real = smoothed.forward(&l.x)?.flatten_all()?.to_vec1::<f32>()?;
    let agreement = compare_slices(&oracle, &real)?.sqnr_db;
    assert!(
        agreement > 60.0,
        "integer path vs oracle: {agreement:.1} dB"
    );
    Ok(())
}

#[test]
fn sqnr_table() -> Result<()> {
    let l = outlier_layer();
    let reference = l.lin.forward(&l.x)?;
    println!("\nW8A8 output SQNR, 256 tokens x 512 channels (4 channels x50), 512 -> 512 linear");
    println!("| activations | no smoothing | SmoothQuant α=0.5 | SmoothQuant α searched | gain |");
    println!("|---|---|---|---|---|");
    for (name, act) in [
        ("per-tensor", ActivationQuant::PerTensor),
        ("per-token", ActivationQuant::PerToken),
    ] {
        let cfg = QuantConfig::w8a8().with_activations(act)?;
        let base = quant_sqnr(&QuantLinear::from_linear(&l.lin, &cfg)?, &l.x, &reference);
        let f = SmoothFactors::compute(&l.obs, &[&l.lin], 0.5)?;
        let half = quant_sqnr(
            &QuantLinear::from_linear_smoothed(&l.lin, f.as_slice(), &cfg)?,
            &l.x,
            &reference,
        );
        let search = search_alpha(&l.x, &l.obs, &[&l.lin], &DEFAULT_ALPHA_GRID, &cfg)?;
        assert!((search.unsmoothed_sqnr_db - base).abs() < 1e-9);
        assert!(search.sqnr_db >= half - 1e-9);
        println!(
            "| {name} | {base:.1} dB | {half:.1} dB | {:.1} dB (α={:.1}) | +{:.1} dB |",
            search.sqnr_db,
            search.alpha,
            search.sqnr_db - base
        );
        assert!(search.sqnr_db > base);
    }
    Ok(())
}

#[test]
fn static_scale_for_the_smoothed_layer_comes_from_the_channel_maxima() -> Result<()> {
    let l = outlier_layer();
    let f = SmoothFactors::compute(&l.obs, &[&l.lin], 0.5)?;
    let amax = f.smoothed_max_abs(&l.obs)?;
    let stat = QuantConfig::w8a8().with_activations(ActivationQuant::Static {
        scale: amax / 127.0,
    })?;
    let per_tensor = QuantConfig::w8a8().with_activations(ActivationQuant::PerTensor)?;
    let a = QuantLinear::from_linear_smoothed(&l.lin, f.as_slice(), &stat)?;
    let b = QuantLinear::from_linear_smoothed(&l.lin, f.as_slice(), &per_tensor)?;
    // On the calibration data the static scale is exactly the dynamic per-tensor one.
    assert_eq!(a.quantize_activations(&l.x)?, b.quantize_activations(&l.x)?);
    let reference = l.lin.forward(&l.x)?;
    assert!(quant_sqnr(&a, &l.x, &reference) > 30.0);
    assert!(f.smoothed_max_abs(&ChannelAbsMax::new(512)?).is_err());
    assert!(f
        .smoothed_max_abs(&ChannelAbsMax::from_max_abs(vec![1.0; 8], 1)?)
        .is_err());
    Ok(())
}

#[test]
fn alpha_search_reports_every_grid_point() -> Result<()> {
    let l = outlier_layer();
    let cfg = QuantConfig::w8a8().with_activations(ActivationQuant::PerTensor)?;
    let grid = [0.25, 0.5, 0.75];
    let s = search_alpha(&l.x, &l.obs, &[&l.lin], &grid, &cfg)?;
    assert_eq!(s.tried.len(), 3);
    assert!(grid.contains(&s.alpha));
    assert!(s.tried.iter().all(|&(_, db)| db <= s.sqnr_db));
    assert_eq!(
        s.factors,
        SmoothFactors::compute(&l.obs, &[&l.lin], s.alpha)?
    );
    Ok(())
}

// ------------------------------------------ must show 3: calibrated pre-LN transformer block

/// Pre-LN block: `x + O·attn(QKV(LN1 x))`, then `+ Down·gelu(Up·LN2(·))`, single head
/// group of `heads` heads, no mask.
struct Block {
    ln1: Box<dyn Module>,
    q: Box<dyn Module>,
    k: Box<dyn Module>,
    v: Box<dyn Module>,
    o: Box<dyn Module>,
    ln2: Box<dyn Module>,
    up: Box<dyn Module>,
    down: Box<dyn Module>,
    heads: usize,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let dh = d / self.heads;
        let h = self.ln1.forward(x)?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, dh))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q.forward(&h)?)?;
        let k = split(self.k.forward(&h)?)?;
        let v = split(self.v.forward(&h)?)?;
        let att = (q.matmul(&k.t()?.contiguous()?)? / (dh as f64).sqrt())?;
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let a = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        let x = (x + self.o.forward(&a)?)?;
        let h2 = self.ln2.forward(&x)?;
        let f = self.down.forward(&self.up.forward(&h2)?.gelu()?)?;
        Ok((x + f)?)
    }
}

#[test]
fn calibrated_transformer_block() -> Result<()> {
    let mut rng = SplitMix64(7);
    let (d, ff, heads) = (128, 512, 4);
    let outl = [5usize, 50, 77, 100];
    let ln1 = LayerNorm::new(
        outlier_gamma(&mut rng, d, &outl),
        rng.tensor(&[d], 0.1),
        1e-5,
    );
    let ln2 = LayerNorm::new(
        outlier_gamma(&mut rng, d, &outl),
        rng.tensor(&[d], 0.1),
        1e-5,
    );
    let (q, k, v, o) = (
        rng.linear(d, d, true),
        rng.linear(d, d, true),
        rng.linear(d, d, true),
        rng.linear(d, d, true),
    );
    let (up, down) = (rng.linear(ff, d, true), rng.linear(d, ff, true));
    let obs: Vec<ObservedLinear> = [&q, &k, &v, &o, &up, &down]
        .iter()
        .map(|l| ObservedLinear::new((*l).clone()).map(|o| o.with_sample_rows(256)))
        .collect::<Result<_>>()?;
    let boxed = |m: &ObservedLinear| -> Box<dyn Module> { Box::new(m.clone()) };
    let observed = Block {
        ln1: Box::new(ln1.clone()),
        q: boxed(&obs[0]),
        k: boxed(&obs[1]),
        v: boxed(&obs[2]),
        o: boxed(&obs[3]),
        ln2: Box::new(ln2.clone()),
        up: boxed(&obs[4]),
        down: boxed(&obs[5]),
        heads,
    };
    // Calibrate with ordinary forward passes.
    for _ in 0..4 {
        observed.forward(&rng.tensor(&[2, 32, d], 1.0))?;
    }
    let f32_block = Block {
        ln1: Box::new(ln1.clone()),
        q: Box::new(q.clone()),
        k: Box::new(k.clone()),
        v: Box::new(v.clone()),
        o: Box::new(o.clone()),
        ln2: Box::new(ln2.clone()),
        up: Box::new(up.clone()),
        down: Box::new(down.clone()),
        heads,
    };
    let cfg = QuantConfig::w8a8().with_activations(ActivationQuant::PerTensor)?;
    let f_qkv = SmoothFactors::compute(&obs[0].channel_max()?, &[&q, &k, &v], 0.5)?;
    let f_o = SmoothFactors::compute(&obs[3].channel_max()?, &[&o], 0.5)?;
    let f_up = SmoothFactors::compute(&obs[4].channel_max()?, &[&up], 0.5)?;
    let f_down = SmoothFactors::compute(&obs[5].channel_max()?, &[&down], 0.5)?;
    let s1 = smooth(
        Preceding::LayerNorm(&ln1, NormUse::OnlySmoothedLinears),
        &[&q, &k, &v],
        &f_qkv,
    )?;
    let so = smooth(Preceding::Nothing, &[&o], &f_o)?;
    let s2 = smooth(
        Preceding::LayerNorm(&ln2, NormUse::OnlySmoothedLinears),
        &[&up],
        &f_up,
    )?;
    let sd = smooth(Preceding::Nothing, &[&down], &f_down)?;
    let smoothed_f32 = Block {
        ln1: Box::new(s1.norm.clone().unwrap()),
        q: Box::new(s1.linears[0].clone()),
        k: Box::new(s1.linears[1].clone()),
        v: Box::new(s1.linears[2].clone()),
        o: Box::new(so.linears[0].clone()),
        ln2: Box::new(s2.norm.clone().unwrap()),
        up: Box::new(s2.linears[0].clone()),
        down: Box::new(sd.linears[0].clone()),
        heads,
    };
    let ql = |l: &candle_compress::nn::smooth::SmoothedLinear| -> Result<Box<dyn Module>> {
        Ok(Box::new(l.to_quant_linear(&cfg)?))
    };
    let smoothed_q = Block {
        ln1: Box::new(s1.norm.clone().unwrap()),
        q: ql(&s1.linears[0])?,
        k: ql(&s1.linears[1])?,
        v: ql(&s1.linears[2])?,
        o: ql(&so.linears[0])?,
        ln2: Box::new(s2.norm.clone().unwrap()),
        up: ql(&s2.linears[0])?,
        down: ql(&sd.linears[0])?,
        heads,
    };
    let plain = |l: &Linear| -> Result<Box<dyn Module>> {
        Ok(Box::new(QuantLinear::from_linear(l, &cfg)?))
    };
    let plain_q = Block {
        ln1: Box::new(ln1.clone()),
        q: plain(&q)?,
        k: plain(&k)?,
        v: plain(&v)?,
        o: plain(&o)?,
        ln2: Box::new(ln2.clone()),
        up: plain(&up)?,
        down: plain(&down)?,
        heads,
    };
    let x = rng.tensor(&[2, 32, d], 1.0);
    let y = f32_block.forward(&x)?;
    let e = rel_err(&y, &smoothed_f32.forward(&x)?);
    assert!(e <= 1e-5, "smoothed f32 block relative error {e:e}");
    let sp = compare_tensors(&y, &plain_q.forward(&x)?)?;
    let ss = compare_tensors(&y, &smoothed_q.forward(&x)?)?;
    println!(
        "block W8A8 per-tensor: plain SQNR {:.1} dB cos {:.5}; SmoothQuant SQNR {:.1} dB cos {:.5}",
        sp.sqnr_db, sp.cosine_similarity, ss.sqnr_db, ss.cosine_similarity
    );
    assert!(ss.sqnr_db > sp.sqnr_db + 3.0);
    Ok(())
}

// ------------------------------------------------------------------ must show 5: errors

#[test]
fn bad_input_is_refused() -> Result<()> {
    let mut rng = SplitMix64(9);
    let lin = rng.linear(8, 16, false);
    let lin12 = rng.linear(8, 12, false);
    let x = rng.tensor(&[4, 16], 1.0);
    let obs = observe(&x);

    // α outside [0, 1].
    for a in [-0.01, 1.01, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            SmoothFactors::compute(&obs, &[&lin], a),
            Err(Error::InvalidArgument { name: "alpha", .. })
        ));
    }
    let cfg = QuantConfig::w8a8();
    assert!(search_alpha(&x, &obs, &[&lin], &[0.5, 1.5], &cfg).is_err());
    assert!(search_alpha(&x, &obs, &[&lin], &[], &cfg).is_err());

    // Mismatched channel counts: statistics vs linears, linears among themselves,
    // factors vs linears, norm vs linears, calibration input vs linears.
    assert!(matches!(
        SmoothFactors::compute(&obs, &[&lin12], 0.5),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        SmoothFactors::compute(&obs, &[&lin, &lin12], 0.5),
        Err(Error::ShapeMismatch { .. })
    ));
    let f = SmoothFactors::compute(&obs, &[&lin], 0.5)?;
    assert!(matches!(
        smooth(Preceding::Nothing, &[&lin12], &f),
        Err(Error::ShapeMismatch { .. })
    ));
    let ln12 = LayerNorm::new(
        Tensor::ones(12, DType::F32, &Device::Cpu)?,
        Tensor::zeros(12, DType::F32, &Device::Cpu)?,
        1e-5,
    );
    let rn12 = RmsNorm::new(Tensor::ones(12, DType::F32, &Device::Cpu)?, 1e-5);
    for use_ in [NormUse::OnlySmoothedLinears, NormUse::AlsoResidual] {
        assert!(matches!(
            smooth(Preceding::LayerNorm(&ln12, use_), &[&lin], &f),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            smooth(Preceding::RmsNorm(&rn12, use_), &[&lin], &f),
            Err(Error::ShapeMismatch { .. })
        ));
    }
    assert!(search_alpha(&rng.tensor(&[4, 12], 1.0), &obs, &[&lin], &[0.5], &cfg).is_err());
    assert!(smooth(Preceding::Nothing, &[], &f).is_err());

    // Empty calibration: no rows observed, or a calibration input without rows.
    let empty = ChannelAbsMax::new(16)?;
    assert!(matches!(
        SmoothFactors::compute(&empty, &[&lin], 0.5),
        Err(Error::InvalidArgument {
            name: "calibration",
            ..
        })
    ));
    let no_rows = Tensor::zeros((0, 16), DType::F32, &Device::Cpu)?;
    assert!(search_alpha(&no_rows, &obs, &[&lin], &[0.5], &cfg).is_err());
    assert!(search_alpha(&x, &empty, &[&lin], &[0.5], &cfg).is_err());
    let observed = ObservedLinear::new(lin.clone())?;
    assert!(observed.channel_max()?.max_abs().is_err());
    assert!(observed.sample().is_err());

    // Non-finite statistics, weights and inputs.
    let mut stats = vec![1.0f32; 16];
    stats[3] = f32::NAN;
    assert!(matches!(
        ChannelAbsMax::from_max_abs(stats, 10),
        Err(Error::NonFinite { index: 3, .. })
    ));
    assert!(matches!(
        SmoothFactors::from_maxima(&[1.0, f32::INFINITY], &[1.0, 1.0], 0.5),
        Err(Error::NonFinite { index: 1, .. })
    ));
    let mut w = vec![0.5f32; 8 * 16];
    w[20] = f32::NAN;
    let bad_lin = Linear::new(Tensor::from_vec(w, (8, 16), &Device::Cpu)?, None);
    assert!(matches!(
        SmoothFactors::compute(&obs, &[&bad_lin], 0.5),
        Err(Error::NonFinite { index: 20, .. })
    ));
    let bad_x = Tensor::new(&[[f32::NAN; 16]], &Device::Cpu)?;
    assert!(observed.forward(&bad_x).is_err());
    assert!(search_alpha(&bad_x, &obs, &[&lin], &[0.5], &cfg).is_err());

    // A static activation scale cannot be searched over α.
    let st = QuantConfig::w8a8().with_activations(ActivationQuant::Static { scale: 0.1 })?;
    assert!(search_alpha(&x, &obs, &[&lin], &[0.5], &st).is_err());
    Ok(())
}
