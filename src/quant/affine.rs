//! Asymmetric (affine) 4- or 8-bit quantization with a scale and a zero point per group.
//!
//! Each group of `group_size` values (default 64) is mapped onto the `2^bits` evenly spaced
//! levels between its minimum and its maximum, so skewed data (all positive, or shifted)
//! uses every code:
//!
//! ```text
//! m = min x,  M = max x,  qmax = 2^bits − 1
//! S = f32((M − m) / qmax)          (computed in f64, rounded once to f32)
//! q = clamp(round((x − m) · (1/S)), 0, qmax)   (in f64; q = 0 when S == 0)
//! x' = f32(m + q · S)              (in f64, rounded once to f32)
//! ```
//!
//! The zero point is stored as a real number, `m` itself (the value code 0 decodes to),
//! rather than as an integer code: it costs 4 bytes instead of 1, but `m` and `M` are then
//! represented without the extra half-step of error an integer zero point adds at the
//! ends of the range. Scale and zero point are both **f32** (4 + 4 bytes per group), so
//! any finite input works — no f16 overflow. The error bound per element is
//!
//! ```text
//! |x − x'| ≤ S/2 + 2⁻²³·(|m| + qmax·S)
//! ```
//!
//! (`S/2` from rounding to the nearest level; the second term covers the f64 arithmetic
//! and the single rounding of `x'` to f32, at most `2⁻²⁴·|m + q·S|` plus far smaller f64
//! terms). `S` is `(M − m)/qmax` to within one f32 rounding, and `(M − m)/qmax` can always
//! be reached from `m` within `qmax` steps, so no value is clipped. A constant group
//! (including all zeros) has `S = 0` and decodes exactly to its value; a group whose range
//! underflows `S` to 0 uses the smallest positive f32 instead, keeping the bound.
//!
//! 4-bit codes are packed two per byte with [`pack_nibbles`]
//! (`n` values → `ceil(n/2)` bytes); 8-bit codes take one byte each. Size: payload +
//! 8 bytes per group + shape/dtype header + [`SCHEME_BYTES`](super::SCHEME_BYTES).

use candle_core::{DType, Device, Shape, Tensor};

use super::int4::{check_packed, pack_nibbles};
use super::{check_block, check_header, check_part_len, check_same_block};
use crate::compressor::{Compressed, Compressor};
use crate::error::{Error, Num, Result};
use crate::input::{check_finite, with_f32_slice};
use crate::kernels::blockwise::dequantize_affine_to_vec;

/// Affine quantizer: `bits` (4 or 8) per value, f32 scale and zero point per group of
/// `group_size` values. See the [module docs](self) for the formula and error bound.
///
/// ```
/// use candle_compress::{Compressed, Compressor};
/// use candle_compress::quant::Affine;
/// use candle_core::{Device, Tensor};
/// let t = Tensor::new(&[10.0f32, 10.5, 11.0, 12.0, 13.0], &Device::Cpu)?;
/// let q = Affine::new(4, 64)?;
/// let c = q.compress(&t)?;
/// assert_eq!(c.codes().len(), 3); // 5 values, 4 bits each, packed
/// assert_eq!(c.zero_points(), &[10.0]);
/// assert_eq!(c.scales(), &[0.2]);
/// let back = q.decompress(&c, &Device::Cpu)?.to_vec1::<f32>()?;
/// assert!((back[1] - 10.5).abs() <= 0.1 + 1e-5);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Affine {
    bits: u8,
    group_size: usize,
}

impl Affine {
    /// A quantizer with `bits` ∈ {4, 8} bits per value and groups of `group_size` values.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for other bit widths or `group_size == 0`.
    pub fn new(bits: u8, group_size: usize) -> Result<Self> {
        check_bits(bits)?;
        check_block("group_size", group_size)?;
        Ok(Self { bits, group_size })
    }

    /// Bits per value (4 or 8).
    #[must_use]
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Values per scale/zero point.
    #[must_use]
    pub fn group_size(&self) -> usize {
        self.group_size
    }
}

fn check_bits(bits: u8) -> Result<()> {
    if bits != 4 && bits != 8 {
        return Err(Error::invalid(
            "bits",
            format!("affine quantization supports 4 or 8 bits, found {bits}"),
        ));
    }
    Ok(())
}

fn qmax(bits: u8) -> f64 {
    ((1u32 << bits) - 1) as f64
}

/// Quantizes `x` group by group; returns (codes, one per value, unpacked), scales, mins.
fn quantize(x: &[f32], bits: u8, group: usize) -> Result<(Vec<u8>, Vec<f32>, Vec<f32>)> {
    check_finite(x, "Affine::compress")?;
    let qmax = qmax(bits);
    let groups = x.len().div_ceil(group);
    let mut codes = vec![0u8; x.len()];
    let (mut scales, mut mins) = (Vec::with_capacity(groups), Vec::with_capacity(groups));
    for (chunk, out) in x.chunks(group).zip(codes.chunks_mut(group)) {
        // Plain comparisons (the input is finite) so the reduction vectorizes.
        let (mut lo, mut hi) = (chunk[0], chunk[0]);
        for &v in chunk {
            lo = if v < lo { v } else { lo };
            hi = if v > hi { v } else { hi };
        }
        let mut scale = ((f64::from(hi) - f64::from(lo)) / qmax) as f32;
        if scale == 0.0 && hi > lo {
            scale = f32::from_bits(1); // smallest positive subnormal: keeps q ≤ qmax
        }
        scales.push(scale);
        mins.push(lo);
        if scale != 0.0 {
            let (lo, inv) = (f64::from(lo), 1.0 / f64::from(scale));
            for (q, &v) in out.iter_mut().zip(chunk) {
                *q = round_half_up((f64::from(v) - lo) * inv).min(qmax) as u8;
            }
        } // else: a constant group, every code stays 0
    }
    Ok((codes, scales, mins))
}

/// `round(y)` for `0 <= y < 2^31` (halves up) without a libm call; exact there, since
/// `y - trunc(y)` is exact.
#[inline]
fn round_half_up(y: f64) -> f64 {
    let t = f64::from(y as i32); // truncation; y >= 0
    t + f64::from(u8::from(y - t >= 0.5)) // branch-free
}

impl Compressor for Affine {
    type Output = AffineTensor;

    /// `"affine4:<group_size>"` or `"affine8:<group_size>"`, the
    /// [`Scheme`](crate::scheme::Scheme) name.
    fn name(&self) -> String {
        format!("affine{}:{}", self.bits, self.group_size)
    }

    fn compress(&self, tensor: &Tensor) -> Result<AffineTensor> {
        let (codes, scales, zero_points) = with_f32_slice(tensor, "Affine::compress", |x| {
            quantize(x, self.bits, self.group_size)
        })?;
        let codes = if self.bits == 4 {
            pack_nibbles(&codes)?
        } else {
            codes
        };
        Ok(AffineTensor {
            shape: tensor.shape().clone(),
            dtype: tensor.dtype(),
            bits: self.bits,
            group_size: self.group_size,
            codes,
            scales,
            zero_points,
        })
    }

    fn decompress(&self, value: &AffineTensor, device: &Device) -> Result<Tensor> {
        if value.bits != self.bits {
            return Err(Error::metadata("AffineTensor bits", self.bits, value.bits));
        }
        check_same_block("AffineTensor", self.group_size, value.group_size)?;
        value.decompress(device)
    }
}

/// A tensor compressed by [`Affine`]: codes (packed two per byte for 4 bits), one f32
/// scale and one f32 zero point (the group minimum) per group, and the original shape and
/// dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct AffineTensor {
    shape: Shape,
    dtype: DType,
    bits: u8,
    group_size: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<f32>,
}

impl AffineTensor {
    /// Rebuilds a value from its parts (e.g. read from a file), validating them.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bits other than 4/8 or `group_size == 0`;
    /// [`Error::MetadataMismatch`] for a non-float dtype or part lengths that disagree with
    /// the shape (`codes`: `n` bytes for 8 bits, `ceil(n/2)` for 4 bits; `scales` and
    /// `zero_points`: `ceil(n/group_size)`); [`Error::Corrupt`] for a negative or
    /// non-finite scale, a non-finite zero point or a non-zero padding nibble.
    pub fn from_parts(
        shape: Shape,
        dtype: DType,
        bits: u8,
        group_size: usize,
        codes: Vec<u8>,
        scales: Vec<f32>,
        zero_points: Vec<f32>,
    ) -> Result<Self> {
        const WHAT: &str = "AffineTensor";
        check_bits(bits)?;
        check_block("group_size", group_size)?;
        let n = check_header(WHAT, &shape, dtype)?;
        if bits == 4 {
            check_packed(&codes, n, WHAT)?;
        } else {
            check_part_len(WHAT, "codes", n, codes.len())?;
        }
        let groups = n.div_ceil(group_size);
        check_part_len(WHAT, "scales", groups, scales.len())?;
        check_part_len(WHAT, "zero_points", groups, zero_points.len())?;
        if let Some(i) = scales.iter().position(|s| !s.is_finite() || *s < 0.0) {
            return Err(Error::Corrupt {
                what: WHAT.into(),
                reason: format!("scale {i} is {}, expected finite and >= 0", Num(scales[i])),
            });
        }
        if let Some(i) = zero_points.iter().position(|z| !z.is_finite()) {
            return Err(Error::Corrupt {
                what: WHAT.into(),
                reason: format!("zero point {i} is {}, expected finite", Num(zero_points[i])),
            });
        }
        Ok(Self {
            shape,
            dtype,
            bits,
            group_size,
            codes,
            scales,
            zero_points,
        })
    }

    /// Bits per value (4 or 8).
    #[must_use]
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Values per group.
    #[must_use]
    pub fn group_size(&self) -> usize {
        self.group_size
    }

    /// The stored codes: one byte per value for 8 bits; for 4 bits two per byte, element
    /// `2i` in the low nibble of byte `i`.
    #[must_use]
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// One f32 scale per group.
    #[must_use]
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// One f32 zero point per group: the value code 0 decodes to (the group minimum).
    #[must_use]
    pub fn zero_points(&self) -> &[f32] {
        &self.zero_points
    }

    /// The unsigned code of every element (unpacked copy), in `0..2^bits`.
    #[must_use]
    pub fn unpacked_codes(&self) -> Vec<u8> {
        if self.bits == 8 {
            return self.codes.clone();
        }
        let n = self.shape.elem_count();
        self.codes
            .iter()
            .flat_map(|b| [b & 0x0F, b >> 4])
            .take(n)
            .collect()
    }
}

impl Compressed for AffineTensor {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn original_dtype(&self) -> DType {
        self.dtype
    }

    /// Decodes to row-major f32 values: `zero_point + q · scale` per element, computed in
    /// f64, clamped to the finite f32 range (the rounding of `S` may push the top level of a
    /// group ending at `±f32::MAX` a few ulps past it), then rounded once to f32.
    fn to_f32_vec(&self) -> Vec<f32> {
        // Lengths were validated at construction, so the kernel cannot refuse them.
        dequantize_affine_to_vec(
            &self.codes,
            self.bits,
            &self.zero_points,
            &self.scales,
            self.group_size,
            self.shape.elem_count(),
        )
        .expect("AffineTensor lengths are validated at construction")
    }

    /// `codes.len() + 4 · scales.len() + 4 · zero_points.len()`.
    fn payload_bytes(&self) -> usize {
        self.codes.len() + 4 * self.scales.len() + 4 * self.zero_points.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_the_full_code_range_on_skewed_data() -> Result<()> {
        let t = Tensor::new(&[100.0f32, 100.0 + 255.0], &Device::Cpu)?;
        let c = Affine::new(8, 2)?.compress(&t)?;
        assert_eq!(c.codes(), &[0, 255]);
        assert_eq!(c.to_f32_vec(), vec![100.0, 355.0]);
        Ok(())
    }

    #[test]
    fn constant_and_extreme_groups() -> Result<()> {
        let t = Tensor::new(&[-3.0f32, -3.0, f32::MAX, -f32::MAX], &Device::Cpu)?;
        let c = Affine::new(4, 2)?.compress(&t)?;
        let back = c.to_f32_vec();
        assert_eq!(&back[..2], &[-3.0, -3.0]);
        let s = f64::from(c.scales()[1]);
        let bound = s / 2.0 + 2f64.powi(-23) * (f64::from(f32::MAX) + 15.0 * s);
        assert!(back[2].is_finite() && f64::from(f32::MAX - back[2]) <= bound);
        assert_eq!(back[3], -f32::MAX);
        Ok(())
    }

    #[test]
    fn refuses_other_bit_widths() {
        assert!(matches!(
            Affine::new(3, 64),
            Err(Error::InvalidArgument { name: "bits", .. })
        ));
    }
}
