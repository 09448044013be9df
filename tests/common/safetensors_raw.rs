//! Taking a safetensors file apart and putting it back together, for tests that build
//! files by hand or corrupt one part of a valid file.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

/// A tensor as (name, dtype, shape, little-endian bytes).
pub type RawPart = (String, Dtype, Vec<usize>, Vec<u8>);

/// A safetensors file holding `tensors`, given as (name, dtype, shape, bytes), without
/// `__metadata__`. Panics when bytes and shape disagree.
pub fn serialize(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    serialize_views(tensors, None)
}

/// [`serialize`] with the `__metadata__` map `meta`.
pub fn serialize_with_metadata(
    tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    meta: HashMap<String, String>,
) -> Vec<u8> {
    serialize_views(tensors, Some(meta))
}

fn serialize_views(
    tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    meta: Option<HashMap<String, String>>,
) -> Vec<u8> {
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, meta).unwrap()
}

/// The tensors and `__metadata__` of a valid file that has metadata; panics otherwise.
pub fn parts_of(bytes: &[u8]) -> (Vec<RawPart>, HashMap<String, String>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    (tensors, meta.metadata().clone().unwrap())
}

/// The inverse of [`parts_of`], after a test has edited the parts.
pub fn rebuild(tensors: &[RawPart], meta: HashMap<String, String>) -> Vec<u8> {
    let borrowed: Vec<_> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    serialize_with_metadata(&borrowed, meta)
}
