//! [`export_gguf_file`]: a GGUF file for llama.cpp-style runtimes from one of our files
//! (or any safetensors checkpoint).

use std::path::Path;

use candle_core::quantized::gguf_file::Value as GgufValue;
use candle_core::Device;
use serde::Serialize;

use super::{file_bytes, in_file, in_tensor, is_float};
use crate::error::{Error, Result};
use crate::io::gguf::{save_gguf, GgufTensor, GgufType};
use crate::io::safetensors::{CompressedFile, ItemKind};

/// One tensor of an [`ExportReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedTensor {
    /// Its name in the GGUF file.
    pub name: String,
    /// Its GGUF type, e.g. `"Q8_0"`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its shape (row-major, as in the input).
    pub shape: Vec<usize>,
    /// Bytes of its data.
    pub bytes: usize,
}

/// What [`export_gguf_file`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportReport {
    /// Every tensor in input order.
    pub tensors: Vec<ExportedTensor>,
    /// Size of the GGUF file.
    pub output_file_bytes: u64,
}

/// Writes the items of `input` to the GGUF file `output`: compressed `int8:32` / `int4:32`
/// tensors pass through as Q8_0 / Q4_0 unchanged (or are converted to `ty` when given),
/// float matrices whose rows are a multiple of 32 are quantized to `ty` (Q8_0 by
/// default), other float tensors are stored F32 and integer tensors as they are.
/// `general.name` is the input's file stem. `progress(done, total)` is called after each
/// item.
///
/// # Errors
/// [`Error::Unsupported`] for quantized layers (GGUF has no place for their per-channel
/// scales and activation config) and schemes GGUF cannot hold; the reader's and writer's
/// errors; each inside [`Error::Within`] naming the file and tensor.
pub fn export_gguf_file(
    input: &Path,
    output: &Path,
    ty: Option<GgufType>,
    mut progress: impl FnMut(usize, usize),
) -> Result<ExportReport> {
    let file = in_file(input, CompressedFile::open(input))?;
    let items = file.items();
    let total = items.len();
    let mut tensors = Vec::new();
    for (done, item) in items.into_iter().enumerate() {
        let name = item.name.as_str();
        let t = in_tensor(input, name, gguf_tensor(&file, &item.kind, name, ty))?;
        tensors.push(t);
        progress(done + 1, total);
    }
    let stem = input
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let meta = vec![("general.name".to_string(), GgufValue::String(stem))];
    in_file(output, save_gguf(output, &meta, &tensors))?;
    Ok(ExportReport {
        tensors: tensors
            .iter()
            .map(|t| ExportedTensor {
                name: t.name().to_string(),
                ty: format!("{:?}", t.ty()),
                shape: t.shape().to_vec(),
                bytes: t.data().len(),
            })
            .collect(),
        output_file_bytes: file_bytes(output)?,
    })
}

/// One item as a GGUF tensor.
fn gguf_tensor(
    file: &CompressedFile,
    kind: &ItemKind,
    name: &str,
    ty: Option<GgufType>,
) -> Result<GgufTensor> {
    match kind {
        ItemKind::Compressed(_) => {
            let value = file.load_compressed(name)?;
            match ty {
                Some(ty) => GgufTensor::from_compressed_as(name, &value, ty),
                None => GgufTensor::from_compressed(name, &value),
            }
        }
        ItemKind::QuantLinear(_) => Err(Error::Unsupported {
            what: "GGUF export of a QuantLinear",
            found: name.to_string(),
            supported: "float tensors and int8:32 / int4:32 compressed tensors".into(),
        }),
        ItemKind::Plain { dtype, shape } if is_float(*dtype) => {
            let tensor = file.load_plain(name, &Device::Cpu)?;
            let quantizable = shape.len() >= 2 && shape[shape.len() - 1] % 32 == 0;
            let ty = if quantizable {
                ty.unwrap_or(GgufType::Q8_0)
            } else {
                GgufType::F32
            };
            GgufTensor::quantize(name, &tensor, ty)
        }
        ItemKind::Plain { .. } => GgufTensor::integer(name, &file.load_plain(name, &Device::Cpu)?),
    }
}
