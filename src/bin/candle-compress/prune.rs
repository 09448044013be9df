//! `prune`: builds a compression [`Pipeline`] from the flags and streams the checkpoint
//! through it one tensor at a time; tensors candle cannot hold are copied unchanged.

use std::collections::HashMap;
use std::path::Path;

use candle_compress::io::reader::SafetensorsReader;
use candle_compress::io::safetensors::{PlannedItem, StreamingWriter, TensorEntry};
use candle_compress::prune::{Pipeline, Stage, StoredTensor};
use candle_compress::Error;
use candle_core::{DType, Device};
use serde_json::{json, Value};

use crate::failure::{in_file, in_tensor, invalid, CliResult, Failure};
use crate::guards::{check_output, refuse_compressed};
use crate::progress::progress;
use crate::tensors::{candle_dtype, read_tensor, safetensors_dtype};

/// The pipeline flags of `prune`, as given on the command line.
pub(crate) struct PruneArgs<'a> {
    pub(crate) sparsity: Option<f64>,
    pub(crate) global: bool,
    pub(crate) nm: Option<&'a str>,
    pub(crate) clip: Option<f64>,
    pub(crate) scheme: Option<&'a str>,
    pub(crate) skip: &'a [String],
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
    pipeline = pipeline.skip_names(args.skip);
    pipeline.validate()?;
    let reader = in_file(input, SafetensorsReader::open(input))?;
    refuse_compressed(input, "prune")?;

    // Plan: tensors candle cannot hold (I8, I16, BOOL, ...) are copied as they are; every
    // other tensor goes through the pipeline, which stores each processed tensor dense in
    // its dtype or quantized with the last stage's scheme, and passes the rest through.
    let quantize = pipeline.stages.iter().find_map(|s| match s {
        Stage::Quantize { scheme } => Some(*scheme),
        _ => None,
    });
    let (mut copied, mut streamed) = (Vec::new(), Vec::new());
    for name in reader.names() {
        let Some(info) = reader.info(&name) else {
            continue;
        };
        match candle_dtype(info.dtype) {
            Some(dtype) => streamed.push((name, dtype, info.shape.clone())),
            None => copied.push((name, info.dtype, info.shape.clone())),
        }
    }
    streamed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut plan: Vec<(String, PlannedItem)> = copied
        .iter()
        .map(|(n, d, shape)| {
            (
                n.clone(),
                PlannedItem::Raw {
                    dtype: *d,
                    shape: shape.clone(),
                },
            )
        })
        .collect();
    for (name, dtype, shape) in &streamed {
        let processed = pipeline.skip.reason(name, shape.len(), *dtype).is_none();
        let item = match quantize {
            Some(scheme) if processed => PlannedItem::Compressed(TensorEntry {
                scheme,
                shape: shape.clone(),
                dtype: *dtype,
            }),
            _ => PlannedItem::Raw {
                dtype: safetensors_dtype(*dtype),
                shape: shape.clone(),
            },
        };
        plan.push((name.clone(), item));
    }
    let mut writer = in_file(
        output,
        StreamingWriter::create(output, plan, HashMap::new()),
    )?;
    for (name, dtype, shape) in &copied {
        let raw = in_tensor(input, name, reader.read(name))?;
        in_file(output, writer.write_raw(name, *dtype, shape, &raw.data))?;
    }

    // One tensor in memory at a time; a global threshold costs two extra reads.
    let names: Vec<String> = streamed.iter().map(|(n, _, _)| n.clone()).collect();
    let bar = progress(names.len() * pipeline.streaming_passes(), json, "prune");
    let dtypes: HashMap<&str, DType> = streamed.iter().map(|(n, d, _)| (n.as_str(), *d)).collect();
    // The tensor being read or written, for the error message.
    let current = std::cell::RefCell::new(String::new());
    let result = pipeline.run_streaming(
        &names,
        |name| {
            bar.inc(1);
            name.clone_into(&mut current.borrow_mut());
            let info = reader.info(name).ok_or_else(|| Error::Missing {
                what: "tensor",
                name: name.to_string(),
            })?;
            read_tensor(&reader, name, info.dtype)
        },
        |name, stored| {
            name.clone_into(&mut current.borrow_mut());
            match stored {
                StoredTensor::Quantized(c) => writer.write_compressed(name, &c),
                StoredTensor::Dense(t) => {
                    let dtype = dtypes.get(name).copied().unwrap_or(t.dtype());
                    writer.write_plain(name, &t.to_dtype(dtype)?)
                }
                other => writer.write_plain(name, &other.to_dense(&Device::Cpu)?),
            }
        },
    );
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let name = current.into_inner();
            return Err(if name.is_empty() {
                Failure::from(e).within(input.display())
            } else {
                Failure::from(e).within(format_args!("{}: tensor {name}", input.display()))
            });
        }
    };
    in_file(output, writer.finish())?;
    let mut out = serde_json::to_value(&report)?;
    out["input"] = json!(input.display().to_string());
    out["output"] = json!(output.display().to_string());
    out["output_file_bytes"] = json!(std::fs::metadata(output)?.len());
    out["text"] = json!(report.to_string());
    Ok(out)
}
