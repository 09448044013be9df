//! `inspect`: lists the tensors of a file (ours or any safetensors) with kind, scheme,
//! shape, stored bytes and compression ratio, reading only the header.

use std::path::Path;

use candle_compress::io::safetensors::{CompressedFile, ItemKind};
use candle_compress::nn::WeightQuant;
use serde_json::{json, Value};

use crate::failure::{in_file, CliResult};
use crate::quantize::LAYER_SOURCES_KEY;

/// Runs `inspect` on `path`.
pub(crate) fn inspect(path: &Path) -> CliResult<Value> {
    let file = in_file(path, CompressedFile::open(path))?;
    let ours = file
        .reader()
        .metadata()
        .and_then(|m| m.get("format"))
        .map(String::as_str)
        == Some("candle-compress");
    let layer_sources: serde_json::Map<String, Value> = file
        .reader()
        .metadata()
        .and_then(|m| m.get(LAYER_SOURCES_KEY))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let mut rows = Vec::new();
    let (mut total_orig, mut total_stored) = (0usize, 0usize);
    for item in file.items() {
        let (kind, scheme, shape, dtype, original) = match &item.kind {
            ItemKind::Compressed(e) => {
                let n: usize = e.shape.iter().product();
                (
                    "compressed",
                    json!(e.scheme.to_string()),
                    e.shape.clone(),
                    format!("{:?}", e.dtype),
                    n * e.dtype.size_in_bytes(),
                )
            }
            ItemKind::QuantLinear(l) => {
                let scheme = match l.config.weights() {
                    WeightQuant::Int4Grouped { group } => format!("w4a8:{group}"),
                    WeightQuant::Int4GroupedAsym { group } => format!("w4a8-asym:{group}"),
                    _ => "w8a8".to_string(),
                };
                let params =
                    l.out_features * l.in_features + if l.bias { l.out_features } else { 0 };
                // The recorded source, else (a layer saved by a program) an F32 original.
                let recorded = layer_sources.get(&item.name);
                let dtype = recorded
                    .and_then(|r| r["dtype"].as_str())
                    .map_or("F32 (assumed)".to_string(), str::to_string);
                let bytes = recorded
                    .and_then(|r| r["bytes"].as_u64())
                    .and_then(|b| usize::try_from(b).ok())
                    .unwrap_or(params * 4);
                (
                    "quant_linear",
                    json!(scheme),
                    vec![l.out_features, l.in_features],
                    dtype,
                    bytes,
                )
            }
            ItemKind::Plain { dtype, shape } => (
                "plain",
                Value::Null,
                shape.clone(),
                format!("{dtype:?}"),
                item.stored_bytes,
            ),
        };
        total_orig += original;
        total_stored += item.stored_bytes;
        rows.push(json!({
            "name": item.name, "kind": kind, "scheme": scheme, "shape": shape,
            "dtype": dtype, "original_bytes": original, "stored_bytes": item.stored_bytes,
            "ratio": original as f64 / item.stored_bytes.max(1) as f64,
        }));
    }
    Ok(json!({
        "file": path.display().to_string(),
        "format": if ours { "candle-compress" } else { "safetensors" },
        "file_bytes": file.reader().file_len(),
        "tensors": rows,
        "total_original_bytes": total_orig,
        "total_stored_bytes": total_stored,
        "ratio": total_orig as f64 / total_stored.max(1) as f64,
    }))
}
