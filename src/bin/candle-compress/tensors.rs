//! Dtype mapping between safetensors and candle, and reading one tensor of a file in
//! its own dtype: the vocabulary shared by the commands that load tensors.

use candle_compress::io::reader::SafetensorsReader;
use candle_compress::{Error, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Dtype;

/// Whether `d` is one of the float dtypes the commands compress.
pub(crate) fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// The candle dtype of a float safetensors dtype (F32 for anything else).
pub(crate) fn candle_float(d: Dtype) -> DType {
    match d {
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        _ => DType::F32,
    }
}

/// Reads a tensor in its own dtype; F32 goes straight into one f32 buffer.
pub(crate) fn read_tensor(reader: &SafetensorsReader, name: &str, dtype: Dtype) -> Result<Tensor> {
    if dtype == Dtype::F32 {
        let (shape, values) = reader.read_f32(name)?;
        return Ok(Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    let candle = candle_dtype(dtype).ok_or_else(|| Error::Unsupported {
        what: "tensor dtype",
        found: format!("{dtype:?}"),
        supported: "F32, F16, BF16, F64, U8, U32, I64".into(),
    })?;
    let raw = reader.read(name)?;
    Ok(Tensor::from_raw_buffer(
        &raw.data,
        candle,
        &raw.shape,
        &Device::Cpu,
    )?)
}

/// The candle dtype of a safetensors dtype, where candle has one.
pub(crate) fn candle_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F64 => DType::F64,
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::I64,
        _ => return None,
    })
}

/// The safetensors dtype of a candle dtype this CLI reads.
pub(crate) fn safetensors_dtype(d: DType) -> Dtype {
    match d {
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        DType::U8 => Dtype::U8,
        DType::U32 => Dtype::U32,
        DType::I64 => Dtype::I64,
        _ => Dtype::F32,
    }
}
