//! `--bench`: prefill and decode speed on synthetic token ids, ours and (with `--peer`)
//! candle-transformers' `quantized_llama` on the same file in the same run.
//!
//! - prefill of `n` tokens: one forward of an `n`-token prompt from an empty cache, until
//!   the last position's logits; tokens/s = `n / time`;
//! - decode: after a 128-token prompt, `steps` single-token forwards (each with its argmax,
//!   fed back); tokens/s = `steps / time`.
//!
//! Each figure is the median of `reps` runs, after one warm-up run.

use std::time::Instant;

use candle_core::{Device, Result, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use crate::model::{argmax, Llama};

/// Synthetic prompt: `n` ids spread over the vocabulary (deterministic).
pub fn synthetic(n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

/// What is measured: ours or the peer.
pub enum Runner<'a> {
    /// Our decoder.
    Ours(&'a mut Llama),
    /// candle-transformers' quantized_llama.
    Peer(&'a mut ModelWeights),
}

impl Runner<'_> {
    /// Logits of the last token of `tokens`, which start at position `pos`.
    fn run(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor> {
        match self {
            Runner::Ours(m) => {
                if pos == 0 {
                    m.clear_cache();
                }
                m.forward_last(tokens)
            }
            Runner::Peer(m) => {
                let x = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
                m.forward(&x, pos)?.squeeze(0)
            }
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median prefill tokens/s for an `n`-token prompt.
pub fn prefill(r: &mut Runner, n: usize, vocab: usize, reps: usize) -> Result<f64> {
    let prompt = synthetic(n, vocab);
    r.run(&prompt, 0)?;
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let logits = r.run(&prompt, 0)?;
        argmax(&logits)?;
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

/// Median decode tokens/s: `steps` tokens after a 128-token prompt.
pub fn decode(r: &mut Runner, steps: usize, vocab: usize, reps: usize) -> Result<f64> {
    let prompt = synthetic(128, vocab);
    let mut rates = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let mut next = argmax(&r.run(&prompt, 0)?)?;
        let t = Instant::now();
        for i in 0..steps {
            next = argmax(&r.run(&[next], prompt.len() + i)?)?;
        }
        if rep > 0 {
            rates.push(steps as f64 / t.elapsed().as_secs_f64());
        }
    }
    Ok(median(rates))
}
