//! `quantize`: plans every tensor from the header alone (compress, fold into a
//! QuantLinear, keep or skip), then streams one tensor at a time through the scheme into
//! a [`StreamingWriter`], so memory holds one tensor, not the checkpoint.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use candle_compress::io::reader::SafetensorsReader;
use candle_compress::io::safetensors::{LayerEntry, PlannedItem, StreamingWriter, TensorEntry};
use candle_compress::nn::{QuantConfig, QuantLinear, WeightQuant};
use candle_compress::prune::SkipRules;
use candle_compress::scheme::Scheme;
use candle_compress::{Compressor, Error, Result};
use serde_json::{json, Value};

use crate::failure::{in_file, in_tensor, invalid, CliResult};
use crate::guards::{check_output, refuse_compressed};
use crate::progress::progress;
use crate::tensors::{candle_float, is_float, read_tensor};

/// What `quantize` does with the tensors.
enum Plan {
    Tensors(Scheme),
    Layers(QuantConfig),
}

/// Parses `--scheme`: a layer scheme (`w8a8`, `w4a8[:group]`) or a tensor scheme.
fn parse_plan(text: &str) -> Result<Plan> {
    let (kind, size) = match text.split_once(':') {
        Some((k, s)) => (k, Some(s)),
        None => (text, None),
    };
    let size = size
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| invalid("scheme", format!("{s:?} in {text:?} is not a size")))
        })
        .transpose()?;
    match kind {
        "w8a8" if size.is_none() => Ok(Plan::Layers(QuantConfig::w8a8())),
        "w4a8" => Ok(Plan::Layers(QuantConfig::w4a8(size.unwrap_or(64))?)),
        _ => Ok(Plan::Tensors(text.parse()?)),
    }
}

/// File metadata key under which `quantize` records, per quantized layer, the dtype and
/// bytes (weight + bias) of the float tensors it was made from.
pub(crate) const LAYER_SOURCES_KEY: &str = "source_layers";

/// What `quantize` does with one input tensor.
enum Action {
    Compress(Scheme),
    Layer {
        prefix: String,
        bias: Option<String>,
    },
    Keep {
        skipped: bool,
    },
    /// A bias folded into its layer.
    Folded,
}

/// Runs `quantize`; the report lists every tensor with its action and bytes.
pub(crate) fn quantize(
    input: &Path,
    output: &Path,
    scheme: &str,
    skip: &[String],
    force: bool,
    json: bool,
) -> CliResult<Value> {
    let plan = parse_plan(scheme)?;
    check_output(output, force)?;
    let reader = in_file(input, SafetensorsReader::open(input))?;
    refuse_compressed(input, "quantize")?;
    let names = reader.names();
    let rules = SkipRules::names(skip);
    let skipped = |name: &str| rules.matching_pattern(name).is_some();

    // Pass 1, header only: decide what happens to every tensor. Biases folded into
    // QuantLinears are found up front, since a bias may come before its weight.
    let mut actions: Vec<(String, Action)> = Vec::new();
    let mut folded = HashSet::new();
    for name in &names {
        let Some(info) = reader.info(name) else {
            continue;
        };
        let float = is_float(info.dtype);
        let action = match &plan {
            Plan::Tensors(s) if float && info.shape.len() >= 2 && !skipped(name) => {
                Action::Compress(*s)
            }
            Plan::Layers(_) if float && info.shape.len() == 2 && !skipped(name) => {
                match name.strip_suffix(".weight") {
                    Some(prefix) => {
                        let bias_name = format!("{prefix}.bias");
                        let bias = reader
                            .info(&bias_name)
                            .filter(|b| is_float(b.dtype) && b.shape == [info.shape[0]])
                            .map(|_| bias_name);
                        if let Some(b) = &bias {
                            folded.insert(b.clone());
                        }
                        Action::Layer {
                            prefix: prefix.to_string(),
                            bias,
                        }
                    }
                    None => Action::Keep { skipped: false },
                }
            }
            _ => Action::Keep {
                skipped: skipped(name),
            },
        };
        actions.push((name.clone(), action));
    }
    let mut items = Vec::new();
    for (name, action) in &mut actions {
        if folded.contains(name.as_str()) {
            *action = Action::Folded;
            continue;
        }
        let Some(info) = reader.info(name) else {
            continue;
        };
        let item = match action {
            Action::Compress(s) => PlannedItem::Compressed(TensorEntry {
                scheme: *s,
                shape: info.shape.clone(),
                dtype: candle_float(info.dtype),
            }),
            Action::Layer { prefix, bias } => {
                let Plan::Layers(cfg) = &plan else { continue };
                items.push((
                    prefix.clone(),
                    PlannedItem::QuantLinear(LayerEntry {
                        in_features: info.shape[1],
                        out_features: info.shape[0],
                        config: *cfg,
                        bias: bias.is_some(),
                        smooth: false,
                    }),
                ));
                continue;
            }
            Action::Keep { .. } | Action::Folded => PlannedItem::Raw {
                dtype: info.dtype,
                shape: info.shape.clone(),
            },
        };
        items.push((name.clone(), item));
    }
    let source = input
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    // A QuantLinear does not know the dtype it was made from; record it (and the bytes of
    // weight + bias) so `inspect` reports the true ratio.
    let mut layer_sources = serde_json::Map::new();
    for (name, action) in &actions {
        let Action::Layer { prefix, bias } = action else {
            continue;
        };
        let Some(info) = reader.info(name) else {
            continue;
        };
        let span = |i: &safetensors::tensor::TensorInfo| i.data_offsets.1 - i.data_offsets.0;
        let bytes = span(info) + bias.as_ref().and_then(|b| reader.info(b)).map_or(0, span);
        layer_sources.insert(
            prefix.clone(),
            json!({"dtype": format!("{:?}", info.dtype), "bytes": bytes}),
        );
    }
    let mut metadata = HashMap::from([("source".to_string(), source)]);
    if !layer_sources.is_empty() {
        metadata.insert(
            LAYER_SOURCES_KEY.to_string(),
            Value::Object(layer_sources).to_string(),
        );
    }
    let mut writer = in_file(output, StreamingWriter::create(output, items, metadata))?;

    // Pass 2: one tensor at a time: read, compress, write, drop.
    let mut rows = Vec::new();
    let bar = progress(actions.len(), json, "quantize");
    let (mut total_in, mut total_out) = (0usize, 0usize);
    for (name, action) in &actions {
        bar.inc(1);
        let Some(info) = reader.info(name) else {
            continue;
        };
        let (dtype, shape) = (info.dtype, info.shape.clone());
        let mut original = info.data_offsets.1 - info.data_offsets.0;
        let before = writer.data_bytes();
        let (label, scheme_text) = match action {
            Action::Folded => continue,
            Action::Compress(s) => {
                let t = in_tensor(input, name, read_tensor(&reader, name, dtype))?;
                let c = in_tensor(input, name, s.compress(&t))?;
                drop(t);
                in_file(output, writer.write_compressed(name, &c))?;
                ("compressed", json!(s.to_string()))
            }
            Action::Layer { prefix, bias } => {
                let Plan::Layers(cfg) = &plan else { continue };
                let bias_t = match bias {
                    Some(b) => {
                        let binfo = reader.info(b).ok_or_else(|| Error::Missing {
                            what: "tensor",
                            name: b.clone(),
                        })?;
                        original += binfo.data_offsets.1 - binfo.data_offsets.0;
                        Some(in_tensor(input, b, read_tensor(&reader, b, binfo.dtype))?)
                    }
                    None => None,
                };
                let w = in_tensor(input, name, read_tensor(&reader, name, dtype))?;
                let layer = in_tensor(input, name, QuantLinear::new(&w, bias_t.as_ref(), cfg))?;
                drop(w);
                in_file(output, writer.write_quant_linear(prefix, &layer))?;
                let text = match cfg.weights() {
                    WeightQuant::Int4Grouped { group } => format!("w4a8:{group}"),
                    WeightQuant::Int4GroupedAsym { group } => format!("w4a8-asym:{group}"),
                    _ => "w8a8".to_string(),
                };
                ("layer", json!(text))
            }
            Action::Keep { skipped } => {
                let raw = in_tensor(input, name, reader.read(name))?;
                in_file(output, writer.write_raw(name, dtype, &shape, &raw.data))?;
                (if *skipped { "skipped" } else { "kept" }, Value::Null)
            }
        };
        let stored = writer.data_bytes() - before;
        total_in += original;
        total_out += stored;
        rows.push(json!({
            "name": name, "action": label, "scheme": scheme_text, "shape": shape,
            "dtype": format!("{dtype:?}"), "original_bytes": original, "stored_bytes": stored,
        }));
    }
    bar.finish_and_clear();
    in_file(output, writer.finish())?;
    let file_bytes = std::fs::metadata(output)?.len();
    Ok(json!({
        "input": input.display().to_string(),
        "output": output.display().to_string(),
        "scheme": scheme,
        "tensors": rows,
        "total_original_bytes": total_in,
        "total_stored_bytes": total_out,
        "output_file_bytes": file_bytes,
        "ratio": total_in as f64 / total_out.max(1) as f64,
    }))
}
