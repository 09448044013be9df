//! [`compare_files`]: each tensor of a compressed file against its original (MAE, SQNR,
//! cosine), so a scheme can be judged before it is shipped.

use std::path::Path;

use super::{in_file, in_tensor, is_float};
use crate::compressor::Compressed;
use crate::error::{Error, Result};
use crate::io::reader::SafetensorsReader;
use crate::io::safetensors::{CompressedFile, ItemKind};
use crate::quant::metrics::{compare_slices, ErrorStats};

/// How far one tensor of the compressed file is from its original.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorError {
    /// The original's name (a quantized layer is compared as its `*.weight`).
    pub name: String,
    /// The error statistics (reference: the original).
    pub stats: ErrorStats,
}

/// What [`compare_files`] measured, in the compressed file's item order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EvalReport {
    /// Every float tensor and layer weight compared.
    pub tensors: Vec<TensorError>,
}

impl EvalReport {
    /// The tensor with the lowest SQNR (the first of equals), if any was compared.
    pub fn worst(&self) -> Option<&TensorError> {
        self.tensors.iter().fold(None, |worst, t| match worst {
            Some(w) if w.stats.sqnr_db <= t.stats.sqnr_db => Some(w),
            _ => Some(t),
        })
    }
}

/// Compares every item of our file `compressed` with its tensor in the safetensors file
/// `original`: compressed tensors decompressed, quantized layers through
/// [`QuantLinear::dequantize_weight`](crate::QuantLinear::dequantize_weight) against the
/// original `*.weight`, plain float tensors as stored. Integer tensors are not compared.
/// `progress(done, total)` is called after each item.
///
/// # Errors
/// [`Error::Missing`] when the original lacks a tensor the compressed file has; the
/// readers' and [`compare_slices`]' errors (shapes that differ, non-finite values),
/// inside [`Error::Within`] naming the file and tensor.
///
/// ```
/// use candle_compress::convert::{compare_files, quantize_file};
/// use candle_compress::prune::SkipRules;
/// use candle_core::{Device, Tensor};
///
/// let dir = tempfile::tempdir()?;
/// let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("q.safetensors"));
/// let w = Tensor::randn(0f32, 1., (32, 64), &Device::Cpu)?;
/// candle_core::safetensors::save(&[("fc.weight", w)].into_iter().collect(), &input)?;
/// quantize_file(&input, &output, &"w8a8".parse()?, &SkipRules::default(), |_, _| {})?;
///
/// let report = compare_files(&input, &output, |_, _| {})?;
/// let worst = report.worst().unwrap();
/// assert_eq!(worst.name, "fc.weight");
/// assert!(worst.stats.sqnr_db > 35.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn compare_files(
    original: &Path,
    compressed: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalReport> {
    let orig = in_file(original, SafetensorsReader::open(original))?;
    let file = in_file(compressed, CompressedFile::open(compressed))?;
    let items = file.items();
    let total = items.len();
    let mut report = EvalReport::default();
    for (done, item) in items.into_iter().enumerate() {
        let name = item.name.as_str();
        let approx = in_tensor(compressed, name, approximation(&file, &item.kind, name))?;
        progress(done + 1, total);
        let Some((reference_name, approx)) = approx else {
            continue;
        };
        let Some(info) = orig.info(&reference_name) else {
            return Err(Error::Missing {
                what: "tensor in the original file",
                name: reference_name,
            }
            .within(original.display()));
        };
        if !is_float(info.dtype) {
            continue;
        }
        let (_, reference) = in_tensor(original, &reference_name, orig.read_f32(&reference_name))?;
        let stats = in_tensor(compressed, name, compare_slices(&reference, &approx))?;
        report.tensors.push(TensorError {
            name: reference_name,
            stats,
        });
    }
    Ok(report)
}

/// The original's name and the stored values of one item, `None` for integer tensors.
fn approximation(
    file: &CompressedFile,
    kind: &ItemKind,
    name: &str,
) -> Result<Option<(String, Vec<f32>)>> {
    Ok(Some(match kind {
        ItemKind::Compressed(_) => (name.to_string(), file.load_compressed(name)?.to_f32_vec()),
        ItemKind::QuantLinear(_) => {
            let w = file.load_quant_linear(name)?.dequantize_weight()?;
            (format!("{name}.weight"), w.flatten_all()?.to_vec1::<f32>()?)
        }
        ItemKind::Plain { dtype, .. } if is_float(*dtype) => {
            (name.to_string(), file.reader().read_f32(name)?.1)
        }
        ItemKind::Plain { .. } => return Ok(None),
    }))
}
