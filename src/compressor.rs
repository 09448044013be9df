//! The [`Compressor`] and [`Compressed`] traits every quantizer implements.
//!
//! A [`Compressor`] is a configured scheme (say, blockwise int8 with blocks of 64). It turns
//! a float tensor of any rank, dtype F32/F16/BF16/F64, contiguous or not, into a compact
//! value that implements [`Compressed`]. The compressed value remembers the original
//! shape and dtype, so decompression gives back a tensor of the same shape and dtype.
//!
//! Sizes are honest: [`Compressed::size_bytes`] counts every byte the value holds to be
//! decompressible — payload, scales, zero points and the shape — never a theoretical
//! bits-per-weight figure.

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::Result;

/// A configured compression scheme.
///
/// Contract for implementors:
/// - `compress` accepts F32, F16, BF16 and F64 tensors of any rank and layout, refuses
///   other dtypes with [`Error::UnsupportedDType`](crate::Error::UnsupportedDType) and
///   NaN/±Inf with [`Error::NonFinite`](crate::Error::NonFinite); an empty tensor
///   compresses to an empty value that decompresses to an empty tensor.
/// - `decompress` checks that the value was made with this compressor's configuration
///   and returns [`Error::MetadataMismatch`](crate::Error::MetadataMismatch) otherwise.
pub trait Compressor {
    /// The compressed representation this scheme produces.
    type Output: Compressed;

    /// A short, stable name of the scheme and its parameters, e.g. `"int8-block64"`.
    fn name(&self) -> String;

    /// Compresses `tensor`.
    fn compress(&self, tensor: &Tensor) -> Result<Self::Output>;

    /// Decompresses `value` to a tensor on `device` in the original shape and dtype, after
    /// checking that `value` was produced with this compressor's configuration.
    fn decompress(&self, value: &Self::Output, device: &Device) -> Result<Tensor>;
}

/// A compressed tensor: knows its original shape and dtype, its true size, and how to
/// decompress itself.
///
/// A format supplies only its numerics and its parts — [`Compressed::to_f32_vec`] and
/// [`Compressed::payload_bytes`] (and [`Compressed::tag_bytes`] when its tag is not a
/// scheme's) — besides its shape and dtype; decompression to a tensor and the size
/// bookkeeping are written once, here.
pub trait Compressed {
    /// The shape of the original tensor.
    fn shape(&self) -> &Shape;

    /// The dtype of the original tensor; decompression returns this dtype.
    fn original_dtype(&self) -> DType;

    /// The decoded values, row-major, in f32 (finite for every value a quantizer built
    /// from finite input).
    fn to_f32_vec(&self) -> Vec<f32>;

    /// Bytes of the encoded values alone: codes, scales, zero points, masks — everything
    /// [`Compressed::size_bytes`] counts but the shape and the tag.
    fn payload_bytes(&self) -> usize;

    /// Bytes of the tag that names the format: a scheme's
    /// ([`SCHEME_BYTES`](crate::quant::SCHEME_BYTES)) unless the format says otherwise.
    fn tag_bytes(&self) -> usize {
        crate::quant::SCHEME_BYTES
    }

    /// Decompresses to a tensor on `device` in the original shape and dtype.
    ///
    /// # Errors
    /// Candle's, building the tensor.
    fn decompress(&self, device: &Device) -> Result<Tensor> {
        crate::input::tensor_from_f32(
            self.to_f32_vec(),
            self.shape(),
            self.original_dtype(),
            device,
        )
    }

    /// Every byte held: [`Compressed::payload_bytes`], the shape (8 bytes per dimension
    /// and 1 for the dtype, [`header_bytes`]) and [`Compressed::tag_bytes`]; saturates at
    /// `usize::MAX`.
    fn size_bytes(&self) -> usize {
        self.payload_bytes()
            .saturating_add(header_bytes(self.shape()))
            .saturating_add(self.tag_bytes())
    }

    /// The size of the original tensor: element count × original dtype size (saturating
    /// at `usize::MAX`; a value that exists in memory never comes near it).
    fn original_size_bytes(&self) -> usize {
        self.shape()
            .dims()
            .iter()
            .try_fold(self.original_dtype().size_in_bytes(), |a, &d| {
                a.checked_mul(d)
            })
            .unwrap_or(usize::MAX)
    }

    /// `original_size_bytes / size_bytes`; above 1 means smaller than the original.
    fn compression_ratio(&self) -> f64 {
        self.original_size_bytes() as f64 / self.size_bytes().max(1) as f64
    }
}

/// Bytes needed to describe a shape and dtype alongside a payload: 8 per dimension plus a
/// one-byte dtype tag. Part of every [`Compressed::size_bytes`].
pub fn header_bytes(shape: &Shape) -> usize {
    8 * shape.rank() + 1
}
