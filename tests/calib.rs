//! Percentile scales and streaming calibration statistics against exact sort-based
//! oracles (issue 5, "must show" 4), plus their bad-input errors.

use candle_compress::quant::calib::{CalibStats, ChannelAbsMax};
use candle_compress::quant::scale::{abs_percentile, percentile_rank, ScaleMode};
use candle_compress::Error;
use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;

mod common;

use common::oracle::sorted_percentile;

/// The histogram bin of a magnitude, as documented in `quant::calib`.
fn bin(v: f32) -> u32 {
    v.abs().to_bits() >> 16
}

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        6 => -1000f32..1000f32,
        1 => Just(0.0f32),
        1 => -1e-3f32..1e-3f32,
        1 => -1e-39f32..1e-39f32, // subnormals
        1 => -1e30f32..1e30f32,
    ]
}

fn percentile() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => 0.001f32..=100.0f32,
        1 => Just(100.0f32),
        1 => Just(99.0f32),
        1 => Just(50.0f32),
    ]
}

/// Mean and population std by a plain two-pass loop in f64.
fn oracle_moments(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / n;
    (mean, var.sqrt())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn percentile_by_selection_equals_sort(v in prop::collection::vec(value(), 1..400), p in percentile()) {
        let got = abs_percentile(&v, p).unwrap();
        prop_assert_eq!(got.to_bits(), sorted_percentile(&v, p).to_bits());
        let scale = ScaleMode::Percentile(p).scale(&v, 127).unwrap();
        prop_assert_eq!(scale, sorted_percentile(&v, p) / 127.0);
        prop_assert_eq!(percentile_rank(v.len(), 100.0), v.len() - 1);
    }

    #[test]
    fn calib_stats_match_oracle_and_streaming_equals_all_at_once(
        v in prop::collection::vec(value(), 1..600),
        cuts in prop::collection::vec(0usize..600, 0..6),
        p in percentile(),
    ) {
        let mut all = CalibStats::new();
        all.observe_slice(&v).unwrap();

        // Streaming: the same values in batches cut at random points (some empty).
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(v.len())).collect();
        cuts.sort_unstable();
        let mut streamed = CalibStats::new();
        let mut start = 0;
        for &c in cuts.iter().chain(std::iter::once(&v.len())) {
            streamed.observe_slice(&v[start..c]).unwrap();
            start = c;
        }
        // ... and through `merge` of two halves.
        let mid = v.len() / 2;
        let mut left = CalibStats::new();
        left.observe_slice(&v[..mid]).unwrap();
        let mut right = CalibStats::new();
        right.observe_slice(&v[mid..]).unwrap();
        left.merge(&right);

        let (mean, std) = oracle_moments(&v);
        let scale = v.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max).max(1e-300);
        let exact = sorted_percentile(&v, p);
        for s in [&all, &streamed, &left] {
            let sum = s.summary().unwrap();
            prop_assert_eq!(sum.count, v.len() as u64);
            prop_assert_eq!(sum.min, v.iter().copied().fold(f32::INFINITY, f32::min));
            prop_assert_eq!(sum.max, v.iter().copied().fold(f32::NEG_INFINITY, f32::max));
            prop_assert_eq!(sum.max_abs, v.iter().fold(0f32, |m, x| m.max(x.abs())));
            // f64 accumulation: agreement to ~1e-12 of the data's magnitude.
            prop_assert!((sum.mean - mean).abs() <= 1e-12 * scale, "mean {} vs {}", sum.mean, mean);
            prop_assert!((sum.std - std).abs() <= 1e-9 * scale, "std {} vs {}", sum.std, std);
            // Histogram estimate: never below the exact value, in the same bin.
            let est = s.abs_percentile(p).unwrap();
            prop_assert!(est >= exact, "estimate {est} below exact {exact}");
            prop_assert_eq!(bin(est), bin(exact));
            if exact >= f32::MIN_POSITIVE {
                prop_assert!(f64::from(est) < f64::from(exact) * (1.0 + 1.0 / 128.0));
            }
            prop_assert_eq!(s.abs_percentile(100.0).unwrap(), sum.max_abs);
        }
        // Histogram counts add: streaming gives *identical* percentile estimates.
        prop_assert_eq!(streamed.abs_percentile(p).unwrap(), all.abs_percentile(p).unwrap());
        prop_assert_eq!(left.abs_percentile(p).unwrap(), all.abs_percentile(p).unwrap());
        prop_assert_eq!(streamed.summary().unwrap().p99_abs, all.summary().unwrap().p99_abs);
    }

    #[test]
    fn channel_abs_max_streams_exactly(
        rows in prop::collection::vec(prop::collection::vec(value(), 5), 1..40),
        split in 0usize..40,
    ) {
        let flat: Vec<f32> = rows.concat();
        let split = split.min(rows.len()) * 5;
        let mut a = ChannelAbsMax::new(5).unwrap();
        a.observe_slice(&flat[..split]).unwrap();
        let mut b = ChannelAbsMax::new(5).unwrap();
        b.observe_slice(&flat[split..]).unwrap();
        a.merge(&b).unwrap();
        let oracle: Vec<f32> = (0..5)
            .map(|c| rows.iter().fold(0f32, |m, r| m.max(r[c].abs())))
            .collect();
        prop_assert_eq!(a.max_abs().unwrap(), &oracle[..]);
        prop_assert_eq!(a.rows(), rows.len() as u64);
    }
}

#[test]
fn observes_tensors_of_any_rank_and_dtype() -> candle_compress::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::arange(-12f32, 12., &dev)?.reshape((2, 3, 4))?;
    let mut s = CalibStats::new();
    s.observe(&x.to_dtype(DType::BF16)?)?;
    s.observe(&x.t()?)?; // non-contiguous
    assert_eq!(s.count(), 48);
    let mut c = ChannelAbsMax::new(4)?;
    c.observe(&x)?;
    assert_eq!(c.max_abs()?, &[12.0, 11.0, 10.0, 11.0]);
    assert_eq!(c.rows(), 6);
    Ok(())
}

#[test]
fn suggested_scale_uses_the_mode() -> candle_compress::Result<()> {
    let v: Vec<f32> = (1..=1000).map(|i| i as f32 / 10.0).collect();
    let mut s = CalibStats::new();
    s.observe_slice(&v)?;
    assert_eq!(s.suggested_scale(ScaleMode::MaxAbs, 127)?, 100.0 / 127.0);
    let p = s.suggested_scale(ScaleMode::Percentile(99.0), 7)? * 7.0;
    let exact = sorted_percentile(&v, 99.0);
    assert!(p >= exact && p < exact * (1.0 + 1.0 / 128.0));
    Ok(())
}

#[test]
fn bad_input_is_refused() -> candle_compress::Result<()> {
    let dev = Device::Cpu;
    // Empty calibration.
    let empty = CalibStats::new();
    assert!(matches!(
        empty.summary(),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        empty.abs_percentile(99.0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(ChannelAbsMax::new(3)?.max_abs().is_err());
    assert!(ChannelAbsMax::new(0).is_err());
    assert!(ChannelAbsMax::from_max_abs(vec![1.0], 0).is_err());
    // Non-finite values name the flat index.
    let mut s = CalibStats::new();
    let bad = Tensor::new(&[[0f32, 1.], [f32::NEG_INFINITY, 2.]], &dev)?;
    match s.observe(&bad) {
        Err(Error::NonFinite { index: 2, .. }) => {}
        other => panic!("expected NonFinite at 2, got {other:?}"),
    }
    match ChannelAbsMax::from_max_abs(vec![1.0, f32::NAN], 4) {
        Err(Error::NonFinite { index: 1, .. }) => {}
        other => panic!("expected NonFinite at 1, got {other:?}"),
    }
    assert!(ChannelAbsMax::from_max_abs(vec![-1.0], 1).is_err());
    // Wrong dtype, rank and channel counts.
    assert!(matches!(
        s.observe(&Tensor::new(&[1u32, 2], &dev)?),
        Err(Error::UnsupportedDType { .. })
    ));
    let mut c = ChannelAbsMax::new(3)?;
    assert!(c.observe(&Tensor::new(1f32, &dev)?).is_err());
    assert!(c
        .observe(&Tensor::zeros((2, 4), DType::F32, &dev)?)
        .is_err());
    assert!(c.observe_slice(&[1.0; 4]).is_err());
    assert!(c.merge(&ChannelAbsMax::new(4)?).is_err());
    // Bad percentiles and qmax.
    s.observe_slice(&[1.0])?;
    for p in [0.0, -1.0, 100.01, f32::NAN] {
        assert!(s.abs_percentile(p).is_err());
        assert!(abs_percentile(&[1.0], p).is_err());
    }
    assert!(s.suggested_scale(ScaleMode::MaxAbs, 0).is_err());
    assert!(abs_percentile(&[], 50.0).is_err());
    Ok(())
}
