//! `--eval TEXT`: accuracy of each quantized mode against the f32 decoder on a fixed text.
//!
//! The text is tokenized once and cut into windows of `window` tokens (each window starts
//! with an empty KV cache, the usual strided-free perplexity). For every position that has
//! a next token the f32 decoder and the candidate each give a distribution; the report is
//!
//! - perplexity `exp(mean −log p(next token))` of each model on the text;
//! - top-1 agreement: the share of positions where the candidate's most likely token is
//!   the f32 decoder's;
//! - mean KL divergence `KL(p_f32 ‖ p_candidate)` in nats;
//! - the bytes of the candidate's weights.

use std::time::Instant;

use candle_core::{Result, Tensor, D};

use crate::model::{log_softmax, Llama};

/// Sums over the positions of one or more windows.
#[derive(Debug, Default, Clone, Copy)]
pub struct Scores {
    positions: usize,
    nll: f64,
    nll_ref: f64,
    agree: usize,
    kl: f64,
}

impl Scores {
    /// Perplexity of the candidate.
    pub fn perplexity(&self) -> f64 {
        (self.nll / self.positions as f64).exp()
    }
    /// Perplexity of the f32 reference.
    pub fn perplexity_ref(&self) -> f64 {
        (self.nll_ref / self.positions as f64).exp()
    }
    /// Share of positions with the same top-1 token as f32.
    pub fn agreement(&self) -> f64 {
        self.agree as f64 / self.positions as f64
    }
    /// Mean KL(f32 ‖ candidate), nats.
    pub fn mean_kl(&self) -> f64 {
        self.kl / self.positions as f64
    }
    /// Positions scored.
    pub fn positions(&self) -> usize {
        self.positions
    }
}

/// Scores `candidate` against `reference` on `tokens`, `window` tokens at a time; progress
/// on stderr under `label`.
pub fn score(
    reference: &mut Llama,
    candidate: &mut Llama,
    tokens: &[u32],
    window: usize,
    label: &str,
) -> Result<Scores> {
    let mut s = Scores::default();
    let start = Instant::now();
    let chunks: Vec<&[u32]> = tokens.chunks(window).filter(|c| c.len() > 1).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        reference.clear_cache();
        candidate.clear_cache();
        let lp_ref = log_softmax(&reference.forward_all(chunk)?)?;
        let lp = log_softmax(&candidate.forward_all(chunk)?)?;
        let n = chunk.len() - 1;
        let (lp_ref, lp) = (lp_ref.narrow(0, 0, n)?, lp.narrow(0, 0, n)?);
        let targets = Tensor::new(&chunk[1..], lp.device())?.unsqueeze(1)?;
        s.nll -= lp.gather(&targets, 1)?.sum_all()?.to_scalar::<f32>()? as f64;
        s.nll_ref -= lp_ref.gather(&targets, 1)?.sum_all()?.to_scalar::<f32>()? as f64;
        let top_ref = lp_ref.argmax(D::Minus1)?.to_vec1::<u32>()?;
        let top = lp.argmax(D::Minus1)?.to_vec1::<u32>()?;
        s.agree += top_ref.iter().zip(&top).filter(|(a, b)| a == b).count();
        let kl = (lp_ref.exp()? * (&lp_ref - &lp)?)?
            .sum_all()?
            .to_scalar::<f32>()?;
        s.kl += kl as f64;
        s.positions += n;
        eprintln!(
            "  {label}: window {}/{} ({:.0} s)",
            i + 1,
            chunks.len(),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(s)
}
