//! The `candle-compress` layout in one place: the metadata names, the validated manifest
//! entries, the dtype names, and [`parts`] — the one list of the stored tensors each kind
//! of item is made of, which the writers, the reader's checks and the streaming planner
//! all use (the specification is in the [module docs](crate::io::safetensors)).

use candle_core::DType;
use safetensors::tensor::Dtype;

use crate::error::{Error, Result};
use crate::io::part_writer::Slot;
use crate::nn::{QuantConfig, WeightQuant};
use crate::quant::checked_elem_count;
use crate::scheme::Scheme;

/// The value of the `format` metadata key.
pub const FORMAT_NAME: &str = "candle-compress";
/// The layout version this build writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 1;
/// Metadata key naming the format.
pub const KEY_FORMAT: &str = "format";
/// Metadata key holding the format version (a decimal string).
pub const KEY_VERSION: &str = "format_version";
/// Metadata key holding the compressed-tensor manifest (JSON).
pub const KEY_TENSORS: &str = "candle_compress.tensors";
/// Metadata key holding the quantized-layer manifest (JSON).
pub const KEY_LAYERS: &str = "candle_compress.layers";

/// The metadata keys the format reserves for itself.
pub(crate) const RESERVED_KEYS: [&str; 4] = [KEY_FORMAT, KEY_VERSION, KEY_TENSORS, KEY_LAYERS];

/// Refuses the metadata keys the format reserves for itself.
///
/// # Errors
/// [`Error::InvalidArgument`] for [`KEY_FORMAT`], [`KEY_VERSION`], [`KEY_TENSORS`] and
/// [`KEY_LAYERS`].
pub(crate) fn check_free_key(key: &str) -> Result<()> {
    if RESERVED_KEYS.contains(&key) {
        return Err(Error::invalid(
            "metadata key",
            format!("{key} is reserved by the candle-compress format"),
        ));
    }
    Ok(())
}

/// A validated compressed-tensor manifest entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// The scheme and its block or group size.
    pub scheme: Scheme,
    /// Original shape.
    pub shape: Vec<usize>,
    /// Original dtype.
    pub dtype: DType,
}

/// A validated quantized-layer manifest entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerEntry {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// The layer's quantization config.
    pub config: QuantConfig,
    /// Whether `prefix.bias` is stored.
    pub bias: bool,
    /// Whether `prefix.smooth` is stored.
    pub smooth: bool,
}

/// What one item of a file is, borrowed: the input of [`parts`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Layout<'a> {
    /// A compressed tensor.
    Tensor(&'a TensorEntry),
    /// A quantized linear layer.
    Layer(&'a LayerEntry),
    /// An uncompressed tensor: one part, named like the item.
    Plain { dtype: Dtype, shape: &'a [usize] },
}

/// One stored tensor of an item: its suffix (`""` for a plain tensor) and header slot
/// (full name `item.suffix`, dtype, shape, byte length).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PartSpec {
    pub suffix: &'static str,
    pub slot: Slot,
}

/// The stored tensors of item `name`, in the order the format lays them out: dtype and
/// shape exactly as the module docs' tables give them.
///
/// # Errors
/// [`Error::Corrupt`] when a size overflows `usize` (shapes come from files and plans);
/// [`Error::InvalidArgument`] for a zero block size or an invalid layer config;
/// [`Error::UnsupportedDType`] for a compressed tensor whose original dtype the manifest
/// cannot name (not F32, F16, BF16 or F64).
pub(crate) fn parts(name: &str, layout: Layout<'_>) -> Result<Vec<PartSpec>> {
    let shaped = match layout {
        Layout::Tensor(e) => tensor_parts(name, e)?,
        Layout::Layer(l) => layer_parts(name, l)?,
        Layout::Plain { dtype, shape } => vec![("", dtype, shape.to_vec())],
    };
    shaped
        .into_iter()
        .map(|(suffix, dtype, shape)| {
            let full = if suffix.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{suffix}")
            };
            let len = byte_len(&full, dtype, &shape)?;
            Ok(PartSpec {
                suffix,
                slot: Slot {
                    name: full,
                    dtype,
                    shape,
                    len,
                },
            })
        })
        .collect()
}

/// Bytes of a tensor of `dtype` and `shape` (sub-byte dtypes rounded up), checked.
fn byte_len(name: &str, dtype: Dtype, shape: &[usize]) -> Result<usize> {
    let bits = checked_elem_count(shape, name)?
        .checked_mul(dtype.bitsize())
        .ok_or_else(|| Error::Corrupt {
            what: name.to_string(),
            reason: "size overflows".into(),
        })?;
    Ok(bits.div_ceil(8))
}

type Shaped = Vec<(&'static str, Dtype, Vec<usize>)>;

/// A compressed tensor's parts: int8 codes keep the tensor's shape, the rest are flat.
fn tensor_parts(name: &str, e: &TensorEntry) -> Result<Shaped> {
    dtype_name(e.dtype)?;
    let n = checked_elem_count(&e.shape, name)?;
    // A `Scheme` built directly may hold a zero size; the layout is then undefined.
    let block = e.scheme.block_size();
    if block == 0 {
        return Err(Error::invalid(
            "block size",
            format!("{name}: must be at least 1"),
        ));
    }
    let blocks = vec![n.div_ceil(block)];
    let nibbles = vec![n.div_ceil(2)];
    Ok(match e.scheme {
        Scheme::Int8 { .. } => vec![
            ("q", Dtype::I8, e.shape.clone()),
            ("scales", Dtype::F16, blocks),
        ],
        Scheme::Int4 { .. } => vec![
            ("packed", Dtype::U8, nibbles),
            ("scales", Dtype::F16, blocks),
        ],
        Scheme::Affine8 { .. } | Scheme::Affine4 { .. } => {
            let codes = if e.scheme.code_bits() == 4 {
                nibbles
            } else {
                vec![n]
            };
            vec![
                ("codes", Dtype::U8, codes),
                ("scales", Dtype::F32, blocks.clone()),
                ("zero_points", Dtype::F32, blocks),
            ]
        }
        Scheme::Nf4 { .. } => vec![
            ("packed", Dtype::U8, nibbles),
            ("absmax", Dtype::F32, blocks),
        ],
    })
}

/// A quantized layer's parts: int8 weights `[out, in]`, int4 rows packed on their own
/// `[out, ceil(in/2)]` with `[out, ceil(in/group)]` scales (and offsets), then the
/// optional bias and smoothing vector.
fn layer_parts(name: &str, l: &LayerEntry) -> Result<Shaped> {
    let (out, inp) = (l.out_features, l.in_features);
    checked_elem_count(&[out, inp], name)?;
    // A deserialized config is unvalidated: a zero group would have no layout.
    l.config.validate()?;
    let mut parts = match l.config.weights() {
        WeightQuant::Int8PerChannel => vec![
            ("weight", Dtype::I8, vec![out, inp]),
            ("weight_scale", Dtype::F32, vec![out]),
        ],
        WeightQuant::Int4Grouped { group } | WeightQuant::Int4GroupedAsym { group } => {
            let groups = vec![out, inp.div_ceil(group)];
            let mut p = vec![
                ("weight", Dtype::U8, vec![out, inp.div_ceil(2)]),
                ("weight_scale", Dtype::F32, groups.clone()),
            ];
            if l.config.weights().has_offsets() {
                p.push(("weight_offset", Dtype::F32, groups));
            }
            p
        }
    };
    if l.bias {
        parts.push(("bias", Dtype::F32, vec![out]));
    }
    if l.smooth {
        parts.push(("smooth", Dtype::F32, vec![inp]));
    }
    Ok(parts)
}

/// The name of an original dtype in the manifest.
///
/// # Errors
/// [`Error::UnsupportedDType`] for dtypes other than F32, F16, BF16 and F64.
pub(crate) fn dtype_name(d: DType) -> Result<&'static str> {
    Ok(match d {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        other => {
            return Err(Error::UnsupportedDType {
                op: "CompressedWriter",
                expected: crate::input::FLOAT_DTYPES,
                found: other,
            })
        }
    })
}

/// The original dtype named `s` in the manifest entry `what`.
///
/// # Errors
/// [`Error::Corrupt`] for a name other than F32, F16, BF16 and F64.
pub(crate) fn dtype_from_name(s: &str, what: &str) -> Result<DType> {
    Ok(match s {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        other => {
            return Err(Error::Corrupt {
                what: format!("manifest entry {what}"),
                reason: format!("original dtype {other:?} is not F32, F16, BF16 or F64"),
            })
        }
    })
}

/// The safetensors dtype of an uncompressed candle tensor.
///
/// # Errors
/// [`Error::UnsupportedDType`] for dtypes other than U8, U32, I64, F16, BF16, F32, F64.
pub(crate) fn plain_st_dtype(d: DType) -> Result<Dtype> {
    Ok(match d {
        DType::U8 => Dtype::U8,
        DType::U32 => Dtype::U32,
        DType::I64 => Dtype::I64,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
        DType::F64 => Dtype::F64,
        other => {
            return Err(Error::UnsupportedDType {
                op: "CompressedWriter::add_plain",
                expected: "U8, U32, I64, F16, BF16, F32 or F64",
                found: other,
            })
        }
    })
}

/// The candle dtype of stored plain tensor `name`.
///
/// # Errors
/// [`Error::Unsupported`] for safetensors dtypes other than U8, U32, I64, F16, BF16, F32
/// and F64.
pub(crate) fn plain_candle_dtype(d: Dtype, name: &str) -> Result<DType> {
    Ok(match d {
        Dtype::U8 => DType::U8,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::I64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        other => {
            return Err(Error::Unsupported {
                what: "plain tensor dtype",
                found: format!("{other:?} (tensor {name})"),
                supported: "U8, U32, I64, F16, BF16, F32, F64".into(),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(name: &str, layout: Layout<'_>) -> Vec<(String, Dtype, Vec<usize>, usize)> {
        parts(name, layout)
            .unwrap()
            .into_iter()
            .map(|p| (p.slot.name, p.slot.dtype, p.slot.shape, p.slot.len))
            .collect()
    }

    #[test]
    fn parts_follow_the_documented_tables() -> Result<()> {
        let e = TensorEntry {
            scheme: "affine4:32".parse()?,
            shape: vec![3, 11],
            dtype: DType::BF16,
        };
        assert_eq!(
            shapes("t", Layout::Tensor(&e)),
            vec![
                ("t.codes".into(), Dtype::U8, vec![17], 17),
                ("t.scales".into(), Dtype::F32, vec![2], 8),
                ("t.zero_points".into(), Dtype::F32, vec![2], 8),
            ]
        );
        let l = LayerEntry {
            in_features: 65,
            out_features: 3,
            config: QuantConfig::w4a8_asym(32)?,
            bias: true,
            smooth: true,
        };
        assert_eq!(
            shapes("fc", Layout::Layer(&l)),
            vec![
                ("fc.weight".into(), Dtype::U8, vec![3, 33], 99),
                ("fc.weight_scale".into(), Dtype::F32, vec![3, 3], 36),
                ("fc.weight_offset".into(), Dtype::F32, vec![3, 3], 36),
                ("fc.bias".into(), Dtype::F32, vec![3], 12),
                ("fc.smooth".into(), Dtype::F32, vec![65], 260),
            ]
        );
        let plain = [5usize];
        assert_eq!(
            shapes(
                "p",
                Layout::Plain {
                    dtype: Dtype::I16,
                    shape: &plain
                }
            ),
            vec![("p".into(), Dtype::I16, vec![5], 10)]
        );
        Ok(())
    }

    #[test]
    fn overflowing_sizes_are_errors() -> Result<()> {
        let e = TensorEntry {
            scheme: "int8:32".parse()?,
            shape: vec![usize::MAX, 2],
            dtype: DType::F32,
        };
        assert!(matches!(
            parts("t", Layout::Tensor(&e)),
            Err(Error::Corrupt { .. })
        ));
        let huge = [usize::MAX / 2];
        let plain = Layout::Plain {
            dtype: Dtype::F32,
            shape: &huge,
        };
        assert!(matches!(parts("p", plain), Err(Error::Corrupt { .. })));
        Ok(())
    }
}
