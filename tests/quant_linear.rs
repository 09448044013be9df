//! QuantLinear against f32 `candle_nn::Linear`, against an integer reference computed here
//! from the quantized values, and on every kind of bad input.

use candle_compress::kernels::gemm::{PackedW4, PackedW8};
use candle_compress::nn::{
    ActivationQuant, QuantConfig, QuantLinear, QuantLinearParts, WeightQuant,
};
use candle_compress::Error;
use candle_core::{DType, Device, Module, Tensor};

mod common;

use common::rng::gaussian;
use common::tensors::{flat_f32, tensor};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const CPU: Device = Device::Cpu;

fn linear(out: usize, inp: usize, bias: bool, seed: u64) -> candle_nn::Linear {
    let w = gaussian(out * inp, seed).iter().map(|v| v * 0.05).collect();
    let b = bias.then(|| tensor(gaussian(out, seed + 1), &[out]));
    candle_nn::Linear::new(tensor(w, &[out, inp]), b)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// The float epilogue documented in `kernels::gemm` for W8A8.
fn finish_w8(acc: i64, sx: f32, sw: f32, bias: Option<f32>) -> f32 {
    let y = acc as f32 * (sx * sw);
    match bias {
        Some(b) => y + b,
        None => y,
    }
}

/// The float epilogue documented in `kernels::gemm` for W4A8: groups summed in order,
/// then scaled by the activation scale.
fn finish_w4(group_sum: f32, sx: f32, bias: Option<f32>) -> f32 {
    let y = group_sum * sx;
    match bias {
        Some(b) => y + b,
        None => y,
    }
}

/// Straightforward reference: integer dot products of the layer's own quantized values
/// (i64, so no overflow question), then the documented float epilogue.
fn reference(q: &QuantLinear, x: &Tensor) -> Vec<f32> {
    let qa = q.quantize_activations(x).unwrap();
    let (n, k) = (q.out_features(), q.in_features());
    let w = q.weights_i8();
    let sw = q.weight_scales();
    let bias = q.bias();
    let mut out = vec![0f32; qa.rows * n];
    for t in 0..qa.rows {
        let xr = &qa.values[t * k..(t + 1) * k];
        for o in 0..n {
            let wr = &w[o * k..(o + 1) * k];
            let b = bias.map(|b| b[o]);
            out[t * n + o] = match q.config().weights() {
                WeightQuant::Int8PerChannel => {
                    let acc: i64 = xr.iter().zip(wr).map(|(a, b)| *a as i64 * *b as i64).sum();
                    finish_w8(acc, qa.scales[t], sw[o], b)
                }
                WeightQuant::Int4Grouped { group } => {
                    let groups = k.div_ceil(group);
                    let mut sum = 0f32;
                    for g in 0..groups {
                        let ks = g * group..((g + 1) * group).min(k);
                        let acc: i32 = ks.map(|c| xr[c] as i32 * wr[c] as i32).sum();
                        sum += acc as f32 * sw[o * groups + g];
                    }
                    finish_w4(sum, qa.scales[t], b)
                }
                other => panic!("unexpected weight format {other:?}"),
            };
        }
    }
    out
}

fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

fn round_half_away(v: f32) -> f32 {
    v.round()
}

// ---------------------------------------------------------------------------------------
// Accuracy against f32 candle_nn::Linear

#[test]
fn w8a8_per_token_matches_f32_linear() -> TestResult {
    let lin = linear(256, 512, true, 1);
    let q = QuantLinear::from_linear(&lin, &QuantConfig::w8a8())?;
    let x = tensor(gaussian(33 * 512, 2), &[33, 512]);
    let cos = cosine(&flat_f32(&q.forward(&x)?), &flat_f32(&lin.forward(&x)?));
    eprintln!("W8A8 per-token cosine {cos:.6}");
    assert!(cos >= 0.999, "cosine {cos}");
    Ok(())
}

#[test]
fn w4a8_groups_match_f32_linear() -> TestResult {
    let lin = linear(256, 512, true, 3);
    let x = tensor(gaussian(17 * 512, 4), &[17, 512]);
    let want = flat_f32(&lin.forward(&x)?);
    for group in [32, 64, 128] {
        let q = QuantLinear::from_linear(&lin, &QuantConfig::w4a8(group)?)?;
        let cos = cosine(&flat_f32(&q.forward(&x)?), &want);
        eprintln!("W4A8 group {group} cosine {cos:.6}");
        assert!(cos >= 0.99, "group {group}: cosine {cos}");
    }
    Ok(())
}

#[test]
fn per_tensor_and_static_modes_are_accurate() -> TestResult {
    let lin = linear(96, 320, false, 5);
    let x = tensor(gaussian(9 * 320, 6), &[9, 320]);
    let want = flat_f32(&lin.forward(&x)?);
    let amax = flat_f32(&x).iter().fold(0f32, |m, v| m.max(v.abs()));
    for act in [
        ActivationQuant::PerTensor,
        ActivationQuant::Static {
            scale: amax / 127.0,
        },
    ] {
        let cfg = QuantConfig::w8a8().with_activations(act)?;
        let q = QuantLinear::from_linear(&lin, &cfg)?;
        let cos = cosine(&flat_f32(&q.forward(&x)?), &want);
        assert!(cos >= 0.998, "{act:?}: cosine {cos}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The exact formula

#[test]
fn output_is_the_integer_formula_bit_for_bit() -> TestResult {
    // Odd sizes: out not a multiple of the 16-channel panel, in not a multiple of 4 or of
    // the int4 group (the last group is short).
    let lin = linear(37, 203, true, 7);
    let x = tensor(gaussian(5 * 203, 8), &[5, 203]);
    let amax = flat_f32(&x).iter().fold(0f32, |m, v| m.max(v.abs()));
    for cfg in [
        QuantConfig::w8a8(),
        QuantConfig::w4a8(32)?,
        QuantConfig::w4a8(64)?,
    ] {
        for act in [
            ActivationQuant::PerToken,
            ActivationQuant::PerTensor,
            // Half the amax: the largest activations saturate at ±127.
            ActivationQuant::Static {
                scale: amax / 254.0,
            },
        ] {
            let cfg = cfg.with_activations(act)?;
            let q = QuantLinear::from_linear(&lin, &cfg)?;
            let got = flat_f32(&q.forward(&x)?);
            assert_bits_eq(&got, &reference(&q, &x), &format!("{cfg:?}"));
        }
    }
    Ok(())
}

#[test]
fn formula_holds_without_bias_and_for_one_row() -> TestResult {
    let lin = linear(16, 64, false, 9);
    for cfg in [QuantConfig::w8a8(), QuantConfig::w4a8(32)?] {
        let q = QuantLinear::from_linear(&lin, &cfg)?;
        let x = tensor(gaussian(64, 10), &[64]);
        let y = q.forward(&x)?;
        assert_eq!(y.dims(), &[16]);
        assert_bits_eq(&flat_f32(&y), &reference(&q, &x), &format!("{cfg:?}"));
    }
    Ok(())
}

#[test]
fn weight_quantization_follows_the_documented_rule() -> TestResult {
    let (out, inp) = (5, 70);
    let lin = linear(out, inp, false, 11);
    let w = flat_f32(lin.weight());
    // Int8 per output channel: scale = amax / 127, q = round_half_away(w / scale).
    let q8 = QuantLinear::from_linear(&lin, &QuantConfig::w8a8())?;
    let codes = q8.weights_i8();
    for o in 0..out {
        let row = &w[o * inp..(o + 1) * inp];
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = amax / 127.0;
        assert_eq!(q8.weight_scales()[o].to_bits(), scale.to_bits(), "row {o}");
        for k in 0..inp {
            let want = round_half_away(row[k] / scale).clamp(-127.0, 127.0) as i8;
            assert_eq!(codes[o * inp + k], want, "w8 [{o}, {k}]");
        }
    }
    // Int4 per group of 32 (70 = 32 + 32 + 6): scale = amax / 7, codes in [-7, 7].
    let q4 = QuantLinear::from_linear(&lin, &QuantConfig::w4a8(32)?)?;
    let codes = q4.weights_i8();
    assert_eq!(q4.weight_scales().len(), out * 3);
    for o in 0..out {
        for g in 0..3 {
            let ks = g * 32..((g + 1) * 32).min(inp);
            let amax = ks.clone().fold(0f32, |m, k| m.max(w[o * inp + k].abs()));
            let scale = amax / 7.0;
            assert_eq!(q4.weight_scales()[o * 3 + g].to_bits(), scale.to_bits());
            for k in ks {
                let want = round_half_away(w[o * inp + k] / scale).clamp(-7.0, 7.0) as i8;
                assert_eq!(codes[o * inp + k], want, "w4 [{o}, {k}]");
            }
        }
    }
    Ok(())
}

#[test]
fn activation_quantization_follows_the_documented_rule() -> TestResult {
    let lin = linear(8, 40, false, 12);
    let mut xs = gaussian(3 * 40, 13);
    xs[40..80].fill(0.0); // an all-zero token: scale 0, codes 0
    let x = tensor(xs.clone(), &[3, 40]);
    let quantize = |v: f32, s: f32| -> i8 {
        if s == 0.0 {
            0
        } else {
            round_half_away(v / s).clamp(-127.0, 127.0) as i8
        }
    };
    // Per token.
    let q = QuantLinear::from_linear(&lin, &QuantConfig::w8a8())?;
    let qa = q.quantize_activations(&x)?;
    assert_eq!((qa.rows, qa.cols), (3, 40));
    for t in 0..3 {
        let row = &xs[t * 40..(t + 1) * 40];
        let s = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        assert_eq!(qa.scales[t].to_bits(), s.to_bits());
        for (k, v) in row.iter().enumerate() {
            assert_eq!(qa.values[t * 40 + k], quantize(*v, s));
        }
    }
    assert_eq!(qa.scales[1], 0.0);
    assert!(qa.values[40..80].iter().all(|&v| v == 0));
    // Per tensor: one scale from the whole input.
    let qt = q.with_activations(ActivationQuant::PerTensor)?;
    let qa = qt.quantize_activations(&x)?;
    let s = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
    assert!(qa.scales.iter().all(|v| v.to_bits() == s.to_bits()));
    for (i, v) in xs.iter().enumerate() {
        assert_eq!(qa.values[i], quantize(*v, s));
    }
    // Static: saturates beyond 127·scale.
    let qs = q.with_activations(ActivationQuant::Static { scale: 0.004 })?;
    let qa = qs.quantize_activations(&x)?;
    assert!(qa.scales.iter().all(|&v| v == 0.004));
    for (i, v) in xs.iter().enumerate() {
        assert_eq!(qa.values[i], quantize(*v, 0.004));
    }
    assert!(qa.values.contains(&127) && qa.values.contains(&-127));
    // An all-zero input in per-tensor mode: zero scale, output = bias.
    let lb = linear(8, 40, true, 14);
    let qb = QuantLinear::from_linear(&lb, &QuantConfig::w8a8())?
        .with_activations(ActivationQuant::PerTensor)?;
    let y = qb.forward(&Tensor::zeros((2, 40), DType::F32, &CPU)?)?;
    let b = flat_f32(lb.bias().unwrap());
    assert_eq!(flat_f32(&y), [b.clone(), b].concat());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Smoothing

#[test]
fn smoothing_scales_weights_and_divides_activations() -> TestResult {
    let (out, inp) = (24, 96);
    let lin = linear(out, inp, true, 15);
    let s: Vec<f32> = gaussian(inp, 16).iter().map(|v| (0.7 * v).exp()).collect();
    let q = QuantLinear::from_linear_smoothed(&lin, &s, &QuantConfig::w8a8())?;
    assert_eq!(q.smooth(), Some(&s[..]));
    // Weights are those of W · diag(s).
    let w = flat_f32(lin.weight());
    let ws: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * s[i % inp]).collect();
    let plain = QuantLinear::new(&tensor(ws, &[out, inp]), lin.bias(), &QuantConfig::w8a8())?;
    assert_eq!(q.weights_i8(), plain.weights_i8());
    assert_eq!(q.weight_scales(), plain.weight_scales());
    // Activations are x · (1 / s) before quantization.
    let xs = gaussian(4 * inp, 17);
    let x = tensor(xs.clone(), &[4, inp]);
    let xd: Vec<f32> = xs
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 / s[i % inp]))
        .collect();
    let qa = q.quantize_activations(&x)?;
    let qa_plain = plain.quantize_activations(&tensor(xd, &[4, inp]))?;
    assert_eq!(qa, qa_plain);
    // Hence the same outputs, and still the f32 Linear's function.
    let y = flat_f32(&q.forward(&x)?);
    assert_bits_eq(&y, &reference(&q, &x), "smoothed formula");
    assert!(cosine(&y, &flat_f32(&lin.forward(&x)?)) >= 0.999);
    // W4A8 with smoothing too.
    let q4 = QuantLinear::from_linear_smoothed(&lin, &s, &QuantConfig::w4a8(32)?)?;
    assert_bits_eq(
        &flat_f32(&q4.forward(&x)?),
        &reference(&q4, &x),
        "smoothed w4",
    );
    Ok(())
}

#[test]
fn smoothing_tames_an_outlier_channel() -> TestResult {
    // One input channel 50× larger than the rest: per-token int8 loses the small channels;
    // s = sqrt(max|X_j| / max|W_j|) moves the outlier into the weights.
    let (out, inp, rows) = (64, 256, 32);
    let lin = linear(out, inp, false, 18);
    let mut xs = gaussian(rows * inp, 19);
    for t in 0..rows {
        xs[t * inp + 7] *= 50.0;
    }
    let x = tensor(xs.clone(), &[rows, inp]);
    let want = flat_f32(&lin.forward(&x)?);
    let w = flat_f32(lin.weight());
    let s: Vec<f32> = (0..inp)
        .map(|j| {
            let ax = (0..rows).fold(0f32, |m, t| m.max(xs[t * inp + j].abs()));
            let aw = (0..out).fold(0f32, |m, o| m.max(w[o * inp + j].abs()));
            (ax / aw).sqrt().max(1e-5)
        })
        .collect();
    let plain = QuantLinear::from_linear(&lin, &QuantConfig::w8a8())?;
    let smooth = QuantLinear::from_linear_smoothed(&lin, &s, &QuantConfig::w8a8())?;
    let err = |y: Vec<f32>| 1.0 - cosine(&y, &want);
    let (e_plain, e_smooth) = (
        err(flat_f32(&plain.forward(&x)?)),
        err(flat_f32(&smooth.forward(&x)?)),
    );
    eprintln!("1 - cosine: plain {e_plain:.2e}, smoothed {e_smooth:.2e}");
    assert!(
        e_smooth < e_plain,
        "smoothing did not help: {e_smooth} vs {e_plain}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Shapes, dtypes, layouts

#[test]
fn half_precision_inputs_give_the_same_dtype() -> TestResult {
    let lin = linear(40, 64, true, 20);
    let x32 = tensor(gaussian(6 * 64, 21), &[6, 64]);
    for cfg in [QuantConfig::w8a8(), QuantConfig::w4a8(64)?] {
        let q = QuantLinear::from_linear(&lin, &cfg)?;
        for dt in [DType::F16, DType::BF16, DType::F64] {
            let x = x32.to_dtype(dt)?;
            let y = q.forward(&x)?;
            assert_eq!(y.dtype(), dt);
            assert_eq!(y.dims(), &[6, 40]);
            // The half input widens exactly to f32; the f32 result is rounded once.
            let via_f32 = q.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dt)?;
            assert_eq!(flat_f32(&y), flat_f32(&via_f32), "{dt:?}");
        }
    }
    Ok(())
}

#[test]
fn leading_dims_and_layouts() -> TestResult {
    let lin = linear(12, 48, true, 22);
    let q = QuantLinear::from_linear(&lin, &QuantConfig::w8a8())?;
    let xs = gaussian(2 * 3 * 48, 23);
    let y2 = flat_f32(&q.forward(&tensor(xs.clone(), &[6, 48]))?);
    let y3 = q.forward(&tensor(xs.clone(), &[2, 3, 48]))?;
    assert_eq!(y3.dims(), &[2, 3, 12]);
    assert_eq!(flat_f32(&y3), y2);
    let y4 = q.forward(&tensor(xs.clone(), &[1, 2, 3, 48]))?;
    assert_eq!(y4.dims(), &[1, 2, 3, 12]);
    assert_eq!(flat_f32(&y4), y2);
    // A non-contiguous input (a transposed view) gives the same rows.
    let xt = tensor(xs.clone(), &[48, 6]).t()?;
    assert!(!xt.is_contiguous());
    let contiguous = xt.contiguous()?;
    assert_eq!(
        flat_f32(&q.forward(&xt)?),
        flat_f32(&q.forward(&contiguous)?)
    );
    // So does a narrowed view with an offset.
    let rows = tensor(xs, &[6, 48]).narrow(0, 2, 3)?;
    assert_eq!(flat_f32(&q.forward(&rows)?), y2[2 * 12..5 * 12].to_vec());
    Ok(())
}

#[test]
fn empty_batch_gives_empty_output() -> TestResult {
    let lin = linear(12, 48, true, 24);
    for cfg in [QuantConfig::w8a8(), QuantConfig::w4a8(32)?] {
        let q = QuantLinear::from_linear(&lin, &cfg)?;
        let y = q.forward(&Tensor::zeros((0, 48), DType::F32, &CPU)?)?;
        assert_eq!(y.dims(), &[0, 12]);
        let y = q.forward(&Tensor::zeros((2, 0, 48), DType::BF16, &CPU)?)?;
        assert_eq!((y.dims(), y.dtype()), (&[2usize, 0, 12][..], DType::BF16));
    }
    Ok(())
}

#[test]
fn same_result_on_one_and_two_threads() -> TestResult {
    // Large enough for parallel quantization and a multi-threaded matmul.
    let lin = linear(512, 1024, true, 25);
    let x = tensor(gaussian(96 * 1024, 26), &[96, 1024]);
    for cfg in [QuantConfig::w8a8(), QuantConfig::w4a8(128)?] {
        let q = QuantLinear::from_linear(&lin, &cfg)?;
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| flat_f32(&q.forward(&x).unwrap()))
        };
        let one = run(1);
        assert_bits_eq(&run(2), &one, "2 threads vs 1");
        assert_bits_eq(&one, &reference(&q, &x), "vs reference");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Bad input: errors, never panics

fn small() -> QuantLinear {
    QuantLinear::from_linear(&linear(4, 8, true, 27), &QuantConfig::w8a8()).unwrap()
}

#[test]
fn wrong_last_dim_is_an_error() {
    let q = small();
    let x = tensor(vec![0.5; 2 * 7], &[2, 7]);
    match q.try_forward(&x) {
        Err(Error::ShapeMismatch {
            expected, found, ..
        }) => {
            assert_eq!(expected, "\"[.., 8]\"");
            assert_eq!(found, "[2, 7]");
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
    let e = q.forward(&x).unwrap_err();
    assert!(e.to_string().contains("QuantLinear input"), "{e}");
}

#[test]
fn rank_zero_input_is_an_error() -> TestResult {
    let q = small();
    let x = Tensor::new(1f32, &CPU)?;
    assert!(matches!(
        q.try_forward(&x),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(q.forward(&x).is_err());
    assert!(q.quantize_activations(&x).is_err());
    Ok(())
}

#[test]
fn integer_dtypes_are_errors() -> TestResult {
    let q = small();
    for dt in [DType::U8, DType::U32, DType::I64] {
        let x = Tensor::zeros((2, 8), dt, &CPU)?;
        match q.try_forward(&x) {
            Err(Error::UnsupportedDType { found, .. }) => assert_eq!(found, dt),
            other => panic!("{dt:?}: expected UnsupportedDType, got {other:?}"),
        }
        assert!(q.forward(&x).is_err());
    }
    Ok(())
}

#[test]
fn non_finite_activations_name_the_first_flat_index() -> TestResult {
    let q = small();
    for (bad, at) in [(f32::NAN, 13), (f32::INFINITY, 0), (f32::NEG_INFINITY, 23)] {
        let mut xs = vec![0.25f32; 3 * 8];
        xs[at] = bad;
        xs[at.max(20) + 1..].fill(f32::NAN); // later bad values are not reported
        let x = tensor(xs, &[3, 8]);
        for mode in [
            ActivationQuant::PerToken,
            ActivationQuant::PerTensor,
            ActivationQuant::Static { scale: 0.01 },
        ] {
            let qm = q.with_activations(mode)?;
            match qm.try_forward(&x) {
                Err(Error::NonFinite { index, .. }) => assert_eq!(index, at, "{mode:?}"),
                other => panic!("{mode:?}: expected NonFinite, got {other:?}"),
            }
            // Through candle's Module the same error arrives wrapped in candle's type.
            let e = qm.forward(&x).unwrap_err();
            assert!(e.to_string().contains(&format!("flat index {at}")), "{e}");
        }
    }
    // F16 input and a 3-d shape: the index is flat over the whole input.
    let mut xs = vec![0.5f32; 2 * 2 * 8];
    xs[27] = f32::NAN;
    let x = tensor(xs, &[2, 2, 8]).to_dtype(DType::F16)?;
    assert!(matches!(
        q.try_forward(&x),
        Err(Error::NonFinite { index: 27, .. })
    ));
    Ok(())
}

#[test]
fn non_finite_index_is_exact_on_the_parallel_path() -> TestResult {
    let lin = linear(32, 1024, false, 28);
    let q = QuantLinear::from_linear(&lin, &QuantConfig::w8a8())?;
    let mut xs = gaussian(200 * 1024, 29);
    xs[150 * 1024 + 3] = f32::NAN;
    xs[170 * 1024] = f32::INFINITY;
    let x = tensor(xs, &[200, 1024]);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    pool.install(|| match q.try_forward(&x) {
        Err(Error::NonFinite { index, .. }) => assert_eq!(index, 150 * 1024 + 3),
        other => panic!("expected NonFinite, got {other:?}"),
    });
    Ok(())
}

#[test]
fn bad_construction_is_an_error() -> TestResult {
    let cfg = QuantConfig::w8a8();
    let w = tensor(gaussian(4 * 8, 30), &[4, 8]);
    // Weight shape and dtype.
    assert!(QuantLinear::new(&tensor(vec![1.0; 8], &[8]), None, &cfg).is_err());
    assert!(QuantLinear::new(&Tensor::zeros((0, 8), DType::F32, &CPU)?, None, &cfg).is_err());
    assert!(QuantLinear::new(&Tensor::zeros((4, 8), DType::U8, &CPU)?, None, &cfg).is_err());
    // Bias shape and values.
    assert!(QuantLinear::new(&w, Some(&tensor(vec![0.0; 5], &[5])), &cfg).is_err());
    assert!(QuantLinear::new(&w, Some(&tensor(vec![0.0; 4], &[1, 4])), &cfg).is_err());
    let nan_bias = tensor(vec![0.0, f32::NAN, 0.0, 0.0], &[4]);
    assert!(matches!(
        QuantLinear::new(&w, Some(&nan_bias), &cfg),
        Err(Error::NonFinite { index: 1, .. })
    ));
    // Non-finite weights name their flat index, for both formats.
    let mut wv = gaussian(4 * 8, 31);
    wv[19] = f32::INFINITY;
    for c in [cfg, QuantConfig::w4a8(32)?] {
        assert!(matches!(
            QuantLinear::new(&tensor(wv.clone(), &[4, 8]), None, &c),
            Err(Error::NonFinite { index: 19, .. })
        ));
    }
    // Configs.
    for group in [0, 16, 48, 256] {
        assert!(matches!(
            QuantConfig::w4a8(group),
            Err(Error::InvalidArgument { .. })
        ));
    }
    for scale in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(cfg
            .with_activations(ActivationQuant::Static { scale })
            .is_err());
    }
    // Smoothing vectors.
    let lin = candle_nn::Linear::new(w.clone(), None);
    for s in [
        vec![1.0; 7],
        vec![0.0; 8],
        vec![-1.0; 8],
        vec![f32::NAN; 8],
        vec![1e-45; 8],
    ] {
        assert!(
            QuantLinear::from_linear_smoothed(&lin, &s, &cfg).is_err(),
            "{s:?}"
        );
    }
    Ok(())
}

#[test]
fn bad_parts_are_errors() -> TestResult {
    let q = QuantLinear::from_linear(&linear(5, 40, true, 32), &QuantConfig::w4a8(32)?)?;
    let good = q.to_parts();
    assert_eq!(good.scales.len(), 5 * 2);
    type Breaker = Box<dyn Fn(&mut QuantLinearParts)>;
    let cases: Vec<(&str, Breaker)> = vec![
        ("zero out", Box::new(|p| p.out_features = 0)),
        (
            "short weights",
            Box::new(|p| {
                p.weights.pop();
            }),
        ),
        ("code out of range", Box::new(|p| p.weights[3] = 8)),
        ("short scales", Box::new(|p| p.scales.truncate(9))),
        ("nan scale", Box::new(|p| p.scales[2] = f32::NAN)),
        (
            "negative int8 scale",
            Box::new(|p| {
                p.config = QuantConfig::w8a8();
                p.scales = vec![0.1, 0.1, -0.5, 0.1, 0.1];
            }),
        ),
        ("bias length", Box::new(|p| p.bias = Some(vec![0.0; 4]))),
        (
            "inf bias",
            Box::new(|p| p.bias = Some(vec![f32::INFINITY; 5])),
        ),
        (
            "smooth length",
            Box::new(|p| p.smooth = Some(vec![1.0; 39])),
        ),
        ("zero smooth", Box::new(|p| p.smooth = Some(vec![0.0; 40]))),
        (
            "int8 code -128",
            Box::new(|p| {
                p.config = QuantConfig::w8a8();
                p.scales = vec![0.1; 5];
                p.weights[0] = -128;
            }),
        ),
        (
            "int8 scales count",
            Box::new(|p| p.config = QuantConfig::w8a8()),
        ),
    ];
    for (name, break_it) in cases {
        let mut p = good.clone();
        break_it(&mut p);
        assert!(QuantLinear::from_parts(p).is_err(), "{name} was accepted");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parts, sizes, traits

#[test]
fn parts_round_trip_to_an_identical_layer() -> TestResult {
    let lin = linear(20, 96, true, 33);
    let s: Vec<f32> = gaussian(96, 34).iter().map(|v| v.exp()).collect();
    let x = tensor(gaussian(3 * 96, 35), &[3, 96]);
    for cfg in [
        QuantConfig::w8a8(),
        QuantConfig::w4a8(64)?.with_activations(ActivationQuant::Static { scale: 0.02 })?,
    ] {
        let q = QuantLinear::from_linear_smoothed(&lin, &s, &cfg)?;
        let back = QuantLinear::from_parts(q.to_parts())?;
        assert_eq!(back.to_parts(), q.to_parts());
        assert_eq!(flat_f32(&back.forward(&x)?), flat_f32(&q.forward(&x)?));
        assert_eq!(back.size_bytes(), q.size_bytes());
    }
    Ok(())
}

#[test]
fn size_bytes_is_what_the_layer_holds() -> TestResult {
    let (out, inp) = (64, 256);
    let lin = linear(out, inp, true, 36);
    let q8 = QuantLinear::from_linear(&lin, &QuantConfig::w8a8())?;
    let packed = PackedW8::pack(&q8.weights_i8(), q8.weight_scales(), out, inp).unwrap();
    assert_eq!(q8.size_bytes(), packed.size_bytes() + out * 4);
    let f32_bytes = out * inp * 4;
    assert!(q8.size_bytes() < f32_bytes / 3, "{}", q8.size_bytes());
    let q4 = QuantLinear::from_linear(&lin, &QuantConfig::w4a8(64)?)?;
    let packed = PackedW4::pack(&q4.weights_i8(), q4.weight_scales(), out, inp, 64).unwrap();
    assert_eq!(q4.size_bytes(), packed.size_bytes() + out * 4);
    assert!(q4.size_bytes() < f32_bytes / 6, "{}", q4.size_bytes());
    let s = vec![2.0; inp];
    let qs = QuantLinear::from_linear_smoothed(&lin, &s, &QuantConfig::w8a8())?;
    assert_eq!(qs.size_bytes(), q8.size_bytes() + 2 * inp * 4);
    Ok(())
}

#[test]
fn traits_and_debug() {
    fn assert_traits<T: Send + Sync + Clone + std::fmt::Debug + Module>() {}
    assert_traits::<QuantLinear>();
    fn assert_config<T: Send + Sync + Copy + std::fmt::Debug + PartialEq>() {}
    assert_config::<QuantConfig>();
    let q = small();
    let shown = format!("{q:?}");
    assert!(
        shown.contains("in_features: 8") && shown.contains("out_features: 4"),
        "{shown}"
    );
    // Clones share the weights and compute the same thing.
    let c = q.clone();
    let x = tensor(gaussian(8, 37), &[1, 8]);
    assert_eq!(
        flat_f32(&c.forward(&x).unwrap()),
        flat_f32(&q.forward(&x).unwrap())
    );
}

#[test]
fn config_accessors_and_serde() -> TestResult {
    let cfg = QuantConfig::w4a8(128)?.with_activations(ActivationQuant::PerTensor)?;
    assert_eq!(cfg.weights(), WeightQuant::Int4Grouped { group: 128 });
    assert_eq!(cfg.activations(), ActivationQuant::PerTensor);
    assert_eq!(QuantConfig::default(), QuantConfig::w8a8());
    let json = serde_json::to_string(&cfg)?;
    let back: QuantConfig = serde_json::from_str(&json)?;
    assert_eq!(back, cfg);
    back.validate()?;
    let bad: QuantConfig = serde_json::from_str(&json.replace("128", "100"))?;
    assert!(bad.validate().is_err());
    Ok(())
}

#[test]
fn drops_into_a_candle_nn_sequential_model() -> TestResult {
    let (l1, l2) = (linear(64, 32, true, 38), linear(10, 64, true, 39));
    let f32_model = candle_nn::seq()
        .add(l1.clone())
        .add(candle_nn::Activation::Relu)
        .add(l2.clone());
    let cfg = QuantConfig::w8a8();
    let q_model = candle_nn::seq()
        .add(QuantLinear::from_linear(&l1, &cfg)?)
        .add(candle_nn::Activation::Relu)
        .add(QuantLinear::from_linear(&l2, &cfg)?);
    let x = tensor(gaussian(4 * 5 * 32, 40), &[4, 5, 32]);
    let (want, got) = (f32_model.forward(&x)?, q_model.forward(&x)?);
    assert_eq!(got.dims(), &[4, 5, 10]);
    // Downstream candle ops take the output like any tensor.
    let probs = candle_nn::ops::softmax_last_dim(&got)?;
    assert_eq!(probs.dims(), &[4, 5, 10]);
    assert!(cosine(&flat_f32(&got), &flat_f32(&want)) >= 0.999);
    // An empty batch flows through the whole model.
    let empty = q_model.forward(&Tensor::zeros((0, 32), DType::F32, &CPU)?)?;
    assert_eq!(empty.dims(), &[0, 10]);
    let q = QuantLinear::from_linear(&l1, &cfg)?;
    let qa = q.quantize_activations(&Tensor::zeros((0, 32), DType::F32, &CPU)?)?;
    assert_eq!((qa.rows, qa.values.len(), qa.scales.len()), (0, 0, 0));
    Ok(())
}

#[test]
fn per_tensor_scale_is_the_global_amax_on_the_parallel_path() -> TestResult {
    // 100 rows of very different magnitudes, large enough for parallel quantization.
    let (rows, inp) = (100, 1000);
    let mut xs = gaussian(rows * inp, 41);
    let mags = gaussian(rows, 42);
    for (t, row) in xs.chunks_mut(inp).enumerate() {
        row.iter_mut().for_each(|v| *v *= (2.0 * mags[t]).exp());
    }
    let x = tensor(xs.clone(), &[rows, inp]);
    let s: Vec<f32> = gaussian(inp, 43).iter().map(|v| (0.5 * v).exp()).collect();
    let lin = linear(8, inp, false, 44);
    let cfg = QuantConfig::w8a8().with_activations(ActivationQuant::PerTensor)?;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    for smooth in [None, Some(&s)] {
        let q = match smooth {
            None => QuantLinear::from_linear(&lin, &cfg)?,
            Some(s) => QuantLinear::from_linear_smoothed(&lin, s, &cfg)?,
        };
        let ys: Vec<f32> = match smooth {
            None => xs.clone(),
            Some(s) => xs
                .iter()
                .enumerate()
                .map(|(i, v)| v * (1.0 / s[i % inp]))
                .collect(),
        };
        let scale = ys.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        let qa = pool.install(|| q.quantize_activations(&x))?;
        assert!(qa.scales.iter().all(|v| v.to_bits() == scale.to_bits()));
        for (i, y) in ys.iter().enumerate() {
            let want = round_half_away(y / scale).clamp(-127.0, 127.0) as i8;
            assert_eq!(qa.values[i], want, "element {i}");
        }
        let got = pool.install(|| q.forward(&x))?;
        assert_bits_eq(&flat_f32(&got), &reference(&q, &x), "per-tensor forward");
    }
    Ok(())
}
