//! Dynamic activation quantization: error bounds, percentile scales against a sort
//! oracle, agreement with `QuantLinear`'s fused activation quantization, and bad input.

use candle_compress::nn::{ActivationQuant, QuantConfig, QuantLinear};
use candle_compress::quant::dynamic::{ActBits, DynamicQuant, Granularity};
use candle_compress::quant::scale::ScaleMode;
use candle_compress::{Compressed, Compressor, Error, Result};
use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;

mod common;

use common::oracle::sorted_percentile;
use common::rng::SplitMix64;

const ALL_BITS: [ActBits; 2] = [ActBits::Int8, ActBits::Int4];
const ALL_GRAN: [Granularity; 2] = [Granularity::PerTensor, Granularity::PerRow];

/// Checks the documented bound for every element, given the scale of its row and the
/// clip value it was quantized with.
fn check_bound(x: &[f32], q: &[f32], cols: usize, scales: &[f32], per_row: bool, qmax: f32) {
    for (i, (&a, &b)) in x.iter().zip(q).enumerate() {
        let s = if per_row { scales[i / cols] } else { scales[0] };
        let clip = s * qmax;
        let tol = s * (1.0 / 65536.0);
        let err = (a - b).abs();
        let allowed = if a.abs() <= clip {
            s / 2.0 + tol
        } else {
            a.abs() - clip + tol
        };
        assert!(
            err <= allowed * (1.0 + 1e-6),
            "element {i}: x={a} x'={b} err={err} allowed={allowed} scale={s}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn round_trip_within_bound(
        rows in 1usize..6,
        cols in 1usize..70,
        seed in prop::collection::vec(-100f32..100f32, 420),
        p in prop_oneof![Just(None), (50f32..=100f32).prop_map(Some)],
    ) {
        let x: Vec<f32> = seed.iter().cycle().take(rows * cols).enumerate()
            .map(|(i, v)| if i % 17 == 3 { v * 40.0 } else { *v })
            .collect();
        let t = Tensor::from_slice(&x, (rows, cols), &Device::Cpu).unwrap();
        let mode = p.map_or(ScaleMode::MaxAbs, ScaleMode::Percentile);
        for bits in ALL_BITS {
            for gran in ALL_GRAN {
                let dq = DynamicQuant::new(bits, gran, mode).unwrap();
                let c = dq.compress(&t).unwrap();
                let per_row = gran == Granularity::PerRow;
                prop_assert_eq!(c.scales().len(), if per_row { rows } else { 1 });
                // Scales follow the mode over the tensor or each row.
                let qmax = f32::from(bits.qmax());
                let groups: Vec<&[f32]> = if per_row { x.chunks(cols).collect() } else { vec![&x[..]] };
                for (g, &s) in groups.iter().zip(c.scales()) {
                    let clip = match mode {
                        ScaleMode::MaxAbs => g.iter().fold(0f32, |m, v| m.max(v.abs())),
                        ScaleMode::Percentile(p) => sorted_percentile(g, p),
                    };
                    prop_assert_eq!(s, clip / qmax);
                }
                let codes = c.codes();
                prop_assert!(codes.iter().all(|&q| (q as i32).abs() <= qmax as i32));
                let back = c.to_f32_vec();
                check_bound(&x, &back, cols, c.scales(), per_row, qmax);
                let dec = dq.decompress(&c, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                prop_assert_eq!(dec, back);
            }
        }
    }
}

/// `n` standard normals from splitmix64 seeded with `seed`.
fn normal_data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..n).map(|_| rng.normal()).collect()
}

#[test]
fn int8_codes_match_quant_linear_activations() -> Result<()> {
    let dev = Device::Cpu;
    let (rows, cols) = (7, 96);
    let mut x = normal_data(rows * cols, 1);
    x[5] = 40.0;
    let xt = Tensor::from_vec(x, (1, rows, cols), &dev)?;
    let w = Tensor::from_vec(normal_data(8 * cols, 2), (8, cols), &dev)?;
    let lin = candle_nn::Linear::new(w, None);
    for (gran, act) in [
        (Granularity::PerRow, ActivationQuant::PerToken),
        (Granularity::PerTensor, ActivationQuant::PerTensor),
    ] {
        let ql = QuantLinear::from_linear(&lin, &QuantConfig::w8a8().with_activations(act)?)?;
        let theirs = ql.quantize_activations(&xt)?;
        let ours = DynamicQuant::new(ActBits::Int8, gran, ScaleMode::MaxAbs)?.quantize(&xt)?;
        assert_eq!(ours.int8_codes().unwrap(), &theirs.values[..], "{gran:?}");
        let scales: Vec<f32> = match gran {
            Granularity::PerRow => ours.scales().to_vec(),
            Granularity::PerTensor => vec![ours.scales()[0]; rows],
        };
        assert_eq!(scales, theirs.scales, "{gran:?}");
    }
    Ok(())
}

#[test]
fn percentile_clips_outliers_and_beats_max_abs_on_the_bulk() -> Result<()> {
    let dev = Device::Cpu;
    let mut x = normal_data(4096, 3);
    // 4 outliers in 4096 values (0.1 %): the 99.9th percentile lies in the bulk.
    for i in (0..4096).step_by(1024) {
        x[i] = 300.0;
    }
    let t = Tensor::from_vec(x.clone(), 4096, &dev)?;
    let maxabs = DynamicQuant::new(ActBits::Int8, Granularity::PerTensor, ScaleMode::MaxAbs)?;
    let p999 = DynamicQuant::new(
        ActBits::Int8,
        Granularity::PerTensor,
        ScaleMode::Percentile(99.9),
    )?;
    let a = maxabs.quantize(&t)?;
    let b = p999.quantize(&t)?;
    assert_eq!(b.scales()[0], sorted_percentile(&x, 99.9) / 127.0);
    assert!(b.scales()[0] < a.scales()[0] / 10.0);
    // On the bulk (non-outlier) values the percentile scale is far more accurate.
    let bulk_err = |v: Vec<f32>| -> f32 {
        x.iter()
            .zip(v)
            .enumerate()
            .filter(|(i, _)| i % 1024 != 0)
            .map(|(_, (a, b))| (a - b).abs())
            .fold(0.0, f32::max)
    };
    assert!(bulk_err(b.to_f32_vec()) * 10.0 < bulk_err(a.to_f32_vec()));
    Ok(())
}

#[test]
fn any_leading_dims_dtypes_and_layouts() -> Result<()> {
    let dev = Device::Cpu;
    let base = Tensor::from_vec(normal_data(2 * 3 * 4 * 8, 4), (2, 3, 4, 8), &dev)?;
    for dims in [vec![192], vec![24, 8], vec![6, 4, 8], vec![2, 3, 4, 8]] {
        let t = base.reshape(dims.as_slice())?;
        for bits in ALL_BITS {
            let q = DynamicQuant::new(bits, Granularity::PerRow, ScaleMode::MaxAbs)?;
            let c = q.quantize(&t)?;
            let rows = 192 / dims.last().unwrap();
            assert_eq!(c.scales().len(), rows);
            assert_eq!(c.shape().dims(), dims.as_slice());
            let e = c.error_stats(&t)?;
            assert!(e.sqnr_db > if bits == ActBits::Int8 { 35.0 } else { 12.0 });
        }
    }
    // Non-contiguous input quantizes its logical (row-major) order.
    let t2 = base.reshape((24, 8))?.t()?;
    let c = DynamicQuant::int8_per_row().quantize(&t2)?;
    let c_contig = DynamicQuant::int8_per_row().quantize(&t2.contiguous()?)?;
    assert_eq!(c, c_contig);
    // Half-precision input decompresses to its own dtype.
    for dt in [DType::F16, DType::BF16, DType::F64] {
        let th = base.to_dtype(dt)?;
        let c = DynamicQuant::int8_per_tensor().compress(&th)?;
        assert_eq!(c.decompress(&dev)?.dtype(), dt);
        assert_eq!(c.original_dtype(), dt);
    }
    Ok(())
}

#[test]
fn sizes_are_honest() -> Result<()> {
    let dev = Device::Cpu;
    let t = Tensor::from_vec(normal_data(5 * 9, 5), (5, 9), &dev)?;
    let header = 8 * 2 + 1 + candle_compress::quant::SCHEME_BYTES;
    let c8 = DynamicQuant::int8_per_row().compress(&t)?;
    assert_eq!(c8.size_bytes(), 45 + 5 * 4 + header);
    let q4 = DynamicQuant::new(ActBits::Int4, Granularity::PerTensor, ScaleMode::MaxAbs)?;
    let c4 = q4.compress(&t)?;
    assert_eq!(c4.packed_int4().unwrap().len(), 23);
    assert_eq!(c4.size_bytes(), 23 + 4 + header);
    // Nibbles are q + 8, never 0 (the code -8 is not used).
    let nibbles: Vec<u8> = c4
        .packed_int4()
        .unwrap()
        .iter()
        .flat_map(|b| [b & 15, b >> 4])
        .take(45)
        .collect();
    assert!(nibbles.iter().all(|&n| (1..=15).contains(&n)));
    Ok(())
}

#[test]
fn empty_and_zero_tensors() -> Result<()> {
    let dev = Device::Cpu;
    let e = Tensor::zeros((3, 0), DType::F32, &dev)?;
    for bits in ALL_BITS {
        for gran in ALL_GRAN {
            let q = DynamicQuant::new(bits, gran, ScaleMode::Percentile(99.0))?;
            let c = q.compress(&e)?;
            assert_eq!(
                c.scales().len(),
                if gran == Granularity::PerRow { 3 } else { 1 }
            );
            assert_eq!(q.decompress(&c, &dev)?.dims(), &[3, 0]);
            let z = q.compress(&Tensor::zeros((2, 5), DType::F32, &dev)?)?;
            assert!(z.scales().iter().all(|&s| s == 0.0));
            assert!(z.to_f32_vec().iter().all(|&v| v == 0.0));
        }
    }
    Ok(())
}

#[test]
fn bad_input_is_refused() -> Result<()> {
    let dev = Device::Cpu;
    let q = DynamicQuant::int8_per_row();
    assert!(matches!(
        q.quantize(&Tensor::new(3f32, &dev)?),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        q.quantize(&Tensor::new(&[1u8, 2], &dev)?),
        Err(Error::UnsupportedDType { .. })
    ));
    let bad = Tensor::new(&[[1f32, 2., 3.], [4., f32::INFINITY, f32::NAN]], &dev)?;
    for bits in ALL_BITS {
        for gran in ALL_GRAN {
            for mode in [ScaleMode::MaxAbs, ScaleMode::Percentile(50.0)] {
                match DynamicQuant::new(bits, gran, mode)?.quantize(&bad) {
                    Err(Error::NonFinite {
                        index: 4, value, ..
                    }) => assert!(value.is_infinite()),
                    other => panic!("{bits:?} {gran:?} {mode:?}: {other:?}"),
                }
            }
        }
    }
    for p in [0.0, -3.0, 101.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            DynamicQuant::new(ActBits::Int8, Granularity::PerRow, ScaleMode::Percentile(p)),
            Err(Error::InvalidArgument { .. })
        ));
    }
    let t = Tensor::ones((2, 2), DType::F32, &dev)?;
    let c = q.compress(&t)?;
    assert!(matches!(
        DynamicQuant::int8_per_tensor().decompress(&c, &dev),
        Err(Error::MetadataMismatch { .. })
    ));
    assert!(matches!(
        c.error_stats(&Tensor::ones(4, DType::F32, &dev)?),
        Err(Error::ShapeMismatch { .. })
    ));
    Ok(())
}
