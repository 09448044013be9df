//! Interoperability with the [compressed-tensors] checkpoint format (written by
//! llm-compressor, loaded by vLLM and transformers), following compressed-tensors 0.12.2.
//!
//! Two layouts are written and read, for linear layers under a prefix `p` (e.g.
//! `model.layers.0.mlp.down_proj`):
//!
//! | format | tensors | config group |
//! |---|---|---|
//! | `int-quantized` (W8A8) | `p.weight` I8 `[out, in]`; `p.weight_scale` `[out, 1]` | weights: 8 bits, int, symmetric, `strategy: "channel"`; input_activations: 8 bits, int, symmetric, `strategy: "token"`, `dynamic: true` (so no `p.input_scale`) |
//! | `pack-quantized` (W4 groups) | `p.weight_packed` I32 `[out, ceil(in/8)]`; `p.weight_scale` `[out, in/group]`; `p.weight_shape` I32 `[2]` = `[out, in]` | weights: 4 bits, int, symmetric, `strategy: "group"`, `group_size`; input_activations as above |
//!
//! In `weight_packed`, each row is packed on its own: the signed 4-bit value `q` is offset to
//! the unsigned `q + 8`, and element `i` of a row sits at bits `4·(i mod 8)` of int32
//! `i / 8` (the row's last int32 is zero-padded). Symmetric schemes store no zero point.
//! The value is `q · scale`. `p.bias`, when present, stays in float. Scales are written as
//! F32 (any float dtype is read: F32, F16, BF16).
//!
//! `config.json` carries a `quantization_config` object ([`quantization_config`]):
//! `quant_method: "compressed-tensors"`, `format`, `quantization_status: "compressed"`,
//! `config_groups: {"group_0": {targets, weights, input_activations, output_activations,
//! format}}`, `ignore` (layers left in float), `kv_cache_scheme`, `sparsity_config`,
//! `version`.
//!
//! Also read: llm-compressor's W4A8 preset, `int-quantized` with 4-bit codes in I8
//! `p.weight` `[out, in]` and group scales `[out, in/group]`; `input_activations: null`
//! (W4A16 / W8A16), run weight-only as [`ActivationQuant::Float`]; dynamic per-tensor and
//! static per-tensor (`p.input_scale` `[1]`) int8 activations, which [`CtWriter`] also
//! writes; `mixed-precision` checkpoints whose groups carry their own `format`; sharded
//! checkpoints ([`CtCheckpoint::open_dir`], [`CtCheckpoint::open_sharded`], written by
//! [`CtWriter::write_sharded`]).
//!
//! Reading notes: compressed-tensors' int8 range is `[-128, 127]`; [`QuantLinear`] takes
//! `[-127, 127]`, so a stored `-128` (possible when the writer rounds `-127.5` to even) is
//! loaded as `-127`, an error of one step on that element, counted in
//! [`CtLayerReport::clamped_codes`] and [`CtCheckpoint::clamped_codes`] (and a `tracing`
//! warning). A layer's config group is the one whose format, bit width, strategy and
//! group size agree with its stored tensors; a layer no group describes is refused with
//! [`Error::Unsupported`] naming the tensors found. Asymmetric (zero-point) and
//! activation-ordered (`g_idx`) checkpoints are refused with [`Error::Unsupported`].
//! [`CtWriter`] refuses int4 layers whose group does not divide `in_features`: the format
//! has no layout for a shorter last group.
//!
//! [compressed-tensors]: https://github.com/neuralmagic/compressed-tensors
//! [`QuantLinear`]: crate::nn::QuantLinear
//! [`ActivationQuant::Float`]: crate::nn::ActivationQuant::Float
//! [`Error::Unsupported`]: crate::Error::Unsupported
//!
//! ```
//! use candle_compress::io::compressed_tensors::{CtCheckpoint, CtWriter};
//! use candle_compress::nn::{QuantConfig, QuantLinear};
//! use candle_core::{Device, Module, Tensor};
//!
//! let dir = tempfile::tempdir()?;
//! let w = Tensor::randn(0f32, 1., (16, 256), &Device::Cpu)?;
//! let layer = QuantLinear::new(&w, None, &QuantConfig::w4a8(128)?)?;
//! let mut writer = CtWriter::new();
//! writer.add_quant_linear("model.fc", &layer)?;
//! writer.write(dir.path().join("model.safetensors"), dir.path().join("config.json"), None)?;
//!
//! let ckpt = CtCheckpoint::open(dir.path().join("model.safetensors"), dir.path().join("config.json"))?;
//! let back = ckpt.load_quant_linear("model.fc")?;
//! let x = Tensor::randn(0f32, 1., (2, 256), &Device::Cpu)?;
//! assert_eq!(back.forward(&x)?.to_vec2::<f32>()?, layer.forward(&x)?.to_vec2::<f32>()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod checkpoint;
mod config;
mod format;
mod layer;
mod shards;
mod writer;

pub use checkpoint::CtCheckpoint;
pub use config::{quantization_config, CT_SPEC_VERSION};
pub use format::{pack_row_int32, unpack_row_int32, CtFormat};
pub use layer::CtLayerReport;
pub use shards::SHARD_INDEX_NAME;
pub use writer::CtWriter;
