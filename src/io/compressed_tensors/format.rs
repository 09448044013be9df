//! The two layouts' rules: [`CtFormat`] (which format the weights of a
//! [`QuantLinear`](crate::nn::QuantLinear) map to, and its `format` name) and the int32
//! packing of 4-bit rows in `pack-quantized`'s `weight_packed`. The writer and the reader
//! both follow these, so they live apart from either.

use crate::nn::{QuantConfig, WeightQuant};

/// The two compressed-tensors formats this module writes and reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtFormat {
    /// `int-quantized`: int8 weights per output channel (W8A8).
    IntQuantized,
    /// `pack-quantized`: int4 weights in groups of `group` input columns, packed in int32.
    PackQuantized {
        /// Input columns per scale.
        group: usize,
    },
}

impl CtFormat {
    /// The `format` string of the config.
    ///
    /// ```
    /// use candle_compress::io::compressed_tensors::CtFormat;
    /// assert_eq!(CtFormat::IntQuantized.name(), "int-quantized");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            CtFormat::IntQuantized => "int-quantized",
            CtFormat::PackQuantized { .. } => "pack-quantized",
        }
    }

    pub(super) fn of(config: &QuantConfig) -> Self {
        match config.weights() {
            // Asymmetric layers are refused before (`add_quant_linear`); their codes and
            // scales alone would be the packed layout.
            WeightQuant::Int4Grouped { group } | WeightQuant::Int4GroupedAsym { group } => {
                CtFormat::PackQuantized { group }
            }
            WeightQuant::Int8PerChannel => CtFormat::IntQuantized,
        }
    }
}

/// Packs signed 4-bit values of one row into int32 words: `q + 8` at bits `4·(i mod 8)`
/// of word `i / 8`, the last word zero-padded.
///
/// ```
/// use candle_compress::io::compressed_tensors::{pack_row_int32, unpack_row_int32};
/// // compressed-tensors' own test vector: [1, 2, 3, 4] packs to 52137
/// let packed = pack_row_int32(&[1, 2, 3, 4]);
/// assert_eq!(packed, vec![52137]);
/// assert_eq!(unpack_row_int32(&packed, 4), vec![1, 2, 3, 4]);
/// ```
pub fn pack_row_int32(row: &[i8]) -> Vec<i32> {
    row.chunks(8)
        .map(|chunk| {
            chunk.iter().enumerate().fold(0u32, |acc, (i, &q)| {
                acc | ((((q as i32 + 8) as u32) & 0xF) << (4 * i))
            }) as i32
        })
        .collect()
}

/// Unpacks `len` signed 4-bit values from one row of int32 words (inverse of
/// [`pack_row_int32`]); missing words read as padding.
///
/// ```
/// use candle_compress::io::compressed_tensors::unpack_row_int32;
/// assert_eq!(unpack_row_int32(&[0x0000_0008], 2), vec![0, -8]);
/// ```
pub fn unpack_row_int32(words: &[i32], len: usize) -> Vec<i8> {
    (0..len)
        .map(|i| {
            let w = words.get(i / 8).copied().unwrap_or(0) as u32;
            (((w >> (4 * (i % 8))) & 0xF) as i8) - 8
        })
        .collect()
}
