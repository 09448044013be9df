//! Interoperability with the [compressed-tensors] checkpoint format (written by
//! llm-compressor, loaded by vLLM and transformers), following compressed-tensors 0.12.2.
//!
//! Two layouts are written and read, for linear layers under a prefix `p` (e.g.
//! `model.layers.0.mlp.down_proj`):
//!
//! | format | tensors | config group |
//! |---|---|---|
//! | `int-quantized` (W8A8) | `p.weight` I8 `[out, in]`; `p.weight_scale` `[out, 1]` | weights: 8 bits, int, symmetric, `strategy: "channel"`; input_activations: 8 bits, int, symmetric, `strategy: "token"`, `dynamic: true` (so no `p.input_scale`) |
//! | `pack-quantized` (W4 groups) | `p.weight_packed` I32 `[out, ceil(in/8)]`; `p.weight_scale` `[out, in/group]`; `p.weight_shape` I32 `[2]` = `[out, in]` | weights: 4 bits, int, symmetric, `strategy: "group"`, `group_size`; input_activations as above |
//!
//! In `weight_packed`, each row is packed on its own: the signed 4-bit value `q` is offset to
//! the unsigned `q + 8`, and element `i` of a row sits at bits `4·(i mod 8)` of int32
//! `i / 8` (the row's last int32 is zero-padded). Symmetric schemes store no zero point.
//! The value is `q · scale`. `p.bias`, when present, stays in float. Scales are written as
//! F32 (any float dtype is read: F32, F16, BF16).
//!
//! `config.json` carries a `quantization_config` object ([`quantization_config`]):
//! `quant_method: "compressed-tensors"`, `format`, `quantization_status: "compressed"`,
//! `config_groups: {"group_0": {targets, weights, input_activations, output_activations,
//! format}}`, `ignore` (layers left in float), `kv_cache_scheme`, `sparsity_config`,
//! `version`.
//!
//! Reading notes: compressed-tensors' int8 range is `[-128, 127]`; [`QuantLinear`] takes
//! `[-127, 127]`, so a stored `-128` (possible when the writer rounds `-127.5` to even) is
//! loaded as `-127`, an error of one step on that element (counted in a `tracing` warning).
//! Layers are matched to config groups by their stored tensors (8-bit `weight` vs 4-bit
//! `weight_packed`); asymmetric (zero-point) and activation-ordered (`g_idx`) checkpoints
//! are refused with [`Error::Unsupported`].
//!
//! [compressed-tensors]: https://github.com/neuralmagic/compressed-tensors
//!
//! ```
//! use candle_compress::io::compressed_tensors::{CtCheckpoint, CtWriter};
//! use candle_compress::nn::{QuantConfig, QuantLinear};
//! use candle_core::{Device, Module, Tensor};
//!
//! let dir = tempfile::tempdir()?;
//! let w = Tensor::randn(0f32, 1., (16, 256), &Device::Cpu)?;
//! let layer = QuantLinear::new(&w, None, &QuantConfig::w4a8(128)?)?;
//! let mut writer = CtWriter::new();
//! writer.add_quant_linear("model.fc", &layer)?;
//! writer.write(dir.path().join("model.safetensors"), dir.path().join("config.json"), None)?;
//!
//! let ckpt = CtCheckpoint::open(dir.path().join("model.safetensors"), dir.path().join("config.json"))?;
//! let back = ckpt.load_quant_linear("model.fc")?;
//! let x = Tensor::randn(0f32, 1., (2, 256), &Device::Cpu)?;
//! assert_eq!(back.forward(&x)?.to_vec2::<f32>()?, layer.forward(&x)?.to_vec2::<f32>()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, View};
use serde_json::{json, Value};

use super::reader::SafetensorsReader;
use super::{bytes_to_f16, bytes_to_f32, bytes_to_i8};
use crate::error::{Error, Result};
use crate::nn::{ActivationQuant, QuantConfig, QuantLinear, QuantLinearParts, WeightQuant};

/// The compressed-tensors version whose layout this module follows (written as `version`).
pub const CT_SPEC_VERSION: &str = "0.12.2";

/// The two compressed-tensors formats this module writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtFormat {
    /// `int-quantized`: int8 weights per output channel (W8A8).
    IntQuantized,
    /// `pack-quantized`: int4 weights in groups of `group` input columns, packed in int32.
    PackQuantized {
        /// Input columns per scale.
        group: usize,
    },
}

impl CtFormat {
    /// The `format` string of the config.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtFormat;
    /// assert_eq!(CtFormat::IntQuantized.name(), "int-quantized");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            CtFormat::IntQuantized => "int-quantized",
            CtFormat::PackQuantized { .. } => "pack-quantized",
        }
    }

    fn of(config: &QuantConfig) -> Self {
        match config.weights() {
            WeightQuant::Int4Grouped { group } => CtFormat::PackQuantized { group },
            WeightQuant::Int8PerChannel => CtFormat::IntQuantized,
        }
    }
}

fn quant_args(num_bits: u32, strategy: &str, group: Option<usize>, dynamic: bool) -> Value {
    json!({
        "num_bits": num_bits,
        "type": "int",
        "symmetric": true,
        "group_size": group,
        "strategy": strategy,
        "block_structure": null,
        "dynamic": dynamic,
        "actorder": null,
        "observer": if dynamic { Value::Null } else { json!("minmax") },
        "observer_kwargs": {},
    })
}

/// The `quantization_config` object for `config.json`: one config group targeting
/// `Linear` layers with `format`'s weights and dynamic per-token int8 input activations,
/// and `ignore` listing the layers left in float.
///
/// ```
/// use candle_compress::io::compressed_tensors::{quantization_config, CtFormat};
/// let c = quantization_config(CtFormat::PackQuantized { group: 128 }, &["lm_head".into()]);
/// assert_eq!(c["quant_method"], "compressed-tensors");
/// assert_eq!(c["format"], "pack-quantized");
/// assert_eq!(c["config_groups"]["group_0"]["weights"]["group_size"], 128);
/// assert_eq!(c["ignore"][0], "lm_head");
/// ```
pub fn quantization_config(format: CtFormat, ignore: &[String]) -> Value {
    let weights = match format {
        CtFormat::IntQuantized => quant_args(8, "channel", None, false),
        CtFormat::PackQuantized { group } => quant_args(4, "group", Some(group), false),
    };
    json!({
        "quant_method": "compressed-tensors",
        "format": format.name(),
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights,
                "input_activations": quant_args(8, "token", None, true),
                "output_activations": null,
                "format": format.name(),
            }
        },
        "ignore": ignore,
        "kv_cache_scheme": null,
        "global_compression_ratio": null,
        "sparsity_config": {},
        "transform_config": {},
        "version": CT_SPEC_VERSION,
    })
}

/// Packs signed 4-bit values of one row into int32 words: `q + 8` at bits `4·(i mod 8)`
/// of word `i / 8`, the last word zero-padded.
///
/// ```
/// use candle_compress::io::compressed_tensors::{pack_row_int32, unpack_row_int32};
/// // compressed-tensors' own test vector: [1, 2, 3, 4] packs to 52137
/// let packed = pack_row_int32(&[1, 2, 3, 4]);
/// assert_eq!(packed, vec![52137]);
/// assert_eq!(unpack_row_int32(&packed, 4), vec![1, 2, 3, 4]);
/// ```
pub fn pack_row_int32(row: &[i8]) -> Vec<i32> {
    row.chunks(8)
        .map(|chunk| {
            chunk.iter().enumerate().fold(0u32, |acc, (i, &q)| {
                acc | ((((q as i32 + 8) as u32) & 0xF) << (4 * i))
            }) as i32
        })
        .collect()
}

/// Unpacks `len` signed 4-bit values from one row of int32 words (inverse of
/// [`pack_row_int32`]); missing words read as padding.
///
/// ```
/// use candle_compress::io::compressed_tensors::unpack_row_int32;
/// assert_eq!(unpack_row_int32(&[0x0000_0008], 2), vec![0, -8]);
/// ```
pub fn unpack_row_int32(words: &[i32], len: usize) -> Vec<i8> {
    (0..len)
        .map(|i| {
            let w = words.get(i / 8).copied().unwrap_or(0) as u32;
            (((w >> (4 * (i % 8))) & 0xF) as i8) - 8
        })
        .collect()
}

#[derive(Debug)]
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

fn f32_part(shape: Vec<usize>, v: &[f32]) -> Part {
    Part {
        dtype: Dtype::F32,
        shape,
        data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// Builds a compressed-tensors checkpoint from [`QuantLinear`]s (all of one format) and
/// float tensors (embeddings, norms, layers listed in `ignore`).
#[derive(Debug, Default)]
pub struct CtWriter {
    parts: BTreeMap<String, Part>,
    format: Option<CtFormat>,
    ignore: Vec<String>,
}

impl CtWriter {
    /// An empty checkpoint.
    ///
    /// ```
    /// let w = candle_compress::io::compressed_tensors::CtWriter::new();
    /// assert!(w.format().is_none());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The format fixed by the first layer added.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{CtFormat, CtWriter};
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// let w = candle_core::Tensor::randn(0f32, 1., (2, 8), &candle_core::Device::Cpu)?;
    /// let mut writer = CtWriter::new();
    /// writer.add_quant_linear("fc", &QuantLinear::new(&w, None, &QuantConfig::w8a8())?)?;
    /// assert_eq!(writer.format(), Some(CtFormat::IntQuantized));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn format(&self) -> Option<CtFormat> {
        self.format
    }

    fn insert(&mut self, name: String, part: Part) -> Result<()> {
        if self.parts.contains_key(&name) {
            return Err(Error::invalid(
                "tensor name",
                format!("{name} is already in the checkpoint"),
            ));
        }
        self.parts.insert(name, part);
        Ok(())
    }

    /// Adds a layer under `prefix` in the layout of its format (see the module docs).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a layer with a smoothing vector (fold it into the
    /// preceding norm first), with activations other than dynamic per-token, or whose
    /// format differs from the layers already added; [`Error::InvalidArgument`] for a name
    /// already used.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::CtWriter;
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// let w = candle_core::Tensor::randn(0f32, 1., (2, 64), &candle_core::Device::Cpu)?;
    /// let mut writer = CtWriter::new();
    /// writer.add_quant_linear("a", &QuantLinear::new(&w, None, &QuantConfig::w8a8())?)?;
    /// // one checkpoint, one format:
    /// assert!(writer.add_quant_linear("b", &QuantLinear::new(&w, None, &QuantConfig::w4a8(32)?)?).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_quant_linear(&mut self, prefix: &str, layer: &QuantLinear) -> Result<()> {
        let p = layer.to_parts();
        if p.smooth.is_some() {
            return Err(Error::Unsupported {
                what: "QuantLinear for compressed-tensors",
                found: format!("{prefix}: a smoothing vector"),
                supported: "layers without smoothing (fold SmoothQuant into the norm first)".into(),
            });
        }
        if p.config.activations() != ActivationQuant::PerToken {
            return Err(Error::Unsupported {
                what: "activation mode for compressed-tensors",
                found: format!("{prefix}: {:?}", p.config.activations()),
                supported: "dynamic per-token".into(),
            });
        }
        let format = CtFormat::of(&p.config);
        if let Some(f) = self.format {
            if f != format {
                return Err(Error::Unsupported {
                    what: "mixed formats in one compressed-tensors checkpoint",
                    found: format!("{prefix}: {format:?} after {f:?}"),
                    supported: "one format per checkpoint".into(),
                });
            }
        }
        let (out, inp) = (p.out_features, p.in_features);
        match format {
            CtFormat::IntQuantized => {
                self.insert(
                    format!("{prefix}.weight"),
                    Part {
                        dtype: Dtype::I8,
                        shape: vec![out, inp],
                        data: p.weights.iter().map(|&q| q as u8).collect(),
                    },
                )?;
                self.insert(
                    format!("{prefix}.weight_scale"),
                    f32_part(vec![out, 1], &p.scales),
                )?;
            }
            CtFormat::PackQuantized { group } => {
                let words = inp.div_ceil(8);
                let mut packed = Vec::with_capacity(out * words * 4);
                for row in p.weights.chunks(inp) {
                    packed.extend(pack_row_int32(row).iter().flat_map(|w| w.to_le_bytes()));
                }
                self.insert(
                    format!("{prefix}.weight_packed"),
                    Part {
                        dtype: Dtype::I32,
                        shape: vec![out, words],
                        data: packed,
                    },
                )?;
                self.insert(
                    format!("{prefix}.weight_scale"),
                    f32_part(vec![out, inp.div_ceil(group)], &p.scales),
                )?;
                let dims = [out as i32, inp as i32];
                self.insert(
                    format!("{prefix}.weight_shape"),
                    Part {
                        dtype: Dtype::I32,
                        shape: vec![2],
                        data: dims.iter().flat_map(|d| d.to_le_bytes()).collect(),
                    },
                )?;
            }
        }
        if let Some(b) = &p.bias {
            self.insert(format!("{prefix}.bias"), f32_part(vec![out], b))?;
        }
        self.format = Some(format);
        Ok(())
    }

    /// Adds a float tensor stored as F32 (any float input dtype).
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for integer tensors; [`Error::InvalidArgument`] for a
    /// name already used.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::CtWriter;
    /// let t = candle_core::Tensor::ones(4, candle_core::DType::BF16, &candle_core::Device::Cpu)?;
    /// let mut w = CtWriter::new();
    /// w.add_float("model.norm.weight", &t)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_float(&mut self, name: &str, tensor: &Tensor) -> Result<()> {
        crate::input::ensure_float(tensor.dtype(), "CtWriter::add_float")?;
        let values = tensor
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        self.insert(name.to_string(), f32_part(tensor.dims().to_vec(), &values))
    }

    /// Lists a layer prefix as not quantized (the config's `ignore`); add its float
    /// weights with [`CtWriter::add_float`].
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::CtWriter;
    /// let mut w = CtWriter::new();
    /// w.ignore("lm_head");
    /// ```
    pub fn ignore(&mut self, prefix: &str) {
        self.ignore.push(prefix.to_string());
    }

    /// The `quantization_config` for what was added.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when no layer was added (the format is unknown).
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::CtWriter;
    /// assert!(CtWriter::new().config().is_err());
    /// ```
    pub fn config(&self) -> Result<Value> {
        let format = self
            .format
            .ok_or_else(|| Error::invalid("checkpoint", "no quantized layer was added"))?;
        Ok(quantization_config(format, &self.ignore))
    }

    /// Writes the tensors to `safetensors_path` and a `config.json` at `config_path`:
    /// `base_config` (the model's own config, if given) with `quantization_config` set.
    /// Both files go through a temporary file renamed into place.
    ///
    /// # Errors
    /// As [`CtWriter::config`]; [`Error::InvalidArgument`] when `base_config` is not a JSON
    /// object; I/O and safetensors errors.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::CtWriter;
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// let dir = tempfile::tempdir()?;
    /// let w = candle_core::Tensor::randn(0f32, 1., (2, 8), &candle_core::Device::Cpu)?;
    /// let mut writer = CtWriter::new();
    /// writer.add_quant_linear("fc", &QuantLinear::new(&w, None, &QuantConfig::w8a8())?)?;
    /// let base = serde_json::json!({"model_type": "demo"});
    /// writer.write(dir.path().join("m.safetensors"), dir.path().join("config.json"), Some(base))?;
    /// let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json"))?)?;
    /// assert_eq!(cfg["model_type"], "demo");
    /// assert_eq!(cfg["quantization_config"]["format"], "int-quantized");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write(
        &self,
        safetensors_path: impl AsRef<Path>,
        config_path: impl AsRef<Path>,
        base_config: Option<Value>,
    ) -> Result<()> {
        let mut config = match base_config {
            None => json!({}),
            Some(v @ Value::Object(_)) => v,
            Some(_) => {
                return Err(Error::invalid(
                    "base_config",
                    "config.json must be a JSON object",
                ))
            }
        };
        config["quantization_config"] = self.config()?;
        let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        super::write_safetensors(
            safetensors_path.as_ref(),
            self.parts.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            metadata,
        )?;
        let text = serde_json::to_string_pretty(&config)?;
        super::write_atomically(config_path.as_ref(), |f| {
            use std::io::Write;
            f.write_all(text.as_bytes())?;
            Ok(())
        })
    }
}

/// The weight arguments of one config group, as far as loading needs them.
#[derive(Debug, Clone, PartialEq)]
struct GroupArgs {
    num_bits: u64,
    group_size: Option<usize>,
}

/// An opened compressed-tensors checkpoint (one safetensors file + its config).
#[derive(Debug)]
pub struct CtCheckpoint {
    reader: SafetensorsReader,
    format: String,
    groups: Vec<GroupArgs>,
    ignore: Vec<String>,
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "compressed-tensors quantization_config".into(),
        reason: reason.into(),
    }
}

impl CtCheckpoint {
    /// Opens `safetensors_path` (header only) and reads `quantization_config` from the
    /// `config.json` at `config_path`.
    ///
    /// # Errors
    /// Reader errors; [`Error::Missing`] when the config has no `quantization_config`;
    /// [`Error::Unsupported`] for another `quant_method`, a format other than
    /// `int-quantized` / `pack-quantized`, or asymmetric / non-int / actorder weights;
    /// [`Error::Corrupt`] for a malformed config.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtCheckpoint;
    /// assert!(CtCheckpoint::open("/nonexistent.safetensors", "/nonexistent.json").is_err());
    /// ```
    pub fn open(safetensors_path: impl AsRef<Path>, config_path: impl AsRef<Path>) -> Result<Self> {
        let config: Value = serde_json::from_slice(&std::fs::read(config_path.as_ref())?)?;
        Self::from_parts(SafetensorsReader::open(safetensors_path)?, &config)
    }

    /// Builds a checkpoint from an opened reader and the parsed `config.json` (or the
    /// `quantization_config` object itself).
    ///
    /// # Errors
    /// As [`CtCheckpoint::open`].
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// use candle_compress::io::reader::SafetensorsReader;
    /// let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// let reader = SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert_eq!(ckpt.format(), "int-quantized");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_parts(reader: SafetensorsReader, config: &Value) -> Result<Self> {
        let q = config.get("quantization_config").unwrap_or(config);
        let method = q
            .get("quant_method")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Missing {
                what: "config entry",
                name: "quantization_config.quant_method".into(),
            })?;
        if method != "compressed-tensors" {
            return Err(Error::Unsupported {
                what: "quant_method",
                found: method.to_string(),
                supported: "compressed-tensors".into(),
            });
        }
        let format = q
            .get("format")
            .and_then(Value::as_str)
            .ok_or_else(|| corrupt("missing \"format\""))?;
        if format != "int-quantized" && format != "pack-quantized" {
            return Err(Error::Unsupported {
                what: "compressed-tensors format",
                found: format.to_string(),
                supported: "int-quantized, pack-quantized".into(),
            });
        }
        let groups_obj = q
            .get("config_groups")
            .and_then(Value::as_object)
            .ok_or_else(|| corrupt("missing \"config_groups\" object"))?;
        let mut groups = Vec::new();
        for (gname, g) in groups_obj {
            let w = g
                .get("weights")
                .ok_or_else(|| corrupt(format!("group {gname} has no \"weights\"")))?;
            let num_bits = w
                .get("num_bits")
                .and_then(Value::as_u64)
                .ok_or_else(|| corrupt(format!("group {gname}: weights.num_bits")))?;
            let ty = w.get("type").and_then(Value::as_str).unwrap_or("int");
            let symmetric = w.get("symmetric").and_then(Value::as_bool).unwrap_or(true);
            let actorder = w
                .get("actorder")
                .is_some_and(|a| !a.is_null() && a != false);
            let strategy = w.get("strategy").and_then(Value::as_str).unwrap_or("");
            let supported = ty == "int"
                && symmetric
                && !actorder
                && matches!((num_bits, strategy), (8, "channel") | (4, "group"));
            if !supported {
                return Err(Error::Unsupported {
                    what: "compressed-tensors weight scheme",
                    found: format!(
                        "group {gname}: {num_bits}-bit {ty}, strategy {strategy:?}, \
                         symmetric {symmetric}, actorder {actorder}"
                    ),
                    supported: "8-bit int channel or 4-bit int group, symmetric".into(),
                });
            }
            let group_size = match w.get("group_size") {
                Some(Value::Number(n)) => Some(
                    n.as_u64()
                        .and_then(|g| usize::try_from(g).ok())
                        .filter(|&g| g > 0)
                        .ok_or_else(|| corrupt(format!("group {gname}: group_size {n}")))?,
                ),
                _ => None,
            };
            if num_bits == 4 && group_size.is_none() {
                return Err(corrupt(format!(
                    "group {gname}: 4-bit group without group_size"
                )));
            }
            groups.push(GroupArgs {
                num_bits,
                group_size,
            });
        }
        let ignore = q
            .get("ignore")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            reader,
            format: format.to_string(),
            groups,
            ignore,
        })
    }

    /// The checkpoint's `format`.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::PackQuantized { group: 64 }, &[]))?;
    /// assert_eq!(ckpt.format(), "pack-quantized");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn format(&self) -> &str {
        &self.format
    }

    /// The layers listed in `ignore`.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &["lm_head".into()]))?;
    /// assert_eq!(ckpt.ignored(), &["lm_head".to_string()]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ignored(&self) -> &[String] {
        &self.ignore
    }

    /// The underlying reader (for the float tensors of the checkpoint).
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.reader().names().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reader(&self) -> &SafetensorsReader {
        &self.reader
    }

    fn group(&self, bits: u64, prefix: &str) -> Result<&GroupArgs> {
        let mut matching = self.groups.iter().filter(|g| g.num_bits == bits);
        match (matching.next(), matching.next()) {
            (Some(g), None) => Ok(g),
            (None, _) => Err(Error::Missing {
                what: "config group",
                name: format!("{bits}-bit weights for {prefix}"),
            }),
            (Some(_), Some(_)) => Err(Error::Unsupported {
                what: "config groups",
                found: format!("several {bits}-bit groups ({prefix})"),
                supported: "one group per bit width".into(),
            }),
        }
    }

    fn read_float(&self, name: &str) -> Result<Vec<f32>> {
        let raw = self.reader.read(name)?;
        Ok(match raw.dtype {
            Dtype::F32 => bytes_to_f32(&raw.data),
            Dtype::F16 => bytes_to_f16(&raw.data).iter().map(|v| v.to_f32()).collect(),
            Dtype::BF16 => raw
                .data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(Error::metadata(
                    format!("{name} dtype"),
                    "F32, F16 or BF16",
                    format!("{other:?}"),
                ))
            }
        })
    }

    fn expect_shape(&self, name: &str, dtype: Option<Dtype>, shape: &[usize]) -> Result<()> {
        let info = self.reader.info(name).ok_or_else(|| Error::Missing {
            what: "tensor",
            name: name.to_string(),
        })?;
        if let Some(d) = dtype {
            if info.dtype != d {
                return Err(Error::metadata(
                    format!("{name} dtype"),
                    format!("{d:?}"),
                    format!("{:?}", info.dtype),
                ));
            }
        }
        if info.shape != shape {
            return Err(Error::shape(name.to_string(), shape, &info.shape));
        }
        Ok(())
    }

    /// Loads the linear layer at `prefix` as a [`QuantLinear`] (dynamic per-token int8
    /// activations), reading only its tensors.
    ///
    /// # Errors
    /// [`Error::Missing`] for a missing tensor (e.g. `weight_scale`) or config group;
    /// [`Error::MetadataMismatch`] / [`Error::ShapeMismatch`] for tensors whose dtype or
    /// shape disagrees with the spec; [`Error::Unsupported`] for a zero point or `g_idx`,
    /// or a group size [`QuantLinear`] lacks; [`QuantLinear::from_parts`] errors.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.load_quant_linear("fc").is_err()); // no such layer
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_quant_linear(&self, prefix: &str) -> Result<QuantLinear> {
        for extra in ["weight_zero_point", "weight_g_idx", "input_scale"] {
            if self.reader.info(&format!("{prefix}.{extra}")).is_some() {
                return Err(Error::Unsupported {
                    what: "compressed-tensors tensor",
                    found: format!("{prefix}.{extra}"),
                    supported: "symmetric weights, dynamic activations".into(),
                });
            }
        }
        let packed_name = format!("{prefix}.weight_packed");
        let weight_name = format!("{prefix}.weight");
        let scale_name = format!("{prefix}.weight_scale");
        let (out, inp, weights, config) = if self.reader.info(&packed_name).is_some() {
            let group = self.group(4, prefix)?.group_size.unwrap_or(0);
            let config = QuantConfig::w4a8(group).map_err(|_| Error::Unsupported {
                what: "int4 group size",
                found: format!("{group} ({prefix})"),
                supported: "32, 64, 128".into(),
            })?;
            let shape_name = format!("{prefix}.weight_shape");
            let shape_raw = self.reader.read(&shape_name)?;
            let dims: Vec<i64> = match shape_raw.dtype {
                Dtype::I32 => shape_raw
                    .data
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect(),
                Dtype::I64 => shape_raw
                    .data
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect(),
                other => {
                    return Err(Error::metadata(
                        format!("{shape_name} dtype"),
                        "I32 (or I64)",
                        format!("{other:?}"),
                    ))
                }
            };
            let [out, inp] = dims[..] else {
                return Err(Error::shape(shape_name, [2usize], dims.len()));
            };
            let (Ok(out), Ok(inp)) = (usize::try_from(out), usize::try_from(inp)) else {
                return Err(Error::Corrupt {
                    what: shape_name,
                    reason: format!("negative dims [{out}, {inp}]"),
                });
            };
            if out == 0 || inp == 0 {
                return Err(Error::Corrupt {
                    what: shape_name,
                    reason: format!("zero dims [{out}, {inp}]"),
                });
            }
            let words = inp.div_ceil(8);
            self.expect_shape(&packed_name, Some(Dtype::I32), &[out, words])?;
            self.expect_shape(&scale_name, None, &[out, inp.div_ceil(group)])?;
            let raw = self.reader.read(&packed_name)?;
            let all: Vec<i32> = raw
                .data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let mut w = Vec::with_capacity(out * inp);
            for row in all.chunks(words) {
                w.extend(unpack_row_int32(row, inp));
            }
            (out, inp, w, config)
        } else {
            self.group(8, prefix)?;
            let info = self
                .reader
                .info(&weight_name)
                .ok_or_else(|| Error::Missing {
                    what: "tensor",
                    name: weight_name.clone(),
                })?;
            let (out, inp) = match info.shape[..] {
                [o, i] if o > 0 && i > 0 => (o, i),
                _ => return Err(Error::shape(weight_name, "[out > 0, in > 0]", &info.shape)),
            };
            self.expect_shape(&weight_name, Some(Dtype::I8), &[out, inp])?;
            self.expect_shape(&scale_name, None, &[out, 1])?;
            let mut w = bytes_to_i8(&self.reader.read(&weight_name)?.data);
            let clamped = w.iter().filter(|&&q| q == -128).count();
            if clamped > 0 {
                tracing::warn!(
                    "{weight_name}: {clamped} codes of -128 loaded as -127 (QuantLinear range)"
                );
                w.iter_mut().filter(|q| **q == -128).for_each(|q| *q = -127);
            }
            (out, inp, w, QuantConfig::w8a8())
        };
        let scales = self.read_float(&scale_name)?;
        let bias_name = format!("{prefix}.bias");
        let bias = if self.reader.info(&bias_name).is_some() {
            self.expect_shape(&bias_name, None, &[out])?;
            Some(self.read_float(&bias_name)?)
        } else {
            None
        };
        QuantLinear::from_parts(QuantLinearParts {
            out_features: out,
            in_features: inp,
            weights,
            scales,
            bias,
            smooth: None,
            config,
        })
    }

    /// Reads a float tensor of the checkpoint (an ignored layer's weight, a norm, …).
    ///
    /// # Errors
    /// [`Error::Missing`] when absent; [`Error::MetadataMismatch`] for a non-float dtype.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.load_float("norm", &candle_core::Device::Cpu).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_float(&self, name: &str, device: &Device) -> Result<Tensor> {
        let shape = self
            .reader
            .info(name)
            .ok_or_else(|| Error::Missing {
                what: "tensor",
                name: name.to_string(),
            })?
            .shape
            .clone();
        let values = self.read_float(name)?;
        Ok(Tensor::from_vec(values, shape, device)?)
    }
}
