//! [`QuantLoader::from_gguf`]: GGUF weights (llama.cpp's files) into [`QuantLinear`]s on
//! load, one tensor at a time.
//!
//! For each layer `<name>` the loader reads `<name>.weight` (`[out, in]`, GGML blocks
//! along `in`) and an optional `<name>.bias`, and builds a layer in the caller's
//! [`QuantConfig`]:
//!
//! - **Q4_0 into W4 groups of 32: exact.** A Q4_0 block is 32 signed 4-bit codes
//!   (`q ∈ [-8, 7]`) and one f16 scale `d`, value `q · d` — exactly our int4 group of 32
//!   (codes in `[-8, 7]`, f32 scale). The codes are kept and the scales widened, so the
//!   layer holds the same numbers as the file, bit for bit. llama.cpp's own Q4_0 rule
//!   (`d = max / -8`, the signed largest value) gives about half the blocks a negative
//!   `d`; int4 layers take negative group scales, so those load exactly too.
//! - **Q4_1 and Q4_0 into asymmetric W4 groups of 32
//!   ([`QuantConfig::w4a8_asym`]`(32)`): exact.** A Q4_1 block is 32 codes `q ∈ [0, 15]`,
//!   an f16 scale `d` and an f16 minimum `m`, value `q · d + m`; it becomes codes
//!   `c = q − 8`, scale `d` and offset `m + 8d`. The products `q·d`, `c·d` are exact in
//!   f32 and so is `m + 8d` whenever it fits f32's 24-bit significand (the exponents of
//!   `m` and `d` differ by less than 14, true of every block of the SmolLM2 file), so
//!   [`QuantLinear::dequantized_weights`] equals the file's dequantization bit for bit. A
//!   Q4_0 block keeps its codes and scale with offset 0; a block with a negative scale
//!   `d` (llama.cpp's rule gives them) becomes scale `−d`, codes `−c − 1` (in `[-8, 7]`)
//!   and offset `−d`: `(−d)(−c − 1) + (−d) = c·d`, exact too (a zero value loses the
//!   sign it has in the file). Other types are requantized
//!   with the asymmetric rule.
//! - **Everything else: dequantize, then quantize into the config** (Q8_0, Q4_1, K-quants,
//!   F16, F32, … into W8 per channel or W4 groups). Q8_0 is int8 already, but with one
//!   scale per 32 values, where our int8 weights carry one scale per output channel, so
//!   its codes cannot be kept unchanged; requantizing Q8_0 values per channel costs at
//!   most the rounding of one int8 step.
//!
//! Float tensors ([`QuantLoader::get`]: norms, embeddings) are dequantized to f32.
//!
//! ```
//! use candle_compress::io::gguf::{save_gguf, GgufTensor, GgufType};
//! use candle_compress::io::loader::{quant_linear, QuantLoader};
//! use candle_compress::nn::{QuantConfig, QuantLinear};
//! use candle_core::{Device, Tensor};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("tiny.gguf");
//! let w = Tensor::randn(0f32, 1., (8, 64), &Device::Cpu)?;
//! let norm = Tensor::ones(64, candle_core::DType::F32, &Device::Cpu)?;
//! save_gguf(&path, &[], &[
//!     GgufTensor::float("blk.0.attn_q.weight", &w, GgufType::F16)?,
//!     GgufTensor::float("blk.0.attn_norm.weight", &norm, GgufType::F32)?,
//! ])?;
//!
//! let vb = QuantLoader::from_gguf(&path, QuantConfig::w8a8())?;
//! let blk = vb.pp("blk.0");
//! let q = quant_linear(64, 8, blk.pp("attn_q"))?;
//! assert_eq!(q.out_features(), 8);
//! assert_eq!(blk.get(&[64], "attn_norm.weight")?.dims(), &[64]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use half::f16;

use super::gguf_reader::GgufFile;
use super::loader::QuantLoader;
use crate::error::{Error, Result};
use crate::nn::{QuantConfig, QuantLinear, QuantLinearParts, WeightQuant};

/// The GGUF side of a [`QuantLoader`]: the opened file and the target config.
pub(crate) struct GgufBackend {
    file: GgufFile,
    config: QuantConfig,
}

impl QuantLoader {
    /// A loader over the GGUF file at `path` that builds every [`QuantLinear`] in
    /// `config` (see the [module docs](self) for which conversions are exact).
    ///
    /// # Errors
    /// As [`GgufFile::open`]; [`Error::InvalidArgument`] for an invalid config.
    ///
    /// ```
    /// use candle_compress::io::loader::QuantLoader;
    /// use candle_compress::nn::QuantConfig;
    /// assert!(QuantLoader::from_gguf("/nonexistent.gguf", QuantConfig::w8a8()).is_err());
    /// ```
    pub fn from_gguf(path: impl AsRef<Path>, config: QuantConfig) -> Result<Self> {
        Self::from_gguf_file(GgufFile::open(path)?, config)
    }

    /// A loader over an already opened [`GgufFile`] (e.g. one parsed from memory).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid config.
    pub fn from_gguf_file(file: GgufFile, config: QuantConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self::from_gguf_backend(GgufBackend { file, config }))
    }
}

impl GgufBackend {
    pub(crate) fn contains(&self, full: &str) -> bool {
        self.file.tensor_info(full).is_some()
            || self.file.tensor_info(&format!("{full}.weight")).is_some()
    }

    pub(crate) fn load_float(&self, full: &str, device: &Device) -> Result<Tensor> {
        Ok(self.file.tensor_f32(full)?.to_device(device)?)
    }

    pub(crate) fn load_quant_linear(&self, full: &str) -> Result<QuantLinear> {
        let weight_name = format!("{full}.weight");
        let info = self
            .file
            .tensor_info(&weight_name)
            .ok_or_else(|| Error::Missing {
                what: "GGUF tensor",
                name: weight_name.clone(),
            })?;
        let &[out_features, in_features] = info.shape.as_slice() else {
            return Err(Error::Corrupt {
                what: format!("GGUF tensor {weight_name}"),
                reason: format!("a linear weight must be 2-D, found {:?}", info.shape),
            });
        };
        let bias_name = format!("{full}.bias");
        let bias = match self.file.tensor_info(&bias_name) {
            Some(_) => Some(self.file.tensor_f32(&bias_name)?),
            None => None,
        };
        let asym32 = self.config.weights() == WeightQuant::Int4GroupedAsym { group: 32 };
        if asym32 && matches!(info.dtype, GgmlDType::Q4_0 | GgmlDType::Q4_1) {
            let (weights, scales, offsets) = if info.dtype == GgmlDType::Q4_1 {
                q4_1_as_asym(self.file.q4_1_blocks(&weight_name)?)
            } else {
                q4_0_as_asym(self.file.q4_0_blocks(&weight_name)?)
            };
            return QuantLinear::from_parts(QuantLinearParts {
                out_features,
                in_features,
                weights,
                scales,
                offsets: Some(offsets),
                bias: flat_bias(bias)?,
                smooth: None,
                config: self.config,
            });
        }
        let exact_w4 = info.dtype == GgmlDType::Q4_0
            && self.config.weights() == WeightQuant::Int4Grouped { group: 32 };
        if exact_w4 {
            // llama.cpp's Q4_0 rule (`d = max / -8`) gives a negative `d` to every block
            // whose largest-magnitude value is positive; int4 layers take such scales as
            // they are.
            let (codes, scales) = self.file.q4_0_blocks(&weight_name)?;
            return QuantLinear::from_parts(QuantLinearParts {
                out_features,
                in_features,
                weights: codes,
                scales: scales.iter().map(|s| s.to_f32()).collect(),
                offsets: None,
                bias: flat_bias(bias)?,
                smooth: None,
                config: self.config,
            });
        }
        let weight = self.file.tensor_f32(&weight_name)?;
        QuantLinear::new(&weight, bias.as_ref(), &self.config)
    }
}

fn flat_bias(bias: Option<Tensor>) -> Result<Option<Vec<f32>>> {
    Ok(match bias {
        Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?),
        None => None,
    })
}

/// Q4_1 blocks (`q · d + m`, `q ∈ [0, 15]`) as asymmetric int4: codes `q − 8`, scales
/// `d`, offsets `m + 8d`.
fn q4_1_as_asym((q, d, m): (Vec<u8>, Vec<f16>, Vec<f16>)) -> (Vec<i8>, Vec<f32>, Vec<f32>) {
    let codes = q.iter().map(|&v| v as i8 - 8).collect();
    let offsets = d
        .iter()
        .zip(&m)
        .map(|(d, m)| m.to_f32() + 8.0 * d.to_f32())
        .collect();
    (codes, d.iter().map(|d| d.to_f32()).collect(), offsets)
}

/// Q4_0 blocks (`c · d`) as asymmetric int4 with non-negative scales: `(c, d, 0)` for
/// `d ≥ 0`, `(−c − 1, −d, −d)` for `d < 0` (same values: `(−d)(−c − 1) + (−d) = c·d`).
fn q4_0_as_asym((mut c, d): (Vec<i8>, Vec<f16>)) -> (Vec<i8>, Vec<f32>, Vec<f32>) {
    let mut scales = Vec::with_capacity(d.len());
    let mut offsets = Vec::with_capacity(d.len());
    for (block, d) in c.chunks_mut(32).zip(&d) {
        let d = d.to_f32();
        if d < 0.0 {
            block.iter_mut().for_each(|v| *v = -*v - 1);
            scales.push(-d);
            offsets.push(-d);
        } else {
            scales.push(d);
            offsets.push(0.0);
        }
    }
    (c, scales, offsets)
}
