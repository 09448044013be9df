//! Issue 15, points 14–18: checked sizes, finite results, validating constructors, careful
//! deserialisation and messages that say what happened. Each test names the entry point it
//! guards; each failed (panicked, aborted or passed a wrong value) before the fix.

use candle_compress::codec::ActivationCodec;
use candle_compress::nn::smooth::{smooth, NormUse, Preceding, SmoothFactors};
use candle_compress::prune::{BitmaskSparse, NmSparse, StoredTensor};
use candle_compress::quant::dynamic::DynamicQuant;
use candle_compress::scheme::Scheme;
use candle_compress::sparse::{HotRule, HotSet, HotSetTracker, NeuronStats};
use candle_compress::{Compressed, Compressor, Error};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Linear, RmsNorm};
use proptest::prelude::*;

type R = Result<(), Box<dyn std::error::Error>>;

/// A shape whose element count overflows `usize` (2^64 elements).
fn huge_shape() -> Shape {
    Shape::from(vec![1usize << 32, 1usize << 32])
}

/// A shape whose element count fits but whose byte size (× 8 for F64) does not.
fn huge_bytes_shape() -> Shape {
    Shape::from(vec![1usize << 31, 1usize << 31])
}

fn is_overflow(e: &Error) -> bool {
    e.to_string().contains("overflows usize")
}

// ---- 14: checked sizes -------------------------------------------------------------

#[test]
fn p14_scheme_size_of_overflowing_shape_is_an_error() {
    for scheme in Scheme::ALL_DEFAULT {
        for shape in [huge_shape(), huge_bytes_shape()] {
            match scheme.try_compressed_size_bytes(&shape) {
                Err(e) => assert!(is_overflow(&e), "{scheme} {shape:?}: {e}"),
                Ok(n) if shape == huge_bytes_shape() && n < usize::MAX => {
                    // 2^62 elements fit in bytes for 4-bit codes? They do not with
                    // scales and header: any Ok here must be an exact, unwrapped count.
                    assert!(n >= (1usize << 62) / 2, "{scheme}: wrapped size {n}");
                }
                Ok(n) => panic!("{scheme} {shape:?}: expected an error, got {n}"),
            }
            // The infallible form saturates instead of panicking or wrapping.
            assert_eq!(scheme.compressed_size_bytes(&huge_shape()), usize::MAX);
        }
    }
}

#[test]
fn p14_codec_encoded_len_of_overflowing_shape_is_an_error() {
    for codec in [
        ActivationCodec::None,
        ActivationCodec::F16,
        ActivationCodec::Int8PerRow,
        ActivationCodec::SparseColumns { keep: 4 },
        ActivationCodec::SparseColumnsF16 { keep: 4 },
    ] {
        let e = codec
            .encoded_len(&huge_shape(), DType::F32)
            .expect_err("2^64 elements");
        assert!(is_overflow(&e), "{codec:?}: {e}");
    }
    let e = ActivationCodec::None
        .encoded_len(&huge_bytes_shape(), DType::F64)
        .expect_err("2^65 bytes");
    assert!(is_overflow(&e), "{e}");
}

#[test]
fn p14_storage_sizes_of_overflowing_shapes_are_errors() {
    let q = Some(Scheme::Int8 { block: 64 });
    for shape in [huge_shape(), huge_bytes_shape()] {
        let e = StoredTensor::try_dense_size(&shape, DType::F64).expect_err("dense");
        assert!(is_overflow(&e), "{e}");
        let e = BitmaskSparse::try_predicted_size(&shape, DType::F64, usize::MAX, None)
            .expect_err("bitmask");
        assert!(is_overflow(&e), "{e}");
        let e = NmSparse::try_predicted_size(&shape, DType::F64, 2, 4, None).expect_err("nm");
        assert!(is_overflow(&e), "{e}");
        // 2^62 elements fit once quantized to int8, not as dense F64.
        let quantize = if shape == huge_shape() { q } else { None };
        let e = StoredTensor::try_candidates(&shape, DType::F64, 1, quantize, Some((2, 4)))
            .expect_err("candidates");
        assert!(is_overflow(&e), "{e}");
        // The infallible forms saturate: never a panic, never a small wrapped value.
        assert_eq!(StoredTensor::dense_size(&shape, DType::F64), usize::MAX);
        assert_eq!(
            BitmaskSparse::predicted_size(&shape, DType::F64, usize::MAX, None),
            usize::MAX
        );
        assert_eq!(
            NmSparse::predicted_size(&shape, DType::F64, 2, 4, None),
            usize::MAX
        );
        let c = StoredTensor::candidates(&shape, DType::F64, 1, quantize, Some((2, 4)));
        assert!(c.iter().any(|&(_, size)| size == usize::MAX), "{c:?}");
        if shape == huge_shape() {
            assert!(c.iter().all(|&(_, size)| size == usize::MAX), "{c:?}");
        }
    }
}

#[test]
fn p14_neuron_stats_rows_near_u64_max_cannot_overflow() -> R {
    let json = r#"{"n_neurons":2,"activation_threshold":0.0,"rows":18446744073709551615,"counts":[5,18446744073709551615]}"#;
    let mut s: NeuronStats = serde_json::from_str(json)?;
    let e = s
        .record_indices(&[vec![1]])
        .expect_err("rows would pass u64::MAX");
    assert!(e.to_string().contains("overflow"), "{e}");
    let a = Tensor::new(&[[1f32, 1.]], &Device::Cpu)?;
    assert!(s.record_activations(&a).is_err());
    assert_eq!(s.rows(), u64::MAX, "nothing recorded on error");
    assert_eq!(s.counts(), &[5, u64::MAX]);
    Ok(())
}

#[test]
fn p14_tracker_reclassification_counter_cannot_overflow() -> R {
    let mut t = HotSetTracker::new(2, 0.0, HotRule::TopFraction(0.5), 1)?.with_decay(0.0)?;
    t.record_indices(&[vec![0]])?;
    let mut v: serde_json::Value = serde_json::to_value(&t)?;
    v["reclassifications"] = serde_json::json!(u64::MAX);
    let mut t: HotSetTracker = serde_json::from_value(v)?;
    let e = t
        .record_indices(&[vec![0]])
        .expect_err("counter would pass u64::MAX");
    assert!(e.to_string().contains("overflow"), "{e}");
    assert_eq!(t.reclassifications(), u64::MAX);
    assert_eq!(t.window().rows(), 0, "nothing recorded on error");
    Ok(())
}

// ---- 15: a finite input never decodes to ±Inf or NaN ----------------------------------

fn assert_finite(t: &Tensor, what: &str) -> R {
    let v = t.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    assert!(v.iter().all(|x| x.is_finite()), "{what}: {v:?}");
    Ok(())
}

fn all_schemes() -> Vec<Scheme> {
    let mut v = Scheme::ALL_DEFAULT.to_vec();
    v.extend(
        ["int8:32", "int4:32", "nf4:32", "affine8:16", "affine4:16"]
            .map(|s| s.parse::<Scheme>().unwrap()),
    );
    v
}

#[test]
fn p15_f16_blocks_at_the_top_of_the_range_decode_finite() -> R {
    let dev = Device::Cpu;
    let vals: Vec<f32> = (0..96)
        .map(|i| match i % 4 {
            0 => 65504.0,
            1 => -65504.0,
            2 => 65504.0 - (i as f32) * 7.0,
            _ => 1.0,
        })
        .collect();
    for dtype in [DType::F16, DType::BF16] {
        let x = Tensor::from_vec(vals.clone(), (2, 48), &dev)?.to_dtype(dtype)?;
        let x = if dtype == DType::BF16 {
            // bf16's top: 3.3895e38.
            (x.to_dtype(DType::F32)? * 5.17e33)?.to_dtype(DType::BF16)?
        } else {
            x
        };
        assert_finite(&x, "input")?;
        for scheme in all_schemes() {
            let c = match scheme.compress(&x) {
                // bf16's top is beyond what f16 scales (int8, int4) reach: a clear refusal.
                Err(e)
                    if dtype == DType::BF16
                        && matches!(scheme, Scheme::Int8 { .. } | Scheme::Int4 { .. }) =>
                {
                    assert!(e.to_string().contains("overflows f16"), "{scheme}: {e}");
                    continue;
                }
                other => other?,
            };
            let back = c.decompress(&dev)?;
            assert_eq!(back.dtype(), dtype);
            assert_finite(&back, &format!("{scheme} {dtype:?}"))?;
        }
    }
    Ok(())
}

#[test]
fn p15_f32_values_near_f32_max_decode_finite() -> R {
    let dev = Device::Cpu;
    let vals = vec![
        f32::MAX,
        -f32::MAX,
        f32::MAX * 0.999,
        0.0,
        -1.0,
        f32::MAX / 3.0,
        7.0,
        -f32::MAX,
    ];
    let x = Tensor::from_vec(vals, (2, 4), &dev)?;
    for scheme in all_schemes() {
        // int8 and int4 keep f16 scales: values this large are refused with a clear error
        // (never a silent Inf); the f32-scaled schemes must round-trip them finitely.
        let c = match scheme.compress(&x) {
            Err(e) if matches!(scheme, Scheme::Int8 { .. } | Scheme::Int4 { .. }) => {
                assert!(e.to_string().contains("overflows f16"), "{scheme}: {e}");
                continue;
            }
            other => other?,
        };
        assert!(
            c.to_f32_vec().iter().all(|v| v.is_finite()),
            "{scheme} to_f32_vec"
        );
        assert_finite(&c.decompress(&dev)?, &scheme.to_string())?;
    }
    Ok(())
}

#[test]
fn p15_dynamic_quantization_near_f32_max_is_finite() -> R {
    let dev = Device::Cpu;
    let x = Tensor::new(
        &[
            [f32::MAX, -f32::MAX, 1.0, f32::MAX * 0.75],
            [3.0, -2.0, 1.0, 0.0],
        ],
        &dev,
    )?;
    for q in [
        DynamicQuant::int8_per_row(),
        DynamicQuant::int8_per_tensor(),
    ] {
        let d = q.quantize(&x)?;
        assert!(d.to_f32_vec().iter().all(|v| v.is_finite()), "{q:?}");
        assert_finite(&d.dequantize(&dev)?, "dequantize")?;
    }
    Ok(())
}

#[test]
fn p15_smooth_refuses_a_fold_that_overflows_a_weight() -> R {
    let dev = Device::Cpu;
    let w = Tensor::new(&[[3e38f32, 1.0]], &dev)?;
    let lin = Linear::new(w, None);
    let f = SmoothFactors::from_vec(vec![1e5, 1.0])?;
    let e = smooth(Preceding::Nothing, &[&lin], &f).expect_err("3e38 × 1e5 overflows f32");
    let msg = e.to_string();
    assert!(
        msg.contains("overflow") && msg.contains("column 0"),
        "{msg}"
    );
    // F16 weights: 1000 × 100 = 1e5 > 65504.
    let w16 = Tensor::new(&[[1000f32, 1.0]], &dev)?.to_dtype(DType::F16)?;
    let lin16 = Linear::new(w16, None);
    let f = SmoothFactors::from_vec(vec![100.0, 1.0])?;
    assert!(smooth(Preceding::Nothing, &[&lin16], &f).is_err());
    Ok(())
}

#[test]
fn p15_smooth_refuses_a_fold_that_overflows_a_norm() -> R {
    let dev = Device::Cpu;
    let lin = Linear::new(
        Tensor::new(&[[1f32, 1.0]], &dev)?.to_dtype(DType::F16)?,
        None,
    );
    let norm = RmsNorm::new(Tensor::new(&[1f32, 1.0], &dev)?.to_dtype(DType::F16)?, 1e-5);
    // weight 1 ÷ 1e-5 = 1e5, beyond f16's 65504.
    let f = SmoothFactors::from_vec(vec![1e-5, 1.0])?;
    let e = smooth(
        Preceding::RmsNorm(&norm, NormUse::OnlySmoothedLinears),
        &[&lin],
        &f,
    )
    .expect_err("norm overflows f16");
    let msg = e.to_string();
    assert!(
        msg.contains("RmsNorm weight") && msg.contains("overflow"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn p15_f64_beyond_f32_is_an_out_of_range_error() -> R {
    let dev = Device::Cpu;
    let x = Tensor::new(&[1.0f64, -1e39, 2.0], &dev)?;
    for scheme in Scheme::ALL_DEFAULT {
        let e = scheme.compress(&x).expect_err("compress");
        assert!(e.to_string().contains("out of f32 range"), "{scheme}: {e}");
    }
    let e = ActivationCodec::Int8PerRow.encode(&x).expect_err("codec");
    assert!(e.to_string().contains("out of f32 range"), "{e}");
    // The codec's lossless path keeps F64 as it is: no range limit there.
    let bytes = ActivationCodec::None.encode(&x)?;
    let back = ActivationCodec::decode(&bytes, &dev)?;
    assert_eq!(back.to_vec1::<f64>()?, vec![1.0, -1e39, 2.0]);
    Ok(())
}

// ---- 16: constructors from raw parts validate everything ------------------------------

#[test]
fn p16_bitmask_from_values_rejects_nan_and_integer_dtypes() {
    let shape = Shape::from(4usize);
    let e = BitmaskSparse::from_values(&[1.0, f32::NAN, 0.0, 2.0], &shape, DType::F32, None)
        .expect_err("NaN");
    assert!(matches!(e, Error::NonFinite { index: 1, .. }), "{e}");
    for dtype in [DType::U8, DType::U32, DType::I64] {
        let e = BitmaskSparse::from_values(&[1.0, 0.0, 0.0, 2.0], &shape, dtype, None)
            .expect_err("integer dtype");
        assert!(matches!(e, Error::UnsupportedDType { .. }), "{e}");
    }
    let e = BitmaskSparse::from_values(&[1.0, 0.0, 0.0, 1e5], &shape, DType::F16, None)
        .expect_err("1e5 is not an f16");
    assert!(e.to_string().contains("out of F16 range"), "{e}");
}

#[test]
fn p16_nm_from_values_rejects_nan_and_integer_dtypes() {
    let shape = Shape::from(4usize);
    let e = NmSparse::from_values(
        &[1.0, 0.0, f32::INFINITY, 0.0],
        &shape,
        DType::F32,
        2,
        4,
        None,
    )
    .expect_err("Inf");
    assert!(matches!(e, Error::NonFinite { index: 2, .. }), "{e}");
    let e = NmSparse::from_values(&[1.0, 0.0, 2.0, 0.0], &shape, DType::I64, 2, 4, None)
        .expect_err("integer dtype");
    assert!(matches!(e, Error::UnsupportedDType { .. }), "{e}");
    let e = NmSparse::from_values(
        &[1e39_f64 as f32, 0.0, 2.0, 0.0],
        &shape,
        DType::BF16,
        2,
        4,
        None,
    )
    .expect_err("inf");
    assert!(matches!(e, Error::NonFinite { .. }), "{e}");
}

#[test]
fn p16_stored_tensor_build_rejects_integer_dtypes() {
    let shape = Shape::from(4usize);
    let dev = Device::Cpu;
    for kind in [
        candle_compress::prune::StorageKind::Dense,
        candle_compress::prune::StorageKind::Bitmask(None),
    ] {
        let e = StoredTensor::build(kind, vec![1.0, 0.0, 0.0, 2.5], &shape, DType::U32, &dev)
            .expect_err("U32 cannot hold 2.5");
        assert!(matches!(e, Error::UnsupportedDType { .. }), "{kind}: {e}");
    }
}

// ---- 17: deserialisation ---------------------------------------------------------------

#[test]
fn p17_huge_n_neurons_in_a_small_json_is_refused_without_allocating() {
    let json = r#"{"n_neurons":555577277777,"activation_threshold":0,"rows":0,"counts":[]}"#;
    assert!(json.len() <= 80);
    let e = serde_json::from_str::<NeuronStats>(json).expect_err("no counts present");
    assert!(e.to_string().contains("counts length"), "{e}");
    // A hot set of a huge layer with few listed neurons is checked without a mask of
    // n_neurons entries.
    let hot: HotSet = serde_json::from_str(r#"{"n_neurons":555577277777,"hot":[3,555577277776]}"#)
        .expect("valid");
    assert_eq!(hot.len(), 2);
    assert!(serde_json::from_str::<HotSet>(r#"{"n_neurons":555577277777,"hot":[3,3]}"#).is_err());
    assert!(serde_json::from_str::<HotSet>(r#"{"n_neurons":5,"hot":[5]}"#).is_err());
    let tracker = r#"{"rule":{"TopFraction":0.5},"every_rows":4,"decay":0.5,"window":{"n_neurons":555577277777,"activation_threshold":0,"rows":0,"counts":[]},"history":[],"history_rows":0,"hot":{"n_neurons":555577277777,"hot":[]},"reclassifications":0}"#;
    assert!(serde_json::from_str::<HotSetTracker>(tracker).is_err());
}

#[test]
fn p17_a_saved_tracker_reloads_bit_identical() -> R {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for trial in 0..40 {
        let n = 3 + (trial % 17);
        let decay = (next() % 1_000_000) as f64 / 999_983.0;
        let thr = (next() % 1000) as f32 / 997.0;
        let mut t = HotSetTracker::new(n, thr, HotRule::TopFraction(1.0 / 3.0), 7)?
            .with_decay(decay.min(1.0))?;
        for _ in 0..(30 + trial) {
            let row: Vec<usize> = (0..n).filter(|_| next() % 3 == 0).collect();
            t.record_indices(&[row])?;
        }
        let json = serde_json::to_string(&t)?;
        let back: HotSetTracker = serde_json::from_str(&json)?;
        let bits = |t: &HotSetTracker| -> Vec<u64> {
            t.history_counts().iter().map(|h| h.to_bits()).collect()
        };
        assert_eq!(bits(&back), bits(&t), "trial {trial}: {json}");
        assert_eq!(back.history_rows().to_bits(), t.history_rows().to_bits());
        assert_eq!(back.decay().to_bits(), t.decay().to_bits());
        assert_eq!(
            back.window().activation_threshold().to_bits(),
            t.window().activation_threshold().to_bits()
        );
        assert_eq!(back, t);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random bytes into every statistics loader: `Err` or a valid value, never a panic
    /// or an abort.
    #[test]
    fn p19_random_bytes_into_statistics_loaders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<NeuronStats>(&bytes);
        let _ = serde_json::from_slice::<HotSet>(&bytes);
        let _ = serde_json::from_slice::<HotSetTracker>(&bytes);
        let _ = serde_json::from_slice::<HotRule>(&bytes);
        let _ = serde_json::from_slice::<Scheme>(&bytes);
        let _ = serde_json::from_slice::<candle_compress::sparse::NeuronPermutation>(&bytes);
    }

    /// Valid JSON with one number replaced by a random (often huge) one: still `Err` or a
    /// value whose invariants hold (its accessors and a re-save work).
    #[test]
    fn p19_mutated_numbers_into_statistics_loaders(pick in 0usize..64, value in any::<u64>(), small in 0u64..40) {
        let mut t = HotSetTracker::new(4, 0.0, HotRule::TopFraction(0.5), 3).unwrap();
        t.record_indices(&[vec![0, 1], vec![1], vec![3], vec![2]]).unwrap();
        let json = serde_json::to_string(&t).unwrap();
        let spans: Vec<(usize, usize)> = number_spans(&json);
        let (a, b) = spans[pick % spans.len()];
        for v in [value, small] {
            let mutated = format!("{}{}{}", &json[..a], v, &json[b..]);
            if let Ok(back) = serde_json::from_str::<HotSetTracker>(&mutated) {
                let _ = back.history_frequencies();
                let _ = back.hot().mask();
                prop_assert!(serde_json::to_string(&back).is_ok());
            }
            let stats = serde_json::to_string(t.window()).unwrap();
            let spans = number_spans(&stats);
            let (a, b) = spans[pick % spans.len()];
            let mutated = format!("{}{}{}", &stats[..a], v, &stats[b..]);
            if let Ok(mut back) = serde_json::from_str::<NeuronStats>(&mutated) {
                let _ = back.frequencies();
                let _ = back.record_indices(&[vec![0]]);
            }
        }
    }
}

/// Byte ranges of the unsigned integers in `json`.
fn number_spans(json: &str) -> Vec<(usize, usize)> {
    let b = json.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

// ---- 18: messages ---------------------------------------------------------------------

#[test]
fn p18_large_and_tiny_numbers_print_with_an_exponent() {
    let e = SmoothFactors::from_vec(vec![1.0, -1e30]).expect_err("negative");
    assert!(e.to_string().contains("-1e30"), "{e}");
    let e = NeuronStats::new(4, -1e-30).expect_err("negative threshold");
    assert!(e.to_string().contains("-1e-30"), "{e}");
    let e = HotSetTracker::new(4, 0.0, HotRule::TopFraction(0.5), 2)
        .and_then(|t| t.with_decay(1e20))
        .expect_err("decay");
    assert!(e.to_string().contains("1e20"), "{e}");
    let e = HotRule::MinFrequency(-2.5e-12).validate().expect_err("min");
    assert!(e.to_string().contains("-2.5e-12"), "{e}");
    // Ordinary magnitudes stay plain.
    let e = SmoothFactors::from_vec(vec![1.0, -0.25]).expect_err("negative");
    assert!(e.to_string().contains("-0.25"), "{e}");
}

/// Every public kernel entry point, called with slices whose lengths disagree (and with a
/// row count whose `rows × in_features` overflows): an `Err` naming the function and both
/// lengths, converted into the crate's `Error` by `?`, never a panic.
#[test]
fn p18_kernel_entry_points_return_errors_on_length_mismatches() {
    use candle_compress::kernels::blockwise::{
        dequantize_affine, dequantize_affine_on, dequantize_affine_to_vec, dequantize_i8_blocks,
        dequantize_i8_blocks_on, dequantize_i8_blocks_to_vec, dequantize_u4_lut,
        dequantize_u4_lut_on, dequantize_u4_lut_to_vec, quantize_i8_blocks, quantize_i8_blocks_on,
    };
    use candle_compress::kernels::gemm::{
        matmul_w4a8, matmul_w8a8, quantize_rows_i8, quantize_rows_i8_with_scales, PackedW4,
        PackedW8,
    };
    use candle_compress::kernels::halfconv::{
        f16_le_to_f32, f16_le_to_f32_on, f32_to_f16_le, f32_to_f16_le_on,
    };
    use candle_compress::kernels::{Isa, KernelError};
    use half::f16;

    fn refused(r: Result<(), KernelError>, want: &str) {
        let e: Error = r.map(|_| ()).expect_err(want).into();
        assert!(matches!(e, Error::Kernel(_)), "{e:?}");
        assert!(e.to_string().starts_with(want), "{e} (want {want}…)");
    }
    let lut = [0f32; 16];
    let (x, mut q, mut s16) = ([1f32; 4], [0i8; 4], [f16::ZERO; 1]);
    let mut out = [0f32; 4];
    refused(
        quantize_i8_blocks(&x, 2, &mut q, &mut s16),
        "quantize_i8_blocks: scales has 1",
    );
    refused(
        quantize_i8_blocks_on(Isa::Scalar, &x, 2, &mut q, &mut s16).map(|_| ()),
        "quantize_i8_blocks_on: scales",
    );
    refused(
        dequantize_i8_blocks(&q, &s16, 2, &mut out),
        "dequantize_i8_blocks: scales",
    );
    refused(
        dequantize_i8_blocks_on(Isa::Scalar, &q, &s16, 2, &mut out).map(|_| ()),
        "dequantize_i8_blocks_on: scales",
    );
    refused(
        dequantize_i8_blocks_to_vec(&q, &s16, 2).map(|_| ()),
        "dequantize_i8_blocks_to_vec: scales",
    );
    refused(
        dequantize_u4_lut(&[0; 1], &lut, &[1.0; 2], 2, &mut out),
        "dequantize_u4_lut: packed has 1 elements, need",
    );
    refused(
        dequantize_u4_lut_on(Isa::Scalar, &[0; 2], &lut, &[1.0; 1], 2, &mut out).map(|_| ()),
        "dequantize_u4_lut_on: scales",
    );
    refused(
        dequantize_u4_lut_to_vec(&[0; 2], &lut, &[1.0; 2], 2, 5).map(|_| ()),
        "dequantize_u4_lut_to_vec: packed",
    );
    refused(
        dequantize_affine(&[0; 3], 8, &[0.0], &[1.0], 4, &mut out),
        "dequantize_affine: codes has 3",
    );
    refused(
        dequantize_affine_on(Isa::Scalar, &[0; 4], 8, &[0.0], &[1.0; 2], 4, &mut out).map(|_| ()),
        "dequantize_affine_on: scales",
    );
    refused(
        dequantize_affine_to_vec(&[0; 4], 4, &[0.0], &[1.0], 4, 4).map(|_| ()),
        "dequantize_affine_to_vec: codes",
    );
    let mut bytes = [0u8; 7];
    refused(f32_to_f16_le(&x, &mut bytes), "f32_to_f16_le: out has 7");
    refused(
        f32_to_f16_le_on(Isa::Scalar, &x, &mut bytes).map(|_| ()),
        "f32_to_f16_le_on: out",
    );
    refused(
        f16_le_to_f32(&bytes, &mut out),
        "f16_le_to_f32: bytes has 7",
    );
    refused(
        f16_le_to_f32_on(Isa::Scalar, &bytes, &mut out).map(|_| ()),
        "f16_le_to_f32_on: bytes",
    );
    let mut s32 = [0f32; 3];
    refused(
        quantize_rows_i8(&x, 2, None, &mut q, &mut s32),
        "quantize_rows_i8: x has 4 elements, need rows × cols = 3 × 2 = 6",
    );
    refused(
        quantize_rows_i8_with_scales(&x, usize::MAX, None, &s32, &mut q),
        "quantize_rows_i8_with_scales: rows × cols = 3 × 18446744073709551615 overflows",
    );
    refused(
        PackedW8::pack(&q, &[1.0; 2], 2, 3).map(|_| ()),
        "PackedW8::pack: w has 4",
    );
    refused(
        PackedW4::pack(&q, &[1.0; 2], 2, 2, 4).map(|_| ()),
        "PackedW4::pack: invalid group",
    );
    let w8 = PackedW8::pack(&q, &[1.0; 2], 2, 2).expect("valid");
    let w4 = PackedW4::pack(&q, &[1.0; 2], 2, 2, 8).expect("valid");
    refused(
        matmul_w8a8(&q, &[1.0; 2], 2, &w8, None, &mut out[..3]),
        "matmul_w8a8: out has 3 elements, need rows × out_features = 2 × 2 = 4",
    );
    refused(
        matmul_w4a8(&q, &[1.0; 2], usize::MAX, &w4, None, &mut out),
        "matmul_w4a8: rows × in_features = 18446744073709551615 × 2 overflows",
    );
}
