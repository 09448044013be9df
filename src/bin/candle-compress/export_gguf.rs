//! `export-gguf`: writes a GGUF file for llama.cpp-style runtimes, quantizing float
//! tensors to Q8_0 / Q4_0 and passing compressed int8:32 / int4:32 tensors through as
//! they are.

use std::path::Path;

use candle_compress::io::gguf::{save_gguf, GgufTensor, GgufType};
use candle_compress::io::safetensors::{CompressedFile, ItemKind};
use candle_compress::Error;
use candle_core::quantized::gguf_file::Value as GgufValue;
use candle_core::Device;
use serde_json::{json, Value};

use crate::args::GgufKind;
use crate::failure::{in_file, in_tensor, CliResult, Failure};
use crate::guards::check_output;
use crate::progress::progress;
use crate::tensors::is_float;

/// Runs `export-gguf`; `ty` is the `--type` given, if any.
pub(crate) fn export_gguf(
    input: &Path,
    output: &Path,
    ty: Option<GgufKind>,
    force: bool,
    json: bool,
) -> CliResult<Value> {
    check_output(output, force)?;
    let file = in_file(input, CompressedFile::open(input))?;
    let items = file.items();
    let wanted = ty.map(|t| match t {
        GgufKind::Q8_0 => GgufType::Q8_0,
        GgufKind::Q4_0 => GgufType::Q4_0,
    });
    let bar = progress(items.len(), json, "export");
    let mut tensors = Vec::new();
    let mut rows = Vec::new();
    for item in items {
        bar.inc(1);
        let name = item.name.as_str();
        let t = match &item.kind {
            ItemKind::Compressed(_) => {
                let value = in_tensor(input, name, file.load_compressed(name))?;
                in_tensor(
                    input,
                    name,
                    match wanted {
                        Some(ty) => GgufTensor::from_compressed_as(name, &value, ty),
                        None => GgufTensor::from_compressed(name, &value),
                    },
                )?
            }
            ItemKind::QuantLinear(_) => {
                return Err(Failure::from(Error::Unsupported {
                    what: "GGUF export of a QuantLinear",
                    found: item.name,
                    supported: "float tensors and int8:32 / int4:32 compressed tensors".into(),
                })
                .within(input.display()))
            }
            ItemKind::Plain { dtype, shape } if is_float(*dtype) => {
                let tensor = in_tensor(input, name, file.load_plain(name, &Device::Cpu))?;
                let quantizable = shape.len() >= 2 && shape[shape.len() - 1] % 32 == 0;
                let ty = if quantizable {
                    wanted.unwrap_or(GgufType::Q8_0)
                } else {
                    GgufType::F32
                };
                in_tensor(input, name, GgufTensor::quantize(name, &tensor, ty))?
            }
            ItemKind::Plain { .. } => {
                let tensor = in_tensor(input, name, file.load_plain(name, &Device::Cpu))?;
                in_tensor(input, name, GgufTensor::integer(name, &tensor))?
            }
        };
        rows.push(json!({
            "name": t.name(), "type": format!("{:?}", t.ty()), "shape": t.shape(),
            "bytes": t.data().len(),
        }));
        tensors.push(t);
    }
    bar.finish_and_clear();
    let meta = vec![(
        "general.name".to_string(),
        GgufValue::String(
            input
                .file_stem()
                .map_or("model".into(), |s| s.to_string_lossy().into_owned()),
        ),
    )];
    in_file(output, save_gguf(output, &meta, &tensors))?;
    Ok(json!({
        "input": input.display().to_string(),
        "output": output.display().to_string(),
        "tensors": rows,
        "output_file_bytes": std::fs::metadata(output)?.len(),
    }))
}
