//! [`prune_file`]: a compression [`Pipeline`] streamed over a checkpoint, one tensor at a
//! time; tensors candle cannot hold are copied unchanged.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};

use super::{in_file, in_tensor};
use crate::error::Result;
use crate::io::reader::SafetensorsReader;
use crate::io::safetensors::{plain_candle_dtype, PlannedItem, StreamingWriter, TensorEntry};
use crate::prune::{Pipeline, Report, Stage, StoredTensor};

/// Runs `pipeline` over the safetensors checkpoint `input` and writes the result to
/// `output` in our format, holding about one tensor in memory
/// ([`Pipeline::run_streaming`]; a global pruning stage reads each tensor twice more).
/// Processed tensors are stored quantized with the pipeline's quantize stage, if it has
/// one, else dense in their dtype: the file format has no sparse layout, so the pipeline
/// runs with [`Pipeline::sparse_storage`]`(false)` and its report counts dense bytes.
/// Tensors the skip rules leave alone, and those candle
/// cannot hold (I8, I16, BOOL, ...), are copied unchanged. `progress(done, total)` counts
/// tensor loads.
///
/// # Errors
/// [`Pipeline::validate`] errors; those of
/// [`refuse_compressed`](super::refuse_compressed), the reader, the stages and the writer,
/// inside [`Error::Within`](crate::Error::Within) naming the file and tensor. `output` is
/// untouched on error.
///
/// ```
/// use candle_compress::convert::prune_file;
/// use candle_compress::prune::Pipeline;
/// use candle_core::{Device, Tensor};
///
/// let dir = tempfile::tempdir()?;
/// let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
/// let w = Tensor::randn(0f32, 1., (32, 64), &Device::Cpu)?;
/// candle_core::safetensors::save(&[("fc.weight", w)].into_iter().collect(), &input)?;
///
/// let pipeline = Pipeline::new().prune_magnitude(0.5).quantize("int8:32".parse()?);
/// let report = prune_file(&input, &output, &pipeline, |_, _| {})?;
/// assert_eq!(report.tensors_processed, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn prune_file(
    input: &Path,
    output: &Path,
    pipeline: &Pipeline,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report> {
    let pipeline = &pipeline.clone().sparse_storage(false);
    pipeline.validate()?;
    let reader = in_file(input, SafetensorsReader::open(input))?;
    super::refuse_compressed(input, "prune")?;

    let (mut copied, mut streamed) = (Vec::new(), Vec::new());
    for name in reader.names() {
        let Some(info) = reader.info(&name) else {
            continue;
        };
        match plain_candle_dtype(info.dtype, &name) {
            Ok(dtype) => streamed.push((name, dtype, info.shape.clone())),
            Err(_) => copied.push((name, info.dtype, info.shape.clone())),
        }
    }
    streamed.sort_by(|a, b| a.0.cmp(&b.0));
    let plan = plan(pipeline, &reader, &copied, &streamed);
    let mut writer = in_file(
        output,
        StreamingWriter::create(output, plan, HashMap::new()),
    )?;
    for (name, dtype, shape) in &copied {
        let raw = in_tensor(input, name, reader.read(name))?;
        in_file(output, writer.write_raw(name, *dtype, shape, &raw.data))?;
    }

    let names: Vec<String> = streamed.iter().map(|(n, _, _)| n.clone()).collect();
    let total = names.len() * pipeline.streaming_passes();
    let dtypes: HashMap<&str, DType> = streamed.iter().map(|(n, d, _)| (n.as_str(), *d)).collect();
    // The tensor being read or written, for the error message.
    let current = RefCell::new(String::new());
    let mut loads = 0;
    let report = pipeline
        .run_streaming(
            &names,
            |name| {
                name.clone_into(&mut current.borrow_mut());
                let t = reader.read_tensor(name);
                loads += 1;
                progress(loads, total);
                t
            },
            |name, stored| {
                name.clone_into(&mut current.borrow_mut());
                match stored {
                    StoredTensor::Quantized(c) => writer.write_compressed(name, &c),
                    StoredTensor::Dense(t) => {
                        let dtype = dtypes.get(name).copied().unwrap_or(t.dtype());
                        writer.write_plain(name, &t.to_dtype(dtype)?)
                    }
                    sparse => writer.write_plain(name, &sparse.to_dense(&Device::Cpu)?),
                }
            },
        )
        .map_err(|e| {
            let name = current.take();
            if name.is_empty() {
                e.within(input.display())
            } else {
                e.within(format_args!("{}: tensor {name}", input.display()))
            }
        })?;
    in_file(output, writer.finish())?;
    Ok(report)
}

/// The output's items: the copied tensors first, then every streamed one (quantized when
/// the pipeline processes it and has a quantize stage, else raw in its dtype).
fn plan(
    pipeline: &Pipeline,
    reader: &SafetensorsReader,
    copied: &[(String, safetensors::Dtype, Vec<usize>)],
    streamed: &[(String, DType, Vec<usize>)],
) -> Vec<(String, PlannedItem)> {
    let quantize = pipeline.stages.iter().find_map(|s| match s {
        Stage::Quantize { scheme } => Some(*scheme),
        _ => None,
    });
    let mut plan: Vec<(String, PlannedItem)> = copied
        .iter()
        .map(|(n, d, shape)| {
            let item = PlannedItem::Raw {
                dtype: *d,
                shape: shape.clone(),
            };
            (n.clone(), item)
        })
        .collect();
    for (name, dtype, shape) in streamed {
        let processed = pipeline.skip.reason(name, shape.len(), *dtype).is_none();
        let item = match quantize {
            Some(scheme) if processed => PlannedItem::Compressed(TensorEntry {
                scheme,
                shape: shape.clone(),
                dtype: *dtype,
            }),
            _ => PlannedItem::Raw {
                dtype: reader
                    .info(name)
                    .map_or(safetensors::Dtype::F32, |i| i.dtype),
                shape: shape.clone(),
            },
        };
        plan.push((name.clone(), item));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[test]
    fn an_error_inside_the_pipeline_names_the_file_and_tensor() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let input = dir.path().join("nan.safetensors");
        let bad = candle_core::Tensor::new(&[[1f32, f32::NAN], [0.5, 2.0]], &Device::Cpu)?;
        candle_core::safetensors::save(&[("fc.weight", bad)].into_iter().collect(), &input)?;
        let output = dir.path().join("out.safetensors");
        let pipeline = Pipeline::new().prune_magnitude(0.5);
        let e = prune_file(&input, &output, &pipeline, |_, _| {}).unwrap_err();
        assert!(matches!(e.root(), Error::NonFinite { .. }), "{e}");
        assert!(
            e.to_string().contains("nan.safetensors: tensor fc.weight"),
            "{e}"
        );
        assert!(!output.exists());
        Ok(())
    }
}
