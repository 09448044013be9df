//! Blockwise absmax int8 quantization (GGML Q8_0's formula, any block size).
//!
//! Safe entry points that check slice lengths and run the kernel for this process's ISA
//! ([`active_isa`](crate::kernels::active_isa), detected once and cached). `scalar.rs` is
//! the definition of correct; every SIMD version produces the same bits (q bytes, scale
//! bits, dequantized f32 bits) and is tested against it.
//!
//! Per block of `block` values (the last block may be shorter):
//!
//! ```text
//! amax = max |x|            d  = amax / 127   (f32)
//! id   = 1 / d  (0 if d==0)  q  = round_half_away_from_zero(x * id) as i8
//! scale = f16::from_f32(d)   x' = q as f32 * f32::from(scale)
//! ```
//!
//! With `block == 32` the `q` bytes and f16 scales are exactly candle's
//! `GgmlDType::Q8_0` blocks (`BlockQ8_0::from_float` / `to_float`).
#![warn(clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

use half::f16;

mod scalar;

/// Quantizes `x` to int8 in blocks of `block` values with one f16 scale per block.
///
/// Preconditions (checked with `assert!`; callers validate user input first):
/// `block >= 1`, `q.len() == x.len()`, `scales.len() == x.len().div_ceil(block)`.
/// The last block may be shorter than `block`.
///
/// Per block: `amax = max|x|`; `d = amax / 127` (f32); `id = 1/d` (`0` when `d == 0`);
/// `q = round_half_away_from_zero(x * id) as i8`; `scales[b] = f16::from_f32(d)` — GGML
/// Q8_0's formula, bit-exact with candle's `BlockQ8_0::from_float` for `block == 32`.
///
/// # Errors
/// `Err(i)` with `i` the flat index of the first NaN or ±Inf in `x`; the contents of `q`
/// and `scales` are then unspecified.
///
/// ```
/// use candle_compress::kernels::blockwise::{dequantize_i8_blocks, quantize_i8_blocks};
/// use half::f16;
/// let x = [1.0f32, -0.5, 0.25, 2.0, 0.0];
/// let (mut q, mut s) = ([0i8; 5], [f16::ZERO; 2]);
/// quantize_i8_blocks(&x, 4, &mut q, &mut s).unwrap();
/// assert_eq!(q, [64, -32, 16, 127, 0]); // block 0: d = 2/127; block 1 is all zero
/// let mut back = [0f32; 5];
/// dequantize_i8_blocks(&q, &s, 4, &mut back);
/// assert!((back[3] - 2.0).abs() < 1e-3);
/// assert_eq!(quantize_i8_blocks(&[0.0, f32::NAN], 4, &mut q[..2], &mut s[..1]), Err(1));
/// ```
pub fn quantize_i8_blocks(
    x: &[f32],
    block: usize,
    q: &mut [i8],
    scales: &mut [f16],
) -> Result<(), usize> {
    check_lengths(x.len(), block, q.len(), scales.len());
    scalar::quantize_i8_blocks(x, block, q, scales)
}

/// Dequantizes int8 blocks: `out[i] = q[i] as f32 * f32::from(scales[i / block])`.
///
/// Preconditions (checked with `assert!`): `block >= 1`, `out.len() == q.len()`,
/// `scales.len() == q.len().div_ceil(block)`.
pub fn dequantize_i8_blocks(q: &[i8], scales: &[f16], block: usize, out: &mut [f32]) {
    check_lengths(q.len(), block, out.len(), scales.len());
    scalar::dequantize_i8_blocks(q, scales, block, out)
}

#[track_caller]
fn check_lengths(n: usize, block: usize, other: usize, scales: usize) {
    assert!(block >= 1, "blockwise int8: block size must be >= 1");
    assert_eq!(
        other, n,
        "blockwise int8: value and code slices differ in length"
    );
    assert_eq!(
        scales,
        n.div_ceil(block),
        "blockwise int8: expected one scale per block of {block} over {n} values"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// candle's `BlockQ8_0::from_float`, transcribed, generalised to any block size.
    fn reference(x: &[f32], block: usize) -> (Vec<i8>, Vec<f16>) {
        let mut q = Vec::new();
        let mut s = Vec::new();
        for xs in x.chunks(block) {
            let mut amax = 0f32;
            for &v in xs {
                amax = amax.max(v.abs())
            }
            let d = amax / ((1 << 7) - 1) as f32;
            let id = if d != 0f32 { 1. / d } else { 0. };
            s.push(f16::from_f32(d));
            q.extend(xs.iter().map(|&v| f32::round(v * id) as i8));
        }
        (q, s)
    }

    fn quantize(x: &[f32], block: usize) -> Result<(Vec<i8>, Vec<f16>), usize> {
        let mut q = vec![0i8; x.len()];
        let mut s = vec![f16::ZERO; x.len().div_ceil(block)];
        quantize_i8_blocks(x, block, &mut q, &mut s)?;
        Ok((q, s))
    }

    /// Deterministic values in roughly [-scale, scale] (xorshift; no extra dependency).
    fn pseudo_random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    #[test]
    fn matches_candle_formula_for_all_block_sizes() {
        for &block in &[1usize, 3, 7, 8, 16, 31, 32, 33, 64, 65, 256] {
            for n in [0usize, 1, 2, 31, 32, 33, 100, 513] {
                let x = pseudo_random(n, (block * 1000 + n) as u64, 3.0);
                assert_eq!(
                    quantize(&x, block),
                    Ok(reference(&x, block)),
                    "block {block} n {n}"
                );
            }
        }
    }

    #[test]
    fn block_32_gives_candle_q8_0_bytes() -> candle_core::Result<()> {
        use candle_core::quantized::{GgmlDType, QTensor};
        use candle_core::{Device, Tensor};
        let mut x = pseudo_random(32 * 40, 11, 4.0);
        x[32..64].iter_mut().for_each(|v| *v = 0.0);
        x[64] = 127.0 * 0.5; // ties at .5 boundaries
        let t = Tensor::from_vec(x.clone(), x.len(), &Device::Cpu)?;
        let qt = QTensor::quantize(&t, GgmlDType::Q8_0)?;
        let (q, s) = quantize(&x, 32).unwrap();
        let mut ours = Vec::new();
        for (qb, d) in q.chunks(32).zip(&s) {
            ours.extend_from_slice(&d.to_le_bytes());
            ours.extend(qb.iter().map(|&v| v as u8));
        }
        assert_eq!(&*qt.data()?, &ours[..]);
        let theirs = qt.dequantize(&Device::Cpu)?.to_vec1::<f32>()?;
        let mut back = vec![0f32; x.len()];
        dequantize_i8_blocks(&q, &s, 32, &mut back);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&theirs));
        Ok(())
    }

    #[test]
    fn ties_round_half_away_from_zero() {
        // amax 127 -> d = 1, id = 1: q = round(x) exactly.
        let x = [
            127.0f32, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 0.49999997,
        ];
        let (q, s) = quantize(&x, x.len()).unwrap();
        assert_eq!(q, [127, 1, -1, 2, -2, 3, -3, 127, -127, 0]);
        assert_eq!(s[0], f16::ONE);
    }

    #[test]
    fn zero_blocks_and_tiny_scales() {
        let (q, s) = quantize(&[0.0, -0.0, 0.0, 5.0], 3).unwrap();
        assert_eq!(q, [0, 0, 0, 127]);
        assert_eq!(s[0].to_bits(), 0);
        // Subnormal amax: d underflows or 1/d overflows; still candle's bits.
        for amax in [1e-45f32, 1e-40, 3e-39, 1.2e-38, 1e-30] {
            let x = [amax, -amax, amax / 2.0, 0.0, -amax * 0.7];
            assert_eq!(quantize(&x, 5), Ok(reference(&x, 5)), "amax {amax:e}");
        }
        // Huge values near and beyond f16's range.
        let x = [f32::MAX, -f32::MAX / 3.0, 65504.0 * 127.0, 1.0];
        assert_eq!(quantize(&x, 2), Ok(reference(&x, 2)));
    }

    #[test]
    fn first_non_finite_index_is_reported() {
        for (pos, bad) in [
            (0usize, f32::NAN),
            (5, f32::INFINITY),
            (9, f32::NEG_INFINITY),
        ] {
            let mut x = pseudo_random(12, 7, 1.0);
            x[pos] = bad;
            x[11] = f32::NAN;
            for block in [1, 4, 32] {
                assert_eq!(quantize(&x, block), Err(pos), "pos {pos} block {block}");
            }
        }
    }

    #[test]
    fn dequantize_multiplies_by_f16_scale() {
        let x = pseudo_random(200, 3, 10.0);
        for block in [1usize, 7, 32, 64, 256] {
            let (q, s) = quantize(&x, block).unwrap();
            let mut out = vec![f32::NAN; x.len()];
            dequantize_i8_blocks(&q, &s, block, &mut out);
            for (i, (&o, &v)) in out.iter().zip(&q).enumerate() {
                assert_eq!(o.to_bits(), (v as f32 * s[i / block].to_f32()).to_bits());
            }
        }
    }

    #[test]
    #[should_panic(expected = "one scale per block")]
    fn wrong_scale_count_panics() {
        quantize_i8_blocks(&[1.0; 5], 2, &mut [0; 5], &mut [f16::ZERO; 2]).unwrap();
    }
}
