//! Reading user tensors into plain `f32` data, with the crate's input checks in one place.
//!
//! Every quantizer, codec and pruner accepts float tensors of any rank, contiguous or
//! not, in F32, F16, BF16 or F64, and refuses integer dtypes and non-finite values. This
//! module is the single implementation of that contract.

use candle_core::{CpuStorage, DType, Device, Shape, Storage, Tensor};

use crate::error::{Error, Result};

/// The float dtypes the crate accepts as input.
pub const FLOAT_DTYPES: &str = "F32, F16, BF16 or F64";

/// A tensor read into row-major `f32` values, remembering where it came from so it can be
/// rebuilt in its original dtype and shape.
#[derive(Debug, Clone)]
pub struct FloatData {
    /// Row-major values, converted to f32 (exact for F16/BF16; F64 rounds to nearest).
    pub values: Vec<f32>,
    /// The tensor's shape.
    pub shape: Shape,
    /// The tensor's dtype before conversion.
    pub dtype: DType,
}

impl FloatData {
    /// Reads `tensor` (any rank, any layout) into f32 values.
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for integer dtypes (U8, U32, I64, …);
    /// [`Error::OutOfRange`] for a finite F64 value beyond f32's range (it would become
    /// ±Inf); candle errors from the device copy. NaN/±Inf pass through (see
    /// [`FloatData::from_tensor_finite`]).
    pub fn from_tensor(tensor: &Tensor, op: &'static str) -> Result<Self> {
        ensure_float(tensor.dtype(), op)?;
        let flat = tensor.flatten_all()?;
        let values = if tensor.dtype() == DType::F64 {
            f64_to_f32(&flat.to_vec1::<f64>()?, op)?
        } else {
            flat.to_dtype(DType::F32)?.to_vec1::<f32>()?
        };
        Ok(Self {
            values,
            shape: tensor.shape().clone(),
            dtype: tensor.dtype(),
        })
    }

    /// Like [`FloatData::from_tensor`], and also refuses NaN/±Inf (see [`check_finite`]).
    pub fn from_tensor_finite(tensor: &Tensor, op: &'static str) -> Result<Self> {
        let data = Self::from_tensor(tensor, op)?;
        check_finite(&data.values, op)?;
        Ok(data)
    }
}

/// Calls `f` with the tensor's values as one row-major `&[f32]`, without copying when the
/// tensor is a contiguous F32 CPU tensor (the common, large case) and through a converted
/// copy otherwise. Checks the dtype like [`FloatData::from_tensor`]; does not check
/// finiteness (kernels that scan the data anyway report the first non-finite index).
pub fn with_f32_slice<R>(
    tensor: &Tensor,
    op: &'static str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    ensure_float(tensor.dtype(), op)?;
    {
        let (storage, layout) = tensor.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(all)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return f(&all[start..end]);
        }
    }
    let data = FloatData::from_tensor(tensor, op)?;
    f(&data.values)
}

/// Rounds F64 values to f32, refusing finite values that would round to ±Inf.
fn f64_to_f32(values: &[f64], op: &'static str) -> Result<Vec<f32>> {
    let out: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    if let Some(index) = out
        .iter()
        .zip(values)
        .position(|(f, v)| f.is_infinite() && v.is_finite())
    {
        return Err(Error::OutOfRange {
            op,
            index,
            value: values[index],
            target: "f32",
            max: f64::from(f32::MAX),
        });
    }
    Ok(out)
}

/// The largest finite value of a float dtype as f32 (`f32::MAX` for F32 and F64, whose
/// values pass through f32 here), `None` for integer dtypes.
#[must_use]
pub fn float_max(dtype: DType) -> Option<f32> {
    match dtype {
        DType::F16 => Some(half::f16::MAX.to_f32()),
        DType::BF16 => Some(half::bf16::MAX.to_f32()),
        DType::F32 | DType::F64 => Some(f32::MAX),
        _ => None,
    }
}

/// Refuses values that `dtype` cannot hold: integer dtypes ([`Error::UnsupportedDType`]),
/// NaN/±Inf ([`Error::NonFinite`]) and finite values beyond the dtype's range
/// ([`Error::OutOfRange`], e.g. `1e5` for F16). For constructors that store f32 values
/// in a tensor's own dtype.
pub fn check_representable(values: &[f32], dtype: DType, op: &'static str) -> Result<()> {
    ensure_float(dtype, op)?;
    check_finite(values, op)?;
    let max = float_max(dtype).unwrap_or(f32::MAX);
    // Values that round to `max` are representable: the bound is max + half an ulp.
    let limit = match dtype {
        DType::F16 => 65520.0,
        DType::BF16 => f32::from_bits(half::bf16::MAX.to_f32().to_bits() + (1 << 15)),
        _ => f32::INFINITY,
    };
    if let Some(index) = values.iter().position(|v| v.abs() >= limit) {
        return Err(Error::OutOfRange {
            op,
            index,
            value: f64::from(values[index]),
            target: dtype_name(dtype),
            max: f64::from(max),
        });
    }
    Ok(())
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F16 => "F16",
        DType::BF16 => "BF16",
        DType::F64 => "F64",
        _ => "F32",
    }
}

/// Element count of `shape`, or [`Error::SizeOverflow`] naming `what` when it does not fit
/// in `usize` (candle's `Shape::elem_count` would panic in debug builds and wrap in
/// release).
pub fn checked_elem_count(shape: &Shape, what: &str) -> Result<usize> {
    shape
        .dims()
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| size_overflow(what, shape))
}

/// `checked_elem_count(shape) × dtype size`, checked.
pub fn checked_size_in_bytes(shape: &Shape, dtype: DType, what: &str) -> Result<usize> {
    checked_elem_count(shape, what)?
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| size_overflow(what, shape))
}

/// [`Error::SizeOverflow`] for `what` computed from `shape`.
pub(crate) fn size_overflow(what: &str, shape: impl std::fmt::Debug) -> Error {
    Error::SizeOverflow {
        what: what.to_string(),
        shape: format!("shape {shape:?}"),
    }
}

/// Returns an error unless `dtype` is one of [`FLOAT_DTYPES`].
pub fn ensure_float(dtype: DType, op: &'static str) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Ok(()),
        found => Err(Error::UnsupportedDType {
            op,
            expected: FLOAT_DTYPES,
            found,
        }),
    }
}

/// Refuses NaN and ±Inf, naming the first bad element by its flat index: the crate's one
/// policy for non-finite input.
pub fn check_finite(values: &[f32], op: &'static str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            op,
            index,
            value: values[index],
        }),
    }
}

/// Builds a tensor of `shape` and `dtype` on `device` from row-major f32 values.
///
/// Values are clamped to the finite range of `dtype` first: a decoded block whose scale
/// was rounded up may land a few ulps past the source dtype's largest value (65504 for
/// F16), which would otherwise become ±Inf. NaN stays NaN.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `values.len()` is not the element count of `shape`;
/// [`Error::UnsupportedDType`] for integer dtypes (f32 values cannot be stored there
/// without silent rounding).
pub fn tensor_from_f32(
    mut values: Vec<f32>,
    shape: &Shape,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    if values.len() != shape.elem_count() {
        return Err(Error::shape(
            "decoded values",
            shape.elem_count(),
            values.len(),
        ));
    }
    let max = float_max(dtype).ok_or(Error::UnsupportedDType {
        op: "tensor_from_f32",
        expected: FLOAT_DTYPES,
        found: dtype,
    })?;
    for v in &mut values {
        *v = v.clamp(-max, max);
    }
    let t = Tensor::from_vec(values, shape.clone(), device)?;
    Ok(if dtype == DType::F32 {
        t
    } else {
        t.to_dtype(dtype)?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_non_contiguous_and_half_tensors() -> Result<()> {
        let t = Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((2, 3))?;
        let tt = t.t()?;
        assert!(!tt.is_contiguous());
        let d = FloatData::from_tensor(&tt, "test")?;
        assert_eq!(d.values, vec![0., 3., 1., 4., 2., 5.]);
        assert_eq!(d.shape.dims(), &[3, 2]);
        let h = FloatData::from_tensor(&t.to_dtype(DType::F16)?, "test")?;
        assert_eq!(h.dtype, DType::F16);
        assert_eq!(h.values, vec![0., 1., 2., 3., 4., 5.]);
        Ok(())
    }

    #[test]
    fn refuses_integers_and_non_finite() -> Result<()> {
        let t = Tensor::new(&[1u8, 2], &Device::Cpu)?;
        assert!(matches!(
            FloatData::from_tensor(&t, "test"),
            Err(Error::UnsupportedDType {
                found: DType::U8,
                ..
            })
        ));
        let t = Tensor::new(&[1f32, 2., f32::INFINITY, f32::NAN], &Device::Cpu)?;
        match FloatData::from_tensor_finite(&t, "test") {
            Err(Error::NonFinite { index, .. }) => assert_eq!(index, 2),
            other => panic!("expected NonFinite, got {other:?}"),
        }
        Ok(())
    }

    #[test]
    fn f32_slice_borrows_or_converts() -> Result<()> {
        let t = Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((2, 3))?;
        let row = t.narrow(0, 1, 1)?;
        let v = with_f32_slice(&row, "test", |s| Ok(s.to_vec()))?;
        assert_eq!(v, vec![3., 4., 5.]);
        let v = with_f32_slice(&t.t()?, "test", |s| Ok(s.to_vec()))?;
        assert_eq!(v, vec![0., 3., 1., 4., 2., 5.]);
        let v = with_f32_slice(&t.to_dtype(DType::F64)?, "test", |s| Ok(s.len()))?;
        assert_eq!(v, 6);
        Ok(())
    }

    #[test]
    fn f64_beyond_f32_is_out_of_range_not_inf() -> Result<()> {
        let t = Tensor::new(&[1.0f64, 3.5e38, f64::INFINITY], &Device::Cpu)?;
        let e = FloatData::from_tensor(&t, "test").unwrap_err();
        assert!(e.to_string().contains("out of f32 range"), "{e}");
        assert!(e.to_string().contains("3.5e38"), "{e}");
        assert!(e.to_string().contains("flat index 1"), "{e}");
        // Rounds to f32::MAX: representable.
        let t = Tensor::new(
            &[f64::from(f32::MAX) * (1.0 + 2f64.powi(-25))],
            &Device::Cpu,
        )?;
        assert_eq!(FloatData::from_tensor(&t, "test")?.values, vec![f32::MAX]);
        // Inf passes through to the finiteness check, which names it.
        let t = Tensor::new(&[f64::NEG_INFINITY], &Device::Cpu)?;
        assert!(matches!(
            FloatData::from_tensor_finite(&t, "test"),
            Err(Error::NonFinite { .. })
        ));
        Ok(())
    }

    #[test]
    fn representable_checks_range_per_dtype() {
        assert!(check_representable(&[65504.0, 65519.0], DType::F16, "t").is_ok());
        assert!(matches!(
            check_representable(&[1.0, 65520.0], DType::F16, "t"),
            Err(Error::OutOfRange { index: 1, .. })
        ));
        assert!(check_representable(&[3.0e38], DType::BF16, "t").is_ok());
        assert!(check_representable(&[3.4e38], DType::BF16, "t").is_err());
        assert!(check_representable(&[f32::MAX], DType::F32, "t").is_ok());
        assert!(check_representable(&[1.0], DType::U8, "t").is_err());
        assert!(checked_elem_count(&Shape::from(vec![1usize << 33, 1 << 33]), "t").is_err());
    }

    #[test]
    fn rebuilds_in_original_dtype() -> Result<()> {
        let shape = Shape::from((2, 2));
        let t = tensor_from_f32(vec![1., 2., 3., 4.], &shape, DType::BF16, &Device::Cpu)?;
        assert_eq!(t.dtype(), DType::BF16);
        assert!(tensor_from_f32(vec![1.], &shape, DType::F32, &Device::Cpu).is_err());
        Ok(())
    }
}
