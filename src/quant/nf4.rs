//! NormalFloat4 (NF4), the 4-bit data type of QLoRA (Dettmers et al., 2023) as used by
//! bitsandbytes.
//!
//! NF4 has 16 levels placed at quantiles of a standard normal distribution, rescaled to
//! `[-1, 1]`, with an exact zero ([`NF4_CODE_BOOK`]). Weights of trained networks are close
//! to normal, so these levels spend the 4 bits where the values are. Per block of
//! `block_size` values (default 64):
//!
//! ```text
//! A = max |x|  (f32, stored as is, like bitsandbytes' absmax without double quantization)
//! y = x / A    (|y| ≤ 1; y = 0 when A = 0)
//! q = index of the code-book value nearest to y (ties to the lower index)
//! x' = NF4_CODE_BOOK[q] · A
//! ```
//!
//! Error bound per element, with `h_q` the half-width of the wider of the two gaps next to
//! code `q` (see [`nf4_half_gap`]; the largest, between -1 and -0.696, gives 0.1519):
//!
//! ```text
//! |x − x'| ≤ A · (h_q + 2⁻²²)     ≤ 0.152 · A
//! ```
//!
//! (`y` lies between the midpoints around its code; `2⁻²²` covers the f32 roundings of
//! `x / A`, of the midpoints and of `code · A`). An all-zero block has `A = 0` and decodes to
//! exact zeros. Codes are packed two per byte with
//! [`pack_nibbles`] (element `2i` in the low nibble), so the
//! bytes are not bitsandbytes' byte order; the code book and absmax are the same.
//!
//! Size: `ceil(n/2)` payload bytes + 4 bytes per block + shape/dtype header +
//! [`SCHEME_BYTES`](super::SCHEME_BYTES).

use candle_core::{DType, Device, Shape, Tensor};

use super::int4::{check_packed, pack_nibbles, unpack_nibbles};
use super::{check_block, check_header, check_part_len, check_same_block};
use crate::compressor::{Compressed, Compressor};
use crate::error::{Error, Num, Result};
use crate::input::{check_finite, with_f32_slice};
use crate::kernels::blockwise::dequantize_u4_lut_to_vec;

/// The 16 NF4 levels, ascending (QLoRA, appendix E; bitsandbytes' `NF4` table). Index 7 is
/// exactly 0, indices 0 and 15 are -1 and 1.
pub const NF4_CODE_BOOK: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7_f64 as f32,
    -0.525_073_051_452_636_7_f64 as f32,
    -0.394_917_488_098_144_53_f64 as f32,
    -0.284_441_381_692_886_35_f64 as f32,
    -0.184_773_430_228_233_34_f64 as f32,
    -0.091_050_036_251_544_95_f64 as f32,
    0.0,
    0.079_580_299_556_255_34_f64 as f32,
    0.160_930_201_411_247_25_f64 as f32,
    0.246_112_301_945_686_34_f64 as f32,
    0.337_915_241_718_292_24_f64 as f32,
    0.440_709_829_330_444_34_f64 as f32,
    0.562_617_003_917_694_1_f64 as f32,
    0.722_956_836_223_602_3_f64 as f32,
    1.0,
];

/// Midpoints between consecutive code-book values: `y` encodes to the number of midpoints
/// strictly below it.
const MIDPOINTS: [f32; 15] = {
    let mut m = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        m[i] = ((NF4_CODE_BOOK[i] as f64 + NF4_CODE_BOOK[i + 1] as f64) / 2.0) as f32;
        i += 1;
    }
    m
};

/// Half the wider of the gaps on either side of code `q` (only the inner side for -1 and
/// 1, since `|y| ≤ 1`): the largest `|y − NF4_CODE_BOOK[q]|` of any `y` encoded to `q`.
/// `None` when `q > 15`.
#[must_use]
pub fn nf4_half_gap(q: u8) -> Option<f32> {
    let q = usize::from(q);
    let code = *NF4_CODE_BOOK.get(q)?;
    let below = q.checked_sub(1).map_or(0.0, |p| code - NF4_CODE_BOOK[p]);
    let above = NF4_CODE_BOOK.get(q + 1).map_or(0.0, |&n| n - code);
    Some(below.max(above) / 2.0)
}

/// The code of the level nearest to `y` (ties to the lower index).
fn encode(y: f32) -> u8 {
    // Branch-free: the midpoints are sorted, so counting those below `y` finds the code.
    MIDPOINTS.iter().map(|&m| u8::from(m < y)).sum()
}

/// NF4 quantizer: absmax per block of `block_size` values (f32), nearest NF4 level, packed
/// two per byte. See the [module docs](self) for the formula and the error bound.
///
/// ```
/// use candle_compress::{Compressed, Compressor};
/// use candle_compress::quant::Nf4;
/// use candle_core::{Device, Tensor};
/// let t = Tensor::new(&[2.0f32, -2.0, 0.0, 0.2], &Device::Cpu)?;
/// let q = Nf4::new(64)?;
/// let c = q.compress(&t)?;
/// assert_eq!(c.absmax(), &[2.0]);
/// assert_eq!(c.packed(), &[0x0F, 0x87]); // codes 15, 0, 7, 8
/// let back = q.decompress(&c, &Device::Cpu)?.to_vec1::<f32>()?;
/// assert_eq!(&back[..3], &[2.0, -2.0, 0.0]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nf4 {
    block_size: usize,
}

impl Nf4 {
    /// A quantizer with blocks of `block_size` values.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `block_size` is 0.
    pub fn new(block_size: usize) -> Result<Self> {
        check_block("block_size", block_size)?;
        Ok(Self { block_size })
    }

    /// Values per absmax.
    #[must_use]
    pub fn block_size(&self) -> usize {
        self.block_size
    }
}

impl Default for Nf4 {
    /// Blocks of [`DEFAULT_BLOCK`](super::DEFAULT_BLOCK) (64) values, as in QLoRA.
    fn default() -> Self {
        Self {
            block_size: super::DEFAULT_BLOCK,
        }
    }
}

fn quantize(x: &[f32], block: usize) -> Result<(Vec<u8>, Vec<f32>)> {
    check_finite(x, "Nf4::compress")?;
    let mut codes = vec![7u8; x.len()]; // code 7 is exactly 0
    let mut absmax = Vec::with_capacity(x.len().div_ceil(block));
    for (chunk, out) in x.chunks(block).zip(codes.chunks_mut(block)) {
        let a = super::amax(chunk);
        absmax.push(a);
        if a != 0.0 {
            for (q, &v) in out.iter_mut().zip(chunk) {
                *q = encode(v / a);
            }
        } // else: an all-zero block, every code stays 7
    }
    Ok((pack_nibbles(&codes)?, absmax))
}

impl Compressor for Nf4 {
    type Output = Nf4Tensor;

    /// `"nf4:<block_size>"`, the [`Scheme`](crate::scheme::Scheme) name.
    fn name(&self) -> String {
        format!("nf4:{}", self.block_size)
    }

    fn compress(&self, tensor: &Tensor) -> Result<Nf4Tensor> {
        let (packed, absmax) =
            with_f32_slice(tensor, "Nf4::compress", |x| quantize(x, self.block_size))?;
        Ok(Nf4Tensor {
            shape: tensor.shape().clone(),
            dtype: tensor.dtype(),
            block_size: self.block_size,
            packed,
            absmax,
        })
    }

    fn decompress(&self, value: &Nf4Tensor, device: &Device) -> Result<Tensor> {
        check_same_block("Nf4Tensor", self.block_size, value.block_size)?;
        value.decompress(device)
    }
}

/// A tensor compressed by [`Nf4`]: packed NF4 codes, one f32 absmax per block, the
/// original shape and dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    shape: Shape,
    dtype: DType,
    block_size: usize,
    packed: Vec<u8>,
    absmax: Vec<f32>,
}

impl Nf4Tensor {
    /// Rebuilds a value from its parts (e.g. read from a file), validating them.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `block_size == 0`; [`Error::MetadataMismatch`] for a
    /// non-float dtype or part lengths that disagree with the shape (`packed`: `ceil(n/2)`,
    /// `absmax`: `ceil(n/block_size)`); [`Error::Corrupt`] for a negative or non-finite
    /// absmax or a non-zero padding nibble.
    pub fn from_parts(
        shape: Shape,
        dtype: DType,
        block_size: usize,
        packed: Vec<u8>,
        absmax: Vec<f32>,
    ) -> Result<Self> {
        const WHAT: &str = "Nf4Tensor";
        check_block("block_size", block_size)?;
        let n = check_header(WHAT, &shape, dtype)?;
        check_packed(&packed, n, WHAT)?;
        check_part_len(WHAT, "absmax", n.div_ceil(block_size), absmax.len())?;
        if let Some(i) = absmax.iter().position(|a| !a.is_finite() || *a < 0.0) {
            return Err(Error::Corrupt {
                what: WHAT.into(),
                reason: format!("absmax {i} is {}, expected finite and >= 0", Num(absmax[i])),
            });
        }
        Ok(Self {
            shape,
            dtype,
            block_size,
            packed,
            absmax,
        })
    }

    /// Values per block.
    #[must_use]
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The packed codes (indices into [`NF4_CODE_BOOK`], element `2i` in the low nibble of
    /// byte `i`).
    #[must_use]
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// One f32 absmax per block.
    #[must_use]
    pub fn absmax(&self) -> &[f32] {
        &self.absmax
    }

    /// The code of every element (unpacked copy), in `0..16`.
    #[must_use]
    pub fn codes(&self) -> Vec<u8> {
        // The packing was validated at construction, so this cannot fail.
        unpack_nibbles(&self.packed, self.shape.elem_count()).unwrap_or_default()
    }
}

impl Compressed for Nf4Tensor {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn original_dtype(&self) -> DType {
        self.dtype
    }

    /// Decodes to row-major f32 values: `NF4_CODE_BOOK[q] · absmax` per element.
    fn to_f32_vec(&self) -> Vec<f32> {
        // Lengths were validated at construction, so the kernel cannot refuse them.
        dequantize_u4_lut_to_vec(
            &self.packed,
            &NF4_CODE_BOOK,
            &self.absmax,
            self.block_size,
            self.shape.elem_count(),
        )
        .expect("Nf4Tensor lengths are validated at construction")
    }

    /// `packed.len() + 4 · absmax.len()`.
    fn payload_bytes(&self) -> usize {
        self.packed.len() + 4 * self.absmax.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_book_is_sorted_symmetric_ends_and_exact_zero() {
        assert!(NF4_CODE_BOOK.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            (NF4_CODE_BOOK[0], NF4_CODE_BOOK[7], NF4_CODE_BOOK[15]),
            (-1.0, 0.0, 1.0)
        );
        assert!((nf4_half_gap(0).unwrap() - 0.151_903_6).abs() < 1e-6);
        assert_eq!(nf4_half_gap(16), None);
    }

    #[test]
    fn every_level_encodes_to_itself_and_midpoints_go_lower() {
        for (q, &c) in NF4_CODE_BOOK.iter().enumerate() {
            assert_eq!(usize::from(encode(c)), q);
        }
        for (i, &m) in MIDPOINTS.iter().enumerate() {
            assert_eq!(usize::from(encode(m)), i);
        }
    }

    #[test]
    fn zero_block_is_exact() -> Result<()> {
        let t = Tensor::zeros((3, 5), DType::BF16, &Device::Cpu)?;
        let c = Nf4::new(4)?.compress(&t)?;
        assert!(c.to_f32_vec().iter().all(|&v| v == 0.0));
        assert_eq!(c.absmax(), &[0.0; 4]);
        Ok(())
    }
}
