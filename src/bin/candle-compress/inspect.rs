//! `inspect`: [`inspect_file`] with the path in the report.

use std::path::Path;

use candle_compress::convert::inspect_file;
use serde_json::{json, Value};

use crate::failure::CliResult;

/// Runs `inspect` on `path`.
pub(crate) fn inspect(path: &Path) -> CliResult<Value> {
    let summary = inspect_file(path)?;
    let mut out = serde_json::to_value(&summary)?;
    out["file"] = json!(path.display().to_string());
    out["ratio"] = json!(summary.ratio());
    Ok(out)
}
