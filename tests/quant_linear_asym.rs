//! Asymmetric int4 QuantLinear (`WeightQuant::Int4GroupedAsym`): the documented RTN rule,
//! the integer formula with offsets bit for bit, the weight-only path, parts, sizes and
//! bad parts.

use candle_compress::kernels::gemm::PackedW4;
use candle_compress::nn::{ActivationQuant, QuantConfig, QuantLinear, QuantLinearParts};
use candle_compress::Error;
use candle_core::Module;

mod common;

use common::compare::bits;
use common::rng::uniform;
use common::tensors::{flat_f32, tensor};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Weights whose groups are far from centred on 0 (what asymmetric grids are for).
fn shifted_weights(out: usize, inp: usize, seed: u64) -> Vec<f32> {
    uniform(out * inp, seed)
        .iter()
        .enumerate()
        .map(|(i, v)| 0.05 * v + 0.1 * ((i / 32) % 5) as f32)
        .collect()
}

/// The module docs' rule, written out: f64 scale/offset rounded to f32, codes in f64.
fn rtn_group(y: &[f32]) -> (f32, f32, Vec<i8>) {
    let lo = y.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = y.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s = ((f64::from(hi) - f64::from(lo)) / 15.0) as f32;
    if s == 0.0 {
        return (0.0, lo, vec![0; y.len()]);
    }
    let m = (f64::from(lo) + 8.0 * f64::from(s)) as f32;
    let c = y
        .iter()
        .map(|&v| {
            ((f64::from(v) - f64::from(m)) / f64::from(s))
                .round()
                .clamp(-8.0, 7.0) as i8
        })
        .collect();
    (s, m, c)
}

#[test]
fn rtn_follows_the_documented_rule() -> TestResult {
    // 40 inputs, group 32: a short last group; row 1 holds a constant group.
    let (out, inp) = (3, 40);
    let mut w = shifted_weights(out, inp, 1);
    w[inp..inp + 32].fill(0.375);
    let smooth: Vec<f32> = (0..inp).map(|k| 1.0 + k as f32 / 16.0).collect();
    for smoothing in [false, true] {
        let cfg = QuantConfig::w4a8_asym(32)?;
        let wt = tensor(w.clone(), &[out, inp]);
        let q = if smoothing {
            QuantLinear::new_smoothed(&wt, None, &smooth, &cfg)?
        } else {
            QuantLinear::new(&wt, None, &cfg)?
        };
        let (mut codes, mut scales, mut offsets) = (vec![], vec![], vec![]);
        for row in w.chunks(inp) {
            for (g, part) in row.chunks(32).enumerate() {
                let y: Vec<f32> = part
                    .iter()
                    .enumerate()
                    .map(|(c, &v)| if smoothing { v * smooth[g * 32 + c] } else { v })
                    .collect();
                let (s, m, c) = rtn_group(&y);
                scales.push(s);
                offsets.push(m);
                codes.extend(c);
            }
        }
        assert_eq!(q.weights_i8(), codes, "smoothing={smoothing}");
        assert_eq!(q.weight_scales(), &scales[..]);
        assert_eq!(q.offsets(), Some(&offsets[..]));
        // The constant group is exact: scale 0, offset = the value.
        if !smoothing {
            assert_eq!((scales[2], offsets[2]), (0.0, 0.375));
        }
        // Every group's min and max come back within half a step.
        let deq = q.dequantized_weights();
        for (o, row) in w.chunks(inp).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                let y = if smoothing { v * smooth[k] } else { v };
                let s = scales[o * 2 + k / 32];
                assert!(
                    (deq[o * inp + k] - y).abs() <= 0.5 * s * 1.0001 + 1e-7,
                    "o={o} k={k}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn asymmetric_grid_beats_symmetric_on_shifted_weights() -> TestResult {
    let (out, inp) = (16, 256);
    let w = tensor(shifted_weights(out, inp, 2), &[out, inp]);
    let x = tensor(uniform(4 * inp, 3), &[4, inp]);
    let want = flat_f32(&x.matmul(&w.t()?)?);
    let err = |cfg: QuantConfig| -> Result<f64, Box<dyn std::error::Error>> {
        let y = flat_f32(&QuantLinear::new(&w, None, &cfg)?.forward(&x)?);
        Ok(y.iter()
            .zip(&want)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            .sqrt())
    };
    let (sym, asym) = (
        err(QuantConfig::w4a8(32)?)?,
        err(QuantConfig::w4a8_asym(32)?)?,
    );
    assert!(asym < 0.6 * sym, "asym {asym} vs sym {sym}");
    Ok(())
}

/// The output is `finish_w4(Σ_g acc_g·s_g + Σ_g S_g·m_g, sx, b)` of the layer's own codes.
#[test]
fn output_is_the_integer_formula_with_offsets_bit_for_bit() -> TestResult {
    let (out, inp, group) = (21, 200, 64);
    let b = uniform(out, 4);
    let q = QuantLinear::new(
        &tensor(shifted_weights(out, inp, 5), &[out, inp]),
        Some(&tensor(b.clone(), &[out])),
        &QuantConfig::w4a8_asym(group)?,
    )?;
    let x = tensor(uniform(7 * inp, 6), &[7, inp]);
    let qa = q.quantize_activations(&x)?;
    let (codes, s, m) = (q.weights_i8(), q.weight_scales(), q.offsets().unwrap());
    let groups = inp.div_ceil(group);
    let mut want = vec![0f32; 7 * out];
    for t in 0..7 {
        let xr = &qa.values[t * inp..(t + 1) * inp];
        for o in 0..out {
            let (mut sum, mut off) = (0f32, 0f32);
            for g in 0..groups {
                let ks = g * group..((g + 1) * group).min(inp);
                let acc: i32 = ks
                    .clone()
                    .map(|k| i32::from(xr[k]) * i32::from(codes[o * inp + k]))
                    .sum();
                let sx: i32 = ks.map(|k| i32::from(xr[k])).sum();
                sum += acc as f32 * s[o * groups + g];
                off += sx as f32 * m[o * groups + g];
            }
            want[t * out + o] = (sum + off) * qa.scales[t] + b[o];
        }
    }
    let got = flat_f32(&q.forward(&x)?);
    assert_eq!(bits(&got), bits(&want));
    Ok(())
}

/// W4A16: `x · (s·c + m)ᵀ + b` in f32.
#[test]
fn weight_only_path_uses_the_offsets() -> TestResult {
    let (out, inp) = (9, 96);
    let b = tensor(uniform(out, 7), &[out]);
    let cfg = QuantConfig::w4a8_asym(32)?.with_activations(ActivationQuant::Float)?;
    let q = QuantLinear::new(
        &tensor(shifted_weights(out, inp, 8), &[out, inp]),
        Some(&b),
        &cfg,
    )?;
    let x = tensor(uniform(3 * inp, 9), &[3, inp]);
    let deq = tensor(q.dequantized_weights(), &[out, inp]);
    let want = flat_f32(&x.matmul(&deq.t()?)?.broadcast_add(&b)?);
    let got = flat_f32(&q.forward(&x)?);
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "{g} vs {w}");
    }
    let codes = q.weights_i8();
    let (s, m) = (q.weight_scales(), q.offsets().unwrap());
    let d = q.dequantized_weights();
    assert_eq!(
        d[inp + 33],
        f32::from(codes[inp + 33]) * s[3 + 1] + m[3 + 1]
    );
    Ok(())
}

#[test]
fn parts_round_trip_sizes_and_debug() -> TestResult {
    let (out, inp) = (20, 96);
    let w = tensor(shifted_weights(out, inp, 10), &[out, inp]);
    let b = tensor(uniform(out, 11), &[out]);
    let q = QuantLinear::new(&w, Some(&b), &QuantConfig::w4a8_asym(32)?)?;
    let parts = q.to_parts();
    assert_eq!(parts.offsets.as_ref().map(Vec::len), Some(out * 3));
    let back = QuantLinear::from_parts(parts.clone())?;
    assert_eq!(back.to_parts(), parts);
    let x = tensor(uniform(2 * inp, 12), &[2, inp]);
    assert_eq!(flat_f32(&back.forward(&x)?), flat_f32(&q.forward(&x)?));
    let packed = PackedW4::pack_asym(
        &parts.weights,
        &parts.scales,
        parts.offsets.as_deref().unwrap(),
        out,
        inp,
        32,
    )?;
    assert_eq!(q.size_bytes(), packed.size_bytes() + out * 4);
    let sym = QuantLinear::new(&w, Some(&b), &QuantConfig::w4a8(32)?)?;
    assert_eq!(q.size_bytes(), sym.size_bytes() + 2 * out * 3 * 4);
    assert!(
        format!("{q:?}").contains("Int4GroupedAsym { group: 32 }"),
        "{q:?}"
    );
    assert_eq!(sym.offsets(), None);
    Ok(())
}

#[test]
fn bad_asym_parts_are_errors() -> TestResult {
    let q = QuantLinear::new(
        &tensor(shifted_weights(5, 40, 13), &[5, 40]),
        None,
        &QuantConfig::w4a8_asym(32)?,
    )?;
    let good = q.to_parts();
    type Breaker = Box<dyn Fn(&mut QuantLinearParts)>;
    let cases: Vec<(&str, Breaker)> = vec![
        ("missing offsets", Box::new(|p| p.offsets = None)),
        (
            "short offsets",
            Box::new(|p| p.offsets = Some(vec![0.0; 9])),
        ),
        (
            "nan offset",
            Box::new(|p| p.offsets.as_mut().unwrap()[4] = f32::NAN),
        ),
        (
            "inf offset",
            Box::new(|p| p.offsets.as_mut().unwrap()[0] = f32::NEG_INFINITY),
        ),
        (
            "offsets with a symmetric config",
            Box::new(|p| p.config = QuantConfig::w4a8(32).unwrap()),
        ),
        ("code out of range", Box::new(|p| p.weights[3] = -9)),
    ];
    for (name, break_it) in cases {
        let mut p = good.clone();
        break_it(&mut p);
        match QuantLinear::from_parts(p) {
            Ok(_) => panic!("{name} was accepted"),
            Err(e) => assert!(!e.to_string().is_empty(), "{name}"),
        }
    }
    let mut p = good.clone();
    p.offsets = None;
    let e = QuantLinear::from_parts(p).unwrap_err().to_string();
    assert!(e.contains("needs one offset per scale"), "{e}");
    let mut p = good;
    p.config = QuantConfig::w8a8();
    p.scales = vec![0.1; 5];
    p.offsets = Some(vec![0.0; 5]);
    let e = QuantLinear::from_parts(p).unwrap_err().to_string();
    assert!(
        e.contains("only Int4GroupedAsym weights carry offsets"),
        "{e}"
    );
    assert!(QuantConfig::w4a8_asym(16).is_err());
    Ok(())
}

#[test]
fn non_finite_weights_are_refused_with_their_index() -> TestResult {
    let mut w = shifted_weights(4, 64, 14);
    w[70] = f32::INFINITY;
    let e = QuantLinear::new(&tensor(w, &[4, 64]), None, &QuantConfig::w4a8_asym(32)?).unwrap_err();
    assert!(matches!(e, Error::NonFinite { index: 70, .. }), "{e}");
    // A range wider than f32::MAX still gives finite parameters.
    let mut w = vec![0f32; 32];
    w[0] = f32::MAX;
    w[1] = -f32::MAX;
    let q = QuantLinear::new(&tensor(w, &[1, 32]), None, &QuantConfig::w4a8_asym(32)?)?;
    assert!(q.weight_scales()[0].is_finite() && q.offsets().unwrap()[0].is_finite());
    let codes = q.weights_i8();
    assert_eq!((codes[0], codes[1]), (7, -8));
    Ok(())
}
