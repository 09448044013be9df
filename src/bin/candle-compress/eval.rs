//! `eval`: compares each tensor of a compressed file with its original (MAE, SQNR,
//! cosine) and names the worst one, so a scheme can be judged before it is shipped.

use std::path::Path;

use candle_compress::io::reader::SafetensorsReader;
use candle_compress::io::safetensors::{CompressedFile, ItemKind};
use candle_compress::nn::QuantLinear;
use candle_compress::quant::metrics::{compare_slices, ErrorStats};
use candle_compress::Error;
use serde_json::{json, Value};

use crate::failure::{in_file, invalid, CliResult, Failure};
use crate::progress::progress;
use crate::tensors::is_float;

/// The dequantized weight of a layer, row-major `[out, in]`.
fn dequantized_weight(layer: &QuantLinear) -> Vec<f32> {
    let p = layer.to_parts();
    let (out, inp) = (p.out_features, p.in_features);
    let per_row = p.scales.len() / out.max(1);
    let group = inp.div_ceil(per_row.max(1));
    let mut w = Vec::with_capacity(out * inp);
    for o in 0..out {
        for k in 0..inp {
            let s = p.scales[o * per_row + (k / group).min(per_row - 1)];
            let mut v = p.weights[o * inp + k] as f32 * s;
            if let Some(sm) = &p.smooth {
                v /= sm[k];
            }
            w.push(v);
        }
    }
    w
}

/// Runs `eval` of `compressed` against `original`.
pub(crate) fn eval(original: &Path, compressed: &Path, json: bool) -> CliResult<Value> {
    let orig = in_file(original, SafetensorsReader::open(original))?;
    let file = in_file(compressed, CompressedFile::open(compressed))?;
    let items = file.items();
    let bar = progress(items.len(), json, "eval");
    let mut rows = Vec::new();
    let mut worst: Option<(String, f64)> = None;
    for item in items {
        bar.inc(1);
        let (reference_name, approx): (String, Vec<f32>) = match &item.kind {
            ItemKind::Compressed(_) => (
                item.name.clone(),
                file.load_compressed(&item.name)?.to_f32_vec(),
            ),
            ItemKind::QuantLinear(_) => (
                format!("{}.weight", item.name),
                dequantized_weight(&file.load_quant_linear(&item.name)?),
            ),
            ItemKind::Plain { dtype, .. } if is_float(*dtype) => {
                (item.name.clone(), file.reader().read_f32(&item.name)?.1)
            }
            ItemKind::Plain { .. } => continue,
        };
        let Some(info) = orig.info(&reference_name) else {
            return Err(Failure::from(Error::Missing {
                what: "tensor in the original file",
                name: reference_name,
            })
            .within(original.display()));
        };
        if !is_float(info.dtype) {
            continue;
        }
        let (_, reference) = orig.read_f32(&reference_name)?;
        let stats: ErrorStats = compare_slices(&reference, &approx)
            .map_err(|e| invalid("eval", format!("{reference_name}: {e}")))?;
        let is_worse = match &worst {
            Some((_, s)) => stats.sqnr_db < *s,
            None => true,
        };
        if is_worse {
            worst = Some((reference_name.clone(), stats.sqnr_db));
        }
        rows.push(json!({
            "name": reference_name, "elements": stats.len, "mae": stats.mae, "mse": stats.mse,
            "max_abs_error": stats.max_abs_error, "sqnr_db": finite_or_null(stats.sqnr_db),
            "cosine": stats.cosine_similarity,
        }));
    }
    bar.finish_and_clear();
    Ok(json!({
        "original": original.display().to_string(),
        "compressed": compressed.display().to_string(),
        "tensors": rows,
        "worst_sqnr": worst.map(|(n, s)| json!({"name": n, "sqnr_db": finite_or_null(s)})),
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
