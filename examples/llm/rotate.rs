//! Rotating the decoder (as QuaRot and SpinQuant do): an orthogonal change of basis of the
//! residual stream and of each attention head's values, folded into the weights offline.
//! The f32 model computes the same function; its linears' inputs lose their outlier
//! channels (an outlier is spread over every channel by the rotation), so per-token int8
//! activations lose far less.
//!
//! With `Q` orthogonal (`d × d`) and the residual stream carried as `x' = x · Q`:
//!
//! - each RmsNorm's weight `γ` is first folded into the linears that read it
//!   (`W ← W · diag(γ)`, `γ ← 1`); then `rms_norm(x · Q) = rms_norm(x) · Q` because `Q`
//!   keeps norms;
//! - linears that read the stream (q, k, v, gate, up, LM head): `W ← W · Q`;
//! - linears that write into it (attn_output, down): `W ← Qᵀ · W`;
//! - the token embeddings: `E ← E · Q`.
//!
//! Values get a second rotation `H` (`head_dim × head_dim`, a normalised Sylvester
//! Hadamard matrix when `head_dim` is a power of two, else the same kind of random
//! orthogonal matrix): each KV head's rows of `attn_v` become `Hᵀ · W_v`, each query head's
//! columns of `attn_output` become `W_o · H`; attention mixes tokens, not dimensions, so
//! the `H` cancels.
//!
//! The down projection's input (`silu(gate) · up`, the FFN width) has no weight before it
//! to fold a rotation into; it is rotated at run time by a block-diagonal Hadamard matrix
//! `R` ([`Hadamard`], a fast product: `p + q` multiply-adds per element for blocks of
//! `p · q`), and `attn_down ← (Qᵀ · W_down) · R` (`R` is its own inverse).
//!
//! `Q` is a random orthogonal matrix (Gram–Schmidt on a seeded Gaussian matrix, in f64):
//! deterministic, and defined for every width (576 in SmolLM2 has no Sylvester Hadamard).

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::Linear;

use crate::model::{sylvester, Hadamard, Lin, Llama};

/// Seed of the rotation (fixed: a rerun rebuilds the same model).
pub const SEED: u64 = 0x005e_ed0f_2026;

/// The rotated copy of `model`, whose linears must all be f32.
pub fn rotate(model: &Llama, seed: u64) -> Result<Llama> {
    let cfg = model.cfg.clone();
    let d = cfg.n_embd;
    let hd = cfg.head_dim();
    let dev = Device::Cpu;
    let q = Tensor::from_vec(random_orthogonal(d, seed), (d, d), &dev)?;
    let qt = q.t()?.contiguous()?;
    let h = if hd.is_power_of_two() {
        sylvester(hd)?
    } else {
        Tensor::from_vec(random_orthogonal(hd, seed ^ 0x9e37_79b9), (hd, hd), &dev)?
    };
    let down_rotation = Hadamard::for_width(cfg.n_ff)?;
    let r_down = down_rotation.as_ref().map(Hadamard::matrix).transpose()?;
    let h_v = block_diagonal(&h.t()?.contiguous()?, cfg.n_kv_head)?;
    let h_o = block_diagonal(&h, cfg.n_head)?;
    let ones = Tensor::ones(d, DType::F32, &dev)?;

    let mut out = model.clone();
    out.clear_cache();
    out.embed = model.embed.matmul(&q)?;
    for b in &mut out.blocks {
        let g = b.attn_norm.clone();
        b.q = lin(reads(&b.q, &g, &q)?);
        b.k = lin(reads(&b.k, &g, &q)?);
        b.v = lin(h_v.matmul(&reads(&b.v, &g, &q)?)?);
        b.attn_norm = ones.clone();
        b.o = lin(qt.matmul(&weight(&b.o)?.matmul(&h_o)?)?);
        let g = b.ffn_norm.clone();
        b.gate = lin(reads(&b.gate, &g, &q)?);
        b.up = lin(reads(&b.up, &g, &q)?);
        b.ffn_norm = ones.clone();
        let down = qt.matmul(weight(&b.down)?)?;
        b.down = lin(match &r_down {
            Some(r) => down.matmul(r)?,
            None => down,
        });
        b.down_rotation = down_rotation.clone();
    }
    out.head = lin(reads(&model.head, &model.norm, &q)?);
    out.norm = ones;
    Ok(out)
}

fn lin(w: Tensor) -> Lin {
    Lin::F32(Linear::new(w, None))
}

fn weight(l: &Lin) -> Result<&Tensor> {
    match l {
        Lin::F32(l) if l.bias().is_none() => Ok(l.weight()),
        Lin::F32(_) => candle_core::bail!("rotation of linears with a bias is not written"),
        Lin::Quant(_) => candle_core::bail!("the rotation starts from the f32 decoder"),
    }
}

/// `W · diag(γ) · Q` for a linear reading the normed stream.
fn reads(l: &Lin, gamma: &Tensor, q: &Tensor) -> Result<Tensor> {
    weight(l)?.broadcast_mul(&gamma.unsqueeze(0)?)?.matmul(q)
}

/// `n` copies of the square `m` on the diagonal.
fn block_diagonal(m: &Tensor, n: usize) -> Result<Tensor> {
    let k = m.dim(0)?;
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let mut parts = Vec::with_capacity(3);
        if i > 0 {
            parts.push(Tensor::zeros((k, i * k), DType::F32, m.device())?);
        }
        parts.push(m.clone());
        if i + 1 < n {
            parts.push(Tensor::zeros((k, (n - 1 - i) * k), DType::F32, m.device())?);
        }
        rows.push(Tensor::cat(&parts, 1)?);
    }
    Tensor::cat(&rows, 0)
}

/// A random `n × n` orthogonal matrix, row-major: modified Gram–Schmidt (twice, for
/// orthogonality to rounding) on a seeded Gaussian matrix, in f64.
pub fn random_orthogonal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    let mut rows: Vec<Vec<f64>> = (0..n)
        .map(|_| (0..n).map(|_| rng.gaussian()).collect())
        .collect();
    for i in 0..n {
        for _ in 0..2 {
            for j in 0..i {
                let dot: f64 = rows[i].iter().zip(&rows[j]).map(|(a, b)| a * b).sum();
                let (done, rest) = rows.split_at_mut(i);
                for (a, b) in rest[0].iter_mut().zip(&done[j]) {
                    *a -= dot * b;
                }
            }
        }
        let norm = rows[i].iter().map(|a| a * a).sum::<f64>().sqrt();
        rows[i].iter_mut().for_each(|a| *a /= norm);
    }
    rows.into_iter().flatten().map(|a| a as f32).collect()
}

/// SplitMix64 with Box–Muller Gaussians: a small deterministic generator.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn gaussian(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}
