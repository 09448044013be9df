//! [`ActivationCodec`]: self-describing wire formats for activations.
//!
//! # Wire format (version 1, every integer little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `b"CCAC"` ([`MAGIC`]) |
//! | 4 | 1 | version ([`VERSION`]) |
//! | 5 | 1 | codec id: 0 None, 1 F16, 2 BF16, 3 Int8PerRow, 4 SparseColumns, 5 SparseColumnsF16 |
//! | 6 | 1 | original dtype: 0 F32, 1 F16, 2 BF16, 3 F64 |
//! | 7 | 1 | rank `r` (at most [`MAX_RANK`]) |
//! | 8 | 8·r | dims, u64 each |
//! | 8+8r | 4 | sparse codecs only: `k`, the number of kept columns (u32) |
//!
//! The payload follows. The tensor is viewed as `[rows, cols]` with `cols` the last
//! dimension and `rows` the product of the others (a scalar is `[1, 1]`):
//!
//! - `None`: every element in the original dtype (4, 2, 2 or 8 bytes).
//! - `F16` / `BF16`: every element as IEEE binary16 / bfloat16 bits (2 bytes).
//! - `Int8PerRow`: `rows` f32 scales, then `rows·cols` int8 values in `[-127, 127]`.
//! - `SparseColumns`: `k` column indices (u32, strictly increasing, `< cols`), then the
//!   kept values row-major as `[rows, k]` f32.
//! - `SparseColumnsF16`: the same with f16 values.
//!
//! The payload must fill the buffer exactly: a short buffer is [`Error::Truncated`],
//! extra bytes are [`Error::Corrupt`].

use candle_core::{DType, Device, Shape, Tensor};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::{check_finite, with_f32_slice};
use crate::kernels::halfconv;

/// The four bytes every encoded activation starts with ("candle-compress activation codec").
pub const MAGIC: [u8; 4] = *b"CCAC";

/// The wire-format version this build writes and reads.
pub const VERSION: u8 = 1;

/// The largest rank encode and decode accept. Activations passed between pipeline stages
/// are `[batch, seq, hidden]`-like (rank ≤ 4 in practice); 8 leaves room while keeping a
/// forged header from describing thousands of dimensions.
pub const MAX_RANK: usize = 8;

/// The largest element count [`ActivationCodec::decode`] accepts: 2^26 elements (256 MiB
/// as f32, 512 MiB as F64; e.g. `[8, 2048, 4096]`).
///
/// The sparse codecs expand a small payload into a dense `[rows, cols]` tensor, so without
/// a cap a 40-byte forged header could make the receiver allocate terabytes; the cap
/// bounds what any input can make `decode` allocate. The sender is not limited: a receiver
/// that expects larger messages raises the bound with
/// [`ActivationCodec::decode_with_limit`].
pub const MAX_ELEMENTS: usize = 1 << 26;

/// Bytes of the fixed part of the header (magic, version, codec, dtype, rank).
pub const FIXED_HEADER_LEN: usize = 8;

/// Elements per chunk of the bf16 loops (the non-finite flag is tested once per chunk).
const CHUNK: usize = 512;

const F16_EXP_MASK: u16 = 0x7c00;
const BF16_EXP_MASK: u16 = 0x7f80;
const F32_EXP_MASK: u32 = 0x7f80_0000;

/// A wire format for activations sent between pipeline stages.
///
/// Every format writes the same self-describing header (see the [module docs](self)), so
/// [`ActivationCodec::decode`] needs nothing but the bytes and returns a tensor of the
/// original shape and dtype.
///
/// Inputs are float tensors (F32, F16, BF16, F64) of rank at most [`MAX_RANK`], of any
/// layout. NaN/±Inf is refused with
/// [`Error::NonFinite`]; a finite value outside the range of F16 (±65504) or BF16 is refused
/// by those codecs with [`Error::InvalidArgument`] naming its flat index, rather than
/// silently becoming infinity.
///
/// ```
/// use candle_compress::codec::ActivationCodec;
/// use candle_core::{Device, Tensor};
///
/// let x = Tensor::new(&[[1.0f32, -2.0, 0.5], [4.0, 0.25, -8.0]], &Device::Cpu)?;
/// let bytes = ActivationCodec::F16.encode(&x)?;
/// assert_eq!(bytes.len(), 8 + 2 * 8 + 6 * 2); // header + dims + payload
/// let y = ActivationCodec::decode(&bytes, &Device::Cpu)?;
/// assert_eq!(y.to_vec2::<f32>()?, x.to_vec2::<f32>()?); // these values are exact in f16
///
/// // Keep the two columns with the largest L2 norm (norms² 17, 4.06, 64.25); the other
/// // one decodes as zeros.
/// let bytes = ActivationCodec::SparseColumns { keep: 2 }.encode(&x)?;
/// let y = ActivationCodec::decode(&bytes, &Device::Cpu)?;
/// assert_eq!(y.to_vec2::<f32>()?, [[1.0, 0.0, 0.5], [4.0, 0.0, -8.0]]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActivationCodec {
    /// No compression: the values in the tensor's own dtype (lossless).
    None,
    /// IEEE binary16, round to nearest even (half the bytes of f32). Uses F16C at run time
    /// where the CPU has it (through the `half` crate's slice conversions).
    F16,
    /// bfloat16, round to nearest even: f32's range, 8 bits of mantissa.
    BF16,
    /// Symmetric int8 per row (per token): `scale = amax / 127`,
    /// `q = round_half_away(x / scale)` clamped to `[-127, 127]`; an all-zero row has scale
    /// 0 and decodes to exact zeros. Error per element ≤ `scale / 2` (plus f32 rounding).
    Int8PerRow,
    /// Keep the `keep` columns (last dimension) with the largest L2 norm, exactly, and
    /// store their indices and f32 values; the other columns decode as zeros.
    ///
    /// Ties: columns are ranked by squared norm (accumulated in f64 in row order),
    /// descending, and among equal norms the **lower column index wins**. When
    /// `keep >= cols` every column is kept. `keep` must be at least 1.
    SparseColumns {
        /// Number of columns to keep.
        keep: usize,
    },
    /// [`ActivationCodec::SparseColumns`] with the kept values stored as f16.
    SparseColumnsF16 {
        /// Number of columns to keep.
        keep: usize,
    },
}

/// What an encoded activation's header says, as returned by [`ActivationCodec::read_header`].
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationHeader {
    /// The codec; for the sparse codecs `keep` is the number of columns actually stored
    /// (`min(keep, cols)` of the encoder's setting).
    pub codec: ActivationCodec,
    /// The dtype of the original tensor; decode returns this dtype.
    pub dtype: DType,
    /// The shape of the original tensor.
    pub shape: Shape,
    /// Bytes of the header, including the sparse codecs' `k`.
    pub header_len: usize,
    /// Bytes of the payload (the buffer's length is exactly `header_len + payload_len`).
    pub payload_len: usize,
}

impl std::fmt::Display for ActivationCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ActivationCodec::None => f.write_str("none"),
            ActivationCodec::F16 => f.write_str("f16"),
            ActivationCodec::BF16 => f.write_str("bf16"),
            ActivationCodec::Int8PerRow => f.write_str("int8-per-row"),
            ActivationCodec::SparseColumns { keep } => write!(f, "sparse-columns(keep={keep})"),
            ActivationCodec::SparseColumnsF16 { keep } => {
                write!(f, "sparse-columns-f16(keep={keep})")
            }
        }
    }
}

/// `[rows, cols]` view of a shape: `cols` is the last dimension, `rows` the product of the
/// others; a scalar is `[1, 1]`. Only called on shapes whose element count is known to fit.
fn rows_cols(dims: &[usize]) -> (usize, usize) {
    match dims.split_last() {
        None => (1, 1),
        Some((&cols, lead)) => (lead.iter().product(), cols),
    }
}

fn dtype_id(dtype: DType) -> Result<u8> {
    match dtype {
        DType::F32 => Ok(0),
        DType::F16 => Ok(1),
        DType::BF16 => Ok(2),
        DType::F64 => Ok(3),
        found => Err(Error::UnsupportedDType {
            op: "ActivationCodec::encode",
            expected: crate::input::FLOAT_DTYPES,
            found,
        }),
    }
}

fn dtype_from_id(id: u8) -> Result<DType> {
    match id {
        0 => Ok(DType::F32),
        1 => Ok(DType::F16),
        2 => Ok(DType::BF16),
        3 => Ok(DType::F64),
        found => Err(Error::Unsupported {
            what: "activation dtype id",
            found: found.to_string(),
            supported: "0 (F32), 1 (F16), 2 (BF16), 3 (F64)".into(),
        }),
    }
}

impl ActivationCodec {
    /// The codec's id byte in the header.
    #[must_use]
    pub fn id(&self) -> u8 {
        match self {
            ActivationCodec::None => 0,
            ActivationCodec::F16 => 1,
            ActivationCodec::BF16 => 2,
            ActivationCodec::Int8PerRow => 3,
            ActivationCodec::SparseColumns { .. } => 4,
            ActivationCodec::SparseColumnsF16 { .. } => 5,
        }
    }

    fn check_keep(&self) -> Result<Option<usize>> {
        match *self {
            ActivationCodec::SparseColumns { keep }
            | ActivationCodec::SparseColumnsF16 { keep } => {
                if keep == 0 {
                    Err(Error::invalid(
                        "keep",
                        "the sparse-columns codecs keep at least 1 column, found 0",
                    ))
                } else {
                    Ok(Some(keep))
                }
            }
            _ => Ok(None),
        }
    }

    /// The exact number of bytes [`ActivationCodec::encode`] writes for a tensor of
    /// `shape` and `dtype`, without encoding.
    ///
    /// # Errors
    /// The same shape, dtype and parameter errors as `encode`.
    pub fn encoded_len(&self, shape: &Shape, dtype: DType) -> Result<usize> {
        dtype_id(dtype)?;
        let keep = self.check_keep()?;
        check_encodable_shape(shape.dims())?;
        let (rows, cols) = rows_cols(shape.dims());
        let n = crate::input::checked_elem_count(shape, "ActivationCodec::encoded_len")?;
        let header = FIXED_HEADER_LEN + 8 * shape.rank() + if keep.is_some() { 4 } else { 0 };
        // `rows` and `n` fit (checked above); the byte counts are checked here.
        let payload = match self {
            ActivationCodec::None => n.checked_mul(dtype.size_in_bytes()),
            ActivationCodec::F16 | ActivationCodec::BF16 => n.checked_mul(2),
            ActivationCodec::Int8PerRow => rows.checked_mul(4).and_then(|r| r.checked_add(n)),
            ActivationCodec::SparseColumns { keep } => {
                let k = (*keep).min(cols);
                rows.checked_add(1)
                    .and_then(|r| r.checked_mul(k))
                    .and_then(|v| v.checked_mul(4))
            }
            ActivationCodec::SparseColumnsF16 { keep } => {
                let k = (*keep).min(cols);
                rows.checked_mul(k)
                    .and_then(|v| v.checked_mul(2))
                    .and_then(|v| v.checked_add(4 * k))
            }
        };
        payload
            .and_then(|p| p.checked_add(header))
            .ok_or_else(|| crate::input::size_overflow("ActivationCodec::encoded_len", shape))
    }

    /// Encodes `tensor` into a self-describing byte buffer (header + payload, see the
    /// [module docs](self)).
    ///
    /// # Errors
    /// - [`Error::UnsupportedDType`] for non-float tensors;
    /// - [`Error::InvalidArgument`] for rank > [`MAX_RANK`], `keep == 0`, more than `u32::MAX` columns for the sparse codecs, and a
    ///   finite value out of the F16/BF16 range (naming its flat index);
    /// - [`Error::NonFinite`] for NaN/±Inf, naming the first flat index.
    pub fn encode(&self, tensor: &Tensor) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.encode_into(tensor, &mut out)?;
        Ok(out)
    }

    /// [`ActivationCodec::encode`] into a caller-owned buffer, which is cleared first and
    /// keeps its capacity: a sender that encodes one activation after another reuses one
    /// allocation (fresh multi-megabyte allocations cost page faults). On error `out` holds
    /// unspecified bytes.
    ///
    /// # Errors
    /// As [`ActivationCodec::encode`].
    pub fn encode_into(&self, tensor: &Tensor, out: &mut Vec<u8>) -> Result<()> {
        const OP: &str = "ActivationCodec::encode";
        let dtype = tensor.dtype();
        let total = self.encoded_len(tensor.shape(), dtype)?;
        let dims = tensor.dims();
        let (rows, cols) = rows_cols(dims);
        out.clear();
        out.reserve(total);
        // A fresh multi-megabyte buffer costs a page fault per 4 KiB on first touch.
        crate::kernels::hugepage::advise(out.spare_capacity_mut());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(self.id());
        out.push(dtype_id(dtype)?);
        // `check_encodable_shape` (via `encoded_len`) bounded the rank by MAX_RANK.
        out.push(dims.len() as u8);
        for &d in dims {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        match *self {
            ActivationCodec::None => encode_raw(tensor, out)?,
            ActivationCodec::F16 => with_f32_slice(tensor, OP, |x| {
                let start = out.len();
                out.resize(start + 2 * x.len(), 0);
                f32_to_f16_bytes(x, &mut out[start..])
            })?,
            ActivationCodec::BF16 => with_f32_slice(tensor, OP, |x| {
                let start = out.len();
                out.resize(start + 2 * x.len(), 0);
                f32_to_bf16_bytes(x, &mut out[start..])
            })?,
            ActivationCodec::Int8PerRow => {
                with_f32_slice(tensor, OP, |x| encode_int8_rows(x, rows, cols, out))?
            }
            ActivationCodec::SparseColumns { keep }
            | ActivationCodec::SparseColumnsF16 { keep } => {
                let half = matches!(self, ActivationCodec::SparseColumnsF16 { .. });
                with_f32_slice(tensor, OP, |x| {
                    encode_sparse(x, rows, cols, keep.min(cols), half, out)
                })?
            }
        }
        debug_assert_eq!(out.len(), total);
        Ok(())
    }

    /// Reads and validates the header of an encoded activation: magic, version, codec,
    /// dtype, rank, dims, the sparse codecs' `k`, and that the buffer holds exactly the
    /// payload those fields imply. Does not read the payload (and allocates only the dims),
    /// so it applies no element cap.
    ///
    /// # Errors
    /// See [`ActivationCodec::decode`].
    pub fn read_header(bytes: &[u8]) -> Result<ActivationHeader> {
        read_header(bytes, usize::MAX)
    }

    /// Decodes bytes written by [`ActivationCodec::encode`] into a tensor on `device` with
    /// the original shape and dtype.
    ///
    /// Everything is validated, and no input makes it panic or read out of bounds:
    ///
    /// # Errors
    /// - [`Error::Truncated`]: the buffer ends inside the header or the payload;
    /// - [`Error::Unsupported`]: unknown version, codec id or dtype id; rank above
    ///   [`MAX_RANK`]; element count above [`MAX_ELEMENTS`];
    /// - [`Error::Corrupt`]: wrong magic, trailing bytes, an element count that overflows,
    ///   a dimension that does not fit `usize`, a sparse `k` above the column count (or 0
    ///   with columns present), column indices out of range or not strictly increasing,
    ///   NaN/Inf values or scales, negative scales, the int8 value -128 (never written).
    pub fn decode(bytes: &[u8], device: &Device) -> Result<Tensor> {
        Self::decode_with_limit(bytes, device, MAX_ELEMENTS)
    }

    /// [`ActivationCodec::decode`] with a caller-chosen element cap instead of
    /// [`MAX_ELEMENTS`] (tighter, or looser for a receiver that expects big messages from
    /// a trusted sender). Messages describing more elements fail with
    /// [`Error::Unsupported`] before anything is allocated.
    ///
    /// # Errors
    /// As [`ActivationCodec::decode`].
    pub fn decode_with_limit(bytes: &[u8], device: &Device, max_elements: usize) -> Result<Tensor> {
        let header = read_header(bytes, max_elements)?;
        let payload = &bytes[header.header_len..];
        let (rows, cols) = rows_cols(header.shape.dims());
        let dtype = header.dtype;
        let shape = header.shape;
        let values = match header.codec {
            ActivationCodec::None => decode_raw(payload, dtype)?,
            ActivationCodec::F16 => {
                if dtype == DType::F16 {
                    Values::F16(f16_from_bytes(payload)?)
                } else {
                    let mut out = vec![0f32; shape.elem_count()];
                    crate::kernels::hugepage::advise(&mut out);
                    f16_bytes_to_f32(payload, &mut out)?;
                    Values::F32(out)
                }
            }
            ActivationCodec::BF16 => {
                if dtype == DType::BF16 {
                    Values::BF16(bf16_from_bytes(payload)?)
                } else {
                    let mut out = vec![0f32; shape.elem_count()];
                    crate::kernels::hugepage::advise(&mut out);
                    bf16_bytes_to_f32(payload, &mut out)?;
                    Values::F32(out)
                }
            }
            ActivationCodec::Int8PerRow => Values::F32(decode_int8_rows(payload, rows, cols)?),
            ActivationCodec::SparseColumns { keep } => {
                Values::F32(decode_sparse(payload, rows, cols, keep, false)?)
            }
            ActivationCodec::SparseColumnsF16 { keep } => {
                Values::F32(decode_sparse(payload, rows, cols, keep, true)?)
            }
        };
        values.into_tensor(shape, dtype, device)
    }
}

/// Decoded values in whatever type the payload gave most cheaply.
enum Values {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F64(Vec<f64>),
}

impl Values {
    fn into_tensor(self, shape: Shape, dtype: DType, device: &Device) -> Result<Tensor> {
        let t = match self {
            Values::F32(v) => {
                // A header may name a narrower dtype than the payload's values fit (a
                // forged F16 dtype on f32 values): refuse rather than produce infinities.
                let fits: Option<fn(f32) -> bool> = match dtype {
                    DType::F16 => Some(|x| f16::from_f32(x).is_finite()),
                    DType::BF16 => Some(|x| bf16_bits(x) & BF16_EXP_MASK != BF16_EXP_MASK),
                    _ => None,
                };
                if let Some(fits) = fits {
                    if let Some(i) = v.iter().position(|&x| !fits(x)) {
                        return Err(corrupt(format!(
                            "value {} at element {i} overflows the header's dtype {dtype:?}",
                            v[i]
                        )));
                    }
                }
                Tensor::from_vec(v, shape, device)?
            }
            Values::F16(v) => Tensor::from_vec(v, shape, device)?,
            Values::BF16(v) => Tensor::from_vec(v, shape, device)?,
            Values::F64(v) => Tensor::from_vec(v, shape, device)?,
        };
        Ok(if t.dtype() == dtype {
            t
        } else {
            t.to_dtype(dtype)?
        })
    }
}

fn check_encodable_shape(dims: &[usize]) -> Result<()> {
    if dims.len() > MAX_RANK {
        return Err(Error::invalid(
            "tensor",
            format!(
                "activation codecs accept rank at most {MAX_RANK}, found rank {}",
                dims.len()
            ),
        ));
    }
    // As in the decoder: the product of the non-zero dims must fit, so `rows` (a product
    // of leading dims) and the element count cannot overflow.
    dims.iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| crate::input::size_overflow("activation codec", dims))?;
    Ok(())
}

/// A bounds-checked cursor over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let truncated = || Error::Truncated {
            what: format!("activation {what}"),
            needed: self.pos.saturating_add(n),
            available: self.bytes.len(),
        };
        let end = self.pos.checked_add(n).ok_or_else(truncated)?;
        let Some(s) = self.bytes.get(self.pos..end) else {
            return Err(truncated());
        };
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "activation".into(),
        reason: reason.into(),
    }
}

fn read_header(bytes: &[u8], max_elements: usize) -> Result<ActivationHeader> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r.take(MAGIC.len(), "magic")?;
    if magic != MAGIC {
        return Err(corrupt(format!(
            "bad magic {magic:02x?}, expected {MAGIC:02x?} (\"CCAC\")"
        )));
    }
    let version = r.u8("version")?;
    if version != VERSION {
        return Err(Error::Unsupported {
            what: "activation codec version",
            found: version.to_string(),
            supported: VERSION.to_string(),
        });
    }
    let codec_id = r.u8("codec id")?;
    if codec_id > 5 {
        return Err(Error::Unsupported {
            what: "activation codec id",
            found: codec_id.to_string(),
            supported: "0 (None), 1 (F16), 2 (BF16), 3 (Int8PerRow), 4 (SparseColumns), 5 (SparseColumnsF16)".into(),
        });
    }
    let dtype = dtype_from_id(r.u8("dtype id")?)?;
    let rank = usize::from(r.u8("rank")?);
    if rank > MAX_RANK {
        return Err(Error::Unsupported {
            what: "activation rank",
            found: rank.to_string(),
            supported: format!("0..={MAX_RANK}"),
        });
    }
    let mut dims = Vec::with_capacity(rank);
    for i in 0..rank {
        let d = r.u64("dims")?;
        let d = usize::try_from(d)
            .map_err(|_| corrupt(format!("dimension {i} = {d} does not fit in usize")))?;
        dims.push(d);
    }
    // The product of the non-zero dims must fit: candle computes strides as suffix
    // products (so [0, 2^40, 2^40] would overflow there even with 0 elements), and so do
    // our `rows`.
    dims.iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| corrupt(format!("element count of shape {dims:?} overflows usize")))?;
    let n: usize = dims.iter().product();
    if n > max_elements {
        return Err(Error::Unsupported {
            what: "activation element count",
            found: format!("{n} (shape {dims:?})"),
            supported: format!("at most {max_elements}"),
        });
    }
    let (rows, cols) = rows_cols(&dims);
    // From here `rows` fits (it divides the non-zero product checked above) and k <= cols;
    // the payload size is still computed with checked arithmetic.
    let k = if codec_id >= 4 {
        let k = r.u32("sparse column count")? as usize;
        if k > cols || (k == 0 && cols > 0) {
            return Err(corrupt(format!(
                "sparse column count k = {k} for {cols} columns (expected 1..={cols})"
            )));
        }
        k
    } else {
        0
    };
    let payload_len = match codec_id {
        0 => n.checked_mul(dtype.size_in_bytes()),
        1 | 2 => n.checked_mul(2),
        3 => rows.checked_mul(4).and_then(|s| s.checked_add(n)),
        4 => rows
            .checked_mul(k)
            .and_then(|v| v.checked_add(k))
            .and_then(|v| v.checked_mul(4)),
        _ => rows
            .checked_mul(k)
            .and_then(|v| v.checked_mul(2))
            .and_then(|v| v.checked_add(4 * k)),
    }
    .ok_or_else(|| corrupt(format!("payload size of shape {dims:?} overflows usize")))?;
    let header_len = r.pos;
    let available = bytes.len() - header_len;
    if available < payload_len {
        return Err(Error::Truncated {
            what: "activation payload".into(),
            needed: header_len.saturating_add(payload_len),
            available: bytes.len(),
        });
    }
    if available > payload_len {
        return Err(corrupt(format!(
            "{} trailing bytes after a payload of {payload_len} bytes",
            available - payload_len
        )));
    }
    let codec = match codec_id {
        0 => ActivationCodec::None,
        1 => ActivationCodec::F16,
        2 => ActivationCodec::BF16,
        3 => ActivationCodec::Int8PerRow,
        4 => ActivationCodec::SparseColumns { keep: k },
        _ => ActivationCodec::SparseColumnsF16 { keep: k },
    };
    Ok(ActivationHeader {
        codec,
        dtype,
        shape: Shape::from(dims),
        header_len,
        payload_len,
    })
}

// ---------------------------------------------------------------------------------------
// Dense conversions (chunked through a stack buffer so the loops vectorize).
// ---------------------------------------------------------------------------------------

/// The error for a chunk that flagged a value: NaN/Inf in the input, or a finite value
/// that rounds to infinity in the target format. Only runs on the error path.
fn out_of_range(values: &[f32], to_f16: bool) -> Error {
    if let Err(e) = check_finite(values, "ActivationCodec::encode") {
        return e;
    }
    let (name, limit) = if to_f16 {
        ("F16", "65504")
    } else {
        ("BF16", "3.3895e38")
    };
    let index = values
        .iter()
        .position(|&v| {
            if to_f16 {
                f16::from_f32(v).is_infinite()
            } else {
                bf16_bits(v) & BF16_EXP_MASK == BF16_EXP_MASK
            }
        })
        .unwrap_or(0);
    let value = values.get(index).copied().unwrap_or(0.0);
    Error::invalid(
        "tensor",
        format!("value {value} at flat index {index} is outside the {name} range (|x| <= {limit})"),
    )
}

/// Converts f32 values to little-endian f16 bytes (`out.len() == 2 * x.len()`), refusing
/// NaN/Inf and values that round to ±Inf in f16. Runs the F16C kernel where available.
fn f32_to_f16_bytes(x: &[f32], out: &mut [u8]) -> Result<()> {
    halfconv::f32_to_f16_le(x, out).map_err(|e| e.or_non_finite(|_| out_of_range(x, true)))
}

/// bfloat16 bits of a finite f32, round to nearest even (equal to `bf16::from_f32` for
/// finite input; wrapping add so NaN input cannot panic, callers check finiteness).
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn f32_to_bf16_bytes(x: &[f32], out: &mut [u8]) -> Result<()> {
    for (src, dst) in x.chunks(CHUNK).zip(out.chunks_mut(2 * CHUNK)) {
        let mut bad = false;
        for (&v, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
            let h = bf16_bits(v);
            bad |=
                (v.to_bits() & F32_EXP_MASK == F32_EXP_MASK) | (h & BF16_EXP_MASK == BF16_EXP_MASK);
            d.copy_from_slice(&h.to_le_bytes());
        }
        if bad {
            return Err(out_of_range(x, false));
        }
    }
    Ok(())
}

fn bad_value(kind: &str, index: usize) -> Error {
    corrupt(format!("non-finite {kind} value at element {index}"))
}

fn first_bad_u16(bytes: &[u8], mask: u16) -> usize {
    bytes
        .chunks_exact(2)
        .position(|c| u16::from_le_bytes([c[0], c[1]]) & mask == mask)
        .unwrap_or(0)
}

/// Little-endian f16 bytes to f32 (`bytes.len() == 2 * out.len()`), refusing NaN/Inf.
/// Runs the F16C kernel where available.
fn f16_bytes_to_f32(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    halfconv::f16_le_to_f32(bytes, out).map_err(|e| e.or_non_finite(|i| bad_value("f16", i)))
}

fn f16_from_bytes(bytes: &[u8]) -> Result<Vec<f16>> {
    let mut bad = false;
    let v: Vec<f16> = bytes
        .chunks_exact(2)
        .map(|s| {
            let bits = u16::from_le_bytes([s[0], s[1]]);
            bad |= bits & F16_EXP_MASK == F16_EXP_MASK;
            f16::from_bits(bits)
        })
        .collect();
    if bad {
        return Err(bad_value("f16", first_bad_u16(bytes, F16_EXP_MASK)));
    }
    Ok(v)
}

fn bf16_bytes_to_f32(bytes: &[u8], out: &mut [f32]) -> Result<()> {
    for (ci, (src, dst)) in bytes
        .chunks(2 * CHUNK)
        .zip(out.chunks_mut(CHUNK))
        .enumerate()
    {
        let mut bad = false;
        for (o, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
            let bits = u16::from_le_bytes([s[0], s[1]]);
            bad |= bits & BF16_EXP_MASK == BF16_EXP_MASK;
            *o = f32::from_bits(u32::from(bits) << 16);
        }
        if bad {
            return Err(bad_value(
                "bf16",
                ci * CHUNK + first_bad_u16(src, BF16_EXP_MASK),
            ));
        }
    }
    Ok(())
}

fn bf16_from_bytes(bytes: &[u8]) -> Result<Vec<bf16>> {
    let mut bad = false;
    let v: Vec<bf16> = bytes
        .chunks_exact(2)
        .map(|s| {
            let bits = u16::from_le_bytes([s[0], s[1]]);
            bad |= bits & BF16_EXP_MASK == BF16_EXP_MASK;
            bf16::from_bits(bits)
        })
        .collect();
    if bad {
        return Err(bad_value("bf16", first_bad_u16(bytes, BF16_EXP_MASK)));
    }
    Ok(v)
}

fn f32_from_le(s: &[u8]) -> f32 {
    f32::from_le_bytes([s[0], s[1], s[2], s[3]])
}

fn f32_bytes_to_vec(bytes: &[u8], kind: &str) -> Result<Vec<f32>> {
    let v: Vec<f32> = bytes.chunks_exact(4).map(f32_from_le).collect();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(bad_value(kind, i));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------
// None: raw values in the original dtype.
// ---------------------------------------------------------------------------------------

fn encode_raw(tensor: &Tensor, out: &mut Vec<u8>) -> Result<()> {
    const OP: &str = "ActivationCodec::encode";
    match tensor.dtype() {
        DType::F64 => {
            let v = tensor.flatten_all()?.to_vec1::<f64>()?;
            if let Some(index) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    op: OP,
                    index,
                    value: v[index] as f32,
                });
            }
            for x in v {
                out.extend_from_slice(&x.to_le_bytes());
            }
            Ok(())
        }
        DType::F16 | DType::BF16 => {
            // f16/bf16 -> f32 -> f16/bf16 is exact, so the f32 view loses nothing.
            let is_f16 = tensor.dtype() == DType::F16;
            with_f32_slice(tensor, OP, |x| {
                check_finite(x, OP)?;
                let start = out.len();
                out.resize(start + 2 * x.len(), 0);
                if is_f16 {
                    f32_to_f16_bytes(x, &mut out[start..])
                } else {
                    f32_to_bf16_bytes(x, &mut out[start..])
                }
            })
        }
        _ => with_f32_slice(tensor, OP, |x| {
            check_finite(x, OP)?;
            let start = out.len();
            out.resize(start + 4 * x.len(), 0);
            for (v, d) in x.iter().zip(out[start..].chunks_exact_mut(4)) {
                d.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        }),
    }
}

fn decode_raw(payload: &[u8], dtype: DType) -> Result<Values> {
    Ok(match dtype {
        DType::F16 => Values::F16(f16_from_bytes(payload)?),
        DType::BF16 => Values::BF16(bf16_from_bytes(payload)?),
        DType::F64 => {
            let v: Vec<f64> = payload
                .chunks_exact(8)
                .map(|s| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(s);
                    f64::from_le_bytes(a)
                })
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(bad_value("f64", i));
            }
            Values::F64(v)
        }
        _ => Values::F32(f32_bytes_to_vec(payload, "f32")?),
    })
}

// ---------------------------------------------------------------------------------------
// Int8PerRow
// ---------------------------------------------------------------------------------------

/// Per-row int8 through the crate's fused kernel (`kernels::gemm::quantize_rows_i8`, the
/// same formula the W8A8 path uses): `scale = amax / 127`, `q = round_half_away(x /
/// scale)` clamped to `[-127, 127]`.
fn encode_int8_rows(x: &[f32], rows: usize, cols: usize, out: &mut Vec<u8>) -> Result<()> {
    let scales_at = out.len();
    out.resize(scales_at + 4 * rows + x.len(), 0);
    if cols == 0 {
        // No values: every row's scale is 0 (already written as zeros).
        return Ok(());
    }
    let mut q = vec![0i8; x.len()];
    let mut scales = vec![0f32; rows];
    crate::kernels::gemm::quantize_rows_i8(x, cols, None, &mut q, &mut scales).map_err(|e| {
        e.or_non_finite(|index| Error::NonFinite {
            op: "ActivationCodec::encode",
            index,
            value: x[index],
        })
    })?;
    let (scales_out, q_out) = out[scales_at..].split_at_mut(4 * rows);
    for (r, (&scale, s_out)) in scales
        .iter()
        .zip(scales_out.chunks_exact_mut(4))
        .enumerate()
    {
        if !(127.0 * scale).is_finite() {
            // Only for |x| within an ulp of f32::MAX: q = 127 would decode to infinity.
            return Err(Error::invalid(
                "tensor",
                format!("row {r}: amax is too close to f32::MAX for the int8 codec"),
            ));
        }
        s_out.copy_from_slice(&scale.to_le_bytes());
    }
    for (o, &v) in q_out.iter_mut().zip(&q) {
        *o = v as u8;
    }
    Ok(())
}

fn decode_int8_rows(payload: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
    let (scale_bytes, q) = payload.split_at(4 * rows);
    let mut out = vec![0f32; q.len()];
    for (r, s) in scale_bytes.chunks_exact(4).enumerate() {
        let scale = f32_from_le(s);
        // 127 * scale must be finite too, so every decoded value is.
        if !(127.0 * scale).is_finite() || scale < 0.0 {
            return Err(corrupt(format!("row {r} has invalid int8 scale {scale}")));
        }
        if cols == 0 {
            continue;
        }
        let q_row = &q[r * cols..(r + 1) * cols];
        let o_row = &mut out[r * cols..(r + 1) * cols];
        let mut has_min = false;
        for (o, &b) in o_row.iter_mut().zip(q_row) {
            let v = b as i8;
            has_min |= v == i8::MIN;
            *o = f32::from(v) * scale;
        }
        if has_min {
            let c = q_row.iter().position(|&b| b as i8 == i8::MIN).unwrap_or(0);
            return Err(corrupt(format!(
                "int8 value -128 at row {r}, column {c}: outside the symmetric range [-127, 127]"
            )));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Sparse columns
// ---------------------------------------------------------------------------------------

/// The `k` columns of the row-major `[rows, cols]` matrix `x` with the largest L2 norm,
/// in increasing index order. Squared norms are accumulated in f64 in row order; ties go
/// to the lower index. Selection (`select_nth_unstable_by`) is O(cols), only the `k` kept
/// indices are sorted. Requires `k <= cols` and `x.len() == rows * cols`.
pub fn top_k_columns(x: &[f32], rows: usize, cols: usize, k: usize) -> Vec<u32> {
    debug_assert_eq!(x.len(), rows * cols);
    let k = k.min(cols);
    if k == 0 {
        return Vec::new();
    }
    let mut norms = vec![0f64; cols];
    for row in x.chunks_exact(cols) {
        for (n, &v) in norms.iter_mut().zip(row) {
            let v = f64::from(v);
            *n += v * v;
        }
    }
    let mut idx: Vec<u32> = (0..cols as u32).collect();
    if k < cols {
        idx.select_nth_unstable_by(k - 1, |&a, &b| {
            norms[b as usize]
                .total_cmp(&norms[a as usize])
                .then(a.cmp(&b))
        });
        idx.truncate(k);
    }
    idx.sort_unstable();
    idx
}

fn encode_sparse(
    x: &[f32],
    rows: usize,
    cols: usize,
    k: usize,
    half: bool,
    out: &mut Vec<u8>,
) -> Result<()> {
    check_finite(x, "ActivationCodec::encode")?;
    if cols > u32::MAX as usize {
        return Err(Error::invalid(
            "tensor",
            format!("sparse-columns codecs index at most u32::MAX columns, found {cols}"),
        ));
    }
    let idx = top_k_columns(x, rows, cols, k);
    out.extend_from_slice(&(k as u32).to_le_bytes());
    for &c in &idx {
        out.extend_from_slice(&c.to_le_bytes());
    }
    if k == 0 {
        return Ok(());
    }
    let mut kept = Vec::with_capacity(rows * k);
    for row in x.chunks_exact(cols) {
        kept.extend(idx.iter().map(|&c| row[c as usize]));
    }
    let start = out.len();
    if half {
        out.resize(start + 2 * kept.len(), 0);
        f32_to_f16_bytes(&kept, &mut out[start..]).map_err(|e| match e {
            // Report the index in the original tensor, not in the kept-values buffer.
            Error::InvalidArgument { .. } => {
                let i = kept
                    .iter()
                    .position(|v| !f16::from_f32(*v).is_finite())
                    .unwrap_or(0);
                let (r, j) = (i / k, i % k);
                let flat = r * cols + idx[j] as usize;
                Error::invalid(
                    "tensor",
                    format!(
                        "value {} at flat index {flat} is outside the F16 range (|x| <= 65504)",
                        kept[i]
                    ),
                )
            }
            other => other,
        })?;
    } else {
        out.reserve(4 * kept.len());
        for v in kept {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    Ok(())
}

fn decode_sparse(
    payload: &[u8],
    rows: usize,
    cols: usize,
    k: usize,
    half: bool,
) -> Result<Vec<f32>> {
    let (idx_bytes, values) = payload.split_at(4 * k);
    let mut idx = Vec::with_capacity(k);
    let mut prev: Option<usize> = None;
    for (j, s) in idx_bytes.chunks_exact(4).enumerate() {
        let c = u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize;
        if c >= cols {
            return Err(corrupt(format!(
                "column index {c} (entry {j}) out of range for {cols} columns"
            )));
        }
        if prev.is_some_and(|p| c <= p) {
            return Err(corrupt(format!(
                "column indices not strictly increasing at entry {j} ({} then {c})",
                prev.unwrap_or(0)
            )));
        }
        prev = Some(c);
        idx.push(c);
    }
    let kept: Vec<f32> = if half {
        let mut v = vec![0f32; values.len() / 2];
        f16_bytes_to_f32(values, &mut v)?;
        v
    } else {
        f32_bytes_to_vec(values, "f32")?
    };
    // rows * cols == n was checked against the element cap by the header (k > 0 implies
    // cols > 0).
    let mut out = vec![0f32; if k == 0 { 0 } else { rows * cols }];
    if k == 0 {
        return Ok(out);
    }
    for (o_row, k_row) in out.chunks_exact_mut(cols).zip(kept.chunks_exact(k)) {
        for (&c, &v) in idx.iter().zip(k_row) {
            o_row[c] = v;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_bits_matches_half_for_finite_values() {
        let samples = [
            0.0f32,
            -0.0,
            1.0,
            1.003_906_3,
            1.0078125,
            std::f32::consts::PI,
            -2.5e-39,
            1.0e-45,
            f32::MAX,
            f32::MIN_POSITIVE,
            65504.0,
            -123456.78,
        ];
        for &x in &samples {
            assert_eq!(bf16_bits(x), bf16::from_f32(x).to_bits(), "{x}");
        }
        let mut s = 0x1234_5678u32;
        for _ in 0..100_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = f32::from_bits(s);
            if x.is_finite() {
                assert_eq!(
                    bf16_bits(x),
                    bf16::from_f32(x).to_bits(),
                    "{x:e} bits {s:#x}"
                );
            }
        }
    }

    #[test]
    fn top_k_tie_goes_to_lower_index() {
        // Columns 0, 2 and 3 all have norm 1; column 1 has norm 2.
        let x = [1.0f32, 2.0, -1.0, 1.0];
        assert_eq!(top_k_columns(&x, 1, 4, 1), vec![1]);
        assert_eq!(top_k_columns(&x, 1, 4, 2), vec![0, 1]);
        assert_eq!(top_k_columns(&x, 1, 4, 3), vec![0, 1, 2]);
        assert_eq!(top_k_columns(&x, 1, 4, 9), vec![0, 1, 2, 3]);
    }

    #[test]
    fn encoded_len_is_exact() -> Result<()> {
        let t = Tensor::arange(0f32, 60., &Device::Cpu)?.reshape((3, 4, 5))?;
        for codec in [
            ActivationCodec::None,
            ActivationCodec::F16,
            ActivationCodec::BF16,
            ActivationCodec::Int8PerRow,
            ActivationCodec::SparseColumns { keep: 2 },
            ActivationCodec::SparseColumnsF16 { keep: 7 },
        ] {
            let bytes = codec.encode(&t)?;
            assert_eq!(
                bytes.len(),
                codec.encoded_len(t.shape(), t.dtype())?,
                "{codec}"
            );
            let h = ActivationCodec::read_header(&bytes)?;
            assert_eq!(h.header_len + h.payload_len, bytes.len());
        }
        Ok(())
    }
}
