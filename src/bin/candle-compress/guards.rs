//! Checks made before a command writes anything: the output may not be a directory nor
//! an existing file (without `--force`), and `quantize` / `prune` refuse inputs that
//! already hold compressed values.

use std::path::Path;

use candle_compress::io::safetensors::{CompressedFile, ItemKind};
use candle_compress::Result;

use crate::failure::{in_file, invalid, CliResult, Failure};

/// Refuses an output path that is a directory, or that exists unless `force` is set.
pub(crate) fn check_output(path: &Path, force: bool) -> Result<()> {
    if path.is_dir() {
        return Err(invalid(
            "output",
            format!("{} is a directory; give a file name", path.display()),
        ));
    }
    if path.exists() && !force {
        return Err(invalid(
            "output",
            format!(
                "{} exists; refusing to overwrite it (use --force)",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses an input that already holds compressed values: quantizing or pruning their
/// integer payloads and scales as if they were weights would write a file that no
/// longer decodes.
pub(crate) fn refuse_compressed(path: &Path, command: &str) -> CliResult<()> {
    let file = in_file(path, CompressedFile::open(path))?;
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
        return Err(Failure::from(invalid(
            "input",
            format!(
                "it is already compressed by candle-compress ({tensors} compressed tensors, \
                 {layers} quantized layers, e.g. {name:?}); {command} the original float \
                 checkpoint instead"
            ),
        ))
        .within(path.display()));
    }
    // compressed-tensors checkpoints (llm-compressor, vLLM) keep their codes and scales
    // under these suffixes.
    let ct = file.reader().names().into_iter().find(|n| {
        [
            ".weight_packed",
            ".weight_scale",
            ".weight_zero_point",
            ".weight_shape",
        ]
        .iter()
        .any(|s| n.ends_with(s))
    });
    if let Some(name) = ct {
        return Err(Failure::from(invalid(
            "input",
            format!(
                "it holds compressed-tensors quantized weights (e.g. {name:?}); {command} \
                 the original float checkpoint instead, or load it with \
                 QuantLoader::from_compressed_tensors"
            ),
        ))
        .within(path.display()));
    }
    Ok(())
}
