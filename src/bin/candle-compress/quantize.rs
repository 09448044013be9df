//! `quantize`: [`quantize_file`] with the command's skip patterns, a progress bar and the
//! paths in the report.

use std::path::Path;

use candle_compress::convert::{quantize_file, FileScheme};
use candle_compress::prune::SkipRules;
use serde_json::{json, Value};

use crate::failure::CliResult;
use crate::guards::check_output;
use crate::progress::Progress;

/// Runs `quantize`; the report lists every tensor with its action and bytes.
pub(crate) fn quantize(
    input: &Path,
    output: &Path,
    scheme: &str,
    skip: &[String],
    force: bool,
    json: bool,
) -> CliResult<Value> {
    let plan: FileScheme = scheme.parse()?;
    check_output(output, force)?;
    let bar = Progress::new(json, "quantize");
    let report = quantize_file(
        input,
        output,
        &plan,
        &SkipRules::names(skip),
        |done, total| bar.step(done, total),
    )?;
    let mut out = serde_json::to_value(&report)?;
    out["input"] = json!(input.display().to_string());
    out["output"] = json!(output.display().to_string());
    out["scheme"] = json!(scheme);
    out["ratio"] = json!(report.ratio());
    Ok(out)
}
