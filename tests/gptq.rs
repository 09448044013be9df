//! GPTQ, the Gram-matrix statistics, AWQ and sequential calibration: accuracy against
//! round-to-nearest, exact equalities, errors, and the saved files.

use std::sync::Arc;

use candle_compress::io::compressed_tensors::{CtCheckpoint, CtWriter};
use candle_compress::io::safetensors::{CompressedFile, CompressedWriter};
use candle_compress::nn::awq::{awq_search, DEFAULT_AWQ_GRID};
use candle_compress::nn::gptq::{
    act_order_permutation, gptq, gptq_smoothed, inverse_permutation, permute_columns, GptqConfig,
    GroupScales,
};
use candle_compress::nn::gram::{GramLinear, InputGram};
use candle_compress::nn::sequential::{quantize_sequential, LayerQuantizer, SequentialModel};
use candle_compress::nn::{QuantConfig, QuantLinear};
use candle_compress::{Error, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;

mod common;

use common::rng::XorShift64;

type AnyResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// This file's tensor builder on the shared generator (normals from xorshift64 and
/// Box–Muller, so the tests do not depend on candle's RNG).
impl XorShift64 {
    /// A `[rows, cols]` tensor of normals scaled by `std`, drawn row by row.
    fn tensor(&mut self, rows: usize, cols: usize, std: f32) -> Tensor {
        let v: Vec<f32> = (0..rows * cols).map(|_| self.normal() * std).collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }
}

/// `rows` inputs of `cols` channels driven by `rank` latent factors plus small noise:
/// strongly correlated columns.
fn correlated(rng: &mut XorShift64, rows: usize, cols: usize, rank: usize) -> Tensor {
    let base = rng.tensor(rows, rank, 1.0);
    let mix = rng.tensor(rank, cols, 1.0);
    (base.matmul(&mix).unwrap() + rng.tensor(rows, cols, 0.05)).unwrap()
}

fn gram_of(x: &Tensor) -> Result<InputGram> {
    let mut g = InputGram::new(x.dim(1)?)?;
    g.observe(x)?;
    Ok(g)
}

/// `‖X·Wᵀ − X·Ŵᵀ‖_F` computed directly from the rows (f64), `Ŵ = codes · scales (/ s)`.
fn weight_output_error(x: &Tensor, lin: &Linear, q: &QuantLinear) -> AnyResult<f64> {
    let (out, inp) = (q.out_features(), q.in_features());
    let span = q.config().weights().int4_group().unwrap_or(inp);
    let groups = inp.div_ceil(span);
    let (codes, scales) = (q.weights_i8(), q.weight_scales());
    let w_hat: Vec<f64> = (0..out * inp)
        .map(|k| {
            let (o, c) = (k / inp, k % inp);
            let i = o * groups + c / span;
            let m = q.offsets().map_or(0.0, |m| f64::from(m[i]));
            let v = f64::from(codes[k]) * f64::from(scales[i]) + m;
            q.smooth().map_or(v, |s| v / f64::from(s[c]))
        })
        .collect();
    let w_hat = Tensor::from_vec(w_hat, (out, inp), &Device::Cpu)?;
    let x = x.to_dtype(DType::F64)?;
    let w = lin.weight().to_dtype(DType::F64)?;
    let d = (x.matmul(&w.t()?)? - x.matmul(&w_hat.t()?)?)?;
    Ok(d.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt())
}

fn linear(rng: &mut XorShift64, out: usize, inp: usize, bias: bool) -> Linear {
    let w = rng.tensor(out, inp, 0.5);
    let b = bias.then(|| rng.tensor(1, out, 0.1).flatten_all().unwrap());
    Linear::new(w, b)
}

#[test]
fn gptq_beats_rtn_by_30_percent_on_correlated_inputs() -> AnyResult<()> {
    let mut rng = XorShift64(0x9e37_79b9_7f4a_7c15);
    let (inp, out) = (256, 64);
    let lin = linear(&mut rng, out, inp, true);
    let calib = correlated(&mut rng, 2048, inp, 24);
    let gram = gram_of(&calib)?;
    for (group, act_order, asym) in [
        (32, false, false),
        (64, false, false),
        (128, false, false),
        (32, true, false),
        (128, true, false),
        (32, false, true),
        (128, true, true),
    ] {
        let cfg = if asym {
            QuantConfig::w4a8_asym(group)?
        } else {
            QuantConfig::w4a8(group)?
        };
        let gcfg = GptqConfig::default().with_act_order(act_order);
        let res = gptq(&lin, &gram, &cfg, &gcfg)?;
        let rtn = QuantLinear::from_linear(&lin, &cfg)?;
        let e_gptq = weight_output_error(&calib, &lin, &res.layer)?;
        let e_rtn = weight_output_error(&calib, &lin, &rtn)?;
        // The reported errors are the same quantity, from H instead of the rows.
        assert!((res.error.sqrt() - e_gptq).abs() <= 1e-6 * e_gptq);
        assert!((res.rtn_error.sqrt() - e_rtn).abs() <= 1e-6 * e_rtn);
        let gain = 1.0 - e_gptq / e_rtn;
        println!("g{group} act_order={act_order} asym={asym}: ‖XWᵀ−XŴᵀ‖ RTN {e_rtn:.3}, GPTQ {e_gptq:.3} ({:.0}% lower)", gain * 100.0);
        assert!(
            gain >= 0.30,
            "group {group}, act_order {act_order}, asym {asym}: only {gain:.3}"
        );
    }
    // 8 bits as well, and on held-out rows of the same distribution (not just calibration).
    let cfg = QuantConfig::w8a8();
    let res = gptq(&lin, &gram, &cfg, &GptqConfig::default())?;
    let rtn = QuantLinear::from_linear(&lin, &cfg)?;
    let e8 = weight_output_error(&calib, &lin, &res.layer)?;
    let r8 = weight_output_error(&calib, &lin, &rtn)?;
    assert!(e8 <= 0.7 * r8, "W8: {e8} vs {r8}");
    Ok(())
}

/// GPTQ's gain must hold on rows it was not calibrated on, once the calibration rows span
/// the inputs' subspace; with fewer rows than that (a rank-deficient `H`, as 24 sentences
/// for a 1536-input FFN-down) it fits the calibration set and generalizes worse.
#[test]
fn gptq_gain_holds_on_held_out_rows_given_enough_calibration() -> AnyResult<()> {
    let mut rng = XorShift64(0x2545_f491_4f6c_dd1d);
    let (inp, out, rank) = (256, 64, 64);
    let lin = linear(&mut rng, out, inp, false);
    // One distribution: the same latent mixing for calibration and held-out rows.
    let mix = rng.tensor(rank, inp, 1.0);
    let mut rows = |n: usize| -> AnyResult<Tensor> {
        Ok((rng.tensor(n, rank, 1.0).matmul(&mix)? + rng.tensor(n, inp, 0.05))?)
    };
    let (many, few, held_out) = (rows(1024)?, rows(48)?, rows(1024)?);
    let cfg = QuantConfig::w4a8(32)?;
    let gcfg = GptqConfig::default()
        .with_act_order(true)
        .with_scales(GroupScales::Search {
            steps: 16,
            min_shrink: 0.7,
        })
        .with_min_rows(1);
    let rtn = weight_output_error(&held_out, &lin, &QuantLinear::from_linear(&lin, &cfg)?)?;
    let e_many = weight_output_error(
        &held_out,
        &lin,
        &gptq(&lin, &gram_of(&many)?, &cfg, &gcfg)?.layer,
    )?;
    let e_few = weight_output_error(
        &held_out,
        &lin,
        &gptq(&lin, &gram_of(&few)?, &cfg, &gcfg)?.layer,
    )?;
    println!(
        "held-out ‖XWᵀ−XŴᵀ‖: RTN {rtn:.3}, GPTQ on 1024 rows {e_many:.3}, on 48 rows {e_few:.3}"
    );
    assert!(e_many <= 0.7 * rtn, "held-out: GPTQ {e_many} vs RTN {rtn}");
    assert!(
        e_many < e_few,
        "1024 rows {e_many} should beat 48 rows {e_few}"
    );
    Ok(())
}

#[test]
fn gptq_layer_runs_integer_kernels_closer_to_f32() -> AnyResult<()> {
    // The stored layer, run by the integer kernels (activations int8 too), on held-out rows.
    let mut rng = XorShift64(7);
    let (inp, out) = (192, 48);
    let lin = linear(&mut rng, out, inp, true);
    let latent_mix = rng.tensor(16, inp, 1.0);
    let sample = |rng: &mut XorShift64, rows| {
        (rng.tensor(rows, 16, 1.0).matmul(&latent_mix).unwrap() + rng.tensor(rows, inp, 0.05))
            .unwrap()
    };
    let gram = gram_of(&sample(&mut rng, 1024))?;
    let test = sample(&mut rng, 256);
    let cfg = QuantConfig::w4a8(32)?;
    let g = gptq(&lin, &gram, &cfg, &GptqConfig::default())?.layer;
    let r = QuantLinear::from_linear(&lin, &cfg)?;
    let y = lin.forward(&test)?;
    let err = |q: &QuantLinear| -> AnyResult<f32> {
        Ok((q.forward(&test)? - &y)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?
            .sqrt())
    };
    let (eg, er) = (err(&g)?, err(&r)?);
    println!("held-out, integer forward: RTN {er:.3}, GPTQ {eg:.3}");
    assert!(eg < 0.7 * er);
    Ok(())
}

#[test]
fn identity_gram_gives_exactly_rtn_codes() -> AnyResult<()> {
    let mut rng = XorShift64(42);
    let (inp, out) = (384, 40);
    let lin = linear(&mut rng, out, inp, true);
    let mut eye = vec![0f64; inp * inp];
    for i in 0..inp {
        eye[i * inp + i] = 1.0;
    }
    let gram = InputGram::from_parts(inp, 1000, eye, vec![1.0; inp])?;
    let configs = [
        QuantConfig::w4a8(32)?,
        QuantConfig::w4a8(64)?,
        QuantConfig::w4a8(128)?,
        QuantConfig::w4a8_asym(32)?,
        QuantConfig::w4a8_asym(128)?,
        QuantConfig::w8a8(),
    ];
    for cfg in configs {
        for act_order in [false, true] {
            let g = gptq(
                &lin,
                &gram,
                &cfg,
                &GptqConfig::default()
                    .with_act_order(act_order)
                    .with_scales(GroupScales::Rtn),
            )?;
            let r = QuantLinear::from_linear(&lin, &cfg)?;
            assert_eq!(
                g.layer.to_parts(),
                r.to_parts(),
                "{cfg:?}, act_order {act_order}"
            );
            assert_eq!(g.error, g.rtn_error);
        }
    }
    Ok(())
}

#[test]
fn diagonal_gram_with_act_order_undoes_the_permutation() -> AnyResult<()> {
    // A diagonal H has no correlation, so GPTQ equals RTN whatever the order; with
    // distinct diagonal entries act-order really permutes, and the stored codes must come
    // back in the original column order.
    let mut rng = XorShift64(5);
    let (inp, out) = (128, 24);
    let lin = linear(&mut rng, out, inp, false);
    let mut h = vec![0f64; inp * inp];
    let diag: Vec<f64> = (0..inp).map(|i| 1.0 + ((i * 53) % inp) as f64).collect();
    for i in 0..inp {
        h[i * inp + i] = diag[i];
    }
    let perm = act_order_permutation(&diag);
    assert_ne!(perm, (0..inp).collect::<Vec<_>>());
    let gram = InputGram::from_parts(inp, 500, h, vec![1.0; inp])?;
    for cfg in [QuantConfig::w4a8(32)?, QuantConfig::w8a8()] {
        let g = gptq(
            &lin,
            &gram,
            &cfg,
            &GptqConfig::default()
                .with_act_order(true)
                .with_scales(GroupScales::Rtn),
        )?;
        assert_eq!(
            g.layer.to_parts(),
            QuantLinear::from_linear(&lin, &cfg)?.to_parts()
        );
    }
    Ok(())
}

#[test]
fn permutation_round_trip_is_exact() -> Result<()> {
    let mut rng = XorShift64(11);
    let cols = 97;
    let m: Vec<f32> = (0..5 * cols).map(|_| rng.normal()).collect();
    let diag: Vec<f64> = (0..cols).map(|_| rng.open_unit_f64()).collect();
    let perm = act_order_permutation(&diag);
    // Decreasing diag.
    assert!(perm.windows(2).all(|p| diag[p[0]] >= diag[p[1]]));
    let inv = inverse_permutation(&perm)?;
    let back = permute_columns(&permute_columns(&m, cols, &perm)?, cols, &inv)?;
    assert_eq!(back, m);
    let ident: Vec<usize> = (0..cols).collect();
    assert_eq!(permute_columns(&perm, cols, &inv)?, ident);
    assert!(inverse_permutation(&[0, 0, 1]).is_err());
    assert!(inverse_permutation(&[0, 3, 1]).is_err());
    assert!(permute_columns(&m, cols, &perm[1..]).is_err());
    Ok(())
}

#[test]
fn streaming_gram_equals_all_at_once() -> AnyResult<()> {
    let mut rng = XorShift64(3);
    let (rows, cols) = (1500, 96);
    let x = correlated(&mut rng, rows, cols, 12);
    let all = gram_of(&x)?;
    let rel = |a: &InputGram, b: &InputGram| -> f64 {
        let scale = a.matrix().iter().fold(0f64, |m, v| m.max(v.abs()));
        a.matrix()
            .iter()
            .zip(b.matrix())
            .fold(0f64, |m, (p, q)| m.max((p - q).abs()))
            / scale
    };
    // Streamed in uneven chunks, 3-d batches.
    let mut streamed = InputGram::new(cols)?;
    let mut start = 0;
    for len in [1usize, 7, 64, 300, 128].iter().cycle() {
        if start >= rows {
            break;
        }
        let len = (*len).min(rows - start);
        streamed.observe(&x.narrow(0, start, len)?.unsqueeze(0)?)?;
        start += len;
    }
    assert_eq!(streamed.rows(), rows as u64);
    let r = rel(&all, &streamed);
    println!("streaming vs all-at-once: max relative difference {r:e}");
    assert!(r <= 1e-12, "{r}");
    // Two accumulators over disjoint halves, merged.
    let (mut a, mut b) = (InputGram::new(cols)?, InputGram::new(cols)?);
    a.observe(&x.narrow(0, 0, 700)?)?;
    b.observe(&x.narrow(0, 700, rows - 700)?)?;
    a.merge(&b)?;
    assert_eq!(a.rows(), rows as u64);
    assert!(rel(&all, &a) <= 1e-12);
    let mean_a = a.mean_abs()?;
    let mean_all = all.mean_abs()?;
    assert!(mean_a
        .iter()
        .zip(&mean_all)
        .all(|(p, q)| (p - q).abs() <= 1e-12 * q.abs()));
    assert!(a.merge(&InputGram::new(cols + 1)?).is_err());
    // Padding rows masked out: garbage rows (even NaN) change nothing.
    let garbage = Tensor::full(f32::NAN, (1, cols), &Device::Cpu)?;
    let padded = Tensor::cat(
        &[&x.narrow(0, 0, 10)?, &garbage, &x.narrow(0, 10, rows - 10)?],
        0,
    )?;
    let mut keep = vec![true; rows + 1];
    keep[10] = false;
    let mut masked = InputGram::new(cols)?;
    masked.observe_masked(&padded, &keep)?;
    assert!(rel(&all, &masked) <= 1e-12);
    Ok(())
}

#[test]
fn gram_linear_masks_padding_and_forwards_unchanged() -> AnyResult<()> {
    let mut rng = XorShift64(8);
    let lin = linear(&mut rng, 6, 32, true);
    let obs = GramLinear::new(lin.clone())?;
    let x = rng.tensor(8, 32, 1.0).reshape((2, 4, 32))?;
    obs.set_row_mask(Some(Arc::from(vec![
        true, true, false, false, true, true, true, false,
    ])))?;
    let y = obs.forward(&x)?;
    assert_eq!(y.to_vec3::<f32>()?, lin.forward(&x)?.to_vec3::<f32>()?);
    assert_eq!(obs.gram()?.rows(), 5);
    obs.set_row_mask(Some(Arc::from(vec![true; 3])))?;
    assert!(
        obs.forward(&x).is_err(),
        "a mask of the wrong length is refused"
    );
    Ok(())
}

#[test]
fn singular_gram_after_dampening_is_an_error() -> AnyResult<()> {
    let mut rng = XorShift64(9);
    let lin = linear(&mut rng, 8, 64, false);
    // 200 rows of rank 4: singular without dampening.
    let x = correlated(&mut rng, 200, 64, 4);
    let x = (x.narrow(1, 0, 32)?.repeat((1, 2)))?; // duplicated columns, exactly dependent
    let gram = gram_of(&x)?;
    let cfg = QuantConfig::w4a8(32)?;
    let err = gptq(&lin, &gram, &cfg, &GptqConfig::default().with_damp(0.0)).unwrap_err();
    assert!(matches!(err, Error::NotPositiveDefinite { .. }), "{err}");
    println!("{err}");
    // The default dampening makes it solvable.
    assert!(gptq(&lin, &gram, &cfg, &GptqConfig::default()).is_ok());
    // A zero Gram matrix (all-zero inputs) stays singular whatever the dampening.
    let zeros = gram_of(&Tensor::zeros((200, 64), DType::F32, &Device::Cpu)?)?;
    assert!(matches!(
        gptq(&lin, &zeros, &cfg, &GptqConfig::default()),
        Err(Error::NotPositiveDefinite { .. })
    ));
    Ok(())
}

#[test]
fn non_finite_gram_after_dampening_is_an_error() -> AnyResult<()> {
    let mut rng = XorShift64(10);
    let lin = linear(&mut rng, 8, 64, false);
    let gram = gram_of(&correlated(&mut rng, 200, 64, 8))?;
    let cfg = QuantConfig::w4a8(32)?;
    // λ = damp · mean diag overflows to +Inf.
    let err = gptq(
        &lin,
        &gram,
        &cfg,
        &GptqConfig::default().with_damp(f64::MAX),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    // H with entries that overflow f64 (inputs near f32::MAX).
    let big = Tensor::full(3e38f32, (200, 64), &Device::Cpu)?;
    let huge = gram_of(&big)?;
    assert!(
        huge.matrix()[0].is_finite() || gptq(&lin, &huge, &cfg, &GptqConfig::default()).is_err()
    );
    for bad in [f64::NAN, -1.0, f64::INFINITY] {
        assert!(matches!(
            gptq(&lin, &gram, &cfg, &GptqConfig::default().with_damp(bad)),
            Err(Error::InvalidArgument { .. })
        ));
    }
    // Non-finite parts cannot even become a Gram matrix.
    assert!(InputGram::from_parts(1, 1, vec![f64::NAN], vec![0.0]).is_err());
    // Non-finite weights.
    let nan_lin = Linear::new(Tensor::full(f32::NAN, (8, 64), &Device::Cpu)?, None);
    assert!(matches!(
        gptq(&nan_lin, &gram, &cfg, &GptqConfig::default()),
        Err(Error::NonFinite { .. })
    ));
    Ok(())
}

#[test]
fn too_few_calibration_rows_is_an_error() -> AnyResult<()> {
    let mut rng = XorShift64(12);
    let lin = linear(&mut rng, 8, 64, false);
    let gram = gram_of(&rng.tensor(100, 64, 1.0))?;
    let cfg = QuantConfig::w4a8(32)?;
    let err = gptq(&lin, &gram, &cfg, &GptqConfig::default()).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::InvalidArgument {
                name: "calibration rows",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("found 100"));
    assert!(gptq(&lin, &gram, &cfg, &GptqConfig::default().with_min_rows(64)).is_ok());
    let empty = InputGram::new(64)?;
    assert!(gptq(&lin, &empty, &cfg, &GptqConfig::default().with_min_rows(0)).is_err());
    Ok(())
}

/// A group that does not divide `in_features` (96 inputs, groups 64 and 128: the last group
/// of each row is shorter, QuantLinear's layout): with `H = I` and RTN scales GPTQ gives
/// exactly RTN's layer, with correlated inputs it beats RTN; a Gram matrix of another
/// width is still an error.
#[test]
fn group_that_does_not_divide_gets_a_short_last_group() -> AnyResult<()> {
    let mut rng = XorShift64(13);
    let inp = 96;
    let lin = linear(&mut rng, 8, inp, false);
    let mut eye = vec![0f64; inp * inp];
    for i in 0..inp {
        eye[i * inp + i] = 1.0;
    }
    let identity = InputGram::from_parts(inp, 1000, eye, vec![1.0; inp])?;
    let x = correlated(&mut rng, 400, inp, 8);
    let gram = gram_of(&x)?;
    for (group, asym) in [(64, false), (128, false), (64, true)] {
        let cfg = if asym {
            QuantConfig::w4a8_asym(group)?
        } else {
            QuantConfig::w4a8(group)?
        };
        for act_order in [false, true] {
            let rtn_scales = GptqConfig::default()
                .with_act_order(act_order)
                .with_scales(GroupScales::Rtn);
            let g = gptq(&lin, &identity, &cfg, &rtn_scales)?;
            let r = QuantLinear::from_linear(&lin, &cfg)?;
            assert_eq!(
                g.layer.to_parts(),
                r.to_parts(),
                "group {group}, act_order {act_order}"
            );
            let g = gptq(
                &lin,
                &gram,
                &cfg,
                &GptqConfig::default().with_act_order(act_order),
            )?;
            assert_eq!(g.layer.weight_scales().len(), 8 * inp.div_ceil(group));
            assert!(
                g.error < g.rtn_error,
                "group {group}, act_order {act_order}: GPTQ {} vs RTN {}",
                g.error,
                g.rtn_error
            );
        }
    }
    let other = gram_of(&rng.tensor(300, 64, 1.0))?;
    assert!(matches!(
        gptq(
            &lin,
            &other,
            &QuantConfig::w4a8(32)?,
            &GptqConfig::default()
        ),
        Err(Error::ShapeMismatch { .. })
    ));
    Ok(())
}

#[test]
fn scale_search_and_small_blocks_still_beat_rtn() -> AnyResult<()> {
    let mut rng = XorShift64(14);
    let lin = linear(&mut rng, 32, 128, false);
    let calib = correlated(&mut rng, 1024, 128, 16);
    let gram = gram_of(&calib)?;
    let cfg = QuantConfig::w4a8(32)?;
    let rtn_scales = GptqConfig::default().with_scales(GroupScales::Rtn);
    let base = gptq(&lin, &gram, &cfg, &rtn_scales)?;
    let searched = gptq(
        &lin,
        &gram,
        &cfg,
        &GptqConfig::default().with_scales(GroupScales::Search {
            steps: 10,
            min_shrink: 0.7,
        }),
    )?;
    // Blocks of 1 column (rounded up to the group) give the same math as 128.
    let small = gptq(&lin, &gram, &cfg, &rtn_scales.with_block(1))?;
    assert!((small.error - base.error).abs() <= 1e-9 * base.error);
    println!(
        "RTN {:.3} GPTQ {:.3} GPTQ+search {:.3}",
        base.rtn_error, base.error, searched.error
    );
    assert!(searched.error < base.rtn_error);
    Ok(())
}

#[test]
fn gptq_layers_round_trip_through_both_file_formats() -> AnyResult<()> {
    let mut rng = XorShift64(15);
    let lin = linear(&mut rng, 48, 256, true);
    let gram = gram_of(&correlated(&mut rng, 1024, 256, 20))?;
    let x = correlated(&mut rng, 16, 256, 20);
    let dir = tempfile::tempdir()?;
    for (cfg, act_order) in [
        (QuantConfig::w4a8(32)?, true),
        (QuantConfig::w4a8(128)?, false),
        (QuantConfig::w8a8(), false),
    ] {
        let layer = gptq(
            &lin,
            &gram,
            &cfg,
            &GptqConfig::default().with_act_order(act_order),
        )?
        .layer;
        let want = layer.forward(&x)?.to_vec2::<f32>()?;
        // Our format.
        let mut w = CompressedWriter::new();
        w.add_quant_linear("enc.fc", &layer)?;
        let file = CompressedFile::from_bytes(w.to_bytes()?)?;
        let back = file.load_quant_linear("enc.fc")?;
        assert_eq!(back.to_parts(), layer.to_parts());
        assert_eq!(back.forward(&x)?.to_vec2::<f32>()?, want);
        // compressed-tensors (int-quantized / pack-quantized).
        let mut ct = CtWriter::new();
        ct.add_quant_linear("enc.fc", &layer)?;
        let (st, js) = (
            dir.path().join("m.safetensors"),
            dir.path().join("config.json"),
        );
        ct.write(&st, &js, None)?;
        let back = CtCheckpoint::open(&st, &js)?.load_quant_linear("enc.fc")?;
        assert_eq!(back.weights_i8(), layer.weights_i8());
        assert_eq!(back.forward(&x)?.to_vec2::<f32>()?, want);
    }
    Ok(())
}

#[test]
fn awq_scales_help_on_outlier_channels_and_combine_with_gptq() -> AnyResult<()> {
    let mut rng = XorShift64(16);
    let (inp, out) = (128, 64);
    let lin = linear(&mut rng, out, inp, false);
    // Channel magnitudes spanning two decades, a few outliers.
    let gains: Vec<f32> = (0..inp)
        .map(|i| {
            if i % 31 == 3 {
                20.0
            } else {
                0.2 + (i % 7) as f32 * 0.3
            }
        })
        .collect();
    let g = Tensor::from_vec(gains, (1, inp), &Device::Cpu)?;
    let x = rng.tensor(1024, inp, 1.0).broadcast_mul(&g)?;
    let gram = gram_of(&x)?;
    let cfg = QuantConfig::w4a8(32)?;
    let found = awq_search(&[&lin], &gram, &cfg, &DEFAULT_AWQ_GRID)?;
    println!(
        "AWQ: α {} error {:.3} (unscaled {:.3})",
        found.alpha, found.error, found.unscaled_error
    );
    assert!(found.alpha > 0.0);
    assert!(found.error < 0.9 * found.unscaled_error);
    let awq_rtn = QuantLinear::from_linear_smoothed(&lin, found.factors.as_slice(), &cfg)?;
    let e_rtn = weight_output_error(&x, &lin, &QuantLinear::from_linear(&lin, &cfg)?)?;
    let e_awq = weight_output_error(&x, &lin, &awq_rtn)?;
    assert!((e_awq - found.error.sqrt()).abs() <= 1e-6 * e_awq);
    let both = gptq_smoothed(
        &lin,
        found.factors.as_slice(),
        &gram,
        &cfg,
        &GptqConfig::default(),
    )?;
    let e_both = weight_output_error(&x, &lin, &both.layer)?;
    println!("‖XWᵀ−XŴᵀ‖: RTN {e_rtn:.3}, AWQ {e_awq:.3}, AWQ+GPTQ {e_both:.3}");
    assert!(e_both <= e_awq);
    assert!((both.error.sqrt() - e_both).abs() <= 1e-6 * e_both);
    assert!(awq_search(&[], &gram, &cfg, &DEFAULT_AWQ_GRID).is_err());
    Ok(())
}

/// Two blocks `x → relu(x·W1ᵀ) · W2ᵀ + x`, each with two linears in two groups, over
/// padded batches whose padding rows hold large garbage (they must be masked out).
struct TinyModel {
    blocks: Vec<[Linear; 2]>,
}

struct TinyState {
    x: Tensor,
    keep: Arc<[bool]>,
}

impl SequentialModel for TinyModel {
    type State = TinyState;

    fn blocks(&self) -> usize {
        self.blocks.len()
    }

    fn linears(&self, block: usize) -> Vec<Linear> {
        self.blocks[block].to_vec()
    }

    fn groups(&self, _block: usize) -> Vec<Vec<usize>> {
        vec![vec![0], vec![1]]
    }

    fn forward(
        &self,
        _block: usize,
        linears: &[&dyn Module],
        s: &TinyState,
    ) -> candle_core::Result<TinyState> {
        let h = linears[0].forward(&s.x)?.relu()?;
        let y = (linears[1].forward(&h)? + &s.x)?;
        Ok(TinyState {
            x: y,
            keep: s.keep.clone(),
        })
    }

    fn row_mask(&self, s: &TinyState) -> Option<Arc<[bool]>> {
        Some(s.keep.clone())
    }
}

#[test]
fn sequential_calibration_beats_rtn_end_to_end() -> AnyResult<()> {
    let mut rng = XorShift64(17);
    let d = 128;
    let model = TinyModel {
        blocks: (0..2)
            .map(|_| {
                [
                    linear(&mut rng, 256, d, true),
                    linear(&mut rng, d, 256, true),
                ]
            })
            .collect(),
    };
    let mix = rng.tensor(16, d, 1.0);
    let batch = |rng: &mut XorShift64, rows: usize, pad: usize| -> TinyState {
        let x =
            (rng.tensor(rows, 16, 1.0).matmul(&mix).unwrap() + rng.tensor(rows, d, 0.05)).unwrap();
        let nan = Tensor::full(1000f32, (pad, d), &Device::Cpu).unwrap();
        let mut keep = vec![true; rows];
        keep.extend(std::iter::repeat_n(false, pad));
        TinyState {
            x: Tensor::cat(&[&x, &nan], 0).unwrap(),
            keep: keep.into(),
        }
    };
    let inputs: Vec<TinyState> = (0..4).map(|_| batch(&mut rng, 200, 3)).collect();
    let cfg = QuantConfig::w4a8(32)?;
    let mut calls = 0;
    let (gptq_layers, reports) = quantize_sequential(
        &model,
        inputs,
        &LayerQuantizer::Gptq(GptqConfig::default()),
        &cfg,
        |_| calls += 1,
    )?;
    assert_eq!(calls, 4);
    assert_eq!(reports.len(), 4);
    assert!(reports
        .iter()
        .all(|r| r.rows == 800 && r.error < r.rtn_error));
    // End to end on held-out data: the whole quantized model vs f32.
    let test = batch(&mut rng, 256, 0).x;
    let run = |layers: &dyn Fn(usize, usize) -> Box<dyn Module>| -> AnyResult<Tensor> {
        let mut x = test.clone();
        for b in 0..2 {
            let h = layers(b, 0).forward(&x)?.relu()?;
            x = (layers(b, 1).forward(&h)? + &x)?;
        }
        Ok(x)
    };
    let reference = run(&|b, i| Box::new(model.blocks[b][i].clone()))?;
    let seq = run(&|b, i| Box::new(gptq_layers[b][i].clone()))?;
    let rtn = run(&|b, i| Box::new(QuantLinear::from_linear(&model.blocks[b][i], &cfg).unwrap()))?;
    let err = |y: &Tensor| -> AnyResult<f32> {
        Ok((y - &reference)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?
            .sqrt())
    };
    let (es, er) = (err(&seq)?, err(&rtn)?);
    println!("two blocks, held-out: RTN {er:.3}, sequential GPTQ {es:.3}");
    assert!(es < 0.7 * er);
    // AWQ + GPTQ through the same helper runs and reports α.
    let inputs: Vec<TinyState> = (0..2).map(|_| batch(&mut rng, 200, 1)).collect();
    let (_, reports) = quantize_sequential(
        &model,
        inputs,
        &LayerQuantizer::Awq {
            grid: DEFAULT_AWQ_GRID.to_vec(),
            gptq: Some(GptqConfig::default()),
        },
        &cfg,
        |_| {},
    )?;
    assert!(reports
        .iter()
        .all(|r| r.awq_alpha.is_some() && r.error <= r.rtn_error));
    // Bad inputs.
    assert!(quantize_sequential(&model, Vec::new(), &LayerQuantizer::Rtn, &cfg, |_| {}).is_err());
    Ok(())
}

/// [`TinyModel`] whose observation passes stop right after the observed linear
/// ([`SequentialModel::forward_until`]) and count the second linear's calls in them.
struct EarlyStopModel {
    inner: TinyModel,
    late_calls: std::sync::atomic::AtomicUsize,
}

impl SequentialModel for EarlyStopModel {
    type State = TinyState;

    fn blocks(&self) -> usize {
        self.inner.blocks()
    }

    fn linears(&self, block: usize) -> Vec<Linear> {
        self.inner.linears(block)
    }

    fn groups(&self, block: usize) -> Vec<Vec<usize>> {
        self.inner.groups(block)
    }

    fn forward(
        &self,
        block: usize,
        linears: &[&dyn Module],
        s: &TinyState,
    ) -> candle_core::Result<TinyState> {
        self.inner.forward(block, linears, s)
    }

    fn forward_until(
        &self,
        _block: usize,
        linears: &[&dyn Module],
        s: &TinyState,
        linear: usize,
    ) -> candle_core::Result<()> {
        let h = linears[0].forward(&s.x)?.relu()?;
        if linear == 0 {
            return Ok(());
        }
        self.late_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        linears[1].forward(&h).map(drop)
    }

    fn row_mask(&self, s: &TinyState) -> Option<Arc<[bool]>> {
        self.inner.row_mask(s)
    }
}

#[test]
fn stopping_observation_passes_early_changes_nothing() -> AnyResult<()> {
    let mut rng = XorShift64(23);
    let d = 64;
    let blocks: Vec<[Linear; 2]> = (0..2)
        .map(|_| {
            [
                linear(&mut rng, 96, d, true),
                linear(&mut rng, d, 96, false),
            ]
        })
        .collect();
    let mix = rng.tensor(8, d, 1.0);
    let states = |rng: &mut XorShift64| -> Vec<TinyState> {
        (0..3)
            .map(|_| TinyState {
                x: (rng.tensor(150, 8, 1.0).matmul(&mix).unwrap() + rng.tensor(150, d, 0.05))
                    .unwrap(),
                keep: vec![true; 150].into(),
            })
            .collect()
    };
    let a = states(&mut rng);
    let b: Vec<TinyState> = a
        .iter()
        .map(|s| TinyState {
            x: s.x.clone(),
            keep: s.keep.clone(),
        })
        .collect();
    let cfg = QuantConfig::w4a8(32)?;
    let q = LayerQuantizer::Gptq(GptqConfig::default().with_act_order(true));
    let plain = TinyModel {
        blocks: blocks.clone(),
    };
    let early = EarlyStopModel {
        inner: TinyModel { blocks },
        late_calls: 0.into(),
    };
    let (la, ra) = quantize_sequential(&plain, a, &q, &cfg, |_| {})?;
    let (lb, rb) = quantize_sequential(&early, b, &q, &cfg, |_| {})?;
    assert_eq!(ra, rb);
    for (x, y) in la.iter().flatten().zip(lb.iter().flatten()) {
        assert_eq!(x.weights_i8(), y.weights_i8());
        assert_eq!(x.weight_scales(), y.weight_scales());
    }
    // Only the passes observing the second linear ran it: 2 blocks × 3 batches.
    assert_eq!(
        early.late_calls.load(std::sync::atomic::Ordering::Relaxed),
        6
    );
    Ok(())
}
