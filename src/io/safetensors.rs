//! Compressed tensors and quantized layers in `.safetensors` files that any safetensors
//! reader opens.
//!
//! candle 0.11 has no `I8` dtype and its safetensors loader refuses `I8` tensors, so files
//! are written and read with the `safetensors` crate directly. Every compressed tensor is
//! stored as a few ordinary tensors (its *parts*: int8 codes as `I8`, packed nibbles as
//! `U8`, scales and zero points as `F16`/`F32`) next to uncompressed tensors, and a JSON
//! manifest in the file's `__metadata__` says which scheme, shape and original dtype each
//! compressed tensor had. The layout is specified below so another implementation can read
//! it.
//!
//! # File layout (format `candle-compress`, version 1)
//!
//! `__metadata__` (a string → string map, as safetensors requires):
//!
//! | key | value |
//! |---|---|
//! | `format` | `"candle-compress"` |
//! | `format_version` | `"1"` |
//! | `candle_compress.tensors` | JSON object: compressed tensor name → entry (below) |
//! | `candle_compress.layers` | JSON object: layer prefix → layer entry (below) |
//!
//! A compressed tensor entry is `{"scheme": S, "shape": [..], "dtype": D}`: `S` is the
//! [`Scheme`](crate::scheme::Scheme) text form `<kind>:<size>` (block or group size, e.g. `"int8:64"`), `D` the
//! original dtype (`"F32"`, `"F16"`, `"BF16"` or `"F64"`), and `n` below the element
//! count of `shape`. Its parts are tensors named `<name>.<part>`:
//!
//! | kind | parts (dtype, shape) | element `i` decodes to |
//! |---|---|---|
//! | `int8` | `q` (I8, `shape`), `scales` (F16, `[ceil(n/size)]`) | `q[i] · scales[i / size]` |
//! | `int4` | `packed` (U8, `[ceil(n/2)]`), `scales` (F16, `[ceil(n/size)]`) | `(nib(i) − 8) · scales[i / size]` |
//! | `affine8` | `codes` (U8, `[n]`), `scales`, `zero_points` (F32, `[ceil(n/size)]`) | `zero_points[g] + codes[i] · scales[g]`, `g = i / size` |
//! | `affine4` | `codes` (U8, `[ceil(n/2)]`), `scales`, `zero_points` (F32, `[ceil(n/size)]`) | `zero_points[g] + nib(i) · scales[g]` |
//! | `nf4` | `packed` (U8, `[ceil(n/2)]`), `absmax` (F32, `[ceil(n/size)]`) | `NF4[nib(i)] · absmax[i / size]` |
//!
//! Blocks and groups run over the row-major flattened tensor. `nib(i)` is the low nibble
//! of byte `i / 2` for even `i`, the high nibble for odd `i` (a padding nibble is 0).
//! `NF4` is the QLoRA code book ([`crate::quant::nf4::NF4_CODE_BOOK`]).
//!
//! A quantized linear layer (a [`QuantLinear`](crate::nn::QuantLinear)) under prefix `p` is stored as
//! `p.weight` — I8 `[out, in]` for int8 weights, or U8 `[out, ceil(in/2)]` for int4
//! (each row packed on its own, codes `q + 8`, column `2j` in the low nibble) —
//! `p.weight_scale` (F32, `[out]` for int8 per channel, `[out, ceil(in/group)]` for int4),
//! for asymmetric int4 also `p.weight_offset` (F32, `[out, ceil(in/group)]`: the code `c`
//! stands for `scale·c + offset`), and optionally `p.bias` (F32 `[out]`) and `p.smooth`
//! (F32 `[in]`, the SmoothQuant vector). Its layer entry is `{"in_features",
//! "out_features", "weights": "int8-per-channel" | "int4-grouped" | "int4-grouped-asym",
//! "group" (int4 only), "activations": "per-token" |
//! "per-tensor" | "static" | "none" (weight-only), "activation_scale" (static only),
//! "bias": bool, "smooth": bool}`.
//!
//! Every part must have exactly the dtype and shape listed here: a part whose shape
//! disagrees with its manifest entry (even with the right element count) is refused.
//!
//! Every other tensor of the file is an ordinary (uncompressed) tensor.
//!
//! # Where the layout lives
//!
//! The names, the manifest entries and the one list of each item's parts are in
//! `format.rs`; the manifest's exact JSON (serde structs, validated through `TryFrom`)
//! in `manifest.rs`; the bytes of each part in `encode.rs`. [`CompressedWriter`]
//! (in memory) and [`StreamingWriter`] (item by item) write through the same
//! part-by-part writer; [`CompressedFile`] reads through the validating
//! [`SafetensorsReader`](crate::io::reader::SafetensorsReader) and checks every part the
//! list names.
//!
//! ```
//! use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
//! use candle_compress::quant::SymmetricInt4;
//! use candle_compress::Compressor;
//! use candle_core::{Device, Tensor};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("model.safetensors");
//! let w = Tensor::randn(0f32, 1., (8, 64), &Device::Cpu)?;
//! let norm = Tensor::ones(8, candle_core::DType::F32, &Device::Cpu)?;
//!
//! let mut writer = CompressedWriter::new();
//! writer.add_compressed("w", &SymmetricInt4::new(32)?.compress(&w)?.into())?;
//! writer.add_plain("norm", &norm)?;
//! writer.write(&path)?;
//!
//! let file = CompressedFile::open(&path)?;
//! let w2 = file.load_tensor("w", &Device::Cpu)?; // decompressed on demand
//! assert_eq!(w2.dims(), &[8, 64]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod encode;
mod file;
mod format;
mod manifest;
mod streaming;
mod writer;

pub use file::{load, CompressedFile, Item, ItemKind, Loaded};
pub(crate) use format::plain_candle_dtype;
pub use format::{
    LayerEntry, TensorEntry, FORMAT_NAME, FORMAT_VERSION, KEY_FORMAT, KEY_LAYERS, KEY_TENSORS,
    KEY_VERSION,
};
pub(crate) use manifest::QuantConfigRepr;
pub use streaming::{PlannedItem, StreamingWriter};
pub use writer::{save, CompressedWriter};
