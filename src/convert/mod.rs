//! File-to-file conversions: what the `candle-compress` command line does, as library
//! calls that a program can make too.
//!
//! Each function reads a checkpoint through the validating
//! [`SafetensorsReader`](crate::io::reader::SafetensorsReader), holds one tensor at a time,
//! writes through the crate's writers (a temporary file renamed into place, so an error
//! leaves no half-written output) and returns a report that serialises to the CLI's
//! `--json` output:
//!
//! - [`quantize_file`]: every 2-D float tensor through a [`Scheme`](crate::Scheme), or
//!   every `*.weight` matrix (with its bias) into a [`QuantLinear`](crate::QuantLinear)
//!   ([`FileScheme`]), honouring [`SkipRules`](crate::prune::SkipRules).
//! - [`prune_file`]: a [`Pipeline`](crate::prune::Pipeline) streamed over a file.
//! - [`compare_files`]: each compressed tensor or layer against its original (MAE, SQNR,
//!   cosine).
//! - [`inspect_file`]: kind, scheme, shape and bytes of every item, from the header alone.
//! - [`export_gguf_file`]: a GGUF file for llama.cpp-style runtimes.
//!
//! Errors name the file, and the tensor where one is concerned, with [`Error::Within`]
//! (its [`Error::root`] is the failure itself). Every function takes a `progress`
//! callback, called with `(done, total)` steps as the work goes (`|_, _| {}` for none).
//!
//! ```
//! use candle_compress::convert::{inspect_file, quantize_file, FileScheme};
//! use candle_compress::prune::SkipRules;
//! use candle_core::{Device, Tensor};
//!
//! let dir = tempfile::tempdir()?;
//! let (input, output) = (dir.path().join("model.safetensors"), dir.path().join("q.safetensors"));
//! let w = Tensor::randn(0f32, 1., (64, 128), &Device::Cpu)?;
//! candle_core::safetensors::save(&[("fc.weight", w)].into_iter().collect(), &input)?;
//!
//! let scheme: FileScheme = "w8a8".parse()?;
//! let report = quantize_file(&input, &output, &scheme, &SkipRules::default(), |_, _| {})?;
//! assert_eq!(report.tensors[0].scheme.as_deref(), Some("w8a8"));
//! assert!(inspect_file(&output)?.ratio() > 3.5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`Error::Within`]: crate::Error::Within
//! [`Error::root`]: crate::Error::root

mod eval;
mod export;
mod guard;
mod inspect;
mod prune;
mod quantize;

pub use eval::{compare_files, EvalReport, TensorError};
pub use export::{export_gguf_file, ExportReport, ExportedTensor};
pub use guard::refuse_compressed;
pub use inspect::{inspect_file, FileSummary, ItemSummary};
pub use prune::prune_file;
pub use quantize::{quantize_file, Action, FileScheme, QuantizeReport, QuantizedTensor};

/// File metadata key under which [`quantize_file`] records, per quantized layer, the dtype
/// and bytes (weight + bias) of the float tensors it was made from, so that
/// [`inspect_file`] reports the true ratio.
pub const LAYER_SOURCES_KEY: &str = "source_layers";

use std::path::Path;

use crate::error::{Error, Result};

/// `r` with the file `path` named in its error.
fn in_file<T>(path: &Path, r: Result<T>) -> Result<T> {
    r.map_err(|e| e.within(path.display()))
}

/// `r` with tensor `name` of file `path` named in its error.
fn in_tensor<T>(path: &Path, name: &str, r: Result<T>) -> Result<T> {
    r.map_err(|e: Error| e.within(format_args!("{}: tensor {name}", path.display())))
}

/// Whether `d` is one of the float dtypes the conversions quantize and compare.
fn is_float(d: safetensors::Dtype) -> bool {
    use safetensors::Dtype;
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// The size of a file just written.
fn file_bytes(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| Error::Io(e).within(path.display()))
}
