//! A Llama-family decoder (Llama, SmolLM, TinyLlama, …) read from a GGUF file, whose
//! linear layers are either candle's f32 [`Linear`] (the reference) or our [`QuantLinear`].
//!
//! The computation follows llama.cpp's `llama` architecture, which is also what
//! candle-transformers' `quantized_llama` computes, so the two can be compared number for
//! number:
//!
//! - token embeddings: `token_embd.weight` (`[vocab, d]`, any GGML type) dequantized to f32;
//! - per block: `x += attn_output(attention(rope(attn_q(n)), rope(attn_k(n)), attn_v(n)))`
//!   with `n = rms_norm(x, attn_norm)`, then `x += ffn_down(silu(ffn_gate(n)) · ffn_up(n))`
//!   with `n = rms_norm(x, ffn_norm)`;
//! - RoPE in the *interleaved* form (pairs `(2i, 2i+1)` rotate together, candle's
//!   `rope_i`): llama.cpp's converter permutes the rows of `attn_q` / `attn_k` so that its
//!   "normal" RoPE on those rows equals the Hugging Face rotate-half RoPE on the original
//!   weights, so a GGUF `llama` file must be run with the interleaved form;
//! - grouped-query attention (`n_head` query heads share `n_kv_head` key/value heads,
//!   query head `h` reads key/value head `h / (n_head / n_kv_head)`) with a KV cache; the
//!   whole attention (scores, scale, causal mask, softmax, weighted values; f32) is one
//!   fused kernel over the cache (`ops::attend`), and SwiGLU's
//!   `silu(gate) · up` is one in-place pass (`ops::silu_mul`), both on
//!   `candle_compress::kernels::act`;
//! - `output_norm`, then the LM head `output.weight`, or the token embedding when the file
//!   has no `output.weight` (tied embeddings).
//!
//! Activations are kept as 2-D `[tokens, features]` tensors (one sequence), so a prompt of
//! `t` tokens goes through every linear as one `[t, in]` batch: the batched prefill the
//! integer kernels are built for.

use std::path::Path;

use candle_compress::io::gguf_reader::GgufFile;
use candle_compress::io::loader::QuantLoader;
use candle_compress::nn::{QuantConfig, QuantLinear};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::Linear;

use crate::kv_cache::KvCache;
use crate::ops;

/// The hyper-parameters of a `llama` GGUF file (its `llama.*` metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Number of decoder blocks (`llama.block_count`).
    pub n_layer: usize,
    /// Hidden size (`llama.embedding_length`).
    pub n_embd: usize,
    /// MLP hidden size (`llama.feed_forward_length`).
    pub n_ff: usize,
    /// Query heads (`llama.attention.head_count`).
    pub n_head: usize,
    /// Key/value heads (`llama.attention.head_count_kv`, default `n_head`).
    pub n_kv_head: usize,
    /// RoPE base (`llama.rope.freq_base`, default 10 000).
    pub rope_base: f32,
    /// RmsNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
    pub eps: f64,
    /// Vocabulary size (rows of `token_embd.weight`).
    pub vocab: usize,
    /// Longest sequence the rotary tables cover (`llama.context_length`, capped at 8192).
    pub max_seq: usize,
}

impl LlamaConfig {
    /// Reads the config from `file`'s metadata and checks it is self-consistent.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let arch = file.metadata_str("general.architecture")?;
        if arch != "llama" {
            candle_core::bail!("general.architecture is {arch:?}, this decoder runs \"llama\"");
        }
        let u =
            |k: &str| -> Result<usize> { Ok(file.metadata_u64(&format!("llama.{k}"))? as usize) };
        let n_head = u("attention.head_count")?;
        let n_embd = u("embedding_length")?;
        if n_head == 0 || n_embd % n_head != 0 {
            candle_core::bail!(
                "embedding_length {n_embd} is not a multiple of head_count {n_head}"
            );
        }
        let n_kv_head = u("attention.head_count_kv").unwrap_or(n_head);
        if n_kv_head == 0 || n_head % n_kv_head != 0 {
            candle_core::bail!(
                "head_count {n_head} is not a multiple of head_count_kv {n_kv_head}"
            );
        }
        let head_dim = n_embd / n_head;
        let rope_dim = u("rope.dimension_count").unwrap_or(head_dim);
        if rope_dim != head_dim {
            candle_core::bail!("partial RoPE ({rope_dim} of {head_dim} dims) is not supported");
        }
        let vocab = match file.tensor_info("token_embd.weight") {
            Some(info) if info.shape.len() == 2 && info.shape[1] == n_embd => info.shape[0],
            Some(info) => candle_core::bail!("token_embd.weight has shape {:?}", info.shape),
            None => candle_core::bail!("token_embd.weight is missing"),
        };
        Ok(Self {
            n_layer: u("block_count")?,
            n_embd,
            n_ff: u("feed_forward_length")?,
            n_head,
            n_kv_head,
            rope_base: file.metadata_f64("llama.rope.freq_base").unwrap_or(10_000.) as f32,
            eps: file.metadata_f64("llama.attention.layer_norm_rms_epsilon")?,
            vocab,
            max_seq: u("context_length").unwrap_or(2048).clamp(1, 8192),
        })
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }
}

/// How the decoder's linear layers are built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Every weight dequantized to f32, candle's `Linear` (the reference).
    F32,
    /// Our `QuantLinear` in this config for the block linears; the LM head in int8
    /// weights with the same activation mode ([`head_config`]).
    Quant(QuantConfig),
}

/// The LM head's config beside block linears in `config`: int8 weights (its 4-bit form
/// costs the most accuracy for the least time; the file's tied embedding is Q8_0), the
/// same activation quantization.
pub fn head_config(config: &QuantConfig) -> Result<QuantConfig> {
    QuantConfig::w8a8()
        .with_activations(config.activations())
        .map_err(candle_core::Error::wrap)
}

/// One linear layer: candle's f32 `Linear` or our integer `QuantLinear`.
#[derive(Debug, Clone)]
pub enum Lin {
    /// Reference f32 layer.
    F32(Linear),
    /// Integer layer.
    Quant(QuantLinear),
}

impl Lin {
    /// Bytes of the weights this layer holds.
    pub fn size_bytes(&self) -> usize {
        match self {
            Lin::F32(l) => l.weight().elem_count() * 4 + l.bias().map_or(0, |b| b.elem_count() * 4),
            Lin::Quant(q) => q.size_bytes(),
        }
    }
}

impl Module for Lin {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Lin::F32(l) => l.forward(xs),
            Lin::Quant(q) => q.forward(xs),
        }
    }
}

/// Which linear of a block (for per-kind choices such as the sensitivity study).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `attn_q`, `attn_k`, `attn_v`.
    Qkv,
    /// `attn_output`.
    Out,
    /// `ffn_gate`, `ffn_up`.
    GateUp,
    /// `ffn_down`.
    Down,
}

/// One decoder block. Its fields are open to the example's other modules (the SmoothQuant
/// rewrite replaces norms and linears).
#[derive(Clone)]
pub(crate) struct Block {
    pub(crate) attn_norm: Tensor,
    pub(crate) q: Lin,
    pub(crate) k: Lin,
    pub(crate) v: Lin,
    pub(crate) o: Lin,
    pub(crate) ffn_norm: Tensor,
    pub(crate) gate: Lin,
    pub(crate) up: Lin,
    pub(crate) down: Lin,
    /// A rotation of the down projection's input, applied at run time (`None`: none);
    /// set by the rotation rewrite, which folds its inverse into `down`.
    pub(crate) down_rotation: Option<Hadamard>,
    /// Keys after RoPE and values of the cached tokens.
    cache: KvCache,
}

/// Multiplication of each row by a block-diagonal Hadamard matrix: `blocks` copies of
/// the normalised Sylvester matrix `H_m` (`m` a power of two, `m · blocks` = the row
/// length), computed as `H_m = H_p ⊗ H_q` (`m = p · q`): a row block reshaped to
/// `[p, q]` becomes `H_p · V · H_q`, `p + q` multiply-adds per element instead of `m`.
/// `H_m` is symmetric and orthogonal, so the same matrix undoes it.
#[derive(Debug, Clone)]
pub(crate) struct Hadamard {
    hp: Tensor,
    hq: Tensor,
    blocks: usize,
}

impl Hadamard {
    /// For rows of `n`: the largest power-of-two block `m` dividing `n` (at most 4096);
    /// `None` when `n` is odd.
    pub(crate) fn for_width(n: usize) -> Result<Option<Self>> {
        let m = (1usize << n.trailing_zeros()).min(4096);
        if m < 2 {
            return Ok(None);
        }
        let p = 1usize << (m.trailing_zeros() / 2);
        Ok(Some(Self {
            hp: sylvester(p)?,
            hq: sylvester(m / p)?,
            blocks: n / m,
        }))
    }

    /// The dense `[n, n]` matrix (for folding into weights).
    pub(crate) fn matrix(&self) -> Result<Tensor> {
        let n = self.hp.dim(0)? * self.hq.dim(0)? * self.blocks;
        self.apply(&Tensor::eye(n, DType::F32, &Device::Cpu)?)
    }

    /// `x · blockdiag(H_m, …)` for `x` `[t, n]`.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (t, n) = x.dims2()?;
        let (p, q) = (self.hp.dim(0)?, self.hq.dim(0)?);
        let v = x
            .reshape((t * self.blocks, p, q))?
            .broadcast_matmul(&self.hq)?;
        self.hp.broadcast_matmul(&v)?.reshape((t, n))
    }
}

/// The normalised Sylvester Hadamard matrix of order `n` (a power of two):
/// `H[i][j] = (−1)^popcount(i & j) / √n`.
pub(crate) fn sylvester(n: usize) -> Result<Tensor> {
    let scale = 1.0 / (n as f32).sqrt();
    let v: Vec<f32> = (0..n * n)
        .map(|ij| {
            if ((ij / n) & (ij % n)).count_ones().is_multiple_of(2) {
                scale
            } else {
                -scale
            }
        })
        .collect();
    Tensor::from_vec(v, (n, n), &Device::Cpu)
}

/// The input of one group of linears that read the same activations: a block's q/k/v,
/// attention output, gate/up or down projection, or the LM head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// Block `i`'s linears of this kind.
    Block(usize, Kind),
    /// The LM head (its input is the output of `output_norm`).
    Head,
}

/// Called with every linear group's input `[tokens, in]` during a forward pass
/// ([`Llama::forward_observed`]).
pub type Observer<'a> = dyn FnMut(Site, &Tensor) -> Result<()> + 'a;

/// The decoder with its KV cache. Cloning shares the weights (candle tensors are
/// reference-counted) and starts with an empty cache: the cache is written in place.
pub struct Llama {
    pub(crate) cfg: LlamaConfig,
    pub(crate) embed: Tensor,
    pub(crate) blocks: Vec<Block>,
    pub(crate) norm: Tensor,
    pub(crate) head: Lin,
    cos: Tensor,
    sin: Tensor,
    /// Tokens already in the KV cache.
    pos: usize,
}

impl Clone for Llama {
    fn clone(&self) -> Self {
        Self {
            cfg: self.cfg.clone(),
            embed: self.embed.clone(),
            blocks: self.blocks.clone(),
            norm: self.norm.clone(),
            head: self.head.clone(),
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            pos: 0,
        }
    }
}

/// Builds the layers: `choose(kind)` gives the mode of each block linear.
struct Builder<'a> {
    floats: &'a QuantLoader,
    quant: Option<&'a QuantLoader>,
}

impl Builder<'_> {
    fn linear(&self, name: &str, in_f: usize, out_f: usize) -> Result<Lin> {
        match self.quant {
            Some(q) => Ok(Lin::Quant(q.quant_linear(in_f, out_f, name)?)),
            None => {
                let w = self.floats.get(&[out_f, in_f], &format!("{name}.weight"))?;
                let b = if self.floats.contains(&format!("{name}.bias")) {
                    Some(self.floats.get(&[out_f], &format!("{name}.bias"))?)
                } else {
                    None
                };
                Ok(Lin::F32(Linear::new(w, b)))
            }
        }
    }
}

impl Llama {
    /// Loads the decoder from the GGUF file at `path`, every block linear in `mode`, the
    /// LM head in `mode`'s [`head_config`].
    pub fn load(path: impl AsRef<Path>, mode: Mode) -> Result<Self> {
        let head = match mode {
            Mode::F32 => Mode::F32,
            Mode::Quant(c) => Mode::Quant(head_config(&c)?),
        };
        Self::load_with(path, |_| mode, head)
    }

    /// Loads the decoder with a mode per block-linear kind (`block(kind)`) and one for the
    /// LM head (`head`). `progress` is not printed here; callers time the load.
    pub fn load_with(
        path: impl AsRef<Path>,
        block: impl Fn(Kind) -> Mode,
        head: Mode,
    ) -> Result<Self> {
        let path = path.as_ref();
        let file = GgufFile::open(path)?;
        let cfg = LlamaConfig::from_gguf(&file)?;
        // One loader per config in use; the float one also reads norms and embeddings.
        let floats = QuantLoader::from_gguf_file(file, QuantConfig::w8a8())?;
        let mut loaders: Vec<(QuantConfig, QuantLoader)> = Vec::new();
        let mut configs: Vec<QuantConfig> = [Kind::Qkv, Kind::Out, Kind::GateUp, Kind::Down]
            .into_iter()
            .map(&block)
            .chain(std::iter::once(head))
            .filter_map(|m| match m {
                Mode::Quant(c) => Some(c),
                Mode::F32 => None,
            })
            .collect();
        configs.dedup();
        for c in configs {
            if !loaders.iter().any(|(k, _)| *k == c) {
                loaders.push((c, QuantLoader::from_gguf(path, c)?));
            }
        }
        let builder = |m: Mode| Builder {
            floats: &floats,
            quant: match m {
                Mode::F32 => None,
                Mode::Quant(c) => loaders.iter().find(|(k, _)| *k == c).map(|(_, l)| l),
            },
        };
        let d = cfg.n_embd;
        let kv = cfg.n_kv_head * cfg.head_dim();
        let embed = floats.get(&[cfg.vocab, d], "token_embd.weight")?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let qkv = builder(block(Kind::Qkv));
            let out = builder(block(Kind::Out));
            let gu = builder(block(Kind::GateUp));
            let down = builder(block(Kind::Down));
            blocks.push(Block {
                attn_norm: floats.get(&[d], &format!("{p}.attn_norm.weight"))?,
                q: qkv.linear(&format!("{p}.attn_q"), d, d)?,
                k: qkv.linear(&format!("{p}.attn_k"), d, kv)?,
                v: qkv.linear(&format!("{p}.attn_v"), d, kv)?,
                o: out.linear(&format!("{p}.attn_output"), d, d)?,
                ffn_norm: floats.get(&[d], &format!("{p}.ffn_norm.weight"))?,
                gate: gu.linear(&format!("{p}.ffn_gate"), d, cfg.n_ff)?,
                up: gu.linear(&format!("{p}.ffn_up"), d, cfg.n_ff)?,
                down: down.linear(&format!("{p}.ffn_down"), cfg.n_ff, d)?,
                down_rotation: None,
                cache: KvCache::default(),
            });
        }
        let norm = floats.get(&[d], "output_norm.weight")?;
        let head_name = if floats.contains("output.weight") {
            "output"
        } else {
            "token_embd"
        };
        let head = builder(head).linear(head_name, d, cfg.vocab)?;
        let (cos, sin) = rope_tables(cfg.head_dim(), cfg.rope_base, cfg.max_seq)?;
        Ok(Self {
            cfg,
            embed,
            blocks,
            norm,
            head,
            cos,
            sin,
            pos: 0,
        })
    }

    /// A copy whose f32 linears are our `QuantLinear`s: block linears in `config`, the LM
    /// head in `head` (integer linears stay as they are).
    pub fn quantized(&self, config: &QuantConfig, head: &QuantConfig) -> Result<Self> {
        let q = |l: &Lin, c: &QuantConfig| -> Result<Lin> {
            Ok(match l {
                Lin::F32(f) => Lin::Quant(QuantLinear::from_linear(f, c)?),
                Lin::Quant(_) => l.clone(),
            })
        };
        let mut m = self.clone();
        m.clear_cache();
        for b in &mut m.blocks {
            for l in [
                &mut b.q,
                &mut b.k,
                &mut b.v,
                &mut b.o,
                &mut b.gate,
                &mut b.up,
                &mut b.down,
            ] {
                *l = q(l, config)?;
            }
        }
        m.head = q(&m.head, head)?;
        Ok(m)
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Bytes of the weights held: embedding (f32), norms, every linear, LM head (counted
    /// once even when tied, since the head holds its own copy in its own format).
    pub fn size_bytes(&self) -> usize {
        let norms = (2 * self.blocks.len() + 1) * self.cfg.n_embd * 4;
        let lins: usize = self
            .blocks
            .iter()
            .map(|b| {
                [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down]
                    .iter()
                    .map(|l| l.size_bytes())
                    .sum::<usize>()
            })
            .sum();
        self.embed.elem_count() * 4 + norms + lins + self.head.size_bytes()
    }

    /// Tokens in the KV cache (the position of the next token).
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Empties the KV cache.
    pub fn clear_cache(&mut self) {
        for b in &mut self.blocks {
            b.cache.clear();
        }
        self.pos = 0;
    }

    /// Runs `tokens` (appended after the cached ones) and returns the logits of the last
    /// one, `[vocab]`.
    pub fn forward_last(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let h = self.hidden(tokens, None)?;
        let last = h.i(h.dim(0)? - 1..)?;
        self.head.forward(&last)?.squeeze(0)
    }

    /// Runs `tokens` (appended after the cached ones) and returns the logits of every one,
    /// `[tokens, vocab]` (for perplexity).
    pub fn forward_all(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let h = self.hidden(tokens, None)?;
        self.head.forward(&h)
    }

    /// Runs `tokens` like [`Llama::forward_all`] without the LM head, handing every linear
    /// group's input to `observe` (calibration); the head's input is handed over too.
    pub fn forward_observed(&mut self, tokens: &[u32], observe: &mut Observer<'_>) -> Result<()> {
        let h = self.hidden(tokens, Some(observe))?;
        observe(Site::Head, &h)
    }

    /// The final normed hidden states `[tokens, d]`; `observe` sees each block's linear
    /// inputs.
    fn hidden(&mut self, tokens: &[u32], mut observe: Option<&mut Observer<'_>>) -> Result<Tensor> {
        let t = tokens.len();
        if t == 0 {
            candle_core::bail!("no tokens to run");
        }
        if self.pos + t > self.cfg.max_seq {
            candle_core::bail!(
                "{} cached + {t} new tokens exceed the context of {}",
                self.pos,
                self.cfg.max_seq
            );
        }
        if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= self.cfg.vocab) {
            candle_core::bail!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab
            );
        }
        let ids = Tensor::new(tokens, &Device::Cpu)?;
        let mut x = self.embed.index_select(&ids, 0)?;
        let cos = self.cos.narrow(0, self.pos, t)?;
        let sin = self.sin.narrow(0, self.pos, t)?;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let mut seen = |kind: Kind, t: &Tensor| match observe.as_mut() {
                Some(f) => f(Site::Block(i, kind), t),
                None => Ok(()),
            };
            let n = candle_nn::ops::rms_norm(&x, &b.attn_norm, self.cfg.eps as f32)?;
            seen(Kind::Qkv, &n)?;
            let a = b.attention(&n, &cos, &sin, &self.cfg, &mut seen)?;
            x = ops::add_in_place(x, &a)?;
            let n = candle_nn::ops::rms_norm(&x, &b.ffn_norm, self.cfg.eps as f32)?;
            seen(Kind::GateUp, &n)?;
            let mut h = ops::silu_mul(b.gate.forward(&n)?, &b.up.forward(&n)?)?;
            if let Some(r) = &b.down_rotation {
                h = r.apply(&h)?;
            }
            seen(Kind::Down, &h)?;
            x = ops::add_in_place(x, &b.down.forward(&h)?)?;
        }
        self.pos += t;
        candle_nn::ops::rms_norm(&x, &self.norm, self.cfg.eps as f32)
    }
}

impl Block {
    /// Self-attention of `n` (`[t, d]`, the normed input) over the cache plus itself;
    /// `seen` gets the output projection's input.
    fn attention(
        &mut self,
        n: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cfg: &LlamaConfig,
        seen: &mut impl FnMut(Kind, &Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let t = n.dim(0)?;
        let hd = cfg.head_dim();
        let heads = |x: Tensor, h: usize| -> Result<Tensor> {
            // [t, h·hd] -> [1, h, t, hd] (rope_i's layout)
            x.reshape((t, h, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)
        };
        let q = heads(self.q.forward(n)?, cfg.n_head)?;
        let k = heads(self.k.forward(n)?, cfg.n_kv_head)?;
        let v = heads(self.v.forward(n)?, cfg.n_kv_head)?.squeeze(0)?;
        let q = candle_nn::rotary_emb::rope_i(&q, cos, sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope_i(&k, cos, sin)?.squeeze(0)?;
        let (k, v) = self.cache.append(&k, &v)?;
        let past = k.dim(1)? - t;
        // The n_rep query heads of one key/value head are consecutive: fold them into the
        // row dimension, [n_kv, n_rep·t, hd], so the kernels do GQA without copying the
        // keys and values n_rep times, reading the cache's views in place. A decode step's
        // few queries go row by row; a prompt's in register blocks of rows.
        let rep = cfg.n_head / cfg.n_kv_head;
        let scale = 1.0 / (hd as f32).sqrt();
        let q = q.reshape((cfg.n_kv_head, rep * t, hd))?;
        let y = ops::attend(&q, &k, &v, scale, rep, past)?;
        let y = y
            .reshape((cfg.n_head, t, hd))?
            .transpose(0, 1)?
            .reshape((t, cfg.n_embd))?;
        seen(Kind::Out, &y)?;
        self.o.forward(&y)
    }
}

/// `cos`, `sin` of `pos · base^(-2i/hd)`, `[max_seq, hd/2]` each (candle's layout for
/// `rope_i`), computed as candle-transformers computes them (f32 powers, an f32 matmul).
fn rope_tables(hd: usize, base: f32, max_seq: usize) -> Result<(Tensor, Tensor)> {
    let theta: Vec<f32> = (0..hd)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / hd as f32))
        .collect();
    let theta = Tensor::new(theta.as_slice(), &Device::Cpu)?.reshape((1, hd / 2))?;
    let pos = Tensor::arange(0u32, max_seq as u32, &Device::Cpu)?
        .to_dtype(DType::F32)?
        .reshape((max_seq, 1))?;
    let angles = pos.matmul(&theta)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Index of the largest logit (ties: the first).
pub fn argmax(logits: &Tensor) -> Result<u32> {
    let v = logits.flatten_all()?.to_vec1::<f32>()?;
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    Ok(best as u32)
}

/// Log-softmax over the last dimension (f32).
pub fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}
