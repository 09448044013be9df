//! `prune`: builds a compression [`Pipeline`] from the flags and runs [`prune_file`] with
//! it.

use std::path::Path;

use candle_compress::convert::prune_file;
use candle_compress::prune::Pipeline;
use serde_json::{json, Value};

use crate::failure::{invalid, CliResult};
use crate::guards::check_output;
use crate::progress::Progress;

/// The pipeline flags of `prune`, as given on the command line.
pub(crate) struct PruneArgs<'a> {
    pub(crate) sparsity: Option<f64>,
    pub(crate) global: bool,
    pub(crate) nm: Option<&'a str>,
    pub(crate) clip: Option<f64>,
    pub(crate) scheme: Option<&'a str>,
    pub(crate) skip: &'a [String],
}

/// The pipeline the flags describe (dense storage: the file format has no sparse layout).
fn pipeline(args: &PruneArgs<'_>) -> CliResult<Pipeline> {
    let mut pipeline = Pipeline::new().sparse_storage(false);
    if let Some(s) = args.sparsity {
        pipeline = if args.global {
            pipeline.prune_global(s)
        } else {
            pipeline.prune_magnitude(s)
        };
    } else if args.global {
        return Err(invalid("--global", "needs --sparsity").into());
    }
    if let Some(nm) = args.nm {
        let parsed = nm
            .split_once(':')
            .and_then(|(n, m)| Some((n.parse::<usize>().ok()?, m.parse::<usize>().ok()?)));
        let Some((n, m)) = parsed else {
            return Err(invalid("--nm", format!("{nm:?} is not N:M (e.g. 2:4)")).into());
        };
        pipeline = pipeline.prune_nm(n, m);
    }
    if let Some(p) = args.clip {
        pipeline = pipeline.clip_percentile(p);
    }
    if let Some(text) = args.scheme {
        pipeline = pipeline.quantize(text.parse()?);
    }
    if pipeline.stages.is_empty() {
        return Err(invalid(
            "prune",
            "give at least one of --sparsity, --nm, --clip, --scheme",
        )
        .into());
    }
    let pipeline = pipeline.skip_names(args.skip);
    pipeline.validate()?;
    Ok(pipeline)
}

/// Runs `prune`; the report is the pipeline's, plus the paths and output size.
pub(crate) fn prune(
    input: &Path,
    output: &Path,
    args: &PruneArgs<'_>,
    force: bool,
    json: bool,
) -> CliResult<Value> {
    check_output(output, force)?;
    let pipeline = pipeline(args)?;
    let bar = Progress::new(json, "prune");
    let report = prune_file(input, output, &pipeline, |done, total| {
        bar.step(done, total)
    })?;
    let mut out = serde_json::to_value(&report)?;
    out["input"] = json!(input.display().to_string());
    out["output"] = json!(output.display().to_string());
    out["output_file_bytes"] = json!(std::fs::metadata(output)?.len());
    out["text"] = json!(report.to_string());
    Ok(out)
}
