//! Real sparse storage for pruned tensors, with honest sizes.
//!
//! - [`BitmaskSparse`]: one bit per element (set = stored) plus the non-zero values in
//!   order. Smaller than dense once more than `1/(8·size)` of the elements are zero
//!   (about 3% for f32, 6% for f16).
//! - [`NmSparse`]: for N:M-pruned tensors, exactly `n` values per group of `m` plus each
//!   value's position in its group in `ceil(log2 m)` bits (2:4: 2 bits per kept value).
//!
//! The kept values are stored either in the tensor's own dtype ([`SparseValues::Raw`],
//! little-endian bytes) or quantized as one 1-D tensor with any [`Scheme`]
//! ([`SparseValues::Quantized`]). [`StoredTensor`] is what the pipeline outputs: dense,
//! quantized, or one of the sparse layouts, chosen by size.
//!
//! Every `size_bytes` counts what the value holds: mask or index bytes, value bytes
//! (scales included when quantized), [`header_bytes`] for shape and dtype, and a small
//! format tag ([`SPARSE_TAG_BYTES`]).

use std::fmt;

use candle_core::{DType, Device, Shape, Tensor};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::compressor::{header_bytes, Compressed, Compressor};
use crate::error::{Error, Result};
use crate::input::{
    check_representable, checked_elem_count, checked_size_in_bytes, ensure_float, size_overflow,
    tensor_from_f32,
};
use crate::prune::prune::satisfies_nm;
use crate::scheme::{CompressedTensor, Scheme};

/// Bytes a sparse layout counts for its format tag: 1 (layout) for bitmask, 3 (layout, n,
/// m) for N:M.
pub const SPARSE_TAG_BYTES: usize = 1;

/// The kept (non-zero) values of a sparse layout.
#[derive(Debug, Clone, PartialEq)]
pub enum SparseValues {
    /// In the tensor's own dtype, little-endian (4 bytes per F32 value, 2 per F16/BF16, 8
    /// per F64).
    Raw(Vec<u8>),
    /// Quantized as one 1-D tensor of the kept values.
    Quantized(CompressedTensor),
}

impl SparseValues {
    fn encode(values: &[f32], dtype: DType, quantize: Option<Scheme>) -> Result<Self> {
        if let Some(scheme) = quantize {
            let t = Tensor::from_slice(values, values.len(), &Device::Cpu)?;
            return Ok(SparseValues::Quantized(scheme.compress(&t)?));
        }
        let mut out = Vec::with_capacity(values.len() * dtype.size_in_bytes());
        for &v in values {
            match dtype {
                DType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
                DType::BF16 => out.extend_from_slice(&bf16::from_f32(v).to_le_bytes()),
                DType::F64 => out.extend_from_slice(&f64::from(v).to_le_bytes()),
                _ => out.extend_from_slice(&v.to_le_bytes()),
            }
        }
        Ok(SparseValues::Raw(out))
    }

    fn decode(&self, dtype: DType) -> Vec<f32> {
        match self {
            SparseValues::Quantized(c) => c.to_f32_vec(),
            SparseValues::Raw(b) => match dtype {
                DType::F16 => b
                    .chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                DType::BF16 => b
                    .chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
                DType::F64 => b
                    .chunks_exact(8)
                    .map(|c| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        f64::from_le_bytes(a) as f32
                    })
                    .collect(),
                _ => b
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            },
        }
    }

    /// Bytes held: raw value bytes, or the quantized value's `size_bytes`.
    #[must_use]
    pub fn size_bytes(&self) -> usize {
        match self {
            SparseValues::Raw(b) => b.len(),
            SparseValues::Quantized(c) => c.size_bytes(),
        }
    }

    fn scheme(&self) -> Option<Scheme> {
        match self {
            SparseValues::Raw(_) => None,
            SparseValues::Quantized(c) => Some(c.scheme()),
        }
    }
}

fn values_size(nnz: usize, dtype: DType, quantize: Option<Scheme>) -> Result<usize> {
    match quantize {
        Some(s) => s.try_compressed_size_bytes(&Shape::from(nnz)),
        None => checked_size_in_bytes(&Shape::from(nnz), dtype, "sparse values"),
    }
}

/// `a + b + c + …` of sizes, checked.
fn sum_sizes(parts: &[usize], what: &str, shape: &Shape) -> Result<usize> {
    parts
        .iter()
        .try_fold(0usize, |acc, &p| acc.checked_add(p))
        .ok_or_else(|| size_overflow(what, shape))
}

/// Bitmask + values: bit `i` of the mask (LSB first within each byte) is set when element
/// `i` is stored; the stored values follow in flat order.
///
/// ```
/// use candle_compress::prune::BitmaskSparse;
/// use candle_compress::Compressed;
/// use candle_core::{DType, Device, Shape};
///
/// let x = [0.0f32, 1.5, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0, 3.0, 0.0];
/// let s = BitmaskSparse::from_values(&x, &Shape::from((2, 5)), DType::F32, None)?;
/// assert_eq!(s.nnz(), 3);
/// // 2 mask bytes + 3 f32 values + shape/dtype header (2 dims) + 1 tag byte
/// assert_eq!(s.size_bytes(), 2 + 12 + (8 * 2 + 1) + 1);
/// let back = s.decompress(&Device::Cpu)?;
/// assert_eq!(back.flatten_all()?.to_vec1::<f32>()?, x);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BitmaskSparse {
    shape: Shape,
    dtype: DType,
    mask: Vec<u8>,
    nnz: usize,
    values: SparseValues,
}

impl BitmaskSparse {
    /// Stores the non-zeros of the row-major `values` of a tensor of `shape` and original
    /// `dtype`, optionally quantizing the kept values with `quantize`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `values.len()` is not `shape`'s element count;
    /// [`Error::UnsupportedDType`] for an integer `dtype`; [`Error::NonFinite`] for
    /// NaN/±Inf; [`Error::OutOfRange`] for a value `dtype` cannot hold (`1e5` for F16);
    /// quantizer errors.
    pub fn from_values(
        values: &[f32],
        shape: &Shape,
        dtype: DType,
        quantize: Option<Scheme>,
    ) -> Result<Self> {
        check_len(values, shape)?;
        check_representable(values, dtype, "BitmaskSparse::from_values")?;
        let mut mask = vec![0u8; values.len().div_ceil(8)];
        let mut kept = Vec::new();
        for (i, &v) in values.iter().enumerate() {
            if v != 0.0 {
                mask[i / 8] |= 1 << (i % 8);
                kept.push(v);
            }
        }
        Ok(Self {
            shape: shape.clone(),
            dtype,
            mask,
            nnz: kept.len(),
            values: SparseValues::encode(&kept, dtype, quantize)?,
        })
    }

    /// The size [`BitmaskSparse::from_values`] would produce for `nnz` non-zeros, without
    /// building it; saturates at `usize::MAX` when it does not fit (see
    /// [`BitmaskSparse::try_predicted_size`]).
    #[must_use]
    pub fn predicted_size(
        shape: &Shape,
        dtype: DType,
        nnz: usize,
        quantize: Option<Scheme>,
    ) -> usize {
        Self::try_predicted_size(shape, dtype, nnz, quantize).unwrap_or(usize::MAX)
    }

    /// [`BitmaskSparse::predicted_size`] with checked arithmetic.
    ///
    /// # Errors
    /// [`Error::SizeOverflow`] when a size overflows `usize`.
    pub fn try_predicted_size(
        shape: &Shape,
        dtype: DType,
        nnz: usize,
        quantize: Option<Scheme>,
    ) -> Result<usize> {
        const WHAT: &str = "BitmaskSparse::predicted_size";
        let n = checked_elem_count(shape, WHAT)?;
        sum_sizes(
            &[
                n.div_ceil(8),
                values_size(nnz, dtype, quantize)?,
                header_bytes(shape),
                SPARSE_TAG_BYTES,
            ],
            WHAT,
            shape,
        )
    }

    /// Number of stored (non-zero) values.
    #[must_use]
    pub fn nnz(&self) -> usize {
        self.nnz
    }

    /// The stored values.
    #[must_use]
    pub fn values(&self) -> &SparseValues {
        &self.values
    }
}

impl Compressed for BitmaskSparse {
    fn shape(&self) -> &Shape {
        &self.shape
    }
    fn original_dtype(&self) -> DType {
        self.dtype
    }

    /// Row-major dense values (zeros where the mask is clear).
    fn to_f32_vec(&self) -> Vec<f32> {
        let kept = self.values.decode(self.dtype);
        let mut out = vec![0f32; self.shape.elem_count()];
        let mut it = kept.into_iter();
        for (i, o) in out.iter_mut().enumerate() {
            if self.mask[i / 8] >> (i % 8) & 1 == 1 {
                *o = it.next().unwrap_or(0.0);
            }
        }
        out
    }

    /// The mask and the kept values.
    fn payload_bytes(&self) -> usize {
        self.mask.len() + self.values.size_bytes()
    }

    fn tag_bytes(&self) -> usize {
        SPARSE_TAG_BYTES
    }
}

/// N:M layout: for every group of `m` consecutive values exactly `n` stored values and
/// their positions in the group, `ceil(log2 m)` bits each, packed LSB first. Groups with
/// fewer than `n` non-zeros store explicit zeros (at the lowest free positions).
///
/// ```
/// use candle_compress::prune::NmSparse;
/// use candle_compress::Compressed;
/// use candle_core::{DType, Device, Shape};
///
/// let x = [0.0f32, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0];
/// let s = NmSparse::from_values(&x, &Shape::from((1, 8)), DType::F16, 2, 4, None)?;
/// // 4 kept values x 2 bits = 1 byte of indices, 4 f16 values, header (2 dims), 3 tag bytes
/// assert_eq!(s.size_bytes(), 1 + 8 + 17 + 3);
/// assert_eq!(s.decompress(&Device::Cpu)?.flatten_all()?.to_vec1::<half::f16>()?.len(), 8);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NmSparse {
    shape: Shape,
    dtype: DType,
    n: usize,
    m: usize,
    indices: Vec<u8>,
    values: SparseValues,
}

fn index_bits(m: usize) -> usize {
    (usize::BITS - (m.max(1) - 1).leading_zeros()) as usize
}

impl NmSparse {
    /// Stores the row-major `values` of a tensor of `shape` (last dimension a multiple of
    /// `m`) whose every group of `m` has at most `n` non-zeros.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad `n:m` or values that break the pattern;
    /// [`Error::ShapeMismatch`] for a length or last dimension that does not fit;
    /// [`Error::UnsupportedDType`], [`Error::NonFinite`], [`Error::OutOfRange`] as
    /// [`BitmaskSparse::from_values`].
    pub fn from_values(
        values: &[f32],
        shape: &Shape,
        dtype: DType,
        n: usize,
        m: usize,
        quantize: Option<Scheme>,
    ) -> Result<Self> {
        crate::prune::prune::check_nm(n, m)?;
        check_len(values, shape)?;
        check_representable(values, dtype, "NmSparse::from_values")?;
        crate::prune::prune::nm_cols(shape.dims(), m)?;
        if !satisfies_nm(values, n, m) {
            return Err(Error::invalid(
                "values",
                format!("some group of {m} holds more than {n} non-zeros"),
            ));
        }
        let bits = index_bits(m);
        let groups = values.len() / m;
        let mut indices = vec![0u8; (groups * n * bits).div_ceil(8)];
        let mut kept = Vec::with_capacity(groups * n);
        let mut bit = 0;
        for g in values.chunks_exact(m) {
            let mut chosen: Vec<usize> = (0..m).filter(|&i| g[i] != 0.0).collect();
            // Pad with the lowest positions not yet chosen; keep positions increasing.
            let mut pad = (0..m).filter(|i| g[*i] == 0.0);
            while chosen.len() < n {
                chosen.extend(pad.next());
            }
            chosen.sort_unstable();
            for &i in &chosen {
                for b in 0..bits {
                    if i >> b & 1 == 1 {
                        indices[(bit + b) / 8] |= 1 << ((bit + b) % 8);
                    }
                }
                bit += bits;
                kept.push(g[i]);
            }
        }
        Ok(Self {
            shape: shape.clone(),
            dtype,
            n,
            m,
            indices,
            values: SparseValues::encode(&kept, dtype, quantize)?,
        })
    }

    /// The size [`NmSparse::from_values`] would produce, without building it; saturates at
    /// `usize::MAX` when it does not fit (see [`NmSparse::try_predicted_size`]).
    #[must_use]
    pub fn predicted_size(
        shape: &Shape,
        dtype: DType,
        n: usize,
        m: usize,
        quantize: Option<Scheme>,
    ) -> usize {
        Self::try_predicted_size(shape, dtype, n, m, quantize).unwrap_or(usize::MAX)
    }

    /// [`NmSparse::predicted_size`] with checked arithmetic.
    ///
    /// # Errors
    /// [`Error::SizeOverflow`] when a size overflows `usize`.
    pub fn try_predicted_size(
        shape: &Shape,
        dtype: DType,
        n: usize,
        m: usize,
        quantize: Option<Scheme>,
    ) -> Result<usize> {
        const WHAT: &str = "NmSparse::predicted_size";
        let groups = checked_elem_count(shape, WHAT)? / m.max(1);
        let kept = groups
            .checked_mul(n)
            .ok_or_else(|| size_overflow(WHAT, shape))?;
        let index_bytes = kept
            .checked_mul(index_bits(m))
            .ok_or_else(|| size_overflow(WHAT, shape))?
            .div_ceil(8);
        sum_sizes(
            &[
                index_bytes,
                values_size(kept, dtype, quantize)?,
                header_bytes(shape),
                3 * SPARSE_TAG_BYTES,
            ],
            WHAT,
            shape,
        )
    }

    /// The pattern `(n, m)`.
    #[must_use]
    pub fn pattern(&self) -> (usize, usize) {
        (self.n, self.m)
    }

    /// The stored values (`n` per group).
    #[must_use]
    pub fn values(&self) -> &SparseValues {
        &self.values
    }
}

impl Compressed for NmSparse {
    fn shape(&self) -> &Shape {
        &self.shape
    }
    fn original_dtype(&self) -> DType {
        self.dtype
    }

    /// Row-major dense values.
    fn to_f32_vec(&self) -> Vec<f32> {
        let kept = self.values.decode(self.dtype);
        let total = self.shape.elem_count();
        let mut out = vec![0f32; total];
        let bits = index_bits(self.m);
        for (j, &v) in kept.iter().enumerate() {
            let mut pos = 0;
            for b in 0..bits {
                let at = j * bits + b;
                pos |= usize::from(self.indices[at / 8] >> (at % 8) & 1) << b;
            }
            let i = (j / self.n) * self.m + pos;
            if let Some(o) = out.get_mut(i) {
                *o = v;
            }
        }
        out
    }

    /// The packed indices and the kept values.
    fn payload_bytes(&self) -> usize {
        self.indices.len() + self.values.size_bytes()
    }

    fn tag_bytes(&self) -> usize {
        3 * SPARSE_TAG_BYTES
    }
}

fn check_len(values: &[f32], shape: &Shape) -> Result<()> {
    let n = checked_elem_count(shape, "sparse storage values")?;
    if values.len() != n {
        return Err(Error::shape("sparse storage values", n, values.len()));
    }
    Ok(())
}

/// Which representation a [`StoredTensor`] uses (what the pipeline report prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// Every element in the original dtype.
    Dense,
    /// Every element quantized with the scheme.
    Quantized(Scheme),
    /// [`BitmaskSparse`], values raw (`None`) or quantized.
    Bitmask(Option<Scheme>),
    /// [`NmSparse`] with pattern `(n, m)`, values raw or quantized.
    Nm(usize, usize, Option<Scheme>),
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |s: &Option<Scheme>| s.map(|s| format!("+{s}")).unwrap_or_default();
        match self {
            StorageKind::Dense => f.write_str("dense"),
            StorageKind::Quantized(s) => write!(f, "{s}"),
            StorageKind::Bitmask(s) => write!(f, "bitmask{}", q(s)),
            StorageKind::Nm(n, m, s) => write!(f, "{n}:{m}{}", q(s)),
        }
    }
}

/// A tensor as the pipeline stores it.
#[derive(Debug, Clone)]
pub enum StoredTensor {
    /// Unchanged layout, original dtype.
    Dense(Tensor),
    /// Quantized with a [`Scheme`].
    Quantized(CompressedTensor),
    /// Bitmask + values.
    Bitmask(BitmaskSparse),
    /// N:M indices + values.
    Nm(NmSparse),
}

impl StoredTensor {
    /// Bytes of a dense tensor as this module counts them: elements × dtype size +
    /// [`header_bytes`]; saturates at `usize::MAX` when that does not fit (see
    /// [`StoredTensor::try_dense_size`]).
    #[must_use]
    pub fn dense_size(shape: &Shape, dtype: DType) -> usize {
        Self::try_dense_size(shape, dtype).unwrap_or(usize::MAX)
    }

    /// [`StoredTensor::dense_size`] with checked arithmetic.
    ///
    /// # Errors
    /// [`Error::SizeOverflow`] when the size overflows `usize`.
    pub fn try_dense_size(shape: &Shape, dtype: DType) -> Result<usize> {
        const WHAT: &str = "StoredTensor::dense_size";
        let bytes = checked_size_in_bytes(shape, dtype, WHAT)?;
        sum_sizes(&[bytes, header_bytes(shape)], WHAT, shape)
    }

    /// The representation.
    #[must_use]
    pub fn kind(&self) -> StorageKind {
        match self {
            StoredTensor::Dense(_) => StorageKind::Dense,
            StoredTensor::Quantized(c) => StorageKind::Quantized(c.scheme()),
            StoredTensor::Bitmask(b) => StorageKind::Bitmask(b.values.scheme()),
            StoredTensor::Nm(s) => StorageKind::Nm(s.n, s.m, s.values.scheme()),
        }
    }

    /// Bytes held (see the [module docs](self)).
    #[must_use]
    pub fn size_bytes(&self) -> usize {
        match self {
            StoredTensor::Dense(t) => Self::dense_size(t.shape(), t.dtype()),
            StoredTensor::Quantized(c) => c.size_bytes(),
            StoredTensor::Bitmask(b) => b.size_bytes(),
            StoredTensor::Nm(s) => s.size_bytes(),
        }
    }

    /// The tensor's shape.
    #[must_use]
    pub fn shape(&self) -> &Shape {
        match self {
            StoredTensor::Dense(t) => t.shape(),
            StoredTensor::Quantized(c) => c.shape(),
            StoredTensor::Bitmask(b) => b.shape(),
            StoredTensor::Nm(s) => s.shape(),
        }
    }

    /// Decodes to a dense tensor in the original shape and dtype.
    ///
    /// # Errors
    /// Candle errors from building or moving the tensor.
    pub fn to_dense(&self, device: &Device) -> Result<Tensor> {
        match self {
            StoredTensor::Dense(t) => Ok(t.to_device(device)?),
            StoredTensor::Quantized(c) => c.decompress(device),
            StoredTensor::Bitmask(b) => b.decompress(device),
            StoredTensor::Nm(s) => s.decompress(device),
        }
    }

    /// The sizes of every candidate layout for values with `nnz` non-zeros (and, when
    /// `nm` is given, values known to satisfy that pattern), smallest first; ties keep the
    /// order dense/quantized, bitmask, N:M. Used by the pipeline to choose and by
    /// `estimate` to predict. A size that does not fit saturates at `usize::MAX` (see
    /// [`StoredTensor::try_candidates`] for an error instead).
    #[must_use]
    pub fn candidates(
        shape: &Shape,
        dtype: DType,
        nnz: usize,
        quantize: Option<Scheme>,
        nm: Option<(usize, usize)>,
    ) -> Vec<(StorageKind, usize)> {
        let mut c = vec![match quantize {
            Some(s) => (StorageKind::Quantized(s), s.compressed_size_bytes(shape)),
            None => (StorageKind::Dense, Self::dense_size(shape, dtype)),
        }];
        c.push((
            StorageKind::Bitmask(quantize),
            BitmaskSparse::predicted_size(shape, dtype, nnz, quantize),
        ));
        if let Some((nn, m)) = nm {
            if nn < m {
                c.push((
                    StorageKind::Nm(nn, m, quantize),
                    NmSparse::predicted_size(shape, dtype, nn, m, quantize),
                ));
            }
        }
        // Stable sort: on equal sizes the earlier (simpler) layout wins.
        c.sort_by_key(|&(_, size)| size);
        c
    }

    /// [`StoredTensor::candidates`] with checked arithmetic.
    ///
    /// # Errors
    /// [`Error::SizeOverflow`] when any candidate's size overflows `usize`.
    pub fn try_candidates(
        shape: &Shape,
        dtype: DType,
        nnz: usize,
        quantize: Option<Scheme>,
        nm: Option<(usize, usize)>,
    ) -> Result<Vec<(StorageKind, usize)>> {
        let c = Self::candidates(shape, dtype, nnz, quantize, nm);
        // Re-derive each size checked: an error names the layout that did not fit.
        for &(kind, _) in &c {
            match kind {
                StorageKind::Dense => Self::try_dense_size(shape, dtype).map(drop)?,
                StorageKind::Quantized(s) => s.try_compressed_size_bytes(shape).map(drop)?,
                StorageKind::Bitmask(q) => {
                    BitmaskSparse::try_predicted_size(shape, dtype, nnz, q).map(drop)?
                }
                StorageKind::Nm(n, m, q) => {
                    NmSparse::try_predicted_size(shape, dtype, n, m, q).map(drop)?
                }
            }
        }
        Ok(c)
    }

    /// Builds the layout `kind` from row-major `values`.
    ///
    /// # Errors
    /// Quantizer errors; [`Error::InvalidArgument`] when values break an N:M pattern;
    /// [`Error::UnsupportedDType`] for an integer `dtype` (f32 values would be rounded
    /// silently); the checks of [`BitmaskSparse::from_values`] for the sparse layouts.
    pub fn build(
        kind: StorageKind,
        values: Vec<f32>,
        shape: &Shape,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        ensure_float(dtype, "StoredTensor::build")?;
        Ok(match kind {
            StorageKind::Dense => {
                StoredTensor::Dense(tensor_from_f32(values, shape, dtype, device)?)
            }
            StorageKind::Quantized(s) => {
                // Compress from an F32 tensor but record the original dtype: the quantizers
                // remember the input dtype, so build the input in that dtype.
                let t = tensor_from_f32(values, shape, dtype, &Device::Cpu)?;
                StoredTensor::Quantized(s.compress(&t)?)
            }
            StorageKind::Bitmask(q) => {
                StoredTensor::Bitmask(BitmaskSparse::from_values(&values, shape, dtype, q)?)
            }
            StorageKind::Nm(n, m, q) => {
                StoredTensor::Nm(NmSparse::from_values(&values, shape, dtype, n, m, q)?)
            }
        })
    }
}
