//! Quantized inference end to end: train a small MLP with candle_nn, calibrate it, swap
//! every `Linear` for an integer [`QuantLinear`] and compare the variants.
//!
//! 1. **Train.** A synthetic 10-class task (each class a mixture of Gaussian clusters in
//!    128 dims, so it is not linearly separable) with a few input features in much larger
//!    units than the rest (four channels ×30, like the outlier channels of LLM
//!    activations). An MLP 128 → 256 → 256 → 10 with ReLU is trained with AdamW
//!    (`VarMap` + `VarBuilder`, fixed seed: same numbers on every run).
//! 2. **Calibrate.** A few training batches run through the same model with every layer
//!    wrapped in an [`ObservedLinear`], which records the per-channel input maxima.
//! 3. **Quantize.** Each variant is a real model whose every layer is a [`QuantLinear`]
//!    (integer weights, int8 activations, integer matmul kernels): W8A8 with per-token
//!    and per-tensor activation scales, SmoothQuant + W8A8 per-tensor (the first layer
//!    has no norm before it, so `1/s` runs inside the layer's fused activation
//!    quantization: [`smooth`] with [`Preceding::Nothing`], α from [`search_alpha`] on
//!    held-out rows), and W4A8 with int4 weight groups of 32, plain and smoothed. (For
//!    int4 weights the outlier channels matter the other way round: the weights that
//!    multiply the ×30 inputs need precision. Smoothing scales those weight columns up
//!    relative to the rest of their group, so their int4 steps are relatively finer, and
//!    `search_alpha` finds that a moderate α lowers the layer-0 error.)
//! 4. **Compare.** Weight bytes (what the layers really hold), test accuracy, cosine and
//!    SQNR of the logits against f32, and the median time of a 256-row batch. Then every
//!    weight [`Scheme`] on the trained weights: bytes, ratio, SQNR, max error.
//!
//! ```text
//! cargo run --release --example quantized_mlp
//! ```
//!
//! Timings are medians of a few runs on whatever machine this is; on a shared machine
//! they are noisy.

use std::time::Instant;

use candle_compress::kernels::active_isa;
use candle_compress::nn::smooth::{search_alpha, smooth, Preceding, DEFAULT_ALPHA_GRID};
use candle_compress::nn::{ActivationQuant, ObservedLinear, QuantConfig, QuantLinear, WeightQuant};
use candle_compress::quant::calib::ChannelAbsMax;
use candle_compress::quant::metrics::{compare_slices, compare_tensors};
use candle_compress::scheme::Scheme;
use candle_compress::{Compressed, Compressor};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use candle_nn::{Linear, VarBuilder, VarMap};

type BoxError = Box<dyn std::error::Error>;

/// Input features, hidden widths, classes.
const WIDTHS: [usize; 4] = [128, 256, 256, 10];
const CLASSES: usize = 10;
/// Gaussian clusters per class.
const CLUSTERS_PER_CLASS: usize = 4;
/// Standard deviation of the samples around their cluster centre (centres are N(0, 1)).
const NOISE: f32 = 1.5;
/// Input channels measured in "larger units", and by how much.
const OUTLIER_CHANNELS: [usize; 4] = [7, 31, 64, 100];
const OUTLIER_GAIN: f32 = 30.0;

const TRAIN_ROWS: usize = 16384;
const HELDOUT_ROWS: usize = 512;
const TEST_ROWS: usize = 2560;
const BATCH: usize = 256;
const TRAIN_STEPS: usize = 200;
const TRAIN_BATCH: usize = 128;
const CALIB_BATCHES: usize = 4;
const TIMING_RUNS: usize = 25;
const SEED: u64 = 0x00C0_FFEE;

/// splitmix64, so data and initial weights are the same on every run and machine.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// A labelled data set: `x` is `[rows, WIDTHS[0]]` f32, `y` is `[rows]` u32.
struct Split {
    x: Tensor,
    y: Tensor,
}

impl Split {
    fn rows(&self) -> usize {
        self.x.dims()[0]
    }

    fn batch(&self, i: usize) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((
            self.x.narrow(0, i * BATCH, BATCH)?,
            self.y.narrow(0, i * BATCH, BATCH)?,
        ))
    }
}

/// Samples `rows` points: pick a cluster, add isotropic noise, then scale the outlier
/// channels. Cluster `k` belongs to class `k % CLASSES`.
fn sample(rng: &mut SplitMix, centres: &[Vec<f32>], rows: usize) -> candle_core::Result<Split> {
    let d = WIDTHS[0];
    let mut x = Vec::with_capacity(rows * d);
    let mut y = Vec::with_capacity(rows);
    for _ in 0..rows {
        let k = rng.below(centres.len());
        for (c, &m) in centres[k].iter().enumerate() {
            let v = m + NOISE * rng.normal();
            x.push(if OUTLIER_CHANNELS.contains(&c) {
                v * OUTLIER_GAIN
            } else {
                v
            });
        }
        y.push((k % CLASSES) as u32);
    }
    Ok(Split {
        x: Tensor::from_vec(x, (rows, d), &Device::Cpu)?,
        y: Tensor::from_vec(y, rows, &Device::Cpu)?,
    })
}

/// The MLP, generic over the layer type: `Linear` (f32), `ObservedLinear` (calibration)
/// or `QuantLinear` (integer inference). ReLU between layers, logits out.
struct Mlp<L> {
    layers: Vec<L>,
}

impl<L: Module> Module for Mlp<L> {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            h = l.forward(&h)?;
            if i + 1 < self.layers.len() {
                h = h.relu()?;
            }
        }
        Ok(h)
    }
}

/// Builds the f32 MLP in a `VarMap` with deterministic He-normal weights and zero biases
/// (candle cannot seed its CPU generator, so the initial values are set explicitly).
fn build_mlp(rng: &mut SplitMix, varmap: &mut VarMap) -> candle_core::Result<Mlp<Linear>> {
    let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
    let mut layers = Vec::new();
    for (i, w) in WIDTHS.windows(2).enumerate() {
        let (inp, out) = (w[0], w[1]);
        layers.push(candle_nn::linear(inp, out, vb.pp(format!("l{i}")))?);
        let std = (2.0 / inp as f32).sqrt();
        let init: Vec<f32> = (0..out * inp).map(|_| rng.normal() * std).collect();
        varmap.set_one(
            format!("l{i}.weight"),
            Tensor::from_vec(init, (out, inp), &Device::Cpu)?,
        )?;
        varmap.set_one(
            format!("l{i}.bias"),
            Tensor::zeros(out, DType::F32, &Device::Cpu)?,
        )?;
    }
    Ok(Mlp { layers })
}

fn train(
    rng: &mut SplitMix,
    mlp: &Mlp<Linear>,
    varmap: &VarMap,
    data: &Split,
) -> candle_core::Result<f32> {
    let params = ParamsAdamW {
        lr: 2e-3,
        weight_decay: 1e-4,
        ..Default::default()
    };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;
    let mut loss_value = f32::NAN;
    for _ in 0..TRAIN_STEPS {
        let idx: Vec<u32> = (0..TRAIN_BATCH)
            .map(|_| rng.below(data.rows()) as u32)
            .collect();
        let idx = Tensor::from_vec(idx, TRAIN_BATCH, &Device::Cpu)?;
        let x = data.x.index_select(&idx, 0)?;
        let y = data.y.index_select(&idx, 0)?;
        let loss = candle_nn::loss::cross_entropy(&mlp.forward(&x)?, &y)?;
        opt.backward_step(&loss)?;
        loss_value = loss.to_scalar::<f32>()?;
    }
    Ok(loss_value)
}

/// Logits of the whole split, computed batch by batch (a per-tensor activation scale is
/// then one scale per 256-row batch, as it would be when serving).
fn logits<M: Module>(model: &M, data: &Split) -> candle_core::Result<Tensor> {
    let batches = (0..data.rows() / BATCH)
        .map(|i| model.forward(&data.batch(i)?.0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&batches, 0)
}

fn accuracy(logits: &Tensor, y: &Tensor) -> candle_core::Result<f32> {
    logits
        .argmax(D::Minus1)?
        .eq(y)?
        .to_dtype(DType::F32)?
        .mean_all()?
        .to_scalar::<f32>()
}

/// Median wall time of one forward pass over `x` per model, in milliseconds. The models
/// take turns in every round, so a burst of load from other processes hits all of them.
fn median_ms(models: &[&dyn Module], x: &Tensor) -> candle_core::Result<Vec<f64>> {
    for m in models {
        m.forward(x)?;
    }
    let mut times = vec![Vec::with_capacity(TIMING_RUNS); models.len()];
    for _ in 0..TIMING_RUNS {
        for (m, t) in models.iter().zip(times.iter_mut()) {
            let start = Instant::now();
            m.forward(x)?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect())
}

fn f32_bytes(layers: &[Linear]) -> usize {
    layers
        .iter()
        .map(|l| l.weight().elem_count() + l.bias().map_or(0, |b| b.elem_count()))
        .sum::<usize>()
        * std::mem::size_of::<f32>()
}

fn quantize_all(layers: &[Linear], cfg: &QuantConfig) -> candle_compress::Result<Vec<QuantLinear>> {
    layers
        .iter()
        .map(|l| QuantLinear::from_linear(l, cfg))
        .collect()
}

/// SmoothQuant on the first layer for `cfg`: picks α with [`search_alpha`] on the
/// held-out rows, rewrites the layer with [`smooth`] ([`Preceding::Nothing`]: the layer
/// divides its own input by `s`, inside the fused activation quantization once
/// quantized), checks that the f32 rewrite computes the same function on the test rows,
/// and returns α and the whole model quantized with `cfg`.
fn smooth_first_layer(
    trained: &[Linear],
    act0: &ChannelAbsMax,
    heldout: &Split,
    test: &Split,
    cfg: &QuantConfig,
) -> Result<(f32, Vec<QuantLinear>), BoxError> {
    let found = search_alpha(&heldout.x, act0, &[&trained[0]], &DEFAULT_ALPHA_GRID, cfg)?;
    let smoothed = smooth(Preceding::Nothing, &[&trained[0]], &found.factors)?;
    let before = trained[0].forward(&test.x)?;
    let after = smoothed.linears[0].forward(&test.x)?;
    let rewrite = compare_tensors(&before, &after)?;
    let weights = match cfg.weights() {
        WeightQuant::Int4Grouped { group } => format!("W4A8 g{group}"),
        _ => "W8A8".to_string(),
    };
    let acts = match cfg.activations() {
        ActivationQuant::PerTensor => "per-tensor",
        _ => "per-token",
    };
    println!(
        "SmoothQuant layer 0 for {weights} {acts}: α = {:.1} (held-out layer-0 output SQNR \
         {:.1} dB vs {:.1} dB unsmoothed); f32 rewrite max |Δ| = {:.1e}.",
        found.alpha, found.sqnr_db, found.unsmoothed_sqnr_db, rewrite.max_abs_error
    );
    let mut layers = smoothed.quantize(cfg)?;
    layers.extend(quantize_all(&trained[1..], cfg)?);
    Ok((found.alpha, layers))
}

/// Prints the per-scheme table: every weight matrix of the trained MLP compressed with
/// every weight quantization scheme.
fn scheme_table(layers: &[Linear]) -> Result<(), BoxError> {
    let dev = Device::Cpu;
    let weights: Vec<&Tensor> = layers.iter().map(|l| l.weight()).collect();
    let n_weights: usize = weights.iter().map(|w| w.elem_count()).sum();
    let original: Vec<f32> = weights
        .iter()
        .map(|w| w.flatten_all()?.to_vec1::<f32>())
        .collect::<candle_core::Result<Vec<_>>>()?
        .concat();
    let schemes: Vec<Scheme> = [
        "int8:32",
        "int8:64",
        "affine8:64",
        "affine4:64",
        "int4:32",
        "int4:64",
        "nf4:64",
    ]
    .iter()
    .map(|s| s.parse())
    .collect::<candle_compress::Result<_>>()?;

    println!(
        "Weight schemes on the trained weights ({n_weights} weights, {} bytes as f32):",
        n_weights * 4
    );
    println!();
    println!(
        "| {:<11} | {:>9} | {:>6} | {:>6} | {:>8} | {:>9} | {:>7} |",
        "scheme", "bytes", "ratio", "bits/w", "SQNR dB", "max error", "time ms"
    );
    println!(
        "|{:-<13}|{:->11}|{:->8}|{:->8}|{:->10}|{:->11}|{:->9}|",
        "", "", "", "", "", "", ""
    );
    for scheme in schemes {
        let start = Instant::now();
        let compressed = weights
            .iter()
            .map(|w| scheme.compress(w))
            .collect::<candle_compress::Result<Vec<_>>>()?;
        let elapsed = start.elapsed();
        let bytes: usize = compressed.iter().map(|c| c.size_bytes()).sum();
        let restored: Vec<f32> = compressed
            .iter()
            .map(|c| Ok(c.decompress(&dev)?.flatten_all()?.to_vec1::<f32>()?))
            .collect::<Result<Vec<_>, BoxError>>()?
            .concat();
        let stats = compare_slices(&original, &restored)?;
        println!(
            "| {:<11} | {:>9} | {:>5.2}x | {:>6.3} | {:>8.2} | {:>9.5} | {:>7.1} |",
            scheme.to_string(),
            bytes,
            (n_weights * 4) as f64 / bytes as f64,
            bytes as f64 * 8.0 / n_weights as f64,
            stats.sqnr_db,
            stats.max_abs_error,
            elapsed.as_secs_f64() * 1e3
        );
    }
    println!();
    println!("bytes: everything each compressed weight holds (codes, scales, zero points, shape).");
    Ok(())
}

/// One row of the main table.
struct Variant {
    name: String,
    model: Mlp<QuantLinear>,
}

fn main() -> Result<(), BoxError> {
    let total = Instant::now();
    let mut rng = SplitMix(SEED);

    // ---- 1. Data and training -------------------------------------------------------
    let centres: Vec<Vec<f32>> = (0..CLASSES * CLUSTERS_PER_CLASS)
        .map(|_| (0..WIDTHS[0]).map(|_| rng.normal()).collect())
        .collect();
    let train_set = sample(&mut rng, &centres, TRAIN_ROWS)?;
    let heldout = sample(&mut rng, &centres, HELDOUT_ROWS)?;
    let test = sample(&mut rng, &centres, TEST_ROWS)?;

    let mut varmap = VarMap::new();
    let mlp = build_mlp(&mut rng, &mut varmap)?;
    let start = Instant::now();
    let loss = train(&mut rng, &mlp, &varmap, &train_set)?;
    let train_time = start.elapsed();
    // Plain Linears holding the trained values (detached from the Vars).
    let trained: Vec<Linear> = mlp
        .layers
        .iter()
        .map(|l| {
            Ok(Linear::new(
                l.weight().detach().copy()?,
                l.bias().map(|b| b.detach().copy()).transpose()?,
            ))
        })
        .collect::<candle_core::Result<_>>()?;
    let f32_model = Mlp {
        layers: trained.clone(),
    };
    let f32_logits = logits(&f32_model, &test)?;
    let f32_acc = accuracy(&f32_logits, &test.y)?;
    println!(
        "Task: {CLASSES} classes ({CLUSTERS_PER_CLASS} Gaussian clusters each, noise σ = {NOISE}) \
         in {} dims; input channels {OUTLIER_CHANNELS:?} ×{OUTLIER_GAIN}.",
        WIDTHS[0]
    );
    println!(
        "MLP {WIDTHS:?}, ReLU: trained {TRAIN_STEPS} AdamW steps × {TRAIN_BATCH} rows in {:.1} s \
         (final loss {loss:.3}); f32 test accuracy {:.2}% on {TEST_ROWS} rows.",
        train_time.as_secs_f64(),
        f32_acc * 100.0
    );

    // ---- 2. Calibration ------------------------------------------------------------
    let observed = Mlp {
        layers: trained
            .iter()
            .map(|l| ObservedLinear::new(l.clone()))
            .collect::<candle_compress::Result<Vec<_>>>()?,
    };
    for i in 0..CALIB_BATCHES {
        observed.forward(&train_set.batch(i)?.0)?;
    }
    let act0 = observed.layers[0].channel_max()?;
    let maxima = act0.max_abs()?;
    let mut ordinary: Vec<f32> = maxima
        .iter()
        .enumerate()
        .filter(|(c, _)| !OUTLIER_CHANNELS.contains(c))
        .map(|(_, &m)| m)
        .collect();
    ordinary.sort_by(f32::total_cmp);
    let outliers: Vec<String> = OUTLIER_CHANNELS
        .iter()
        .map(|&c| format!("{:.0}", maxima[c]))
        .collect();
    println!(
        "Calibration: {} rows through ObservedLinear layers. Layer 0 input max|x|: median \
         channel {:.1}, outlier channels [{}].",
        act0.rows(),
        ordinary[ordinary.len() / 2],
        outliers.join(", ")
    );

    // ---- 3. Variants ---------------------------------------------------------------
    let per_token = QuantConfig::w8a8();
    let per_tensor = QuantConfig::w8a8().with_activations(ActivationQuant::PerTensor)?;
    let w4 = QuantConfig::w4a8(32)?;

    // SmoothQuant on layer 0 (nothing precedes it: 1/s goes into the QuantLinear's fused
    // activation quantization), α searched per config on held-out rows (not the
    // calibration rows). Layers 1 and 2 read ReLU outputs (no outliers, and the library
    // docs advise against smoothing them): they are quantized as they are.
    let (a8, smooth_w8) = smooth_first_layer(&trained, &act0, &heldout, &test, &per_tensor)?;
    let (a4, smooth_w4) = smooth_first_layer(&trained, &act0, &heldout, &test, &w4)?;

    let variants = [
        Variant {
            name: "W8A8 per-token".into(),
            model: Mlp {
                layers: quantize_all(&trained, &per_token)?,
            },
        },
        Variant {
            name: "W8A8 per-tensor".into(),
            model: Mlp {
                layers: quantize_all(&trained, &per_tensor)?,
            },
        },
        Variant {
            name: format!("SmoothQuant α={a8:.1} + W8A8 per-tensor"),
            model: Mlp { layers: smooth_w8 },
        },
        Variant {
            name: "W4A8 g32 per-token".into(),
            model: Mlp {
                layers: quantize_all(&trained, &w4)?,
            },
        },
        Variant {
            name: format!("SmoothQuant α={a4:.1} + W4A8 g32"),
            model: Mlp { layers: smooth_w4 },
        },
    ];

    // ---- 4. Compare ----------------------------------------------------------------
    let f32_size = f32_bytes(&trained);
    let timing_x = test.batch(0)?.0;
    println!();
    println!(
        "Kernels: {} (active ISA). Time: median of {TIMING_RUNS} forward passes over {BATCH} \
         rows (shared machine: noisy).",
        active_isa()
    );
    println!();
    let name_w = 35;
    println!(
        "| {:<name_w$} | {:>8} | {:>6} | {:>8} | {:>9} | {:>8} | {:>8} |",
        "variant", "bytes", "ratio", "test acc", "logit cos", "logit dB", "ms/batch"
    );
    println!(
        "|{:-<w$}|{:->10}|{:->8}|{:->10}|{:->11}|{:->10}|{:->10}|",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        w = name_w + 2
    );
    let mut models: Vec<&dyn Module> = vec![&f32_model];
    models.extend(variants.iter().map(|v| &v.model as &dyn Module));
    let ms = median_ms(&models, &timing_x)?;
    println!(
        "| {:<name_w$} | {:>8} | {:>5.2}x | {:>7.2}% | {:>9.6} | {:>8} | {:>8.3} |",
        "f32 (candle_nn::Linear)",
        f32_size,
        1.0,
        f32_acc * 100.0,
        1.0,
        "-",
        ms[0]
    );
    for (v, ms) in variants.iter().zip(&ms[1..]) {
        let bytes: usize = v.model.layers.iter().map(QuantLinear::size_bytes).sum();
        let q_logits = logits(&v.model, &test)?;
        let stats = compare_tensors(&f32_logits, &q_logits)?;
        println!(
            "| {:<name_w$} | {:>8} | {:>5.2}x | {:>7.2}% | {:>9.6} | {:>8.1} | {:>8.3} |",
            v.name,
            bytes,
            f32_size as f64 / bytes as f64,
            accuracy(&q_logits, &test.y)? * 100.0,
            stats.cosine_similarity,
            stats.sqnr_db,
            ms
        );
    }
    println!();
    println!(
        "bytes: what the layers hold (packed integer weights, scales, kernel extras, f32 biases, \
         smoothing vectors); ratio vs f32. logit cos / dB: cosine and SQNR of the test logits \
         against f32."
    );
    println!();

    scheme_table(&trained)?;
    println!();
    println!("Total run time {:.1} s.", total.elapsed().as_secs_f64());
    Ok(())
}
