//! [`Part`]: one encoded tensor (dtype, shape, little-endian bytes) ready for a
//! safetensors writer — what our format and the compressed-tensors writer both store.

use std::borrow::Cow;

use half::f16;
use safetensors::tensor::{Dtype, View};

use super::part_writer::Slot;

/// One encoded tensor: dtype, shape and little-endian bytes (`data.len()` is the shape's
/// element count × the dtype's size; the constructors keep that true).
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl Part {
    /// An F32 part of `shape` holding `v`.
    pub fn f32(shape: Vec<usize>, v: &[f32]) -> Self {
        Self {
            dtype: Dtype::F32,
            shape,
            data: f32_bytes(v),
        }
    }

    /// An I8 part of `shape` holding `v`.
    pub fn i8(shape: Vec<usize>, v: &[i8]) -> Self {
        Self {
            dtype: Dtype::I8,
            shape,
            data: i8_bytes(v),
        }
    }

    /// The header entry of this part under `name`.
    pub fn slot(&self, name: &str) -> Slot {
        Slot {
            name: name.to_string(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            len: self.data.len(),
        }
    }
}

impl View for &Part {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// `i8` values as bytes (two's complement, one per byte).
pub(crate) fn i8_bytes(v: &[i8]) -> Vec<u8> {
    v.iter().map(|&x| x as u8).collect()
}

/// `f16` values as little-endian bytes.
pub(crate) fn f16_bytes(v: &[f16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `f32` values as little-endian bytes.
pub(crate) fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
