//! Quantization, pruning and compact activation codecs for [candle] models on CPU.
//!
//! The centre piece is [`QuantLinear`], a drop-in replacement for `candle_nn::Linear`
//! that stores int8 (or packed int4) weights and runs an integer matrix product on SIMD
//! kernels picked at run time:
//!
//! ```
//! use candle_compress::{QuantConfig, QuantLinear};
//! use candle_core::{Device, Module, Tensor};
//!
//! let dev = Device::Cpu;
//! let linear = candle_nn::Linear::new(Tensor::randn(0f32, 0.05, (64, 32), &dev)?, None);
//! let q = QuantLinear::from_linear(&linear, &QuantConfig::w8a8())?;
//! let x = Tensor::randn(0f32, 1.0, (4, 32), &dev)?;
//! let err = candle_compress::quant::metrics::compare_tensors(&linear.forward(&x)?, &q.forward(&x)?)?;
//! assert!(err.cosine_similarity > 0.999);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Overview
//!
//! - **Layers** ([`nn`]): [`QuantLinear`] (W8A8, W4A8; activations per token, per tensor
//!   or with a static calibrated scale), [`nn::ObservedLinear`] for calibration, and
//!   [`nn::smooth`], SmoothQuant as a model rewrite (folded into LayerNorm/RmsNorm and the
//!   following linears, or applied inside `QuantLinear` for post-LN blocks).
//! - **Tensor quantizers** ([`quant`]): [`quant::BlockwiseInt8`] (GGML Q8_0 with blocks of
//!   32), [`quant::Affine`], [`quant::SymmetricInt4`], [`quant::Nf4`], each a
//!   [`Compressor`] whose output implements [`Compressed`]; [`Scheme`] names them and
//!   [`CompressedTensor`] holds any of their outputs. Also dynamic activation
//!   quantization ([`quant::dynamic`]), calibration statistics ([`quant::calib`]) and error
//!   metrics ([`quant::metrics`]).
//! - **Pruning** ([`prune`]): magnitude, global, N:M, clipping, sparse layouts, and the
//!   [`prune::Pipeline`] with its [`prune::Report`].
//! - **Activation codecs** ([`codec`]): [`codec::ActivationCodec`] wire bytes.
//! - **Neuron statistics** ([`sparse`]): hot/cold neurons and the hot-first FFN order.
//! - **Files** ([`io`]): our safetensors layout, the [`io::loader::QuantLoader`],
//!   compressed-tensors interop and GGUF export.
//! - **File conversions** ([`convert`]): quantize, prune, compare, inspect and export
//!   whole checkpoints one tensor at a time — what the CLI runs.
//! - **Kernels** ([`kernels`]): the only module allowed `unsafe_code`;
//!   [`kernels::active_isa`] says which instruction set runs.
//!
//! # What it does not do
//!
//! - GPUs: everything runs on candle's CPU device.
//! - Training with quantized weights (no quantization-aware training, no gradients through
//!   [`QuantLinear`]).
//!
//! # Errors and input policy
//!
//! Every fallible function returns [`Result`] with the crate's [`Error`]; inside candle
//! traits it converts into `candle_core::Error`. Inputs may be F32, F16, BF16 or F64 of
//! any rank and layout; integer dtypes, NaN and ±Inf (reported with the first flat index),
//! zero block sizes and corrupt bytes are refused, never a panic.
//!
//! # Crate features
//!
//! - `cli` (off by default): the `candle-compress` binary; adds `clap`, `indicatif` and
//!   `signal-hook` (to remove an unfinished output on Ctrl-C).
//!
//! SIMD needs no feature and no `-C target-cpu=native`: AMX tiles (large batches, where
//! the CPU and Linux grant them), AVX-512 VNNI, AVX-VNNI, AVX2 or NEON kernels are chosen
//! when the process starts (detected once, cached, logged with `tracing` at debug level);
//! `CANDLE_COMPRESS_ISA=avx512-vnni` (or `avx2`, `scalar`, …) forces a lower path.
//!
//! [candle]: https://github.com/huggingface/candle
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod codec;
pub mod compressor;
pub mod convert;
pub mod error;
mod input;
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

/// The README's Rust examples, compiled and run as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
