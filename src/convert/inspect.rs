//! [`inspect_file`]: kind, scheme, shape, stored bytes and compression ratio of every item
//! of a file (ours or any safetensors), from the header alone.

use std::path::Path;

use serde::Serialize;

use super::{in_file, FileScheme, LAYER_SOURCES_KEY};
use crate::error::Result;
use crate::io::safetensors::{CompressedFile, ItemKind};

/// One item of a [`FileSummary`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemSummary {
    /// Tensor name, or a layer's prefix.
    pub name: String,
    /// `"compressed"`, `"quant_linear"` or `"plain"`.
    pub kind: &'static str,
    /// The scheme or layer config (`None` for plain tensors).
    pub scheme: Option<String>,
    /// The logical shape (`[out, in]` for a layer).
    pub shape: Vec<usize>,
    /// The original dtype, e.g. `"F32"`; for a layer the one recorded by
    /// [`quantize_file`](super::quantize_file), else `"F32 (assumed)"`.
    pub dtype: String,
    /// Bytes of the original values.
    pub original_bytes: usize,
    /// Bytes stored in the file (all parts).
    pub stored_bytes: usize,
    /// `original_bytes / stored_bytes`.
    pub ratio: f64,
}

/// What [`inspect_file`] read from a header.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileSummary {
    /// `"candle-compress"` for our files, else `"safetensors"`.
    pub format: &'static str,
    /// The file's size.
    pub file_bytes: u64,
    /// Every item in file order.
    pub tensors: Vec<ItemSummary>,
    /// Sum of the items' `original_bytes`.
    pub total_original_bytes: usize,
    /// Sum of the items' `stored_bytes`.
    pub total_stored_bytes: usize,
}

impl FileSummary {
    /// `total_original_bytes / total_stored_bytes`.
    pub fn ratio(&self) -> f64 {
        self.total_original_bytes as f64 / self.total_stored_bytes.max(1) as f64
    }
}

/// Lists the items of the safetensors file at `path` (compressed tensors, quantized layers
/// and plain tensors of our format, or the tensors of any safetensors file) with their
/// bytes before and after, reading only the header.
///
/// # Errors
/// The reader's errors (a missing, truncated or corrupt file, a manifest that does not
/// match the parts), inside [`Error::Within`](crate::Error::Within) naming the file.
pub fn inspect_file(path: &Path) -> Result<FileSummary> {
    let file = in_file(path, CompressedFile::open(path))?;
    let metadata = file.reader().metadata();
    let ours =
        metadata.and_then(|m| m.get("format")).map(String::as_str) == Some("candle-compress");
    let layer_sources: serde_json::Map<String, serde_json::Value> = metadata
        .and_then(|m| m.get(LAYER_SOURCES_KEY))
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let mut tensors = Vec::new();
    for item in file.items() {
        let (kind, scheme, shape, dtype, original) = match &item.kind {
            ItemKind::Compressed(e) => (
                "compressed",
                Some(e.scheme.to_string()),
                e.shape.clone(),
                format!("{:?}", e.dtype),
                e.shape.iter().product::<usize>() * e.dtype.size_in_bytes(),
            ),
            ItemKind::QuantLinear(l) => {
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
                    Some(FileScheme::Layers(l.config).to_string()),
                    vec![l.out_features, l.in_features],
                    dtype,
                    bytes,
                )
            }
            ItemKind::Plain { dtype, shape } => (
                "plain",
                None,
                shape.clone(),
                format!("{dtype:?}"),
                item.stored_bytes,
            ),
        };
        tensors.push(ItemSummary {
            name: item.name,
            kind,
            scheme,
            shape,
            dtype,
            original_bytes: original,
            stored_bytes: item.stored_bytes,
            ratio: original as f64 / item.stored_bytes.max(1) as f64,
        });
    }
    Ok(FileSummary {
        format: if ours {
            "candle-compress"
        } else {
            "safetensors"
        },
        file_bytes: file.reader().file_len(),
        total_original_bytes: tensors.iter().map(|t| t.original_bytes).sum(),
        total_stored_bytes: tensors.iter().map(|t| t.stored_bytes).sum(),
        tensors,
    })
}
