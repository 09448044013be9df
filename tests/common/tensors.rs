//! Small tensor builders and readers on the CPU.

use candle_core::{DType, Device, Tensor};

/// `values` as a CPU tensor of shape `dims`; panics when the lengths disagree.
pub fn tensor(values: Vec<f32>, dims: &[usize]) -> Tensor {
    Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
}

/// Every element of a float tensor of any rank, in row-major order, converted to f32.
pub fn flat_f32(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `n` deterministic values in `[-0.5, 0.5]`: `0.5 · sin(0.917·i + seed)`, computed in
/// f64. Smooth, not random: a checkpoint the CLI tests can rebuild from the seed alone.
pub fn sine_values(n: usize, seed: u64) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f64 * 0.917 + seed as f64).sin() * 0.5) as f32)
        .collect()
}

/// An `[out, inp]` weight matrix of deterministic values in `[-0.8, 0.8]`:
/// `0.8 · sin(0.377·i + seed)`, computed in f32.
pub fn sine_matrix(out: usize, inp: usize, seed: f32) -> candle_compress::Result<Tensor> {
    let v: Vec<f32> = (0..out * inp)
        .map(|i| (i as f32 * 0.377 + seed).sin() * 0.8)
        .collect();
    Ok(Tensor::from_vec(v, (out, inp), &Device::Cpu)?)
}
