//! Export of Q8_0 / Q4_0 (and F32 / F16) tensors to GGUF, the file format of llama.cpp,
//! readable by candle's [`gguf_file`](candle_core::quantized::gguf_file) reader.
//!
//! The writer follows the GGUF v3 specification (ggml `docs/gguf.md`): a little-endian
//! header (`GGUF` magic, version 3, tensor count, metadata count), the metadata key/value
//! pairs, one tensor-info record per tensor (name, dimensions innermost first, GGML type
//! id, offset), zero padding to the alignment (32 bytes, recorded as
//! `general.alignment`), then each tensor's blocks, each padded to the alignment.
//!
//! Block layouts are GGML's:
//!
//! | type | id | block | bytes | layout |
//! |---|---|---|---|---|
//! | `Q8_0` | 8 | 32 | 34 | `d: f16`, then 32 × `i8`; value = `q · d` |
//! | `Q4_0` | 2 | 32 | 18 | `d: f16`, then 16 bytes; byte `j` holds element `j` in its low nibble and element `j + 16` in its high nibble, each stored as `q + 8`; value = `q · d` |
//! | `Q4_1` | 3 | 32 | 20 | `d: f16`, `m: f16`, then 16 bytes as Q4_0 holding `q ∈ [0, 15]` as is; value = `q · d + m` |
//! | `F16` | 1 | 1 | 2 | IEEE half |
//! | `F32` | 0 | 1 | 4 | IEEE single |
//! | `I8` / `I16` / `I32` / `I64` | 24 / 25 / 26 / 27 | 1 | 1 / 2 / 4 / 8 | little-endian signed integers |
//!
//! [`GgufTensor::quantize`] quantizes float tensors with llama.cpp's own reference rules,
//! so exported files are as accurate as llama.cpp's; [`GgufTensor::from_compressed`]
//! converts our `int8:32` / `int4:32` tensors without re-quantizing. Tensor names are at
//! most 63 bytes ([`GGML_MAX_NAME`]), F16 tensors must fit f16's range, and block scales
//! must be finite: anything a reader would refuse or decode to Inf is refused here.
//!
//! GGML blocks run along the innermost (last, row-major) dimension, so a quantized
//! tensor's last dimension must be a multiple of 32.
//!
//! ```
//! use candle_compress::io::gguf::{write_gguf, GgufTensor};
//! use candle_core::quantized::gguf_file;
//! use half::f16;
//!
//! // One Q8_0 row of 32 values: q = 0..32, scale 0.5.
//! let q: Vec<i8> = (0..32).collect();
//! let t = GgufTensor::q8_0("w", &[1, 32], &q, &[f16::from_f32(0.5)])?;
//! let mut bytes = std::io::Cursor::new(Vec::new());
//! write_gguf(&mut bytes, &[], &[t])?;
//! bytes.set_position(0);
//!
//! let content = gguf_file::Content::read(&mut bytes)?;
//! let qt = content.tensor(&mut bytes, "w", &candle_core::Device::Cpu)?;
//! let values = qt.dequantize(&candle_core::Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
//! assert_eq!(values[3], 1.5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::Tensor;
use half::f16;

use crate::compressor::Compressed;
use crate::error::{Error, Result};
use crate::input::{check_finite, with_f32_slice};
use crate::nn::{QuantLinear, WeightQuant};
use crate::scheme::CompressedTensor;

/// The GGUF version this writer produces.
pub const GGUF_VERSION: u32 = 3;

/// Alignment of the tensor data section and of every tensor in it, in bytes. GGUF's
/// default; written explicitly as the `general.alignment` metadata entry.
pub const GGUF_ALIGNMENT: usize = 32;

/// The maximum rank GGML supports (`GGML_MAX_DIMS`); readers refuse more.
pub const GGUF_MAX_DIMS: usize = 4;

/// Number of elements in one Q8_0 or Q4_0 block.
pub const QK: usize = 32;

/// llama.cpp's `GGML_MAX_NAME`: a tensor name lives in a 64-byte buffer with its
/// terminating NUL, so a name of 64 bytes or more makes llama.cpp refuse the whole file.
/// The writer accepts names of at most `GGML_MAX_NAME - 1` bytes.
pub const GGML_MAX_NAME: usize = 64;

const GGUF_MAGIC: u32 = 0x4655_4747; // "GGUF" read as a little-endian u32

/// The GGML tensor types this writer can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgufType {
    /// 32-bit floats.
    F32,
    /// 16-bit floats.
    F16,
    /// GGML Q4_0: blocks of 32 signed 4-bit values with one f16 scale (18 bytes).
    Q4_0,
    /// GGML Q4_1: blocks of 32 unsigned 4-bit values with an f16 scale and an f16
    /// minimum (20 bytes); written from asymmetric int4 layers
    /// ([`GgufTensor::from_quant_linear`]).
    Q4_1,
    /// GGML Q8_0: blocks of 32 `i8` values with one f16 scale (34 bytes).
    Q8_0,
    /// Signed 8-bit integers (GGML type 24).
    I8,
    /// Signed 16-bit integers (GGML type 25).
    I16,
    /// Signed 32-bit integers (GGML type 26).
    I32,
    /// Signed 64-bit integers (GGML type 27), e.g. position ids.
    I64,
}

impl GgufType {
    /// The GGML type id written in the tensor-info record.
    ///
    /// ```
    /// use candle_compress::io::gguf::GgufType;
    /// assert_eq!(GgufType::Q8_0.id(), 8);
    /// ```
    pub fn id(self) -> u32 {
        match self {
            GgufType::F32 => 0,
            GgufType::F16 => 1,
            GgufType::Q4_0 => 2,
            GgufType::Q4_1 => 3,
            GgufType::Q8_0 => 8,
            GgufType::I8 => 24,
            GgufType::I16 => 25,
            GgufType::I32 => 26,
            GgufType::I64 => 27,
        }
    }

    /// Elements per block (1 for the float types).
    ///
    /// ```
    /// use candle_compress::io::gguf::GgufType;
    /// assert_eq!(GgufType::Q4_0.block_size(), 32);
    /// ```
    pub fn block_size(self) -> usize {
        match self {
            GgufType::Q4_0 | GgufType::Q4_1 | GgufType::Q8_0 => QK,
            _ => 1,
        }
    }

    /// Bytes per block.
    ///
    /// ```
    /// use candle_compress::io::gguf::GgufType;
    /// assert_eq!(GgufType::Q8_0.type_size(), 34);
    /// ```
    pub fn type_size(self) -> usize {
        match self {
            GgufType::F32 => 4,
            GgufType::F16 => 2,
            GgufType::Q4_0 => 2 + QK / 2,
            GgufType::Q4_1 => 4 + QK / 2,
            GgufType::Q8_0 => 2 + QK,
            GgufType::I8 => 1,
            GgufType::I16 => 2,
            GgufType::I32 => 4,
            GgufType::I64 => 8,
        }
    }

    /// The matching candle type; `None` for the integer types, which candle 0.11's
    /// `gguf_file` reader does not know (it refuses a file holding one; llama.cpp reads
    /// them).
    ///
    /// ```
    /// use candle_compress::io::gguf::GgufType;
    /// use candle_core::quantized::GgmlDType;
    /// assert_eq!(GgufType::Q4_0.ggml_dtype(), Some(GgmlDType::Q4_0));
    /// assert_eq!(GgufType::I64.ggml_dtype(), None);
    /// ```
    pub fn ggml_dtype(self) -> Option<GgmlDType> {
        match self {
            GgufType::F32 => Some(GgmlDType::F32),
            GgufType::F16 => Some(GgmlDType::F16),
            GgufType::Q4_0 => Some(GgmlDType::Q4_0),
            GgufType::Q4_1 => Some(GgmlDType::Q4_1),
            GgufType::Q8_0 => Some(GgmlDType::Q8_0),
            _ => None,
        }
    }
}

/// One tensor ready to be written: its name, GGML type, row-major shape (candle order;
/// the writer reverses it into GGUF's innermost-first order) and encoded bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    name: String,
    ty: GgufType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl GgufTensor {
    /// Builds a Q8_0 tensor from `i8` values and one f16 scale per block of 32 consecutive
    /// row-major values — exactly the parts of a blockwise int8 tensor with block size 32
    /// (see [`crate::quant`]). Element `i` dequantizes to `q[i] · scales[i / 32]`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the shape is empty, has a zero dimension, rank > 4,
    /// or a last dimension that is not a multiple of 32, when `name` has
    /// [`GGML_MAX_NAME`] bytes or more, or when a scale is NaN or ±Inf (a block that
    /// would decode to NaN/Inf); [`Error::ShapeMismatch`] when `q` or `scales` has the
    /// wrong length.
    ///
    /// ```
    /// use candle_compress::io::gguf::GgufTensor;
    /// use half::f16;
    /// let t = GgufTensor::q8_0("w", &[2, 32], &[1i8; 64], &[f16::ONE, f16::ONE])?;
    /// assert_eq!(t.data().len(), 2 * 34);
    /// # Ok::<(), candle_compress::Error>(())
    /// ```
    pub fn q8_0(name: &str, shape: &[usize], q: &[i8], scales: &[f16]) -> Result<Self> {
        let blocks = check_quantized_shape(name, shape, q.len(), scales.len())?;
        check_scales(name, scales)?;
        let mut data = Vec::with_capacity(blocks * GgufType::Q8_0.type_size());
        for (block, d) in q.chunks_exact(QK).zip(scales) {
            data.extend_from_slice(&d.to_le_bytes());
            data.extend(block.iter().map(|&v| v as u8));
        }
        Ok(Self {
            name: name.to_string(),
            ty: GgufType::Q8_0,
            shape: shape.to_vec(),
            data,
        })
    }

    /// Builds a Q4_0 tensor from signed 4-bit values (one per `i8`, in `[-8, 7]`) and one
    /// f16 scale per block of 32 consecutive row-major values. Element `i` dequantizes to
    /// `q[i] · scales[i / 32]`. The nibbles are packed in GGML's order (element `j` low,
    /// element `j + 16` high, offset by 8).
    ///
    /// # Errors
    /// As [`GgufTensor::q8_0`], plus [`Error::InvalidArgument`] naming the first value
    /// outside `[-8, 7]`.
    ///
    /// ```
    /// use candle_compress::io::gguf::GgufTensor;
    /// use half::f16;
    /// let q: Vec<i8> = (0..32).map(|i| (i % 16) as i8 - 8).collect();
    /// let t = GgufTensor::q4_0("w", &[32], &q, &[f16::ONE])?;
    /// assert_eq!(t.data().len(), 18);
    /// assert!(GgufTensor::q4_0("w", &[32], &[9; 32], &[f16::ONE]).is_err());
    /// # Ok::<(), candle_compress::Error>(())
    /// ```
    pub fn q4_0(name: &str, shape: &[usize], q: &[i8], scales: &[f16]) -> Result<Self> {
        let blocks = check_quantized_shape(name, shape, q.len(), scales.len())?;
        check_scales(name, scales)?;
        if let Some(i) = q.iter().position(|v| !(-8..=7).contains(v)) {
            return Err(Error::invalid(
                "Q4_0 value",
                format!("{name}: element {i} is {}, outside [-8, 7]", q[i]),
            ));
        }
        let mut data = Vec::with_capacity(blocks * GgufType::Q4_0.type_size());
        for (block, d) in q.chunks_exact(QK).zip(scales) {
            data.extend_from_slice(&d.to_le_bytes());
            let (lo, hi) = block.split_at(QK / 2);
            data.extend(
                lo.iter()
                    .zip(hi)
                    .map(|(&l, &h)| ((l + 8) as u8) | (((h + 8) as u8) << 4)),
            );
        }
        Ok(Self {
            name: name.to_string(),
            ty: GgufType::Q4_0,
            shape: shape.to_vec(),
            data,
        })
    }

    /// Converts one of our compressed tensors without re-quantizing: an `int8:32`
    /// blockwise tensor becomes Q8_0 and an `int4:32` symmetric tensor (codes in
    /// `[-7, 7]`, f16 scales) becomes Q4_0; both dequantize to exactly the same values.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for other schemes or sizes (GGML blocks hold 32 values);
    /// the shape errors of [`GgufTensor::q8_0`].
    ///
    /// ```
    /// use candle_compress::io::gguf::{GgufTensor, GgufType};
    /// use candle_compress::scheme::Scheme;
    /// use candle_compress::Compressor;
    /// let t = candle_core::Tensor::randn(0f32, 1., (2, 64), &candle_core::Device::Cpu)?;
    /// let c = "int4:32".parse::<Scheme>()?.compress(&t)?;
    /// assert_eq!(GgufTensor::from_compressed("w", &c)?.ty(), GgufType::Q4_0);
    /// let c = "nf4:32".parse::<Scheme>()?.compress(&t)?;
    /// assert!(GgufTensor::from_compressed("w", &c).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_compressed(name: &str, value: &CompressedTensor) -> Result<Self> {
        let dims = value.shape().dims();
        match value {
            CompressedTensor::Int8(t) if t.block_size() == QK => {
                Self::q8_0(name, dims, t.codes(), t.scales())
            }
            CompressedTensor::Int4(t) if t.group_size() == QK => {
                Self::q4_0(name, dims, &t.codes(), t.scales())
            }
            other => Err(Error::Unsupported {
                what: "scheme for GGUF export",
                found: format!("{} ({name})", other.scheme()),
                supported: "int8:32 (Q8_0), int4:32 (Q4_0)".into(),
            }),
        }
    }

    /// Stores a float tensor (any float dtype, any layout) uncompressed as F32 or F16 —
    /// for norms, biases and embeddings that stay in float.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a `ty` other than F32 / F16, rank 0 or above 4, a
    /// name of [`GGML_MAX_NAME`] bytes or more, or (F16) a finite value beyond f16's
    /// range, which would be stored as Inf; [`Error::UnsupportedDType`] for integer
    /// tensors (see [`GgufTensor::integer`]); [`Error::NonFinite`] for NaN/Inf.
    ///
    /// ```
    /// use candle_compress::io::gguf::{GgufTensor, GgufType};
    /// let t = candle_core::Tensor::new(&[1f32, 2., 3.], &candle_core::Device::Cpu)?;
    /// let g = GgufTensor::float("norm", &t, GgufType::F16)?;
    /// assert_eq!(g.data().len(), 6);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn float(name: &str, tensor: &Tensor, ty: GgufType) -> Result<Self> {
        if !matches!(ty, GgufType::F32 | GgufType::F16) {
            return Err(Error::invalid(
                "GGUF float type",
                format!("{name}: expected F32 or F16, found {ty:?}"),
            ));
        }
        check_rank(name, tensor.dims())?;
        let data = with_f32_slice(tensor, "GgufTensor::float", |values| {
            check_finite(values, "GgufTensor::float")?;
            if ty == GgufType::F16 {
                if let Some(i) = values.iter().position(|&v| f16::from_f32(v).is_infinite()) {
                    return Err(Error::invalid(
                        "GGUF F16 tensor",
                        format!(
                            "{name}: element {i} is {:e}, beyond f16's range (±65504) \
                             and would be stored as Inf; store this tensor as F32",
                            values[i]
                        ),
                    ));
                }
            }
            Ok(match ty {
                GgufType::F16 => values
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect(),
                _ => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            })
        })?;
        Ok(Self {
            name: name.to_string(),
            ty,
            shape: tensor.dims().to_vec(),
            data,
        })
    }

    /// Quantizes a float tensor (any float dtype, any layout) to `ty` with llama.cpp's own
    /// reference rules (`quantize_row_q8_0_ref` / `quantize_row_q4_0_ref` of ggml), so the
    /// bytes are those llama.cpp and gguf-py would write for the same values:
    ///
    /// - Q8_0: per block of 32, `d = amax / 127`, `q = round_half_away(x / d)`.
    /// - Q4_0: per block of 32, `m` = the value of largest magnitude *with its sign* (the
    ///   first one on ties), `d = m / -8`, `q = min(15, trunc(x / d + 8.5))` stored as
    ///   the nibble `q` (value `(q - 8) · d`). The extreme value lands exactly on code
    ///   −8, and the full 16 levels are used, which is what gives Q4_0 its lower error
    ///   than a symmetric `amax / 7` rule.
    ///
    /// In both, `1 / d` is taken from the f32 `d` and `d` is stored as f16. F32 and F16
    /// `ty` store the values as [`GgufTensor::float`] does.
    ///
    /// # Errors
    /// As [`GgufTensor::float`] and [`GgufTensor::q8_0`]; [`Error::InvalidArgument`] for
    /// an integer `ty`, or a block whose scale `d` overflows f16 (|values| beyond about
    /// 8.3·10⁶ for Q8_0, 5.2·10⁵ for Q4_0), which would decode to Inf.
    ///
    /// ```
    /// use candle_compress::io::gguf::{GgufTensor, GgufType};
    /// use candle_core::quantized::{GgmlDType, QTensor};
    /// let t = candle_core::Tensor::randn(0f32, 1., (4, 64), &candle_core::Device::Cpu)?;
    /// let ours = GgufTensor::quantize("w", &t, GgufType::Q4_0)?;
    /// // candle implements the same ggml rule: identical bytes.
    /// assert_eq!(ours.data(), &QTensor::quantize(&t, GgmlDType::Q4_0)?.data()?[..]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn quantize(name: &str, tensor: &Tensor, ty: GgufType) -> Result<Self> {
        let block_fn: fn(&[f32], &mut Vec<u8>) -> std::result::Result<(), f32> = match ty {
            GgufType::F32 | GgufType::F16 => return Self::float(name, tensor, ty),
            GgufType::Q8_0 => quantize_block_q8_0,
            GgufType::Q4_0 => quantize_block_q4_0,
            other => {
                return Err(Error::invalid(
                    "GGUF quantization type",
                    format!(
                        "{name}: {other:?} is not quantized here (integer types: \
                         GgufTensor::integer; Q4_1: GgufTensor::from_quant_linear); \
                         expected F32, F16, Q8_0 or Q4_0"
                    ),
                ))
            }
        };
        let shape = tensor.dims().to_vec();
        let n = tensor.elem_count();
        check_quantized_shape(name, &shape, n, n / QK)?;
        let data = with_f32_slice(tensor, "GgufTensor::quantize", |x| {
            check_finite(x, "GgufTensor::quantize")?;
            let mut data = Vec::with_capacity(n / QK * ty.type_size());
            for (b, block) in x.chunks_exact(QK).enumerate() {
                block_fn(block, &mut data).map_err(|d| {
                    Error::invalid(
                        "GGUF block scale",
                        format!(
                            "{name}: block {b} needs the scale {d:e}, beyond f16's range \
                             (it would decode to Inf); store this tensor as F32"
                        ),
                    )
                })?;
            }
            Ok(data)
        })?;
        Ok(Self {
            name: name.to_string(),
            ty,
            shape,
            data,
        })
    }

    /// Converts one of our compressed tensors to the GGML type `ty` the caller asked
    /// for, without re-quantizing: `int8:32` only to Q8_0 and `int4:32` only to Q4_0.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when `ty` is not the tensor's own layout (e.g. Q8_0 asked for
    /// an `int4:32` tensor: writing it as Q4_0 instead would silently change the type,
    /// and re-quantizing would compound two roundings; decompress it and call
    /// [`GgufTensor::quantize`] to convert deliberately); as
    /// [`GgufTensor::from_compressed`] otherwise.
    ///
    /// ```
    /// use candle_compress::io::gguf::{GgufTensor, GgufType};
    /// use candle_compress::{scheme::Scheme, Compressor};
    /// let t = candle_core::Tensor::randn(0f32, 1., (2, 64), &candle_core::Device::Cpu)?;
    /// let c = "int4:32".parse::<Scheme>()?.compress(&t)?;
    /// assert!(GgufTensor::from_compressed_as("w", &c, GgufType::Q4_0).is_ok());
    /// assert!(GgufTensor::from_compressed_as("w", &c, GgufType::Q8_0).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_compressed_as(name: &str, value: &CompressedTensor, ty: GgufType) -> Result<Self> {
        let t = Self::from_compressed(name, value)?;
        if t.ty != ty {
            return Err(Error::Unsupported {
                what: "GGUF type for a compressed tensor",
                found: format!(
                    "{name} is {} (GGML {:?}), {ty:?} was asked for",
                    value.scheme(),
                    t.ty
                ),
                supported: "int8:32 as Q8_0, int4:32 as Q4_0; decompress and \
                            GgufTensor::quantize to convert"
                    .into(),
            });
        }
        Ok(t)
    }

    /// Builds a Q4_1 tensor from unsigned 4-bit values (one per `u8`, in `[0, 15]`) and,
    /// per block of 32 consecutive row-major values, an f16 scale `d` and an f16 minimum
    /// `m`: element `i` dequantizes to `q[i] · d[i / 32] + m[i / 32]`.
    ///
    /// # Errors
    /// As [`GgufTensor::q8_0`] (for `d` and `m` alike), plus [`Error::InvalidArgument`]
    /// naming the first value above 15.
    ///
    /// ```
    /// use candle_compress::io::gguf::GgufTensor;
    /// use half::f16;
    /// let q: Vec<u8> = (0..32).map(|i| (i % 16) as u8).collect();
    /// let t = GgufTensor::q4_1("w", &[32], &q, &[f16::ONE], &[f16::from_f32(-8.0)])?;
    /// assert_eq!(t.data().len(), 20);
    /// assert!(GgufTensor::q4_1("w", &[32], &[16; 32], &[f16::ONE], &[f16::ZERO]).is_err());
    /// # Ok::<(), candle_compress::Error>(())
    /// ```
    pub fn q4_1(name: &str, shape: &[usize], q: &[u8], d: &[f16], m: &[f16]) -> Result<Self> {
        let blocks = check_quantized_shape(name, shape, q.len(), d.len())?;
        if m.len() != d.len() {
            return Err(Error::shape(
                format!("{name} block minima"),
                d.len(),
                m.len(),
            ));
        }
        check_scales(name, d)?;
        check_scales(name, m)?;
        if let Some(i) = q.iter().position(|&v| v > 15) {
            return Err(Error::invalid(
                "Q4_1 value",
                format!("{name}: element {i} is {}, outside [0, 15]", q[i]),
            ));
        }
        let mut data = Vec::with_capacity(blocks * GgufType::Q4_1.type_size());
        for ((block, d), m) in q.chunks_exact(QK).zip(d).zip(m) {
            data.extend_from_slice(&d.to_le_bytes());
            data.extend_from_slice(&m.to_le_bytes());
            let (lo, hi) = block.split_at(QK / 2);
            data.extend(lo.iter().zip(hi).map(|(&l, &h)| l | (h << 4)));
        }
        Ok(Self {
            name: name.to_string(),
            ty: GgufType::Q4_1,
            shape: shape.to_vec(),
            data,
        })
    }

    /// The weight of an asymmetric int4 layer with groups of 32
    /// ([`QuantConfig::w4a8_asym`](crate::nn::QuantConfig::w4a8_asym)`(32)`) as a Q4_1
    /// tensor `[out, in]`, exactly: codes `c` become `q = c + 8`, scales `d`, offsets
    /// `m' = m + 8d` become minima `m = m' − 8d`, so the file dequantizes to the layer's
    /// [`QuantLinear::dequantized_weights`] and [`QuantLoader::from_gguf`] in that config
    /// gives back the same codes, scales and offsets. Only the weight is written (a bias
    /// goes in as [`GgufTensor::float`]).
    ///
    /// [`QuantLoader::from_gguf`]: crate::io::loader::QuantLoader::from_gguf
    ///
    /// # Errors
    /// [`Error::Unsupported`] for another config or a smoothed layer;
    /// [`Error::InvalidArgument`] when `in_features` is not a multiple of 32, or a scale or
    /// minimum is not exactly an f16 value, or `m + 8d` does not give back the offset
    /// (naming the first such group): a rounded value would change the weights. Layers
    /// loaded from a Q4_1 file always pass; round-to-nearest layers of this crate have f32
    /// scales and usually do not.
    ///
    /// ```
    /// use candle_compress::io::gguf::{GgufTensor, GgufType};
    /// use candle_compress::nn::{QuantConfig, QuantLinear, QuantLinearParts};
    /// let layer = QuantLinear::from_parts(QuantLinearParts {
    ///     out_features: 1,
    ///     in_features: 32,
    ///     weights: (0..32).map(|k| (k % 16) as i8 - 8).collect(),
    ///     scales: vec![0.5],
    ///     offsets: Some(vec![3.0]), // m = 3 - 8 * 0.5 = -1
    ///     bias: None,
    ///     smooth: None,
    ///     config: QuantConfig::w4a8_asym(32)?,
    /// })?;
    /// let t = GgufTensor::from_quant_linear("fc.weight", &layer)?;
    /// assert_eq!((t.ty(), t.data().len()), (GgufType::Q4_1, 20));
    /// # Ok::<(), candle_compress::Error>(())
    /// ```
    pub fn from_quant_linear(name: &str, layer: &QuantLinear) -> Result<Self> {
        let p = layer.to_parts();
        let offsets = match (p.config.weights(), &p.offsets, &p.smooth) {
            (WeightQuant::Int4GroupedAsym { group: 32 }, Some(m), None) => m,
            _ => {
                return Err(Error::Unsupported {
                    what: "QuantLinear for GGUF",
                    found: format!(
                        "{name}: {:?}{}",
                        p.config.weights(),
                        if p.smooth.is_some() {
                            " with smoothing"
                        } else {
                            ""
                        }
                    ),
                    supported: "asymmetric int4 groups of 32 without smoothing (as Q4_1)".into(),
                })
            }
        };
        if !p.in_features.is_multiple_of(QK) {
            return Err(Error::invalid(
                "GGUF Q4_1 export",
                format!(
                    "{name}: in_features {} is not a multiple of 32",
                    p.in_features
                ),
            ));
        }
        let mut d = Vec::with_capacity(p.scales.len());
        let mut m = Vec::with_capacity(p.scales.len());
        for (g, (&s, &off)) in p.scales.iter().zip(offsets).enumerate() {
            let dh = f16::from_f32(s);
            let mh = f16::from_f32(off - 8.0 * s);
            if dh.to_f32() != s || mh.to_f32() + 8.0 * dh.to_f32() != off {
                return Err(Error::invalid(
                    "GGUF Q4_1 export",
                    format!(
                        "{name}: group {g} (scale {s}, offset {off}) is not an f16 scale and \
                         minimum exactly; Q4_1 would change its weights"
                    ),
                ));
            }
            d.push(dh);
            m.push(mh);
        }
        let q: Vec<u8> = p.weights.iter().map(|&c| (c + 8) as u8).collect();
        Self::q4_1(name, &[p.out_features, p.in_features], &q, &d, &m)
    }

    /// Stores an integer tensor as the GGUF integer type that holds every value: I16 →
    /// I16, I32 → I32, I64 → I64 (e.g. position ids), U8 → I16 and U32 → I64 (GGUF has
    /// no unsigned tensor types). llama.cpp reads these types; candle 0.11's `gguf_file`
    /// reader refuses any file holding one.
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for float tensors; [`Error::InvalidArgument`] for rank 0
    /// or above 4, or a name of [`GGML_MAX_NAME`] bytes or more.
    ///
    /// ```
    /// use candle_compress::io::gguf::{GgufTensor, GgufType};
    /// let ids = candle_core::Tensor::arange(0i64, 8, &candle_core::Device::Cpu)?.reshape((1, 8))?;
    /// let g = GgufTensor::integer("position_ids", &ids)?;
    /// assert_eq!((g.ty(), g.data().len()), (GgufType::I64, 64));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn integer(name: &str, tensor: &Tensor) -> Result<Self> {
        use candle_core::DType;
        check_rank(name, tensor.dims())?;
        let flat = tensor.flatten_all()?;
        let (ty, data): (GgufType, Vec<u8>) = match tensor.dtype() {
            DType::U8 => (
                GgufType::I16,
                flat.to_vec1::<u8>()?
                    .iter()
                    .flat_map(|&v| i16::from(v).to_le_bytes())
                    .collect(),
            ),
            DType::I16 => (
                GgufType::I16,
                flat.to_vec1::<i16>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::I32 => (
                GgufType::I32,
                flat.to_vec1::<i32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            DType::U32 => (
                GgufType::I64,
                flat.to_vec1::<u32>()?
                    .iter()
                    .flat_map(|&v| i64::from(v).to_le_bytes())
                    .collect(),
            ),
            DType::I64 => (
                GgufType::I64,
                flat.to_vec1::<i64>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            other => {
                return Err(Error::UnsupportedDType {
                    op: "GgufTensor::integer",
                    expected: "U8, I16, I32, U32 or I64",
                    found: other,
                })
            }
        };
        Ok(Self {
            name: name.to_string(),
            ty,
            shape: tensor.dims().to_vec(),
            data,
        })
    }

    /// The tensor's name.
    ///
    /// ```
    /// # use candle_compress::io::gguf::GgufTensor;
    /// # let t = GgufTensor::q8_0("w", &[32], &[0; 32], &[half::f16::ZERO])?;
    /// assert_eq!(t.name(), "w");
    /// # Ok::<(), candle_compress::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The GGML type.
    ///
    /// ```
    /// # use candle_compress::io::gguf::{GgufTensor, GgufType};
    /// # let t = GgufTensor::q8_0("w", &[32], &[0; 32], &[half::f16::ZERO])?;
    /// assert_eq!(t.ty(), GgufType::Q8_0);
    /// # Ok::<(), candle_compress::Error>(())
    /// ```
    pub fn ty(&self) -> GgufType {
        self.ty
    }

    /// The row-major shape (candle's order).
    ///
    /// ```
    /// # use candle_compress::io::gguf::GgufTensor;
    /// # let t = GgufTensor::q8_0("w", &[1, 32], &[0; 32], &[half::f16::ZERO])?;
    /// assert_eq!(t.shape(), &[1, 32]);
    /// # Ok::<(), candle_compress::Error>(())
    /// ```
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The encoded bytes, exactly as they are written to the file (without padding).
    ///
    /// ```
    /// # use candle_compress::io::gguf::GgufTensor;
    /// # let t = GgufTensor::q8_0("w", &[32], &[0; 32], &[half::f16::ONE])?;
    /// assert_eq!(&t.data()[..2], &half::f16::ONE.to_le_bytes());
    /// # Ok::<(), candle_compress::Error>(())
    /// ```
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.len() >= GGML_MAX_NAME {
        return Err(Error::invalid(
            "GGUF tensor name",
            format!(
                "{name:?} is {} bytes; llama.cpp (GGML_MAX_NAME = {GGML_MAX_NAME}) refuses \
                 a file holding a name of {GGML_MAX_NAME} bytes or more: rename the tensor",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// Refuses NaN / ±Inf block scales: such a block decodes to NaN or Inf.
fn check_scales(name: &str, scales: &[f16]) -> Result<()> {
    match scales.iter().position(|d| !d.is_finite()) {
        Some(i) => Err(Error::invalid(
            "GGUF block scale",
            format!("{name}: block {i} has the scale {}", scales[i]),
        )),
        None => Ok(()),
    }
}

/// One Q8_0 block (ggml's `quantize_row_q8_0_ref`), appended to `out`; `Err(d)` when the
/// scale overflows f16.
fn quantize_block_q8_0(x: &[f32], out: &mut Vec<u8>) -> std::result::Result<(), f32> {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let dh = f16::from_f32(d);
    if dh.is_infinite() {
        return Err(d);
    }
    out.extend_from_slice(&dh.to_le_bytes());
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
    Ok(())
}

/// One Q4_0 block (ggml's `quantize_row_q4_0_ref`), appended to `out`; `Err(d)` when the
/// scale overflows f16.
fn quantize_block_q4_0(x: &[f32], out: &mut Vec<u8>) -> std::result::Result<(), f32> {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let dh = f16::from_f32(d);
    if dh.is_infinite() {
        return Err(d);
    }
    out.extend_from_slice(&dh.to_le_bytes());
    let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
    let (lo, hi) = x.split_at(QK / 2);
    out.extend(lo.iter().zip(hi).map(|(&l, &h)| code(l) | (code(h) << 4)));
    Ok(())
}

fn check_rank(name: &str, shape: &[usize]) -> Result<()> {
    check_name(name)?;
    if shape.is_empty() || shape.len() > GGUF_MAX_DIMS {
        return Err(Error::invalid(
            "GGUF tensor shape",
            format!("{name}: rank must be 1..={GGUF_MAX_DIMS}, found shape {shape:?}"),
        ));
    }
    if shape.contains(&0) {
        return Err(Error::invalid(
            "GGUF tensor shape",
            format!("{name}: zero-sized dimension in {shape:?}"),
        ));
    }
    Ok(())
}

/// Checks a quantized tensor's shape and part lengths; returns the number of blocks.
fn check_quantized_shape(
    name: &str,
    shape: &[usize],
    values: usize,
    scales: usize,
) -> Result<usize> {
    check_rank(name, shape)?;
    let last = shape[shape.len() - 1];
    if !last.is_multiple_of(QK) {
        return Err(Error::invalid(
            "GGUF tensor shape",
            format!("{name}: last dimension {last} is not a multiple of the block size {QK}"),
        ));
    }
    let elems = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| {
            Error::invalid(
                "GGUF tensor shape",
                format!("{name}: element count of {shape:?} overflows"),
            )
        })?;
    if values != elems {
        return Err(Error::shape(format!("{name} values"), elems, values));
    }
    let blocks = elems / QK;
    if scales != blocks {
        return Err(Error::shape(format!("{name} block scales"), blocks, scales));
    }
    Ok(blocks)
}

fn padding(len: usize) -> usize {
    len.next_multiple_of(GGUF_ALIGNMENT) - len
}

fn write_string<W: Write>(w: &mut W, s: &str) -> Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())?;
    Ok(())
}

fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn write_value<W: Write>(w: &mut W, key: &str, v: &Value) -> Result<()> {
    match v {
        Value::U8(x) => w.write_all(&x.to_le_bytes())?,
        Value::I8(x) => w.write_all(&x.to_le_bytes())?,
        Value::U16(x) => w.write_all(&x.to_le_bytes())?,
        Value::I16(x) => w.write_all(&x.to_le_bytes())?,
        Value::U32(x) => w.write_all(&x.to_le_bytes())?,
        Value::I32(x) => w.write_all(&x.to_le_bytes())?,
        Value::U64(x) => w.write_all(&x.to_le_bytes())?,
        Value::I64(x) => w.write_all(&x.to_le_bytes())?,
        Value::F32(x) => w.write_all(&x.to_le_bytes())?,
        Value::F64(x) => w.write_all(&x.to_le_bytes())?,
        Value::Bool(x) => w.write_all(&[u8::from(*x)])?,
        Value::String(s) => write_string(w, s)?,
        Value::Array(items) => {
            let ty = items
                .first()
                .map_or(value_type_id(&Value::U32(0)), value_type_id);
            if items.iter().any(|it| value_type_id(it) != ty) {
                return Err(Error::invalid(
                    "GGUF metadata",
                    format!("{key}: array elements must all have one type"),
                ));
            }
            w.write_all(&ty.to_le_bytes())?;
            w.write_all(&(items.len() as u64).to_le_bytes())?;
            for it in items {
                write_value(w, key, it)?;
            }
        }
    }
    Ok(())
}

/// Writes a GGUF v3 file to `w`: the metadata entries (plus `general.alignment`, which
/// the writer adds itself) and the tensors, in the order given.
///
/// # Errors
/// [`Error::InvalidArgument`] for duplicate tensor or metadata names, a tensor name of
/// [`GGML_MAX_NAME`] bytes or more, a user-supplied
/// `general.alignment`, or a metadata array mixing value types; I/O errors from `w`.
///
/// ```
/// use candle_compress::io::gguf::{write_gguf, GgufTensor};
/// use candle_core::quantized::gguf_file::{Content, Value};
/// let t = GgufTensor::q8_0("w", &[32], &[3; 32], &[half::f16::ONE])?;
/// let meta = [("general.name".to_string(), Value::String("demo".into()))];
/// let mut buf = std::io::Cursor::new(Vec::new());
/// write_gguf(&mut buf, &meta, &[t])?;
/// buf.set_position(0);
/// let content = Content::read(&mut buf)?;
/// assert_eq!(content.metadata["general.name"].to_string()?, "demo");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_gguf<W: Write>(
    w: &mut W,
    metadata: &[(String, Value)],
    tensors: &[GgufTensor],
) -> Result<()> {
    let mut keys = HashSet::new();
    for (k, _) in metadata {
        if k == "general.alignment" {
            return Err(Error::invalid(
                "GGUF metadata",
                "general.alignment is written by the writer (32)",
            ));
        }
        if !keys.insert(k.as_str()) {
            return Err(Error::invalid(
                "GGUF metadata",
                format!("duplicate key {k}"),
            ));
        }
    }
    let mut names = HashSet::new();
    for t in tensors {
        check_name(&t.name)?;
        if !names.insert(t.name.as_str()) {
            return Err(Error::invalid(
                "GGUF tensor name",
                format!("duplicate tensor {}", t.name),
            ));
        }
    }

    // Header, metadata and tensor infos go through a buffer so the padding before the
    // data section can be computed from its length.
    let mut head = Vec::new();
    head.extend_from_slice(&GGUF_MAGIC.to_le_bytes());
    head.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    head.extend_from_slice(&(metadata.len() as u64 + 1).to_le_bytes());
    let alignment = ("general.alignment", Value::U32(GGUF_ALIGNMENT as u32));
    for (k, v) in std::iter::once((alignment.0, &alignment.1))
        .chain(metadata.iter().map(|(k, v)| (k.as_str(), v)))
    {
        write_string(&mut head, k)?;
        head.extend_from_slice(&value_type_id(v).to_le_bytes());
        write_value(&mut head, k, v)?;
    }
    let mut offset = 0usize;
    for t in tensors {
        write_string(&mut head, &t.name)?;
        head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &d in t.shape.iter().rev() {
            head.extend_from_slice(&(d as u64).to_le_bytes());
        }
        head.extend_from_slice(&t.ty.id().to_le_bytes());
        head.extend_from_slice(&(offset as u64).to_le_bytes());
        offset += t.data.len() + padding(t.data.len());
    }
    head.resize(head.len() + padding(head.len()), 0);
    w.write_all(&head)?;
    let zeros = [0u8; GGUF_ALIGNMENT];
    for t in tensors {
        w.write_all(&t.data)?;
        w.write_all(&zeros[..padding(t.data.len())])?;
    }
    w.flush()?;
    Ok(())
}

/// Writes a GGUF file at `path` through a temporary file in the same directory that is
/// renamed into place, so a failure never leaves a partial file under `path`.
///
/// # Errors
/// As [`write_gguf`], plus I/O errors creating, writing or renaming the file.
///
/// ```
/// use candle_compress::io::gguf::{save_gguf, GgufTensor};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("model.gguf");
/// let t = GgufTensor::q8_0("w", &[32], &[1; 32], &[half::f16::ONE])?;
/// save_gguf(&path, &[], &[t])?;
/// assert!(path.exists());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn save_gguf(
    path: impl AsRef<Path>,
    metadata: &[(String, Value)],
    tensors: &[GgufTensor],
) -> Result<()> {
    super::write_atomically(path.as_ref(), |file| {
        let mut w = std::io::BufWriter::new(file);
        write_gguf(&mut w, metadata, tensors)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;
    use candle_core::Device;

    fn read_back(tensors: &[GgufTensor]) -> Result<(Content, std::io::Cursor<Vec<u8>>)> {
        let mut buf = std::io::Cursor::new(Vec::new());
        write_gguf(&mut buf, &[], tensors)?;
        buf.set_position(0);
        let content = Content::read(&mut buf)?;
        Ok((content, buf))
    }

    #[test]
    fn q4_0_nibble_order_matches_ggml() -> Result<()> {
        let q: Vec<i8> = (0..64).map(|i| ((i * 7) % 16) as i8 - 8).collect();
        let d = [f16::from_f32(0.25), f16::from_f32(-2.0)];
        let t = GgufTensor::q4_0("w", &[2, 32], &q, &d)?;
        let (content, mut buf) = read_back(&[t])?;
        let qt = content.tensor(&mut buf, "w", &Device::Cpu)?;
        assert_eq!(qt.shape().dims(), &[2, 32]);
        let got = qt
            .dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let want: Vec<f32> = q
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f32 * d[i / 32].to_f32())
            .collect();
        assert_eq!(got, want);
        Ok(())
    }

    #[test]
    fn float_tensors_and_metadata_round_trip() -> Result<()> {
        let t = Tensor::new(&[[1f32, -2.5], [3., 4.]], &Device::Cpu)?;
        let a = GgufTensor::float("a", &t, GgufType::F32)?;
        let b = GgufTensor::float("b", &t, GgufType::F16)?;
        let meta = vec![
            ("general.name".to_string(), Value::String("x".into())),
            (
                "list".to_string(),
                Value::Array(vec![Value::U32(1), Value::U32(2)]),
            ),
        ];
        let mut buf = std::io::Cursor::new(Vec::new());
        write_gguf(&mut buf, &meta, &[a, b])?;
        buf.set_position(0);
        let content = Content::read(&mut buf)?;
        assert_eq!(content.metadata["general.alignment"].to_u32()?, 32);
        assert_eq!(content.metadata["list"].to_vec()?.len(), 2);
        for name in ["a", "b"] {
            let qt = content.tensor(&mut buf, name, &Device::Cpu)?;
            let v = qt.dequantize(&Device::Cpu)?.to_vec2::<f32>()?;
            assert_eq!(v, vec![vec![1., -2.5], vec![3., 4.]]);
        }
        Ok(())
    }

    #[test]
    fn refuses_bad_shapes_and_duplicates() {
        let d = [f16::ONE];
        assert!(GgufTensor::q8_0("w", &[33], &[0; 33], &d).is_err());
        assert!(GgufTensor::q8_0("w", &[], &[], &[]).is_err());
        assert!(GgufTensor::q8_0("w", &[1, 1, 1, 1, 32], &[0; 32], &d).is_err());
        assert!(GgufTensor::q8_0("w", &[32], &[0; 31], &d).is_err());
        assert!(GgufTensor::q8_0("w", &[32], &[0; 32], &[]).is_err());
        let t = GgufTensor::q8_0("w", &[32], &[0; 32], &d).unwrap();
        let mut buf = Vec::new();
        assert!(write_gguf(&mut buf, &[], &[t.clone(), t]).is_err());
        let meta = [("general.alignment".to_string(), Value::U32(64))];
        assert!(write_gguf(&mut buf, &meta, &[]).is_err());
        let mixed = [(
            "m".to_string(),
            Value::Array(vec![Value::U32(1), Value::I32(1)]),
        )];
        assert!(write_gguf(&mut buf, &mixed, &[]).is_err());
    }
}
