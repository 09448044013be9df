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
//! Also read: llm-compressor's W4A8 preset, `int-quantized` with 4-bit codes in I8
//! `p.weight` `[out, in]` and group scales `[out, in/group]`; `input_activations: null`
//! (W4A16 / W8A16), run weight-only as [`ActivationQuant::Float`]; dynamic per-tensor and
//! static per-tensor (`p.input_scale` `[1]`) int8 activations, which [`CtWriter`] also
//! writes; `mixed-precision` checkpoints whose groups carry their own `format`; sharded
//! checkpoints ([`CtCheckpoint::open_dir`], [`CtCheckpoint::open_sharded`], written by
//! [`CtWriter::write_sharded`]).
//!
//! Reading notes: compressed-tensors' int8 range is `[-128, 127]`; [`QuantLinear`] takes
//! `[-127, 127]`, so a stored `-128` (possible when the writer rounds `-127.5` to even) is
//! loaded as `-127`, an error of one step on that element, counted in
//! [`CtLayerReport::clamped_codes`] and [`CtCheckpoint::clamped_codes`] (and a `tracing`
//! warning). A layer's config group is the one whose format, bit width, strategy and
//! group size agree with its stored tensors; a layer no group describes is refused with
//! [`Error::Unsupported`] naming the tensors found. Asymmetric (zero-point) and
//! activation-ordered (`g_idx`) checkpoints are refused with [`Error::Unsupported`].
//! [`CtWriter`] refuses int4 layers whose group does not divide `in_features`: the format
//! has no layout for a shorter last group.
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

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Dtype;
use serde_json::{json, Value};

use super::part::Part;
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
            // Asymmetric layers are refused before (`add_quant_linear`); their codes and
            // scales alone would be the packed layout.
            WeightQuant::Int4Grouped { group } | WeightQuant::Int4GroupedAsym { group } => {
                CtFormat::PackQuantized { group }
            }
            WeightQuant::Int8PerChannel => CtFormat::IntQuantized,
        }
    }
}

/// The `input_activations` of a config group for an activation mode: dynamic per-token
/// or per-tensor int8, static per-tensor int8 (with a `p.input_scale` tensor per layer),
/// or `null` for weight-only layers.
fn activation_args(acts: ActivationQuant) -> Value {
    match acts {
        ActivationQuant::PerTensor => quant_args(8, "tensor", None, true),
        ActivationQuant::Static { .. } => quant_args(8, "tensor", None, false),
        ActivationQuant::Float => Value::Null,
        ActivationQuant::PerToken => quant_args(8, "token", None, true),
    }
}

/// Whether two activation modes share one config group (static scales may differ).
fn same_activation_kind(a: ActivationQuant, b: ActivationQuant) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
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

/// Builds a compressed-tensors checkpoint from [`QuantLinear`]s (all of one format) and
/// float tensors (embeddings, norms, layers listed in `ignore`).
#[derive(Debug, Default)]
pub struct CtWriter {
    parts: BTreeMap<String, Part>,
    format: Option<CtFormat>,
    activations: Option<ActivationQuant>,
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
    /// Activations map to the config group's `input_activations`: per token and per
    /// tensor to dynamic int8 of that strategy, [`ActivationQuant::Static`] to static
    /// per-tensor int8 with a `p.input_scale` tensor `[1]`, [`ActivationQuant::Float`]
    /// (weight-only, W4A16 / W8A16) to `null`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a layer with a smoothing vector (fold it into the
    /// preceding norm first), an int4 layer whose group does not divide `in_features`
    /// (the format has no layout for a shorter last group: compressed-tensors 0.12 would
    /// decode it with wrong scales, 0.20 refuses it), or a layer whose format or
    /// activation mode differs from the layers already added (one config group per
    /// checkpoint), or an asymmetric int4 layer ([`WeightQuant::Int4GroupedAsym`]: its
    /// float offsets are not compressed-tensors' integer zero points);
    /// [`Error::InvalidArgument`] for a name already used.
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
        let acts = p.config.activations();
        if let Some(a) = self.activations {
            if !same_activation_kind(a, acts) {
                return Err(Error::Unsupported {
                    what: "mixed activation modes in one compressed-tensors checkpoint",
                    found: format!("{prefix}: {acts:?} after {a:?}"),
                    supported: "one activation mode per checkpoint".into(),
                });
            }
        }
        if p.offsets.is_some() {
            return Err(Error::Unsupported {
                what: "asymmetric int4 layer for compressed-tensors",
                found: format!(
                    "{prefix}: {:?} with float per-group offsets (w = s·c + m); \
                     compressed-tensors stores integer zero points (w = s·(q − z)), which \
                     hold such an offset only when m / s is an integer",
                    p.config.weights()
                ),
                supported: "symmetric int8 or int4 layers (Int8PerChannel, Int4Grouped)".into(),
            });
        }
        let format = CtFormat::of(&p.config);
        if let CtFormat::PackQuantized { group } = format {
            if !p.in_features.is_multiple_of(group) {
                return Err(Error::Unsupported {
                    what: "int4 layer for compressed-tensors",
                    found: format!(
                        "{prefix}: in_features {} is not a multiple of the group {group} \
                         (the last group of each row would be shorter)",
                        p.in_features
                    ),
                    supported: "in_features divisible by the group (compressed-tensors \
                                infers the group as in_features / number of scales)"
                        .into(),
                });
            }
        }
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
                    Part::i8(vec![out, inp], &p.weights),
                )?;
                self.insert(
                    format!("{prefix}.weight_scale"),
                    Part::f32(vec![out, 1], &p.scales),
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
                    Part::f32(vec![out, inp.div_ceil(group)], &p.scales),
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
            self.insert(format!("{prefix}.bias"), Part::f32(vec![out], b))?;
        }
        if let ActivationQuant::Static { scale } = acts {
            self.insert(
                format!("{prefix}.input_scale"),
                Part::f32(vec![1], &[scale]),
            )?;
        }
        self.format = Some(format);
        self.activations = Some(acts);
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
        self.insert(name.to_string(), Part::f32(tensor.dims().to_vec(), &values))
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
        let mut config = quantization_config(format, &self.ignore);
        let acts = self.activations.unwrap_or_default();
        config["config_groups"]["group_0"]["input_activations"] = activation_args(acts);
        Ok(config)
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
        let config = self.full_config(base_config)?;
        let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        super::write_safetensors(
            safetensors_path.as_ref(),
            self.parts.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            metadata,
        )?;
        write_json(config_path.as_ref(), &config)
    }

    /// Writes a sharded checkpoint into directory `dir` as transformers and llm-compressor
    /// lay one out: shards `model-00001-of-0000N.safetensors` of at most
    /// `max_shard_bytes` of tensor data each (a larger tensor gets a shard of its own),
    /// [`SHARD_INDEX_NAME`] (`{"metadata": {"total_size": bytes}, "weight_map": {tensor:
    /// shard}}`) and `config.json` as in [`CtWriter::write`]. Tensors go to shards in name
    /// order. Every file goes through a temporary file renamed into place.
    ///
    /// # Errors
    /// As [`CtWriter::write`]; [`Error::InvalidArgument`] for `max_shard_bytes == 0`.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{CtCheckpoint, CtWriter};
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// let dir = tempfile::tempdir()?;
    /// let mut writer = CtWriter::new();
    /// for name in ["a", "b"] {
    ///     let w = candle_core::Tensor::randn(0f32, 1., (8, 64), &candle_core::Device::Cpu)?;
    ///     writer.add_quant_linear(name, &QuantLinear::new(&w, None, &QuantConfig::w8a8())?)?;
    /// }
    /// writer.write_sharded(dir.path(), 600, None)?;
    /// let ckpt = CtCheckpoint::open_dir(dir.path())?;
    /// assert_eq!(ckpt.shard_count(), 2);
    /// assert_eq!(ckpt.load_quant_linear("b")?.out_features(), 8);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_sharded(
        &self,
        dir: impl AsRef<Path>,
        max_shard_bytes: usize,
        base_config: Option<Value>,
    ) -> Result<()> {
        if max_shard_bytes == 0 {
            return Err(Error::invalid("max_shard_bytes", "must be at least 1"));
        }
        let dir = dir.as_ref();
        let config = self.full_config(base_config)?;
        let mut shards: Vec<Vec<(&str, &Part)>> = Vec::new();
        let mut current = 0usize;
        for (name, part) in &self.parts {
            let n = part.data.len();
            match shards.last_mut() {
                Some(last) if current + n <= max_shard_bytes => {
                    last.push((name.as_str(), part));
                    current += n;
                }
                _ => {
                    shards.push(vec![(name.as_str(), part)]);
                    current = n;
                }
            }
        }
        let count = shards.len().max(1);
        let mut weight_map = serde_json::Map::new();
        let total: usize = self.parts.values().map(|p| p.data.len()).sum();
        let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        for (i, shard) in shards.into_iter().enumerate() {
            let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
            for (name, _) in &shard {
                weight_map.insert(name.to_string(), json!(file));
            }
            super::write_safetensors(&dir.join(&file), shard, metadata.clone())?;
        }
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        write_json(&dir.join(SHARD_INDEX_NAME), &index)?;
        write_json(&dir.join("config.json"), &config)
    }

    fn full_config(&self, base_config: Option<Value>) -> Result<Value> {
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
        Ok(config)
    }
}

/// How a config group's `input_activations` says activations are quantized.
#[derive(Debug, Clone, PartialEq)]
enum ActArgs {
    /// `null`: weight-only.
    None,
    /// 8-bit symmetric int, dynamic, per token.
    DynamicToken,
    /// 8-bit symmetric int, dynamic, per tensor.
    DynamicTensor,
    /// 8-bit symmetric int, static, per tensor (`p.input_scale`).
    StaticTensor,
    /// Anything else, described for the error.
    Other(String),
}

/// The arguments of one config group, as far as loading needs them.
#[derive(Debug, Clone, PartialEq)]
struct GroupArgs {
    name: String,
    num_bits: u64,
    strategy: String,
    group_size: Option<usize>,
    /// The group's own `format`, or the checkpoint's.
    format: String,
    acts: ActArgs,
}

impl GroupArgs {
    fn describe(&self) -> String {
        let group = self
            .group_size
            .map_or(String::new(), |g| format!(" (group_size {g})"));
        format!(
            "{}: {} {}-bit {}{group}",
            self.name, self.format, self.num_bits, self.strategy
        )
    }
}

/// Where a tensor of the checkpoint lives: one reader per safetensors file (one, or the
/// shards of `model.safetensors.index.json`) and the shard holding each tensor.
#[derive(Debug)]
struct Shards {
    readers: Vec<SafetensorsReader>,
    /// Tensor name → index into `readers` (only for sharded checkpoints).
    index: std::collections::HashMap<String, usize>,
}

impl Shards {
    fn single(reader: SafetensorsReader) -> Self {
        Self {
            readers: vec![reader],
            index: Default::default(),
        }
    }

    fn reader_of(&self, name: &str) -> Option<&SafetensorsReader> {
        if self.readers.len() == 1 {
            return self.readers.first();
        }
        self.index.get(name).and_then(|&i| self.readers.get(i))
    }

    fn info(&self, name: &str) -> Option<&safetensors::tensor::TensorInfo> {
        self.reader_of(name).and_then(|r| r.info(name))
    }

    fn read(&self, name: &str) -> Result<super::reader::RawTensor<'_>> {
        match self.reader_of(name) {
            Some(r) => r.read(name),
            None => Err(Error::Missing {
                what: "tensor",
                name: name.to_string(),
            }),
        }
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.readers.iter().flat_map(|r| r.names()).collect();
        names.sort();
        names
    }
}

/// The file name of the index of a sharded checkpoint, as transformers and llm-compressor
/// write it.
pub const SHARD_INDEX_NAME: &str = "model.safetensors.index.json";

/// An opened compressed-tensors checkpoint: one safetensors file, or the shards listed
/// by a `model.safetensors.index.json`, with the `quantization_config` of its config.
#[derive(Debug)]
pub struct CtCheckpoint {
    shards: Shards,
    format: String,
    groups: Vec<GroupArgs>,
    ignore: Vec<String>,
    clamped: std::sync::atomic::AtomicUsize,
}

/// What loading one layer found that the caller should know about
/// ([`CtCheckpoint::load_quant_linear_with_report`]).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct CtLayerReport {
    /// Int8 codes stored as `-128` (inside compressed-tensors' range `[-128, 127]`)
    /// that were loaded as `-127` ([`QuantLinear`]'s symmetric range): each is one
    /// quantization step off on that weight.
    pub clamped_codes: usize,
    /// The activation mode the layer runs with, from the config group's
    /// `input_activations` ([`ActivationQuant::Float`] for weight-only checkpoints).
    pub activations: ActivationQuant,
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "compressed-tensors quantization_config".into(),
        reason: reason.into(),
    }
}

/// Parses one group's `input_activations`.
/// Config entry `key` of `obj`: `Ok(None)` when it is absent or null, the value when
/// `get` accepts it, and an error saying "wrong type" (not "missing") when it is there
/// with another JSON type. `at` prefixes the key in the message (e.g. `"group g: weights."`).
fn entry<'a, T>(
    obj: &'a Value,
    at: &str,
    key: &str,
    expected: &str,
    get: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => get(v).map(Some).ok_or_else(|| {
            corrupt(format!(
                "{at}{key} has the wrong type ({v}), expected {expected}"
            ))
        }),
    }
}

fn parse_activations(gname: &str, a: Option<&Value>) -> Result<ActArgs> {
    let a = match a {
        None | Some(Value::Null) => return Ok(ActArgs::None),
        Some(a @ Value::Object(_)) => a,
        Some(other) => {
            return Err(corrupt(format!(
                "group {gname}: input_activations has the wrong type ({other})"
            )))
        }
    };
    let at = format!("group {gname}: input_activations.");
    let bits = entry(a, &at, "num_bits", "an integer", Value::as_u64)?;
    let ty = entry(a, &at, "type", "a string", Value::as_str)?.unwrap_or("int");
    let symmetric = entry(a, &at, "symmetric", "a boolean", Value::as_bool)?.unwrap_or(true);
    let dynamic = entry(a, &at, "dynamic", "a boolean", Value::as_bool)?.unwrap_or(false);
    let strategy = entry(a, &at, "strategy", "a string", Value::as_str)?.unwrap_or("");
    Ok(match (bits, ty, symmetric, dynamic, strategy) {
        (Some(8), "int", true, true, "token") => ActArgs::DynamicToken,
        (Some(8), "int", true, true, "tensor") => ActArgs::DynamicTensor,
        (Some(8), "int", true, false, "tensor") => ActArgs::StaticTensor,
        _ => ActArgs::Other(format!(
            "{} {ty}, strategy {strategy:?}, symmetric {symmetric}, dynamic {dynamic}",
            bits.map_or("?-bit".to_string(), |b| format!("{b}-bit"))
        )),
    })
}

impl CtCheckpoint {
    /// Opens `safetensors_path` (header only) and reads `quantization_config` from the
    /// `config.json` at `config_path`.
    ///
    /// # Errors
    /// Reader errors; [`Error::Missing`] when the config has no `quantization_config`;
    /// [`Error::Unsupported`] for another `quant_method`, a format other than
    /// `int-quantized` / `pack-quantized` / `mixed-precision`, or asymmetric / non-int /
    /// actorder weights; [`Error::Corrupt`] for a malformed config.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtCheckpoint;
    /// assert!(CtCheckpoint::open("/nonexistent.safetensors", "/nonexistent.json").is_err());
    /// ```
    pub fn open(safetensors_path: impl AsRef<Path>, config_path: impl AsRef<Path>) -> Result<Self> {
        let config = read_config(config_path.as_ref())?;
        Self::from_parts(SafetensorsReader::open(safetensors_path)?, &config)
    }

    /// Opens a checkpoint directory as transformers lays it out: `config.json` and either
    /// one `model.safetensors` or a sharded checkpoint ([`SHARD_INDEX_NAME`] and the
    /// shards it lists).
    ///
    /// # Errors
    /// As [`CtCheckpoint::open`] and [`CtCheckpoint::open_sharded`]; [`Error::Missing`]
    /// when the directory holds neither `model.safetensors` nor an index.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtCheckpoint;
    /// assert!(CtCheckpoint::open_dir("/nonexistent-checkpoint").is_err());
    /// ```
    pub fn open_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config = dir.join("config.json");
        let index = dir.join(SHARD_INDEX_NAME);
        let single = dir.join("model.safetensors");
        if index.exists() {
            Self::open_sharded(index, config)
        } else if single.exists() {
            Self::open(single, config)
        } else {
            Err(Error::Missing {
                what: "checkpoint file",
                name: format!(
                    "{} or {} in {}",
                    "model.safetensors",
                    SHARD_INDEX_NAME,
                    dir.display()
                ),
            })
        }
    }

    /// Opens a sharded checkpoint: the index at `index_path` (`{"metadata": {..},
    /// "weight_map": {tensor: shard file}}`), every shard it lists (file names in the
    /// index's directory; headers only), and the config.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an index that is not such an object, a shard name that is a
    /// path (`/`, `\`, `..`), a tensor listed for a shard that lacks it, or a tensor held
    /// by two shards; reader and config errors as [`CtCheckpoint::open`], naming the
    /// shard file.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtCheckpoint;
    /// assert!(CtCheckpoint::open_sharded("/no/model.safetensors.index.json", "/no/config.json").is_err());
    /// ```
    pub fn open_sharded(
        index_path: impl AsRef<Path>,
        config_path: impl AsRef<Path>,
    ) -> Result<Self> {
        let index_path = index_path.as_ref();
        let config = read_config(config_path.as_ref())?;
        let text = std::fs::read(index_path).map_err(|e| {
            Error::Io(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", index_path.display()),
            ))
        })?;
        let bad = |reason: String| Error::Corrupt {
            what: format!("shard index {}", index_path.display()),
            reason,
        };
        let index: Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let map = index
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let mut files: Vec<String> = Vec::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("{tensor}: the shard is not a string")))?;
            if file.is_empty() || file.contains(['/', '\\']) || file == ".." || file == "." {
                return Err(bad(format!("{tensor}: shard {file:?} is not a file name")));
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        files.sort();
        let mut readers = Vec::with_capacity(files.len());
        let mut where_is = std::collections::HashMap::new();
        for (i, file) in files.iter().enumerate() {
            let reader = SafetensorsReader::open(dir.join(file))?;
            for name in reader.names() {
                if let Some(j) = where_is.insert(name.clone(), i) {
                    return Err(bad(format!(
                        "tensor {name} is in two shards, {} and {file}",
                        files[j]
                    )));
                }
            }
            readers.push(reader);
        }
        for (tensor, file) in map {
            let listed = file.as_str().unwrap_or_default();
            let holder = where_is.get(tensor).map(|&i| files[i].as_str());
            if holder != Some(listed) {
                return Err(bad(format!(
                    "the index puts {tensor} in {listed}, which does not hold it"
                )));
            }
        }
        let shards = Shards {
            readers,
            index: where_is,
        };
        Self::from_shards(shards, &config)
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
        Self::from_shards(Shards::single(reader), config)
    }

    /// [`CtCheckpoint::from_parts`] with the `config.json` given as its bytes.
    ///
    /// # Errors
    /// [`Error::Json`] when the bytes are not JSON; as [`CtCheckpoint::open`] otherwise.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtCheckpoint;
    /// use candle_compress::io::reader::SafetensorsReader;
    /// let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// let bytes = safetensors::serialize(none, None)?;
    /// let err = CtCheckpoint::from_config_bytes(SafetensorsReader::from_bytes(bytes)?, b"{oops").unwrap_err();
    /// assert!(matches!(err, candle_compress::Error::Json(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_config_bytes(reader: SafetensorsReader, config_json: &[u8]) -> Result<Self> {
        let config: Value = serde_json::from_slice(config_json)?;
        Self::from_parts(reader, &config)
    }

    fn from_shards(shards: Shards, config: &Value) -> Result<Self> {
        let q = config.get("quantization_config").unwrap_or(config);
        let method = match q.get("quant_method") {
            Some(Value::String(m)) => m.as_str(),
            Some(other) => {
                return Err(corrupt(format!(
                    "quant_method has the wrong type ({other}), expected a string"
                )))
            }
            None => {
                return Err(Error::Missing {
                    what: "config entry",
                    name: "quantization_config.quant_method".into(),
                })
            }
        };
        if method != "compressed-tensors" {
            return Err(Error::Unsupported {
                what: "quant_method",
                found: method.to_string(),
                supported: "compressed-tensors".into(),
            });
        }
        let format = entry(q, "", "format", "a string", Value::as_str)?
            .ok_or_else(|| corrupt("missing \"format\" (a string)"))?;
        const FORMATS: [&str; 3] = ["int-quantized", "pack-quantized", "mixed-precision"];
        if !FORMATS.contains(&format) {
            return Err(Error::Unsupported {
                what: "compressed-tensors format",
                found: format.to_string(),
                supported: "int-quantized, pack-quantized, mixed-precision".into(),
            });
        }
        let groups_obj = entry(q, "", "config_groups", "an object", Value::as_object)?
            .ok_or_else(|| corrupt("missing \"config_groups\" object"))?;
        let mut groups = Vec::new();
        for (gname, g) in groups_obj {
            let w = g
                .get("weights")
                .ok_or_else(|| corrupt(format!("group {gname} has no \"weights\"")))?;
            let at = format!("group {gname}: weights.");
            let num_bits = entry(w, &at, "num_bits", "an integer", Value::as_u64)?
                .ok_or_else(|| corrupt(format!("group {gname}: weights.num_bits is missing")))?;
            let ty = entry(w, &at, "type", "a string", Value::as_str)?.unwrap_or("int");
            let symmetric =
                entry(w, &at, "symmetric", "a boolean", Value::as_bool)?.unwrap_or(true);
            let actorder = w
                .get("actorder")
                .is_some_and(|a| !a.is_null() && a != false);
            let strategy = entry(w, &at, "strategy", "a string", Value::as_str)?.unwrap_or("");
            let supported = ty == "int"
                && symmetric
                && !actorder
                && matches!(num_bits, 4 | 8)
                && matches!(strategy, "channel" | "group");
            if !supported {
                return Err(Error::Unsupported {
                    what: "compressed-tensors weight scheme",
                    found: format!(
                        "group {gname}: {num_bits}-bit {ty}, strategy {strategy:?}, \
                         symmetric {symmetric}, actorder {actorder}"
                    ),
                    supported: "8-bit int channel, 4-bit int group or channel, symmetric".into(),
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
            if strategy == "group" && group_size.is_none() {
                return Err(corrupt(format!(
                    "group {gname}: strategy \"group\" without group_size"
                )));
            }
            let gformat = match g.get("format") {
                Some(Value::String(f)) if format == "mixed-precision" => f.clone(),
                _ => format.to_string(),
            };
            groups.push(GroupArgs {
                name: gname.clone(),
                num_bits,
                strategy: strategy.to_string(),
                group_size,
                format: gformat,
                acts: parse_activations(gname, g.get("input_activations"))?,
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
            shards,
            format: format.to_string(),
            groups,
            ignore,
            clamped: Default::default(),
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

    /// The reader of the first (for a single file: the only) safetensors file. For a
    /// sharded checkpoint use [`CtCheckpoint::names`] and [`CtCheckpoint::info`], which
    /// span every shard.
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
        &self.shards.readers[0]
    }

    /// Number of safetensors files (1, or the shard count).
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert_eq!(ckpt.shard_count(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn shard_count(&self) -> usize {
        self.shards.readers.len()
    }

    /// Every tensor name of the checkpoint (all shards), sorted.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.names().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn names(&self) -> Vec<String> {
        self.shards.names()
    }

    /// The header entry of tensor `name`, whichever shard holds it.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.info("fc.weight").is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn info(&self, name: &str) -> Option<&safetensors::tensor::TensorInfo> {
        self.shards.info(name)
    }

    /// Int8 codes of `-128` loaded as `-127` so far, over every layer loaded from this
    /// checkpoint (see [`CtLayerReport::clamped_codes`]).
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert_eq!(ckpt.clamped_codes(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clamped_codes(&self) -> usize {
        self.clamped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn read_float(&self, name: &str) -> Result<Vec<f32>> {
        let raw = self.shards.read(name)?;
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
        let info = self.shards.info(name).ok_or_else(|| Error::Missing {
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

    /// A one-line description of the tensors stored for layer `prefix`, for errors.
    fn layout_of(&self, prefix: &str) -> String {
        let parts: Vec<String> = ["weight", "weight_packed", "weight_scale", "weight_shape"]
            .iter()
            .filter_map(|s| {
                let name = format!("{prefix}.{s}");
                self.shards
                    .info(&name)
                    .map(|i| format!("{s} {:?} {:?}", i.dtype, i.shape))
            })
            .collect();
        if parts.is_empty() {
            format!("{prefix}: no weight tensors")
        } else {
            format!("{prefix}: {}", parts.join(", "))
        }
    }

    /// The config group describing layer `prefix`, chosen by what is stored: the groups
    /// whose format, bit width, strategy and group size agree with the layer's tensors.
    fn group_for(&self, prefix: &str, packed: bool, inp: usize) -> Result<&GroupArgs> {
        let scale_cols = self
            .shards
            .info(&format!("{prefix}.weight_scale"))
            .and_then(|i| match i.shape[..] {
                [_, c] => Some(c),
                _ => None,
            });
        let fits = |g: &&GroupArgs| {
            let format_ok = if packed {
                g.format == "pack-quantized" && g.num_bits == 4
            } else {
                g.format == "int-quantized"
            };
            let cols_ok = match (g.strategy.as_str(), g.group_size, scale_cols) {
                ("channel", _, Some(c)) => c == 1,
                ("group", Some(gs), Some(c)) => inp.is_multiple_of(gs) && c == inp / gs,
                _ => false,
            };
            format_ok && cols_ok
        };
        let found: Vec<&GroupArgs> = self.groups.iter().filter(fits).collect();
        match found[..] {
            [g] => Ok(g),
            [g, ..]
                if found.iter().all(|h| {
                    (h.num_bits, &h.strategy, h.group_size, &h.acts)
                        == (g.num_bits, &g.strategy, g.group_size, &g.acts)
                }) =>
            {
                Ok(g)
            }
            [] => {
                let groups: Vec<String> = self.groups.iter().map(GroupArgs::describe).collect();
                Err(Error::Unsupported {
                    what: "compressed-tensors layer layout",
                    found: format!(
                        "{} matches no config group ({})",
                        self.layout_of(prefix),
                        if groups.is_empty() {
                            "none".into()
                        } else {
                            groups.join("; ")
                        }
                    ),
                    supported: "int-quantized: I8 weight [out, in] with weight_scale \
                                [out, 1] (8-bit channel) or [out, in/group] (4-bit group); \
                                pack-quantized: I32 weight_packed [out, ceil(in/8)] with \
                                weight_scale [out, in/group] and weight_shape"
                        .into(),
                })
            }
            _ => Err(Error::Unsupported {
                what: "compressed-tensors config groups",
                found: format!(
                    "{} matches several groups with different arguments ({})",
                    self.layout_of(prefix),
                    found
                        .iter()
                        .map(|g| g.describe())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                supported: "one matching group per layer".into(),
            }),
        }
    }

    /// Reads `p.weight_shape` (I32 or I64 `[2]`) as `(out, in)`, both non-zero.
    fn weight_shape(&self, prefix: &str) -> Result<(usize, usize)> {
        let shape_name = format!("{prefix}.weight_shape");
        let shape_raw = self.shards.read(&shape_name)?;
        let dims: Vec<i64> = match shape_raw.dtype {
            Dtype::I32 => shape_raw
                .data
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
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
        let (Ok(o), Ok(i)) = (usize::try_from(out), usize::try_from(inp)) else {
            return Err(Error::Corrupt {
                what: shape_name,
                reason: format!("negative dims [{out}, {inp}]"),
            });
        };
        if o == 0 || i == 0 {
            return Err(Error::Corrupt {
                what: shape_name,
                reason: format!("zero dims [{o}, {i}]"),
            });
        }
        Ok((o, i))
    }

    /// Loads the linear layer at `prefix` as a [`QuantLinear`], reading only its tensors.
    /// Equivalent to [`CtCheckpoint::load_quant_linear_with_report`] without the report
    /// (the clamped-code count still adds to [`CtCheckpoint::clamped_codes`]).
    ///
    /// # Errors
    /// As [`CtCheckpoint::load_quant_linear_with_report`].
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
        Ok(self.load_quant_linear_with_report(prefix)?.0)
    }

    /// Loads the linear layer at `prefix` as a [`QuantLinear`] and reports what the
    /// caller should know ([`CtLayerReport`]: `-128` codes clamped, the activation mode).
    ///
    /// The layer's config group is the one whose format, bit width, strategy and group
    /// size agree with its stored tensors. Layouts read: `int-quantized` I8 `weight`
    /// `[out, in]` with `weight_scale` `[out, 1]` (8-bit per channel) or `[out, in/g]`
    /// (4-bit codes in I8, groups of `g`: llm-compressor's W4A8 preset); `pack-quantized`
    /// I32 `weight_packed` with `weight_scale` `[out, in/g]` and `weight_shape`.
    /// Activations follow the group's `input_activations`: `null` runs weight-only
    /// ([`ActivationQuant::Float`]), dynamic int8 per token / per tensor, static int8 per
    /// tensor with `p.input_scale`.
    ///
    /// # Errors
    /// [`Error::Missing`] for a missing tensor (e.g. `weight_scale`);
    /// [`Error::Unsupported`] naming the layout found when no config group matches the
    /// stored tensors, for a zero point or `g_idx`, a group size [`QuantLinear`] lacks
    /// (32, 64, 128), or activation arguments it cannot run;
    /// [`Error::MetadataMismatch`] / [`Error::ShapeMismatch`] for tensors whose dtype or
    /// shape disagrees with the spec; [`Error::Corrupt`] for 4-bit codes outside
    /// `[-8, 7]`, or a `weight_shape` smaller than the packed codes whose padding is not
    /// zero; [`QuantLinear::from_parts`] errors.
    ///
    /// ```
    /// # use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// # let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// # let reader = candle_compress::io::reader::SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert!(ckpt.load_quant_linear_with_report("fc").is_err()); // no such layer
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load_quant_linear_with_report(
        &self,
        prefix: &str,
    ) -> Result<(QuantLinear, CtLayerReport)> {
        for extra in ["weight_zero_point", "weight_g_idx"] {
            if self.shards.info(&format!("{prefix}.{extra}")).is_some() {
                return Err(Error::Unsupported {
                    what: "compressed-tensors tensor",
                    found: format!("{prefix}.{extra} ({})", self.layout_of(prefix)),
                    supported: "symmetric weights without activation order".into(),
                });
            }
        }
        let packed_name = format!("{prefix}.weight_packed");
        let weight_name = format!("{prefix}.weight");
        let scale_name = format!("{prefix}.weight_scale");
        if self.shards.info(&scale_name).is_none() {
            return Err(Error::Missing {
                what: "tensor",
                name: format!("{scale_name} ({})", self.layout_of(prefix)),
            });
        }
        let mut clamped = 0usize;
        let (out, inp, weights, group) = if self.shards.info(&packed_name).is_some() {
            let (out, inp) = self.weight_shape(prefix)?;
            let words = inp.div_ceil(8);
            let packed_info = self.shards.info(&packed_name).map(|i| i.shape.clone());
            if let Some([_, stored_words]) = packed_info.as_deref() {
                if *stored_words != words {
                    return Err(Error::Corrupt {
                        what: packed_name,
                        reason: format!(
                            "weight_shape [{out}, {inp}] needs {words} int32 words per row, \
                             {stored_words} are stored ({})",
                            self.layout_of(prefix)
                        ),
                    });
                }
            }
            self.expect_shape(&packed_name, Some(Dtype::I32), &[out, words])?;
            let raw = self.shards.read(&packed_name)?;
            let all: Vec<i32> = raw
                .data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let pad_bits = 4 * (words * 8 - inp);
            let mut w = Vec::with_capacity(out * inp);
            for (r, row) in all.chunks(words).enumerate() {
                if pad_bits > 0 {
                    let last = row.last().copied().unwrap_or(0) as u32;
                    let padding = last >> (32 - pad_bits);
                    if padding != 0 {
                        return Err(Error::Corrupt {
                            what: packed_name,
                            reason: format!(
                                "row {r} holds non-zero codes past weight_shape's {inp} \
                                 columns (weight_shape smaller than the stored codes)"
                            ),
                        });
                    }
                }
                w.extend(unpack_row_int32(row, inp));
            }
            let g = self.group_for(prefix, true, inp)?;
            (out, inp, w, g)
        } else {
            let info = self
                .shards
                .info(&weight_name)
                .ok_or_else(|| Error::Missing {
                    what: "tensor",
                    name: format!("{weight_name} (or {packed_name})"),
                })?;
            let (out, inp) = match info.shape[..] {
                [o, i] if o > 0 && i > 0 => (o, i),
                _ => return Err(Error::shape(weight_name, "[out > 0, in > 0]", &info.shape)),
            };
            self.expect_shape(&weight_name, Some(Dtype::I8), &[out, inp])?;
            let g = self.group_for(prefix, false, inp)?;
            let mut w = bytes_to_i8(&self.shards.read(&weight_name)?.data);
            if g.num_bits == 4 {
                let bad = w.iter().filter(|q| !(-8..=7).contains(*q)).count();
                if bad > 0 {
                    return Err(Error::Corrupt {
                        what: weight_name,
                        reason: format!(
                            "{bad} codes outside [-8, 7] under the 4-bit config group {}",
                            g.describe()
                        ),
                    });
                }
            } else {
                clamped = w.iter().filter(|&&q| q == -128).count();
                if clamped > 0 {
                    tracing::warn!(
                        "{weight_name}: {clamped} codes of -128 loaded as -127 (QuantLinear range)"
                    );
                    w.iter_mut().filter(|q| **q == -128).for_each(|q| *q = -127);
                }
            }
            (out, inp, w, g)
        };
        let weights_mode = match (group.num_bits, group.strategy.as_str(), group.group_size) {
            (8, "channel", _) => WeightQuant::Int8PerChannel,
            (4, "group", Some(gs)) if crate::nn::quant_linear::INT4_GROUPS.contains(&gs) => {
                WeightQuant::Int4Grouped { group: gs }
            }
            _ => {
                return Err(Error::Unsupported {
                    what: "compressed-tensors weights for QuantLinear",
                    found: format!("{} under {}", self.layout_of(prefix), group.describe()),
                    supported: "8-bit per channel, or 4-bit groups of 32, 64 or 128".into(),
                })
            }
        };
        let acts = match &group.acts {
            ActArgs::None => ActivationQuant::Float,
            ActArgs::DynamicToken => ActivationQuant::PerToken,
            ActArgs::DynamicTensor => ActivationQuant::PerTensor,
            ActArgs::StaticTensor => {
                let name = format!("{prefix}.input_scale");
                let s = self.read_float(&name)?;
                let [scale] = s[..] else {
                    return Err(Error::shape(name, [1usize], s.len()));
                };
                ActivationQuant::Static { scale }
            }
            ActArgs::Other(desc) => {
                return Err(Error::Unsupported {
                    what: "compressed-tensors input activations",
                    found: format!("{prefix} (group {}): {desc}", group.name),
                    supported: "null (weight-only), 8-bit int symmetric: dynamic per token, \
                                dynamic per tensor, static per tensor"
                        .into(),
                })
            }
        };
        if !matches!(group.acts, ActArgs::StaticTensor)
            && self.shards.info(&format!("{prefix}.input_scale")).is_some()
        {
            return Err(Error::Unsupported {
                what: "compressed-tensors tensor",
                found: format!(
                    "{prefix}.input_scale under group {} whose activations are not static",
                    group.name
                ),
                supported: "input_scale only with static per-tensor activations".into(),
            });
        }
        let scale_cols = match weights_mode {
            WeightQuant::Int4Grouped { group } => inp / group,
            _ => 1,
        };
        self.expect_shape(&scale_name, None, &[out, scale_cols])?;
        let config = QuantConfig::w8a8();
        let config = match weights_mode {
            WeightQuant::Int4Grouped { group } => QuantConfig::w4a8(group)?,
            _ => config,
        }
        .with_activations(acts)?;
        let scales = self.read_float(&scale_name)?;
        let bias_name = format!("{prefix}.bias");
        let bias = if self.shards.info(&bias_name).is_some() {
            self.expect_shape(&bias_name, None, &[out])?;
            Some(self.read_float(&bias_name)?)
        } else {
            None
        };
        let layer = QuantLinear::from_parts(QuantLinearParts {
            out_features: out,
            in_features: inp,
            weights,
            scales,
            offsets: None,
            bias,
            smooth: None,
            config,
        })?;
        self.clamped
            .fetch_add(clamped, std::sync::atomic::Ordering::Relaxed);
        Ok((
            layer,
            CtLayerReport {
                clamped_codes: clamped,
                activations: acts,
            },
        ))
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
            .shards
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

/// Writes pretty JSON at `path` through a temporary file renamed into place.
fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    super::write_atomically(path, |f| {
        use std::io::Write;
        f.write_all(text.as_bytes())?;
        Ok(())
    })
}

/// Reads and parses a `config.json`, naming the file in errors.
fn read_config(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        what: path.display().to_string(),
        reason: format!("not a JSON config: {e}"),
    })
}
