//! Magnitude pruning (per tensor and global), N:M structured sparsity and percentile
//! clipping.
//!
//! All thresholds come from selection, never a full sort: per tensor
//! `select_nth_unstable` on `(magnitude, index)` keys (O(n)), globally a two-pass radix
//! select over the f32 bit patterns of the magnitudes (O(total), 2×65536 counters, no copy
//! of the weights).
//!
//! Ties are broken by position so the requested counts are hit exactly: among equal
//! magnitudes the **lower flat index is pruned first** (and, globally, tensors in the order
//! given). Existing zeros count as the smallest magnitudes, so they are "pruned" first and
//! a tensor that already has more zeros than requested keeps them.
//!
//! Inputs are float tensors (F32, F16, BF16, F64; any layout); outputs keep the shape and
//! dtype. NaN/±Inf are refused with [`Error::NonFinite`].

use candle_core::Tensor;

use crate::error::{Error, Num, Result};
use crate::input::{tensor_from_f32, FloatData};

/// The result of pruning one tensor.
#[derive(Debug, Clone)]
pub struct Pruned {
    /// The pruned tensor (same shape and dtype as the input).
    pub tensor: Tensor,
    /// Non-zero elements this call set to zero.
    pub zeroed: usize,
    /// The magnitude threshold: pruned elements have `|x| <= threshold` (0 when nothing
    /// was pruned; for N:M, the largest magnitude pruned in any group).
    pub threshold: f32,
}

/// The result of [`clip_percentile`].
#[derive(Debug, Clone)]
pub struct Clipped {
    /// The clipped tensor (same shape and dtype as the input).
    pub tensor: Tensor,
    /// Elements whose magnitude was above the threshold and got clipped.
    pub clipped: usize,
    /// The clip threshold `τ`: every value is now in `[-τ, τ]`.
    pub threshold: f32,
}

fn check_sparsity(sparsity: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&sparsity) {
        return Err(Error::invalid(
            "sparsity",
            format!("must be in [0, 1], found {}", Num(sparsity)),
        ));
    }
    Ok(())
}

/// Elements to prune for a requested sparsity: `round(sparsity * n)` (half away from 0).
pub(crate) fn target_zeros(sparsity: f64, n: usize) -> usize {
    ((sparsity * n as f64).round() as usize).min(n)
}

/// Sign-cleared bit pattern: for finite floats, integer order is magnitude order.
#[inline]
fn mag_bits(v: f32) -> u32 {
    v.to_bits() & 0x7fff_ffff
}

/// Zeros the `k` smallest-magnitude elements of `x` (ties: lower index first). Returns the
/// number of non-zeros zeroed and the threshold (largest pruned magnitude, 0 if `k == 0`).
pub(crate) fn prune_smallest(x: &mut [f32], k: usize) -> (usize, f32) {
    let k = k.min(x.len());
    if k == 0 {
        return (0, 0.0);
    }
    // (magnitude bits, index) packed in one u64: a total order with the tie rule built in.
    // Indices above u32 use a wider key.
    let threshold;
    let mut zeroed = 0;
    if x.len() <= u32::MAX as usize {
        let mut keys: Vec<u64> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| (u64::from(mag_bits(v)) << 32) | i as u64)
            .collect();
        keys.select_nth_unstable(k - 1);
        threshold = f32::from_bits((keys[k - 1] >> 32) as u32);
        for &key in &keys[..k] {
            let i = (key & 0xffff_ffff) as usize;
            zeroed += usize::from(x[i] != 0.0);
            x[i] = 0.0;
        }
    } else {
        let mut keys: Vec<(u32, usize)> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| (mag_bits(v), i))
            .collect();
        keys.select_nth_unstable(k - 1);
        threshold = f32::from_bits(keys[k - 1].0);
        for &(_, i) in &keys[..k] {
            zeroed += usize::from(x[i] != 0.0);
            x[i] = 0.0;
        }
    }
    (zeroed, threshold)
}

/// Magnitude (L1) pruning of one tensor: sets the `round(sparsity * n)` smallest-|x|
/// elements to zero (ties: lower flat index first).
///
/// ```
/// use candle_compress::prune::magnitude_prune;
/// use candle_core::{Device, Tensor};
///
/// let w = Tensor::new(&[[0.5f32, -0.1, 0.3], [-0.2, 0.1, 0.9]], &Device::Cpu)?;
/// let p = magnitude_prune(&w, 0.5)?;
/// // The three smallest magnitudes (0.1 at index 1, 0.1 at index 4, 0.2) are zeroed.
/// assert_eq!(p.tensor.to_vec2::<f32>()?, [[0.5, 0.0, 0.3], [0.0, 0.0, 0.9]]);
/// assert_eq!((p.zeroed, p.threshold), (3, 0.2));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] unless `0 <= sparsity <= 1`; dtype and non-finite errors as
/// in the [module docs](self).
pub fn magnitude_prune(tensor: &Tensor, sparsity: f64) -> Result<Pruned> {
    check_sparsity(sparsity)?;
    let mut d = FloatData::from_tensor_finite(tensor, "magnitude_prune")?;
    let k = target_zeros(sparsity, d.values.len());
    let (zeroed, threshold) = prune_smallest(&mut d.values, k);
    let tensor = tensor_from_f32(d.values, &d.shape, d.dtype, tensor.device())?;
    Ok(Pruned {
        tensor,
        zeroed,
        threshold,
    })
}

/// The outcome of a global selection: prune `|x| < threshold`, and of the elements with
/// `|x| == threshold` the first `at_threshold` in (tensor, flat index) order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GlobalCut {
    pub threshold: f32,
    pub at_threshold: usize,
}

/// Radix select of the `k`-th smallest magnitude over several slices (k >= 1, k <= total).
pub(crate) fn global_cut(slices: &[&[f32]], k: usize) -> GlobalCut {
    debug_assert!(k >= 1);
    let mut select = super::global_select::GlobalSelect::new();
    slices.iter().for_each(|s| select.count_high(s));
    select.finish_high(k);
    slices.iter().for_each(|s| select.count_low(s));
    select.cut(k)
}

/// Applies a [`GlobalCut`] to the slices in order; returns the zeroed non-zeros per slice.
pub(crate) fn apply_global_cut(slices: &mut [&mut [f32]], cut: GlobalCut) -> Vec<usize> {
    let t = mag_bits(cut.threshold);
    let mut remaining = cut.at_threshold;
    slices
        .iter_mut()
        .map(|s| {
            let mut zeroed = 0;
            for v in s.iter_mut() {
                let b = mag_bits(*v);
                let prune = b < t
                    || (b == t && remaining > 0 && {
                        remaining -= 1;
                        true
                    });
                if prune {
                    zeroed += usize::from(*v != 0.0);
                    *v = 0.0;
                }
            }
            zeroed
        })
        .collect()
}

/// The result of [`magnitude_prune_global`].
#[derive(Debug, Clone)]
pub struct GlobalPruned {
    /// The pruned tensors, in the order given.
    pub tensors: Vec<Tensor>,
    /// Non-zeros set to zero, per tensor.
    pub zeroed: Vec<usize>,
    /// The one magnitude threshold shared by all tensors.
    pub threshold: f32,
}

/// Magnitude pruning with one threshold across all `tensors`: exactly
/// `round(sparsity * total)` elements are zeroed overall, those with the smallest
/// magnitudes of any tensor (ties at the threshold: earlier tensor, then lower flat index,
/// first). Tensors with many small weights end up sparser than others.
///
/// ```
/// use candle_compress::prune::magnitude_prune_global;
/// use candle_core::{Device, Tensor};
///
/// let a = Tensor::new(&[0.1f32, 0.2, 0.3, 0.4], &Device::Cpu)?;
/// let b = Tensor::new(&[1.0f32, 2.0, 0.15, 4.0], &Device::Cpu)?;
/// let p = magnitude_prune_global(&[&a, &b], 0.5)?;
/// assert_eq!(p.zeroed, vec![3, 1]); // 0.1, 0.15, 0.2, 0.3 are the 4 smallest
/// assert_eq!(p.threshold, 0.3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`magnitude_prune`], for any of the tensors.
pub fn magnitude_prune_global(tensors: &[&Tensor], sparsity: f64) -> Result<GlobalPruned> {
    check_sparsity(sparsity)?;
    let mut data = tensors
        .iter()
        .map(|t| FloatData::from_tensor_finite(t, "magnitude_prune_global"))
        .collect::<Result<Vec<_>>>()?;
    let total: usize = data.iter().map(|d| d.values.len()).sum();
    let k = target_zeros(sparsity, total);
    let (zeroed, threshold) = if k == 0 {
        (vec![0; data.len()], 0.0)
    } else {
        let cut = global_cut(
            &data.iter().map(|d| d.values.as_slice()).collect::<Vec<_>>(),
            k,
        );
        let mut slices: Vec<&mut [f32]> =
            data.iter_mut().map(|d| d.values.as_mut_slice()).collect();
        (apply_global_cut(&mut slices, cut), cut.threshold)
    };
    let tensors = data
        .into_iter()
        .zip(tensors)
        .map(|(d, t)| tensor_from_f32(d.values, &d.shape, d.dtype, t.device()))
        .collect::<Result<Vec<_>>>()?;
    Ok(GlobalPruned {
        tensors,
        zeroed,
        threshold,
    })
}

/// The largest `m` accepted by N:M pruning (the per-group ranking is O(m²)).
pub const MAX_NM_GROUP: usize = 32;

pub(crate) fn check_nm(n: usize, m: usize) -> Result<()> {
    if m == 0 || m > MAX_NM_GROUP || n == 0 || n > m {
        return Err(Error::invalid(
            "n:m",
            format!("need 1 <= n <= m <= {MAX_NM_GROUP}, found {n}:{m}"),
        ));
    }
    Ok(())
}

/// Checks that the last dimension can be split into groups of `m`; returns it.
pub(crate) fn nm_cols(dims: &[usize], m: usize) -> Result<usize> {
    match dims.last() {
        Some(&c) if c.is_multiple_of(m) => Ok(c),
        _ => Err(Error::shape(
            format!("N:M pruning input (last dimension a multiple of {m})"),
            format!("[.., k*{m}]"),
            dims,
        )),
    }
}

/// Keeps the `n` largest-magnitude values of every group of `m` consecutive values (groups
/// never straddle rows since the row length is a multiple of `m`). Ties: the lower index
/// is kept. Returns (zeroed non-zeros, largest pruned magnitude).
pub(crate) fn prune_nm_slice(x: &mut [f32], n: usize, m: usize) -> (usize, f32) {
    let mut zeroed = 0;
    let mut threshold = 0f32;
    let mut drop = [false; MAX_NM_GROUP];
    for g in x.chunks_exact_mut(m) {
        for i in 0..m {
            let bi = mag_bits(g[i]);
            // Rank of i: elements that beat it (larger, or equal with a lower index).
            let rank = (0..m)
                .filter(|&j| {
                    let bj = mag_bits(g[j]);
                    bj > bi || (bj == bi && j < i)
                })
                .count();
            drop[i] = rank >= n;
        }
        for i in 0..m {
            if drop[i] {
                zeroed += usize::from(g[i] != 0.0);
                threshold = threshold.max(g[i].abs());
                g[i] = 0.0;
            }
        }
    }
    (zeroed, threshold)
}

/// Whether every group of `m` consecutive values of the row-major `x` holds at most `n`
/// non-zeros (`x.len()` must be a multiple of `m`).
#[must_use]
pub fn satisfies_nm(x: &[f32], n: usize, m: usize) -> bool {
    m > 0
        && x.len().is_multiple_of(m)
        && x.chunks_exact(m)
            .all(|g| g.iter().filter(|v| **v != 0.0).count() <= n)
}

/// N:M structured pruning along the input dimension (the last one; for a
/// `candle_nn::Linear` weight `[out, in]` that is `in`): in every group of `m` consecutive
/// values of a row, the `n` largest magnitudes are kept and the others zeroed (ties: lower
/// index kept). 2:4 is the pattern sparse tensor cores accelerate.
///
/// ```
/// use candle_compress::prune::{nm_prune, satisfies_nm};
/// use candle_core::{Device, Tensor};
///
/// let w = Tensor::new(&[[0.1f32, -0.9, 0.5, 0.2, 1.0, 1.0, 1.0, 0.0]], &Device::Cpu)?;
/// let p = nm_prune(&w, 2, 4)?;
/// assert_eq!(p.tensor.to_vec2::<f32>()?, [[0.0, -0.9, 0.5, 0.0, 1.0, 1.0, 0.0, 0.0]]);
/// assert!(satisfies_nm(&p.tensor.flatten_all()?.to_vec1::<f32>()?, 2, 4));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] unless `1 <= n <= m <= MAX_NM_GROUP`;
/// [`Error::ShapeMismatch`] unless the last dimension is a multiple of `m` (a scalar is
/// refused); dtype and non-finite errors as in the [module docs](self).
pub fn nm_prune(tensor: &Tensor, n: usize, m: usize) -> Result<Pruned> {
    check_nm(n, m)?;
    nm_cols(tensor.dims(), m)?;
    let mut d = FloatData::from_tensor_finite(tensor, "nm_prune")?;
    let (zeroed, threshold) = prune_nm_slice(&mut d.values, n, m);
    let tensor = tensor_from_f32(d.values, &d.shape, d.dtype, tensor.device())?;
    Ok(Pruned {
        tensor,
        zeroed,
        threshold,
    })
}

pub(crate) fn check_percentile(p: f64) -> Result<()> {
    if !(p > 0.0 && p <= 100.0) {
        return Err(Error::invalid(
            "percentile",
            format!("must be in (0, 100], found {}", Num(p)),
        ));
    }
    Ok(())
}

/// Clips `x` to `[-τ, τ]` with `τ` the `p`-th percentile of the non-zero magnitudes
/// (nearest rank: the `ceil(p/100 · nnz)`-th smallest). Zeros (from pruning) are ignored so
/// clipping after pruning never zeroes kept weights. Returns (clipped count, τ); τ = 0
/// when there is no non-zero.
pub(crate) fn clip_slice(x: &mut [f32], p: f64) -> (usize, f32) {
    let mut mags: Vec<u32> = x.iter().map(|&v| mag_bits(v)).filter(|&b| b != 0).collect();
    let nnz = mags.len();
    if nnz == 0 {
        return (0, 0.0);
    }
    let rank = ((p / 100.0 * nnz as f64).ceil() as usize).clamp(1, nnz);
    let (_, &mut t, _) = mags.select_nth_unstable(rank - 1);
    let tau = f32::from_bits(t);
    let mut clipped = 0;
    for v in x.iter_mut() {
        if mag_bits(*v) > t {
            clipped += 1;
            *v = tau.copysign(*v);
        }
    }
    (clipped, tau)
}

/// Percentile clipping: clamps every value to `[-τ, τ]` where `τ` is the `percentile`-th
/// percentile of the non-zero magnitudes (nearest-rank method, found by selection; zeros
/// are ignored so that clipping a pruned tensor keeps its kept weights non-zero). Removes
/// the outliers that stretch quantization scales; `percentile = 100` changes nothing.
///
/// ```
/// use candle_compress::prune::clip_percentile;
/// use candle_core::{Device, Tensor};
///
/// let w = Tensor::new(&[1.0f32, -2.0, 3.0, -40.0], &Device::Cpu)?;
/// let c = clip_percentile(&w, 75.0)?; // 3rd smallest of 4 magnitudes: 3
/// assert_eq!(c.tensor.to_vec1::<f32>()?, [1.0, -2.0, 3.0, -3.0]);
/// assert_eq!((c.clipped, c.threshold), (1, 3.0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::InvalidArgument`] unless `0 < percentile <= 100`; dtype and non-finite errors
/// as in the [module docs](self).
pub fn clip_percentile(tensor: &Tensor, percentile: f64) -> Result<Clipped> {
    check_percentile(percentile)?;
    let mut d = FloatData::from_tensor_finite(tensor, "clip_percentile")?;
    let (clipped, threshold) = clip_slice(&mut d.values, percentile);
    let tensor = tensor_from_f32(d.values, &d.shape, d.dtype, tensor.device())?;
    Ok(Clipped {
        tensor,
        clipped,
        threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_cut_matches_a_sorted_oracle() {
        let mut s = 12345u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for trial in 0..50 {
            let a: Vec<f32> = (0..97)
                .map(|_| ((next() % 21) as f32 - 10.0) * 0.125)
                .collect();
            let b: Vec<f32> = (0..31)
                .map(|_| {
                    f32::from_bits((next() as u32) & 0x3fff_ffff)
                        * if trial % 2 == 0 { 1.0 } else { -1.0 }
                })
                .collect();
            let mut all: Vec<(u32, usize)> = a
                .iter()
                .chain(&b)
                .enumerate()
                .map(|(i, v)| (mag_bits(*v), i))
                .collect();
            all.sort();
            for k in [1, 2, 50, 127, 128] {
                let cut = global_cut(&[&a, &b], k);
                assert_eq!(mag_bits(cut.threshold), all[k - 1].0, "k {k}");
                let mut a2 = a.clone();
                let mut b2 = b.clone();
                apply_global_cut(&mut [&mut a2, &mut b2], cut);
                let pruned: Vec<usize> = a2
                    .iter()
                    .chain(&b2)
                    .zip(a.iter().chain(&b))
                    .enumerate()
                    .filter(|(_, (new, _))| **new == 0.0)
                    .map(|(i, _)| i)
                    .collect();
                let mut want: Vec<usize> = all[..k].iter().map(|&(_, i)| i).collect();
                // Elements that were zero already stay zero whether selected or not.
                want.extend(
                    a.iter()
                        .chain(&b)
                        .enumerate()
                        .filter(|(_, v)| **v == 0.0)
                        .map(|(i, _)| i),
                );
                want.sort();
                want.dedup();
                assert_eq!(pruned, want, "k {k}");
            }
        }
    }
}
