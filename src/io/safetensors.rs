//! Compressed tensors and quantized layers in `.safetensors` files that any safetensors
//! reader opens.
//!
//! candle 0.11 has no `I8` dtype and its safetensors loader refuses `I8` tensors, so files
//! are written and read with the `safetensors` crate directly. Every compressed tensor is
//! stored as a few ordinary tensors (its *parts*: int8 codes as `I8`, packed nibbles as
//! `U8`, scales and zero points as `F16`/`F32`) next to uncompressed tensors, and a JSON
//! manifest in the file's `__metadata__` says which scheme, shape and original dtype each
//! compressed tensor had. The layout is specified below so another implementation can read
//! it.
//!
//! # File layout (format `candle-compress`, version 1)
//!
//! `__metadata__` (a string → string map, as safetensors requires):
//!
//! | key | value |
//! |---|---|
//! | `format` | `"candle-compress"` |
//! | `format_version` | `"1"` |
//! | `candle_compress.tensors` | JSON object: compressed tensor name → entry (below) |
//! | `candle_compress.layers` | JSON object: layer prefix → layer entry (below) |
//!
//! A compressed tensor entry is `{"scheme": S, "shape": [..], "dtype": D}`: `S` is the
//! [`Scheme`] text form `<kind>:<size>` (block or group size, e.g. `"int8:64"`), `D` the
//! original dtype (`"F32"`, `"F16"`, `"BF16"` or `"F64"`), and `n` below the element
//! count of `shape`. Its parts are tensors named `<name>.<part>`:
//!
//! | kind | parts (dtype, shape) | element `i` decodes to |
//! |---|---|---|
//! | `int8` | `q` (I8, `shape`), `scales` (F16, `[ceil(n/size)]`) | `q[i] · scales[i / size]` |
//! | `int4` | `packed` (U8, `[ceil(n/2)]`), `scales` (F16, `[ceil(n/size)]`) | `(nib(i) − 8) · scales[i / size]` |
//! | `affine8` | `codes` (U8, `[n]`), `scales`, `zero_points` (F32, `[ceil(n/size)]`) | `zero_points[g] + codes[i] · scales[g]`, `g = i / size` |
//! | `affine4` | `codes` (U8, `[ceil(n/2)]`), `scales`, `zero_points` (F32, `[ceil(n/size)]`) | `zero_points[g] + nib(i) · scales[g]` |
//! | `nf4` | `packed` (U8, `[ceil(n/2)]`), `absmax` (F32, `[ceil(n/size)]`) | `NF4[nib(i)] · absmax[i / size]` |
//!
//! Blocks and groups run over the row-major flattened tensor. `nib(i)` is the low nibble
//! of byte `i / 2` for even `i`, the high nibble for odd `i` (a padding nibble is 0).
//! `NF4` is the QLoRA code book ([`crate::quant::nf4::NF4_CODE_BOOK`]).
//!
//! A quantized linear layer (a [`QuantLinear`]) under prefix `p` is stored as
//! `p.weight` — I8 `[out, in]` for int8 weights, or U8 `[out, ceil(in/2)]` for int4
//! (each row packed on its own, codes `q + 8`, column `2j` in the low nibble) —
//! `p.weight_scale` (F32, `[out]` for int8 per channel, `[out, ceil(in/group)]` for int4),
//! for asymmetric int4 also `p.weight_offset` (F32, `[out, ceil(in/group)]`: the code `c`
//! stands for `scale·c + offset`), and optionally `p.bias` (F32 `[out]`) and `p.smooth`
//! (F32 `[in]`, the SmoothQuant vector). Its layer entry is `{"in_features",
//! "out_features", "weights": "int8-per-channel" | "int4-grouped" | "int4-grouped-asym",
//! "group" (int4 only), "activations": "per-token" |
//! "per-tensor" | "static" | "none" (weight-only), "activation_scale" (static only),
//! "bias": bool, "smooth": bool}`.
//!
//! Every part must have exactly the dtype and shape listed here: a part whose shape
//! disagrees with its manifest entry (even with the right element count) is refused.
//!
//! Every other tensor of the file is an ordinary (uncompressed) tensor.
//!
//! ```
//! use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
//! use candle_compress::quant::SymmetricInt4;
//! use candle_compress::Compressor;
//! use candle_core::{Device, Tensor};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("model.safetensors");
//! let w = Tensor::randn(0f32, 1., (8, 64), &Device::Cpu)?;
//! let norm = Tensor::ones(8, candle_core::DType::F32, &Device::Cpu)?;
//!
//! let mut writer = CompressedWriter::new();
//! writer.add_compressed("w", &SymmetricInt4::new(32)?.compress(&w)?.into())?;
//! writer.add_plain("norm", &norm)?;
//! writer.write(&path)?;
//!
//! let file = CompressedFile::open(&path)?;
//! let w2 = file.load_tensor("w", &Device::Cpu)?; // decompressed on demand
//! assert_eq!(w2.dims(), &[8, 64]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor};
use half::f16;
use safetensors::tensor::{Dtype, View};
use serde_json::{json, Map, Value};

use super::reader::{RawTensor, SafetensorsReader};
use super::{bytes_to_f16, bytes_to_f32, bytes_to_i8};
use crate::compressor::Compressed;
use crate::error::{Error, Result};
use crate::nn::{ActivationQuant, QuantConfig, QuantLinear, QuantLinearParts, WeightQuant};
use crate::quant::{AffineTensor, BlockwiseInt8Tensor, Nf4Tensor, SymmetricInt4Tensor};
use crate::scheme::{CompressedTensor, Scheme};

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

// ---------------------------------------------------------------------------------------
// Parts: encoded tensors ready for the safetensors writer.

/// One encoded tensor: dtype, shape and little-endian bytes.
#[derive(Debug, Clone)]
struct Part {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Part {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn part_i8(shape: Vec<usize>, v: &[i8]) -> Part {
    Part {
        dtype: Dtype::I8,
        shape,
        data: v.iter().map(|&x| x as u8).collect(),
    }
}

fn part_u8(shape: Vec<usize>, v: &[u8]) -> Part {
    Part {
        dtype: Dtype::U8,
        shape,
        data: v.to_vec(),
    }
}

fn part_f16(v: &[f16]) -> Part {
    Part {
        dtype: Dtype::F16,
        shape: vec![v.len()],
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

fn part_f32(shape: Vec<usize>, v: &[f32]) -> Part {
    Part {
        dtype: Dtype::F32,
        shape,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// The name of a dtype in the manifest.
fn dtype_name(d: DType) -> Result<&'static str> {
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

fn dtype_from_name(s: &str, what: &str) -> Result<DType> {
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

/// Maps a candle dtype to the safetensors dtype of an uncompressed tensor.
fn st_dtype(d: DType) -> Result<Dtype> {
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

fn candle_dtype(d: Dtype, name: &str) -> Result<DType> {
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

/// The parts and manifest entry of one compressed tensor.
fn encode_compressed(value: &CompressedTensor) -> Result<(Value, Vec<(&'static str, Part)>)> {
    let shape = value.shape().dims().to_vec();
    let entry = tensor_json(value.scheme(), &shape, value.original_dtype())?;
    let parts = match value {
        CompressedTensor::Int8(t) => {
            vec![
                ("q", part_i8(shape.clone(), t.codes())),
                ("scales", part_f16(t.scales())),
            ]
        }
        CompressedTensor::Int4(t) => {
            vec![
                ("packed", part_u8(vec![t.packed().len()], t.packed())),
                ("scales", part_f16(t.scales())),
            ]
        }
        CompressedTensor::Affine(t) => {
            vec![
                ("codes", part_u8(vec![t.codes().len()], t.codes())),
                ("scales", part_f32(vec![t.scales().len()], t.scales())),
                (
                    "zero_points",
                    part_f32(vec![t.zero_points().len()], t.zero_points()),
                ),
            ]
        }
        CompressedTensor::Nf4(t) => {
            vec![
                ("packed", part_u8(vec![t.packed().len()], t.packed())),
                ("absmax", part_f32(vec![t.absmax().len()], t.absmax())),
            ]
        }
    };
    Ok((entry, parts))
}

/// The manifest entry of a quantized layer.
fn layer_json(l: &LayerEntry) -> Value {
    let mut entry = Map::new();
    entry.insert("in_features".into(), json!(l.in_features));
    entry.insert("out_features".into(), json!(l.out_features));
    match l.config.weights() {
        WeightQuant::Int8PerChannel => {
            entry.insert("weights".into(), json!("int8-per-channel"));
        }
        WeightQuant::Int4Grouped { group } => {
            entry.insert("weights".into(), json!("int4-grouped"));
            entry.insert("group".into(), json!(group));
        }
        WeightQuant::Int4GroupedAsym { group } => {
            entry.insert("weights".into(), json!("int4-grouped-asym"));
            entry.insert("group".into(), json!(group));
        }
    }
    match l.config.activations() {
        ActivationQuant::PerToken => {
            entry.insert("activations".into(), json!("per-token"));
        }
        ActivationQuant::PerTensor => {
            entry.insert("activations".into(), json!("per-tensor"));
        }
        ActivationQuant::Static { scale } => {
            entry.insert("activations".into(), json!("static"));
            entry.insert("activation_scale".into(), json!(scale));
        }
        ActivationQuant::Float => {
            entry.insert("activations".into(), json!("none"));
        }
    }
    entry.insert("bias".into(), json!(l.bias));
    entry.insert("smooth".into(), json!(l.smooth));
    Value::Object(entry)
}

/// The manifest entry of a compressed tensor.
fn tensor_json(scheme: Scheme, shape: &[usize], dtype: DType) -> Result<Value> {
    Ok(json!({"scheme": scheme.to_string(), "shape": shape, "dtype": dtype_name(dtype)?}))
}

fn encode_layer(layer: &QuantLinear) -> Result<(Value, Vec<(&'static str, Part)>)> {
    let p = layer.to_parts();
    let (out, inp) = (p.out_features, p.in_features);
    let entry = layer_json(&LayerEntry {
        in_features: inp,
        out_features: out,
        config: p.config,
        bias: p.bias.is_some(),
        smooth: p.smooth.is_some(),
    });
    let mut parts = Vec::new();
    match p.config.weights() {
        WeightQuant::Int8PerChannel => {
            parts.push(("weight", part_i8(vec![out, inp], &p.weights)));
            parts.push(("weight_scale", part_f32(vec![out], &p.scales)));
        }
        WeightQuant::Int4Grouped { group } | WeightQuant::Int4GroupedAsym { group } => {
            let row_bytes = inp.div_ceil(2);
            let mut packed = Vec::with_capacity(out * row_bytes);
            for row in p.weights.chunks(inp) {
                packed.extend(row.chunks(2).map(|pair| {
                    let lo = (pair[0] + 8) as u8;
                    let hi = pair.get(1).map_or(0, |&h| (h + 8) as u8);
                    lo | (hi << 4)
                }));
            }
            parts.push(("weight", part_u8(vec![out, row_bytes], &packed)));
            let groups = inp.div_ceil(group);
            parts.push(("weight_scale", part_f32(vec![out, groups], &p.scales)));
            if let Some(m) = &p.offsets {
                parts.push(("weight_offset", part_f32(vec![out, groups], m)));
            }
        }
    }
    if let Some(b) = &p.bias {
        parts.push(("bias", part_f32(vec![out], b)));
    }
    if let Some(s) = &p.smooth {
        parts.push(("smooth", part_f32(vec![inp], s)));
    }
    Ok((entry, parts))
}

// ---------------------------------------------------------------------------------------
// Writer.

/// Collects compressed tensors, quantized layers and plain tensors, encodes each as it is
/// added (so the caller may drop the original right away), and writes one `.safetensors`
/// file in the layout of the [module docs](self).
#[derive(Debug, Default)]
pub struct CompressedWriter {
    parts: BTreeMap<String, Part>,
    tensors: Map<String, Value>,
    layers: Map<String, Value>,
    extra: HashMap<String, String>,
}

impl CompressedWriter {
    /// An empty writer.
    ///
    /// ```
    /// let w = candle_compress::io::safetensors::CompressedWriter::new();
    /// assert_eq!(w.len(), 0);
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of stored safetensors tensors so far (parts and plain tensors).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("b", &candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu)?)?;
    /// assert_eq!(w.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// True when nothing was added.
    ///
    /// ```
    /// assert!(candle_compress::io::safetensors::CompressedWriter::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Bytes of tensor data added so far (what the file's data section will hold).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("b", &candle_core::Tensor::zeros(3, candle_core::DType::F32, &candle_core::Device::Cpu)?)?;
    /// assert_eq!(w.data_bytes(), 12);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn data_bytes(&self) -> usize {
        self.parts.values().map(|p| p.data.len()).sum()
    }

    fn insert_parts(&mut self, prefix: &str, parts: Vec<(&'static str, Part)>) -> Result<()> {
        for (suffix, _) in &parts {
            let full = format!("{prefix}.{suffix}");
            if self.parts.contains_key(&full) {
                return Err(Error::invalid(
                    "tensor name",
                    format!("{full} is already in the file"),
                ));
            }
        }
        for (suffix, part) in parts {
            self.parts.insert(format!("{prefix}.{suffix}"), part);
        }
        Ok(())
    }

    fn check_new_name(&self, name: &str) -> Result<()> {
        if name.is_empty() || name == "__metadata__" {
            return Err(Error::invalid(
                "tensor name",
                format!("{name:?} is not a valid tensor name"),
            ));
        }
        if self.parts.contains_key(name)
            || self.tensors.contains_key(name)
            || self.layers.contains_key(name)
        {
            return Err(Error::invalid(
                "tensor name",
                format!("{name} is already in the file"),
            ));
        }
        Ok(())
    }

    /// Adds a compressed tensor under `name` (its parts are stored as `name.<part>`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `name` or one of its part names is already used.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// use candle_compress::{quant::Nf4, Compressor};
    /// let t = candle_core::Tensor::randn(0f32, 1., 128, &candle_core::Device::Cpu)?;
    /// let mut w = CompressedWriter::new();
    /// w.add_compressed("t", &Nf4::new(64)?.compress(&t)?.into())?;
    /// assert_eq!(w.len(), 2); // t.packed, t.absmax
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_compressed(&mut self, name: &str, value: &CompressedTensor) -> Result<()> {
        self.check_new_name(name)?;
        let (entry, parts) = encode_compressed(value)?;
        self.insert_parts(name, parts)?;
        self.tensors.insert(name.to_string(), entry);
        Ok(())
    }

    /// Adds a [`QuantLinear`] under `prefix` (`prefix.weight`, `prefix.weight_scale`,
    /// optional `prefix.bias`, `prefix.smooth`), loadable with
    /// [`QuantLoader`](super::loader::QuantLoader).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a name is already used.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// let w = candle_core::Tensor::randn(0f32, 1., (4, 32), &candle_core::Device::Cpu)?;
    /// let layer = QuantLinear::new(&w, None, &QuantConfig::w8a8())?;
    /// let mut writer = CompressedWriter::new();
    /// writer.add_quant_linear("fc1", &layer)?;
    /// assert_eq!(writer.len(), 2); // fc1.weight, fc1.weight_scale
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_quant_linear(&mut self, prefix: &str, layer: &QuantLinear) -> Result<()> {
        self.check_new_name(prefix)?;
        let (entry, parts) = encode_layer(layer)?;
        self.insert_parts(prefix, parts)?;
        self.layers.insert(prefix.to_string(), entry);
        Ok(())
    }

    /// Adds an uncompressed tensor (dtype U8, U32, I64, F16, BF16, F32 or F64, any layout).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `name` is used; [`Error::UnsupportedDType`] for
    /// other dtypes.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let b = candle_core::Tensor::new(&[1f32, 2.], &candle_core::Device::Cpu)?;
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("bias", &b)?;
    /// assert!(w.add_plain("bias", &b).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_plain(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        self.check_new_name(name)?;
        let dtype = st_dtype(tensor.dtype())?;
        let data = tensor_bytes(tensor)?;
        self.parts.insert(
            name.to_string(),
            Part {
                dtype,
                shape: tensor.dims().to_vec(),
                data,
            },
        );
        Ok(())
    }

    /// Adds an uncompressed tensor given as raw little-endian bytes in any safetensors
    /// dtype (for passing tensors through unchanged, without a candle round trip).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `name` is used; [`Error::ShapeMismatch`] when
    /// `data.len()` is not `shape`'s element count × the dtype's size.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// use safetensors::tensor::Dtype;
    /// let mut w = CompressedWriter::new();
    /// w.add_raw("ids", Dtype::I8, &[3], vec![1, 2, 3])?;
    /// assert!(w.add_raw("x", Dtype::F32, &[2], vec![0; 7]).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_raw(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        data: Vec<u8>,
    ) -> Result<()> {
        self.check_new_name(name)?;
        let bits = crate::quant::checked_elem_count(shape, name)?
            .checked_mul(dtype.bitsize())
            .ok_or_else(|| Error::invalid("tensor shape", format!("{name}: size overflows")))?;
        if bits % 8 != 0 || bits / 8 != data.len() {
            return Err(Error::shape(
                format!("{name} bytes"),
                bits.div_ceil(8),
                data.len(),
            ));
        }
        self.parts.insert(
            name.to_string(),
            Part {
                dtype,
                shape: shape.to_vec(),
                data,
            },
        );
        Ok(())
    }

    /// Adds a free-form metadata entry (kept by every safetensors reader).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for the keys this format reserves ([`KEY_FORMAT`],
    /// [`KEY_VERSION`], [`KEY_TENSORS`], [`KEY_LAYERS`]).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let mut w = CompressedWriter::new();
    /// w.add_metadata("source", "demo")?;
    /// assert!(w.add_metadata("format", "x").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_metadata(&mut self, key: &str, value: &str) -> Result<()> {
        if [KEY_FORMAT, KEY_VERSION, KEY_TENSORS, KEY_LAYERS].contains(&key) {
            return Err(Error::invalid(
                "metadata key",
                format!("{key} is reserved by the candle-compress format"),
            ));
        }
        self.extra.insert(key.to_string(), value.to_string());
        Ok(())
    }

    fn metadata(&self) -> Result<HashMap<String, String>> {
        let mut m = self.extra.clone();
        m.insert(KEY_FORMAT.into(), FORMAT_NAME.into());
        m.insert(KEY_VERSION.into(), FORMAT_VERSION.to_string());
        m.insert(KEY_TENSORS.into(), serde_json::to_string(&self.tensors)?);
        m.insert(KEY_LAYERS.into(), serde_json::to_string(&self.layers)?);
        Ok(m)
    }

    /// Serializes the whole file to bytes.
    ///
    /// # Errors
    /// Errors from the `safetensors` crate (e.g. a header over its size limit).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let bytes = CompressedWriter::new().to_bytes()?;
    /// let st = safetensors::SafeTensors::deserialize(&bytes)?;
    /// assert!(st.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(safetensors::serialize(
            self.parts.iter().map(|(k, v)| (k.as_str(), v)),
            Some(self.metadata()?),
        )?)
    }

    /// Writes the file at `path`, streaming tensor data, through a temporary file in the
    /// same directory renamed into place (a failure never leaves a partial file at `path`).
    ///
    /// # Errors
    /// I/O errors and errors from the `safetensors` crate.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::CompressedWriter;
    /// let dir = tempfile::tempdir()?;
    /// CompressedWriter::new().write(dir.path().join("empty.safetensors"))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        super::write_safetensors(
            path.as_ref(),
            self.parts.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            self.metadata()?,
        )
    }
}

/// What one item of a [`StreamingWriter`] file will be, declared before any data is
/// written (the safetensors header, which comes first, needs every size).
#[derive(Debug, Clone, PartialEq)]
pub enum PlannedItem {
    /// A compressed tensor of this scheme, original shape and dtype.
    Compressed(TensorEntry),
    /// A quantized linear layer.
    QuantLinear(LayerEntry),
    /// An uncompressed tensor given as raw bytes.
    Raw {
        /// Its safetensors dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
    },
}

/// The stored shape of part `suffix` (of `count` elements) of a compressed tensor: the
/// tensor's own shape for int8 codes, flat otherwise.
fn tensor_part_shape(e: &TensorEntry, suffix: &str, count: usize) -> Vec<usize> {
    if suffix == "q" {
        e.shape.clone()
    } else {
        vec![count]
    }
}

/// The stored shape of part `suffix` of a quantized layer.
fn layer_part_shape(l: &LayerEntry, suffix: &str) -> Vec<usize> {
    let (out, inp) = (l.out_features, l.in_features);
    match (suffix, l.config.weights().int4_group()) {
        ("weight", Some(_)) => vec![out, inp.div_ceil(2)],
        ("weight", None) => vec![out, inp],
        ("weight_scale" | "weight_offset", Some(group)) => vec![out, inp.div_ceil(group)],
        ("smooth", _) => vec![inp],
        _ => vec![out],
    }
}

/// One planned safetensors tensor: full name, dtype, shape, byte length.
type PlannedPart = (String, Dtype, Vec<usize>, usize);

fn planned_parts(name: &str, item: &PlannedItem) -> Result<Vec<PlannedPart>> {
    let bytes = |d: Dtype, n: usize| n * d.bitsize() / 8;
    Ok(match item {
        PlannedItem::Compressed(e) => {
            let n = crate::quant::checked_elem_count(&e.shape, name)?;
            e.expected_parts(n)
                .into_iter()
                .map(|(suffix, d, count)| {
                    let shape = tensor_part_shape(e, suffix, count);
                    (format!("{name}.{suffix}"), d, shape, bytes(d, count))
                })
                .collect()
        }
        PlannedItem::QuantLinear(l) => layer_parts(l)
            .into_iter()
            .map(|(suffix, d, count)| {
                let shape = layer_part_shape(l, suffix);
                (format!("{name}.{suffix}"), d, shape, bytes(d, count))
            })
            .collect(),
        PlannedItem::Raw { dtype, shape } => {
            let n = crate::quant::checked_elem_count(shape, name)?;
            let bits = n
                .checked_mul(dtype.bitsize())
                .ok_or_else(|| Error::Corrupt {
                    what: name.to_string(),
                    reason: "size overflows".into(),
                })?;
            vec![(name.to_string(), *dtype, shape.clone(), bits.div_ceil(8))]
        }
    })
}

/// Writes a candle-compress file item by item without holding the output in memory:
/// the items are declared up front ([`PlannedItem`]), the header is written, then each
/// item's bytes are written as soon as the caller has them, in the declared order. Peak
/// memory is one item, whatever the file size. The file is a temporary sibling renamed
/// into place by [`StreamingWriter::finish`]; dropping the writer unfinished deletes it.
///
/// Items are laid out in the declared order, so multi-byte parts may start at offsets
/// that are not multiples of their size (readers of this crate copy values out).
///
/// ```
/// use candle_compress::io::safetensors::{CompressedFile, PlannedItem, StreamingWriter, TensorEntry};
/// use candle_compress::scheme::Scheme;
/// use candle_compress::Compressor;
/// use candle_core::{DType, Device, Tensor};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("s.safetensors");
/// let scheme: Scheme = "int8:32".parse()?;
/// let plan = vec![(
///     "w".to_string(),
///     PlannedItem::Compressed(TensorEntry { scheme, shape: vec![4, 32], dtype: DType::F32 }),
/// )];
/// let mut w = StreamingWriter::create(&path, plan, Default::default())?;
/// let t = Tensor::randn(0f32, 1., (4, 32), &Device::Cpu)?;
/// w.write_compressed("w", &scheme.compress(&t)?)?;
/// w.finish()?;
/// assert!(CompressedFile::open(&path)?.tensor_entry("w").is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct StreamingWriter {
    out: Option<std::io::BufWriter<std::fs::File>>,
    tmp: std::path::PathBuf,
    path: std::path::PathBuf,
    /// Declared items, in order: name and expected parts.
    items: Vec<(String, Value, Vec<PlannedPart>)>,
    next: usize,
    written: usize,
}

impl StreamingWriter {
    /// Declares the items (in write order), writes the header and returns the writer.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for duplicate names or reserved metadata keys; I/O
    /// errors creating the temporary file.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::StreamingWriter;
    /// let dir = tempfile::tempdir()?;
    /// let w = StreamingWriter::create(dir.path().join("e.safetensors"), vec![], Default::default())?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create(
        path: impl AsRef<Path>,
        plan: Vec<(String, PlannedItem)>,
        extra_metadata: HashMap<String, String>,
    ) -> Result<Self> {
        use std::io::Write;
        let path = path.as_ref().to_path_buf();
        let mut tensors = Map::new();
        let mut layers = Map::new();
        let mut infos = Vec::new();
        let mut items = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut offset = 0usize;
        for (name, item) in plan {
            let parts = planned_parts(&name, &item)?;
            let entry = match &item {
                PlannedItem::Compressed(e) => {
                    let v = tensor_json(e.scheme, &e.shape, e.dtype)?;
                    tensors.insert(name.clone(), v.clone());
                    v
                }
                PlannedItem::QuantLinear(l) => {
                    let v = layer_json(l);
                    layers.insert(name.clone(), v.clone());
                    v
                }
                PlannedItem::Raw { .. } => Value::Null,
            };
            for (full, dtype, shape, len) in &parts {
                if !seen.insert(full.clone()) {
                    return Err(Error::invalid(
                        "tensor name",
                        format!("{full} is planned twice"),
                    ));
                }
                infos.push((
                    full.clone(),
                    safetensors::tensor::TensorInfo {
                        dtype: *dtype,
                        shape: shape.clone(),
                        data_offsets: (offset, offset + len),
                    },
                ));
                offset += len;
            }
            items.push((name, entry, parts));
        }
        let mut metadata = extra_metadata;
        for key in [KEY_FORMAT, KEY_VERSION, KEY_TENSORS, KEY_LAYERS] {
            if metadata.contains_key(key) {
                return Err(Error::invalid(
                    "metadata key",
                    format!("{key} is reserved by the candle-compress format"),
                ));
            }
        }
        metadata.insert(KEY_FORMAT.into(), FORMAT_NAME.into());
        metadata.insert(KEY_VERSION.into(), FORMAT_VERSION.to_string());
        metadata.insert(KEY_TENSORS.into(), serde_json::to_string(&tensors)?);
        metadata.insert(KEY_LAYERS.into(), serde_json::to_string(&layers)?);
        let header = safetensors::tensor::Metadata::new(Some(metadata), infos)?;
        let mut header = serde_json::to_string(&header)?.into_bytes();
        header.resize(header.len().next_multiple_of(8), b' ');
        let tmp = super::temp_sibling(&path)?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut writer = Self {
            out: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path,
            items,
            next: 0,
            written: 0,
        };
        let out = writer
            .out
            .as_mut()
            .ok_or_else(|| Error::invalid("writer", "closed"))?;
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        Ok(writer)
    }

    /// Checks that `name` is the next declared item with this entry and these parts, then
    /// writes the parts' bytes.
    fn write_item(
        &mut self,
        name: &str,
        entry: &Value,
        parts: &[(&str, Dtype, &[usize], &[u8])],
    ) -> Result<()> {
        use std::io::Write;
        let Some((planned_name, planned_entry, planned)) = self.items.get(self.next) else {
            return Err(Error::invalid(
                "streamed item",
                format!("{name}: all declared items were already written"),
            ));
        };
        if planned_name != name || planned_entry != entry || planned.len() != parts.len() {
            return Err(Error::metadata(
                format!("streamed item {name}"),
                format!("{planned_name} {planned_entry}"),
                format!("{name} {entry}"),
            ));
        }
        for ((full, dtype, shape, len), (suffix, d, s, data)) in planned.iter().zip(parts) {
            let got = if suffix.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{suffix}")
            };
            if *full != got || dtype != d || shape.as_slice() != *s || *len != data.len() {
                return Err(Error::metadata(
                    format!("streamed part {got}"),
                    format!("{full} {dtype:?} {shape:?} {len} bytes"),
                    format!("{got} {d:?} {s:?} {} bytes", data.len()),
                ));
            }
        }
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| Error::invalid("writer", "closed"))?;
        for (_, _, _, data) in parts {
            out.write_all(data)?;
            self.written += data.len();
        }
        self.next += 1;
        Ok(())
    }

    /// Writes the next declared item, a compressed tensor.
    ///
    /// # Errors
    /// [`Error::MetadataMismatch`] when `name`, scheme, shape or dtype differ from the
    /// next declared item; I/O errors.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::StreamingWriter;
    /// use candle_compress::{scheme::Scheme, Compressor};
    /// let dir = tempfile::tempdir()?;
    /// let mut w = StreamingWriter::create(dir.path().join("e.safetensors"), vec![], Default::default())?;
    /// let t = candle_core::Tensor::zeros(8, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    /// assert!(w.write_compressed("t", &"nf4".parse::<Scheme>()?.compress(&t)?).is_err()); // not declared
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_compressed(&mut self, name: &str, value: &CompressedTensor) -> Result<()> {
        let (entry, parts) = encode_compressed(value)?;
        let views: Vec<_> = parts
            .iter()
            .map(|(s, p)| (*s, p.dtype, p.shape.as_slice(), p.data.as_slice()))
            .collect();
        self.write_item(name, &entry, &views)
    }

    /// Writes the next declared item, a quantized layer.
    ///
    /// # Errors
    /// As [`StreamingWriter::write_compressed`].
    ///
    /// ```
    /// # use candle_compress::io::safetensors::StreamingWriter;
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// let dir = tempfile::tempdir()?;
    /// let mut w = StreamingWriter::create(dir.path().join("e.safetensors"), vec![], Default::default())?;
    /// let weight = candle_core::Tensor::ones((2, 8), candle_core::DType::F32, &candle_core::Device::Cpu)?;
    /// assert!(w.write_quant_linear("fc", &QuantLinear::new(&weight, None, &QuantConfig::w8a8())?).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_quant_linear(&mut self, prefix: &str, layer: &QuantLinear) -> Result<()> {
        let (entry, parts) = encode_layer(layer)?;
        let views: Vec<_> = parts
            .iter()
            .map(|(s, p)| (*s, p.dtype, p.shape.as_slice(), p.data.as_slice()))
            .collect();
        self.write_item(prefix, &entry, &views)
    }

    /// Writes the next declared item, an uncompressed tensor's raw bytes.
    ///
    /// # Errors
    /// As [`StreamingWriter::write_compressed`] (here: name, dtype, shape and length).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{PlannedItem, StreamingWriter};
    /// use safetensors::tensor::Dtype;
    /// let dir = tempfile::tempdir()?;
    /// let plan = vec![("b".to_string(), PlannedItem::Raw { dtype: Dtype::U8, shape: vec![2] })];
    /// let mut w = StreamingWriter::create(dir.path().join("r.safetensors"), plan, Default::default())?;
    /// assert!(w.write_raw("b", Dtype::U8, &[2], &[1, 2, 3]).is_err()); // 3 bytes for 2
    /// w.write_raw("b", Dtype::U8, &[2], &[1, 2])?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_raw(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        data: &[u8],
    ) -> Result<()> {
        self.write_item(name, &Value::Null, &[("", dtype, shape, data)])
    }

    /// Writes the next declared item, an uncompressed candle tensor (declared as
    /// [`PlannedItem::Raw`] with its safetensors dtype and shape).
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for dtypes the format has no plain layout for; as
    /// [`StreamingWriter::write_raw`].
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{PlannedItem, StreamingWriter};
    /// use safetensors::tensor::Dtype;
    /// let dir = tempfile::tempdir()?;
    /// let plan = vec![("b".to_string(), PlannedItem::Raw { dtype: Dtype::F32, shape: vec![2] })];
    /// let mut w = StreamingWriter::create(dir.path().join("p.safetensors"), plan, Default::default())?;
    /// w.write_plain("b", &candle_core::Tensor::new(&[1f32, 2.], &candle_core::Device::Cpu)?)?;
    /// w.finish()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_plain(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        let dtype = st_dtype(tensor.dtype())?;
        self.write_raw(name, dtype, tensor.dims(), &tensor_bytes(tensor)?)
    }

    /// Bytes of tensor data written so far.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::StreamingWriter;
    /// let dir = tempfile::tempdir()?;
    /// let w = StreamingWriter::create(dir.path().join("e.safetensors"), vec![], Default::default())?;
    /// assert_eq!(w.data_bytes(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn data_bytes(&self) -> usize {
        self.written
    }

    /// Checks every declared item was written, syncs the file and renames it into place.
    ///
    /// # Errors
    /// [`Error::Missing`] naming the first item not written; I/O errors.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{PlannedItem, StreamingWriter};
    /// let dir = tempfile::tempdir()?;
    /// let plan = vec![("b".to_string(), PlannedItem::Raw { dtype: safetensors::tensor::Dtype::U8, shape: vec![1] })];
    /// let w = StreamingWriter::create(dir.path().join("r.safetensors"), plan, Default::default())?;
    /// assert!(w.finish().is_err());
    /// assert_eq!(std::fs::read_dir(dir.path())?.count(), 0); // nothing left behind
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn finish(mut self) -> Result<()> {
        if let Some((name, _, _)) = self.items.get(self.next) {
            return Err(Error::Missing {
                what: "streamed item (declared, never written)",
                name: name.clone(),
            });
        }
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::invalid("writer", "closed"))?;
        let result = (|| {
            let file = out.into_inner().map_err(|e| Error::Io(e.into_error()))?;
            file.sync_all()?;
            drop(file);
            std::fs::rename(&self.tmp, &self.path)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        result
    }
}

impl Drop for StreamingWriter {
    fn drop(&mut self) {
        // Unfinished (an error, or finish() not called): remove the temporary file.
        if self.out.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Little-endian bytes of a tensor in its own dtype, row-major.
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::U8 => t.to_vec1::<u8>()?,
        DType::U32 => t
            .to_vec1::<u32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::I64 => t
            .to_vec1::<i64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F32 => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => {
            return Err(Error::UnsupportedDType {
                op: "CompressedWriter::add_plain",
                expected: "U8, U32, I64, F16, BF16, F32 or F64",
                found: other,
            })
        }
    })
}

/// Saves compressed tensors and plain tensors to one file (see [`CompressedWriter`] for
/// more control, e.g. quantized layers).
///
/// # Errors
/// As [`CompressedWriter::add_compressed`], [`CompressedWriter::add_plain`] and
/// [`CompressedWriter::write`].
///
/// ```
/// use std::collections::HashMap;
/// use candle_compress::io::safetensors::{load, save, Loaded};
/// use candle_compress::quant::BlockwiseInt8;
/// use candle_compress::Compressor;
/// use candle_core::{Device, Tensor};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("t.safetensors");
/// let x = Tensor::randn(0f32, 1., (4, 64), &Device::Cpu)?;
/// let compressed = HashMap::from([("x".to_string(), BlockwiseInt8::new(64)?.compress(&x)?.into())]);
/// save(&path, &compressed, &HashMap::new())?;
/// let back = load(&path)?;
/// assert!(matches!(back["x"], Loaded::Compressed(_)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn save(
    path: impl AsRef<Path>,
    compressed: &HashMap<String, CompressedTensor>,
    plain: &HashMap<String, Tensor>,
) -> Result<()> {
    let mut w = CompressedWriter::new();
    for (name, value) in compressed {
        w.add_compressed(name, value)?;
    }
    for (name, t) in plain {
        w.add_plain(name, t)?;
    }
    w.write(path)
}

// ---------------------------------------------------------------------------------------
// Reader.

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

impl TensorEntry {
    /// The parts of this entry: `(suffix, dtype, element count)` for `n` elements.
    fn expected_parts(&self, n: usize) -> Vec<(&'static str, Dtype, usize)> {
        let blocks = n.div_ceil(self.scheme.block_size());
        let nibbles = n.div_ceil(2);
        match self.scheme {
            Scheme::Int8 { .. } => vec![("q", Dtype::I8, n), ("scales", Dtype::F16, blocks)],
            Scheme::Int4 { .. } => vec![
                ("packed", Dtype::U8, nibbles),
                ("scales", Dtype::F16, blocks),
            ],
            Scheme::Affine8 { .. } | Scheme::Affine4 { .. } => vec![
                (
                    "codes",
                    Dtype::U8,
                    if self.scheme.code_bits() == 4 {
                        nibbles
                    } else {
                        n
                    },
                ),
                ("scales", Dtype::F32, blocks),
                ("zero_points", Dtype::F32, blocks),
            ],
            Scheme::Nf4 { .. } => vec![
                ("packed", Dtype::U8, nibbles),
                ("absmax", Dtype::F32, blocks),
            ],
        }
    }
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

/// One item of a loaded file.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// A compressed tensor (decompress it with [`Compressed::decompress`]).
    Compressed(CompressedTensor),
    /// A quantized linear layer.
    QuantLinear(QuantLinear),
    /// An uncompressed tensor.
    Plain(Tensor),
}

/// What an item of the file is, from the header alone (see [`CompressedFile::items`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ItemKind {
    /// A compressed tensor.
    Compressed(TensorEntry),
    /// A quantized linear layer.
    QuantLinear(LayerEntry),
    /// A plain tensor of this safetensors dtype and shape.
    Plain {
        /// Its dtype.
        dtype: Dtype,
        /// Its shape.
        shape: Vec<usize>,
    },
}

/// One item of the file, as listed by [`CompressedFile::items`].
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Name (or layer prefix).
    pub name: String,
    /// What it is.
    pub kind: ItemKind,
    /// Bytes it occupies in the file's data section (all its parts).
    pub stored_bytes: usize,
}

/// An opened compressed file: header and manifest validated, tensors read on demand.
///
/// Opening reads only the header; [`CompressedFile::load_tensor`] reads only the parts of
/// the tensor asked for (see [`SafetensorsReader`]). A safetensors file without the
/// `candle-compress` format key opens too: all its tensors are plain.
#[derive(Debug)]
pub struct CompressedFile {
    reader: SafetensorsReader,
    tensors: BTreeMap<String, TensorEntry>,
    layers: BTreeMap<String, LayerEntry>,
    plain: Vec<String>,
}

impl CompressedFile {
    /// Opens and validates `path` (header and manifest only).
    ///
    /// # Errors
    /// The reader's errors ([`SafetensorsReader::open`]); [`Error::Unsupported`] for
    /// another format version or an unknown scheme; [`Error::Corrupt`] for a malformed
    /// manifest; [`Error::Missing`] for a missing part (e.g. a scale tensor);
    /// [`Error::MetadataMismatch`] for a part whose dtype or size disagrees with shape ×
    /// scheme.
    ///
    /// ```
    /// use candle_compress::io::safetensors::CompressedFile;
    /// assert!(CompressedFile::open("/nonexistent.safetensors").is_err());
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_reader(SafetensorsReader::open(path)?)
    }

    /// Opens a file held in memory (a `Vec<u8>` or a caller's memory map).
    ///
    /// # Errors
    /// As [`CompressedFile::open`].
    ///
    /// ```
    /// use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let bytes = CompressedWriter::new().to_bytes()?;
    /// assert!(CompressedFile::from_bytes(bytes)?.items().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_bytes(bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> Result<Self> {
        Self::from_reader(SafetensorsReader::from_bytes(bytes)?)
    }

    fn from_reader(reader: SafetensorsReader) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        let mut layers = BTreeMap::new();
        let meta = reader.metadata();
        let ours = meta.and_then(|m| m.get(KEY_FORMAT)).map(String::as_str) == Some(FORMAT_NAME);
        if ours {
            let meta = meta.expect("checked above");
            let version = meta.get(KEY_VERSION).ok_or_else(|| Error::Missing {
                what: "metadata entry",
                name: KEY_VERSION.into(),
            })?;
            if version.trim() != FORMAT_VERSION.to_string() {
                return Err(Error::Unsupported {
                    what: "candle-compress format version",
                    found: version.clone(),
                    supported: FORMAT_VERSION.to_string(),
                });
            }
            if let Some(text) = meta.get(KEY_TENSORS) {
                for (name, v) in parse_object(text, KEY_TENSORS)? {
                    let entry = parse_tensor_entry(&name, &v)?;
                    tensors.insert(name, entry);
                }
            }
            if let Some(text) = meta.get(KEY_LAYERS) {
                for (name, v) in parse_object(text, KEY_LAYERS)? {
                    let entry = parse_layer_entry(&name, &v)?;
                    layers.insert(name, entry);
                }
            }
        }
        let file = Self {
            reader,
            tensors,
            layers,
            plain: Vec::new(),
        };
        file.check_parts()
    }

    /// Checks every entry's parts against the header and lists the plain tensors.
    fn check_parts(mut self) -> Result<Self> {
        let mut owned = std::collections::HashSet::new();
        for (name, e) in &self.tensors {
            let n = crate::quant::checked_elem_count(&e.shape, name)?;
            for (suffix, dtype, count) in e.expected_parts(n) {
                let full = format!("{name}.{suffix}");
                self.check_part(&full, dtype, count, &tensor_part_shape(e, suffix, count))?;
                owned.insert(full);
            }
        }
        for (prefix, l) in &self.layers {
            for (suffix, dtype, count) in layer_parts(l) {
                let full = format!("{prefix}.{suffix}");
                self.check_part(&full, dtype, count, &layer_part_shape(l, suffix))?;
                owned.insert(full);
            }
        }
        self.plain = self
            .reader
            .names()
            .into_iter()
            .filter(|n| !owned.contains(n))
            .collect();
        Ok(self)
    }

    fn check_part(&self, full: &str, dtype: Dtype, count: usize, shape: &[usize]) -> Result<()> {
        let info = self.reader.info(full).ok_or_else(|| Error::Missing {
            what: "part tensor",
            name: full.to_string(),
        })?;
        if info.dtype != dtype {
            return Err(Error::metadata(
                format!("{full} dtype"),
                format!("{dtype:?}"),
                format!("{:?}", info.dtype),
            ));
        }
        let found = crate::quant::checked_elem_count(&info.shape, full)?;
        if found != count {
            return Err(Error::metadata(
                format!("{full} element count (shape × scheme)"),
                count,
                found,
            ));
        }
        if info.shape != shape {
            return Err(Error::metadata(
                format!("{full} shape (the manifest entry's layout)"),
                format!("{shape:?}"),
                format!("{:?}", info.shape),
            ));
        }
        Ok(())
    }

    /// Every item of the file — compressed tensors, quantized layers and plain tensors —
    /// sorted by name, from the header alone.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter, ItemKind};
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("b", &candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)?)?;
    /// let file = CompressedFile::from_bytes(w.to_bytes()?)?;
    /// let items = file.items();
    /// assert_eq!((items[0].name.as_str(), items[0].stored_bytes), ("b", 8));
    /// assert!(matches!(items[0].kind, ItemKind::Plain { .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn items(&self) -> Vec<Item> {
        let bytes_of = |full: &str| {
            self.reader
                .info(full)
                .map_or(0, |i| i.data_offsets.1 - i.data_offsets.0)
        };
        let mut items = Vec::new();
        for (name, e) in &self.tensors {
            let n = e.shape.iter().product();
            let stored = e
                .expected_parts(n)
                .iter()
                .map(|(s, _, _)| bytes_of(&format!("{name}.{s}")))
                .sum();
            items.push(Item {
                name: name.clone(),
                kind: ItemKind::Compressed(e.clone()),
                stored_bytes: stored,
            });
        }
        for (name, l) in &self.layers {
            let stored = layer_parts(l)
                .iter()
                .map(|(s, _, _)| bytes_of(&format!("{name}.{s}")))
                .sum();
            items.push(Item {
                name: name.clone(),
                kind: ItemKind::QuantLinear(l.clone()),
                stored_bytes: stored,
            });
        }
        for name in &self.plain {
            if let Some(info) = self.reader.info(name) {
                items.push(Item {
                    name: name.clone(),
                    kind: ItemKind::Plain {
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                    },
                    stored_bytes: bytes_of(name),
                });
            }
        }
        items.sort_by(|a, b| a.name.cmp(&b.name));
        items
    }

    /// The underlying safetensors reader.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// assert_eq!(file.reader().metadata().unwrap()["format"], "candle-compress");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reader(&self) -> &SafetensorsReader {
        &self.reader
    }

    /// The manifest entry of compressed tensor `name`, if it is one.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// assert!(file.tensor_entry("w").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tensor_entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// The manifest entry of the quantized layer at `prefix`, if there is one.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// assert!(file.layer_entry("fc1").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn layer_entry(&self, prefix: &str) -> Option<&LayerEntry> {
        self.layers.get(prefix)
    }

    /// Whether `name` is a plain (uncompressed) tensor of the file.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// # let mut w = CompressedWriter::new();
    /// # w.add_plain("b", &candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)?)?;
    /// let file = CompressedFile::from_bytes(w.to_bytes()?)?;
    /// assert!(file.is_plain("b"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_plain(&self, name: &str) -> bool {
        self.plain.iter().any(|p| p == name)
    }

    fn part(&self, name: &str, suffix: &str) -> Result<RawTensor<'_>> {
        self.reader.read(&format!("{name}.{suffix}"))
    }

    /// Reads compressed tensor `name` (only its parts), validated by the type's
    /// `from_parts`.
    ///
    /// # Errors
    /// [`Error::Missing`] when `name` is not a compressed tensor; the type's `from_parts`
    /// errors for corrupt contents (e.g. a negative scale).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// use candle_compress::{quant::Affine, Compressed, Compressor};
    /// let t = candle_core::Tensor::randn(0f32, 1., 100, &candle_core::Device::Cpu)?;
    /// let c = Affine::new(4, 32)?.compress(&t)?;
    /// let mut w = CompressedWriter::new();
    /// w.add_compressed("t", &c.clone().into())?;
    /// let file = CompressedFile::from_bytes(w.to_bytes()?)?;
    /// assert_eq!(file.load_compressed("t")?.size_bytes(), c.size_bytes());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_compressed(&self, name: &str) -> Result<CompressedTensor> {
        let e = self.tensors.get(name).ok_or_else(|| Error::Missing {
            what: "compressed tensor",
            name: name.to_string(),
        })?;
        let shape = Shape::from(e.shape.clone());
        let block = e.scheme.block_size();
        Ok(match e.scheme {
            Scheme::Int8 { .. } => {
                let q = bytes_to_i8(&self.part(name, "q")?.data);
                let s = bytes_to_f16(&self.part(name, "scales")?.data);
                BlockwiseInt8Tensor::from_parts(shape, e.dtype, block, q, s)?.into()
            }
            Scheme::Int4 { .. } => {
                let p = self.part(name, "packed")?.data.into_owned();
                let s = bytes_to_f16(&self.part(name, "scales")?.data);
                SymmetricInt4Tensor::from_parts(shape, e.dtype, block, p, s)?.into()
            }
            Scheme::Affine8 { .. } | Scheme::Affine4 { .. } => {
                let c = self.part(name, "codes")?.data.into_owned();
                let s = bytes_to_f32(&self.part(name, "scales")?.data);
                let z = bytes_to_f32(&self.part(name, "zero_points")?.data);
                let bits = e.scheme.code_bits();
                AffineTensor::from_parts(shape, e.dtype, bits, block, c, s, z)?.into()
            }
            Scheme::Nf4 { .. } => {
                let p = self.part(name, "packed")?.data.into_owned();
                let a = bytes_to_f32(&self.part(name, "absmax")?.data);
                Nf4Tensor::from_parts(shape, e.dtype, block, p, a)?.into()
            }
        })
    }

    /// Reads plain tensor `name` onto `device` in its stored dtype.
    ///
    /// # Errors
    /// [`Error::Missing`] when `name` is not a plain tensor; [`Error::Unsupported`] for a
    /// dtype candle lacks (e.g. a stray I8 tensor).
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let b = candle_core::Tensor::new(&[1f32, 2.], &candle_core::Device::Cpu)?;
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("b", &b)?;
    /// let file = CompressedFile::from_bytes(w.to_bytes()?)?;
    /// assert_eq!(file.load_plain("b", &candle_core::Device::Cpu)?.to_vec1::<f32>()?, vec![1., 2.]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_plain(&self, name: &str, device: &Device) -> Result<Tensor> {
        if !self.is_plain(name) {
            return Err(Error::Missing {
                what: "plain tensor",
                name: name.to_string(),
            });
        }
        let raw = self.reader.read(name)?;
        let dtype = candle_dtype(raw.dtype, name)?;
        Ok(Tensor::from_raw_buffer(
            &raw.data, dtype, &raw.shape, device,
        )?)
    }

    /// Reads the quantized layer stored at `prefix`.
    ///
    /// # Errors
    /// [`Error::Missing`] when there is no layer at `prefix`; [`QuantLinear::from_parts`]
    /// errors for corrupt contents.
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// let w = candle_core::Tensor::randn(0f32, 1., (4, 64), &candle_core::Device::Cpu)?;
    /// let layer = QuantLinear::new(&w, None, &QuantConfig::w4a8(32)?)?;
    /// let mut writer = CompressedWriter::new();
    /// writer.add_quant_linear("fc", &layer)?;
    /// let file = CompressedFile::from_bytes(writer.to_bytes()?)?;
    /// assert_eq!(file.load_quant_linear("fc")?.to_parts(), layer.to_parts());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_quant_linear(&self, prefix: &str) -> Result<QuantLinear> {
        let l = self.layers.get(prefix).ok_or_else(|| Error::Missing {
            what: "quantized layer",
            name: prefix.to_string(),
        })?;
        let raw = self.part(prefix, "weight")?;
        let weights = match l.config.weights().int4_group() {
            Some(_) => {
                let row_bytes = l.in_features.div_ceil(2);
                let mut w = Vec::with_capacity(l.out_features * l.in_features);
                for row in raw.data.chunks(row_bytes.max(1)) {
                    let codes = row
                        .iter()
                        .flat_map(|b| [(b & 0x0F) as i8 - 8, (b >> 4) as i8 - 8])
                        .take(l.in_features);
                    w.extend(codes);
                }
                w
            }
            _ => bytes_to_i8(&raw.data),
        };
        let scales = bytes_to_f32(&self.part(prefix, "weight_scale")?.data);
        let offsets = if l.config.weights().has_offsets() {
            Some(bytes_to_f32(&self.part(prefix, "weight_offset")?.data))
        } else {
            None
        };
        let bias = if l.bias {
            Some(bytes_to_f32(&self.part(prefix, "bias")?.data))
        } else {
            None
        };
        let smooth = if l.smooth {
            Some(bytes_to_f32(&self.part(prefix, "smooth")?.data))
        } else {
            None
        };
        QuantLinear::from_parts(QuantLinearParts {
            out_features: l.out_features,
            in_features: l.in_features,
            weights,
            scales,
            offsets,
            bias,
            smooth,
            config: l.config,
        })
    }

    /// Reads tensor `name` as a float tensor on `device`: a compressed tensor is
    /// decompressed (to its original dtype), a plain one returned as stored. Only the
    /// bytes of `name` are read.
    ///
    /// # Errors
    /// [`Error::Missing`] when the file has no tensor `name`; decoding errors as
    /// [`CompressedFile::load_compressed`] and [`CompressedFile::load_plain`].
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// assert!(file.load_tensor("nope", &candle_core::Device::Cpu).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        if self.tensors.contains_key(name) {
            self.load_compressed(name)?.decompress(device)
        } else {
            self.load_plain(name, device)
        }
    }

    /// Reads every item of the file.
    ///
    /// # Errors
    /// The first error of [`CompressedFile::load_compressed`],
    /// [`CompressedFile::load_quant_linear`] or [`CompressedFile::load_plain`].
    ///
    /// ```
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// assert!(file.load_all(&candle_core::Device::Cpu)?.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_all(&self, device: &Device) -> Result<BTreeMap<String, Loaded>> {
        let mut out = BTreeMap::new();
        for name in self.tensors.keys() {
            out.insert(
                name.clone(),
                Loaded::Compressed(self.load_compressed(name)?),
            );
        }
        for name in self.layers.keys() {
            out.insert(
                name.clone(),
                Loaded::QuantLinear(self.load_quant_linear(name)?),
            );
        }
        for name in &self.plain {
            out.insert(name.clone(), Loaded::Plain(self.load_plain(name, device)?));
        }
        Ok(out)
    }
}

/// Loads every item of the file at `path` (plain tensors on the CPU).
///
/// # Errors
/// As [`CompressedFile::open`] and [`CompressedFile::load_all`].
///
/// ```
/// use candle_compress::io::safetensors::{load, CompressedWriter};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("e.safetensors");
/// CompressedWriter::new().write(&path)?;
/// assert!(load(&path)?.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn load(path: impl AsRef<Path>) -> Result<BTreeMap<String, Loaded>> {
    CompressedFile::open(path)?.load_all(&Device::Cpu)
}

fn layer_parts(l: &LayerEntry) -> Vec<(&'static str, Dtype, usize)> {
    let (out, inp) = (l.out_features, l.in_features);
    let mut parts = match l.config.weights() {
        WeightQuant::Int4Grouped { group } => vec![
            ("weight", Dtype::U8, out * inp.div_ceil(2)),
            ("weight_scale", Dtype::F32, out * inp.div_ceil(group)),
        ],
        WeightQuant::Int4GroupedAsym { group } => vec![
            ("weight", Dtype::U8, out * inp.div_ceil(2)),
            ("weight_scale", Dtype::F32, out * inp.div_ceil(group)),
            ("weight_offset", Dtype::F32, out * inp.div_ceil(group)),
        ],
        _ => vec![
            ("weight", Dtype::I8, out * inp),
            ("weight_scale", Dtype::F32, out),
        ],
    };
    if l.bias {
        parts.push(("bias", Dtype::F32, out));
    }
    if l.smooth {
        parts.push(("smooth", Dtype::F32, inp));
    }
    parts
}

fn parse_object(text: &str, key: &str) -> Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Error::Corrupt {
            what: format!("metadata {key}"),
            reason: "not a JSON object".into(),
        }),
        Err(e) => Err(Error::Corrupt {
            what: format!("metadata {key}"),
            reason: e.to_string(),
        }),
    }
}

fn field<'a>(v: &'a Value, name: &str, key: &str) -> Result<&'a Value> {
    v.get(key).ok_or_else(|| Error::Corrupt {
        what: format!("manifest entry {name}"),
        reason: format!("missing field {key:?}"),
    })
}

fn usize_field(v: &Value, name: &str, key: &str) -> Result<usize> {
    field(v, name, key)?
        .as_u64()
        .and_then(|x| usize::try_from(x).ok())
        .ok_or_else(|| Error::Corrupt {
            what: format!("manifest entry {name}"),
            reason: format!("field {key:?} is not an unsigned integer"),
        })
}

fn str_field<'a>(v: &'a Value, name: &str, key: &str) -> Result<&'a str> {
    field(v, name, key)?.as_str().ok_or_else(|| Error::Corrupt {
        what: format!("manifest entry {name}"),
        reason: format!("field {key:?} is not a string"),
    })
}

fn bool_field(v: &Value, name: &str, key: &str) -> Result<bool> {
    field(v, name, key)?
        .as_bool()
        .ok_or_else(|| Error::Corrupt {
            what: format!("manifest entry {name}"),
            reason: format!("field {key:?} is not a boolean"),
        })
}

fn parse_tensor_entry(name: &str, v: &Value) -> Result<TensorEntry> {
    let scheme_text = str_field(v, name, "scheme")?;
    let scheme: Scheme = scheme_text.parse().map_err(|e| match e {
        Error::Unsupported { supported, .. } => Error::Unsupported {
            what: "compression scheme",
            found: format!("{scheme_text:?} (tensor {name})"),
            supported,
        },
        other => Error::Corrupt {
            what: format!("manifest entry {name}"),
            reason: other.to_string(),
        },
    })?;
    let shape = field(v, name, "shape")?
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
        })
        .ok_or_else(|| Error::Corrupt {
            what: format!("manifest entry {name}"),
            reason: "field \"shape\" is not an array of unsigned integers".into(),
        })?;
    let dtype = dtype_from_name(str_field(v, name, "dtype")?, name)?;
    Ok(TensorEntry {
        scheme,
        shape,
        dtype,
    })
}

fn parse_layer_entry(name: &str, v: &Value) -> Result<LayerEntry> {
    let in_features = usize_field(v, name, "in_features")?;
    let out_features = usize_field(v, name, "out_features")?;
    if in_features == 0 || out_features == 0 {
        return Err(Error::Corrupt {
            what: format!("layer entry {name}"),
            reason: format!("zero dims: in={in_features}, out={out_features}"),
        });
    }
    if in_features.checked_mul(out_features).is_none() {
        return Err(Error::Corrupt {
            what: format!("layer entry {name}"),
            reason: "in × out overflows".into(),
        });
    }
    let config = match str_field(v, name, "weights")? {
        "int8-per-channel" => QuantConfig::w8a8(),
        "int4-grouped" => QuantConfig::w4a8(usize_field(v, name, "group")?)?,
        "int4-grouped-asym" => QuantConfig::w4a8_asym(usize_field(v, name, "group")?)?,
        other => {
            return Err(Error::Unsupported {
                what: "quantized layer weight mode",
                found: format!("{other:?} (layer {name})"),
                supported: "int8-per-channel, int4-grouped, int4-grouped-asym".into(),
            })
        }
    };
    let activations = match str_field(v, name, "activations")? {
        "per-token" => ActivationQuant::PerToken,
        "per-tensor" => ActivationQuant::PerTensor,
        "none" => ActivationQuant::Float,
        "static" => {
            let scale = field(v, name, "activation_scale")?
                .as_f64()
                .ok_or_else(|| Error::Corrupt {
                    what: format!("layer entry {name}"),
                    reason: "field \"activation_scale\" is not a number".into(),
                })?;
            ActivationQuant::Static {
                scale: scale as f32,
            }
        }
        other => {
            return Err(Error::Unsupported {
                what: "quantized layer activation mode",
                found: format!("{other:?} (layer {name})"),
                supported: "per-token, per-tensor, static, none".into(),
            })
        }
    };
    Ok(LayerEntry {
        in_features,
        out_features,
        config: config.with_activations(activations)?,
        bias: bool_field(v, name, "bias")?,
        smooth: bool_field(v, name, "smooth")?,
    })
}
