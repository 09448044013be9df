//! `eval`: [`compare_files`] with a progress bar; the report names the worst tensor.

use std::path::Path;

use candle_compress::convert::compare_files;
use serde_json::{json, Value};

use crate::failure::CliResult;
use crate::progress::Progress;

/// Runs `eval` of `compressed` against `original`.
pub(crate) fn eval(original: &Path, compressed: &Path, json: bool) -> CliResult<Value> {
    let bar = Progress::new(json, "eval");
    let report = compare_files(original, compressed, |done, total| bar.step(done, total))?;
    let rows: Vec<Value> = report
        .tensors
        .iter()
        .map(|t| {
            let s = &t.stats;
            json!({
                "name": t.name, "elements": s.len, "mae": s.mae, "mse": s.mse,
                "max_abs_error": s.max_abs_error, "sqnr_db": finite_or_null(s.sqnr_db),
                "cosine": s.cosine_similarity,
            })
        })
        .collect();
    Ok(json!({
        "original": original.display().to_string(),
        "compressed": compressed.display().to_string(),
        "tensors": rows,
        "worst_sqnr": report
            .worst()
            .map(|w| json!({"name": w.name, "sqnr_db": finite_or_null(w.stats.sqnr_db)})),
    }))
}

/// An SQNR as JSON: a number, or `"inf"` / `"-inf"` (JSON has no infinities).
fn finite_or_null(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}
