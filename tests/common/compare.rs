//! Comparing floats exactly.

/// The bit patterns of `v`: comparing these with `assert_eq!` demands bit-identical
/// results (it tells -0.0 from 0.0 and treats a NaN as equal to the same NaN), which `==`
/// on floats does not.
pub fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}
