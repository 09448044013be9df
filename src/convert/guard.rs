//! The refusal of inputs that already hold compressed values.

use std::path::Path;

use crate::error::{Error, Result};
use crate::io::safetensors::{CompressedFile, ItemKind};

/// Suffixes under which compressed-tensors checkpoints (llm-compressor, vLLM) keep their
/// codes and scales.
const COMPRESSED_TENSORS_SUFFIXES: [&str; 4] = [
    ".weight_packed",
    ".weight_scale",
    ".weight_zero_point",
    ".weight_shape",
];

/// Refuses an input that already holds compressed values — ours (compressed tensors,
/// quantized layers) or compressed-tensors' — since quantizing or pruning their integer
/// payloads and scales as if they were weights would write a file that no longer decodes.
/// `command` names the operation in the message (`"quantize"`, `"prune"`).
///
/// # Errors
/// [`Error::InvalidArgument`] (inside [`Error::Within`] naming the file) for such an
/// input; the reader's errors for a file that does not open.
pub fn refuse_compressed(path: &Path, command: &str) -> Result<()> {
    let file = CompressedFile::open(path).map_err(|e| e.within(path.display()))?;
    refuse_compressed_file(&file, command).map_err(|e| e.within(path.display()))
}

/// [`refuse_compressed`] on an open file.
fn refuse_compressed_file(file: &CompressedFile, command: &str) -> Result<()> {
    let (mut tensors, mut layers, mut example) = (0usize, 0usize, None);
    for item in file.items() {
        match item.kind {
            ItemKind::Compressed(_) => tensors += 1,
            ItemKind::QuantLinear(_) => layers += 1,
            ItemKind::Plain { .. } => continue,
        }
        example.get_or_insert(item.name);
    }
    if let Some(name) = example {
        return Err(Error::invalid(
            "input",
            format!(
                "it is already compressed by candle-compress ({tensors} compressed tensors, \
                 {layers} quantized layers, e.g. {name:?}); {command} the original float \
                 checkpoint instead"
            ),
        ));
    }
    let ct = file
        .reader()
        .names()
        .into_iter()
        .find(|n| COMPRESSED_TENSORS_SUFFIXES.iter().any(|s| n.ends_with(s)));
    if let Some(name) = ct {
        return Err(Error::invalid(
            "input",
            format!(
                "it holds compressed-tensors quantized weights (e.g. {name:?}); {command} \
                 the original float checkpoint instead, or load it with \
                 QuantLoader::from_compressed_tensors"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::CompressedWriter;
    use crate::nn::{QuantConfig, QuantLinear};
    use candle_core::{Device, Tensor};

    #[test]
    fn files_with_compressed_values_are_refused_with_the_command_named() -> Result<()> {
        let w = Tensor::randn(0f32, 1., (4, 32), &Device::Cpu)?;
        let mut writer = CompressedWriter::new();
        writer.add_quant_linear("fc", &QuantLinear::new(&w, None, &QuantConfig::w8a8())?)?;
        let file = CompressedFile::from_bytes(writer.to_bytes()?)?;
        let e = refuse_compressed_file(&file, "prune")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("already compressed") && e.contains("prune the original"),
            "{e}"
        );

        let mut plain = CompressedWriter::new();
        plain.add_plain("fc.weight", &w)?;
        refuse_compressed_file(&CompressedFile::from_bytes(plain.to_bytes()?)?, "prune")?;

        let mut ct = CompressedWriter::new();
        ct.add_plain("fc.weight_scale", &w)?;
        let e = refuse_compressed_file(&CompressedFile::from_bytes(ct.to_bytes()?)?, "quantize")
            .unwrap_err()
            .to_string();
        assert!(e.contains("compressed-tensors"), "{e}");
        Ok(())
    }
}
