//! The Llama decoder of `examples/llm` (its model file is compiled in here):
//!
//! - on a tiny random model this test writes as GGUF (no download): the f32 path against
//!   an independent f32 reference written out loop by loop below, against
//!   candle-transformers' `quantized_llama` on the same file, the KV cache (prefill then
//!   one token at a time equals one batch), and the quantized paths close to f32;
//! - on SmolLM2-135M (`scripts/fetch_smollm2.sh`; skipped with a message when absent):
//!   the f32 path against `quantized_llama` with `CANDLE_DEQUANTIZE_ALL=1` (last-position
//!   logits and a 32-token greedy continuation), and the tokenizer.

#[allow(dead_code)]
#[path = "../examples/llm/kv_cache.rs"]
mod kv_cache;
#[allow(dead_code)]
#[path = "../examples/llm/model.rs"]
mod model;
#[allow(dead_code)]
#[path = "../examples/llm/ops.rs"]
mod ops;
#[allow(dead_code)]
#[path = "../examples/llm/rotate.rs"]
mod rotate;
#[allow(dead_code)]
#[path = "../examples/llm/smoothquant.rs"]
mod smoothquant;
#[allow(dead_code)]
#[path = "../examples/llm/tokenizer.rs"]
mod tokenizer;

use std::path::{Path, PathBuf};

use candle_compress::io::gguf::{save_gguf, GgufTensor, GgufType};
use candle_compress::nn::QuantConfig;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};
use model::{Llama, Mode};

mod common;

use common::models::smollm2_q4_1;
use common::rng::XorShift64;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Tiny hyper-parameters: GQA with 2 query heads per KV head, 2 blocks.
const LAYERS: usize = 2;
const D: usize = 64;
const FF: usize = 96;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = D / HEADS;
const VOCAB: usize = 50;
/// Long enough for prompts that take several attention chunks (128 queries each).
const CONTEXT: usize = 320;
const BASE: f32 = 10_000.;
const EPS: f32 = 1e-5;

/// `n` values uniform in `[-scale, scale)`.
fn scaled(r: &mut XorShift64, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| r.f32() * scale).collect()
}

/// The tiny model's weights, row-major `[out, in]` like the GGUF tensors.
struct Weights {
    embed: Vec<f32>,
    blocks: Vec<BlockW>,
    norm: Vec<f32>,
}
struct BlockW {
    attn_norm: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    ffn_norm: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

fn tiny_weights(seed: u64) -> Weights {
    let mut r = XorShift64(seed);
    let s_in = 1. / (D as f32).sqrt();
    let s_ff = 1. / (FF as f32).sqrt();
    let norm = |r: &mut XorShift64| (0..D).map(|_| 1. + 0.2 * r.f32()).collect::<Vec<_>>();
    let blocks = (0..LAYERS)
        .map(|_| BlockW {
            attn_norm: norm(&mut r),
            q: scaled(&mut r, D * D, 2. * s_in),
            k: scaled(&mut r, KV_HEADS * HD * D, 2. * s_in),
            v: scaled(&mut r, KV_HEADS * HD * D, s_in),
            o: scaled(&mut r, D * D, s_in),
            ffn_norm: norm(&mut r),
            gate: scaled(&mut r, FF * D, s_in),
            up: scaled(&mut r, FF * D, s_in),
            down: scaled(&mut r, D * FF, s_ff),
        })
        .collect();
    Weights {
        embed: scaled(&mut r, VOCAB * D, 1.),
        blocks,
        norm: norm(&mut r),
    }
}

/// Writes the weights as a `llama` GGUF file (tied embeddings: no `output.weight`), the
/// linears in `ty`, norms and embeddings in F32.
fn write_tiny(path: &Path, w: &Weights, ty: GgufType) -> AnyResult<()> {
    let u = |k: &str, v: usize| (format!("llama.{k}"), Value::U32(v as u32));
    let meta = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        u("block_count", LAYERS),
        u("embedding_length", D),
        u("feed_forward_length", FF),
        u("attention.head_count", HEADS),
        u("attention.head_count_kv", KV_HEADS),
        u("rope.dimension_count", HD),
        u("context_length", CONTEXT),
        ("llama.rope.freq_base".to_string(), Value::F32(BASE)),
        (
            "llama.attention.layer_norm_rms_epsilon".to_string(),
            Value::F32(EPS),
        ),
    ];
    let t = |v: &[f32], shape: &[usize]| Tensor::from_slice(v, shape, &Device::Cpu);
    let lin = |name: String, v: &[f32], out: usize, inp: usize| -> AnyResult<GgufTensor> {
        let x = t(v, &[out, inp])?;
        Ok(match ty {
            GgufType::F32 | GgufType::F16 => GgufTensor::float(&name, &x, ty)?,
            _ => GgufTensor::quantize(&name, &x, ty)?,
        })
    };
    let mut ts = vec![
        GgufTensor::float(
            "token_embd.weight",
            &t(&w.embed, &[VOCAB, D])?,
            GgufType::F32,
        )?,
        GgufTensor::float("output_norm.weight", &t(&w.norm, &[D])?, GgufType::F32)?,
    ];
    for (i, b) in w.blocks.iter().enumerate() {
        let p = |s: &str| format!("blk.{i}.{s}");
        let kv = KV_HEADS * HD;
        ts.push(GgufTensor::float(
            &p("attn_norm.weight"),
            &t(&b.attn_norm, &[D])?,
            GgufType::F32,
        )?);
        ts.push(GgufTensor::float(
            &p("ffn_norm.weight"),
            &t(&b.ffn_norm, &[D])?,
            GgufType::F32,
        )?);
        ts.push(lin(p("attn_q.weight"), &b.q, D, D)?);
        ts.push(lin(p("attn_k.weight"), &b.k, kv, D)?);
        ts.push(lin(p("attn_v.weight"), &b.v, kv, D)?);
        ts.push(lin(p("attn_output.weight"), &b.o, D, D)?);
        ts.push(lin(p("ffn_gate.weight"), &b.gate, FF, D)?);
        ts.push(lin(p("ffn_up.weight"), &b.up, FF, D)?);
        ts.push(lin(p("ffn_down.weight"), &b.down, D, FF)?);
    }
    save_gguf(path, &meta, &ts)?;
    Ok(())
}

// ---- the independent reference: plain loops over f32 slices, f64 where it sums ----

fn matvec(w: &[f32], x: &[f32], out: usize) -> Vec<f32> {
    let inp = x.len();
    (0..out)
        .map(|o| {
            (0..inp)
                .map(|k| w[o * inp + k] as f64 * x[k] as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

fn rms_norm(x: &[f32], g: &[f32]) -> Vec<f32> {
    let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / x.len() as f64;
    let r = 1. / (ms + EPS as f64).sqrt();
    x.iter()
        .zip(g)
        .map(|(&v, &g)| (v as f64 * r) as f32 * g)
        .collect()
}

/// Interleaved RoPE on one head: pair (2i, 2i+1) rotates by pos · base^(-2i/hd).
fn rope(head: &mut [f32], pos: usize) {
    for i in 0..HD / 2 {
        let theta = pos as f64 * (BASE as f64).powf(-((2 * i) as f64) / HD as f64);
        let (s, c) = theta.sin_cos();
        let (a, b) = (head[2 * i] as f64, head[2 * i + 1] as f64);
        head[2 * i] = (a * c - b * s) as f32;
        head[2 * i + 1] = (a * s + b * c) as f32;
    }
}

/// Logits `[t][vocab]` of every position of `tokens`, computed without candle.
fn reference_logits(w: &Weights, tokens: &[u32]) -> Vec<Vec<f32>> {
    let t = tokens.len();
    let mut x: Vec<Vec<f32>> = tokens
        .iter()
        .map(|&id| w.embed[id as usize * D..(id as usize + 1) * D].to_vec())
        .collect();
    for b in &w.blocks {
        let n: Vec<Vec<f32>> = x.iter().map(|r| rms_norm(r, &b.attn_norm)).collect();
        let mut q: Vec<Vec<f32>> = n.iter().map(|r| matvec(&b.q, r, D)).collect();
        let mut k: Vec<Vec<f32>> = n.iter().map(|r| matvec(&b.k, r, KV_HEADS * HD)).collect();
        let v: Vec<Vec<f32>> = n.iter().map(|r| matvec(&b.v, r, KV_HEADS * HD)).collect();
        for p in 0..t {
            for h in 0..HEADS {
                rope(&mut q[p][h * HD..(h + 1) * HD], p);
            }
            for h in 0..KV_HEADS {
                rope(&mut k[p][h * HD..(h + 1) * HD], p);
            }
        }
        for p in 0..t {
            let mut y = vec![0f32; D];
            for h in 0..HEADS {
                let kh = h / (HEADS / KV_HEADS);
                let qh = &q[p][h * HD..(h + 1) * HD];
                let scores: Vec<f64> = (0..=p)
                    .map(|j| {
                        let kj = &k[j][kh * HD..(kh + 1) * HD];
                        qh.iter()
                            .zip(kj)
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum::<f64>()
                            / (HD as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..HD {
                    y[h * HD + d] = (0..=p)
                        .map(|j| e[j] / z * v[j][kh * HD + d] as f64)
                        .sum::<f64>() as f32;
                }
            }
            let o = matvec(&b.o, &y, D);
            for (xi, oi) in x[p].iter_mut().zip(o) {
                *xi += oi;
            }
        }
        for xp in x.iter_mut() {
            let n = rms_norm(xp, &b.ffn_norm);
            let g = matvec(&b.gate, &n, FF);
            let u = matvec(&b.up, &n, FF);
            let h: Vec<f32> = g
                .iter()
                .zip(&u)
                .map(|(&g, &u)| (g as f64 / (1. + (-g as f64).exp())) as f32 * u)
                .collect();
            let dn = matvec(&b.down, &h, D);
            for (xi, di) in xp.iter_mut().zip(dn) {
                *xi += di;
            }
        }
    }
    x.iter()
        .map(|r| matvec(&w.embed, &rms_norm(r, &w.norm), VOCAB))
        .collect()
}

// ---- helpers ----

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// ‖a − b‖ / ‖b‖.
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

const TOKENS: [u32; 9] = [3, 17, 42, 0, 49, 8, 8, 25, 11];

fn tiny_file(dir: &Path, ty: GgufType) -> AnyResult<(PathBuf, Weights)> {
    let w = tiny_weights(0x9e37_79b9_7f4a_7c15);
    let path = dir.join(format!("tiny-{ty:?}.gguf"));
    write_tiny(&path, &w, ty)?;
    Ok((path, w))
}

#[test]
fn f32_path_matches_the_loop_reference() -> AnyResult<()> {
    let dir = tempfile::tempdir()?;
    let (path, w) = tiny_file(dir.path(), GgufType::F32)?;
    let want = reference_logits(&w, &TOKENS);
    let mut m = Llama::load(&path, Mode::F32)?;
    let got = m.forward_all(&TOKENS)?.to_vec2::<f32>()?;
    for (p, (g, r)) in got.iter().zip(&want).enumerate() {
        let (diff, mag) = (max_diff(g, r), max_abs(r));
        assert!(
            diff <= 1e-5 * mag.max(1.),
            "position {p}: max diff {diff} (magnitude {mag})"
        );
    }
    Ok(())
}

/// A prompt longer than one attention chunk (300 tokens: chunks of 128, 128, 44) against
/// the loop reference, and after a cached prefix (the chunks then start past it).
#[test]
fn long_prompts_match_the_loop_reference() -> AnyResult<()> {
    let dir = tempfile::tempdir()?;
    let (path, w) = tiny_file(dir.path(), GgufType::F32)?;
    let tokens: Vec<u32> = (0..300).map(|i| (i * 13 + 5) % VOCAB as u32).collect();
    let want = reference_logits(&w, &tokens);
    let mut m = Llama::load(&path, Mode::F32)?;
    let got = m.forward_all(&tokens)?.to_vec2::<f32>()?;
    m.clear_cache();
    m.forward_all(&tokens[..20])?;
    let tail = m.forward_all(&tokens[20..])?.to_vec2::<f32>()?;
    for (p, r) in want.iter().enumerate() {
        let mag = max_abs(r).max(1.);
        let diff = max_diff(&got[p], r);
        assert!(diff <= 1e-5 * mag, "position {p}: max diff {diff}");
        if p >= 20 {
            let diff = max_diff(&tail[p - 20], r);
            assert!(
                diff <= 1e-5 * mag,
                "position {p} after a cached prefix: {diff}"
            );
        }
    }
    Ok(())
}

#[test]
fn kv_cache_decode_equals_one_batch() -> AnyResult<()> {
    let dir = tempfile::tempdir()?;
    let (path, _) = tiny_file(dir.path(), GgufType::F32)?;
    for mode in [Mode::F32, Mode::Quant(QuantConfig::w8a8())] {
        let mut m = Llama::load(&path, mode)?;
        let all = m.forward_all(&TOKENS)?.to_vec2::<f32>()?;
        m.clear_cache();
        // prefill 4 (a batch with the causal mask), then 2 + 1 + 1 + 1 on the cache
        let mut rows = m.forward_all(&TOKENS[..4])?.to_vec2::<f32>()?;
        rows.extend(m.forward_all(&TOKENS[4..6])?.to_vec2::<f32>()?);
        for &t in &TOKENS[6..] {
            rows.push(m.forward_last(&[t])?.to_vec1::<f32>()?);
        }
        assert_eq!(m.position(), TOKENS.len());
        for (p, (a, b)) in all.iter().zip(&rows).enumerate() {
            // per-token activation scales: a row's result does not depend on the batch
            let tol = 1e-4 * max_abs(a).max(1.);
            assert!(
                max_diff(a, b) <= tol,
                "{mode:?} position {p}: {}",
                max_diff(a, b)
            );
        }
    }
    Ok(())
}

/// candle-transformers' `quantized_llama` on the same file: F32 tensors are always run as
/// f32 matmuls there, so this checks our layout conventions (RoPE pairs, GQA head order,
/// tied head) against the peer.
#[test]
fn f32_path_matches_candle_quantized_llama_on_the_tiny_model() -> AnyResult<()> {
    let dir = tempfile::tempdir()?;
    let (path, _) = tiny_file(dir.path(), GgufType::F32)?;
    let mut ours = Llama::load(&path, Mode::F32)?;
    let mut peer = candle_peer(&path)?;
    let input = Tensor::new(&TOKENS, &Device::Cpu)?.unsqueeze(0)?;
    let want = peer.forward(&input, 0)?.squeeze(0)?.to_vec1::<f32>()?;
    let got = ours.forward_last(&TOKENS)?.to_vec1::<f32>()?;
    let (diff, mag) = (max_diff(&got, &want), max_abs(&want));
    assert!(diff <= 1e-5 * mag, "max diff {diff}, magnitude {mag}");
    // and one decode step on the cache
    let next = Tensor::new(&[7u32], &Device::Cpu)?.unsqueeze(0)?;
    let want = peer
        .forward(&next, TOKENS.len())?
        .squeeze(0)?
        .to_vec1::<f32>()?;
    let got = ours.forward_last(&[7])?.to_vec1::<f32>()?;
    assert!(max_diff(&got, &want) <= 1e-5 * max_abs(&want));
    Ok(())
}

fn candle_peer(
    path: &Path,
) -> AnyResult<candle_transformers::models::quantized_llama::ModelWeights> {
    let mut f = std::fs::File::open(path)?;
    let content = gguf_file::Content::read(&mut f)?;
    Ok(
        candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
            content,
            &mut f,
            &Device::Cpu,
        )?,
    )
}

#[test]
fn quantized_paths_stay_close_to_f32() -> AnyResult<()> {
    let dir = tempfile::tempdir()?;
    let (path, _) = tiny_file(dir.path(), GgufType::F32)?;
    let f32_logits = Llama::load(&path, Mode::F32)?
        .forward_all(&TOKENS)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    for (name, config, bound) in [
        ("w8a8", QuantConfig::w8a8(), 0.03),
        ("w4a8-g32", QuantConfig::w4a8(32)?, 0.2),
    ] {
        let mut m = Llama::load(&path, Mode::Quant(config))?;
        let q = m.forward_all(&TOKENS)?.flatten_all()?.to_vec1::<f32>()?;
        let err = rel_l2(&q, &f32_logits);
        eprintln!("{name}: relative L2 error of the logits vs f32 {err:.4}");
        assert!(err < bound, "{name}: {err}");
        assert!(err > 0., "{name}: quantization changed nothing");
    }
    Ok(())
}

/// The rotated f32 decoder computes the same logits; its integer form is a real change.
#[test]
fn rotation_keeps_the_f32_function() -> AnyResult<()> {
    let dir = tempfile::tempdir()?;
    let (path, _) = tiny_file(dir.path(), GgufType::F32)?;
    let reference = Llama::load(&path, Mode::F32)?;
    let want = reference.clone().forward_all(&TOKENS)?.to_vec2::<f32>()?;
    let rotated = rotate::rotate(&reference, rotate::SEED)?;
    let got = rotated.clone().forward_all(&TOKENS)?.to_vec2::<f32>()?;
    for (p, (g, r)) in got.iter().zip(&want).enumerate() {
        let (diff, mag) = (max_diff(g, r), max_abs(r));
        assert!(
            diff <= 1e-4 * mag.max(1.),
            "position {p}: max diff {diff} (magnitude {mag})"
        );
    }
    let w8a8 = QuantConfig::w8a8();
    let q = rotated.quantized(&w8a8, &w8a8)?.forward_all(&TOKENS)?;
    let err = rel_l2(&q.flatten_all()?.to_vec1::<f32>()?, &want.concat());
    assert!(
        err > 0. && err < 0.03,
        "rotated w8a8: relative L2 error {err}"
    );
    Ok(())
}

/// `random_orthogonal` is orthogonal to f32 rounding and the same for the same seed.
#[test]
fn random_rotation_is_orthogonal_and_seeded() {
    let n = 24;
    let q = rotate::random_orthogonal(n, 7);
    assert_eq!(q, rotate::random_orthogonal(n, 7));
    assert_ne!(q, rotate::random_orthogonal(n, 8));
    for i in 0..n {
        for j in 0..n {
            let dot: f32 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
            let want = if i == j { 1. } else { 0. };
            assert!((dot - want).abs() < 1e-5, "row {i} · row {j} = {dot}");
        }
    }
}

/// `Llama::quantized` from the f32 model equals the loader's own W8A8 model bit for bit
/// (same weights, same rounding), so the rewrites start from the same place.
#[test]
fn quantizing_the_f32_model_equals_loading_w8a8() -> AnyResult<()> {
    let dir = tempfile::tempdir()?;
    let (path, _) = tiny_file(dir.path(), GgufType::F32)?;
    let w8a8 = QuantConfig::w8a8();
    let a = Llama::load(&path, Mode::F32)?
        .quantized(&w8a8, &w8a8)?
        .forward_all(&TOKENS)?;
    let b = Llama::load(&path, Mode::Quant(w8a8))?.forward_all(&TOKENS)?;
    assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
    Ok(())
}

/// SmoothQuant on the tiny model: calibration needs five windows; with a fixed α every
/// group is smoothed, the model stays close to f32 and differs from plain W8A8.
#[test]
fn smoothquant_calibrates_and_stays_close_to_f32() -> AnyResult<()> {
    use smoothquant::{smoothquant, Alpha, Calibration, Weights};
    let dir = tempfile::tempdir()?;
    let (path, _) = tiny_file(dir.path(), GgufType::F32)?;
    let mut reference = Llama::load(&path, Mode::F32)?;
    let text: Vec<u32> = (0..60).map(|i| (i * 7 + 3) % VOCAB as u32).collect();
    let short = Calibration::run(&mut reference, &text[..32], 8, false);
    assert!(short.is_err_and(|e| e.to_string().contains("too short")));
    let calib = Calibration::run(&mut reference, &text, 8, true)?;
    assert_eq!(calib.tokens(), 60);
    let want = reference
        .clone()
        .forward_all(&TOKENS)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let w8a8 = QuantConfig::w8a8();
    let plain = Llama::load(&path, Mode::Quant(w8a8))?
        .forward_all(&TOKENS)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let gptq = Weights::Gptq(candle_compress::nn::gptq::GptqConfig::default().with_min_rows(8));
    for (alpha, weights) in [
        (Alpha::Fixed(0.5), Weights::Rtn),
        (Alpha::Search, Weights::Rtn),
        (Alpha::Fixed(0.5), gptq),
        (Alpha::Off, gptq),
    ] {
        let (mut m, choices) = smoothquant(&reference, &calib, alpha, weights, &w8a8, &w8a8)?;
        assert_eq!(choices.len(), 4 * LAYERS + 1);
        if alpha == Alpha::Fixed(0.5) {
            assert!(choices.iter().all(|c| c.alpha == Some(0.5)));
        }
        let got = m.forward_all(&TOKENS)?.flatten_all()?.to_vec1::<f32>()?;
        let err = rel_l2(&got, &want);
        eprintln!("SmoothQuant {alpha:?} {weights:?}: relative L2 error vs f32 {err:.4}");
        assert!(err < 0.03, "{alpha:?} {weights:?}: {err}");
        if alpha == Alpha::Off {
            assert!(choices.iter().all(|c| c.alpha.is_none()));
        }
        if alpha == Alpha::Fixed(0.5) {
            assert_ne!(got, plain, "smoothing changed nothing");
        }
    }
    Ok(())
}

/// A Q4_0 file written with llama.cpp's rule (negative block scales included, kept as
/// they are: codes and scales load unchanged) runs in W4A8 group 32 near the f32 run of
/// the same dequantized file (the difference is the int8 activations).
#[test]
fn q4_0_file_in_w4a8_g32_is_near_its_own_f32_run() -> AnyResult<()> {
    let dir = tempfile::tempdir()?;
    let (path, _) = tiny_file(dir.path(), GgufType::Q4_0)?;
    let f32_logits = Llama::load(&path, Mode::F32)?
        .forward_all(&TOKENS)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut m = Llama::load(&path, Mode::Quant(QuantConfig::w4a8(32)?))?;
    let q = m.forward_all(&TOKENS)?.flatten_all()?.to_vec1::<f32>()?;
    let err = rel_l2(&q, &f32_logits);
    eprintln!("Q4_0 file, w4a8-g32 vs its f32 run: relative L2 error {err:.4}");
    assert!(err < 0.2, "{err}");
    Ok(())
}

#[test]
fn bad_inputs_are_errors() -> AnyResult<()> {
    let dir = tempfile::tempdir()?;
    let (path, _) = tiny_file(dir.path(), GgufType::F32)?;
    let mut m = Llama::load(&path, Mode::F32)?;
    assert!(m.forward_last(&[]).is_err());
    assert!(m.forward_last(&[VOCAB as u32]).is_err());
    assert!(
        m.forward_last(&vec![1; CONTEXT + 1]).is_err(),
        "beyond context_length"
    );
    assert!(Llama::load(dir.path().join("absent.gguf"), Mode::F32).is_err());
    Ok(())
}

// ---- the real model ----

/// Must-show 1 of issue 13: our f32 decoder against candle-transformers'
/// `quantized_llama` with every weight dequantized (`CANDLE_DEQUANTIZE_ALL=1`).
#[test]
fn smollm2_f32_matches_candle_dequantized() -> AnyResult<()> {
    let Some(path) = smollm2_q4_1("smollm2_f32_matches_candle_dequantized") else {
        return Ok(());
    };
    // candle reads the variable once per thread, when the first QMatMul is built.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let file = candle_compress::io::gguf_reader::GgufFile::open(&path)?;
    let tok = tokenizer::GgufTokenizer::from_gguf(&file)?;
    drop(file);
    let prompt = tok.encode(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    )?;
    let mut ours = Llama::load(&path, Mode::F32)?;
    let mut peer = candle_peer(&path)?;

    let input = Tensor::new(prompt.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
    let want = peer.forward(&input, 0)?.squeeze(0)?;
    let got = ours.forward_last(&prompt)?;
    let (w, g) = (want.to_vec1::<f32>()?, got.to_vec1::<f32>()?);
    let ratio = max_diff(&g, &w) / max_abs(&w);
    println!(
        "SmolLM2 f32 vs quantized_llama (CANDLE_DEQUANTIZE_ALL=1), prompt of {} tokens: \
         last-position max |Δlogit| = {:.3e}, max |logit| = {:.3}, ratio {:.3e}",
        prompt.len(),
        max_diff(&g, &w),
        max_abs(&w),
        ratio
    );
    assert!(ratio <= 1e-3, "ratio {ratio}");

    // 32 greedy tokens from each, each model fed its own choices
    let (mut a, mut b) = (model::argmax(&got)?, model::argmax(&want)?);
    let (mut ours_ids, mut peer_ids) = (vec![a], vec![b]);
    let mut pos = prompt.len();
    while ours_ids.len() < 32 {
        a = model::argmax(&ours.forward_last(&[a])?)?;
        let x = Tensor::new(&[b], &Device::Cpu)?.unsqueeze(0)?;
        b = model::argmax(&peer.forward(&x, pos)?.squeeze(0)?)?;
        pos += 1;
        ours_ids.push(a);
        peer_ids.push(b);
    }
    let same = ours_ids
        .iter()
        .zip(&peer_ids)
        .take_while(|(x, y)| x == y)
        .count();
    println!(
        "greedy agreement: {same}/32 tokens; ours: {:?}",
        tok.decode(&ours_ids)?
    );
    assert_eq!(ours_ids, peer_ids, "peer: {:?}", tok.decode(&peer_ids)?);
    Ok(())
}

#[test]
fn smollm2_tokenizer_round_trips() -> AnyResult<()> {
    let Some(path) = smollm2_q4_1("smollm2_tokenizer_round_trips") else {
        return Ok(());
    };
    let file = candle_compress::io::gguf_reader::GgufFile::open(&path)?;
    let tok = tokenizer::GgufTokenizer::from_gguf(&file)?;
    let text = "<|im_start|>user\nIt's 2024: naïve café, 12345 tokens!<|im_end|>";
    let ids = tok.encode(text)?;
    assert_eq!(tok.decode(&ids)?, text);
    // the chat markers are single special tokens, digits are split one by one
    let start = file
        .metadata_strings("tokenizer.ggml.tokens")?
        .iter()
        .position(|t| *t == "<|im_start|>")
        .expect("<|im_start|> in the vocabulary") as u32;
    assert_eq!(ids[0], start);
    let digits = tok.encode("12345")?;
    assert_eq!(digits.len(), 5, "{digits:?}");
    assert!(tok.eos.is_some());
    Ok(())
}
