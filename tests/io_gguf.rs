//! GGUF export: Q8_0 and Q4_0 tensors written by us, read back with candle's own reader,
//! dequantize to exactly our values.

use candle_compress::io::gguf::{save_gguf, GgufTensor, GgufType};
use candle_compress::scheme::Scheme;
use candle_compress::{Compressed, Compressor, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

mod common;

use common::compare::bits;

#[test]
fn q8_0_and_q4_0_read_back_with_candle_equal_ours() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("model.gguf");
    let w1 = Tensor::randn(0f32, 1., (48, 96), &Device::Cpu)?;
    let w2 = Tensor::randn(0f32, 2., (3, 4, 64), &Device::Cpu)?;
    let norm = Tensor::randn(0f32, 1., 96, &Device::Cpu)?;
    let q8 = "int8:32".parse::<Scheme>()?.compress(&w1)?;
    let q4 = "int4:32".parse::<Scheme>()?.compress(&w2)?;
    let tensors = vec![
        GgufTensor::from_compressed("blk.0.ffn_up.weight", &q8)?,
        GgufTensor::from_compressed("blk.0.ffn_down.weight", &q4)?,
        GgufTensor::float("output_norm.weight", &norm, GgufType::F32)?,
    ];
    let meta = vec![
        ("general.name".to_string(), Value::String("test".into())),
        ("general.file_type".to_string(), Value::U32(7)),
    ];
    save_gguf(&path, &meta, &tensors)?;

    let mut file = std::fs::File::open(&path)?;
    let content = Content::read(&mut file)?;
    assert_eq!(content.metadata["general.name"].to_string()?, "test");
    assert_eq!(content.tensor_infos.len(), 3);
    for (name, ours, dtype) in [
        ("blk.0.ffn_up.weight", &q8, GgmlDType::Q8_0),
        ("blk.0.ffn_down.weight", &q4, GgmlDType::Q4_0),
    ] {
        let qt = content.tensor(&mut file, name, &Device::Cpu)?;
        assert_eq!(qt.dtype(), dtype);
        assert_eq!(qt.shape().dims(), ours.shape().dims());
        let theirs = qt
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mine = ours
            .decompress(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(bits(&theirs), bits(&mine), "{name}");
    }
    let qt = content.tensor(&mut file, "output_norm.weight", &Device::Cpu)?;
    assert_eq!(
        qt.dequantize(&Device::Cpu)?.to_vec1::<f32>()?,
        norm.to_vec1::<f32>()?
    );
    // The tensor data starts aligned, and every tensor offset is a multiple of 32.
    assert_eq!(content.tensor_data_offset % 32, 0);
    assert!(content.tensor_infos.values().all(|i| i.offset % 32 == 0));
    Ok(())
}

#[test]
fn q8_0_bytes_equal_candles_own_quantizer() -> Result<()> {
    // Our int8:32 blocks are GGML's Q8_0 bytes: the exported tensor equals candle's QTensor.
    let w = Tensor::randn(0f32, 1., (8, 128), &Device::Cpu)?;
    let ours = GgufTensor::from_compressed("w", &"int8:32".parse::<Scheme>()?.compress(&w)?)?;
    let theirs = candle_core::quantized::QTensor::quantize(&w, GgmlDType::Q8_0)?;
    assert_eq!(ours.data(), &theirs.data()?[..]);
    Ok(())
}

#[test]
fn unsupported_schemes_and_shapes_are_refused() -> Result<()> {
    let w = Tensor::randn(0f32, 1., (4, 48), &Device::Cpu)?;
    // Blocks of 32 run across rows of 48: not representable in GGML.
    let c = "int8:32".parse::<Scheme>()?.compress(&w)?;
    assert!(GgufTensor::from_compressed("w", &c).is_err());
    let c = "int8:64".parse::<Scheme>()?.compress(&w)?;
    assert!(GgufTensor::from_compressed("w", &c).is_err());
    Ok(())
}
