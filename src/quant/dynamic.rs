//! Dynamic (run-time) quantization of activation tensors: int8 or int4, one scale per
//! tensor or per row (token), scales from `max |x|` or a percentile ([`ScaleMode`]).
//!
//! A tensor of any rank ≥ 1 is seen as `rows × cols` with `cols` its last dimension and
//! `rows` the product of the leading ones (`[batch, seq, hidden]` → one row per token).
//!
//! # Numerics
//!
//! With `qmax` = 127 (int8) or 7 (int4) and `clip` chosen by the [`ScaleMode`] over the
//! tensor ([`Granularity::PerTensor`]) or over each row ([`Granularity::PerRow`]):
//!
//! ```text
//! scale = clip / qmax                                   (f32)
//! q     = 0                                             if scale == 0
//!       = clamp(round_half_away(x / scale), -qmax, qmax) otherwise
//! x'    = q · scale
//! ```
//!
//! Int8 goes through the same fused kernel as [`QuantLinear`](crate::nn::QuantLinear)'s
//! activations (`kernels::gemm::quantize_rows_i8`
//! for `MaxAbs`, `quantize_rows_i8_with_scales` for percentiles), so int8 per-row `MaxAbs`
//! codes are bit-identical to what a `QuantLinear` feeds its matmul. Int4 codes (never −8,
//! so the range is symmetric) are stored as nibbles `q + 8`, two per byte, by
//! [`int4::pack_nibbles`](crate::quant::int4::pack_nibbles); scales stay f32.
//!
//! **Error bound.** Every `x` with `|x| ≤ clip` (all of them under `MaxAbs`) satisfies
//! `|x − x'| ≤ scale · (1/2 + 2⁻¹⁶)` (`scale/2` from rounding to an integer, `2⁻¹⁶·scale`
//! covering the f32 roundings of `x / scale` and `q · scale` for `|q| ≤ 127`). Values
//! beyond `clip` saturate: `|x − x'| ≤ |x| − clip + scale · 2⁻¹⁶`.
//!
//! **Input.** F32, F16, BF16 or F64, any layout. Rank 0 gives [`Error::ShapeMismatch`];
//! integer dtypes [`Error::UnsupportedDType`]; NaN/±Inf [`Error::NonFinite`] with the first
//! flat index. A tensor with a zero-sized dimension quantizes to no codes (per-tensor: one
//! scale 0; per-row: one scale 0 per row) and decompresses to an empty tensor.
//!
//! ```
//! use candle_compress::quant::dynamic::{ActBits, DynamicQuant, Granularity};
//! use candle_compress::quant::scale::ScaleMode;
//! use candle_compress::{Compressed, Compressor};
//! use candle_core::{Device, Tensor};
//!
//! let x = Tensor::new(&[[[0.5f32, -1.0, 0.25, 0.0], [10.0, 2.0, -3.0, 1.0]]], &Device::Cpu)?;
//! let per_token = DynamicQuant::new(ActBits::Int8, Granularity::PerRow, ScaleMode::MaxAbs)?;
//! let q = per_token.compress(&x)?;
//! assert_eq!(q.scales(), &[1.0 / 127.0, 10.0 / 127.0]);
//! assert_eq!(q.codes(), vec![64, -127, 32, 0, 127, 25, -38, 13]);
//! let back = per_token.decompress(&q, &Device::Cpu)?;
//! assert_eq!(back.dims(), &[1, 2, 4]);
//! let err = q.error_stats(&x)?;
//! assert!(err.max_abs_error <= (10.0 / 127.0) / 2.0 + 1e-6);
//!
//! let int4 = DynamicQuant::new(ActBits::Int4, Granularity::PerTensor, ScaleMode::MaxAbs)?;
//! let q4 = int4.compress(&x)?;
//! assert_eq!(q4.codes()[4], 7); // 10.0 is the clip value
//! assert!(q4.size_bytes() < q.size_bytes());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use candle_core::{DType, Device, Shape, Tensor};

use crate::compressor::{Compressed, Compressor};
use crate::error::{Error, Result};
use crate::input::with_f32_slice;
use crate::kernels::gemm::{quantize_rows_i8, quantize_rows_i8_with_scales};
use crate::quant::int4::{pack_nibbles, unpack_nibbles};
use crate::quant::metrics::{compare_slices, ErrorStats};
use crate::quant::scale::{max_abs, select_abs_percentile, symmetric_scale, ScaleMode};

const OP: &str = "DynamicQuant::quantize";

/// Code width of dynamically quantized activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActBits {
    /// Signed 8-bit codes in `[-127, 127]`.
    Int8,
    /// Signed 4-bit codes in `[-7, 7]`, packed two per byte.
    Int4,
}

impl ActBits {
    /// Largest code magnitude: 127 or 7.
    #[must_use]
    pub fn qmax(self) -> u8 {
        match self {
            ActBits::Int8 => 127,
            ActBits::Int4 => 7,
        }
    }
}

/// How many values share one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per row: per token for `[.., hidden]` activations.
    PerRow,
}

/// A dynamic activation quantizer: bit width, granularity and scale mode. Implements
/// [`Compressor`]; see the [module docs](self) for the numerics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DynamicQuant {
    bits: ActBits,
    granularity: Granularity,
    mode: ScaleMode,
}

impl DynamicQuant {
    /// A quantizer with the given parameters.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a percentile outside `(0, 100]`.
    pub fn new(bits: ActBits, granularity: Granularity, mode: ScaleMode) -> Result<Self> {
        mode.validate()?;
        Ok(Self {
            bits,
            granularity,
            mode,
        })
    }

    /// Int8, one scale per row (token), `max |x|`: what `QuantLinear` does by default.
    #[must_use]
    pub fn int8_per_row() -> Self {
        Self {
            bits: ActBits::Int8,
            granularity: Granularity::PerRow,
            mode: ScaleMode::MaxAbs,
        }
    }

    /// Int8, one scale per tensor, `max |x|`.
    #[must_use]
    pub fn int8_per_tensor() -> Self {
        Self {
            bits: ActBits::Int8,
            granularity: Granularity::PerTensor,
            mode: ScaleMode::MaxAbs,
        }
    }

    /// The code width.
    #[must_use]
    pub fn bits(&self) -> ActBits {
        self.bits
    }

    /// The scale granularity.
    #[must_use]
    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    /// The scale mode.
    #[must_use]
    pub fn scale_mode(&self) -> ScaleMode {
        self.mode
    }

    /// Quantizes `x` (same as [`Compressor::compress`]).
    ///
    /// # Errors
    /// See the [module docs](self): rank 0, integer dtypes, NaN/±Inf.
    pub fn quantize(&self, x: &Tensor) -> Result<DynamicTensor> {
        let dims = x.dims();
        let Some(&cols) = dims.last() else {
            return Err(Error::shape(OP, "rank >= 1", dims));
        };
        let rows: usize = dims[..dims.len() - 1].iter().product();
        with_f32_slice(x, OP, |v| {
            let n_scales = match self.granularity {
                Granularity::PerTensor => 1,
                Granularity::PerRow => rows,
            };
            if v.is_empty() {
                return Ok(self.empty_value(x, n_scales));
            }
            // Per tensor = one row holding every value.
            let (n_rows, row_len) = match self.granularity {
                Granularity::PerTensor => (1, v.len()),
                Granularity::PerRow => (rows, cols),
            };
            let (codes, scales) = match self.bits {
                ActBits::Int8 => {
                    let (q, s) = self.quantize_i8(v, n_rows, row_len)?;
                    (Codes::I8(q), s)
                }
                ActBits::Int4 => {
                    let scales = self.row_scales(v, n_rows, row_len)?;
                    let nibbles: Vec<u8> = v
                        .chunks_exact(row_len)
                        .zip(&scales)
                        .flat_map(|(row, &s)| row.iter().map(move |&x| (quant4(x, s) + 8) as u8))
                        .collect();
                    (Codes::Packed4(pack_nibbles(&nibbles)?), scales)
                }
            };
            Ok(DynamicTensor {
                shape: x.shape().clone(),
                dtype: x.dtype(),
                quant: *self,
                codes,
                scales,
            })
        })
    }

    fn empty_value(&self, x: &Tensor, n_scales: usize) -> DynamicTensor {
        DynamicTensor {
            shape: x.shape().clone(),
            dtype: x.dtype(),
            quant: *self,
            codes: match self.bits {
                ActBits::Int8 => Codes::I8(Vec::new()),
                ActBits::Int4 => Codes::Packed4(Vec::new()),
            },
            scales: vec![0.0; n_scales],
        }
    }

    /// One scale per row of `v` under the scale mode (checks finiteness).
    fn row_scales(&self, v: &[f32], n_rows: usize, row_len: usize) -> Result<Vec<f32>> {
        let qmax = self.bits.qmax();
        let mut scales = Vec::with_capacity(n_rows);
        let mut mags = Vec::new();
        for (r, row) in v.chunks_exact(row_len).enumerate() {
            let clip = match self.mode {
                ScaleMode::MaxAbs => max_abs(row).map_err(|e| offset_index(e, r * row_len))?,
                ScaleMode::Percentile(p) => {
                    if let Some(i) = row.iter().position(|x| !x.is_finite()) {
                        return Err(non_finite(v, r * row_len + i));
                    }
                    mags.clear();
                    mags.extend(row.iter().map(|x| x.abs()));
                    select_abs_percentile(&mut mags, p)
                }
            };
            scales.push(symmetric_scale(clip, qmax));
        }
        Ok(scales)
    }

    fn quantize_i8(&self, v: &[f32], n_rows: usize, row_len: usize) -> Result<(Vec<i8>, Vec<f32>)> {
        let mut q = vec![0i8; v.len()];
        match self.mode {
            ScaleMode::MaxAbs => {
                let mut scales = vec![0f32; n_rows];
                quantize_rows_i8(v, row_len, None, &mut q, &mut scales)
                    .map_err(|e| e.or_non_finite(|i| non_finite(v, i)))?;
                Ok((q, scales))
            }
            ScaleMode::Percentile(_) => {
                let scales = self.row_scales(v, n_rows, row_len)?;
                quantize_rows_i8_with_scales(v, row_len, None, &scales, &mut q)
                    .map_err(|e| e.or_non_finite(|i| non_finite(v, i)))?;
                Ok((q, scales))
            }
        }
    }

    fn name_parts(&self) -> String {
        let bits = match self.bits {
            ActBits::Int8 => "int8",
            ActBits::Int4 => "int4",
        };
        let gran = match self.granularity {
            Granularity::PerTensor => "per-tensor",
            Granularity::PerRow => "per-row",
        };
        let mode = match self.mode {
            ScaleMode::MaxAbs => "maxabs".to_string(),
            ScaleMode::Percentile(p) => format!("p{p}"),
        };
        format!("dynamic-{bits}-{gran}-{mode}")
    }
}

fn non_finite(v: &[f32], index: usize) -> Error {
    Error::NonFinite {
        op: OP,
        index,
        value: v.get(index).copied().unwrap_or(f32::NAN),
    }
}

fn offset_index(e: Error, offset: usize) -> Error {
    match e {
        Error::NonFinite { index, value, .. } => Error::NonFinite {
            op: OP,
            index: index + offset,
            value,
        },
        other => other,
    }
}

/// Symmetric int4 code of a finite `x` with `scale ≥ 0`.
fn quant4(x: f32, scale: f32) -> i8 {
    if scale == 0.0 {
        0
    } else {
        // f32::round rounds half away from zero.
        (x / scale).round().clamp(-7.0, 7.0) as i8
    }
}

impl Compressor for DynamicQuant {
    type Output = DynamicTensor;

    fn name(&self) -> String {
        self.name_parts()
    }

    fn compress(&self, tensor: &Tensor) -> Result<DynamicTensor> {
        self.quantize(tensor)
    }

    fn decompress(&self, value: &DynamicTensor, device: &Device) -> Result<Tensor> {
        if value.quant != *self {
            return Err(Error::metadata(
                "DynamicTensor quantizer",
                self.name_parts(),
                value.quant.name_parts(),
            ));
        }
        value.dequantize(device)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Codes {
    I8(Vec<i8>),
    /// Nibbles `q + 8`, two per byte (see [`pack_nibbles`]).
    Packed4(Vec<u8>),
}

/// A dynamically quantized tensor: codes, f32 scales, and the original shape and dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicTensor {
    shape: Shape,
    dtype: DType,
    quant: DynamicQuant,
    codes: Codes,
    scales: Vec<f32>,
}

impl DynamicTensor {
    /// The quantizer that made it.
    #[must_use]
    pub fn quantizer(&self) -> DynamicQuant {
        self.quant
    }

    /// The scales: one for a per-tensor value, one per row otherwise (`x ≈ q · scale`).
    #[must_use]
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The int8 codes, row-major (`None` for int4).
    #[must_use]
    pub fn int8_codes(&self) -> Option<&[i8]> {
        match &self.codes {
            Codes::I8(q) => Some(q),
            Codes::Packed4(_) => None,
        }
    }

    /// The packed int4 nibbles `q + 8`, two per byte (`None` for int8).
    #[must_use]
    pub fn packed_int4(&self) -> Option<&[u8]> {
        match &self.codes {
            Codes::I8(_) => None,
            Codes::Packed4(p) => Some(p),
        }
    }

    /// Every code as an `i8`, row-major (unpacks int4).
    #[must_use]
    pub fn codes(&self) -> Vec<i8> {
        match &self.codes {
            Codes::I8(q) => q.clone(),
            Codes::Packed4(p) => unpack_nibbles(p, self.shape.elem_count())
                // The payload was built with exactly this many nibbles.
                .unwrap_or_default()
                .into_iter()
                .map(|n| n as i8 - 8)
                .collect(),
        }
    }

    /// Dequantizes to a tensor of the original shape and dtype on `device`.
    ///
    /// # Errors
    /// Candle errors from building the tensor.
    pub fn dequantize(&self, device: &Device) -> Result<Tensor> {
        Compressed::decompress(self, device)
    }

    /// Error metrics (MAE, MSE, max error, SQNR, cosine) of the dequantized values
    /// against `original`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `original`'s shape differs; as
    /// [`compare_slices`] otherwise.
    pub fn error_stats(&self, original: &Tensor) -> Result<ErrorStats> {
        if original.shape() != &self.shape {
            return Err(Error::shape(
                "DynamicTensor::error_stats original",
                self.shape.dims(),
                original.dims(),
            ));
        }
        let approx = self.to_f32_vec();
        with_f32_slice(original, "DynamicTensor::error_stats", |r| {
            compare_slices(r, &approx)
        })
    }
}

impl Compressed for DynamicTensor {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn original_dtype(&self) -> DType {
        self.dtype
    }

    /// The dequantized values `q · scale`, row-major.
    fn to_f32_vec(&self) -> Vec<f32> {
        let codes = self.codes();
        let n = codes.len();
        if n == 0 {
            return Vec::new();
        }
        let row_len = match self.quant.granularity {
            Granularity::PerTensor => n,
            Granularity::PerRow => n / self.scales.len().max(1),
        };
        codes
            .chunks_exact(row_len.max(1))
            .zip(&self.scales)
            // `scale = amax / qmax` rounds, so `qmax · scale` may land one ulp past
            // `f32::MAX` for rows reaching it: clamp to keep a finite input finite.
            .flat_map(|(row, &s)| {
                row.iter()
                    .map(move |&q| (f32::from(q) * s).clamp(-f32::MAX, f32::MAX))
            })
            .collect()
    }

    /// The codes (int8, or packed int4) and the f32 scales.
    fn payload_bytes(&self) -> usize {
        let codes = match &self.codes {
            Codes::I8(q) => q.len(),
            Codes::Packed4(p) => p.len(),
        };
        codes + 4 * self.scales.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_codes_round_half_away_and_clamp() {
        assert_eq!(quant4(0.5, 1.0), 1);
        assert_eq!(quant4(-0.5, 1.0), -1);
        assert_eq!(quant4(100.0, 1.0), 7);
        assert_eq!(quant4(-100.0, 1.0), -7);
        assert_eq!(quant4(3.0, 0.0), 0);
    }

    #[test]
    fn non_finite_index_is_flat() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2.], [3., f32::NAN]], &Device::Cpu)?;
        for bits in [ActBits::Int8, ActBits::Int4] {
            for g in [Granularity::PerRow, Granularity::PerTensor] {
                for m in [ScaleMode::MaxAbs, ScaleMode::Percentile(90.0)] {
                    match DynamicQuant::new(bits, g, m)?.quantize(&x) {
                        Err(Error::NonFinite { index: 3, .. }) => {}
                        other => panic!("{bits:?} {g:?} {m:?}: {other:?}"),
                    }
                }
            }
        }
        Ok(())
    }
}
