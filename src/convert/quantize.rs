//! [`quantize_file`]: plans every tensor from the header alone (compress, fold into a
//! `QuantLinear`, keep or skip), then streams one tensor at a time through the scheme into
//! a [`StreamingWriter`], so memory holds one tensor, not the checkpoint.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use safetensors::tensor::TensorInfo;
use serde::Serialize;

use super::{file_bytes, in_file, in_tensor, is_float, LAYER_SOURCES_KEY};
use crate::compressor::Compressor;
use crate::error::{Error, Result};
use crate::io::reader::SafetensorsReader;
use crate::io::safetensors::{LayerEntry, PlannedItem, StreamingWriter, TensorEntry};
use crate::nn::{QuantConfig, QuantLinear, WeightQuant};
use crate::prune::SkipRules;
use crate::scheme::Scheme;

/// What [`quantize_file`] makes of a checkpoint's matrices.
///
/// Its text form (the CLI's `--scheme`): a layer config — `w8a8`, `w4a8[:group]`
/// (symmetric int4, group 64 by default), `w4a8-asym[:group]` — or any [`Scheme`]
/// (`int8:32`, `nf4:64`, ...).
///
/// ```
/// use candle_compress::convert::FileScheme;
/// let s: FileScheme = "w4a8:32".parse()?;
/// assert_eq!(s.to_string(), "w4a8:32");
/// assert!(matches!("int8:64".parse()?, FileScheme::Tensors(_)));
/// assert!("w4a8:48".parse::<FileScheme>().is_err()); // 48 is not a supported group
/// # Ok::<(), candle_compress::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FileScheme {
    /// Every float tensor of rank ≥ 2 compressed with this scheme (stored as parts).
    Tensors(Scheme),
    /// Every float `*.weight` matrix, with its `*.bias`, made a [`QuantLinear`].
    Layers(QuantConfig),
}

impl FromStr for FileScheme {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let (kind, size) = match text.split_once(':') {
            Some((k, s)) => (k, Some(s)),
            None => (text, None),
        };
        let size = size
            .map(|s| {
                s.parse::<usize>().map_err(|_| {
                    Error::invalid("scheme", format!("{s:?} in {text:?} is not a size"))
                })
            })
            .transpose()?;
        match kind {
            "w8a8" if size.is_none() => Ok(FileScheme::Layers(QuantConfig::w8a8())),
            "w4a8" => Ok(FileScheme::Layers(QuantConfig::w4a8(size.unwrap_or(64))?)),
            "w4a8-asym" => Ok(FileScheme::Layers(QuantConfig::w4a8_asym(
                size.unwrap_or(64),
            )?)),
            _ => Ok(FileScheme::Tensors(text.parse()?)),
        }
    }
}

impl fmt::Display for FileScheme {
    /// The text form [`FileScheme::from_str`] reads; a layer config is named by its
    /// weights (`w8a8`, `w4a8:G`, `w4a8-asym:G`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileScheme::Tensors(s) => write!(f, "{s}"),
            FileScheme::Layers(cfg) => match cfg.weights() {
                WeightQuant::Int4Grouped { group } => write!(f, "w4a8:{group}"),
                WeightQuant::Int4GroupedAsym { group } => write!(f, "w4a8-asym:{group}"),
                _ => write!(f, "w8a8"),
            },
        }
    }
}

/// What [`quantize_file`] did with one input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Compressed with the file's [`Scheme`].
    Compressed,
    /// Made a [`QuantLinear`] (with its bias, when there is one).
    Layer,
    /// Copied unchanged because a skip rule matched its name.
    Skipped,
    /// Copied unchanged: not a float matrix the scheme applies to.
    Kept,
}

/// One row of a [`QuantizeReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantizedTensor {
    /// The input tensor's name (a layer's `*.weight`).
    pub name: String,
    /// What was done with it.
    pub action: Action,
    /// The scheme or layer config it was stored in (`None` when copied unchanged).
    pub scheme: Option<String>,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its dtype in the input, e.g. `"F32"`.
    pub dtype: String,
    /// Its bytes in the input (a layer's weight + bias).
    pub original_bytes: usize,
    /// Its bytes in the output (all its parts).
    pub stored_bytes: usize,
}

/// What [`quantize_file`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantizeReport {
    /// Every input tensor in file order, except biases folded into their layer.
    pub tensors: Vec<QuantizedTensor>,
    /// Sum of `original_bytes`.
    pub total_original_bytes: usize,
    /// Sum of `stored_bytes`.
    pub total_stored_bytes: usize,
    /// Size of the output file (header included).
    pub output_file_bytes: u64,
}

impl QuantizeReport {
    /// `total_original_bytes / total_stored_bytes`.
    pub fn ratio(&self) -> f64 {
        self.total_original_bytes as f64 / self.total_stored_bytes.max(1) as f64
    }
}

/// What happens to one input tensor, decided from the header.
enum Plan {
    Compress(Scheme),
    Layer {
        prefix: String,
        config: QuantConfig,
        bias: Option<String>,
    },
    Keep {
        skipped: bool,
    },
    /// A bias folded into its layer.
    Folded,
}

/// Bytes of a tensor's data in its file.
fn span(info: &TensorInfo) -> usize {
    info.data_offsets.1 - info.data_offsets.0
}

/// Quantizes the safetensors checkpoint `input` into our format at `output` with
/// `scheme`, one tensor in memory at a time. Float tensors of rank ≥ 2
/// ([`FileScheme::Tensors`]) or float `*.weight` matrices with their `*.bias`
/// ([`FileScheme::Layers`]) are quantized unless `skip` names them
/// ([`SkipRules::matching_pattern`]); everything else is copied byte for byte. For layers
/// the file's metadata records each source's dtype and bytes under
/// [`LAYER_SOURCES_KEY`](super::LAYER_SOURCES_KEY). `progress(done, total)` is called
/// after each tensor.
///
/// # Errors
/// Those of [`refuse_compressed`](super::refuse_compressed) (an input that is already
/// compressed), the reader, the quantizers (e.g. non-finite values) and the writer, each
/// inside [`Error::Within`] naming the file and tensor. `output` is untouched on error.
pub fn quantize_file(
    input: &Path,
    output: &Path,
    scheme: &FileScheme,
    skip: &SkipRules,
    mut progress: impl FnMut(usize, usize),
) -> Result<QuantizeReport> {
    let reader = in_file(input, SafetensorsReader::open(input))?;
    super::refuse_compressed(input, "quantize")?;
    let plans = plan(&reader, scheme, skip);
    let metadata = metadata(input, &reader, &plans);
    let items = planned_items(&reader, &plans);
    let mut writer = in_file(output, StreamingWriter::create(output, items, metadata))?;

    let mut rows = Vec::new();
    let total = plans.len();
    for (done, (name, plan)) in plans.iter().enumerate() {
        let row = write_one(input, output, &reader, &mut writer, name, plan)?;
        rows.extend(row);
        progress(done + 1, total);
    }
    in_file(output, writer.finish())?;
    Ok(QuantizeReport {
        total_original_bytes: rows.iter().map(|r| r.original_bytes).sum(),
        total_stored_bytes: rows.iter().map(|r| r.stored_bytes).sum(),
        tensors: rows,
        output_file_bytes: file_bytes(output)?,
    })
}

/// Decides, from the header alone, what happens to every tensor. Biases folded into
/// layers are found up front, since a bias may come before its weight.
fn plan(reader: &SafetensorsReader, scheme: &FileScheme, skip: &SkipRules) -> Vec<(String, Plan)> {
    let skipped = |name: &str| skip.matching_pattern(name).is_some();
    let mut plans: Vec<(String, Plan)> = Vec::new();
    let mut folded = HashSet::new();
    for name in reader.names() {
        let Some(info) = reader.info(&name) else {
            continue;
        };
        let float = is_float(info.dtype);
        let plan = match scheme {
            FileScheme::Tensors(s) if float && info.shape.len() >= 2 && !skipped(&name) => {
                Plan::Compress(*s)
            }
            FileScheme::Layers(config) if float && info.shape.len() == 2 && !skipped(&name) => {
                match name.strip_suffix(".weight") {
                    Some(prefix) => {
                        let bias_name = format!("{prefix}.bias");
                        let bias = reader
                            .info(&bias_name)
                            .filter(|b| is_float(b.dtype) && b.shape == [info.shape[0]])
                            .map(|_| bias_name);
                        folded.extend(bias.clone());
                        Plan::Layer {
                            prefix: prefix.to_string(),
                            config: *config,
                            bias,
                        }
                    }
                    None => Plan::Keep { skipped: false },
                }
            }
            _ => Plan::Keep {
                skipped: skipped(&name),
            },
        };
        plans.push((name, plan));
    }
    for (name, plan) in &mut plans {
        if folded.contains(name.as_str()) {
            *plan = Plan::Folded;
        }
    }
    plans
}

/// The output's items, in the order they are written.
fn planned_items(
    reader: &SafetensorsReader,
    plans: &[(String, Plan)],
) -> Vec<(String, PlannedItem)> {
    let mut items = Vec::new();
    for (name, plan) in plans {
        let Some(info) = reader.info(name) else {
            continue;
        };
        let item = match plan {
            Plan::Folded => continue,
            Plan::Compress(s) => PlannedItem::Compressed(TensorEntry {
                scheme: *s,
                shape: info.shape.clone(),
                dtype: crate::io::safetensors::plain_candle_dtype(info.dtype, name)
                    .unwrap_or(candle_core::DType::F32),
            }),
            Plan::Layer {
                prefix,
                config,
                bias,
            } => {
                items.push((
                    prefix.clone(),
                    PlannedItem::QuantLinear(LayerEntry {
                        in_features: info.shape[1],
                        out_features: info.shape[0],
                        config: *config,
                        bias: bias.is_some(),
                        smooth: false,
                    }),
                ));
                continue;
            }
            Plan::Keep { .. } => PlannedItem::Raw {
                dtype: info.dtype,
                shape: info.shape.clone(),
            },
        };
        items.push((name.clone(), item));
    }
    items
}

/// The output's metadata: the source file's name, and for layers (which do not know the
/// dtype they were made from) each source's dtype and weight + bias bytes.
fn metadata(
    input: &Path,
    reader: &SafetensorsReader,
    plans: &[(String, Plan)],
) -> HashMap<String, String> {
    let source = input
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    let mut layer_sources = serde_json::Map::new();
    for (name, plan) in plans {
        let (Plan::Layer { prefix, bias, .. }, Some(info)) = (plan, reader.info(name)) else {
            continue;
        };
        let bytes = span(info) + bias.as_ref().and_then(|b| reader.info(b)).map_or(0, span);
        layer_sources.insert(
            prefix.clone(),
            serde_json::json!({"dtype": format!("{:?}", info.dtype), "bytes": bytes}),
        );
    }
    let mut metadata = HashMap::from([("source".to_string(), source)]);
    if !layer_sources.is_empty() {
        metadata.insert(
            LAYER_SOURCES_KEY.to_string(),
            serde_json::Value::Object(layer_sources).to_string(),
        );
    }
    metadata
}

/// Reads, converts and writes one tensor; its report row (`None` for a folded bias).
fn write_one(
    input: &Path,
    output: &Path,
    reader: &SafetensorsReader,
    writer: &mut StreamingWriter,
    name: &str,
    plan: &Plan,
) -> Result<Option<QuantizedTensor>> {
    let info = reader.info(name).ok_or_else(|| Error::Missing {
        what: "tensor",
        name: name.to_string(),
    })?;
    let mut original = span(info);
    let before = writer.data_bytes();
    let (action, scheme) = match plan {
        Plan::Folded => return Ok(None),
        Plan::Compress(s) => {
            let t = in_tensor(input, name, reader.read_tensor(name))?;
            let c = in_tensor(input, name, s.compress(&t))?;
            drop(t);
            in_file(output, writer.write_compressed(name, &c))?;
            (Action::Compressed, Some(s.to_string()))
        }
        Plan::Layer {
            prefix,
            config,
            bias,
        } => {
            let bias_t = match bias {
                Some(b) => {
                    original += reader.info(b).map_or(0, span);
                    Some(in_tensor(input, b, reader.read_tensor(b))?)
                }
                None => None,
            };
            let w = in_tensor(input, name, reader.read_tensor(name))?;
            let layer = in_tensor(input, name, QuantLinear::new(&w, bias_t.as_ref(), config))?;
            drop(w);
            in_file(output, writer.write_quant_linear(prefix, &layer))?;
            (Action::Layer, Some(FileScheme::Layers(*config).to_string()))
        }
        Plan::Keep { skipped } => {
            let raw = in_tensor(input, name, reader.read(name))?;
            in_file(
                output,
                writer.write_raw(name, info.dtype, &info.shape, &raw.data),
            )?;
            let action = if *skipped {
                Action::Skipped
            } else {
                Action::Kept
            };
            (action, None)
        }
    };
    Ok(Some(QuantizedTensor {
        name: name.to_string(),
        action,
        scheme,
        shape: info.shape.clone(),
        dtype: format!("{:?}", info.dtype),
        original_bytes: original,
        stored_bytes: writer.data_bytes() - before,
    }))
}
