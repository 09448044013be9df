//! Builds a small candle_nn MLP with fixed-seed weights, compresses every weight matrix
//! with every quantization scheme and prints what each costs and keeps: bytes held,
//! compression ratio against f32, SQNR and the largest element error.
//!
//! ```text
//! cargo run --release --example quantized_mlp
//! ```

use std::time::Instant;

use candle_compress::quant::metrics::compare_slices;
use candle_compress::scheme::Scheme;
use candle_compress::{Compressed, Compressor};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;

/// Layer widths: 512 → 1024 → 1024 → 256 (about 1.8 M weights).
const WIDTHS: [usize; 4] = [512, 1024, 1024, 256];
const SEED: u64 = 0x00C0_FFEE;

/// splitmix64, so the weights are the same on every run and machine.
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

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// A Linear layer with N(0, 1/in) weights (trained weights are close to normal) and a few
/// larger outliers, as real checkpoints have.
fn linear(rng: &mut SplitMix, inp: usize, out: usize, dev: &Device) -> candle_core::Result<Linear> {
    let std = (1.0 / inp as f64).sqrt() as f32;
    let w: Vec<f32> = (0..inp * out)
        .map(|i| {
            let v = rng.normal() * std;
            if i % 997 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect();
    let b: Vec<f32> = (0..out).map(|_| rng.normal() * 0.01).collect();
    Ok(Linear::new(
        Tensor::from_vec(w, (out, inp), dev)?,
        Some(Tensor::from_vec(b, out, dev)?),
    ))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let mut rng = SplitMix(SEED);
    let layers: Vec<Linear> = WIDTHS
        .windows(2)
        .map(|w| linear(&mut rng, w[0], w[1], &dev))
        .collect::<candle_core::Result<_>>()?;

    // The MLP runs (ReLU between layers) so the example shows a working candle model.
    let x = Tensor::from_vec(
        (0..4 * WIDTHS[0]).map(|_| rng.normal()).collect::<Vec<_>>(),
        (4, WIDTHS[0]),
        &dev,
    )?;
    let mut h = x;
    for (i, l) in layers.iter().enumerate() {
        h = l.forward(&h)?;
        if i + 1 < layers.len() {
            h = h.relu()?;
        }
    }
    let weights: Vec<&Tensor> = layers.iter().map(|l| l.weight()).collect();
    let n_weights: usize = weights.iter().map(|w| w.elem_count()).sum();
    println!(
        "MLP {WIDTHS:?}: {} Linear layers, {n_weights} weights ({} bytes as f32); output {:?}",
        layers.len(),
        n_weights * 4,
        h.dims()
    );

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
            .map(|c| {
                let t = c.decompress(&dev)?;
                assert_eq!(t.dtype(), DType::F32);
                Ok(t.flatten_all()?.to_vec1::<f32>()?)
            })
            .collect::<candle_compress::Result<Vec<_>>>()?
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
