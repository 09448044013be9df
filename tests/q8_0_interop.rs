//! `BlockwiseInt8::new(32)` is GGML Q8_0: same bytes as candle's `QTensor::quantize(..,
//! GgmlDType::Q8_0)` and the same dequantized values, on random data of many magnitudes.

use candle_compress::quant::BlockwiseInt8;
use candle_compress::{Compressed, Compressor};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};

mod common;

use common::rng::SplitMix64;

/// Random data: each block of 32 gets its own magnitude (1e-6 .. 1e4), some blocks are all
/// zero, some hold a single outlier, some are a regular ramp.
fn random_data(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(n);
    for b in 0..n / 32 {
        let mag = 10f32.powf(rng.f32() * 5.0 - 1.0);
        for j in 0..32 {
            let v = match b % 7 {
                0 => 0.0,
                1 if j == 5 => 100.0 * mag,
                2 => (j as f32 - 16.0) * 0.5, // a regular ramp, amax 8
                _ => rng.f32() * mag,
            };
            x.push(v);
        }
    }
    x
}

#[test]
fn blockwise_int8_32_is_q8_0_byte_for_byte() -> candle_compress::Result<()> {
    let dev = Device::Cpu;
    let mut rng = SplitMix64(0x5EED_0008);
    for (rows, cols) in [(1usize, 32usize), (7, 64), (64, 256), (3, 4096)] {
        let x = random_data(&mut rng, rows * cols);
        let t = Tensor::from_vec(x, (rows, cols), &dev)?;

        let q = QTensor::quantize(&t, GgmlDType::Q8_0)?;
        let ours = BlockwiseInt8::new(32)?.compress(&t)?;

        let theirs = q.data()?;
        let mine = ours.to_ggml_q8_0_bytes()?;
        assert_eq!(mine.len(), theirs.len(), "{rows}x{cols}: byte count");
        if let Some(i) = mine.iter().zip(theirs.iter()).position(|(a, b)| a != b) {
            panic!(
                "{rows}x{cols}: first differing byte {i} (block {}, offset {}): ours {} candle {}",
                i / 34,
                i % 34,
                mine[i],
                theirs[i]
            );
        }

        let candle_back = q.dequantize(&dev)?.flatten_all()?.to_vec1::<f32>()?;
        let our_back = ours.decompress(&dev)?;
        assert_eq!(our_back.dims(), &[rows, cols]);
        assert_eq!(our_back.dtype(), DType::F32);
        let our_back = our_back.flatten_all()?.to_vec1::<f32>()?;
        let same_bits = candle_back
            .iter()
            .zip(&our_back)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same_bits, "{rows}x{cols}: dequantized values differ");
    }
    Ok(())
}

#[test]
fn blockwise_int8_32_matches_q8_0_on_randn_and_half_inputs() -> candle_compress::Result<()> {
    let dev = Device::Cpu;
    // candle quantizes in f32: an F16 input is converted first, as ours is.
    let t = Tensor::randn(0f32, 0.02, (32, 128), &dev)?.to_dtype(DType::F16)?;
    let q = QTensor::quantize(&t, GgmlDType::Q8_0)?;
    let ours = BlockwiseInt8::new(32)?.compress(&t)?;
    assert_eq!(ours.to_ggml_q8_0_bytes()?, q.data()?.into_owned());
    // Q8_0's 34 bytes per 32 values, plus our shape/dtype header and scheme tag.
    assert_eq!(
        ours.size_bytes(),
        q.storage_size_in_bytes() + (2 * 8 + 1) + 5
    );
    Ok(())
}
