//! Activation codecs: round trips on random shapes for every codec, exact top-k column
//! selection, one named test per decode error built from hand-written bytes, and property
//! tests feeding random, truncated and bit-flipped bytes to `decode`.

use candle_compress::codec::{top_k_columns, ActivationCodec, MAGIC, MAX_ELEMENTS, MAX_RANK};
use candle_compress::Error;
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};
use proptest::prelude::*;

const CPU: Device = Device::Cpu;

fn all_codecs(keep: usize) -> [ActivationCodec; 6] {
    [
        ActivationCodec::None,
        ActivationCodec::F16,
        ActivationCodec::BF16,
        ActivationCodec::Int8PerRow,
        ActivationCodec::SparseColumns { keep },
        ActivationCodec::SparseColumnsF16 { keep },
    ]
}

/// Flattened values of any float tensor as f64 (exact for every float dtype).
fn values_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn rows_cols(dims: &[usize]) -> (usize, usize) {
    match dims.split_last() {
        None => (1, 1),
        Some((&c, lead)) => (lead.iter().product(), c),
    }
}

/// Oracle for the kept columns: full sort by (squared norm desc, index asc).
fn oracle_top_k(x: &[f32], rows: usize, cols: usize, k: usize) -> Vec<u32> {
    let mut norms = vec![0f64; cols];
    for r in 0..rows {
        for c in 0..cols {
            let v = f64::from(x[r * cols + c]);
            norms[c] += v * v;
        }
    }
    let mut idx: Vec<u32> = (0..cols as u32).collect();
    idx.sort_by(|&a, &b| {
        norms[b as usize]
            .partial_cmp(&norms[a as usize])
            .unwrap()
            .then(a.cmp(&b))
    });
    idx.truncate(k.min(cols));
    idx.sort();
    idx
}

/// What decode must return for `codec` applied to the f32 values `x`, or `None` for the
/// lossy int8 codec (checked against its error bound instead).
fn expected(codec: ActivationCodec, x: &[f32], dims: &[usize]) -> Option<Vec<f32>> {
    let (rows, cols) = rows_cols(dims);
    let sparse = |k: usize, round: fn(f32) -> f32| {
        let keep = oracle_top_k(x, rows, cols, k);
        let mut out = vec![0f32; x.len()];
        for r in 0..rows {
            for &c in &keep {
                let i = r * cols + c as usize;
                out[i] = round(x[i]);
            }
        }
        out
    };
    match codec {
        ActivationCodec::None => Some(x.to_vec()),
        ActivationCodec::F16 => Some(x.iter().map(|&v| f16::from_f32(v).to_f32()).collect()),
        ActivationCodec::BF16 => Some(x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()),
        ActivationCodec::Int8PerRow => None,
        ActivationCodec::SparseColumns { keep } => Some(sparse(keep, |v| v)),
        ActivationCodec::SparseColumnsF16 { keep } => {
            Some(sparse(keep, |v| f16::from_f32(v).to_f32()))
        }
    }
}

fn shape_and_values() -> impl Strategy<Value = (Vec<usize>, Vec<f32>)> {
    prop::collection::vec(0usize..7, 0..=4).prop_flat_map(|dims| {
        let n: usize = dims.iter().product();
        // Values on a coarse grid so that equal column norms (ties) actually happen.
        let vals = prop::collection::vec(
            prop_oneof![(-8i32..=8).prop_map(|v| v as f32 * 0.5), -300f32..300f32],
            n,
        );
        (Just(dims), vals)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_codec_round_trips_f32((dims, x) in shape_and_values(), keep in 1usize..8) {
        let t = Tensor::from_vec(x.clone(), dims.as_slice(), &CPU).unwrap();
        for codec in all_codecs(keep) {
            let bytes = codec.encode(&t).unwrap();
            prop_assert_eq!(bytes.len(), codec.encoded_len(t.shape(), DType::F32).unwrap());
            let y = ActivationCodec::decode(&bytes, &CPU).unwrap();
            prop_assert_eq!(y.dims(), dims.as_slice());
            prop_assert_eq!(y.dtype(), DType::F32);
            let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            match expected(codec, &x, &dims) {
                Some(want) => prop_assert_eq!(got, want, "{}", codec),
                None => {
                    let (_, cols) = rows_cols(&dims);
                    for (row, got_row) in x.chunks(cols.max(1)).zip(got.chunks(cols.max(1))) {
                        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let scale = amax / 127.0;
                        for (a, b) in row.iter().zip(got_row) {
                            prop_assert!((a - b).abs() <= scale * 0.5 * (1.0 + 1e-5) + 1e-30,
                                "{a} vs {b}, scale {scale}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn dense_codecs_round_trip_every_dtype((dims, x) in shape_and_values(), d in 0usize..4) {
        let dtype = [DType::F32, DType::F16, DType::BF16, DType::F64][d];
        let t = Tensor::from_vec(x, dims.as_slice(), &CPU).unwrap().to_dtype(dtype).unwrap();
        let orig = values_f64(&t);
        for codec in [ActivationCodec::None, ActivationCodec::F16, ActivationCodec::BF16] {
            let bytes = codec.encode(&t).unwrap();
            prop_assert_eq!(bytes.len(), codec.encoded_len(t.shape(), dtype).unwrap());
            let y = ActivationCodec::decode(&bytes, &CPU).unwrap();
            prop_assert_eq!(y.dtype(), dtype);
            prop_assert_eq!(y.dims(), dims.as_slice());
            let got = values_f64(&y);
            // The codec's rounding, then the original dtype's (both exact oracles).
            let want: Vec<f64> = orig
                .iter()
                .map(|&v| {
                    let v32 = v as f32;
                    let coded = match codec {
                        ActivationCodec::None => return v,
                        ActivationCodec::F16 => f16::from_f32(v32).to_f32(),
                        _ => bf16::from_f32(v32).to_f32(),
                    };
                    match dtype {
                        DType::F16 => f64::from(f16::from_f32(coded).to_f32()),
                        DType::BF16 => f64::from(bf16::from_f32(coded).to_f32()),
                        _ => f64::from(coded),
                    }
                })
                .collect();
            prop_assert_eq!(got, want, "{} {:?}", codec, dtype);
        }
    }

    #[test]
    fn sparse_columns_keep_exactly_the_top_k(
        rows in 1usize..6, cols in 1usize..40, keep in 1usize..45, seed in any::<u64>()
    ) {
        // Few distinct magnitudes: many ties between columns.
        let mut s = seed | 1;
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s % 5) as f32 - 2.0) * 0.75
            })
            .collect();
        let want = oracle_top_k(&x, rows, cols, keep);
        prop_assert_eq!(want.len(), keep.min(cols));
        prop_assert_eq!(top_k_columns(&x, rows, cols, keep), want.clone());
        let t = Tensor::from_vec(x.clone(), (rows, cols), &CPU).unwrap();
        let y = ActivationCodec::decode(
            &ActivationCodec::SparseColumns { keep }.encode(&t).unwrap(), &CPU).unwrap();
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for r in 0..rows {
            for c in 0..cols {
                let v = if want.contains(&(c as u32)) { x[r * cols + c] } else { 0.0 };
                prop_assert_eq!(got[r * cols + c], v);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = ActivationCodec::decode(&bytes, &CPU);
        // And with a valid magic and version, so the fields behind them get exercised.
        let mut b = MAGIC.to_vec();
        b.push(1);
        b.extend_from_slice(&bytes);
        check_decode_consistent(&b);
    }

    #[test]
    fn truncated_encodings_are_truncated_errors(
        (dims, x) in shape_and_values(), keep in 1usize..8, cut in any::<prop::sample::Index>()
    ) {
        let t = Tensor::from_vec(x, dims.as_slice(), &CPU).unwrap();
        for codec in all_codecs(keep) {
            let bytes = codec.encode(&t).unwrap();
            let len = cut.index(bytes.len());
            let r = ActivationCodec::decode(&bytes[..len], &CPU);
            prop_assert!(matches!(r, Err(Error::Truncated { .. })), "{} cut at {}: {:?}", codec, len, r);
        }
    }

    #[test]
    fn bit_flips_give_an_error_or_a_consistent_tensor(
        (dims, x) in shape_and_values(), keep in 1usize..8,
        pos in any::<prop::sample::Index>(), bit in 0u8..8, extra in prop::collection::vec(any::<u8>(), 0..3)
    ) {
        let t = Tensor::from_vec(x, dims.as_slice(), &CPU).unwrap();
        for codec in all_codecs(keep) {
            let mut bytes = codec.encode(&t).unwrap();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            check_decode_consistent(&bytes);
            bytes.extend_from_slice(&extra);
            check_decode_consistent(&bytes);
        }
    }
}

/// Decoding either fails or gives a tensor that agrees with the header, holds only finite
/// values, and re-encodes (with the header's codec) to a decodable message.
fn check_decode_consistent(bytes: &[u8]) {
    match ActivationCodec::decode(bytes, &CPU) {
        // Refusing is always allowed; the property is "no panic, no overread".
        Err(_) => {}
        Ok(t) => {
            let h = ActivationCodec::read_header(bytes).expect("decodable implies valid header");
            assert_eq!(t.shape(), &h.shape);
            assert_eq!(t.dtype(), h.dtype);
            assert!(values_f64(&t).iter().all(|v| v.is_finite()));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hand-written bytes: one named test per decode error.
// ---------------------------------------------------------------------------------------

/// Header: magic, version 1, codec, dtype, rank, dims.
fn header(codec: u8, dtype: u8, dims: &[u64]) -> Vec<u8> {
    let mut b = b"CCAC".to_vec();
    b.extend_from_slice(&[1, codec, dtype, dims.len() as u8]);
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b
}

fn f32s(b: &mut Vec<u8>, v: &[f32]) {
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
}

fn u32s(b: &mut Vec<u8>, v: &[u32]) {
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
}

fn decode_err(bytes: &[u8]) -> Error {
    match ActivationCodec::decode(bytes, &CPU) {
        Ok(t) => panic!("expected an error, decoded {t:?}"),
        Err(e) => e,
    }
}

#[test]
fn hand_written_f32_message_decodes() -> candle_compress::Result<()> {
    let mut b = header(0, 0, &[2, 2]);
    f32s(&mut b, &[1.0, -2.0, 3.5, 0.0]);
    let t = ActivationCodec::decode(&b, &CPU)?;
    assert_eq!(t.to_vec2::<f32>()?, [[1.0, -2.0], [3.5, 0.0]]);
    let h = ActivationCodec::read_header(&b)?;
    assert_eq!((h.header_len, h.payload_len), (8 + 16, 16));
    // And the encoder writes exactly these bytes.
    let x = Tensor::new(&[[1.0f32, -2.0], [3.5, 0.0]], &CPU)?;
    assert_eq!(ActivationCodec::None.encode(&x)?, b);
    Ok(())
}

#[test]
fn hand_written_sparse_message_decodes() -> candle_compress::Result<()> {
    // [2, 4], keep columns 1 and 3.
    let mut b = header(4, 0, &[2, 4]);
    u32s(&mut b, &[2, 1, 3]);
    f32s(&mut b, &[10.0, 30.0, 11.0, 31.0]);
    let t = ActivationCodec::decode(&b, &CPU)?;
    assert_eq!(
        t.to_vec2::<f32>()?,
        [[0.0, 10.0, 0.0, 30.0], [0.0, 11.0, 0.0, 31.0]]
    );
    Ok(())
}

#[test]
fn truncated_magic() {
    let e = decode_err(b"CC");
    assert!(
        matches!(
            &e,
            Error::Truncated {
                needed: 4,
                available: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(decode_err(b""), Error::Truncated { .. }));
}

#[test]
fn bad_magic_is_corrupt() {
    let mut b = header(0, 0, &[1]);
    b[0] = b'X';
    f32s(&mut b, &[1.0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("magic")),
        "{e}"
    );
}

#[test]
fn unsupported_version() {
    let mut b = header(0, 0, &[1]);
    b[4] = 2;
    f32s(&mut b, &[1.0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Unsupported { what, found, .. } if what.contains("version") && found == "2"),
        "{e}"
    );
}

#[test]
fn unsupported_codec_id() {
    let b = header(6, 0, &[0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Unsupported { what, found, .. } if what.contains("codec id") && found == "6"),
        "{e}"
    );
}

#[test]
fn unsupported_dtype_id() {
    let b = header(0, 4, &[0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Unsupported { what, .. } if what.contains("dtype")),
        "{e}"
    );
}

#[test]
fn rank_above_cap_is_unsupported() {
    let dims = vec![1u64; MAX_RANK + 1];
    let mut b = header(0, 0, &dims);
    f32s(&mut b, &[1.0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Unsupported { what, .. } if what.contains("rank")),
        "{e}"
    );
}

#[test]
fn truncated_dims() {
    let mut b = header(0, 0, &[3, 3]);
    b.truncate(8 + 8 + 5);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Truncated { what, needed: 24, available: 21 } if what.contains("dims")),
        "{e}"
    );
}

#[test]
fn element_count_overflow_is_corrupt() {
    let b = header(0, 0, &[u64::MAX, 2]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("overflow")),
        "{e}"
    );
}

#[test]
fn zero_dim_beside_overflowing_dims_is_corrupt() {
    // Zero elements, but the other dims' product (candle's strides) overflows.
    let b = header(3, 0, &[1 << 40, 1 << 40, 0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("overflow")),
        "{e}"
    );
}

#[test]
fn element_count_above_cap_is_unsupported() {
    // A sparse message: 4 bytes of payload per row would describe 2^20 x 2^20 zeros.
    let mut b = header(4, 0, &[1 << 20, 1 << 20]);
    u32s(&mut b, &[1, 0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Unsupported { what, .. } if what.contains("element count")),
        "{e}"
    );
    let b = header(0, 0, &[MAX_ELEMENTS as u64 + 1]);
    assert!(matches!(decode_err(&b), Error::Unsupported { .. }));
}

#[test]
fn decode_with_limit_refuses_before_allocating() {
    let x = Tensor::zeros((4, 8), DType::F32, &CPU).unwrap();
    let b = ActivationCodec::F16.encode(&x).unwrap();
    assert!(ActivationCodec::decode_with_limit(&b, &CPU, 32).is_ok());
    let e = ActivationCodec::decode_with_limit(&b, &CPU, 31).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
}

#[test]
fn truncated_payload() {
    let mut b = header(1, 0, &[2, 3]);
    b.extend_from_slice(&[0; 11]); // needs 12
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Truncated { what, needed: 36, available: 35 } if what.contains("payload")),
        "{e}"
    );
}

#[test]
fn trailing_bytes_are_corrupt() {
    let mut b = header(1, 0, &[2]);
    b.extend_from_slice(&[0; 5]); // needs 4
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("1 trailing")),
        "{e}"
    );
}

#[test]
fn non_finite_f32_value_is_corrupt() {
    let mut b = header(0, 0, &[3]);
    f32s(&mut b, &[1.0, f32::INFINITY, 0.0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("element 1")),
        "{e}"
    );
}

#[test]
fn non_finite_f16_value_is_corrupt() {
    for dtype in [0u8, 1] {
        // The F16 codec decoding to F32 and to F16 takes different paths: both check.
        let mut b = header(1, dtype, &[3]);
        for h in [f16::ONE, f16::ONE, f16::NAN] {
            b.extend_from_slice(&h.to_bits().to_le_bytes());
        }
        let e = decode_err(&b);
        assert!(
            matches!(&e, Error::Corrupt { reason, .. } if reason.contains("element 2")),
            "{e}"
        );
    }
}

#[test]
fn non_finite_bf16_value_is_corrupt() {
    for dtype in [0u8, 2] {
        let mut b = header(2, dtype, &[2]);
        for h in [bf16::INFINITY, bf16::ONE] {
            b.extend_from_slice(&h.to_bits().to_le_bytes());
        }
        let e = decode_err(&b);
        assert!(
            matches!(&e, Error::Corrupt { reason, .. } if reason.contains("element 0")),
            "{e}"
        );
    }
}

#[test]
fn non_finite_f64_value_is_corrupt() {
    let mut b = header(0, 3, &[2]);
    b.extend_from_slice(&1.0f64.to_le_bytes());
    b.extend_from_slice(&f64::NAN.to_le_bytes());
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("f64")),
        "{e}"
    );
}

#[test]
fn int8_bad_scales_are_corrupt() {
    for scale in [-1.0f32, f32::NAN, f32::INFINITY] {
        let mut b = header(3, 0, &[1, 2]);
        f32s(&mut b, &[scale]);
        b.extend_from_slice(&[1, 2]);
        let e = decode_err(&b);
        assert!(
            matches!(&e, Error::Corrupt { reason, .. } if reason.contains("scale")),
            "{e}"
        );
    }
}

#[test]
fn int8_scale_that_would_decode_to_infinity_is_corrupt() {
    let mut b = header(3, 0, &[1, 1]);
    f32s(&mut b, &[f32::MAX / 100.0]);
    b.push(127);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("scale")),
        "{e}"
    );
}

#[test]
fn int8_extreme_rows_encode_to_finite_values_or_refuse() {
    for v in [f32::MAX, -f32::MAX, f32::MAX / 2.0, 1e38] {
        let t = Tensor::new(&[v, 1.0], &CPU).unwrap();
        match ActivationCodec::Int8PerRow.encode(&t) {
            Ok(b) => {
                let y = ActivationCodec::decode(&b, &CPU)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                assert!(y.iter().all(|x| x.is_finite()), "{v}: {y:?}");
            }
            Err(e) => assert!(matches!(e, Error::InvalidArgument { .. }), "{e}"),
        }
    }
}

#[test]
fn values_overflowing_the_header_dtype_are_corrupt() {
    // f32 sparse values with a header claiming F16: 1e6 has no f16 value.
    let mut b = header(4, 1, &[1, 2]);
    u32s(&mut b, &[1, 0]);
    f32s(&mut b, &[1e6]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("overflows")),
        "{e}"
    );
    // bf16 bits of 1e6 decoded into an F16 tensor.
    let mut b = header(2, 1, &[1]);
    b.extend_from_slice(&bf16::from_f32(1e6).to_bits().to_le_bytes());
    assert!(matches!(decode_err(&b), Error::Corrupt { .. }));
}

#[test]
fn int8_minus_128_is_corrupt() {
    let mut b = header(3, 0, &[2, 2]);
    f32s(&mut b, &[0.5, 0.5]);
    b.extend_from_slice(&[1, 2, 3, 0x80]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("row 1, column 1")),
        "{e}"
    );
}

#[test]
fn sparse_k_above_cols_is_corrupt() {
    let mut b = header(4, 0, &[1, 2]);
    u32s(&mut b, &[3, 0, 1, 2]);
    f32s(&mut b, &[1.0, 2.0, 3.0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("k = 3")),
        "{e}"
    );
}

#[test]
fn sparse_k_zero_with_columns_is_corrupt() {
    let mut b = header(5, 0, &[1, 2]);
    u32s(&mut b, &[0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("k = 0")),
        "{e}"
    );
}

#[test]
fn sparse_index_out_of_range_is_corrupt() {
    let mut b = header(4, 0, &[1, 4]);
    u32s(&mut b, &[2, 1, 4]);
    f32s(&mut b, &[1.0, 2.0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Corrupt { reason, .. } if reason.contains("out of range")),
        "{e}"
    );
}

#[test]
fn sparse_indices_not_increasing_are_corrupt() {
    for idx in [[2u32, 1], [1, 1]] {
        let mut b = header(4, 0, &[1, 4]);
        u32s(&mut b, &[2]);
        u32s(&mut b, &idx);
        f32s(&mut b, &[1.0, 2.0]);
        let e = decode_err(&b);
        assert!(
            matches!(&e, Error::Corrupt { reason, .. } if reason.contains("strictly increasing")),
            "{e}"
        );
    }
}

#[test]
fn truncated_sparse_k() {
    let mut b = header(4, 0, &[1, 4]);
    b.extend_from_slice(&[1, 0]);
    let e = decode_err(&b);
    assert!(
        matches!(&e, Error::Truncated { what, .. } if what.contains("column count")),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// Encode errors.
// ---------------------------------------------------------------------------------------

#[test]
fn encode_refuses_bad_input() -> candle_compress::Result<()> {
    let x = Tensor::new(&[[1.0f32, f32::NAN], [0.0, 1.0]], &CPU)?;
    for codec in all_codecs(1) {
        match codec.encode(&x) {
            Err(Error::NonFinite { index: 1, .. }) => {}
            other => panic!("{codec}: expected NonFinite at 1, got {other:?}"),
        }
    }
    let big = Tensor::new(&[1.0f32, 70000.0], &CPU)?;
    for codec in [
        ActivationCodec::F16,
        ActivationCodec::SparseColumnsF16 { keep: 2 },
    ] {
        match codec.encode(&big) {
            Err(Error::InvalidArgument { reason, .. }) => {
                assert!(reason.contains("flat index 1"), "{reason}")
            }
            other => panic!("{codec}: expected out-of-range error, got {other:?}"),
        }
    }
    let huge = Tensor::new(&[f32::MAX, 1.0], &CPU)?;
    assert!(matches!(
        ActivationCodec::BF16.encode(&huge),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        ActivationCodec::SparseColumns { keep: 0 }.encode(&big),
        Err(Error::InvalidArgument { name: "keep", .. })
    ));
    let ints = Tensor::new(&[1u32, 2], &CPU)?;
    assert!(matches!(
        ActivationCodec::F16.encode(&ints),
        Err(Error::UnsupportedDType { .. })
    ));
    let deep = Tensor::zeros(vec![1usize; MAX_RANK + 1], DType::F32, &CPU)?;
    assert!(matches!(
        ActivationCodec::None.encode(&deep),
        Err(Error::InvalidArgument { .. })
    ));
    Ok(())
}

#[test]
fn non_contiguous_input_and_header_fields() -> candle_compress::Result<()> {
    let x = Tensor::arange(0f32, 12., &CPU)?.reshape((3, 4))?.t()?;
    assert!(!x.is_contiguous());
    let codec = ActivationCodec::SparseColumnsF16 { keep: 2 };
    let b = codec.encode(&x)?;
    let h = ActivationCodec::read_header(&b)?;
    assert_eq!(h.codec, codec);
    assert_eq!(h.shape.dims(), &[4, 3]);
    assert_eq!(h.dtype, DType::F32);
    // Columns of x.t() are rows 0..3 of the original: the last two have the largest norms.
    let y = ActivationCodec::decode(&b, &CPU)?;
    assert_eq!(
        y.to_vec2::<f32>()?,
        [[0., 4., 8.], [0., 5., 9.], [0., 6., 10.], [0., 7., 11.]]
    );
    // `keep` above the column count keeps everything and records k = cols.
    let b = ActivationCodec::SparseColumns { keep: 10 }.encode(&x)?;
    assert_eq!(
        ActivationCodec::read_header(&b)?.codec,
        ActivationCodec::SparseColumns { keep: 3 }
    );
    assert_eq!(
        ActivationCodec::decode(&b, &CPU)?.to_vec2::<f32>()?,
        x.to_vec2::<f32>()?
    );
    Ok(())
}

#[test]
fn int8_keeps_input_dtype_and_zero_rows() -> candle_compress::Result<()> {
    let x = Tensor::new(&[[0.0f32, 0.0, 0.0], [1.0, -0.5, 0.25]], &CPU)?.to_dtype(DType::F16)?;
    let b = ActivationCodec::Int8PerRow.encode(&x)?;
    assert_eq!(b.len(), 8 + 16 + 2 * 4 + 6);
    let y = ActivationCodec::decode(&b, &CPU)?;
    assert_eq!(y.dtype(), DType::F16);
    let y = y.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    assert_eq!(y[0], [0.0, 0.0, 0.0]);
    for (a, b) in [1.0f32, -0.5, 0.25].iter().zip(&y[1]) {
        assert!((a - b).abs() <= 1.0 / 127.0 / 2.0 + 1e-3, "{a} vs {b}");
    }
    Ok(())
}

#[test]
fn encode_into_reuses_the_buffer() -> candle_compress::Result<()> {
    let a = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &CPU)?;
    let b = Tensor::new(&[5.0f32], &CPU)?;
    let mut buf = Vec::with_capacity(1024);
    ActivationCodec::F16.encode_into(&a, &mut buf)?;
    assert_eq!(buf, ActivationCodec::F16.encode(&a)?);
    ActivationCodec::BF16.encode_into(&b, &mut buf)?;
    assert_eq!(buf, ActivationCodec::BF16.encode(&b)?);
    assert!(buf.capacity() >= 1024);
    assert_eq!(
        ActivationCodec::decode(&buf, &CPU)?.to_vec1::<f32>()?,
        [5.0]
    );
    Ok(())
}

/// Found by the fuzzer (`oom-d7052a49…`): 34 bytes describing a legal `[1, 2^26]` F16
/// sparse message with one kept column. Decoding is allowed (the default cap is 2^26
/// elements) and costs 256 MiB; the header is readable without allocating, and a tighter
/// cap refuses it before allocating.
#[test]
fn fuzz_regression_small_message_large_tensor() -> candle_compress::Result<()> {
    let bytes = [
        67u8, 67, 65, 67, 1, 5, 1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 1, 0, 0, 0,
        2, 0, 0, 0, 0, 60,
    ];
    let h = ActivationCodec::read_header(&bytes)?;
    assert_eq!(h.shape.dims(), &[1, MAX_ELEMENTS]);
    assert_eq!(h.codec, ActivationCodec::SparseColumnsF16 { keep: 1 });
    assert_eq!(h.dtype, DType::F16);
    let e = ActivationCodec::decode_with_limit(&bytes, &CPU, 1 << 20).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    Ok(())
}
