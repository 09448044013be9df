//! [`Scheme`]: every tensor quantizer by name, and [`CompressedTensor`]: any of their
//! outputs behind one type.
//!
//! A scheme's text form is `<kind>[:<size>]`, the size being the block or group size
//! (default 64):
//!
//! | text | quantizer | bytes per 64 values (+ header) |
//! |---|---|---|
//! | `int8`, `int8:32` | [`BlockwiseInt8`] (`int8:32` = GGML Q8_0) | 64 + 2 |
//! | `affine8:128` | [`Affine`] 8-bit | 64 + 8 |
//! | `affine4:64` | [`Affine`] 4-bit | 32 + 8 |
//! | `int4:32` | [`SymmetricInt4`] | 32 + 2 |
//! | `nf4:64` | [`Nf4`] | 32 + 4 |
//!
//! [`Display`](std::fmt::Display) always writes the size (`int8:64`), and serde uses the same
//! text, so a scheme stored in JSON metadata reads `"int8:64"`. A [`Scheme`] is itself a
//! [`Compressor`] producing [`CompressedTensor`]s.
//!
//! ```
//! use candle_compress::scheme::Scheme;
//! use candle_compress::{Compressed, Compressor};
//! use candle_core::{Device, Tensor};
//! let scheme: Scheme = "nf4:32".parse()?;
//! let t = Tensor::randn(0f32, 1.0, (8, 64), &Device::Cpu)?;
//! let c = scheme.compress(&t)?;
//! assert_eq!(c.scheme(), scheme);
//! assert_eq!(c.size_bytes(), 256 + 16 * 4 + (2 * 8 + 1) + 5);
//! let back = c.decompress(&Device::Cpu)?;
//! assert_eq!(back.dims(), &[8, 64]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Shape, Tensor};
use serde::{Deserialize, Serialize};

use crate::compressor::{Compressed, Compressor};
use crate::error::{Error, Result};
use crate::quant::{
    Affine, AffineTensor, BlockwiseInt8, BlockwiseInt8Tensor, Nf4, Nf4Tensor, SymmetricInt4,
    SymmetricInt4Tensor, DEFAULT_BLOCK,
};

/// A tensor quantization scheme and its block or group size.
///
/// Construct it directly, parse it from text (`"int8:32"`), or take one of
/// [`Scheme::ALL_DEFAULT`]. A size of 0 is refused when parsing and when compressing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scheme {
    /// [`BlockwiseInt8`]: absmax int8, f16 scale per block (`int8:<block>`).
    Int8 {
        /// Values per block.
        block: usize,
    },
    /// [`Affine`] with 8 bits: f32 scale and zero point per group (`affine8:<group>`).
    Affine8 {
        /// Values per group.
        group: usize,
    },
    /// [`Affine`] with 4 bits, packed (`affine4:<group>`).
    Affine4 {
        /// Values per group.
        group: usize,
    },
    /// [`SymmetricInt4`]: `[-7, 7]`, f16 scale per group, packed (`int4:<group>`).
    Int4 {
        /// Values per group.
        group: usize,
    },
    /// [`Nf4`]: NormalFloat4, f32 absmax per block, packed (`nf4:<block>`).
    Nf4 {
        /// Values per block.
        block: usize,
    },
}

impl Scheme {
    /// Every scheme with the default size (64), most to least precise.
    pub const ALL_DEFAULT: [Scheme; 5] = [
        Scheme::Int8 {
            block: DEFAULT_BLOCK,
        },
        Scheme::Affine8 {
            group: DEFAULT_BLOCK,
        },
        Scheme::Affine4 {
            group: DEFAULT_BLOCK,
        },
        Scheme::Int4 {
            group: DEFAULT_BLOCK,
        },
        Scheme::Nf4 {
            block: DEFAULT_BLOCK,
        },
    ];

    /// The scheme's kind as written in its text form (`"int8"`, `"affine4"`, …).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Scheme::Int8 { .. } => "int8",
            Scheme::Affine8 { .. } => "affine8",
            Scheme::Affine4 { .. } => "affine4",
            Scheme::Int4 { .. } => "int4",
            Scheme::Nf4 { .. } => "nf4",
        }
    }

    /// The block or group size.
    #[must_use]
    pub fn block_size(&self) -> usize {
        match *self {
            Scheme::Int8 { block } | Scheme::Nf4 { block } => block,
            Scheme::Affine8 { group } | Scheme::Affine4 { group } | Scheme::Int4 { group } => group,
        }
    }

    /// Bits per stored code (8 or 4), scales not included.
    #[must_use]
    pub fn code_bits(&self) -> u8 {
        match self {
            Scheme::Int8 { .. } | Scheme::Affine8 { .. } => 8,
            _ => 4,
        }
    }

    /// Exact [`Compressed::size_bytes`] of this scheme applied to a tensor of `shape`,
    /// without compressing anything: codes (`n` bytes at 8 bits, `ceil(n/2)` at 4), one
    /// scale set per block (f16 for `int8` / `int4`, f32 absmax for `nf4`, f32 scale + f32
    /// zero point for `affine`), [`header_bytes`](crate::compressor::header_bytes) and
    /// [`SCHEME_BYTES`](crate::quant::SCHEME_BYTES). The tests check it against real
    /// compression for every scheme.
    ///
    /// Saturates at `usize::MAX` for a shape whose size does not fit (see
    /// [`Scheme::try_compressed_size_bytes`] for an error instead).
    #[must_use]
    pub fn compressed_size_bytes(&self, shape: &Shape) -> usize {
        self.try_compressed_size_bytes(shape).unwrap_or(usize::MAX)
    }

    /// [`Scheme::compressed_size_bytes`] with checked arithmetic.
    ///
    /// # Errors
    /// [`Error::SizeOverflow`] when the element count or the byte size of `shape` overflows
    /// `usize` (a shape read from an untrusted header, say).
    pub fn try_compressed_size_bytes(&self, shape: &Shape) -> Result<usize> {
        const WHAT: &str = "Scheme::compressed_size_bytes";
        let n = crate::input::checked_elem_count(shape, WHAT)?;
        let blocks = n.div_ceil(self.block_size().max(1));
        let codes = if self.code_bits() == 8 {
            n
        } else {
            n.div_ceil(2)
        };
        let scale_bytes_per_block: usize = match self {
            Scheme::Int8 { .. } | Scheme::Int4 { .. } => 2,
            Scheme::Nf4 { .. } => 4,
            Scheme::Affine8 { .. } | Scheme::Affine4 { .. } => 8,
        };
        scale_bytes_per_block
            .checked_mul(blocks)
            .and_then(|s| s.checked_add(codes))
            .and_then(|s| s.checked_add(crate::compressor::header_bytes(shape)))
            .and_then(|s| s.checked_add(crate::quant::SCHEME_BYTES))
            .ok_or_else(|| crate::input::size_overflow(WHAT, shape))
    }

    /// Builds the scheme from a kind name and a size.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for an unknown kind; [`Error::InvalidArgument`] for size 0.
    pub fn new(kind: &str, size: usize) -> Result<Self> {
        let scheme = match kind {
            "int8" => Scheme::Int8 { block: size },
            "affine8" => Scheme::Affine8 { group: size },
            "affine4" => Scheme::Affine4 { group: size },
            "int4" => Scheme::Int4 { group: size },
            "nf4" => Scheme::Nf4 { block: size },
            other => {
                return Err(Error::Unsupported {
                    what: "quantization scheme",
                    found: other.to_string(),
                    supported: "int8, affine8, affine4, int4, nf4 (each optionally :<size>)".into(),
                })
            }
        };
        crate::quant::check_block("block_size", size)?;
        Ok(scheme)
    }
}

impl fmt::Display for Scheme {
    /// `<kind>:<size>`, e.g. `int8:64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.block_size())
    }
}

impl FromStr for Scheme {
    type Err = Error;

    /// Parses `<kind>` (size 64) or `<kind>:<size>`, case-sensitive, no spaces.
    fn from_str(s: &str) -> Result<Self> {
        let (kind, size) = match s.split_once(':') {
            None => (s, DEFAULT_BLOCK),
            Some((kind, size)) => {
                let size = size.parse::<usize>().map_err(|e| {
                    Error::invalid(
                        "block_size",
                        format!("in scheme {s:?}: {size:?} is not a block size ({e})"),
                    )
                })?;
                (kind, size)
            }
        };
        Scheme::new(kind, size)
    }
}

impl TryFrom<String> for Scheme {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Scheme> for String {
    fn from(s: Scheme) -> String {
        s.to_string()
    }
}

impl Compressor for Scheme {
    type Output = CompressedTensor;

    /// The scheme's text form, e.g. `"int8:64"`.
    fn name(&self) -> String {
        self.to_string()
    }

    /// Compresses with the scheme's quantizer.
    ///
    /// # Errors
    /// Those of the quantizer; [`Error::InvalidArgument`] for size 0.
    fn compress(&self, tensor: &Tensor) -> Result<CompressedTensor> {
        Ok(match *self {
            Scheme::Int8 { block } => BlockwiseInt8::new(block)?.compress(tensor)?.into(),
            Scheme::Affine8 { group } => Affine::new(8, group)?.compress(tensor)?.into(),
            Scheme::Affine4 { group } => Affine::new(4, group)?.compress(tensor)?.into(),
            Scheme::Int4 { group } => SymmetricInt4::new(group)?.compress(tensor)?.into(),
            Scheme::Nf4 { block } => Nf4::new(block)?.compress(tensor)?.into(),
        })
    }

    /// # Errors
    /// [`Error::MetadataMismatch`] when `value` was made with another scheme or size.
    fn decompress(&self, value: &CompressedTensor, device: &Device) -> Result<Tensor> {
        if value.scheme() != *self {
            return Err(Error::metadata(
                "compressed tensor scheme",
                self,
                value.scheme(),
            ));
        }
        value.decompress(device)
    }
}

/// The output of any quantizer, behind one type (what pipelines, files and the CLI hold).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CompressedTensor {
    /// From [`BlockwiseInt8`].
    Int8(BlockwiseInt8Tensor),
    /// From [`Affine`] (4 or 8 bits).
    Affine(AffineTensor),
    /// From [`SymmetricInt4`].
    Int4(SymmetricInt4Tensor),
    /// From [`Nf4`].
    Nf4(Nf4Tensor),
}

impl CompressedTensor {
    /// The scheme (kind and block size) this value was made with.
    #[must_use]
    pub fn scheme(&self) -> Scheme {
        match self {
            CompressedTensor::Int8(t) => Scheme::Int8 {
                block: t.block_size(),
            },
            CompressedTensor::Affine(t) if t.bits() == 8 => Scheme::Affine8 {
                group: t.group_size(),
            },
            CompressedTensor::Affine(t) => Scheme::Affine4 {
                group: t.group_size(),
            },
            CompressedTensor::Int4(t) => Scheme::Int4 {
                group: t.group_size(),
            },
            CompressedTensor::Nf4(t) => Scheme::Nf4 {
                block: t.block_size(),
            },
        }
    }

    fn inner(&self) -> &dyn Compressed {
        match self {
            CompressedTensor::Int8(t) => t,
            CompressedTensor::Affine(t) => t,
            CompressedTensor::Int4(t) => t,
            CompressedTensor::Nf4(t) => t,
        }
    }
}

impl Compressed for CompressedTensor {
    fn shape(&self) -> &Shape {
        self.inner().shape()
    }

    fn original_dtype(&self) -> DType {
        self.inner().original_dtype()
    }

    fn to_f32_vec(&self) -> Vec<f32> {
        self.inner().to_f32_vec()
    }

    fn payload_bytes(&self) -> usize {
        self.inner().payload_bytes()
    }

    fn tag_bytes(&self) -> usize {
        self.inner().tag_bytes()
    }
}

impl From<BlockwiseInt8Tensor> for CompressedTensor {
    fn from(t: BlockwiseInt8Tensor) -> Self {
        CompressedTensor::Int8(t)
    }
}

impl From<AffineTensor> for CompressedTensor {
    fn from(t: AffineTensor) -> Self {
        CompressedTensor::Affine(t)
    }
}

impl From<SymmetricInt4Tensor> for CompressedTensor {
    fn from(t: SymmetricInt4Tensor) -> Self {
        CompressedTensor::Int4(t)
    }
}

impl From<Nf4Tensor> for CompressedTensor {
    fn from(t: Nf4Tensor) -> Self {
        CompressedTensor::Nf4(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_size_formula_is_exact() -> Result<()> {
        for scheme in Scheme::ALL_DEFAULT.into_iter().chain(
            ["int8:32", "int4:32", "nf4:128", "affine8:16", "affine4:7"]
                .map(|s| s.parse().unwrap()),
        ) {
            for dims in [
                vec![0usize],
                vec![1],
                vec![7, 13],
                vec![3, 64],
                vec![2, 5, 33],
            ] {
                let shape = Shape::from(dims.clone());
                let t = Tensor::ones(dims.as_slice(), DType::F32, &Device::Cpu)?;
                let c = scheme.compress(&t)?;
                assert_eq!(
                    c.size_bytes(),
                    scheme.compressed_size_bytes(&shape),
                    "{scheme} {dims:?}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn parses_and_prints_every_kind() -> Result<()> {
        for (text, canonical) in [
            ("int8", "int8:64"),
            ("int8:32", "int8:32"),
            ("affine4:64", "affine4:64"),
            ("affine8:128", "affine8:128"),
            ("int4:32", "int4:32"),
            ("nf4", "nf4:64"),
        ] {
            let s: Scheme = text.parse()?;
            assert_eq!(s.to_string(), canonical);
            assert_eq!(canonical.parse::<Scheme>()?, s);
        }
        assert_eq!(Scheme::ALL_DEFAULT.len(), 5);
        Ok(())
    }

    #[test]
    fn refuses_bad_text() {
        assert!(matches!(
            "int3:64".parse::<Scheme>(),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            "int8:0".parse::<Scheme>(),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            "int8:x".parse::<Scheme>(),
            Err(Error::InvalidArgument { .. })
        ));
        assert!("int8:".parse::<Scheme>().is_err());
        assert!("".parse::<Scheme>().is_err());
    }

    #[test]
    fn serde_uses_the_text_form() -> Result<()> {
        let s = Scheme::Affine4 { group: 128 };
        let json = serde_json::to_string(&s)?;
        assert_eq!(json, "\"affine4:128\"");
        assert_eq!(serde_json::from_str::<Scheme>(&json)?, s);
        assert!(serde_json::from_str::<Scheme>("\"nf4:0\"").is_err());
        Ok(())
    }

    #[test]
    fn decompress_checks_the_scheme() -> Result<()> {
        let t = Tensor::ones((4, 4), DType::F32, &Device::Cpu)?;
        for s in Scheme::ALL_DEFAULT {
            let c = s.compress(&t)?;
            assert_eq!(c.scheme(), s);
            assert_eq!(s.name(), c.scheme().to_string());
            let other = Scheme::new(s.kind(), 32)?;
            assert!(matches!(
                other.decompress(&c, &Device::Cpu),
                Err(Error::MetadataMismatch { .. })
            ));
        }
        assert!(matches!(
            Scheme::Int8 { block: 0 }.compress(&t),
            Err(Error::InvalidArgument { .. })
        ));
        Ok(())
    }
}
