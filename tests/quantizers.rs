//! Property and bad-input tests for every tensor quantizer (`quant::*`) and `Scheme`.
//!
//! The error bounds checked here are exactly the ones in each module's docs; scales are
//! recomputed independently from the input and compared with what the value stores.

use candle_compress::quant::nf4::{nf4_half_gap, NF4_CODE_BOOK};
use candle_compress::quant::{
    Affine, AffineTensor, BlockwiseInt8, BlockwiseInt8Tensor, Nf4, Nf4Tensor, SymmetricInt4,
    SymmetricInt4Tensor, SCHEME_BYTES,
};
use candle_compress::scheme::{CompressedTensor, Scheme};
use candle_compress::{Compressed, Compressor, Error};
use candle_core::{DType, Device, Shape, Tensor};
use half::f16;
use proptest::prelude::*;

const DEV: Device = Device::Cpu;

/// Bytes of shape + dtype header, computed here independently of the crate.
fn header(shape: &Shape) -> usize {
    8 * shape.rank() + 1 + SCHEME_BYTES
}

/// Checks one compressed value against the input values `x` (as f32): scales recomputed
/// independently, the documented per-element bound, zero blocks exact, honest size.
fn check_value(c: &CompressedTensor, x: &[f32]) {
    let got = c.to_f32_vec();
    assert_eq!(got.len(), x.len());
    let block = c.scheme().block_size();
    let hdr = header(c.shape());
    match c {
        CompressedTensor::Int8(t) => {
            assert_eq!(t.size_bytes(), t.codes().len() + 2 * t.scales().len() + hdr);
            for (b, xs) in x.chunks(block).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let stored = t.scales()[b];
                assert_eq!(
                    stored,
                    f16::from_f32(d),
                    "block {b}: scale is f16(amax/127)"
                );
                let (d, big_d) = (f64::from(d), f64::from(stored));
                for (j, &v) in xs.iter().enumerate() {
                    let i = b * block + j;
                    let q = f64::from(t.codes()[i]);
                    let bound =
                        d * (0.5 + 2f64.powi(-16)) + q.abs() * (d - big_d).abs() + 2f64.powi(-126);
                    let err = (f64::from(v) - f64::from(got[i])).abs();
                    assert!(
                        err <= bound,
                        "int8 [{i}] x={v} x'={} err={err} > {bound}",
                        got[i]
                    );
                }
            }
        }
        CompressedTensor::Affine(t) => {
            let payload = if t.bits() == 4 {
                x.len().div_ceil(2)
            } else {
                x.len()
            };
            assert_eq!(t.codes().len(), payload);
            assert_eq!(t.size_bytes(), payload + 8 * t.scales().len() + hdr);
            let qmax = f64::from((1u32 << t.bits()) - 1);
            for (g, xs) in x.chunks(block).enumerate() {
                let lo = xs.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (m, s) = (t.zero_points()[g], t.scales()[g]);
                assert_eq!(m, lo, "group {g}: zero point is the minimum");
                let expect_s = ((f64::from(hi) - f64::from(lo)) / qmax) as f32;
                assert!(s == expect_s || (expect_s == 0.0 && s == f32::from_bits(1)));
                let (m, s) = (f64::from(m), f64::from(s));
                let bound = s / 2.0 + 2f64.powi(-23) * (m.abs() + qmax * s);
                for (j, &v) in xs.iter().enumerate() {
                    let i = g * block + j;
                    let err = (f64::from(v) - f64::from(got[i])).abs();
                    assert!(
                        err <= bound,
                        "affine [{i}] x={v} x'={} err={err} > {bound}",
                        got[i]
                    );
                }
            }
        }
        CompressedTensor::Int4(t) => {
            assert_eq!(t.packed().len(), x.len().div_ceil(2));
            assert_eq!(
                t.size_bytes(),
                t.packed().len() + 2 * t.scales().len() + hdr
            );
            let codes = t.codes();
            for (g, xs) in x.chunks(block).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = t.scales()[g];
                let target = amax / 7.0;
                assert!(f32::from(d) >= target, "group {g}: scale rounded up");
                if d.to_bits() > 0 {
                    let below = f32::from(f16::from_bits(d.to_bits() - 1));
                    assert!(below < target, "group {g}: smallest f16 >= amax/7");
                }
                let d = f64::from(d);
                for (j, &v) in xs.iter().enumerate() {
                    let i = g * block + j;
                    assert!((-7..=7).contains(&codes[i]));
                    let err = (f64::from(v) - f64::from(got[i])).abs();
                    let bound = d * (0.5 + 2f64.powi(-21));
                    assert!(
                        err <= bound,
                        "int4 [{i}] x={v} x'={} err={err} > {bound}",
                        got[i]
                    );
                }
            }
        }
        CompressedTensor::Nf4(t) => {
            assert_eq!(t.packed().len(), x.len().div_ceil(2));
            assert_eq!(
                t.size_bytes(),
                t.packed().len() + 4 * t.absmax().len() + hdr
            );
            let codes = t.codes();
            for (b, xs) in x.chunks(block).enumerate() {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                assert_eq!(t.absmax()[b], amax);
                for (j, &v) in xs.iter().enumerate() {
                    let i = b * block + j;
                    let h = f64::from(nf4_half_gap(codes[i]).expect("4-bit code"));
                    let bound = f64::from(amax) * (h + 2f64.powi(-22));
                    let err = (f64::from(v) - f64::from(got[i])).abs();
                    assert!(
                        err <= bound,
                        "nf4 [{i}] x={v} x'={} err={err} > {bound}",
                        got[i]
                    );
                }
            }
        }
        other => panic!("unknown variant {other:?}"),
    }
    // All-zero blocks decode to exact zeros.
    for (xs, ys) in x.chunks(block).zip(got.chunks(block)) {
        if xs.iter().all(|&v| v == 0.0) {
            assert!(ys.iter().all(|&v| v == 0.0), "zero block decoded to {ys:?}");
        }
    }
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F16),
        Just(DType::BF16),
        Just(DType::F64)
    ]
}

fn scheme_strategy() -> impl Strategy<Value = Scheme> {
    (
        0usize..5,
        prop_oneof![1usize..9, Just(32usize), Just(64), 10usize..100],
    )
        .prop_map(|(k, size)| {
            let kind = ["int8", "affine8", "affine4", "int4", "nf4"][k];
            Scheme::new(kind, size).expect("size >= 1")
        })
}

/// A 2-D tensor input: dims, values (a quarter of them exactly 0), a magnitude 2^e (at
/// most 2^15, so that F16 inputs stay finite).
fn input_strategy() -> impl Strategy<Value = (usize, usize, Vec<f32>, f32)> {
    (0usize..6, 0usize..70, -40i32..=15).prop_flat_map(|(a, b, e)| {
        let value = prop_oneof![3 => -1f32..1f32, 1 => Just(0f32)];
        (
            Just(a),
            Just(b),
            prop::collection::vec(value, a * b),
            Just(2f32.powi(e)),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        // Never write regression files into the working directory.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Round trip restores shape and dtype, stays within the documented bound, keeps zero
    /// blocks exact and reports the bytes it holds — for every scheme, dtype and layout.
    #[test]
    fn round_trip_within_bound(
        scheme in scheme_strategy(),
        dtype in dtype_strategy(),
        (a, b, values, mag) in input_strategy(),
        transpose in any::<bool>(),
        zero_first_block in any::<bool>(),
    ) {
        let mut values: Vec<f32> = values.iter().map(|v| v * mag).collect();
        if zero_first_block {
            let n = scheme.block_size().min(values.len());
            values[..n].fill(0.0);
        }
        let t = Tensor::from_vec(values, (a, b), &DEV).unwrap().to_dtype(dtype).unwrap();
        let t = if transpose { t.t().unwrap() } else { t };
        // The values the quantizer sees: the tensor in its dtype, read row-major as f32.
        let x: Vec<f32> = t.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        let c = scheme.compress(&t).unwrap();
        prop_assert_eq!(c.scheme(), scheme);
        prop_assert_eq!(c.shape(), t.shape());
        prop_assert_eq!(c.original_dtype(), dtype);
        prop_assert_eq!(c.original_size_bytes(), x.len() * dtype.size_in_bytes());
        check_value(&c, &x);
        let back = scheme.decompress(&c, &DEV).unwrap();
        prop_assert_eq!(back.dims(), t.dims());
        prop_assert_eq!(back.dtype(), dtype);
        let expect = Tensor::new(c.to_f32_vec(), &DEV).unwrap().to_dtype(dtype).unwrap()
            .to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        let got: Vec<f32> = back.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
        prop_assert_eq!(got, expect);
    }

    /// Nibble packing round-trips any code sequence in ceil(n/2) bytes.
    #[test]
    fn nibbles_round_trip(codes in prop::collection::vec(0u8..16, 0..100)) {
        use candle_compress::quant::int4::{pack_nibbles, unpack_nibbles};
        let packed = pack_nibbles(&codes).unwrap();
        prop_assert_eq!(packed.len(), codes.len().div_ceil(2));
        prop_assert_eq!(unpack_nibbles(&packed, codes.len()).unwrap(), codes);
    }

    /// `from_parts` accepts exactly what the accessors return.
    #[test]
    fn parts_round_trip(scheme in scheme_strategy(), (a, b, values, _) in input_strategy()) {
        let t = Tensor::from_vec(values, (a, b), &DEV).unwrap();
        let c = scheme.compress(&t).unwrap();
        let rebuilt: CompressedTensor = match &c {
            CompressedTensor::Int8(v) => BlockwiseInt8Tensor::from_parts(
                v.shape().clone(), v.original_dtype(), v.block_size(),
                v.codes().to_vec(), v.scales().to_vec()).unwrap().into(),
            CompressedTensor::Affine(v) => AffineTensor::from_parts(
                v.shape().clone(), v.original_dtype(), v.bits(), v.group_size(),
                v.codes().to_vec(), v.scales().to_vec(), v.zero_points().to_vec()).unwrap().into(),
            CompressedTensor::Int4(v) => SymmetricInt4Tensor::from_parts(
                v.shape().clone(), v.original_dtype(), v.group_size(),
                v.packed().to_vec(), v.scales().to_vec()).unwrap().into(),
            CompressedTensor::Nf4(v) => Nf4Tensor::from_parts(
                v.shape().clone(), v.original_dtype(), v.block_size(),
                v.packed().to_vec(), v.absmax().to_vec()).unwrap().into(),
            other => panic!("unknown variant {other:?}"),
        };
        prop_assert_eq!(rebuilt, c);
    }
}

// ---------------------------------------------------------------------------------------
// Named bad-input tests.

fn all_schemes() -> Vec<Scheme> {
    Scheme::ALL_DEFAULT.to_vec()
}

#[test]
fn empty_tensor_gives_empty_value_and_empty_tensor() -> candle_compress::Result<()> {
    for scheme in all_schemes() {
        for dims in [vec![0usize], vec![3, 0], vec![0, 4, 2]] {
            let t = Tensor::zeros(dims.clone(), DType::BF16, &DEV)?;
            let c = scheme.compress(&t)?;
            assert_eq!(c.to_f32_vec().len(), 0);
            assert_eq!(
                c.size_bytes(),
                header(c.shape()),
                "{scheme}: only the header"
            );
            let back = c.decompress(&DEV)?;
            assert_eq!(back.dims(), dims.as_slice());
            assert_eq!(back.dtype(), DType::BF16);
        }
    }
    Ok(())
}

#[test]
fn scalar_tensor_round_trips() -> candle_compress::Result<()> {
    for scheme in all_schemes() {
        let t = Tensor::new(0.5f32, &DEV)?;
        let back = scheme.compress(&t)?.decompress(&DEV)?;
        assert_eq!(back.dims(), &[] as &[usize]);
        assert!((back.to_scalar::<f32>()? - 0.5).abs() < 0.02, "{scheme}");
    }
    Ok(())
}

#[test]
fn block_or_group_size_zero_is_invalid_argument() {
    assert!(matches!(
        BlockwiseInt8::new(0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Affine::new(4, 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Affine::new(8, 0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        SymmetricInt4::new(0),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(Nf4::new(0), Err(Error::InvalidArgument { .. })));
    assert!(matches!(
        "nf4:0".parse::<Scheme>(),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn nan_and_inf_name_the_first_bad_flat_index() -> candle_compress::Result<()> {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut v = vec![0.5f32; 100];
        v[70] = bad;
        v[90] = f32::NAN;
        // Transposed view: flat index 70 of the row-major view is (7, 0) of the 10×10 view.
        let t = Tensor::from_vec(v, (10, 10), &DEV)?
            .t()?
            .contiguous()?
            .t()?;
        assert!(!t.is_contiguous());
        for scheme in all_schemes() {
            match scheme.compress(&t) {
                Err(Error::NonFinite { index, .. }) => assert_eq!(index, 70, "{scheme}"),
                other => panic!("{scheme}: expected NonFinite, got {other:?}"),
            }
        }
        let f16_t = Tensor::from_vec(vec![1f32, bad], 2, &DEV)?.to_dtype(DType::F16)?;
        for scheme in all_schemes() {
            assert!(
                matches!(
                    scheme.compress(&f16_t),
                    Err(Error::NonFinite { index: 1, .. })
                ),
                "{scheme}"
            );
        }
    }
    Ok(())
}

#[test]
fn integer_dtypes_are_unsupported() -> candle_compress::Result<()> {
    let tensors = [
        Tensor::new(&[1u8, 2, 3], &DEV)?,
        Tensor::new(&[1u32, 2, 3], &DEV)?,
        Tensor::new(&[1i64, 2, 3], &DEV)?,
    ];
    for t in &tensors {
        for scheme in all_schemes() {
            assert!(
                matches!(scheme.compress(t), Err(Error::UnsupportedDType { .. })),
                "{scheme} {:?}",
                t.dtype()
            );
        }
    }
    Ok(())
}

#[test]
fn decompressing_with_another_config_is_metadata_mismatch() -> candle_compress::Result<()> {
    let t = Tensor::randn(0f32, 1.0, (4, 32), &DEV)?;
    let mismatch =
        |r: candle_compress::Result<Tensor>| matches!(r, Err(Error::MetadataMismatch { .. }));
    let v = BlockwiseInt8::new(32)?.compress(&t)?;
    assert!(mismatch(BlockwiseInt8::new(64)?.decompress(&v, &DEV)));
    let v = Affine::new(4, 32)?.compress(&t)?;
    assert!(mismatch(Affine::new(8, 32)?.decompress(&v, &DEV)));
    assert!(mismatch(Affine::new(4, 16)?.decompress(&v, &DEV)));
    let v = SymmetricInt4::new(32)?.compress(&t)?;
    assert!(mismatch(SymmetricInt4::new(8)?.decompress(&v, &DEV)));
    let v = Nf4::new(32)?.compress(&t)?;
    assert!(mismatch(Nf4::new(64)?.decompress(&v, &DEV)));
    let v = Scheme::Int4 { group: 32 }.compress(&t)?;
    assert!(mismatch(Scheme::Nf4 { block: 32 }.decompress(&v, &DEV)));
    Ok(())
}

#[test]
fn from_parts_refuses_mismatched_lengths_and_corrupt_values() {
    let shape = Shape::from((2, 5)); // 10 values
    let md = |r: Result<(), Error>| matches!(r, Err(Error::MetadataMismatch { .. }));
    let corrupt = |r: Result<(), Error>| matches!(r, Err(Error::Corrupt { .. }));
    let int8 = |codes: Vec<i8>, scales: Vec<f16>, dtype| {
        BlockwiseInt8Tensor::from_parts(shape.clone(), dtype, 4, codes, scales).map(|_| ())
    };
    assert!(int8(vec![0; 10], vec![f16::ONE; 3], DType::F32).is_ok());
    assert!(md(int8(vec![0; 9], vec![f16::ONE; 3], DType::F32)));
    assert!(md(int8(vec![0; 10], vec![f16::ONE; 2], DType::F32)));
    assert!(md(int8(vec![0; 10], vec![f16::ONE; 3], DType::U8)));
    assert!(corrupt(int8(
        vec![0; 10],
        vec![f16::INFINITY; 3],
        DType::F32
    )));
    assert!(corrupt(int8(vec![-128; 10], vec![f16::ONE; 3], DType::F32)));
    assert!(matches!(
        BlockwiseInt8Tensor::from_parts(shape.clone(), DType::F32, 0, vec![0; 10], vec![]),
        Err(Error::InvalidArgument { .. })
    ));

    let affine = |bits, codes: Vec<u8>, scales: Vec<f32>, zps: Vec<f32>| {
        AffineTensor::from_parts(shape.clone(), DType::F16, bits, 4, codes, scales, zps).map(|_| ())
    };
    assert!(affine(4, vec![0; 5], vec![1.0; 3], vec![0.0; 3]).is_ok());
    assert!(affine(8, vec![0; 10], vec![1.0; 3], vec![0.0; 3]).is_ok());
    assert!(md(affine(4, vec![0; 10], vec![1.0; 3], vec![0.0; 3])));
    assert!(md(affine(8, vec![0; 5], vec![1.0; 3], vec![0.0; 3])));
    assert!(md(affine(4, vec![0; 5], vec![1.0; 3], vec![0.0; 2])));
    assert!(md(affine(4, vec![0; 5], vec![1.0; 4], vec![0.0; 3])));
    assert!(corrupt(affine(4, vec![0; 5], vec![-1.0; 3], vec![0.0; 3])));
    assert!(corrupt(affine(
        4,
        vec![0; 5],
        vec![1.0; 3],
        vec![f32::NAN; 3]
    )));
    assert!(matches!(
        affine(5, vec![0; 10], vec![1.0; 3], vec![0.0; 3]),
        Err(Error::InvalidArgument { .. })
    ));

    let int4 = |packed: Vec<u8>, scales: Vec<f16>| {
        SymmetricInt4Tensor::from_parts(Shape::from(9), DType::F32, 4, packed, scales).map(|_| ())
    };
    assert!(int4(vec![0x88, 0x88, 0x88, 0x88, 0x08], vec![f16::ONE; 3]).is_ok());
    assert!(md(int4(vec![0x88; 4], vec![f16::ONE; 3])));
    assert!(md(int4(
        vec![0x88, 0x88, 0x88, 0x88, 0x08],
        vec![f16::ONE; 2]
    )));
    assert!(corrupt(int4(vec![0x88; 5], vec![f16::ONE; 3]))); // padding nibble 8
    assert!(corrupt(int4(
        vec![0x80, 0x88, 0x88, 0x88, 0x08],
        vec![f16::ONE; 3]
    ))); // code -8
    assert!(corrupt(int4(
        vec![0x88, 0x88, 0x88, 0x88, 0x08],
        vec![f16::NAN; 3]
    )));

    let nf4 = |packed: Vec<u8>, absmax: Vec<f32>| {
        Nf4Tensor::from_parts(Shape::from(9), DType::BF16, 4, packed, absmax).map(|_| ())
    };
    assert!(nf4(vec![0x77, 0x77, 0x77, 0x77, 0x07], vec![1.0; 3]).is_ok());
    assert!(md(nf4(vec![0x77; 6], vec![1.0; 3])));
    assert!(md(nf4(vec![0x77, 0x77, 0x77, 0x77, 0x07], vec![1.0; 4])));
    assert!(corrupt(nf4(
        vec![0x77, 0x77, 0x77, 0x77, 0x07],
        vec![f32::INFINITY; 3]
    )));
    assert!(corrupt(nf4(vec![0x77; 5], vec![1.0; 3])));
    // A shape whose element count overflows is refused, not wrapped.
    assert!(Nf4Tensor::from_parts(
        Shape::from(vec![usize::MAX, 3]),
        DType::F32,
        4,
        vec![],
        vec![]
    )
    .is_err());
}

#[test]
fn scales_beyond_f16_are_errors_not_infinities() -> candle_compress::Result<()> {
    // int8: d = amax/127 must round to a finite f16 (d < 65520).
    let big = Tensor::new(&[1.0f32, 9.0e6], &DEV)?;
    assert!(matches!(
        BlockwiseInt8::new(2)?.compress(&big),
        Err(Error::InvalidArgument { .. })
    ));
    // int4: amax/7 rounded up must be finite (amax <= 458528).
    assert!(matches!(
        SymmetricInt4::new(2)?.compress(&Tensor::new(&[4.6e5f32], &DEV)?),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(SymmetricInt4::new(2)?
        .compress(&Tensor::new(&[458_528f32], &DEV)?)
        .is_ok());
    // Affine and NF4 keep f32 parameters: any finite value works.
    for scheme in [Scheme::Affine4 { group: 2 }, Scheme::Nf4 { block: 2 }] {
        let c = scheme.compress(&big)?;
        assert!(c.to_f32_vec().iter().all(|v| v.is_finite()));
    }
    Ok(())
}

#[test]
fn nf4_levels_are_reproduced_exactly() -> candle_compress::Result<()> {
    let t = Tensor::new(&NF4_CODE_BOOK, &DEV)?.affine(3.0, 0.0)?;
    let c = Nf4::new(16)?.compress(&t)?;
    assert_eq!(c.codes(), (0u8..16).collect::<Vec<_>>());
    assert_eq!(c.absmax(), &[3.0]);
    let expect: Vec<f32> = NF4_CODE_BOOK.iter().map(|c| c * 3.0).collect();
    assert_eq!(c.to_f32_vec(), expect);
    Ok(())
}

#[test]
fn four_bit_payloads_really_pack_two_per_byte() -> candle_compress::Result<()> {
    let t = Tensor::randn(0f32, 1.0, 1001, &DEV)?;
    let a4 = Affine::new(4, 64)?.compress(&t)?;
    let i4 = SymmetricInt4::new(64)?.compress(&t)?;
    let n4 = Nf4::new(64)?.compress(&t)?;
    assert_eq!(a4.codes().len(), 501);
    assert_eq!(i4.packed().len(), 501);
    assert_eq!(n4.packed().len(), 501);
    let groups = 1001usize.div_ceil(64);
    assert_eq!(a4.size_bytes(), 501 + 8 * groups + 9 + SCHEME_BYTES);
    assert_eq!(i4.size_bytes(), 501 + 2 * groups + 9 + SCHEME_BYTES);
    assert_eq!(n4.size_bytes(), 501 + 4 * groups + 9 + SCHEME_BYTES);
    assert!(i4.compression_ratio() > 7.0);
    Ok(())
}
