//! Quantization, pruning and compact activation codecs for [candle] models on CPU.
//!
//! [candle]: https://github.com/huggingface/candle
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod codec;
pub mod compressor;
pub mod error;
pub mod input;
pub mod io;
#[allow(unsafe_code)]
pub mod kernels;
pub mod nn;
pub mod prune;
pub mod quant;
pub mod scheme;
pub mod sparse;

pub use compressor::{Compressed, Compressor};
pub use error::{Error, Result};
pub use nn::{QuantConfig, QuantLinear};
pub use scheme::{CompressedTensor, Scheme};
