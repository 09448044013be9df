//! Symmetric 4-bit quantization, and the nibble packing every 4-bit format shares.
//!
//! [`SymmetricInt4`] maps each group of `group_size` values (default 64) to integers in
//! **`[-7, 7]`** with one f16 scale per group:
//!
//! ```text
//! amax = max |x|      D = f16 rounded UP from amax / 7      q = clamp(round(x / D), -7, 7)
//! x' = q · D          stored nibble = q + 8  (1..=15; nibble 0, i.e. -8, is never written)
//! ```
//!
//! The range is symmetric (`-8` is not used) so that `x` and `-x` quantize to opposite
//! codes and zero is exact. Rounding the scale *up* to f16 (instead of to nearest) means
//! `|x / D| ≤ 7`, so no value is ever clipped and the per-element error bound is simply
//!
//! ```text
//! |x − x'| ≤ D · (1/2 + 2⁻²¹)
//! ```
//!
//! (`D/2` from rounding to the nearest integer; `2⁻²¹·D` covers the f32 rounding of `x / D`,
//! at most `7·2⁻²⁴·D`; `q · D` is exact in f32). `D ≤ (amax/7)·(1 + 2⁻¹⁰)` when
//! `amax/7 ≥ 2⁻¹⁴` (f16 normal range). A group whose values are all zero has `D = 0` and
//! decodes to exact zeros. A group whose `amax / 7` exceeds `f16::MAX` (65504), i.e.
//! `amax > 458528`, cannot be stored and gives [`Error::InvalidArgument`].
//!
//! Size: `ceil(n/2)` payload bytes + 2 bytes per group + shape/dtype header +
//! [`SCHEME_BYTES`](super::SCHEME_BYTES).

use candle_core::{DType, Device, Shape, Tensor};
use half::f16;

use super::{check_block, check_header, check_part_len, check_same_block, f16_round_up};
use crate::compressor::{Compressed, Compressor};
use crate::error::{Error, Num, Result};
use crate::input::{check_finite, with_f32_slice};
use crate::kernels::blockwise::dequantize_u4_lut_to_vec;

/// Packs 4-bit codes two per byte: `codes[2i]` in the low nibble, `codes[2i + 1]` in the high
/// nibble of byte `i`; an odd count leaves the last high nibble 0. `n` codes take
/// `ceil(n / 2)` bytes.
///
/// # Errors
/// [`Error::InvalidArgument`] when a code is above 15, naming its index.
///
/// ```
/// use candle_compress::quant::int4::{pack_nibbles, unpack_nibbles};
/// let packed = pack_nibbles(&[1, 2, 15])?;
/// assert_eq!(packed, vec![0x21, 0x0F]);
/// assert_eq!(unpack_nibbles(&packed, 3)?, vec![1, 2, 15]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn pack_nibbles(codes: &[u8]) -> Result<Vec<u8>> {
    if let Some(i) = codes.iter().position(|&c| c > 15) {
        return Err(Error::invalid(
            "codes",
            format!("4-bit code at index {i} is {}, expected 0..=15", codes[i]),
        ));
    }
    Ok(codes
        .chunks(2)
        .map(|pair| pair[0] | (pair.get(1).copied().unwrap_or(0) << 4))
        .collect())
}

/// Unpacks `len` 4-bit codes packed by [`pack_nibbles`].
///
/// # Errors
/// [`Error::MetadataMismatch`] when `packed.len() != ceil(len / 2)`; [`Error::Corrupt`] when
/// `len` is odd and the unused high nibble of the last byte is not 0.
pub fn unpack_nibbles(packed: &[u8], len: usize) -> Result<Vec<u8>> {
    check_packed(packed, len, "packed nibbles")?;
    let mut out = Vec::with_capacity(len);
    for &b in packed {
        out.push(b & 0x0F);
        out.push(b >> 4);
    }
    out.truncate(len);
    Ok(out)
}

/// Checks that `packed` holds exactly `len` nibbles with a zero padding nibble.
pub(crate) fn check_packed(packed: &[u8], len: usize, what: &str) -> Result<()> {
    check_part_len(what, "payload", len.div_ceil(2), packed.len())?;
    if len % 2 == 1 && packed[packed.len() - 1] >> 4 != 0 {
        return Err(Error::Corrupt {
            what: what.to_string(),
            reason: "padding nibble after the last code is not 0".into(),
        });
    }
    Ok(())
}

/// Symmetric int4 quantizer: codes in `[-7, 7]`, one f16 scale per group (rounded up), two
/// codes per byte. See the [module docs](self) for the formula and the error bound.
///
/// ```
/// use candle_compress::{Compressed, Compressor};
/// use candle_compress::quant::SymmetricInt4;
/// use candle_core::{Device, Tensor};
/// let t = Tensor::new(&[[0.7f32, -0.1, 0.0], [0.35, 0.2, -0.7]], &Device::Cpu)?;
/// let q = SymmetricInt4::new(3)?;
/// let c = q.compress(&t)?;
/// assert_eq!(c.packed().len(), 3); // 6 codes, two per byte
/// let back = q.decompress(&c, &Device::Cpu)?;
/// assert_eq!(back.dims(), &[2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymmetricInt4 {
    group_size: usize,
}

impl SymmetricInt4 {
    /// A quantizer with groups of `group_size` values.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `group_size` is 0.
    pub fn new(group_size: usize) -> Result<Self> {
        check_block("group_size", group_size)?;
        Ok(Self { group_size })
    }

    /// The number of values sharing one scale.
    #[must_use]
    pub fn group_size(&self) -> usize {
        self.group_size
    }
}

impl Default for SymmetricInt4 {
    /// Groups of [`DEFAULT_BLOCK`](super::DEFAULT_BLOCK) (64) values.
    fn default() -> Self {
        Self {
            group_size: super::DEFAULT_BLOCK,
        }
    }
}

/// Quantizes `x` group by group to offset-binary nibbles (`q + 8`) and f16 scales.
fn quantize(x: &[f32], group: usize) -> Result<(Vec<u8>, Vec<f16>)> {
    const OP: &str = "SymmetricInt4::compress";
    check_finite(x, OP)?;
    let mut codes = vec![8u8; x.len()]; // nibble 8 is q = 0
    let mut scales = Vec::with_capacity(x.len().div_ceil(group));
    for (g, (chunk, out)) in x.chunks(group).zip(codes.chunks_mut(group)).enumerate() {
        let amax = super::amax(chunk);
        let scale = f16_round_up(amax / 7.0);
        if scale.is_infinite() {
            return Err(Error::invalid(
                "values",
                format!(
                    "group {g} (flat indices {}..{}) has max |x| = {}; its scale {} \
                     overflows f16 (max 65504); int4 needs max |x| <= 458528",
                    g * group,
                    g * group + chunk.len(),
                    Num(amax),
                    Num(amax / 7.0)
                ),
            ));
        }
        scales.push(scale);
        let d = f32::from(scale);
        if d != 0.0 {
            for (q, &v) in out.iter_mut().zip(chunk) {
                *q = (super::round_half_away(v / d).clamp(-7.0, 7.0) as i8 + 8) as u8;
            }
        } // else: an all-zero group, every code stays 8 (q = 0)
    }
    Ok((pack_nibbles(&codes)?, scales))
}

impl Compressor for SymmetricInt4 {
    type Output = SymmetricInt4Tensor;

    /// `"int4:<group_size>"`, the [`Scheme`](crate::scheme::Scheme) name.
    fn name(&self) -> String {
        format!("int4:{}", self.group_size)
    }

    fn compress(&self, tensor: &Tensor) -> Result<SymmetricInt4Tensor> {
        let (packed, scales) = with_f32_slice(tensor, "SymmetricInt4::compress", |x| {
            quantize(x, self.group_size)
        })?;
        Ok(SymmetricInt4Tensor {
            shape: tensor.shape().clone(),
            dtype: tensor.dtype(),
            group_size: self.group_size,
            packed,
            scales,
        })
    }

    fn decompress(&self, value: &SymmetricInt4Tensor, device: &Device) -> Result<Tensor> {
        check_same_block("SymmetricInt4Tensor", self.group_size, value.group_size)?;
        value.decompress(device)
    }
}

/// A tensor compressed by [`SymmetricInt4`]: packed nibbles (`q + 8`) and one f16 scale per
/// group, with the original shape and dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct SymmetricInt4Tensor {
    shape: Shape,
    dtype: DType,
    group_size: usize,
    packed: Vec<u8>,
    scales: Vec<f16>,
}

impl SymmetricInt4Tensor {
    /// Rebuilds a value from its parts (e.g. read from a file), validating them.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `group_size == 0`; [`Error::MetadataMismatch`] for a
    /// non-float dtype or part lengths that disagree with the shape (`packed.len()` must be
    /// `ceil(n/2)`, `scales.len()` must be `ceil(n/group_size)`); [`Error::Corrupt`] for a
    /// negative or non-finite scale, a nibble of 0 (code -8, never written) or a non-zero
    /// padding nibble.
    pub fn from_parts(
        shape: Shape,
        dtype: DType,
        group_size: usize,
        packed: Vec<u8>,
        scales: Vec<f16>,
    ) -> Result<Self> {
        const WHAT: &str = "SymmetricInt4Tensor";
        check_block("group_size", group_size)?;
        let n = check_header(WHAT, &shape, dtype)?;
        check_packed(&packed, n, WHAT)?;
        check_part_len(WHAT, "scales", n.div_ceil(group_size), scales.len())?;
        if let Some(i) = scales
            .iter()
            .position(|s| !s.is_finite() || f32::from(*s) < 0.0)
        {
            return Err(Error::Corrupt {
                what: WHAT.into(),
                reason: format!("scale {i} is {}, expected finite and >= 0", scales[i]),
            });
        }
        let zero_nibble = packed
            .iter()
            .enumerate()
            .flat_map(|(i, b)| [(2 * i, b & 0x0F), (2 * i + 1, b >> 4)])
            .find(|&(i, c)| i < n && c == 0);
        if let Some((i, _)) = zero_nibble {
            return Err(Error::Corrupt {
                what: WHAT.into(),
                reason: format!("code {i} is nibble 0 (-8), outside [-7, 7]"),
            });
        }
        Ok(Self {
            shape,
            dtype,
            group_size,
            packed,
            scales,
        })
    }

    /// Values per scale.
    #[must_use]
    pub fn group_size(&self) -> usize {
        self.group_size
    }

    /// The packed nibbles (`q + 8`, element `2i` in the low nibble of byte `i`).
    #[must_use]
    pub fn packed(&self) -> &[u8] {
        &self.packed
    }

    /// One f16 scale per group.
    #[must_use]
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// The signed codes in `[-7, 7]`, one per element (unpacked copy).
    #[must_use]
    pub fn codes(&self) -> Vec<i8> {
        let n = self.shape.elem_count();
        self.packed
            .iter()
            .flat_map(|b| [(b & 0x0F) as i8 - 8, (b >> 4) as i8 - 8])
            .take(n)
            .collect()
    }
}

impl Compressed for SymmetricInt4Tensor {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn original_dtype(&self) -> DType {
        self.dtype
    }

    /// Decodes to row-major f32 values: `q · scale` per element.
    fn to_f32_vec(&self) -> Vec<f32> {
        // Nibble k holds q = k - 8; one f32 multiply per value, as in the formula.
        let lut: [f32; 16] = std::array::from_fn(|k| k as f32 - 8.0);
        let scales: Vec<f32> = self.scales.iter().map(|&s| f32::from(s)).collect();
        // Lengths were validated at construction, so the kernel cannot refuse them.
        dequantize_u4_lut_to_vec(
            &self.packed,
            &lut,
            &scales,
            self.group_size,
            self.shape.elem_count(),
        )
        .expect("SymmetricInt4Tensor lengths are validated at construction")
    }

    /// `packed.len() + 2 · scales.len()` (f16 scales).
    fn payload_bytes(&self) -> usize {
        self.packed.len() + 2 * self.scales.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_low_nibble_first_and_refuses_wide_codes() {
        assert_eq!(pack_nibbles(&[]).unwrap(), Vec::<u8>::new());
        assert_eq!(pack_nibbles(&[3, 4]).unwrap(), vec![0x43]);
        assert!(pack_nibbles(&[3, 16]).is_err());
        assert!(unpack_nibbles(&[0x43], 3).is_err());
        assert!(unpack_nibbles(&[0x43], 1).is_err()); // padding nibble not 0
        assert_eq!(unpack_nibbles(&[0x03], 1).unwrap(), vec![3]);
    }

    #[test]
    fn quantizes_to_symmetric_codes() -> Result<()> {
        let t = Tensor::new(&[7.0f32, -7.0, 3.5, 0.0, 1.0], &Device::Cpu)?;
        let c = SymmetricInt4::new(8)?.compress(&t)?;
        assert_eq!(c.scales()[0], f16::ONE);
        assert_eq!(c.codes(), vec![7, -7, 4, 0, 1]);
        assert_eq!(c.to_f32_vec(), vec![7.0, -7.0, 4.0, 0.0, 1.0]);
        Ok(())
    }

    #[test]
    fn refuses_scales_beyond_f16() -> Result<()> {
        let t = Tensor::new(&[1.0f32, 5.0e5], &Device::Cpu)?;
        let err = SymmetricInt4::new(2)?.compress(&t).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        assert!(err.to_string().contains("group 0"));
        Ok(())
    }
}
