//! [`QuantLoader`]: a `VarBuilder`-style loader of quantized models, with `pp(prefix)`
//! scoping like candle's, over three kinds of checkpoint:
//!
//! - a file of ours ([`QuantLoader::from_compressed`]): [`QuantLinear`]s saved with
//!   [`CompressedWriter::add_quant_linear`](super::safetensors::CompressedWriter::add_quant_linear),
//!   compressed and plain tensors;
//! - an f32 / f16 / bf16 safetensors checkpoint, quantized on load
//!   ([`QuantLoader::quantize_on_load`]): each `QuantLinear` reads its own weight, quantizes
//!   it and drops the float copy, so no more than one f32 weight is held at a time;
//! - a compressed-tensors checkpoint ([`QuantLoader::from_compressed_tensors`]).
//!
//! Model code is written once against [`quant_linear`] (candle-nn's `linear` for
//! quantized layers):
//!
//! ```
//! use candle_compress::io::loader::{quant_linear, QuantLoader};
//! use candle_compress::io::safetensors::CompressedWriter;
//! use candle_compress::nn::{QuantConfig, QuantLinear};
//! use candle_core::{Device, Module, Tensor};
//!
//! struct Mlp { fc1: QuantLinear, fc2: QuantLinear }
//! impl Mlp {
//!     fn load(vb: &QuantLoader) -> candle_compress::Result<Self> {
//!         Ok(Self {
//!             fc1: quant_linear(64, 32, vb.pp("fc1"))?,
//!             fc2: quant_linear(32, 8, vb.pp("fc2"))?,
//!         })
//!     }
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("mlp.safetensors");
//! let mut w = CompressedWriter::new();
//! for (name, (o, i)) in [("mlp.fc1", (32, 64)), ("mlp.fc2", (8, 32))] {
//!     let weight = Tensor::randn(0f32, 1., (o, i), &Device::Cpu)?;
//!     w.add_quant_linear(name, &QuantLinear::new(&weight, None, &QuantConfig::w8a8())?)?;
//! }
//! w.write(&path)?;
//!
//! let mlp = Mlp::load(&QuantLoader::from_compressed(&path)?.pp("mlp"))?;
//! let x = Tensor::randn(0f32, 1., (3, 64), &Device::Cpu)?;
//! assert_eq!(mlp.fc2.forward(&mlp.fc1.forward(&x)?)?.dims(), &[3, 8]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, Tensor};

use super::compressed_tensors::CtCheckpoint;
use super::reader::SafetensorsReader;
use super::safetensors::CompressedFile;
use crate::error::{Error, Result};
use crate::nn::{QuantConfig, QuantLinear};

enum Backend {
    Ours(CompressedFile),
    Float {
        reader: SafetensorsReader,
        config: QuantConfig,
    },
    Ct(CtCheckpoint),
    Gguf(super::gguf_loader::GgufBackend),
}

/// A scoped view of a quantized (or to-be-quantized) checkpoint. Cloning and
/// [`QuantLoader::pp`] are cheap: the opened file is shared.
#[derive(Clone)]
pub struct QuantLoader {
    backend: Arc<Backend>,
    path: Vec<String>,
    device: Device,
}

impl fmt::Debug for QuantLoader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &*self.backend {
            Backend::Ours(_) => "candle-compress",
            Backend::Float { .. } => "float (quantize on load)",
            Backend::Ct(_) => "compressed-tensors",
            Backend::Gguf(_) => "GGUF",
        };
        f.debug_struct("QuantLoader")
            .field("kind", &kind)
            .field("prefix", &self.prefix())
            .finish()
    }
}

impl QuantLoader {
    /// A loader over a GGUF backend (see [`super::gguf_loader`]).
    pub(crate) fn from_gguf_backend(backend: super::gguf_loader::GgufBackend) -> Self {
        Self::new(Backend::Gguf(backend))
    }

    fn new(backend: Backend) -> Self {
        Self {
            backend: Arc::new(backend),
            path: Vec::new(),
            device: Device::Cpu,
        }
    }

    /// A loader over a file written by
    /// [`CompressedWriter`](super::safetensors::CompressedWriter).
    ///
    /// # Errors
    /// As [`CompressedFile::open`].
    ///
    /// ```
    /// use candle_compress::io::loader::QuantLoader;
    /// assert!(QuantLoader::from_compressed("/nonexistent.safetensors").is_err());
    /// ```
    pub fn from_compressed(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(Backend::Ours(CompressedFile::open(path)?)))
    }

    /// A loader over an already opened [`CompressedFile`].
    ///
    /// ```
    /// use candle_compress::io::loader::QuantLoader;
    /// use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let file = CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?;
    /// let vb = QuantLoader::from_file(file);
    /// assert_eq!(vb.prefix(), "");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn from_file(file: CompressedFile) -> Self {
        Self::new(Backend::Ours(file))
    }

    /// A loader that quantizes an f32 / f16 / bf16 safetensors checkpoint with `config` as
    /// each layer is loaded (`<prefix>.weight` `[out, in]`, optional `<prefix>.bias`).
    ///
    /// # Errors
    /// As [`SafetensorsReader::open`]; [`Error::InvalidArgument`] for an invalid config.
    ///
    /// ```
    /// use candle_compress::io::loader::{quant_linear, QuantLoader};
    /// use candle_compress::nn::{QuantConfig, QuantLinear};
    /// use candle_core::{Device, Tensor};
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("f32.safetensors");
    /// let w = Tensor::randn(0f32, 1., (4, 64), &Device::Cpu)?;
    /// candle_core::safetensors::save(&[("fc.weight", w)].into_iter().collect(), &path)?;
    /// let vb = QuantLoader::quantize_on_load(&path, QuantConfig::w4a8(64)?)?;
    /// let fc = quant_linear(64, 4, vb.pp("fc"))?;
    /// assert_eq!(fc.out_features(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn quantize_on_load(path: impl AsRef<Path>, config: QuantConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::new(Backend::Float {
            reader: SafetensorsReader::open(path)?,
            config,
        }))
    }

    /// A loader over a compressed-tensors checkpoint (`model.safetensors` + `config.json`).
    ///
    /// # Errors
    /// As [`CtCheckpoint::open`].
    ///
    /// ```
    /// use candle_compress::io::loader::QuantLoader;
    /// assert!(QuantLoader::from_compressed_tensors("/no.safetensors", "/no.json").is_err());
    /// ```
    pub fn from_compressed_tensors(
        safetensors_path: impl AsRef<Path>,
        config_path: impl AsRef<Path>,
    ) -> Result<Self> {
        Ok(Self::new(Backend::Ct(CtCheckpoint::open(
            safetensors_path,
            config_path,
        )?)))
    }

    /// A loader that quantizes the float checkpoint of an already opened reader with
    /// `config` as each layer is loaded (as [`QuantLoader::quantize_on_load`]).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid config.
    ///
    /// ```
    /// use candle_compress::io::loader::QuantLoader;
    /// use candle_compress::io::reader::SafetensorsReader;
    /// use candle_compress::nn::QuantConfig;
    /// let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// let reader = SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let vb = QuantLoader::quantize_reader_on_load(reader, QuantConfig::w8a8())?;
    /// assert!(!vb.contains("fc.weight"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn quantize_reader_on_load(reader: SafetensorsReader, config: QuantConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::new(Backend::Float { reader, config }))
    }

    /// A loader over an already opened compressed-tensors checkpoint.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::{quantization_config, CtCheckpoint, CtFormat};
    /// use candle_compress::io::loader::QuantLoader;
    /// use candle_compress::io::reader::SafetensorsReader;
    /// let none: [(&str, safetensors::tensor::TensorView); 0] = [];
    /// let reader = SafetensorsReader::from_bytes(safetensors::serialize(none, None)?)?;
    /// let ckpt = CtCheckpoint::from_parts(reader, &quantization_config(CtFormat::IntQuantized, &[]))?;
    /// assert_eq!(QuantLoader::from_ct_checkpoint(ckpt).prefix(), "");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn from_ct_checkpoint(checkpoint: CtCheckpoint) -> Self {
        Self::new(Backend::Ct(checkpoint))
    }

    /// A loader over a compressed-tensors checkpoint directory: `config.json` and
    /// `model.safetensors`, or a sharded checkpoint (`model.safetensors.index.json` and
    /// its shards), as llm-compressor writes it.
    ///
    /// # Errors
    /// As [`CtCheckpoint::open_dir`].
    ///
    /// ```
    /// use candle_compress::io::loader::QuantLoader;
    /// assert!(QuantLoader::from_compressed_tensors_dir("/no-such-checkpoint").is_err());
    /// ```
    pub fn from_compressed_tensors_dir(dir: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(Backend::Ct(CtCheckpoint::open_dir(dir)?)))
    }

    /// Int8 codes of `-128` that loading layers of a compressed-tensors checkpoint
    /// mapped to `-127` so far (each one quantization step off); 0 for other
    /// checkpoints. Worth printing after a load: the same count goes to a `tracing`
    /// warning, invisible without a subscriber.
    ///
    /// ```
    /// # use candle_compress::io::loader::QuantLoader;
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// # let vb = QuantLoader::from_file(CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?);
    /// assert_eq!(vb.clamped_codes(), 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn clamped_codes(&self) -> usize {
        match &*self.backend {
            Backend::Ct(c) => c.clamped_codes(),
            _ => 0,
        }
    }

    /// The same loader placing float tensors on `device` (default: CPU).
    ///
    /// ```
    /// # use candle_compress::io::loader::QuantLoader;
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// # let vb = QuantLoader::from_file(CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?);
    /// let vb = vb.on_device(candle_core::Device::Cpu);
    /// assert!(vb.device().is_cpu());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn on_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// The device float tensors are loaded on.
    ///
    /// ```
    /// # use candle_compress::io::loader::QuantLoader;
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// # let vb = QuantLoader::from_file(CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?);
    /// assert!(vb.device().is_cpu());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A loader scoped one level deeper: names are then looked up under `prefix.`.
    /// An empty `s` returns the same scope.
    ///
    /// ```
    /// # use candle_compress::io::loader::QuantLoader;
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// # let vb = QuantLoader::from_file(CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?);
    /// assert_eq!(vb.pp("model").pp("layers.0").prefix(), "model.layers.0");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn pp(&self, s: impl ToString) -> Self {
        let s = s.to_string();
        let mut next = self.clone();
        if !s.is_empty() {
            next.path.push(s);
        }
        next
    }

    /// The current prefix (`"a.b"`), empty at the root.
    ///
    /// ```
    /// # use candle_compress::io::loader::QuantLoader;
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// # let vb = QuantLoader::from_file(CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?);
    /// assert_eq!(vb.pp("a").prefix(), "a");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn prefix(&self) -> String {
        self.path.join(".")
    }

    fn full(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else if name.is_empty() {
            self.prefix()
        } else {
            format!("{}.{name}", self.prefix())
        }
    }

    /// Whether a float tensor or quantized layer `name` exists in this scope.
    ///
    /// ```
    /// # use candle_compress::io::loader::QuantLoader;
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// # let vb = QuantLoader::from_file(CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?);
    /// assert!(!vb.contains("fc1"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn contains(&self, name: &str) -> bool {
        let full = self.full(name);
        match &*self.backend {
            Backend::Ours(f) => {
                f.is_plain(&full)
                    || f.tensor_entry(&full).is_some()
                    || f.layer_entry(&full).is_some()
            }
            Backend::Float { reader, .. } => reader.info(&full).is_some(),
            Backend::Ct(c) => {
                c.info(&full).is_some() || c.info(&format!("{full}.weight_scale")).is_some()
            }
            Backend::Gguf(g) => g.contains(&full),
        }
    }

    /// Loads float tensor `name` of this scope and checks its shape: a plain tensor, or a
    /// compressed tensor decompressed (files of ours), or a float tensor of the checkpoint.
    ///
    /// # Errors
    /// [`Error::Missing`] when absent; [`Error::ShapeMismatch`] when its shape is not
    /// `dims`; decoding errors.
    ///
    /// ```
    /// # use candle_compress::io::loader::QuantLoader;
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// let mut w = CompressedWriter::new();
    /// w.add_plain("norm.weight", &candle_core::Tensor::ones(4, candle_core::DType::F32, &candle_core::Device::Cpu)?)?;
    /// let vb = QuantLoader::from_file(CompressedFile::from_bytes(w.to_bytes()?)?);
    /// assert_eq!(vb.pp("norm").get(&[4], "weight")?.dims(), &[4]);
    /// assert!(vb.pp("norm").get(&[5], "weight").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get(&self, dims: &[usize], name: &str) -> Result<Tensor> {
        let full = self.full(name);
        let t = match &*self.backend {
            Backend::Ours(f) => f.load_tensor(&full, &self.device)?,
            Backend::Float { reader, .. } => read_float_tensor(reader, &full, &self.device)?,
            Backend::Ct(c) => c.load_float(&full, &self.device)?,
            Backend::Gguf(g) => g.load_float(&full, &self.device)?,
        };
        if t.dims() != dims {
            return Err(Error::shape(full, dims, t.dims()));
        }
        Ok(t)
    }

    /// Loads the quantized linear layer at `name` (relative to this scope; `""` for the
    /// scope itself) and checks it is `[out_features, in_features]`.
    ///
    /// # Errors
    /// [`Error::Missing`] when absent; [`Error::ShapeMismatch`] for other dims; decoding
    /// and quantization errors.
    ///
    /// ```
    /// # use candle_compress::io::loader::QuantLoader;
    /// # use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
    /// # let vb = QuantLoader::from_file(CompressedFile::from_bytes(CompressedWriter::new().to_bytes()?)?);
    /// assert!(vb.quant_linear(8, 4, "fc").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn quant_linear(
        &self,
        in_features: usize,
        out_features: usize,
        name: &str,
    ) -> Result<QuantLinear> {
        let full = self.full(name);
        let layer = match &*self.backend {
            Backend::Ours(f) => f.load_quant_linear(&full)?,
            Backend::Ct(c) => c.load_quant_linear(&full)?,
            Backend::Gguf(g) => g.load_quant_linear(&full)?,
            Backend::Float { reader, config } => {
                let weight = read_float_tensor(reader, &format!("{full}.weight"), &Device::Cpu)?;
                let bias_name = format!("{full}.bias");
                let bias = match reader.info(&bias_name) {
                    Some(_) => Some(read_float_tensor(reader, &bias_name, &Device::Cpu)?),
                    None => None,
                };
                QuantLinear::new(&weight, bias.as_ref(), config)?
            }
        };
        if (layer.out_features(), layer.in_features()) != (out_features, in_features) {
            return Err(Error::shape(
                format!("{full} [out, in]"),
                [out_features, in_features],
                [layer.out_features(), layer.in_features()],
            ));
        }
        Ok(layer)
    }
}

/// Reads a float tensor (F32, F16, BF16, F64) of a safetensors file as an f32 tensor,
/// converting chunk by chunk (one f32 copy, no raw-byte copy).
fn read_float_tensor(reader: &SafetensorsReader, name: &str, device: &Device) -> Result<Tensor> {
    let (shape, values) = reader.read_f32(name)?;
    Ok(Tensor::from_vec(values, shape, device)?)
}

/// Loads the quantized linear layer at `vb`'s scope and checks it is `[out_dim, in_dim]`:
/// `candle_nn::linear(in_dim, out_dim, vb)` for quantized models, so model code written
/// against candle-nn changes one call.
///
/// # Errors
/// As [`QuantLoader::quant_linear`].
///
/// ```
/// use candle_compress::io::loader::{quant_linear, QuantLoader};
/// use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
/// use candle_compress::nn::{QuantConfig, QuantLinear};
/// let w = candle_core::Tensor::randn(0f32, 1., (4, 16), &candle_core::Device::Cpu)?;
/// let mut writer = CompressedWriter::new();
/// writer.add_quant_linear("fc", &QuantLinear::new(&w, None, &QuantConfig::w8a8())?)?;
/// let vb = QuantLoader::from_file(CompressedFile::from_bytes(writer.to_bytes()?)?);
/// let fc = quant_linear(16, 4, vb.pp("fc"))?;
/// assert_eq!(fc.in_features(), 16);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn quant_linear(in_dim: usize, out_dim: usize, vb: QuantLoader) -> Result<QuantLinear> {
    vb.quant_linear(in_dim, out_dim, "")
}
