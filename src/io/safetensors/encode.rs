//! Values into stored parts: the bytes of each part [`parts`](super::format::parts) lists,
//! for compressed tensors, quantized layers and plain tensors. Both writers encode here.

use candle_core::{DType, Tensor};
use half::f16;

use super::format::{parts, plain_st_dtype, LayerEntry, Layout, PartSpec, TensorEntry};
use crate::compressor::Compressed;
use crate::error::{Error, Result};
use crate::io::part::{f16_bytes, f32_bytes, i8_bytes, Part};
use crate::nn::{QuantLinear, QuantLinearParts};
use crate::scheme::CompressedTensor;

/// Named parts of one item, in layout order.
pub(crate) type NamedParts = Vec<(String, Part)>;

/// The manifest entry and stored parts of compressed tensor `name`.
///
/// # Errors
/// As [`parts`].
pub(crate) fn compressed(
    name: &str,
    value: &CompressedTensor,
) -> Result<(TensorEntry, NamedParts)> {
    let entry = TensorEntry {
        scheme: value.scheme(),
        shape: value.shape().dims().to_vec(),
        dtype: value.original_dtype(),
    };
    let specs = parts(name, Layout::Tensor(&entry))?;
    let parts = fill(specs, |suffix| compressed_bytes(value, suffix))?;
    Ok((entry, parts))
}

/// The manifest entry and stored parts of the layer at `prefix`.
///
/// # Errors
/// As [`parts`].
pub(crate) fn layer(prefix: &str, layer: &QuantLinear) -> Result<(LayerEntry, NamedParts)> {
    let p = layer.to_parts();
    let entry = LayerEntry {
        in_features: p.in_features,
        out_features: p.out_features,
        config: p.config,
        bias: p.bias.is_some(),
        smooth: p.smooth.is_some(),
    };
    let specs = parts(prefix, Layout::Layer(&entry))?;
    let parts = fill(specs, |suffix| layer_bytes(&p, suffix))?;
    Ok((entry, parts))
}

/// The stored part of a plain tensor (row-major, in its own dtype).
///
/// # Errors
/// [`Error::UnsupportedDType`] for dtypes the format has no plain layout for.
pub(crate) fn plain(tensor: &Tensor) -> Result<Part> {
    let dtype = plain_st_dtype(tensor.dtype())?;
    Ok(Part {
        dtype,
        shape: tensor.dims().to_vec(),
        data: tensor_bytes(tensor)?,
    })
}

/// Gives every spec its bytes, checking each has the length the layout says.
fn fill(
    specs: Vec<PartSpec>,
    mut bytes: impl FnMut(&str) -> Result<Vec<u8>>,
) -> Result<NamedParts> {
    specs
        .into_iter()
        .map(|spec| {
            let data = bytes(spec.suffix)?;
            let slot = spec.slot;
            if data.len() != slot.len {
                return Err(Error::metadata(
                    format!("{} bytes", slot.name),
                    slot.len,
                    data.len(),
                ));
            }
            let part = Part {
                dtype: slot.dtype,
                shape: slot.shape,
                data,
            };
            Ok((slot.name, part))
        })
        .collect()
}

fn no_such_part(suffix: &str, of: &str) -> Error {
    Error::Missing {
        what: "encoder for stored part",
        name: format!("{suffix} of {of}"),
    }
}

fn compressed_bytes(value: &CompressedTensor, suffix: &str) -> Result<Vec<u8>> {
    use CompressedTensor::{Affine, Int4, Int8, Nf4};
    Ok(match (value, suffix) {
        (Int8(t), "q") => i8_bytes(t.codes()),
        (Int8(t), "scales") => f16_bytes(t.scales()),
        (Int4(t), "packed") => t.packed().to_vec(),
        (Int4(t), "scales") => f16_bytes(t.scales()),
        (Affine(t), "codes") => t.codes().to_vec(),
        (Affine(t), "scales") => f32_bytes(t.scales()),
        (Affine(t), "zero_points") => f32_bytes(t.zero_points()),
        (Nf4(t), "packed") => t.packed().to_vec(),
        (Nf4(t), "absmax") => f32_bytes(t.absmax()),
        _ => return Err(no_such_part(suffix, &value.scheme().to_string())),
    })
}

fn layer_bytes(p: &QuantLinearParts, suffix: &str) -> Result<Vec<u8>> {
    let optional = |v: &Option<Vec<f32>>| {
        v.as_deref()
            .map(f32_bytes)
            .ok_or_else(|| no_such_part(suffix, "this layer"))
    };
    match suffix {
        "weight" if p.config.weights().int4_group().is_some() => {
            Ok(pack_int4_rows(&p.weights, p.in_features))
        }
        "weight" => Ok(i8_bytes(&p.weights)),
        "weight_scale" => Ok(f32_bytes(&p.scales)),
        "weight_offset" => optional(&p.offsets),
        "bias" => optional(&p.bias),
        "smooth" => optional(&p.smooth),
        other => Err(no_such_part(other, "a quantized layer")),
    }
}

/// Int4 codes `[-8, 7]` packed row by row as `q + 8`, column `2j` in the low nibble (a
/// row of odd length ends with a zero nibble).
fn pack_int4_rows(codes: &[i8], in_features: usize) -> Vec<u8> {
    let row_bytes = in_features.div_ceil(2);
    let mut packed = Vec::with_capacity(codes.len().div_ceil(in_features.max(1)) * row_bytes);
    for row in codes.chunks(in_features.max(1)) {
        packed.extend(row.chunks(2).map(|pair| {
            let lo = (pair[0] + 8) as u8;
            let hi = pair.get(1).map_or(0, |&h| (h + 8) as u8);
            lo | (hi << 4)
        }));
    }
    packed
}

/// Little-endian bytes of a tensor in its own dtype, row-major.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    fn le<T: candle_core::WithDType, const N: usize>(
        t: &Tensor,
        to_le: fn(T) -> [u8; N],
    ) -> Result<Vec<u8>> {
        Ok(t.to_vec1::<T>()?.into_iter().flat_map(to_le).collect())
    }
    let t = t.flatten_all()?;
    match t.dtype() {
        DType::U8 => Ok(t.to_vec1::<u8>()?),
        DType::U32 => le(&t, u32::to_le_bytes),
        DType::I64 => le(&t, i64::to_le_bytes),
        DType::F16 => le(&t, f16::to_le_bytes),
        DType::BF16 => le(&t, half::bf16::to_le_bytes),
        DType::F32 => le(&t, f32::to_le_bytes),
        DType::F64 => le(&t, f64::to_le_bytes),
        other => Err(Error::UnsupportedDType {
            op: "CompressedWriter::add_plain",
            expected: "U8, U32, I64, F16, BF16, F32 or F64",
            found: other,
        }),
    }
}
