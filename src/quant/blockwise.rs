//! Blockwise absmax int8 quantization with one f16 scale per block — GGML's Q8_0 formula
//! for any block size; with blocks of 32 the bytes are exactly candle's
//! `GgmlDType::Q8_0` blocks ([`BlockwiseInt8Tensor::to_ggml_q8_0_bytes`]).
//!
//! Per block of `block_size` values (default 64; the last block may be shorter), computed
//! by the blockwise SIMD kernels (the ISA chosen at run time):
//!
//! ```text
//! amax = max |x|     d = amax / 127  (f32)      id = 1/d  (0 when d = 0)
//! q = round_half_away(x · id) as i8 ∈ [-127, 127]      D = f16(d)  (stored, rounded to nearest)
//! x' = q · D         (exact in f32)
//! ```
//!
//! # Error bound
//!
//! GGML rounds with the f32 `d` but stores `D = f16(d)`, so the bound has two parts. For
//! every element `x` of a block, with `d`, `D` and its code `q` as above:
//!
//! ```text
//! |x − x'| ≤ d·(1/2 + 2⁻¹⁶) + |q|·|d − D| + 2⁻¹²⁶
//! ```
//!
//! - `d/2`: rounding `x/d` to the nearest integer (`|x·id| ≤ 127·(1 + 3·2⁻²⁴) < 127.5`, so
//!   nothing is clipped);
//! - `2⁻¹⁶·d`: the f32 roundings of `id = 1/d` and of `x·id` (each relative `2⁻²⁴`, on a
//!   value of at most 127: `254·2⁻²⁴ < 2⁻¹⁶`);
//! - `|q|·|d − D|`: decoding with the f16 scale instead of `d`; `|d − D| ≤ 2⁻¹¹·d` when
//!   `d ≥ 2⁻¹⁴` (f16 normal range, including `d ∈ (65504, 65520)`, which rounds to
//!   65504) and `≤ 2⁻²⁵` below it;
//! - `2⁻¹²⁶`: only matters when `d` is an f32 subnormal (`amax < 1.5·10⁻³⁶`), where the
//!   relative error analysis of `1/d` no longer holds; such blocks decode to 0.
//!
//! Hence, in the f16 normal range, `|x − x'| ≤ d·(1/2 + 2⁻¹⁶ + 127·2⁻¹¹) ≈ 0.562·d`.
//! An all-zero block has `d = D = 0` and decodes to exact zeros.
//!
//! A block whose `d` rounds to infinity in f16 (`d ≥ 65520`, i.e. `amax ≥ 8 321 040`)
//! cannot be stored: compression fails with [`Error::InvalidArgument`] naming the block,
//! never an infinite scale.
//!
//! Size: `n` code bytes + 2 bytes per block + shape/dtype header +
//! [`SCHEME_BYTES`](super::SCHEME_BYTES).

use candle_core::{DType, Device, Shape, Tensor};
use half::f16;

use super::{check_block, check_header, check_part_len, check_same_block};
use crate::compressor::{Compressed, Compressor};
use crate::error::{Error, Num, Result};
use crate::input::with_f32_slice;
use crate::kernels::blockwise::{dequantize_i8_blocks_to_vec, quantize_i8_blocks};

/// The GGML Q8_0 block size: `BlockwiseInt8::new(32)` produces Q8_0's bytes.
pub const Q8_0_BLOCK: usize = 32;

/// Absmax int8 quantizer with one f16 scale per block of `block_size` values. See the
/// [module docs](self) for the formula and the exact error bound.
///
/// ```
/// use candle_compress::{Compressed, Compressor};
/// use candle_compress::quant::BlockwiseInt8;
/// use candle_core::{Device, Tensor};
/// let t = Tensor::new(&[[1.27f32, -0.5, 0.0], [0.01, 0.6, -1.0]], &Device::Cpu)?;
/// let q = BlockwiseInt8::new(3)?;
/// let c = q.compress(&t)?;
/// assert_eq!(c.codes(), &[127, -50, 0, 1, 76, -127]);
/// assert_eq!(c.size_bytes(), 6 + 2 * 2 + (2 * 8 + 1) + 5);
/// let back = q.decompress(&c, &Device::Cpu)?;
/// assert_eq!(back.dims(), &[2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockwiseInt8 {
    block_size: usize,
}

impl BlockwiseInt8 {
    /// A quantizer with blocks of `block_size` values (32 gives GGML Q8_0).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `block_size` is 0.
    pub fn new(block_size: usize) -> Result<Self> {
        check_block("block_size", block_size)?;
        Ok(Self { block_size })
    }

    /// Values per scale.
    #[must_use]
    pub fn block_size(&self) -> usize {
        self.block_size
    }
}

impl Default for BlockwiseInt8 {
    /// Blocks of [`DEFAULT_BLOCK`](super::DEFAULT_BLOCK) (64) values.
    fn default() -> Self {
        Self {
            block_size: super::DEFAULT_BLOCK,
        }
    }
}

fn quantize(x: &[f32], block: usize) -> Result<(Vec<i8>, Vec<f16>)> {
    const OP: &str = "BlockwiseInt8::compress";
    let mut codes = vec![0i8; x.len()];
    let mut scales = vec![f16::ZERO; x.len().div_ceil(block)];
    quantize_i8_blocks(x, block, &mut codes, &mut scales).map_err(|e| {
        e.or_non_finite(|index| Error::NonFinite {
            op: OP,
            index,
            value: x.get(index).copied().unwrap_or(f32::NAN),
        })
    })?;
    if let Some(b) = scales.iter().position(|s| s.is_infinite()) {
        let chunk = &x[b * block..x.len().min((b + 1) * block)];
        let amax = super::amax(chunk);
        return Err(Error::invalid(
            "values",
            format!(
                "block {b} (flat indices {}..{}) has max |x| = {}; its scale {} \
                 overflows f16 (max 65504); int8 blocks need max |x| < 8321040",
                b * block,
                b * block + chunk.len(),
                Num(amax),
                Num(amax / 127.0)
            ),
        ));
    }
    Ok((codes, scales))
}

impl Compressor for BlockwiseInt8 {
    type Output = BlockwiseInt8Tensor;

    /// `"int8:<block_size>"`, the [`Scheme`](crate::scheme::Scheme) name.
    fn name(&self) -> String {
        format!("int8:{}", self.block_size)
    }

    fn compress(&self, tensor: &Tensor) -> Result<BlockwiseInt8Tensor> {
        let (codes, scales) = with_f32_slice(tensor, "BlockwiseInt8::compress", |x| {
            quantize(x, self.block_size)
        })?;
        Ok(BlockwiseInt8Tensor {
            shape: tensor.shape().clone(),
            dtype: tensor.dtype(),
            block_size: self.block_size,
            codes,
            scales,
        })
    }

    fn decompress(&self, value: &BlockwiseInt8Tensor, device: &Device) -> Result<Tensor> {
        check_same_block("BlockwiseInt8Tensor", self.block_size, value.block_size)?;
        value.decompress(device)
    }
}

/// A tensor compressed by [`BlockwiseInt8`]: int8 codes, one f16 scale per block, the
/// original shape and dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockwiseInt8Tensor {
    shape: Shape,
    dtype: DType,
    block_size: usize,
    codes: Vec<i8>,
    scales: Vec<f16>,
}

impl BlockwiseInt8Tensor {
    /// Rebuilds a value from its parts (e.g. read from a file), validating them.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `block_size == 0`; [`Error::MetadataMismatch`] for a
    /// non-float dtype or part lengths that disagree with the shape (`codes`: `n`,
    /// `scales`: `ceil(n/block_size)`); [`Error::Corrupt`] for a negative or non-finite
    /// scale or a code of -128 (never written).
    pub fn from_parts(
        shape: Shape,
        dtype: DType,
        block_size: usize,
        codes: Vec<i8>,
        scales: Vec<f16>,
    ) -> Result<Self> {
        const WHAT: &str = "BlockwiseInt8Tensor";
        check_block("block_size", block_size)?;
        let n = check_header(WHAT, &shape, dtype)?;
        check_part_len(WHAT, "codes", n, codes.len())?;
        check_part_len(WHAT, "scales", n.div_ceil(block_size), scales.len())?;
        if let Some(i) = scales
            .iter()
            .position(|s| !s.is_finite() || f32::from(*s) < 0.0)
        {
            return Err(Error::Corrupt {
                what: WHAT.into(),
                reason: format!("scale {i} is {}, expected finite and >= 0", scales[i]),
            });
        }
        if let Some(i) = codes.iter().position(|&q| q == i8::MIN) {
            return Err(Error::Corrupt {
                what: WHAT.into(),
                reason: format!("code {i} is -128, outside [-127, 127]"),
            });
        }
        Ok(Self {
            shape,
            dtype,
            block_size,
            codes,
            scales,
        })
    }

    /// Values per block.
    #[must_use]
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The int8 codes, one per element, row-major.
    #[must_use]
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// One f16 scale per block.
    #[must_use]
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// The value as GGML Q8_0 blocks — per block of 32, the f16 scale (little endian) then
    /// the 32 codes, 34 bytes — exactly what candle's `QTensor::data()` holds for
    /// `GgmlDType::Q8_0`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] unless the block size is 32 and the element count a
    /// multiple of 32 (Q8_0 has no short blocks).
    pub fn to_ggml_q8_0_bytes(&self) -> Result<Vec<u8>> {
        if self.block_size != Q8_0_BLOCK || !self.codes.len().is_multiple_of(Q8_0_BLOCK) {
            return Err(Error::invalid(
                "block_size",
                format!(
                    "Q8_0 needs blocks of 32 and a multiple of 32 values, found block {} \
                     over {} values",
                    self.block_size,
                    self.codes.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(self.scales.len() * (2 + Q8_0_BLOCK));
        for (scale, block) in self.scales.iter().zip(self.codes.chunks(Q8_0_BLOCK)) {
            out.extend_from_slice(&scale.to_le_bytes());
            out.extend(block.iter().map(|&q| q as u8));
        }
        Ok(out)
    }
}

impl Compressed for BlockwiseInt8Tensor {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn original_dtype(&self) -> DType {
        self.dtype
    }

    /// Decodes to row-major f32 values: `q · scale` per element.
    fn to_f32_vec(&self) -> Vec<f32> {
        // Lengths were validated at construction, so the kernel cannot refuse them.
        dequantize_i8_blocks_to_vec(&self.codes, &self.scales, self.block_size)
            .expect("BlockwiseInt8Tensor lengths are validated at construction")
    }

    /// `codes.len() + 2 · scales.len()` (f16 scales).
    fn payload_bytes(&self) -> usize {
        self.codes.len() + 2 * self.scales.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflowing_scale_is_an_error_not_inf() -> Result<()> {
        let q = BlockwiseInt8::new(2)?;
        // d = 65519 / 127 * 127 ... rounds to f16::MAX: still fine.
        let ok = Tensor::new(&[65510.0f32 * 127.0, 1.0], &Device::Cpu)?;
        let c = q.compress(&ok)?;
        assert_eq!(c.scales()[0], f16::MAX);
        let bad = Tensor::new(&[0.0f32, 1.0, 65520.0 * 127.0, 1.0], &Device::Cpu)?;
        let err = q.compress(&bad).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains("block 1"), "{err}");
        Ok(())
    }

    #[test]
    fn q8_0_bytes_need_block_32() -> Result<()> {
        let t = Tensor::ones(64, DType::F32, &Device::Cpu)?;
        let c = BlockwiseInt8::new(32)?.compress(&t)?;
        let bytes = c.to_ggml_q8_0_bytes()?;
        assert_eq!(bytes.len(), 68);
        assert_eq!(&bytes[..3], &[0x08, 0x20, 127]); // f16(1/127) = 0x2008
        assert!(BlockwiseInt8::new(64)?
            .compress(&t)?
            .to_ggml_q8_0_bytes()
            .is_err());
        Ok(())
    }
}
