//! Pruning and clipping: exact counts, tie rules, N:M patterns in every group, oracles built
//! with full sorts, sparse storage round trips, and bad arguments.

use candle_compress::prune::{
    clip_percentile, magnitude_prune, magnitude_prune_global, nm_prune, satisfies_nm,
    BitmaskSparse, NmSparse, SparseValues,
};
use candle_compress::scheme::Scheme;
use candle_compress::{Compressed, Error};
use candle_core::{DType, Device, Shape, Tensor};
use proptest::prelude::*;

mod common;

use common::tensors::flat_f32;

const CPU: Device = Device::Cpu;

/// Values on a coarse grid (many ties) or continuous, some exact zeros.
fn values(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![
            (-6i32..=6).prop_map(|v| v as f32 * 0.5),
            -100f32..100f32,
            Just(0.0f32)
        ],
        n,
    )
}

fn shaped() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    prop::collection::vec(1usize..9, 1..=3).prop_flat_map(|dims| {
        let n = dims.iter().product();
        (Just(dims), values(n))
    })
}

/// The indices a magnitude prune of `k` must zero: full sort by (|x|, index).
fn oracle_pruned(x: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].abs().partial_cmp(&x[b].abs()).unwrap().then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn magnitude_prune_matches_the_sorted_oracle((dims, x) in shaped(), s in 0.0f64..=1.0) {
        let t = Tensor::from_vec(x.clone(), dims.as_slice(), &CPU).unwrap();
        let p = magnitude_prune(&t, s).unwrap();
        let n = x.len();
        let k = ((s * n as f64).round() as usize).min(n);
        let mut want = x.clone();
        for i in oracle_pruned(&x, k) {
            want[i] = 0.0;
        }
        let got = flat_f32(&p.tensor);
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(p.tensor.dims(), dims.as_slice());
        let newly = x.iter().zip(&got).filter(|(a, b)| **a != 0.0 && **b == 0.0).count();
        prop_assert_eq!(p.zeroed, newly);
        // Zeros: exactly k, unless the input already had more.
        let zeros_in = x.iter().filter(|v| **v == 0.0).count();
        prop_assert_eq!(got.iter().filter(|v| **v == 0.0).count(), k.max(zeros_in));
    }

    #[test]
    fn global_prune_hits_the_sparsity_exactly(
        a in values(37), b in values(64), c in values(5), s in 0.0f64..=1.0
    ) {
        let ts = [
            Tensor::from_vec(a.clone(), 37, &CPU).unwrap(),
            Tensor::from_vec(b.clone(), (8, 8), &CPU).unwrap(),
            Tensor::from_vec(c.clone(), 5, &CPU).unwrap(),
        ];
        let p = magnitude_prune_global(&[&ts[0], &ts[1], &ts[2]], s).unwrap();
        let all: Vec<f32> = a.iter().chain(&b).chain(&c).copied().collect();
        let k = ((s * all.len() as f64).round() as usize).min(all.len());
        // Oracle: full sort over the concatenation (tensor order, then index).
        let mut want = all.clone();
        for i in oracle_pruned(&all, k) {
            want[i] = 0.0;
        }
        let got: Vec<f32> = p.tensors.iter().flat_map(flat_f32).collect();
        prop_assert_eq!(&got, &want);
        // The requested count is hit exactly overall (so within one element per tensor);
        // pre-existing zeros that were not selected stay zero on top of it.
        let zeros_after = got.iter().filter(|v| **v == 0.0).count();
        let zeros_in = all.iter().filter(|v| **v == 0.0).count();
        prop_assert!(zeros_after >= k && zeros_after <= k + zeros_in);
        if zeros_in == 0 {
            prop_assert_eq!(zeros_after, k);
        }
        for (t, (before, z)) in p.tensors.iter().zip([&a, &b, &c].iter().zip(&p.zeroed)) {
            let after = flat_f32(t);
            let newly = before.iter().zip(&after).filter(|(x, y)| **x != 0.0 && **y == 0.0).count();
            prop_assert_eq!(*z, newly);
        }
        if k > 0 {
            // One threshold: every pruned magnitude <= threshold <= every kept magnitude.
            for (x, y) in all.iter().zip(&got) {
                if *y == 0.0 { prop_assert!(x.abs() <= p.threshold); }
                else { prop_assert!(x.abs() >= p.threshold); }
            }
        }
    }

    #[test]
    fn nm_pattern_holds_in_every_group(
        rows in 1usize..6, groups in 1usize..6, pick in 0usize..2, seed in values(6 * 5 * 8)
    ) {
        let (n, m) = [(2, 4), (4, 8)][pick];
        let cols = groups * m;
        let x: Vec<f32> = seed[..rows * cols].to_vec();
        let t = Tensor::from_vec(x.clone(), (rows, cols), &CPU).unwrap();
        let p = nm_prune(&t, n, m).unwrap();
        let got = flat_f32(&p.tensor);
        prop_assert!(satisfies_nm(&got, n, m));
        for (gi, (g_in, g_out)) in x.chunks(m).zip(got.chunks(m)).enumerate() {
            // Oracle: the n largest magnitudes of the group, ties to the lower index.
            let mut idx: Vec<usize> = (0..m).collect();
            idx.sort_by(|&a, &b| g_in[b].abs().partial_cmp(&g_in[a].abs()).unwrap().then(a.cmp(&b)));
            for (r, &i) in idx.iter().enumerate() {
                let want = if r < n { g_in[i] } else { 0.0 };
                prop_assert_eq!(g_out[i], want, "group {}", gi);
            }
            prop_assert!(g_out.iter().filter(|v| **v != 0.0).count() <= n);
        }
    }

    #[test]
    fn clip_matches_the_sorted_oracle(x in values(50), p in 1.0f64..=100.0) {
        let t = Tensor::from_vec(x.clone(), (5, 10), &CPU).unwrap();
        let c = clip_percentile(&t, p).unwrap();
        let mut mags: Vec<f32> = x.iter().map(|v| v.abs()).filter(|v| *v != 0.0).collect();
        mags.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let got = flat_f32(&c.tensor);
        if mags.is_empty() {
            prop_assert_eq!(got, x);
            prop_assert_eq!(c.clipped, 0);
        } else {
            let rank = ((p / 100.0 * mags.len() as f64).ceil() as usize).clamp(1, mags.len());
            let tau = mags[rank - 1];
            prop_assert_eq!(c.threshold, tau);
            let want: Vec<f32> = x.iter().map(|v| v.clamp(-tau, tau)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(c.clipped, x.iter().filter(|v| v.abs() > tau).count());
        }
    }

    #[test]
    fn sparse_layouts_round_trip((dims, x) in shaped(), d in 0usize..4) {
        let dtype = [DType::F32, DType::F16, DType::BF16, DType::F64][d];
        // Values representable in every dtype: round through the dtype first.
        let t = Tensor::from_vec(x, dims.as_slice(), &CPU).unwrap().to_dtype(dtype).unwrap();
        let x = flat_f32(&t);
        let shape = Shape::from(dims.clone());
        let b = BitmaskSparse::from_values(&x, &shape, dtype, None).unwrap();
        let nnz = x.iter().filter(|v| **v != 0.0).count();
        prop_assert_eq!(b.nnz(), nnz);
        prop_assert_eq!(b.size_bytes(), BitmaskSparse::predicted_size(&shape, dtype, nnz, None));
        prop_assert_eq!(
            b.size_bytes(),
            x.len().div_ceil(8) + nnz * dtype.size_in_bytes() + 8 * dims.len() + 1 + 1
        );
        let back = b.decompress(&CPU).unwrap();
        prop_assert_eq!(back.dtype(), dtype);
        prop_assert_eq!(flat_f32(&back), x.clone());
        // N:M after pruning 2:4 along a last dimension that is a multiple of 4.
        let cols = *dims.last().unwrap();
        if cols % 4 == 0 {
            let pruned = flat_f32(&nm_prune(&t, 2, 4).unwrap().tensor);
            let s = NmSparse::from_values(&pruned, &shape, dtype, 2, 4, None).unwrap();
            prop_assert_eq!(s.size_bytes(), NmSparse::predicted_size(&shape, dtype, 2, 4, None));
            prop_assert_eq!(flat_f32(&s.decompress(&CPU).unwrap()), pruned);
        }
    }
}

#[test]
fn ties_prune_the_lower_index_first() -> candle_compress::Result<()> {
    let t = Tensor::new(&[1.0f32, -1.0, 1.0, 2.0, 1.0], &CPU)?;
    let p = magnitude_prune(&t, 0.4)?; // k = 2 of the four 1.0s: indices 0 and 1
    assert_eq!(flat_f32(&p.tensor), [0.0, 0.0, 1.0, 2.0, 1.0]);
    let a = Tensor::new(&[3.0f32, 1.0], &CPU)?;
    let b = Tensor::new(&[1.0f32, 1.0], &CPU)?;
    let g = magnitude_prune_global(&[&a, &b], 0.5)?; // k = 2 of three 1.0s: a[1], b[0]
    assert_eq!(flat_f32(&g.tensors[0]), [3.0, 0.0]);
    assert_eq!(flat_f32(&g.tensors[1]), [0.0, 1.0]);
    assert_eq!(g.zeroed, [1, 1]);
    let n = nm_prune(&Tensor::new(&[[1.0f32, 1.0, 1.0, 1.0]], &CPU)?, 2, 4)?;
    assert_eq!(flat_f32(&n.tensor), [1.0, 1.0, 0.0, 0.0]);
    Ok(())
}

#[test]
fn pruning_keeps_dtype_and_layout() -> candle_compress::Result<()> {
    let t = Tensor::arange(1f32, 9., &CPU)?
        .reshape((2, 4))?
        .t()?
        .to_dtype(DType::BF16)?;
    let p = magnitude_prune(&t, 0.25)?;
    assert_eq!(p.tensor.dtype(), DType::BF16);
    assert_eq!(p.tensor.dims(), &[4, 2]);
    assert_eq!(
        flat_f32(&p.tensor),
        [0.0, 5.0, 0.0, 6.0, 3.0, 7.0, 4.0, 8.0]
    );
    let c = clip_percentile(&t.to_dtype(DType::F16)?, 50.0)?;
    assert_eq!(c.tensor.dtype(), DType::F16);
    assert_eq!(c.threshold, 4.0);
    Ok(())
}

#[test]
fn quantized_sparse_values_are_smaller_and_close() -> candle_compress::Result<()> {
    let t = Tensor::randn(0f32, 1.0, (16, 64), &CPU)?;
    let x = flat_f32(&magnitude_prune(&t, 0.5)?.tensor);
    let shape = Shape::from((16, 64));
    let q = Scheme::Int8 { block: 32 };
    let b = BitmaskSparse::from_values(&x, &shape, DType::F32, Some(q))?;
    assert!(matches!(b.values(), SparseValues::Quantized(_)));
    assert_eq!(
        b.size_bytes(),
        BitmaskSparse::predicted_size(&shape, DType::F32, 512, Some(q))
    );
    // 128 mask bytes + 512 int8 codes + 16 f16 scales + headers
    assert_eq!(b.size_bytes(), 128 + (512 + 32 + 9 + 5) + 17 + 1);
    let back = flat_f32(&b.decompress(&CPU)?);
    for (a, y) in x.iter().zip(&back) {
        assert_eq!(*a == 0.0, *y == 0.0);
        assert!((a - y).abs() < 0.05, "{a} vs {y}");
    }
    Ok(())
}

#[test]
fn bad_arguments_are_errors() -> candle_compress::Result<()> {
    let t = Tensor::ones((2, 8), DType::F32, &CPU)?;
    for s in [-0.1, 1.1, f64::NAN] {
        assert!(
            matches!(magnitude_prune(&t, s), Err(Error::InvalidArgument { .. })),
            "{s}"
        );
        assert!(matches!(
            magnitude_prune_global(&[&t], s),
            Err(Error::InvalidArgument { .. })
        ));
    }
    for (n, m) in [(0, 4), (5, 4), (1, 0), (2, 64)] {
        assert!(
            matches!(nm_prune(&t, n, m), Err(Error::InvalidArgument { .. })),
            "{n}:{m}"
        );
    }
    assert!(matches!(
        nm_prune(&t, 2, 3),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        nm_prune(&Tensor::new(1f32, &CPU)?, 1, 1),
        Err(Error::ShapeMismatch { .. })
    ));
    for p in [0.0, -1.0, 100.5, f64::NAN] {
        assert!(
            matches!(clip_percentile(&t, p), Err(Error::InvalidArgument { .. })),
            "{p}"
        );
    }
    let bad = Tensor::new(&[1.0f32, 2.0, f32::NAN], &CPU)?;
    assert!(matches!(
        magnitude_prune(&bad, 0.5),
        Err(Error::NonFinite { index: 2, .. })
    ));
    assert!(matches!(
        magnitude_prune_global(&[&t, &bad], 0.5),
        Err(Error::NonFinite { index: 2, .. })
    ));
    assert!(matches!(
        clip_percentile(&bad, 50.0),
        Err(Error::NonFinite { .. })
    ));
    let ints = Tensor::new(&[1u32, 2], &CPU)?;
    assert!(matches!(
        magnitude_prune(&ints, 0.5),
        Err(Error::UnsupportedDType { .. })
    ));
    // Empty tensors are fine.
    let empty = Tensor::zeros((0, 4), DType::F32, &CPU)?;
    assert_eq!(magnitude_prune(&empty, 0.5)?.zeroed, 0);
    assert_eq!(nm_prune(&empty, 2, 4)?.tensor.dims(), &[0, 4]);
    assert_eq!(clip_percentile(&empty, 50.0)?.clipped, 0);
    // A broken N:M pattern cannot be stored as N:M.
    let dense = [1.0f32, 2.0, 3.0, 0.0];
    assert!(matches!(
        NmSparse::from_values(&dense, &Shape::from((1, 4)), DType::F32, 2, 4, None),
        Err(Error::InvalidArgument { .. })
    ));
    Ok(())
}
