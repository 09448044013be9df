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
    /// [`Error::UnsupportedDType`] for integer dtypes (U8, U32, I64, …); candle errors from
    /// the device copy.
    pub fn from_tensor(tensor: &Tensor, op: &'static str) -> Result<Self> {
        ensure_float(tensor.dtype(), op)?;
        let values = tensor
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
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
/// # Errors
/// [`Error::ShapeMismatch`] when `values.len()` is not the element count of `shape`.
pub fn tensor_from_f32(
    values: Vec<f32>,
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
    fn rebuilds_in_original_dtype() -> Result<()> {
        let shape = Shape::from((2, 2));
        let t = tensor_from_f32(vec![1., 2., 3., 4.], &shape, DType::BF16, &Device::Cpu)?;
        assert_eq!(t.dtype(), DType::BF16);
        assert!(tensor_from_f32(vec![1.], &shape, DType::F32, &Device::Cpu).is_err());
        Ok(())
    }
}
