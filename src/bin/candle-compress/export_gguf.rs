//! `export-gguf`: [`export_gguf_file`] with the `--type` flag and a progress bar.

use std::path::Path;

use candle_compress::convert::export_gguf_file;
use candle_compress::io::gguf::GgufType;
use serde_json::{json, Value};

use crate::args::GgufKind;
use crate::failure::CliResult;
use crate::guards::check_output;
use crate::progress::Progress;

/// Runs `export-gguf`; `ty` is the `--type` given, if any.
pub(crate) fn export_gguf(
    input: &Path,
    output: &Path,
    ty: Option<GgufKind>,
    force: bool,
    json: bool,
) -> CliResult<Value> {
    check_output(output, force)?;
    let ty = ty.map(|t| match t {
        GgufKind::Q8_0 => GgufType::Q8_0,
        GgufKind::Q4_0 => GgufType::Q4_0,
    });
    let bar = Progress::new(json, "export");
    let report = export_gguf_file(input, output, ty, |done, total| bar.step(done, total))?;
    let mut out = serde_json::to_value(report)?;
    out["input"] = json!(input.display().to_string());
    out["output"] = json!(output.display().to_string());
    Ok(out)
}
