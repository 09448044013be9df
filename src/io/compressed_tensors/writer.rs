//! [`CtWriter`]: [`QuantLinear`]s and float tensors into a compressed-tensors checkpoint,
//! one file ([`CtWriter::write`]) or shards with an index ([`CtWriter::write_sharded`]),
//! with its `config.json`. It checks that every layer fits the one config group a
//! checkpoint it writes has.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use safetensors::tensor::Dtype;
use serde_json::{json, Value};

use super::config::{activation_args, quantization_config, write_json};
use super::format::{pack_row_int32, CtFormat};
use super::shards::SHARD_INDEX_NAME;
use crate::error::{Error, Result};
use crate::io::part::Part;
use crate::nn::{ActivationQuant, QuantLinear};

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
    ///
    /// [`WeightQuant::Int4GroupedAsym`]: crate::nn::WeightQuant::Int4GroupedAsym
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
        crate::io::write_safetensors(
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
            crate::io::write_safetensors(&dir.join(&file), shard, metadata.clone())?;
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

/// Whether two activation modes share one config group (static scales may differ).
fn same_activation_kind(a: ActivationQuant, b: ActivationQuant) -> bool {
    std::mem::discriminant(&a) == std::mem::discriminant(&b)
}
